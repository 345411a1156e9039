"""Training throughput (issue 5): the engine against a plain per-sample DataLoader loop.

Both loops train the same model (GMF, NMF) with the same optimizer, batch size and instances
(each training row plus 4 negatives, from the Rust sampler). They differ only in how batches are
made:

* **engine**: ``xmfast.training.Trainer.train_epoch``: the rows live as tensors on the device,
  the epoch's negatives come from the Rust sampler, and a batch is an index slice. The time
  covers the whole epoch, negative sampling and instance building included.
* **DataLoader**: the same model and optimiser (fused Adam on CPU), fed by a
  ``torch.utils.data.Dataset`` whose ``__getitem__`` returns one
  (user, item, label) triple, batched by ``DataLoader(batch_size, shuffle=True)`` with default
  collation and moved to the device, the way FOREC's and most NCF code does it. Timed over
  `--loader-batches` batches after 10 warm-up batches, with the instances built beforehand
  (so it is not charged for negative sampling).

A second DataLoader loop uses the exact ``Dataset`` pattern of the NCF PyTorch code that FOREC
builds on (0-d tensors per sample, stacked by the collate function); it is slower per batch, and
the target is checked against the leaner Python-number loop above.

A third figure, the **eager step floor**, times the bare eager training steps on batches gathered
beforehand: no loop that runs these steps one by one can beat it, so "floor / DataLoader" is the
largest speed-up any batching scheme could show over the DataLoader loop for this model. (On
CUDA the engine replays a CUDA graph and can beat the eager floor.)

Targets: the engine at least 10× the DataLoader loop on CPU; on a GPU, an NMF epoch on uk + all
sources in under 1 s.

    python benchmarks/bench_train.py                         # CPU, real uk + all sources
    python benchmarks/bench_train.py --device cuda           # on a GPU machine
    python benchmarks/bench_train.py --data DIR --target uk --sources all --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import print_torch, REAL_DATA, SAMPLE_DATA, WORK, OtherLoad, console, fmt_rate, fmt_s, print_machine, print_targets, table

from xmfast.models import get_model
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import TrainConfig, Trainer, _adam


class PairDataset(torch.utils.data.Dataset):
    """One (user, item, label) triple of Python numbers per index: the leanest per-sample form."""

    def __init__(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> None:
        self.users, self.items, self.labels = users, items, labels

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> tuple[int, int, float]:
        return int(self.users[i]), int(self.items[i]), float(self.labels[i])


class TensorPairDataset(PairDataset):
    """One triple of 0-d tensors per index, collated by stacking: the pattern of the NCF PyTorch
    code that FOREC's code builds on (``UserItemRatingDataset``)."""

    def __init__(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> None:
        super().__init__(torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(labels))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.users[i], self.items[i], self.labels[i]


def loader_rate(trainer: Trainer, model_name: str, batches: int, device: torch.device,
                dataset_type: type[PairDataset] = PairDataset) -> float:
    """Instances/s of a DataLoader loop training a fresh model of the same kind."""
    users, items, labels, _ = trainer._instances(1)
    ds = dataset_type(users.cpu().numpy(), items.cpu().numpy(), labels.cpu().numpy())
    spec = get_model(model_name)
    torch.manual_seed(0)
    model = spec.build(trainer.sizes, trainer.model_config).to(device)
    # The engine's optimiser (fused Adam on CPU), so the loops differ only in how batches are made.
    opt = _adam(model, trainer.config.learning_rate(spec), trainer.config.l2, device, capturable=False)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loader = torch.utils.data.DataLoader(ds, batch_size=trainer.config.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    seen = 0
    start = 0.0
    for n, (u, i, y) in enumerate(loader):
        if n == 10:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        if n == 10 + batches:
            break
        u, i, y = u.to(device), i.to(device), y.float().to(device)
        loss = loss_fn(model(u, i), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += int(u.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def step_floor_rate(trainer: Trainer, batches: int) -> float:
    """Instances/s of the bare training steps on batches gathered beforehand: what any loop
    around this model and optimizer could reach at best."""
    users, items, labels, market = trainer._instances(1)
    index = trainer._batches(1, market)[:batches]
    prebuilt = [(users[b], items[b], labels[b]) for b in index if b.shape[0] == trainer.config.batch_size]
    for u, i, y in prebuilt[:5]:
        trainer._step(u, i, y)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for u, i, y in prebuilt[5:]:
        trainer._step(u, i, y)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return sum(int(u.shape[0]) for u, _, _ in prebuilt[5:]) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REAL_DATA if (REAL_DATA / "uk_5core.txt").is_file() else SAMPLE_DATA)
    ap.add_argument("--target", default="uk")
    ap.add_argument("--sources", default="all")
    ap.add_argument("--models", default="gmf,nmf")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=3, help="timed engine epochs (after one warm-up epoch)")
    ap.add_argument("--loader-batches", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    device, gpu = print_torch(args.device)
    load = OtherLoad()
    out = WORK / f"train-{args.target}"
    dataset = prepare(args.data, out, PrepareConfig(target=args.target, sources="all"), overwrite=True)
    sources = ("all",) if args.sources == "all" else tuple(s for s in args.sources.split(",") if s)
    t = table(
        f"Training throughput, target {args.target}, sources {args.sources or 'none'}, device {device}"
        f"{gpu}; instances = rows × (1 + 4 negatives), batch 1024",
        ["model", "instances/epoch", "batches", "engine epoch (median)", "engine instances/s",
         "DataLoader instances/s", "engine / DataLoader", "eager step floor", "floor / DataLoader",
         "DataLoader, NCF tensor pattern", "engine / that", "validation"],
    )
    verdicts: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:
            spec = get_model(name)
            cfg = spec.config_type(pretrained=False) if name == "nmf" else spec.config_type()
            config = TrainConfig(sources=sources, device=args.device)
            trainer = Trainer(dataset, Run.create(Path(tmp) / name, {"model": name}), spec, cfg, config)
            trainer.train_epoch(1)  # warm-up
            epochs = [trainer.train_epoch(e) for e in range(2, 2 + args.epochs)]
            secs = [s for _, _, s in epochs]
            instances = epochs[0][1]
            t0 = time.perf_counter()
            trainer.validate()
            valid_s = time.perf_counter() - t0
            engine = instances / statistics.median(secs)
            loader = loader_rate(trainer, name, args.loader_batches, device)
            floor = step_floor_rate(trainer, args.loader_batches)
            ncf = loader_rate(trainer, name, args.loader_batches // 2, device, TensorPairDataset)
            batches = -(-instances // config.batch_size)
            t.add_row(name, f"{instances:,}", f"{batches:,}", f"{fmt_s(statistics.median(secs))} ({fmt_s(min(secs))}–{fmt_s(max(secs))})",
                      fmt_rate(engine), fmt_rate(loader), f"{engine / loader:.1f}×", fmt_rate(floor),
                      f"{floor / loader:.1f}×", fmt_rate(ncf), f"{engine / ncf:.1f}×", fmt_s(valid_s))
            verdicts[f"{name} on {device.type}: engine ≥ 10× DataLoader"] = engine >= 10 * loader
            if device.type == "cuda" and name == "nmf" and args.target == "uk" and args.sources == "all":
                verdicts["nmf epoch on uk + all sources < 1 s (GPU)"] = statistics.median(secs) < 1.0
    console.print(t)
    print_targets(verdicts)
    load.report()


if __name__ == "__main__":
    main()
