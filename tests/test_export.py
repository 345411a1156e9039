"""`xmfast export` and `xmfast import`: the round trip gives the same dataset (fingerprint and
every array) in each format; the RecBole files have the header and field types RecBole reads;
the candidate files label the held-out items; a damaged export is one `error:` line naming the
file (and line) with nothing written; an export never clobbers what is not one."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_text
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import assert_user_error, dir_bytes, replace_line
from typer.testing import CliRunner
from xmfast_cli.app import app

from xmfast.dataset import PreparedDataset
from xmfast.export import export_dataset, file_names, import_export
from xmfast.prepare import PrepareConfig, prepare
from xmfast.synth import SynthConfig, synthesize

runner = CliRunner()
FORMATS = ("recbole", "csv", "parquet")
RECBOLE_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float", "market:token"]


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample (target in, source uk) with 9 negatives per held-out item: the files stay small."""
    out = tmp_path_factory.mktemp("small") / "ds"
    prepare(sample_dir, out, PrepareConfig(target="in", sources=["uk"], eval_negatives=9))
    return out


@pytest.fixture(scope="module")
def exported(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`small` exported to RecBole files."""
    out = tmp_path_factory.mktemp("exports") / "xm"
    assert invoke("export", small, "--format", "recbole", "--out", out).exit_code == 0
    return out


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic dataset a tenth of the sample's size, for the tests that import many times."""
    root = tmp_path_factory.mktemp("mini")
    synthesize(root / "data", SynthConfig(markets=["in", "uk"], ratings=1500, items=150, seed=3))
    prepare(root / "data", root / "ds", PrepareConfig(target="in", sources=["uk"], eval_negatives=9))
    return root / "ds"


@pytest.fixture(scope="module")
def mini_exported(mini: Path) -> Path:
    """`mini` exported to RecBole files (read-only: tests that damage it work on a copy)."""
    out = mini.parent / "xm"
    assert invoke("export", mini, "--out", out).exit_code == 0
    return out


def assert_same_dataset(a: Path, b: Path) -> None:
    x, y = PreparedDataset.load(a), PreparedDataset.load(b)
    assert x.fingerprint == y.fingerprint
    assert x.manifest == y.manifest
    for name, array in x.arrays().items():
        other = y.arrays()[name]
        assert array.dtype == other.dtype and np.array_equal(array, other), name
    assert x.users.to_list() == y.users.to_list() and x.items.to_list() == y.items.to_list()


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_the_same_dataset(small: Path, tmp_path: Path, fmt: str) -> None:
    result = invoke("export", small, "-f", fmt, "-o", tmp_path / "exp")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == sorted(
        [*file_names("exp", fmt).values(), "README.md", "xmfast-export.json"])
    result = invoke("import", tmp_path / "exp", "--out", tmp_path / "back")
    assert result.exit_code == 0, result.output
    assert_same_dataset(small, tmp_path / "back")


def _tiny(dir_: Path) -> Path:
    """Two markets where reviewer U1 rates in both (two groups for xmfast), with a same-day tie
    and a repeated item."""
    rows = {"uk": [("U1", "a", 5, "2020-01-01"), ("U1", "b", 4, "2020-01-01"), ("U1", "c", 3, "2020-01-02"),
                   ("U1", "a", 2, "2020-01-03"), ("U2", "b", 1, "2020-01-01"), ("U2", "c", 5, "2020-01-05"),
                   ("U2", "d", 4, "2020-01-06"), ("U3", "a", 3.5, "2019-12-31")],
            "de": [("U1", "d", 5, "2021-03-01"), ("U1", "e", 4, "2021-03-02"), ("U1", "a", 3, "2021-03-03"),
                   ("U4", "e", 2, "2021-03-01"), ("U4", "b", 1, "2021-03-09"), ("U4", "d", 5, "2021-03-10")]}
    dir_.mkdir()
    for market, lines in rows.items():
        text = "userId itemId rate date\n" + "".join(f"{u} {i} {r} {d}\n" for u, i, r, d in lines)
        write_text(dir_ / f"{market}_5core.txt", text)
    return dir_


def test_a_reviewer_in_two_markets_stays_two_users(tmp_path: Path) -> None:
    prepare(_tiny(tmp_path / "data"), tmp_path / "ds", PrepareConfig(target="uk", sources=["de"], eval_negatives=1))
    export_dataset(tmp_path / "ds", tmp_path / "exp")
    users = [r[0] for r in _rows(tmp_path / "exp" / "exp.test.inter")][1:]
    assert sorted(users) == ["de:U1", "de:U4", "uk:U1", "uk:U2"]
    import_export(tmp_path / "exp", tmp_path / "back")
    assert_same_dataset(tmp_path / "ds", tmp_path / "back")


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_inter_files_have_the_fields_recbole_reads(small: Path, exported: Path) -> None:
    """RecBole reads `name:type` headers (token, token_seq, float, float_seq) and tab-separated
    values; each row is the dataset's row, in its order, time in Unix seconds."""
    ds = PreparedDataset.load(small)
    parts = {"train": (ds.train_group(), ds.train_item, ds.train_rating, ds.train_day),
             "valid": (ds.valid.group, ds.valid.item, ds.valid.rating, ds.valid.day),
             "test": (ds.test.group, ds.test.item, ds.test.rating, ds.test.day)}
    for part, (group, item, rating, day) in parts.items():
        head, *rows = _rows(exported / f"xm.{part}.inter")
        assert head == RECBOLE_HEADER
        assert all(h.split(":")[1] in ("token", "token_seq", "float", "float_seq") for h in head)
        assert all(len(r) == 5 and all(r[i] for i in (0, 1, 4)) for r in rows)
        market = [ds.markets[int(m)] for m in ds.group_market[group]]
        assert [r[4] for r in rows] == market
        assert [r[0] for r in rows] == [f"{m}:{ds.users[int(u)]}" for m, u in zip(market, ds.group_user[group])]
        assert [r[1] for r in rows] == [ds.items[int(i)] for i in item]
        assert np.array_equal(np.array([float(r[2]) for r in rows], dtype=np.float32), rating)
        assert np.array_equal(np.array([float(r[3]) for r in rows]), np.asarray(day, dtype=np.float64) * 86400)


def test_candidate_files_label_the_held_out_items(small: Path, exported: Path) -> None:
    ds = PreparedDataset.load(small)
    for part, held in (("valid", ds.valid), ("test", ds.test)):
        head, *rows = _rows(exported / f"xm.{part}.candidates")
        assert head == ["user_id:token", "item_id:token", "label:float", "market:token"]
        width = held.candidates.shape[1]
        assert [r[1] for r in rows] == [ds.items[int(i)] for i in np.asarray(held.candidates).ravel()]
        labels = np.array([float(r[2]) for r in rows]).reshape(-1, width)
        assert np.array_equal(labels[:, 0], np.ones(len(held))) and not labels[:, 1:].any()
        positives = [r[1] for r in rows if r[2] == "1"]
        assert positives == [ds.items[int(i)] for i in held.item]


def test_scores_in_the_readme_format_evaluate(small: Path, exported: Path, tmp_path: Path) -> None:
    """The README's recipe (scores of the candidate rows in file order, reshaped to queries ×
    candidates) reaches `xmfast evaluate --scores`: the label as score ranks every positive
    first, its negation last (10th of 10)."""
    assert "xmfast evaluate" in (exported / "README.md").read_text()
    labels = np.array([float(r[2]) for r in _rows(exported / "xm.test.candidates")[1:]])
    for sign, hr5 in ((1, 1.0), (-1, 0.0)):
        np.save(tmp_path / "scores.npy", (sign * labels).reshape(-1, 10))
        result = invoke("evaluate", small, "--scores", tmp_path / "scores.npy", "--json", tmp_path / "e.json")
        assert result.exit_code == 0, result.output
        overall = json.loads((tmp_path / "e.json").read_text())["overall"]
        assert (overall["hr@5"], overall["hr@10"]) == (hr5, 1.0)


def _damaged(exported: Path, tmp_path: Path, edit) -> tuple[object, Path]:  # noqa: ANN001
    copy = shutil.copytree(exported, tmp_path / "xm")
    edit(copy)
    return invoke("import", copy, "-o", tmp_path / "ds"), tmp_path / "ds"


def _drop_column(path: Path, index: int) -> None:
    rows = _rows(path)
    path.write_text("".join("\t".join(r[:index] + r[index + 1:]) + "\n" for r in rows))


def _set_field(path: Path, line: int, column: int, value: str) -> None:
    """Field `column` (0-based) of line `line` (1-based; the header is line 1) set to `value`."""
    row = _rows(path)[line - 1]
    row[column] = value
    replace_line(path, line, "\t".join(row))


def _edit_sidecar(d: Path, edit) -> None:  # noqa: ANN001
    side = json.loads((d / "xmfast-export.json").read_text())
    edit(side)
    (d / "xmfast-export.json").write_text(json.dumps(side))


@pytest.mark.parametrize("edit, fragments", [
    (lambda d: _set_field(d / "xm.train.inter", 7, 0, "in:X"), ["xm.train.inter:7", "user id 'X'"]),
    (lambda d: _set_field(d / "xm.train.inter", 5, 0, "X"), ["xm.train.inter:5", "user_id 'X'"]),
    (lambda d: _set_field(d / "xm.test.inter", 9, 1, "B1"), ["xm.test.inter:9", "item id 'B1'"]),
    (lambda d: _set_field(d / "xm.valid.inter", 3, 2, "five"), ["xm.valid.inter:3", "rating 'five' is not a number"]),
    (lambda d: _set_field(d / "xm.test.inter", 2, 3, "5"), ["xm.test.inter:2", "timestamp '5'"]),
    (lambda d: replace_line(d / "xm.test.inter", 4, "a\tb"), ["xm.test.inter:4", "2 fields"]),
    (lambda d: _drop_column(d / "xm.valid.inter", 2), ["xm.valid.inter:1", "no column 'rating:float'"]),
    (lambda d: _set_field(d / "xm.test.candidates", 3, 2, "1"), ["xm.test.candidates:3", "label 1 on item"]),
    (lambda d: _set_field(d / "xm.test.candidates", 2, 2, "0.5"), ["xm.test.candidates:2", "label '0.5'"]),
    (lambda d: _set_field(d / "xm.valid.candidates", 2, 2, "0"), ["xm.valid.candidates", "0 labelled 1"]),
    # well-formed, but not the exported rows: the file is named
    (lambda d: _set_field(d / "xm.train.inter", 2, 2, "2.5"), ["xm.train.inter:", "do not give the exported dataset"]),
    (lambda d: (d / "xm.valid.candidates").unlink(), ["xm.valid.candidates", "missing"]),
    (lambda d: (d / "xmfast-export.json").unlink(), ["no xmfast-export.json"]),
    (lambda d: _edit_sidecar(d, lambda s: s["files"].update(train="..")), ["xmfast-export.json", "lacks"]),
    (lambda d: _edit_sidecar(d, lambda s: s["dataset"]["settings"].update(seed=1)), ["xmfast-export.json", "fingerprint"]),
    (lambda d: _edit_sidecar(d, lambda s: s["items"].reverse()), ["xmfast-export.json", "item id list differs"]),
], ids=["unknown-user", "user-without-market", "unknown-item", "rating", "timestamp", "fields", "missing-column",
        "second-positive", "label", "no-positive", "edited-rating", "missing-file", "no-sidecar", "file-outside",
        "sidecar-settings", "sidecar-ids"])
def test_a_damaged_export_is_one_error_and_nothing_written(mini_exported: Path, tmp_path: Path, edit, fragments) -> None:  # noqa: ANN001
    result, out = _damaged(mini_exported, tmp_path, edit)
    assert_user_error(result, *fragments)
    assert not out.exists()


def test_export_refuses_to_clobber(mini: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert_user_error(invoke("export", mini, "-o", foreign), "mine", "not an export directory")
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    assert_user_error(invoke("export", mini, "-o", mini / "exp"), "input")
    export_dataset(mini, tmp_path / "exp")
    before = dir_bytes(tmp_path / "exp")
    assert_user_error(invoke("export", mini, "-f", "csv", "-o", tmp_path / "exp"), "--overwrite")
    assert dir_bytes(tmp_path / "exp") == before
    export_dataset(mini, tmp_path / "exp", "csv", overwrite=True)
    assert (tmp_path / "exp" / "exp.train.csv").is_file() and not (tmp_path / "exp" / "exp.train.inter").exists()
    assert_user_error(invoke("export", mini, "-f", "xml", "-o", tmp_path / "x"), "unknown export format 'xml'")


def test_parquet_without_pyarrow_names_the_extra(mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export_dataset(mini, tmp_path / "pq", "parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    assert_user_error(invoke("export", mini, "-f", "parquet", "-o", tmp_path / "exp"), 'pip install "xmfast[parquet]"')
    assert_user_error(invoke("import", tmp_path / "pq", "-o", tmp_path / "ds"), "pq.train.parquet",
                      'pip install "xmfast[parquet]"')
    assert not (tmp_path / "exp").exists() and not (tmp_path / "ds").exists()


def _with_ids(src: Path, out: Path, users: list[str]) -> Path:
    """`src` saved again with its user ids replaced by `users` (which the rating-file parsers,
    splitting on whitespace, cannot produce)."""
    from dataclasses import replace

    from xmfast import core

    ds = PreparedDataset.load(src)
    manifest = {k: v for k, v in ds.manifest.items() if k not in ("files", "fingerprint")}
    return replace(ds, users=core.Vocab(users), manifest=manifest).save(out)


def test_ids_with_separators_round_trip_in_csv_and_parquet_and_recbole_refuses_tabs(tmp_path: Path) -> None:
    prepare(_tiny(tmp_path / "data"), tmp_path / "ds", PrepareConfig(target="uk", sources=["de"], eval_negatives=1))
    odd = _with_ids(tmp_path / "ds", tmp_path / "odd", ['a,b', 'say "hi"', " lead", "tab\there"])
    for fmt in ("csv", "parquet"):
        export_dataset(odd, tmp_path / fmt, fmt)
        import_export(tmp_path / fmt, tmp_path / f"{fmt}-back")
        assert_same_dataset(odd, tmp_path / f"{fmt}-back")
    assert_user_error(invoke("export", odd, "-o", tmp_path / "rb"), "user id 'tab\\there'", "--format csv")
    assert not (tmp_path / "rb").exists()


def test_a_renamed_export_still_imports(mini: Path, mini_exported: Path, tmp_path: Path) -> None:
    """The sidecar names the files, so the directory's name does not matter."""
    renamed = shutil.copytree(mini_exported, tmp_path / "elsewhere")
    import_export(renamed, tmp_path / "back")
    assert_same_dataset(mini, tmp_path / "back")
    assert_user_error(invoke("import", renamed, "-o", renamed / "ds"), "input")


@st.composite
def ratings_case(draw):  # noqa: ANN001, ANN201
    """A few users and items in two markets (a user may rate in both), dates with ties, repeats."""
    n = draw(st.integers(6, 40))
    rows = {m: [] for m in ("uk", "de")}
    for _ in range(n):
        rows[draw(st.sampled_from(["uk", "de"]))].append(
            (f"U{draw(st.integers(0, 5))}", f"I{draw(st.integers(0, 9))}", draw(st.sampled_from([1, 2.5, 5])),
             f"2020-01-{draw(st.integers(1, 4)):02d}"))
    for m in rows:  # V and W: evaluated users in each market, with items left over as negatives for everyone
        rows[m] += [("V", f"J{j}", 1, f"2020-01-0{j + 1}") for j in range(3)]
        rows[m] += [("W", f"I{j}", 2, "2020-01-05") for j in range(10)]
    return rows, draw(st.sampled_from(["forec", "acmr"])), draw(st.booleans()), draw(st.sampled_from(["recbole", "csv"]))


@settings(max_examples=6, deadline=None)  # each writes three directories: ~0.3 s
@given(case=ratings_case())
def test_any_split_comes_back_with_its_fingerprint(case) -> None:  # noqa: ANN001
    import tempfile

    rows, protocol, dedup, fmt = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        for market, lines in rows.items():
            write_text(root / "data" / f"{market}_5core.txt",
                       "userId itemId rate date\n" + "".join(f"{u} {i} {r} {d}\n" for u, i, r, d in lines))
        config = PrepareConfig(target="uk", sources=["de"], protocol=protocol, dedup=dedup, eval_negatives=1)
        prepare(root / "data", root / "ds", config)
        export_dataset(root / "ds", root / "exp", fmt)
        import_export(root / "exp", root / "back")
        assert_same_dataset(root / "ds", root / "back")
