"""The engine of history models (ACMR): batches bucketed by history length."""

from __future__ import annotations

from typing import Any

import torch

from xmfast.training.loop import Trainer, _adam, _epoch_seed

class SequenceTrainer(Trainer):
    """The engine for history models (ACMR). Instances are keyed by training row (see
    :mod:`xmfast.models.acmr`), and batches are bucketed by history length: the epoch's shuffled
    batches are taken in windows of `bucket_batches`, each window's instances sorted by history
    length and cut again into batches of the same sizes, and all batches reshuffled. A batch then
    holds histories of similar length and the model cuts it to its longest one, which on
    XMarket makes a batch about 5× narrower than the padded width. Every choice is still a
    function of (seed, epoch), so resumption stays exact. Steps run eagerly: their shapes vary."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.use_graphs = False
        self.optimizer = _adam(self.model, self.config.learning_rate(self.spec), self.config.l2, self.device, False)
        n, k = len(self.rows), self.config.negatives
        lengths = self.model.training_lengths().cpu()  # type: ignore[operator]
        if self.pointwise:  # batches of instances: each row, then its negatives
            lengths = lengths[torch.cat([torch.arange(n), torch.arange(n).repeat_interleave(k)])]
        self._instance_length = lengths

    def _batch_order(self, epoch: int, market: torch.Tensor) -> list[torch.Tensor]:
        batches = super()._batch_order(epoch, market)
        window = self.model_config.bucket_batches
        if not window or (self.config.sampling == "equal" and len(self.rows.markets) > 1):
            return batches  # equal sampling keeps its market alternation
        gen = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch) ^ 0x5EC)
        bucketed: list[torch.Tensor] = []
        for start in range(0, len(batches), window):
            part = batches[start : start + window]
            index = torch.cat(part)
            index = index[torch.argsort(self._instance_length[index], stable=True)]
            bucketed.extend(index.split([b.shape[0] for b in part]))
        order = torch.randperm(len(bucketed), generator=gen)
        return [bucketed[j] for j in order.tolist()]


