"""How a model is trained: :class:`TrainConfig`, the settings every model shares.

It sits in the model API's package, not in the training engine, because a model declares its
own defaults over it (FOREC's learning rates, ACMR's early stopping) and the CLI, the planner
and the registry read it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from xmfast.errors import XmfastError, check_int
from xmfast.evaluation import EvalConfig
from xmfast.models.settings import added

Augmentation = Literal["full", "selected"]
Sampling = Literal["concat", "equal"]
EpochLength = Literal["target", "largest"]


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (FOREC's defaults). `lr` None means the model's own default
    (0.005 for GMF, 0.01 for MLP and NMF)."""

    epochs: int = 25
    batch_size: int = 1024
    lr: float | None = None
    l2: float = 1e-7
    negatives: int = 4
    seed: int = 42
    patience: int | None = None  # None: train all epochs (FOREC); n: stop after n epochs without improvement
    monitor: str = "ndcg@10"  # validation metric for early stopping and the best checkpoint
    select: Literal["best", "last"] = "best"  # which checkpoint the final results use
    sources: tuple[str, ...] = ()  # source markets whose rows augment the target (the ++ variants)
    augmentation: Augmentation = "full"
    sampling: Sampling = "concat"
    # The sources' validation and test items become training rows too (ACMR's pre-training uses
    # the source markets in full); the run can then only be evaluated on its target market.
    sources_in_full: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bfloat16 autocast on CUDA (ignored on CPU). Off by default: FOREC's models have 8-wide
    # embeddings, so a step is bound by kernel launches, not arithmetic, and bf16 buys nothing.
    amp: bool = False
    # On CUDA, full batches replay one captured CUDA graph of the whole training step (forward,
    # loss, backward, Adam): a step of these small models is otherwise ~100 tiny kernel launches.
    cuda_graphs: bool = True
    eval_batch: int = 4096  # validation queries scored at once
    # A named bundle of settings the model declares (Model.recipes): "xmfast" (the defaults) or,
    # for the FOREC family and ACMR, "original" (their code's training choices). Settings given
    # explicitly override the recipe's.
    recipe: str = added("xmfast")
    # Draw the training negatives anew every epoch. False: drawn once and reused every epoch, as
    # FOREC's and ACMR's code do (an epoch then shows the model the same negatives again).
    resample_negatives: bool = added(True)
    # With equal sampling and in MAML: an epoch is one pass over the target's instances (cycling
    # smaller sources), or over the largest market's (cycling the target), as FOREC's code does.
    epoch_length: EpochLength = added("target")
    # Which checkpoint of the runs this one starts from (NMF's branches, MAML's NMF, a fine-tuned
    # run's base): best (validation) or last. FOREC's code keeps only the last.
    start_checkpoint: Literal["best", "last"] = added("best")
    # Early stopping counts epochs since the last improvement; False counts every epoch without
    # improvement since the start (ACMR's code never resets its patience counter).
    patience_reset: bool = added(True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        # bounds a user can mistype past: the Rust sampler takes u32 counts and a u64 seed, and
        # `negatives` rows × k negatives are held in memory every epoch
        for name, high in (("epochs", 1_000_000), ("batch_size", 2**31 - 1), ("negatives", 1000),
                           ("eval_batch", 2**24)):
            check_int(name, getattr(self, name), 1, high)
        check_int("seed", self.seed, 0, 2**63 - 1)
        if self.patience is not None and self.patience < 1:
            raise XmfastError(f"patience must be at least 1 (or none), got {self.patience}")
        if self.augmentation not in ("full", "selected"):
            raise XmfastError(f"augmentation must be full or selected, got {self.augmentation!r}")
        if self.sampling not in ("concat", "equal"):
            raise XmfastError(f"sampling must be concat or equal, got {self.sampling!r}")
        for name, allowed in (("select", ("best", "last")), ("start_checkpoint", ("best", "last")),
                              ("epoch_length", ("target", "largest"))):
            if getattr(self, name) not in allowed:
                raise XmfastError(f"{name} must be {' or '.join(allowed)}, got {getattr(self, name)!r}")
        if self.lr is not None and not self.lr > 0:
            raise XmfastError(f"lr must be positive, got {self.lr}")
        if self.l2 < 0:
            raise XmfastError(f"l2 must be non-negative, got {self.l2}")
        EvalConfig(cutoffs=(_cutoff_of(self.monitor),), measures=(self.monitor.split("@")[0],))

    def learning_rate(self, model: Any) -> float:
        """`lr`, or the model's own default (its ``lr`` attribute) when None."""
        return self.lr if self.lr is not None else model.lr


def _cutoff_of(metric: str) -> int:
    name, _, k = metric.partition("@")
    if name in ("mrr", "auc") and not k:
        return 10
    try:
        return int(k)
    except ValueError:
        raise XmfastError(f"monitor must look like ndcg@10, hr@5 or mrr, got {metric!r}") from None
