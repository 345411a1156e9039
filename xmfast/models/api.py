"""The model API: the one door through which every model, built-in or a user's, enters xmfast.

A model is a subclass of :class:`Model` that declares, in one place, what the engine, the
planner, the CLI and the report need to know about it::

    @dataclass(frozen=True)
    class BPRMFConfig:
        dim: int = 16

    @register
    class BPRMF(Model):
        name = "bprmf"
        description = "matrix factorisation with a pairwise (BPR) loss"
        config_type = BPRMFConfig
        objective = "bpr"

        def build(self, sizes, config):
            return MyTorchModule(sizes.groups, sizes.items, config.dim)

The torch module it builds scores (user key, item) pairs: ``module(keys, items)`` returns one
logit per pair. A model that needs no training loop (popularity, co-occurrence, a scoring
function) sets ``trained = False`` and implements :meth:`Model.fit` instead of :meth:`Model.build`.

Models are found by name in the registry: the built-ins, every installed package's entry points
in the group ``xmfast.models`` (``bprmf = "mypackage.models:BPRMF"``), and classes passed to
:func:`register`. Entry points are loaded only when their model is used, so commands that do not
train never import a package's torch code. Nothing in this module imports torch.
"""

from __future__ import annotations

import importlib
import json
import numbers
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar

from xmfast.errors import SettingError, XmfastError

ENTRY_POINT_GROUP = "xmfast.models"
DEFAULT_RECIPE = "xmfast"  # the recipe of TrainConfig's and the models' own defaults
OBJECTIVES = ("bce", "bpr", "softmax", "own")
"""``bce``: pointwise binary cross-entropy on the training rows (label 1) and `negatives`
sampled items per row (label 0), every (key, item) instance shuffled on its own (FOREC's);
``bpr``: pairwise, −log σ(s⁺ − s⁻) over each row's sampled negatives; ``softmax``: sampled
softmax, the cross-entropy of the positive among itself and the row's negatives; ``own``: the
model's :meth:`Model.loss` of a :class:`Batch`. All but ``bce`` take batches of whole rows."""
BATCHES = ("pairs", "histories")
"""What a key is: ``pairs``, a (market, user) group; ``histories``, a training row whose
history the module holds (the engine calls ``module.attach(dataset, rows)``; see ACMR)."""


@dataclass(frozen=True)
class Sizes:
    """What a module is built for: the dataset's user keys, items and markets."""

    groups: int  # (market, user) pairs: a user active in two markets has two keys
    items: int  # items are shared across markets
    markets: int


@dataclass(frozen=True)
class NoSettings:
    """A model without hyper-parameters."""


class Model:
    """Base class of every model (see the module docstring). Subclasses set the class attributes
    and override the hooks they need; one instance per registered model serves every command."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_type: ClassVar[type] = NoSettings  # a frozen dataclass whose fields all have defaults
    trained: ClassVar[bool] = True  # False: fit() makes a scorer, no training loop
    baseline: ClassVar[bool] = False  # listed first in reports; the reference of the "Δ vs baseline" column
    objective: ClassVar[str] = "bce"  # one of OBJECTIVES
    batch: ClassVar[str] = "pairs"  # one of BATCHES
    lr: ClassVar[float] = 0.01  # Adam's learning rate unless the user gives one
    # Trained runs it starts from: slot -> model name (NMF: {"gmf": "gmf", "mlp": "mlp"}). The
    # runs are found or given at training time and handed to initialise() by slot.
    starts_from: ClassVar[Mapping[str, str]] = {}
    # Made per market by `xmfast finetune` from a finished run of one of these models (FOREC:
    # ("maml", "nmf")); such a model is never trained from scratch.
    fine_tunes: ClassVar[tuple[str, ...]] = ()
    # Uses the source markets by design (MAML, ACMR, cooc): its runs with sources keep its name;
    # a single-market model trained with sources is labelled "name++" (the pooled variant).
    cross_market: ClassVar[bool] = False
    needs_sources: ClassVar[bool] = False  # training without source markets is refused
    # Settings over TrainConfig's defaults for this model, and for its fine-tuning.
    train_defaults: ClassVar[Mapping[str, Any]] = {}
    finetune_defaults: ClassVar[Mapping[str, Any]] = {}
    # Named bundles of settings a user picks with TrainConfig.recipe (``--recipe NAME``): name ->
    # {"train": TrainConfig values, "finetune": values for `xmfast finetune`, "model": nested
    # values of config_type}. "xmfast" is always available and holds the defaults above; the
    # built-ins declare "original", their original code's training choices. Settings given
    # explicitly override a recipe's.
    recipes: ClassVar[Mapping[str, Mapping[str, Mapping[str, Any]]]] = {}

    # ---- hooks ------------------------------------------------------------------------------
    def build(self, sizes: Sizes, config: Any) -> Any:
        """The torch module (a ``torch.nn.Module``) for `sizes` and `config`."""
        raise XmfastError(f"model {self.name}: declares no build(sizes, config)")

    def fit(self, dataset: Any, config: Any, sources: tuple[str, ...]) -> Any:
        """For ``trained = False``: a scorer fitted on `dataset`'s training rows (the target's
        and those of `sources`), with ``score(groups, items[n, c])`` and ``score_all(groups,
        items[m])`` returning float arrays (see :class:`xmfast.evaluation.Scorer`)."""
        raise XmfastError(f"model {self.name}: declares no fit(dataset, config, sources)")

    def attach(self, module: Any, dataset: Any, rows: Any = None) -> None:
        """Hands a freshly built `module` what it reads from the prepared dataset beyond its sizes
        (ACMR: the history tables; a per-market bias: each key's market, ``dataset.group_market``).
        Called before training (`rows`: the run's training rows, indices into the dataset's
        training arrays) and when a run is loaded to score (`rows` None). Default: for
        ``batch = "histories"`` the module's own ``attach(dataset, rows)``; nothing otherwise."""
        if self.batch == "histories":
            module.attach(dataset, rows) if rows is not None else module.attach(dataset)

    def requires(self, config: Any) -> dict[str, str]:
        """The runs this configuration starts from (default: `starts_from`; NMF without
        pretraining starts from none)."""
        return dict(self.starts_from)

    def initialise(self, module: Any, runs: Mapping[str, Any], config: Any) -> None:
        """Loads the starting runs into a freshly built `module`. `runs` maps each slot (and
        ``"base"`` for a fine-tuned model) to a :class:`xmfast.training.StartingRun`, whose
        ``weights`` is its checkpoint's state dict and ``module()`` its network with them.
        Default: the one starting run's weights loaded into the whole module."""
        if len(runs) != 1:
            raise XmfastError(f"model {self.name}: starts from {', '.join(runs)}; declare initialise() to say how")
        module.load_state_dict(next(iter(runs.values())).weights)

    def loss(self, module: Any, batch: Any) -> Any:
        """For ``objective = "own"``: the scalar loss of a :class:`xmfast.training.Batch`
        (keys, positives, negatives, markets), to be minimised."""
        raise XmfastError(f"model {self.name}: objective 'own' needs a loss(module, batch) method")

    def config_from_base(self, config: Any, base_model: str, base_config: Any) -> Any:
        """For a fine-tuned model: its configuration given the base run's (FOREC takes the
        forked NMF's shape from it). Default: `config` as it is."""
        return config

    def trainer(self) -> type | None:
        """The engine class that trains this model when batches and objectives do not describe
        it (MAML's meta-learning); None: the standard loop."""
        return None

    # ---- derived facts ----------------------------------------------------------------------
    def recipe(self, name: str | None) -> Mapping[str, Mapping[str, Any]]:
        """The settings of recipe `name` (None: "xmfast"). A model without training has nothing
        a recipe could change, so it takes any name as its defaults."""
        name = name or DEFAULT_RECIPE
        if name in self.recipes:
            return self.recipes[name]
        if name == DEFAULT_RECIPE or not self.trained:
            return {}
        known = ", ".join(dict.fromkeys([DEFAULT_RECIPE, *self.recipes]))
        raise XmfastError(f"model {self.name} has no recipe {name!r} (its recipes: {known})")

    def config_from(self, values: Mapping[str, Any] | None, recipe: str | None = None, *,
                    recorded: bool = False) -> Any:
        """The configuration from plain values (a TOML table, options) over the model settings
        of `recipe` (None: none), every key and type checked. `recorded`: the values are a record
        (run.json, a stage's settings), in which a missing added setting means its value from
        before it existed, not today's default (see :mod:`xmfast._added`)."""
        base = self.recipe(recipe).get("model", {}) if recipe else {}
        values = merged(base, dict(values or {}))
        if recorded:
            from xmfast._added import fill_absent

            values = fill_absent(self.config_type, values)
        return config_from_dict(self.config_type, values, f"model {self.name}")

    def train_config(self, **overrides: Any) -> Any:
        """The training settings: TrainConfig's defaults, the model's own, its recipe's (the
        ``recipe`` override, else "xmfast"), then `overrides`."""
        from xmfast.models.schedule import TrainConfig

        recipe = self.recipe(overrides.get("recipe") or self.train_defaults.get("recipe")).get("train", {})
        return config_from_dict(TrainConfig, {**dict(self.train_defaults), **recipe, **overrides},
                                f"training of model {self.name}")

    def finetune_config(self, **overrides: Any) -> Any:
        """The settings of `xmfast finetune` for this model (always on one market alone)."""
        recipe = self.recipe(overrides.get("recipe")).get("finetune", {})
        return self.train_config(**{**dict(self.finetune_defaults), **recipe, **overrides, "sources": ()})

    def label(self, *, sources: bool, fine_tuned: bool) -> str:
        """The name tables give a run: ``gmf++`` for a single-market model trained on pooled
        markets, ``acmr (pre-trained)`` for a run of a model that fine-tunes itself, before it was."""
        if self.name in self.fine_tunes and not fine_tuned:
            return f"{self.name} (pre-trained)"
        if sources and self.trained and not self.cross_market and not self.fine_tunes:
            return f"{self.name}++"
        return self.name

    def __repr__(self) -> str:
        return f"<model {self.name}: {self.description}>"


# ---- the registry --------------------------------------------------------------------------------
_BUILTIN = {
    "pop": "xmfast.models.builtin:Popularity",
    "cooc": "xmfast.models.builtin:Cooccurrence",
    "gmf": "xmfast.models.builtin:GMF",
    "mlp": "xmfast.models.builtin:MLP",
    "nmf": "xmfast.models.builtin:NMF",
    "maml": "xmfast.models.builtin:MAML",
    "forec": "xmfast.models.builtin:FOREC",
    "acmr": "xmfast.models.builtin:ACMR",
    "sasrec": "xmfast.models.builtin:SASRec",
    "magmf": "xmfast.models.builtin:MAGMF",
    "mamlp": "xmfast.models.builtin:MAMLP",
    "manmf": "xmfast.models.builtin:MANMF",
    "ease": "xmfast.models.builtin:EASE",
    "itemknn": "xmfast.models.builtin:ItemKNN",
    "mf": "xmfast.models.builtin:MF",
    "easemix": "xmfast.models.builtin:EaseMix",
}
_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")
_registered: dict[str, Model] = {}  # loaded models by name
_declared: dict[str, list[str]] | None = None  # name -> where it is declared (built-in or entry points)


def _entry_points() -> list[Any]:
    if not _may_declare_models():
        return []
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _may_declare_models() -> bool:
    """False only when no installed distribution can declare a model: no entry_points.txt of a
    .dist-info or .egg-info directory on sys.path (any case) or of an unpacked egg's EGG-INFO
    names the group, sys.path holds no zip file, and no import finder but Python's own lists
    distributions. Importing importlib.metadata (email, zipfile, csv, ...) took 15-40 ms of every
    command's start-up (issue 25); reading a few small files takes 1-2. Anything this cannot rule
    out is left to importlib.metadata."""
    import os
    import sys
    from importlib.machinery import PathFinder

    if any(getattr(f, "find_distributions", None) is not None and f is not PathFinder for f in sys.meta_path):
        return True
    needle = ENTRY_POINT_GROUP.encode()

    def declares(metadata_dir: str) -> bool:
        try:
            with open(os.path.join(metadata_dir, "entry_points.txt"), "rb") as f:
                return needle in f.read()
        except OSError:
            return False

    for entry in sys.path:
        entry = entry or "."
        try:
            if os.path.isfile(entry):
                return True  # a zip archive: its distributions are importlib.metadata's to read
            names = os.listdir(entry)
        except OSError:
            continue
        egg = os.path.basename(entry.rstrip("/\\")).lower().endswith(".egg")  # an unpacked egg on the path
        for name in names:  # the names importlib.metadata reads metadata from, in any case
            low = name.lower()
            if (low.endswith((".dist-info", ".egg-info")) or (egg and low == "egg-info")) and declares(
                    os.path.join(entry, name)):
                return True
    return False


def _declarations() -> dict[str, list[str]]:
    """Every model name known without loading anything: built-ins and entry points."""
    global _declared
    if _declared is None:
        found: dict[str, list[str]] = {name: [ref] for name, ref in _BUILTIN.items()}
        for ep in _entry_points():
            refs = found.setdefault(ep.name, [])
            if ep.value not in refs:
                refs.append(ep.value)
        _declared = found
    return _declared


def register(model: type[Model]) -> type[Model]:
    """Adds `model` (a :class:`Model` subclass) to the registry; usable as a class decorator.
    A second model of the same name is refused (an error naming both)."""
    if not (isinstance(model, type) and issubclass(model, Model)):
        raise XmfastError(f"register() takes a subclass of xmfast.models.Model, not {model!r}")
    _check_declaration(model)
    where = f"{model.__module__}:{model.__qualname__}"
    refs = _declarations().get(model.name, [])
    current = _registered.get(model.name)
    taken = _where(type(current)) if current is not None and type(current) is not model else (
        refs[0] if current is None and refs and where not in refs else None)
    if taken:
        raise XmfastError(f"model {model.name}: the name is taken by {taken} (a model named {model.name} was "
                          f"registered by {where}); rename one of them")
    _registered[model.name] = model()
    return model


def refresh() -> None:
    """Reads the installed packages' entry points again (after installing one in a running
    process: a notebook, a test). Models already loaded or registered from code stay."""
    global _declared
    _declared = None


def unregister(name: str) -> None:
    """Forgets a model registered from user code (tests, notebooks); built-ins and entry points
    stay declared."""
    _registered.pop(name, None)


def _where(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _check_declaration(model: type[Model]) -> None:
    """The declaration's own consistency, each problem one error naming the model and setting."""
    name = model.name
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith("++"):
        raise XmfastError(f"{_where(model)}: model name {name!r} must be lower-case letters, digits, '_', '-' or "
                          "'.', starting with a letter (a trailing ++ is the pooled variant, not a name)")
    what = f"model {name}"
    if not (isinstance(model.config_type, type) and is_dataclass(model.config_type)):
        raise XmfastError(f"{what}: config_type must be a dataclass, got {model.config_type!r}")
    try:
        model.config_type()
    except Exception as e:  # noqa: BLE001 - a user's dataclass may raise anything
        raise XmfastError(f"{what}: config_type {model.config_type.__name__} needs a default for every setting "
                          f"({type(e).__name__}: {e})") from None
    if model.objective not in OBJECTIVES:
        raise XmfastError(f"{what}: objective {model.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if model.objective == "own" and model.loss is Model.loss:
        raise XmfastError(f"{what}: objective 'own' needs a loss(module, batch) method")
    if model.batch not in BATCHES:
        raise XmfastError(f"{what}: batch {model.batch!r} is not one of {', '.join(BATCHES)}")
    if model.trained and model.build is Model.build:
        raise XmfastError(f"{what}: a trained model needs build(sizes, config) (or trained = False and fit())")
    if not model.trained and model.fit is Model.fit:
        raise XmfastError(f"{what}: trained = False needs fit(dataset, config, sources)")
    if not (isinstance(model.lr, numbers.Real) and model.lr > 0):
        raise XmfastError(f"{what}: lr must be a positive number, got {model.lr!r}")
    for slot, dep in dict(model.starts_from).items():
        if not (isinstance(slot, str) and isinstance(dep, str)) or slot == "base":
            raise XmfastError(f"{what}: starts_from maps slot names to model names ('base' is the fine-tuned "
                              f"run's slot), got {slot!r}: {dep!r}")
    if isinstance(model.fine_tunes, str) or not all(isinstance(m, str) for m in model.fine_tunes):
        raise XmfastError(f"{what}: fine_tunes must be a tuple of model names, got {model.fine_tunes!r}")
    if model.fine_tunes and model.starts_from:
        raise XmfastError(f"{what}: a fine-tuned model starts from its base run; declare fine_tunes or starts_from, "
                          "not both")


def _load(name: str) -> Model:
    """The registered model `name`, loading its declaration on first use."""
    if name in _registered:
        return _registered[name]
    refs = _declarations().get(name, [])
    if len(refs) > 1:
        raise XmfastError(f"model {name}: declared twice ({refs[0]} and {refs[1]}); uninstall or rename one of them")
    if not refs:
        raise XmfastError(f"unknown model {name!r} (known: {', '.join(model_names())})")
    ref = refs[0]
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except XmfastError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken plug-in is one line naming it, not a traceback
        raise XmfastError(f"model {name}: cannot load {ref} ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, type) and issubclass(obj, Model)):
        raise XmfastError(f"model {name}: {ref} is not a subclass of xmfast.models.Model")
    if obj.name != name:
        raise XmfastError(f"model {name}: {ref} declares the name {obj.name!r}; the entry point and the class "
                          "must agree")
    if name not in _registered:  # the module may have registered it while it was imported
        _check_declaration(obj)
        _registered[name] = obj()
    return _registered[name]


def model_names() -> list[str]:
    """Every registered model: the built-ins, then installed packages', then those registered
    from code, each group in a stable order. Nothing is loaded."""
    declared = list(_declarations())
    return declared + [n for n in _registered if n not in _declarations()]


def get_model(name: str) -> Model:
    """The model `name` (``gmf++`` names gmf: the ++ is the training's sources), its
    declaration and dependencies checked."""
    key = str(name).lower().removesuffix("++")
    if key not in _declarations() and key not in _registered:
        raise XmfastError(f"unknown model {name!r} (known: {', '.join(model_names())}; a ++ suffix trains a "
                          "single-market model on pooled markets)")
    model = _load(key)
    check_dependencies(model)
    return model


def check_dependencies(model: Model, config: Any = None) -> None:
    """Every model `model` starts from or fine-tunes is registered, and none leads back to it."""

    def walk(m: Model, path: list[str]) -> None:
        deps = list(m.requires(config if m is model and config is not None else m.config_type()).values())
        for dep in [*deps, *m.fine_tunes]:
            if dep == m.name and dep in m.fine_tunes:
                continue  # a model fine-tuning its own pre-trained runs (ACMR)
            if dep in path:
                cycle = " -> ".join([*path[path.index(dep):], dep])
                raise XmfastError(f"model {model.name}: its starting runs form a cycle ({cycle})")
            if dep not in _declarations() and dep not in _registered:
                raise XmfastError(f"model {m.name}: starts from unknown model {dep!r} (known: {', '.join(model_names())})")
            walk(_load(dep), [*path, dep])

    walk(model, [model.name])


def with_recipe(label: str, recipe: str | None) -> str:
    """A run's table name with its recipe where that is not xmfast's: ``nmf++ (original)``,
    ``acmr (pre-trained, original)``."""
    if not recipe or recipe == DEFAULT_RECIPE:
        return label
    return f"{label[:-1]}, {recipe})" if label.endswith(")") else f"{label} ({recipe})"


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`, nested tables merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def label_of(info: Mapping[str, Any]) -> str:
    """The table name of a run from its run.json: the label recorded when it was created, or
    (runs of older versions) :meth:`Model.label` now."""
    if isinstance(info.get("label"), str) and info["label"]:
        return info["label"]
    model = str(info["model"])
    sources = bool((info.get("train_config") or {}).get("sources"))
    fine_tuned = "base" in (info.get("pretrained") or {})
    try:
        return with_recipe(get_model(model).label(sources=sources, fine_tuned=fine_tuned),
                           (info.get("train_config") or {}).get("recipe"))
    except XmfastError:  # a model no longer installed: its runs still report, under their own name
        return model + ("++" if sources else "")


# ---- configurations from plain values -------------------------------------------------------------
def config_from_dict(config_type: type, values: Mapping[str, Any], owner: str | None = None) -> Any:
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
        detail = f"unknown setting {unknown[0]!r} (known: {', '.join(known) or 'none'})"
        raise SettingError(f"{owner + ': ' if owner else ''}unknown setting {unknown[0]!r} for {config_type.__name__} "
                           f"(known: {', '.join(known) or 'none'})", (unknown[0],), detail)
    owner = owner or config_type.__name__
    hints = typing.get_type_hints(config_type)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints.get(name, Any)
        if is_dataclass(hint) and isinstance(value, dict):
            try:
                value = config_from_dict(hint, value, f"{owner} [{name}]")
            except SettingError as e:
                raise SettingError(str(e), (name, *e.path), f"[{name}] {e.detail}") from None
        else:
            try:
                value = _typed(value, hint, f"{owner}: setting {name}")
            except XmfastError as e:
                detail = str(e).removeprefix(f"{owner}: ")
                raise SettingError(str(e), (name,), detail) from None
        kwargs[name] = value
    try:
        return config_type(**kwargs)
    except (TypeError, ValueError) as e:
        raise XmfastError(f"{owner}: {e}") from None
    except SettingError:
        raise
    except XmfastError as e:  # a check of the configuration's own: its message starts with the setting's name
        name = str(e).split(" ", 1)[0]
        if name in known:
            raise SettingError(str(e), (name,), str(e)) from None
        raise


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
