"""Finding XMarket rating files in a data directory.

Two layouts are recognised:

* processed 5-core files, ``{market}_5core.txt`` (as released with FOREC, with a header);
* the official full files, ``ratings_{market}_{category}.txt.gz`` (no header).

Either may be gzip-compressed or not; the parser detects compression from the content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xmfast import core
from xmfast.errors import DataError

XMARKET_MARKETS: tuple[str, ...] = tuple(core.XMARKET_MARKETS)

_PROCESSED = re.compile(r"^(?P<market>[a-z]{2})_5core\.txt(\.gz)?$")
_RAW = re.compile(r"^ratings_(?P<market>[a-z]{2})_(?P<category>[A-Za-z0-9_]+)\.txt(\.gz)?$")


@dataclass(frozen=True)
class MarketFile:
    market: str
    path: Path
    layout: Literal["processed", "raw"]
    category: str | None = None


def check_market_code(code: str) -> str:
    """Returns `code` if it is an XMarket market, else raises a DataError listing the valid ones."""
    if code not in XMARKET_MARKETS:
        raise DataError(
            f"unknown market code {code!r}: XMarket markets are {', '.join(XMARKET_MARKETS)}"
        )
    return code


def discover(data_dir: Path, category: str | None = None) -> dict[str, MarketFile]:
    """Maps each market found in `data_dir` to its rating file.

    Processed files win over raw ones unless `category` is given; with several raw categories
    for one market, `category` must say which.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such data directory")
    processed: dict[str, MarketFile] = {}
    raw: dict[str, list[MarketFile]] = {}
    for path in sorted(data_dir.iterdir()):
        if not path.is_file():
            continue
        if (m := _PROCESSED.match(path.name)) and m["market"] in XMARKET_MARKETS:
            processed[m["market"]] = MarketFile(m["market"], path, "processed")
        elif (m := _RAW.match(path.name)) and m["market"] in XMARKET_MARKETS:
            raw.setdefault(m["market"], []).append(MarketFile(m["market"], path, "raw", m["category"]))
    found: dict[str, MarketFile] = {}
    for market in sorted(set(processed) | set(raw)):
        candidates = raw.get(market, [])
        if category is not None:
            chosen = [f for f in candidates if f.category == category]
            if chosen:
                found[market] = chosen[0]
            continue
        if market in processed:
            found[market] = processed[market]
        elif len({f.category for f in candidates}) == 1:
            found[market] = candidates[0]
        else:
            cats = ", ".join(sorted({str(f.category) for f in candidates}))
            raise DataError(f"{data_dir}: market {market} has files of several categories ({cats}); pass --category")
    if not found:
        what = f"category {category} " if category else ""
        raise DataError(
            f"{data_dir}: no XMarket {what}rating files found "
            "(expected {market}_5core.txt or ratings_{market}_{category}.txt.gz)"
        )
    return found


def resolve_markets(
    available: dict[str, MarketFile], target: str, sources: list[str] | Literal["all"]
) -> list[str]:
    """The markets to load: target first, then sources in the given order (`all`: every other
    market found, alphabetically). Fails clearly when a requested market is unknown or absent."""
    check_market_code(target)
    where = next(iter(available.values())).path.parent
    found = ", ".join(available)
    if target not in available:
        raise DataError(f"{where}: target market {target!r} is absent (markets found: {found})")
    if sources == "all":
        chosen = [m for m in available if m != target]
    else:
        chosen = []
        for s in sources:
            check_market_code(s)
            if s not in available:
                raise DataError(f"{where}: source market {s!r} is absent (markets found: {found})")
            if s != target and s not in chosen:
                chosen.append(s)
    return [target, *chosen]
