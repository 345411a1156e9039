"""Where an NCF epoch's time goes besides the model (issue 25 item 4): GMF, MLP and NMF on uk +
all sources (protocol forec), the engine's epoch before and after its batches became slices of
instances built in one Rust call, measured side by side in one run.

* **epoch**: a whole ``Trainer.train_epoch`` (the library's, uninstrumented; the old loop as it
  was before, kept below as ``old_epoch``), median over the timed epochs, the two loops taking
  turns epoch by epoch on the same trainer;
* **model + optimiser**: the sum of the epoch's ``Trainer._step`` calls (forward, BCE loss,
  backward, fused Adam), timed one by one in an instrumented replica of each loop;
* **rest** = epoch − model + optimiser, and its parts from the same replica: negatives (the Rust
  sampler), instance and batch building (the shuffle, the instance arrays, the per-batch
  gathers of the old loop), host → tensor (numpy to torch, the device copy, the batch slices),
  bookkeeping (the loss sum and the observer call), everything else (the remainder).

Before timing, one epoch of each loop on two fresh trainers checks that both train the same
model to the last bit. On a busy machine, ``--threads 1 --clock cpu`` times the process's CPU
seconds with one torch thread: with two threads and cores shared, torch's threads wait for each
other and wall times mostly measure the other processes.

    python benchmarks/bench_epoch_split.py                    # --models gmf,mlp,nmf --epochs 5
    python benchmarks/bench_epoch_split.py --threads 1 --clock cpu --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from _common import (
    REAL_DATA,
    SAMPLE_DATA,
    WORK,
    OtherLoad,
    console,
    print_machine,
    print_torch,
    table,
)

from xmfast import core
from xmfast.models import get_model
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import TrainConfig, Trainer
from xmfast.training.loop import _LossSum

PARTS = ["negatives", "instances and batches", "host → tensor", "bookkeeping"]


def old_epoch(t: Trainer, epoch: int) -> tuple[float, int, float]:
    """The engine's pointwise epoch before issue 25 (commit d3ad031): instance tensors built by
    torch.cat, index batches, a gather per batch, the loss summed on the device per batch."""
    start = time.perf_counter()
    users, items, labels, market = t._instances(epoch)
    batches = t._batches(epoch, market)
    t.observer.on_epoch_start(epoch, len(batches))
    t.model.train()
    total = torch.zeros((), device=t.device, dtype=torch.float64)
    seen = 0
    for batch, index in enumerate(batches, 1):
        n = int(index.shape[0])
        loss = t._step(users[index], items[index], labels[index])
        total += loss.double() * n
        seen += n
        t.observer.on_batch(float(total) / seen if batch % 64 == 0 else None, n)
    return float(total) / max(seen, 1), seen, time.perf_counter() - start


NOW = time.perf_counter  # or time.process_time (--clock cpu)


class Clock:
    """Time per part of one epoch."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.last = NOW()

    def lap(self, part: str) -> None:
        now = NOW()
        self.parts[part] += now - self.last
        self.last = now


def old_split(t: Trainer, epoch: int) -> dict[str, float]:
    """`old_epoch` with a clock around each part (the same operations, in the same order)."""
    c = Clock()
    t._sample_negatives(epoch)
    c.lap("negatives")
    k = t.config.negatives
    negatives = torch.from_numpy(t._negatives[t._rows].astype(np.int64)).to(t.device)
    c.lap("host → tensor")
    users = torch.cat([t._group, t._group.repeat_interleave(k)])
    items = torch.cat([t._item, negatives.reshape(-1)])
    labels = torch.cat([torch.ones(t._group.shape[0], device=t.device), torch.zeros(t._group.shape[0] * k, device=t.device)])
    market = torch.cat([t._market, t._market.repeat_interleave(k)])
    batches = t._batches(epoch, market)
    c.lap("instances and batches")
    total = torch.zeros((), device=t.device, dtype=torch.float64)
    seen = 0
    for batch, index in enumerate(batches, 1):
        n = int(index.shape[0])
        u, i, y = users[index], items[index], labels[index]
        c.lap("instances and batches")
        loss = t._step(u, i, y)
        c.lap("model + optimiser")
        total += loss.double() * n
        seen += n
        t.observer.on_batch(float(total) / seen if batch % 64 == 0 else None, n)
        c.lap("bookkeeping")
    float(total)
    c.lap("bookkeeping")
    return c.parts


def new_split(t: Trainer, epoch: int) -> dict[str, float]:
    """``Trainer.train_epoch`` (via ``_epoch_instances``) with a clock around each part."""
    c = Clock()
    t._sample_negatives(epoch)
    c.lap("negatives")
    if t._instance_market is None:
        t._epoch_instances(epoch)
        c = Clock()
    batches = t._batch_order(epoch, t._instance_market)
    order = torch.cat(batches)
    sizes = [b.shape[0] for b in batches]
    keys, items, labels = t._buffers
    core.gather_instances(order.numpy(), t._keys, t.rows.item, t._negatives, t._rows, keys, items, labels)
    c.lap("instances and batches")
    u_all, i_all, y_all = (torch.from_numpy(a).to(t.device) for a in t._buffers)
    parts = list(zip(u_all.split(sizes), i_all.split(sizes), y_all.split(sizes)))
    c.lap("host → tensor")
    losses = _LossSum()
    for u, i, y in parts:
        n = int(u.shape[0])
        c.lap("host → tensor")
        loss = t._step(u, i, y)
        c.lap("model + optimiser")
        t.observer.on_batch(losses.add(loss, n), n)
        c.lap("bookkeeping")
    losses.mean()
    c.lap("bookkeeping")
    return c.parts


def trainer(dataset, name: str, tmp: Path, tag: str) -> Trainer:
    spec = get_model(name)
    cfg = spec.config_type(pretrained=False) if name == "nmf" else spec.config_type()
    return Trainer(dataset, Run.create(tmp / f"{name}-{tag}", {"model": name}), spec, cfg,
                   TrainConfig(sources=("all",), device="cpu"))


def same_training(dataset, name: str, tmp: Path) -> bool:
    """One epoch of the old loop and of the engine's, each on a fresh trainer: same weights?"""
    a, b = trainer(dataset, name, tmp, "a"), trainer(dataset, name, tmp, "b")
    la, lb = old_epoch(a, 1)[0], b.train_epoch(1)[0]
    return la == lb and all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REAL_DATA if (REAL_DATA / "uk_5core.txt").is_file() else SAMPLE_DATA)
    ap.add_argument("--target", default="uk")
    ap.add_argument("--models", default="gmf,mlp,nmf")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per loop (after one warm-up each)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall seconds, or the process's CPU seconds")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global NOW
    NOW = time.process_time if args.clock == "cpu" else time.perf_counter
    print_machine()
    print_torch("cpu")
    load = OtherLoad()
    dataset = prepare(args.data, WORK / f"train-{args.target}", PrepareConfig(target=args.target, sources="all"), overwrite=True)
    t = table(f"NCF epoch on the CPU, target {args.target} + all sources, batch 1024, 4 negatives: median of "
              f"{args.epochs} epochs per loop, interleaved ({args.clock} ms, {torch.get_num_threads()} torch threads)",
              ["model", "loop", "epoch", "model + optimiser", "rest", "rest / epoch", *PARTS, "everything else", "same weights"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            same = same_training(dataset, name, Path(tmp))
            tr = trainer(dataset, name, Path(tmp), "timed")
            loops = {"before": (old_epoch, old_split), "after": (lambda tt, e: tt.train_epoch(e), new_split)}
            epochs: dict[str, list[float]] = defaultdict(list)
            splits: dict[str, list[dict[str, float]]] = defaultdict(list)
            for label, (run, split) in loops.items():  # warm-up
                run(tr, 1)
                split(tr, 1)
            for e in range(2, 2 + args.epochs):
                for label, (run, split) in loops.items():
                    before = NOW()
                    run(tr, e)
                    epochs[label].append(NOW() - before)
                    splits[label].append(split(tr, e))
            for label in loops:
                epoch = statistics.median(epochs[label])
                part = {p: statistics.median(s.get(p, 0.0) for s in splits[label]) for p in ["model + optimiser", *PARTS]}
                rest = epoch - part["model + optimiser"]
                t.add_row(name, label, f"{epoch * 1e3:.1f}", f"{part['model + optimiser'] * 1e3:.1f}", f"{rest * 1e3:.1f}",
                          f"{rest / epoch:.1%}", *(f"{part[p] * 1e3:.1f}" for p in PARTS),
                          f"{(rest - sum(part[p] for p in PARTS)) * 1e3:.1f}", "yes" if same else "NO")
    console.print(t)
    load.report()


if __name__ == "__main__":
    main()
