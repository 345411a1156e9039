"""SASRec with market embeddings (issue 23, item 3b): shapes, causality, the market embedding,
the training windows and their batches, the losses by hand, learning successor chains that pop
cannot, seeded determinism and exact resumption, and the CLI (`xmfast train`, `xmfast run`)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from xmfast_cli.app import app

from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.models import get_model
from xmfast.models.sasrec import SASRec, loss, training_windows
from xmfast.models.settings import SASRecConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import Batch, resume, run_info, train
from xmfast.training.sequence import WindowTrainer

TINY = SASRecConfig(embedding_dim=16, blocks=2, heads=2, dropout=0.0, history=6)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for the module (as conftest's one_thread): the same sums on any machine,
    and on a busy 2-core machine a tiny model's steps are many times faster than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**overrides):
    return get_model("sasrec").train_config(**{"epochs": 2, "batch_size": 512, "negatives": 8, **overrides})


def _model(config: SASRecConfig = TINY, items: int = 30, markets: int = 3) -> SASRec:
    torch.manual_seed(0)
    return SASRec(items, markets, config).eval()


def test_shapes() -> None:
    model = _model()
    x = model.encode(torch.randint(0, 30, (4, 5)), torch.tensor([0, 1, 2, 0]))
    assert x.shape == (4, 5, 16)
    model.group_items = torch.tensor([[1, 2, 3, 30, 30, 30], [4, 5, 30, 30, 30, 30]])
    model.group_lengths, model.group_market = torch.tensor([3, 2]), torch.tensor([0, 1])
    with torch.no_grad():
        assert model(torch.tensor([0, 1, 1]), torch.tensor([7, 8, 9])).shape == (3,)
        scores = model(torch.tensor([0, 1]), torch.tensor([[7, 8, 9], [1, 2, 3]]))
        assert scores.shape == (2, 3)
        # a candidate's score is the dot product of the last real state with its embedding
        state = model.encode(model.group_items[:1, :3], model.group_market[:1])[0, 2]
        want = model.item_embedding.weight[[7, 8, 9]] @ state
    torch.testing.assert_close(scores[0], want)
    with pytest.raises(ValueError, match="divisible"):
        SASRecConfig(embedding_dim=10, heads=3)
    with pytest.raises(ValueError, match="loss must be softmax or bce"):
        SASRecConfig(loss="hinge")  # type: ignore[arg-type]


def test_causality_a_later_item_never_changes_an_earlier_position() -> None:
    model = _model()
    items = torch.randint(0, 30, (3, 6))
    market = torch.tensor([0, 1, 2])
    with torch.no_grad():
        base = model.encode(items, market)
        for j in range(6):
            changed = items.clone()
            changed[:, j] = (changed[:, j] + 1) % 30
            out = model.encode(changed, market)
            torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
            assert not torch.allclose(out[:, j:], base[:, j:])


def test_the_market_embedding_changes_scores_across_markets() -> None:
    model = _model()
    model.group_items = torch.tensor([[1, 2, 3, 30, 30, 30]] * 2)
    model.group_lengths, model.group_market = torch.tensor([3, 3]), torch.tensor([0, 2])
    candidates = torch.arange(30).repeat(2, 1)
    with torch.no_grad():
        scores = model(torch.tensor([0, 1]), candidates)
        assert not torch.allclose(scores[0], scores[1])  # same history, another market
        model.market_embedding.weight[2] = model.market_embedding.weight[0]
        torch.testing.assert_close(model(torch.tensor([0, 1]), candidates)[1], scores[0])


def test_windows_by_hand() -> None:
    """Group 0 has 8 rows, group 1 one, group 2 three; windows of 3 inputs aligned at the end."""
    group = np.array([0] * 8 + [1] + [2] * 3)
    item = np.arange(12) * 10
    w = training_windows(group, item, 3, 999)
    # group 0: targets 5-7 read items 4-6, targets 2-4 items 1-3, target 1 item 0
    assert w["window_items"].tolist() == [[0, 999, 999], [10, 20, 30], [40, 50, 60], [90, 100, 999]]
    assert w["row_window"].tolist() == [-1, 0, 1, 1, 1, 2, 2, 2, -1, -1, 3, 3]
    assert w["row_offset"].tolist() == [0, 0, 0, 1, 2, 0, 1, 2, 0, 0, 0, 1]
    assert w["window_lengths"].tolist() == [1, 3, 3, 2]
    assert w["window_first"].tolist() == [1, 2, 5, 10]
    assert w["window_group"].tolist() == [0, 0, 0, 2]


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> PreparedDataset:
    return prepare(sample_dir, tmp_path_factory.mktemp("sasrec") / "ds", PrepareConfig(target="in", sources="all"))


def test_a_training_rows_state_is_that_of_the_items_before_it_alone(sample_ds: PreparedDataset) -> None:
    """Every row but a group's first is a target once; its state (a window's position) equals the
    encoding, alone, of the items just before it in its group: as many as its window holds before
    it, at most `history`, and exactly min(history, position) for a group's last row (the one
    nearest the queries, which read the same most recent items)."""
    ds = sample_ds
    rows = np.arange(int(np.asarray(ds.train_offsets)[-1]))
    model = _model(TINY, ds.n_items, len(ds.markets))
    model.attach(ds, rows)
    model.train()  # training keys; dropout is 0
    offsets = np.asarray(ds.train_offsets).astype(np.int64)
    group = ds.train_group().astype(np.int64)
    first = rows == offsets[group]
    assert np.array_equal(model.row_window.numpy() < 0, first)
    read = model.row_offset.numpy() + 1  # items each row's state reads
    position = rows - offsets[group]
    assert np.all((read[~first] >= 1) & (read[~first] <= np.minimum(TINY.history, position[~first])))
    last = ~first & (rows == offsets[group + 1] - 1)
    assert np.array_equal(read[last], np.minimum(TINY.history, position[last]))
    assert (read[~first & ~last] < np.minimum(TINY.history, position[~first & ~last])).any()  # earlier windows
    targets = rows[~first][:: max(1, rows.size // 60)]
    with torch.no_grad():
        states = model.states(torch.from_numpy(targets))
        for r, state in zip(targets, states):
            before = np.asarray(ds.train_item)[r - read[r] : r].astype(np.int64)
            market = torch.tensor([int(np.asarray(ds.group_market)[group[r]])])
            want = model.encode(torch.from_numpy(before)[None], market)[0, -1]
            torch.testing.assert_close(state, want, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="first training row"):
            model.states(torch.from_numpy(rows[first][:2]))
    # evaluation: a group's state reads its most recent `history` items, encoded once per group
    model.eval()
    calls: list[int] = []
    encode = model.encode
    model.encode = lambda items, market: calls.append(items.shape[0]) or encode(items, market)  # type: ignore[method-assign]
    groups = np.asarray(ds.test.group)[:5].astype(np.int64)
    with torch.no_grad():
        scores = model(torch.from_numpy(np.repeat(groups, 100)), torch.from_numpy(
            np.asarray(ds.test.candidates)[:5].astype(np.int64).ravel()))
    assert calls == [5] and scores.shape == (500,)
    hist = np.asarray(ds.history(int(groups[0])))[-TINY.history:].astype(np.int64)
    with torch.no_grad():
        state = encode(torch.from_numpy(hist)[None], model.group_market[groups[:1]])[0, -1]
        want = model.item_embedding.weight[torch.from_numpy(np.asarray(ds.test.candidates)[0].astype(np.int64))] @ state
    torch.testing.assert_close(scores[:100], want, rtol=1e-5, atol=1e-5)


class _Fixed(torch.nn.Module):
    """A module that returns given logits, to check the losses by hand."""

    def __init__(self, logits: torch.Tensor, config: SASRecConfig) -> None:
        super().__init__()
        self.logits, self.config = logits, config

    def forward(self, keys: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        assert items.shape == self.logits.shape and torch.equal(items[:, 0], torch.tensor([5, 6]))
        return self.logits


def test_losses_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]])
    batch = Batch(torch.tensor([0, 1]), torch.tensor([5, 6]), torch.tensor([[1, 2], [3, 4]]), torch.tensor([0, 1]))
    e = math.exp
    ce = [-math.log(e(2) / (e(2) + 1 + e(1))), -math.log(e(0.5) / (e(0.5) + e(1.5) + e(-1)))]
    sig = lambda x: 1 / (1 + e(-x))
    bce = [-math.log(sig(2)) - math.log(sig(0)) - math.log(sig(-1)),
           -math.log(sig(0.5)) - math.log(sig(-1.5)) - math.log(sig(1))]
    assert float(loss(_Fixed(logits, TINY), batch)) == pytest.approx(sum(ce) / 2, rel=1e-6)
    assert float(loss(_Fixed(logits, replace(TINY, loss="bce")), batch)) == pytest.approx(sum(bce) / 2, rel=1e-6)
    # the target's row (market 0) weighted 3 against the source's 1
    weighted = loss(_Fixed(logits, replace(TINY, target_weight=3.0)), batch)
    assert float(weighted) == pytest.approx((3 * ce[0] + ce[1]) / 4, rel=1e-6)


def _chains(out: Path, items: int = 30, users: dict[str, int] | None = None, seed: int = 0) -> None:
    """Deterministic successor chains: each user buys s, s+1, …, s+7 (mod `items`) on consecutive
    days from a random start s, in every market, so the validation item is the successor of the
    last training item and popularity is flat."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for market, n in (users or {"in": 120, "de": 240}).items():
        lines = ["userId itemId rate date"]
        for u in range(n):
            s = rng.randrange(items)
            lines += [f"{market}u{u} i{(s + t) % items} 5.0 2020-01-{t + 1:02d}" for t in range(8)]
        (out / f"{market}_5core.txt").write_text("\n".join(lines) + "\n")


def test_sasrec_learns_successor_chains_that_pop_cannot(tmp_path: Path) -> None:
    """The next item is the last one's successor: SASRec puts it first among 16 candidates on
    validation (its history ends just before it); popularity, flat here, is at chance."""
    _chains(tmp_path / "raw")
    ds = prepare(tmp_path / "raw", tmp_path / "ds", PrepareConfig(target="in", sources="all", eval_negatives=15))
    sas = train(ds, tmp_path / "sas", "sasrec", replace(TINY, blocks=1),
                _config(epochs=8, batch_size=256, lr=1e-2, patience=None))
    pop = train(ds, tmp_path / "pop", "pop")
    assert sas is not None and pop is not None
    s, p = sas.valid.aggregate(), pop.valid.aggregate()
    assert s["hr@5"] > 0.9 and s["mrr"] > 0.7
    assert p["hr@5"] < 0.6 and s["ndcg@10"] > p["ndcg@10"] + 0.3


@pytest.fixture(scope="module")
def sample_run(sample_ds: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sasrec-run") / "r"
    assert train(sample_ds, out, "sasrec", TINY, _config()) is not None
    return out


def test_batches_hold_whole_windows_once_and_depend_on_seed_and_epoch(sample_ds: PreparedDataset,
                                                                      tmp_path: Path) -> None:
    spec = get_model("sasrec")
    config = _config(batch_size=64)
    trainer = WindowTrainer(sample_ds, Run.create(tmp_path / "r", run_info(sample_ds, spec, TINY, config)), spec,
                            TINY, config)
    batches = trainer._batch_order(1, trainer._market)
    window = trainer.model.row_window
    targets = torch.nonzero(window >= 0).flatten()
    assert torch.equal(torch.cat(batches).sort().values, targets)  # every target row once
    seen: set[int] = set()
    for b in batches:
        ws = set(window[b].tolist())
        assert not ws & seen  # a window is in one batch only, with all its rows
        seen |= ws
        assert len(b) < 64 + TINY.history
    again = trainer._batch_order(1, trainer._market)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not all(torch.equal(a, b) for a, b in zip(batches, trainer._batch_order(2, trainer._market)))
    with pytest.raises(XmfastError, match="sampling 'equal' is not available"):
        WindowTrainer(sample_ds, Run.create(tmp_path / "e", run_info(sample_ds, spec, TINY, config)), spec, TINY,
                      replace(config, sampling="equal"))


def test_a_seeded_run_is_deterministic_and_resumes_exactly(sample_ds: PreparedDataset, sample_run: Path,
                                                           tmp_path: Path) -> None:
    dropped = replace(TINY, dropout=0.3)  # dropout draws from the seeded generator too
    a = train(sample_ds, tmp_path / "a", "sasrec", dropped, _config())
    cut = train(sample_ds, tmp_path / "b", "sasrec", dropped, _config(), stop_after=1)
    assert a is not None and cut is None
    b = resume(tmp_path / "b")
    assert b is not None
    assert [r["loss"] for r in a.run.read_metrics()] == [r["loss"] for r in b.run.read_metrics()]
    assert a.test.aggregate() == b.test.aggregate()
    other = Run.open(sample_run)  # the same settings without dropout: another model
    assert [r["loss"] for r in other.read_metrics()] != [r["loss"] for r in a.run.read_metrics()]
    info = other.info
    assert info["label"] == "sasrec" and len(info["train_config"]["sources"]) == 3
    assert info["train_config"]["sources_in_full"] is True and info["model_config"]["history"] == TINY.history


def test_cli_train_and_run(sample_run: Path, sample_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ds = Run.open(sample_run).info["dataset"]["path"]
    r = runner.invoke(app, ["train", ds, "-m", "sasrec", "-o", str(tmp_path / "t"), "--epochs", "1",
                            "--embedding-dim", "8", "--heads", "2", "--history", "5", "--loss", "bce",
                            "--target-weight", "2", "--negatives", "1", "--batch-size", "512"])
    assert r.exit_code == 0, r.output
    info = Run.open(tmp_path / "t").info
    assert info["model_config"]["loss"] == "bce" and info["model_config"]["target_weight"] == 2.0
    assert info["train_config"]["negatives"] == 1
    r = runner.invoke(app, ["train", ds, "-m", "sasrec", "-o", str(tmp_path / "bad"), "--heads", "3"])
    assert r.exit_code == 2 and "divisible by heads 3" in r.output
    exp = tmp_path / "e.toml"
    exp.write_text(f'data = "{sample_dir}"\nout = "{tmp_path / "grid"}"\ntargets = ["in"]\nsources = "all"\n'
                   'models = ["pop", "sasrec"]\nseeds = [1]\ndevice = "cpu"\n[train.sasrec]\nepochs = 1\n'
                   'negatives = 4\n[model.sasrec]\nembedding_dim = 8\nblocks = 1\nhistory = 5\n', encoding="utf-8")
    r = runner.invoke(app, ["run", str(exp)])
    assert r.exit_code == 0, r.output
    results = json.loads(next((tmp_path / "grid").rglob("sasrec/results.json")).read_text())
    assert results["test"]["ndcg@10"] > 0
    assert "sasrec" in (tmp_path / "grid" / "report.md").read_text()
