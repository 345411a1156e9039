"""MAML meta-steps per second (issue 6), CPU or GPU.

A meta-step of `xmfast.models.maml.meta_step` on an NMF the size of the real data (groups and items of
uk + all sources): for each of the tasks (markets), a support and a query batch of `--batch`
instances, one inner step (lr 0.1), second order (default) and first order, then one Adam update.
Tasks are drawn at random from the instance arrays; the figure is meta-steps/s and instances/s
(tasks × 2 × batch per meta-step), the median of `--steps` timed steps after 5 warm-up steps.

    python benchmarks/bench_maml.py                  # CPU, 2 and 7 tasks
    python benchmarks/bench_maml.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import print_torch, OtherLoad, console, fmt_rate, fmt_s, print_machine, table

from xmfast.models.maml import MAMLConfig, Tasks, meta_step
from xmfast.models.ncf import NMF, NMFConfig
from xmfast.training import _adam

GROUPS, ITEMS = 14313, 8304  # the real uk + all sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--tasks", default="2,7")
    args = ap.parse_args()
    print_machine()
    device, gpu = print_torch(args.device)
    load = OtherLoad()
    t = table(f"MAML meta-steps, NMF on {GROUPS:,} groups × {ITEMS:,} items, batch {args.batch}, device {device}"
              f"{gpu}", ["tasks", "order", "meta-step (median)", "meta-steps/s", "instances/s"])
    for n_tasks in [int(x) for x in args.tasks.split(",")]:
        for first_order in (False, True):
            torch.manual_seed(0)
            model = NMF(GROUPS, ITEMS, NMFConfig(pretrained=False)).to(device)
            opt = _adam(model, 0.005, 1e-7, device, False)
            config = MAMLConfig(first_order=first_order)
            g = torch.Generator().manual_seed(1)
            shape = (n_tasks, args.batch)

            def tasks() -> Tasks:
                r = lambda hi: torch.randint(0, hi, shape, generator=g).to(device)  # noqa: E731
                y = lambda: torch.randint(0, 2, shape, generator=g).float().to(device)  # noqa: E731
                return Tasks(r(GROUPS), r(ITEMS), y(), r(GROUPS), r(ITEMS), y())

            batches = [tasks() for _ in range(args.steps + 5)]
            times = []
            for k, b in enumerate(batches):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                meta_step(model, opt, b, config)  # returns a float: the step has finished
                if k >= 5:
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            t.add_row(str(n_tasks), "first" if first_order else "second", fmt_s(med), f"{1 / med:,.1f}",
                      fmt_rate(n_tasks * 2 * args.batch / med))
    console.print(t)
    load.report()


if __name__ == "__main__":
    main()
