"""Non-neural baselines, the honest floors of every results table.

* :class:`PopularityScorer` — an item's number of training rows in the query's market.
* :class:`CooccurrenceScorer` — the sum, over the user's training history in the query's
  market, of how often each candidate co-occurs with a history item in the training histories
  of the chosen markets (the target alone, or the target plus its sources: the simplest form
  of cross-market transfer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xmfast import core
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError

if TYPE_CHECKING:
    import scipy.sparse as sp


class PopularityScorer:
    """Scores an item by its training popularity in the query's market."""

    meaning = "the item's number of training ratings in the user's market"

    def __init__(self, dataset: PreparedDataset) -> None:
        self.dataset = dataset
        train_market = dataset.train_market().astype(np.int64)
        flat = train_market * dataset.n_items + np.asarray(dataset.train_item, dtype=np.int64)
        self.counts = np.bincount(flat, minlength=len(dataset.markets) * dataset.n_items).reshape(
            len(dataset.markets), dataset.n_items
        ).astype(np.float64)

    def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        market = np.asarray(self.dataset.group_market[groups], dtype=np.int64)
        return self.counts[market[:, None], np.asarray(items, dtype=np.int64)]

    def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        market = np.asarray(self.dataset.group_market[groups], dtype=np.int64)
        return self.counts[market][:, np.asarray(items, dtype=np.int64)]


class CooccurrenceScorer:
    """Scores an item by its co-occurrence with the user's history (counts from `markets`)."""

    def __init__(self, dataset: PreparedDataset, markets: Sequence[str] | None = None, max_history: int | None = None):
        self.dataset = dataset
        names = list(markets) if markets is not None else list(dataset.markets)
        unknown = [m for m in names if m not in dataset.markets]
        if unknown:
            raise XmfastError(f"market {unknown[0]!r} is not in the dataset (it has {', '.join(dataset.markets)})")
        self.markets = names
        self.meaning = (f"how often the item co-occurs with the user's items in the training histories of "
                        f"{', '.join(names)}, summed over the user's items")
        indptr, indices, counts = core.cooccurrence(
            np.asarray(dataset.train_offsets), np.asarray(dataset.train_item), np.asarray(dataset.group_market),
            [dataset.markets.index(m) for m in names], dataset.n_items, max_history,
        )
        self.cooc = (indptr, indices, counts)  # CSR, item × item, scored by the core (no scipy to import)

    def _scores(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        return core.cooc_scores(*self.cooc, np.asarray(self.dataset.train_offsets, dtype=np.uint64),
                                np.asarray(self.dataset.train_item, dtype=np.uint32), _ids(groups, "group"),
                                _ids(items, "item"))

    def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self._scores(groups, np.asarray(items).reshape(-1))

    def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self._scores(groups, items)


def _ids(values: np.ndarray, what: str) -> np.ndarray:
    """`values` as the core's uint32 ids, refusing any that a cast would wrap (negative or 2³² and
    more) instead of silently reading another group or item; the core checks the rest."""
    a = np.asarray(values)
    if a.dtype != np.uint32 and a.size:
        low, high = a.min(), a.max()
        if low < 0 or high > np.iinfo(np.uint32).max:
            raise XmfastError(f"{what} {low if low < 0 else high} is out of range")
    return np.ascontiguousarray(a, dtype=np.uint32)


def history_matrix(dataset: PreparedDataset, groups: np.ndarray, *, binary: bool = False) -> sp.csr_matrix:
    """The training histories of `groups` as a sparse (groups × items) matrix: an item rated
    twice counts twice, or once with `binary` (the user–item matrix X of EASE and ItemKNN)."""
    import scipy.sparse as sp

    off = np.asarray(dataset.train_offsets)
    groups = np.asarray(groups, dtype=np.int64)
    lo = off[groups].astype(np.int64)
    hi = off[groups + 1].astype(np.int64)
    indptr = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum(hi - lo, out=indptr[1:])
    rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(groups) else np.zeros(0, np.int64)
    items = np.asarray(dataset.train_item)[rows]
    matrix = sp.csr_matrix((np.ones(items.size, dtype=np.float64), items, indptr), shape=(len(groups), dataset.n_items))
    if binary:
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
    return matrix
