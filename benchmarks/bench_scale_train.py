"""Scale benchmark (issue 8): the full-XMarket-size synthetic set (50M ratings, 18 markets,
1.5M items) goes through `xmfast prepare` and one NMF training epoch on CPU within 24 GiB.

Each stage is the command a user would type, run as a child process, so its wall time and peak
memory (``ru_maxrss`` from ``wait4``) are its own:

  prepare   xmfast prepare DATA --target ae --sources all --out DATASET   (parse, split, candidates, write)
  train     xmfast train DATASET -m nmf --no-pretrained --sources all --epochs 1 --device cpu
            (NMF++: load the dataset, build the sampler, one epoch over the training rows of all
            18 markets with 4 negatives each, validation of the epoch on the target, then the
            final validation and test evaluation)

Run it on an otherwise idle machine: with more busy threads than cores, torch's CPU kernels
slow down many times over (measured: 2.2k instead of 220k instances/s at 500k ratings).

The epoch's own time and instances/s come from the run's metrics.jsonl. Before it, a `steps`
child times training steps of that NMF (5.56M groups, 1.45M items: 112M parameters) on random
batches, at FOREC's batch of 1024 and at a large batch: FOREC's dense Adam with L2 updates every
parameter at every step, so a step costs about the same whatever the batch, and the projected
epoch (steps × time per step) says whether a full epoch is worth starting. `--epoch-batch` sets
the batch of the timed epoch (default 65536; FOREC's 1024 projects to 15–18 hours on 2 cores, see RESULTS.md).

    python benchmarks/bench_scale_train.py                     # 50M ratings
    python benchmarks/bench_scale_train.py --no-epoch          # prepare and the step timing only
    python benchmarks/bench_scale_train.py --ratings 5000000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from _common import OtherLoad, WORK, console, ensure_synth, fmt_bytes, fmt_s, print_machine, print_targets, table

MEMORY_LIMIT = 24 * 2**30


def run_child(args: list[str]) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS bytes, exit code, output tail) of one xmfast command; the peak is
    this child's own (``wait4``'s rusage), not the largest child's so far."""
    import tempfile

    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-P", "-c", "from xmfast_cli.app import main; main()", *args],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        return seconds, usage.ru_maxrss * 1024, proc.returncode, log.read()[-2000:]


STEPS_CHILD = r"""
import json, sys, time, torch
from xmfast.models import Sizes, get_model
from xmfast.models.ncf import NMFConfig
from xmfast.training import _adam
counts = json.load(open(sys.argv[1]))["counts"]
model = get_model("nmf").build(Sizes(counts["groups"], counts["items"], 18), NMFConfig(pretrained=False))
opt = _adam(model, 0.01, 1e-7, torch.device("cpu"), False)
g = torch.Generator().manual_seed(0)
def step(b):
    u = torch.randint(0, counts["groups"], (b,), generator=g)
    i = torch.randint(0, counts["items"], (b,), generator=g)
    y = torch.randint(0, 2, (b,), generator=g).float()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.binary_cross_entropy_with_logits(model(u, i), y).backward()
    opt.step()
out = {"parameters": sum(p.numel() for p in model.parameters())}
for b in (1024, 65536):
    step(b)
    t = time.perf_counter()
    for _ in range(10):
        step(b)
    out[str(b)] = (time.perf_counter() - t) / 10
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=int, default=50_000_000)
    ap.add_argument("--items", type=int, default=1_500_000)
    ap.add_argument("--markets", type=int, default=18)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the prepared dataset and the run")
    ap.add_argument("--no-epoch", action="store_true", help="skip the timed epoch")
    ap.add_argument("--epoch-batch", type=int, default=65536, help="batch size of the timed epoch")
    args = ap.parse_args()

    from xmfast import core
    from xmfast.synth import SynthConfig

    print_machine()
    load = OtherLoad()
    cfg = SynthConfig(markets=list(core.XMARKET_MARKETS)[: args.markets], ratings=args.ratings, items=args.items,
                      seed=args.seed)
    data, gen_s, _ = ensure_synth(cfg)
    target = cfg.markets[0]
    dataset = WORK / f"scale-train-dataset-{args.ratings}"
    run = WORK / f"scale-train-nmf-{args.ratings}"
    shutil.rmtree(run, ignore_errors=True)

    rows = []
    prep = run_child(["prepare", str(data), "--target", target, "--sources", "all", "--out", str(dataset),
                      "--overwrite"])
    if prep[2] != 0:
        sys.exit(f"prepare failed:\n{prep[3]}")
    rows.append(("prepare (parse, filter, split, candidates, write)", prep[0], prep[1]))
    steps_run = subprocess.run([sys.executable, "-P", "-c", STEPS_CHILD, str(dataset / "manifest.json")],
                               capture_output=True, text=True)
    if steps_run.returncode != 0:
        sys.exit(f"step timing failed:\n{steps_run.stderr[-2000:]}")
    steps = json.loads(steps_run.stdout.strip().splitlines()[-1])
    manifest = json.loads((dataset / "manifest.json").read_text())
    counts = manifest["counts"]
    instances = counts["train_rows"] * 5  # each training row and its 4 negatives
    t = table(f"{args.ratings:,} synthetic ratings, {len(cfg.markets)} markets, target {target} "
              f"(generation {'cached' if gen_s is None else fmt_s(gen_s)}); {counts['train_rows']:,} training rows, "
              f"{counts['groups']:,} groups, {counts['items']:,} items", ["stage", "wall time", "peak RSS / figures"])
    for name, seconds, peak in rows:
        t.add_row(name, fmt_s(seconds), fmt_bytes(peak))
    for b in ("1024", "65536"):
        n_steps = -(-instances // int(b))
        t.add_row(f"NMF++ training step, batch {b} ({steps['parameters']:,} parameters)", fmt_s(steps[b]),
                  f"{n_steps:,} steps per epoch: projected epoch {fmt_s(n_steps * steps[b])}")
    if not args.no_epoch:
        train = run_child(["train", str(dataset), "-m", "nmf", "--no-pretrained", "--sources", "all", "--epochs", "1",
                           "--batch-size", str(args.epoch_batch), "--device", "cpu", "-o", str(run), "--overwrite"])
        if train[2] != 0:
            sys.exit(f"train failed:\n{train[3]}")
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        results = json.loads((run / "results.json").read_text())
        t.add_row(f"train: one NMF++ epoch (batch {args.epoch_batch}), validation, final evaluation", fmt_s(train[0]),
                  fmt_bytes(train[1]))
        t.add_row("  of which the training epoch itself", fmt_s(record["seconds"]),
                  f"{record['instances']:,} instances, {record['instances_per_s']:,.0f}/s; "
                  f"test NDCG@10 {results['test']['ndcg@10']:.4f}")
        rows.append(("train", train[0], train[1]))
    console.print(t)
    load.report()
    print_targets({"prepare + one NMF epoch on CPU within 24 GiB": (not args.no_epoch)
                   and max(p for _, _, p in rows) < MEMORY_LIMIT})
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(dataset, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
