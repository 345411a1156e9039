"""The hyper-parameters of the built-in models, one frozen dataclass each.

They live apart from the networks (which import torch) so that the registry, the CLI's option
parsing, the planner and the report read them without loading torch; the networks import them
from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from xmfast.errors import XmfastError


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class GMFConfig:
    """Generalised matrix factorisation: logit = w · (p_u ⊙ q_i) + b."""

    embedding_dim: int = 8
    init_std: float = 0.01  # FOREC (after NCF's PyTorch port) draws every weight from N(0, 0.01²)

    def __post_init__(self) -> None:
        _positive("embedding_dim", self.embedding_dim)


@dataclass(frozen=True)
class MLPConfig:
    """A ReLU tower over the concatenated user and item embeddings; `layers[0]` is the width of
    that concatenation, so each embedding has `layers[0] // 2` dimensions."""

    layers: tuple[int, ...] = (16, 64, 32, 16, 8)
    init_std: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if len(self.layers) < 2 or any(x <= 0 for x in self.layers):
            raise ValueError(f"mlp layers must be at least two positive widths, got {list(self.layers)}")
        if self.layers[0] % 2:
            raise ValueError(f"mlp layers[0] is the concatenated user+item embedding, so it must be even, got {self.layers[0]}")

    @property
    def embedding_dim(self) -> int:
        return self.layers[0] // 2


@dataclass(frozen=True)
class NMFConfig:
    """NeuMF: a GMF and an MLP branch with their own embeddings, joined by one output layer.

    With `pretrained` (FOREC's setting) the branches start from trained GMF and MLP runs and the
    output layer is `alpha` times the MLP head next to `1 - alpha` times the GMF head."""

    gmf: GMFConfig = GMFConfig()
    mlp: MLPConfig = MLPConfig()
    pretrained: bool = True
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.gmf, dict):
            object.__setattr__(self, "gmf", GMFConfig(**self.gmf))
        if isinstance(self.mlp, dict):
            object.__setattr__(self, "mlp", MLPConfig(**self.mlp))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"nmf alpha must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class FORECConfig:
    nmf: NMFConfig = NMFConfig()
    unfreeze: int = 3  # last fully-connected layers of the forked tower that stay trainable
    head: tuple[int, ...] = (16, 32, 16)  # widths of the market head's hidden layers
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.nmf, dict):
            object.__setattr__(self, "nmf", NMFConfig(**self.nmf))
        object.__setattr__(self, "head", tuple(int(x) for x in self.head))
        tower = len(self.nmf.mlp.layers) - 1
        if not 0 <= self.unfreeze <= tower:
            raise ValueError(f"unfreeze must be between 0 and the tower's {tower} layers, got {self.unfreeze}")
        if any(x <= 0 for x in self.head):
            raise ValueError(f"head widths must be positive, got {list(self.head)}")


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
    history_seed: int = 0  # seed of the random truncation rule
    # A training row is scored with its group's history without the row's own item, as the test
    # item is absent from the history it is tested with. False reproduces the original code, which
    # scores every training instance with the user's whole training history: a positive finds
    # itself there, a shortcut ("in the history, so positive") that never holds at test time.
    leave_out_own_item: bool = True
    # Training batches are sorted by history length within windows of this many batches (then the
    # window's batches are shuffled), so a batch is cut to a short width; 0 turns it off.
    bucket_batches: int = 64

    def __post_init__(self) -> None:
        if self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be divisible by heads {self.heads}")
        if self.bucket_batches < 0:
            raise ValueError(f"bucket_batches must be non-negative, got {self.bucket_batches}")
        if min(self.embedding_dim, self.blocks, self.heads, self.ff_multiplier, self.history) < 1:
            raise ValueError("embedding_dim, blocks, heads, ff_multiplier and history must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.truncation not in ("random", "recent", "cooc"):
            raise ValueError(f"truncation must be random, recent or cooc, got {self.truncation!r}")


@dataclass(frozen=True)
class MAMLConfig:
    """The meta-learning settings (FOREC's defaults: fast lr 0.1, one adaptation step)."""

    inner_lr: float = 0.1
    inner_steps: int = 1
    first_order: bool = False
    # Adaptation steps on a validation batch before testing, as FOREC's evaluation did; 0 (the
    # default) evaluates the meta-learned weights as they are.
    test_adaptation_steps: int = 0

    def __post_init__(self) -> None:
        if self.inner_steps < 1:
            raise XmfastError(f"inner_steps must be at least 1, got {self.inner_steps}")
        if not self.inner_lr > 0:
            raise XmfastError(f"inner_lr must be positive, got {self.inner_lr}")
        if self.test_adaptation_steps < 0:
            raise XmfastError(f"test_adaptation_steps must be 0 or more, got {self.test_adaptation_steps}")


@dataclass(frozen=True)
class MAMLModelConfig:
    """`xmfast train --model maml`: an NMF (shaped like the NMF++ run it starts from) meta-trained
    across the target and source markets."""

    nmf: NMFConfig = NMFConfig()
    maml: MAMLConfig = MAMLConfig()

    def __post_init__(self) -> None:
        if isinstance(self.nmf, dict):
            object.__setattr__(self, "nmf", NMFConfig(**self.nmf))
        if isinstance(self.maml, dict):
            object.__setattr__(self, "maml", MAMLConfig(**self.maml))


@dataclass(frozen=True)
class PopularityConfig:
    """Item popularity in the target market's training rows."""


@dataclass(frozen=True)
class CooccurrenceConfig:
    """Sum of an item's co-occurrence with the user's history; counts from `markets` (empty:
    every market of the dataset)."""

    markets: tuple[str, ...] = ()
    max_history: int | None = None


