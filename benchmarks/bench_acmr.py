"""ACMR training throughput (issue 7), CPU or GPU.

The pre-training of a target under protocol acmr (every other market a source, in full, as the
paper) on the real XMarket files: the training engine's own batches of the first epoch, with the
paper's model (embedding 32, 4 blocks, 8 heads, history 50, batch 1024, 4 negatives). Three
ways of running the same steps:

* ``xmfast``: the engine as it is: batches bucketed by history length and cut to their
  longest history, xmfast's encoder block (keys-first softmax and byte-mask dropout on the CPU,
  fused scaled_dot_product_attention on CUDA);
* ``no buckets``: the same block on shuffled batches (each batch cut to its longest history,
  which in a random batch of 1024 is almost always the full 50);
* ``torch layer, padded``: ``nn.TransformerEncoderLayer`` on batches padded to the full width, as
  a straightforward implementation (and the original code) runs it.

The ``xmfast`` row times the whole first epoch (every batch, after 3 warm-up steps), because its
batch widths vary; the padded rows, whose every batch has the full width, time `--batches`
steps. Each row reports instances/s and the implied seconds per pre-training epoch (training
steps only, no validation), to set beside the original's about 200 s per pre-training epoch for
uk on a GPU.

    python benchmarks/bench_acmr.py                       # CPU, target uk
    python benchmarks/bench_acmr.py --device cuda --batches 300

Three more tables (issue 25, item 3), each instead of the throughput table:

    python benchmarks/bench_acmr.py --setup               # the data path, step by step
    python benchmarks/bench_acmr.py --eval                # evaluate the test split: whole chunks / pieces / core attention / fused blocks
    python benchmarks/bench_acmr.py --floor               # training steps against their FLOP count
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import (
    REAL_DATA,
    SAMPLE_DATA,
    OtherLoad,
    console,
    fmt_rate,
    fmt_s,
    print_machine,
    print_torch,
    table,
)
from torch import nn

from xmfast.models import get_model
from xmfast.models.acmr import ACMRConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import SequenceTrainer, run_info


class TorchLayer(nn.Module):
    """nn.TransformerEncoderLayer behind the (x, padding) signature of xmfast's block."""

    def __init__(self, d: int, heads: int, ff: int, p: float) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d, heads, ff, p, batch_first=True)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.layer(x, src_key_padding_mask=padding)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--target", default="uk")
    ap.add_argument("--batches", type=int, default=20, help="timed training steps of the padded rows")
    ap.add_argument("--xmfast-batches", type=int, default=0, help="timed steps of the xmfast row (0: the whole epoch)")
    ap.add_argument("--data", type=Path, default=REAL_DATA if (REAL_DATA / "uk_5core.txt").is_file() else SAMPLE_DATA)
    ap.add_argument("--setup", action="store_true", help="time the data path (prepare, histories, trainer)")
    ap.add_argument("--eval", action="store_true", help="time evaluate() of the test split, before/after")
    ap.add_argument("--floor", action="store_true", help="training steps against their FLOP floor")
    ap.add_argument("--queries", type=int, default=0, help="--eval: only the first N test queries (0: all)")
    ap.add_argument("--repeat", type=int, default=3, help="--setup/--eval: interleaved rounds (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    device, gpu = print_torch(args.device)
    load = OtherLoad()
    work = Path(tempfile.mkdtemp(prefix="bench-acmr-"))
    if args.setup or args.eval or args.floor:
        (setup if args.setup else evaluation if args.eval else floor)(args, device, work)
        load.report()
        return
    ds = prepare(args.data, work / "ds", PrepareConfig(target=args.target, sources="all", protocol="acmr"))
    spec = get_model("acmr")
    config = spec.train_config(device=str(device))
    rows = None
    t = table(f"ACMR pre-training steps on {args.data.name} (target {args.target}, all sources in full), "
              f"batch {config.batch_size}, device {device}{gpu}",
              ["variant", "step (mean)", "mean width", "instances/s", "s per epoch", "epoch instances"])
    variants = [("xmfast", ACMRConfig(), False), ("no buckets", ACMRConfig(bucket_batches=0), False),
                ("torch layer, padded", ACMRConfig(bucket_batches=0), True)]
    for name, model_config, torch_layer in variants:
        run = Run.create(work / name.replace(" ", "_").replace(",", ""), run_info(ds, spec, model_config, config))
        trainer = SequenceTrainer(ds, run, spec, model_config, config)
        if torch_layer:
            torch.manual_seed(0)
            d = model_config.embedding_dim
            trainer.model.blocks = nn.ModuleList(
                TorchLayer(d, model_config.heads, model_config.ff_multiplier * d, model_config.dropout)
                for _ in range(model_config.blocks)
            ).to(device)
            trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=1e-3, weight_decay=config.l2)
        users, items, labels, market = trainer._instances(1)
        batches = trainer._batches(1, market)
        instances = int(users.shape[0])
        rows = rows or len(trainer.rows)
        trainer.model.train()
        widths, elapsed, seen = [], 0.0, 0
        limit = (args.xmfast_batches or len(batches)) if name == "xmfast" else args.batches
        for k, index in enumerate(batches[: 3 + limit]):
            keys = users[index]
            if torch_layer:
                # every batch at the full width, padding masked: a plain implementation's computation
                x = (trainer.model.train_history[keys], trainer.model.train_lengths[keys],
                     trainer.model.train_market[keys], items[index])
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if torch_layer:
                logits = trainer.model.score_sequences(*x)
                loss = trainer.loss_fn(logits, labels[index])
                trainer.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                trainer.optimizer.step()
            else:
                trainer._step(keys, items[index], labels[index])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k >= 3:
                elapsed += time.perf_counter() - t0
                seen += int(index.shape[0])
                widths.append(int(trainer.model.train_history.shape[1]) if torch_layer
                              else int(trainer._instance_length[index.cpu()].max()))
        rate = seen / elapsed
        t.add_row(name, fmt_s(elapsed / len(widths)), f"{sum(widths) / len(widths):.1f}", fmt_rate(rate),
                  fmt_s(instances / rate), f"{instances:,}")
    console.print(t)
    console.print(f"training rows {rows:,} (× 1 + {config.negatives} negatives per epoch)")
    load.report()


def setup(args: argparse.Namespace, device: torch.device, work: Path) -> None:
    """ACMR's data path as the training engine runs it, one row per step (medians of interleaved
    rounds in one process; torch._dynamo, which torch imports on the first optimiser of a
    process, is timed once on its own first)."""
    from xmfast.models.api import Sizes
    from xmfast.training.loop import _adam
    from xmfast.training.rows import training_rows, training_view

    t0 = time.perf_counter()
    import torch._dynamo  # noqa: F401  (what the first torch.optim.Adam of a process imports)

    dynamo = time.perf_counter() - t0
    spec = get_model("acmr")
    config = spec.train_config(device=str(device))
    model_config = ACMRConfig()
    steps: dict[str, list[float]] = {}

    def timed(name: str, fn, *a, **kw):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        value = fn(*a, **kw)
        steps.setdefault(name, []).append(time.perf_counter() - t)
        return value

    for r in range(args.repeat):
        ds = timed("prepare (parse, split, candidates, write)", prepare, args.data, work / f"ds{r}",
                   PrepareConfig(target=args.target, sources="all", protocol="acmr"))
        sources = tuple(m for m in ds.markets if m != ds.target)
        view = timed("training view (sources' held-out items as training)", training_view, ds, config, sources)
        rows = timed("training rows", training_rows, view, sources, config.augmentation)
        model = timed("model (ACMR, initialised)", spec.build, Sizes(ds.n_groups, ds.n_items, len(ds.markets)),
                      model_config).to(device)
        timed("attach: history tables (groups and training rows)", spec.attach, model, view, rows.rows)
        timed("optimiser (fused Adam)", _adam, model, 1e-3, 0.0, device, False)
        timed("negative sampler", view.train_negative_sampler, k=config.negatives, seed=config.seed)
        run = Run.create(work / f"run{r}", run_info(ds, spec, model_config, config))
        timed("whole SequenceTrainer (all of the above but prepare)", SequenceTrainer, ds, run, spec, model_config, config)
    t = table(f"ACMR's data path on {args.data.name} (target {args.target}, protocol acmr, all sources), "
              f"median of {args.repeat}", ["step", "median", "runs"])
    t.add_row("import torch._dynamo (once per process, by the first optimiser)", fmt_s(dynamo), "1")
    for name, xs in steps.items():
        t.add_row(name, fmt_s(statistics.median(xs)), ", ".join(fmt_s(x) for x in xs))
    console.print(t)


def evaluation(args: argparse.Namespace, device: torch.device, work: Path) -> None:
    """evaluate() of the test split with the paper's model (untrained weights: the time does not
    depend on them), interleaved: chunks of 4,096 scored whole on torch's threads with torch's
    attention (before issue 25), in pieces on Python threads with torch's attention (session 13),
    both with forwards of 65,536 pairs; the whole set sorted by length in chunks of 512 with the
    core's attention and torch's blocks (session 14); and now, the default: the same with the
    four blocks in one call of the core (`core.encoder`). Torch's two are compared bit for bit;
    the core's with torch's by the largest score difference and the held-out items' ranks."""
    from xmfast.evaluation import evaluate_scorer, held_out
    from xmfast.models.acmr import ACMR, EncoderBlock
    from xmfast.training.loop import ModelScorer

    ds = prepare(args.data, work / "ds", PrepareConfig(target=args.target, sources="all", protocol="acmr"))
    torch.manual_seed(0)
    model = ACMR(ds.n_items, len(ds.markets), ACMRConfig()).to(device)
    model.attach(ds)
    held = held_out(ds, "test")
    queries = np.flatnonzero(np.asarray(ds.group_market)[np.asarray(held.group)] == ds.market_index(ds.target))
    if args.queries:
        queries = queries[: args.queries]
    scorer = ModelScorer(model, device)
    groups, candidates = np.asarray(held.group)[queries], np.asarray(held.candidates)[queries]
    lengths = model.group_lengths.cpu().numpy()[groups]
    default_path = EncoderBlock.path
    torch_attention = lambda self, x: "keys-first"  # noqa: E731
    # (forward, attention path, pairs per forward, pairs per chunk): before and in session 13 a
    # forward took 65,536 pairs, sorted by length in chunks of 4,096.
    now = (scorer.batch_pairs, model.eval_chunk)
    # (forward, attention path, pairs per forward, pairs per chunk, blocks fused in the core)
    variants = {
        "whole chunks on torch's threads, torch's attention (before)": (whole_chunks, torch_attention, 65536, 4096, False),
        f"pieces of {ACMR.eval_piece} on Python threads, torch's attention (session 13)":
            (ACMR.forward, torch_attention, 65536, 4096, False),
        f"the whole set sorted, chunks of {now[1]}, the core's attention, torch's blocks (session 14)":
            (ACMR.forward, default_path, *now, False),
        "the same, the blocks fused in the core (now)": (ACMR.forward, default_path, *now, True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}  # less inflated by other load than wall time
    scores: dict[str, np.ndarray] = {}
    try:
        for _ in range(args.repeat):
            for name, (forward, path, batch, chunk, fused) in variants.items():
                model.forward = types.MethodType(forward, model)  # type: ignore[method-assign]
                model._fused = types.MethodType(ACMR._fused if fused else lambda self, x: False, model)  # type: ignore[method-assign]
                EncoderBlock.path = path  # type: ignore[method-assign]
                scorer.batch_pairs, model.eval_chunk = batch, chunk
                t0, c0 = time.perf_counter(), time.process_time()
                scores[name] = scorer.score(groups, candidates)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    finally:
        EncoderBlock.path = default_path  # type: ignore[method-assign]
        scorer.batch_pairs, model.eval_chunk = now
        del model.forward, model._fused
    before, pieces, blocks, now = scores.values()
    t = table(f"ACMR: scoring the {args.target} test set ({queries.size:,} queries × {candidates.shape[1]} candidates, "
              f"mean history {lengths.mean():.1f}), paper's model, {torch.get_num_threads()} torch threads, "
              f"median of {args.repeat}", ["variant", "median", "runs", "pairs/s", "CPU time (median)", "pairs per CPU s"])
    for name, xs in times.items():
        c = statistics.median(cpu[name])
        t.add_row(name, fmt_s(statistics.median(xs)), ", ".join(fmt_s(x) for x in xs),
                  fmt_rate(candidates.size / statistics.median(xs)), fmt_s(c), fmt_rate(candidates.size / c))
    console.print(t)
    rank = lambda s: (s[:, 1:] > s[:, :1]).sum(1)  # noqa: E731 - candidates above the held-out item
    console.print(f"torch's attention, pieces against whole chunks: scores equal bit for bit: {np.array_equal(before, pieces)}")
    for name, ours in (("the core's attention", blocks), ("the core's fused blocks", now)):
        console.print(f"{name} against torch's: largest score difference {np.abs(ours - pieces).max():.2e}, held-out "
                      f"items ranked differently in {int((rank(ours) != rank(pieces)).sum())} of {queries.size:,} queries")
    if not args.queries:  # the whole evaluation as `xmfast evaluate` runs it: scores, ranks, metrics
        t0 = time.perf_counter()
        ev = evaluate_scorer(ds, "test", scorer, markets=[ds.target])
        console.print(f"evaluate_scorer of all {len(ev):,} target queries (the default path): {fmt_s(time.perf_counter() - t0)}")


def whole_chunks(model, keys: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """ACMR's evaluation forward before issue 25: up to one chunk whole, more sorted by length
    and each chunk whole at its width, on torch's own threads."""
    lengths, market, table = model.group_lengths[keys], model.group_market[keys], model.group_history
    if keys.numel() <= model.eval_chunk:
        return model.score_sequences(table[keys, : int(lengths.max())], lengths, market, candidates)
    out = torch.empty(keys.shape[0])
    for chunk in torch.argsort(lengths).split(model.eval_chunk):
        width = int(lengths[chunk[-1]])
        out[chunk] = model.score_sequences(table[keys[chunk], :width], lengths[chunk], market[chunk], candidates[chunk])
    return out


def step_flops(batch: int, width: int, c: ACMRConfig) -> float:
    """Multiply-adds ×2 of one training step (forward, backward ≈ 2× forward) at a batch's width:
    the block's four linear maps and attention's two products; embeddings, norms, softmax and Adam
    are memory-bound and left out (so the floor is a lower bound)."""
    n, d, ff = batch * (width + 1), c.embedding_dim, c.ff_multiplier * c.embedding_dim
    linear = 2 * n * d * (3 * d + d + 2 * ff)
    attention = 2 * 2 * batch * (width + 1) ** 2 * d
    return 3 * (c.blocks * (linear + attention) + 2 * batch * 2 * d)


def floor(args: argparse.Namespace, device: torch.device, work: Path) -> None:
    """Training steps of the first epoch (width-50 batches and a random sample of all) against
    their FLOP floor: FLOPs / what torch.mm achieves on the feed-forward's shape on this machine."""
    ds = prepare(args.data, work / "ds", PrepareConfig(target=args.target, sources="all", protocol="acmr"))
    spec = get_model("acmr")
    config = spec.train_config(device=str(device))
    c = ACMRConfig()
    run = Run.create(work / "run", run_info(ds, spec, c, config))
    trainer = SequenceTrainer(ds, run, spec, c, config)
    users, items, labels, market = trainer._instances(1)
    batches = trainer._batches(1, market)
    width = [int(trainer._instance_length[b.cpu()].max()) for b in batches]
    epoch_flops = sum(step_flops(int(b.shape[0]), w, c) for b, w in zip(batches, width))
    # what the cores do on the step's largest product: (B·51, 32) @ (32, 128)
    ff = c.ff_multiplier * c.embedding_dim
    a, w = torch.randn(config.batch_size * (c.history + 1), c.embedding_dim), torch.randn(c.embedding_dim, ff)
    torch.mm(a, w)
    mm = min(timed_once(lambda: torch.mm(a, w)) for _ in range(20))
    rate = 2 * a.shape[0] * c.embedding_dim * ff / mm
    rng = np.random.default_rng(0)
    full = [k for k, x in enumerate(width) if x == c.history][:3]
    sample = rng.choice(len(batches), size=min(12, len(batches)), replace=False).tolist()
    trainer.model.train()
    for k in range(2):  # warm-up
        trainer._step(users[batches[k]], items[batches[k]], labels[batches[k]])
    t = table(f"ACMR training steps against the FLOP floor ({torch.get_num_threads()} torch threads; torch.mm "
              f"({a.shape[0]}×{c.embedding_dim})@({c.embedding_dim}×{ff}): {rate / 1e9:.1f} GFLOP/s)",
              ["batches", "mean width", "GFLOP per step", "floor per step", "measured per step", "measured / floor"])
    for name, ks in ((f"width {c.history} ({len(full)} steps)", full), (f"random sample ({len(sample)} steps)", sample)):
        if not ks:
            continue
        spent = sum(timed_once(lambda k=k: trainer._step(users[batches[k]], items[batches[k]], labels[batches[k]]))
                    for k in ks)
        flops = sum(step_flops(int(batches[k].shape[0]), width[k], c) for k in ks)
        t.add_row(name, f"{np.mean([width[k] for k in ks]):.1f}", f"{flops / len(ks) / 1e9:.2f}",
                  fmt_s(flops / rate / len(ks)), fmt_s(spent / len(ks)), f"{spent / (flops / rate):.1f}×")
    console.print(t)
    console.print(f"the epoch, windows of {c.bucket_batches} batches: {len(batches)} steps, mean width "
                  f"{np.mean(width):.1f}, {sum(x == c.history for x in width)} at width {c.history}, "
                  f"{epoch_flops / 1e12:.2f} TFLOP, floor {fmt_s(epoch_flops / rate)}")
    # the same epoch bucketed over all its batches at once (bucket_batches larger than the epoch)
    trainer.model_config = replace(c, bucket_batches=len(batches))
    whole = trainer._batches(1, market)
    w2 = [int(trainer._instance_length[b.cpu()].max()) for b in whole]
    f2 = sum(step_flops(int(b.shape[0]), x, c) for b, x in zip(whole, w2))
    console.print(f"the epoch bucketed whole (bucket_batches={len(batches)}): mean width {np.mean(w2):.1f}, "
                  f"{sum(x == c.history for x in w2)} at width {c.history}, {f2 / 1e12:.2f} TFLOP, "
                  f"floor {fmt_s(f2 / rate)} ({epoch_flops / f2:.2f}× fewer FLOPs)")


def timed_once(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
