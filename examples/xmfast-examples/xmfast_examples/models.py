"""Three models declared through xmfast's public API, each exercising a different part of it.

Torch is imported inside the methods that need it, as the built-ins do, so that `xmfast models`,
option parsing and experiment planning never load it.
"""

from dataclasses import dataclass, field

import numpy as np

from xmfast.models import Model, get_model

# GMF's own settings, so that gmf-bias's `gmf` setting is exactly the GMF run's (see GMFBias).
GMFConfig = get_model("gmf").config_type


@dataclass(frozen=True)
class MFConfig:
    embedding_dim: int = 16
    item_bias: bool = True  # b_i: lets the model learn popularity apart from taste
    init_std: float = 0.01


class BPRMF(Model):
    """A trainable model: the engine samples negatives and optimises BPR on whole rows."""

    name = "bprmf"
    description = "matrix factorisation with a pairwise (BPR) loss"
    config_type = MFConfig
    objective = "bpr"

    def build(self, sizes, config):
        from xmfast_examples.networks import MF

        return MF(sizes.groups, sizes.items, config)


class PooledPopularity(Model):
    """A model without a training loop: fit() counts, and its scorer is evaluated like any run."""

    name = "pooled-pop"
    description = "item popularity over the target's and the sources' training rows"
    trained = False
    cross_market = True  # it uses the run's sources by design (so `--sources all` is every market)

    def fit(self, dataset, config, sources):
        markets = [dataset.market_index(m) for m in (dataset.target, *sources)]
        rows = np.isin(dataset.train_market(), markets)
        return PopularityScorer(np.bincount(np.asarray(dataset.train_item)[rows], minlength=dataset.n_items))


class PopularityScorer:
    """The same score for an item whatever the user: its count."""

    def __init__(self, counts):
        self.counts = counts.astype(np.float64)

    def score(self, groups, items):  # items: (n, c) candidates of n users
        return self.counts[np.asarray(items, dtype=np.int64)]

    def score_all(self, groups, items):  # items: (m,) the same for every user
        return np.tile(self.counts[np.asarray(items, dtype=np.int64)], (len(groups), 1))


@dataclass(frozen=True)
class GMFBiasConfig:
    # A setting named after a starting slot is that run's settings: the planner sets it from
    # [model.gmf] and training refuses a GMF run trained with other ones.
    gmf: GMFConfig = field(default_factory=GMFConfig)


class GMFBias(Model):
    """A model that starts from another model's trained run (a declared dependency)."""

    name = "gmf-bias"
    description = "GMF plus a per-market item bias, initialised from a trained GMF run"
    config_type = GMFBiasConfig
    starts_from = {"gmf": "gmf"}  # slot -> model: `xmfast run` plans a GMF run first
    lr = 0.005  # GMF's

    def build(self, sizes, config):
        from xmfast_examples.networks import MarketItemBias

        return MarketItemBias(get_model("gmf").build(sizes, config.gmf), sizes)

    def initialise(self, module, runs, config):
        module.gmf.load_state_dict(runs["gmf"].weights)  # the trained GMF, exactly

    def attach(self, module, dataset, rows=None):
        module.set_group_market(dataset.group_market)  # each key's market, which the bias reads
