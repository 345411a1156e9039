"""Meta-learning: the engine that trains MAML across markets (FOREC's pre-training). The maths
of a meta-step (``torch.func``) is in :mod:`xmfast.models.maml`; this is its epoch, its
distributed form and its optional test-time adaptation. A model selects it by returning
:class:`MAMLTrainer` from its ``trainer()`` hook."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from xmfast.errors import XmfastError, spelled
from xmfast.models.maml import Tasks, adapt, meta_loss, meta_step, weights_of
from xmfast.training import distributed
from xmfast.training.loop import ModelScorer, Trainer, _adam, _epoch_seed

class _MetaObjective(nn.Module):
    """MAML's meta-loss as a module (its forward takes a meta-batch's tensors), so that
    DistributedDataParallel can reduce its gradients under torchrun."""

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return meta_loss(self.model, weights_of(self.model), Tasks(*tensors), self.config)


class MAMLTrainer(Trainer):
    """MAML across the run's markets (see :mod:`xmfast.models.maml`). An epoch is one pass over the
    target's instances: each meta-step takes, for every market, a support and a query batch of
    `batch_size` instances from that market's reshuffled instances (cycling through the smaller
    markets), adapts on the support batch and updates the shared weights from the query losses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if len(self.rows.markets) < 2:
            raise XmfastError("maml meta-learns across markets: give source markets "
                              "(" + spelled("TrainConfig(sources=('de',)), or ('all',)", "--sources de, or all") + ")")
        self.use_graphs = False  # the meta-step is not captured; the optimiser need not be capturable
        self.optimizer = _adam(self.model, self.config.learning_rate(self.spec), self.config.l2, self.device, False)

    def _meta_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], int,
                                               torch.Tensor]:
        """An epoch's instances with each market's indices shuffled (a function of (seed, epoch)),
        the number of meta-steps (support + query batches of the largest market) and the offsets
        that pick a step's 2 × batch instances from each market, cycling through smaller ones."""
        users, items, labels, market = self._instances(epoch)
        gen = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch))
        per_market = [idx.to(self.device) for idx in self._shuffled_by_market(market, gen)]
        size = self.config.batch_size
        steps = self._epoch_steps(per_market, 2 * size)
        self.observer.on_epoch_start(epoch, steps)
        self.model.train()
        return users, items, labels, per_market, steps, torch.arange(2 * size, device=self.device)

    def train_epoch(self, epoch: int) -> tuple[float, int, float]:
        if self.world > 1:
            return self._train_epoch_sharded(epoch)
        start = time.perf_counter()
        users, items, labels, per_market, steps, offsets = self._meta_epoch(epoch)
        size = self.config.batch_size
        total, seen = 0.0, 0
        for step in range(steps):
            picks = torch.stack([idx[(step * 2 * size + offsets) % idx.shape[0]] for idx in per_market if idx.numel()])
            support, query = picks[:, :size], picks[:, size:]
            tasks = Tasks(users[support], items[support], labels[support], users[query], items[query], labels[query])
            loss = meta_step(self.model, self.optimizer, tasks, self.model_config.maml)
            total += loss * picks.numel()
            seen += int(picks.numel())
            self.observer.on_batch(total / seen, int(picks.numel()))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return total / max(seen, 1), seen, time.perf_counter() - start

    def _train_epoch_sharded(self, epoch: int) -> tuple[float, int, float]:
        """One epoch as rank `rank` of `world`: the same meta-steps as in one process, of which
        this rank computes the tasks (markets) ``rank::world`` through DistributedDataParallel.
        A rank's meta-loss is weighted by its share of the tasks (times `world`, as DDP averages),
        so the reduced gradient is the meta-gradient of all tasks."""
        start = time.perf_counter()
        self._seed_rank(epoch)
        users, items, labels, per_market, steps, offsets = self._meta_epoch(epoch)
        size = self.config.batch_size
        if self._parallel is None:
            self._parallel = distributed.wrap(_MetaObjective(self.model, self.model_config.maml), self.device)
        weights = list(weights_of(self.model).values())
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        seen = 0
        for step in range(steps):
            picks = torch.stack([idx[(step * 2 * size + offsets) % idx.shape[0]] for idx in per_market if idx.numel()])
            mine = picks[self.rank :: self.world]
            weight = mine.shape[0] / picks.shape[0] * self.world
            if mine.shape[0] == 0:  # more ranks than tasks: take part with zero weight
                mine, weight = picks[:1], 0.0
            support, query = mine[:, :size], mine[:, size:]
            loss = self._parallel(users[support], items[support], labels[support],
                                  users[query], items[query], labels[query])
            (loss * weight).backward()
            for p in weights:  # meta_step gives every weight a gradient (zero when unused)
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if weight:
                total += loss.detach().double() * mine.numel()
                seen += int(mine.numel())
            self.observer.on_batch(float(total) / seen if seen else None, int(picks.numel()))
        return self._over_ranks(total, seen, start)

    def _test_scorer(self, scorer: ModelScorer) -> ModelScorer:
        """With `test_adaptation_steps` (as FOREC's MAML evaluation did): the selected weights
        adapted on the target's validation interactions (each held-out item, label 1, and the
        first `negatives` of its stored candidates, label 0; or `test_adaptation_batch` of all
        the candidate instances at random) before scoring the test split.
        Validation results are always those of the unadapted weights."""
        steps = self.model_config.maml.test_adaptation_steps
        if not steps:
            return scorer
        held = self.dataset.valid
        q = self.valid_groups
        k = self.config.negatives
        shots = self.model_config.maml.test_adaptation_batch
        # the held-out item is column 0 of the stored candidates
        candidates = torch.from_numpy(np.asarray(held.candidates)[q][:, : None if shots else 1 + k].astype(np.int64))
        groups = torch.from_numpy(np.asarray(held.group)[q].astype(np.int64))
        users = groups[:, None].expand_as(candidates).reshape(-1)
        items = candidates.reshape(-1)
        labels = torch.zeros(candidates.shape).index_fill_(1, torch.tensor([0]), 1.0).reshape(-1)
        if shots:  # one random batch of `shots` validation instances, as FOREC's code adapts on
            gen = torch.Generator().manual_seed(_epoch_seed(self.config.seed, 0))
            pick = torch.randperm(items.shape[0], generator=gen)[:shots]
            users, items, labels = users[pick], items[pick], labels[pick]
        users, items, labels = users.to(self.device), items.to(self.device), labels.to(self.device)
        weights = {name: w.detach() for name, w in weights_of(self.model).items()}
        adapted = adapt(self.model, weights, users, items, labels, self.model_config.maml, steps=steps)
        model = copy.deepcopy(self.model)
        model.load_state_dict({**self.model.state_dict(), **{n: w.detach() for n, w in adapted.items()}})
        return ModelScorer(model, self.device, amp=self.amp)


