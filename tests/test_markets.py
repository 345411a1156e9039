"""Markets are names: discovery rules, explicitly listed files, the `[data]` table, and a whole
pipeline (prepare, train, run, report, recommend) on markets that are not XMarket's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xmfast.errors import DataError, XmfastError
from xmfast.markets import DataSource, discover, parse_columns, parse_file_option
from xmfast_cli.app import app

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def one_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def touch(path: Path, text: str = "userId itemId rate date\nu1 i1 5 2020-01-01\n") -> Path:
    path.write_text(text)
    return path


def test_discovery_rules_name_each_market_and_report_the_rest(tmp_path: Path) -> None:
    for name in ("north_5core.txt", "east-1_5core.txt.gz", "ratings_mx_Books.txt.gz", "south.csv", "t1.tsv",
                 "s2.inter", "west.parquet", "notes.json", "north.txt", "synth.json", "uk_5core.txt.part"):
        touch(tmp_path / name)
    (tmp_path / ".hidden").write_text("x")
    found = discover(tmp_path)
    assert {m: (f.path.name, f.layout) for m, f in found.items()} == {
        "east-1": ("east-1_5core.txt.gz", "processed"), "mx": ("ratings_mx_Books.txt.gz", "raw"),
        "north": ("north_5core.txt", "processed"), "s2": ("s2.inter", "inter"), "south": ("south.csv", "csv"),
        "t1": ("t1.tsv", "tsv"), "west": ("west.parquet", "parquet"),
    }
    assert found["mx"].category == "Books"
    # matching no rule: reported (xmfast's own synth.json, a download's .part and dot-files are not)
    assert [p.name for p in found.unmatched] == ["north.txt", "notes.json"]
    # published candidates read beside the rating files are not markets (WSDM Cup's valid_run.tsv)
    assert "t1" not in discover(tmp_path, ignore=[tmp_path / "t1.tsv"])
    note = found.unmatched_note()
    assert note is not None and note.startswith(f"{tmp_path}: 2 files matching no rule were not read: north.txt, notes.json")


def test_two_files_for_one_market_is_an_error_naming_both(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "north_5core.txt"), touch(tmp_path / "north.csv")
    with pytest.raises(DataError, match=f"two files for market north: {b} and {a}; keep one"):
        discover(tmp_path)
    b.unlink()
    other = touch(tmp_path.parent / f"{tmp_path.name}-north.txt")
    with pytest.raises(DataError, match="two files for market north"):
        discover(tmp_path, files=[("north", other)])
    # XMarket's processed file still wins over its raw file (as always), and --category picks raw
    raw = touch(tmp_path / "ratings_north_Books.txt.gz")
    assert discover(tmp_path)["north"].path == a
    assert discover(tmp_path, "Books")["north"].path == raw


def test_listed_files_and_their_errors(tmp_path: Path) -> None:
    f = touch(tmp_path / "anything.txt")
    found = discover(None, files=[("east-1", f)])
    assert found["east-1"].path == f and found["east-1"].listed and found["east-1"].layout == "processed"
    assert parse_file_option("east-1=a/b.csv") == ("east-1", Path("a/b.csv"))
    assert parse_file_option("data/all.inter") == (None, Path("data/all.inter"))
    with pytest.raises(DataError, match="market 'a b': a market name is letters, digits, _ and - only"):
        parse_file_option("a b=x.csv")
    with pytest.raises(DataError, match="no such rating file"):
        discover(None, files=[("x", tmp_path / "missing.csv")])
    with pytest.raises(DataError, match="cannot tell the file's format from its name"):
        discover(None, files=[("x", touch(tmp_path / "x.json"))])
    with pytest.raises(XmfastError, match="no rating files: give a data directory"):
        DataSource()


def test_column_mappings_are_checked() -> None:
    assert parse_columns("user=reviewerID, item=asin,time=unixReviewTime") == {
        "user": "reviewerID", "item": "asin", "time": "unixReviewTime"}
    for text, message in (("user", "expected KEY=COLUMN"), ("colour=x", "unknown key 'colour'"),
                          ("user=a,user=b", "'user' is mapped twice"), ("user=", "expected a column name")):
        with pytest.raises(XmfastError, match=message):
            parse_columns(text)


def test_prepare_warns_about_unmatched_files_and_still_prepares(sample_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("in_5core.txt", "uk_5core.txt"):
        (data / name).write_bytes((sample_dir / name).read_bytes())
    (data / "in_5core.txt.bak").write_text("old")
    result = invoke("prepare", data, "-t", "in", "-s", "all", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: {data}: 1 file matching no rule was not read: in_5core.txt.bak (rating files are "
                       "named {market}_5core.txt, ratings_{market}_{category}.txt.gz, {market}.csv, {market}.tsv, "
                       "{market}.inter or {market}.parquet; or list one with --file MARKET=PATH)"]


def test_listed_files_prepare_the_same_dataset_as_their_directory(sample_dir: Path, tmp_path: Path) -> None:
    """`--file MARKET=PATH` reads the same bytes as discovery: the same fingerprint."""
    assert invoke("prepare", sample_dir, "-t", "in", "-s", "uk", "-o", tmp_path / "a").exit_code == 0
    result = invoke("prepare", "-t", "in", "-s", "uk", "-o", tmp_path / "b",
                    "--file", f"in={sample_dir / 'in_5core.txt'}", "--file", f"uk={sample_dir / 'uk_5core.txt'}")
    assert result.exit_code == 0, result.output
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab"]
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"]
    one_error(invoke("prepare", sample_dir, "-t", "in", "-o", tmp_path / "c", "--file", f"in={sample_dir / 'in_5core.txt'}"),
              "two files for market in")
    assert not (tmp_path / "c").exists()


def test_named_markets_go_through_the_whole_pipeline(tmp_path: Path) -> None:
    """Acceptance: markets named north, south and east-1 through synth, prepare, train, run,
    report and recommend."""
    data = tmp_path / "data"
    assert invoke("synth", data, "--markets", "north,south,east-1", "--ratings", "3000", "--items", "300").exit_code == 0
    assert sorted(p.name for p in data.glob("*_5core.txt")) == ["east-1_5core.txt", "north_5core.txt", "south_5core.txt"]
    result = invoke("prepare", data, "-t", "east-1", "-s", "all", "-o", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["markets"] == ["east-1", "north", "south"]
    result = invoke("train", tmp_path / "ds", "-m", "gmf", "-o", tmp_path / "gmf", "--epochs", "1")
    assert result.exit_code == 0, result.output
    result = invoke("recommend", tmp_path / "gmf", "--all-users", "-k", "3", "-o", tmp_path / "recs.csv")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "recs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["market"] for r in rows} == {"east-1"}
    exp = tmp_path / "e.toml"
    exp.write_text(f'name = "named"\nout = "runs"\ntargets = ["east-1"]\nsources = ["north"]\nmodels = ["pop", "gmf"]\n'
                   f'seeds = [1]\n[data]\nfiles = {{east-1 = "{data / "east-1_5core.txt"}", north = "{data / "north_5core.txt"}"}}\n'
                   '[train]\nepochs = 1\n')
    result = invoke("run", exp)
    assert result.exit_code == 0, result.output
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "## east-1" in report and "gmf" in report
    assert invoke("report", tmp_path / "runs", "--out", tmp_path / "r.md").exit_code == 0


def _sample_rows(sample_dir: Path, market: str) -> list[list[str]]:
    lines = (sample_dir / f"{market}_5core.txt").read_text().splitlines()[1:]
    return [line.split() for line in lines]


def _unix(date: str) -> int:
    import datetime as dt

    return int((dt.datetime.fromisoformat(date) - dt.datetime(1970, 1, 1)).total_seconds()) + 3600 * 13


def _write_formats(sample_dir: Path, root: Path) -> dict[str, list[str]]:
    """The sample's in and uk ratings in every format; returns each variant's extra CLI args."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {m: _sample_rows(sample_dir, m) for m in ("in", "uk")}
    variants: dict[str, list[str]] = {}
    d = root / "xmarket"
    d.mkdir(parents=True)
    for m in rows:
        (d / f"{m}_5core.txt").write_bytes((sample_dir / f"{m}_5core.txt").read_bytes())
    variants["xmarket"] = [str(d)]
    d = root / "csv"  # Amazon-review column names, unix seconds, a quoted extra column
    d.mkdir()
    for m, rs in rows.items():
        with open(d / f"{m}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["reviewerID", "summary", "asin", "overall", "unixReviewTime"])
            w.writerows([u, 'great, "really"', i, r, _unix(t)] for u, i, r, t in rs)
    variants["csv"] = [str(d), "--columns", "user=reviewerID,item=asin,rating=overall,time=unixReviewTime"]
    d = root / "tsv"
    d.mkdir()
    for m, rs in rows.items():
        (d / f"{m}.tsv").write_text("user\titem\trating\tdate\n" + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rs))
    variants["tsv"] = [str(d)]
    d = root / "inter"  # one RecBole atomic file holding both markets
    d.mkdir()
    (d / "xm.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\tmarket:token\n" + "".join(
        f"{u}\t{i}\t{r}\t{_unix(t)}.0\t{m}\n" for m, rs in rows.items() for u, i, r, t in rs))
    variants["inter"] = [str(d)]
    d = root / "parquet"
    d.mkdir()
    for m, rs in rows.items():
        pq.write_table(pa.table({"user": [r[0] for r in rs], "item": [r[1] for r in rs],
                                 "rating": [float(r[2]) for r in rs], "time": [r[3] for r in rs]}), d / f"{m}.parquet")
    variants["parquet"] = [str(d)]
    return variants


def test_every_format_prepares_the_same_dataset(sample_dir: Path, tmp_path: Path) -> None:
    """Acceptance: the same ratings as XMarket files, CSV with odd column names, TSV, one .inter
    file with a market field, and Parquet give the same prepared dataset (same fingerprint)."""
    variants = _write_formats(sample_dir, tmp_path / "data")
    prints = {}
    for name, args in variants.items():
        result = invoke("prepare", *args, "-t", "in", "-s", "uk", "-o", tmp_path / name)
        assert result.exit_code == 0, (name, result.output)
        prints[name] = json.loads((tmp_path / name / "manifest.json").read_text())["fingerprint"]
    assert set(prints.values()) == {prints["xmarket"]}, prints
    inputs = json.loads((tmp_path / "inter" / "manifest.json").read_text())["inputs"]
    assert [f["file"] for f in inputs] == ["xm.inter"]


@pytest.mark.parametrize("case", ["mapping", "missing", "time", "space", "two"])
def test_bad_files_are_one_error_line_naming_the_file(sample_dir: Path, tmp_path: Path, case: str) -> None:
    """Acceptance: a wrong column mapping, a missing column, a non-numeric time, a market name
    with a space, two files for one market: one error line naming the file, exit 2, nothing written."""
    data = tmp_path / "d"
    data.mkdir()
    good = "user,item,rating,time\nu1,i1,5,2020-01-02\nu2,i1,4,2020-01-03\n"
    (data / "uk.csv").write_text(good)
    args: list[str] = []
    bad = data / "in.csv"
    if case == "mapping":
        bad.write_text(good)
        args, fragments = ["--columns", "user=reviewerID"], [f"{bad}:1", "column `user` not found in the header (tried: reviewerID)"]
    elif case == "missing":
        bad.write_text("user,rating,time\nu1,5,2020-01-02\n")
        fragments = [f"{bad}:1", "item"]
    elif case == "time":
        bad.write_text("user,item,rating,time\nu1,i1,5,2020-01-02\nu2,i1,4,yesterday\n")
        fragments = [f"{bad}:3", "yesterday"]
    elif case == "space":
        bad = data / "all.csv"
        bad.write_text("user,item,rating,time,market\nu1,i1,5,2020-01-02,in\nu2,i1,4,2020-01-03,in dia\n")
        args, fragments = ["--file", str(bad)], [f"{bad}:3", "in dia"]
    else:
        bad.write_text(good)
        (data / "in_5core.txt").write_text("userId itemId rate date\nu1 i1 5 2020-01-02\n")
        fragments = ["two files for market in", str(bad), str(data / "in_5core.txt")]
    result = invoke("prepare", data, *args, "-t", "in", "-s", "uk", "-o", tmp_path / "out")
    one_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_the_file_name_pattern_follows_the_core_market_name_rule() -> None:
    from hypothesis import given, strategies as st

    from xmfast import core
    from xmfast.markets import _MARKET_NAME

    @given(st.text(alphabet="aZ09_-. /é\t\n", max_size=6))
    def agree(name: str) -> None:
        assert bool(_MARKET_NAME.fullmatch(name)) == core.check_market_name(name), name

    agree()
