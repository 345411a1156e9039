"""A kill at any moment: `prepare`, `train`, `finetune` and `run` are killed (os._exit(137), as
SIGKILL would) at each file creation and each rename they make, one kill point after another;
then the same command (or `train --resume`, for a run with a finished epoch) must finish with
the results of an uninterrupted run, bit for bit on the CPU, and leave no leftover behind.

Each command runs in a child forked from one warm helper process (tests/kill_zygote.py), so a
kill point costs a fraction of a second: the child counts write events (open for writing,
mkdir, rename, replace) and dies at the n-th. torch runs single-threaded in every child.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills are injected into forked children")

KILLED = 137
_zygote: list[subprocess.Popen] = []


def xmfast(*args: Any, kill_at: int | None = None, timeout: float = 120.0,
           interrupt_at: int | None = None) -> dict[str, Any]:
    """Runs `xmfast ARGS` in a forked child; with `kill_at`, the child dies at its kill_at-th
    write event (with `interrupt_at`, it gets SIGINT there). Returns {"code", "events", "output"}
    (code 137 when killed)."""
    (proc,) = _zygote
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"args": [str(a) for a in args], "kill_at": kill_at, "timeout": timeout,
                                 "interrupt_at": interrupt_at}) + "\n")
    proc.stdin.flush()
    answer = json.loads(proc.stdout.readline())
    assert answer["code"] != -1, f"xmfast {' '.join(map(str, args))} (kill_at={kill_at}): {answer['output']}"
    return answer


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".partial" in p.name or ".old-" in p.name)


def dir_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_facts(run: Path) -> dict[str, Any]:
    """What must equal an uninterrupted run's: results and the per-epoch log without timings."""
    metrics = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "instances_per_s")}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"results": json.loads((run / "results.json").read_text()), "metrics": metrics,
            "status": json.loads((run / "run.json").read_text())["status"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rating files and a prepared dataset small enough that a training takes a fraction of a second."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kill_zygote.py"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    _zygote.append(proc)
    root = tmp_path_factory.mktemp("kills")
    assert xmfast("synth", root / "raw", "--markets", "uk,in", "--ratings", "3000", "--items", "200",
                  "--topics", "10")["code"] == 0
    assert xmfast("prepare", root / "raw", "-t", "in", "-s", "uk", "-o", root / "ds")["code"] == 0
    yield root
    _zygote.clear()
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(timeout=60)


def kill_points(total: int, stride: int) -> range:
    """Every `stride`-th write event (every one with XMFAST_KILL_MATRIX=full): by default prepare
    and train are killed at every second event, finetune, run and the Ctrl-C cases at a sparser
    sample of the same writes, which keeps CI under its 20 minutes; the full matrix is for a
    change to how outputs are written."""
    return range(1, total + 1, 1 if os.environ.get("XMFAST_KILL_MATRIX") == "full" else stride)


def continue_training(run: Path, *command: Any) -> dict[str, Any]:
    """What a user does after a kill: `train --resume` a run with a finished epoch, else the same command."""
    if (run / "checkpoints" / "last.pt").is_file() and (run / "run.json").is_file():
        return xmfast("train", "--resume", run)
    return xmfast(*command)


def test_prepare_killed_at_each_write_leaves_the_old_dataset_or_the_new(tiny: Path, tmp_path: Path) -> None:
    ref = xmfast("prepare", tiny / "raw", "-t", "in", "-s", "uk", "--seed", "7", "-o", tmp_path / "ref")
    assert ref["code"] == 0 and ref["events"] > 10
    want = dir_bytes(tmp_path / "ref")
    out = tmp_path / "k" / "ds"
    assert xmfast("prepare", tiny / "raw", "-t", "in", "-s", "uk", "-o", tmp_path / "old")["code"] == 0
    old = dir_bytes(tmp_path / "old")
    command = ("prepare", tiny / "raw", "-t", "in", "-s", "uk", "--seed", "7", "-o", out, "--overwrite")
    for n in kill_points(ref["events"], 2):
        shutil.copytree(tmp_path / "old", out)  # the dataset it replaces
        assert xmfast(*command, kill_at=n)["code"] == KILLED
        found = dir_bytes(out) if out.exists() else None
        if found is None:  # killed between the two renames: the old one waits beside it
            (aside,) = [p for p in out.parent.iterdir() if p.name.startswith(".ds.old-")]
            found = dir_bytes(aside)
        assert found in (old, want), f"kill at {n}: a half-written dataset"
        again = xmfast(*command)
        assert again["code"] == 0, (n, again["output"])
        assert dir_bytes(out) == want, f"kill at {n}"
        assert leftovers(out.parent) == [], f"kill at {n}"
        shutil.rmtree(out)


def test_train_killed_at_each_write_resumes_to_the_same_results(tiny: Path, tmp_path: Path) -> None:
    def command(out: Path) -> tuple[Any, ...]:
        return ("train", tiny / "ds", "-m", "gmf", "-o", out, "--epochs", "2", "--device", "cpu", "--seed", "3")

    ref = xmfast(*command(tmp_path / "ref"))
    assert ref["code"] == 0 and ref["events"] > 15, ref["output"]
    want = run_facts(tmp_path / "ref")
    for n in kill_points(ref["events"], 2):
        out = tmp_path / f"k{n}" / "run"
        assert xmfast(*command(out), kill_at=n)["code"] == KILLED
        done = continue_training(out, *command(out))
        assert done["code"] == 0, (n, done["output"])
        assert run_facts(out) == want, f"kill at {n}"
        assert leftovers(out.parent) == [], f"kill at {n}"


def test_a_run_killed_before_its_first_checkpoint_restarts(tiny: Path, tmp_path: Path) -> None:
    """run.json has landed, no epoch finished: a plain re-run of the same command starts it again,
    `--resume` starts it from epoch 0 (and says so), `--overwrite` replaces it; other settings
    are still refused (that would silently throw away someone's run)."""
    def command(out: Path) -> tuple[Any, ...]:
        return ("train", tiny / "ds", "-m", "gmf", "-o", out, "--epochs", "1", "--device", "cpu")

    ref = xmfast(*command(tmp_path / "ref"))
    want = run_facts(tmp_path / "ref")
    out = tmp_path / "a" / "run"
    for first in range(1, ref["events"]):  # the first kill point after run.json says "running"
        assert xmfast(*command(out), kill_at=first)["code"] == KILLED
        if (out / "run.json").is_file() and json.loads((out / "run.json").read_text())["status"] == "running":
            break
    assert not (out / "checkpoints" / "last.pt").exists()
    other = xmfast(*command(out), "--lr", "0.5")
    assert other["code"] == 2 and "already exists" in other["output"], other["output"]
    resumed = xmfast("train", "--resume", out)
    assert resumed["code"] == 0 and "no epoch had finished; training it from epoch 0" in resumed["output"]
    assert run_facts(out) == want
    for name, extra in (("b", ()), ("c", ("--overwrite",))):
        out = tmp_path / name / "run"
        assert xmfast(*command(out), kill_at=first)["code"] == KILLED
        again = xmfast(*command(out), *extra)
        assert again["code"] == 0, again["output"]
        assert run_facts(out) == want and leftovers(out.parent) == []


def test_finetune_killed_at_each_write_continues(tiny: Path, tmp_path: Path) -> None:
    base = tmp_path / "nmf"
    assert xmfast("train", tiny / "ds", "-m", "nmf", "--no-pretrained", "-o", base, "--epochs", "1",
                  "--device", "cpu")["code"] == 0

    def command(out: Path) -> tuple[Any, ...]:
        return ("finetune", base, "-o", out, "--epochs", "2", "--device", "cpu")

    ref = xmfast(*command(tmp_path / "ref"))
    assert ref["code"] == 0, ref["output"]
    want = run_facts(tmp_path / "ref" / "in")
    for n in kill_points(ref["events"], 3):
        out = tmp_path / f"k{n}"
        assert xmfast(*command(out), kill_at=n)["code"] == KILLED
        done = continue_training(out / "in", *command(out))
        assert done["code"] == 0, (n, done["output"])
        assert run_facts(out / "in") == want, f"kill at {n}"
        assert leftovers(out) == [] and leftovers(tmp_path) == [], f"kill at {n}"


@pytest.mark.slow  # ~35 s: every write of a whole run; train's, finetune's and prepare's kill tests below run in CI
def test_xmfast_run_killed_at_each_write_continues_on_the_next_run(tiny: Path, tmp_path: Path) -> None:
    def experiment(out: Path) -> Path:
        file = out.parent / f"{out.name}.toml"
        file.write_text(f'name = "kills"\ndata = "{tiny / "raw"}"\nout = "{out}"\ntargets = ["in"]\n'
                        f'models = ["pop", "gmf"]\nseeds = [1]\ndevice = "cpu"\n[train]\nepochs = 2\n')
        return file

    ref = xmfast("run", experiment(tmp_path / "ref"), "--no-report")
    assert ref["code"] == 0, ref["output"]
    results = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("results.json"))
    want = {r: json.loads((tmp_path / "ref" / r).read_text()) for r in results}
    assert len(want) == 2
    for n in kill_points(ref["events"], 5):
        out = tmp_path / f"k{n}"
        file = experiment(out)
        assert xmfast("run", file, "--no-report", kill_at=n)["code"] == KILLED
        again = xmfast("run", file, "--no-report")
        assert again["code"] == 0, (n, again["output"])
        assert {r: json.loads((out / r).read_text()) for r in results} == want, f"kill at {n}"
        assert leftovers(out) == [], f"kill at {n}"


# ---- Ctrl-C: one line saying what was saved and the command that continues, status 130 ----------
INTERRUPTED = 130


def interrupted_line(answer: dict[str, Any]) -> str:
    """The one `interrupted:` line a Ctrl-C printed (no traceback, exit status 130)."""
    out = answer["output"]
    assert answer["code"] == INTERRUPTED, answer
    assert "Traceback" not in out and "[exception" not in out, out
    assert out.count("interrupted:") == 1, out
    return out[out.index("interrupted:"):]


def commands_in(line: str) -> list[list[str]]:
    """The commands a message names, in order, as argument lists (without `xmfast`)."""
    import shlex

    return [shlex.split(c) for c in re.findall(r"`xmfast ([^`]*)`", line)]


def test_ctrl_c_in_train_names_what_is_saved_and_the_command_that_continues(tiny: Path, tmp_path: Path) -> None:
    """A SIGINT at write events throughout a training (before the run exists, before its first
    epoch ended, after one): one line, status 130, and the command it names (`train --resume`
    once the run exists, from epoch 0 when no epoch had finished) ends where an uninterrupted
    run does."""
    def command(out: Path) -> tuple[Any, ...]:
        return ("train", tiny / "ds", "-m", "gmf", "-o", out, "--epochs", "2", "--device", "cpu", "--seed", "3")

    ref = xmfast(*command(tmp_path / "ref"))
    want = run_facts(tmp_path / "ref")
    seen = set()
    for n in kill_points(ref["events"], 6):
        out = tmp_path / f"i{n}" / "run"
        line = interrupted_line(xmfast(*command(out), interrupt_at=n))
        if (out / "checkpoints" / "last.pt").is_file():
            done = max(json.loads(t)["epoch"] for t in (out / "metrics.jsonl").read_text().splitlines())
            assert f"run {out} interrupted after epoch {done} of 2; its checkpoint is saved" in line, line
            seen.add("epoch")
        elif (out / "run.json").is_file():
            assert f"run {out} interrupted before its first epoch ended; start it (from epoch 0)" in line, line
            seen.add("created")
        else:
            assert f"no run was saved at {out}" in line, line
            seen.add("nothing")
        (again,) = commands_in(line)
        assert again[:2] == (["train", "--resume"] if (out / "run.json").is_file() else ["train", str(tiny / "ds")])
        done = xmfast(*again)
        assert done["code"] == 0, (n, line, done["output"])
        assert run_facts(out) == want, f"interrupt at {n}"
        assert leftovers(out.parent) == [], f"interrupt at {n}"
    assert seen == {"epoch", "created", "nothing"}


def test_ctrl_c_in_xmfast_run_names_the_stage_and_the_command_that_continues(tiny: Path, tmp_path: Path) -> None:
    def experiment(out: Path) -> Path:
        file = out.parent / f"{out.name}.toml"
        file.write_text(f'name = "ctrl-c"\ndata = "{tiny / "raw"}"\nout = "{out}"\ntargets = ["in"]\n'
                        f'models = ["pop", "gmf"]\nseeds = [1]\ndevice = "cpu"\n[train]\nepochs = 2\n')
        return file

    ref = xmfast("run", experiment(tmp_path / "ref"), "--no-report")
    results = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("results.json"))
    want = {r: json.loads((tmp_path / "ref" / r).read_text()) for r in results}
    lines = []
    # a sample of the stages before the training (prepare, pop), every third event of the training
    for n in sorted(set(kill_points(ref["events"], 20)) | set(range(ref["events"] * 2 // 3, ref["events"] + 1, 8))):
        out = tmp_path / f"i{n}"
        file = experiment(out)
        line = interrupted_line(xmfast("run", file, "--no-report", interrupt_at=n))
        assert line.endswith(f"continue with `xmfast run {file} --no-report`"), line
        assert "stage in/" in line or "no stage had started" in line, line
        lines.append(line)
        (again,) = commands_in(line)
        done = xmfast(*again)
        assert done["code"] == 0, (n, done["output"])
        assert {r: json.loads((out / r).read_text()) for r in results} == want, f"interrupt at {n}"
        assert leftovers(out) == [], f"interrupt at {n}"
    for saved in ("stopped after epoch", "stopped before its first epoch ended", "in/dataset (1 of 3) stopped"):
        assert any(saved in line for line in lines), (saved, lines)
    assert any(re.search(r"stage in/single/s1/gmf \(3 of 3\) stopped after epoch [12] of 2; its checkpoint is saved; "
                         "finished stages are kept", line) for line in lines), lines


def test_ctrl_c_in_finetune_and_prepare(tiny: Path, tmp_path: Path) -> None:
    """finetune: the run it stopped in continues with `train --resume`, the markets not begun with
    `finetune --markets`; prepare: nothing was written, the same command again."""
    base = tmp_path / "nmf"
    assert xmfast("train", tiny / "ds", "-m", "nmf++", "--no-pretrained", "-o", base, "--epochs", "1",
                  "--device", "cpu")["code"] == 0

    def command(out: Path) -> tuple[Any, ...]:
        return ("finetune", base, "-o", out, "--markets", "all", "--epochs", "2", "--device", "cpu")

    ref = xmfast(*command(tmp_path / "ref"))
    assert ref["code"] == 0, ref["output"]
    want = {m: run_facts(tmp_path / "ref" / m) for m in ("in", "uk")}
    seen = set()
    for n in kill_points(ref["events"], 12):
        out = tmp_path / f"i{n}"
        line = interrupted_line(xmfast(*command(out), interrupt_at=n))
        for again in commands_in(line):
            done = xmfast(*again)
            assert done["code"] == 0, (n, line, done["output"])
            seen.add(again[0] if again[0] == "finetune" else " ".join(again[:2]))
        assert {m: run_facts(out / m) for m in ("in", "uk")} == want, f"interrupt at {n}: {line}"
    assert seen == {"finetune", "train --resume"}

    prep = ("prepare", tiny / "raw", "-t", "in", "-s", "uk", "--seed", "5", "-o", tmp_path / "ds")
    ref = xmfast(*prep[:-1], tmp_path / "ds-ref")
    line = interrupted_line(xmfast(*prep, interrupt_at=ref["events"] // 2))
    assert f"nothing was written to {tmp_path / 'ds'}" in line, line
    (again,) = commands_in(line)
    assert again == [str(a) for a in prep] and xmfast(*again)["code"] == 0
    assert dir_bytes(tmp_path / "ds") == dir_bytes(tmp_path / "ds-ref")


def test_ctrl_c_from_outside_stops_the_console_script_with_one_line(tiny: Path, tmp_path: Path) -> None:
    """The `xmfast` script itself, sent SIGINT by another process (as a terminal's Ctrl-C is)
    after its first epoch: status 130, one line, no traceback; the command it names finishes."""
    import signal

    script = shutil.which("xmfast")
    if script is None:
        pytest.skip("the xmfast console script is not installed")
    out = tmp_path / "run"
    proc = subprocess.Popen([script, "train", str(tiny / "ds"), "-m", "gmf", "-o", str(out), "--epochs", "2",
                             "--device", "cpu", "--batch-size", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # as from a terminal, even when CI started the suite with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    lines = []
    for text in proc.stdout:
        lines.append(text)
        if text.startswith("epoch   1"):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == INTERRUPTED, output
    assert "Traceback" not in output and output.count("interrupted:") == 1, output
    (line,) = [t for t in output.splitlines() if t.startswith("interrupted:")]
    assert re.fullmatch(rf"interrupted: run {re.escape(str(out))} interrupted after epoch [12] of 2; its checkpoint "
                        rf"is saved; continue it with `xmfast train --resume {re.escape(str(out))}`", line), line
    done = subprocess.run([script, "train", "--resume", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
