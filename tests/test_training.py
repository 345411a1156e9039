"""The training engine and run directories: training rows of the ++ variants, batching modes,
determinism, resume = uninterrupted, NMF from its GMF/MLP runs, baselines as runs, NMF beating
popularity on the synthetic sample, recommendations, and the CLI (train, evaluate, recommend)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.models.ncf import MLPConfig, NMFConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.recommend import recommend, resolve_groups
from xmfast.runs import Run
from xmfast.training import (
    ModelScorer,
    TrainConfig,
    Trainer,
    load_scorer,
    resume,
    train,
    training_rows,
)
from xmfast_cli.app import app

FAST = TrainConfig(epochs=2, batch_size=256, seed=7)


@pytest.fixture(scope="module")
def sample_uk(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> PreparedDataset:
    """The embedded sample, target uk (its largest market), every other market as a source."""
    out = tmp_path_factory.mktemp("prepared") / "uk"
    return prepare(sample_dir, out, PrepareConfig(target="uk", sources="all"))


@pytest.fixture(scope="module")
def sample_in(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> PreparedDataset:
    out = tmp_path_factory.mktemp("prepared") / "in"
    return prepare(sample_dir, out, PrepareConfig(target="in", sources="all"))


# ---- training rows and batches ---------------------------------------------------------------
def test_training_rows_target_only_full_and_selected(sample_in: PreparedDataset) -> None:
    d = sample_in
    train_market = np.asarray(d.train_market())
    target_rows = int(np.sum(train_market == d.market_index("in")))
    only = training_rows(d, (), "full")
    assert len(only) == target_rows and set(only.market) == {0}
    full = training_rows(d, ("uk", "de"), "full")
    assert full.markets == ("in", "uk", "de")
    assert full.count("uk") == int(np.sum(train_market == d.market_index("uk")))
    assert full.count("de") == int(np.sum(train_market == d.market_index("de")))
    sel = training_rows(d, ("uk", "de"), "selected")
    target_items = set(np.asarray(d.catalog("in")).tolist())
    src = sel.market > 0
    assert set(sel.item[src].tolist()) <= target_items  # only items the target market has
    assert sel.count("in") == target_rows and 0 < sel.count("uk") < full.count("uk")
    # each row's group and item are the dataset's
    assert np.array_equal(full.item, np.asarray(d.train_item)[full.rows])
    assert np.array_equal(full.group, d.train_group()[full.rows])


def test_equal_sampling_alternates_markets_and_covers_the_target_once(sample_in: PreparedDataset, tmp_path: Path) -> None:
    config = replace(FAST, sources=("uk", "de"), sampling="equal", batch_size=64)
    run = Run.create(tmp_path / "r", {"model": "gmf"})
    from xmfast.models import get_model

    spec = get_model("gmf")
    t = Trainer(sample_in, run, spec, spec.config_type(), config)
    users, items, labels, market = t._instances(1)
    batches = t._batches(1, market)
    markets_of = [set(market[b].tolist()) for b in batches]
    assert all(len(m) == 1 for m in markets_of)  # each batch is one market's
    assert [next(iter(m)) for m in markets_of[:6]] == [0, 1, 2, 0, 1, 2]
    target = torch.cat([b for b, m in zip(batches, markets_of) if m == {0}])
    assert sorted(target.tolist()) == torch.nonzero(market == 0).squeeze(1).tolist()  # every target instance once
    # concat: one permutation of every instance
    t2 = Trainer(sample_in, run, spec, spec.config_type(), replace(config, sampling="concat"))
    u2, i2, l2, m2 = t2._instances(1)
    assert sorted(torch.cat(t2._batches(1, m2)).tolist()) == list(range(m2.shape[0]))
    # positives first, then k negatives per row; negatives never a positive of the user there
    n = len(t.rows)
    assert labels[:n].eq(1).all() and labels[n:].eq(0).all() and labels.shape[0] == n * 5
    positives = {(int(g), int(i)) for g, i in zip(sample_in.train_group(), sample_in.train_item)}
    assert not any((int(u), int(i)) in positives for u, i in zip(users[n:], items[n:]))


# ---- determinism and resume ------------------------------------------------------------------
def test_same_seed_same_metrics_to_the_last_digit(sample_in: PreparedDataset, tmp_path: Path) -> None:
    a = train(sample_in, tmp_path / "a", "gmf", config=FAST)
    b = train(sample_in, tmp_path / "b", "gmf", config=FAST)
    c = train(sample_in, tmp_path / "c", "gmf", config=replace(FAST, seed=8))
    assert a is not None and b is not None and c is not None
    la = [(r["loss"], r["valid"]) for r in a.run.read_metrics()]
    lb = [(r["loss"], r["valid"]) for r in b.run.read_metrics()]
    assert la == lb
    assert a.test.aggregate() == b.test.aggregate()
    assert [r["loss"] for r in c.run.read_metrics()] != [r["loss"] for r in a.run.read_metrics()]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(sample_uk: PreparedDataset, tmp_path: Path) -> None:
    config = replace(FAST, epochs=4, sources=("de",), patience=3)
    whole = train(sample_uk, tmp_path / "whole", "mlp", config=config)
    assert whole is not None
    cut = train(sample_uk, tmp_path / "cut", "mlp", config=config, stop_after=2)
    assert cut is None
    run = Run.open(tmp_path / "cut")
    assert run.status == "interrupted" and [r["epoch"] for r in run.read_metrics()] == [1, 2]
    # A crash after epoch 3's log line but before its checkpoint: the log is truncated on resume.
    run.append_metrics({"epoch": 3, "loss": 0.0, "valid": {}, "best": False})
    resumed = resume(tmp_path / "cut")
    assert resumed is not None
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "instances_per_s")} for r in rs]  # noqa: E731
    assert strip(resumed.run.read_metrics()) == strip(whole.run.read_metrics())
    assert resumed.test.aggregate() == whole.test.aggregate()
    assert resumed.selected_epoch == whole.selected_epoch
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(XmfastError, match="already finished"):
        resume(tmp_path / "cut")


def test_early_stopping_keeps_the_best_checkpoint(sample_in: PreparedDataset, tmp_path: Path) -> None:
    # A learning rate this large overshoots: validation stops improving and training stops.
    result = train(sample_in, tmp_path / "es", "gmf", config=replace(FAST, epochs=30, lr=0.5, patience=2))
    assert result is not None
    log = result.run.read_metrics()
    values = [r["valid"]["ndcg@10"] for r in log]
    assert result.stopped_early and len(log) < 30
    assert result.selected_epoch == int(np.argmax(values)) + 1
    assert all(v < max(values) or i + 1 == result.selected_epoch for i, v in enumerate(values) if v == max(values))
    assert len(log) - result.selected_epoch == 2  # exactly `patience` epochs without improvement
    # the final validation result is the best epoch's (full evaluation = the per-epoch check)
    assert result.valid.aggregate()["ndcg@10"] == pytest.approx(max(values), abs=1e-6)


# ---- NMF, baselines, a learning sanity check ---------------------------------------------------
def test_nmf_finds_its_gmf_and_mlp_runs_and_beats_popularity(sample_uk: PreparedDataset, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = replace(FAST, epochs=6)
    with pytest.raises(XmfastError, match="starts from a trained gmf run"):
        train(sample_uk, runs / "nmf", "nmf", config=config)
    gmf = train(sample_uk, runs / "gmf", "gmf", config=config)
    mlp = train(sample_uk, runs / "mlp", "mlp", config=config)
    # an MLP run with other settings next to them is not picked
    train(sample_uk, runs / "mlp-wide", "mlp", MLPConfig(layers=(32, 16, 8)), config=replace(config, epochs=1))
    nmf = train(sample_uk, runs / "nmf", "nmf", config=config)
    pop = train(sample_uk, runs / "pop", "pop")
    assert gmf and mlp and nmf and pop
    info = Run.open(runs / "nmf").info
    assert info["pretrained"] == {"gmf": str((runs / "gmf").resolve()), "mlp": str((runs / "mlp").resolve())}
    # NMF's first validation, right after one epoch from the pretrained start, is already near
    # its branches' level (a fresh NMF starts from nothing).
    scratch = train(sample_uk, runs / "nmf-scratch", "nmf", NMFConfig(pretrained=False), config=replace(config, epochs=1))
    first = Run.open(runs / "nmf").read_metrics()[0]["valid"]["ndcg@10"]
    assert first > scratch.run.read_metrics()[0]["valid"]["ndcg@10"]
    nmf_ndcg, pop_ndcg = nmf.test.aggregate()["ndcg@10"], pop.test.aggregate()["ndcg@10"]
    assert nmf_ndcg > pop_ndcg + 0.05, (nmf_ndcg, pop_ndcg)
    assert nmf.test.aggregate()["hr@10"] > pop.test.aggregate()["hr@10"] + 0.05


def test_baseline_runs_match_direct_evaluation(sample_in: PreparedDataset, tmp_path: Path) -> None:
    from xmfast.models.baselines import CooccurrenceScorer, PopularityScorer
    from xmfast.evaluation import evaluate_scorer
    from xmfast.training import FINAL_EVAL

    pop = train(sample_in, tmp_path / "pop", "pop")
    cooc = train(sample_in, tmp_path / "cooc++", "cooc++")
    assert pop is not None and cooc is not None
    direct_pop = evaluate_scorer(sample_in, "test", PopularityScorer(sample_in), FINAL_EVAL, markets=["in"])
    direct_cooc = evaluate_scorer(sample_in, "test", CooccurrenceScorer(sample_in, sample_in.markets), FINAL_EVAL, markets=["in"])
    assert pop.test.aggregate() == direct_pop.aggregate()
    assert cooc.test.aggregate() == direct_cooc.aggregate()
    results = json.loads((tmp_path / "cooc++" / "results.json").read_text())
    assert results["test"] == direct_cooc.aggregate() and Run.open(tmp_path / "cooc++").status == "finished"


def test_run_directory_holds_config_fingerprint_checkpoints_log_and_results(sample_in: PreparedDataset, tmp_path: Path) -> None:
    result = train(sample_in, tmp_path / "run", "gmf", config=FAST)
    assert result is not None
    root = tmp_path / "run"
    info = json.loads((root / "run.json").read_text())
    assert info["model"] == "gmf" and info["status"] == "finished"
    assert info["dataset"]["fingerprint"] == sample_in.fingerprint
    assert info["train_config"]["epochs"] == 2 and info["model_config"] == {"embedding_dim": 8, "init": "normal", "init_std": 0.01}
    assert {p.name for p in (root / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    lines = (root / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    test = json.loads((root / "test.json").read_text())
    assert test["queries"] == len(result.test) == int(np.sum(np.asarray(sample_in.group_market)[sample_in.test.group] == 0))
    assert len(test["per_user"]) == test["queries"] and set(test["per_market"]) == {"in"}
    with pytest.raises(XmfastError, match="already exists"):
        train(sample_in, root, "gmf", config=FAST)


def test_loaded_scorer_reproduces_the_training_results(sample_in: PreparedDataset, tmp_path: Path) -> None:
    from xmfast.evaluation import evaluate_scorer
    from xmfast.training import FINAL_EVAL

    result = train(sample_in, tmp_path / "run", "mlp", config=FAST)
    assert result is not None
    run = Run.open(tmp_path / "run")
    scorer = load_scorer(run, run.load_dataset(), device="cpu")
    again = evaluate_scorer(sample_in, "test", scorer, FINAL_EVAL, markets=["in"])
    assert again.aggregate() == result.test.aggregate()


# ---- recommendations ---------------------------------------------------------------------------
class _ItemIdScorer:
    """Scores item i as i (so the top-k is the largest unknown item numbers of the catalog)."""

    def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.tile(np.asarray(items, dtype=np.float32), (len(groups), 1))

    def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.asarray(items, dtype=np.float32)


def test_recommend_leaves_out_known_items_and_matches_a_plain_sort(sample_in: PreparedDataset) -> None:
    d = sample_in
    groups = np.flatnonzero(np.asarray(d.group_market) == d.market_index("in"))[:50]
    recs = recommend(d, _ItemIdScorer(), groups, k=7)
    offsets, items = d._all_positives()
    catalog = np.asarray(d.catalog("in"))
    for q, g in enumerate(groups):
        known = set(items[offsets[g] : offsets[g + 1]].tolist())
        expected = [int(i) for i in sorted(catalog, reverse=True) if int(i) not in known][:7]
        assert recs.items[q].tolist() == expected
        assert recs.scores[q].tolist() == [float(i) for i in expected]
    with_known = recommend(d, _ItemIdScorer(), groups[:1], k=3, exclude_known=False)
    assert with_known.items[0].tolist() == sorted(catalog.tolist(), reverse=True)[:3]
    # more than the catalog: as wide as the catalog, every new item once, then -1 (score NaN)
    g = int(groups[0])
    new_items = catalog.size - len(set(items[offsets[g] : offsets[g + 1]].tolist()))
    big = recommend(d, _ItemIdScorer(), groups[:1], k=catalog.size + 5)
    assert big.items.shape == (1, catalog.size)
    assert (big.items[0] >= 0).sum() == new_items and (big.items[0, new_items:] == -1).all()
    assert np.isnan(big.scores[0, new_items:]).all()
    # the largest k the core takes allocates nothing beyond the catalog either
    huge = recommend(d, _ItemIdScorer(), groups[:1], k=2**32 - 1)
    assert np.array_equal(huge.items, big.items)


def test_resolve_groups_by_original_user_id(sample_in: PreparedDataset) -> None:
    d = sample_in
    g = int(np.flatnonzero(np.asarray(d.group_market) == d.market_index("in"))[3])
    uid = d.users[int(d.group_user[g])]
    assert resolve_groups(d, [uid]).tolist() == [g]
    with pytest.raises(XmfastError, match="has no ratings in market in"):
        resolve_groups(d, ["no-such-user"])


# ---- the command line ------------------------------------------------------------------------
runner = CliRunner()


def test_cli_train_evaluate_recommend_compare(sample_in: PreparedDataset, tmp_path: Path) -> None:
    ds = str(sample_in.path)
    runs = tmp_path / "runs"
    r = runner.invoke(app, ["train", ds, "-m", "gmf", "-o", str(runs / "gmf"), "--epochs", "2", "--batch-size", "512"])
    assert r.exit_code == 0, r.output
    assert "valid" in r.output and "test" in r.output and "ndcg@10" in r.output
    r = runner.invoke(app, ["train", ds, "-m", "pop", "-o", str(runs / "pop")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(runs / "gmf"), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["overall"] == json.loads((runs / "gmf" / "test.json").read_text())["overall"]
    # full ranking of the run's model over the market catalog equals the library call
    r = runner.invoke(app, ["evaluate", str(runs / "gmf"), "--full", "--split", "valid", "--json", str(tmp_path / "f.json")])
    assert r.exit_code == 0, r.output
    from xmfast.evaluation import EvalConfig, evaluate_scorer

    direct = evaluate_scorer(sample_in, "valid", load_scorer(Run.open(runs / "gmf"), sample_in, device="cpu"),
                             EvalConfig(), full=True, markets=["in"])
    full = json.loads((tmp_path / "f.json").read_text())
    assert full["mode"] == "full" and full["overall"] == pytest.approx(direct.aggregate(), abs=1e-12)
    user = sample_in.users[int(sample_in.group_user[int(sample_in.test.group[0])])]
    r = runner.invoke(app, ["recommend", str(runs / "gmf"), "--user", user, "-k", "5"])
    assert r.exit_code == 0, r.output
    assert f"top 5 for user {user} (in)" in " ".join(r.output.split())
    r = runner.invoke(app, ["recommend", str(runs / "gmf"), "--all-users", "-k", "3", "-o", str(tmp_path / "recs.csv")])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "recs.csv").read_text().splitlines()
    n_users = int(np.sum(np.asarray(sample_in.group_market) == 0))
    assert lines[0] == "market,user,rank,item,score" and len(lines) == 1 + 3 * n_users
    r = runner.invoke(app, ["compare", str(runs / "pop"), str(runs / "gmf")])
    assert r.exit_code == 0, r.output
    assert "Wilcoxon" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "svd"], "unknown model 'svd'"),
        (["-m", "gmf", "--sources", "xx"], "source market 'xx' is not in the dataset"),
        (["-m", "gmf", "--epochs", "0"], "epochs must be at least 1"),
        (["-m", "gmf", "--alpha", "0.2"], "--alpha is not a setting of model gmf"),
        (["-m", "nmf"], "nmf starts from a trained gmf run"),
        (["-m", "gmf", "--device", "cuda:0"] if not torch.cuda.is_available() else ["-m", "gmf", "--monitor", "x"],
         "CUDA is not available" if not torch.cuda.is_available() else "monitor"),
    ],
)
def test_cli_train_bad_input_is_one_error_line(sample_in: PreparedDataset, tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["train", str(sample_in.path), "-o", str(tmp_path / "run"), *args])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.output
    assert "Traceback" not in r.output


def test_cli_recommend_unknown_user_and_missing_run(sample_in: PreparedDataset, tmp_path: Path) -> None:
    runner.invoke(app, ["train", str(sample_in.path), "-m", "pop", "-o", str(tmp_path / "pop")])
    r = runner.invoke(app, ["recommend", str(tmp_path / "pop"), "--user", "nobody"])
    assert r.exit_code == 2 and "error: user 'nobody' has no ratings in market in" in r.output
    r = runner.invoke(app, ["recommend", str(tmp_path / "nothing"), "--user", "x"])
    assert r.exit_code == 2 and r.output == f"error: {tmp_path / 'nothing'}: no such file or directory\n"
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["recommend", str(tmp_path / "empty"), "--user", "x"])
    assert r.exit_code == 2 and "not a run directory" in r.output, r.output


def test_model_scorer_scores_pairs_like_the_model(sample_in: PreparedDataset) -> None:
    from xmfast.models.ncf import GMF

    torch.manual_seed(0)
    model = GMF(sample_in.n_groups, sample_in.n_items)
    scorer = ModelScorer(model, torch.device("cpu"), batch_pairs=7)  # many small batches
    groups = np.array([0, 5, 9])
    items = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    with torch.no_grad():
        want = model(torch.tensor([0, 0, 0, 5, 5, 5, 9, 9, 9]), torch.tensor(items.ravel())).numpy().reshape(3, 3)
    # (batches of different sizes may take different float kernels: equal to rounding)
    np.testing.assert_allclose(scorer.score(groups, items), want, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(
        scorer.score_all(groups[:2], np.array([1, 2, 3])), scorer.score(groups[:2], np.array([[1, 2, 3]] * 2)), rtol=1e-5
    )


def test_a_run_being_written_is_locked(sample_in: PreparedDataset, tmp_path: Path) -> None:
    done = train(sample_in, tmp_path / "r", "gmf", config=replace(FAST, epochs=1))
    assert done is not None
    cut = train(sample_in, tmp_path / "cut", "gmf", config=replace(FAST, epochs=2), stop_after=1)
    assert cut is None
    with Run.open(tmp_path / "r").writing():  # as if another process were training into it
        with pytest.raises(XmfastError, match="another xmfast process is writing this run"):
            train(sample_in, tmp_path / "r", "gmf", config=replace(FAST, epochs=1), overwrite=True)
        r = CliRunner().invoke(app, ["train", str(sample_in.path), "-m", "gmf", "-o", str(tmp_path / "r"), "--overwrite"])
        assert r.exit_code == 2 and "another xmfast process is writing this run" in r.output
    assert (tmp_path / "r" / "results.json").is_file()  # untouched
    with Run.open(tmp_path / "cut").writing():
        with pytest.raises(XmfastError, match="another xmfast process is writing this run"):
            resume(tmp_path / "cut")
    assert resume(tmp_path / "cut") is not None  # the lock went with its holder


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(sample_in: PreparedDataset, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [str(sample_in.path), "-m", "gmf", "--epochs", "3", "--batch-size", "32", "--device", "cpu", "--seed", "5"]
    whole = CliRunner().invoke(app, ["train", *args, "-o", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    cli = [sys.executable, "-c", "from xmfast_cli.app import main; main()"]
    # (run from tmp_path: in the repository root `-c` would import the uncompiled source tree)
    proc = subprocess.Popen([*cli, "train", *args, "-o", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # somewhere in epoch 2, after epoch 1's checkpoint
    proc.wait()
    assert Run.open(tmp_path / "killed").status == "running"
    r = subprocess.run([*cli, "train", "--resume", str(tmp_path / "killed")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    final = lambda p: json.loads((p / "results.json").read_text())  # noqa: E731
    a, b = final(tmp_path / "whole"), final(tmp_path / "killed")
    assert a["test"] == b["test"] and a["valid"] == b["valid"] and a["selected_epoch"] == b["selected_epoch"]


def test_damaged_or_foreign_checkpoints_are_one_error_line(sample_in: PreparedDataset, sample_uk: PreparedDataset,
                                                           tmp_path: Path) -> None:
    import shutil

    for name, data in (("in", sample_in), ("uk", sample_uk)):
        assert train(data, tmp_path / name, "gmf", config=replace(FAST, epochs=1)) is not None
    best = lambda run: tmp_path / run / "checkpoints" / "best.pt"  # noqa: E731
    cases = {
        "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "empty": lambda p: p.write_bytes(b""),
        "random": lambda p: p.write_bytes(bytes(range(256)) * 8),
        "foreign": lambda p: shutil.copy(best("uk"), p),  # another dataset's checkpoint
        "no-model": lambda p: torch.save({"version": 1}, p),
    }
    messages = {"truncated": "not a readable checkpoint", "empty": "not a readable checkpoint",
                "random": "not a readable checkpoint", "foreign": "belongs to another run",
                "no-model": "not an xmfast checkpoint"}
    for case, damage in cases.items():
        shutil.copytree(tmp_path / "in", tmp_path / case)
        damage(best(case))
        before = best(case).read_bytes()
        r = CliRunner().invoke(app, ["evaluate", str(tmp_path / case)])
        assert r.exit_code == 2 and messages[case] in r.output and "Traceback" not in r.output, (case, r.output)
        assert best(case).read_bytes() == before  # nothing changed
    # a checkpoint of another model in this run's place
    assert train(sample_in, tmp_path / "mlp", "mlp", config=replace(FAST, epochs=1)) is not None
    shutil.copytree(tmp_path / "in", tmp_path / "swapped")
    ck = torch.load(best("mlp"), weights_only=False)
    ck.pop("model_name")  # as an older checkpoint without its model's name
    torch.save(ck, best("swapped"))
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "swapped")])
    assert r.exit_code == 2 and "weights do not fit the run's model" in r.output
