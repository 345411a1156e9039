"""Gradients that do not depend on the number of CPU threads.

A few of ATen's CPU backward kernels split a sum over threads: LayerNorm's weight and bias
gradients (per-thread partial sums over the rows) and the math path of
``scaled_dot_product_attention`` with dropout (its query and key gradients). The same step on
one thread and on two then differs in the last bits, and a transformer trained by
``xmfast run --jobs 2`` (one thread per stage) would not equal the serial run (every thread).
Every other operation of ACMR's and SASRec's steps gives the same bits on any number of threads
(tests/test_threads.py checks whole steps). So those two run their backward on one thread:
their gradients are a one-thread run's whatever the thread count, for one pass of a small
operation on one core. On other devices, and on one thread, nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        finally:
            torch.set_num_threads(threads)
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
