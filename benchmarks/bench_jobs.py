"""Parallel stages (issue 20, item 1): `xmfast run EXP` against `xmfast run EXP --jobs N`.

Each run is the whole command as a user types it (a subprocess: CLI start, planning, every
stage, no report), from a fresh output directory, serial and parallel alternating so that a
change in the machine's load falls on both; the figure is the median wall time of each. Every
run writes to the same directory (moved aside afterwards), so the last serial and the last
parallel run can be compared file by file: they must be identical byte for byte, the per-epoch
timings of metrics.jsonl and the ledger aside.

Target: the quickstart grid at least 1.6× faster with `--jobs 2` on two CPU cores.

    python benchmarks/bench_jobs.py                                   # quickstart, --jobs 2, 2 rounds
    python benchmarks/bench_jobs.py --seeds 1                         # the quickstart's models with one seed
    python benchmarks/bench_jobs.py --experiment FILE.toml --jobs 4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, WORK, OtherLoad, console, median, print_machine, print_targets, table

TIMINGS = ("seconds", "instances_per_s")


def files(out: Path) -> dict[str, bytes]:
    """Every file under `out`, the wall-clock figures of metrics.jsonl and the ledger left out."""
    got = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.name == "metrics.jsonl":
            data = b"\n".join(json.dumps({k: v for k, v in json.loads(line).items() if k not in TIMINGS}).encode()
                              for line in data.splitlines())
        elif p.parent.name == ".stages":
            data = json.dumps({k: v for k, v in json.loads(data).items() if k not in TIMINGS}).encode()
        got[str(p.relative_to(out))] = data
    return got


def stage_seconds(out: Path) -> float:
    """The seconds of every stage of a run, from its ledger: its work, whatever ran at once."""
    return sum(json.loads(p.read_text()).get("seconds") or 0.0 for p in (out / ".stages").glob("*.json"))


def run(experiment: Path, out: Path, jobs: int) -> float:
    """Wall seconds of `xmfast run experiment --out out [--jobs N]` from an empty `out`."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "xmfast_cli.app", "run", str(experiment.resolve()), "--out", str(out),
               "--no-report"]
    command += ["--jobs", str(jobs)] if jobs > 1 else []
    t0 = time.perf_counter()
    # from outside the source tree, whose xmfast/ would come first on the path of `python -m`
    done = subprocess.run(command, capture_output=True, text=True, cwd=out.parent)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds


def with_seeds(experiment: Path, seeds: str, work: Path) -> Path:
    """A copy of `experiment` in `work` with other seeds (and its data path made absolute)."""
    text = experiment.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^seeds = .*$", f"seeds = [{seeds}]", text)
    text = re.sub(r'(?m)^data = "([^"]*)"', lambda m: f'data = "{(experiment.parent / m[1]).resolve()}"', text)
    copy = work / f"{experiment.stem}-seeds-{seeds.replace(',', '-')}.toml"
    copy.write_text(text, encoding="utf-8")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "quickstart.toml")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="rounds (one serial and one parallel run each)")
    parser.add_argument("--seeds", help="run the experiment with these seeds instead (e.g. 1, or 1,2)")
    args = parser.parse_args()

    print_machine()
    load = OtherLoad()
    work = WORK / "jobs"
    work.mkdir(parents=True, exist_ok=True)
    if args.seeds:
        args.experiment = with_seeds(args.experiment, args.seeds, work)
    out = work / "out"
    times: dict[int, list[float]] = {1: [], args.jobs: []}
    for r in range(args.repeat):
        for jobs in ((1, args.jobs) if r % 2 == 0 else (args.jobs, 1)):  # alternating
            seconds = run(args.experiment, out, jobs)
            times[jobs].append(seconds)
            console.print(f"[dim]round {r + 1}: {'serial' if jobs == 1 else f'--jobs {jobs}'} {seconds:.1f} s[/]",
                          highlight=False)
            kept = work / ("serial" if jobs == 1 else "parallel")
            shutil.rmtree(kept, ignore_errors=True)
            out.rename(kept)
    serial, parallel = files(work / "serial"), files(work / "parallel")
    same = serial == parallel
    differ = sorted(k for k in serial.keys() | parallel.keys() if serial.get(k) != parallel.get(k))

    speedup = median(times[1]) / median(times[args.jobs])
    t = table(f"xmfast run {args.experiment.name}: serial against --jobs {args.jobs} (wall time, fresh output)",
              ["command", "runs", "median", "speed-up"])
    t.add_row("xmfast run", ", ".join(f"{s:.1f} s" for s in times[1]), f"{median(times[1]):.1f} s", "1.00×")
    t.add_row(f"xmfast run --jobs {args.jobs}", ", ".join(f"{s:.1f} s" for s in times[args.jobs]),
              f"{median(times[args.jobs]):.1f} s", f"{speedup:.2f}×")
    console.print(t)
    console.print(f"files of the last serial and parallel runs: {len(serial)} and {len(parallel)}, "
                  + ("identical byte for byte (timings aside)" if same else f"[bold red]{len(differ)} differ[/]: "
                     + ", ".join(differ[:10])), highlight=False)
    # The most --jobs could give: the parallel run's stages (one thread each) packed on the jobs
    # without a gap; a serial run already giving its big stages every core leaves less to gain.
    work_serial, work_parallel = stage_seconds(work / "serial"), stage_seconds(work / "parallel")
    packed = work_parallel / args.jobs
    console.print(f"stage time of the last runs: serial {work_serial:.1f} s (every core each), parallel "
                  f"{work_parallel:.1f} s (one of {args.jobs} shares each); the parallel stages packed without "
                  f"a gap on {args.jobs} jobs would take {packed:.1f} s: a bound of "
                  f"{median(times[1]) / packed:.2f}× (its wall time {median(times[args.jobs]):.1f} s: "
                  f"{median(times[args.jobs]) - packed:.1f} s of start-up, planning and waiting)", highlight=False)
    load.report()
    print_targets({f"--jobs {args.jobs} at least 1.6× faster than serial": speedup >= 1.6,
                   "the same files as the serial run": same})


if __name__ == "__main__":
    main()
