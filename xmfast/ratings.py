"""Rating tables: what the Rust parser returns, as a typed object with filtering helpers, and
the file formats it reads (XMarket, delimited text through a column mapping, Parquet)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    # One dict per input file: market (a market column's file: its markets in order of first
    # appearance, joined by commas), path, bytes, blake3 (of the bytes on disk), gzip, had_header, rows.
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
            # A file with a market column records its markets joined by commas: kept with any of them.
            [f for f in self.files if any(m in index for m in f["market"].split(","))],
        )


def _is_identity(old_of_new: np.ndarray, size: int) -> bool:
    return old_of_new.size == size and bool(np.array_equal(old_of_new, np.arange(size, dtype=np.uint32)))


# Header names each role answers to unless a mapping says otherwise (Amazon reviews, XMarket,
# RecBole atomic files, whose `user_id:token` answers to `user_id`).
USER_NAMES = ("user", "userId", "user_id", "reviewerID")
ITEM_NAMES = ("item", "itemId", "item_id", "asin")
TIME_NAMES = ("time", "timestamp", "date", "unixReviewTime")
RATING_NAMES = ("rating", "rate", "overall")
MARKET_NAMES = ("market",)
DELIMITERS = (",", "\t", ";", "|")


@dataclass(frozen=True)
class Columns:
    """Which header fields (or Parquet columns) hold each role: per role a tuple of accepted
    names, the first present wins; a field written ``name:type`` also answers to ``name``.

    user, item and time must be found. ``rating`` None means no rating column (every rating is
    1.0); ``market`` is read only for an input given without a market (None: there is none).
    Names of ``rating``/``market`` listed in ``required`` must be found; otherwise an absent one
    is no column — so the defaults are looked for, and names a user gave (:meth:`mapping`) are
    not silently missed.
    """

    user: tuple[str, ...] = USER_NAMES
    item: tuple[str, ...] = ITEM_NAMES
    time: tuple[str, ...] = TIME_NAMES
    rating: tuple[str, ...] | None = RATING_NAMES
    market: tuple[str, ...] | None = MARKET_NAMES
    required: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for role in ("user", "item", "time", "rating", "market"):
            names = getattr(self, role)
            if names is None and role in ("rating", "market"):
                continue
            if isinstance(names, str) or not names or not all(isinstance(n, str) and n for n in names):
                raise DataError(f"column mapping: `{role}` needs a tuple of one or more column names, not {names!r}")
        if not set(self.required) <= {"rating", "market"}:
            raise DataError(f"column mapping: `required` may hold rating and market only, not {sorted(self.required)}")

    @classmethod
    def mapping(cls, **names: str | Sequence[str] | None) -> Columns:
        """The columns a user named (``user="reviewerID", rating="overall"``; ``rating=None``:
        no rating column): those names, required; roles not named keep the defaults."""
        unknown = set(names) - {"user", "item", "time", "rating", "market"}
        if unknown:
            raise DataError(
                f"column mapping: unknown role {', '.join(sorted(unknown))} (roles: user, item, time, rating, market)"
            )
        given = {role: None if v is None else (v,) if isinstance(v, str) else tuple(v) for role, v in names.items()}
        required = frozenset(r for r in ("rating", "market") if given.get(r) is not None)
        return cls(**given, required=required)  # type: ignore[arg-type]

    def _spec(self) -> dict[str, Any]:
        """The mapping as the core's input dict takes it."""
        return {
            "user": list(self.user), "item": list(self.item), "time": list(self.time),
            "rating": list(self.rating or ()), "rating_required": "rating" in self.required and self.rating is not None,
            "market_column": list(self.market or ()), "market_required": "market" in self.required,
        }


@dataclass(frozen=True)
class FileFormat:
    """How one rating file is read.

    ``xmarket``: XMarket's whitespace-separated layout (no delimiter, no columns). ``delimited``:
    text with a header, ``delimiter`` one of ``,`` tab ``;`` ``|``, RFC 4180 quoting (no newlines
    inside quoted fields), times ``YYYY-MM-DD[ time]`` or Unix seconds. ``parquet``: read with
    pyarrow (``pip install "xmfast[parquet]"``); times may be timestamps, dates, integer or
    float seconds, or ``YYYY-MM-DD`` strings. ``columns`` None means :class:`Columns`' defaults.
    Plain or gzip text alike (detected from the content).
    """

    kind: Literal["xmarket", "delimited", "parquet"] = "xmarket"
    delimiter: str | None = None
    columns: Columns | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("xmarket", "delimited", "parquet"):
            raise DataError(f"unknown file format {self.kind!r} (formats: xmarket, delimited, parquet)")
        if self.kind == "delimited" and self.delimiter not in DELIMITERS:
            raise DataError(f"delimiter {self.delimiter!r} is not supported (use one of , tab ; |)")
        if self.kind != "delimited" and self.delimiter is not None:
            raise DataError(f"a {self.kind} file has no delimiter (got {self.delimiter!r})")
        if self.kind == "xmarket" and self.columns is not None:
            raise DataError("an XMarket file has fixed columns (userId itemId rate date): no column mapping")

    @property
    def mapping(self) -> Columns:
        return self.columns or Columns()


XMARKET = FileFormat()
CSV = FileFormat("delimited", ",")
TSV = FileFormat("delimited", "\t")
INTER = FileFormat("delimited", "\t")  # RecBole atomic files: `user_id:token` etc. match the defaults
PARQUET = FileFormat("parquet")

Source = tuple[str, "Path | str"] | tuple["str | None", "Path | str", FileFormat]


def read_ratings(sources: Sequence[Source]) -> Ratings:
    """Parses rating files with the Rust core into one table; bad input raises DataError.

    Each source is ``(market, path)`` (an XMarket file) or ``(market, path, FileFormat)``;
    ``market`` None means the file's market column names each row's market (numbered by first
    appearance). Users and items share one vocabulary over all files, numbered by first
    appearance whatever the format, so the same ratings in the same order give identical arrays.
    """
    inputs = []
    for source in sources:
        market, path, fmt = (*source, XMARKET) if len(source) == 2 else source
        if market is None and (fmt.kind == "xmarket" or fmt.mapping.market is None):
            raise DataError(f"{path}: no market given, and the {fmt.kind} format names no market column")
        if fmt.kind == "xmarket":
            inputs.append({"market": market, "path": str(path), "kind": "xmarket"})
        elif fmt.kind == "delimited":
            inputs.append({"market": market, "path": str(path), "kind": "delimited", "delimiter": fmt.delimiter,
                           **fmt.mapping._spec()})
        else:
            inputs.append(_parquet_input(market, Path(path), fmt.mapping))
    try:
        raw = core.read_inputs(inputs)
    except (core.DataFormatError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise DataError(str(e)) from None
    except OSError as e:
        raise DataError(str(e)) from None
    return Ratings(
        raw["markets"], raw["users"], raw["items"],
        raw["market"], raw["user"], raw["item"], raw["rating"], raw["day"], raw["files"],
    )


PARQUET_INSTALL = 'pip install "xmfast[parquet]"'


def require_pyarrow(what: str) -> Any:
    """pyarrow (with its Parquet module), or a DataError saying `what` needs it and how to get it:
    Parquet is an optional extra, read and written only through pyarrow."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError(f"{what} needs pyarrow: {PARQUET_INSTALL}") from None
    return pyarrow


def _parquet_input(market: str | None, path: Path, columns: Columns) -> dict[str, Any]:
    """Reads the mapped columns of a Parquet file with pyarrow, as the core's input dict: strings
    as Arrow's buffers (borrowed, not copied), times as days (or text the core parses)."""
    pa = require_pyarrow(f"{path}: reading Parquet")
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    try:
        names = pq.read_schema(path).names
        where = core.map_columns(names, columns._spec(), market is not None)
        wanted = {role: names[i] for role, i in where.items() if i is not None}
        table = pq.read_table(path, columns=sorted(set(wanted.values())))
    except core.DataFormatError as e:
        raise DataError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    batches, first_row = [], 0
    for batch in table.to_batches():
        def column(role: str, batch: pa.RecordBatch = batch) -> pa.Array:
            arr = batch.column(wanted[role])
            if arr.null_count:
                row = first_row + pc.index(arr.is_null(), True).as_py() + 1
                raise DataError(f"{path}: row {row}: column {wanted[role]!r} ({role}) is empty (null)")
            return arr

        item: dict[str, Any] = {"user": _arrow_strings(column("user"), path, wanted["user"]),
                                "item": _arrow_strings(column("item"), path, wanted["item"])}
        if "rating" in wanted:
            try:
                item["rating"] = np.ascontiguousarray(column("rating").cast(pa.float32()).to_numpy(zero_copy_only=False))
            except pa.ArrowException:
                raise DataError(f"{path}: column {wanted['rating']!r} (rating) is not numeric") from None
        item.update(_arrow_days(column("time"), path, wanted["time"], first_row))
        first_row += batch.num_rows
        if market is None:
            item["market"] = _arrow_strings(column("market"), path, wanted["market"])
        batches.append(item)
    return {"market": market, "path": str(path), "kind": "columns", "batches": batches}


def _arrow_strings(arr: Any, path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 data, int32/int64 offsets) of a string column, zero-copy; other types (integer
    ids, dictionary-encoded or view strings) are cast to strings first."""
    import pyarrow as pa

    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        try:
            arr = arr.cast(pa.string())
        except pa.ArrowException:
            raise DataError(f"{path}: column {name!r} of type {arr.type} cannot be read as ids") from None
    _, offsets, data = arr.buffers()
    dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(offsets, dtype=dtype)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    return data, offsets


_UNITS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def _arrow_days(arr: Any, path: Path, name: str, first_row: int) -> dict[str, Any]:
    """A time column as the core takes it: ``day`` (int32 days since 1970-01-01) from
    timestamps, dates and numeric Unix seconds (floor(s / 86400), as for delimited text), or
    ``time_text`` for strings, which the core parses by the delimited files' rules."""
    import pyarrow as pa

    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return {"time_text": _arrow_strings(arr, path, name)}
    if pa.types.is_date32(t):
        days = arr.cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_date64(t):
        days = np.floor_divide(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), 86_400_000)
    elif pa.types.is_timestamp(t):
        days = np.floor_divide(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), _UNITS_PER_DAY[t.unit])
    elif pa.types.is_integer(t):
        days = np.floor_divide(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), 86_400)
    elif pa.types.is_floating(t):
        seconds = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(seconds)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: row {first_row + i + 1}: time {seconds[i]} in column {name!r} is not a number of seconds")
        days = np.floor(seconds / 86_400.0)
    else:
        raise DataError(
            f"{path}: column {name!r} (time) has type {t}: expected timestamps, dates, Unix seconds or YYYY-MM-DD strings"
        )
    if days.size and (days.min() < np.iinfo(np.int32).min or days.max() > np.iinfo(np.int32).max):
        raise DataError(f"{path}: column {name!r} (time) holds times beyond the years the toolkit can count")
    return {"day": np.ascontiguousarray(days, dtype=np.int32)}
