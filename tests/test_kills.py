"""A kill at any moment: `prepare`, `train`, `finetune` and `run` are killed (os._exit(137), as
SIGKILL would) at each file creation and each rename they make, one kill point after another;
then the same command (or `train --resume`, for a run with a finished epoch) must finish with
the results of an uninterrupted run, bit for bit on the CPU, and leave no leftover behind.

Each command runs in a forked child of this (already warm) process, so a kill point costs a
fraction of a second: the child counts write events (open for writing, mkdir, rename, replace)
and dies at the n-th. torch runs single-threaded in the children, as in the references.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills are injected into forked children")

KILLED = 137


def xmfast(*args: Any, kill_at: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Runs `xmfast ARGS` in a forked child; with `kill_at`, the child dies at its kill_at-th
    write event. Returns {"code", "events", "output"} (code 137 when killed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.close(read_end)
            code = _child(write_end, [str(a) for a in args], kill_at)
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            pytest.fail(f"xmfast {' '.join(map(str, args))} hung (kill_at={kill_at})")
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == KILLED:
        return {"code": KILLED, "events": kill_at, "output": ""}
    assert code == 0, f"child failed ({code}): {data[-2000:]!r}"
    return json.loads(data)


def _child(pipe: int, args: list[str], kill_at: int | None) -> int:
    import torch
    from typer.testing import CliRunner

    from xmfast_cli.app import app

    torch.set_num_threads(1)
    count = [0]

    def event() -> None:
        count[0] += 1
        if count[0] == kill_at:
            os._exit(KILLED)

    def counted(fn, writes=lambda *a, **k: True):  # noqa: ANN001, ANN202
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            if writes(*a, **k):
                event()
            return fn(*a, **k)

        return wrapper

    def opens_for_writing(file, mode="r", *a, **k) -> bool:  # noqa: ANN001, ANN002, ANN003
        return isinstance(mode, str) and any(c in mode for c in "wxa+")

    builtins.open = io.open = counted(builtins.open, opens_for_writing)
    os.replace, os.rename, os.mkdir = counted(os.replace), counted(os.rename), counted(os.mkdir)
    result = CliRunner().invoke(app, args)
    output = " ".join(result.output.split())[-3000:]  # rich wraps lines at the terminal width
    os.write(pipe, json.dumps({"code": result.exit_code, "events": count[0], "output": output}).encode())
    return 0


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
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # before any fork: the children then never touch a thread pool
    root = tmp_path_factory.mktemp("kills")
    assert xmfast("synth", root / "raw", "--markets", "uk,in", "--ratings", "3000", "--items", "200",
                  "--topics", "10")["code"] == 0
    assert xmfast("prepare", root / "raw", "-t", "in", "-s", "uk", "-o", root / "ds")["code"] == 0
    # Imports done once here, so that every forked child starts warm. No torch computation here:
    # a child forked after one could hang on a thread pool's lock.
    import torch._dynamo  # noqa: F401 - imported by the first optimizer: 10 s
    from xmfast import experiment, report, training  # noqa: F401
    from xmfast_cli import app, render  # noqa: F401

    yield root
    torch.set_num_threads(threads)


def kill_points(total: int, stride: int) -> range:
    return range(1, total + 1, stride)


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
    assert xmfast("prepare", tiny / "raw", "-t", "in", "-s", "uk", "-o", out)["code"] == 0  # the dataset it replaces
    old = dir_bytes(out)
    command = ("prepare", tiny / "raw", "-t", "in", "-s", "uk", "--seed", "7", "-o", out, "--overwrite")
    for n in kill_points(ref["events"], 1):
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
        (out.parent / "ds").rename(out.parent / "new")  # start the next kill from the old dataset again
        assert xmfast("prepare", tiny / "raw", "-t", "in", "-s", "uk", "-o", out)["code"] == 0
        import shutil

        shutil.rmtree(out.parent / "new")


def test_train_killed_at_each_write_resumes_to_the_same_results(tiny: Path, tmp_path: Path) -> None:
    def command(out: Path) -> tuple[Any, ...]:
        return ("train", tiny / "ds", "-m", "gmf", "-o", out, "--epochs", "2", "--device", "cpu", "--seed", "3")

    ref = xmfast(*command(tmp_path / "ref"))
    assert ref["code"] == 0 and ref["events"] > 15, ref["output"]
    want = run_facts(tmp_path / "ref")
    for n in kill_points(ref["events"], 1):
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
    for n in kill_points(ref["events"], 2):
        out = tmp_path / f"k{n}"
        assert xmfast(*command(out), kill_at=n)["code"] == KILLED
        done = continue_training(out / "in", *command(out))
        assert done["code"] == 0, (n, done["output"])
        assert run_facts(out / "in") == want, f"kill at {n}"
        assert leftovers(out) == [] and leftovers(tmp_path) == [], f"kill at {n}"


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
    for n in kill_points(ref["events"], 2):
        out = tmp_path / f"k{n}"
        file = experiment(out)
        assert xmfast("run", file, "--no-report", kill_at=n)["code"] == KILLED
        again = xmfast("run", file, "--no-report")
        assert again["code"] == 0, (n, again["output"])
        assert {r: json.loads((out / r).read_text()) for r in results} == want, f"kill at {n}"
        assert leftovers(out) == [], f"kill at {n}"
