"""The model zoo: every trainable model and baseline, by name, with its configuration type.

A :class:`ModelSpec` is the one place that says how a model is built, which learning rate it
defaults to (FOREC's) and which trained runs it starts from (NMF from GMF and MLP). The CLI, the
run directory and the training engine all look models up here.
"""

from __future__ import annotations

import json
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from xmfast.errors import XmfastError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    config_type: type
    neural: bool = True
    default_lr: float = 0.01
    pretrain: tuple[str, ...] = ()  # models whose trained runs initialise this one
    cross_market: bool = False  # needs source markets (it learns across them)
    fine_tuned: bool = False  # made by `xmfast finetune` from another run, not by `xmfast train`
    # Reads histories (ACMR): the engine attaches the dataset's history tables to the module.
    sequence: bool = False
    # The model's own training defaults over TrainConfig's (FOREC's), e.g. ACMR's early stopping.
    train_defaults: tuple[tuple[str, Any], ...] = ()
    # Settings of `xmfast finetune` over train_defaults (FOREC's head: lr 0.01, L2 1e-3).
    finetune_defaults: tuple[tuple[str, Any], ...] = ()

    def build(self, n_users: int, n_items: int, config: Any, n_markets: int = 1) -> Any:
        """The torch module for `n_users` groups, `n_items` items and `n_markets` markets."""
        return _BUILDERS[self.name](n_users, n_items, config, n_markets)

    def train_config(self, **overrides: Any) -> Any:
        """The training configuration of this model: TrainConfig's defaults, the model's own, then
        `overrides`."""
        from xmfast.training import TrainConfig

        return config_from_dict(TrainConfig, {**dict(self.train_defaults), **overrides}, f"training of model {self.name}")

    def finetune_config(self, **overrides: Any) -> Any:
        """The configuration of `xmfast finetune` for this model (always on one market alone)."""
        return self.train_config(**{**dict(self.finetune_defaults), **overrides, "sources": ()})

    def config_from(self, values: dict[str, Any] | None) -> Any:
        """The configuration object from plain values (a TOML section, a saved run)."""
        return config_from_dict(self.config_type, values or {}, f"model {self.name}")


@dataclass(frozen=True)
class PopularityConfig:
    """Item popularity in the target market's training rows."""


@dataclass(frozen=True)
class CooccurrenceConfig:
    """Sum of an item's co-occurrence with the user's history; counts from `markets` (empty:
    every market of the dataset)."""

    markets: tuple[str, ...] = ()
    max_history: int | None = None


def _ncf():
    from xmfast.models import ncf

    return ncf


def _forec():
    from xmfast.models import forec

    return forec


def _acmr():
    from xmfast.models import acmr

    return acmr


_BUILDERS: dict[str, Callable[[int, int, Any, int], Any]] = {
    "gmf": lambda u, i, c, m: _ncf().GMF(u, i, c),
    "mlp": lambda u, i, c, m: _ncf().MLP(u, i, c),
    "nmf": lambda u, i, c, m: _ncf().NMF(u, i, c),
    "maml": lambda u, i, c, m: _ncf().NMF(u, i, c.nmf),
    "forec": lambda u, i, c, m: _forec().FOREC(u, i, c),
    "acmr": lambda u, i, c, m: _acmr().ACMR(i, m, c),
}


def _specs() -> dict[str, ModelSpec]:
    from xmfast.maml import MAMLModelConfig
    from xmfast.models.acmr import ACMRConfig
    from xmfast.models.forec import FORECConfig
    from xmfast.models.ncf import GMFConfig, MLPConfig, NMFConfig

    return {
        s.name: s
        for s in (
            ModelSpec("gmf", "generalised matrix factorisation", GMFConfig, default_lr=0.005),
            ModelSpec("mlp", "MLP tower over user and item embeddings", MLPConfig, default_lr=0.01),
            ModelSpec("nmf", "NeuMF: GMF and MLP branches, initialised from their runs", NMFConfig,
                      default_lr=0.01, pretrain=("gmf", "mlp")),
            ModelSpec("maml", "NMF meta-trained across markets with MAML, from an NMF++ run", MAMLModelConfig,
                      default_lr=0.005, pretrain=("nmf",), cross_market=True),
            ModelSpec("forec", "a MAML (or NMF++) run forked per market with a fine-tuned market head "
                      "(xmfast finetune)", FORECConfig, default_lr=0.01, fine_tuned=True,
                      finetune_defaults=(("lr", 0.01), ("l2", 1e-3))),
            ModelSpec("acmr", "transformer over the user's history with market embeddings, pre-trained on all "
                      "markets (then xmfast finetune on the target)", ACMRConfig, default_lr=1e-3,
                      cross_market=True, sequence=True,
                      # the paper's schedule: up to 50 epochs, early stopping on NDCG@5 with patience 3,
                      # pre-training on all markets with the sources' held-out items as training rows
                      train_defaults=(("epochs", 50), ("patience", 3), ("monitor", "ndcg@5"), ("sources", ("all",)),
                                      ("sources_in_full", True))),
            ModelSpec("pop", "item popularity (baseline)", PopularityConfig, neural=False),
            ModelSpec("cooc", "item co-occurrence with the user's history (baseline)", CooccurrenceConfig,
                      neural=False),
        )
    }


def model_names() -> list[str]:
    return list(_specs())


def get_model(name: str) -> ModelSpec:
    """The spec of `name`; ``gmf++``-style aliases name the same model (the ++ is the sources)."""
    specs = _specs()
    key = name.lower().removesuffix("++")
    if key not in specs:
        raise XmfastError(f"unknown model {name!r} (expected one of {', '.join(specs)}, or gmf++/mlp++/nmf++)")
    return specs[key]


def config_from_dict(config_type: type, values: dict[str, Any], owner: str | None = None) -> Any:
    """Builds a (possibly nested) frozen dataclass from plain values, rejecting unknown keys so a
    typo in a config file is an error rather than a silently ignored setting, and values of the
    wrong type (``embedding_dim = true``, a string for a float, a float for an int), which
    Python would otherwise carry into the model. `owner` names what is configured in errors
    (e.g. ``model gmf``)."""
    if not is_dataclass(config_type):
        raise TypeError(f"{config_type} is not a dataclass")
    known = {f.name: f for f in fields(config_type)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise XmfastError(f"unknown setting {unknown[0]!r} for {config_type.__name__} "
                          f"(known: {', '.join(known) or 'none'})")
    owner = owner or config_type.__name__
    hints = typing.get_type_hints(config_type)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints.get(name, Any)
        if is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value, f"{owner} [{name}]")
        else:
            value = _typed(value, hint, f"{owner}: setting {name}")
        kwargs[name] = value
    try:
        return config_type(**kwargs)
    except (TypeError, ValueError) as e:
        raise XmfastError(f"{owner}: {e}") from None


def _typed(value: Any, hint: Any, what: str) -> Any:
    """`value` as the type `hint` asks for (an int for a float becomes a float, a list a tuple),
    or XmfastError saying what was expected and what was given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or (isinstance(hint, type) and is_dataclass(hint) and isinstance(value, hint)):
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _typed(value, options[0], what)
        return value
    if origin is typing.Literal:
        if isinstance(value, str):
            return value  # the configuration's own check names the choices
        raise XmfastError(f"{what} must be one of {', '.join(map(str, args))}, got {_shown(value)}")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise XmfastError(f"{what} must be a list, got {_shown(value)}")
        return tuple(_typed(v, args[0], f"{what} (each element)") for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise XmfastError(f"{what} must be true or false, got {_shown(value)}")
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise XmfastError(f"{what} must be an integer, got {_shown(value)}")
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise XmfastError(f"{what} must be a number, got {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise XmfastError(f"{what} must be a string, got {_shown(value)}")
    if isinstance(hint, type) and is_dataclass(hint):
        raise XmfastError(f"{what} must be a table of settings, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A value as the config file spells it (true, "8", 2.5)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _has_defaults(config_type: type) -> bool:
    try:
        config_type()
    except TypeError:
        return False
    return True
