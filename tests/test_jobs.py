"""`xmfast run --jobs N`: independent stages at once in worker processes, with the files of a
serial run (bit for bit on the CPU), every stage after the stages it reads, Ctrl-C leaving each
running stage resumable, and a bad N refused.

Every run writes to the same directory (`OUT`, emptied between runs), so the paths inside
run.json and the evaluations are the same and the files can be compared byte for byte."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xmfast.errors import XmfastError
from xmfast.experiment import _gpus, _heights, _Worker, plan, read_experiment, run_experiment, stage_actions
from xmfast_cli.app import app

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes are started with POSIX file passing")

# nmf brings gmf and mlp: a chain (dataset -> gmf, mlp -> nmf) beside stages that wait for the dataset alone
GRID = ('name = "jobs"\ndata = "{data}"\nout = "{out}"\ntargets = ["in"]\nmodels = ["pop", "gmf", "gmf++", "nmf"]\n'
        'seeds = [1]\ndevice = "cpu"\n[train]\nepochs = 3\n')
TIMINGS = ("seconds", "instances_per_s")  # wall-clock figures: the only things a second run may change


def files(out: Path) -> dict[str, bytes]:
    """Every file under `out`, with the wall-clock figures of metrics.jsonl and the ledger left out."""
    got = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.name == "metrics.jsonl":
            data = b"".join(json.dumps({k: v for k, v in json.loads(line).items() if k not in TIMINGS}).encode()
                            for line in data.splitlines())
        elif p.parent.name == ".stages":
            data = json.dumps({k: v for k, v in json.loads(data).items() if k not in TIMINGS}).encode()
        got[str(p.relative_to(out))] = data
    return got


def serial_files(file: Path, out: Path) -> dict[str, bytes]:
    """The files of a serial run of the experiment `file` (writing to `out`, removed after) on one
    torch thread, a worker's on two cores with two jobs: what a parallel run must equal."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment(plan(read_experiment(file)))
    finally:
        torch.set_num_threads(threads)
    serial = files(out)
    shutil.rmtree(out)
    return serial


@pytest.fixture(scope="module")
def grid(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """The experiment file and the files of its serial run (in this process, one torch thread, as
    each of two workers on two cores has)."""
    root = tmp_path_factory.mktemp("jobs")
    file = root / "grid.toml"
    file.write_text(GRID.format(data=sample_dir, out=root / "out"), encoding="utf-8")
    serial = serial_files(file, root / "out")
    assert {"in/single/s1/nmf/results.json", "in/all/s1/gmf++/test.json", "in/single/s1/mlp/checkpoints/best.pt",
            ".stages/in__single__s1__nmf.json"} <= set(serial)
    return file, serial


def timeline(output: str) -> list[tuple[str, str]]:
    """("start" | "resume" | "end", stage) in the order the command's lines say."""
    events = []
    for line in output.splitlines():
        if m := re.match(r"\[\d+/\d+\] (running|resuming) \w+ (\S+)$", line):
            events.append(("resume" if m[1] == "resuming" else "start", m[2]))
        elif m := re.match(r"finished (\S+) \(\d+ s\)$", line):
            events.append(("end", m[1]))
    return events


def test_ctrl_c_stops_every_worker_resumably_and_two_jobs_finish_with_the_serial_runs_files(
        grid: tuple[Path, dict]) -> None:
    """SIGINT to `xmfast run --jobs 2`'s process group (a terminal's Ctrl-C) after the first
    finished epoch: status 130, one `interrupted:` line naming the stopped stages and the command
    that continues, no traceback, each stopped stage resumable. That command resumes them and runs
    the rest two at a time, each stage after those it reads (nmf after gmf and mlp), to the serial
    run's files byte for byte: results, evaluations, metrics, checkpoints and ledger."""
    file, serial = grid
    exp = read_experiment(file)
    proc = subprocess.Popen([sys.executable, "-m", "xmfast_cli.app", "run", str(file), "--no-report", "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            # `-m` puts the working directory first on the path: not the uncompiled source tree
                            cwd=file.parent,
                            # as from a terminal, even when CI started the suite with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    lines = []
    for text in proc.stdout:
        lines.append(text)
        if re.search(r" epoch +1 ", text):
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    try:
        assert proc.returncode == 130, output
        assert "Traceback" not in output and output.count("interrupted:") == 1, output
        (line,) = [t for t in output.splitlines() if t.startswith("interrupted:")]
        assert line.endswith(f"finished stages are kept; continue with `xmfast run {file} --no-report --jobs 2`"), line
        # the stage whose first epoch was seen had two more to go: it is among those stopped, its checkpoint saved
        stopped = re.findall(r"(in/\S+) \(\d of 6; after epoch [12] of 3, its checkpoint saved\)", line)
        assert stopped, line
        actions = stage_actions(plan(exp))
        assert all(actions[s] == "resume" for s in stopped), (line, actions)
        assert actions["in/single/s1/nmf"] == "run" and actions["in/dataset"] == "cached", actions
        ledger = {json.loads(f.read_text())["id"]: json.loads(f.read_text()) for f in (exp.out / ".stages").iterdir()}
        assert all(ledger[s]["status"] == "started" for s in stopped), ledger

        again = CliRunner().invoke(app, ["run", str(file), "--no-report", "--jobs", "2"])
        assert again.exit_code == 0, again.output
        events = timeline(again.output)
        assert {s for what, s in events if what == "resume"} == set(stopped), again.output
        ended = {s for s, a in actions.items() if a == "cached"}
        running = most = 0
        for what, stage in events:
            if what == "end":
                ended.add(stage)
                running -= 1
            else:
                assert set(plan(exp).by_id()[stage].deps) <= ended, (stage, again.output)
                running += 1
                most = max(most, running)
        assert ended == {s.id for s in plan(exp).stages} and most == 2, again.output
        nmf = plan(exp).by_id()["in/single/s1/nmf"]
        assert {"in/single/s1/gmf", "in/single/s1/mlp"} <= set(nmf.deps) and ("start", nmf.id) in events
        assert files(exp.out) == serial
    finally:
        shutil.rmtree(exp.out, ignore_errors=True)


def sample_with_a_bad_rating(sample_dir: Path, tmp_path: Path) -> Path:
    """A copy of the sample whose de file has the rating "five" on its line 4."""
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    de = data / "de_5core.txt"
    rows = de.read_text(encoding="utf-8").splitlines(keepends=True)
    user, item, _rate, date = rows[3].split(" ")
    rows[3] = " ".join([user, item, "five", date])
    de.write_text("".join(rows), encoding="utf-8")
    return data


def test_a_failing_stage_is_one_error_line(grid: tuple[Path, dict], sample_dir: Path, tmp_path: Path) -> None:
    """Both datasets of a two-target grid read a rating file with a bad line: both workers fail,
    the command says so once (the first error), exit status 2, nothing further starts."""
    data = sample_with_a_bad_rating(sample_dir, tmp_path)
    file = tmp_path / "bad.toml"
    file.write_text(GRID.format(data=data, out=tmp_path / "out").replace('["in"]', '["in", "uk"]'), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(file), "--jobs", "2"])
    assert result.exit_code == 2, result.output
    (line,) = [t for t in result.output.splitlines() if t.startswith("error:")]
    assert re.match(rf"error: {re.escape(str(data / 'de_5core.txt'))}:4: ", line), line
    assert "Traceback" not in result.output and "finished" not in result.output, result.output
    started = sorted(f.name for f in (tmp_path / "out" / ".stages").iterdir())
    assert started == ["in__dataset.json", "uk__dataset.json"], started  # no training began


@pytest.mark.parametrize("jobs", ["0", "-3"])
def test_jobs_below_one_is_one_error_line(grid: tuple[Path, dict], jobs: str) -> None:
    file, _ = grid
    result = CliRunner().invoke(app, ["run", str(file), "--jobs", jobs])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: --jobs is the number of stages run at once: a whole number of at least 1 "
                                     f"(1 runs one stage at a time), got {int(jobs)}"), result.output
    assert not read_experiment(file).out.exists()
    with pytest.raises(XmfastError, match=r"jobs=… is the number of stages run at once.*got 0"):
        run_experiment(plan(read_experiment(file)), jobs=0)


def test_gpus_are_dealt_from_those_visible_and_none_for_the_cpu(monkeypatch: pytest.MonkeyPatch,
                                                                 grid: tuple[Path, dict]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert _gpus("cuda") == _gpus("auto") == ["3", "5"]
    assert _gpus("cpu") == [] and _gpus("cuda:1") == []  # the CPU, or one named GPU that every stage shares
    # the longest chain waiting on a stage goes first: dataset -> gmf -> nmf
    heights = _heights(plan(read_experiment(grid[0])))
    assert heights["in/dataset"] == 3 and heights["in/single/s1/gmf"] == 2 and heights["in/single/s1/pop"] == 1


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="reads a worker's environment from /proc")
def test_a_worker_gets_its_share_of_threads_and_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # the parent's setting is the whole machine's, not a worker's
    worker = _Worker(3, "5")
    try:
        deadline = time.monotonic() + 30
        while True:  # /proc shows the new environment once the worker has exec'd, not between fork and exec
            env = dict(entry.split("=", 1) for entry in
                       Path(f"/proc/{worker.proc.pid}/environ").read_text().split("\0") if "=" in entry)
            if "XMFAST_WORKER_THREADS" in env or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert {k: env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "XMFAST_WORKER_THREADS",
                                    "CUDA_VISIBLE_DEVICES")} == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3",
                                                                 "RAYON_NUM_THREADS": "3", "XMFAST_WORKER_THREADS": "3",
                                                                 "CUDA_VISIBLE_DEVICES": "5"}
        assert os.getpgid(worker.proc.pid) != os.getpgid(0)  # a terminal's Ctrl-C does not reach it
    finally:
        worker.close()
    assert worker.proc.returncode == 0  # told to end (None), it ends cleanly
