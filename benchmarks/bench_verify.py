"""Cost of verifying a prepared dataset on load (issue 18), against `xmfast prepare` on the same data.

Every `PreparedDataset.load` checks the dataset against its manifest: shapes, dtypes and the
manifest's own consistency (the ``shapes`` level, ``XMFAST_VERIFY=shapes``), then every file's
blake3 digest, every id's range, the offsets and the candidates' first column (the default,
``full``). Goal: full verification under 10% of `prepare`'s time on the same data.

On the full-XMarket-size synthetic set of bench_scale.py (50M ratings, 18 markets, 1.5M items):
`prepare` runs once as the command a user would type, in a child process; then each load level
runs --repeat times, each in a fresh child process (as every command loads), with the dataset's
files in the page cache as they are right after `prepare` (or on any second load). The child
also times the two parts of ``full`` alone (digests, ranges) and the blake2b digests the
manifest recorded before blake3 (what `verify=True` hashed until now).

    python benchmarks/bench_verify.py                      # 50M ratings (~6 GiB peak in prepare)
    python benchmarks/bench_verify.py --ratings 10000000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from _common import OtherLoad, WORK, console, ensure_synth, fmt_bytes, fmt_s, print_machine, table
from bench_scale_train import run_child

GOAL = 0.10  # of prepare's time

CHILD = r"""
import json, sys, time
from pathlib import Path
from xmfast import dataset as d
from xmfast._io import digest_file
path, level = Path(sys.argv[1]), sys.argv[2]
out = {}
t = time.perf_counter()
ds = d.PreparedDataset.load(path, verify=level)
out["load"] = time.perf_counter() - t
if level == "shapes":
    files = ds.manifest["files"]
    names = list(files)
    t = time.perf_counter(); d._check_digests(path, files, names); out["digests"] = time.perf_counter() - t
    t = time.perf_counter()
    d._check_ranges(path, ds.arrays(), len(ds.markets), ds.n_users, ds.n_items)
    out["ranges"] = time.perf_counter() - t
    t = time.perf_counter()
    for n in names:
        digest_file(path / n)
    out["blake2b"] = time.perf_counter() - t
print(json.dumps(out))
"""


def child(dataset: Path, level: str) -> dict[str, float]:
    env = {**os.environ, "XMFAST_VERIFY": level}
    run = subprocess.run([sys.executable, "-P", "-c", CHILD, str(dataset), level], capture_output=True, text=True,
                         env=env)
    if run.returncode != 0:
        sys.exit(f"verification child failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=int, default=50_000_000)
    ap.add_argument("--items", type=int, default=1_500_000)
    ap.add_argument("--markets", type=int, default=18)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="child processes per load level (medians)")
    ap.add_argument("--keep", action="store_true", help="keep the prepared dataset")
    args = ap.parse_args()

    from xmfast import core
    from xmfast.synth import SynthConfig

    print_machine()
    load = OtherLoad()
    cfg = SynthConfig(markets=list(core.XMARKET_MARKETS)[: args.markets], ratings=args.ratings, items=args.items,
                      seed=args.seed)
    data, gen_s, _ = ensure_synth(cfg)
    dataset = WORK / f"verify-dataset-{args.ratings}"
    prep = run_child(["prepare", str(data), "--target", cfg.markets[0], "--sources", "all", "--out", str(dataset),
                      "--overwrite"])
    if prep[2] != 0:
        sys.exit(f"prepare failed:\n{prep[3]}")
    runs: dict[str, list[dict[str, float]]] = {"shapes": [], "full": []}
    for _ in range(args.repeat):  # interleaved, so a burst of other load hits both levels alike
        for level in runs:
            runs[level].append(child(dataset, level))

    def med(level: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[level])

    manifest = json.loads((dataset / "manifest.json").read_text())
    size = sum((dataset / n).stat().st_size for n in manifest["files"])
    counts = manifest["counts"]
    t = table(f"{args.ratings:,} synthetic ratings, {len(cfg.markets)} markets (generation "
              f"{'cached' if gen_s is None else fmt_s(gen_s)}); dataset {fmt_bytes(size)} in {len(manifest['files'])} "
              f"files, {counts['groups']:,} groups, {counts['items']:,} items; medians of {args.repeat}",
              ["step", "wall time", "share of prepare", "throughput"])
    t.add_row("xmfast prepare (parse, filter, split, candidates, write; peak RSS " + fmt_bytes(prep[1]) + ")",
              fmt_s(prep[0]), "100%", "")
    rows = [
        ("load, XMFAST_VERIFY=shapes (manifest, shapes, dtypes, id-list counts)", med("shapes", "load")),
        ("load, default: full verification", med("full", "load")),
        ("  of which blake3 digests of every file", med("shapes", "digests")),
        ("  of which id ranges, offsets, candidates' column 0", med("shapes", "ranges")),
        ("  (blake2b digests, what verify=True hashed before)", med("shapes", "blake2b")),
    ]
    for name, seconds in rows:
        t.add_row(name, fmt_s(seconds), f"{seconds / prep[0]:.1%}", f"{size / seconds / 2**30:.2f} GiB/s")
    console.print(t)
    load.report()
    share = med("full", "load") / prep[0]
    verdict = "met" if share < GOAL else "NOT met"
    console.print(f"full verification on load: {share:.1%} of prepare's time (goal < {GOAL:.0%}: {verdict})",
                  highlight=False)
    if not args.keep:
        shutil.rmtree(dataset, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
