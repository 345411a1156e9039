"""`xmfast import-acmr`: ACMR's released weights (laowangzi/ACMR) as runs.

The reference is the original's model written out here with plain torch modules, as its
models.py has it (nn.TransformerEncoder, not xmfast's encoder block), on the original's own
indices (a vocabulary built here from the README's rule); the import must give the same scores on
xmfast's indices. The released checkpoints are in ../shared/acmr-release beside the checkout (as
../shared/xmarket: CI has it; elsewhere the tests that need it are skipped).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from xmfast.acmr_release import read_log, read_state, released_model
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.models.acmr import ACMR
from xmfast.prepare import PrepareConfig, prepare
from xmfast_cli.app import app

RELEASE = Path(__file__).resolve().parents[1].parent / "shared" / "acmr-release"
JP_ORDER = ["uk", "ca", "fr", "in", "mx", "de", "jp"]  # the README's table: jp's sources as logged, then jp


@pytest.fixture(scope="session")
def release_dir() -> Path:
    if not (RELEASE / "checkpoints" / "ACMR_jp_finetune.pt").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"ACMR's released checkpoints not found at {RELEASE} (CI must provide ../shared/acmr-release)")
        pytest.skip(f"ACMR's released checkpoints not found at {RELEASE}")
    return RELEASE


@pytest.fixture(scope="module")
def jp(xmarket_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    return prepare(xmarket_dir, tmp_path_factory.mktemp("jp") / "ds",
                   PrepareConfig(target="jp", sources="all", protocol="acmr", seed=42))


class Original(nn.Module):
    """laowangzi/ACMR's ACMR in evaluation (models.py: BERTEmbedding, BERT, ACMR), same key names."""

    def __init__(self, vocab: int, markets: int, d: int, blocks: int, heads: int) -> None:
        super().__init__()
        self.bert = nn.Module()
        self.bert.embedding = nn.Module()
        self.bert.embedding.token = nn.Embedding(vocab, d, padding_idx=0)
        self.bert.embedding.market_embedding = nn.Embedding(markets, d)
        self.bert.embedding.LayerNorm = nn.LayerNorm(d, eps=1e-5)
        self.bert.encoder_layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.3, batch_first=True)
        self.bert.transformer_blocks = nn.TransformerEncoder(self.bert.encoder_layer, blocks, enable_nested_tensor=False)
        self.out = nn.Linear(2 * d, 1)

    def forward(self, x: torch.Tensor, market: torch.Tensor) -> torch.Tensor:
        """`x` (B, L+1): the history (0 = padding) then the candidate, original indices."""
        mask = x <= 0
        e = self.bert.embedding
        h = e.LayerNorm(e.token(x) + e.market_embedding(market)[:, None, :])
        h = self.bert.transformer_blocks(h, src_key_padding_mask=mask)
        real = (~mask[:, :-1]).float()
        user = (real[:, None, :] @ h[:, :-1]).squeeze(1) / real.sum(1, keepdim=True)
        return torch.sigmoid(self.out(torch.cat([user, h[:, -1]], dim=-1)))[:, 0]


def vocabulary(data: Path, order: list[str]) -> dict[str, int]:
    """The README's rule: markets in order, rows in file order, each new item id the next index from 1."""
    vocab: dict[str, int] = {}
    for market in order:
        for line in (data / f"{market}_5core.txt").read_text().splitlines()[1:]:
            if line.strip():
                vocab.setdefault(line.split()[1], len(vocab) + 1)
    return vocab


def both_scores(model: ACMR, original: Original, dataset: PreparedDataset, vocab: dict[str, int], order: list[str],
                cases: list[tuple[str, list[str], list[str]]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(xmfast's sigmoid scores, the original's) of each case (market, history item ids, candidate ids)."""
    ids = {item: i for i, item in enumerate(dataset.items.to_list())}
    ours, theirs = [], []
    for market, history, candidates in cases:
        hist = torch.tensor([[ids[i] for i in history] + [dataset.n_items] * (width - len(history))])
        logits = model.score_sequences(hist, torch.tensor([len(history)]), torch.tensor([dataset.market_index(market)]),
                                       torch.tensor([[ids[c] for c in candidates]]))
        ours.append(torch.sigmoid(logits[0]))
        x = torch.tensor([[vocab[i] for i in history] + [0] * (width - len(history)) + [vocab[c]] for c in candidates])
        theirs.append(original(x, torch.full((len(candidates),), order.index(market))))
    return torch.cat(ours), torch.cat(theirs)


@torch.no_grad()
def test_released_weights_score_as_the_original_computes(release_dir: Path, xmarket_dir: Path,
                                                         jp: PreparedDataset) -> None:
    config, weights, label = released_model(release_dir / "checkpoints" / "ACMR_jp_finetune.pt",
                                            release_dir / "logs" / "JP.log", jp, xmarket_dir)
    assert label == "acmr (released)" and config.embedding_norm and config.history == 50
    model = ACMR(jp.n_items, len(jp.markets), config).eval()
    model.load_state_dict(weights)
    state = torch.load(release_dir / "checkpoints" / "ACMR_jp_finetune.pt", map_location="cpu", weights_only=True)
    original = Original(8309, 8, 32, 4, 8).eval()
    original.load_state_dict(state)
    vocab = vocabulary(xmarket_dir, JP_ORDER)
    assert len(vocab) == 8304
    jp_items, uk_items = jp.catalog("jp"), jp.catalog("uk")
    name = jp.items.to_list()
    cases = [("jp", [name[jp_items[0]]], [name[i] for i in jp_items[1:5]]),
             ("jp", [name[i] for i in jp_items[10:13]], [name[i] for i in jp_items[20:23]] + [name[uk_items[0]]]),
             ("uk", [name[i] for i in uk_items[:12]], [name[i] for i in uk_items[40:43]]),
             ("de", [name[i] for i in jp.catalog("de")[:7]], [name[jp_items[3]], name[uk_items[5]]])]
    ours, theirs = both_scores(model, original, jp, vocab, JP_ORDER, cases, width=12)
    assert ours.shape == (13,) and float(theirs.std()) > 0.01  # scores that differ, so a wrong mapping shows
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def _edited_log(release_dir: Path, tmp_path: Path, old: str, new: str, name: str = "JP.log") -> Path:
    text = (release_dir / "logs" / "JP.log").read_text()
    assert old in text
    (tmp_path / name).write_text(text.replace(old, new, 1))
    return tmp_path / name


def test_a_wrong_market_order_or_data_is_detected(release_dir: Path, xmarket_dir: Path, jp: PreparedDataset,
                                                  tmp_path: Path) -> None:
    ckpt = release_dir / "checkpoints" / "ACMR_jp_finetune.pt"
    logged = "'src_mkt': ['uk', 'ca', 'fr', 'in', 'mx', 'de']"
    alphabetical = _edited_log(release_dir, tmp_path, logged, "'src_mkt': ['ca', 'de', 'fr', 'in', 'mx', 'uk']")
    with pytest.raises(XmfastError, match=rf"{alphabetical}, line 5: the statistics of uk where .* printed ca: the "
                                          "market order on line 2 is not the one the run used"):
        released_model(ckpt, alphabetical, jp, xmarket_dir)
    # the order consistent within the log but not the data's: the statistics disagree with the dataset
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    text = (release_dir / "logs" / "JP.log").read_text().replace("uk: users num", "XX: users num").replace(
        "ca: users num", "uk: users num").replace("XX: users num", "ca: users num").replace(
        logged, "'src_mkt': ['ca', 'uk', 'fr', 'in', 'mx', 'de']")
    (swapped / "JP.log").write_text(text)
    with pytest.raises(XmfastError, match=r"JP.log: ca has 3,352 users, 3,251 items, 31,547 ratings in the log but "
                                          r"4,668, 5,735, 44,779 in .*another data set or market order"):
        released_model(ckpt, swapped / "JP.log", jp, xmarket_dir)
    with pytest.raises(XmfastError, match=r"CA.log: the run's target is ca, the dataset's .* is jp"):
        released_model(tmp_path / "ACMR_other.pt", release_dir / "logs" / "CA.log", jp, xmarket_dir)
    with pytest.raises(XmfastError, match=r"ACMR_jp_finetune.pt: a checkpoint for target jp, but .*CA.log is the log "
                                          "of the ca run; give logs/JP.log"):
        released_model(ckpt, release_dir / "logs" / "CA.log", jp, xmarket_dir)
    other = tmp_path / "other-data"
    other.mkdir()
    for f in xmarket_dir.glob("*_5core.txt"):
        shutil.copy(f, other / f.name)
    with open(other / "uk_5core.txt", "a") as f:
        f.write("AUSER B000000000 5.0 2020-01-01\n")
    with pytest.raises(XmfastError, match=r"uk_5core.txt: differs from the file .* was prepared from"):
        released_model(ckpt, release_dir / "logs" / "JP.log", jp, other)
    assert read_log(release_dir / "logs" / "JP.log").order == tuple(JP_ORDER)


def test_a_checkpoint_of_another_shape_or_with_code_is_refused(release_dir: Path, xmarket_dir: Path,
                                                               jp: PreparedDataset, tmp_path: Path) -> None:
    state = torch.load(release_dir / "checkpoints" / "ACMR_jp_finetune.pt", map_location="cpu", weights_only=True)
    log = release_dir / "logs" / "JP.log"
    short = tmp_path / "ACMR_jp_finetune.pt"
    torch.save({**state, "bert.embedding.token.weight": state["bert.embedding.token.weight"][:8304]}, short)
    with pytest.raises(XmfastError, match=r"ACMR_jp_finetune.pt: bert.embedding.token.weight has shape \[8304, 32\], "
                                          r"expected \[8309, 32\] \(8,304 items \+ 5"):
        released_model(short, log, jp, xmarket_dir)
    torch.save({**state, "bert.embedding.market_embedding.weight": state["bert.embedding.market_embedding.weight"][:7]},
               short)
    with pytest.raises(XmfastError, match=r"market_embedding.weight has shape \[7, 32\], expected \[8, 32\] \(7 markets"):
        released_model(short, log, jp, xmarket_dir)
    torch.save({k: v for k, v in state.items() if not k.startswith("bert.transformer_blocks.layers.3.")}, short)
    with pytest.raises(XmfastError, match=r"no bert.transformer_blocks.layers.3.self_attn.in_proj_weight"):
        released_model(short, log, jp, xmarket_dir)
    marker = tmp_path / "ran"

    class Code:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    torch.save({"bert.embedding.token.weight": Code()}, short)
    with pytest.raises(XmfastError, match=r"ACMR_jp_finetune.pt: refers to (posix|nt).system, not only tensors .* "
                                          "could run code; refused"):
        read_state(short)
    assert not marker.exists()
    torch.save([state["out.bias"]], short)
    with pytest.raises(XmfastError, match=r"ACMR_jp_finetune.pt: not a state dict .* but a list"):
        read_state(short)


def test_an_imported_run_is_read_like_a_trained_one(sample_dir: Path, tmp_path: Path) -> None:
    """On the embedded sample with a small random model in the original's layout: the import
    writes a run that evaluate, compare, report and recommend read, labelled acmr (released)."""
    order = ["uk", "jp", "de", "in"]
    lines = ["nohup: ignoring input",
             repr({"tgt_mkt": ["in"], "src_mkt": order[:-1], "latent_dim": 8, "dropout": 0.3, "bert_max_len": 11,
                   "bert_num_blocks": 1, "bert_num_heads": 2, "num_mkts": 4}),
             "target market: in"]
    for m in order:
        rows = [r.split() for r in (sample_dir / f"{m}_5core.txt").read_text().splitlines()[1:] if r.strip()]
        lines.append(f"{m}: users num={len({r[0] for r in rows})}, item num={len({r[1] for r in rows})}, "
                     f"ratings={len(rows)}, sparsity=0.01")
    (tmp_path / "IN.log").write_text("\n".join(lines) + "\n")
    vocab = vocabulary(sample_dir, order)
    torch.manual_seed(3)
    original = Original(len(vocab) + 5, 5, 8, 1, 2).eval()
    torch.save(original.state_dict(), tmp_path / "ACMR_in_finetune.pt")
    ds = tmp_path / "ds"
    prepare(sample_dir, ds, PrepareConfig(target="in", sources="all", protocol="acmr", seed=1))
    runner = CliRunner()
    run = tmp_path / "released"
    result = runner.invoke(app, ["import-acmr", str(tmp_path / "ACMR_in_finetune.pt"), str(ds), "--log",
                                 str(tmp_path / "IN.log"), "--data", str(sample_dir), "-o", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    info = json.loads((run / "run.json").read_text())
    assert (info["model"], info["label"], info["model_config"]["embedding_norm"]) == ("acmr", "acmr (released)", True)
    ndcg = json.loads((run / "results.json").read_text())["test"]["ndcg@10"]
    result = runner.invoke(app, ["evaluate", str(run), "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["overall"]["ndcg@10"] == pytest.approx(ndcg, abs=1e-12)
    assert runner.invoke(app, ["train", str(ds), "-m", "pop", "-o", str(tmp_path / "pop")]).exit_code == 0
    result = runner.invoke(app, ["compare", str(tmp_path / "pop"), str(run)])
    assert result.exit_code == 0 and f"{ndcg:.4f}" in result.output, result.output
    result = runner.invoke(app, ["report", str(tmp_path / "pop"), str(run), "-o", str(tmp_path / "r.md"), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "| acmr (released) |" in (tmp_path / "r.md").read_text()
    user = PreparedDataset.load(ds).users.to_list()[0]
    result = runner.invoke(app, ["recommend", str(run), "-u", user, "--market", "in", "-k", "3"])
    assert result.exit_code == 0, result.output
