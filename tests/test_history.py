"""Padded histories for sequence models (core.padded_histories, PreparedDataset.padded_histories):
padding, lengths and the three truncation rules, against plain Python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmfast import core
from xmfast.prepare import PrepareConfig, prepare

histories = st.lists(st.lists(st.integers(0, 30), max_size=12), min_size=1, max_size=20)


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=np.uint64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    items = np.array([x for r in rows for x in r], dtype=np.uint32)
    return offsets, items


@given(histories, st.integers(1, 8))
@settings(max_examples=60, deadline=None)
def test_recent_equals_plain_slicing_and_padding(rows: list[list[int]], width: int) -> None:
    off, items = _csr(rows)
    sel = np.arange(len(rows), dtype=np.uint32)[::-1].copy()
    out, lengths = core.padded_histories(off, items, sel, width, 999, rule="recent")
    assert out.shape == (len(rows), width) and out.dtype == np.uint32
    for k, r in enumerate(sel):
        want = rows[r][-width:]
        assert lengths[k] == len(want)
        assert out[k].tolist() == want + [999] * (width - len(want))


@given(histories, st.integers(1, 8), st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_random_keeps_a_keyed_subsequence(rows: list[list[int]], width: int, seed: int) -> None:
    off, items = _csr(rows)
    sel = np.arange(len(rows), dtype=np.uint32)
    keys = np.arange(len(rows), dtype=np.uint64) * 7 + 1
    out, lengths = core.padded_histories(off, items, sel, width, 999, rule="random", seed=seed, keys=keys)
    again, _ = core.padded_histories(off, items, sel[::-1].copy(), width, 999, rule="random", seed=seed, keys=keys[::-1].copy())
    assert np.array_equal(out, again[::-1])  # a row's subset depends on its key, not its place
    for k, r in enumerate(rows):
        kept = out[k, : lengths[k]].tolist()
        assert lengths[k] == min(width, len(r))
        it = iter(r)  # kept items form a subsequence of the history (time order)
        assert all(any(x == y for y in it) for x in kept)


@given(histories, st.integers(1, 8), st.data())
@settings(max_examples=60, deadline=None)
def test_a_left_out_position_is_dropped_before_the_recent_rule(rows: list[list[int]], width: int, data: st.DataObject) -> None:
    off, items = _csr(rows)
    keep_all = 2**32 - 1
    sel, skip = [], []
    for r, hist in enumerate(rows):  # every position of every row once, and each row whole
        for p in range(len(hist)):
            sel.append(r)
            skip.append(p)
        sel.append(r)
        skip.append(keep_all)
    sel_a, skip_a = np.array(sel, dtype=np.uint32), np.array(skip, dtype=np.uint32)
    out, lengths = core.padded_histories(off, items, sel_a, width, 999, rule="recent", leave_out=skip_a)
    for k, (r, p) in enumerate(zip(sel, skip)):
        hist = list(rows[r])
        if p != keep_all:
            del hist[p]
        want = hist[-width:]
        assert out[k].tolist() == want + [999] * (width - len(want)) and lengths[k] == len(want)
    seed = data.draw(st.integers(0, 2**32))
    rand, rand_len = core.padded_histories(off, items, sel_a, width, 999, rule="random", seed=seed, leave_out=skip_a)
    for k, (r, p) in enumerate(zip(sel, skip)):
        hist = list(rows[r])
        if p != keep_all:
            del hist[p]
        it = iter(hist)
        assert rand_len[k] == min(width, len(hist)) and all(any(x == y for y in it) for x in rand[k, : rand_len[k]])


def test_training_row_histories_leave_out_the_rows_own_item(sample_dir: Path, tmp_path: Path) -> None:
    ds = prepare(sample_dir, tmp_path / "ds", PrepareConfig(target="in", sources="all", protocol="acmr"))
    offsets = np.asarray(ds.train_offsets).astype(np.int64)
    items = np.asarray(ds.train_item)
    rows = np.arange(0, offsets[-1], 7)
    out, lengths = ds.training_row_histories(rows, width=6, rule="recent")
    group = ds.train_group()[rows].astype(np.int64)
    for k, r in enumerate(rows):
        hist = items[offsets[group[k]] : offsets[group[k] + 1]].tolist()
        del hist[r - offsets[group[k]]]
        want = hist[-6:]
        assert out[k].tolist() == want + [ds.n_items] * (6 - len(want)) and lengths[k] == len(want)


def test_heldout_as_training_restores_the_sequences(sample_dir: Path, tmp_path: Path) -> None:
    ds = prepare(sample_dir, tmp_path / "ds", PrepareConfig(target="in", sources="all", protocol="acmr"))
    full = ds.with_heldout_as_training(["de", "uk"])
    off, items = np.asarray(ds.train_offsets).astype(np.int64), np.asarray(ds.train_item)
    foff, fitems = np.asarray(full.train_offsets).astype(np.int64), np.asarray(full.train_item)
    valid = dict(zip(np.asarray(ds.valid.group).tolist(), np.asarray(ds.valid.item).tolist()))
    test = dict(zip(np.asarray(ds.test.group).tolist(), np.asarray(ds.test.item).tolist()))
    moved = {ds.market_index("de"), ds.market_index("uk")}
    for g in range(ds.n_groups):
        want = items[off[g] : off[g + 1]].tolist()
        if int(ds.group_market[g]) in moved and g in valid:
            want += [valid[g], test[g]]
        assert fitems[foff[g] : foff[g + 1]].tolist() == want
    assert len(full.valid) == len(ds.valid)  # the held-out sets stay for evaluation


def test_cooc_rule_against_plain_python(sample_dir: Path, tmp_path: Path) -> None:
    ds = prepare(sample_dir, tmp_path / "ds", PrepareConfig(target="in", sources="all"))
    indptr, indices, counts = core.cooccurrence(
        np.asarray(ds.train_offsets), np.asarray(ds.train_item), np.asarray(ds.group_market),
        list(range(len(ds.markets))), ds.n_items, None,
    )
    pair = {}
    for i in range(ds.n_items):
        for j, c in zip(indices[indptr[i] : indptr[i + 1]], counts[indptr[i] : indptr[i + 1]]):
            pair[(i, int(j))] = int(c)
    sizes = np.diff(ds.train_offsets).astype(np.int64)
    groups = np.flatnonzero(sizes > 6)[:200]
    assert groups.size > 50
    width = 5
    out, lengths = ds.padded_histories(groups, width, "cooc", cooc=(indptr, indices, counts))
    for k, g in enumerate(groups):
        hist = [int(x) for x in ds.history(int(g))]
        score = [sum(pair.get((hist[p], b), 0) for q, b in enumerate(hist) if q != p) for p in range(len(hist))]
        order = sorted(range(len(hist)), key=lambda p: (-score[p], -p))[:width]
        assert out[k].tolist() == [hist[p] for p in sorted(order)]
        assert lengths[k] == width
    # short histories are padded with n_items
    short = np.flatnonzero(sizes < 5)[:5]
    out, lengths = ds.padded_histories(short, 8)
    for k, g in enumerate(short):
        assert out[k, lengths[k] :].tolist() == [ds.n_items] * (8 - lengths[k])


def test_bad_arguments_are_value_errors() -> None:
    off, items = _csr([[1, 2, 3]])
    with pytest.raises(ValueError, match="unknown truncation rule"):
        core.padded_histories(off, items, np.array([0], dtype=np.uint32), 2, 9, rule="oldest")
    with pytest.raises(ValueError, match="needs co-occurrence counts"):
        core.padded_histories(off, items, np.array([0], dtype=np.uint32), 2, 9, rule="cooc")
    with pytest.raises(ValueError, match="does not exist"):
        core.padded_histories(off, items, np.array([4], dtype=np.uint32), 2, 9)


def test_a_cooc_matrix_that_does_not_fit_is_a_value_error_not_a_crash() -> None:
    """The matrix is read where numpy keeps it (no copy), so it is checked: its CSR shape, and
    a row for every item of a history the rule truncates (before, an item past its end read out
    of bounds: a Rust panic)."""
    off, items = _csr([[1, 2, 3], [0]])
    sel = np.array([0], dtype=np.uint32)
    u64, u32 = (lambda *x: np.array(x, dtype=np.uint64)), (lambda *x: np.array(x, dtype=np.uint32))
    three = {"cooc_indptr": u64(0, 0, 0, 0), "cooc_indices": u32(), "cooc_counts": u32()}  # items 0, 1, 2
    with pytest.raises(ValueError, match=r"history item 3 has no row in the co-occurrence matrix \(3 items\)"):
        core.padded_histories(off, items, sel, 2, 9, rule="cooc", **three)
    out, lengths = core.padded_histories(off, items, np.array([1], dtype=np.uint32), 2, 9, rule="cooc", **three)
    assert out.tolist() == [[0, 9]] and lengths.tolist() == [1]  # a short history is not truncated
    with pytest.raises(ValueError, match="malformed co-occurrence matrix"):
        core.padded_histories(off, items, sel, 2, 9, rule="cooc", cooc_indptr=u64(0, 1, 1, 1, 1),
                              cooc_indices=u32(), cooc_counts=u32())
    with pytest.raises(ValueError, match="co-occurrence column 7 is out of range"):
        core.padded_histories(off, items, sel, 2, 9, rule="cooc", cooc_indptr=u64(0, 1, 1, 1, 1),
                              cooc_indices=u32(7), cooc_counts=u32(1))
    four = {"cooc_indptr": u64(0, 0, 1, 1, 2), "cooc_indices": u32(3, 1), "cooc_counts": u32(5, 5)}  # (1, 3): 5
    out, _ = core.padded_histories(off, items, sel, 2, 9, rule="cooc", **four)
    assert out.tolist() == [[1, 3]]  # scores 1→5, 2→0, 3→5 (without the pair: 2 and 3, the most recent)
