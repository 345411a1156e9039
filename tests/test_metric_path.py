"""The fast metric path (issue 25): the column means computed in Rust are numpy's to the bit, and
an evaluation restricted to some markets ranks only their queries yet reports exactly what
ranking every query and filtering afterwards did (the earlier path, written out here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xmfast import core
from xmfast.evaluation import EvalConfig, column_means, evaluate_sampled, evaluate_scorer, standings
from xmfast.models.baselines import PopularityScorer
from xmfast.prepare import PrepareConfig, prepare

ALL = EvalConfig(cutoffs=(1, 5, 10, 20), measures=("hr", "ndcg", "precision", "map", "mrr", "auc"))


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=60),
                  elements=st.floats(-1e12, 1e12, allow_nan=False)))
def test_column_means_are_numpys_to_the_bit(values: np.ndarray) -> None:
    np.testing.assert_array_equal(column_means(values), values.mean(axis=0), strict=True)
    if values.shape[1] > 1:  # the Rust path itself (one column goes to numpy's pairwise sum)
        assert core.column_means(np.ascontiguousarray(values)).tobytes() == values.mean(axis=0).tobytes()


@pytest.mark.parametrize("rows", [1, 9_999, 100_003])
def test_column_means_of_metric_values_at_size(rows: int) -> None:
    """Metric values as the evaluation makes them, many rows (numpy's buffered reduction too)."""
    scores = np.random.default_rng(rows).random((rows, 20), dtype=np.float32)
    values = standings(scores).values(ALL.metric_names, "expected")
    assert column_means(values).tobytes() == values.mean(axis=0).tobytes()
    with pytest.raises(ValueError, match="C-contiguous"):
        core.column_means(values[:, ::2])


@pytest.fixture(scope="module")
def sample_dataset(sample_dir: Path):
    return prepare(sample_dir, None, PrepareConfig(target="in", sources="all"))


def filtered_the_old_way(ds, split: str, markets: list[str]):  # noqa: ANN001, ANN201
    """What an evaluation of `markets` was before: every query ranked, then the rows kept."""
    held = ds.test if split == "test" else ds.valid
    keep = np.flatnonzero(np.isin(ds.group_market[held.group], [ds.markets.index(m) for m in markets]))
    users = [ds.users[int(u)] for u in ds.group_user[held.group]]
    items = [ds.items[int(i)] for i in held.item]
    return keep, [users[i] for i in keep], [items[i] for i in keep]


@pytest.mark.parametrize("ties", ["pessimistic", "expected", "trec"])
@pytest.mark.parametrize("markets", [["in"], ["uk", "de"], None])
def test_a_market_filter_ranks_only_its_queries_with_the_same_results(sample_dataset, ties: str,
                                                                       markets: list[str] | None) -> None:
    ds = sample_dataset
    config = EvalConfig(cutoffs=(5, 10), measures=ALL.measures, ties=ties)  # type: ignore[arg-type]
    scores = np.round(np.random.default_rng(3).random(ds.test.candidates.shape), 1)  # many ties
    every = evaluate_sampled(ds, "test", scores, config)
    mine = evaluate_sampled(ds, "test", scores, config, markets=markets)
    keep, users, items = filtered_the_old_way(ds, "test", markets or list(ds.markets))
    assert len(mine) == keep.size > 0
    np.testing.assert_array_equal(mine.values, every.values[keep], strict=True)
    np.testing.assert_array_equal(mine.standings.greater, every.standings.greater[keep])
    np.testing.assert_array_equal(mine.query_market, every.query_market[keep])
    assert list(mine.query_user) == users and list(mine.positive_item) == items
    assert mine.aggregate() == {m: float(v) for m, v in zip(config.metric_names, every.values[keep].mean(axis=0))}
    assert mine.tie_share == float(np.mean(every.standings.ties[keep] > 0))


@pytest.mark.parametrize("full", [False, True])
def test_a_scorer_evaluated_on_some_markets_ranks_only_theirs(sample_dataset, full: bool) -> None:
    ds = sample_dataset
    scorer = PopularityScorer(ds)
    every = evaluate_scorer(ds, "test", scorer, ALL, full=full, max_scores=30_000)
    seen: list[tuple[int, int]] = []
    mine = evaluate_scorer(ds, "test", scorer, ALL, full=full, markets=["in"], max_scores=30_000,
                           progress=lambda done, total: seen.append((done, total)))
    keep, users, _ = filtered_the_old_way(ds, "test", ["in"])
    np.testing.assert_array_equal(mine.values, every.values[keep], strict=True)
    np.testing.assert_array_equal(mine.ranks(), every.ranks()[keep])
    assert list(mine.query_user) == users
    assert seen[-1] == (keep.size, keep.size)  # the progress counts the market's queries alone


def test_query_ids_read_on_demand_behave_as_a_list(sample_dataset) -> None:
    ds = sample_dataset
    e = evaluate_sampled(ds, "valid", np.zeros(ds.valid.candidates.shape), EvalConfig(), markets=["de"])
    _, users, items = filtered_the_old_way(ds, "valid", ["de"])
    assert len(e.query_user) == len(users) and e.query_user[0] == users[0] and e.query_user[-1] == users[-1]
    assert list(e.positive_item[1:4]) == items[1:4] and items[2] in e.positive_item
    with pytest.raises(IndexError):
        e.query_user[len(users)]


def test_ids_pickle_as_their_strings() -> None:
    """An evaluation crosses processes (torchrun broadcasts rank 0's results): its lazily read
    ids pickle as the ids themselves."""
    import pickle

    from xmfast.evaluation import Ids

    ids = Ids(core.Vocab(["u1", "u2", "u3"]), np.array([2, 0, 2]))
    assert pickle.loads(pickle.dumps(ids)) == ["u3", "u1", "u3"]
