"""EASE-mix, the built-in ``easemix``: the pooled EASE score (``ease++``) as a fixed prior, plus a
residual learned for the target market from signals the pooled model cannot see.

The idea. EASE fitted on all markets pooled is the strongest baseline on most XMarket targets
because items are shared: the sources' co-occurrences fill in the target's sparse ones. What
pooling loses is what is particular to the target and to the user's time: which items sell
*there* (pop wins on ca), which co-occurrences hold *there* (EASE on the target alone), what the
user bought *last*, and what was being bought *when* the user was buying (EASE and pop ignore
dates). EASE-mix scores

    s(u, j) = ease++(u, j) + Σ_k v_k · f_k(u, j)

with the features f_k: the target-alone EASE score (``ease``); log(1 + the item's training
ratings in the user's market) (``pop``); the pooled EASE weight from the user's most recent
training item to j (``last``); log(1 + the item's training ratings in the fitted markets dated
within `window` days of the user's most recent one) (``recent``). The weights are learned per
target market on training data held out from the prior: each target user's last training item
is taken out, the EASE models and counts are fitted again without those items, and the mean
log-softmax of the held-out item among itself and `holdout_negatives` items drawn as training
negatives are (the protocol's pool) is maximised in (w_0 on the prior, w_k on the features),
a convex problem (scipy's L-BFGS). The final scores use the models fitted on every training row
with v_k = w_k / w_0, so the prior keeps weight 1: with v = 0 the model *is* ease++ (a test
checks it bit for bit), and `ridge` shrinks v towards 0. The held-out refit keeps the held-out
item out of every count and co-occurrence it is scored with, so the weights are fitted on
items the models had not seen, as they are used. No validation or test item is fitted on:
`xmfast tune` selects `lam`, `ridge` and `window` on validation as it does for every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.models.baselines import PopularityScorer
from xmfast.models.itemitem import ItemItemScorer, fit_ease, fitted_markets
from xmfast.models.settings import EaseMixConfig


def holdout_view(dataset: PreparedDataset) -> tuple[PreparedDataset, np.ndarray]:
    """`dataset` without the last training row of each target group that has two or more (so
    its history stays non-empty), and the removed rows (indices into its training arrays)."""
    offsets = np.asarray(dataset.train_offsets).astype(np.int64)
    sizes = np.diff(offsets)
    target = dataset.market_index(dataset.target)
    groups = np.flatnonzero((np.asarray(dataset.group_market) == target) & (sizes >= 2))
    rows = offsets[groups + 1] - 1
    keep = np.ones(offsets[-1], dtype=bool)
    keep[rows] = False
    new_offsets = np.zeros_like(np.asarray(dataset.train_offsets))
    removed = np.zeros(dataset.n_groups, dtype=np.int64)
    removed[groups] = 1
    np.cumsum(sizes - removed, out=new_offsets[1:])
    view = replace(dataset, train_offsets=new_offsets, train_item=np.asarray(dataset.train_item)[keep],
                   train_rating=np.asarray(dataset.train_rating)[keep], train_day=np.asarray(dataset.train_day)[keep])
    return view, rows


@dataclass
class Features:
    """The prior and the features of (group, item) pairs, from the models fitted on `dataset`."""

    dataset: PreparedDataset
    pooled: ItemItemScorer  # ease++: the prior, and its weights for the `last` feature
    names: tuple[str, ...]
    target: ItemItemScorer | None  # ease on the target alone (feature `ease`)
    pop: PopularityScorer | None
    dated: np.ndarray  # (item, day) keys of the fitted markets' training rows, sorted (feature `recent`)
    window: int
    span: int  # keys are item·span + (day − base)
    base: int

    @classmethod
    def fit(cls, dataset: PreparedDataset, config: EaseMixConfig, sources: Sequence[str]) -> Features:
        pooled = fit_ease(dataset, sources, config.lam)
        target = fit_ease(dataset, (), config.lam) if "ease" in config.features else None
        pop = PopularityScorer(dataset) if "pop" in config.features else None
        dated, span, base = np.zeros(0, dtype=np.int64), 1, 0
        if "recent" in config.features:
            codes = [dataset.market_index(m) for m in fitted_markets(dataset, sources)]
            fitted = np.isin(np.asarray(dataset.train_market()), codes)
            days = np.asarray(dataset.train_day, dtype=np.int64)
            base = int(days.min()) - config.window if days.size else 0
            span = int(days.max()) - base + config.window + 1 if days.size else 1
            dated = np.sort(np.asarray(dataset.train_item, dtype=np.int64)[fitted] * span + (days[fitted] - base))
        return cls(dataset, pooled, tuple(config.features), target, pop, dated, config.window, span, base)

    def recent(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        """log(1 + the training ratings of j, in the fitted markets, dated within `window` days of
        the group's most recent training rating): what was bought around the user's time."""
        offsets = np.asarray(self.dataset.train_offsets).astype(np.int64)
        ends = offsets[groups + 1]
        day = np.asarray(self.dataset.train_day, dtype=np.int64)[np.maximum(ends - 1, 0)] - self.base
        key = items * self.span + day[:, None]
        count = (np.searchsorted(self.dated, key + self.window, side="right")
                 - np.searchsorted(self.dated, key - self.window, side="left"))
        return np.where((ends > offsets[groups])[:, None], np.log1p(count), 0.0)

    def last(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The pooled EASE weight B[h, j] from each group's most recent training item h to j
        (0 for a group without history or an item outside the fitted ones)."""
        offsets = np.asarray(self.dataset.train_offsets).astype(np.int64)
        ends = offsets[groups + 1]
        has = ends > offsets[groups]
        last = np.asarray(self.dataset.train_item)[np.maximum(ends - 1, 0)].astype(np.int64)
        h = np.where(has, self.pooled.position[last], -1)
        j = self.pooled.position[items]
        ok = (h[:, None] >= 0) & (j >= 0)
        weights = np.asarray(self.pooled.weights)
        out = np.where(ok, weights[np.maximum(h, 0)[:, None], np.maximum(j, 0)] if weights.size else 0.0, 0.0)
        return out.astype(np.float32).astype(np.float64)  # to float32's digits, as the EASE scores

    def residual(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, c, features): each feature of `items[i, j]` for `groups[i]`, in `names` order."""
        out = []
        for name in self.names:
            if name == "ease" and self.target is not None:
                out.append(self.target.score(groups, items))
            elif name == "pop" and self.pop is not None:
                out.append(np.log1p(self.pop.score(groups, items)))
            elif name == "recent":
                out.append(self.recent(groups, items))
            else:
                out.append(self.last(groups, items))
        return np.stack(out, axis=-1) if out else np.zeros((*items.shape, 0))


def softmax_loss(w: np.ndarray, x: np.ndarray, ridge: float) -> tuple[float, np.ndarray]:
    """The mean negative log-softmax of column 0 over each row's candidates, scored ``x @ w``
    (x: (rows, candidates, inputs)), plus ``ridge·|w[1:]|²``: the features' weights shrink
    towards 0, i.e. the model towards the prior (w[0]) alone; and its gradient in w."""
    s = x @ w
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s)
    z = p.sum(axis=1)
    p /= z[:, None]
    penalised = np.concatenate([[0.0], w[1:]])
    value = -np.mean(s[:, 0] - np.log(z)) + ridge * float(penalised @ penalised)
    grad = -np.mean(x[:, 0, :] - np.einsum("nc,nck->nk", p, x), axis=0) + 2 * ridge * penalised
    return float(value), grad


def fit_weights(prior: np.ndarray, features: np.ndarray, ridge: float) -> tuple[float, np.ndarray]:
    """Weights (w_0 on `prior` (rows, candidates), w on `features` (rows, candidates, k))
    minimising :func:`softmax_loss` (column 0 is the held-out item) on the inputs divided by
    their standard deviations (so `ridge` treats the features alike). Convex in the weights, so
    scipy's L-BFGS finds the optimum; w_0 is kept positive so the prior's direction is the model's."""
    from scipy.optimize import minimize

    x = np.concatenate([prior[..., None], features], axis=-1)
    scale = x.reshape(-1, x.shape[-1]).std(axis=0)
    scale[scale == 0] = 1.0
    start = np.zeros(x.shape[-1])
    start[0] = 1.0
    bounds = [(1e-6, None)] + [(None, None)] * features.shape[-1]
    result = minimize(softmax_loss, start, args=(x / scale, ridge), jac=True, method="L-BFGS-B", bounds=bounds)
    w = result.x / scale
    return float(w[0]), w[1:]


class EaseMixScorer:
    """``ease++(g, j) + Σ_k v_k·f_k(g, j)`` with the features of models fitted on all training rows."""

    def __init__(self, features: Features, weights: np.ndarray, what: str) -> None:
        self.features = features
        self.weights = np.asarray(weights, dtype=np.float64)
        self.meaning = what

    def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        groups = np.asarray(groups, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        prior = self.features.pooled.score(groups, items)
        if not self.weights.any():
            return prior
        out = prior + self.features.residual(groups, items) @ self.weights
        return out.astype(np.float32).astype(np.float64)  # stable last bits, as ItemItemScorer's

    def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        groups = np.asarray(groups, dtype=np.int64)
        return self.score(groups, np.broadcast_to(np.asarray(items, dtype=np.int64), (groups.size, np.size(items))))


def fit_easemix(dataset: PreparedDataset, config: EaseMixConfig, sources: Sequence[str]) -> EaseMixScorer:
    """Fits the weights on each target user's last training item held out (see the module
    docstring), then the models on every training row."""
    markets = fitted_markets(dataset, sources)
    weights = np.zeros(len(config.features))
    if config.features:
        view, rows = holdout_view(dataset)
        if rows.size == 0:
            raise XmfastError(f"easemix: no user of market {dataset.target} has two training ratings, so there is "
                              "nothing to fit the mix on; use ease++")
        held = Features.fit(view, config, sources)
        groups = np.searchsorted(np.asarray(dataset.train_offsets).astype(np.int64), rows, side="right") - 1
        negatives = dataset.train_negative_sampler(config.holdout_negatives, config.holdout_seed).sample(0)[rows]
        candidates = np.concatenate([np.asarray(dataset.train_item)[rows, None], negatives], axis=1).astype(np.int64)
        w0, w = fit_weights(held.pooled.score(groups, candidates), held.residual(groups, candidates), config.ridge)
        weights = w / w0
    mix = ", ".join(f"{v:+.4g}·{name}" for name, v in zip(config.features, weights))
    return EaseMixScorer(Features.fit(dataset, config, sources), weights,
                         f"EASE (lam {config.lam:g}) fitted on the training histories of {', '.join(markets)}"
                         + (f", {mix} (weights fitted on each {dataset.target} user's last training item held out)"
                            if mix else ""))
