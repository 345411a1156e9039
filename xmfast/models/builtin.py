"""The built-in models, declared through the public API exactly as a user's package would.

Each declaration is torch-free: the network is imported inside :meth:`build`, so listing models,
parsing their options, planning an experiment or writing a report never loads torch.
"""

from __future__ import annotations

from typing import Any

from xmfast.models import Model, Sizes
from xmfast.models.settings import (
    ACMRConfig,
    CooccurrenceConfig,
    FORECConfig,
    GMFConfig,
    MAMLModelConfig,
    MLPConfig,
    NMFConfig,
    PopularityConfig,
)


class Popularity(Model):
    name = "pop"
    description = "item popularity in the query's market (baseline)"
    config_type = PopularityConfig
    trained = False
    baseline = True

    def fit(self, dataset: Any, config: PopularityConfig, sources: tuple[str, ...]) -> Any:
        from xmfast.models.baselines import PopularityScorer

        return PopularityScorer(dataset)


class Cooccurrence(Model):
    name = "cooc"
    description = "item co-occurrence with the user's history (baseline)"
    config_type = CooccurrenceConfig
    trained = False
    baseline = True
    cross_market = True  # its counts come from the target and the run's sources

    def fit(self, dataset: Any, config: CooccurrenceConfig, sources: tuple[str, ...]) -> Any:
        from xmfast.models.baselines import CooccurrenceScorer

        # Counts from the configured markets, else from the target and the run's sources.
        markets = list(config.markets) or [dataset.target, *sources]
        return CooccurrenceScorer(dataset, markets, config.max_history)


class GMF(Model):
    name = "gmf"
    description = "generalised matrix factorisation"
    config_type = GMFConfig
    lr = 0.005

    def build(self, sizes: Sizes, config: GMFConfig) -> Any:
        from xmfast.models import ncf

        return ncf.GMF(sizes.groups, sizes.items, config)


class MLP(Model):
    name = "mlp"
    description = "MLP tower over user and item embeddings"
    config_type = MLPConfig

    def build(self, sizes: Sizes, config: MLPConfig) -> Any:
        from xmfast.models import ncf

        return ncf.MLP(sizes.groups, sizes.items, config)


class NMF(Model):
    name = "nmf"
    description = "NeuMF: GMF and MLP branches, initialised from their runs"
    config_type = NMFConfig
    starts_from = {"gmf": "gmf", "mlp": "mlp"}  # the settings `gmf` and `mlp` are those runs' settings

    def build(self, sizes: Sizes, config: NMFConfig) -> Any:
        from xmfast.models import ncf

        return ncf.NMF(sizes.groups, sizes.items, config)

    def requires(self, config: NMFConfig) -> dict[str, str]:
        return dict(self.starts_from) if config.pretrained else {}

    def initialise(self, module: Any, runs: Any, config: NMFConfig) -> None:
        module.load_pretrained(runs["gmf"].module(), runs["mlp"].module())


class MAML(Model):
    name = "maml"
    description = "NMF meta-trained across markets with MAML, from an NMF++ run"
    config_type = MAMLModelConfig
    lr = 0.005
    starts_from = {"nmf": "nmf"}  # its weights as they are
    cross_market = needs_sources = True

    def build(self, sizes: Sizes, config: MAMLModelConfig) -> Any:
        from xmfast.models import ncf

        return ncf.NMF(sizes.groups, sizes.items, config.nmf)

    def trainer(self) -> type:
        from xmfast.training.meta import MAMLTrainer

        return MAMLTrainer


class FOREC(Model):
    name = "forec"
    description = "a MAML (or NMF++) run forked per market with a fine-tuned market head (xmfast finetune)"
    config_type = FORECConfig
    fine_tunes = ("maml", "nmf")
    finetune_defaults = {"lr": 0.01, "l2": 1e-3}  # FOREC's head

    def build(self, sizes: Sizes, config: FORECConfig) -> Any:
        from xmfast.models import forec

        return forec.FOREC(sizes.groups, sizes.items, config)

    def config_from_base(self, config: FORECConfig | None, base_model: str, base_config: Any) -> FORECConfig:
        from dataclasses import replace

        nmf = base_config.nmf if isinstance(base_config, MAMLModelConfig) else base_config
        return replace(config or FORECConfig(), nmf=nmf)

    def initialise(self, module: Any, runs: Any, config: FORECConfig) -> None:
        module.fork(runs["base"].weights)


class ACMR(Model):
    name = "acmr"
    description = ("transformer over the user's history with market embeddings, pre-trained on all markets "
                   "(then xmfast finetune on the target)")
    config_type = ACMRConfig
    batch = "histories"
    lr = 1e-3
    fine_tunes = ("acmr",)  # its second stage continues its own pre-trained run
    cross_market = needs_sources = True
    # the paper's schedule: up to 50 epochs, early stopping on NDCG@5 with patience 3,
    # pre-training on all markets with the sources' held-out items as training rows
    train_defaults = {"epochs": 50, "patience": 3, "monitor": "ndcg@5", "sources": ("all",), "sources_in_full": True}

    def build(self, sizes: Sizes, config: ACMRConfig) -> Any:
        from xmfast.models import acmr

        return acmr.ACMR(sizes.items, sizes.markets, config)

    def config_from_base(self, config: ACMRConfig | None, base_model: str, base_config: ACMRConfig) -> ACMRConfig:
        from xmfast.errors import XmfastError

        if config is not None and config != base_config:
            raise XmfastError("acmr fine-tuning keeps the pre-trained architecture; do not give other settings")
        return base_config
