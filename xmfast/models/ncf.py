"""The NCF family as FOREC used it: GMF, MLP and NMF (NeuMF), each scoring (group, item) pairs.

Users are *groups* (a market and a user), so a reviewer active in two markets has two
embeddings, as in FOREC where each market's users were distinct; items are shared across markets,
which is what lets source-market data (the ``++`` variants) move the target's item embeddings.

Every model returns logits; training applies the sigmoid inside the loss (numerically the same
as FOREC's sigmoid + BCE, without its overflow).
"""

from __future__ import annotations

import torch
from torch import nn

from xmfast.models.settings import GMFConfig, MLPConfig, NMFConfig
from xmfast.models.threads import Linear


def initialise_weights(module: nn.Module, init: str, std: float) -> None:
    """`init` "normal": every embedding and linear weight of `module` from N(0, std²), biases
    zero; "pytorch": left as PyTorch's constructors drew them (see :data:`settings.Init`)."""
    if init == "normal":
        _init_normal(module, std)


def _init_normal(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Embedding, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


class GMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, config: GMFConfig = GMFConfig()) -> None:
        super().__init__()
        self.config = config
        self.user_embedding = nn.Embedding(n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(n_items, config.embedding_dim)
        self.output = Linear(config.embedding_dim, 1)
        initialise_weights(self, config.init, config.init_std)

    def features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users) * self.item_embedding(items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(users, items)).squeeze(-1)


class MLP(nn.Module):
    def __init__(self, n_users: int, n_items: int, config: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        self.config = config
        self.user_embedding = nn.Embedding(n_users, config.embedding_dim)
        self.item_embedding = nn.Embedding(n_items, config.embedding_dim)
        tower: list[nn.Module] = []
        for width_in, width_out in zip(config.layers[:-1], config.layers[1:]):
            tower += [Linear(width_in, width_out), nn.ReLU()]
        self.tower = nn.Sequential(*tower)
        self.output = Linear(config.layers[-1], 1)
        initialise_weights(self, config.init, config.init_std)

    def features(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.tower(torch.cat([self.user_embedding(users), self.item_embedding(items)], dim=-1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(users, items)).squeeze(-1)


@torch.no_grad()
def embeddings_from_gmf(mlp: MLP, gmf: GMF) -> None:
    """FOREC's MLP initialisation: the user and item embeddings of a trained GMF."""
    if gmf.config.embedding_dim != mlp.config.embedding_dim:
        raise ValueError(f"the GMF run's embedding_dim {gmf.config.embedding_dim} is not the MLP's "
                         f"{mlp.config.embedding_dim} (layers[0] // 2)")
    mlp.user_embedding.weight.copy_(gmf.user_embedding.weight)
    mlp.item_embedding.weight.copy_(gmf.item_embedding.weight)


class NMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, config: NMFConfig = NMFConfig(),
                 branches: tuple[GMF, MLP] | None = None) -> None:
        """`branches`: a variant's own GMF and MLP modules (the market-aware NMF's); by default
        built from `config`."""
        super().__init__()
        self.config = config
        self.gmf, self.mlp = branches or (GMF(n_users, n_items, config.gmf), MLP(n_users, n_items, config.mlp))
        # The branches' own heads are unused inside NMF; they stay so the branches load as is.
        self.output = Linear(config.mlp.layers[-1] + config.gmf.embedding_dim, 1)
        initialise_weights(self.output, config.gmf.init, config.gmf.init_std)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.mlp.features(users, items), self.gmf.features(users, items)], dim=-1)
        return self.output(joined).squeeze(-1)

    @torch.no_grad()
    def load_pretrained(self, gmf: GMF, mlp: MLP) -> None:
        """FOREC's initialisation: both branches copied, the output layer = [alpha · MLP head,
        (1 - alpha) · GMF head], its bias the same mix of the two biases. Without
        `copy_tower_bias` the MLP tower's biases keep their own initialisation (FOREC's code)."""
        if gmf.config != self.config.gmf or mlp.config != self.config.mlp:
            raise ValueError(
                f"pretrained branches do not match NMF's configuration (gmf {gmf.config} vs {self.config.gmf}, "
                f"mlp {mlp.config} vs {self.config.mlp})"
            )
        self.gmf.load_state_dict(gmf.state_dict())
        own = {k: v.clone() for k, v in self.mlp.tower.state_dict().items() if k.endswith("bias")}
        self.mlp.load_state_dict(mlp.state_dict())
        if not self.config.copy_tower_bias:
            self.mlp.tower.load_state_dict(own, strict=False)
        a = self.config.alpha
        self.output.weight.copy_(torch.cat([a * mlp.output.weight, (1 - a) * gmf.output.weight], dim=-1))
        self.output.bias.copy_(a * mlp.output.bias + (1 - a) * gmf.output.bias)
