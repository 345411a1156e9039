"""The Dask executor's cost per stage (issue 20, item 2): `xmfast run EXP` against `xmfast run
EXP --executor dask --address ADDR` on a plan of cheap stages (pop and cooc over many seeds: a
few milliseconds of work each), so what is left of the difference is the executor's own
overhead (submitting a task, shipping the stage to a worker, its ledger check there, the
round trip of its outcome and progress).

The cluster is a loopback scheduler with one worker process of one thread (started here with
`distributed.LocalCluster`), so no stage runs beside another and the difference is all
overhead; it is warmed by one run first (a worker's first stage imports xmfast and its
dependencies once per worker process). Serial and Dask runs alternate; each is the whole
command from an empty output directory; the figure is (median Dask − median serial) / stages.

Target: below 1 s per stage.

    python benchmarks/bench_cluster.py                 # 20 seeds: 40 stages, 2 rounds
    python benchmarks/bench_cluster.py --seeds 40 --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import SAMPLE_DATA, WORK, OtherLoad, console, median, print_machine, print_targets, table

GRID = ('name = "cheap"\ndata = "{data}"\nout = "{out}"\ntargets = ["in"]\nmodels = ["pop", "cooc"]\n'
        'seeds = [{seeds}]\ndevice = "cpu"\n')


def run(experiment: Path, out: Path, address: str | None) -> float:
    """Wall seconds of the whole `xmfast run` command from an empty `out`."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "xmfast_cli.app", "run", str(experiment), "--no-report"]
    command += ["--executor", "dask", "--address", address] if address else []
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=out.parent)  # outside the source tree
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds of pop and cooc: 2 stages each")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (one serial and one Dask run each)")
    args = parser.parse_args()
    from distributed import LocalCluster

    print_machine()
    load = OtherLoad()
    work = WORK / "cluster"
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    experiment = work / "cheap.toml"
    experiment.write_text(GRID.format(data=SAMPLE_DATA, out=out, seeds=", ".join(map(str, range(1, args.seeds + 1)))),
                          encoding="utf-8")
    stages = 2 * args.seeds  # and the dataset, made in both runs alike
    times: dict[str, list[float]] = {"serial": [], "dask": []}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        console.print(f"[dim]warm-up run on {address}: {run(experiment, out, address):.1f} s[/]", highlight=False)
        for r in range(args.repeat):
            for kind in (("serial", "dask") if r % 2 == 0 else ("dask", "serial")):  # alternating
                seconds = run(experiment, out, address if kind == "dask" else None)
                times[kind].append(seconds)
                console.print(f"[dim]round {r + 1}: {kind} {seconds:.1f} s[/]", highlight=False)
    per_stage = (median(times["dask"]) - median(times["serial"])) / stages
    t = table(f"xmfast run: {stages} cheap stages (pop, cooc × {args.seeds} seeds) and the dataset, serial against "
              f"a one-worker loopback Dask cluster (wall time, fresh output)",
              ["command", "runs", "median", "overhead per stage"])
    t.add_row("xmfast run", ", ".join(f"{s:.1f} s" for s in times["serial"]), f"{median(times['serial']):.1f} s", "–")
    t.add_row("xmfast run --executor dask", ", ".join(f"{s:.1f} s" for s in times["dask"]),
              f"{median(times['dask']):.1f} s", f"{per_stage:.3f} s")
    console.print(t)
    load.report()
    print_targets({"the Dask executor's overhead below 1 s per stage": per_stage < 1.0})


if __name__ == "__main__":
    main()
