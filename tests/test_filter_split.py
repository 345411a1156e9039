"""k-core, item restriction, renumbering and leave-one-out splits: hand cases and differential
property tests against plain-Python implementations."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MARKETS_7
from xmfast import core
from xmfast.ratings import read_ratings

u16, u32, i32 = np.uint16, np.uint32, np.int32


def arrays(rows: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, ...]:
    a = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return a[:, 0].astype(u16), a[:, 1].astype(u32), a[:, 2].astype(u32), a[:, 3].astype(i32)


rows_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 15), st.integers(0, 12), st.integers(0, 6)), min_size=1, max_size=150
)


def plain_kcore(rows: list, min_user: int, min_item: int, fixpoint: bool) -> list[bool]:
    keep = [True] * len(rows)
    while True:
        changed = False
        for col, need in ((2, min_item), (1, min_user)):  # items first, then users
            counts = Counter((r[0], r[col]) for r, k in zip(rows, keep) if k)
            for i, r in enumerate(rows):
                if keep[i] and counts[(r[0], r[col])] < need:
                    keep[i] = False
                    changed = True
        if not fixpoint or not changed:
            return keep


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy, min_user=st.integers(1, 4), min_item=st.integers(1, 4), fixpoint=st.booleans())
def test_kcore_matches_plain_python(rows: list, min_user: int, min_item: int, fixpoint: bool) -> None:
    m, u, i, _ = arrays(rows)
    got = core.kcore_mask(m, u, i, min_user, min_item, fixpoint)
    assert got.tolist() == plain_kcore(rows, min_user, min_item, fixpoint)


def test_kcore_one_pass_vs_fixpoint_by_hand() -> None:
    # Item 9 and item 3 are rare; after dropping them, users 1 and 2 have one rating each.
    m, u, i, _ = arrays([(0, 0, 1, 0), (0, 0, 2, 0), (0, 0, 3, 0), (0, 1, 1, 0), (0, 1, 9, 0), (0, 2, 2, 0)])
    assert core.kcore_mask(m, u, i, 2, 2, False).tolist() == [True, True, False, False, False, False]
    assert core.kcore_mask(m, u, i, 2, 2, True).tolist() == [False] * 6


def test_restrict_and_compact() -> None:
    item = np.array([4, 7, 4, 2], dtype=u32)
    assert core.restrict_items_mask(item, np.array([4, 2], dtype=u32)).tolist() == [True, False, True, True]
    new, old = core.compact_ids(item)
    assert new.tolist() == [0, 1, 0, 2] and old.tolist() == [4, 7, 2]
    v = core.Vocab(["a", "b", "c", "d", "e", "f", "g", "h"])
    assert v.subset(old).to_list() == ["e", "h", "c"]


def plain_temporal_split(rows: list, dedup: bool) -> dict:
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for idx, r in enumerate(rows):
        groups[(r[0], r[1])].append(idx)
    out: dict = {"train": [], "valid": [], "test": [], "groups": []}
    for key in sorted(groups):
        idxs = groups[key]
        if dedup:
            seen, kept = set(), []
            for x in idxs:
                if rows[x][2] not in seen:
                    seen.add(rows[x][2])
                    kept.append(x)
            idxs = kept
        idxs = sorted(idxs, key=lambda x: (rows[x][3], x))
        out["groups"].append(key)
        if len(idxs) >= 3:
            out["train"] += idxs[:-2]
            out["valid"].append(idxs[-2])
            out["test"].append(idxs[-1])
        else:
            out["train"] += idxs
    return out


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy, dedup=st.booleans())
def test_temporal_split_matches_plain_python(rows: list, dedup: bool) -> None:
    m, u, i, d = arrays(rows)
    s = core.leave_one_out(m, u, i, d, order="temporal", dedup=dedup)
    want = plain_temporal_split(rows, dedup)
    assert list(zip(s["group_market"].tolist(), s["group_user"].tolist())) == want["groups"]
    assert s["train_rows"].tolist() == want["train"]
    assert s["valid_rows"].tolist() == want["valid"]
    assert s["test_rows"].tolist() == want["test"]
    kept = len(want["train"]) + len(want["valid"]) + len(want["test"])
    assert s["duplicates_dropped"] == len(rows) - kept
    assert s["train_offsets"][-1] == len(want["train"])


def test_temporal_ties_keep_file_order() -> None:
    # Three rows on one date: the last line in the file is the test interaction.
    m, u, i, d = arrays([(0, 0, 10, 5), (0, 0, 11, 5), (0, 0, 12, 5), (0, 0, 13, 1)])
    s = core.leave_one_out(m, u, i, d)
    assert s["train_rows"].tolist() == [3, 0] and s["valid_rows"].tolist() == [1] and s["test_rows"].tolist() == [2]


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, seed=st.integers(0, 2**63 - 1))
def test_random_split_is_a_seeded_partition(rows: list, seed: int) -> None:
    m, u, i, d = arrays(rows)
    keys = dict(market_keys=np.arange(3, dtype=np.uint64) * 7 + 1, user_keys=np.arange(16, dtype=np.uint64) * 13 + 5)
    s = core.leave_one_out(m, u, i, d, order="random", seed=seed, **keys)
    again = core.leave_one_out(m, u, i, d, order="random", seed=seed, **keys)
    for k in ("train_rows", "valid_rows", "test_rows", "train_offsets"):
        assert np.array_equal(s[k], again[k])
    every = np.concatenate([s["train_rows"], s["valid_rows"], s["test_rows"]])
    assert sorted(every.tolist()) == list(range(len(rows)))
    for k, g in enumerate(s["heldout_groups"]):
        for r in (s["valid_rows"][k], s["test_rows"][k]):
            assert (m[r], u[r]) == (s["group_market"][g], s["group_user"][g])


def test_random_split_of_a_user_ignores_other_markets() -> None:
    # The same user rows in market 0, with and without an unrelated market 1 loaded first.
    base = [(0, 0, it, 0) for it in range(12)]
    other = [(1, 1, it, 0) for it in range(5)]
    m1, u1, i1, d1 = arrays(base)
    m2, u2, i2, d2 = arrays([(1 - r[0], r[1] + 1, r[2], r[3]) for r in other] + [(1, 0, *r[2:]) for r in base])
    # Dataset 1: market "uk"=0, user "a"=0. Dataset 2: market "de"=0, "uk"=1; users "b"=1... keyed by ids.
    h = core.stable_hash
    s1 = core.leave_one_out(m1, u1, i1, d1, order="random", seed=3,
                            market_keys=np.array([h("uk")], dtype=np.uint64), user_keys=np.array([h("a")], dtype=np.uint64))
    s2 = core.leave_one_out(m2, u2, i2, d2, order="random", seed=3,
                            market_keys=np.array([h("de"), h("uk")], dtype=np.uint64),
                            user_keys=np.array([h("a"), h("b"), h("c")], dtype=np.uint64))
    g2 = int(np.flatnonzero(s2["group_market"] == 1)[0])
    k2 = int(np.flatnonzero(s2["heldout_groups"] == g2)[0])
    assert i1[s1["test_rows"][0]] == i2[s2["test_rows"][k2]]
    assert i1[s1["valid_rows"][0]] == i2[s2["valid_rows"][k2]]


def test_bad_arguments_raise_value_errors() -> None:
    m, u, i, d = arrays([(0, 0, 1, 0)])
    with pytest.raises(ValueError, match="min_interactions must be at least 3"):
        core.leave_one_out(m, u, i, d, min_interactions=2)
    with pytest.raises(ValueError, match="random order needs a key"):
        core.leave_one_out(m, u, i, d, order="random")
    with pytest.raises(ValueError, match="`item` has 0 entries but `market` has 1"):
        core.leave_one_out(m, u, i[:0], d)
    with pytest.raises(ValueError, match="C-contiguous"):
        core.kcore_mask(np.zeros(4, dtype=u16)[::2], u[:1].repeat(2), i[:1].repeat(2), 1, 1)


def test_real_temporal_split(xmarket_dir: Path) -> None:
    r = read_ratings([(m, xmarket_dir / f"{m}_5core.txt") for m in MARKETS_7])
    s = core.leave_one_out(r.market, r.user, r.item, r.day)
    # Every (market, user) of the processed files has at least 7 ratings: all are evaluated.
    assert s["group_user"].size == 14313 == s["heldout_groups"].size
    assert s["train_rows"].size == 134845 - 2 * 14313
    g = np.repeat(np.arange(s["group_user"].size), np.diff(s["train_offsets"]).astype(np.int64))
    last_train_day = np.full(s["group_user"].size, -(10**9))
    np.maximum.at(last_train_day, g, r.day[s["train_rows"]])
    valid_day, test_day = r.day[s["valid_rows"]], r.day[s["test_rows"]]
    assert np.all(last_train_day <= valid_day) and np.all(valid_day <= test_day)
    # Repeated (user, item) rows exist (673 in uk): dedup removes them.
    ded = core.leave_one_out(r.market, r.user, r.item, r.day, dedup=True)
    uk = r.market == r.market_index("uk")
    pairs = r.user[uk].astype(np.int64) * 10**6 + r.item[uk]
    assert int(uk.sum()) - np.unique(pairs).size == 673
    assert ded["duplicates_dropped"] >= 673


def test_drop_markets_copies_only_when_something_is_dropped(xmarket_dir: Path) -> None:
    r = read_ratings([(m, xmarket_dir / f"{m}_5core.txt") for m in ("uk", "in")])
    assert r.drop_markets(["uk", "in"]) is r  # nothing to drop: no copy of the table
    swapped = r.drop_markets(["in", "uk"])
    assert swapped.markets == ["in", "uk"] and len(swapped) == len(r)
    assert np.array_equal(swapped.market, 1 - r.market)
    only_in = r.drop_markets(["in"])
    assert len(only_in) == 2015 and set(only_in.market.tolist()) == {0}


def test_prepare_in_two_steps_equals_build_dataset(xmarket_dir: Path) -> None:
    from xmfast.prepare import PrepareConfig, build_dataset, filter_ratings, load_inputs, sample_candidates, split_ratings

    config = PrepareConfig(target="in", sources=["uk"], protocol="acmr", seed=3)
    markets, ratings = load_inputs(xmarket_dir, config)
    ratings = filter_ratings(ratings, markets, config)
    whole = build_dataset(ratings, markets, config)
    split = split_ratings(ratings, markets, config)
    del ratings
    parts = sample_candidates(split, config)
    for name, array in whole.arrays().items():
        assert np.array_equal(array, parts.arrays()[name]), name
    assert whole.manifest == parts.manifest
