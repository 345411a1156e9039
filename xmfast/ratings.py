"""Rating tables: what the Rust parser returns, as a typed object with filtering helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmfast import core
from xmfast.errors import DataError


@dataclass(frozen=True)
class Ratings:
    """All ratings of some markets, one entry per row, with shared user and item vocabularies.

    Items are shared across markets (that is what cross-market transfer exploits); users are
    interned globally too, but every split and statistic treats a (market, user) pair as one
    group, so a reviewer active in two markets is two groups.
    """

    markets: list[str]
    users: core.Vocab
    items: core.Vocab
    market: np.ndarray  # uint16, index into `markets`
    user: np.ndarray  # uint32
    item: np.ndarray  # uint32
    rating: np.ndarray  # float32
    day: np.ndarray  # int32, days since 1970-01-01
    files: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def market_index(self, name: str) -> int:
        try:
            return self.markets.index(name)
        except ValueError:
            raise DataError(f"market {name!r} is not loaded (loaded: {', '.join(self.markets)})") from None

    def select(self, keep: np.ndarray) -> Ratings:
        """The rows where `keep` is true (vocabularies unchanged)."""
        return Ratings(
            self.markets, self.users, self.items,
            self.market[keep], self.user[keep], self.item[keep], self.rating[keep], self.day[keep],
            self.files,
        )

    def compact(self) -> Ratings:
        """Renumbers users and items densely (first appearance) and drops unused vocabulary."""
        user, old_users = core.compact_ids(self.user)
        item, old_items = core.compact_ids(self.item)
        # Reading already numbers ids densely in first-appearance order, so without filtering
        # the renumbering is the identity and the vocabularies can be kept as they are.
        users = self.users if _is_identity(old_users, len(self.users)) else self.users.subset(old_users)
        items = self.items if _is_identity(old_items, len(self.items)) else self.items.subset(old_items)
        return Ratings(self.markets, users, items, self.market, user, item, self.rating, self.day, self.files)

    def kcore(self, min_user: int, min_item: int, *, fixpoint: bool = False) -> Ratings:
        """k-core per market (see :func:`xmfast.core.kcore_mask`)."""
        if min_user <= 1 and min_item <= 1:
            return self
        return self.select(core.kcore_mask(self.market, self.user, self.item, min_user, min_item, fixpoint))

    def items_of(self, market: str) -> np.ndarray:
        """Distinct item numbers rated in `market`, ascending."""
        m = self.market_index(market)
        return np.unique(self.item[self.market == m]).astype(np.uint32)

    def restrict_items(self, allowed: np.ndarray) -> Ratings:
        return self.select(core.restrict_items_mask(self.item, np.ascontiguousarray(allowed, dtype=np.uint32)))

    def drop_markets(self, keep_markets: Sequence[str]) -> Ratings:
        """Keeps only the rows of `keep_markets`, renumbering markets in that order."""
        if list(keep_markets) == self.markets:
            return self  # nothing to drop or renumber: no copy of the (possibly 50M-row) table
        index = {name: i for i, name in enumerate(keep_markets)}
        remap = np.array([index.get(name, 65535) for name in self.markets], dtype=np.uint16)
        new_market = remap[self.market]
        kept = self.select(new_market != 65535)
        return Ratings(
            list(keep_markets), kept.users, kept.items,
            remap[kept.market], kept.user, kept.item, kept.rating, kept.day,
            [f for f in self.files if f["market"] in index],
        )


def _is_identity(old_of_new: np.ndarray, size: int) -> bool:
    return old_of_new.size == size and bool(np.array_equal(old_of_new, np.arange(size, dtype=np.uint32)))


def read_ratings(sources: Sequence[tuple[str, Path | str]]) -> Ratings:
    """Parses rating files (market, path) with the Rust core; bad input raises DataError."""
    try:
        raw = core.read_ratings([(m, str(p)) for m, p in sources])
    except (core.DataFormatError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise DataError(str(e)) from None
    except OSError as e:
        raise DataError(str(e)) from None
    return Ratings(
        raw["markets"], raw["users"], raw["items"],
        raw["market"], raw["user"], raw["item"], raw["rating"], raw["day"], raw["files"],
    )
