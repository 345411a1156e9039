"""Training objectives other than pointwise BCE, on batches of whole training rows.

``bce`` (FOREC's, the default) is computed in the loop on shuffled (key, item, label) instances,
so a row's positive and its negatives land in different batches as in FOREC's code. The others
need a row's positive and negatives together, so their batches are of rows: a :class:`Batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Batch:
    """`n` training rows: each row's key (a group, or for history models the training row), its
    positive item, its `k` sampled negatives and its market (0 = the target, then the run's
    sources in order)."""

    keys: torch.Tensor  # (n,) long
    positives: torch.Tensor  # (n,) long
    negatives: torch.Tensor  # (n, k) long
    markets: torch.Tensor  # (n,) long

    def scores(self, module: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's logits of the positives (n,) and of the negatives (n, k)."""
        n, k = self.negatives.shape
        positive = module(self.keys, self.positives)
        negative = module(self.keys.repeat_interleave(k), self.negatives.reshape(-1)).view(n, k)
        return positive.float(), negative.float()


def bpr(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking (Rendle et al. 2009): −log σ(s⁺ − s⁻), averaged over every
    (positive, negative) pair of the batch."""
    return -F.logsigmoid(positive[:, None] - negative).mean()


def sampled_softmax(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of the positive among itself and its sampled negatives (no correction
    for the sampling distribution: negatives are uniform over the market's items)."""
    logits = torch.cat([positive[:, None], negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def row_loss(model: Any, module: Any, batch: Batch) -> torch.Tensor:
    """The loss `model` (a registered :class:`xmfast.models.Model`) declares, on `batch`."""
    if model.objective == "own":
        return model.loss(module, batch)
    positive, negative = batch.scores(module)
    if model.objective == "bpr":
        return bpr(positive, negative)
    if model.objective == "softmax":
        return sampled_softmax(positive, negative)
    raise ValueError(f"objective {model.objective!r} is trained on instances, not rows")
