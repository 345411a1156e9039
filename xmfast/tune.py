"""Hyper-parameter search for an experiment's models (``xmfast tune EXP``), with Optuna.

The experiment file's ``[tune]`` table sets the budget and one sub-table per model its search
space; every key is a setting of the model (a field of its configuration, ``[model.NAME]``) or of
its training (a TrainConfig field, ``[train.NAME]``)::

    [tune]
    trials = 8              # budget per (model, target): trials that completed or were pruned
    timeout = "30m"         # and/or wall-clock budget per (model, target) and call: 90s, 30m, 2h
    pruner = "median"       # median, halving (successive halving) or none
    startup_trials = 2      # median: trials finished before any is pruned
    warmup_epochs = 0       # median: epochs a trial runs before it can be pruned
    seed = 1                # of the TPE sampler (default: the experiment's first seed)
    [tune.gmf]
    lr = {low = 1e-4, high = 1e-2, log = true}   # a range: integers if both ends are, else floats
    embedding_dim = [8, 16, 32]                  # a list: categorical

Optuna because its TPE sampler, pruners and SQLite storage are what a search needs and are
well kept; a home-made search would re-implement all three. A trial is one training stage of the
grid (the first seed, the first source setting of the model's entry: ``[tune."ease++"]`` tunes the
pooled entry on its own, into ``[model."ease++"]``), planned by
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
does not count toward the budget. Before its trials each study trains the default
configuration (the experiment's own settings) once, the same way, for the value the search is
measured against. ``OUT/tune/summary.json`` holds each study's ranges, trial counts, chosen
values and the default's value; ``xmfast run EXP --use-tuned`` trains the grid with the chosen
values (:func:`tuned_plan`), or with the default settings where the default beat every trial,
and a report of the experiment's output lists them (:func:`summary_markdown`).

Trials run one at a time, or N at once (``--jobs N``: worker processes; ``--executor dask``:
Dask tasks), every worker running :func:`_trials` on the shared study, Optuna's pattern for a
parallel search. A parallel search is not bit-identical to a serial one: TPE proposes each trial
from the trials finished when it starts (running ones count as bad, the constant liar), so the
values drawn depend on which trials end first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from xmfast.cluster import connect
from xmfast.errors import XmfastError
from xmfast.experiment import Experiment, Plan, Stage, _execute, plan, run_experiment, tuned_entry
from xmfast.models import get_model
from xmfast.tune_summary import (
    SUMMARY,
    chosen_text,
    default_won,
    edge_note,
    read_summary,
    summary_markdown,
    uses_default,
)

_TUNE_KEYS = {"trials", "timeout", "pruner", "seed", "startup_trials", "warmup_epochs"}
_PRUNERS = ("median", "halving", "none")


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

    def edge(self, value: Any) -> str | None:
        """"largest" or "smallest" when `value` sits at an end of a numeric range (within 5% of its
        width, on the log scale for a log range) or is the end of a numeric list: a choice at the
        edge says the range may be too narrow, which the chosen value alone does not show. A
        linear range's low end at 0 is the setting's own bound (shrinkage, dropout): not an edge."""
        if self.choices:
            numbers = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if len(numbers) < 2 or len(numbers) != len(self.choices) or isinstance(value, bool):
                return None
            return "largest" if value == max(numbers) else "smallest" if value == min(numbers) else None
        import math

        low, high, v = float(self.low), float(self.high), float(value)  # type: ignore[arg-type]
        if self.log:
            low, high, v = math.log(low), math.log(high), math.log(v)
        where = (v - low) / (high - low)
        return "largest" if where >= 0.95 else "smallest" if where <= 0.05 and (self.log or low != 0) else None

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
    # The median pruner's patience: few finished trials make a noisy median, and an epoch-1 value
    # favours fast learners (a high lr), so a budget of 20 or more may want both raised; the
    # defaults prune early enough for an 8-trial budget to save time.
    startup_trials: int = 2
    warmup_epochs: int = 0


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
    patience = {}
    for key in ("startup_trials", "warmup_epochs"):
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise XmfastError(f"{where} {key} = {value!r}: expected a whole number of at least 0")
        if pruner != "median":
            raise XmfastError(f"{where} {key}: only the median pruner reads it (pruner = {pruner!r})")
        patience[key] = value
    seed = raw.get("seed", (exp.whole or exp).seeds[0])
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise XmfastError(f"{where} seed = {seed!r}: expected a whole number of at least 0")
    if not tables:
        whole = [k for k, v in (exp.whole.tune if exp.whole else {}).items() if isinstance(v, dict)]
        if whole:  # a part (--models) that no table of the file searches
            raise XmfastError(f"{where}: no [tune.MODEL] table searches {', '.join(exp.models)} (the file's tables: "
                              f"{', '.join(whole)}; [tune.NAME] searches the first entry naming NAME, "
                              "[tune.\"NAME++\"] the pooled one)")
        raise XmfastError(f"{where}: no search space; add a table [tune.MODEL] (e.g. [tune.gmf] lr = "
                          "{low = 1e-4, high = 1e-2, log = true})")
    train_fields = {f.name for f in fields(TrainConfig)} - {"seed", "sources", "device", "recipe", "eval_batch"}
    spaces: dict[str, tuple[Dimension, ...]] = {}
    for name, table in tables.items():
        if tuned_entry(exp.models, name) is None:
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
    return TuneSpec(spaces, trials, timeout, pruner, seed, **patience)


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
    """The entry of `models` whose setting a study tunes (read_tune checked there is one)."""
    entry = tuned_entry(exp.models, name)
    assert entry is not None, name
    return entry


def _trial_plan(exp: Experiment, name: str, target: str) -> tuple[Plan, Stage]:
    """The plan of `name`'s entry on `target` with the first seed, and its training stage (the
    one a trial trains in a directory of its own; ACMR's: its pre-training)."""
    sub = replace(exp, targets=(target,), models=(_entry(exp, name),), seeds=(exp.whole or exp).seeds[:1])
    p = plan(sub)
    model = get_model(name).name
    return p, next(s for s in p.stages if s.kind == "train" and s.model == model
                   and (bool(s.sources) or not name.endswith("++")))


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


class _Stopped(Exception):
    """A trial stopped because its search was stopped (Ctrl-C of the client of a Dask search)."""


class _Reporter:
    """A TrainObserver that reports each epoch's validation metric to the trial and prunes it
    (`trial` None: the default configuration's run, only recorded); `stopped` is asked after each
    epoch whether the search was stopped meanwhile."""

    def __init__(self, trial: Any, monitor: str, inner: Any, stopped: Callable[[], bool] | None = None) -> None:
        self.trial, self.monitor, self.inner, self.stopped = trial, monitor, inner, stopped
        self.values: list[float] = []

    def __getattr__(self, name: str) -> Any:  # the other hooks: the caller's observer, or nothing
        return getattr(self.inner, name) if self.inner is not None else (lambda *a, **k: None)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        import optuna

        if self.inner is not None:
            self.inner.on_epoch_end(record)
        value = float(record["valid"][self.monitor])
        self.values.append(value)
        if self.stopped is not None and self.stopped():
            raise _Stopped(f"epoch {record['epoch']}: the search was stopped")
        if self.trial is None:
            return
        self.trial.report(value, record["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {record['epoch']}: {self.monitor} {value:.4f}")


def _storage(directory: Path) -> Any:
    """The studies' SQLite file. SQLite rather than Optuna's JournalStorage: one file that a
    continued search reopens, and few writers (one per trial running, a write per epoch) that
    SQLite's lock serialises; the busy timeout makes a writer wait for it instead of failing
    with "database is locked" when several trials report at once."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{(directory / 'tune.db').resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def _pruner(spec: TuneSpec) -> Any:
    import optuna

    if spec.pruner == "median":
        # steps are epochs from 1; Optuna prunes from step n_warmup_steps on, so after `warmup_epochs` whole epochs
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs + 1)
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _lock(directory: Path) -> Any:
    """An exclusive lock on OUT/tune, held while a search runs: a second `xmfast tune` of the same
    experiment would mark this one's running trials failed. Local trial workers inherit it, so a
    killed search's workers hold it until they have stopped."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "w")  # noqa: SIM115 - held until the search ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise XmfastError(f"{directory}: another `xmfast tune` of this experiment is running; wait for it to end") from None
    return handle


@dataclass(frozen=True)
class _Task:
    """What a trial worker needs, in any process: the study of (`name`, `target`), the wall-clock
    `deadline` after which no trial starts, `jobs` workers in all, and the name of the Dask
    Event that stops them (None: stopped by Ctrl-C)."""

    exp: Experiment
    spec: TuneSpec
    name: str
    dims: tuple[Dimension, ...]
    target: str
    deadline: float | None
    jobs: int = 1
    stop: str | None = None


def _trials(task: _Task, worker: int = 0, *, threads: int | None = None,
            on_trial: Callable[[Any], None] | None = None, training_observer: Any = None) -> None:
    """A trial worker: asks the study for trials and trains them until the budget is spent (trials
    completed, pruned or running, counted across every worker) or the deadline has passed. One
    function for the search in one process, in `--jobs` worker processes and in Dask tasks.
    Asking happens under a file lock beside the study, so N workers never start more trials than
    the budget (Optuna's MaxTrialsCallback counts only after a trial ends: up to N-1 more)."""
    import fcntl
    import time

    import optuna
    from optuna.trial import TrialState

    exp, name, target, dims = task.exp, task.name, task.target, task.dims
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    directory = tune_dir(exp)
    sname = study_name(name, target)
    study = optuna.load_study(study_name=sname, storage=_storage(directory), pruner=_pruner(task.spec))
    # seeded by the trials so far (a continued search draws new values, not the first call's again)
    # and by the worker (two workers starting together do not draw the same values); with several
    # workers the constant liar counts running trials as bad, so TPE spreads them apart
    study.sampler = optuna.samplers.TPESampler(seed=task.spec.seed + len(study.trials) + 7919 * worker,
                                               constant_liar=task.jobs > 1)
    stopped = None
    if task.stop is not None:
        from distributed import Event

        stopped = Event(task.stop).is_set
    base_plan, base = _trial_plan(exp, name, target)
    by_id = base_plan.by_id()
    monitor = base.settings["train_config"]["monitor"]
    select = base.settings["train_config"]["select"]
    taken = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)

    def objective(trial: Any) -> float:
        values = {d.name: d.suggest(trial) for d in dims}
        train, model = _overrides(values, dims)
        _, stage = _trial_plan(_with_values(exp, name, train, model), name, target)
        stage = replace(stage, path=tune_dir(exp) / target / name / f"trial-{trial.number}")
        trial.set_user_attr("run", str(stage.path))
        observer = training_observer(sname, trial.number) if training_observer else None
        return _validate(exp, stage, by_id, _Reporter(trial, monitor, observer, stopped), select)

    with open(directory / ".ask", "w") as ask_lock:
        while True:
            fcntl.flock(ask_lock, fcntl.LOCK_EX)
            try:
                spent = task.spec.trials is not None and len(study.get_trials(deepcopy=False, states=taken)) >= task.spec.trials
                if spent or (task.deadline is not None and time.time() >= task.deadline) or (stopped and stopped()):
                    return
                trial = study.ask()
            finally:
                fcntl.flock(ask_lock, fcntl.LOCK_UN)
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                frozen = study.tell(trial, state=TrialState.PRUNED)
            except BaseException:  # Ctrl-C, a kill of the search, a crash: failed, not counted
                study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                frozen = study.tell(trial, value)
            if on_trial is not None:
                on_trial(frozen)


def _validate(exp: Experiment, stage: Stage, by_id: dict[str, Stage], reporter: _Reporter, select: str) -> float:
    """Trains `stage` with validation only; the value its run would select (best or last epoch).
    A model without training is fitted and validated once: its validation value, never pruned."""
    _execute(exp, stage, "run", {**by_id, stage.id: stage}, reporter, None, validation_only=True)
    if not get_model(stage.model).trained:
        return float(json.loads((stage.path / "valid.json").read_text(encoding="utf-8"))["overall"][reporter.monitor])
    if not reporter.values:
        raise XmfastError(f"{stage.path}: the run trained no epoch")
    return max(reporter.values) if select == "best" else reporter.values[-1]


_TRIALS_CODE = ("import json, os, sys; sys.path[:] = json.loads(os.environ['XMFAST_WORKER_PATH']); "
                "from xmfast.tune import _trials_main; _trials_main()")


def _trials_main() -> None:
    """A local trial worker process (`xmfast tune --jobs N`): reads (task, worker) pickled on stdin,
    runs :func:`_trials`, and writes its outcome pickled on stdout (anything else printed there
    goes to stderr)."""
    import os
    import pickle
    import signal
    import sys
    import traceback

    from xmfast import core
    from xmfast.experiment import exit_with_parent

    signal.signal(signal.SIGINT, signal.default_int_handler)  # how the parent stops it
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    exit_with_parent()
    try:
        task, worker = pickle.load(sys.stdin.buffer)
        _trials(task, worker, threads=int(os.environ["XMFAST_WORKER_THREADS"]))
        outcome: tuple[str, ...] = ("ok",)
    except KeyboardInterrupt:
        outcome = ("interrupted",)
    except (XmfastError, core.DataFormatError) as e:
        outcome = ("error", str(e))
    except Exception:
        outcome = ("crash", traceback.format_exc())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pickle.dump(outcome, out)
    out.close()


def _local_workers(task: _Task, lock: Any, poll: Callable[[], None]) -> None:
    """`task.jobs` worker processes (:func:`_trials_main`), each in a session of its own with its
    share of the threads and a GPU in turn, as `xmfast run --jobs` divides them; `poll` reports
    trials as they end. Ctrl-C stops every worker (its running trial failed, not counted); one
    worker's error stops the others and is raised."""
    import pickle
    import signal
    import subprocess
    import sys
    import time

    from xmfast.experiment import _gpus, threads_per_job, worker_env

    threads = threads_per_job(task.jobs)
    gpus = _gpus(task.exp.device)
    procs = []
    for k in range(task.jobs):
        env = worker_env(threads, gpus[k % len(gpus)] if gpus else None)
        proc = subprocess.Popen([sys.executable, "-c", _TRIALS_CODE], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True, pass_fds=[lock.fileno()])
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps((task, k)))
        proc.stdin.close()
        procs.append(proc)
    outcomes: dict[int, tuple[str, ...]] = {}
    failure: BaseException | None = None

    def stop() -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    try:
        try:
            while len(outcomes) < len(procs):
                time.sleep(0.2)
                poll()
                for k, p in enumerate(procs):
                    if k in outcomes or p.poll() is None:
                        continue
                    assert p.stdout is not None
                    data = p.stdout.read()
                    outcomes[k] = pickle.loads(data) if data else ("died", str(p.returncode))
                    if outcomes[k][0] != "ok" and failure is None:
                        failure = _raised(outcomes[k])
                        stop()
        except KeyboardInterrupt:
            failure = failure or KeyboardInterrupt()
            stop()
            for p in procs:
                try:
                    p.wait()
                except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                    for q in procs:
                        q.kill()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    poll()
    if failure is not None:
        raise failure


def _raised(outcome: tuple[str, ...]) -> BaseException:
    """What a local trial worker's outcome other than "ok" raises in the parent."""
    kind, *detail = outcome
    if kind == "error":
        return XmfastError(detail[0])
    if kind == "interrupted":
        return KeyboardInterrupt()
    if kind == "crash":
        return RuntimeError(f"a trial worker failed:\n{detail[0]}")
    return XmfastError(f"a trial worker process ended unexpectedly (exit status {detail[0]}); run `xmfast tune` "
                       "again to continue")


def _dask_workers(task: _Task, client: Any, poll: Callable[[], None]) -> None:
    """`task.jobs` Dask tasks running :func:`_trials` (threads as the cluster's workers have
    them). Ctrl-C sets the search's Dask Event: each task fails its running trial after the
    epoch it is in and ends."""
    import time
    import uuid

    from distributed import Event, wait

    stop = Event(f"xmfast-tune-{uuid.uuid4().hex}", client=client)
    task = replace(task, stop=stop.name)
    futures = [client.submit(_trials, task, k, pure=False) for k in range(task.jobs)]
    try:
        while not all(f.done() for f in futures):
            time.sleep(0.2)
            poll()
            if any(f.status == "error" for f in futures):
                break
        for f in futures:
            f.result()  # the first task's error, as it was raised
    except BaseException:
        stop.set()
        wait(futures)
        raise
    finally:
        poll()


def tune(exp: Experiment, *, on_trial: Callable[[TrialEvent], None] | None = None,
         training_observer: Callable[[str, int], Any] | None = None, jobs: int | None = None,
         address: str | None = None) -> dict[str, Any]:
    """Runs (or continues) the search of every ``[tune.MODEL]`` on every target and writes
    OUT/tune/summary.json (after each study, beside the studies earlier calls wrote); returns
    this call's studies. Each study first trains the default
    configuration once (the experiment's own settings, validation only), then its trials:
    `jobs` at once, in worker processes sharing the study (Optuna's pattern for a parallel
    search), or, with `address` (a Dask scheduler's HOST:PORT), as that many Dask tasks (default:
    one per worker of the cluster). Parallel TPE is not serial TPE: each trial is proposed from the
    trials finished when it starts, so the values drawn differ from a serial search's with the
    same seed. `jobs` is also handed to the executor for the trials' prerequisites (the dataset,
    NMF's GMF and MLP)."""
    try:
        import optuna
    except ImportError:
        raise XmfastError('hyper-parameter search needs Optuna: pip install "xmfast[tune]"') from None

    from xmfast import outputs
    from xmfast._io import check_output, digest_json, write_json_atomic
    from xmfast.experiment import check_jobs

    if jobs is not None:
        check_jobs(jobs)
    spec = read_tune(exp)
    check_output(exp.out, outputs.EXPERIMENT_DIR, inputs=exp.data.inputs)
    client = connect(address) if address is not None else None
    try:
        if jobs is None:
            jobs = max(1, len(client.scheduler_info().get("workers", {}))) if client is not None else 1
        studies = [(name, dims, target) for name, dims in spec.spaces.items() for target in _targets(exp)]
        for name, _, target in studies:  # the trials' prerequisites are the grid's own stages (ledger, cache, --jobs)
            base_plan, base = _trial_plan(exp, name, target)
            run_experiment(Plan(base_plan.experiment, [s for s in base_plan.stages if s.id != base.id]),
                           jobs=1 if client is not None else jobs)
        directory = tune_dir(exp)
        lock = _lock(directory)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is said once, by the error it raises
        summary: dict[str, Any] = {}
        try:  # the studies earlier calls summarised (a part of the grid each) that the file still has
            earlier = _current(exp, read_summary(exp.out) or {})
        except XmfastError:  # damaged: rewritten from this call's studies
            earlier = {}
        try:
            storage = _storage(directory)
            for name, dims, target in studies:
                summary[study_name(name, target)] = _search(exp, spec, name, dims, target, storage, on_trial,
                                                            training_observer, digest_json, jobs, client, lock)
                # after every study: a search stopped later keeps what it finished
                write_json_atomic(directory / SUMMARY, {"format": "xmfast-tune", "experiment": exp.name,
                                                            "protocol": exp.protocol, "studies": {**earlier, **summary}})
        finally:
            lock.close()
    finally:
        if client is not None:
            client.close()
    return summary


def _search(exp: Experiment, spec: TuneSpec, name: str, dims: tuple[Dimension, ...], target: str, storage: Any,
            on_trial: Any, training_observer: Any, digest_json: Any, jobs: int, client: Any, lock: Any) -> dict[str, Any]:
    import time

    import optuna
    from optuna.trial import TrialState

    base_plan, base = _trial_plan(exp, name, target)
    monitor = base.settings["train_config"]["monitor"]
    select = base.settings["train_config"]["select"]
    sname = study_name(name, target)
    # what the trials' values mean: the space and everything else a trial's run is made of; a
    # model without training keys no [train] setting (see experiment._keyed), so the metric a
    # study maximises and the checkpoint it reads are named here
    measured = {} if get_model(base.settings["model"]).trained else {"monitor": monitor, "select": select}
    identity = digest_json({"space": [d.describe() + d.name + d.table for d in dims], "base": base.key, **measured})
    study = optuna.create_study(study_name=sname, storage=storage, direction="maximize", load_if_exists=True,
                                pruner=_pruner(spec))
    known = study.user_attrs.get("identity")
    if known is None:
        study.set_user_attr("identity", identity)
    elif known != identity:
        raise XmfastError(f"{tune_dir(exp) / 'tune.db'}: study {sname} was made with another search space or other "
                          f"settings of {name}; delete the file (or move it) to start the search again")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # left by a killed search (the lock says none runs now): failed, not counted
        study.tell(t.number, state=TrialState.FAIL)
    default = study.user_attrs.get("default")
    if default is None:  # the experiment's own settings, trained once as a trial is (validation only)
        path = tune_dir(exp) / target / name / "default"
        value = _validate(exp, replace(base, path=path), base_plan.by_id(), _Reporter(None, monitor, None), select)
        default = {"value": value, "run": str(path)}
        study.set_user_attr("default", default)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    seen = {t.number for t in study.get_trials(deepcopy=False, states=finished)}

    def told(trial: Any) -> None:
        seen.add(trial.number)
        if on_trial is not None:
            on_trial(TrialEvent(sname, trial.number, trial.state.name.lower(), trial.value, dict(trial.params)))

    def poll() -> None:  # trials other processes finished, in order
        for t in study.get_trials(deepcopy=False, states=finished):
            if t.number not in seen:
                told(t)

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    if spec.trials is None or done < spec.trials:
        task = _Task(exp, spec, name, dims, target, None if spec.timeout is None else time.time() + spec.timeout, jobs)
        if client is not None:
            _dask_workers(task, client, poll)
        elif jobs > 1:
            _local_workers(task, lock, poll)
        else:
            _trials(task, on_trial=told, training_observer=training_observer)
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned", "fail")}
    entry: dict[str, Any] = {"model": name, "entry": _entry(exp, name), "target": target, "monitor": monitor,
                             "space": {d.name: d.describe() for d in dims},
                             "trials": {"complete": count["complete"], "pruned": count["pruned"],
                                        "failed": count["fail"]},
                             "default": default, "chosen": "default"}
    if count["complete"]:
        best = study.best_trial
        train, model = _overrides(best.params, dims)
        entry.update(best={"number": best.number, "value": best.value, "train": train, "model": model,
                           "run": best.user_attrs.get("run")},
                     chosen="default" if default["value"] > best.value else "tuned",
                     edges={d.name: e for d in dims if (e := d.edge(best.params[d.name])) is not None})
    return entry


def _current(exp: Experiment, studies: dict[str, Any]) -> dict[str, Any]:
    """The studies of a summary that the experiment file still searches ([tune.NAME] × targets of
    its whole grid): a table or target removed since is not applied, nor reported."""
    whole = exp.whole or exp
    tables = {k for k, v in whole.tune.items() if isinstance(v, dict)}  # read_tune checked them already
    targets = set(_targets(whole))
    return {k: v for k, v in studies.items() if v.get("model") in tables and v.get("target") in targets}


def tuned_plan(exp: Experiment) -> Plan:
    """The experiment's plan with each tuned (model, target)'s chosen values in its [train.NAME]
    and [model.NAME] tables: each target is planned on its own (its own tuned values), so the
    chosen values are in the runs' run.json and in the stage keys. A study whose default
    configuration beat every trial keeps the experiment's own settings."""
    studies = read_summary(exp.out)
    if studies is None:
        raise XmfastError(f"{tune_dir(exp) / SUMMARY}: missing; run `xmfast tune {exp.path or 'EXP'}` first")
    studies = _current(exp, studies)
    stages: list[Stage] = []
    for target in _targets(exp):
        sub = replace(exp, targets=(target,))
        for s in studies.values():
            if s.get("target") == target and not uses_default(s):
                sub = _with_values(sub, s["model"], s["best"]["train"], s["best"]["model"])
        stages += plan(sub).stages
    return Plan(exp, stages)


__all__ = ["Dimension", "TrialEvent", "TuneSpec", "chosen_text", "default_won", "edge_note", "read_summary",
           "read_tune", "summary_markdown", "tune", "tuned_plan", "uses_default"]
