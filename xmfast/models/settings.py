"""The hyper-parameters of the built-in models, one frozen dataclass each.

They live apart from the networks (which import torch) so that the registry, the CLI's option
parsing, the planner and the report read them without loading torch; the networks import them
from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xmfast._added import added
from xmfast.errors import XmfastError

# How a network's weights start. "normal": every embedding and linear weight from N(0, init_std²),
# biases zero (xmfast's choice, NCF's). "pytorch": PyTorch's own defaults, N(0, 1) embeddings and
# Kaiming-uniform linear layers, which is what FOREC's code trains (its init_weight does nothing).
Init = Literal["normal", "pytorch"]
INITS = ("normal", "pytorch")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be {' or '.join(INITS)}, got {init!r}")


@dataclass(frozen=True)
class GMFConfig:
    """Generalised matrix factorisation: logit = w · (p_u ⊙ q_i) + b."""

    embedding_dim: int = 8
    init: Init = added("normal")
    init_std: float = 0.01  # the std of init "normal"

    def __post_init__(self) -> None:
        _positive("embedding_dim", self.embedding_dim)
        _check_init(self.init)


@dataclass(frozen=True)
class MLPConfig:
    """A ReLU tower over the concatenated user and item embeddings; `layers[0]` is the width of
    that concatenation, so each embedding has `layers[0] // 2` dimensions."""

    layers: tuple[int, ...] = (16, 64, 32, 16, 8)
    init: Init = added("normal")
    init_std: float = 0.01
    # Start the user and item embeddings from a trained GMF run's (FOREC's code does; its GMF
    # must then have embedding_dim = layers[0] // 2).
    from_gmf: bool = added(False)

    def __post_init__(self) -> None:
        _check_init(self.init)
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
    # With `pretrained`, copy the MLP tower's biases along with its weights. FOREC's code copies
    # the weights only, so its tower biases restart from their initialisation.
    copy_tower_bias: bool = added(True)

    def __post_init__(self) -> None:
        if isinstance(self.gmf, dict):
            object.__setattr__(self, "gmf", GMFConfig(**self.gmf))
        if isinstance(self.mlp, dict):
            object.__setattr__(self, "mlp", MLPConfig(**self.mlp))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"nmf alpha must be in [0, 1], got {self.alpha}")


# ---- market-aware NCF (Bhargav, Aliannejadi, Kanoulas, ECIR 2023) ---------------------------------
# How the market embeddings start. "ones": every market as the identity, so training starts from
# the market-blind model (xmfast's choice: drawn from N(0, 0.01²) like the other embeddings, they
# would scale the item vectors down to ~1e-4 and the gradients with them); "random": drawn as the
# other embeddings are (`init`; with "pytorch", N(0, 1), which is what the authors' code trains).
MarketInit = Literal["ones", "random"]


def _check_market_init(value: str) -> None:
    if value not in ("ones", "random"):
        raise ValueError(f"market_init must be ones or random, got {value!r}")


@dataclass(frozen=True)
class MAGMFConfig(GMFConfig):
    """MA-GMF: GMF whose item vectors are multiplied element-wise by their market's embedding,
    logit = w · (p_u ⊙ q_i ⊙ m_market) + b."""

    market_init: MarketInit = "ones"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_market_init(self.market_init)


@dataclass(frozen=True)
class MAMLPConfig(MLPConfig):
    """MA-MLP: the MLP tower over the user embedding and the market-scaled item embedding; with
    `from_gmf` its user, item and market embeddings start from an MA-GMF run's."""

    market_init: MarketInit = "ones"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_market_init(self.market_init)


@dataclass(frozen=True)
class MANMFConfig(NMFConfig):
    """MA-NMF: NeuMF of an MA-GMF and an MA-MLP branch (pretrained: from their runs)."""

    gmf: MAGMFConfig = MAGMFConfig()
    mlp: MAMLPConfig = MAMLPConfig()
    # One market embedding for both branches, as the authors' code has (it then starts from the
    # MA-MLP run's); False: each branch keeps its own.
    shared_market: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.gmf, dict):
            object.__setattr__(self, "gmf", MAGMFConfig(**self.gmf))
        if isinstance(self.mlp, dict):
            object.__setattr__(self, "mlp", MAMLPConfig(**self.mlp))
        super().__post_init__()
        if self.shared_market and self.gmf.embedding_dim != self.mlp.embedding_dim:
            raise ValueError(f"shared_market needs the branches' embeddings of one width, got gmf embedding_dim "
                             f"{self.gmf.embedding_dim} and mlp {self.mlp.embedding_dim} (layers[0] // 2)")


@dataclass(frozen=True)
class FORECConfig:
    nmf: NMFConfig = NMFConfig()
    unfreeze: int = 3  # last fully-connected layers of the forked tower that stay trainable
    head: tuple[int, ...] = (16, 32, 16)  # widths of the market head's hidden layers
    init: Init = added("normal")  # of the market head (the forked NMF comes from its run)
    init_std: float = 0.01
    # The new output layer starts from the forked NMF's output layer, as in FOREC's code (which
    # loads the NMF checkpoint into the head model non-strictly; the two output layers have the
    # same shape when the last head width is the NMF's joined width).
    output_from_base: bool = added(False)

    def __post_init__(self) -> None:
        _check_init(self.init)
        if isinstance(self.nmf, dict):
            object.__setattr__(self, "nmf", NMFConfig(**self.nmf))
        object.__setattr__(self, "head", tuple(int(x) for x in self.head))
        tower = len(self.nmf.mlp.layers) - 1
        if not 0 <= self.unfreeze <= tower:
            raise ValueError(f"unfreeze must be between 0 and the tower's {tower} layers, got {self.unfreeze}")
        if any(x <= 0 for x in self.head):
            raise ValueError(f"head widths must be positive, got {list(self.head)}")
        joined = self.nmf.mlp.layers[-1] + self.nmf.gmf.embedding_dim
        if self.output_from_base and (self.head[-1] if self.head else joined) != joined:
            raise ValueError(f"output_from_base needs the head's last width to be the NMF's joined width {joined}, "
                             f"got head {list(self.head)}")


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
    # A LayerNorm and dropout (`dropout`) on the sum of item and market embeddings before the first
    # block, as the original code's BERTEmbedding has. On by default since issue 23; a run.json or
    # stage written before then (without the setting) had it off, and still reads so.
    embedding_norm: bool = added(True, absent=False)

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
    # What the test-time adaptation adapts on. 0: every validation user's held-out item (label 1)
    # with the first `negatives` of its candidates (label 0). n: n instances drawn at random
    # (seeded by the run's seed) from all the validation candidates, the held-out item labelled
    # 1 — FOREC's code adapts on one shuffled batch of `shots` (20) such instances.
    test_adaptation_batch: int = added(0)

    def __post_init__(self) -> None:
        if self.inner_steps < 1:
            raise XmfastError(f"inner_steps must be at least 1, got {self.inner_steps}")
        if not self.inner_lr > 0:
            raise XmfastError(f"inner_lr must be positive, got {self.inner_lr}")
        if self.test_adaptation_steps < 0:
            raise XmfastError(f"test_adaptation_steps must be 0 or more, got {self.test_adaptation_steps}")
        if self.test_adaptation_batch < 0:
            raise XmfastError(f"test_adaptation_batch must be 0 or more, got {self.test_adaptation_batch}")


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




@dataclass(frozen=True)
class SASRecConfig:
    """SASRec (Kang & McAuley, ICDM 2018) with a market embedding. SASRec's own values are
    hidden 50, 2 blocks, 1 head, dropout 0.2 (0.5 on its sparse Amazon sets), 50 positions;
    64 here so that 2 or 4 heads divide it."""

    embedding_dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    history: int = 50  # the longest sequence read: training windows and the query's recent items
    # softmax: cross-entropy of the next item among itself and the row's sampled negatives;
    # bce: SASRec's own, -log σ(s⁺) - Σ log σ(-s⁻) (its code draws one negative per position).
    loss: Literal["softmax", "bce"] = "softmax"
    # Loss weight of a target-market position relative to a source one (1: all positions alike).
    target_weight: float = 1.0
    # Training windows are sorted by length within windows of this many batches (0: off).
    bucket_batches: int = 64

    def __post_init__(self) -> None:
        if min(self.embedding_dim, self.blocks, self.heads, self.history) < 1:
            raise ValueError("embedding_dim, blocks, heads and history must be positive")
        if self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.loss not in ("softmax", "bce"):
            raise ValueError(f"loss must be softmax or bce, got {self.loss!r}")
        if not self.target_weight > 0:
            raise ValueError(f"target_weight must be positive, got {self.target_weight}")
        if self.bucket_batches < 0:
            raise ValueError(f"bucket_batches must be non-negative, got {self.bucket_batches}")


# ---- EASE, ItemKNN and MF: the classical baselines the field checks progress against -------------
@dataclass(frozen=True)
class EASEConfig:
    """EASE (Steck, WWW 2019): B = I − P·diag(1/diag(P)), P = (XᵀX + lam·I)⁻¹. `lam` is the
    paper's λ, its L2 weight (not `l2`, the training option of trained models). Steck's 500 fits
    far larger sets; on in's validation split (10…1000) NDCG@10 peaked at 50 fitted alone and at
    200 pooled with all markets, within 0.01 over the range: 100 sits between."""

    lam: float = 100.0

    def __post_init__(self) -> None:
        if not self.lam > 0:
            raise ValueError(f"ease lam must be positive (it makes XᵀX + lam·I invertible), got {self.lam}")


SIMILARITIES = ("cosine", "asymmetric")


@dataclass(frozen=True)
class ItemKNNConfig:
    """Item-based nearest neighbours over the co-occurrence counts c_hj of the users' histories:
    s_hj = c_hj / (sqrt(n_h·n_j) + shrink) (cosine) or c_hj / (n_h^alpha·n_j^(1−alpha) + shrink)
    (asymmetric), n_i the users with item i; each item j keeps its `neighbours` most similar h."""

    similarity: str = "cosine"
    alpha: float = 0.5  # of the asymmetric cosine (0.5 is the cosine)
    shrink: float = 10.0
    neighbours: int = 100

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be {' or '.join(SIMILARITIES)}, got {self.similarity!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.shrink < 0:
            raise ValueError(f"shrink must be non-negative, got {self.shrink}")
        _positive("neighbours", self.neighbours)


@dataclass(frozen=True)
class MFConfig:
    """Matrix factorisation, score = <p_u, q_i> + b_i, trained with BPR (Rendle et al., RecSys
    2020: well-tuned MF is a strong baseline). Its L2 is the training's `l2` (Adam's weight decay)."""

    embedding_dim: int = 32
    init_std: float = 0.01
    item_bias: bool = True

    def __post_init__(self) -> None:
        _positive("embedding_dim", self.embedding_dim)
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}")


# ---- EASE-mix: ease++ as a prior plus a residual learned for the target (xmfast.models.easemix) -----
EASEMIX_FEATURES = ("ease", "pop", "last", "recent")


@dataclass(frozen=True)
class EaseMixConfig:
    """ease++(u, j) + Σ_k v_k·f_k(u, j), the features `features` (``ease``: EASE on the target
    alone; ``pop``: log(1 + the item's ratings in the user's market); ``last``: the pooled EASE
    weight from the user's most recent item to j; ``recent``: log(1 + the item's ratings within
    `window` days of the user's most recent one)), v fitted on each target user's last training
    item held out against `holdout_negatives` sampled items, with an L2 weight `ridge` on the
    standardised features' weights (larger: closer to ease++). `lam` is both EASE fits' λ
    (EASE's default)."""

    lam: float = 100.0
    # `recent` is off by default: alone or added to the three it did not raise validation NDCG@10
    # on in, jp or mx (protocol forec), and it lowered it alone; ridge 1 had the best mean gain
    # over the three (+0.009; 0.001…10 tried), see docs/leaderboard-preface.md
    features: tuple[str, ...] = ("ease", "pop", "last")
    # not `negatives` and `seed`, which are training settings (options) of their own
    holdout_negatives: int = 99  # as many as the evaluation's negatives
    ridge: float = 1.0
    holdout_seed: int = 0  # of the held-out rows' negatives
    window: int = 180  # days either side of the user's last rating that feature `recent` counts

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if not self.lam > 0:
            raise ValueError(f"easemix lam must be positive, got {self.lam}")
        unknown = [f for f in self.features if f not in EASEMIX_FEATURES]
        if unknown or len(set(self.features)) != len(self.features):
            raise ValueError(f"easemix features must be distinct names among {', '.join(EASEMIX_FEATURES)}, "
                             f"got {list(self.features)}")
        _positive("holdout_negatives", self.holdout_negatives)
        if self.ridge < 0:
            raise ValueError(f"ridge must be non-negative, got {self.ridge}")
        if self.window < 0:
            raise ValueError(f"window must be non-negative, got {self.window}")
