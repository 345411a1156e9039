"""Per-market statistics and cross-market overlap figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from xmfast import core
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.ratings import Ratings


@dataclass(frozen=True)
class MarketStats:
    market: str
    users: int
    items: int
    ratings: int
    density: float  # ratings / (users × items)
    shared_items: int  # items also rated in the target market
    shared_share: float  # shared_items / items

    def as_dict(self) -> dict:
        return asdict(self)


def _per_market(markets: list[str], market: np.ndarray, user: np.ndarray, item: np.ndarray, target: str) -> list[MarketStats]:
    n_items = int(item.max()) + 1 if item.size else 0
    item_sets = []
    out = []
    for m in range(len(markets)):
        sel = market == m
        item_sets.append(np.unique(item[sel]))
    t = markets.index(target) if target in markets else None
    target_mask = np.zeros(n_items, dtype=bool)
    if t is not None:
        target_mask[item_sets[t]] = True
    for m, name in enumerate(markets):
        sel = market == m
        users = int(np.unique(user[sel]).size)
        items = int(item_sets[m].size)
        ratings = int(sel.sum())
        shared = int(target_mask[item_sets[m]].sum()) if t is not None else 0
        out.append(MarketStats(
            name, users, items, ratings,
            ratings / (users * items) if users and items else 0.0,
            shared, shared / items if items else 0.0,
        ))
    return out


def market_stats(data: Ratings | PreparedDataset, target: str) -> list[MarketStats]:
    """Users, items, ratings, density and item overlap with `target`, per market.

    For a prepared dataset, counts cover all its rows (training, validation and test). A `target`
    the data lacks is an error (its overlap column would read 0 everywhere)."""
    if target not in data.markets:
        raise XmfastError(f"market {target!r} is not in the data (it has {', '.join(data.markets)}); "
                          "choose --target among them")
    if isinstance(data, Ratings):
        return _per_market(data.markets, data.market, data.user, data.item, target)
    g = data.train_group()
    market = np.concatenate([data.group_market[g], data.group_market[data.valid.group], data.group_market[data.test.group]])
    user = np.concatenate([data.group_user[g], data.group_user[data.valid.group], data.group_user[data.test.group]])
    item = np.concatenate([data.train_item, data.valid.item, data.test.item])
    return _per_market(data.markets, market, user, item, target)


@dataclass(frozen=True)
class CrossMarket:
    """Item overlap and co-occurrence overlap between markets.

    `shared_items[a][b]`: items rated in both a and b. `pairs[a]`: distinct co-occurring item
    pairs in market a (two items in one user's history). `shared_pairs[a][b]`: pairs that
    co-occur in both a and b — how much of a's item-to-item structure b could teach.
    """

    markets: list[str]
    shared_items: list[list[int]]
    pairs: list[int]
    shared_pairs: list[list[int]]


def cross_market(ratings: Ratings, *, max_history: int | None = 200) -> CrossMarket:
    """Overlap figures over all rows of `ratings`, grouping rows by (market, user)."""
    groups = core.leave_one_out(
        ratings.market, ratings.user, ratings.item, ratings.day, min_interactions=2**62
    )
    history = ratings.item[groups["train_rows"]]
    n_items = len(ratings.items)
    k = len(ratings.markets)
    item_sets = [np.zeros(n_items, dtype=bool) for _ in range(k)]
    for m in range(k):
        item_sets[m][ratings.item[ratings.market == m]] = True
    shared_items = [[int((item_sets[a] & item_sets[b]).sum()) for b in range(k)] for a in range(k)]
    coocs = [
        core.cooccurrence(groups["train_offsets"], history, groups["group_market"], [m], n_items, max_history)
        for m in range(k)
    ]
    pairs = [int(c[1].size) // 2 for c in coocs]
    shared = [
        [core.shared_pairs(coocs[a][0], coocs[a][1], coocs[b][0], coocs[b][1]) // 2 for b in range(k)]
        for a in range(k)
    ]
    return CrossMarket(list(ratings.markets), shared_items, pairs, shared)
