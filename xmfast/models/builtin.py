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
    EaseMixConfig,
    EASEConfig,
    FORECConfig,
    GMFConfig,
    ItemKNNConfig,
    MAGMFConfig,
    MAMLModelConfig,
    MAMLPConfig,
    MANMFConfig,
    MFConfig,
    MLPConfig,
    NMFConfig,
    PopularityConfig,
    SASRecConfig,
)


# FOREC's code (hamedrab/FOREC: train_base.py, train_maml.py, train_forec.py, train_all.ipynb),
# read setting by setting; each is a setting of its own that can be turned on alone (docs/recipes.md
# measures what each changes). Its training has no validation: every stage keeps its last epoch,
# the next stage starts from that, and its negatives are drawn once before training. The ++ runs of
# its notebook alternate markets batch by batch (equal) over the largest market's batches.
_FOREC_TRAIN = {"resample_negatives": False, "select": "last", "start_checkpoint": "last", "sampling": "equal",
                "epoch_length": "largest"}
_GMF_ORIGINAL = {"init": "pytorch"}
_MLP_ORIGINAL = {"init": "pytorch", "from_gmf": True}
_NMF_ORIGINAL = {"gmf": _GMF_ORIGINAL, "mlp": _MLP_ORIGINAL, "copy_tower_bias": False}


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
    recipes = {"original": {"train": _FOREC_TRAIN, "model": _GMF_ORIGINAL}}

    def build(self, sizes: Sizes, config: GMFConfig) -> Any:
        from xmfast.models import ncf

        return ncf.GMF(sizes.groups, sizes.items, config)


class MLP(Model):
    name = "mlp"
    description = "MLP tower over user and item embeddings"
    config_type = MLPConfig
    starts_from = {"gmf": "gmf"}  # with from_gmf: the GMF run whose embeddings it starts from
    recipes = {"original": {"train": _FOREC_TRAIN, "model": _MLP_ORIGINAL}}

    def build(self, sizes: Sizes, config: MLPConfig) -> Any:
        from xmfast.models import ncf

        return ncf.MLP(sizes.groups, sizes.items, config)

    def requires(self, config: MLPConfig) -> dict[str, str]:
        return dict(self.starts_from) if config.from_gmf else {}

    def initialise(self, module: Any, runs: Any, config: MLPConfig) -> None:
        from xmfast.models import ncf

        ncf.embeddings_from_gmf(module, runs["gmf"].module())


class NMF(Model):
    name = "nmf"
    description = "NeuMF: GMF and MLP branches, initialised from their runs"
    config_type = NMFConfig
    starts_from = {"gmf": "gmf", "mlp": "mlp"}  # the settings `gmf` and `mlp` are those runs' settings
    recipes = {"original": {"train": _FOREC_TRAIN, "model": _NMF_ORIGINAL}}

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
    # FOREC's MAML: 20 "shots" per support and query batch, Adam's lr of its NMF (0.01), one
    # adaptation step on a shuffled batch of 20 validation instances before testing.
    recipes = {"original": {
        "train": {**_FOREC_TRAIN, "batch_size": 20, "lr": 0.01},
        "model": {"nmf": _NMF_ORIGINAL, "maml": {"test_adaptation_steps": 1, "test_adaptation_batch": 20}},
    }}

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
    # FOREC's code: batches of 20 shots, the last epoch, a head of widths [16 (input), 32, 16] in
    # PyTorch's initialisation whose output layer loads the forked NMF's.
    recipes = {"original": {
        "finetune": {key: _FOREC_TRAIN[key] for key in ("resample_negatives", "select", "start_checkpoint")}
        | {"batch_size": 20},
        "model": {"init": "pytorch", "head": (32, 16), "output_from_base": True},
    }}

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
    # ACMR's code (laowangzi/ACMR): a LayerNorm and dropout on the embeddings, training histories
    # that hold the row's own item, negatives drawn once, a patience counter never reset.
    recipes = {"original": {
        "train": {"resample_negatives": False, "patience_reset": False},
        "finetune": {"resample_negatives": False, "patience_reset": False},
        "model": {"embedding_norm": True, "leave_out_own_item": False},
    }}

    def build(self, sizes: Sizes, config: ACMRConfig) -> Any:
        from xmfast.models import acmr

        return acmr.ACMR(sizes.items, sizes.markets, config)

    def config_from_base(self, config: ACMRConfig | None, base_model: str, base_config: ACMRConfig) -> ACMRConfig:
        from xmfast.errors import XmfastError

        if config is not None and config != base_config:
            raise XmfastError("acmr fine-tuning keeps the pre-trained architecture; do not give other settings")
        return base_config


# ---- market-aware NCF --------------------------------------------------------------------------
# MA-GMF, MA-MLP, MA-NMF (Bhargav, Aliannejadi, Kanoulas, ECIR 2023): GMF, MLP and NMF with a
# learned embedding per market scaling the item vectors (xmfast.models.market_aware), one model
# trained on every market at once (the paper's global setting, the default sources). Their code
# (samarthbhargav/efficient-xmrec, train_base_all.py) trains FOREC's NCF settings on the markets
# concatenated, draws negatives anew each epoch, keeps the last epoch, and starts every
# embedding, the markets' too, from PyTorch's N(0, 1).
_MA_TRAIN = {"select": "last", "start_checkpoint": "last"}  # concat and fresh negatives: the defaults
_MA_MODEL = {"market_init": "random"}


class _MarketAware(Model):
    """What the three share: trained across markets, and each key's market read from the dataset."""

    cross_market = needs_sources = True
    train_defaults = {"sources": ("all",)}

    def attach(self, module: Any, dataset: Any, rows: Any = None) -> None:
        module.set_group_market(dataset.group_market)


class MAGMF(_MarketAware, GMF):
    name = "magmf"
    description = "MA-GMF: GMF with market embeddings scaling the item vectors, trained on all markets"
    config_type = MAGMFConfig
    recipes = {"original": {"train": _MA_TRAIN, "model": {**_GMF_ORIGINAL, **_MA_MODEL}}}

    def build(self, sizes: Sizes, config: MAGMFConfig) -> Any:
        from xmfast.models import market_aware

        return market_aware.MAGMF(sizes.groups, sizes.items, sizes.markets, config)


class MAMLP(_MarketAware, MLP):
    name = "mamlp"
    description = "MA-MLP: MLP tower over the user and market-scaled item embeddings, trained on all markets"
    config_type = MAMLPConfig
    starts_from = {"gmf": "magmf"}  # with from_gmf: the MA-GMF run whose embeddings it starts from
    recipes = {"original": {"train": _MA_TRAIN, "model": {**_MLP_ORIGINAL, **_MA_MODEL}}}

    def build(self, sizes: Sizes, config: MAMLPConfig) -> Any:
        from xmfast.models import market_aware

        return market_aware.MAMLP(sizes.groups, sizes.items, sizes.markets, config)

    def initialise(self, module: Any, runs: Any, config: MAMLPConfig) -> None:
        from xmfast.models import market_aware

        market_aware.embeddings_from_magmf(module, runs["gmf"].module())


class MANMF(_MarketAware, NMF):
    name = "manmf"
    description = "MA-NMF: NeuMF of MA-GMF and MA-MLP branches sharing the market embeddings, from their runs"
    config_type = MANMFConfig
    starts_from = {"gmf": "magmf", "mlp": "mamlp"}  # the settings `gmf` and `mlp` are those runs' settings
    recipes = {"original": {"train": _MA_TRAIN, "model": {"gmf": {**_GMF_ORIGINAL, **_MA_MODEL},
                                                          "mlp": {**_MLP_ORIGINAL, **_MA_MODEL},
                                                          "copy_tower_bias": False}}}

    def build(self, sizes: Sizes, config: MANMFConfig) -> Any:
        from xmfast.models import market_aware

        return market_aware.MANMF(sizes.groups, sizes.items, sizes.markets, config)


class SASRec(Model):
    name = "sasrec"
    description = "SASRec: causal self-attention over the user's sequence with a market embedding, next-item loss"
    config_type = SASRecConfig
    batch = "histories"  # keys are training rows, each the target of one position of a window
    objective = "own"  # the configured loss over each row's positive and sampled negatives
    lr = 1e-3  # SASRec's
    cross_market = needs_sources = True  # trained on every market's sequences
    # all markets, their held-out items as training rows too (only the target is evaluated);
    # 64 sampled negatives per position for the softmax; early stopping on validation
    train_defaults = {"epochs": 100, "patience": 5, "negatives": 64, "sources": ("all",), "sources_in_full": True}

    def build(self, sizes: Sizes, config: SASRecConfig) -> Any:
        from xmfast.models import sasrec

        return sasrec.SASRec(sizes.items, sizes.markets, config)

    def loss(self, module: Any, batch: Any) -> Any:
        from xmfast.models import sasrec

        return sasrec.loss(module, batch)

    def trainer(self) -> type:
        from xmfast.training.sequence import WindowTrainer

        return WindowTrainer


# ---- EASE, ItemKNN and MF: the classical baselines the field checks progress against -------------
class _PooledBaseline(Model):
    """A model without training fitted on the target alone (``ease``) or on the target pooled
    with the run's sources (``ease++``, ``--sources all``): two rows of a grid, as gmf and gmf++."""

    trained = False
    baseline = True

    def label(self, *, sources: bool, fine_tuned: bool) -> str:
        return self.name + ("++" if sources else "")


class EASE(_PooledBaseline):
    name = "ease"
    description = "EASE, the closed-form item-item autoencoder (Steck 2019; baseline)"
    config_type = EASEConfig

    def fit(self, dataset: Any, config: EASEConfig, sources: tuple[str, ...]) -> Any:
        from xmfast.models.itemitem import fit_ease

        return fit_ease(dataset, sources, config.lam)


class ItemKNN(_PooledBaseline):
    name = "itemknn"
    description = "item-based nearest neighbours: (asymmetric) cosine of co-occurrence counts (baseline)"
    config_type = ItemKNNConfig

    def fit(self, dataset: Any, config: ItemKNNConfig, sources: tuple[str, ...]) -> Any:
        from xmfast.models.itemitem import fit_knn

        return fit_knn(dataset, sources, config.similarity, config.alpha, config.shrink, config.neighbours)


class MF(Model):
    name = "mf"
    description = "matrix factorisation trained with BPR (Rendle et al. 2020: tuned, a strong baseline)"
    config_type = MFConfig
    objective = "bpr"
    baseline = True
    # in's validation NDCG@10 (25 epochs): 0.569 at GMF's 0.005, still rising at the last epoch;
    # 0.583, 0.588, 0.591 at 0.01, 0.02, 0.05
    lr = 0.02

    def build(self, sizes: Sizes, config: MFConfig) -> Any:
        from xmfast.models import mf

        return mf.MF(sizes.groups, sizes.items, config)


# ---- EASE-mix: our own cross-market model (xmfast.models.easemix says the idea) -------------------
class EaseMix(Model):
    name = "easemix"
    description = "ease++ as a prior plus target-market features (EASE alone, pop, last item) mixed by weights learned on held-out training items"
    config_type = EaseMixConfig
    trained = False  # fitted: two EASE models and a convex fit of the mix's weights
    cross_market = True  # the prior is pooled over the target and the run's sources
    train_defaults = {"sources": ("all",)}

    def fit(self, dataset: Any, config: EaseMixConfig, sources: tuple[str, ...]) -> Any:
        from xmfast.models.easemix import fit_easemix

        return fit_easemix(dataset, config, sources)
