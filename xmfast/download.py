"""Fetching the official XMarket rating files.

Each file is streamed into ``NAME.part`` beside its destination. An interrupted download is
resumed from the part's size with an HTTP ``Range`` request (a server that ignores the range
answers 200, and the file is fetched again from the start). A finished part is checked by
reading it as gzip to the end — a truncated or corrupted archive fails there — and only then
renamed into place, so a rating file that exists is always a complete one.

Not every market has every category: a file the server does not have (HTTP 404) is reported
as missing and the others are still fetched; only when none of the requested files exists is
that an error (more likely a wrong URL or name than a gap in XMarket).
"""

from __future__ import annotations

import difflib
import gzip
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xmfast.errors import DataError, XmfastError, spelled
from xmfast.markets import check_market_code

XMARKET_BASE_URL = "https://ciir.cs.umass.edu/downloads/XMarket/FULL"
# XMarket's 16 categories, as its site lists them for every market (xmrec.github.io/data/<market>:
# "18 local markets on 16 different product categories"); a market may have no ratings in some.
XMARKET_CATEGORIES: tuple[str, ...] = (
    "Arts_Crafts_and_Sewing", "Automotive", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Digital_Music", "Electronics", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific",
    "Kindle_Store", "Movies_and_TV", "Musical_Instruments", "Office_Products", "Sports_and_Outdoors",
    "Toys_and_Games",
)
CHUNK = 1 << 20

# (bytes so far, total bytes or None when the server does not say)
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Downloaded:
    market: str
    path: Path
    bytes: int
    resumed_from: int  # bytes already there from an earlier, interrupted download
    skipped: bool  # the file was already complete
    category: str = "Electronics"
    missing: str | None = None  # the server has no such file (its URL): nothing was written


def check_categories(category: str | Sequence[str]) -> list[str]:
    """The XMarket categories `category` names: one name, several (a sequence or comma-separated)
    or ``all``. An unknown name is refused with the list and the closest name."""
    names = [c.strip() for c in category.split(",")] if isinstance(category, str) else list(category)
    if names == ["all"]:
        return list(XMARKET_CATEGORIES)
    for name in names:
        if name not in XMARKET_CATEGORIES:
            # the same name in other case, else one it begins, else difflib's closest
            close = ([c for c in XMARKET_CATEGORIES if c.lower() == name.lower()]
                     or [c for c in XMARKET_CATEGORIES if name and c.lower().startswith(name.lower())]
                     or difflib.get_close_matches(name, XMARKET_CATEGORIES, n=1, cutoff=0.5))
            hint = f"did you mean {close[0]}? " if close else ""
            raise XmfastError(f"{spelled('category', '--category')} {name!r}: not an XMarket category; {hint}"
                              f"XMarket's categories are {', '.join(XMARKET_CATEGORIES)} (or all)")
    return list(dict.fromkeys(names))


def rating_file_name(market: str, category: str) -> str:
    return f"ratings_{market}_{category}.txt.gz"


def rating_file_url(market: str, category: str, base_url: str = XMARKET_BASE_URL) -> str:
    return f"{base_url.rstrip('/')}/{market}/{category}/{rating_file_name(market, category)}"


def check_base_url(base_url: str) -> None:
    """Raises XmfastError unless `base_url` is an http(s) or ftp URL with a host, or a file: URL (a local
    mirror): anything else would fail inside urllib, after the output directory is made."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(base_url)
        ok = parts.scheme in ("http", "https", "ftp") and bool(parts.hostname) or parts.scheme == "file"
    except ValueError:
        ok = False
    if not ok:
        raise XmfastError(f"{spelled(f'base_url={base_url!r}', f'--base-url {base_url!r}')}: expected an http(s) or ftp URL such as {XMARKET_BASE_URL}, "
                          "or a file: URL of a local mirror")


def check_gzip(path: Path) -> None:
    """Reads `path` as gzip to the end; raises DataError naming the file when it is not a
    complete gzip archive."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a complete gzip file ({e})") from None


def download(
    markets: Sequence[str],
    category: str | Sequence[str],
    out_dir: Path,
    *,
    base_url: str = XMARKET_BASE_URL,
    overwrite: bool = False,
    timeout: float = 60.0,
    progress: Callable[[str], Progress] | None = None,
) -> list[Downloaded]:
    """Downloads ``ratings_{market}_{category}.txt.gz`` for each market and category (see
    :func:`check_categories`) into `out_dir`; a file the server lacks comes back with `missing`
    set. `progress(label)` returns the callback that reports that file's bytes (the label is the
    market, with the category when there are several)."""
    categories = check_categories(category)
    for m in markets:
        check_market_code(m)
    check_base_url(base_url)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise XmfastError(f"{out_dir}: exists and is not a directory; choose a directory for {spelled('out_dir', '--out')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for c in categories:
        for m in dict.fromkeys(markets):
            label = m if len(categories) == 1 else f"{m} {c}"
            results.append(_fetch(rating_file_url(m, c, base_url), out_dir / rating_file_name(m, c), m, c,
                                  overwrite=overwrite, timeout=timeout, progress=progress(label) if progress else None))
    if all(r.missing for r in results):
        first = results[0]
        raise XmfastError(f"{first.missing}: HTTP 404 Not Found, and so {'was every requested file' if len(results) > 1 else 'this one file'} "
                          f"(check {spelled('markets, category and base_url', '--markets, --category and --base-url')})")
    return results


def _fetch(url: str, dest: Path, market: str, category: str, *, overwrite: bool, timeout: float,
           progress: Progress | None) -> Downloaded:
    if dest.exists() and not overwrite:
        check_gzip(dest)  # an existing file must be whole; pass --overwrite to fetch it again
        return Downloaded(market, dest, dest.stat().st_size, 0, skipped=True, category=category)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part already holds the whole file
            response = None
        elif e.code == 404:  # not every market has every category
            return Downloaded(market, dest, 0, 0, skipped=False, category=category, missing=url)
        else:
            raise XmfastError(f"{url}: HTTP {e.code} {e.reason} (check {spelled('markets, category and base_url', '--markets, --category and --base-url')})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise XmfastError(f"{url}: cannot connect ({reason}); the partial file is kept and resumed next time") from None
    resumed_from = 0
    if response is not None:
        with response:
            if response.status == 206 and have:
                resumed_from = have
                mode = "ab"
            else:  # 200: the server sends the whole file
                have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            done = have
            try:
                with open(part, mode) as f:
                    while block := response.read(CHUNK):
                        f.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
                    f.flush()
                    os.fsync(f.fileno())
            except (OSError, urllib.error.URLError) as e:
                raise XmfastError(f"{url}: download interrupted after {done:,} bytes ({e}); run the same command "
                                  "again to resume") from None
            if total is not None and done < total:
                raise XmfastError(f"{url}: the server sent {done:,} of {total:,} bytes; run the same command again "
                                  "to resume")
    try:
        check_gzip(part)
    except DataError:
        part.unlink()  # a complete transfer that is not a gzip archive: start afresh next time
        raise DataError(f"{url}: the downloaded file is not a complete gzip archive (removed; try again, or check "
                        "the URL)") from None
    os.replace(part, dest)
    return Downloaded(market, dest, dest.stat().st_size, resumed_from, skipped=False, category=category)


__all__ = ["XMARKET_BASE_URL", "XMARKET_CATEGORIES", "Downloaded", "check_base_url", "check_categories", "check_gzip",
           "download", "rating_file_name", "rating_file_url"]
