"""MAML across markets: the meta-learning step of FOREC's pre-training.

One *task* is one market. A meta-step takes, for every market of the meta-batch, a support batch
and a query batch of that market's training instances, adapts the shared weights on the support
batch with `inner_steps` plain gradient steps of size `inner_lr`, and scores the adapted weights
on the query batch. The mean of those query losses is the meta-loss, and its gradient with
respect to the shared weights updates them (through the outer optimiser).

With ``first_order`` the inner gradients are treated as constants (FOMAML); otherwise the
meta-gradient flows through the inner updates (second order, the default, as FOREC's code).

On the CPU, meta-gradients and adaptations run on one thread (`threads.cpu_one_thread`), so a
run gives the same bits whatever its thread count (``xmfast run`` against ``--jobs 2``). On two
threads a large meta-batch's step would be up to 2.5× faster; FOREC's meta-batches (20 shots per
market) gain nothing from a second thread, and xmfast's take 9 meta-steps an epoch.

Everything is written with ``torch.func``: ``functional_call`` runs the model on a dict of
weights, ``grad`` differentiates, and ``vmap`` runs all tasks of a meta-batch at once, so there
is no Python loop over markets or parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from xmfast.errors import XmfastError
from xmfast.models.threads import cpu_one_thread
from xmfast.models.settings import MAMLConfig, MAMLModelConfig  # noqa: F401 - MAMLModelConfig: importable from here too

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Tasks:
    """A meta-batch: `tasks` support and query batches of equal size, stacked on dim 0."""

    support_users: torch.Tensor  # (tasks, batch) long
    support_items: torch.Tensor
    support_labels: torch.Tensor  # (tasks, batch) float
    query_users: torch.Tensor
    query_items: torch.Tensor
    query_labels: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {t.shape for t in (self.support_users, self.support_items, self.support_labels)}
        qshapes = {t.shape for t in (self.query_users, self.query_items, self.query_labels)}
        if len(shapes) != 1 or len(qshapes) != 1 or next(iter(shapes))[0] != next(iter(qshapes))[0]:
            raise XmfastError("support and query tensors must be (tasks, batch) and agree on the number of tasks")


def _bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


def weights_of(model: nn.Module) -> Weights:
    """The trainable weights of `model`, by name (the dict the functional calls take)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def adapt(model: nn.Module, weights: Weights, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
          config: MAMLConfig, steps: int | None = None) -> Weights:
    """`steps` (default `config.inner_steps`) plain gradient steps on one batch; differentiable
    with respect to `weights` unless the configuration is first order."""
    buffers = dict(model.named_buffers())

    def loss(w: Weights) -> torch.Tensor:
        return _bce(functional_call(model, (w, buffers), (users, items)), labels)

    with cpu_one_thread(users.device):
        for _ in range(config.inner_steps if steps is None else steps):
            g = grad(loss)(weights)
            if config.first_order:
                g = {k: v.detach() for k, v in g.items()}
            weights = {k: weights[k] - config.inner_lr * g[k] for k in weights}
    return weights


def meta_loss(model: nn.Module, weights: Weights, tasks: Tasks, config: MAMLConfig) -> torch.Tensor:
    """Mean over tasks of the query loss after adapting on the support batch."""
    buffers = dict(model.named_buffers())

    def task_loss(w: Weights, su: torch.Tensor, si: torch.Tensor, sy: torch.Tensor,
                  qu: torch.Tensor, qi: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        adapted = adapt(model, w, su, si, sy, config)
        return _bce(functional_call(model, (adapted, buffers), (qu, qi)), qy)

    losses = vmap(task_loss, in_dims=(None, 0, 0, 0, 0, 0, 0))(
        weights, tasks.support_users, tasks.support_items, tasks.support_labels,
        tasks.query_users, tasks.query_items, tasks.query_labels,
    )
    return losses.mean()


def meta_gradients(model: nn.Module, tasks: Tasks, config: MAMLConfig) -> tuple[Weights, float]:
    """The meta-gradient of every trainable weight of `model` and the meta-loss."""
    weights = {k: v.detach() for k, v in weights_of(model).items()}

    def objective(w: Weights) -> tuple[torch.Tensor, torch.Tensor]:
        loss = meta_loss(model, w, tasks, config)
        return loss, loss.detach()

    with cpu_one_thread(tasks.query_users.device):
        grads, loss = grad(objective, has_aux=True)(weights)
    return grads, float(loss)


def meta_step(model: nn.Module, optimizer: torch.optim.Optimizer, tasks: Tasks, config: MAMLConfig) -> float:
    """One meta-update of `model` through `optimizer`; returns the meta-loss before it."""
    grads, loss = meta_gradients(model, tasks, config)
    for name, p in weights_of(model).items():
        p.grad = grads[name]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

