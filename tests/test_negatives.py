"""Negative sampling: the stored evaluation candidates (`core.sample_distinct`,
`core.eval_candidates`, `prepare`) and the per-epoch training negatives
(`core.TrainNegativeSampler`, `PreparedDataset.train_negative_sampler`): hand-computed cases,
hypothesis property tests against plain-Python checks, uniformity, and every invariant on the
real XMarket files under both protocols."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_text
from xmfast import core
from xmfast.dataset import PreparedDataset
from xmfast.errors import DataError
from xmfast.prepare import PrepareConfig, prepare

u16, u32, u64 = np.uint16, np.uint32, np.uint64


def csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=u64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.array([x for r in rows for x in r], dtype=u32)
    return offsets, values


def distinct_rows(a: np.ndarray) -> bool:
    s = np.sort(a, axis=1)
    return bool(np.all(s[:, 1:] != s[:, :-1]))


# ---- core.sample_distinct ---------------------------------------------------------------------


def test_sample_distinct_by_hand() -> None:
    # Pool 0 = 0..49, pool 1 = {3..7}. Query 1 (pool 1 minus {3, 4}) can only draw 5, 6, 7.
    po, pi = csr([list(range(50)), [3, 4, 5, 6, 7]])
    eo, ei = csr([[1, 2, 3], [3, 4], list(range(40))])
    args = (po, pi, np.array([0, 1, 0], dtype=u32), eo, ei, np.array([10, 11, 12], dtype=u64))
    a = core.sample_distinct(*args, 3, 7)
    assert a.shape == (3, 3) and a.dtype == u32
    assert sorted(a[1].tolist()) == [5, 6, 7]
    assert not set(a[0].tolist()) & {1, 2, 3} and set(a[2].tolist()) <= set(range(40, 50))
    assert distinct_rows(a)
    assert np.array_equal(a, core.sample_distinct(*args, 3, 7))
    # Query 2 has exactly 10 allowed items: asking for all 10 returns a permutation of them.
    full = core.sample_distinct(po, pi, np.array([0], dtype=u32), *csr([list(range(40))]), np.array([5], dtype=u64), 10, 1)
    assert sorted(full[0].tolist()) == list(range(40, 50))
    # 4 from query 1 is impossible: the first failing query is named with its availability.
    with pytest.raises(
        ValueError,
        match=r"^query 1: only 3 items can serve as negatives but 4 were requested \(lower the number of evaluation negatives\)$",
    ):
        core.sample_distinct(*args, 4, 7)


def test_sample_distinct_rejects_malformed_input() -> None:
    po, pi = csr([[0, 1, 2, 3, 4, 5]])
    keys = np.array([1], dtype=u64)
    eo, ei = csr([[1]])
    with pytest.raises(ValueError, match="pool 0 is not sorted and unique"):
        core.sample_distinct(*csr([[0, 2, 2, 3]]), np.array([0], dtype=u32), eo, ei, keys, 1, 0)
    with pytest.raises(ValueError, match="exclusion row 0 is not sorted"):
        core.sample_distinct(po, pi, np.array([0], dtype=u32), *csr([[3, 1]]), keys, 1, 0)
    with pytest.raises(ValueError, match="pool 1 does not exist"):
        core.sample_distinct(po, pi, np.array([1], dtype=u32), eo, ei, keys, 1, 0)
    with pytest.raises(ValueError, match="differ in length"):
        core.sample_distinct(po, pi, np.array([0, 0], dtype=u32), eo, ei, keys, 1, 0)
    with pytest.raises(ValueError, match="CSR offsets end at 2 but there are 1 values"):
        core.sample_distinct(po, pi, np.array([0], dtype=u32), np.array([0, 2], dtype=u64), ei, keys, 1, 0)


def test_sample_distinct_zero_negatives_keeps_one_row_per_query() -> None:
    po, pi = csr([list(range(10))])
    eo, ei = csr([[], [], []])
    out = core.sample_distinct(po, pi, np.zeros(3, dtype=u32), eo, ei, np.arange(3, dtype=u64), 0, 1)
    assert out.shape == (3, 0)  # queries × n, as documented, also for n = 0


sorted_set = st.lists(st.integers(0, 40), max_size=40, unique=True).map(sorted)


@st.composite
def distinct_case(draw: st.DrawFn) -> dict:
    pools = draw(st.lists(sorted_set, min_size=1, max_size=3))
    q = draw(st.integers(1, 12))
    query_pool = draw(st.lists(st.integers(0, len(pools) - 1), min_size=q, max_size=q))
    # Exclusions: sorted, may contain items outside the pool (repeats: see the test below).
    exclude = [sorted(draw(st.lists(st.integers(0, 45), max_size=30, unique=True))) for _ in range(q)]
    keys = draw(st.lists(st.integers(0, 2**64 - 1), min_size=q, max_size=q))
    return dict(pools=pools, query_pool=query_pool, exclude=exclude, keys=keys,
                n=draw(st.integers(1, 12)), seed=draw(st.integers(0, 2**64 - 1)))


def call_distinct(c: dict, order: list[int] | None = None) -> np.ndarray:
    order = list(range(len(c["keys"]))) if order is None else order
    po, pi = csr(c["pools"])
    eo, ei = csr([c["exclude"][k] for k in order])
    return core.sample_distinct(
        po, pi, np.array([c["query_pool"][k] for k in order], dtype=u32), eo, ei,
        np.array([c["keys"][k] for k in order], dtype=u64), c["n"], c["seed"],
    )


@settings(max_examples=120, deadline=None)
@given(c=distinct_case())
def test_sample_distinct_properties(c: dict) -> None:
    allowed = [sorted(set(c["pools"][p]) - set(e)) for p, e in zip(c["query_pool"], c["exclude"])]
    short = [k for k, a in enumerate(allowed) if len(a) < c["n"]]
    if short:
        k = short[0]
        with pytest.raises(ValueError, match=rf"^query {k}: only {len(allowed[k])} items can serve as negatives but {c['n']} were"):
            call_distinct(c)
        return
    out = call_distinct(c)
    assert out.shape == (len(c["keys"]), c["n"]) and out.dtype == u32
    for row, a in zip(out.tolist(), allowed):
        assert len(set(row)) == len(row)  # distinct
        assert set(row) <= set(a)  # within the pool, never excluded
        if len(a) == c["n"]:
            assert sorted(row) == a
    assert np.array_equal(out, call_distinct(c))
    # Each query's stream depends only on its own key: reversing the queries reverses the rows.
    rev = list(range(len(c["keys"])))[::-1]
    assert np.array_equal(call_distinct(c, rev), out[::-1])


def test_sample_distinct_counts_repeated_exclusions_once() -> None:
    # Exclusion rows need only be sorted, so repeats are valid input: [0, 0] excludes one item
    # of {0, 1, 2}, leaving two.
    po, pi = csr([[0, 1, 2]])
    args = (po, pi, np.zeros(1, dtype=u32), *csr([[0, 0]]), np.array([0], dtype=u64))
    with pytest.raises(ValueError, match="^query 0: only 2 items can serve as negatives but 3 were requested"):
        core.sample_distinct(*args, 3, 0)
    assert sorted(core.sample_distinct(*args, 2, 0)[0].tolist()) == [1, 2]


def test_sample_distinct_depends_on_seed_and_key() -> None:
    po, pi = csr([list(range(1000))])
    eo, ei = csr([[], []])
    a = core.sample_distinct(po, pi, np.zeros(2, dtype=u32), eo, ei, np.array([5, 5], dtype=u64), 20, 1)
    b = core.sample_distinct(po, pi, np.zeros(2, dtype=u32), eo, ei, np.array([5, 6], dtype=u64), 20, 1)
    c = core.sample_distinct(po, pi, np.zeros(2, dtype=u32), eo, ei, np.array([5, 5], dtype=u64), 20, 2)
    assert np.array_equal(a[0], a[1]), "same key, same seed: same draw"
    assert np.array_equal(a[0], b[0]) and not np.array_equal(b[0], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(("pool_len", "excluded"), [(12, list(range(7))), (600, [3, 17])], ids=["dense", "sparse"])
def test_sample_distinct_is_uniform(pool_len: int, excluded: list[int]) -> None:
    queries, n = 6000, 3
    po, pi = csr([list(range(pool_len))])
    eo, ei = csr([excluded] * queries)
    out = core.sample_distinct(po, pi, np.zeros(queries, dtype=u32), eo, ei, np.arange(queries, dtype=u64), n, 99)
    counts = np.bincount(out.ravel(), minlength=pool_len)
    assert counts[excluded].sum() == 0
    allowed = np.setdiff1d(np.arange(pool_len), excluded)
    expect = queries * n / allowed.size
    chi2 = float(((counts[allowed] - expect) ** 2 / expect).sum())
    dof = allowed.size - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


# ---- core.eval_candidates and prepare ---------------------------------------------------------


def eval_case(protocol: str, negatives: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    # Market 0 ("uk") sells 0..9, market 1 ("de") 10..19. Group 0 = (uk, ann), group 1 = (de, bob).
    mo, mi = csr([list(range(10)), list(range(10, 20))])
    to, ti = csr([[0, 1, 2], [10, 11]])
    return core.eval_candidates(
        group_market=np.array([0, 1], dtype=u16), group_user=np.array([0, 1], dtype=u32),
        train_offsets=to, train_items=ti, heldout_groups=np.array([0, 1], dtype=u32),
        valid_item=np.array([3, 12], dtype=u32), test_item=np.array([4, 13], dtype=u32),
        market_item_offsets=mo, market_items=mi, protocol=protocol, negatives=negatives, seed=seed,
        market_keys=np.array([core.stable_hash("uk"), core.stable_hash("de")], dtype=u64),
        user_keys=np.array([core.stable_hash("ann"), core.stable_hash("bob")], dtype=u64),
        market_names=["uk", "de"], users=core.Vocab(["ann", "bob"]),
    )


def test_eval_candidates_forec_by_hand() -> None:
    valid, test = eval_case("forec", 5)
    assert valid.shape == test.shape == (2, 6) and valid.dtype == u32
    assert valid[:, 0].tolist() == [3, 12] and test[:, 0].tolist() == [4, 13]
    # uk/ann: market 0 minus train {0,1,2}, valid 3 and test 4 leaves exactly 5..9, for both.
    assert sorted(valid[0, 1:].tolist()) == sorted(test[0, 1:].tolist()) == [5, 6, 7, 8, 9]
    # de/bob: market 1 minus {10, 11, 12, 13}; never a uk item.
    for row in (valid[1, 1:], test[1, 1:]):
        assert set(row.tolist()) <= set(range(14, 20)) and len(set(row.tolist())) == 5
    # Six negatives are impossible for ann: the error names the market and the user.
    with pytest.raises(ValueError, match=r"^market uk, user ann: only 5 items can serve as negatives but 6 were requested"):
        eval_case("forec", 6)
    assert all(np.array_equal(x, y) for x, y in zip(eval_case("forec", 5), eval_case("forec", 5)))
    assert not np.array_equal(eval_case("forec", 5, seed=2)[0][1], valid[1])


def test_eval_candidates_acmr_by_hand() -> None:
    valid, test = eval_case("acmr", 16)
    # ann: all 20 items minus train {0,1,2} and the held-out item: 16 left, all drawn.
    assert sorted(valid[0, 1:].tolist()) == sorted(set(range(20)) - {0, 1, 2, 3})
    assert sorted(test[0, 1:].tolist()) == sorted(set(range(20)) - {0, 1, 2, 4})
    assert 4 in valid[0, 1:] and 3 in test[0, 1:], "acmr excludes only the split's own held-out item"
    with pytest.raises(ValueError, match=r"^market uk, user ann: only 16 items can serve as negatives but 17"):
        eval_case("acmr", 17)
    with pytest.raises(ValueError, match="unknown protocol"):
        eval_case("both", 3)


def test_prepare_names_market_and_user_when_the_pool_is_too_small(tmp_path: Path) -> None:
    write_text(tmp_path / "uk_5core.txt", "userId itemId rate date\n" + "".join(
        f"{u} {i} 5.0 2020-01-0{d}\n" for u, items in (("u1", "ABC"), ("u2", "ADE")) for d, i in enumerate(items, 1)
    ))
    # forec: 5 uk items minus u1's 3 positives leaves 2.
    ds = prepare(tmp_path, None, PrepareConfig(target="uk", eval_negatives=2))
    assert ds.items.to_list() == ["A", "B", "C", "D", "E"]
    assert ds.valid.candidates[:, 0].tolist() == [1, 3] and ds.test.candidates[:, 0].tolist() == [2, 4]
    assert sorted(ds.test.candidates[0, 1:].tolist()) == [3, 4] and sorted(ds.test.candidates[1, 1:].tolist()) == [1, 2]
    with pytest.raises(DataError, match=r"^market uk, user u1: only 2 items can serve as negatives but 3 were requested"):
        prepare(tmp_path, None, PrepareConfig(target="uk", eval_negatives=3))
    # acmr: 5 items minus one training item and the held-out item leaves 3.
    prepare(tmp_path, None, PrepareConfig(target="uk", protocol="acmr", eval_negatives=3))
    with pytest.raises(DataError, match=r"^market uk, user u1: only 3 items can serve as negatives but 4 were requested"):
        prepare(tmp_path, None, PrepareConfig(target="uk", protocol="acmr", eval_negatives=4))


# ---- real data: stored candidates and training negatives --------------------------------------


@pytest.fixture(scope="module", params=["forec", "acmr"])
def real(request: pytest.FixtureRequest, xmarket_dir: Path) -> PreparedDataset:
    return prepare(xmarket_dir, None, PrepareConfig(target="uk", sources="all", protocol=request.param))


def pair_keys(group: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    return group.astype(np.int64) * n_items + item.astype(np.int64)


def naive_all_positives(ds: PreparedDataset) -> tuple[list[int], list[int]]:
    valid = dict(zip(ds.valid.group.tolist(), ds.valid.item.tolist()))
    test = dict(zip(ds.test.group.tolist(), ds.test.item.tolist()))
    offsets, items = [0], []
    for g in range(ds.n_groups):
        items += ds.history(g).tolist()
        if g in valid:
            items += [valid[g], test[g]]
        offsets.append(len(items))
    return offsets, items


def test_all_positives_matches_naive(real: PreparedDataset) -> None:
    offsets, items = real._all_positives()
    want_offsets, want_items = naive_all_positives(real)
    assert offsets.dtype == u64 and items.dtype == u32
    assert offsets.tolist() == want_offsets and items.tolist() == want_items


def test_all_positives_with_training_only_groups(xmarket_dir: Path) -> None:
    ds = prepare(xmarket_dir, None, PrepareConfig(target="in", sources=["jp"], min_interactions=10))
    assert 0 < len(ds.test) < ds.n_groups, "some groups are training-only"
    offsets, items = ds._all_positives()
    want_offsets, want_items = naive_all_positives(ds)
    assert offsets.tolist() == want_offsets and items.tolist() == want_items


def test_real_eval_candidates(real: PreparedDataset) -> None:
    ds, n_items = real, real.n_items
    pos_off, pos_items = ds._all_positives()
    pos_keys = np.unique(pair_keys(np.repeat(np.arange(ds.n_groups), np.diff(pos_off).astype(np.int64)), pos_items, n_items))
    train_keys = np.unique(pair_keys(ds.train_group(), ds.train_item, n_items))
    cat_keys = pair_keys(
        np.repeat(np.arange(len(ds.markets)), np.diff(ds.market_item_offsets).astype(np.int64)), ds.market_items, n_items
    )
    all_items = np.unique(ds.market_items)
    assert all_items.tolist() == list(range(n_items))
    overlaps = []
    for held, other in ((ds.valid, ds.test), (ds.test, ds.valid)):
        c = held.candidates
        assert c.shape == (len(held), 100) and c.dtype == u32
        assert np.array_equal(c[:, 0], held.item)
        assert distinct_rows(c), "negatives are distinct and never the positive"
        neg = c[:, 1:]
        g = np.repeat(held.group, 99)
        m = ds.group_market[held.group]
        in_own_market = np.isin(pair_keys(np.repeat(m, 99), neg.ravel(), n_items), cat_keys)
        if ds.protocol == "forec":
            assert in_own_market.all()
            assert not np.isin(pair_keys(g, neg.ravel(), n_items), pos_keys).any()
            assert not (neg == other.item[:, None]).any()
        else:
            assert np.isin(neg, all_items).all()
            assert not np.isin(pair_keys(g, neg.ravel(), n_items), train_keys).any()
            # Drawn across markets, and the other split's item may be a negative (about 99/8304).
            assert (~in_own_market).sum() > 1000
            hits = int((neg == other.item[:, None]).sum())
            assert 60 < hits < 350, hits
        overlaps.append(neg)
    # Validation and test negatives are independent draws: their overlap is hypergeometric.
    v, t = np.sort(overlaps[0], axis=1), overlaps[1]
    shared = np.array([np.isin(a, b).sum() for a, b in zip(v[:2000], t[:2000])])
    assert not (shared == 99).any()
    catalog = np.diff(ds.market_item_offsets).astype(np.int64)[ds.group_market[ds.valid.group[:2000]]]
    if ds.protocol == "forec":
        avail = catalog - np.bincount(pos_keys // n_items, minlength=ds.n_groups)[ds.valid.group[:2000]]
    else:
        avail = n_items - np.diff(ds.train_offsets).astype(np.int64)[ds.valid.group[:2000]] - 1
    expect = (99 * 99 / avail).sum()
    assert abs(shared.sum() - expect) < 6 * np.sqrt(expect), (shared.sum(), expect)


def test_real_candidates_are_seeded_and_keyed_by_ids(xmarket_dir: Path) -> None:
    cfg = PrepareConfig(target="uk", sources="all", seed=5)
    a = prepare(xmarket_dir, None, cfg)
    b = prepare(xmarket_dir, None, cfg)
    assert np.array_equal(a.test.candidates, b.test.candidates) and np.array_equal(a.valid.candidates, b.valid.candidates)
    c = prepare(xmarket_dir, None, PrepareConfig(target="uk", sources="all", seed=6))
    assert np.array_equal(c.test.candidates[:, 0], a.test.candidates[:, 0])
    assert (c.test.candidates[:, 1:] != a.test.candidates[:, 1:]).any(axis=1).mean() > 0.99
    # forec: a uk user's candidates do not depend on which other markets are loaded.
    alone = prepare(xmarket_dir, None, PrepareConfig(target="uk", sources=[], seed=5))
    names = np.array(a.items.to_list())
    names_alone = np.array(alone.items.to_list())
    uk = a.group_market[a.test.group] == 0
    assert int(uk.sum()) == len(alone.test)
    users = np.array(a.users.to_list())[a.group_user[a.test.group[uk]]]
    users_alone = np.array(alone.users.to_list())[alone.group_user[alone.test.group]]
    order, order_alone = np.argsort(users, kind="stable"), np.argsort(users_alone, kind="stable")
    assert np.array_equal(users[order], users_alone[order_alone])
    assert np.array_equal(names[a.test.candidates[uk][order]], names_alone[alone.test.candidates[order_alone]])


def test_real_training_negatives(real: PreparedDataset) -> None:
    ds, n_items, k = real, real.n_items, 4
    s = ds.train_negative_sampler(k=k, seed=3)
    assert s.rows == ds.train_item.size and s.k == k
    neg = s.sample(0)
    assert neg.shape == (ds.train_item.size, k) and neg.dtype == u32
    g = np.repeat(ds.train_group(), k)
    m = np.repeat(ds.train_market(), k)
    pos_off, pos_items = ds._all_positives()
    pos_group = np.repeat(np.arange(ds.n_groups), np.diff(pos_off).astype(np.int64))
    cat_keys = pair_keys(
        np.repeat(np.arange(len(ds.markets)), np.diff(ds.market_item_offsets).astype(np.int64)), ds.market_items, n_items
    )
    in_market = np.isin(pair_keys(m, neg.ravel(), n_items), cat_keys)
    is_train = np.isin(pair_keys(g, neg.ravel(), n_items), pair_keys(ds.train_group(), ds.train_item, n_items))
    is_pos = np.isin(pair_keys(g, neg.ravel(), n_items), pair_keys(pos_group, pos_items, n_items))
    assert not is_train.any()
    if ds.protocol == "forec":
        assert in_market.all() and not is_pos.any()
    else:
        assert neg.max() < n_items
        assert (~in_market).sum() > 10_000, "acmr draws from all markets' items"
        assert 20 < (is_pos & ~is_train).sum() < 500, "acmr only excludes training items"
    # Per epoch: deterministic from (seed, epoch), different across epochs and seeds.
    assert np.array_equal(neg, s.sample(0))
    assert np.array_equal(neg, ds.train_negative_sampler(k=k, seed=3).sample(0))
    e1 = s.sample(1)
    assert (e1 != neg).mean() > 0.99
    assert (ds.train_negative_sampler(k=k, seed=4).sample(0) != neg).mean() > 0.99
    out = np.full((s.rows, k), 7, dtype=u32)
    s.sample_into(out, 1)
    assert np.array_equal(out, e1)


def test_real_training_negatives_are_uniform_over_the_allowed_pool(real: PreparedDataset) -> None:
    """Each draw is uniform over the group's pool minus its exclusions, so the expected count
    of (pool, item) is the sum over groups not excluding it of rows·k / allowed(group)."""
    ds, n_items, k = real, real.n_items, 4
    neg = ds.train_negative_sampler(k=k, seed=11).sample(0)
    rows = np.diff(ds.train_offsets).astype(np.int64)
    if ds.protocol == "forec":
        pool_of = ds.group_market.astype(np.int64)
        pool_size = np.diff(ds.market_item_offsets).astype(np.int64)
        pool_keys = pair_keys(
            np.repeat(np.arange(len(ds.markets)), pool_size), ds.market_items, n_items
        )
        excl_off, excl_items = ds._all_positives()
    else:
        pool_of = np.zeros(ds.n_groups, dtype=np.int64)
        pool_size = np.array([n_items])
        pool_keys = np.arange(n_items, dtype=np.int64)
        excl_off, excl_items = ds.train_offsets, ds.train_item
    excl_group = np.repeat(np.arange(ds.n_groups), np.diff(excl_off).astype(np.int64))
    excl = np.unique(pair_keys(excl_group, excl_items, n_items))
    eg, ei = excl // n_items, excl % n_items
    allowed = pool_size[pool_of] - np.bincount(eg, minlength=ds.n_groups)
    rate = np.where(rows > 0, rows * k / np.maximum(allowed, 1), 0.0)  # expected draws per allowed item
    expect = np.zeros(len(pool_size) * n_items)  # (pool, item) at pool * n_items + item
    per_pool = np.bincount(pool_of, weights=rate, minlength=len(pool_size))
    expect[pool_keys] = per_pool[pool_keys // n_items]
    np.subtract.at(expect, pool_of[eg] * n_items + ei, rate[eg])
    observed = np.bincount(
        np.repeat(pool_of[ds.train_group()], k) * n_items + neg.ravel().astype(np.int64), minlength=expect.size
    )
    assert observed.sum() == neg.size and abs(expect.sum() - neg.size) < 1e-6 * neg.size
    assert observed[expect < 1e-9].sum() == 0
    live = expect > 5
    z = (observed[live] - expect[live]) / np.sqrt(expect[live])
    assert np.abs(z).max() < 5.5, np.abs(z).max()
    assert abs(float((z**2).mean()) - 1) < 0.1, float((z**2).mean())


# ---- core.TrainNegativeSampler on small inputs -------------------------------------------------


def small_sampler(k: int = 4, seed: int = 5) -> core.TrainNegativeSampler:
    # Group 0 (pool 0 = 0..19) has items 1, 2, 3; group 1 (pool 1 = 0..3) has 2, 1, 0.
    ro = np.array([0, 3, 6], dtype=u64)
    return core.TrainNegativeSampler(
        ro, np.array([0, 1], dtype=u32), *csr([list(range(20)), [0, 1, 2, 3]]),
        ro, np.array([1, 2, 3, 2, 1, 0], dtype=u32), k, seed,
    )


def test_train_sampler_by_hand() -> None:
    s = small_sampler()
    e0 = s.sample(0)
    assert s.rows == 6 and s.k == 4 and e0.shape == (6, 4)
    assert set(e0[:3].ravel().tolist()) <= set(range(4, 20)) | {0}
    assert (e0[3:] == 3).all(), "only item 3 is left for group 1"
    assert np.array_equal(e0, s.sample(0)) and np.array_equal(e0, small_sampler().sample(0))
    assert not np.array_equal(e0[:3], s.sample(1)[:3])
    assert not np.array_equal(e0[:3], small_sampler(seed=6).sample(0)[:3])
    # A group whose exclusions cover its pool has no negative: refused at construction.
    ro = np.array([0, 4], dtype=u64)
    with pytest.raises(ValueError, match="group 0 excludes every item of its pool"):
        core.TrainNegativeSampler(ro, np.array([0], dtype=u32), *csr([[0, 1, 2, 3]]), ro, np.array([3, 1, 2, 0], dtype=u32), 1, 0)
    with pytest.raises(ValueError, match="pool 0 is not sorted and unique"):
        core.TrainNegativeSampler(ro, np.array([0], dtype=u32), *csr([[0, 2, 1]]), ro, np.array([3, 3, 3, 3], dtype=u32), 1, 0)
    with pytest.raises(ValueError, match="pool 1 does not exist"):
        core.TrainNegativeSampler(ro, np.array([1], dtype=u32), *csr([[0, 9]]), ro, np.array([3, 3, 3, 3], dtype=u32), 1, 0)


def test_train_sampler_sample_into_checks_its_buffer() -> None:
    s = small_sampler()
    want = s.sample(2)
    out = np.zeros((6, 4), dtype=u32)
    assert s.sample_into(out, 2) is None
    assert np.array_equal(out, want)
    with pytest.raises(TypeError):
        s.sample_into(np.zeros((6, 4), dtype=np.int64), 2)
    with pytest.raises(TypeError):
        s.sample_into(np.zeros(24, dtype=u32), 2)
    with pytest.raises(ValueError, match=r"shape \(6, 4\), got shape \[7, 4\]"):
        s.sample_into(np.zeros((7, 4), dtype=u32), 2)
    with pytest.raises(ValueError, match="must be a C-contiguous uint32 array"):
        s.sample_into(np.zeros((6, 8), dtype=u32)[:, ::2], 2)
    ro = np.zeros((6, 4), dtype=u32)
    ro.setflags(write=False)
    with pytest.raises(TypeError, match="not writeable"):
        s.sample_into(ro, 2)


def test_train_sampler_sample_into_rejects_other_shapes() -> None:
    # The buffer must be rows × k (6 × 4); another 2-d shape of the same size is a caller error.
    s = small_sampler()
    accepted = []
    for shape in [(4, 6), (24, 1), (3, 8)]:
        try:
            s.sample_into(np.zeros(shape, dtype=u32), 0)
            accepted.append(shape)
        except ValueError:
            pass
    assert accepted == [], f"sample_into accepted buffers of shape {accepted} for rows × k = 6 × 4"


def test_train_sampler_sample_into_rejects_fortran_order() -> None:
    # A Fortran-ordered rows × k buffer is not C-contiguous: filling its memory row-major would
    # give the caller a scrambled array, so it must be refused (or filled correctly).
    s = small_sampler()
    out = np.zeros((6, 4), dtype=u32, order="F")
    try:
        s.sample_into(out, 2)
    except ValueError:
        return
    assert np.array_equal(out, s.sample(2)), "Fortran-ordered buffer was accepted but filled in the wrong order"


@pytest.mark.parametrize(("pool_len", "excluded"), [(60, list(range(0, 60, 3))), (20, list(range(15)))], ids=["rejection", "complement"])
def test_train_sampler_is_uniform(pool_len: int, excluded: list[int]) -> None:
    rows, k = 20_000, 4
    ro = np.array([0, rows], dtype=u64)
    s = core.TrainNegativeSampler(
        ro, np.array([0], dtype=u32), *csr([list(range(pool_len))]), *csr([excluded]), k, 8
    )
    counts = np.bincount(s.sample(0).ravel(), minlength=pool_len)
    assert counts[excluded].sum() == 0
    allowed = np.setdiff1d(np.arange(pool_len), excluded)
    expect = rows * k / allowed.size
    chi2 = float(((counts[allowed] - expect) ** 2 / expect).sum())
    dof = allowed.size - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


@st.composite
def train_case(draw: st.DrawFn) -> dict:
    pools = draw(st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=30, unique=True).map(sorted), min_size=1, max_size=3))
    groups = draw(st.integers(1, 8))
    group_pool, rows, excl = [], [], []
    for _ in range(groups):
        p = draw(st.integers(0, len(pools) - 1))
        # Exclusions in any order with repeats, leaving at least one pool item free.
        free = draw(st.sampled_from(pools[p]))
        ex = draw(st.lists(st.integers(0, 32).filter(lambda x: x != free), max_size=25))
        group_pool.append(p)
        excl.append(ex)
        rows.append(draw(st.integers(0, 6)))
    return dict(pools=pools, group_pool=group_pool, rows=rows, excl=excl,
                k=draw(st.integers(1, 5)), seed=draw(st.integers(0, 2**64 - 1)), epoch=draw(st.integers(0, 2**64 - 1)))


@settings(max_examples=120, deadline=None)
@given(c=train_case())
def test_train_sampler_properties(c: dict) -> None:
    ro = np.zeros(len(c["rows"]) + 1, dtype=u64)
    np.cumsum(c["rows"], out=ro[1:])
    s = core.TrainNegativeSampler(ro, np.array(c["group_pool"], dtype=u32), *csr(c["pools"]), *csr(c["excl"]), c["k"], c["seed"])
    a = s.sample(c["epoch"])
    assert a.shape == (int(ro[-1]), c["k"])
    for g in range(len(c["rows"])):
        allowed = set(c["pools"][c["group_pool"][g]]) - set(c["excl"][g])
        assert set(a[int(ro[g]) : int(ro[g + 1])].ravel().tolist()) <= allowed
    assert np.array_equal(a, s.sample(c["epoch"]))
    out = np.empty_like(a)
    s.sample_into(out, c["epoch"])
    assert np.array_equal(out, a)
