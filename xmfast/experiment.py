"""Experiments: one TOML file names a grid (targets × source settings × models × seeds); the
planner turns it into a dependency graph of stages and runs each stage once.

::

    name = "quickstart"
    data = "../data/sample"         # relative to this file's directory (so it runs from any directory)
    out = "../runs/quickstart"      # `xmfast run --out DIR` instead: relative to the current directory
    protocol = "forec"              # forec or acmr
    targets = ["in"]                # or "all": every market in `data`
    sources = "all"                 # "all" (one pooled set), "each" (one run per other market), or ["de", "uk"]
    models = ["pop", "cooc", "gmf", "mlp", "nmf", "nmf++", "maml", "forec", "acmr"]
    seeds = [1, 2, 3]
    device = "cpu"                  # auto, cpu, cuda

    [prepare]                       # PrepareConfig settings (seed = the split's seed, kept for all runs)
    [train]                         # TrainConfig settings for every model; a sub-table per model:
    [train.acmr]                    #   epochs = 10
    [finetune.forec]                # settings of a fine-tuning stage (forec, acmr)
    [model.nmf]                     # hyper-parameters (the model's configuration dataclass)

The graph comes from the models' declarations in the registry (:mod:`xmfast.models`): a model
starts from the runs it declares (``nmf`` from ``gmf`` and ``mlp``, ``maml`` from ``nmf``), trained
on the same markets, and a fine-tuned model (``forec``, ``acmr``'s second stage) from a run of
the model it fine-tunes. ``models`` lists registered names; ``name++`` is a single-market model
trained on the target pooled with the sources. Prerequisites are planned even when the file does
not list them, and a setting a model takes from a prerequisite (NMF's ``gmf`` branch is the GMF
run's settings) is set once, in that prerequisite's ``[model.NAME]`` table.

Each stage has a key: a digest of everything that determines its output (its settings and the
keys of the stages it reads). A ledger under ``OUT/.stages`` records the key each output was
made with, so a re-run does only what is missing or changed, continues interrupted training
from its last checkpoint, and re-runs exactly the stages downstream of a changed setting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from xmfast._io import digest_json, write_json_atomic
from xmfast.errors import XmfastError
from xmfast.models import Model, get_model, model_names

StageKind = Literal["prepare", "train", "finetune"]
Action = Literal["cached", "resume", "run"]

_TOP_KEYS = {"name", "data", "out", "protocol", "targets", "sources", "models", "seeds", "device", "description",
             "prepare", "train", "finetune", "model"}


@dataclass(frozen=True)
class Experiment:
    """An experiment file, checked (see the module docstring)."""

    name: str
    data: Path
    out: Path
    protocol: str = "forec"
    targets: tuple[str, ...] | Literal["all"] = "all"
    sources: tuple[str, ...] | Literal["all", "each"] = "all"
    models: tuple[str, ...] = ("pop", "gmf", "mlp", "nmf")
    seeds: tuple[int, ...] = (42,)
    device: str = "auto"
    description: str = ""
    prepare: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # shared TrainConfig settings
    train_by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    finetune_by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        where = f"{self.path}: " if self.path else ""
        if self.protocol not in ("forec", "acmr"):
            raise XmfastError(f"{where}protocol must be forec or acmr, got {self.protocol!r}")
        if not self.models:
            raise XmfastError(f"{where}models is empty; list some of {', '.join(model_names())}")
        for m in self.models:
            _experiment_model(m, where)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise XmfastError(f"{where}seeds must be a non-empty list of distinct integers")
        for table, names in (("train", self.train_by_model), ("finetune", self.finetune_by_model),
                             ("model", self.model_settings)):
            for name, values in names.items():
                if name not in model_names():
                    raise XmfastError(f"{where}[{table}.{name}]: unknown model {name!r} (known: "
                                      f"{', '.join(model_names())})")
                if not isinstance(values, dict):
                    raise XmfastError(f"{where}[{table}] {name} = {values!r}: expected a table of settings, "
                                      f"[{table}.{name}]")
        for name in self.finetune_by_model:
            if not get_model(name).fine_tunes:
                tuned = [m for m in model_names() if get_model(m).fine_tunes]
                raise XmfastError(f"{where}[finetune.{name}]: {name} has no fine-tuning stage (models made by "
                                  f"fine-tuning: {', '.join(tuned)})")


def _experiment_model(entry: str, where: str) -> tuple[Model, bool]:
    """The model an entry of `models` names and whether it is the pooled (``++``) variant."""
    pooled = entry.endswith("++")
    try:
        model = get_model(entry)
    except XmfastError as e:
        raise XmfastError(f"{where}models: {e}") from None
    if entry != model.name + ("++" if pooled else ""):
        raise XmfastError(f"{where}unknown model {entry!r} in models (did you mean {model.name + ('++' if pooled else '')!r}?)")
    if pooled and model.label(sources=True, fine_tuned=False) != entry:
        raise XmfastError(f"{where}models: {entry!r}: {model.name} has no pooled variant (it "
                          f"{'uses the sources by design' if model.cross_market else 'is not trained on pooled markets'}); "
                          f"list {model.name!r}")
    return model, pooled


def _expect(value: Any, kind: type | tuple[type, ...], what: str, where: Path) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise XmfastError(f"{where}: {what} has the wrong type ({value!r})")
    return value


def _markets_or(value: Any, words: tuple[str, ...], what: str, where: Path) -> Any:
    """One of `words`, or market codes (a list, or one code as a string) as a tuple."""
    if isinstance(value, str):
        return value if value in words else (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(value))
    raise XmfastError(f"{where}: {what} must be {' or '.join(repr(w) for w in words)} or a list of market codes")


def _beside(file: Path, value: str) -> Path:
    """A path the experiment `file` gives: a relative one is relative to the file's directory, so
    the file runs the same from any directory. It is shown relative to the current directory
    when it lies below it (`runs/quickstart` from the repository root), else in full."""
    where = (file.parent / value).resolve()
    try:
        return where.relative_to(Path.cwd().resolve())
    except ValueError:
        return where


def read_experiment(path: Path, *, out: Path | None = None) -> Experiment:
    """Reads and checks an experiment file; every unknown key is an error naming it. Its `data`
    and `out` are relative to the file's directory; `out` given here (`xmfast run --out`) is
    relative to the current directory, as every path on a command line is."""
    from xmfast.configs import read_config_file

    path = Path(path)
    raw = read_config_file(path)
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise XmfastError(f"{path}: unknown key {unknown[0]!r} (expected {', '.join(sorted(_TOP_KEYS))})")
    for key in ("data", "out"):
        if key not in raw and not (key == "out" and out is not None):
            raise XmfastError(f"{path}: missing {key!r} (the {'rating files directory' if key == 'data' else 'output directory'})")
    train = dict(_expect(raw.get("train", {}), dict, "[train]", path))
    train_by_model = {k: train.pop(k) for k in list(train) if isinstance(train[k], dict)}
    seeds = _expect(raw.get("seeds", [42]), list, "seeds", path)
    for s in seeds:
        _expect(s, int, "each seed", path)
    models = _expect(raw.get("models", list(Experiment.models)), list, "models", path)
    for m in models:
        _expect(m, str, "each model", path)
    return Experiment(
        name=_expect(raw.get("name", path.stem), str, "name", path),
        data=_beside(path, _expect(raw["data"], str, "data", path)),
        out=Path(out) if out is not None else _beside(path, _expect(raw["out"], str, "out", path)),
        protocol=_expect(raw.get("protocol", "forec"), str, "protocol", path),
        targets=_markets_or(raw.get("targets", "all"), ("all",), "targets", path),
        sources=_markets_or(raw.get("sources", "all"), ("all", "each"), "sources", path),
        models=tuple(dict.fromkeys(models)),
        seeds=tuple(seeds),
        device=_expect(raw.get("device", "auto"), str, "device", path),
        description=_expect(raw.get("description", ""), str, "description", path),
        prepare=dict(_expect(raw.get("prepare", {}), dict, "[prepare]", path)),
        train=train,
        train_by_model=train_by_model,
        finetune_by_model=dict(_expect(raw.get("finetune", {}), dict, "[finetune]", path)),
        model_settings=dict(_expect(raw.get("model", {}), dict, "[model]", path)),
        path=path,
    )


# ---- the plan ------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One unit of work: prepare a dataset, train a model, or fine-tune a trained run."""

    id: str  # also the output's place under the experiment's `out`: "in/all/s1/nmf"
    kind: StageKind
    target: str
    path: Path
    label: str = ""  # the name tables use: "nmf++", "acmr (pre-trained)"
    model: str | None = None
    sources: tuple[str, ...] = ()
    setting: str = ""  # "single", "all", "src-de"
    seed: int | None = None
    deps: tuple[str, ...] = ()
    pretrained: dict[str, str] = field(default_factory=dict)  # branch name -> id of the stage it starts from
    settings: dict[str, Any] = field(default_factory=dict)  # what determines the output (JSON)
    key: str = ""

    @property
    def result_path(self) -> Path:
        """The directory holding the stage's results (a fine-tuned run sits in `path/target`)."""
        return self.path / self.target if self.kind == "finetune" else self.path


@dataclass(frozen=True)
class Plan:
    experiment: Experiment
    stages: list[Stage]  # in dependency order

    def by_id(self) -> dict[str, Stage]:
        return {s.id: s for s in self.stages}


def _data_signature(data: Path, category: str | None) -> list[list[Any]]:
    """What the rating files are: names, sizes and the blake3 of their bytes (the digest each
    prepared dataset's manifest records). Content, not modification times: a fresh copy of the
    same files (a new clone, a restored backup, a re-mounted share) must not re-run hours of
    finished stages. Hashing streams at disk speed (the 7 XMarket 5-core files: milliseconds)."""
    from xmfast import core
    from xmfast.markets import discover

    out = []
    for market, f in sorted(discover(data, category).items()):
        try:
            digest = core.file_digest(f.path)
        except (OSError, ValueError) as e:
            raise XmfastError(f"{f.path}: cannot be read ({e})") from None
        out.append([market, f.path.name, f.path.stat().st_size, digest])
    return out


def _setting_of(sources: tuple[str, ...] | str) -> str:
    if sources == () or sources == "":
        return "single"
    if sources == ("all",):
        return "all"
    return "src-" + "+".join(sources)


def _check_settings(config_type: type, values: dict[str, Any], where: str) -> None:
    from xmfast.models import config_from_dict

    try:
        config_from_dict(config_type, values)
    except XmfastError as e:
        raise XmfastError(f"{where}: {e}") from None


def plan(experiment: Experiment) -> Plan:
    """The stages of `experiment` in dependency order, each with its key."""
    from xmfast.markets import check_market_code, discover
    from xmfast.models.schedule import TrainConfig
    from xmfast.prepare import KCore, PrepareConfig
    from xmfast.runs import key_plain, to_plain

    exp = experiment
    where = str(exp.path or exp.name)
    prep_values = dict(exp.prepare)
    for key in ("target", "sources", "protocol"):
        if key in prep_values:
            raise XmfastError(f"{where}: [prepare] cannot set {key!r}; it comes from the experiment's own keys")
    try:
        for key in ("kcore", "reference_kcore"):
            if key in prep_values:
                if not isinstance(prep_values[key], dict):
                    raise XmfastError(f"{key} = {prep_values[key]!r}: expected a table such as "
                                      "{min_user = 5, min_item = 5}")
                prep_values[key] = KCore(**prep_values[key])
        PrepareConfig(target="uk", **prep_values)
    except (TypeError, XmfastError) as e:
        raise XmfastError(f"{where}: [prepare]: {e}") from None
    available = sorted(discover(exp.data, prep_values.get("category")))
    targets = available if exp.targets == "all" else list(exp.targets)
    for t in targets:
        check_market_code(t)
        if t not in available:
            raise XmfastError(f"{where}: target {t!r} has no rating file in {exp.data} (found {', '.join(available)})")
    if isinstance(exp.sources, tuple):
        for s in exp.sources:
            check_market_code(s)
            if s not in available:
                raise XmfastError(f"{where}: source {s!r} has no rating file in {exp.data}")
    # [train] alone first: a typo there is reported under its own table, not under the first
    # [train.NAME] it is merged into
    _check_settings(TrainConfig, exp.train, f"{where}: [train]")
    for name, values in exp.train_by_model.items():
        _check_settings(TrainConfig, {**exp.train, **values}, f"{where}: [train.{name}]")
    for name, values in exp.finetune_by_model.items():
        _check_settings(TrainConfig, values, f"{where}: [finetune.{name}]")

    entries = [_experiment_model(m, where) for m in exp.models]
    multi = [(m, pooled) for m, pooled in entries if _uses_sources(m, pooled)]
    single = [m for m, pooled in entries if not _uses_sources(m, pooled)]
    both = [s for s in exp.sources if s in targets] if isinstance(exp.sources, tuple) and multi else []
    if both:  # refused here, not after the dataset is prepared and the training starts
        raise XmfastError(f"{where}: {both[0]!r} is both a target and a source; a market is never its own source "
                          "(list other markets, or use sources = \"all\" or \"each\")")

    configs = _ModelConfigs(exp, where)
    for name in exp.model_settings:  # every table is checked, also one of a model not in `models`
        configs.train(name)
    data_signature = _data_signature(exp.data, prep_values.get("category"))
    stages: list[Stage] = []

    def add(stage: Stage, deps: Sequence[Stage] = ()) -> Stage:
        stage.deps = tuple(d.id for d in deps)
        stage.key = digest_json({"kind": stage.kind, "settings": stage.settings, "deps": [d.key for d in deps]})
        stages.append(stage)
        return stage

    def train_config(name: str, sources: tuple[str, ...], seed: int) -> Any:
        values = {**exp.train, **exp.train_by_model.get(name, {}), "seed": seed, "sources": sources,
                  "device": exp.device}
        return get_model(name).train_config(**values)

    def finetune_config(name: str, seed: int) -> Any:
        # the recipe of the experiment's training, unless [finetune.NAME] names its own
        recipe = configs.recipe(name)
        values = {**({"recipe": recipe} if recipe else {}), **exp.finetune_by_model.get(name, {}), "seed": seed,
                  "device": exp.device}
        return get_model(name).finetune_config(**values)

    def settings(name: str, model_config: Any, config: Any, *, finetune: bool = False) -> dict[str, Any]:
        # device changes where a run trains, not what it is: a run moved to a GPU is not stale
        kept = {k: v for k, v in key_plain(config).items() if k not in ("device", "eval_batch")}
        return {"model": name, "model_config": key_plain(model_config), "train_config": kept, "finetune": finetune}

    if isinstance(exp.sources, tuple):
        source_sets = [tuple(exp.sources)]
    elif exp.sources == "all":
        source_sets = [("all",)]
    else:
        source_sets = []  # per target below

    for t in targets:
        prep = PrepareConfig(target=t, sources="all", protocol=exp.protocol, **prep_values)  # type: ignore[arg-type]
        dataset = add(Stage(id=f"{t}/dataset", kind="prepare", target=t, path=exp.out / t / "dataset",
                            label="dataset", settings={"prepare": to_plain(prep), "data": data_signature}))
        sets = (source_sets or [(m,) for m in available if m != t]) if multi else []
        for seed in exp.seeds:
            made: dict[tuple[str, str, tuple[str, ...]], Stage] = {}

            def train_stage(model: Model, sources: tuple[str, ...]) -> Stage:
                """The training of `model` on `sources`, after the runs it starts from (same sources)."""
                if ("train", model.name, sources) in made:
                    return made["train", model.name, sources]
                model_config = configs.train(model.name)
                pretrained = {slot: train_stage(get_model(dep), sources)
                              for slot, dep in model.requires(model_config).items()}
                setting = _setting_of(sources)
                label = model.label(sources=bool(sources), fine_tuned=False)
                slug = label.replace(" (pre-trained)", "-pretrain")
                s = settings(model.name, model_config, train_config(model.name, sources, seed))
                s["pretrained"] = sorted(pretrained)
                stage = add(Stage(id=f"{t}/{setting}/s{seed}/{slug}", kind="train", target=t,
                                  path=exp.out / t / setting / f"s{seed}" / slug, label=label, model=model.name,
                                  sources=sources, setting=setting, seed=seed, settings=s,
                                  pretrained={k: v.id for k, v in pretrained.items()}),
                            [dataset, *pretrained.values()])
                made["train", model.name, sources] = stage
                return stage

            def finetune_stage(model: Model, sources: tuple[str, ...]) -> Stage:
                """`model` fine-tuned on the target from a run of the first model it fine-tunes."""
                base = train_stage(get_model(model.fine_tunes[0]), sources)
                setting = _setting_of(sources)
                return add(Stage(id=f"{t}/{setting}/s{seed}/{model.name}", kind="finetune", target=t,
                                 path=exp.out / t / setting / f"s{seed}" / model.name, label=model.name,
                                 model=model.name, sources=sources, setting=setting, seed=seed,
                                 settings=settings(model.name, configs.finetune(model.name),
                                                   finetune_config(model.name, seed), finetune=True)),
                           [dataset, base])

            def plan_entry(model: Model, sources: tuple[str, ...]) -> None:
                if model.fine_tunes:
                    finetune_stage(model, sources)
                else:
                    train_stage(model, sources)

            for model in _registry_order(single):
                plan_entry(model, ())
            for sources in sets:
                for model in _registry_order([m for m, _ in multi]):
                    plan_entry(model, sources)
    return Plan(exp, stages)


def _uses_sources(model: Model, pooled: bool) -> bool:
    """Whether an entry of `models` is trained with the experiment's sources: a ``++`` variant, a
    cross-market model, or a model fine-tuned from one."""
    if pooled or model.cross_market:
        return True
    return bool(model.fine_tunes) and _uses_sources(get_model(model.fine_tunes[0]), False)


def _registry_order(models: Sequence[Model]) -> list[Model]:
    order = model_names()
    return sorted(dict.fromkeys(models), key=lambda m: order.index(m.name))


class _ModelConfigs:
    """Each model's configuration in an experiment, from its ``[model.NAME]`` table. A setting a
    model shares with a run it starts from (NMF's ``gmf`` branch, MAML's ``nmf``) is that run's
    configuration, and a fine-tuned model's follows its base's (``config_from_base``), so a chain
    always fits together and each hyper-parameter is set in one place."""

    def __init__(self, exp: Experiment, where: str) -> None:
        self.exp, self.where = exp, where
        self._train: dict[str, Any] = {}

    def recipe(self, name: str) -> str | None:
        """The recipe `name` trains with: its [train.NAME] table's, else [train]'s."""
        return {**self.exp.train, **self.exp.train_by_model.get(name, {})}.get("recipe")

    def train(self, name: str) -> Any:
        if name not in self._train:
            model = get_model(name)
            values = self.exp.model_settings.get(name, {})
            linked = {slot: dep for slot, dep in model.starts_from.items()
                      if any(f.name == slot for f in fields(model.config_type))}
            if model.fine_tunes and model.name not in model.fine_tunes:
                base_slots = get_model(model.fine_tunes[0]).starts_from
                linked.update({f.name: base_slots[f.name] for f in fields(model.config_type) if f.name in base_slots})
            shared = [slot for slot in linked if slot in values]
            if shared:
                raise XmfastError(f"{self.where}: [model.{name}] cannot set {shared[0]!r}: it is the settings of the "
                                  f"{linked[shared[0]]} run {name} starts from; set them in [model.{linked[shared[0]]}]")
            try:
                config = model.config_from(values, self.recipe(name))
            except XmfastError as e:
                raise XmfastError(f"{self.where}: [model.{name}]: {str(e).removeprefix(f'model {name}: ')}") from None
            for slot, dep in model.starts_from.items():
                if slot in linked:
                    config = replace(config, **{slot: self.train(dep)})
            self._train[name] = config
        return self._train[name]

    def finetune(self, name: str) -> Any:
        model = get_model(name)
        base = model.fine_tunes[0]
        own = None if name in model.fine_tunes else self.train(name)
        try:
            return model.config_from_base(own, base, self.train(base))
        except XmfastError as e:
            raise XmfastError(f"{self.where}: [model.{name}]: {e}") from None


# ---- state and execution -------------------------------------------------------------------------
def _ledger_path(exp: Experiment, stage: Stage) -> Path:
    return exp.out / ".stages" / (stage.id.replace("/", "__") + ".json")


def _read_ledger(exp: Experiment, stage: Stage) -> dict[str, Any]:
    import json

    path = _ledger_path(exp, stage)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _complete(stage: Stage) -> bool:
    if stage.kind == "prepare":
        return (stage.path / "manifest.json").is_file()
    return (stage.result_path / "results.json").is_file()


def _resumable(stage: Stage) -> bool:
    run = stage.result_path
    return stage.kind != "prepare" and (run / "checkpoints" / "last.pt").is_file() and (run / "run.json").is_file()


def stage_actions(p: Plan) -> dict[str, Action]:
    """What executing the plan would do with each stage: nothing (cached: made with the same
    key and complete), continue it (resume) or run it from scratch."""
    return {stage.id: _stage_action(p.experiment, stage) for stage in p.stages}


def _stage_action(exp: Experiment, stage: Stage) -> Action:
    ledger = _read_ledger(exp, stage)
    same = ledger.get("key") == stage.key
    if same and ledger.get("status") == "finished" and _complete(stage):
        return "cached"
    if same and ledger.get("status") == "started" and _resumable(stage) and not _complete(stage):
        return "resume"
    return "run"


class ExperimentObserver:
    """What the CLI shows while an experiment runs; the defaults do nothing."""

    def on_plan(self, plan: Plan, actions: dict[str, Action]) -> None: ...
    def on_stage_start(self, stage: Stage, action: Action, index: int, total: int) -> None: ...
    def on_stage_end(self, stage: Stage, seconds: float) -> None: ...

    def training_observer(self, stage: Stage) -> Any:
        """A TrainObserver for the stage's epochs (None: silent)."""
        return None


@dataclass
class ExperimentResult:
    plan: Plan
    actions: dict[str, Action]
    seconds: dict[str, float]  # per executed stage

    @property
    def executed(self) -> list[str]:
        return list(self.seconds)

    def __repr__(self) -> str:
        """One line for a notebook (the plan's stages would fill pages): what ran, what was reused."""
        ran = sum(1 for a in self.actions.values() if a != "cached")
        left = ran - len(self.seconds)
        stopped = f", {left} not reached (stopped early)" if left > 0 else ""
        return (f"<ExperimentResult {self.plan.experiment.name}: {len(self.plan.stages)} stages, {len(self.seconds)} run "
                f"in {sum(self.seconds.values()):.1f} s, {len(self.plan.stages) - ran} cached{stopped}; "
                f"out {self.plan.experiment.out}>")


def run_experiment(p: Plan, *, observer: ExperimentObserver | None = None,
                   stop_after: int | None = None) -> ExperimentResult:
    """Executes the stages that are not cached, in dependency order. Interrupting it is safe:
    a re-run continues (an interrupted training resumes from its last checkpoint).

    `stop_after` ends the first executed training stage after that many epochs, as a crash
    would; tests use it to check that a re-run continues."""
    from xmfast import outputs
    from xmfast._io import check_output

    # Only an experiment's own directory (or a fresh one) holds its stages, and never the data.
    check_output(p.experiment.out, outputs.EXPERIMENT_DIR, inputs=[p.experiment.data])
    observer = observer or ExperimentObserver()
    actions = stage_actions(p)
    observer.on_plan(p, actions)
    by_id = p.by_id()
    todo = [s for s in p.stages if actions[s.id] != "cached"]
    seconds: dict[str, float] = {}
    for n, stage in enumerate(todo, 1):
        # Looked at again now: another process running the same experiment (a second `xmfast
        # run`, another target's) may have finished this stage since the plan was made, and
        # running it again would rewrite a run that a later stage of that process may be reading.
        if _stage_action(p.experiment, stage) == "cached":
            actions[stage.id] = "cached"
            continue
        observer.on_stage_start(stage, actions[stage.id], n, len(todo))
        t0 = time.perf_counter()
        write_json_atomic(_ledger_path(p.experiment, stage), {"id": stage.id, "key": stage.key, "status": "started"})
        finished = _execute(p.experiment, stage, actions[stage.id], by_id, observer.training_observer(stage),
                            stop_after)
        seconds[stage.id] = time.perf_counter() - t0
        if not finished:
            return ExperimentResult(p, actions, seconds)
        write_json_atomic(_ledger_path(p.experiment, stage), {"id": stage.id, "key": stage.key, "status": "finished",
                                                              "seconds": seconds[stage.id]})
        observer.on_stage_end(stage, seconds[stage.id])
    return ExperimentResult(p, actions, seconds)


def _execute(exp: Experiment, stage: Stage, action: Action, by_id: dict[str, Stage], train_observer: Any,
             stop_after: int | None) -> bool:
    from xmfast import training
    from xmfast.dataset import PreparedDataset
    from xmfast.models import config_from_dict
    from xmfast.prepare import KCore, PrepareConfig
    from xmfast.prepare import prepare as run_prepare

    if stage.kind == "prepare":
        values = dict(stage.settings["prepare"])
        for key in ("kcore", "reference_kcore"):
            values[key] = KCore(**values[key])
        config = PrepareConfig(**values)
        run_prepare(exp.data, stage.path, config, overwrite=True)
        return True
    if action == "resume":
        return training.resume(stage.result_path, observer=train_observer, stop_after=stop_after) is not None
    assert stage.model is not None
    spec = get_model(stage.model)
    model_config = spec.config_from(stage.settings["model_config"])
    config = config_from_dict(training.TrainConfig, {**stage.settings["train_config"], "device": exp.device})
    deps = [by_id[d] for d in stage.deps]
    if stage.kind == "finetune":
        base = next(d for d in deps if d.kind == "train")
        results = training.finetune(base.path, stage.path, [stage.target], model_config, config, model=stage.model,
                                    overwrite=True, observer=train_observer, stop_after=stop_after)
        return all(r is not None for r in results.values())
    dataset = PreparedDataset.load(by_id[stage.deps[0]].path)
    pretrained = {name: by_id[d].path for name, d in stage.pretrained.items()}
    result = training.train(dataset, stage.path, stage.model, model_config, config, pretrained=pretrained,
                            overwrite=True, observer=train_observer, stop_after=stop_after)
    return result is not None


def write_experiment_report(exp: Experiment, source: Path) -> Path:
    """OUT/report.md (with its CSV, JSON and plots) over every finished run of the experiment,
    prefaced by its description and how it was made."""
    from xmfast.report import build_report, collect_runs, write_report

    made = (f"Made by `xmfast run {source}` (data `{exp.data}`, protocol {exp.protocol}, seeds "
            f"{', '.join(map(str, exp.seeds))}).")
    preface = f"{exp.description.strip()}\n\n{made}" if exp.description.strip() else made
    return write_report(build_report(collect_runs([exp.out])), exp.out / "report.md", title=f"{exp.name}: results",
                        preface=preface, inputs=[exp.out])


__all__ = ["Experiment", "ExperimentObserver", "ExperimentResult", "Plan", "Stage", "plan", "read_experiment",
           "run_experiment", "stage_actions", "write_experiment_report"]
