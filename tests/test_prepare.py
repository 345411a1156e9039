"""Building prepared datasets: determinism, the manifest, loading and verification, atomic
writes, filtering options, the split layout, and the real files' known counts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import xmfast.dataset
from conftest import MARKETS_7, write_text
from xmfast import core
from xmfast.dataset import FORMAT, FORMAT_VERSION, PreparedDataset, load_dataset
from xmfast.errors import DataError, DatasetError, XmfastError
from xmfast.prepare import KCore, PrepareConfig, prepare
from xmfast.stats import market_stats

SAMPLE_MARKETS = ["in", "de", "jp", "uk"]  # target first, then the others alphabetically
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def dir_bytes(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def all_rows(d: PreparedDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(market, user, item) of every row of a prepared dataset: training, validation and test."""
    g = d.train_group()
    groups = np.concatenate([g, d.valid.group, d.test.group])
    return d.group_market[groups], d.group_user[groups], np.concatenate([d.train_item, d.valid.item, d.test.item])


def raw_rows(path: Path) -> list[tuple[str, str, float, str]]:
    """A plain-Python reading of a processed file (header, then `user item rating date`)."""
    lines = path.read_text().splitlines()
    assert lines[0].split() == ["userId", "itemId", "rate", "date"]
    return [(u, i, float(r), d) for u, i, r, d in (line.split() for line in lines[1:])]


@pytest.fixture(scope="module")
def sample_forec(sample_dir: Path) -> PreparedDataset:
    return prepare(sample_dir, None, PrepareConfig(target="in", sources="all", protocol="forec", seed=42))


# ---- determinism -----------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["forec", "acmr"])
def test_same_inputs_and_seed_give_byte_identical_directories(sample_dir: Path, tmp_path: Path, protocol: str) -> None:
    config = PrepareConfig(target="in", sources="all", protocol=protocol, seed=7)
    prepare(sample_dir, tmp_path / "a", config)
    prepare(sample_dir, tmp_path / "b", config)
    a, b = dir_bytes(tmp_path / "a"), dir_bytes(tmp_path / "b")
    assert set(a) == set(b)
    assert "manifest.json" in a and "train_item.npy" in a and "users.txt" in a
    for name in a:
        assert a[name] == b[name], name


def test_acmr_seed_changes_the_split(sample_dir: Path) -> None:
    one = prepare(sample_dir, None, PrepareConfig(target="in", sources="all", protocol="acmr", seed=1))
    two = prepare(sample_dir, None, PrepareConfig(target="in", sources="all", protocol="acmr", seed=2))
    # Same groups, but the held-out items are drawn at random per group.
    assert np.array_equal(one.group_user, two.group_user) and np.array_equal(one.valid.group, two.valid.group)
    assert not np.array_equal(one.test.item, two.test.item)
    assert not np.array_equal(one.valid.item, two.valid.item)
    assert np.mean(one.test.item != two.test.item) > 0.5
    assert not np.array_equal(one.valid.candidates, two.valid.candidates)
    # Either way every group keeps all its rows: only which ones are held out changes.
    def rows(d: PreparedDataset) -> list[tuple[int, int, int]]:
        return sorted(zip(*(x.tolist() for x in all_rows(d))))

    assert rows(one) == rows(two) and len(rows(one)) == 23685


def test_forec_seed_changes_only_the_candidates(sample_dir: Path, tmp_path: Path) -> None:
    one = prepare(sample_dir, tmp_path / "one", PrepareConfig(target="in", sources="all", seed=1))
    two = prepare(sample_dir, tmp_path / "two", PrepareConfig(target="in", sources="all", seed=2))
    # The temporal split does not depend on the seed...
    for name in ("train_item", "train_offsets", "train_day", "group_user", "group_market"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    assert np.array_equal(one.test.item, two.test.item) and np.array_equal(one.valid.item, two.valid.item)
    # ...but the stored negatives do (column 0 is the positive in both).
    for a, b in ((one.valid.candidates, two.valid.candidates), (one.test.candidates, two.test.candidates)):
        assert np.array_equal(a[:, 0], b[:, 0])
        assert np.mean(np.any(a[:, 1:] != b[:, 1:], axis=1)) > 0.9
    assert one.fingerprint != two.fingerprint
    assert (tmp_path / "one" / "train_item.npy").read_bytes() == (tmp_path / "two" / "train_item.npy").read_bytes()
    assert (tmp_path / "one" / "test_candidates.npy").read_bytes() != (tmp_path / "two" / "test_candidates.npy").read_bytes()


# ---- the manifest ----------------------------------------------------------------------------

def test_manifest_contents(sample_dir: Path, tmp_path: Path) -> None:
    config = PrepareConfig(target="in", sources="all", protocol="forec", seed=5, eval_negatives=20)
    d = prepare(sample_dir, tmp_path / "ds", config)
    on_disk = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert d.manifest == on_disk
    assert on_disk["format"] == FORMAT == "xmfast-prepared"
    assert on_disk["format_version"] == FORMAT_VERSION == 1
    assert on_disk["xmfast_version"] == core.__version__
    assert on_disk["markets"] == SAMPLE_MARKETS
    # Settings: the configuration, with "all" resolved to the actual sources (a field added
    # later is left out at its default, so datasets made before it keep their fingerprint).
    from xmfast._added import at_added_default

    want = {k: v for k, v in asdict(config).items() if not at_added_default(config, k)}
    assert "candidates" in asdict(config) and "candidates" not in want
    want["sources"] = ["de", "jp", "uk"]
    assert on_disk["settings"] == json.loads(json.dumps(want))
    # Inputs: one entry per file read, with its size, row count and a blake3 digest.
    assert [f["market"] for f in on_disk["inputs"]] == SAMPLE_MARKETS
    for f in on_disk["inputs"]:
        path = sample_dir / f"{f['market']}_5core.txt"
        assert f["file"] == path.name
        assert f["bytes"] == path.stat().st_size
        assert f["rows"] == len(path.read_text().splitlines()) - 1
        assert HEX64.match(f["blake3"])
    assert len({f["blake3"] for f in on_disk["inputs"]}) == 4
    # Counts agree with the arrays.
    c = on_disk["counts"]
    assert c["users"] == d.n_users == len(d.users)
    assert c["items"] == d.n_items == len(d.items)
    assert c["groups"] == d.n_groups
    assert c["evaluated_groups"] == len(d.valid) == len(d.test)
    assert c["train_rows"] == d.train_item.size == int(d.train_offsets[-1])
    assert c["ratings"] == sum(f["rows"] for f in on_disk["inputs"]) == 23685
    assert c["ratings"] == c["train_rows"] + 2 * c["evaluated_groups"] + c["duplicates_dropped"]
    assert c["duplicates_dropped"] == 0
    assert d.valid.candidates.shape == (len(d.valid), 21)
    # Files: every file of the directory but the manifest, with its blake2b digest.
    names = {p.name for p in (tmp_path / "ds").iterdir()} - {"manifest.json"}
    assert set(on_disk["files"]) == names
    for name, info in on_disk["files"].items():
        assert info["blake2b"] == hashlib.blake2b((tmp_path / "ds" / name).read_bytes(), digest_size=32).hexdigest()
        if name.endswith(".npy"):
            arr = np.load(tmp_path / "ds" / name)
            assert info["dtype"] == str(arr.dtype) and info["shape"] == list(arr.shape)
    assert HEX64.match(on_disk["fingerprint"]) and HEX64.match(on_disk["input_fingerprint"])
    assert d.fingerprint == on_disk["fingerprint"]


def test_input_digests_follow_the_file_contents(sample_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    config = PrepareConfig(target="in", sources=["de"])
    before = prepare(data, None, config).manifest
    text = (data / "de_5core.txt").read_text().splitlines()
    text[5] = text[5].replace(text[5].split()[2], "1.0" if text[5].split()[2] != "1.0" else "2.0")
    (data / "de_5core.txt").write_text("\n".join(text) + "\n")
    after = prepare(data, None, config).manifest
    assert before["inputs"][0]["blake3"] == after["inputs"][0]["blake3"]  # in: unchanged
    assert before["inputs"][1]["blake3"] != after["inputs"][1]["blake3"]  # de: one rating changed
    assert before["input_fingerprint"] != after["input_fingerprint"]
    # Settings enter the input fingerprint too.
    assert prepare(data, None, PrepareConfig(target="in", sources=["de"], seed=1)).manifest["input_fingerprint"] != after[
        "input_fingerprint"
    ]


# ---- loading ---------------------------------------------------------------------------------

def test_load_round_trip_equals_in_memory(sample_dir: Path, tmp_path: Path, sample_forec: PreparedDataset) -> None:
    returned = prepare(sample_dir, tmp_path / "ds", PrepareConfig(target="in", sources="all", protocol="forec", seed=42))
    loaded = PreparedDataset.load(tmp_path / "ds", verify=True)
    assert returned.path == loaded.path == tmp_path / "ds"
    assert load_dataset(tmp_path / "ds").fingerprint == loaded.fingerprint
    mem = sample_forec
    assert mem.path is None
    arrays_mem, arrays_disk = mem.arrays(), loaded.arrays()
    assert set(arrays_mem) == set(arrays_disk) and len(arrays_mem) == 18
    for name, a in arrays_mem.items():
        b = arrays_disk[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), name
    assert loaded.users.to_list() == mem.users.to_list() and loaded.items.to_list() == mem.items.to_list()
    assert loaded.users == mem.users
    assert (loaded.markets, loaded.target, loaded.sources, loaded.protocol) == (SAMPLE_MARKETS, "in", ["de", "jp", "uk"], "forec")
    assert (mem.markets, mem.target, mem.sources, mem.protocol) == (loaded.markets, loaded.target, loaded.sources, loaded.protocol)
    stripped = {k: v for k, v in loaded.manifest.items() if k not in ("files", "fingerprint")}
    assert stripped == mem.manifest


def test_verify_detects_a_flipped_byte(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"]))
    PreparedDataset.load(out, verify=True)
    f = out / "train_item.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # inside the array data: the header (and so the shape) stays valid
    f.write_bytes(bytes(data))
    # With the explicit opt-out the corruption goes unnoticed (only shapes are checked)...
    PreparedDataset.load(out, verify="shapes")
    # ...by default every load names the file.
    for verify in (None, True, "full"):
        with pytest.raises(DatasetError, match=r"train_item\.npy: content differs from the digest in manifest\.json"):
            PreparedDataset.load(out, verify=verify)


def test_verify_detects_a_changed_vocabulary(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"]))
    f = out / "items.txt"
    f.write_bytes(f.read_bytes().replace(b"B", b"C", 1))
    with pytest.raises(DatasetError, match=r"items\.txt: content differs from the digest"):
        PreparedDataset.load(out)


def test_missing_or_damaged_files_are_dataset_errors(sample_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        PreparedDataset.load(empty)
    with pytest.raises(DatasetError, match=r"nowhere: no such file or directory$"):  # not "make it again"
        PreparedDataset.load(tmp_path / "nowhere")
    out = tmp_path / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"]))
    (out / "test_day.npy").unlink()
    with pytest.raises(DatasetError, match=r"test_day\.npy: missing"):
        PreparedDataset.load(out)
    (out / "manifest.json").write_text("{ not json")
    with pytest.raises(DatasetError, match="manifest.json: unreadable"):
        PreparedDataset.load(out)
    (out / "manifest.json").write_text(json.dumps({"format": "something-else", "format_version": 1}))
    with pytest.raises(DatasetError, match="not an xmfast prepared dataset"):
        PreparedDataset.load(out)


def test_format_version_mismatch_names_the_version(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"]))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=rf"format version {FORMAT_VERSION + 1}, but this xmfast reads version {FORMAT_VERSION}"):
        PreparedDataset.load(out)


# ---- writing ---------------------------------------------------------------------------------

def test_existing_output_is_refused_without_overwrite(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    config = PrepareConfig(target="in", sources=["de"])
    prepare(sample_dir, out, config)
    before = json.loads((out / "manifest.json").read_text())["fingerprint"]
    with pytest.raises(XmfastError, match="already exists"):
        prepare(sample_dir, out, PrepareConfig(target="in", sources=["jp"]))
    d = prepare(sample_dir, None, config)
    with pytest.raises(XmfastError, match="already exists"):
        d.save(out)
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == before
    # With overwrite a prepared dataset is replaced as a whole.
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["jp"]), overwrite=True)
    assert PreparedDataset.load(out, verify=True).markets == ["in", "jp"]


def test_a_foreign_directory_is_never_replaced(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(XmfastError, match="is not a prepared dataset"):
        prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"]), overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _fail_on_call(n: int, real, exc: BaseException):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    ("where", "call", "exc"),
    [
        ("save_array", 1, OSError(28, "No space left on device")),
        ("save_array", 7, OSError(28, "No space left on device")),
        ("write_json", 1, RuntimeError("manifest write failed")),
        ("save_array", 4, KeyboardInterrupt()),
    ],
    ids=["first-array", "mid-arrays", "manifest", "interrupt"],
)
def test_failed_overwrite_keeps_the_old_dataset(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, call: int, exc: BaseException
) -> None:
    out = tmp_path / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"], seed=1))
    before = dir_bytes(out)
    monkeypatch.setattr(xmfast.dataset, where, _fail_on_call(call, getattr(xmfast.dataset, where), exc))
    with pytest.raises(type(exc)):
        prepare(sample_dir, out, PrepareConfig(target="in", sources=["de", "uk"], seed=2), overwrite=True)
    monkeypatch.undo()
    assert dir_bytes(out) == before
    assert PreparedDataset.load(out, verify=True).markets == ["in", "de"]
    # Nothing else is left beside it (in particular no partial directory a reader could pick up).
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_failed_final_swap_keeps_the_old_dataset(sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The overwrite renames the old directory away, then the new one into place; if the second
    rename fails the old dataset must still be at `out` (atomic_directory promises that an
    exception leaves the target exactly as it was)."""
    out = tmp_path / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"], seed=1))
    before = dir_bytes(out)
    monkeypatch.setattr(os, "replace", _fail_on_call(2, os.replace, OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"], seed=2), overwrite=True)
    monkeypatch.undo()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert out.is_dir(), f"the old dataset is gone from {out}; left: {leftovers}"
    assert dir_bytes(out) == before
    assert leftovers == ["ds"]


def test_successful_overwrite_leaves_nothing_behind(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["de"], seed=1))
    new = prepare(sample_dir, out, PrepareConfig(target="in", sources=["jp"], seed=1), overwrite=True)
    assert new.markets == ["in", "jp"] and PreparedDataset.load(out, verify=True).markets == ["in", "jp"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


# ---- filtering options -----------------------------------------------------------------------

def test_reference_market_restricts_items_to_its_kcore(sample_dir: Path) -> None:
    min_user, min_item = 8, 12
    d = prepare(sample_dir, None, PrepareConfig(
        target="in", sources=["de"], reference_market="uk", reference_kcore=KCore(min_user, min_item),
    ))
    assert d.markets == ["in", "de"]  # the reference market is read but not kept
    assert [f["market"] for f in d.manifest["inputs"]] == ["in", "de"]
    # One-pass k-core of uk in numpy: items with >= min_item ratings, then users with >= min_user.
    uk = raw_rows(sample_dir / "uk_5core.txt")
    u = np.array([r[0] for r in uk])
    i = np.array([r[1] for r in uk])
    items, item_counts = np.unique(i, return_counts=True)
    keep = np.isin(i, items[item_counts >= min_item])
    users, user_counts = np.unique(u[keep], return_counts=True)
    keep &= np.isin(u, users[user_counts >= min_user])
    allowed = set(i[keep].tolist())
    assert 0 < len(allowed) < len(items)
    # Every market keeps exactly its rows whose item is allowed.
    stats = {s.market: s for s in market_stats(d, "in")}
    all_items: set[str] = set()
    for name in ("in", "de"):
        rows = [r for r in raw_rows(sample_dir / f"{name}_5core.txt") if r[1] in allowed]
        assert stats[name].ratings == len(rows), name
        assert stats[name].users == len({r[0] for r in rows}), name
        assert stats[name].items == len({r[1] for r in rows}), name
        all_items |= {r[1] for r in rows}
    assert set(d.items.to_list()) == all_items
    assert set(d.items.to_list()) <= allowed


def test_kcore_that_empties_a_market_names_it(sample_dir: Path) -> None:
    # No item of `in` or `jp` has 80 ratings in its market; uk has some (max 170).
    with pytest.raises(DataError, match=r"^market jp: no ratings left after filtering \(k-core 1/80\)"):
        prepare(sample_dir, None, PrepareConfig(target="uk", sources=["jp"], kcore=KCore(1, 80)))
    with pytest.raises(DataError, match=r"^market in: no ratings left"):
        prepare(sample_dir, None, PrepareConfig(target="in", sources=["uk"], kcore=KCore(1, 60)))
    # A reference market that shares no items empties the target too.
    with pytest.raises(DataError, match=r"market in: no ratings left .*reference uk"):
        prepare(sample_dir, None, PrepareConfig(
            target="in", sources=[], reference_market="uk", reference_kcore=KCore(1, 10_000)
        ))


def test_kcore_thresholds_hold_per_market(sample_dir: Path) -> None:
    d = prepare(sample_dir, None, PrepareConfig(target="in", sources="all", kcore=KCore(6, 4, fixpoint=True), eval_negatives=20))
    m, u, i = all_rows(d)
    for k, name in enumerate(d.markets):
        sel = m == k
        assert sel.any(), name
        assert np.unique(u[sel], return_counts=True)[1].min() >= 6, name
        assert np.unique(i[sel], return_counts=True)[1].min() >= 4, name


def test_dedup_counts(sample_dir: Path) -> None:
    kept = prepare(sample_dir, None, PrepareConfig(target="in", sources="all"))
    dedup = prepare(sample_dir, None, PrepareConfig(target="in", sources="all", dedup=True))
    # Repeated (market, user, item) rows in the sample files, counted in plain Python.
    repeats = 0
    for name in SAMPLE_MARKETS:
        rows = raw_rows(sample_dir / f"{name}_5core.txt")
        repeats += len(rows) - len({(r[0], r[1]) for r in rows})
    assert repeats == 97
    ck, cd = kept.manifest["counts"], dedup.manifest["counts"]
    assert ck["duplicates_dropped"] == 0 and cd["duplicates_dropped"] == repeats
    assert ck["ratings"] == cd["ratings"] == 23685  # counted before the split
    assert cd["train_rows"] == ck["train_rows"] - repeats
    assert cd["ratings"] == cd["train_rows"] + 2 * cd["evaluated_groups"] + cd["duplicates_dropped"]
    # After dedup no group has an item twice, and held-out items are not in the history.
    m, u, i = all_rows(dedup)
    keys = (m.astype(np.int64) << 40) | (u.astype(np.int64) << 20) | i.astype(np.int64)
    assert np.unique(keys).size == keys.size
    m, u, i = all_rows(kept)
    keys = (m.astype(np.int64) << 40) | (u.astype(np.int64) << 20) | i.astype(np.int64)
    assert keys.size - np.unique(keys).size == repeats


def _small_market(tmp_path: Path, per_user: dict[str, int]) -> Path:
    """uk_5core.txt where user `u` has `per_user[u]` ratings on consecutive days, items all distinct
    per user, plus enough catalogue for a few negatives."""
    data = tmp_path / "small"
    data.mkdir()
    lines = ["userId itemId rate date"]
    for u, n in per_user.items():
        for k in range(n):
            lines.append(f"{u} I{u}{k} 4.0 2020-01-{k + 1:02d}")
    write_text(data / "uk_5core.txt", "\n".join(lines) + "\n")
    return data


def test_min_interactions_makes_small_groups_training_only(tmp_path: Path) -> None:
    data = _small_market(tmp_path, {"a": 2, "b": 3, "c": 4, "d": 20})
    d3 = prepare(data, None, PrepareConfig(target="uk", eval_negatives=3))
    evaluated = sorted(d3.users[int(d3.group_user[g])] for g in d3.valid.group)
    assert evaluated == ["b", "c", "d"]
    sizes = {d3.users[int(d3.group_user[g])]: int(d3.train_offsets[g + 1] - d3.train_offsets[g]) for g in range(d3.n_groups)}
    assert sizes == {"a": 2, "b": 1, "c": 2, "d": 18}
    assert d3.manifest["counts"]["evaluated_groups"] == 3 and d3.manifest["counts"]["groups"] == 4
    d4 = prepare(data, None, PrepareConfig(target="uk", eval_negatives=3, min_interactions=4))
    assert sorted(d4.users[int(d4.group_user[g])] for g in d4.valid.group) == ["c", "d"]
    g_b = d4.group_of("uk", "b")
    assert g_b is not None and g_b not in d4.valid.group.tolist()
    assert [d4.items[int(x)] for x in d4.history(g_b)] == ["Ib0", "Ib1", "Ib2"]
    with pytest.raises(XmfastError, match="min_interactions must be at least 3"):
        PrepareConfig(target="uk", min_interactions=2)


def test_ids_survive_the_round_trip_through_disk(tmp_path: Path) -> None:
    """A prepared dataset gives back the same id strings after saving and loading. A stray
    carriage return inside a line separates fields like a space (so "u1\r" is the id "u1"),
    which keeps line breaks out of ids and the one-id-per-line files exact."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [(u, f"I{k}") for u in ("u1", "u1\r", "u2") for k in range(5)] + [("u3", f"J{k}") for k in range(10)]
    write_text(data / "uk_5core.txt", "".join(f"{u} {i} 4.0 2020-01-0{n % 5 + 1}\n" for n, (u, i) in enumerate(rows)))
    mem = prepare(data, None, PrepareConfig(target="uk", eval_negatives=1))
    assert mem.users.to_list() == ["u1", "u2", "u3"]
    assert mem.manifest["counts"]["ratings"] == len(rows)
    saved = prepare(data, tmp_path / "ds", PrepareConfig(target="uk", eval_negatives=1))
    assert len(saved.users) == len(mem.users) == saved.manifest["counts"]["users"]
    assert saved.users.to_list() == mem.users.to_list()
    assert saved.items.to_list() == mem.items.to_list()


# ---- the layout ------------------------------------------------------------------------------

def test_forec_histories_are_oldest_first_and_match_the_file(sample_dir: Path, sample_forec: PreparedDataset) -> None:
    d = sample_forec
    # Days never decrease inside a group, and valid/test come after the history.
    for g in range(d.n_groups):
        lo, hi = int(d.train_offsets[g]), int(d.train_offsets[g + 1])
        assert np.all(np.diff(d.train_day[lo:hi]) >= 0), g
        assert np.array_equal(d.history(g), d.train_item[lo:hi])
    last_train = np.full(d.n_groups, np.iinfo(np.int32).min, dtype=np.int64)
    np.maximum.at(last_train, d.train_group(), d.train_day)
    assert np.all(last_train[d.valid.group] <= d.valid.day)
    assert np.all(d.valid.day <= d.test.day)
    assert np.array_equal(d.valid.group, d.test.group)
    # Against a plain reading of in_5core.txt: a user's rows sorted by (date, line), last two held out.
    by_user: dict[str, list[tuple[str, int, str, float]]] = defaultdict(list)
    for line, (u, i, r, day) in enumerate(raw_rows(sample_dir / "in_5core.txt")):
        by_user[u].append((day, line, i, r))
    assert sum(1 for g in range(d.n_groups) if d.group_market[g] == 0) == len(by_user) == 320
    row_of_group = {int(g): k for k, g in enumerate(d.test.group)}
    for u, rows in by_user.items():
        rows.sort()
        g = d.group_of("in", u)
        assert g is not None and d.users[int(d.group_user[g])] == u
        assert [d.items[int(x)] for x in d.history(g)] == [r[2] for r in rows[:-2]], u
        lo, hi = int(d.train_offsets[g]), int(d.train_offsets[g + 1])
        assert [core.format_date(int(x)) for x in d.train_day[lo:hi]] == [r[0] for r in rows[:-2]]
        assert d.train_rating[lo:hi].tolist() == [r[3] for r in rows[:-2]]
        k = row_of_group[g]
        assert d.items[int(d.valid.item[k])] == rows[-2][2] and d.items[int(d.test.item[k])] == rows[-1][2]
        assert core.format_date(int(d.test.day[k])) == rows[-1][0]
        assert d.test.rating[k] == rows[-1][3]


def test_train_user_and_market_are_consistent(sample_forec: PreparedDataset) -> None:
    d = sample_forec
    g = d.train_group()
    assert g.shape == d.train_item.shape == d.train_user().shape == d.train_market().shape
    assert np.array_equal(np.bincount(g, minlength=d.n_groups), np.diff(d.train_offsets).astype(np.int64))
    assert np.all(np.diff(g.astype(np.int64)) >= 0)
    assert np.array_equal(d.train_user(), d.group_user[g]) and np.array_equal(d.train_market(), d.group_market[g])
    assert d.train_user().dtype == np.uint32 and d.train_market().dtype == np.uint16
    # Per market: training rows + 2 per evaluated group = the file's row count.
    for k, name in enumerate(d.markets):
        n_eval = int(np.sum(d.group_market[d.valid.group] == k))
        assert int(np.sum(d.train_market() == k)) + 2 * n_eval == next(
            f["rows"] for f in d.manifest["inputs"] if f["market"] == name
        )
    # Every (market, user) pair is one group.
    pairs = d.group_market.astype(np.int64) << 32 | d.group_user.astype(np.int64)
    assert np.unique(pairs).size == d.n_groups
    # Catalogues: sorted, and exactly the items of each market's rows.
    m, _, i = all_rows(d)
    for k, name in enumerate(d.markets):
        assert np.array_equal(d.catalog(name), np.unique(i[m == k]))


def test_group_of_maps_back_to_original_ids(sample_dir: Path, sample_forec: PreparedDataset) -> None:
    d = sample_forec
    first_in = raw_rows(sample_dir / "in_5core.txt")[0][0]
    first_de = raw_rows(sample_dir / "de_5core.txt")[0][0]
    g = d.group_of("in", first_in)
    assert g is not None
    assert d.markets[int(d.group_market[g])] == "in" and d.users[int(d.group_user[g])] == first_in
    assert d.group_of("in", "no-such-user") is None
    assert d.group_of("in", first_de) is None  # a de reviewer has no group in `in`
    gd = d.group_of("de", first_de)
    assert gd is not None and gd != g and d.markets[int(d.group_market[gd])] == "de"
    # Every group maps back to a distinct (market, original user id).
    seen = {(d.markets[int(m)], d.users[int(u)]) for m, u in zip(d.group_market, d.group_user)}
    assert len(seen) == d.n_groups
    for market, user in list(seen)[:50]:
        found = d.group_of(market, user)
        assert found is not None and (d.markets[int(d.group_market[found])], d.users[int(d.group_user[found])]) == (market, user)


def test_candidates_follow_the_protocol(sample_forec: PreparedDataset) -> None:
    d = sample_forec
    for held in (d.valid, d.test):
        c = held.candidates
        assert c.dtype == np.uint32 and c.shape == (len(held), 100)
        assert np.array_equal(c[:, 0], held.item)
        assert all(np.unique(row).size == 100 for row in c)
        # forec: negatives come from the group's own market catalogue.
        for k in range(0, len(held), 97):
            market = d.markets[int(d.group_market[held.group[k]])]
            assert np.isin(c[k], d.catalog(market)).all()


# ---- the real files --------------------------------------------------------------------------

def test_real_xmarket_prepared_counts(xmarket_dir: Path) -> None:
    d = prepare(xmarket_dir, None, PrepareConfig(target="uk", sources="all", protocol="forec"))
    assert d.markets == ["uk", "ca", "de", "fr", "in", "jp", "mx"]
    assert sorted(d.markets) == MARKETS_7
    stats = {s.market: s for s in market_stats(d, "uk")}
    assert (stats["uk"].users, stats["uk"].items, stats["uk"].ratings) == (3352, 3251, 31547)
    assert (stats["ca"].users, stats["ca"].items, stats["ca"].ratings) == (4668, 5735, 44779)
    assert (stats["in"].users, stats["in"].items, stats["in"].ratings) == (239, 470, 2015)
    # The same counts directly from the arrays: train rows + valid + test of the market's groups.
    m, u, i = all_rows(d)
    uk = m == d.market_index("uk")
    assert (np.unique(u[uk]).size, np.unique(i[uk]).size, int(uk.sum())) == (3352, 3251, 31547)
    assert len(d.items) == np.unique(i).size == 8304
    assert d.manifest["counts"]["ratings"] == 134845 == m.size
    assert d.manifest["counts"]["groups"] == d.manifest["counts"]["evaluated_groups"] == 14313


# ---- a rating threshold; FOREC's preprocessing of raw files --------------------------------------

SAMPLE_FINGERPRINT = "806783687755c7b07cc0e74a165fbbbc3722a65193ce73fd83d0883e2bf3f409"  # before either existed


def test_settings_at_their_defaults_keep_the_sample_fingerprint(sample_dir: Path) -> None:
    d = prepare(sample_dir, None, PrepareConfig(target="in", sources="all"))
    assert d.fingerprint == SAMPLE_FINGERPRINT
    assert "min_rating" not in d.manifest["settings"] and "restrict_reference" not in d.manifest["settings"]
    # the sample's lowest rating is 1.0: a threshold there keeps every row, but it is a setting
    one = prepare(sample_dir, None, PrepareConfig(target="in", sources="all", min_rating=1.0))
    assert one.manifest["counts"] == d.manifest["counts"] and one.fingerprint != d.fingerprint
    assert one.manifest["settings"]["min_rating"] == 1.0
    assert prepare(sample_dir, None, PrepareConfig(target="in", sources="all", min_rating=1)).fingerprint == one.fingerprint


def test_min_rating_keeps_ratings_at_or_above_it_before_any_filtering(tmp_path: Path) -> None:
    data = tmp_path / "t"
    data.mkdir()
    write_text(data / "uk_5core.txt", "userId itemId rate date\n" + "".join(
        f"{u} {i} {r} 2020-01-0{d}\n" for u, rows in {
            "a": [("i1", 5.0), ("i2", 2.0), ("i3", 4.0), ("i4", 3.5), ("i5", 4.0)],
            "b": [("i1", 1.0), ("i2", 4.5), ("i3", 5.0), ("i4", 4.0), ("i6", 3.0)],
            "c": [("i1", 3.0), ("i2", 3.0), ("i3", 3.0), ("i5", 3.0), ("i6", 3.0)],
        }.items() for d, (i, r) in enumerate(rows, 1)))

    def made(**settings: object) -> PreparedDataset:
        return prepare(data, None, PrepareConfig(target="uk", eval_negatives=1, **settings))  # type: ignore[arg-type]

    def split(d: PreparedDataset) -> dict[str, tuple[list[str], str, str]]:
        """user -> (history, validation item, test item), as original ids"""
        return {d.users[int(d.group_user[g])]: ([d.items[int(x)] for x in d.history(g)], d.items[int(d.valid.item[k])],
                                                d.items[int(d.test.item[k])]) for k, g in enumerate(d.valid.group)}

    four = made(min_rating=4)  # a keeps i1 i3 i5, b keeps i2 i3 i4, c nothing; i6 is gone with c's and b's 3.0
    assert split(four) == {"a": (["i1"], "i3", "i5"), "b": (["i2"], "i3", "i4")}
    assert four.manifest["counts"]["ratings"] == 6 and sorted(four.items.to_list()) == ["i1", "i2", "i3", "i4", "i5"]
    assert split(made(min_rating=3.5)) == {"a": (["i1", "i3"], "i4", "i5"), "b": (["i2"], "i3", "i4")}  # >=, not >
    # before the k-core: of the ratings >= 4 only i3 has two (a's and b's); over every rating,
    # every item has two or more
    assert made(min_rating=4, kcore=KCore(1, 2)).manifest["counts"]["ratings"] == 2
    assert made(kcore=KCore(1, 2)).manifest["counts"]["ratings"] == 15
    with pytest.raises(DataError, match=r"market uk: no ratings left .*ratings >= 6"):
        made(min_rating=6)
    with pytest.raises(XmfastError, match="min_rating=… must be a finite number, got nan"):
        PrepareConfig(target="uk", min_rating=float("nan"))


def _forec_kcore(rows: list[list[str]], user_thr: int, item_thr: int) -> list[list[str]]:
    """FOREC's get_kcore (prepare_data.ipynb) in plain Python: one pass, items, then users."""
    items = defaultdict(int)
    for r in rows:
        items[r[1]] += 1
    rows = [r for r in rows if items[r[1]] >= item_thr]
    users = defaultdict(int)
    for r in rows:
        users[r[0]] += 1
    return [r for r in rows if users[r[0]] >= user_thr]


@pytest.fixture(scope="module")
def raw_and_forec(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Synthetic raw files for us, uk and in (skewed item popularity, some duplicate rows), and
    the {market}_5core.txt files FOREC's notebook makes of them, by the port above."""
    import random

    root = tmp_path_factory.mktemp("forec")
    (root / "raw").mkdir()
    (root / "forec").mkdir()
    rng = random.Random(7)
    raw: dict[str, list[list[str]]] = {}
    for market, users, items, low, high in (("us", 400, 80, 3, 20), ("uk", 150, 100, 3, 16), ("in", 80, 30, 5, 14)):
        weights = [1 / (k + 1) ** 0.8 for k in range(items)]
        rows = []
        for u in range(users):
            for i in rng.choices(range(items), weights, k=rng.randint(low, high)):  # repeats: duplicate rows
                rows.append([f"{market}{u}", f"I{i}", f"{rng.randint(1, 5)}.0",
                             f"2019-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"])
        raw[market] = rows
        write_text(root / "raw" / f"ratings_{market}_Toys_and_Games.txt.gz",
                   "".join(" ".join(r) + "\n" for r in rows), gz=True)
    us10 = {r[1] for r in _forec_kcore(raw["us"], 10, 25)}
    made = {"us": _forec_kcore(raw["us"], 7, 7)}
    for market in ("uk", "in"):
        made[market] = _forec_kcore([r for r in raw[market] if r[1] in us10], 7, 7)
    for market, rows in made.items():
        assert 0 < len(rows) < len(raw[market])
        write_text(root / "forec" / f"{market}_5core.txt", "userId itemId rate date\n" + "".join(" ".join(r) + "\n" for r in rows))
    assert {r[1] for r in made["us"]} - us10  # the us market keeps items outside its 10/25-core
    return root / "raw", root / "forec"


def test_raw_files_get_forecs_preprocessing_and_give_its_5core_files(raw_and_forec: tuple[Path, Path]) -> None:
    from xmfast.prepare import FOREC_RAW, data_defaults, data_settings

    raw, forec = raw_and_forec
    assert data_defaults(raw) == FOREC_RAW and data_defaults(forec) == {}
    from_raw = prepare(raw, None, PrepareConfig(**data_settings(raw, {"target": "in", "sources": "all", "eval_negatives": 5})))
    from_files = prepare(forec, None, PrepareConfig(target="in", sources="all", eval_negatives=5))
    assert from_raw.markets == from_files.markets == ["in", "uk", "us"]
    assert from_raw.users.to_list() == from_files.users.to_list() and from_raw.items.to_list() == from_files.items.to_list()
    for name, array in from_files.arrays().items():
        assert np.array_equal(from_raw.arrays()[name], array), name
    assert from_raw.manifest["counts"] == from_files.manifest["counts"]
    s = from_raw.manifest["settings"]
    assert (s["reference_market"], s["reference_kcore"]["min_user"], s["reference_kcore"]["min_item"], s["restrict_reference"],
            s["kcore"]) == ("us", 10, 25, False, {"min_user": 7, "min_item": 7, "fixpoint": False})
    # restricting the us market too (the setting's default) gives other data
    mine = prepare(raw, None, PrepareConfig(**data_settings(raw, {"target": "in", "sources": "all", "eval_negatives": 5,
                                                                "restrict_reference": True})))
    assert mine.manifest["counts"]["ratings"] < from_raw.manifest["counts"]["ratings"]


def test_raw_defaults_give_way_to_what_is_given(raw_and_forec: tuple[Path, Path], tmp_path: Path) -> None:
    from xmfast.prepare import data_settings

    raw, forec = raw_and_forec
    given = data_settings(raw, {"target": "in", "kcore": {"min_user": 5}, "reference_market": None})
    assert given["kcore"] == KCore(5, 7) and given["reference_market"] is None
    assert data_settings(forec, {"target": "in", "kcore": {"min_item": 3}})["kcore"] == KCore(1, 3)
    assert PrepareConfig(target="in", reference_market="none").reference_market is None  # TOML's spelling
    alone = tmp_path / "no-us"
    alone.mkdir()
    shutil.copy(raw / "ratings_in_Toys_and_Games.txt.gz", alone)
    with pytest.raises(DataError, match=r"no us file; fetch it \(xmfast download --markets us --category Toys_and_Games"):
        data_settings(alone, {"target": "in"})
    assert data_settings(alone, {"target": "in", "reference_market": None})["kcore"] == KCore(7, 7)


def test_cli_prepare_on_raw_files(raw_and_forec: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from xmfast_cli.app import app

    raw, _ = raw_and_forec

    def settings(*options: str) -> dict:
        r = CliRunner().invoke(app, ["prepare", str(raw), "-t", "in", "-s", "uk", "-o", str(tmp_path / "ds"), "--overwrite",
                                     "--eval-negatives", "5", *options])
        assert r.exit_code == 0, r.output
        return json.loads((tmp_path / "ds" / "manifest.json").read_text())["settings"]

    s = settings()
    assert (s["kcore"]["min_user"], s["kcore"]["min_item"], s["reference_market"]) == (7, 7, "us")
    s = settings("--reference", "none", "--min-item", "3", "--min-rating", "2")
    assert (s["kcore"]["min_user"], s["kcore"]["min_item"], s["reference_market"], s["min_rating"]) == (7, 3, None, 2.0)
    assert "restrict_reference" not in settings("--restrict-reference")  # the setting's own default: left out
    r = CliRunner().invoke(app, ["prepare", str(raw), "-t", "in", "-o", str(tmp_path / "bad"), "--min-rating", "nan"])
    assert r.exit_code == 2 and "error: --min-rating must be a finite number, got nan" in r.output, r.output
    assert not (tmp_path / "bad").exists()


def test_experiment_plans_take_the_raw_defaults_too(raw_and_forec: tuple[Path, Path], tmp_path: Path) -> None:
    from xmfast.experiment import plan, read_experiment

    raw, forec = raw_and_forec

    def prepare_settings(data: Path, table: str = "") -> dict:
        f = tmp_path / "e.toml"
        f.write_text(f'data = "{data}"\nout = "{tmp_path / "out"}"\ntargets = ["in"]\nmodels = ["pop"]\n{table}', encoding="utf-8")
        return next(s for s in plan(read_experiment(f)).stages if s.kind == "prepare").settings["prepare"]

    s = prepare_settings(raw)
    assert (s["kcore"]["min_user"], s["kcore"]["min_item"], s["reference_market"], s["restrict_reference"]) == (7, 7, "us", False)
    s = prepare_settings(raw, '[prepare]\nreference_market = "none"\nkcore = {min_user = 5}\nmin_rating = 4\n')
    assert (s["kcore"]["min_user"], s["kcore"]["min_item"], s["reference_market"], s["min_rating"]) == (5, 7, None, 4)
    s = prepare_settings(forec)  # processed files: nothing filtered, and neither new setting in the key
    assert (s["kcore"]["min_user"], s["kcore"]["min_item"], s["reference_market"]) == (1, 1, None)
    assert "restrict_reference" not in s and "min_rating" not in s
