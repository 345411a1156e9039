"""Top-k recommendations for users: every item of the user's market scored by a model, the
items the user already has left out, the best k kept by the Rust top-k (:func:`core.top_k`)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmfast import core
from xmfast._io import write_text_atomic
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError, argument, check_int
from xmfast.evaluation import Scorer


# What a score is when the scorer does not say (its `meaning` attribute; see xmfast.evaluation.Scorer).
SCORE_MEANING = "the value the model's scorer gives the user and the item"


@dataclass(frozen=True)
class Recommendations:
    """`items[q, r]` is the r-th recommendation (item number, -1 when the market has fewer new
    items than k) for group `groups[q]`, with its score. The width is k, or the largest catalog
    of the queried markets when that is smaller (no column could hold an item)."""

    groups: np.ndarray
    items: np.ndarray  # int64, (queries, min(k, largest catalog))
    scores: np.ndarray  # float, same shape; NaN where items is -1
    score_meaning: str = SCORE_MEANING  # what a score is, for the reader of a table

    def rows(self, dataset: PreparedDataset) -> list[tuple[str, str, int, str, float]]:
        """(market, user id, rank from 1, item id, score) for every recommendation."""
        out = []
        for q, g in enumerate(self.groups):
            market = dataset.markets[int(dataset.group_market[g])]
            user = dataset.users[int(dataset.group_user[g])]
            for r in range(self.items.shape[1]):
                item = int(self.items[q, r])
                if item >= 0:
                    out.append((market, user, r + 1, dataset.items[item], float(self.scores[q, r])))
        return out


def _market_index(dataset: PreparedDataset, market: str) -> int:
    if market not in dataset.markets:
        raise XmfastError(f"market {market!r} is not in the dataset (it has {', '.join(dataset.markets)})")
    return dataset.market_index(market)


def resolve_groups(dataset: PreparedDataset, users: Sequence[str], market: str | None = None) -> np.ndarray:
    """Groups of original user ids in `market` (default: the dataset's target)."""
    market = market or dataset.target
    m = _market_index(dataset, market)
    code_of_user = {}
    group_market = np.asarray(dataset.group_market)
    group_user = np.asarray(dataset.group_user)
    in_market = np.flatnonzero(group_market == m)
    for g in in_market:
        code_of_user[int(group_user[g])] = int(g)
    groups = []
    for uid in users:
        u = dataset.users.get(uid)
        g = code_of_user.get(u) if u is not None else None
        if g is None:
            raise XmfastError(f"user {uid!r} has no ratings in market {market} of this dataset")
        groups.append(g)
    return np.asarray(groups, dtype=np.int64)


def read_user_ids(path: Path) -> list[str]:
    """The user ids of a file, one per line (blank lines skipped); an unreadable file is one error."""
    path = Path(path)
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise XmfastError(f"{path}: cannot read user ids (not UTF-8 text: {e})") from None
    except OSError as e:  # missing, a directory, unreadable
        raise XmfastError(f"{path}: cannot read user ids ({e.strerror or e})") from None


def select_groups(
    dataset: PreparedDataset,
    users: Sequence[str] = (),
    users_file: Path | None = None,
    *,
    all_users: bool = False,
    market: str | None = None,
) -> np.ndarray:
    """The groups `recommend` is asked for: the named `users` and those of `users_file`, in
    `market` (default: the dataset's target), or with `all_users` every user of that market.
    Both at once is an error (the names would be ignored), and so is neither."""
    ids = list(users)
    if users_file is not None:
        ids += read_user_ids(users_file)
    market = market or dataset.target
    if all_users and ids:
        raise XmfastError(f"give either {argument('all_users')} or the users ({argument('users', None)}, "
                          f"{argument('users_file', None)}), not both")
    if all_users:
        return np.flatnonzero(np.asarray(dataset.group_market) == _market_index(dataset, market))
    if ids:
        return resolve_groups(dataset, ids, market)
    raise XmfastError(f"name users with {argument('users', None, metavar='ID')}, "
                      f"{argument('users_file', None, metavar='FILE')} or "
                      f"{argument('all_users')}")


def recommend(
    dataset: PreparedDataset,
    scorer: Scorer,
    groups: np.ndarray,
    k: int = 10,
    *,
    exclude_known: bool = True,
    batch_groups: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> Recommendations:
    """The top `k` items of each group's market catalog by `scorer`, leaving out (by default)
    every item the user has in that market: training, validation and test items."""
    check_int("k", k)
    groups = np.asarray(groups, dtype=np.int64)
    known_offsets, known_items = dataset._all_positives() if exclude_known else (None, None)
    group_market = np.asarray(dataset.group_market)
    # A k beyond every catalog (say --k 4000000000) must not allocate columns no item can fill.
    catalog_sizes = np.diff(np.asarray(dataset.market_item_offsets).astype(np.int64))
    k = min(k, int(catalog_sizes[group_market[groups]].max(initial=1)))
    items = np.full((groups.size, k), -1, dtype=np.int64)
    scores = np.full((groups.size, k), np.nan, dtype=np.float64)
    done = 0
    for m, name in enumerate(dataset.markets):
        queries = np.flatnonzero(group_market[groups] == m)
        if queries.size == 0:
            continue
        catalog = np.asarray(dataset.catalog(name))
        for start in range(0, queries.size, batch_groups):
            q = queries[start : start + batch_groups]
            g = groups[q]
            s = np.asarray(scorer.score_all(g, catalog))
            kwargs = {}
            if known_offsets is not None:
                lo = known_offsets[g].astype(np.int64)
                hi = known_offsets[g + 1].astype(np.int64)
                flat = np.concatenate([known_items[a:b] for a, b in zip(lo, hi)])
                segment = np.repeat(np.arange(q.size), hi - lo)
                # A user's items all belong to the market's catalog; the check keeps this exact
                # even for a dataset that breaks that rule.
                columns = np.minimum(np.searchsorted(catalog, flat), catalog.size - 1)
                inside = catalog[columns] == flat
                sizes = np.bincount(segment[inside], minlength=q.size)
                offsets = np.zeros(q.size + 1, dtype=np.uint64)
                np.cumsum(sizes, out=offsets[1:])
                kwargs = {"exclude_offsets": offsets, "exclude_items": columns[inside].astype(np.uint32)}
            top, top_scores = core.top_k(np.ascontiguousarray(s), k, **kwargs)
            valid = top >= 0
            items[q] = np.where(valid, catalog[np.where(valid, top, 0)].astype(np.int64), -1)
            scores[q] = np.where(valid, top_scores, np.nan)
            done += q.size
            if progress:
                progress(done, groups.size)
    return Recommendations(groups, items, scores, getattr(scorer, "meaning", None) or SCORE_MEANING)


def write_csv(path: Path, recs: Recommendations, dataset: PreparedDataset) -> None:
    """One line per recommendation: market, user, rank, item, score (written atomically)."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["market", "user", "rank", "item", "score"])
    for market, user, rank, item, score in recs.rows(dataset):
        writer.writerow([market, user, rank, item, f"{score:.6g}"])
    write_text_atomic(Path(path), buffer.getvalue())
