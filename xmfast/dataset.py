"""The prepared dataset: what `xmfast prepare` writes and every model reads.

On disk it is a directory of ``.npy`` arrays, two id lists and ``manifest.json`` (format
version, settings, input digests, per-file shapes, dtypes and digests, fingerprint). The manifest
is written last inside a temporary directory that is renamed into place, so a directory with a
manifest is always complete; every load verifies the files against it (see
:meth:`PreparedDataset.load`), since a file changed afterwards would otherwise give wrong figures.

Layout. Each (market, user) pair is a *group*. Training rows are stored group by group in
sequence order (oldest first), so the same arrays serve pointwise models (rows) and history
models (each group's slice is its history). Validation and test hold one row per evaluated
group with stored candidate lists (column 0 is the positive).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmfast import core, outputs
from xmfast._io import atomic_directory, digest_file, digest_json, read_descriptor, save_array, write_json
from xmfast.errors import DatasetError, XmfastError

FORMAT = outputs.DATASET_FORMAT
FORMAT_VERSION = 1
Protocol = Literal["forec", "acmr"]


@dataclass(frozen=True)
class HeldOut:
    """The validation or test interactions: one per evaluated group."""

    group: np.ndarray  # uint32, index into the group arrays
    item: np.ndarray  # uint32, the held-out (positive) item
    rating: np.ndarray  # float32
    day: np.ndarray  # int32
    candidates: np.ndarray  # uint32, (n, 1 + negatives); column 0 is `item`

    def __len__(self) -> int:
        return int(self.group.shape[0])


@dataclass(frozen=True)
class PreparedDataset:
    markets: list[str]
    target: str
    sources: list[str]
    protocol: Protocol
    users: core.Vocab
    items: core.Vocab
    group_market: np.ndarray  # uint16
    group_user: np.ndarray  # uint32
    train_offsets: np.ndarray  # uint64, groups + 1
    train_item: np.ndarray  # uint32
    train_rating: np.ndarray  # float32
    train_day: np.ndarray  # int32
    valid: HeldOut
    test: HeldOut
    market_item_offsets: np.ndarray  # uint64, markets + 1
    market_items: np.ndarray  # uint32: each market's catalog, sorted
    manifest: dict[str, Any]
    path: Path | None = None

    # ---- sizes and derived views -------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_groups(self) -> int:
        return int(self.group_user.shape[0])

    @property
    def fingerprint(self) -> str:
        """Identifies the dataset's content: the digest of its saved files and settings, or, for a
        dataset not saved yet, of its inputs and settings (which determine the content)."""
        return str(self.manifest.get("fingerprint") or self.manifest["input_fingerprint"])

    def market_index(self, name: str) -> int:
        return self.markets.index(name)

    def require_evaluated_users(self) -> None:
        """Refuses a target market without validation and test users (none kept the three
        interactions a split needs): training on it could only report undefined figures."""
        held = np.asarray(self.group_market)[np.asarray(self.test.group)]
        if not np.any(held == self.market_index(self.target)):
            where = f"{self.path}: " if self.path else ""
            raise XmfastError(
                f"{where}market {self.target} has no validation or test users (no user there kept the "
                "3 ratings a leave-one-out split needs), so there is nothing to evaluate; choose another "
                "target, or prepare with lower --min-user/--min-item thresholds"
            )

    def train_group(self) -> np.ndarray:
        """Group of every training row."""
        sizes = np.diff(self.train_offsets).astype(np.int64)
        return np.repeat(np.arange(self.n_groups, dtype=np.uint32), sizes)

    def with_heldout_as_training(self, markets: list[str] | tuple[str, ...]) -> PreparedDataset:
        """The same dataset with the validation and test items of `markets` appended to their
        groups' training rows: the split took them from the end of each group's sequence, so
        putting them back after the training rows, validation then test, restores it.
        For pre-training on source markets in full; the held-out sets stay as they are, so only
        the other markets can still be evaluated fairly."""
        from dataclasses import replace

        codes = [self.market_index(m) for m in markets]
        group_market = np.asarray(self.group_market)
        parts = [(self.train_group().astype(np.int64), np.asarray(self.train_item), np.asarray(self.train_rating),
                  np.asarray(self.train_day))]
        for held in (self.valid, self.test):
            keep = np.isin(group_market[np.asarray(held.group)], codes)
            parts.append((np.asarray(held.group)[keep].astype(np.int64), np.asarray(held.item)[keep],
                          np.asarray(held.rating)[keep], np.asarray(held.day)[keep]))
        group, item, rating, day = (np.concatenate(col) for col in zip(*parts))
        order = np.argsort(group, kind="stable")  # within a group: training rows, validation, test
        offsets = np.zeros(self.n_groups + 1, dtype=np.uint64)
        np.cumsum(np.bincount(group, minlength=self.n_groups), out=offsets[1:])
        return replace(self, train_offsets=offsets, train_item=item[order].astype(np.uint32),
                       train_rating=rating[order].astype(np.float32), train_day=day[order].astype(np.int32))

    def train_user(self) -> np.ndarray:
        return self.group_user[self.train_group()]

    def train_market(self) -> np.ndarray:
        return self.group_market[self.train_group()]

    def history(self, group: int) -> np.ndarray:
        """Training items of one group, oldest first."""
        return self.train_item[int(self.train_offsets[group]) : int(self.train_offsets[group + 1])]

    def catalog(self, market: str) -> np.ndarray:
        m = self.market_index(market)
        return self.market_items[int(self.market_item_offsets[m]) : int(self.market_item_offsets[m + 1])]

    def group_of(self, market: str, user_id: str) -> int | None:
        """The group of an original user id in a market, or None."""
        u = self.users.get(user_id)
        if u is None:
            return None
        hits = np.flatnonzero((self.group_user == u) & (self.group_market == self.market_index(market)))
        return int(hits[0]) if hits.size else None

    def group_keys(self) -> np.ndarray:
        """A stable 64-bit key per group (from the market code and the original user id), so
        seeded per-group choices do not depend on how groups are numbered."""
        market_hash = np.array([core.stable_hash(m) for m in self.markets], dtype=np.uint64)
        user_hash = self.users.stable_hashes()
        with np.errstate(over="ignore"):
            return user_hash[np.asarray(self.group_user)] ^ (
                market_hash[np.asarray(self.group_market)] * np.uint64(0x9E37_79B9_7F4A_7C15)
            )

    def padded_histories(
        self, groups: np.ndarray, width: int = 50, rule: str = "recent", seed: int = 0,
        cooc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training histories of `groups` as a (len(groups), width) matrix, left-aligned in time
        order and padded with ``n_items`` (one past the last item), plus the kept lengths.
        Longer histories are cut by `rule`: ``recent``, ``random`` (seeded per group) or
        ``cooc`` (the items co-occurring most with the rest; give `cooc` = (indptr, indices,
        counts) from :func:`core.cooccurrence`)."""
        return self._padded(np.ascontiguousarray(groups, dtype=np.uint32), None, width, rule, seed, cooc)

    def training_row_histories(
        self, rows: np.ndarray, width: int = 50, rule: str = "recent", seed: int = 0,
        cooc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`padded_histories`, one row per training row (indices into `train_item`):
        its group's training history *without the row's own item*, so a model trained on (history,
        positive) pairs cannot learn to find the candidate in the history. The random rule draws
        per row."""
        rows = np.asarray(rows, dtype=np.int64)
        offsets = np.asarray(self.train_offsets).astype(np.int64)
        groups = np.searchsorted(offsets, rows, side="right") - 1
        position = (rows - offsets[groups]).astype(np.uint32)
        return self._padded(groups.astype(np.uint32), position, width, rule, seed, cooc)

    def _padded(self, groups: np.ndarray, leave_out: np.ndarray | None, width: int, rule: str, seed: int,
                cooc: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        extra = {}
        if cooc is not None:
            extra = {"cooc_indptr": cooc[0], "cooc_indices": cooc[1], "cooc_counts": cooc[2]}
        return core.padded_histories(
            np.asarray(self.train_offsets), np.asarray(self.train_item), groups, width, self.n_items,
            rule=rule, seed=seed, keys=self.group_keys()[groups], leave_out=leave_out, **extra,
        )

    # ---- training negatives ------------------------------------------------------------
    def train_negative_sampler(self, k: int = 4, seed: int = 0) -> core.TrainNegativeSampler:
        """A per-epoch sampler of `k` negatives per training row, following the protocol:

        * ``forec``: from the row's market catalog, never any item the user has in that market
          (as FOREC's code did);
        * ``acmr``: from all items, never one of the user's training items (as ACMR's code did).
        """
        if self.protocol == "forec":
            pool_offsets, pool_items = self.market_item_offsets, self.market_items
            group_pool = self.group_market.astype(np.uint32)
            excl_offsets, excl_items = self._all_positives()
        else:
            all_items = np.unique(self.market_items).astype(np.uint32)
            pool_offsets = np.array([0, all_items.size], dtype=np.uint64)
            pool_items = all_items
            group_pool = np.zeros(self.n_groups, dtype=np.uint32)
            excl_offsets, excl_items = self.train_offsets, self.train_item
        return core.TrainNegativeSampler(
            self.train_offsets, group_pool, pool_offsets, pool_items, excl_offsets, excl_items, k, seed
        )

    def _all_positives(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR of every group's items: training rows plus its validation and test items."""
        extra = np.zeros(self.n_groups, dtype=np.uint64)
        extra[self.valid.group] += 1
        extra[self.test.group] += 1
        sizes = np.diff(self.train_offsets) + extra
        offsets = np.zeros(self.n_groups + 1, dtype=np.uint64)
        np.cumsum(sizes, out=offsets[1:])
        items = np.empty(int(offsets[-1]), dtype=np.uint32)
        train_group = self.train_group()
        position = offsets[:-1][train_group] + (
            np.arange(self.train_item.size, dtype=np.uint64) - self.train_offsets[:-1][train_group]
        )
        items[position.astype(np.int64)] = self.train_item
        tail = offsets[1:]
        items[(tail[self.valid.group] - 2).astype(np.int64)] = self.valid.item
        items[(tail[self.test.group] - 1).astype(np.int64)] = self.test.item
        return offsets, items

    # ---- storage -----------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            name: getattr(self, name)
            for name in (
                "group_market", "group_user", "train_offsets", "train_item", "train_rating",
                "train_day", "market_item_offsets", "market_items",
            )
        }
        for split_name, held in (("valid", self.valid), ("test", self.test)):
            for f in fields(HeldOut):
                out[f"{split_name}_{f.name}"] = getattr(held, f.name)
        return out

    def save(self, path: Path, *, overwrite: bool = False, inputs: tuple[Path, ...] | list[Path] = ()) -> Path:
        """Writes the dataset atomically; returns the path. Only a prepared dataset (or a path
        holding no file) outside every input is replaced (see :mod:`xmfast.outputs`). Each file is
        recorded with its blake3 digest (what every load verifies, fast: multi-threaded in the Rust
        core) and its blake2b digest (which the fingerprint has always been made of, so
        re-preparing the same data gives the same fingerprint as before and existing runs still
        match)."""
        path = Path(path)
        with atomic_directory(path, overwrite=overwrite, kind=outputs.DATASET, inputs=inputs) as tmp:
            digests: dict[str, Any] = {}
            for name, array in self.arrays().items():
                save_array(tmp / f"{name}.npy", array)
                digests[f"{name}.npy"] = {"dtype": str(array.dtype), "shape": list(array.shape)}
            self.users.write(str(tmp / "users.txt"))
            self.items.write(str(tmp / "items.txt"))
            for name in ("users.txt", "items.txt"):
                digests[name] = {}
            for name, info in digests.items():
                info["blake2b"] = digest_file(tmp / name)
            manifest = dict(self.manifest)
            manifest["files"] = digests
            manifest["fingerprint"] = digest_json({"files": digests, "settings": manifest["settings"]})
            for name, info in digests.items():  # outside the fingerprint: it identifies content, as before
                info["blake3"] = core.file_digest(str(tmp / name))
            write_json(tmp / "manifest.json", manifest)
        return path

    @classmethod
    def load(cls, path: Path, *, verify: bool | str | None = None, just_written: bool = False) -> PreparedDataset:
        """Reads a prepared dataset (arrays memory-mapped) after verifying it against its manifest
        (see :func:`verify_level` for what `verify` selects and :func:`_verified_arrays` for
        what is checked), so a changed, swapped or damaged file is one error naming it instead
        of wrong figures or an IndexError deep inside a model. `just_written`: the caller wrote
        and digested these files a moment ago (``prepare``), so only shapes are checked, silently."""
        path = Path(path)
        level = "written" if just_written else verify_level(verify)
        manifest = read_descriptor(
            path, "manifest.json", fmt=FORMAT, version=FORMAT_VERSION, what="prepared dataset",
            remedy="run `xmfast prepare` to make it again", error=DatasetError,
        )
        settings = _check_manifest(path, manifest)
        arrays, users, items = _verified_arrays(path, manifest, level)
        held = {s: HeldOut(**{f.name: arrays[f"{s}_{f.name}"] for f in fields(HeldOut)}) for s in ("valid", "test")}
        return cls(
            markets=list(manifest["markets"]), target=settings["target"], sources=list(settings["sources"]),
            protocol=settings["protocol"], users=users, items=items,
            group_market=arrays["group_market"], group_user=arrays["group_user"],
            train_offsets=arrays["train_offsets"], train_item=arrays["train_item"],
            train_rating=arrays["train_rating"], train_day=arrays["train_day"],
            valid=held["valid"], test=held["test"],
            market_item_offsets=arrays["market_item_offsets"], market_items=arrays["market_items"],
            manifest=manifest, path=path,
        )


# ---- verification on load ------------------------------------------------------------------

VERIFY_ENV = "XMFAST_VERIFY"
VERIFY_LEVELS: tuple[str, ...] = ("full", "shapes")
SHAPES_SKIPS = "file digests, id ranges, offsets and candidate columns are not checked"

# Every array a prepared dataset holds, with its dtype (the manifest must agree).
ARRAY_DTYPES: dict[str, str] = {
    "group_market": "uint16", "group_user": "uint32", "train_offsets": "uint64", "train_item": "uint32",
    "train_rating": "float32", "train_day": "int32", "market_item_offsets": "uint64", "market_items": "uint32",
    **{f"{s}_{k}": t for s in ("valid", "test") for k, t in
       (("group", "uint32"), ("item", "uint32"), ("rating", "float32"), ("day", "int32"), ("candidates", "uint32"))},
}
TEXT_FILES: tuple[str, ...] = ("users.txt", "items.txt")

_REMEDY = "re-run `xmfast prepare` to make it again"
_noticed: set[str] = set()


def verify_level(verify: bool | str | None) -> str:
    """``full`` (the default: shapes and dtypes, every file's digest, every id range) or
    ``shapes`` (shapes, dtypes and manifest consistency only, for data too large to read on
    every load). None reads the ``XMFAST_VERIFY`` environment variable; True and False are
    ``full`` and ``shapes``."""
    if verify is None:
        verify = os.environ.get(VERIFY_ENV, "").strip().lower() or "full"
    elif isinstance(verify, bool):
        verify = "full" if verify else "shapes"
    if verify not in VERIFY_LEVELS:
        raise XmfastError(f"{VERIFY_ENV}={verify!r}: expected full (the default) or shapes")
    return str(verify)


def _fail(file: Path, what: str) -> DatasetError:
    return DatasetError(f"{file}: {what}; {_REMEDY}")


def _check_manifest(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's own consistency: types of the fields used later, the fingerprint over the
    file records and settings (an edit to either shows), and the market list against the
    settings (it is outside the fingerprint: a reordered list would relabel every market)."""
    where = path / "manifest.json"
    files, settings, markets = manifest.get("files"), manifest.get("settings"), manifest.get("markets")
    if not isinstance(files, dict) or not all(isinstance(i, dict) for i in files.values()):
        raise DatasetError(f"{where}: 'files' is not a table of file records (the manifest was edited or "
                           f"damaged); {_REMEDY}")
    if not isinstance(settings, dict) or not isinstance(settings.get("target"), str) \
            or not isinstance(settings.get("sources"), list) or settings.get("protocol") not in ("forec", "acmr"):
        raise _fail(where, "'settings' lacks a target, sources or a known protocol (edited or damaged)")
    if not isinstance(markets, list) or not all(isinstance(m, str) for m in markets):
        raise _fail(where, "'markets' is not a list of market codes (edited or damaged)")
    if markets != [settings["target"], *settings["sources"]]:
        raise _fail(where, f"the market list {markets} is not the target then the sources of its settings "
                           f"{[settings['target'], *settings['sources']]} (reordered or edited)")
    if manifest.get("fingerprint") != digest_json({"files": _fingerprinted(files), "settings": settings}):
        raise _fail(where, "the file records or settings do not match the fingerprint (edited or damaged)")
    return settings


def _fingerprinted(files: dict[str, Any]) -> dict[str, Any]:
    """The file records as the fingerprint covers them (the blake3 digests came later)."""
    return {name: {k: v for k, v in info.items() if k != "blake3"} for name, info in files.items()}


def _verified_arrays(
    path: Path, manifest: dict[str, Any], level: str
) -> tuple[dict[str, np.ndarray], core.Vocab, core.Vocab]:
    """Reads the arrays and id lists, checking, in this order and naming the first file that
    differs: every expected file is recorded and present (and no other), shapes and dtypes equal
    the manifest's and the format's, the id lists have the manifest's counts, and the shapes
    fit together; then, unless `level` is ``shapes``, every file's digest (blake3, or blake2b
    in manifests written before blake3 was recorded), every id's range, the offsets and the
    candidates' first column."""
    files: dict[str, dict[str, Any]] = manifest["files"]
    expected = [f"{n}.npy" for n in ARRAY_DTYPES] + list(TEXT_FILES)
    for name in expected:
        if name not in files:
            raise _fail(path / "manifest.json", f"no record of {name} (incomplete or edited)")
        if not (path / name).is_file():
            raise DatasetError(f"{path / name}: missing from the prepared dataset; {_REMEDY}")
    extra = sorted(set(files) - set(expected))
    if extra:
        raise _fail(path / "manifest.json", f"records a file {extra[0]!r} that a prepared dataset does not have (edited)")
    arrays: dict[str, np.ndarray] = {}
    for name, dtype in ARRAY_DTYPES.items():
        file, info = path / f"{name}.npy", files[f"{name}.npy"]
        try:
            a = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise _fail(file, f"unreadable array ({' '.join(str(e).split())})") from None
        if list(a.shape) != info.get("shape") or str(a.dtype) != info.get("dtype"):
            raise _fail(file, f"shape {list(a.shape)} and dtype {a.dtype} differ from the manifest's "
                              f"{info.get('shape')} and {info.get('dtype')}")
        if str(a.dtype) != dtype:
            raise _fail(file, f"dtype {a.dtype}, but a prepared dataset stores {dtype} here")
        arrays[name] = a
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    vocabs = []
    for name, count in (("users.txt", counts.get("users")), ("items.txt", counts.get("items"))):
        try:
            vocab = core.Vocab.read(str(path / name))
        except (ValueError, OSError) as e:
            raise _fail(path / name, f"unreadable id list ({' '.join(str(e).split())})") from None
        if len(vocab) != count:
            raise _fail(path / name, f"{len(vocab):,} ids, but the manifest counts {count!r} (truncated or edited)")
        vocabs.append(vocab)
    _check_shapes(path, arrays, len(manifest["markets"]))
    if level != "full":
        if level == "shapes" and str(path) not in _noticed:
            _noticed.add(str(path))
            print(f"note: {VERIFY_ENV}=shapes: {path}: shapes, dtypes and manifest checked; {SHAPES_SKIPS}",
                  file=sys.stderr)
        return arrays, vocabs[0], vocabs[1]
    signature = _signature(path, expected)
    if _verified.get(str(path.resolve())) != signature:
        _check_digests(path, files, expected)
        _check_ranges(path, arrays, len(manifest["markets"]), len(vocabs[0]), len(vocabs[1]))
        _verified[str(path.resolve())] = signature
    return arrays, vocabs[0], vocabs[1]


_verified: dict[str, tuple] = {}
"""Datasets this process verified in full, with their files' signatures: `xmfast run` loads the
same dataset for every stage, and a file rewritten since changes its signature."""


def _signature(path: Path, names: list[str]) -> tuple:
    """Identity, size and modification time of every file (and of the manifest)."""
    out = []
    for name in [*names, "manifest.json"]:
        st = (path / name).stat()
        out.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _check_shapes(path: Path, a: dict[str, np.ndarray], n_markets: int) -> None:
    """How the arrays' lengths fit together (O(1): no data read)."""
    groups, rows = a["group_user"].shape[0], a["train_item"].shape[0]
    want = {"group_market": (groups,), "train_offsets": (groups + 1,), "train_rating": (rows,), "train_day": (rows,),
            "market_item_offsets": (n_markets + 1,), "train_item": (rows,), "group_user": (groups,)}
    for s in ("valid", "test"):
        n = a[f"{s}_group"].shape[0]
        want.update({f"{s}_{k}": (n,) for k in ("group", "item", "rating", "day")})
        want[f"{s}_candidates"] = (n, a[f"{s}_candidates"].shape[1] if a[f"{s}_candidates"].ndim == 2 else -1)
    want["test_group"] = a["valid_group"].shape
    for name, shape in want.items():
        if a[name].shape != shape:
            raise _fail(path / f"{name}.npy", f"shape {list(a[name].shape)} does not fit the other arrays "
                                              f"(expected {list(shape)})")
    if a["valid_candidates"].shape[1] < 2 or a["valid_candidates"].shape != a["test_candidates"].shape:
        raise _fail(path / "test_candidates.npy", "the candidate lists do not match the validation ones in width")


def _check_digests(path: Path, files: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Every file's digest, hashed in parallel (blake3 and blake2b both release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def digest(name: str) -> tuple[str, str, str]:
        info = files[name]
        if "blake3" in info:
            return name, str(info["blake3"]), core.file_digest(str(path / name))
        return name, str(info.get("blake2b")), digest_file(path / name)

    order = sorted(names, key=lambda n: -(path / n).stat().st_size)  # largest first: the pool ends together
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for name, want, got in pool.map(digest, order):
            if got != want:
                raise _fail(path / name, "content differs from the digest in manifest.json (changed, swapped "
                                         "or damaged since `xmfast prepare` wrote it)")


def _check_ranges(path: Path, a: dict[str, np.ndarray], n_markets: int, n_users: int, n_items: int) -> None:
    """Every id within its table, offsets monotone and ending at their array's length, and each
    candidate list's column 0 the held-out item: what indexing relies on."""
    def below(name: str, limit: int, what: str) -> None:
        x = a[name]
        if x.size and int(x.max()) >= limit:
            raise _fail(path / f"{name}.npy", f"holds {what} {int(x.max())}, but there are only {limit:,}")

    below("group_market", n_markets, "market code")
    below("group_user", n_users, "user id")
    for name in ("train_item", "market_items", "valid_item", "test_item", "valid_candidates", "test_candidates"):
        below(name, n_items, "item id")
    for s in ("valid", "test"):
        below(f"{s}_group", a["group_user"].shape[0], "group")
    for offsets, data in (("train_offsets", "train_item"), ("market_item_offsets", "market_items")):
        o = np.asarray(a[offsets])
        if o[0] != 0 or o[-1] != a[data].shape[0] or np.any(o[1:] < o[:-1]):
            raise _fail(path / f"{offsets}.npy", f"offsets are not monotone from 0 to the length of {data}.npy")
    for s in ("valid", "test"):
        if not np.array_equal(a[f"{s}_candidates"][:, 0], a[f"{s}_item"]):
            raise _fail(path / f"{s}_item.npy", f"differs from column 0 of {s}_candidates.npy (the held-out item)")


def load_dataset(path: Path, *, verify: bool | str | None = None) -> PreparedDataset:
    """Shorthand for :meth:`PreparedDataset.load`."""
    return PreparedDataset.load(path, verify=verify)
