"""Start-up of the `xmfast` commands (issue 25, item 2).

Every command runs as a fresh process on tiny inputs (the embedded sample, target in: a prepared
dataset, a pop run, a cooc run, a one-epoch GMF run and a scores run, made once under
``benchmarks/_work/startup``), so its wall time is its start-up plus a job of milliseconds.
The rounds are interleaved (each round runs every command once) so that load from other
processes falls on all of them alike; the table gives the median of ``--runs`` rounds beside
``python -c pass`` and ``python -c "import torch"`` measured in the same rounds, whether the
command imported torch (``python -X importtime``), and its heaviest top-level imports.

Targets (issue 25: "`xmfast evaluate RUN` takes 2.3 s for a 0.19 s job"): a command without a
neural model starts in under 0.3 s; one with a neural model within 0.3 s of ``python -c "import
torch"``. A command's start-up is its wall time less its job, the same command run again in the
same process once everything is imported (median of at least 5); both are in the table.

The packages' bytecode is compiled first, as an installed wheel has it: a development shell with
``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile xmfast and xmfast_cli from source in every
process (40-60 ms here). ``--before DIR`` also runs the commands of another checkout (a git
worktree with its extension built) in the same rounds, through ``PYTHONPATH``, for before/after
ratios taken side by side.

    python benchmarks/bench_startup.py [--runs 5] [--before ../xmfast-old]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import SAMPLE_DATA, WORK, OtherLoad, console, fmt_s, median, print_machine, print_targets, spread, table
from bench_prepare import import_profile

SCRATCH = WORK / "startup"
ALONE_S = 0.3  # a command without a neural model
OVER_TORCH_S = 0.3  # a command with one, beyond `import torch`


def xmfast_script() -> str:
    script = Path(sys.executable).parent / "xmfast"
    return str(script) if script.is_file() else shutil.which("xmfast") or "xmfast"


# typer, rich (every table and error line), numpy (every command that reads a dataset): what a
# command imports before xmfast (typer 0.29's pydantic no longer: xmfast_cli converts the values)
FLOOR = ("typer", "rich.console", "numpy", "typer, rich.console, numpy")
ENTRY = "import sys; from xmfast_cli.app import main; sys.exit(main())"  # what the `xmfast` script runs


def compile_packages(*roots: Path) -> None:
    """Write the .pyc files of xmfast and xmfast_cli under each checkout `root` (or the installed
    packages), as pip does when it installs a wheel."""
    import compileall
    import importlib.util

    for root in roots or (None,):
        for pkg in ("xmfast", "xmfast_cli"):
            if root is None:
                spec = importlib.util.find_spec(pkg)
                where = Path(spec.origin).parent if spec and spec.origin else None
            else:
                where = root / pkg if pkg == "xmfast" else root / "cli" / "purelib" / pkg
            if where is not None and where.is_dir():
                compileall.compile_dir(str(where), quiet=1)


def timed_run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one command as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=SCRATCH, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def make_inputs(xmfast: str) -> dict[str, str]:
    """The tiny inputs, made once (a run that is already there is kept)."""
    import numpy as np

    ds, made = SCRATCH / "ds", {}
    steps = [
        (ds, ["prepare", str(SAMPLE_DATA), "-t", "in", "-s", "all", "-o", str(ds)]),
        (SCRATCH / "pop", ["train", str(ds), "-m", "pop", "-o", str(SCRATCH / "pop")]),
        (SCRATCH / "cooc", ["train", str(ds), "-m", "cooc", "-o", str(SCRATCH / "cooc")]),
        (SCRATCH / "gmf", ["train", str(ds), "-m", "gmf", "--epochs", "1", "-o", str(SCRATCH / "gmf")]),
    ]
    SCRATCH.mkdir(parents=True, exist_ok=True)
    for out, argv in steps:
        if not out.exists():
            timed_run([xmfast, *argv])
    scores = SCRATCH / "scores.npy"
    if not (SCRATCH / "mine").exists():
        from xmfast.dataset import PreparedDataset

        n = PreparedDataset.load(ds).test.candidates.shape
        np.save(scores, np.random.default_rng(0).random(n))
        timed_run([xmfast, "evaluate", str(ds), "--scores", str(scores), "--save-run", str(SCRATCH / "mine")])
    users = (ds / "users.txt").read_text(encoding="utf-8").split()
    made.update(ds=str(ds), scores=str(scores), user=users[0])
    return made


def commands(x: dict[str, str]) -> list[tuple[str, list[str], bool]]:
    """(label, xmfast arguments, whether the command runs a neural model)."""
    s = str(SCRATCH)
    return [
        ("xmfast --help", ["--help"], False),
        ("xmfast models", ["models"], False),
        ("xmfast evaluate DS --scores S.npy", ["evaluate", x["ds"], "--scores", x["scores"]], False),
        ("xmfast compare POP MINE", ["compare", f"{s}/pop", f"{s}/mine"], False),
        ("xmfast report POP MINE --no-plots", ["report", f"{s}/pop", f"{s}/mine", "-o", f"{s}/report.md", "--no-plots"],
         False),
        ("xmfast recommend POP --user U", ["recommend", f"{s}/pop", "--user", x["user"]], False),
        ("xmfast recommend COOC --user U", ["recommend", f"{s}/cooc", "--user", x["user"]], False),
        ("xmfast evaluate POP", ["evaluate", f"{s}/pop"], False),
        ("xmfast evaluate GMF", ["evaluate", f"{s}/gmf"], True),
        ("xmfast recommend GMF --user U", ["recommend", f"{s}/gmf", "--user", x["user"]], True),
    ]


# The same command run again in one process once everything is imported: its job alone. A
# command's start-up is its wall time less this (the "2.3 s for a 0.19 s job").
WARM = """
import contextlib, io, json, sys, time
from xmfast_cli.app import main
argv, reps = json.loads(sys.argv[1]), int(sys.argv[2])
took = []
for _ in range(reps + 1):
    sys.argv = ["xmfast", *argv]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main()
        except SystemExit as e:  # main() ends every command with sys.exit
            code = e.code
    took.append(time.perf_counter() - t0)
    if code:
        raise SystemExit(f"exit status {code}")
print(json.dumps(took[1:]))
"""


def job_times(python: str, argv: list[str], reps: int) -> list[float]:
    """Seconds of each of `reps` runs of the command after a first, in one process."""
    import json

    proc = subprocess.run([python, "-c", WARM, json.dumps(argv), str(reps)], cwd=SCRATCH, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"in-process runs of {argv} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def build_times(reps: int) -> dict[str, list[float]]:
    """Typer's building of the click commands, in this process, interleaved: the whole app (what
    every command paid before `_app_for`) against the app of the one command run. In-process
    and repeated, so the figure is not lost in the spread of whole-process wall times."""
    import typer

    from xmfast_cli.app import _app_for, app

    out: dict[str, list[float]] = {"whole app (16 commands)": [], "one command (evaluate)": []}
    for _ in range(reps):
        for label, which in (("whole app (16 commands)", app), ("one command (evaluate)", _app_for(["evaluate"]))):
            t0 = time.perf_counter()
            typer.main.get_command(which)
            out[label].append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument("--before", type=Path, help="another checkout whose commands run in the same rounds")
    args = ap.parse_args()
    print_machine()
    python, xmfast = sys.executable, xmfast_script()
    compile_packages()
    inputs = make_inputs(xmfast)
    load = OtherLoad()
    cmds = commands(inputs)
    rows = [("python -c pass", [python, "-c", "pass"], None),
            ("python -c 'import torch'", [python, "-c", "import torch"], None)]

    # the floor every command pays before its own work: the libraries the CLI is built on
    floor = [(f"python -c 'import {m}'", [python, "-c", f"import {m}"], None) for m in FLOOR]
    # as the `xmfast` script runs them, minus its argv[0] rewrite: the --before rows run the same way
    rows += [(label, [python, "-c", ENTRY, *argv], None) for label, argv, _ in cmds]
    if args.before is not None:
        old = args.before.resolve()
        compile_packages(old)
        env = {**os.environ, "PYTHONPATH": f"{old}{os.pathsep}{old / 'cli' / 'purelib'}"}
        rows += [(f"before: {label}", [python, "-c", ENTRY, *argv], env) for label, argv, _ in cmds]
    rows += floor
    for _, cmd, env in rows:  # warm-up: page cache
        timed_run(cmd, env)
    times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    cpu: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    for _ in range(args.runs):
        for label, cmd, env in rows:
            wall, used = timed_run(cmd, env)
            times[label].append(wall)
            cpu[label].append(used)
    torch_s = median(times["python -c 'import torch'"])

    tab = table(f"Start-up: each command as a fresh process on the embedded sample, median of {args.runs} "
                "interleaved rounds; job: the same command again in one process; start-up = wall - job",
                ["command", "wall", "min – max", "CPU", "torch", "imports", "heaviest imports (-X importtime)", "job",
                 "start-up", "target (start-up)"])
    for label, cmd, _ in rows[:2]:
        tab.add_row(label, fmt_s(median(times[label])), spread(times[label]), fmt_s(median(cpu[label])),
                    "yes" if "torch" in cmd[-1] else "no", "", "", "", "", "", end_section=label != "python -c pass")
    verdicts: dict[str, bool] = {}
    for label, argv, neural in cmds:
        prof = import_profile(python, xmfast, argv, SCRATCH)
        torch = "torch" in prof["heavy"]
        t = median(times[label])
        job = median(job_times(python, argv, max(5, args.runs)))
        start = t - job
        ok = start - torch_s < OVER_TORCH_S if neural else start < ALONE_S and not torch
        target = f"start-up < import torch + {OVER_TORCH_S} s" if neural else f"start-up < {ALONE_S} s, no torch"
        verdicts[f"{label}: {target}"] = ok
        heavy = ", ".join(n for n, _ in prof["top"][:3])
        tab.add_row(label, fmt_s(t), spread(times[label]), fmt_s(median(cpu[label])), "yes" if torch else "no",
                    fmt_s(prof["import_s"]), heavy, fmt_s(job), fmt_s(start),
                    (f"{'+' if start >= torch_s else '-'}{fmt_s(abs(start - torch_s))} " if neural else "")
                    + ("met" if ok else "NOT met"))
    console.print(tab)
    fl = table("The floor: the CLI's libraries imported alone, the same rounds (median wall)",
               ["import", "wall", "min – max"])
    for label, _, _ in floor:
        fl.add_row(label, fmt_s(median(times[label])), spread(times[label]))
    console.print(fl)
    built = build_times(max(9, args.runs))
    bt = table("Building the commands before parsing (in-process, interleaved, median)", ["typer builds", "median",
                                                                                          "min – max"])
    for label, values in built.items():
        bt.add_row(label, fmt_s(median(values)), spread(values))
    console.print(bt)
    if args.before is not None:
        cmp = table(f"Before ({args.before}) and now, the same rounds: median wall", ["command", "before", "now",
                                                                                    "now / before"])
        for label, _, _ in cmds:
            b, a = median(times[f"before: {label}"]), median(times[label])
            cmp.add_row(label, fmt_s(b), fmt_s(a), f"{a / b:.2f}")
        console.print(cmp)
    print_targets(verdicts)
    load.report()


if __name__ == "__main__":
    main()
