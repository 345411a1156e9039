"""ACMR (Hu et al., Information Systems 2024): attention over a user's cross-market history.

Every position of the input sequence is an item embedding plus a **market embedding** of the
market the interaction belongs to, so an item's representation has a market-agnostic part (the
item) and a market-specific part (the market): the paper's remedy for negative transfer. The
sequence is the user's history (up to `history` items, padded) followed by one candidate
position. A transformer encoder reads it with padded positions masked out; the user vector is
the mean of the encoded *history* positions, the candidate vector is the encoded candidate
position, and a linear layer on [user vector, candidate vector] gives the logit.

Padding never changes a score: padded positions are excluded from attention (key padding mask)
and from the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ACMRConfig:
    """The paper's defaults."""

    embedding_dim: int = 32
    blocks: int = 4
    heads: int = 8
    ff_multiplier: int = 4
    dropout: float = 0.3
    history: int = 50  # history positions; the candidate takes one more
    truncation: str = "random"  # how longer histories are cut: random (the original), recent or cooc

    def __post_init__(self) -> None:
        if self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be divisible by heads {self.heads}")
        if min(self.embedding_dim, self.blocks, self.heads, self.ff_multiplier, self.history) < 1:
            raise ValueError("embedding_dim, blocks, heads, ff_multiplier and history must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.truncation not in ("random", "recent", "cooc"):
            raise ValueError(f"truncation must be random, recent or cooc, got {self.truncation!r}")


class ACMR(nn.Module):
    def __init__(self, n_items: int, n_markets: int, config: ACMRConfig = ACMRConfig()) -> None:
        super().__init__()
        self.config = config
        self.n_items = n_items
        d = config.embedding_dim
        # Item n_items is the padding item of the history matrices (see PreparedDataset.padded_histories).
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.market_embedding = nn.Embedding(n_markets, d)
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=config.heads, dim_feedforward=config.ff_multiplier * d, dropout=config.dropout,
            batch_first=True, norm_first=False,
        )
        # enable_nested_tensor=False keeps padded and unpadded batches on the same code path.
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.blocks, enable_nested_tensor=False)
        self.output = nn.Linear(2 * d, 1)
        nn.init.normal_(self.item_embedding.weight, 0.0, d**-0.5)
        nn.init.normal_(self.market_embedding.weight, 0.0, d**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def forward(self, history: torch.Tensor, lengths: torch.Tensor, market: torch.Tensor,
                candidates: torch.Tensor) -> torch.Tensor:
        """Logits of `candidates` ((B,) or (B, C)) for histories `history` (B, L) of which the
        first `lengths` positions are real, all in market `market` (B,)."""
        squeeze = candidates.dim() == 1
        cand = candidates[:, None] if squeeze else candidates
        b, c = cand.shape
        length = history.shape[1]
        # One sequence per (user, candidate): the history then the candidate.
        hist = history[:, None, :].expand(b, c, length)
        seq = torch.cat([hist, cand[:, :, None]], dim=2).reshape(b * c, length + 1)
        mkt = market[:, None].expand(b, c).reshape(b * c)
        x = self.item_embedding(seq) + self.market_embedding(mkt)[:, None, :]
        positions = torch.arange(length + 1, device=history.device)
        real = positions[None, :] < lengths.repeat_interleave(c)[:, None]
        real[:, length] = True  # the candidate position
        h = self.encoder(x, src_key_padding_mask=~real)
        hist_mask = real[:, :length, None].to(h.dtype)
        user = (h[:, :length] * hist_mask).sum(1) / hist_mask.sum(1).clamp(min=1.0)
        logits = self.output(torch.cat([user, h[:, length]], dim=-1)).reshape(b, c)
        return logits[:, 0] if squeeze else logits
