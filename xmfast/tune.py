"""Hyper-parameter search for an experiment's models (``xmfast tune EXP``), with Optuna.

The experiment file's ``[tune]`` table sets the budget and one sub-table per model its search
space; every key is a setting of the model (a field of its configuration, ``[model.NAME]``) or of
its training (a TrainConfig field, ``[train.NAME]``)::

    [tune]
    trials = 8              # budget per (model, target): trials that completed or were pruned
    timeout = "30m"         # and/or wall-clock budget per (model, target) and call: 90s, 30m, 2h
    pruner = "median"       # median, halving (successive halving) or none
    seed = 1                # of the TPE sampler (default: the experiment's first seed)
    [tune.gmf]
    lr = {low = 1e-4, high = 1e-2, log = true}   # a range: integers if both ends are, else floats
    embedding_dim = [8, 16, 32]                  # a list: categorical

Optuna because its TPE sampler, pruners and SQLite storage are what a search needs and are
well kept; a home-made search would re-implement all three. A trial is one training stage of the
grid (the first seed, the first source setting of the model's entry), planned by
:func:`xmfast.experiment.plan` with the trial's values and executed by the grid's executor in a
directory of its own, ``OUT/tune/<target>/<model>/trial-N``; its prerequisites (the prepared
dataset, NMF's GMF and MLP runs) are the grid's own stages, made or reused through the ledger.
A trial trains with validation only (``validation_only``): the test split is never scored, so
no trial has a test.json and nothing the search reads could come from it. The per-epoch
validation value of the experiment's monitor goes to the pruner; the trial's value is the one
its run would select (best epoch, or last with ``select = "last"``). A model without training
(ease, itemknn) is fitted and validated once per trial: its value is that validation, never pruned.

The study lives in ``OUT/tune/tune.db`` (SQLite), one study per (model, target): an
interrupted search continues; a trial left running by a killed process is marked failed and
does not count toward the budget. ``OUT/tune/summary.json`` holds each study's ranges, trial
counts and chosen values; ``xmfast run EXP --use-tuned`` trains the grid with them
(:func:`tuned_plan`), and the experiment's report lists them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from xmfast.errors import XmfastError
from xmfast.experiment import Experiment, Plan, Stage, _execute, plan, run_experiment
from xmfast.models import get_model

_TUNE_KEYS = {"trials", "timeout", "pruner", "seed"}
_PRUNERS = ("median", "halving", "none")
SUMMARY = "summary.json"


@dataclass(frozen=True)
class Dimension:
    """One searched setting: `table` is "train" (a TrainConfig field) or "model" (the model's
    configuration); `choices` for a categorical one, else the range [low, high]."""

    name: str
    table: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.choices:
            return "{" + ", ".join(map(repr, self.choices)) + "}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "") + (" int" if self.integer else "")

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TuneSpec:
    """The ``[tune]`` table, checked."""

    spaces: dict[str, tuple[Dimension, ...]]  # model name -> its dimensions
    trials: int | None = None
    timeout: float | None = None  # seconds
    pruner: str = "median"
    seed: int = 0


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", value) if isinstance(value, str) else None
    if not m or float(m.group(1)) <= 0:
        raise XmfastError(f"{where} timeout = {value!r}: expected a positive duration such as 90s, 30m or 2h "
                          "(a number alone: seconds)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def read_tune(exp: Experiment) -> TuneSpec:
    """The experiment's ``[tune]`` table as a :class:`TuneSpec`; an unknown key, an unknown
    setting of a model or a value its settings refuse is one error naming the table and key."""
    from xmfast.models.schedule import TrainConfig

    where = f"{exp.path or exp.name}: [tune]"
    raw = dict(exp.tune)
    if not raw:
        raise XmfastError(f"{exp.path or exp.name}: no [tune] table; add one with a search space per model, e.g. "
                          "[tune.gmf] lr = {low = 1e-4, high = 1e-2, log = true}")
    tables = {k: raw.pop(k) for k in list(raw) if isinstance(raw[k], dict)}
    unknown = sorted(set(raw) - _TUNE_KEYS)
    if unknown:
        raise XmfastError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(_TUNE_KEYS))}, or a "
                          "table [tune.MODEL] of search ranges)")
    trials = raw.get("trials")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise XmfastError(f"{where} trials = {trials!r}: expected a whole number of at least 1")
    timeout = _seconds(raw["timeout"], where) if "timeout" in raw else None
    if trials is None and timeout is None:
        raise XmfastError(f"{where}: give a budget: trials = N and/or timeout = \"30m\"")
    pruner = raw.get("pruner", "median")
    if pruner not in _PRUNERS:
        raise XmfastError(f"{where} pruner = {pruner!r}: expected {', '.join(_PRUNERS)}")
    seed = raw.get("seed", exp.seeds[0])
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise XmfastError(f"{where} seed = {seed!r}: expected a whole number of at least 0")
    if not tables:
        raise XmfastError(f"{where}: no search space; add a table [tune.MODEL] (e.g. [tune.gmf] lr = "
                          "{low = 1e-4, high = 1e-2, log = true})")
    listed = {m.removesuffix("++") for m in exp.models}
    train_fields = {f.name for f in fields(TrainConfig)} - {"seed", "sources", "device", "recipe", "eval_batch"}
    spaces: dict[str, tuple[Dimension, ...]] = {}
    for name, table in tables.items():
        if name not in listed:
            raise XmfastError(f"{where.removesuffix(']')}.{name}]: {name!r} is not among the experiment's models "
                              f"({', '.join(exp.models)})")
        model = get_model(name)
        if model.fine_tunes and name not in model.fine_tunes:
            raise XmfastError(f"{where.removesuffix(']')}.{name}]: {name} is made by fine-tuning another model; tune "
                              "a model trained by `xmfast train`")
        model_fields = {f.name for f in fields(model.config_type)}
        dims = []
        for key, value in table.items():
            at = f"{where.removesuffix(']')}.{name}] {key}"
            if key in model_fields:
                kind = "model"
            elif key in train_fields and model.trained:  # a fitted model has no training settings
                kind = "train"
            else:
                raise XmfastError(f"{at}: {name} has no such setting (its settings: "
                                  f"{', '.join(sorted(model_fields | (train_fields if model.trained else set())))})")
            dims.append(_dimension(key, kind, value, at))
        if not dims:
            raise XmfastError(f"{where.removesuffix(']')}.{name}]: empty; give at least one setting to search")
        spaces[name] = tuple(dims)
        for d in dims:  # every end and choice must be a value the model takes: refused now, not in trial 5
            for v in (d.choices or (d.low, d.high)):
                _check_value(exp, name, d, int(v) if d.integer else v, at=f"{where.removesuffix(']')}.{name}] {d.name}")
    return TuneSpec(spaces, trials, timeout, pruner, seed)


def _dimension(key: str, kind: str, value: Any, at: str) -> Dimension:
    if isinstance(value, list):
        if not value or not all(isinstance(v, (int, float, str, bool)) for v in value):
            raise XmfastError(f"{at} = {value!r}: a list of choices must hold numbers, strings or booleans")
        return Dimension(key, kind, choices=tuple(dict.fromkeys(value)))
    if not isinstance(value, dict):
        raise XmfastError(f"{at} = {value!r}: expected a range {{low = A, high = B, log = false}} or a list of choices")
    extra = sorted(set(value) - {"low", "high", "log"})
    if extra or "low" not in value or "high" not in value:
        raise XmfastError(f"{at}: a range is {{low = A, high = B}} with an optional log = true"
                          + (f" (unknown key {extra[0]!r})" if extra else ""))
    low, high, log = value["low"], value["high"], value.get("log", False)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise XmfastError(f"{at}: low and high must be numbers with low < high, got {low!r} and {high!r}")
    if not isinstance(log, bool) or (log and low <= 0):
        raise XmfastError(f"{at}: log must be true or false, and a log range needs low > 0")
    return Dimension(key, kind, low, high, log, isinstance(low, int) and isinstance(high, int))


def _overrides(values: dict[str, Any], dims: tuple[Dimension, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (train, model) settings of a trial's values."""
    train = {d.name: values[d.name] for d in dims if d.table == "train" and d.name in values}
    model = {d.name: values[d.name] for d in dims if d.table == "model" and d.name in values}
    return train, model


def _with_values(exp: Experiment, name: str, train: dict[str, Any], model: dict[str, Any]) -> Experiment:
    """`exp` with `name`'s [train.NAME] and [model.NAME] tables overridden."""
    return replace(exp, train_by_model={**exp.train_by_model, name: {**exp.train_by_model.get(name, {}), **train}},
                   model_settings={**exp.model_settings, name: {**exp.model_settings.get(name, {}), **model}})


def _check_value(exp: Experiment, name: str, dim: Dimension, value: Any, at: str) -> None:
    train, model = _overrides({dim.name: value}, (dim,))
    try:
        _trial_plan(_with_values(exp, name, train, model), name, next(iter(_targets(exp))))
    except XmfastError as e:
        raise XmfastError(f"{at} = {value!r}: {str(e).split(': ', 1)[-1]}") from None


def _targets(exp: Experiment) -> list[str]:
    if exp.targets != "all":
        return list(exp.targets)
    return sorted(exp.data.find(exp.prepare.get("category")))


def _entry(exp: Experiment, name: str) -> str:
    """The entry of `models` whose setting a study tunes: the first naming `name`."""
    return next(m for m in exp.models if m.removesuffix("++") == name)


def _trial_plan(exp: Experiment, name: str, target: str) -> tuple[Plan, Stage]:
    """The plan of `name`'s entry on `target` with the first seed, and its training stage (the
    one a trial trains in a directory of its own; ACMR's: its pre-training)."""
    sub = replace(exp, targets=(target,), models=(_entry(exp, name),), seeds=exp.seeds[:1])
    p = plan(sub)
    return p, next(s for s in p.stages if s.kind == "train" and s.model == name)


def study_name(model: str, target: str) -> str:
    return f"{model}@{target}"


def tune_dir(exp: Experiment) -> Path:
    return exp.out / "tune"


@dataclass
class TrialEvent:
    """A finished trial, for progress output: its study, number, state, value and settings."""

    study: str
    number: int
    state: str
    value: float | None
    params: dict[str, Any]


class _Reporter:
    """A TrainObserver that reports each epoch's validation metric to the trial and prunes it."""

    def __init__(self, trial: Any, monitor: str, inner: Any) -> None:
        self.trial, self.monitor, self.inner = trial, monitor, inner
        self.values: list[float] = []

    def __getattr__(self, name: str) -> Any:  # the other hooks: the caller's observer, or nothing
        return getattr(self.inner, name) if self.inner is not None else (lambda *a, **k: None)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        import optuna

        if self.inner is not None:
            self.inner.on_epoch_end(record)
        value = float(record["valid"][self.monitor])
        self.values.append(value)
        self.trial.report(value, record["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {record['epoch']}: {self.monitor} {value:.4f}")


def _storage(directory: Path) -> Any:
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{(directory / 'tune.db').resolve()}")


def _pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _lock(directory: Path) -> Any:
    """An exclusive lock on OUT/tune, held while a search runs: a second `xmfast tune` of the same
    experiment would mark this one's running trials failed."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "w")  # noqa: SIM115 - held until the search ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise XmfastError(f"{directory}: another `xmfast tune` of this experiment is running; wait for it to end") from None
    return handle


def tune(exp: Experiment, *, on_trial: Callable[[TrialEvent], None] | None = None,
         training_observer: Callable[[str, int], Any] | None = None, jobs: int = 1) -> dict[str, Any]:
    """Runs (or continues) the search of every ``[tune.MODEL]`` on every target, one trial at a
    time, and writes OUT/tune/summary.json; returns that summary. `jobs` is handed to the
    executor for the trials' prerequisites (the dataset, NMF's GMF and MLP); the trials
    themselves run one after another, as TPE proposes each from the ones finished before it."""
    try:
        import optuna
    except ImportError:
        raise XmfastError('hyper-parameter search needs Optuna: pip install "xmfast[tune]"') from None

    from xmfast import outputs
    from xmfast._io import check_output, digest_json, write_json_atomic

    spec = read_tune(exp)
    check_output(exp.out, outputs.EXPERIMENT_DIR, inputs=exp.data.inputs)
    studies = [(name, dims, target) for name, dims in spec.spaces.items() for target in _targets(exp)]
    for name, _, target in studies:  # the trials' prerequisites are the grid's own stages (ledger, cache, --jobs)
        base_plan, base = _trial_plan(exp, name, target)
        run_experiment(Plan(base_plan.experiment, [s for s in base_plan.stages if s.id != base.id]), jobs=jobs)
    directory = tune_dir(exp)
    lock = _lock(directory)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is said once, by the error it raises
    summary: dict[str, Any] = {}
    try:
        storage = _storage(directory)
        for name, dims, target in studies:
            summary[study_name(name, target)] = _search(exp, spec, name, dims, target, storage, on_trial,
                                                        training_observer, digest_json)
        write_json_atomic(directory / SUMMARY, {"format": "xmfast-tune", "studies": summary})
    finally:
        lock.close()
    return summary


def _search(exp: Experiment, spec: TuneSpec, name: str, dims: tuple[Dimension, ...], target: str, storage: Any,
            on_trial: Any, training_observer: Any, digest_json: Any) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    base_plan, base = _trial_plan(exp, name, target)
    monitor = base.settings["train_config"]["monitor"]
    select = base.settings["train_config"]["select"]
    sname = study_name(name, target)
    # what the trials' values mean: the space and everything else a trial's run is made of
    identity = digest_json({"space": [d.describe() + d.name + d.table for d in dims], "base": base.key})
    study = optuna.create_study(study_name=sname, storage=storage, direction="maximize", load_if_exists=True,
                                pruner=_pruner(spec.pruner))
    known = study.user_attrs.get("identity")
    if known is None:
        study.set_user_attr("identity", identity)
    elif known != identity:
        raise XmfastError(f"{tune_dir(exp) / 'tune.db'}: study {sname} was made with another search space or other "
                          f"settings of {name}; delete the file (or move it) to start the search again")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # left by a killed search (the lock says none runs now): failed, not counted
        study.tell(t.number, state=TrialState.FAIL)
    # seeded by the trials so far: a continued search draws new values, not the first call's again
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials))
    by_id = base_plan.by_id()
    counted = (TrialState.COMPLETE, TrialState.PRUNED)

    def objective(trial: Any) -> float:
        values = {d.name: d.suggest(trial) for d in dims}
        train, model = _overrides(values, dims)
        _, stage = _trial_plan(_with_values(exp, name, train, model), name, target)
        stage = replace(stage, path=tune_dir(exp) / target / name / f"trial-{trial.number}")
        trial.set_user_attr("run", str(stage.path))
        reporter = _Reporter(trial, monitor, training_observer(sname, trial.number) if training_observer else None)
        _execute(exp, stage, "run", {**by_id, stage.id: stage}, reporter, None, validation_only=True)
        if not get_model(name).trained:  # fitted and validated once: no epochs, nothing to prune
            return float(json.loads((stage.path / "valid.json").read_text(encoding="utf-8"))["overall"][monitor])
        if not reporter.values:
            raise XmfastError(f"{stage.path}: the trial trained no epoch")
        return max(reporter.values) if select == "best" else reporter.values[-1]

    def told(study: Any, trial: Any) -> None:
        if on_trial is not None:
            on_trial(TrialEvent(sname, trial.number, trial.state.name.lower(), trial.value, dict(trial.params)))

    done = len(study.get_trials(deepcopy=False, states=counted))
    left = None if spec.trials is None else max(0, spec.trials - done)
    if left != 0:
        study.optimize(objective, n_trials=left, timeout=spec.timeout, callbacks=[told], catch=())
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned", "fail")}
    entry: dict[str, Any] = {"model": name, "entry": _entry(exp, name), "target": target, "monitor": monitor,
                             "space": {d.name: d.describe() for d in dims},
                             "trials": {"complete": count["complete"], "pruned": count["pruned"],
                                        "failed": count["fail"]}}
    if count["complete"]:
        best = study.best_trial
        train, model = _overrides(best.params, dims)
        entry.update(best={"number": best.number, "value": best.value, "train": train, "model": model,
                           "run": best.user_attrs.get("run")})
    return entry


def read_summary(exp: Experiment) -> dict[str, Any] | None:
    """OUT/tune/summary.json's studies, or None when the experiment was never tuned."""
    path = tune_dir(exp) / SUMMARY
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["studies"])
    except (OSError, ValueError, KeyError, TypeError):
        raise XmfastError(f"{path}: damaged; run `xmfast tune` again to rewrite it") from None


def tuned_plan(exp: Experiment) -> Plan:
    """The experiment's plan with each tuned (model, target)'s chosen values in its [train.NAME]
    and [model.NAME] tables: each target is planned on its own (its own tuned values), so the
    chosen values are in the runs' run.json and in the stage keys."""
    studies = read_summary(exp)
    if studies is None:
        raise XmfastError(f"{tune_dir(exp) / SUMMARY}: missing; run `xmfast tune {exp.path or 'EXP'}` first")
    stages: list[Stage] = []
    for target in _targets(exp):
        sub = replace(exp, targets=(target,))
        for s in studies.values():
            if s.get("target") == target and "best" in s:
                sub = _with_values(sub, s["model"], s["best"]["train"], s["best"]["model"])
        stages += plan(sub).stages
    return Plan(exp, stages)


def summary_markdown(exp: Experiment) -> str:
    """The report's tuning section: each study's ranges, trials and chosen values ("" when the
    experiment was never tuned)."""
    studies = read_summary(exp)
    if not studies:
        return ""
    monitors = "; ".join(sorted({s["monitor"] for s in studies.values()}))
    lines = ["## Tuning", "",
             f"Optuna TPE search (`xmfast tune`) on validation {monitors} only; the grid uses the chosen values "
             "with `xmfast run --use-tuned`.", "",
             "| model | target | searched | trials (complete / pruned / failed) | chosen | validation |",
             "|---|---|---|---|---|---|"]
    for s in studies.values():
        t = s["trials"]
        best = s.get("best")
        chosen = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in {**best["train"], **best["model"]}.items()) if best else "none"
        ranges = ", ".join(f"{k} {v}" for k, v in s["space"].items())
        value = f"{best['value']:.4f}" if best else ""
        lines.append(f"| {s['entry']} | {s['target']} | {ranges} | {t['complete']} / {t['pruned']} / {t['failed']} "
                     f"| {chosen} | {value} |")
    return "\n".join(lines) + "\n"


__all__ = ["Dimension", "TrialEvent", "TuneSpec", "read_summary", "read_tune", "summary_markdown", "tune",
           "tuned_plan"]
