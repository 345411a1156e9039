"""The engines of history models: batches bucketed by history length (ACMR), batches of whole
causal windows (SASRec)."""

from __future__ import annotations

from typing import Any

import torch

from xmfast.errors import XmfastError
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
        lengths = self.model.training_lengths().cpu()  # type: ignore[operator]
        if self.pointwise:  # batches of instances: each row, then its negatives
            lengths = torch.cat([lengths, lengths.repeat_interleave(self.config.negatives)])
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




class WindowTrainer(Trainer):
    """The engine for causal sequence models (SASRec, see :mod:`xmfast.models.sasrec`): a batch is
    a set of whole training windows, all of whose target rows it holds, so each window is encoded
    once for all its positions. Windows are shuffled by (seed, epoch), sorted by length within
    spans of `bucket_batches` batches (a batch is cut to its longest window), packed until a
    batch holds `batch_size` rows (it may pass it by less than one window), and the batches
    shuffled again. All markets' windows share one stream (``sampling = "concat"``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.sampling != "concat" and len(self.rows.markets) > 1:
            raise XmfastError(f"model {self.spec.name} trains on one stream of all markets' windows: sampling "
                              f"{self.config.sampling!r} is not available (use concat)")
        self.use_graphs = False
        # per window: its first target row (its rows are that one and the next ones), rows, length
        self._window_first, self._window_rows, self._window_lengths = self.model.training_windows()  # type: ignore[operator]

    def _batch_order(self, epoch: int, market: torch.Tensor) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch))
        size = self.config.batch_size
        order = torch.randperm(self._window_rows.shape[0], generator=gen)
        span = self.model_config.bucket_batches
        if span and order.numel():
            rows = self._window_rows[order]
            bucket = (torch.cumsum(rows, 0) - rows) // (size * span)
            lengths = self._window_lengths[order]
            order = order[torch.argsort(bucket * (int(lengths.max()) + 1) + lengths, stable=True)]
        rows = self._window_rows[order]
        before = torch.cumsum(rows, 0) - rows
        batch = before // size
        counts = torch.bincount(batch, weights=rows.double()).long() if rows.numel() else rows
        index = self._window_first[order].repeat_interleave(rows) + (
            torch.arange(int(rows.sum())) - before.repeat_interleave(rows))
        batches = [b for b in index.split(counts.tolist()) if b.numel()]
        shuffle = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch) ^ 0x5A5)
        return [batches[j] for j in torch.randperm(len(batches), generator=shuffle).tolist()]
