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
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import REAL_DATA, SAMPLE_DATA, OtherLoad, console, fmt_rate, fmt_s, print_machine, print_torch, table
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
    args = ap.parse_args()
    print_machine()
    device, gpu = print_torch(args.device)
    load = OtherLoad()
    work = Path(tempfile.mkdtemp(prefix="bench-acmr-"))
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


if __name__ == "__main__":
    main()
