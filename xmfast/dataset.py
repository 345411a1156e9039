"""The prepared dataset: what `xmfast prepare` writes and every model reads.

On disk it is a directory of ``.npy`` arrays, two id lists and ``manifest.json`` (format
version, settings, input digests, per-array digests, fingerprint). The manifest is written last
inside a temporary directory that is renamed into place, so a directory with a manifest is
always complete.

Layout. Each (market, user) pair is a *group*. Training rows are stored group by group in
sequence order (oldest first), so the same arrays serve pointwise models (rows) and history
models (each group's slice is its history). Validation and test hold one row per evaluated
group with stored candidate lists (column 0 is the positive).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmfast import core
from xmfast._io import atomic_directory, digest_file, digest_json, read_descriptor, save_array, write_json
from xmfast.errors import DatasetError

FORMAT = "xmfast-prepared"
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
        holding no file) outside every input is replaced (see :mod:`xmfast.outputs`)."""
        from xmfast import outputs

        path = Path(path)
        with atomic_directory(path, overwrite=overwrite, kind=outputs.DATASET, inputs=inputs) as tmp:
            digests: dict[str, Any] = {}
            for name, array in self.arrays().items():
                save_array(tmp / f"{name}.npy", array)
                digests[f"{name}.npy"] = {
                    "dtype": str(array.dtype), "shape": list(array.shape),
                    "blake2b": digest_file(tmp / f"{name}.npy"),
                }
            self.users.write(str(tmp / "users.txt"))
            self.items.write(str(tmp / "items.txt"))
            for name in ("users.txt", "items.txt"):
                digests[name] = {"blake2b": digest_file(tmp / name)}
            manifest = dict(self.manifest)
            manifest["files"] = digests
            manifest["fingerprint"] = digest_json({"files": digests, "settings": manifest["settings"]})
            write_json(tmp / "manifest.json", manifest)
        return path

    @classmethod
    def load(cls, path: Path, *, verify: bool = False) -> PreparedDataset:
        """Reads a prepared dataset (arrays memory-mapped). `verify` re-checks every digest."""
        path = Path(path)
        manifest = read_descriptor(
            path, "manifest.json", fmt=FORMAT, version=FORMAT_VERSION, what="prepared dataset",
            remedy="run `xmfast prepare` to make it again", error=DatasetError,
        )
        files = manifest.get("files", {})
        where = path / "manifest.json"
        if not isinstance(files, dict) or not all(isinstance(i, dict) for i in files.values()):
            raise DatasetError(f"{where}: 'files' is not a table of file records (the manifest was edited or "
                               "damaged); run `xmfast prepare` to make it again")
        arrays: dict[str, np.ndarray] = {}
        for name, info in files.items():
            file = path / name
            if not file.is_file():
                raise DatasetError(f"{file}: missing from the prepared dataset; re-run `xmfast prepare`")
            if verify and digest_file(file) != info["blake2b"]:
                raise DatasetError(f"{file}: content does not match the manifest (corrupted); re-run `xmfast prepare`")
            if name.endswith(".npy"):
                try:
                    arrays[name[:-4]] = np.load(file, mmap_mode="r", allow_pickle=False)
                except ValueError as e:
                    raise DatasetError(f"{file}: unreadable array ({e}); re-run `xmfast prepare`") from None
                if list(arrays[name[:-4]].shape) != info.get("shape") or str(arrays[name[:-4]].dtype) != info.get("dtype"):
                    raise DatasetError(f"{file}: shape or dtype differs from the manifest; re-run `xmfast prepare`")
        try:
            held = {
                s: HeldOut(**{f.name: arrays[f"{s}_{f.name}"] for f in fields(HeldOut)}) for s in ("valid", "test")
            }
            return cls(
                markets=list(manifest["markets"]),
                target=manifest["settings"]["target"],
                sources=list(manifest["settings"]["sources"]),
                protocol=manifest["settings"]["protocol"],
                users=core.Vocab.read(str(path / "users.txt")),
                items=core.Vocab.read(str(path / "items.txt")),
                group_market=arrays["group_market"],
                group_user=arrays["group_user"],
                train_offsets=arrays["train_offsets"],
                train_item=arrays["train_item"],
                train_rating=arrays["train_rating"],
                train_day=arrays["train_day"],
                valid=held["valid"],
                test=held["test"],
                market_item_offsets=arrays["market_item_offsets"],
                market_items=arrays["market_items"],
                manifest=manifest,
                path=path,
            )
        except KeyError as e:
            raise DatasetError(f"{path}: incomplete prepared dataset (no {e}); re-run `xmfast prepare`") from None


def load_dataset(path: Path, *, verify: bool = False) -> PreparedDataset:
    """Shorthand for :meth:`PreparedDataset.load`."""
    return PreparedDataset.load(path, verify=verify)
