"""Item co-occurrence (`core.cooccurrence`), shared pair counts (`core.shared_pairs`) and the
cross-market overlap figures built on them (`xmfast.stats.cross_market`): hand-computed cases,
differential property tests against a plain-Python Counter, and checks on the sample and the
real XMarket files."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MARKETS_7
from xmfast import core
from xmfast.ratings import Ratings, read_ratings
from xmfast.stats import cross_market

u16, u32, u64 = np.uint16, np.uint32, np.uint64
SAMPLE_MARKETS = ["uk", "de", "jp", "in"]


def csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=u64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return offsets, np.array([x for r in rows for x in r], dtype=u32)


def cooc(histories: list[list[int]], group_market: list[int], markets: list[int], n_items: int,
         max_history: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return core.cooccurrence(*csr(histories), np.array(group_market, dtype=u16), markets, n_items, max_history)


def plain_cooc(histories: list[list[int]], group_market: list[int], markets: list[int],
               max_history: int | None = None) -> Counter:
    """(i, j) -> number of selected histories holding both i != j (recent `max_history` rows)."""
    counts: Counter = Counter()
    for h, m in zip(histories, group_market):
        if m not in markets:
            continue
        if max_history is not None and len(h) > max_history:
            h = h[len(h) - max_history :]
        counts.update(permutations(set(h), 2))
    return counts


def to_csr(counts: Counter, n_items: int) -> tuple[list[int], list[int], list[int]]:
    rows: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (i, j), c in counts.items():
        rows[i].append((j, c))
    indptr, indices, values = [0], [], []
    for i in range(n_items):
        for j, c in sorted(rows[i]):
            indices.append(j)
            values.append(c)
        indptr.append(len(indices))
    return indptr, indices, values


def as_counter(c: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Counter:
    indptr, indices, counts = c
    row = np.repeat(np.arange(indptr.size - 1), np.diff(indptr).astype(np.int64))
    return Counter({(int(i), int(j)): int(n) for i, j, n in zip(row, indices, counts)})


# ---- hand-computed ------------------------------------------------------------------------------


HAND = [[0, 1, 2], [1, 2, 2], [0, 3]]  # users in markets 0, 0, 1; user 1 repeats item 2


def test_cooccurrence_by_hand() -> None:
    indptr, indices, counts = cooc(HAND, [0, 0, 1], [0, 1], 5)
    assert indptr.dtype == u64 and indices.dtype == u32 and counts.dtype == u32
    # Rows (sorted columns): 0 -> {1:1, 2:1, 3:1}; 1 -> {0:1, 2:2}; 2 -> {0:1, 1:2}; 3 -> {0:1}; 4 empty.
    assert indptr.tolist() == [0, 3, 5, 7, 8, 8]
    assert indices.tolist() == [1, 2, 3, 0, 2, 0, 1, 0]
    assert counts.tolist() == [1, 1, 1, 1, 2, 1, 2, 1]
    # Market 0 alone: the (0, 3) pair of the market-1 user disappears.
    c0 = cooc(HAND, [0, 0, 1], [0], 5)
    assert c0[0].tolist() == [0, 2, 4, 6, 6, 6]
    assert c0[1].tolist() == [1, 2, 0, 2, 0, 1] and c0[2].tolist() == [1, 1, 1, 2, 1, 2]
    c1 = cooc(HAND, [0, 0, 1], [1], 5)
    assert c1[0].tolist() == [0, 1, 1, 1, 2, 2] and c1[1].tolist() == [3, 0] and c1[2].tolist() == [1, 1]
    # A market with no groups, and no market at all, give an empty matrix of the right size.
    for markets in ([7], []):
        e = cooc(HAND, [0, 0, 1], markets, 5)
        assert e[0].tolist() == [0] * 6 and e[1].size == 0 and e[2].size == 0


def test_max_history_keeps_the_most_recent_rows_before_deduplication() -> None:
    # Last 2 rows: user 0 keeps {1, 2}, user 1 keeps [2, 2] = {2} (no pair), user 2 keeps {0, 3}.
    t = as_counter(cooc(HAND, [0, 0, 1], [0, 1], 4, max_history=2))
    assert t == Counter({(1, 2): 1, (2, 1): 1, (0, 3): 1, (3, 0): 1})
    assert as_counter(cooc(HAND, [0, 0, 1], [0, 1], 4, max_history=0)) == Counter()
    assert as_counter(cooc(HAND, [0, 0, 1], [0, 1], 4, max_history=3)) == as_counter(cooc(HAND, [0, 0, 1], [0, 1], 4))


def test_cooccurrence_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"item 4 is out of range \(n_items = 4\)"):
        cooc([[0, 4]], [0], [0], 4)
    # Items are checked in every history, selected or not.
    with pytest.raises(ValueError, match="item 9 is out of range"):
        cooc([[0, 1], [9]], [0, 1], [0], 4)
    with pytest.raises(ValueError, match="group_market and histories differ in length"):
        cooc([[0, 1], [2]], [0], [0], 4)
    with pytest.raises(ValueError, match="CSR offsets"):
        core.cooccurrence(np.array([0, 3], dtype=u64), np.array([0, 1], dtype=u32), np.zeros(1, dtype=u16), [0], 4)


def test_shared_pairs_by_hand() -> None:
    full = cooc(HAND, [0, 0, 1], [0, 1], 4)
    c0 = cooc(HAND, [0, 0, 1], [0], 4)
    c1 = cooc(HAND, [0, 0, 1], [1], 4)
    # Market 0 has 3 unordered pairs, all in the full matrix: 6 ordered (i, j) positions.
    assert core.shared_pairs(full[0], full[1], c0[0], c0[1]) == 6
    assert core.shared_pairs(c0[0], c0[1], full[0], full[1]) == 6
    assert core.shared_pairs(full[0], full[1], full[0], full[1]) == full[1].size == 8
    assert core.shared_pairs(c0[0], c0[1], c1[0], c1[1]) == 0
    with pytest.raises(ValueError, match="different item spaces"):
        core.shared_pairs(full[0], full[1], *cooc(HAND, [0, 0, 1], [0], 5)[:2])
    with pytest.raises(ValueError, match="malformed CSR structure"):
        core.shared_pairs(full[0], full[1][:-1], c0[0], c0[1])
    with pytest.raises(ValueError, match="malformed CSR structure"):
        core.shared_pairs(np.array([0, 2, 1, 8, 8], dtype=u64), full[1], c0[0], c0[1])


# ---- differential property tests -----------------------------------------------------------------


@st.composite
def histories_case(draw: st.DrawFn) -> dict:
    n_items = draw(st.integers(1, 25))
    groups = draw(st.integers(0, 25))
    hist = [draw(st.lists(st.integers(0, n_items - 1), max_size=12)) for _ in range(groups)]
    gm = [draw(st.integers(0, 2)) for _ in range(groups)]
    markets = draw(st.lists(st.integers(0, 3), max_size=3, unique=True))
    return dict(hist=hist, gm=gm, markets=markets, n_items=n_items,
                max_history=draw(st.one_of(st.none(), st.integers(0, 8))))


@settings(max_examples=200, deadline=None)
@given(c=histories_case())
def test_cooccurrence_matches_plain_python(c: dict) -> None:
    got = cooc(c["hist"], c["gm"], c["markets"], c["n_items"], c["max_history"])
    want = to_csr(plain_cooc(c["hist"], c["gm"], c["markets"], c["max_history"]), c["n_items"])
    assert got[0].tolist() == want[0]
    assert got[1].tolist() == want[1]
    assert got[2].tolist() == want[2]


@settings(max_examples=120, deadline=None)
@given(c=histories_case())
def test_markets_add_up_and_shared_pairs_match_sets(c: dict) -> None:
    n = c["n_items"]
    per_market = [cooc(c["hist"], c["gm"], [m], n) for m in range(3)]
    total = as_counter(cooc(c["hist"], c["gm"], [0, 1, 2], n))
    # Every group is in one market, so the cross-market counts are the sum of the markets'.
    assert total == sum((as_counter(x) for x in per_market), Counter())
    # Symmetric with an empty diagonal.
    assert all(total[(j, i)] == v and i != j for (i, j), v in total.items())
    for a in per_market:
        for b in per_market:
            want = len(set(as_counter(a)) & set(as_counter(b)))
            assert core.shared_pairs(a[0], a[1], b[0], b[1]) == want


# ---- on real histories -------------------------------------------------------------------------


def groups_of(r: Ratings) -> tuple[dict, list[list[int]], list[int]]:
    g = core.leave_one_out(r.market, r.user, r.item, r.day, min_interactions=2**62)
    offsets = g["train_offsets"].astype(np.int64)
    items = r.item[g["train_rows"]].tolist()
    return g, [items[a:b] for a, b in zip(offsets[:-1], offsets[1:])], g["group_market"].tolist()


def test_real_cooccurrence_matches_plain_python(xmarket_dir: Path) -> None:
    r = read_ratings([(m, xmarket_dir / f"{m}_5core.txt") for m in MARKETS_7])
    g, hist, gm = groups_of(r)
    n = len(r.items)
    history = r.item[g["train_rows"]]
    for markets, max_history in (([0, 1, 2, 3, 4, 5, 6], None), ([r.market_index("in"), r.market_index("jp")], 5)):
        got = core.cooccurrence(g["train_offsets"], history, g["group_market"], markets, n, max_history)
        want = to_csr(plain_cooc(hist, gm, markets, max_history), n)
        assert got[0].tolist() == want[0] and got[1].tolist() == want[1] and got[2].tolist() == want[2]
    # The all-market matrix holds uk's structure and more.
    all_m = core.cooccurrence(g["train_offsets"], history, g["group_market"], list(range(7)), n)
    uk = core.cooccurrence(g["train_offsets"], history, g["group_market"], [r.market_index("uk")], n)
    assert all_m[1].size > uk[1].size
    assert core.shared_pairs(all_m[0], all_m[1], uk[0], uk[1]) == uk[1].size


def test_sample_cooccurrence_is_the_binary_gram_matrix(sample_dir: Path) -> None:
    r = read_ratings([(m, sample_dir / f"{m}_5core.txt") for m in SAMPLE_MARKETS])
    g = core.leave_one_out(r.market, r.user, r.item, r.day, min_interactions=2**62)
    n = len(r.items)
    h = np.zeros((g["group_user"].size, n), dtype=np.float64)  # exact for small counts, fast BLAS
    h[np.repeat(np.arange(g["group_user"].size), np.diff(g["train_offsets"]).astype(np.int64)), r.item[g["train_rows"]]] = 1
    sel = np.isin(g["group_market"], [0, 3])
    gram = (h[sel].T @ h[sel]).astype(np.int64)
    np.fill_diagonal(gram, 0)
    indptr, indices, counts = core.cooccurrence(g["train_offsets"], r.item[g["train_rows"]], g["group_market"], [0, 3], n)
    dense = np.zeros((n, n), dtype=np.int64)
    dense[np.repeat(np.arange(n), np.diff(indptr).astype(np.int64)), indices] = counts
    assert np.array_equal(dense, gram)
    assert (counts > 0).all()
    row = np.repeat(np.arange(n), np.diff(indptr).astype(np.int64))
    same_row = row[1:] == row[:-1]
    assert (np.diff(indices.astype(np.int64))[same_row] > 0).all(), "columns sorted within each row"


# ---- stats.cross_market ------------------------------------------------------------------------


def plain_cross_market(r: Ratings, max_history: int | None) -> tuple[list, list, list]:
    k = len(r.markets)
    rows: dict[tuple[int, int], list[int]] = defaultdict(list)
    for idx, (m, u) in enumerate(zip(r.market.tolist(), r.user.tolist())):
        rows[(m, u)].append(idx)
    day, item = r.day.tolist(), r.item.tolist()
    pairs: list[set] = [set() for _ in range(k)]
    for (m, _), idxs in rows.items():
        h = [item[x] for x in sorted(idxs, key=lambda x: (day[x], x))]  # oldest first, file order on ties
        if max_history is not None and len(h) > max_history:
            h = h[len(h) - max_history :]
        pairs[m].update((i, j) for i, j in permutations(set(h), 2) if i < j)
    items = [set(np.asarray(r.item)[r.market == m].tolist()) for m in range(k)]
    shared_items = [[len(items[a] & items[b]) for b in range(k)] for a in range(k)]
    shared = [[len(pairs[a] & pairs[b]) for b in range(k)] for a in range(k)]
    return shared_items, [len(p) for p in pairs], shared


@pytest.mark.parametrize("max_history", [200, 4])
def test_cross_market_on_the_sample(sample_dir: Path, max_history: int) -> None:
    r = read_ratings([(m, sample_dir / f"{m}_5core.txt") for m in SAMPLE_MARKETS])
    cm = cross_market(r, max_history=max_history)
    shared_items, pairs, shared = plain_cross_market(r, max_history)
    assert cm.markets == SAMPLE_MARKETS
    assert cm.shared_items == shared_items
    assert cm.pairs == pairs
    assert cm.shared_pairs == shared
    for a in range(4):
        assert cm.shared_pairs[a][a] == cm.pairs[a] and cm.shared_items[a][a] == len(np.unique(r.item[r.market == a]))
        for b in range(4):
            assert cm.shared_pairs[a][b] == cm.shared_pairs[b][a] <= min(cm.pairs[a], cm.pairs[b])
    if max_history == 200:
        # The rich market shares structure with the data-poor target: much of in's pairs occur in uk.
        uk, india = 0, 3
        assert cm.pairs[uk] > cm.pairs[india] > 0
        assert cm.shared_pairs[india][uk] > 0.2 * cm.pairs[india]


def test_cross_market_truncation_changes_the_figures(sample_dir: Path) -> None:
    r = read_ratings([(m, sample_dir / f"{m}_5core.txt") for m in SAMPLE_MARKETS])
    full, short = cross_market(r, max_history=None), cross_market(r, max_history=4)
    assert full == cross_market(r, max_history=200), "no sample history is longer than 200"
    assert all(s < f for s, f in zip(short.pairs, full.pairs))
    assert short.shared_items == full.shared_items


# ---- the co-occurrence baseline's scores ---------------------------------------------------------


def plain_scores(hist: list[list[int]], counts: Counter, groups: list[int], items: list[list[int]]) -> list[list[float]]:
    """Σ over the group's history rows h (repeats counted) of C[h, j], with loops."""
    return [[float(sum(counts[(h, j)] for h in hist[g])) for j in row] for g, row in zip(groups, items)]


@settings(max_examples=200, deadline=None)
@given(c=histories_case(), data=st.data())
def test_cooc_scores_match_plain_python(c: dict, data: st.DataObject) -> None:
    """The core's scores (no scipy: `xmfast recommend COOC` starts without it) equal the sums
    done by hand, for candidates per group and for one list shared by every group."""
    if not c["hist"]:
        return
    n = c["n_items"]
    matrix = cooc(c["hist"], c["gm"], c["markets"], n, c["max_history"])
    counts = plain_cooc(c["hist"], c["gm"], c["markets"], c["max_history"])
    offsets, values = csr(c["hist"])
    groups = data.draw(st.lists(st.integers(0, len(c["hist"]) - 1), max_size=70))
    width = data.draw(st.integers(0, 6))
    items = [data.draw(st.lists(st.integers(0, n - 1), min_size=width, max_size=width)) for _ in groups]
    g = np.asarray(groups, dtype=np.uint32)
    got = core.cooc_scores(*matrix, offsets, values, g, np.asarray(items, dtype=np.uint32).reshape(len(groups), width))
    assert got.shape == (len(groups), width) and got.tolist() == plain_scores(c["hist"], counts, groups, items)
    every = core.cooc_scores(*matrix, offsets, values, g, np.arange(n, dtype=np.uint32))
    assert every.tolist() == plain_scores(c["hist"], counts, groups, [list(range(n))] * len(groups))


def test_cooc_scores_reject_bad_input() -> None:
    matrix = cooc([[0, 1], [1, 2]], [0, 0], [0], 3)
    offsets, values = csr([[0, 1], [1, 2]])
    g = np.array([0, 1], dtype=np.uint32)
    with pytest.raises(ValueError, match="item 3 is out of range"):
        core.cooc_scores(*matrix, offsets, values, g, np.array([[0], [3]], dtype=np.uint32))
    with pytest.raises(ValueError, match="group 2 is out of range"):
        core.cooc_scores(*matrix, offsets, values, np.array([2], dtype=np.uint32), np.array([0], dtype=np.uint32))
    with pytest.raises(ValueError, match="must be 1-d or"):
        core.cooc_scores(*matrix, offsets, values, g, np.zeros((3, 1), dtype=np.uint32))
    with pytest.raises(ValueError, match="malformed co-occurrence"):
        core.cooc_scores(matrix[0][:-1], matrix[1], matrix[2], offsets, values, g, np.array([0], dtype=np.uint32))


def test_real_cooc_scores_equal_scipys_sparse_product(xmarket_dir: Path) -> None:
    """On jp with every other market as source: the baseline's test scores and a user's scores
    over every item equal H·C computed with scipy.sparse (what the scorer did before), to the bit."""
    import scipy.sparse as sp

    from xmfast.models.baselines import CooccurrenceScorer, history_matrix
    from xmfast.prepare import PrepareConfig, prepare

    ds = prepare(xmarket_dir, None, PrepareConfig(target="jp", sources="all"))
    scorer = CooccurrenceScorer(ds)
    indptr, indices, counts = scorer.cooc
    matrix = sp.csr_matrix((counts.astype(np.float64), indices, indptr), shape=(ds.n_items, ds.n_items))
    groups, candidates = ds.test.group, ds.test.candidates
    want = (history_matrix(ds, groups) @ matrix).toarray()[np.arange(len(groups))[:, None], candidates]
    assert np.array_equal(scorer.score(groups, candidates), want)
    one = groups[:1]
    assert np.array_equal(scorer.score_all(one, np.arange(ds.n_items)), (history_matrix(ds, one) @ matrix).toarray())


def test_the_cooc_scorer_refuses_ids_a_cast_would_wrap(dataset: Path) -> None:
    """A negative or 2³²+ id is an error, not another group or item (the core takes uint32)."""
    from xmfast.dataset import PreparedDataset
    from xmfast.errors import XmfastError
    from xmfast.models.baselines import CooccurrenceScorer

    ds = PreparedDataset.load(dataset)
    scorer = CooccurrenceScorer(ds)
    groups = ds.test.group[:2].astype(np.int64)
    assert scorer.score(groups, ds.test.candidates[:2]).shape == (2, ds.test.candidates.shape[1])
    with pytest.raises(XmfastError, match="group -1 is out of range"):
        scorer.score(np.array([-1, 0]), ds.test.candidates[:2])
    with pytest.raises(XmfastError, match=f"item {2**32 + 5} is out of range"):
        scorer.score_all(groups, np.array([2**32 + 5], dtype=np.int64))
