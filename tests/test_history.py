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
