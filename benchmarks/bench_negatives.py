"""Benchmark of the training-negative sampler (issue 3): at least 20M samples/s on 2 cores.

``dataset.train_negative_sampler(k=4, seed=0)`` on prepared datasets (both protocols), timing
``.sample(epoch)`` (new array each epoch) and ``.sample_into(out, epoch)`` (reused buffer) over
several epochs. samples/s = training rows × k / time of one epoch (median over epochs).

Datasets: the real uk + all sources (forec and acmr), where an epoch is ~0.4M samples and a few
milliseconds, and a larger synthetic one (default 5M ratings, 18 markets, cached in
benchmarks/_work) where timing overhead no longer dominates.

    python benchmarks/bench_negatives.py [--epochs 10] [--k 4] [--synth-ratings 5000000] [--synth-items 500000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import (
    OtherLoad,
    REAL_DATA, SAMPLE_DATA, console, ensure_synth, fmt_rate, fmt_s, median, print_machine, table, timed, verdict,
)

from xmfast import core
from xmfast.prepare import PrepareConfig, prepare
from xmfast.synth import SynthConfig

TARGET_PER_S = 20e6


def bench(dataset, k: int, epochs: int) -> dict:
    build_s, sampler = timed(lambda: dataset.train_negative_sampler(k=k, seed=0))
    rows = sampler.rows
    sampler.sample(0)  # warm-up (page faults of a first large allocation)
    sample_s = [timed(lambda e=e: sampler.sample(e))[0] for e in range(1, epochs + 1)]
    out = np.empty((rows, k), dtype=np.uint32)
    sampler.sample_into(out, 0)
    into_s = [timed(lambda e=e: sampler.sample_into(out, e))[0] for e in range(1, epochs + 1)]
    # sanity: reproducible and equal between the two methods
    sampler.sample_into(out, 3)
    assert np.array_equal(sampler.sample(3), out) and not np.array_equal(sampler.sample(4), out)
    return {"rows": rows, "build_s": build_s, "sample_s": sample_s, "into_s": into_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--data", type=Path, default=None, help="real data directory (default: /work/shared/xmarket)")
    ap.add_argument("--synth-ratings", type=int, default=5_000_000, help="0 to skip the synthetic data set")
    ap.add_argument("--synth-items", type=int, default=500_000)
    ap.add_argument("--synth-markets", type=int, default=18)
    args = ap.parse_args()

    print_machine()
    load = OtherLoad()
    cases = []
    data, target = args.data, "uk"
    if data is None:
        if (REAL_DATA / "uk_5core.txt").is_file():
            data = REAL_DATA
        else:
            data, target = SAMPLE_DATA, "in"
            console.print(f"[bold yellow]real XMarket files not found: using the sample {SAMPLE_DATA} (target in)[/]")
    for protocol in ("forec", "acmr"):
        ds = prepare(data, None, PrepareConfig(target=target, sources="all", protocol=protocol))
        cases.append((f"{target} + all ({data.name}), {protocol}", ds))

    if args.synth_ratings > 0:
        cfg = SynthConfig(
            markets=list(core.XMARKET_MARKETS)[: args.synth_markets], ratings=args.synth_ratings,
            items=args.synth_items, seed=3,
        )
        directory, gen_s, _ = ensure_synth(cfg)
        console.print(
            f"synthetic set {directory}: "
            + (f"generated in {fmt_s(gen_s)}" if gen_s is not None else "cached (synth.json matches)"),
            highlight=False,
        )
        for protocol in ("forec", "acmr"):
            prep_s, ds = timed(lambda: prepare(directory, None, PrepareConfig(
                target=cfg.markets[0], sources="all", protocol=protocol)))
            console.print(f"[dim]prepared synthetic {protocol} in memory in {fmt_s(prep_s)}[/]", highlight=False)
            cases.append((f"synthetic {args.synth_ratings / 1e6:g}M ratings, {len(cfg.markets)} markets, {protocol}", ds))

    t = table(
        f"Training negatives, k={args.k}, core threads {core.num_threads()}: median over {args.epochs} epochs",
        ["dataset", "train rows", "samples/epoch", "sampler build", "sample()", "samples/s",
         "sample_into()", "samples/s ", f"≥ {TARGET_PER_S / 1e6:.0f}M/s"],
    )
    results = []
    for name, ds in cases:
        r = bench(ds, args.k, args.epochs)
        n = r["rows"] * args.k
        rate_new, rate_into = n / median(r["sample_s"]), n / median(r["into_s"])
        results.append((name, rate_new, rate_into))
        t.add_row(
            name, f"{r['rows']:,}", f"{n:,}", fmt_s(r["build_s"]), fmt_s(median(r["sample_s"])), fmt_rate(rate_new),
            fmt_s(median(r["into_s"])), fmt_rate(rate_into), verdict(min(rate_new, rate_into) >= TARGET_PER_S),
        )
    console.print(t)
    console.print(
        "[dim]samples/s = train rows × k / median epoch time; sampler build (exclusion sets, copies) is "
        "a one-off cost per training run and not included.[/]"
    )

    load.report()

if __name__ == "__main__":
    main()
