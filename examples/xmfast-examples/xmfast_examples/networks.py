"""The torch modules of the example models. A module scores (key, item) pairs: ``module(keys,
items)`` returns one logit per pair; a key is a (market, user) group."""

import numpy as np
import torch
from torch import nn


class MF(nn.Module):
    """score(u, i) = <p_u, q_i> + b_i."""

    def __init__(self, groups, items, config):
        super().__init__()
        self.user = nn.Embedding(groups, config.embedding_dim)
        self.item = nn.Embedding(items, config.embedding_dim)
        nn.init.normal_(self.user.weight, 0.0, config.init_std)
        nn.init.normal_(self.item.weight, 0.0, config.init_std)
        self.bias = nn.Embedding(items, 1) if config.item_bias else None
        if self.bias is not None:
            nn.init.zeros_(self.bias.weight)

    def forward(self, keys, items):
        score = (self.user(keys) * self.item(items)).sum(-1)
        return score if self.bias is None else score + self.bias(items).squeeze(-1)


class MarketItemBias(nn.Module):
    """A GMF module plus one bias per (market, item), starting at 0.

    Per item rather than one scalar per market: a scalar would add the same number to every
    candidate of a user and change no ranking. This way each market learns its own popularity
    offsets while the GMF part learns the taste shared across markets."""

    def __init__(self, gmf, sizes):
        super().__init__()
        self.gmf = gmf
        self.market_bias = nn.Parameter(torch.zeros(sizes.markets, sizes.items))
        # each key's market, filled by attach() from the dataset (not saved: the dataset has it)
        self.register_buffer("group_market", torch.zeros(sizes.groups, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def set_group_market(self, group_market):
        self.group_market.copy_(torch.from_numpy(np.asarray(group_market, dtype=np.int64)))

    def forward(self, keys, items):
        return self.gmf(keys, items) + self.market_bias[self.group_market[keys], items]
