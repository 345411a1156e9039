"""Market-aware NCF: MA-GMF, MA-MLP and MA-NMF (Bhargav, Aliannejadi, Kanoulas, "Market-Aware
Models for Efficient Cross-Market Recommendation", ECIR 2023).

Each market has an embedding m_k as wide as the item embeddings; an item's vector in market k is
q_i ⊙ m_k, which then enters GMF (p_u ⊙ q_i ⊙ m_k), the MLP tower (concat(p_u, q_i ⊙ m_k)) or
both branches of NeuMF. One model learns every market at once instead of meta-learning across
them. This follows the authors' code (samarthbhargav/efficient-xmrec, ``xmrec/models/model.py``),
read for the facts: the market scales the item side only (its default), MA-MLP's embeddings
(user, item, market) start from an MA-GMF run's, and MA-NMF has one market embedding shared by
its branches, taken from the MA-MLP run. What is xmfast's own is in
:class:`xmfast.models.settings.MAGMFConfig` (``market_init``).

A key is a (market, user) group, so each module reads its keys' markets from the dataset
(``set_group_market``, called by the declaration's ``attach``); they are not saved with the
weights. Because user vectors are per (market, user), MA-GMF's p_u ⊙ m_k could be folded into
p_u: the market embedding adds no expressiveness to GMF, it shares one market-wide scaling among
the market's users (a prior for users with few ratings). In the MLP branch it does not fold.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xmfast.models import ncf
from xmfast.models.settings import MAGMFConfig, MAMLPConfig, MANMFConfig


class _MarketScaled(nn.Module):
    """What MA-GMF and MA-MLP add to their NCF module: a market embedding and each key's market."""

    item_embedding: nn.Embedding
    group_market: torch.Tensor

    def _add_markets(self, n_users: int, n_markets: int, dim: int, config: MAGMFConfig | MAMLPConfig) -> None:
        self.market_embedding = nn.Embedding(n_markets, dim)
        if config.market_init == "ones":
            nn.init.ones_(self.market_embedding.weight)
        else:
            ncf.initialise_weights(self.market_embedding, config.init, config.init_std)
        # filled by set_group_market from the dataset; not part of the weights
        self.register_buffer("group_market", torch.zeros(n_users, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def set_group_market(self, group_market: np.ndarray) -> None:
        """Each key's market code (``dataset.group_market``)."""
        self.group_market.copy_(torch.from_numpy(np.asarray(group_market, dtype=np.int64)))

    def item_vectors(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """q_i ⊙ m_k, k the market of each key."""
        return self.item_embedding(items) * self.market_embedding(self.group_market[users])


class MAGMF(_MarketScaled, ncf.GMF):
    def __init__(self, n_users: int, n_items: int, n_markets: int, config: MAGMFConfig = MAGMFConfig()) -> None:
        ncf.GMF.__init__(self, n_users, n_items, config)
        self._add_markets(n_users, n_markets, config.embedding_dim, config)

    def features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users) * self.item_vectors(users, items)


class MAMLP(_MarketScaled, ncf.MLP):
    def __init__(self, n_users: int, n_items: int, n_markets: int, config: MAMLPConfig = MAMLPConfig()) -> None:
        ncf.MLP.__init__(self, n_users, n_items, config)
        self._add_markets(n_users, n_markets, config.embedding_dim, config)

    def features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.tower(torch.cat([self.user_embedding(users), self.item_vectors(users, items)], dim=-1))


@torch.no_grad()
def embeddings_from_magmf(mlp: MAMLP, gmf: MAGMF) -> None:
    """MA-MLP's start from a trained MA-GMF: its user, item and market embeddings."""
    ncf.embeddings_from_gmf(mlp, gmf)
    mlp.market_embedding.weight.copy_(gmf.market_embedding.weight)


class MANMF(ncf.NMF):
    """NeuMF over an MA-GMF and an MA-MLP branch. Its forward and its start from the branches' runs
    (:meth:`ncf.NMF.load_pretrained`) are NMF's: with `shared_market` the MA-MLP branch's market
    embedding *is* the MA-GMF branch's module, so loading the MA-MLP run last leaves its markets
    in both, as the authors' code does."""

    gmf: MAGMF
    mlp: MAMLP

    def __init__(self, n_users: int, n_items: int, n_markets: int, config: MANMFConfig = MANMFConfig()) -> None:
        branches = (MAGMF(n_users, n_items, n_markets, config.gmf), MAMLP(n_users, n_items, n_markets, config.mlp))
        super().__init__(n_users, n_items, config, branches=branches)
        if config.shared_market:
            self.mlp.market_embedding = self.gmf.market_embedding

    def set_group_market(self, group_market: np.ndarray) -> None:
        self.gmf.set_group_market(group_market)
        self.mlp.set_group_market(group_market)
