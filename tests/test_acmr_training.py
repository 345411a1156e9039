"""ACMR on the training engine (issue 7): length-bucketed batches, exact resumption, pre-training
with the sources in full, fine-tuning on the target, the CLI, and a synthetic cross-market
pattern that ACMR learns and GMF cannot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xmfast.errors import XmfastError
from xmfast.models import get_model
from xmfast.models.acmr import ACMRConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import SequenceTrainer, finetune, load_scorer, resume, run_info, train
from xmfast_cli.app import app

TINY = ACMRConfig(embedding_dim=16, blocks=1, heads=2, history=10)


def _config(**overrides):
    return get_model("acmr").train_config(**{"epochs": 2, "batch_size": 512, **overrides})


@pytest.fixture(scope="module")
def acmr_root(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("acmr-train")
    ds = prepare(sample_dir, root / "ds", PrepareConfig(target="in", sources="all", protocol="acmr"))
    assert train(ds, root / "pre", "acmr", TINY, _config()) is not None
    return root


def test_the_papers_schedule_is_the_default() -> None:
    config = get_model("acmr").train_config()
    assert (config.epochs, config.patience, config.monitor, config.lr, config.l2) == (50, 3, "ndcg@5", None, 1e-7)
    assert config.learning_rate(get_model("acmr")) == 1e-3
    assert config.sources == ("all",) and config.sources_in_full
    fine = get_model("acmr").finetune_config()
    assert fine.sources == () and fine.patience == 3 and fine.epochs == 50


def test_batches_are_bucketed_by_history_length(acmr_root: Path, tmp_path: Path) -> None:
    ds = Run.open(acmr_root / "pre").load_dataset()
    spec = get_model("acmr")
    config = _config(batch_size=64)
    run = Run.create(tmp_path / "r", run_info(ds, spec, TINY, config))
    trainer = SequenceTrainer(ds, run, spec, TINY, config)
    _, _, _, market = trainer._instances(1)
    batches = trainer._batches(1, market)
    everything = torch.cat(batches).sort().values
    assert torch.equal(everything, torch.arange(market.shape[0]))  # every instance once
    lengths = trainer._instance_length
    spread = [int(lengths[b].max() - lengths[b].min()) for b in batches]
    shuffled = [int(lengths[b].max() - lengths[b].min()) for b in torch.randperm(market.shape[0]).split(64)]
    assert np.mean(spread) < 0.25 * np.mean(shuffled)  # similar lengths share a batch
    again = trainer._batches(1, market)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # a function of (seed, epoch)
    assert not all(torch.equal(a, b) for a, b in zip(batches, trainer._batches(2, market)))
    # sources in full: the sources' held-out items are training rows, the target's are not
    full = int(np.asarray(ds.train_offsets)[-1]) + 2 * sum(
        int(np.sum(np.asarray(ds.group_market)[np.asarray(ds.valid.group)] == ds.market_index(m))) for m in ds.sources
    )
    assert len(trainer.rows) == full


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(acmr_root: Path, tmp_path: Path) -> None:
    ds = Run.open(acmr_root / "pre").load_dataset()
    cut = train(ds, tmp_path / "cut", "acmr", TINY, _config(), stop_after=1)
    assert cut is None and Run.open(tmp_path / "cut").status == "interrupted"
    resumed = resume(tmp_path / "cut")
    whole = Run.open(acmr_root / "pre")
    assert resumed is not None
    assert [r["loss"] for r in resumed.run.read_metrics()] == [r["loss"] for r in whole.read_metrics()]
    assert resumed.test.aggregate() == json.loads((whole.path / "results.json").read_text())["test"]


def test_finetune_continues_the_pretrained_model_on_the_target(acmr_root: Path, tmp_path: Path) -> None:
    result = finetune(acmr_root / "pre", tmp_path / "ft", model="acmr", config=_config(epochs=1))["in"]
    assert result is not None
    run = result.run
    assert run.model == "acmr" and run.sources == [] and run.info["pretrained"]["base"] == str((acmr_root / "pre").resolve())
    assert run.info["model_config"] == Run.open(acmr_root / "pre").info["model_config"]
    base = torch.load(acmr_root / "pre" / "checkpoints" / "best.pt", weights_only=True)["model"]
    tuned = torch.load(run.best_checkpoint, weights_only=True)["model"]
    assert base.keys() == tuned.keys() and not torch.equal(base["output.weight"], tuned["output.weight"])
    # evaluating the run again gives its recorded test results
    ds = run.load_dataset()
    scorer = load_scorer(run, ds, device="cpu")
    from xmfast.evaluation import evaluate_scorer
    from xmfast.training import FINAL_EVAL

    again = evaluate_scorer(ds, "test", scorer, FINAL_EVAL, markets=["in"]).aggregate()
    assert again == pytest.approx(result.test.aggregate(), abs=1e-9)
    # the pre-training saw the sources' held-out items: no fine-tuning on a source market
    with pytest.raises(XmfastError, match="fine-tune it on in only"):
        finetune(acmr_root / "pre", tmp_path / "ft2", ["de"], model="acmr", config=_config(epochs=1))
    with pytest.raises(XmfastError, match="forec fine-tunes a finished maml or nmf run"):
        finetune(acmr_root / "pre", tmp_path / "ft3", model="forec")


@pytest.mark.slow  # ~50 s on 2 cores: the CLI's ACMR options end to end; the engine's ACMR paths are tested above
def test_cli_train_and_finetune_acmr(acmr_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(acmr_root / "ds"), "-m", "acmr", "-o", str(tmp_path / "pre"), "--epochs", "1",
                            "--embedding-dim", "16", "--history", "8", "--truncation", "recent", "--dropout", "0.1",
                            "--sources-train-only", "--batch-size", "512"])
    assert r.exit_code == 0, r.output
    info = Run.open(tmp_path / "pre").info
    assert info["model_config"]["history"] == 8 and info["model_config"]["truncation"] == "recent"
    assert info["train_config"]["sources_in_full"] is False and info["train_config"]["patience"] == 3
    assert len(info["train_config"]["sources"]) == 3  # all by default
    # trained without the sources' held-out items, it may be fine-tuned on a source market too
    r = runner.invoke(app, ["finetune", str(tmp_path / "pre"), "-m", "acmr", "-o", str(tmp_path / "ft"),
                            "--markets", "in,de", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["de", "in"]
    r = runner.invoke(app, ["finetune", str(tmp_path / "pre"), "-m", "acmr", "-o", str(tmp_path / "x"), "--head", "8"])
    assert r.exit_code == 2 and "--head is not a setting of model acmr" in r.output
    r = runner.invoke(app, ["train", str(acmr_root / "ds"), "-m", "acmr", "-o", str(tmp_path / "bad"), "--truncation", "old"])
    assert r.exit_code == 2 and "truncation must be random, recent or cooc" in r.output


def _paired_markets(out: Path, pairs: int = 16, users: dict[str, int] | None = None, seed: int = 0) -> None:
    """Items come in pairs a_i → b_i (b_i is bought after a_i) in every market. Source users
    (de) show all pairs in their training rows; target users (in) show only the first half, and
    their validation and test items are the b of pairs from the second half, whose a they have."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    half = pairs // 2
    for market, n in (users or {"in": 150, "de": 400}).items():
        lines = ["userId itemId rate date"]
        for u in range(n):
            if market == "in":
                i, j = rng.sample(range(half), 2)
                k, m = rng.sample(range(half, pairs), 2)
            else:
                i, j, k, m = rng.sample(range(pairs), 4)
            sequence = [f"a{i}", f"b{i}", f"a{j}", f"b{j}", f"a{k}", f"a{m}", f"b{k}", f"b{m}"]
            lines += [f"{market}u{u} {item} 5.0 2020-01-{day + 1:02d}" for day, item in enumerate(sequence)]
        (out / f"{market}_5core.txt").write_text("\n".join(lines) + "\n")


def test_acmr_learns_a_cross_market_pattern_that_gmf_cannot(tmp_path: Path, one_thread: None) -> None:
    """The pairs of the second half are shown only in the source market. GMF on the target never
    sees a target user take those b items, so it ranks them below chance; ACMR pre-trained on both
    markets reads a_k in the history and puts b_k first."""
    from xmfast.models.ncf import GMFConfig

    # With 400 source users, two blocks and lr 3e-3 the pattern was learnt or missed by
    # floating-point luck: the same code and torch gave test HR@5 0.88 on one CPU thread, 0.69 on
    # two. Hence 800 source users and one thread (one_thread: the same sums on every machine).
    # One block at lr 1e-2 learns it by epoch 6 at the latest (valid NDCG@5 >= 0.93 from epoch
    # 3, 4, 6, 6 with seeds 0, 1, 2 and 42, the default; test HR@5 0.99-1.0), at a sixth of the
    # CPU time of two blocks at 3e-3 over 40 epochs; 10 epochs leave a margin.
    _paired_markets(tmp_path / "raw", users={"in": 150, "de": 800})
    ds = prepare(tmp_path / "raw", tmp_path / "ds", PrepareConfig(target="in", sources="all", eval_negatives=15))
    acmr = train(ds, tmp_path / "acmr", "acmr", ACMRConfig(embedding_dim=16, blocks=1, heads=2, dropout=0.0, history=8),
                 get_model("acmr").train_config(epochs=10, batch_size=256, patience=None, lr=1e-2,
                                                sources_in_full=False))
    gmf = train(ds, tmp_path / "gmf", "gmf", GMFConfig(), get_model("gmf").train_config(epochs=20, batch_size=256))
    assert acmr is not None and gmf is not None
    a, g = acmr.test.aggregate(), gmf.test.aggregate()
    chance = 5 / 16  # HR@5 of a random ranking of 16 candidates
    assert a["hr@5"] > 0.8 and a["ndcg@5"] > 0.75
    assert g["hr@5"] < chance
