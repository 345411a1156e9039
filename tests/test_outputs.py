"""Outputs replace only xmfast artefacts of their own kind, never an input or a folder holding
one; a path that cannot be written (a directory, a read-only or missing parent, a full disk) is
one `error:` line, exit status 2, with everything already there left as it was."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

import pytest
from test_cli import assert_user_error, dir_bytes, invoke

from xmfast import _io


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rating files, a prepared dataset and a pop run (no training: quick)."""
    root = tmp_path_factory.mktemp("outputs")
    assert invoke("synth", root / "raw", "--markets", "uk,in", "--ratings", "3000", "--items", "200",
                  "--topics", "10").exit_code == 0
    assert invoke("prepare", root / "raw", "-t", "in", "-s", "uk", "-o", root / "ds").exit_code == 0
    result = invoke("train", root / "ds", "-m", "pop", "-o", root / "pop")
    assert result.exit_code == 0, result.output
    return root


def snapshot(*paths: Path) -> list[dict[str, bytes] | bytes]:
    return [dir_bytes(p) if p.is_dir() else p.read_bytes() for p in paths]


# ---- prepare ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("out", "message"),
    [
        (lambda d: d, "is the input"),
        (lambda d: d.parent, "contains an input"),
        (lambda d: d / "prepared", "is inside an input"),
    ],
    ids=["the-data-itself", "its-parent", "inside-it"],
)
def test_prepare_never_writes_over_or_around_its_input(made: Path, tmp_path: Path, out, message: str) -> None:
    data = tmp_path / "top" / "raw"
    data.parent.mkdir()
    os.symlink(made / "raw", tmp_path / "link")  # the input given through a symlink: resolved
    import shutil

    shutil.copytree(made / "raw", data)
    (data.parent / "thesis.tex").write_text("years of work")
    before = snapshot(data.parent)
    assert_user_error(invoke("prepare", data, "-t", "in", "-o", out(data), "--overwrite"), message)
    assert snapshot(data.parent) == before
    assert_user_error(invoke("prepare", tmp_path / "link", "-t", "in", "-o", made / "raw", "--overwrite"), "is the input")


def test_prepare_refuses_a_foreign_folder_and_a_file(made: Path, tmp_path: Path) -> None:
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("mine")
    file = tmp_path / "notes.txt"
    file.write_text("mine too")
    for out, message in ((folder, "is not a prepared dataset"), (file, "is not a directory")):
        before = snapshot(out)
        assert_user_error(invoke("prepare", made / "raw", "-t", "in", "-o", out, "--overwrite"), str(out), message)
        assert snapshot(out) == before
    # An empty folder holds nothing to lose: it is used.
    (tmp_path / "empty").mkdir()
    assert invoke("prepare", made / "raw", "-t", "in", "-o", tmp_path / "empty").exit_code == 0


# ---- train, finetune, run --------------------------------------------------------------------------
def test_train_overwrite_replaces_only_a_run(made: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-ds"
    assert invoke("prepare", made / "raw", "-t", "in", "-o", other).exit_code == 0
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for out, message in ((made / "ds", "is the input"), (other, "is not a run directory"),
                         (folder, "is not a run directory"), (made, "contains an input")):
        before = snapshot(out)
        assert_user_error(invoke("train", made / "ds", "-m", "pop", "-o", out, "--overwrite"), message)
        assert snapshot(out) == before
    # A run is replaced with --overwrite, refused without.
    assert_user_error(invoke("train", made / "ds", "-m", "pop", "-o", made / "pop"), "already exists")
    run = tmp_path / "pop"
    assert invoke("train", made / "ds", "-m", "pop", "-o", run).exit_code == 0
    assert invoke("train", made / "ds", "-m", "pop", "-o", run, "--overwrite").exit_code == 0


def test_finetune_and_run_refuse_foreign_output_folders(made: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    # (finetune checks its output after its base run: a pop run is refused first, so check the helper)
    from xmfast import outputs

    with pytest.raises(_io.OutputError, match="is not a fine-tuning output directory"):
        _io.check_output(folder, outputs.FINETUNE_DIR)
    with pytest.raises(_io.OutputError, match="is the input"):
        _io.check_output(made / "pop", outputs.FINETUNE_DIR, inputs=[made / "pop"])
    exp = tmp_path / "exp.toml"
    exp.write_text(f'name = "x"\ndata = "{made / "raw"}"\nout = "{folder}"\ntargets = ["in"]\nmodels = ["pop"]\n')
    assert_user_error(invoke("run", exp), "is not an experiment output directory")
    exp.write_text(f'name = "x"\ndata = "{made / "raw"}"\nout = "{made}"\ntargets = ["in"]\nmodels = ["pop"]\n')
    assert_user_error(invoke("run", exp), "contains an input")
    assert (folder / "keep.txt").read_text() == "mine" and not (folder / ".stages").exists()


# ---- report, synth ---------------------------------------------------------------------------------
def test_report_replaces_only_a_report(made: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert invoke("report", made / "pop", "-o", out, "--no-plots").exit_code == 0
    assert out.read_text().startswith("<!-- xmfast-report -->\n")
    assert json.loads(out.with_suffix(".json").read_text())["format"] == "xmfast-report"
    assert invoke("report", made / "pop", "-o", out, "--no-plots").exit_code == 0  # its own: replaced
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    assert_user_error(invoke("report", made / "pop", "-o", notes, "--no-plots"), "is not a report written by xmfast")
    assert notes.read_text() == "# my notes\n" and not notes.with_suffix(".csv").exists()
    beside = tmp_path / "b.md"
    beside.with_suffix(".json").write_text('{"mine": 1}')
    assert_user_error(invoke("report", made / "pop", "-o", beside, "--no-plots"), "b.json", "is not a report JSON")
    assert not beside.exists()
    assert_user_error(invoke("report", made / "pop", "-o", made / "pop" / "run.json", "--no-plots"))


def test_synth_refuses_a_file_or_a_foreign_folder(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    args = ("--markets", "uk,in", "--ratings", "500", "--items", "50", "--topics", "5")
    assert_user_error(invoke("synth", file, *args), "is not a directory")
    assert_user_error(invoke("synth", folder, *args), "is not a synthetic data directory")
    assert file.read_text() == "x" and [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert invoke("synth", tmp_path / "s", *args).exit_code == 0
    assert invoke("synth", tmp_path / "s", *args, "--seed", "3").exit_code == 0  # its own: replaced


# ---- file outputs: a directory, a read-only or missing parent, a full disk -----------------------
def file_commands(made: Path, out: Path) -> dict[str, tuple]:
    return {
        "stats --json": ("stats", made / "ds", "--json", out),
        "evaluate --json": ("evaluate", made / "pop", "--json", out),
        "report -o": ("report", made / "pop", "-o", out, "--no-plots"),
        "recommend -o": ("recommend", made / "pop", "--all-users", "-o", out),
        "evaluate --trec-run": ("evaluate", made / "ds", "--baseline", "pop", "--trec-run", out),
        "evaluate --trec-qrels": ("evaluate", made / "ds", "--baseline", "pop", "--trec-qrels", out),
    }


@pytest.mark.parametrize("command", list(file_commands(Path(), Path())))
def test_file_outputs_fail_as_one_line(made: Path, tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # An existing directory.
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "keep.txt").write_text("mine")
    assert_user_error(invoke(*file_commands(made, directory)[command]), str(directory), "is a directory")
    assert [p.name for p in directory.iterdir()] == ["keep.txt"]
    # A parent that is a file (as root, chmod cannot make a directory read-only).
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(invoke(*file_commands(made, blocker / "out")[command]), "cannot write it")
    # Made once; then every later write fails: not allowed, then a full disk. The first file stays.
    out = tmp_path / "out"
    first = invoke(*file_commands(made, out)[command])
    assert first.exit_code == 0, first.output
    before = snapshot(tmp_path)
    for error, fragment in ((PermissionError(errno.EACCES, "Permission denied"), "choose a location you may write to"),
                            (OSError(errno.ENOSPC, "No space left on device"), "free some space")):
        def failing(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(os, "replace", failing)
        assert_user_error(invoke(*file_commands(made, out)[command]), str(out), fragment)
        monkeypatch.undo()
        assert snapshot(tmp_path) == before


def test_a_full_disk_while_writing_a_dataset_keeps_the_old_one(made: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ds"
    assert invoke("prepare", made / "raw", "-t", "in", "-o", out).exit_code == 0
    before = snapshot(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io, "save_array", full)
    monkeypatch.setattr("xmfast.dataset.save_array", full)
    assert_user_error(invoke("prepare", made / "raw", "-t", "in", "-s", "uk", "-o", out, "--overwrite"),
                      str(out), "No space left on device", "free some space")
    monkeypatch.undo()
    assert snapshot(tmp_path) == before


# ---- leftovers -------------------------------------------------------------------------------------
def test_leftovers_are_swept_unless_a_live_writer_holds_them(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    dead = tmp_path / ".x.json.partial-dead"
    dead.write_text("half")
    live = tmp_path / ".x.json.partial-live"
    live.write_text("being written")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        _io.write_json_atomic(target, {"a": 1})
        assert sorted(p.name for p in tmp_path.iterdir()) == [".x.json.partial-live", "x.json"]
    finally:
        os.close(fd)
    _io.write_json_atomic(target, {"a": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_directory_moved_aside_by_a_killed_writer_is_put_back(made: Path, tmp_path: Path) -> None:
    """A kill between the two renames of a replacement leaves OUT missing and the previous
    dataset under .OUT.old-*: the next writer puts it back before it goes on."""
    import shutil

    shutil.copytree(made / "ds", tmp_path / ".ds.old-0123")
    assert_user_error(invoke("prepare", made / "raw", "-t", "in", "-s", "uk", "-o", tmp_path / "ds"), "already exists")
    assert dir_bytes(tmp_path / "ds") == dir_bytes(made / "ds")
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
