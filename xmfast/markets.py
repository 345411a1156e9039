"""Finding rating files: which file holds which market, and in which format.

A market is any name made of letters, digits, ``_`` and ``-`` (``uk``, ``north``, ``east-1``,
WSDM Cup 2022's ``t1``). Files in a data directory are matched by these rules, in this order:

* ``{market}_5core.txt[.gz]``: XMarket's processed 5-core files (``userId itemId rate date``);
* ``ratings_{market}_{category}.txt[.gz]``: XMarket's official full files (no header; the
  market part holds no ``_``);
* ``{market}.csv[.gz]`` / ``{market}.tsv[.gz]``: delimited text with a header, its columns found
  by name (the usual names, see :class:`xmfast.ratings.Columns`, or a mapping such as
  ``--columns user=reviewerID,...``);
* ``{market}.inter``: a RecBole atomic file (``user_id:token item_id:token rating:float
  timestamp:float``); one whose header has a ``market`` field holds several markets;
* ``{market}.parquet``: a Parquet table with the same columns as the delimited files.

Files can also be listed explicitly (``--file MARKET=PATH``, or ``--file PATH`` for a file
whose market column names each row's market; ``[data.files]`` in an experiment file). A file
of the directory that matches no rule is reported, never skipped in silence; two files for one
market are an error (except XMarket's processed file, which wins over its raw ones, and raw
files of several categories, chosen with ``--category``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from xmfast import core
from xmfast.errors import DataError, XmfastError

if TYPE_CHECKING:
    from xmfast.ratings import FileFormat, Ratings

XMARKET_MARKETS: tuple[str, ...] = tuple(core.XMARKET_MARKETS)

Layout = Literal["processed", "raw", "csv", "tsv", "inter", "parquet"]

# Market names in file names; the rule itself is the Rust core's (`core.check_market_name`),
# which a test checks this pattern against.
_NAME = r"[A-Za-z0-9_-]+"
_MARKET_NAME = re.compile(rf"^{_NAME}$")
# (layout, pattern): the documented discovery rules, in the order they are tried.
_RULES: tuple[tuple[Layout, re.Pattern[str]], ...] = (
    ("processed", re.compile(rf"^(?P<market>{_NAME})_5core\.txt(\.gz)?$")),
    ("raw", re.compile(r"^ratings_(?P<market>[A-Za-z0-9-]+)_(?P<category>[A-Za-z0-9_]+)\.txt(\.gz)?$")),
    ("csv", re.compile(rf"^(?P<market>{_NAME})\.csv(\.gz)?$")),
    ("tsv", re.compile(rf"^(?P<market>{_NAME})\.tsv(\.gz)?$")),
    ("inter", re.compile(rf"^(?P<market>{_NAME})\.inter(\.gz)?$")),
    ("parquet", re.compile(rf"^(?P<market>{_NAME})\.parquet$")),
)
RULES_TEXT = ("{market}_5core.txt, ratings_{market}_{category}.txt.gz, {market}.csv, {market}.tsv, "
              "{market}.inter or {market}.parquet")
# A listed file's format from its name alone (its market comes from the listing).
_BY_SUFFIX: tuple[tuple[Layout, re.Pattern[str]], ...] = (
    ("processed", re.compile(r"\.txt(\.gz)?$")),
    ("csv", re.compile(r"\.csv(\.gz)?$")),
    ("tsv", re.compile(r"\.tsv(\.gz)?$")),
    ("inter", re.compile(r"\.inter(\.gz)?$")),
    ("parquet", re.compile(r"\.parquet$")),
)

# The roles a column mapping names (`--columns user=reviewerID,...`); the header names each
# answers to by default are xmfast.ratings.Columns' (USER_NAMES, ...).
COLUMN_KEYS = ("user", "item", "rating", "time", "market")


@dataclass(frozen=True)
class MarketFile:
    """One rating file: the market it holds (None: its market column says, row by row), where it
    is, its layout, and how it was found (a rule, or listed explicitly)."""

    market: str | None
    path: Path
    layout: Layout
    category: str | None = None
    listed: bool = False


@dataclass(frozen=True)
class Found(Mapping[str, MarketFile]):
    """What a data source holds: each market's file, by market name in alphabetical order (a
    file with a market column appears under every market it holds), and the directory's files
    that match no rule."""

    files: dict[str, MarketFile]
    unmatched: tuple[Path, ...] = ()

    def __getitem__(self, market: str) -> MarketFile:
        return self.files[market]

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def sources(self, markets: Iterable[str]) -> list[MarketFile]:
        """The distinct files holding `markets`, in that order (a file with a market column once)."""
        return list(dict.fromkeys(self.files[m] for m in markets))

    def unmatched_note(self) -> str | None:
        """One line naming the files that were not read, or None."""
        if not self.unmatched:
            return None
        names = ", ".join(p.name for p in self.unmatched[:5]) + (", …" if len(self.unmatched) > 5 else "")
        where = self.unmatched[0].parent
        return (f"{where}: {len(self.unmatched)} file{'s' if len(self.unmatched) != 1 else ''} matching no rule "
                f"{'were' if len(self.unmatched) != 1 else 'was'} not read: {names} (rating files are named "
                f"{RULES_TEXT}; or list one with --file MARKET=PATH)")


@dataclass(frozen=True)
class DataSource:
    """Where a dataset's rating files are: a directory searched by the rules above, files listed
    explicitly, and the column mapping of the delimited and Parquet ones (a parsing detail, not
    part of the data: the same ratings in another layout make the same prepared dataset)."""

    dir: Path | None = None
    files: tuple[tuple[str | None, Path], ...] = ()
    columns: tuple[tuple[str, str], ...] = ()
    # Files of `dir` that are not rating files whatever their names (published candidates read
    # beside them, e.g. WSDM Cup's valid_run.tsv).
    ignore: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.dir is None and not self.files:
            raise XmfastError("no rating files: give a data directory or list files with --file MARKET=PATH")

    @classmethod
    def of(cls, data: DataSource | Path | str) -> DataSource:
        return data if isinstance(data, DataSource) else cls(Path(data))

    def ignoring(self, paths: Iterable[Path]) -> DataSource:
        return replace(self, ignore=self.ignore + tuple(Path(p) for p in paths))

    @property
    def inputs(self) -> list[Path]:
        """Every path read (an output must be none of them, nor inside one)."""
        return ([self.dir] if self.dir is not None else []) + [p for _, p in self.files]

    def __str__(self) -> str:
        return str(self.dir) if self.dir is not None and not self.files else ", ".join(map(str, self.inputs))

    def find(self, category: str | None = None) -> Found:
        """Each market's file (see :func:`discover`)."""
        return discover(self.dir, category, files=self.files, markets_in=self._markets_in, ignore=self.ignore)

    def read(self, found: Found, markets: Iterable[str]) -> Ratings:
        """Parses the files holding `markets` (in that order) into one table with shared
        vocabularies; a file with a market column contributes all its markets."""
        from xmfast.ratings import read_ratings

        return read_ratings([self._source(f) for f in found.sources(markets)])

    def _source(self, f: MarketFile) -> tuple[str, Path] | tuple[str | None, Path, FileFormat]:
        from xmfast.ratings import CSV, PARQUET, TSV, Columns

        if f.layout in ("processed", "raw"):
            return (str(f.market), f.path)
        fmt = {"csv": CSV, "tsv": TSV, "inter": TSV, "parquet": PARQUET}[f.layout]
        if self.columns:
            fmt = replace(fmt, columns=Columns.mapping(**dict(self.columns)))
        return (f.market, f.path, fmt)

    def _markets_in(self, f: MarketFile) -> list[str]:
        """The markets a file with a market column holds, in order of first appearance."""
        from xmfast.ratings import read_ratings

        return list(read_ratings([self._source(f)]).markets)


def check_market_name(name: str, where: str = "market name") -> str:
    """Returns `name` if it is a valid market name (letters, digits, ``_``, ``-``), else raises."""
    if not isinstance(name, str) or not core.check_market_name(name):
        raise DataError(f"{where} {name!r}: a market name is letters, digits, _ and - only (e.g. uk, north, east-1)")
    return name


def check_market_code(code: str) -> str:
    """Returns `code` if it is an XMarket market (what `xmfast download` can fetch), else raises
    a DataError listing the valid ones."""
    if code not in XMARKET_MARKETS:
        raise DataError(
            f"unknown market code {code!r}: XMarket markets are {', '.join(XMARKET_MARKETS)}"
        )
    return code


def parse_columns(text: str | Mapping[str, str]) -> dict[str, str]:
    """A column mapping from ``user=reviewerID,item=asin,...`` (or a table of the same), checked:
    known keys only, each once, non-empty names. Unmapped keys keep their default names
    (:class:`xmfast.ratings.Columns`)."""
    if isinstance(text, Mapping):
        pairs = [(str(k), v) for k, v in text.items()]
    else:
        pairs = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, eq, value = part.partition("=")
            if not eq:
                raise XmfastError(f"column mapping {part!r}: expected KEY=COLUMN, e.g. user=reviewerID "
                                  f"(keys: {', '.join(COLUMN_KEYS)})")
            pairs.append((key.strip(), value.strip()))
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in COLUMN_KEYS:
            raise XmfastError(f"column mapping: unknown key {key!r} (keys: {', '.join(COLUMN_KEYS)})")
        if key in out:
            raise XmfastError(f"column mapping: {key!r} is mapped twice")
        if not isinstance(value, str) or not value or any(c in value for c in "\n\r"):
            raise XmfastError(f"column mapping: {key}={value!r}: expected a column name")
        out[key] = value
    return out


def parse_file_option(text: str) -> tuple[str | None, Path]:
    """``MARKET=PATH`` → (market, path); a bare ``PATH`` → (None, path): a file whose market
    column names each row's market."""
    market, eq, path = text.partition("=")
    if eq and _MARKET_NAME.fullmatch(market) and path:
        return market, Path(path)
    if eq and not path:
        raise XmfastError(f"--file {text!r}: expected MARKET=PATH")
    if eq and "/" not in market and "\\" not in market:
        check_market_name(market, f"--file {text!r}: market")
    return None, Path(text)


def _listed(market: str | None, path: Path) -> MarketFile:
    path = Path(path)
    if market is not None:
        check_market_name(market, f"{path}: market")
    if not path.is_file():
        raise DataError(f"{path}: no such rating file" if not path.exists() else f"{path}: not a file")
    for layout, pattern in _BY_SUFFIX:
        if pattern.search(path.name):
            if layout == "processed" and (m := _RULES[1][1].match(path.name)):
                return MarketFile(market, path, "raw", m["category"], listed=True)
            return MarketFile(market, path, layout, listed=True)
    raise DataError(f"{path}: cannot tell the file's format from its name (expected .txt[.gz] for XMarket's "
                    "layout, .csv, .tsv, .inter or .parquet)")


def discover(
    data_dir: Path | None,
    category: str | None = None,
    *,
    files: Iterable[tuple[str | None, Path]] = (),
    markets_in: Callable[[MarketFile], Iterable[str]] | None = None,
    ignore: Iterable[Path] = (),
) -> Found:
    """Finds each market's rating file in `data_dir` (by the rules above) and in the listed
    `files`. XMarket's processed files win over raw ones unless `category` is given; with
    several raw categories for one market, `category` must say which. `markets_in(file)` lists
    the markets of a file with a market column (it reads the file). Files in `ignore` are
    passed over."""
    by_market: dict[str, list[MarketFile]] = {}
    unmatched: list[Path] = []
    ignored = {Path(p).resolve() for p in ignore}
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(f"{data_dir}: no such data directory")
        for path in sorted(data_dir.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.resolve() in ignored:
                continue
            for layout, pattern in _RULES:
                if m := pattern.match(path.name):
                    f = MarketFile(m["market"], path, layout, m.groupdict().get("category"))
                    by_market.setdefault(m["market"], []).append(f)
                    break
            else:
                if not _is_companion(path):
                    unmatched.append(path)
    multi: list[MarketFile] = []
    for market, path in files:
        f = _listed(market, path)
        if market is None:
            multi.append(f)
        else:
            by_market.setdefault(market, []).append(f)
    for market in list(by_market):  # a directory's .inter file with a market field holds several
        for f in list(by_market[market]):
            if f.layout == "inter" and not f.listed and markets_in is not None and _has_market_field(f.path):
                by_market[market].remove(f)
                multi.append(MarketFile(None, f.path, "inter"))
        if not by_market[market]:
            del by_market[market]
    for f in multi:
        if markets_in is None:
            raise XmfastError(f"{f.path}: a file with a market column needs reading to list its markets")
        for market in markets_in(f):
            by_market.setdefault(market, []).append(f)
    found: dict[str, MarketFile] = {}
    for market in sorted(by_market):
        if (f := _one_file(market, by_market[market], category)) is not None:
            found[market] = f
    if not found:
        what = f"category {category} " if category else ""
        where = data_dir if data_dir is not None else "the listed files"
        raise DataError(f"{where}: no {what}rating files found (expected {RULES_TEXT})")
    return Found(found, tuple(unmatched))


def _one_file(market: str, candidates: list[MarketFile], category: str | None) -> MarketFile | None:
    """The file of `market` among its candidates, None when `category` excludes them all, or an
    error naming two of them."""
    xmarket = [f for f in candidates if f.layout in ("processed", "raw")]
    others = [f for f in candidates if f.layout not in ("processed", "raw")]
    if category is not None:  # a category picks XMarket's raw file of that category
        xmarket = [f for f in xmarket if f.layout == "raw" and f.category == category]
    elif any(f.layout == "processed" for f in xmarket):  # XMarket's processed file wins over raw ones
        xmarket = [f for f in xmarket if f.layout == "processed"]
    raw_categories = {f.category for f in xmarket if f.layout == "raw"}
    if len(raw_categories) > 1 and not others:
        raise DataError(f"{xmarket[0].path.parent}: market {market} has files of several categories "
                        f"({', '.join(sorted(map(str, raw_categories)))}); pass --category")
    pool = others + xmarket
    if len(pool) > 1:
        a, b = pool[0], pool[1]
        raise DataError(f"two files for market {market}: {a.path} and {b.path}; keep one"
                        + ("" if a.listed or b.listed else f" (or list one with --file {market}=PATH)"))
    return pool[0] if pool else None


def _is_companion(path: Path) -> bool:
    """Files a data directory legitimately holds beside rating files (xmfast's own records, a
    partial download being resumed, notes): not rating files, and not worth a warning."""
    return (path.name in ("synth.json", "README", "README.md", "README.txt", "LICENSE", "checksums.txt")
            or path.name.endswith(".part"))


def _has_market_field(path: Path) -> bool:
    """Whether a RecBole atomic file's header has a ``market`` field."""
    import gzip

    with open(path, "rb") as raw:
        head = raw.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        first = f.readline().decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
    return any(field.split(":", 1)[0] == "market" for field in first.split("\t"))


def resolve_markets(
    available: Mapping[str, MarketFile] | Found, target: str, sources: list[str] | Literal["all"]
) -> list[str]:
    """The markets to load: target first, then sources in the given order (`all`: every other
    market found, alphabetically). Fails clearly when a requested market is unknown or absent."""
    check_market_name(target, "target market")
    first = next(iter(available.values())).path
    where = first.parent if not next(iter(available.values())).listed else "the listed files"
    found = ", ".join(available)
    if target not in available:
        raise DataError(f"{where}: target market {target!r} is absent (markets found: {found})")
    if sources == "all":
        chosen = [m for m in available if m != target]
    else:
        chosen = []
        for s in sources:
            check_market_name(s, "source market")
            if s not in available:
                raise DataError(f"{where}: source market {s!r} is absent (markets found: {found})")
            if s != target and s not in chosen:
                chosen.append(s)
    return [target, *chosen]


__all__ = ["COLUMN_KEYS", "Found", "Layout", "MarketFile", "RULES_TEXT", "XMARKET_MARKETS",
           "check_market_code", "check_market_name", "discover", "parse_columns", "parse_file_option",
           "resolve_markets"]
