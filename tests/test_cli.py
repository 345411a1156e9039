"""The `xmfast` command line: the commands on the sample, and bad input giving one `error:` line,
exit status 2 and no traceback. Also: the CLI does not import torch, and the console script runs."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_text
from xmfast import __version__
from xmfast.dataset import PreparedDataset
from xmfast.ratings import read_ratings
from xmfast.stats import market_stats
from xmfast_cli.app import app

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def dir_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_user_error(result, *fragments: str) -> str:
    """Exit status 2, exactly one `error:` line (containing every fragment), no traceback."""
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in out.splitlines() if "error:" in line]
    assert len(lines) == 1, out
    line = lines[0]
    assert line.startswith("error: "), line
    for f in fragments:
        assert f in line, (f, line)
    assert result.stdout == ""  # nothing (no partial table) on standard output
    return line


def copy_sample(sample_dir: Path, dest: Path) -> Path:
    shutil.copytree(sample_dir, dest)
    return dest


def replace_line(path: Path, lineno: int, text: str) -> None:
    """Replaces line `lineno` (1-based, the header is line 1)."""
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


# ---- the commands ----------------------------------------------------------------------------

def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"xmfast {__version__}"


def test_prepare_writes_a_loadable_dataset_and_prints_the_table(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = invoke("prepare", sample_dir, "--target", "in", "--sources", "all", "--out", out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "error:" not in result.output
    d = PreparedDataset.load(out, verify=True)
    assert d.markets == ["in", "de", "jp", "uk"] and d.protocol == "forec"
    text = result.stdout
    assert f"Prepared dataset {out}" in " ".join(text.split())
    # Not a terminal: the table is plain text, one row per market (the name first).
    lines = {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in d.markets}
    # The table rows: users, items, ratings of every market (the sample has no filtering).
    assert "(target)" in lines["in"]
    for s in market_stats(d, "in"):
        row = lines[s.market]
        assert f"{s.users:,}" in row and f"{s.items:,}" in row and f"{s.ratings:,}" in row, row
    assert "2,803" in lines["in"] and "11,374" in lines["uk"]
    counts = d.manifest["counts"]
    assert f"{counts['evaluated_groups']:,} evaluated" in text
    assert f"{counts['train_rows']:,} training rows" in text
    assert d.fingerprint[:16] in text


def test_prepare_options_reach_the_configuration(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = invoke(
        "prepare", sample_dir, "-t", "in", "-s", "uk,de", "-o", out, "--protocol", "acmr", "--seed", "9",
        "--min-user", "5", "--min-item", "2", "--fixpoint", "--dedup", "--eval-negatives", "25",
    )
    assert result.exit_code == 0, result.output
    d = PreparedDataset.load(out)
    s = d.manifest["settings"]
    assert d.markets == ["in", "uk", "de"] and d.protocol == "acmr"
    assert s["seed"] == 9 and s["dedup"] is True and s["eval_negatives"] == 25
    assert s["kcore"] == {"min_user": 5, "min_item": 2, "fixpoint": True}
    assert d.test.candidates.shape[1] == 26
    assert d.manifest["counts"]["duplicates_dropped"] > 0
    # --overwrite replaces it.
    again = invoke("prepare", sample_dir, "-t", "in", "-s", "", "-o", out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert PreparedDataset.load(out).markets == ["in"]


def test_stats_on_rating_files_and_on_a_prepared_dataset(sample_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "raw.json"
    result = invoke("stats", sample_dir, "--target", "in", "--json", report)
    assert result.exit_code == 0, result.output
    assert "all markets together: 1,479 distinct items, 23,685 ratings" in result.stdout
    assert "Items shared between markets" in " ".join(result.stdout.split())
    data = json.loads(report.read_text())
    r = read_ratings([(m, sample_dir / f"{m}_5core.txt") for m in ["in", "de", "jp", "uk"]])
    assert data["markets"] == [s.as_dict() for s in market_stats(r, "in")]
    assert data["distinct_items"] == 1479
    cm = data["cross_market"]
    assert cm["markets"] == ["in", "de", "jp", "uk"]
    assert [cm["shared_items"][k][k] for k in range(4)] == [s["items"] for s in data["markets"]]
    assert cm["shared_items"] == [list(row) for row in zip(*cm["shared_items"])]  # symmetric

    only = tmp_path / "only.json"
    assert invoke("stats", sample_dir, "--markets", "uk,jp", "--json", only).exit_code == 0
    assert [m["market"] for m in json.loads(only.read_text())["markets"]] == ["uk", "jp"]

    out = tmp_path / "ds"
    assert invoke("prepare", sample_dir, "-t", "in", "-s", "all", "-o", out).exit_code == 0
    prepared = tmp_path / "prepared.json"
    result = invoke("stats", out, "--json", prepared)
    assert result.exit_code == 0, result.output
    assert f"Prepared dataset {out}" in " ".join(result.stdout.split())
    assert json.loads(prepared.read_text())["markets"] == [s.as_dict() for s in market_stats(PreparedDataset.load(out), "in")]


def test_stats_of_a_broken_prepared_dataset_is_a_user_error(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert invoke("prepare", sample_dir, "-t", "in", "-o", out).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(invoke("stats", out), str(out / "manifest.json"), "format version 99")


def test_synth_is_seeded_and_preparable(tmp_path: Path) -> None:
    args = ["--markets", "uk,in", "--ratings", "3000", "--items", "300", "--seed", "3"]
    a = invoke("synth", tmp_path / "a", *args)
    b = invoke("synth", tmp_path / "b", *args)
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    files_a, files_b = dir_bytes(tmp_path / "a"), dir_bytes(tmp_path / "b")
    assert set(files_a) == {"uk_5core.txt", "in_5core.txt", "synth.json"}
    assert files_a == files_b
    c = invoke("synth", tmp_path / "c", "--markets", "uk,in", "--ratings", "3000", "--items", "300", "--seed", "4")
    assert c.exit_code == 0 and dir_bytes(tmp_path / "c")["uk_5core.txt"] != files_a["uk_5core.txt"]
    config = json.loads(files_a["synth.json"])["config"]
    assert config["markets"] == ["uk", "in"] and config["seed"] == 3 and config["items"] == 300
    # One line per file, with counts matching the file.
    for market in ("uk", "in"):
        rows = (tmp_path / "a" / f"{market}_5core.txt").read_text().splitlines()[1:]
        line = next(line for line in a.stdout.splitlines() if line.startswith(f"{market}:"))
        assert f"{len(rows):,} ratings" in line and f"{len({r.split()[0] for r in rows}):,} users" in line
    total = sum(len((tmp_path / "a" / f"{m}_5core.txt").read_text().splitlines()) - 1 for m in ("uk", "in"))
    assert 2000 <= total <= 4000
    out = tmp_path / "ds"
    assert invoke("prepare", tmp_path / "a", "-t", "in", "-s", "all", "-o", out, "--eval-negatives", "20").exit_code == 0
    assert PreparedDataset.load(out, verify=True).markets == ["in", "uk"]


def test_synth_raw_category_and_sample(sample_dir: Path, tmp_path: Path) -> None:
    raw = invoke("synth", tmp_path / "raw", "--markets", "de,jp", "--ratings", "2000", "--items", "200",
                 "--raw-category", "Electronics")
    assert raw.exit_code == 0, raw.output
    names = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert names == ["ratings_de_Electronics.txt.gz", "ratings_jp_Electronics.txt.gz", "synth.json"]
    body = gzip.decompress((tmp_path / "raw" / "ratings_de_Electronics.txt.gz").read_bytes()).decode()
    assert len(body.splitlines()[0].split()) == 4
    assert invoke("prepare", tmp_path / "raw", "-t", "jp", "-s", "de", "-o", tmp_path / "ds", "--eval-negatives", "10",
                  "--reference", "none", "--min-user", "1", "--min-item", "1").exit_code == 0  # no us file to restrict to
    # --sample regenerates the committed sample byte for byte.
    sample = invoke("synth", tmp_path / "sample", "--sample")
    assert sample.exit_code == 0, sample.output
    made, committed = dir_bytes(tmp_path / "sample"), dir_bytes(sample_dir)
    assert set(made) == set(committed)
    for name in committed:
        if name == "synth.json":  # records the generator's version besides the configuration
            assert json.loads(made[name])["config"] == json.loads(committed[name])["config"]
        else:
            assert made[name] == committed[name], name


# ---- bad input -------------------------------------------------------------------------------

def test_missing_data_dir(tmp_path: Path) -> None:
    assert_user_error(invoke("prepare", tmp_path / "nowhere", "-t", "in", "-o", tmp_path / "out"),
                      str(tmp_path / "nowhere"), "no such data directory")
    assert not (tmp_path / "out").exists()


def test_missing_target_file(sample_dir: Path, tmp_path: Path) -> None:
    data = copy_sample(sample_dir, tmp_path / "data")
    (data / "in_5core.txt").unlink()
    (data / "in_5core.txt").symlink_to(tmp_path / "deleted.txt")  # dangling: the file is gone
    assert_user_error(invoke("prepare", data, "-t", "in", "-s", "all", "-o", tmp_path / "out"),
                      str(data), "target market 'in' is absent", "markets found: de, jp, uk")
    assert not (tmp_path / "out").exists()


def test_target_absent(sample_dir: Path, tmp_path: Path) -> None:
    assert_user_error(invoke("prepare", sample_dir, "-t", "fr", "-o", tmp_path / "out"),
                      str(sample_dir), "target market 'fr' is absent")
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-s", "de,mx", "-o", tmp_path / "out"),
                      str(sample_dir), "source market 'mx' is absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(invoke("prepare", empty, "-t", "in", "-o", tmp_path / "out"), str(empty), "no rating files found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "line", "message"),
    [
        ("wrong column count", "AU1 B0001 5.0", "expected 4 columns"),
        ("too many columns", "AU1 B0001 5.0 2020-01-01 x", "expected 4 columns"),
        ("non-numeric rating", "AU1 B0001 good 2020-01-01", 'non-numeric rating "good"'),
        ("bad date", "AU1 B0001 5.0 01/02/2020", 'unparsable date "01/02/2020"'),
        ("impossible date", "AU1 B0001 5.0 2019-02-29", "day 29 does not exist"),
    ],
    ids=["wrong-column-count", "too-many-columns", "non-numeric-rating", "bad-date", "impossible-date"],
)
def test_malformed_source_file_names_file_and_line(
    sample_dir: Path, tmp_path: Path, case: str, line: str, message: str
) -> None:
    data = copy_sample(sample_dir, tmp_path / "data")
    replace_line(data / "de_5core.txt", 1233, line)
    assert_user_error(invoke("prepare", data, "-t", "in", "-s", "all", "-o", tmp_path / "out"),
                      f"{data / 'de_5core.txt'}:1233: ", message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("lineno", "line", "message"),
    [
        (100, "AU1 B0001 5.0 2020-1-01", ':100: unparsable date "2020-1-01"'),
        (1234, "AU1 B0001 5.0 2020-1-01", ':1234: unparsable date "2020-1-01"'),
        (50, "AU1 B0001 [/x] 2020-01-01", ':50: non-numeric rating "[/x]"'),
        (50, "AU1 B0001 [bold]x 2020-01-01", ':50: non-numeric rating "[bold]x"'),
    ],
    ids=["line-100", "line-1234", "closing-tag", "style-tag"],
)
def test_error_message_is_printed_verbatim(sample_dir: Path, tmp_path: Path, lineno: int, line: str, message: str) -> None:
    """The message comes from the data (file names, line numbers, field values): it must reach
    the terminal unchanged, not read as rich markup (`[bold]`) or emoji codes (`:100:`)."""
    data = copy_sample(sample_dir, tmp_path / "data")
    replace_line(data / "uk_5core.txt", lineno, line)
    assert_user_error(invoke("prepare", data, "-t", "in", "-s", "all", "-o", tmp_path / "out"),
                      f"{data / 'uk_5core.txt'}{message}")


def test_truncated_gzip(sample_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    body = (sample_dir / "in_5core.txt").read_text().split("\n", 1)[1]  # raw files have no header
    f = write_text(data / "ratings_in_Electronics.txt.gz", body, gz=True)
    write_text(data / "ratings_uk_Electronics.txt.gz", (sample_dir / "uk_5core.txt").read_text(), gz=True)
    unfiltered = ("--reference", "none", "--min-user", "1", "--min-item", "1")  # not FOREC's raw-file defaults
    # Intact, it prepares.
    assert invoke("prepare", data, "-t", "in", "-s", "all", "-o", tmp_path / "ok", *unfiltered).exit_code == 0
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_user_error(invoke("prepare", data, "-t", "in", "-s", "all", "-o", tmp_path / "out", *unfiltered),
                      str(f), "truncated gzip")
    assert not (tmp_path / "out").exists()


def test_absent_or_malformed_market_names(sample_dir: Path, tmp_path: Path) -> None:
    for args, fragment in ((["-t", "zz"], "target market 'zz' is absent (markets found: de, in, jp, uk)"),
                           (["-t", "in", "-s", "de,xx"], "source market 'xx' is absent (markets found: de, in, jp, uk)"),
                           (["-t", "in", "--reference-market", "qq"], "reference market 'qq' is absent"),
                           (["-t", "in x"], "target market 'in x': a market name is letters, digits, _ and - only")):
        assert_user_error(invoke("prepare", sample_dir, *args, "-o", tmp_path / "out"), fragment)
    assert_user_error(invoke("synth", tmp_path / "s", "--markets", "uk,z z"), "market name 'z z'")
    assert not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


def test_existing_out_without_overwrite(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    # A folder of someone's files: refused, and --overwrite is not what to do about it.
    line = assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-o", out), str(out), "is not a prepared dataset")
    assert "--overwrite" not in line
    assert dir_bytes(out) == {"notes.txt": b"keep me"}


def test_bad_protocol(sample_dir: Path, tmp_path: Path) -> None:
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-o", tmp_path / "out", "--protocol", "leave-two-out"),
                      "unknown protocol 'leave-two-out'")
    assert not (tmp_path / "out").exists()


def test_other_bad_settings_are_user_errors(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-o", out, "--min-user", "0"), "at least 1")
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-o", out, "--eval-negatives", "0"), "negatives")
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-o", out, "--eval-negatives", "5000"),
                      "market in, user", "lower the number of evaluation negatives")
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-s", "uk", "-o", out, "--min-item", "60"),
                      "market in: no ratings left")
    assert not out.exists()


def test_failed_overwrite_leaves_the_existing_dataset(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke("prepare", sample_dir, "-t", "in", "-s", "de", "-o", out).exit_code == 0
    before = dir_bytes(out)
    data = copy_sample(sample_dir, tmp_path / "data")
    replace_line(data / "in_5core.txt", 77, "AU1 B0001 5.0 2020-13-01")
    assert_user_error(invoke("prepare", data, "-t", "in", "-s", "de", "-o", out, "--overwrite"),
                      f"{data / 'in_5core.txt'}:77: ")
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-s", "de", "-o", out, "--overwrite", "--protocol", "x"),
                      "unknown protocol")
    assert dir_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
    PreparedDataset.load(out, verify=True)


# ---- the process: imports and the installed script -------------------------------------------

def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Run outside the checkout so the installed packages are imported, not the source tree.
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_prepare_does_not_import_torch(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code = f"""
import sys

attempts = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "tensorflow", "jax"):
            attempts.append(name)
        return None

sys.meta_path.insert(0, Watch())
from xmfast_cli.app import app
app(["prepare", {str(sample_dir)!r}, "-t", "in", "-s", "all", "-o", {str(out)!r}], standalone_mode=False)
print("ATTEMPTS", attempts)
print("TORCH", "torch" in sys.modules)
"""
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ATTEMPTS []" in proc.stdout and "TORCH False" in proc.stdout, proc.stdout
    assert (out / "manifest.json").is_file()


def test_a_line_to_a_pipe_is_not_broken_at_80_columns(sample_dir: Path, tmp_path: Path) -> None:
    """Off a terminal (a log, a pipe) a printed line stays whole, for grep and tail; rich breaks
    lines at 80 columns there unless told not to. The run's first line here is wider than 80."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERM")}
    ds, run = tmp_path / "ds", tmp_path / "run"
    command = [sys.executable, "-m", "xmfast_cli.app"]
    assert subprocess.run([*command, "prepare", str(sample_dir), "-t", "in", "-s", "all", "-o", str(ds)],
                          cwd=tmp_path, env=env, capture_output=True, timeout=120).returncode == 0
    done = subprocess.run([*command, "train", str(ds), "-m", "gmf", "--sources", "all", "--epochs", "1", "-o",
                           str(run)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (  # the progress log goes to stderr
        "gmf on in (sources de, jp, uk); training rows: in 2,163, de 4,515, jp 2,859, uk 8,814; device cpu; epochs 1–1")


def test_installed_console_script_runs(sample_dir: Path, tmp_path: Path) -> None:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    script = shutil.which("xmfast", path=path)
    assert script is not None
    version = subprocess.run([script, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"xmfast {__version__}"
    out = tmp_path / "ds"
    ok = subprocess.run([script, "prepare", str(sample_dir), "-t", "in", "-o", str(out)],
                        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert PreparedDataset.load(out).markets == ["in"]
    bad = subprocess.run([script, "prepare", str(tmp_path / "nowhere"), "-t", "in", "-o", str(tmp_path / "x")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stdout == "" and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.strip()] == [
        f"error: {tmp_path / 'nowhere'}: no such data directory"
    ]


@pytest.mark.parametrize("argv, fragment", [
    (["recommend", "RUN", "--k", "abc"], "Invalid value for '--k'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["prepare"], "Missing option '--target'"),
    (["evaluate", "--no-such-option"], "No such option"),
])
def test_a_mistyped_command_line_is_one_error_line(argv: list[str], fragment: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The console script's entry point turns the option parser's usage errors into one
    `error:` line pointing to --help, with exit status 2 (not a framed box)."""
    from xmfast_cli.app import main

    monkeypatch.setattr(sys, "argv", ["xmfast", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0] and "--help" in lines[0], err


def test_the_entry_point_keeps_exit_status_and_help(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from xmfast_cli.app import main

    for argv, code in ((["--version"], 0), (["stats", "--help"], 0), ([], 2)):
        monkeypatch.setattr(sys, "argv", ["xmfast", *argv])
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == code, argv
    assert "error:" not in capsys.readouterr().err


def test_evaluate_exports_the_trec_run_it_evaluated(dataset: Path, tmp_path: Path) -> None:
    """`evaluate RUN --trec-run` and `evaluate DATASET --baseline --trec-run` write their run with
    trec.export_run; evaluating the file again gives the same figures, and the tag names the model."""
    assert invoke("train", dataset, "-m", "pop", "-o", tmp_path / "pop").exit_code == 0
    for source, tag in ((tmp_path / "pop", "run"), (dataset, "baseline")):
        args = ["--baseline", "pop"] if tag == "baseline" else []
        r = invoke("evaluate", source, *args, "--ties", "trec", "--json", tmp_path / f"{tag}.json",
                   "--trec-run", tmp_path / f"{tag}.run", "--trec-qrels", tmp_path / f"{tag}.qrels")
        assert r.exit_code == 0, r.output
        r = invoke("evaluate", "--trec-run", tmp_path / f"{tag}.run", "--trec-qrels", tmp_path / f"{tag}.qrels",
                   "--ties", "trec", "--json", tmp_path / f"{tag}-back.json")
        assert r.exit_code == 0, r.output
        first = json.loads((tmp_path / f"{tag}.json").read_text())["per_market"]["in"]
        back = json.loads((tmp_path / f"{tag}-back.json").read_text())["per_market"]["in"]
        assert back == pytest.approx(first, abs=1e-12) and first["hr@10"] > 0
        assert {line.split()[5] for line in (tmp_path / f"{tag}.run").read_text().splitlines()} == {"pop"}


def test_a_failed_device_leaves_no_run_and_an_unfinished_run_names_its_command(dataset: Path, tmp_path: Path) -> None:
    """`--device cuda` on a machine without CUDA is refused before the run directory exists (the
    retry with `--device cpu` is not blocked); a run stopped before its first epoch, met by a
    command with other settings, is refused naming `train --resume RUN` and --overwrite, and
    `--resume --device cpu` then trains it from epoch 0."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "gmf"
    assert_user_error(invoke("train", dataset, "-m", "gmf", "-o", out, "--epochs", "1", "--device", "cuda"),
                      "--device cuda: CUDA is not available")
    assert not out.exists()
    from xmfast.dataset import PreparedDataset
    from xmfast.models import get_model
    from xmfast.training import train

    spec = get_model("gmf")
    # stopped before its first epoch ended (stop_after=0: the run exists, no checkpoint)
    assert train(PreparedDataset.load(dataset), out, "gmf", config=spec.train_config(epochs=1, device="cpu"),
                 stop_after=0) is None
    line = assert_user_error(invoke("train", dataset, "-m", "gmf", "-o", out, "--epochs", "1", "--lr", "0.5",
                                    "--device", "cpu"), f"{out}: already exists")
    assert f"stopped before its first epoch ended; continue it with `xmfast train --resume {out}`" in line
    assert "--overwrite" in line
    resumed = invoke("train", "--resume", out, "--device", "cpu")
    assert resumed.exit_code == 0 and "training it from epoch 0" in resumed.output, resumed.output
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    line = assert_user_error(invoke("train", dataset, "-m", "gmf", "-o", out, "--epochs", "1"), f"{out}: already exists")
    assert "a finished run; pass --overwrite to replace it" in line


def test_evaluate_names_the_markets_of_a_fine_tuning_output(dataset: Path, tmp_path: Path) -> None:
    """A directory of runs, one per market as `finetune` writes it, given where one run goes."""
    out = tmp_path / "forec"
    assert invoke("train", dataset, "-m", "pop", "-o", out / "in").exit_code == 0
    assert_user_error(invoke("evaluate", out), f"{out}: a directory of runs (in), one per market as `xmfast finetune` "
                      f"writes them, not one run; give one of them, e.g. `xmfast evaluate {out / 'in'}`")


def test_a_transformer_run_exits_without_warnings(dataset: Path, tmp_path: Path) -> None:
    """The process a SASRec training ran in ends quietly. Its attention imports triton (a
    nanobind extension), whose leak check prints hundreds of lines at exit if the interpreter
    does not collect its objects then: this is what came of freezing the heap to exit faster."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    script = shutil.which("xmfast", path=path)
    assert script is not None
    done = subprocess.run([script, "train", str(dataset), "-m", "sasrec", "--epochs", "1", "-o", str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr and "nanobind" not in done.stderr, done.stderr[-2000:]
