"""Item–item models without training: a user's score for item j is ``X_u · W[:, j]``, the sum of
the weights from the items of their history (X_u, binary) to j.

* :func:`ease_weights` — EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data",
  WWW 2019): W = B = I − P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹, so diag(B) = 0.
* :func:`knn_weights` — ItemKNN: the cosine (or asymmetric cosine) of the co-occurrence counts
  with shrinkage, each item keeping its k most similar items.

Both are fitted on the histories of the chosen markets (the target alone, or pooled with the
run's sources: items are shared, so pooling is a cross-market model) and read the same input
as cooc: the Rust core's co-occurrence counts c_ij (users with both i and j) and each item's
users n_i, so XᵀX = C + diag(n). Only the items some fitted history holds ("active") get a row
and column: for any other item XᵀX's row and column are zero, so EASE's B and ItemKNN's
similarities are zero there and leaving them out changes no score (they score 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmfast import core
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.models.baselines import history_matrix

_CHUNK = 1024  # queries per dense (queries × items) block when scoring


def fitted_markets(dataset: PreparedDataset, sources: Sequence[str]) -> list[str]:
    """The target and the run's sources (``("all",)``: every market of the dataset)."""
    names = [m for m in dataset.markets if m != dataset.target] if list(sources) == ["all"] else list(sources)
    unknown = [m for m in names if m not in dataset.markets]
    if unknown:
        raise XmfastError(f"market {unknown[0]!r} is not in the dataset (it has {', '.join(dataset.markets)})")
    return list(dict.fromkeys([dataset.target, *names]))


def item_counts(dataset: PreparedDataset, markets: Sequence[str]) -> tuple[Any, np.ndarray]:
    """The co-occurrence counts C (items × items CSR, zero diagonal, from the Rust core) and each
    item's number of users n over the training histories of `markets` (a repeat counts once)."""
    import scipy.sparse as sp

    codes = [dataset.markets.index(m) for m in markets]
    indptr, indices, counts = core.cooccurrence(
        np.asarray(dataset.train_offsets), np.asarray(dataset.train_item), np.asarray(dataset.group_market),
        codes, dataset.n_items, None,
    )
    cooc = sp.csr_matrix((counts.astype(np.float64), indices, indptr), shape=(dataset.n_items, dataset.n_items))
    groups = np.flatnonzero(np.isin(np.asarray(dataset.group_market), codes))
    users = np.asarray(history_matrix(dataset, groups, binary=True).sum(axis=0)).ravel()
    return cooc, users


def ease_weights(cooc: Any, users: np.ndarray, lam: float) -> np.ndarray:
    """EASE's B (dense float64) from XᵀX = C + diag(n): B_ij = −P_ij / P_jj for i ≠ j, B_ii = 0.

    The inverse is LAPACK's Cholesky (scipy's dpotrf, then dpotri in place): XᵀX + λI is
    symmetric positive definite, so this takes half the flops of a general inverse, one matrix of
    memory, and fails loudly rather than silently if the matrix is not positive definite."""
    from scipy.linalg import cho_factor, lapack

    a = users.size
    if a == 0:  # no history to fit: every item scores 0
        return np.zeros((0, 0))
    gram = cooc.toarray()
    gram[np.diag_indices(a)] += users + lam
    factor, lower = cho_factor(gram, lower=True, overwrite_a=True, check_finite=False)
    p, info = lapack.dpotri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise XmfastError(f"ease: the Gram matrix XᵀX + {lam}·I could not be inverted (LAPACK dpotri info {info})")
    for s in range(0, a, _CHUNK):  # dpotri fills the lower triangle: mirror it, a block of rows at a time
        e = min(s + _CHUNK, a)
        p[s:e, e:] = p[e:, s:e].T
        block = np.tril(p[s:e, s:e])
        p[s:e, s:e] = block + np.tril(block, -1).T
    diag = np.diag(p).copy()
    p /= -diag[None, :]
    p[np.diag_indices(a)] = 0.0
    return p


def knn_weights(cooc: Any, users: np.ndarray, similarity: str, alpha: float, shrink: float, neighbours: int) -> Any:
    """ItemKNN's W (CSR): s_hj = c_hj / (n_h^α·n_j^(1−α) + shrink), α = ½ for the cosine, and for
    each item j only its `neighbours` largest s_hj (ties: the lower item index h first)."""
    import scipy.sparse as sp

    alpha = 0.5 if similarity == "cosine" else alpha
    coo = cooc.tocoo()
    n = users.astype(np.float64)
    sim = coo.data / (n[coo.row] ** alpha * n[coo.col] ** (1.0 - alpha) + shrink)
    keep = sim > 0
    rows, cols, sim = coo.row[keep], coo.col[keep], sim[keep]
    order = np.lexsort((rows, -sim, cols))  # by column j, then the largest similarity, then h
    rows, cols, sim = rows[order], cols[order], sim[order]
    starts = np.searchsorted(cols, np.arange(users.size))
    rank = np.arange(cols.size) - starts[cols]
    kept = rank < neighbours
    return sp.csr_matrix((sim[kept], (rows[kept], cols[kept])), shape=cooc.shape)


class ItemItemScorer:
    """Scores item j for a group by ``X_u · W[:, j]`` over the active items (others score 0)."""

    def __init__(self, dataset: PreparedDataset, active: np.ndarray, weights: Any, meaning: str) -> None:
        self.dataset = dataset
        self.active = active
        self.position = np.full(dataset.n_items, -1, dtype=np.int64)
        self.position[active] = np.arange(active.size)
        self.weights = weights  # (active × active), dense or sparse
        self.meaning = meaning

    def _scores(self, groups: np.ndarray) -> np.ndarray:
        """(groups × active items) scores, dense."""
        history = history_matrix(self.dataset, groups, binary=True)[:, self.active]
        out = history @ self.weights
        if hasattr(out, "toarray"):  # sparse (ItemKNN): summed in a fixed order, exact as it is
            return np.asarray(out.toarray(), dtype=np.float64)
        # Dense (EASE): the inverse and this product come from BLAS, whose last bits depend on how
        # it was started (threads, kernels), and items that are tied in exact arithmetic would be
        # ordered by that noise (on the sample, ~40% of the scores differ in the 16th digit between
        # two processes). Kept to float32's 7 digits, such ties stay ties (ranked by the tie rule)
        # and the ranking is the same in every process.
        return np.asarray(out, dtype=np.float32).astype(np.float64)

    def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        groups = np.asarray(groups, dtype=np.int64)
        pos = self.position[np.asarray(items, dtype=np.int64)]
        out = np.zeros((groups.size, pos.size), dtype=np.float64)
        known = pos >= 0
        for s in range(0, groups.size, _CHUNK):
            out[s:s + _CHUNK, known] = self._scores(groups[s:s + _CHUNK])[:, pos[known]]
        return out

    def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        groups = np.asarray(groups, dtype=np.int64)
        pos = self.position[np.asarray(items, dtype=np.int64)]
        out = np.zeros(pos.shape, dtype=np.float64)
        for s in range(0, groups.size if self.active.size else 0, _CHUNK):
            block = self._scores(groups[s:s + _CHUNK])
            p = pos[s:s + _CHUNK]
            out[s:s + _CHUNK] = np.where(p >= 0, np.take_along_axis(block, np.maximum(p, 0), axis=1), 0.0)
        return out


def fit_ease(dataset: PreparedDataset, sources: Sequence[str], lam: float) -> ItemItemScorer:
    markets = fitted_markets(dataset, sources)
    cooc, users = item_counts(dataset, markets)
    active = np.flatnonzero(users > 0)
    weights = ease_weights(cooc[active][:, active], users[active], lam)
    return ItemItemScorer(dataset, active, weights,
                          f"EASE (lam {lam:g}) fitted on the training histories of {', '.join(markets)}")


def fit_knn(dataset: PreparedDataset, sources: Sequence[str], similarity: str, alpha: float, shrink: float,
            neighbours: int) -> ItemItemScorer:
    markets = fitted_markets(dataset, sources)
    cooc, users = item_counts(dataset, markets)
    active = np.flatnonzero(users > 0)
    weights = knn_weights(cooc[active][:, active], users[active], similarity, alpha, shrink, neighbours)
    what = "cosine" if similarity == "cosine" else f"asymmetric cosine (alpha {alpha:g})"
    return ItemItemScorer(dataset, active, weights,
                          f"the {what} similarities (shrink {shrink:g}, {neighbours} neighbours) of the item to "
                          f"the user's items in the training histories of {', '.join(markets)}, summed")
