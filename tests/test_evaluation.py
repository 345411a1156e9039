"""Ranked evaluation: hand-computed cases for every metric and tie policy, property tests, a
differential test against a plain numpy implementation written here, and pytrec_eval."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmfast import core
from xmfast.models.baselines import CooccurrenceScorer, PopularityScorer
from xmfast.errors import XmfastError
from xmfast.evaluation import EvalConfig, evaluate_sampled, evaluate_scorer, standings
from xmfast.prepare import PrepareConfig, prepare
from xmfast import trec

ALL = ("hr", "ndcg", "precision", "map", "mrr", "auc")


def values(scores, policy, cutoffs=(1, 3, 10), measures=ALL, keys=None):
    config = EvalConfig(cutoffs=cutoffs, measures=measures, ties=policy)
    st_ = standings(np.asarray(scores), keys=keys)
    return dict(zip(config.metric_names, st_.values(config.metric_names, policy)[0]))


# ---- hand-computed --------------------------------------------------------------------------


def test_positive_in_third_place_every_metric() -> None:
    # Positive 0.6 (column 0); 0.9 and 0.7 above; 3 below: rank 2 (0-based) under every policy.
    v = values(np.array([[0.6, 0.9, 0.1, 0.7, 0.2, 0.3]], dtype=np.float32), "pessimistic")
    assert v["hr@1"] == 0 and v["hr@3"] == 1 and v["hr@10"] == 1
    assert v["ndcg@3"] == pytest.approx(0.5)  # 1 / log2(2 + 2)
    assert v["ndcg@1"] == 0
    assert v["precision@3"] == pytest.approx(1 / 3)
    assert v["precision@10"] == pytest.approx(0.1)
    assert v["map@3"] == pytest.approx(1 / 3) and v["map@1"] == 0
    assert v["mrr"] == pytest.approx(1 / 3)
    assert v["auc"] == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    ("policy", "rank"),
    [("pessimistic", 3), ("optimistic", 1), ("trec", 2)],
)
def test_tie_policies_hand_computed(policy: str, rank: int) -> None:
    # Positive item "B05" scores 0.5; one candidate above; two ties: "B09" (sorts after "B05",
    # so trec puts it first) and "B01" (trec puts it after). Ranks 0-based.
    scores = np.array([[0.5, 0.8, 0.5, 0.5, 0.1]], dtype=np.float32)
    ids = ["B05", "X", "B09", "B01", "Y"]
    keys = np.argsort(np.argsort(np.array(ids, dtype=object)))[None, :].astype(np.uint32)
    v = values(scores, policy, keys=keys)
    assert v["mrr"] == pytest.approx(1 / (rank + 1))
    assert v["ndcg@10"] == pytest.approx(1 / math.log2(rank + 2))
    assert v["hr@3"] == (1.0 if rank < 3 else 0.0)
    assert v["auc"] == pytest.approx((4 - rank) / 4)


def test_expected_policy_averages_over_tie_orders() -> None:
    scores = np.array([[0.5, 0.8, 0.5, 0.5, 0.1]], dtype=np.float64)  # rank 1, 2 or 3
    v = values(scores, "expected")
    assert v["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert v["hr@3"] == pytest.approx(2 / 3)
    assert v["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert v["map@10"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert v["auc"] == pytest.approx((4 - 1 - 1) / 4)


def test_constant_model_is_never_rewarded_for_ties() -> None:
    scores = np.full((50, 100), 0.25, dtype=np.float32)
    for policy, hr in [("expected", 0.1), ("pessimistic", 0.0), ("optimistic", 1.0)]:
        config = EvalConfig(cutoffs=(10,), measures=("hr",), ties=policy)
        got = standings(scores).values(config.metric_names, policy)
        assert np.allclose(got, hr)


def test_float32_ties_are_kept_and_nan_is_an_error() -> None:
    a = np.float32(0.1)
    b = np.float32(0.1 + 1e-12)  # the same float32
    assert standings(np.array([[a, b]])).ties[0] == 1
    with pytest.raises(XmfastError, match="row 1.*NaN"):
        standings(np.array([[1.0, 0.0], [np.nan, 1.0]], dtype=np.float32))
    # float16 scores are widened exactly: ties stay ties.
    half = np.array([[0.1, 0.1, 0.2]], dtype=np.float16)
    s = standings(half)
    assert (s.greater[0], s.ties[0]) == (1, 1)


def test_full_ranking_exclusions_and_positive_anywhere() -> None:
    scores = np.array([[0.9, 0.8, 0.5, 0.5, 0.4]], dtype=np.float32)
    offsets = np.array([0, 2], dtype=np.uint64)
    excluded = np.array([0, 3], dtype=np.uint32)  # a training item above and a tie
    s = standings(scores, np.array([2], dtype=np.uint32), exclude=(offsets, excluded))
    assert (s.greater[0], s.ties[0], s.others[0]) == (1, 0, 2)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="float32 or float64"):
        core.standings(np.zeros((2, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        core.standings(np.zeros((3, 4), dtype=np.float32).T)
    with pytest.raises(ValueError, match="outside"):
        core.standings(np.zeros((1, 3), dtype=np.float32), np.array([5], dtype=np.uint32))
    with pytest.raises(ValueError, match="unknown tie policy"):
        z = np.zeros(1, dtype=np.uint32)
        core.metric_values(z, z, z, z, ["hr@10"], "random")
    with pytest.raises(ValueError, match="unknown metric"):
        z = np.zeros(1, dtype=np.uint32)
        core.metric_values(z, z, z, z, ["hits@10"])
    with pytest.raises(XmfastError, match="unknown measure"):
        EvalConfig(measures=("recall",))


# ---- an independent plain implementation ----------------------------------------------------


def plain_metrics(scores: np.ndarray, ids: np.ndarray, cutoffs, policy: str) -> np.ndarray:
    """Sorts every permutation-free way: builds the ranked list explicitly and reads the rank."""
    rows = []
    for row, row_ids in zip(scores, ids):
        pos = row[0]
        others = row[1:]
        greater = int(np.sum(others > pos))
        tied = int(np.sum(others == pos))
        if policy == "trec":
            order = sorted(range(len(row)), key=lambda c: (-float(row[c]), [-b for b in row_ids[c].encode()] + [1]))
            ranks = [order.index(0)]
        elif policy == "pessimistic":
            ranks = [greater + tied]
        elif policy == "optimistic":
            ranks = [greater]
        else:
            ranks = list(range(greater, greater + tied + 1))
        n = len(row) - 1
        vals = []
        for k in cutoffs:
            vals.append(np.mean([1.0 if r < k else 0.0 for r in ranks]))
        for k in cutoffs:
            vals.append(np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks]))
        vals.append(np.mean([1 / (r + 1) for r in ranks]))
        vals.append(np.mean([(n - r) / n for r in ranks]))
        rows.append(vals)
    return np.array(rows)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_rows=st.integers(1, 12),
    n_cols=st.integers(2, 40),
    levels=st.integers(1, 6),
    policy=st.sampled_from(["pessimistic", "optimistic", "expected", "trec"]),
)
def test_matches_plain_implementation(data, n_rows: int, n_cols: int, levels: int, policy: str) -> None:
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, levels, size=(n_rows, n_cols)) / 4).astype(np.float32)  # many ties
    vocab = [f"i{rng.integers(0, 10**6):06d}" for _ in range(n_rows * n_cols)]
    ids = np.array(vocab, dtype=object).reshape(n_rows, n_cols)
    order = sorted(set(vocab), key=str.encode)
    key_of = {v: i for i, v in enumerate(order)}
    keys = np.vectorize(key_of.get)(ids).astype(np.uint32)
    # Distinct ids per row, as candidate lists have them.
    if any(len(set(r)) < len(r) for r in ids):
        return
    cutoffs = (1, 5, 10)
    config = EvalConfig(cutoffs=cutoffs, measures=("hr", "ndcg", "mrr", "auc"), ties=policy)
    got = standings(scores, keys=keys).values(config.metric_names, policy)
    want = plain_metrics(scores, ids, cutoffs, policy)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 4), min_size=2, max_size=60).map(lambda v: np.array([v], dtype=np.float64)),
    k=st.integers(1, 30),
)
def test_policy_order_and_bounds(scores: np.ndarray, k: int) -> None:
    names = [f"hr@{k}", f"ndcg@{k}", "mrr", "auc"]
    s = standings(scores)
    pess, exp, opt = (s.values(names, p)[0] for p in ("pessimistic", "expected", "optimistic"))
    assert np.all(pess <= exp + 1e-12) and np.all(exp <= opt + 1e-12)
    assert np.all((0 <= pess) & (opt <= 1))
    if s.ties[0] == 0:
        assert np.allclose(pess, opt)


# ---- against pytrec_eval ----------------------------------------------------------------------


def test_trec_policy_equals_pytrec_eval_on_random_ties(tmp_path: Path) -> None:
    import pytrec_eval  # a declared test dependency (the `test` extra)

    rng = np.random.default_rng(3)
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(400):
        docs = [f"d{x}" for x in rng.choice(5000, size=100, replace=False)]
        scores = rng.integers(0, 8, size=100) / 8.0  # heavy ties
        run[f"m:u{q}"] = {d: float(s) for d, s in zip(docs, scores)}
        qrels[f"m:u{q}"] = {docs[int(rng.integers(0, 100))]: 1}
    measures = {"recall_5", "recall_10", "ndcg_cut_5", "ndcg_cut_10", "P_10", "map_cut_10", "recip_rank"}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    parsed = trec.Run({q: list(d) for q, d in run.items()}, {q: list(d.values()) for q, d in run.items()})
    config = EvalConfig(cutoffs=(5, 10), measures=("hr", "ndcg", "precision", "map", "mrr"), ties="trec")
    ours = trec.evaluate_run(parsed, qrels, config)
    names = {"hr@5": "recall_5", "hr@10": "recall_10", "ndcg@5": "ndcg_cut_5", "ndcg@10": "ndcg_cut_10",
             "precision@10": "P_10", "map@10": "map_cut_10", "mrr": "recip_rank"}
    qids = sorted(qrels)
    assert ours.tie_share > 0.9
    for mine, name in names.items():
        got = ours.values[:, ours.metrics.index(mine)]
        want = np.array([theirs[q][name] for q in qids])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=mine)


# ---- on a prepared dataset ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_dataset(sample_dir: Path):
    return prepare(sample_dir, None, PrepareConfig(target="in", sources="all"))


def test_sampled_and_scorer_paths_agree_and_trec_files_round_trip(sample_dataset, tmp_path: Path) -> None:
    ds = sample_dataset
    scorer = CooccurrenceScorer(ds)
    config = EvalConfig(cutoffs=(10,), measures=("hr", "ndcg", "mrr"), ties="trec")
    via_scorer = evaluate_scorer(ds, "test", scorer, config)
    scores = scorer.score(np.asarray(ds.test.group), np.asarray(ds.test.candidates))
    direct = evaluate_sampled(ds, "test", scores, config)
    np.testing.assert_array_equal(via_scorer.values, direct.values)
    trec.write_run(tmp_path / "run", ds, "test", scores)
    trec.write_qrels(tmp_path / "qrels", ds, "test")
    back = trec.run_to_scores(trec.read_run(tmp_path / "run"), ds, "test")
    np.testing.assert_array_equal(back, scores)
    from_files = trec.evaluate_run(trec.read_run(tmp_path / "run"), trec.read_qrels(tmp_path / "qrels"), config)
    assert from_files.aggregate() == pytest.approx(direct.aggregate(), abs=1e-12)


def test_export_run_scores_with_a_scorer_or_writes_a_matrix(sample_dataset, tmp_path: Path) -> None:
    """`xmfast evaluate` exports every run through trec.export_run: a scorer's run is the run of
    its scores of the stored candidates."""
    ds = sample_dataset
    scorer = PopularityScorer(ds)
    scores = scorer.score(np.asarray(ds.valid.group), np.asarray(ds.valid.candidates))
    trec.export_run(tmp_path / "a", ds, "valid", scorer, "pop")
    trec.export_run(tmp_path / "b", ds, "valid", scores, "pop")
    text = (tmp_path / "a").read_text()
    assert text == (tmp_path / "b").read_text()
    lines = text.splitlines()
    assert len(lines) == scores.size and {line.split()[5] for line in lines} == {"pop"}
    np.testing.assert_array_equal(trec.run_to_scores(trec.read_run(tmp_path / "a"), ds, "valid"), scores)
    with pytest.raises(XmfastError, match="scores have shape"):
        trec.export_run(tmp_path / "c", ds, "valid", scores[:-1])


def test_cross_market_cooccurrence_beats_popularity_on_sample(sample_dataset) -> None:
    ds = sample_dataset
    config = EvalConfig(cutoffs=(10,), measures=("hr", "ndcg"))
    pop = evaluate_scorer(ds, "test", PopularityScorer(ds), config, markets=["in"]).aggregate()
    alone = evaluate_scorer(ds, "test", CooccurrenceScorer(ds, ["in"]), config, markets=["in"]).aggregate()
    cross = evaluate_scorer(ds, "test", CooccurrenceScorer(ds), config, markets=["in"]).aggregate()
    assert cross["hr@10"] > alone["hr@10"] + 0.1 > pop["hr@10"] + 0.2


def test_full_ranking_matches_dense_numpy(sample_dataset) -> None:
    ds = sample_dataset
    scorer = PopularityScorer(ds)
    config = EvalConfig(cutoffs=(10, 50), measures=("hr", "ndcg", "mrr"), ties="pessimistic")
    ev = evaluate_scorer(ds, "test", scorer, config, full=True, max_scores=20_000)  # many chunks
    # Plain: for every query, rank the held-out item among its market's catalog minus the
    # training items and the validation item.
    ranks = []
    for q in range(len(ds.test)):
        g = int(ds.test.group[q])
        catalog = np.asarray(ds.catalog(ds.markets[int(ds.group_market[g])]))
        known = set(ds.history(g).tolist()) | {int(ds.valid.item[q])}
        known.discard(int(ds.test.item[q]))
        cand = np.array([c for c in catalog if c not in known])
        s = scorer.score_all(np.array([g]), cand)[0]
        p = scorer.score_all(np.array([g]), np.array([ds.test.item[q]]))[0, 0]
        ranks.append(int(np.sum(s > p) + np.sum(s == p) - 1))
    ranks = np.array(ranks)
    np.testing.assert_array_equal(ev.ranks(), ranks)
    np.testing.assert_allclose(ev.values[:, ev.metrics.index("mrr")], 1 / (ranks + 1))


def test_per_user_json_and_compare(sample_dataset, tmp_path: Path) -> None:
    from xmfast.compare import compare_results
    from xmfast.evaluation import read_results

    ds = sample_dataset
    config = EvalConfig(cutoffs=(10,), measures=("hr", "ndcg"))
    pop = evaluate_scorer(ds, "test", PopularityScorer(ds), config)
    cooc = evaluate_scorer(ds, "test", CooccurrenceScorer(ds), config)
    pop.to_json(tmp_path / "pop.json")
    cooc.to_json(tmp_path / "cooc.json")
    data = read_results(tmp_path / "pop.json")
    assert len(data["per_user"]) == len(ds.test)
    first = data["per_user"][0]
    assert first["user"] == ds.users[int(ds.group_user[int(ds.test.group[0])])]
    assert first["rank"] == int(pop.ranks()[0])
    result = compare_results(tmp_path / "pop.json", tmp_path / "cooc.json")
    hr = result.metrics[0]
    assert hr.metric == "hr@10" and hr.mean_b > hr.mean_a
    assert hr.wilcoxon_pvalue < 1e-10 and hr.t_pvalue < 1e-10 and hr.sign_pvalue < 1e-10
    same = compare_results(tmp_path / "pop.json", tmp_path / "pop.json")
    assert all(m.t_pvalue == 1.0 and m.wins == 0 for m in same.metrics)


# ---- top-k ------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 8), cols=st.integers(1, 60), k=st.integers(0, 12),
)
def test_top_k_matches_sorting(seed: int, rows: int, cols: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, 6, size=(rows, cols)) / 3).astype(np.float32)
    excluded = [np.unique(rng.integers(0, cols, size=rng.integers(0, cols + 1))).astype(np.uint32) for _ in range(rows)]
    offsets = np.zeros(rows + 1, dtype=np.uint64)
    np.cumsum([e.size for e in excluded], out=offsets[1:])
    idx, val = core.top_k(scores, k, exclude_offsets=offsets, exclude_items=np.concatenate(excluded))
    assert idx.shape == (rows, k) and val.dtype == np.float32
    for r in range(rows):
        allowed = [c for c in range(cols) if c not in set(excluded[r].tolist())]
        want = sorted(allowed, key=lambda c: (-scores[r, c], c))[:k]
        want += [-1] * (k - len(want))
        assert idx[r].tolist() == want
