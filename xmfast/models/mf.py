"""Matrix factorisation, the built-in ``mf``: score(u, i) = <p_u, q_i> + b_i over (market, user)
groups, trained with BPR by the engine. Rendle et al. (RecSys 2020) show that MF with tuned
settings is a strong baseline; ``xmfast tune`` searches lr, l2 and embedding_dim for it."""

from __future__ import annotations

import torch
from torch import nn

from xmfast.models.settings import MFConfig


class MF(nn.Module):
    def __init__(self, n_groups: int, n_items: int, config: MFConfig = MFConfig()) -> None:
        super().__init__()
        self.config = config
        self.user_embedding = nn.Embedding(n_groups, config.embedding_dim)
        self.item_embedding = nn.Embedding(n_items, config.embedding_dim)
        nn.init.normal_(self.user_embedding.weight, 0.0, config.init_std)
        nn.init.normal_(self.item_embedding.weight, 0.0, config.init_std)
        # b_i learns popularity apart from taste; it starts at zero, as BPR's ranking ignores a constant
        self.item_bias = nn.Embedding(n_items, 1) if config.item_bias else None
        if self.item_bias is not None:
            nn.init.zeros_(self.item_bias.weight)

    def forward(self, keys: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        score = (self.user_embedding(keys) * self.item_embedding(items)).sum(-1)
        return score if self.item_bias is None else score + self.item_bias(items).squeeze(-1)
