"""Issue 18, items 3 and 5 ("no wrong number in silence"): every load of a prepared dataset is
verified against its manifest and names the file that differs; options that cannot apply are
refused; results files are strict JSON; scores compare exactly whatever their dtype; synth,
the rating parser and config files refuse what they would otherwise get silently wrong.

Each test reproduces a case that exited 0 with wrong figures (or a traceback) before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_cli import assert_user_error, invoke
from xmfast import core
from xmfast._io import digest_file, digest_json
from xmfast.dataset import PreparedDataset
from xmfast.errors import DatasetError


@pytest.fixture(scope="module")
def dataset(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "ds"
    result = invoke("prepare", sample_dir, "-t", "in", "-s", "uk", "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "ds"))


def manifest_of(ds: Path) -> dict:
    return json.loads((ds / "manifest.json").read_text())


def write_manifest(ds: Path, manifest: dict) -> None:
    (ds / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def rerecord(ds: Path, *names: str) -> None:
    """Records the current digests, shapes and dtypes of `names` and a matching fingerprint, as a
    careless tool (or a bug) that rewrites a dataset consistently would: only the content
    checks can then tell."""
    m = manifest_of(ds)
    for name in names:
        info = m["files"][name]
        if name.endswith(".npy"):
            a = np.load(ds / name, mmap_mode="r")
            info.update(shape=list(a.shape), dtype=str(a.dtype))
        info.update(blake2b=digest_file(ds / name), blake3=core.file_digest(str(ds / name)))
    plain = {n: {k: v for k, v in i.items() if k != "blake3"} for n, i in m["files"].items()}
    m["fingerprint"] = digest_json({"files": plain, "settings": m["settings"]})
    write_manifest(ds, m)


# ---- every load verifies the dataset --------------------------------------------------------

def test_swapped_valid_and_test_items_are_named(copy: Path) -> None:
    valid, test = copy / "valid_item.npy", copy / "test_item.npy"
    a, b = valid.read_bytes(), test.read_bytes()
    valid.write_bytes(b)
    test.write_bytes(a)
    assert_user_error(invoke("evaluate", copy, "--baseline", "pop"), f"{valid}: content differs from the digest")
    # Re-recorded so the digests agree, the candidate lists still tell.
    rerecord(copy, "valid_item.npy", "test_item.npy")
    assert_user_error(invoke("evaluate", copy, "--baseline", "pop"),
                      f"{valid}: differs from column 0 of valid_candidates.npy")


def test_a_reordered_market_list_is_named(copy: Path) -> None:
    m = manifest_of(copy)
    assert m["markets"] == ["in", "uk"]
    m["markets"] = ["uk", "in"]  # outside the fingerprint: every market would be relabelled
    write_manifest(copy, m)
    assert_user_error(invoke("evaluate", copy, "--baseline", "pop"),
                      f"{copy / 'manifest.json'}: the market list ['uk', 'in'] is not the target then the sources")
    # Reordering the settings too breaks the fingerprint.
    m["settings"]["target"], m["settings"]["sources"] = "uk", ["in"]
    write_manifest(copy, m)
    assert_user_error(invoke("stats", copy), "manifest.json: the file records or settings do not match the fingerprint")


def test_a_truncated_items_list_is_named(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = copy / "items.txt"
    lines = items.read_text().splitlines(keepends=True)
    items.write_text("".join(lines[: len(lines) // 2]))
    error = assert_user_error(invoke("evaluate", copy, "--baseline", "pop"), f"{items}: {len(lines) // 2:,} ids, ")
    assert f"the manifest counts {len(lines)} (truncated or edited)" in error
    # Even under the opt-out (a count: no data read).
    monkeypatch.setenv("XMFAST_VERIFY", "shapes")
    assert_user_error(invoke("stats", copy), f"{items}: {len(lines) // 2:,} ids, ")


@pytest.mark.parametrize(("name", "what"), [("train_item.npy", "item id"), ("test_candidates.npy", "item id"),
                                            ("group_user.npy", "user id"), ("group_market.npy", "market code"),
                                            ("valid_group.npy", "group")])
def test_out_of_range_ids_are_named_not_an_index_error(copy: Path, name: str, what: str) -> None:
    a = np.load(copy / name)
    a.flat[a.size // 2] = np.iinfo(a.dtype).max  # before: an IndexError inside numpy or torch
    np.save(copy / name, a)
    rerecord(copy, name)
    assert_user_error(invoke("evaluate", copy, "--baseline", "pop"), f"{copy / name}: holds {what} {np.iinfo(a.dtype).max}")


def test_offsets_must_be_monotone_and_end_at_the_rows(copy: Path) -> None:
    o = np.load(copy / "train_offsets.npy")
    o[1], o[2] = o[2], o[1]
    np.save(copy / "train_offsets.npy", o)
    rerecord(copy, "train_offsets.npy")
    assert_user_error(invoke("stats", copy), "train_offsets.npy: offsets are not monotone")


def test_a_file_of_another_dtype_or_shape_is_named(copy: Path) -> None:
    a = np.load(copy / "train_day.npy").astype(np.int64)
    np.save(copy / "train_day.npy", a)
    assert_user_error(invoke("stats", copy), "train_day.npy: shape", "differ from the manifest's")
    rerecord(copy, "train_day.npy")
    assert_user_error(invoke("stats", copy), "train_day.npy: dtype int64, but a prepared dataset stores int32 here")
    np.save(copy / "train_day.npy", a[:-1].astype(np.int32))
    rerecord(copy, "train_day.npy")
    assert_user_error(invoke("stats", copy), "train_day.npy: shape", "does not fit the other arrays")


def test_the_opt_out_says_what_it_skips(copy: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    f = copy / "train_rating.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x40
    f.write_bytes(bytes(data))
    assert_user_error(invoke("stats", copy), f"{f}: content differs")
    monkeypatch.setenv("XMFAST_VERIFY", "shapes")
    PreparedDataset.load(copy)
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and note.startswith(f"note: XMFAST_VERIFY=shapes: {copy}: shapes, dtypes and ")
    assert "file digests, id ranges, offsets and candidate columns are not checked" in note
    monkeypatch.setenv("XMFAST_VERIFY", "none")
    assert_user_error(invoke("stats", copy), "XMFAST_VERIFY='none': expected full (the default) or shapes")


def test_manifests_without_blake3_still_load_and_verify(copy: Path) -> None:
    """Datasets written before blake3 was recorded: their blake2b digests are checked, and
    their fingerprint (which never covered blake3) is the one a fresh prepare records."""
    m = manifest_of(copy)
    for info in m["files"].values():
        info.pop("blake3")
    write_manifest(copy, m)
    assert PreparedDataset.load(copy).fingerprint == m["fingerprint"]
    f = copy / "users.txt"
    text = f.read_bytes()
    f.write_bytes(text[:-2] + bytes([text[-2] ^ 1]) + text[-1:])
    with pytest.raises(DatasetError, match=r"users\.txt: content differs from the digest"):
        PreparedDataset.load(copy)


def test_a_fresh_manifest_records_both_digests(dataset: Path) -> None:
    m = manifest_of(dataset)
    for name, info in m["files"].items():
        assert info["blake3"] == core.file_digest(str(dataset / name)) and info["blake2b"] == digest_file(dataset / name)
    plain = {n: {k: v for k, v in i.items() if k != "blake3"} for n, i in m["files"].items()}
    assert m["fingerprint"] == digest_json({"files": plain, "settings": m["settings"]})
