"""Gradients that do not depend on the number of CPU threads.

A few of ATen's CPU backward kernels split a sum over threads: LayerNorm's weight and bias
gradients (per-thread partial sums over the rows) and the math path of
``scaled_dot_product_attention`` with dropout (its query and key gradients). The same step on
one thread and on two then differs in the last bits, and a transformer trained by
``xmfast run --jobs 2`` (one thread per stage) would not equal the serial run (every thread).
On some CPUs (Intel family 6 model 207 with torch 2.15's MKL) a linear map's weight
gradient is a third: its product splits the sum over the batch rows between threads. Every other
operation of ACMR's, SASRec's and the NCF family's steps gives the same bits on any number of
threads (tests/test_threads.py checks whole steps). So those three run their backward (the
linear map: its weight gradient only) on one thread: their gradients are a one-thread run's
whatever the thread count, for one pass of a small operation on one core. On other devices, and
on one thread, nothing changes. MAML's steps run under torch.func transforms, which get torch's
own linear map (a second-order meta-gradient differentiates the backward too, so every product
of it would need the same care): they run wholly on one thread instead (`cpu_one_thread`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread for the block, its thread count restored after (0.4 µs a pair)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def cpu_one_thread(device: torch.device | str) -> Iterator[None]:
    """The block on one CPU thread when `device` is the CPU (elsewhere it changes nothing): for
    computations whose every product would otherwise have to be guarded, such as MAML's
    meta-gradients. Their linear weight gradients, first and second order, sum over the batch
    rows and so differ in the last bits between one thread and two on the CPUs above."""
    if torch.device(device).type != "cpu":
        yield
        return
    with _one_thread():
        yield


def _needed(x: torch.Tensor | None) -> bool:
    return x is not None and x.requires_grad


class _OneThreadBackward(torch.autograd.Function):
    """`fn(*tensors)` computed as usual; its backward on one thread. The forward builds fn's
    own graph on detached copies of the inputs (random draws such as dropout happen once, here),
    and the backward differentiates that graph."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor | None) -> torch.Tensor:
        leaves = [t.detach().requires_grad_(_needed(t)) if t is not None else None for t in tensors]
        with torch.enable_grad():
            out = fn(*leaves)
        ctx.graph = (out, leaves)
        return out.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        out, leaves = ctx.graph
        del ctx.graph
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        with _one_thread():
            grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        return (None, *(next(grads) if t is not None and t.requires_grad else None for t in leaves))


def one_thread_backward(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor | None) -> torch.Tensor:
    """`fn(*tensors)`, differentiated on one thread when that matters: in a CPU autograd step
    on more than one thread. `fn` must depend on `tensors` only (weights are passed as tensors)."""
    if (not torch.is_grad_enabled() or torch.get_num_threads() == 1
            or not any(t is not None and t.requires_grad for t in tensors)
            or any(t is not None and t.device.type != "cpu" for t in tensors)):
        return fn(*tensors)
    return _OneThreadBackward.apply(fn, *tensors)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state-dict keys) with thread-count-independent
    gradients on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, eps = self.normalized_shape, self.eps
        return one_thread_backward(lambda x, w, b: F.layer_norm(x, shape, w, b, eps), x, self.weight, self.bias)


class _OneThreadWeightGradient(torch.autograd.Function):
    """``F.linear`` whose weight gradient is computed on one thread. On some CPUs (seen on Intel
    family 6 model 207 with torch 2.15's MKL) the product ``grad.T @ x`` splits its sum over the
    batch rows between threads, so it differs in the last bits between one thread and two; the
    input and bias gradients do not. The backward is torch's own linear backward otherwise."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad.matmul(weight) if ctx.needs_input_grad[0] else None
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            with _one_thread():
                grad_w = rows.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


def _transforms_active() -> bool:
    """Whether a torch.func transform (MAML's grad and vmap) is running: the function above is
    not written for them, so they get torch's own linear."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else True


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear``; a map to one output (a matrix-vector product) on one thread. On the CPUs
    above MKL splits such a product's rows between threads and computes each thread's last rows
    with other code, so a score differs in its last bit between one thread and two for some
    batch sizes (a training's last, partial batch: seen in NMF's and ACMR's output layers; the
    products with more outputs, tested at every size from 590 to 700 rows, do not)."""
    if weight.shape[0] != 1 or x.device.type != "cpu" or torch.get_num_threads() == 1:
        return F.linear(x, weight, bias)
    with _one_thread():
        return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose results do not depend on the CPU
    thread count: its weight gradient (see `_OneThreadWeightGradient`) and, for one output, its
    product (see `_linear`). On one thread and on other devices it is ``nn.Linear`` exactly;
    without autograd and under torch.func transforms it is but for the one-output product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and self.weight.requires_grad and x.device.type == "cpu"
                and torch.get_num_threads() > 1 and not _transforms_active()):
            return _OneThreadWeightGradient.apply(x, self.weight, self.bias)
        return _linear(x, self.weight, self.bias)
