"""Where a GMF or NMF training step spends its time on the CPU (issue 5's "≥ 10× a DataLoader loop").

bench_train.py shows the engine close to the *eager step floor*: the bare autograd training
steps on batches gathered beforehand. This script takes that floor apart for GMF and NMF, so
the claim "no batching scheme can reach 10× here" rests on measurements of each piece, not on a
guess:

* **autograd step**: the engine's step (forward, BCE loss, backward, FOREC's dense Adam with
  L2 as weight decay, fused kernel), with torch's default threads and with one thread;
* **forward + backward only**: the same without the optimiser;
* **dense fused Adam update only**: the optimiser by itself, on fixed gradients;
* **SparseAdam** (GMF): sparse embedding gradients and torch's lazy ``SparseAdam``; a
  *different* optimiser (rows without a gradient keep their momentum still, no weight decay),
  shown only to measure what the dense update costs;
* **hand-derived step**: the model's gradients written out by hand (gathers, the tower's matrix
  products for NMF, ``index_add_`` into the embeddings) and the same fused Adam kernel, no
  autograd. Its parameters are checked against the autograd step after the warm-up steps, so it
  is the same computation: the cheapest step PyTorch can take for the model.

Each row's instances/s is compared with the lean per-sample DataLoader loop of bench_train.py
(same model, same optimiser), measured in the same run. Batches: 1024 pairs drawn uniformly
from the uk + all sources id ranges.

    python benchmarks/bench_step_floor.py
    python benchmarks/bench_step_floor.py --models nmf --steps 600 --data DIR
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    REAL_DATA,
    SAMPLE_DATA,
    WORK,
    OtherLoad,
    console,
    fmt_rate,
    print_machine,
    print_torch,
    table,
)
from bench_train import loader_rate

from xmfast.models import Sizes, get_model
from xmfast.models.ncf import GMF, NMF, GMFConfig, NMFConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import TrainConfig, Trainer, _adam

LR, NMF_LR, L2, BATCH = 0.005, 0.01, 1e-7, 1024


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


def autograd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None):
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
        self._adam_state([model.user_embedding.weight.data, model.item_embedding.weight.data,
                          model.output.weight.data, model.output.bias.data], LR)

    def _adam_state(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr = params, lr
        self.grads = [torch.zeros_like(p) for p in params]
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in params]

    def _update(self) -> None:
        torch._foreach_add_(self.steps, 1)  # Adam counts the step before its update, as torch.optim.Adam does
        torch._fused_adam_(self.params, self.grads, self.exp_avg, self.exp_avg_sq, [], self.steps, lr=self.lr,
                           beta1=0.9, beta2=0.999, weight_decay=L2, eps=1e-8, amsgrad=False, maximize=False)

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
        self._update()


class NMFHandStep(HandStep):
    """NMF's step without autograd: the same BCE gradient sent back through the output layer into
    the GMF product and down the MLP tower (ReLU masks from the forward pass), each embedding row
    getting its share with ``index_add_``; then the same fused Adam. The branches' own heads, unused
    inside NMF, get no gradient, so Adam leaves them alone, as it does in the autograd step."""

    def __init__(self, model: NMF) -> None:
        self.layers = [m for m in model.mlp.tower if isinstance(m, torch.nn.Linear)]
        params = [model.gmf.user_embedding.weight.data, model.gmf.item_embedding.weight.data,
                  model.mlp.user_embedding.weight.data, model.mlp.item_embedding.weight.data,
                  model.output.weight.data, model.output.bias.data]
        for layer in self.layers:
            params += [layer.weight.data, layer.bias.data]
        self._adam_state(params, NMF_LR)

    def __call__(self, u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> None:
        gu, gi, mu, mi, wo, bo = self.params[:6]
        g_gu, g_gi, g_mu, g_mi, g_wo, g_bo = self.grads[:6]
        eu, ei = gu.index_select(0, u), gi.index_select(0, i)
        product = eu * ei
        x = torch.cat([mu.index_select(0, u), mi.index_select(0, i)], dim=1)
        acts = [x]
        for k in range(len(self.layers)):
            w, b = self.params[6 + 2 * k], self.params[7 + 2 * k]
            acts.append(torch.addmm(b, acts[-1], w.t()).relu_())
        joined = torch.cat([acts[-1], product], dim=1)
        g = (torch.sigmoid(torch.addmv(bo, joined, wo[0])) - y).div_(u.shape[0])
        g_wo.copy_(joined.t().mv(g).unsqueeze(0))
        g_bo.copy_(g.sum().reshape(1))
        g_joined = g.unsqueeze(1) * wo[0]
        width = acts[-1].shape[1]
        g_product = g_joined[:, width:]
        g_gu.zero_().index_add_(0, u, g_product * ei)
        g_gi.zero_().index_add_(0, i, g_product * eu)
        g_h = g_joined[:, :width]
        for k in reversed(range(len(self.layers))):
            g_pre = g_h * (acts[k + 1] > 0)
            self.grads[6 + 2 * k].copy_(g_pre.t().mm(acts[k]))
            self.grads[7 + 2 * k].copy_(g_pre.sum(0))
            g_h = g_pre.mm(self.params[6 + 2 * k])
        half = mu.shape[1]
        g_mu.zero_().index_add_(0, u, g_h[:, :half])
        g_mi.zero_().index_add_(0, i, g_h[:, half:])
        self._update()


def optimiser_only_step(model: torch.nn.Module, lr: float):
    """Only the fused Adam update, with the gradients one autograd step left: what the dense
    update of every embedding row costs by itself."""
    optimizer = _adam(model, lr, L2, torch.device("cpu"), False)
    u, i = torch.zeros(BATCH, dtype=torch.long), torch.zeros(BATCH, dtype=torch.long)
    torch.nn.functional.binary_cross_entropy_with_logits(model(u, i), torch.ones(BATCH)).backward()

    def step(u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.step()
    return step


def model_config(name: str) -> GMFConfig | NMFConfig:
    return GMFConfig() if name == "gmf" else NMFConfig(pretrained=False)


def fresh(name: str, n_users: int, n_items: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_model(name).build(Sizes(n_users, n_items, 1), model_config(name))


def measure(name: str, dataset, data: list[tuple[torch.Tensor, ...]], warmup: int, loader_batches: int) -> None:
    nu, ni = dataset.n_groups, dataset.n_items
    lr = LR if name == "gmf" else NMF_LR
    hand = HandStep if name == "gmf" else NMFHandStep

    # The hand-derived step is the same computation: after the warm-up steps both models agree.
    a, h = fresh(name, nu, ni), fresh(name, nu, ni)
    step_a, step_h = autograd_step(a, _adam(a, lr, L2, torch.device("cpu"), False)), hand(h)
    for u, i, y in data[:warmup]:
        step_a(u, i, y)
        step_h(u, i, y)
    gap = max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(a.parameters(), h.parameters()))

    with tempfile.TemporaryDirectory() as tmp:
        spec = get_model(name)
        trainer = Trainer(dataset, Run.create(Path(tmp) / name, {"model": name}), spec, model_config(name),
                          TrainConfig(sources=("all",), device="cpu"))
        loader = loader_rate(trainer, name, loader_batches, torch.device("cpu"))

    threads = torch.get_num_threads()
    rows: list[tuple[str, float]] = []
    m = fresh(name, nu, ni)
    rows.append((f"autograd step, dense fused Adam ({threads} threads): the engine's", timed_ms(autograd_step(m, _adam(m, lr, L2, torch.device("cpu"), False)), data, warmup)))
    torch.set_num_threads(1)
    m = fresh(name, nu, ni)
    rows.append(("autograd step, dense fused Adam (1 thread)", timed_ms(autograd_step(m, _adam(m, lr, L2, torch.device("cpu"), False)), data, warmup)))
    torch.set_num_threads(threads)
    m = fresh(name, nu, ni)
    rows.append(("forward + backward only, no optimiser", timed_ms(autograd_step(m, None), data, warmup)))
    rows.append(("dense fused Adam update only", timed_ms(optimiser_only_step(fresh(name, nu, ni), lr), data, warmup)))
    if name == "gmf":
        m = fresh(name, nu, ni)
        m.user_embedding.sparse = m.item_embedding.sparse = True
        rows.append(("sparse gradients + SparseAdam (another optimiser)", timed_ms(sparse_adam_step(m), data, warmup)))
    rows.append(("hand-derived gradients + the same fused Adam", timed_ms(hand(fresh(name, nu, ni)), data, warmup)))

    t = table(f"{name.upper()} training step on the CPU, {nu:,} users × {ni:,} items, batch {BATCH}; "
              f"DataLoader loop (same model and optimiser): {fmt_rate(loader)} instances/s",
              ["step", "ms / step", "instances/s", "÷ DataLoader loop"])
    for label, ms in rows:
        rate = BATCH / ms * 1e3
        t.add_row(label, f"{ms:.3f}", fmt_rate(rate), f"{rate / loader:.1f}×")
    console.print(t)
    console.print(f"{name}: hand-derived vs autograd step after {warmup} steps: largest parameter difference {gap:.2e}; "
                  f"a 10× loop would need the whole step in {BATCH / (10 * loader) * 1e3:.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REAL_DATA if (REAL_DATA / "uk_5core.txt").is_file() else SAMPLE_DATA)
    ap.add_argument("--target", default="uk")
    ap.add_argument("--models", default="gmf,nmf", help="comma-separated, from gmf and nmf")
    ap.add_argument("--steps", type=int, default=400, help="steps per variant (the first 50 are warm-up)")
    ap.add_argument("--loader-batches", type=int, default=200)
    args = ap.parse_args()
    print_machine()
    print_torch("cpu")
    load = OtherLoad()
    dataset = prepare(args.data, WORK / f"train-{args.target}", PrepareConfig(target=args.target, sources="all"), overwrite=True)
    data = batches(dataset.n_groups, dataset.n_items, args.steps)
    for name in args.models.split(","):
        measure(name.strip(), dataset, data, 50, args.loader_batches)
    load.report()


if __name__ == "__main__":
    main()
