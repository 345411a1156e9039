"""Where a GMF training step spends its time on the CPU (issue 5's "≥ 10× a DataLoader loop").

bench_train.py shows the engine close to the *eager step floor*: the bare autograd training
steps on batches gathered beforehand. This script takes that floor apart for GMF, so the claim
"no batching scheme can reach 10× here" rests on measurements of each piece, not on a guess:

* **autograd step**: the engine's step (forward, BCE loss, backward, FOREC's dense Adam with
  L2 as weight decay, fused kernel), with torch's default threads and with one thread;
* **forward + backward only**: the same without the optimiser;
* **SparseAdam**: sparse embedding gradients and torch's lazy ``SparseAdam``; a *different*
  optimiser (rows without a gradient keep their momentum still, no weight decay), shown only
  to measure what the dense update costs;
* **hand-derived step**: GMF's gradients written out by hand (gather, product, sigmoid, two
  ``index_add_``) and the same fused Adam kernel, no autograd. Its parameters are checked
  against the autograd step after the warm-up steps, so it is the same computation.

Each row's instances/s is compared with the lean per-sample DataLoader loop of bench_train.py
(same model, same optimiser), measured in the same run. Batches: 1024 pairs drawn uniformly
from the uk + all sources id ranges.

    python benchmarks/bench_step_floor.py
    python benchmarks/bench_step_floor.py --steps 600 --data DIR
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import REAL_DATA, SAMPLE_DATA, WORK, OtherLoad, console, fmt_rate, print_machine, print_torch, table
from bench_train import loader_rate

from xmfast.models import get_model
from xmfast.models.ncf import GMF, GMFConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import TrainConfig, Trainer, _adam

LR, L2, BATCH = 0.005, 1e-7, 1024


def batches(n_users: int, n_items: int, steps: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, n_users, (BATCH,), generator=gen), torch.randint(0, n_items, (BATCH,), generator=gen),
             torch.randint(0, 2, (BATCH,), generator=gen).float()) for _ in range(steps)]


def timed_ms(step, data: list[tuple[torch.Tensor, ...]], warmup: int) -> float:
    for u, i, y in data[:warmup]:
        step(u, i, y)
    start = time.perf_counter()
    for u, i, y in data[warmup:]:
        step(u, i, y)
    return (time.perf_counter() - start) / (len(data) - warmup) * 1e3


def autograd_step(model: GMF, optimizer: torch.optim.Optimizer | None):
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(u, i), y)
        if optimizer is None:
            model.zero_grad(set_to_none=True)
            loss.backward()
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return step


def sparse_adam_step(model: GMF):
    sparse = torch.optim.SparseAdam([model.user_embedding.weight, model.item_embedding.weight], lr=LR)
    dense = torch.optim.Adam(model.output.parameters(), lr=LR, weight_decay=L2, fused=True)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(u, i), y)
        sparse.zero_grad(set_to_none=True)
        dense.zero_grad(set_to_none=True)
        loss.backward()
        sparse.step()
        dense.step()
    return step


class HandStep:
    """GMF's step without autograd: the BCE-with-logits gradient is (σ(z) − y)/B, and each
    embedding row gets the product of that, the output weights and the other side's row. The
    update is torch's own fused Adam kernel, with the state an ``Adam(fused=True)`` would hold."""

    def __init__(self, model: GMF) -> None:
        self.params = [model.user_embedding.weight.data, model.item_embedding.weight.data,
                       model.output.weight.data, model.output.bias.data]
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in self.params]

    def __call__(self, u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> None:
        users, items, w, b = self.params
        eu, ei = users.index_select(0, u), items.index_select(0, i)
        product = eu * ei
        g = (torch.sigmoid(torch.addmv(b, product, w[0])) - y).div_(u.shape[0])
        gw = g.unsqueeze(1) * w[0]
        self.grads[0].zero_().index_add_(0, u, gw * ei)
        self.grads[1].zero_().index_add_(0, i, gw * eu)
        self.grads[2].copy_(product.t().mv(g).unsqueeze(0))
        self.grads[3].copy_(g.sum().reshape(1))
        torch._foreach_add_(self.steps, 1)  # Adam counts the step before its update, as torch.optim.Adam does
        torch._fused_adam_(self.params, self.grads, self.exp_avg, self.exp_avg_sq, [], self.steps, lr=LR,
                           beta1=0.9, beta2=0.999, weight_decay=L2, eps=1e-8, amsgrad=False, maximize=False)


def fresh(n_users: int, n_items: int) -> GMF:
    torch.manual_seed(0)
    return GMF(n_users, n_items, GMFConfig())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REAL_DATA if (REAL_DATA / "uk_5core.txt").is_file() else SAMPLE_DATA)
    ap.add_argument("--target", default="uk")
    ap.add_argument("--steps", type=int, default=400, help="steps per variant (the first 50 are warm-up)")
    ap.add_argument("--loader-batches", type=int, default=200)
    args = ap.parse_args()
    print_machine()
    print_torch("cpu")
    load = OtherLoad()
    dataset = prepare(args.data, WORK / f"train-{args.target}", PrepareConfig(target=args.target, sources="all"), overwrite=True)
    nu, ni = dataset.n_groups, dataset.n_items
    data = batches(nu, ni, args.steps)
    warmup = 50

    # The hand-derived step is the same computation: after the warm-up steps both models agree.
    a, h = fresh(nu, ni), fresh(nu, ni)
    step_a, step_h = autograd_step(a, _adam(a, LR, L2, torch.device("cpu"), False)), HandStep(h)
    for u, i, y in data[:warmup]:
        step_a(u, i, y)
        step_h(u, i, y)
    gap = max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(a.parameters(), h.parameters()))

    with tempfile.TemporaryDirectory() as tmp:
        spec = get_model("gmf")
        trainer = Trainer(dataset, Run.create(Path(tmp) / "gmf", {"model": "gmf"}), spec, GMFConfig(),
                          TrainConfig(sources=("all",), device="cpu"))
        loader = loader_rate(trainer, "gmf", args.loader_batches, torch.device("cpu"))

    threads = torch.get_num_threads()
    rows: list[tuple[str, float]] = []
    m = fresh(nu, ni)
    rows.append((f"autograd step, dense fused Adam ({threads} threads): the engine's", timed_ms(autograd_step(m, _adam(m, LR, L2, torch.device("cpu"), False)), data, warmup)))
    torch.set_num_threads(1)
    m = fresh(nu, ni)
    rows.append(("autograd step, dense fused Adam (1 thread)", timed_ms(autograd_step(m, _adam(m, LR, L2, torch.device("cpu"), False)), data, warmup)))
    torch.set_num_threads(threads)
    m = fresh(nu, ni)
    rows.append(("forward + backward only, no optimiser", timed_ms(autograd_step(m, None), data, warmup)))
    m = fresh(nu, ni)
    m.user_embedding.sparse = m.item_embedding.sparse = True
    rows.append(("sparse gradients + SparseAdam (another optimiser)", timed_ms(sparse_adam_step(m), data, warmup)))
    rows.append(("hand-derived gradients + the same fused Adam", timed_ms(HandStep(fresh(nu, ni)), data, warmup)))

    t = table(f"GMF training step on the CPU, {nu:,} users × {ni:,} items, batch {BATCH}; "
              f"DataLoader loop (same model and optimiser): {fmt_rate(loader)} instances/s",
              ["step", "ms / step", "instances/s", "÷ DataLoader loop"])
    for name, ms in rows:
        rate = BATCH / ms * 1e3
        t.add_row(name, f"{ms:.3f}", fmt_rate(rate), f"{rate / loader:.1f}×")
    console.print(t)
    console.print(f"hand-derived vs autograd step after {warmup} steps: largest parameter difference {gap:.2e}")
    load.report()


if __name__ == "__main__":
    main()
