"""FOREC's fork: a copy of the meta-learned (or NMF++) network per market, mostly frozen, with a
market-specific head that is fine-tuned on that market alone.

The forked network is an NMF. Its joined representation (the MLP tower's output next to the GMF
product) feeds a new market head, a ReLU MLP of `head` widths, and a new output layer. Trainable:
the head, the new output layer and the last `unfreeze` fully-connected layers of the forked MLP
tower. Frozen: everything else (both embedding tables, the GMF branch, the lower tower layers),
which is what lets one meta-learned model serve every market while each fork adapts cheaply.
"""

from __future__ import annotations

import torch
from torch import nn

from xmfast.models.ncf import NMF, initialise_weights
from xmfast.models.settings import FORECConfig
from xmfast.models.threads import Linear


class FOREC(nn.Module):
    def __init__(self, n_users: int, n_items: int, config: FORECConfig = FORECConfig()) -> None:
        super().__init__()
        self.config = config
        self.base = NMF(n_users, n_items, config.nmf)
        width = config.nmf.mlp.layers[-1] + config.nmf.gmf.embedding_dim
        layers: list[nn.Module] = []
        for h in config.head:
            layers += [Linear(width, h), nn.ReLU()]
            width = h
        self.head = nn.Sequential(*layers)
        self.output = Linear(width, 1)
        initialise_weights(self.head, config.init, config.init_std)
        initialise_weights(self.output, config.init, config.init_std)
        self.freeze()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.base.mlp.features(users, items), self.base.gmf.features(users, items)], dim=-1)
        return self.output(self.head(joined)).squeeze(-1)

    def trainable_base_layers(self) -> list[nn.Linear]:
        """The forked tower's last `unfreeze` linear layers."""
        linears = [m for m in self.base.mlp.tower if isinstance(m, nn.Linear)]
        return linears[len(linears) - self.config.unfreeze :] if self.config.unfreeze else []

    def freeze(self) -> None:
        for p in self.base.parameters():
            p.requires_grad_(False)
        for layer in self.trainable_base_layers():
            for p in layer.parameters():
                p.requires_grad_(True)

    @torch.no_grad()
    def fork(self, nmf_state: dict[str, torch.Tensor]) -> None:
        """Copies the forked network's weights (an NMF state dict) and re-applies the freezing."""
        self.base.load_state_dict(nmf_state)
        if self.config.output_from_base:
            self.output.weight.copy_(nmf_state["output.weight"])
            self.output.bias.copy_(nmf_state["output.bias"])
        self.freeze()
