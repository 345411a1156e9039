"""A prepared dataset's split and stored candidates as files for other toolkits, and back.

:func:`export_dataset` writes the training, validation and test rows and the stored validation
and test candidates in RecBole's atomic-file convention, as CSV or as Parquet, with a README
saying how to load them and how to evaluate on exactly these candidates, and a sidecar
(``xmfast-export.json``) holding what the tables alone lack: the dataset's manifest (settings,
markets, protocol, file records, fingerprint) and the order of its user and item ids.
:func:`import_export` reads such a directory back into the same prepared dataset, byte for byte
(the same fingerprint).

A directory without the sidecar (a split made elsewhere) is refused: the sidecar is what makes
the result the exported dataset, and a split of other ratings belongs in ``xmfast prepare``
(``--candidates`` for published candidates), which records its inputs and settings.

Each (market, user) pair is one group in xmfast, so RecBole's ``user_id`` is ``market:user``
(the TREC query id of :mod:`xmfast._trec_format`): a reviewer in two markets stays two users,
as in xmfast's evaluation, instead of one user with two test items. Times are whole days in
xmfast, written as Unix seconds (day × 86400). Ratings are written as the shortest decimal of
their float64 value, so the float32 read back is the stored one.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from xmfast import core, outputs
from xmfast._io import atomic_directory, check_output, digest_file, digest_json, read_descriptor, write_json
from xmfast._trec_format import query_id
from xmfast.dataset import HeldOut, PreparedDataset, _fingerprinted
from xmfast.ratings import require_pyarrow
from xmfast.errors import DataError, XmfastError

FORMATS: tuple[str, ...] = ("recbole", "csv", "parquet")
SIDECAR = outputs.EXPORT_SIDECAR
SIDECAR_VERSION = 1
DAY_SECONDS = 86400
PARTS: tuple[str, ...] = ("train", "valid", "test")
HELD: tuple[str, ...] = ("valid", "test")

# Logical columns of the two kinds of table, and how each format names them. RecBole's header
# is `name:type`; its column order is the one its documentation uses (user, item, rating, time).
ROWS = ("market", "user", "item", "rating", "timestamp")
CANDIDATES = ("market", "user", "item", "label")
RECBOLE_FIELDS = {"user": "user_id:token", "item": "item_id:token", "rating": "rating:float",
                  "timestamp": "timestamp:float", "label": "label:float", "market": "market:token"}
RECBOLE_ORDER = ("user", "item", "rating", "timestamp", "label", "market")


def file_names(name: str, fmt: str) -> dict[str, str]:
    """The export's table files: ``NAME.train.inter`` … as RecBole's ``benchmark_filename:
    [train, valid, test]`` finds them (RecBole looks for ``{data_path}/NAME/NAME.{part}.inter``)."""
    ext = {"recbole": "inter", "csv": "csv", "parquet": "parquet"}[fmt]
    names = {part: f"{name}.{part}.{ext}" for part in PARTS}
    for part in HELD:
        names[f"{part}_candidates"] = f"{name}.{part}.candidates" + ("" if fmt == "recbole" else f".{ext}")
    return names


def header(fmt: str, columns: Sequence[str]) -> list[str]:
    """A table's header line in format `fmt` (RecBole: `name:type` fields in its usual order)."""
    if fmt != "recbole":
        return list(columns)
    return [RECBOLE_FIELDS[c] for c in RECBOLE_ORDER if c in columns]


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused while millions of row lists are made (none is a cycle):
    it would otherwise rescan them again and again, which made reading an export 3.5 times slower."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---- export --------------------------------------------------------------------------------
def _tables(ds: PreparedDataset, fmt: str) -> dict[str, dict[str, np.ndarray]]:
    """The five tables as logical columns (ids as original strings; RecBole's user is market:user)."""
    gm, gu = np.asarray(ds.group_market), np.asarray(ds.group_user)
    markets = np.array(ds.markets, dtype=object)[gm]  # per group
    users = np.array(ds.users.to_list(), dtype=object)[gu]
    if fmt == "recbole":
        users = np.array([query_id(m, u) for m, u in zip(markets.tolist(), users.tolist())], dtype=object)
    items = np.array(ds.items.to_list(), dtype=object)

    def rows(group: np.ndarray, item: np.ndarray, rating: np.ndarray, day: np.ndarray) -> dict[str, np.ndarray]:
        return {"market": markets[group], "user": users[group], "item": items[np.asarray(item)],
                "rating": np.asarray(rating, dtype=np.float32),
                "timestamp": np.asarray(day).astype(np.int64) * DAY_SECONDS}

    out = {"train": rows(ds.train_group(), ds.train_item, ds.train_rating, ds.train_day)}
    for part, held in (("valid", ds.valid), ("test", ds.test)):
        out[part] = rows(np.asarray(held.group), held.item, held.rating, held.day)
        cand = np.asarray(held.candidates)
        group = np.repeat(np.asarray(held.group), cand.shape[1])
        label = np.zeros(cand.shape, dtype=np.int8)
        label[:, 0] = 1  # column 0 is the held-out item
        out[f"{part}_candidates"] = {"market": markets[group], "user": users[group],
                                     "item": items[cand.ravel()], "label": label.ravel()}
    return out


def _check_tokens(ds: PreparedDataset) -> None:
    """RecBole splits its files on tabs and lines: an id holding either cannot be written."""
    for what, ids in (("market", ds.markets), ("user id", ds.users.to_list()), ("item id", ds.items.to_list())):
        for i in ids:
            if any(c in i for c in "\t\n\r"):
                raise XmfastError(f"{ds.path}: {what} {i!r} holds a tab or line break, which RecBole's atomic files "
                                  "cannot hold; export with --format csv or parquet")


def _write_text(path: Path, fmt: str, table: dict[str, np.ndarray]) -> None:
    cells: dict[str, list[Any]] = {c: v.tolist() for c, v in table.items()}
    if "rating" in cells:  # float64's shortest repr of the float32 value: read back exactly
        cells["rating"] = [repr(x) for x in table["rating"].astype(np.float64).tolist()]
    if fmt == "recbole":
        order = [c for c in RECBOLE_ORDER if c in cells]
        options: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "lineterminator": "\n"}
    else:
        order, options = list(cells), {"lineterminator": "\n"}
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, **options)
        writer.writerow(header(fmt, list(cells)))
        writer.writerows(zip(*(cells[c] for c in order)))


def _write_parquet(path: Path, table: dict[str, np.ndarray]) -> None:
    pa = require_pyarrow("--format parquet")
    types = {"market": pa.string(), "user": pa.string(), "item": pa.string(), "rating": pa.float32(),
             "timestamp": pa.int64(), "label": pa.int8()}
    pa.parquet.write_table(pa.table({c: pa.array(v.tolist() if v.dtype == object else v, type=types[c])
                                     for c, v in table.items()}), path)


def export_dataset(dataset: Path, out: Path, fmt: str = "recbole", *, overwrite: bool = False) -> dict[str, str]:
    """Writes the prepared dataset at `dataset` to the directory `out` in format `fmt` (see the
    module docstring); returns the table files by role. `out` replaces only an earlier export
    (with `overwrite`) or a directory holding no file, and is written whole or not at all."""
    if fmt not in FORMATS:
        raise XmfastError(f"unknown export format {fmt!r} (expected {', '.join(FORMATS)})")
    dataset, out = Path(dataset), Path(out)
    check_output(out, outputs.EXPORT_DIR, inputs=[dataset], overwrite=overwrite)  # before any work
    if fmt == "parquet":
        require_pyarrow("--format parquet")
    ds = PreparedDataset.load(dataset)
    if fmt == "recbole":
        _check_tokens(ds)
    name = out.resolve().name
    names = file_names(name, fmt)
    with atomic_directory(out, overwrite=overwrite, kind=outputs.EXPORT_DIR, inputs=[dataset]) as tmp, \
            _collector_paused():
        for role, table in _tables(ds, fmt).items():
            if fmt == "parquet":
                _write_parquet(tmp / names[role], table)
            else:
                _write_text(tmp / names[role], fmt, table)
        (tmp / "README.md").write_text(_readme(ds, dataset, out, name, fmt, names), encoding="utf-8")
        write_json(tmp / SIDECAR, {
            "format": outputs.EXPORT_FORMAT, "format_version": SIDECAR_VERSION, "export_format": fmt,
            "name": name, "files": names, "dataset": ds.manifest,
            "users": ds.users.to_list(), "items": ds.items.to_list(),
        })
    return names


def _readme(ds: PreparedDataset, dataset: Path, out: Path, name: str, fmt: str, names: dict[str, str]) -> str:
    from xmfast.evaluation import SCORES_FORMATS

    width = int(ds.test.candidates.shape[1])
    rows_header = ", ".join(f"`{h}`" for h in header(fmt, ROWS))
    cand_header = ", ".join(f"`{h}`" for h in header(fmt, CANDIDATES))
    kind = {"recbole": "RecBole atomic files (tab-separated, `name:type` header)",
            "csv": "CSV files (comma-separated, header line)", "parquet": "Parquet files"}[fmt]
    lines = [
        f"# {name}: an xmfast export",
        "",
        f"The split and stored candidates of the prepared dataset `{dataset}` (fingerprint "
        f"`{ds.fingerprint}`; protocol {ds.protocol}, target {ds.target}, sources {', '.join(ds.sources) or 'none'}), "
        f"written by `xmfast export --format {fmt}` as {kind}.",
        "",
        "| file | holds |",
        "|---|---|",
        f"| `{names['train']}` | training rows ({rows_header}), group by group in xmfast's sequence order |",
        f"| `{names['valid']}` | one validation row per evaluated (market, user) |",
        f"| `{names['test']}` | one test row per evaluated (market, user) |",
        f"| `{names['valid_candidates']}` | the stored validation candidates ({cand_header}): {width} rows per query, "
        f"the held-out item first |",
        f"| `{names['test_candidates']}` | the stored test candidates, likewise |",
        f"| `{SIDECAR}` | the dataset's manifest and id order: `xmfast import {out} --out DATASET` makes the same "
        "dataset again (same fingerprint) |",
        "",
        "Times are Unix seconds (xmfast keeps whole days: day × 86400). Each (market, user) pair is one user "
        f"for xmfast; in the candidate files the positive is the row whose `label` is 1 (the first of its "
        f"query's {width}), the negatives have `label` 0.",
    ]
    if fmt == "recbole":
        lines += [
            "",
            "`user_id` is `market:user`: xmfast treats a reviewer in two markets as two users (each with its own "
            "history, validation and test item); RecBole would otherwise merge them into one user with two test "
            "items. `market` is an extra token field.",
            "",
            "## Loading it in RecBole",
            "",
            f"Keep the directory named `{name}` (RecBole finds `{{data_path}}/{name}/{name}.train.inter`) and set:",
            "",
            "```yaml",
            f"data_path: {out.resolve().parent}",
            f"dataset: {name}",
            "benchmark_filename: [train, valid, test]",
            "USER_ID_FIELD: user_id",
            "ITEM_ID_FIELD: item_id",
            "RATING_FIELD: rating",
            "TIME_FIELD: timestamp",
            "load_col:",
            "  inter: [user_id, item_id, rating, timestamp, market]",
            "```",
            "",
            "RecBole's sampled evaluation (`eval_args: {mode: uni99}`) draws its own negatives, so its figures "
            "are not on these candidates. The candidate files are not loaded by RecBole (not `.inter`); "
            "score them with the trained model and hand the scores to xmfast, as below. With RecBole 1.x, for "
            "example (every candidate user and item occurs in the three `.inter` files, so RecBole knows it):",
            "",
            "```python",
            "import csv, numpy as np, torch",
            "from recbole.data.interaction import Interaction",
            f"rows = list(csv.reader(open('{names['test_candidates']}'), delimiter='\\t', quoting=csv.QUOTE_NONE))[1:]",
            "users = dataset.token2id('user_id', [r[0] for r in rows])",
            "items = dataset.token2id('item_id', [r[1] for r in rows])",
            "batch = Interaction({'user_id': torch.as_tensor(users), 'item_id': torch.as_tensor(items)}).to(model.device)",
            "with torch.no_grad():",
            "    scores = model.predict(batch).float().cpu().numpy()",
            f"np.save('scores.npy', scores.reshape({len(ds.test)}, {width}))",
            "```",
        ]
    lines += [
        "",
        "## Evaluating on exactly these candidates",
        "",
        f"Score every row of `{names['test_candidates']}` with your model, in file order, and arrange the scores "
        f"as a float matrix of shape ({len(ds.test)}, {width}) (`scores.reshape({len(ds.test)}, {width})`): row q is "
        "the q-th query of the file, column j its j-th candidate row (column 0 the positive). Save it with "
        "`numpy.save` and give it to xmfast's metric code, with the dataset exported or the one `xmfast import` "
        "makes from this directory:",
        "",
        "```sh",
        f"xmfast evaluate {dataset} --scores scores.npy            # or: --split valid with "
        f"{names['valid_candidates']}",
        "```",
        "",
        f"({SCORES_FORMATS}; a TREC run's query id is `market:user`"
        + (", RecBole's `user_id` here" if fmt == "recbole" else "") + ", its document the item id.) "
        "The figures then come from the same metric code as xmfast's own models'.",
        "",
    ]
    return "\n".join(lines)


# ---- import --------------------------------------------------------------------------------
@dataclass
class _Table:
    """A table read back: logical columns as lists, and where each row came from."""

    file: Path
    columns: dict[str, list[Any]]
    where: Callable[[int], str]  # row index -> "file:line" or "file: row N"

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))


def _read_text(path: Path, fmt: str, columns: Sequence[str]) -> _Table:
    options: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "recbole" else {}
    want = {c: RECBOLE_FIELDS[c] if fmt == "recbole" else c for c in columns}

    def where(i: int) -> str:  # read again to find data row i's line: only on the way to an error
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, **options)
            next(reader)
            for n, row in enumerate(r for r in reader if r):
                if n == i:
                    return f"{path}:{reader.line_num}"
        return str(path)

    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, **options)
            head = next(reader, None)
            rows = [r for r in reader if r]
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the export (its {SIDECAR} lists it); export the dataset again") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}); export the dataset again") from None
    if head is None:
        raise DataError(f"{path}:1: empty file, expected the header {' '.join(want.values())}")
    missing = [h for h in want.values() if h not in head]
    if missing:
        raise DataError(f"{path}:1: no column {missing[0]!r} in the header {head}; the export wrote "
                        f"{list(want.values())} (export the dataset again)")
    if set(map(len, rows)) - {len(head)}:
        short = next(i for i, r in enumerate(rows) if len(r) != len(head))
        raise DataError(f"{where(short)}: {len(rows[short])} fields, but the header has {len(head)}")
    transposed = list(zip(*rows)) if rows else [()] * len(head)
    return _Table(path, {c: list(transposed[head.index(h)]) for c, h in want.items()}, where)


def _read_parquet(path: Path, columns: Sequence[str]) -> _Table:
    pa = require_pyarrow(f"{path}: reading Parquet")
    if not path.is_file():
        raise DataError(f"{path}: missing from the export (its {SIDECAR} lists it); export the dataset again")
    try:
        table = pa.parquet.read_table(path)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (it has {table.column_names}); export the dataset again")
        values = {c: table.column(c).to_pylist() for c in columns}
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:  # damaged pages; strings are checked only here
        raise DataError(f"{path}: unreadable Parquet file ({' '.join(str(e).split())}); export the dataset again") from None
    return _Table(path, values, lambda i: f"{path}: row {i + 1}")


def _first(table: _Table, bad: np.ndarray, what: str, column: str) -> DataError:
    i = int(np.flatnonzero(bad)[0])
    return DataError(f"{table.where(i)}: {what} {table.columns[column][i]!r}")


def _codes(table: _Table, column: str, lookup: dict[str, int], what: str) -> np.ndarray:
    out = np.fromiter(map(lookup.get, table.columns[column], repeat(-1)), dtype=np.int64, count=len(table))
    if np.any(out < 0):
        raise DataError(f"{_first(table, out < 0, what, column)} is not in the exported dataset")
    return out


def _floats(table: _Table, column: str, what: str, must: str) -> np.ndarray:
    """A column as float64 (vectorised); a value that is not a number is an error naming its row."""
    values = table.columns[column]
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        for i, v in enumerate(values):
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(f"{table.where(i)}: {what} {v!r} is not {must}") from None
        raise


def _rating(table: _Table) -> np.ndarray:
    x = _floats(table, "rating", "rating", "a number")
    bad = ~np.isfinite(x) | (np.abs(x) > np.finfo(np.float32).max)
    if bad.any():
        raise DataError(f"{_first(table, bad, 'rating', 'rating')} is not a finite number")
    return x.astype(np.float32)


def _day(table: _Table) -> np.ndarray:
    """Unix seconds (exact in float64 for every int32 day) back to whole days."""
    must = "a whole day in Unix seconds (a multiple of 86400)"
    x = _floats(table, "timestamp", "timestamp", must)
    day = x / DAY_SECONDS
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(day) | (day != np.round(day)) | (day < -(2**31)) | (day >= 2**31)
    if bad.any():
        raise DataError(f"{_first(table, bad, 'timestamp', 'timestamp')} is not {must}")
    return day.astype(np.int32)


def _label(table: _Table) -> np.ndarray:
    x = _floats(table, "label", "label", "0 or 1")
    bad = (x != 0) & (x != 1)
    if bad.any():
        raise DataError(f"{_first(table, bad, 'label', 'label')} is not 0 or 1")
    return x.astype(np.int8)


@dataclass
class _Keyed:
    """A table's rows as (market, user) group keys plus their other columns."""

    table: _Table
    key: np.ndarray  # market * n_users + user
    item: np.ndarray
    extra: dict[str, np.ndarray]


def _keyed(table: _Table, fmt: str, ids: dict[str, dict[str, int]], n_users: int) -> _Keyed:
    market = _codes(table, "market", ids["market"], "market")
    if fmt == "recbole":  # user_id is market:user
        prefix = np.array([m + ":" for m in ids["market"]], dtype=object)[market].tolist()
        users = table.columns["user"]
        ok = np.fromiter(map(str.startswith, users, prefix), dtype=bool, count=len(users))  # text: all str
        if not ok.all():
            raise DataError(f"{_first(table, ~ok, 'user_id', 'user')} does not start with its row's market and a "
                            "colon (user_id is market:user)")
        table.columns["user"] = [u[len(p):] for u, p in zip(users, prefix)]
    user = _codes(table, "user", ids["user"], "user id")
    item = _codes(table, "item", ids["item"], "item id")
    extra = {}
    if "rating" in table.columns:
        extra["rating"], extra["day"] = _rating(table), _day(table)
    else:
        extra["label"] = _label(table)
    return _Keyed(table, market * n_users + user, item, extra)


def _held_out(rows: _Keyed, groups: np.ndarray, cands: _Keyed, width: int) -> HeldOut:
    """One split's held-out rows (ascending group, as prepare stores them) and its candidates:
    per query the row labelled 1 (its held-out item) first, then the others in file order."""
    group = np.searchsorted(groups, rows.key)
    order = np.argsort(group, kind="stable")
    repeated = np.flatnonzero(group[order][1:] == group[order][:-1])
    if repeated.size:
        i = int(order[repeated[0] + 1])
        raise DataError(f"{rows.table.where(i)}: a second row for this (market, user); a split holds one per user")
    query = np.full(len(groups) + 1, -1, dtype=np.int64)
    query[group[order]] = np.arange(len(order))
    found = np.searchsorted(groups, cands.key)
    q = query[np.where(groups[np.minimum(found, len(groups) - 1)] == cands.key, found, len(groups))]
    other = rows.table.file.name
    if np.any(q < 0):
        raise DataError(f"{_first(cands.table, q < 0, 'candidates of user', 'user')} with no row in {other}")
    item_of = rows.item[order]
    label = cands.extra["label"] == 1
    wrong = label & (cands.item != item_of[q])
    if wrong.any():
        raise DataError(f"{_first(cands.table, wrong, 'label 1 on item', 'item')}, which is not the held-out item of "
                        f"its (market, user) in {other}")
    n_pos = np.bincount(q[label], minlength=len(order))
    n_all = np.bincount(q, minlength=len(order))
    off = np.flatnonzero((n_pos != 1) | (n_all != width))
    if off.size:
        i = int(order[off[0]])
        raise DataError(f"{cands.table.file}: the (market, user) of {rows.table.where(i)} has {int(n_all[off[0]])} "
                        f"candidates, {int(n_pos[off[0]])} labelled 1; the export has {width} per query, one positive")
    negatives = np.flatnonzero(~label)
    negatives = negatives[np.argsort(q[negatives], kind="stable")]  # per query, in file order
    matrix = np.empty((len(order), width), dtype=np.uint32)
    matrix[:, 0] = item_of
    matrix[:, 1:] = cands.item[negatives].reshape(len(order), width - 1)
    e = rows.extra
    return HeldOut(group[order].astype(np.uint32), item_of.astype(np.uint32), e["rating"][order], e["day"][order], matrix)


def _array_digest(array: np.ndarray) -> str:
    import hashlib

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return hashlib.blake2b(buf.getvalue(), digest_size=32).hexdigest()


def _read_sidecar(directory: Path) -> dict[str, Any]:
    if directory.is_dir() and not (directory / SIDECAR).is_file():
        raise DataError(f"{directory}: no {SIDECAR}, so it is not an xmfast export; `xmfast import` reads back what "
                        "`xmfast export` wrote (the sidecar holds the settings and id order the tables lack); "
                        "for other data use `xmfast prepare`")
    side = read_descriptor(directory, SIDECAR, fmt=outputs.EXPORT_FORMAT, version=SIDECAR_VERSION,
                           what="export", remedy="export the dataset again", error=DataError)
    where = directory / SIDECAR
    manifest, files = side.get("dataset"), side.get("files")
    fmt = side.get("export_format")
    ok = (fmt in FORMATS and isinstance(manifest, dict) and isinstance(files, dict)
          and set(files) == set(file_names("x", fmt)) and all(isinstance(v, str) and Path(v).name == v not in ("", ".", "..") for v in files.values())
          and isinstance(side.get("users"), list) and isinstance(side.get("items"), list)
          and isinstance(manifest.get("files"), dict) and isinstance(manifest.get("settings"), dict)
          and isinstance(manifest.get("markets"), list))
    if not ok:
        raise DataError(f"{where}: lacks the export's format, files, manifest or id lists (edited or damaged); "
                        "export the dataset again")
    if manifest.get("fingerprint") != digest_json({"files": _fingerprinted(manifest["files"]),
                                                    "settings": manifest["settings"]}):
        raise DataError(f"{where}: the dataset's file records or settings do not match its fingerprint (edited or "
                        "damaged); export the dataset again")
    return side


def _vocab(ids: list[Any], record: dict[str, Any], where: Path, what: str) -> core.Vocab:
    """The id list as the dataset stored it, checked against the manifest's digest of that file."""
    if not all(isinstance(i, str) for i in ids):
        raise DataError(f"{where}: the {what} list holds a non-string (edited or damaged); export the dataset again")
    vocab = core.Vocab(ids)
    with tempfile.TemporaryDirectory() as tmp:
        vocab.write(str(Path(tmp) / "ids.txt"))
        same = digest_file(Path(tmp) / "ids.txt") == record.get("blake2b")
    if not same:
        raise DataError(f"{where}: the {what} list differs from the exported dataset's (edited or damaged); "
                        "export the dataset again")
    return vocab


def read_export(directory: Path) -> PreparedDataset:
    """The dataset an export directory holds (in memory), checked to be the exported one: every
    array's digest equals the one in the sidecar's manifest, so saving it gives the exported
    fingerprint. A malformed row is one DataError naming the file and line; a well-formed edit
    names the file whose content no longer matches."""
    directory = Path(directory)
    side = _read_sidecar(directory)
    fmt, names, manifest = side["export_format"], side["files"], side["dataset"]
    records = manifest["files"]
    users = _vocab(side["users"], records.get("users.txt", {}), directory / SIDECAR, "user id")
    items = _vocab(side["items"], records.get("items.txt", {}), directory / SIDECAR, "item id")
    markets = list(manifest["markets"])
    ids = {"market": {m: i for i, m in enumerate(markets)},
           "user": {u: i for i, u in enumerate(side["users"])}, "item": {u: i for i, u in enumerate(side["items"])}}

    def read(role: str) -> _Keyed:
        path, columns = directory / names[role], CANDIDATES if role.endswith("candidates") else ROWS
        table = _read_parquet(path, columns) if fmt == "parquet" else _read_text(path, fmt, columns)
        return _keyed(table, fmt, ids, len(users))

    with _collector_paused():
        tables = {role: read(role) for role in file_names("", fmt)}  # train first
    train = tables["train"]
    groups = np.unique(np.concatenate([tables[p].key for p in PARTS]))
    if groups.size == 0:
        raise DataError(f"{directory / names['train']}: no rows in the training, validation or test file; "
                        "export the dataset again")
    train_group = np.searchsorted(groups, train.key)
    order = np.argsort(train_group, kind="stable")
    offsets = np.zeros(len(groups) + 1, dtype=np.uint64)
    np.cumsum(np.bincount(train_group, minlength=len(groups)), out=offsets[1:])
    width = int((records.get("test_candidates.npy", {}).get("shape") or [0, 2])[1])
    held = {p: _held_out(tables[p], groups, tables[f"{p}_candidates"], width) for p in HELD}
    all_market = np.concatenate([tables[p].key // len(users) for p in PARTS]).astype(np.uint16)
    all_item = np.concatenate([tables[p].item for p in PARTS]).astype(np.uint32)
    market_item_offsets, market_items = core.market_items(all_market, all_item, len(markets))
    settings = manifest["settings"]
    ds = PreparedDataset(
        markets=markets, target=settings["target"], sources=list(settings["sources"]), protocol=settings["protocol"],
        users=users, items=items,
        group_market=(groups // len(users)).astype(np.uint16), group_user=(groups % len(users)).astype(np.uint32),
        train_offsets=offsets, train_item=train.item[order].astype(np.uint32),
        train_rating=train.extra["rating"][order], train_day=train.extra["day"][order],
        valid=held["valid"], test=held["test"],
        market_item_offsets=market_item_offsets, market_items=market_items,
        manifest={k: v for k, v in manifest.items() if k not in ("files", "fingerprint")},
    )
    for array, value in ds.arrays().items():
        if _array_digest(value) != records.get(f"{array}.npy", {}).get("blake2b"):
            role = next((r for r in (f"{p}_candidates" for p in HELD) if array.startswith(r)), None) \
                or next((p for p in PARTS if array.startswith(p)), "train")
            raise DataError(f"{directory / names[role]}: its rows do not give the exported dataset back ({array} "
                            f"differs; edited since `xmfast export` wrote it?); export the dataset again")
    return ds


def import_export(directory: Path, out: Path, *, overwrite: bool = False) -> PreparedDataset:
    """Reads the export at `directory` (:func:`read_export`) and writes it as a prepared dataset
    to `out`; returns it as loaded from there. Refused before any reading when `out` may not be
    written (see :mod:`xmfast.outputs`); nothing is written when the export is damaged."""
    directory, out = Path(directory), Path(out)
    check_output(out, outputs.DATASET, inputs=[directory], overwrite=overwrite)
    ds = read_export(directory)
    ds.save(out, overwrite=overwrite, inputs=[directory])
    return PreparedDataset.load(out, just_written=True)
