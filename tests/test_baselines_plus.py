"""EASE, ItemKNN and MF, the baselines the field checks progress against (issue 23 item 2):
hand-computed cases, differential tests against plain numpy / plain-Python implementations of
the formulas, pooled against target-alone fitting, and each beating popularity through the real
train / evaluate / grid / tune path on a synthetic set with strong item–item structure."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from xmfast.models import get_model
from xmfast.models.itemitem import ease_weights, item_counts, knn_weights
from xmfast_cli.app import app


# ---- tiny datasets --------------------------------------------------------------------------------
def fake_dataset(histories: list[list[int]], markets: list[int], n_items: int, names=("t", "s")) -> SimpleNamespace:
    """What the item–item models read of a prepared dataset: each group's training items (CSR)
    and market; market 0 is the target."""
    offsets = np.zeros(len(histories) + 1, dtype=np.uint64)
    np.cumsum([len(h) for h in histories], out=offsets[1:])
    return SimpleNamespace(markets=list(names), target=names[0], n_items=n_items, train_offsets=offsets,
                           train_item=np.array([i for h in histories for i in h], dtype=np.uint32),
                           group_market=np.array(markets, dtype=np.uint16))


def binary(histories: list[list[int]], n_items: int) -> np.ndarray:
    x = np.zeros((len(histories), n_items))
    for u, h in enumerate(histories):
        x[u, h] = 1.0
    return x


# EASE's scores are kept to float32's digits (ties in exact arithmetic stay ties whatever BLAS
# does; see ItemItemScorer._scores): the formula is matched to that precision.
F32 = {"rel": 2e-7, "abs": 1e-10}


def plain_ease(x: np.ndarray, lam: float) -> np.ndarray:
    """Steck's formula as written: P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag(P)), diag(B) = 0."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def plain_knn(histories: list[list[int]], n_items: int, alpha: float, shrink: float, k: int) -> dict:
    """(h, j) -> kept similarity, with loops: c_hj users holding both, n_i users holding i, each
    j keeping its k largest s_hj (ties: lower h first)."""
    sets = [set(h) for h in histories]
    n = [sum(i in s for s in sets) for i in range(n_items)]
    kept = {}
    for j in range(n_items):
        sims = []
        for h in range(n_items):
            c = sum(h in s and j in s for s in sets)
            if h != j and c > 0:
                sims.append((-(c / (n[h] ** alpha * n[j] ** (1 - alpha) + shrink)), h))
        for negative, h in sorted(sims)[:k]:
            kept[h, j] = -negative
    return kept


# ---- EASE -----------------------------------------------------------------------------------------
def test_ease_by_hand() -> None:
    # X = [[1,1,0],[0,1,1],[1,1,1]], λ = 1: XᵀX + I = [[3,2,1],[2,4,2],[1,2,3]], det 16,
    # P = [[.5,-.25,0],[-.25,.5,-.25],[0,-.25,.5]], B_ij = -P_ij / P_jj
    ds = fake_dataset([[0, 1], [1, 2], [0, 1, 2]], [0, 0, 0], 4)
    cooc, users = item_counts(ds, ["t"])
    assert users.tolist() == [2, 3, 2, 0]  # item 3 is in no history: inactive
    b = ease_weights(cooc[:3][:, :3], users[:3], 1.0)
    assert b == pytest.approx(np.array([[0, .5, 0], [.5, 0, .5], [0, .5, 0]]), abs=1e-12)
    scorer = get_model("ease").fit(ds, get_model("ease").config_from({"lam": 1.0}), ())
    # group 2 holds 0, 1, 2: scores B[0]+B[1]+B[2]; the inactive item 3 scores 0
    assert scorer.score_all(np.array([2]), np.arange(4)) == pytest.approx(np.array([[.5, 1.0, .5, 0.0]]))
    assert scorer.score(np.array([0, 2]), np.array([[2, 3], [1, 0]])) == pytest.approx(np.array([[.5, 0], [1, .5]]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=6), min_size=2, max_size=12),
       st.lists(st.integers(0, 1), min_size=12, max_size=12), st.floats(0.1, 100.0), st.booleans())
def test_ease_matches_the_formula_in_numpy(histories, market_draw, lam, pooled) -> None:
    markets = market_draw[:len(histories)]
    ds = fake_dataset(histories, markets, 8)
    config = get_model("ease").config_from({"lam": lam})
    scorer = get_model("ease").fit(ds, config, ("s",) if pooled else ())
    fitted = [h for h, m in zip(histories, markets) if pooled or m == 0]
    b = plain_ease(binary(fitted, 8), lam)
    groups = np.arange(len(histories))
    expected = binary(histories, 8) @ b
    assert scorer.score_all(groups, np.arange(8)) == pytest.approx(expected, **F32)
    candidates = np.tile(np.arange(8)[::-1], (len(histories), 1))
    assert scorer.score(groups, candidates) == pytest.approx(expected[:, ::-1], **F32)


def test_pooled_and_alone_differ_exactly_by_the_source_rows() -> None:
    rng = np.random.default_rng(3)
    histories = [sorted(set(rng.integers(0, 10, 4).tolist())) for _ in range(30)]
    markets = [0] * 12 + [1] * 18
    ds = fake_dataset(histories, markets, 10)
    gram = {}
    for name, fitted in (("alone", ["t"]), ("pooled", ["t", "s"])):
        cooc, users = item_counts(ds, fitted)
        gram[name] = cooc.toarray() + np.diag(users)
    x_source = binary(histories[12:], 10)
    assert np.array_equal(gram["pooled"] - gram["alone"], x_source.T @ x_source)
    alone = get_model("ease").fit(ds, get_model("ease").config_type(), ())
    pooled = get_model("ease").fit(ds, get_model("ease").config_type(), ("all",))
    lam = get_model("ease").config_type().lam
    groups = np.arange(12)
    assert alone.score_all(groups, np.arange(10)) == pytest.approx(binary(histories[:12], 10) @ plain_ease(
        binary(histories[:12], 10), lam), **F32)
    assert pooled.score_all(groups, np.arange(10)) == pytest.approx(binary(histories[:12], 10) @ plain_ease(
        binary(histories, 10), lam), **F32)
    assert not np.allclose(alone.score_all(groups, np.arange(10)), pooled.score_all(groups, np.arange(10)))


# ---- ItemKNN --------------------------------------------------------------------------------------
def test_itemknn_by_hand() -> None:
    # users {0,1}, {0,1,2}, {1,2}, {0,2,3}: n = [3, 3, 3, 1], c01 = 2, c02 = 2, c12 = 2, c03 = 1, c23 = 1
    ds = fake_dataset([[0, 1], [0, 1, 2], [1, 2], [0, 2, 3]], [0, 0, 0, 0], 4)
    cooc, users = item_counts(ds, ["t"])
    assert users.tolist() == [3, 3, 3, 1]
    cosine = knn_weights(cooc, users, "cosine", 0.5, 1.0, 10).toarray()
    # s_01 = 2 / (sqrt(3·3) + 1) = 0.5; s_03 = 1 / (sqrt(3·1) + 1)
    assert cosine[0, 1] == pytest.approx(0.5) and cosine[1, 0] == pytest.approx(0.5)
    assert cosine[0, 3] == pytest.approx(1 / (np.sqrt(3) + 1)) and cosine[1, 3] == 0.0
    # asymmetric, α = 1: s_hj = c_hj / (n_h + shrink): s_30 = 1 / (1 + 1), s_03 = 1 / (3 + 1)
    asym = knn_weights(cooc, users, "asymmetric", 1.0, 1.0, 10).toarray()
    assert asym[3, 0] == pytest.approx(0.5) and asym[0, 3] == pytest.approx(0.25)
    # shrink 0, α = 0: s_hj = c_hj / n_j: s_30 = 1/3, s_03 = 1
    assert knn_weights(cooc, users, "asymmetric", 0.0, 0.0, 10).toarray()[[3, 0], [0, 3]].tolist() == \
        pytest.approx([1 / 3, 1.0])
    # k = 1: item 0 keeps its most similar neighbour; 1 and 2 tie at 0.5, the lower index (1) stays
    top1 = knn_weights(cooc, users, "cosine", 0.5, 1.0, 1).toarray()
    assert np.count_nonzero(top1[:, 0]) == 1 and top1[1, 0] == pytest.approx(0.5)
    # column 3: s_03 = s_23 = 1 / (sqrt 3 + 1), a tie that keeps h = 0
    assert top1[:, 3].tolist() == pytest.approx([1 / (np.sqrt(3) + 1), 0, 0, 0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=5), min_size=1, max_size=10),
       st.sampled_from(["cosine", "asymmetric"]), st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 10.0]),
       st.integers(1, 7))
def test_itemknn_matches_a_plain_python_loop(histories, similarity, alpha, shrink, k) -> None:
    ds = fake_dataset(histories, [0] * len(histories), 7)
    config = get_model("itemknn").config_from({"similarity": similarity, "alpha": alpha, "shrink": shrink,
                                               "neighbours": k})
    scorer = get_model("itemknn").fit(ds, config, ())
    kept = plain_knn(histories, 7, 0.5 if similarity == "cosine" else alpha, shrink, k)
    expected = [[sum(kept.get((h, j), 0.0) for h in set(hist)) for j in range(7)] for hist in histories]
    assert scorer.score_all(np.arange(len(histories)), np.arange(7)) == pytest.approx(np.array(expected), rel=1e-9)


# ---- through the real paths, on a set where item–item structure must beat popularity -------------
CLUSTERS, SIZE, PER_CLUSTER = 12, 5, 12


def write_clustered(directory: Path) -> Path:
    """Two markets (t, s) of users who each rate 4 of the 5 items of one cluster, in a random
    order (2 training items, then validation, then test), plus a few popular items every user
    of t rated first. Popularity cannot tell a user's cluster; co-occurrence can."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for market, users in (("t", PER_CLUSTER), ("s", 2 * PER_CLUSTER)):
        lines = ["user,item,rating,time"]
        for c in range(CLUSTERS):
            for u in range(users):
                items = [f"i{c * SIZE + i}" for i in rng.permutation(SIZE)[:4]]
                if market == "t":
                    items = [f"hot{h}" for h in rng.permutation(3)[:2]] + items
                lines += [f"{market}{c}-{u},{item},5,{1000 + k}" for k, item in enumerate(items)]
        (directory / f"{market}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xmfast.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("clustered")
    prepare(write_clustered(root / "data"), root / "ds", PrepareConfig(target="t", sources="all", eval_negatives=30))
    return root


def invoke(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_each_beats_pop_through_train_and_evaluate(clustered: Path, one_thread: None) -> None:
    ds, runs = clustered / "ds", clustered / "runs"
    invoke("train", ds, "-m", "pop", "-o", runs / "pop")
    invoke("train", ds, "-m", "ease", "-o", runs / "ease")
    invoke("train", ds, "-m", "ease++", "-o", runs / "ease++")
    invoke("train", ds, "-m", "itemknn", "-o", runs / "itemknn", "--neighbours", 3)
    invoke("train", ds, "-m", "mf", "-o", runs / "mf", "--epochs", 8, "--lr", 0.1, "--embedding-dim", 8)
    ndcg = {name: json.loads((runs / name / "results.json").read_text())["test"]["ndcg@10"]
            for name in ("pop", "ease", "ease++", "itemknn", "mf")}
    assert all(ndcg[m] > ndcg["pop"] + 0.2 for m in ("ease", "ease++", "itemknn", "mf")), ndcg
    labels = {name: json.loads((runs / name / "run.json").read_text())["label"] for name in ("ease", "ease++")}
    assert labels == {"ease": "ease", "ease++": "ease++"}
    # a fitted run is fitted again to score: evaluate RUN and recommend give the run's own figures
    evaluated = invoke("evaluate", runs / "ease++", "--json", clustered / "e.json")
    assert "t " in evaluated
    again = json.loads((clustered / "e.json").read_text())["overall"]["ndcg@10"]
    assert again == pytest.approx(ndcg["ease++"], abs=1e-12)
    assert "EASE (lam 100) fitted on the training histories of t, s" in invoke("recommend", runs / "ease++", "--user", "t0-0")


def test_mf_shapes_and_a_seeded_run_is_deterministic(clustered: Path, one_thread: None) -> None:
    import torch

    from xmfast.models import Sizes
    from xmfast.runs import Run

    model = get_model("mf")
    module = model.build(Sizes(groups=5, items=7, markets=2), model.config_from({"embedding_dim": 3}))
    assert module(torch.tensor([0, 4]), torch.tensor([6, 0])).shape == (2,)
    assert module.user_embedding.weight.shape == (5, 3) and module.item_bias.weight.shape == (7, 1)
    assert model.build(Sizes(5, 7, 2), model.config_from({"item_bias": False})).item_bias is None
    runs = clustered / "mf-seeded"
    for name in ("a", "b"):
        invoke("train", clustered / "ds", "-m", "mf", "-o", runs / name, "--epochs", 2, "--seed", 5)
    a, b = (Run.open(runs / n) for n in ("a", "b"))
    assert [r["loss"] for r in a.read_metrics()] == [r["loss"] for r in b.read_metrics()]
    first, second = (torch.load(r.best_checkpoint, weights_only=True)["model"] for r in (a, b))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_grid_gives_alone_and_pooled_rows_and_tune_fits_once_per_trial(clustered: Path) -> None:
    from xmfast import tune as tuning
    from xmfast.experiment import plan, read_experiment, run_experiment

    file = clustered / "grid.toml"
    file.write_text(f'''name = "bl"\ndata = "{clustered / 'data'}"\nout = "{clustered / 'grid'}"\ntargets = ["t"]
sources = "all"\nmodels = ["pop", "ease", "ease++", "itemknn++", "mf"]\nseeds = [1]\ndevice = "cpu"
[prepare]\neval_negatives = 30\n[train.mf]\nepochs = 2
[tune]\ntrials = 2\n[tune.ease]\nlam = {{low = 1.0, high = 1000.0, log = true}}
[tune.mf]\nlr = {{low = 0.01, high = 0.1, log = true}}\nl2 = {{low = 1e-8, high = 1e-4, log = true}}
embedding_dim = [4, 8]
''', encoding="utf-8")
    exp = read_experiment(file)
    stages = {s.id: s for s in plan(exp).stages}
    assert {"t/single/s1/ease", "t/all/s1/ease++", "t/all/s1/itemknn++", "t/single/s1/mf"} <= set(stages)
    summary = tuning.tune(exp)
    ease = summary["ease@t"]
    assert ease["trials"] == {"complete": 2, "pruned": 0, "failed": 0} and set(ease["best"]["model"]) == {"lam"}
    assert summary["mf@t"]["trials"]["complete"] + summary["mf@t"]["trials"]["pruned"] == 2
    trials = sorted((tuning.tune_dir(exp) / "t" / "ease").glob("trial-*"))
    assert len(trials) == 2 and not list(tuning.tune_dir(exp).rglob("test.json"))
    import optuna

    study = optuna.load_study(study_name="ease@t", storage=tuning._storage(tuning.tune_dir(exp)))
    for trial in trials:  # fitted and validated once (no epochs): its value is its valid.json's
        info = json.loads((trial / "run.json").read_text())
        assert info["status"] == "validated" and not (trial / "metrics.jsonl").exists()
        valid = json.loads((trial / "valid.json").read_text())["overall"]["ndcg@10"]
        assert study.trials[int(trial.name.split("-")[1])].value == valid
    run_experiment(tuning.tuned_plan(exp))
    invoke("report", clustered / "grid", "-o", clustered / "report.md")
    table = (clustered / "report.md").read_text()
    for row in ("| ease ", "| ease++ ", "| itemknn++ ", "| mf "):
        assert row in table, table


def test_a_fitted_model_has_no_training_settings_to_tune(clustered: Path) -> None:
    file = clustered / "bad.toml"
    file.write_text(f'name = "x"\ndata = "{clustered / "data"}"\nout = "{clustered / "bad"}"\ntargets = ["t"]\n'
                    'models = ["ease"]\nseeds = [1]\n[tune]\ntrials = 1\n[tune.ease]\nlr = {low = 0.1, high = 1.0}\n',
                    encoding="utf-8")
    result = CliRunner().invoke(app, ["tune", str(file)])
    assert result.exit_code == 2 and result.output.startswith("error:")
    assert "[tune.ease] lr: ease has no such setting (its settings: lam)" in result.output, result.output


_EASE_DIGEST = """
import hashlib, sys, tempfile
from pathlib import Path
from xmfast.models import get_model
from xmfast.prepare import PrepareConfig, prepare
ds = prepare(Path(sys.argv[1]), Path(tempfile.mkdtemp()) / "ds", PrepareConfig(target="in", sources="all", seed=42))
ease = get_model("ease")
scores = ease.fit(ds, ease.config_type(), ("all",)).score(ds.test.group, ds.test.candidates)
print(hashlib.sha256(scores.tobytes()).hexdigest())
"""


def test_ease_scores_are_the_same_whatever_blas_threads(sample_dir: Path, tmp_path: Path) -> None:
    """BLAS started with one thread and with two orders the sums differently (on the sample, about
    40% of the float64 scores differed in the last digit, and near-ties flipped); the scores kept
    to float32's digits are the same bytes either way."""
    import os
    import subprocess
    import sys

    def digest(threads: str) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        # from tmp_path: the repository root's uncompiled xmfast/ would shadow the installed package
        return subprocess.run([sys.executable, "-c", _EASE_DIGEST, str(sample_dir)], env=env, check=True,
                              capture_output=True, text=True, cwd=tmp_path).stdout.strip()

    one, two = digest("1"), digest("2")
    assert len(one) == 64 and one == two
