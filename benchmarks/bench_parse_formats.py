"""Parsing speed by file format (issue 21): the full-XMarket-size synthetic set (50M ratings, 18
markets, 1.5M items, as bench_scale.py) read as XMarket files and as the same ratings in CSV.

Target: CSV within 1.5× of XMarket's parse time. The three formats are timed interleaved, round
by round (so a busy machine slows them alike), each round one ``xmfast.ratings.read_ratings``
call over all 18 files; medians are reported. The CSV files are made from the XMarket ones by
byte replacement (so both hold exactly the same ratings, which is checked on the first round):

  xmarket     {m}_5core.txt       userId itemId rate date      (the synthetic files)
  csv         {m}.csv             userId,itemId,rate,date      (the default column names)
  csv-quoted  {m}.quoted.csv      every field quoted           (RFC 4180's slower path; informational)

    python benchmarks/bench_parse_formats.py                 # 50M ratings (~3 GiB per format on disk)
    python benchmarks/bench_parse_formats.py --rows 10000000 --rounds 5
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import numpy as np
from _common import OtherLoad, console, ensure_synth, fmt_bytes, fmt_rate, fmt_s, median, print_machine, print_targets, table, timed

from xmfast import core
from xmfast.ratings import CSV, Ratings, read_ratings
from xmfast.synth import SynthConfig

TARGET_RATIO = 1.5


def convert(src: Path, dst: Path, quoted: bool) -> None:
    """Writes `src` (an XMarket file with header) as CSV: spaces become commas, or with every
    field quoted; done once and kept beside the synthetic files."""
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    data = src.read_bytes()
    if quoted:
        data = b'"' + data.replace(b" ", b'","').replace(b"\n", b'"\n"')[:-1]
    else:
        data = data.replace(b" ", b",")
    tmp = dst.with_name(f".{dst.name}.partial")
    tmp.write_bytes(data)
    tmp.replace(dst)


def cpu_seconds() -> float:
    """This process's user + system CPU time: less swayed than wall time by other processes."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def same(a: Ratings, b: Ratings) -> bool:
    return (a.markets == b.markets and a.users == b.users and a.items == b.items
            and all(np.array_equal(getattr(a, c), getattr(b, c)) for c in ("market", "user", "item", "rating", "day")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000_000, help="synthetic ratings")
    ap.add_argument("--items", type=int, default=1_500_000)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    args = ap.parse_args()
    print_machine()
    load = OtherLoad()
    config = SynthConfig(markets=list(core.XMARKET_MARKETS), ratings=args.rows, items=args.items, seed=1)
    directory, gen_s, _ = ensure_synth(config)
    if gen_s is not None:
        console.print(f"generated {args.rows:,} ratings in {fmt_s(gen_s)} into {directory}")
    markets = list(config.markets)
    sources = {
        "xmarket": [(m, directory / f"{m}_5core.txt") for m in markets],
        "csv": [(m, directory / f"{m}.csv", CSV) for m in markets],
        "csv-quoted": [(m, directory / f"{m}.quoted.csv", CSV) for m in markets],
    }
    for m in markets:
        convert(directory / f"{m}_5core.txt", directory / f"{m}.csv", quoted=False)
        convert(directory / f"{m}_5core.txt", directory / f"{m}.quoted.csv", quoted=True)
    times: dict[str, list[float]] = {name: [] for name in sources}
    cpu: dict[str, list[float]] = {name: [] for name in sources}
    reference = None
    for round_ in range(args.rounds + 1):  # round 0 warms the page cache and checks equality
        for name, srcs in sources.items():
            cpu0 = cpu_seconds()
            seconds, r = timed(lambda srcs=srcs: read_ratings(srcs))
            cpu_s = cpu_seconds() - cpu0
            if round_ == 0:
                if reference is None:
                    reference = r
                elif not same(reference, r):
                    raise SystemExit(f"{name}: the arrays differ from the XMarket files' arrays")
            else:
                times[name].append(seconds)
                cpu[name].append(cpu_s)
            del r
    rows = len(reference) if reference is not None else 0
    reference = None
    base, base_cpu = median(times["xmarket"]), median(cpu["xmarket"])
    t = table(f"read_ratings over {len(markets)} files, {rows:,} ratings "
              f"(median of {args.rounds} interleaved rounds, {core.num_threads()} threads)",
              ["format", "bytes on disk", "median", "all rounds", "ratings/s", "× xmarket", "CPU s (median)", "CPU × xmarket"])
    for name, srcs in sources.items():
        size = sum(Path(s[1]).stat().st_size for s in srcs)
        med = median(times[name])
        t.add_row(name, fmt_bytes(size), fmt_s(med), ", ".join(fmt_s(x) for x in times[name]),
                  fmt_rate(rows / med), f"{med / base:.2f}", f"{median(cpu[name]):.2f}", f"{median(cpu[name]) / base_cpu:.2f}")
    console.print(t)
    console.print("identical arrays (users, items, markets, ratings, days) in every format: yes")
    load.report()
    print_targets({f"CSV parse ≤ {TARGET_RATIO}× XMarket": median(times["csv"]) <= TARGET_RATIO * base})


if __name__ == "__main__":
    main()
