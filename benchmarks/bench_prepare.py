"""Benchmark of `prepare` on the real XMarket 5-core files (issue 3).

Targets, for target uk with all 6 other markets as sources, both protocols (forec, acmr):

* the work itself, ``xmfast.prepare.prepare(data_dir, out_dir, config)``, under 0.3 s
  (median of repeats; also shown: in memory with ``out_dir=None``, and the write alone);
* the whole ``xmfast prepare DATA --target uk --sources all --out DIR --overwrite`` process under
  1 s (median wall time of several subprocess runs), without importing torch.

Falls back to the embedded sample ``data/sample`` (target in) when the real files are missing.

    python benchmarks/bench_prepare.py [--data DIR] [--repeat 9] [--cli-runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    print_targets,
    OtherLoad,
    REAL_DATA, SAMPLE_DATA, WORK, console, fmt_s, median, print_machine, spread, table, timed, verdict,
)

from xmfast.dataset import PreparedDataset
from xmfast.prepare import PrepareConfig, prepare

REAL_MARKETS = ("ca", "de", "fr", "in", "jp", "mx", "uk")
WORK_TARGET_S = 0.3
CLI_TARGET_S = 1.0
HEAVY = ("torch", "pandas", "scipy", "sklearn", "tensorflow", "jax", "numba", "polars", "pyarrow")

# Runs the real CLI entry point in a fresh interpreter with a meta-path spy that records every
# attempt to import a heavy library (so the check means something even where torch is not
# installed), then writes what it saw as JSON.
SPY = r"""
import json, os, sys
HEAVY = set(os.environ["XMF_HEAVY"].split(","))
attempted = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            attempted.append(name)
        return None
sys.meta_path.insert(0, Spy())
sys.argv = ["xmfast", *json.loads(os.environ["XMF_ARGS"])]
code = 0
try:
    from xmfast_cli.app import main
    main()
except SystemExit as e:
    code = e.code or 0
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    with open(os.environ["XMF_REPORT"], "w") as f:
        json.dump({"attempted": attempted, "loaded": loaded, "modules": len(sys.modules), "code": code}, f)
"""


def pick_data(data: Path | None) -> tuple[Path, str, str]:
    """(data directory, target market, note)."""
    if data is not None:
        return data, "uk", f"data from {data}"
    if all((REAL_DATA / f"{m}_5core.txt").is_file() for m in REAL_MARKETS):
        return REAL_DATA, "uk", f"real XMarket Electronics 5-core files in {REAL_DATA}"
    return SAMPLE_DATA, "in", (
        f"[bold yellow]real XMarket files not found in {REAL_DATA}: falling back to the embedded "
        f"synthetic sample {SAMPLE_DATA} (target in); the targets are defined on the real files[/]"
    )


def time_steps(data: Path, out: Path | None, config: PrepareConfig) -> dict[str, float]:
    """One prepare() call; wall time of each step reported through on_step, and the total."""
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    prepare(data, out, config, overwrite=True, on_step=lambda name: marks.append((name, time.perf_counter())))
    t1 = time.perf_counter()
    out_steps = {"total": t1 - t0}
    ends = [t for _, t in marks[1:]] + [t1]
    for (name, start), end in zip(marks, ends):
        out_steps[name] = end - start
    return out_steps


def cli_wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        console.print(f"[red]command failed ({proc.returncode}):[/] {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        raise SystemExit(1)
    return wall


def import_profile(python: str, script: str, args: list[str], cwd: Path) -> dict:
    """`python -X importtime` of the CLI command: module count, heaviest imports, total import time."""
    proc = subprocess.run(
        [python, "-X", "importtime", script, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        head, cum_us, name = line.split("|", 2)
        self_us = head.split(":", 1)[1]
        rows.append((name[1:], int(self_us), int(cum_us)))  # name keeps its nesting indent
    names = [r[0].strip() for r in rows]
    top_level = [r for r in rows if not r[0].startswith(" ")]
    return {
        "code": proc.returncode,
        "modules": len(rows),
        "heavy": sorted({n for n in names if n.split(".")[0] in HEAVY}),
        "import_s": sum(r[2] for r in top_level) / 1e6,
        "top": sorted(((r[0].strip(), r[2] / 1e6) for r in top_level), key=lambda x: -x[1])[:6],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="data directory (default: the real XMarket files)")
    ap.add_argument("--target", default=None, help="target market (default uk, or in for the sample)")
    ap.add_argument("--protocols", default="forec,acmr")
    ap.add_argument("--repeat", type=int, default=9, help="timed in-process repeats (median reported)")
    ap.add_argument("--cli-runs", type=int, default=5, help="timed CLI subprocess runs (median reported)")
    args = ap.parse_args()

    print_machine()
    load = OtherLoad()
    data, target, note = pick_data(args.data.resolve() if args.data else None)
    target = args.target or target
    console.print(note, highlight=False)
    WORK.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir=WORK))
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    python = sys.executable
    xmfast_script = str(Path(python).parent / "xmfast")
    if not Path(xmfast_script).is_file():
        xmfast_script = shutil.which("xmfast") or "xmfast"

    lib = table(
        f"prepare(): target {target}, sources all — in-process, median of {args.repeat} (after 1 warm-up)",
        ["protocol / step", "median", "min – max", f"target < {WORK_TARGET_S} s"],
    )
    cli = table(
        f"`xmfast prepare … --out DIR --overwrite` as a subprocess — median wall of {args.cli_runs}",
        ["command", "median", "min – max", f"target < {CLI_TARGET_S} s"],
    )
    verdicts: dict[str, bool] = {}
    sizes = {}
    try:
        for protocol in protocols:
            config = PrepareConfig(target=target, sources="all", protocol=protocol)  # type: ignore[arg-type]
            out = scratch / f"prep-{protocol}"
            ds = prepare(data, None, config)  # warm-up (page cache, imports)
            c = ds.manifest["counts"]
            sizes[protocol] = (len(ds.markets), c["ratings"], c["train_rows"], c["evaluated_groups"])
            mem = [time_steps(data, None, config) for _ in range(args.repeat)]
            prepare(data, out, config, overwrite=True)  # warm-up of the write path
            disk = [time_steps(data, out, config) for _ in range(args.repeat)]
            save_dir = scratch / f"save-{protocol}"
            saves = [timed(lambda: ds.save(save_dir, overwrite=True))[0] for _ in range(args.repeat)]
            loads = [timed(lambda: PreparedDataset.load(save_dir))[0] for _ in range(args.repeat)]

            ok = median([d["total"] for d in disk]) < WORK_TARGET_S
            verdicts[f"prepare() {protocol}"] = ok
            lib.add_row(f"[bold]{protocol}: prepare(data, out_dir)[/]", fmt_s(median([d["total"] for d in disk])),
                        spread([d["total"] for d in disk]), verdict(ok))
            for step in ("read", "filter", "split", "write"):
                xs = [d[step] for d in disk]
                lib.add_row(f"  step {step}" + (" (save + reload)" if step == "write" else ""), fmt_s(median(xs)),
                            spread(xs), "")
            xs = [d["total"] for d in mem]
            lib.add_row(f"{protocol}: prepare(data, None) in memory", fmt_s(median(xs)), spread(xs),
                        verdict(median(xs) < WORK_TARGET_S))
            lib.add_row("  PreparedDataset.save() alone", fmt_s(median(saves)), spread(saves), "")
            lib.add_row("  PreparedDataset.load() alone", fmt_s(median(loads)), spread(loads), "", end_section=True)

        # --- the CLI process ------------------------------------------------------------
        baselines = [
            ("python -c pass (interpreter start)", [python, "-c", "pass"]),
            ("python -c 'import xmfast'", [python, "-c", "import xmfast"]),
            ("xmfast --version (CLI start)", [xmfast_script, "--version"]),
        ]
        for label, cmd in baselines:
            cli_wall(cmd, scratch)
            xs = [cli_wall(cmd, scratch) for _ in range(args.cli_runs)]
            cli.add_row(label, fmt_s(median(xs)), spread(xs), "")
        for protocol in protocols:
            out = scratch / f"cli-{protocol}"
            cmd = [xmfast_script, "prepare", str(data), "--target", target, "--sources", "all",
                   "--protocol", protocol, "--out", str(out), "--overwrite"]
            cli_wall(cmd, scratch)  # warm-up
            xs = [cli_wall(cmd, scratch) for _ in range(args.cli_runs)]
            ok = median(xs) < CLI_TARGET_S
            verdicts[f"CLI {protocol}"] = ok
            cli.add_row(f"xmfast prepare … --protocol {protocol}", fmt_s(median(xs)), spread(xs), verdict(ok))

        # --- torch must not be imported on the prepare path ---------------------------------
        cli_args = ["prepare", str(data), "--target", target, "--sources", "all", "--protocol", protocols[0],
                    "--out", str(scratch / "cli-spy"), "--overwrite"]
        report_path = scratch / "spy.json"
        env = dict(os.environ, XMF_HEAVY=",".join(HEAVY), XMF_ARGS=json.dumps(cli_args), XMF_REPORT=str(report_path))
        subprocess.run([python, "-c", SPY], cwd=scratch, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        spy = json.loads(report_path.read_text())
        prof = import_profile(python, xmfast_script, cli_args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    sizes_txt = "; ".join(
        f"{p}: {m} markets, {r:,} ratings, {t:,} training rows, {g:,} evaluated groups" for p, (m, r, t, g) in sizes.items()
    )
    console.print(f"[dim]{sizes_txt}[/]", highlight=False)
    console.print(lib)
    console.print(cli)

    no_torch = spy["code"] == 0 and not spy["attempted"] and not spy["loaded"] and not prof["heavy"] and prof["code"] == 0
    verdicts["no torch import in `xmfast prepare`"] = no_torch
    imp = table("Imports of `xmfast prepare` (python -X importtime, and a meta-path spy)", ["check", "value"])
    imp.add_row("modules imported", f"{prof['modules']} (sys.modules at exit: {spy['modules']})")
    imp.add_row("import time, top-level cumulative", fmt_s(prof["import_s"]))
    imp.add_row("heaviest top-level imports", ", ".join(f"{n} {fmt_s(s)}" for n, s in prof["top"]))
    imp.add_row(f"attempts to import {'/'.join(HEAVY[:3])}/…", ", ".join(spy["attempted"]) or "none")
    imp.add_row("heavy modules loaded", ", ".join(sorted(set(spy["loaded"]) | set(prof["heavy"]))) or "none")
    imp.add_row("torch not imported", verdict(no_torch))
    console.print(imp)

    print_targets(verdicts)

    load.report()

if __name__ == "__main__":
    main()
