"""Scale benchmark (issue 3): a synthetic set the size of the full XMarket (50M ratings, 18
markets) goes through parse, split and evaluation negatives in under 60 s on 2 cores with
under 6 GB peak memory. Reports the throughput of each step and training-negative samples/s.

The data are generated once with ``xmfast.synth.synthesize`` into ``benchmarks/_work/`` (cached:
generation is skipped when ``synth.json`` matches the configuration). The measured pipeline runs
in a child process, so its peak RSS is its own (VmHWM read inside the child after each step, and
``ru_maxrss`` of that child from ``wait4``):

  parse      xmfast.prepare.load_inputs     (discover + core.read_ratings: parse, intern, blake3)
  filter     xmfast.prepare.filter_ratings  (drop_markets + k-core (none by default) + compact)
  split      xmfast.prepare.split_ratings   (core.leave_one_out, core.market_items, gathering rows)
  candidates xmfast.prepare.sample_candidates (core.eval_candidates), after the table is freed
  train neg  dataset.train_negative_sampler(k=4) + sample_into() per epoch (reported separately)

These calls (and the `del` of the rating table between split and candidates) are exactly what
``prepare(data_dir, None, config)`` does.

    python benchmarks/bench_scale.py                       # 50M ratings, 1.5M items, forec
    python benchmarks/bench_scale.py --ratings 5000000     # quicker
    python benchmarks/bench_scale.py --protocols forec,acmr
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from _common import (
    print_targets,
    OtherLoad,
    WORK, console, dir_bytes, ensure_synth, fmt_bytes, fmt_mibs, fmt_rate, fmt_s, print_machine, synth_dir, table, verdict,
    vm_hwm_bytes, vm_rss_bytes,
)

TIME_TARGET_S = 60.0
MEM_TARGET_B = 6e9  # "6 GB"; GiB figures are printed as well
BYTES_PER_RATING = 60  # about 58 in the synthetic files; for the disk-space check


# ---------------------------------------------------------------------------------------------
# child: the measured pipeline
# ---------------------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import numpy as np

    from xmfast import core
    from xmfast.prepare import PrepareConfig, filter_ratings, load_inputs, sample_candidates, split_ratings

    calls: dict[str, float] = {}
    call_mem: dict[str, tuple[int, int]] = {}  # name -> (RSS at entry, VmHWM at exit) of its last call

    def spy(name: str) -> None:
        """Times every call of core.<name> (the library looks functions up on the module)."""
        original = getattr(core, name)

        def wrapper(*a, **kw):
            rss = vm_rss_bytes() or 0
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                calls[name] = calls.get(name, 0.0) + time.perf_counter() - t0
                call_mem[name] = (rss, vm_hwm_bytes() or 0)

        setattr(core, name, wrapper)

    for name in ("read_ratings", "kcore_mask", "compact_ids", "leave_one_out", "market_items", "eval_candidates"):
        spy(name)

    data = Path(args.child)
    markets = [m for m in core.XMARKET_MARKETS if (data / f"{m}_5core.txt").is_file()]
    # the largest market (first in synth order) is the target, all others are sources
    config = PrepareConfig(target=args.target or markets[0], sources="all", protocol=args.protocol)
    steps: list[dict] = []
    base_hwm = vm_hwm_bytes()

    def cpu() -> tuple[float, float, int]:
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime, u.ru_stime, u.ru_minflt + u.ru_majflt

    def step(name: str, fn):
        before = dict(calls)
        c0 = cpu()
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
        c1 = cpu()
        inner = {k: v - before.get(k, 0.0) for k, v in calls.items() if v - before.get(k, 0.0) > 0}
        steps.append({"step": name, "s": seconds, "core": inner, "hwm": vm_hwm_bytes(), "rss": vm_rss_bytes(),
                      "user": c1[0] - c0[0], "sys": c1[1] - c0[1], "faults": c1[2] - c0[2]})
        return value

    names, ratings = step("parse", lambda: load_inputs(data, config))
    n_read = len(ratings)
    input_bytes = sum(f["bytes"] for f in ratings.files)
    ratings = step("filter", partial(filter_ratings, ratings, names, config))
    # For reference only (the default configuration does no k-core): a 5/5 one-pass k-core mask.
    t0 = time.perf_counter()
    core.kcore_mask(ratings.market, ratings.user, ratings.item, 5, 5)
    kcore_s = time.perf_counter() - t0
    # As prepare() does: the rating table is freed once the split has gathered its rows.
    split = step("split", partial(split_ratings, ratings, names, config))
    del ratings
    dataset = step("candidates", partial(sample_candidates, split, config))
    del split
    counts = dataset.manifest["counts"]
    pipeline_hwm = vm_hwm_bytes()

    extra: list[dict] = []
    if args.epochs > 0:
        t0 = time.perf_counter()
        sampler = dataset.train_negative_sampler(k=args.k, seed=0)
        build_s = time.perf_counter() - t0
        out = np.empty((sampler.rows, args.k), dtype=np.uint32)
        epochs = []
        for e in range(args.epochs):
            t0 = time.perf_counter()
            sampler.sample_into(out, e)
            epochs.append(time.perf_counter() - t0)
        extra.append({"step": "train negatives", "build_s": build_s, "epochs": epochs, "rows": sampler.rows,
                      "k": args.k, "hwm": vm_hwm_bytes()})
        del sampler, out
    if args.write:
        target = WORK / f"scale-prepared-{args.protocol}"
        t0 = time.perf_counter()
        dataset.save(target, overwrite=True)
        extra.append({"step": "save", "s": time.perf_counter() - t0, "hwm": vm_hwm_bytes(),
                      "bytes": sum(p.stat().st_size for p in target.iterdir())})
        shutil.rmtree(target, ignore_errors=True)
    extra.append({"step": "kcore_mask 5/5 (not in the pipeline)", "s": kcore_s})

    Path(args.json).write_text(json.dumps({
        "call_mem": call_mem,
        "protocol": args.protocol, "target": config.target, "markets": names, "ratings_read": n_read,
        "input_bytes": input_bytes, "counts": counts, "steps": steps, "extra": extra, "base_hwm": base_hwm,
        "pipeline_hwm": pipeline_hwm, "final_hwm": vm_hwm_bytes(), "threads": core.num_threads(),
    }))


# ---------------------------------------------------------------------------------------------
# parent: data generation, child runs, tables
# ---------------------------------------------------------------------------------------------
def run_child(directory: Path, protocol: str, args: argparse.Namespace) -> tuple[dict, float, int]:
    out = WORK / f"scale-{protocol}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(directory), "--protocol", protocol,
           "--json", str(out), "--epochs", str(args.epochs), "--k", str(args.k)]
    if args.write:
        cmd.append("--write")
    if args.target:
        cmd += ["--target", args.target]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        console.print(f"[red]child failed with status {proc.returncode}[/]")
        raise SystemExit(1)
    return json.loads(out.read_text()), wall, usage.ru_maxrss * 1024


def merge(runs: list, key: str = "") -> object:
    """Element-wise median of several child reports (peak memory: the maximum)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: merge([r.get(k, first[k]) for r in runs], k) for k in first}
    if isinstance(first, list):
        if any(not isinstance(r, list) or len(r) != len(first) for r in runs):
            return first
        return [merge([r[i] for r in runs], key) for i in range(len(first))]
    if isinstance(first, bool) or not isinstance(first, (int, float)) or any(r is None for r in runs):
        return first
    if "hwm" in key:
        return max(runs)
    m = statistics.median(runs)
    return round(m) if all(isinstance(r, int) for r in runs) else m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=int, default=50_000_000)
    ap.add_argument("--items", type=int, default=1_500_000)
    ap.add_argument("--markets", type=int, default=18, help="how many XMarket codes (max 18)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mean-per-user", type=float, default=9.0,
                    help="synthetic ratings per user (fewer users and evaluated groups when larger)")
    ap.add_argument("--protocols", default="forec", help="comma-separated: forec, acmr")
    ap.add_argument("--target", default=None, help="target market (default: the largest)")
    ap.add_argument("--epochs", type=int, default=3, help="training-negative epochs timed (0: skip)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--runs", type=int, default=1, help="child runs per protocol; medians are reported")
    ap.add_argument("--write", action="store_true", help="also time PreparedDataset.save()")
    ap.add_argument("--regenerate", action="store_true", help="ignore the cached data set")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--protocol", default="forec", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from xmfast import core
    from xmfast.synth import SynthConfig

    print_machine()
    load = OtherLoad()
    cfg = SynthConfig(markets=list(core.XMARKET_MARKETS)[: args.markets], ratings=args.ratings, items=args.items,
                      mean_per_user=args.mean_per_user, seed=args.seed)
    WORK.mkdir(parents=True, exist_ok=True)
    directory = synth_dir(cfg)
    if args.regenerate:
        shutil.rmtree(directory, ignore_errors=True)
    free = shutil.disk_usage(WORK).free
    need = args.ratings * BYTES_PER_RATING
    if not (directory / "synth.json").is_file() and free < need * 1.2:
        console.print(f"[red]not enough disk space in {WORK}: {fmt_bytes(free)} free, ~{fmt_bytes(need)} needed[/]")
        raise SystemExit(1)
    console.print(f"[dim]disk: {fmt_bytes(free)} free in {WORK}[/]", highlight=False)
    directory, gen_s, files = ensure_synth(cfg, directory)
    size = dir_bytes(directory)
    gen = table(f"Synthetic data set {directory.name}", ["", "value"])
    gen.add_row("configuration", f"{len(cfg.markets)} markets, {cfg.ratings:,} ratings requested, "
                f"{cfg.items:,} items, {cfg.mean_per_user:g} ratings per user on average, seed {cfg.seed}")
    gen.add_row("files", f"{fmt_bytes(size)} in {len(cfg.markets)} files")
    if gen_s is not None:
        rows = sum(f["ratings"] for f in files or [])
        gen.add_row("generation", f"{fmt_s(gen_s)} ({fmt_rate(rows / gen_s, ' ratings')}, "
                    f"{fmt_mibs(size, gen_s)})")
    else:
        gen.add_row("generation", "cached (synth.json matches; pass --regenerate to time it)")
    console.print(gen)

    verdicts: dict[str, bool] = {}
    for protocol in [p.strip() for p in args.protocols.split(",") if p.strip()]:
        reports, walls, maxrss, others, totals = [], [], [], [], []
        for _ in range(args.runs):
            child_load = OtherLoad()
            one, wall, ru_maxrss = run_child(directory, protocol, args)
            others.append(child_load.cores() or 0.0)
            reports.append(one)
            walls.append(wall)
            maxrss.append(ru_maxrss)
            totals.append(sum(s["s"] for s in one["steps"]))
        r = merge(reports)
        wall, ru_maxrss = statistics.median(walls), max(maxrss)
        n = r["ratings_read"]
        c = r["counts"]
        console.print(
            f"[dim]{protocol}: target {r['target']}, {len(r['markets'])} markets, {n:,} ratings read "
            f"({fmt_bytes(r['input_bytes'])}), {c['users']:,} users, {c['items']:,} items, {c['groups']:,} groups, "
            f"{c['evaluated_groups']:,} evaluated, {c['train_rows']:,} training rows; core threads {r['threads']}[/]",
            highlight=False,
        )
        t = table(
            f"Pipeline at scale, protocol {protocol}: "
            + (f"median of {args.runs} child processes" if args.runs > 1 else "one child process")
            + "; peak RSS = VmHWM after the step (max over runs); other processes used "
            + ", ".join(f"{o:.2f}" for o in others) + " cores meanwhile",
            ["step", "time", "ratings/s", "other throughput", "CPU user + sys (cores busy), page faults", "peak RSS"],
        )
        total = 0.0
        prev_hwm = r["base_hwm"] or 0
        for s in r["steps"]:
            total += s["s"]
            other = fmt_mibs(r["input_bytes"], s["s"]) if s["step"] == "parse" else ""
            busy = (f"{s['user']:.1f} + {s['sys']:.1f} s ({(s['user'] + s['sys']) / s['s']:.2f}), "
                    f"{s['faults'] / 1e6:.2f}M faults")
            t.add_row(f"[bold]{s['step']}[/]", fmt_s(s["s"]), fmt_rate(n / s["s"]), other, busy, fmt_bytes(s["hwm"]))
            accounted = 0.0
            for name, secs in s["core"].items():
                accounted += secs
                what = ""
                if name == "eval_candidates":
                    cands = 2 * c["evaluated_groups"] * 99
                    what = f"{fmt_rate(cands / secs, ' candidates')}"
                mem = ""
                if name in r["call_mem"]:
                    rss_in, hwm_out = r["call_mem"][name]
                    if hwm_out > prev_hwm:  # this call set a new peak: show how far above its entry RSS
                        mem = f"{fmt_bytes(hwm_out)} (+{fmt_bytes(hwm_out - rss_in)} in call)"
                    prev_hwm = max(prev_hwm, hwm_out)
                t.add_row(f"  core.{name}", fmt_s(secs), fmt_rate(n / secs), what, "", mem)
            t.add_row("  Python/numpy glue", fmt_s(s["s"] - accounted), "", "", "", "")
            prev_hwm = max(prev_hwm, s["hwm"] or 0)
        ok_time = total < TIME_TARGET_S
        ok_mem = r["pipeline_hwm"] < MEM_TARGET_B
        cpu_total = sum(s["user"] + s["sys"] for s in r["steps"])
        if args.runs > 1:  # median of the per-run totals, not the sum of the per-step medians
            total = statistics.median(totals)
        t.add_row("[bold]parse + filter + split + eval[/]"
                  + (" (runs: " + ", ".join(f"{x:.1f} s [others {o:.2f}]" for x, o in zip(totals, others)) + ")"
                     if args.runs > 1 else ""),
                  f"[bold]{fmt_s(total)}[/]", fmt_rate(n / total),
                  f"< {TIME_TARGET_S:.0f} s: {verdict(ok_time)}", f"{cpu_total:.1f} s ({cpu_total / total:.2f})",
                  f"{fmt_bytes(r['pipeline_hwm'])} (< 6 GB: {verdict(ok_mem)})", end_section=True)
        verdicts[f"{protocol}: pipeline < 60 s"] = ok_time
        verdicts[f"{protocol}: peak RSS < 6 GB"] = ok_mem
        for e in r["extra"]:
            if e["step"] == "train negatives":
                samples = e["rows"] * e["k"]
                first, rest = e["epochs"][0], e["epochs"][1:]
                med = statistics.median(rest) if rest else first
                t.add_row(f"train negatives: sampler build (k={e['k']})", fmt_s(e["build_s"]), "", "", "", "")
                t.add_row("train negatives: sample_into, epoch 0 (fresh buffer: page faults)", fmt_s(first), "",
                          f"{fmt_rate(samples / first, ' samples')} ({samples:,}/epoch)", "", "")
                if rest:
                    t.add_row(f"train negatives: sample_into, median of epochs 1–{len(rest)}", fmt_s(med), "",
                              f"{fmt_rate(samples / med, ' samples')}", "", fmt_bytes(e["hwm"]))
                verdicts[f"{protocol}: training negatives ≥ 20M samples/s"] = samples / med >= 20e6
            elif e["step"] == "save":
                t.add_row("PreparedDataset.save()", fmt_s(e["s"]), fmt_rate(n / e["s"]),
                          fmt_mibs(e["bytes"], e["s"]) + f" ({fmt_bytes(e['bytes'])})", "",
                          fmt_bytes(e["hwm"]))
            else:
                t.add_row(e["step"], fmt_s(e["s"]), fmt_rate(n / e["s"]), "", "", "")
        t.add_row("child process: wall time (incl. interpreter start, imports, exit)", fmt_s(wall), "", "", "",
                  f"ru_maxrss {fmt_bytes(ru_maxrss)}")
        console.print(t)

    print_targets(verdicts)

    load.report()

if __name__ == "__main__":
    main()
