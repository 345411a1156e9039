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
    candidates = {valid = "valid.tsv", test = "test.tsv"}   # published candidates (one target only),
    qrels = {valid = "valid_qrel.tsv", test = "test_qrel.tsv"}  # beside this file; see xmfast.candidates
    [train]                         # TrainConfig settings for every model; a sub-table per model:
    [train.acmr]                    #   epochs = 10
    [finetune.forec]                # settings of a fine-tuning stage (forec, acmr)
    [model.nmf]                     # hyper-parameters (the model's configuration dataclass)
    [model."nmf++"]                 # over [model.nmf] for runs trained with the sources (also [train."nmf++"])
    [tune]                          # a hyper-parameter search (xmfast.tune): budget, [tune.MODEL] ranges

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

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from xmfast._io import digest_json, write_json_atomic
from xmfast.errors import SettingError, XmfastError
from xmfast.markets import DataSource, check_market_name, parse_columns
from xmfast.models import Model, get_model, model_names

StageKind = Literal["prepare", "train", "finetune"]
Action = Literal["cached", "resume", "run"]

_TOP_KEYS = {"name", "data", "out", "protocol", "targets", "sources", "models", "seeds", "device", "description",
             "prepare", "train", "finetune", "model", "tune"}


@dataclass(frozen=True)
class Experiment:
    """An experiment file, checked (see the module docstring)."""

    name: str
    data: DataSource
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
    tune: dict[str, Any] = field(default_factory=dict)  # the [tune] table (read by xmfast.tune)
    path: Path | None = None
    # the file's whole grid, when this is a part of it (restrict): what a search's study, its
    # seed and the report's preface are measured against
    whole: Experiment | None = field(default=None, compare=False, repr=False)

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
                base = name.removesuffix("++")
                if table != "finetune" and name != base and base in model_names():
                    if not has_pooled_variant(get_model(base)):
                        raise XmfastError(f"{where}{table_name(table, name)}: {base} has no pooled variant; its runs "
                                          f"trained with the sources read {table_name(table, base)}")
                elif name not in model_names():
                    raise XmfastError(f"{where}{table_name(table, name)}: unknown model {name!r} (known: "
                                      f"{', '.join(model_names())}"
                                      f"{'' if table == 'finetune' else ', or NAME++ for a pooled variant'})")
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
    if pooled and not has_pooled_variant(model):
        raise XmfastError(f"{where}models: {entry!r}: {model.name} has no pooled variant (it "
                          f"{'uses the sources by design' if model.cross_market else 'is not trained on pooled markets'}); "
                          f"list {model.name!r}")
    return model, pooled


def _expect(value: Any, kind: type | tuple[type, ...], what: str, where: Path) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise XmfastError(f"{where}: {what} has the wrong type ({value!r})")
    return value


def _markets_or(value: Any, words: tuple[str, ...], what: str, where: Path) -> Any:
    """One of `words`, or market names (a list, or one name as a string) as a tuple."""
    if isinstance(value, str):
        return value if value in words else (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(value))
    raise XmfastError(f"{where}: {what} must be {' or '.join(repr(w) for w in words)} or a list of market names")


def _beside(file: Path, value: str) -> Path:
    """A path the experiment `file` gives: a relative one is relative to the file's directory, so
    the file runs the same from any directory. It is shown relative to the current directory
    when it lies below it (`runs/quickstart` from the repository root), else in full."""
    where = (file.parent / value).resolve()
    try:
        return where.relative_to(Path.cwd().resolve())
    except ValueError:
        return where


def _data_source(value: Any, path: Path) -> DataSource:
    """`data = "DIR"`, or a `[data]` table: `dir`, `files = {MARKET = "PATH", ...}` (a key `"*"`
    lists a file whose market column names each row's market) and `columns = {user = "...", ...}`
    (see xmfast.markets); paths relative to the experiment file's directory."""
    if isinstance(value, str):
        return DataSource(_beside(path, value))
    table = dict(_expect(value, dict, "data", path))
    unknown = sorted(set(table) - {"dir", "files", "columns"})
    if unknown:
        raise XmfastError(f"{path}: [data]: unknown key {unknown[0]!r} (expected dir, files, columns)")
    files = []
    for market, file in dict(_expect(table.get("files", {}), dict, "[data.files]", path)).items():
        files.append((None if market == "*" else check_market_name(market, f"{path}: [data.files]: market"),
                      _beside(path, _expect(file, str, f"[data.files] {market}", path))))
    try:
        columns = parse_columns(_expect(table.get("columns", {}), dict, "[data.columns]", path))
        return DataSource(_beside(path, _expect(table["dir"], str, "[data] dir", path)) if "dir" in table else None,
                          tuple(files), tuple(columns.items()))
    except XmfastError as e:
        raise XmfastError(f"{path}: [data]: {e}") from None


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
        data=_data_source(raw["data"], path),
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
        tune=dict(_expect(raw.get("tune", {}), dict, "[tune]", path)),
        path=path,
    )


def has_pooled_variant(model: Model) -> bool:
    """Whether `model` has a ``NAME++`` entry: a single-market model trained on pooled markets."""
    return model.label(sources=True, fine_tuned=False) == model.name + "++"


def table_name(kind: str, name: str) -> str:
    """A settings table's header as the file spells it: ``[model.gmf]``, ``[model."gmf++"]``."""
    return f'[{kind}."{name}"]' if name.endswith("++") else f"[{kind}.{name}]"


def tuned_entry(models: Sequence[str], name: str) -> str | None:
    """The entry of `models` a ``[tune.NAME]`` table searches: a pooled variant's own
    (``[tune."ease++"]``), else the first entry naming the model; None for neither."""
    if name.endswith("++"):
        return name if name in models else None
    return next((m for m in models if m.removesuffix("++") == name), None)


def restrict(exp: Experiment, *, models: Sequence[str] | None = None, targets: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None) -> Experiment:
    """`exp` with only some of its models, targets or seeds (``xmfast run/tune --models ...``):
    the same output directory and the same stage keys, so a grid can be run a part at a time
    (the baselines of every market first, a slow model later) and the file run whole reuses
    every part. Each value must be one of the file's own: a typo is refused, not an empty grid."""
    where = f"{exp.path or exp.name}: "
    changes: dict[str, Any] = {}
    for option, given, listed in (("--models", models, exp.models), ("--targets", targets, exp.targets),
                                  ("--seeds", seeds, exp.seeds)):
        if given is None:
            continue
        # targets = "all": any market is the file's (plan checks each against the data)
        missing = [] if listed == "all" else [v for v in given if v not in listed]
        if missing or not given:
            raise XmfastError(f"{where}{option} {','.join(map(str, given))}: "
                              f"{f'{missing[0]!r} is not among' if missing else 'name at least one of'} the file's "
                              f"{option[2:]} ({'all' if listed == 'all' else ', '.join(map(str, listed))})")
        changes[option[2:]] = tuple(dict.fromkeys(given))
    if models is not None:  # a [tune.NAME] table goes with the entry it tunes
        changes["tune"] = {k: v for k, v in exp.tune.items() if not isinstance(v, dict)
                           or tuned_entry(exp.models, k) in (None, *changes["models"])}
    return replace(exp, **changes, whole=exp.whole or exp)


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


def _data_signature(data: DataSource, category: str | None) -> list[list[Any]]:
    """What the rating files are: names, sizes and the blake3 of their bytes (the digest each
    prepared dataset's manifest records). Content, not modification times: a fresh copy of the
    same files (a new clone, a restored backup, a re-mounted share) must not re-run hours of
    finished stages. Hashing streams at disk speed (the 7 XMarket 5-core files: milliseconds)."""
    from xmfast import core

    out = []
    for market, f in sorted(data.find(category).items()):
        try:
            digest = core.file_digest(f.path)
        except (OSError, ValueError) as e:
            raise XmfastError(f"{f.path}: cannot be read ({e})") from None
        out.append([market, f.path.name, f.path.stat().st_size, digest])
    return out


def _published_paths(exp: Experiment) -> dict[str, dict[str, str]]:
    """[prepare]'s candidates and qrels tables with their files beside the experiment file. The
    paths are not part of the dataset's key (their contents are: see :func:`plan`), so moving
    the experiment with its files keeps what was made."""
    out = {}
    for key in ("candidates", "qrels"):
        table = exp.prepare.get(key)
        if table is None:
            continue
        if not isinstance(table, dict) or sorted(table) != ["test", "valid"] or \
                not all(isinstance(v, str) and v for v in table.values()):
            raise XmfastError(f"{exp.path or exp.name}: [prepare] {key} = {table!r}: expected a table of both "
                              '{valid = "FILE", test = "FILE"}')
        out[key] = {split: str(_beside(exp.path, v) if exp.path else Path(v)) for split, v in table.items()}
    if "qrels" in out and "candidates" not in out:
        raise XmfastError(f"{exp.path or exp.name}: [prepare] qrels name the positives of published candidates: "
                          'give the run files too (candidates = {valid = "FILE", test = "FILE"})')
    return out


def _setting_of(sources: tuple[str, ...] | str) -> str:
    if sources == () or sources == "":
        return "single"
    if sources == ("all",):
        return "all"
    return "src-" + "+".join(sources)


def _dotted(key: str) -> tuple[str, ...]:
    """The parts of a TOML key or table header: ``model."gmf++"`` -> ("model", "gmf++")."""
    import re

    return tuple(a or b or c for a, b, c in re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s"\']+)', key))


def setting_line(file: Path | None, table: tuple[str, ...], path: tuple[str, ...]) -> int | None:
    """The number of the line of `file` that sets the key `path` of `table` (or the inline table
    holding it), for an error message; None where it cannot be told (no file, another layout).
    tomllib keeps no positions, so this reads the lines: table headers and ``key =`` lines."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines() if file is not None else []
    except (OSError, UnicodeDecodeError):
        return None
    header: tuple[str, ...] = ()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("["):
            header = _dotted(text.strip("[]").split("]")[0])
            continue
        key, equals, _ = text.partition("=")
        if not equals or text.startswith("#"):
            continue
        full = header + _dotted(key)
        inner = full[len(table):]
        if full[: len(table)] == table and 0 < len(inner) <= len(path) and inner == path[: len(inner)]:
            return number
    return None


def _at(exp: Experiment, tables: Sequence[tuple[str, ...]], path: tuple[str, ...]) -> str:
    """The experiment file with the line that sets `path` in the first of `tables` that sets it."""
    where = str(exp.path or exp.name)
    line = next((n for t in tables if (n := setting_line(exp.path, t, path)) is not None), None)
    return f"{where}:{line}" if line is not None else where


def _check_settings(config_type: type, values: dict[str, Any], exp: Experiment, label: str,
                    tables: Sequence[tuple[str, ...]]) -> None:
    """`values` as `config_type`'s settings, or one error naming the file, the line of the bad
    setting (in the first of `tables` that sets it), the table as written (`label`) and what is wrong."""
    from xmfast.models import config_from_dict

    try:
        config_from_dict(config_type, values)
    except SettingError as e:
        raise XmfastError(f"{_at(exp, tables, e.path)}: {label}: {e.detail}") from None
    except XmfastError as e:
        raise XmfastError(f"{exp.path or exp.name}: {label}: {str(e).removeprefix(config_type.__name__ + ': ')}") from None


def plan(experiment: Experiment) -> Plan:
    """The stages of `experiment` in dependency order, each with its key."""
    from xmfast.models.schedule import TrainConfig
    from xmfast.prepare import KCore, PrepareConfig, data_settings
    from xmfast.runs import key_plain

    exp = experiment
    where = str(exp.path or exp.name)
    prep_values = dict(exp.prepare)
    published = _published_paths(exp)
    for key in published:
        del prep_values[key]
    for key in ("target", "sources", "protocol"):
        if key in prep_values:
            raise XmfastError(f"{where}: [prepare] cannot set {key!r}; it comes from the experiment's own keys")
    try:
        for key in ("kcore", "reference_kcore"):
            if key in prep_values:
                if not isinstance(prep_values[key], dict):
                    raise XmfastError(f"{key} = {prep_values[key]!r}: expected a table such as "
                                      "{min_user = 5, min_item = 5}")
                KCore(**prep_values[key])  # checked here; data_settings fills in the fields not given
        PrepareConfig(target="uk", **{k: KCore(**v) if k in ("kcore", "reference_kcore") else v
                                      for k, v in prep_values.items()})
    except (TypeError, XmfastError) as e:
        raise XmfastError(f"{where}: [prepare]: {e}") from None
    data = exp.data.ignoring(Path(f) for table in published.values() for f in table.values())
    available = sorted(data.find(prep_values.get("category")))
    prep_values = data_settings(data, prep_values)  # raw XMarket files: FOREC's preprocessing
    targets = available if exp.targets == "all" else list(exp.targets)
    for t in targets:
        check_market_name(t, f"{where}: target")
        if t not in available:
            raise XmfastError(f"{where}: target {t!r} has no rating file in {exp.data} (found {', '.join(available)})")
    if published and len(targets) != 1:
        raise XmfastError(f"{where}: [prepare] candidates are one target market's published candidates, but the "
                          f"experiment has targets {', '.join(targets)}; give targets = [\"T\"] (one experiment "
                          "per target)")
    if isinstance(exp.sources, tuple):
        for s in exp.sources:
            check_market_name(s, f"{where}: source")
            if s not in available:
                raise XmfastError(f"{where}: source {s!r} has no rating file in {exp.data}")
    # [train] alone first: a typo there is reported under its own table, not under the first
    # [train.NAME] it is merged into
    _check_settings(TrainConfig, exp.train, exp, "[train]", [("train",)])
    for name, values in exp.train_by_model.items():
        _check_settings(TrainConfig, {**exp.train, **values}, exp, table_name("train", name),
                        [("train", name), ("train",)])
    for name, values in exp.finetune_by_model.items():
        _check_settings(TrainConfig, values, exp, f"[finetune.{name}]", [("finetune", name)])

    entries = [_experiment_model(m, where) for m in exp.models]
    multi = [(m, pooled) for m, pooled in entries if _uses_sources(m, pooled)]
    single = [m for m, pooled in entries if not _uses_sources(m, pooled)]
    both = [s for s in exp.sources if s in targets] if isinstance(exp.sources, tuple) and multi else []
    if both:  # refused here, not after the dataset is prepared and the training starts
        raise XmfastError(f"{where}: {both[0]!r} is both a target and a source; a market is never its own source "
                          "(list other markets, or use sources = \"all\" or \"each\")")

    configs = _ModelConfigs(exp, where)
    for name in exp.model_settings:  # every table is checked, also one of a model not in `models`
        base = name.removesuffix("++")
        configs.train(base, name != base or _uses_sources(get_model(base), False))
    data_signature = _data_signature(data, prep_values.get("category"))
    stages: list[Stage] = []

    def add(stage: Stage, deps: Sequence[Stage] = ()) -> Stage:
        stage.deps = tuple(d.id for d in deps)
        stage.key = digest_json({"kind": stage.kind, "settings": _keyed(stage.settings), "deps": [d.key for d in deps]})
        stages.append(stage)
        return stage

    def train_config(name: str, sources: tuple[str, ...], seed: int) -> Any:
        values = {**configs.train_values(name, bool(sources)), "seed": seed, "sources": sources, "device": exp.device}
        return get_model(name).train_config(**values)

    def finetune_config(name: str, sources: tuple[str, ...], seed: int) -> Any:
        # the recipe of the experiment's training, unless [finetune.NAME] names its own
        recipe = configs.recipe(name, bool(sources))
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
        prep_settings = {"prepare": key_plain(prep), "data": data_signature}
        if published:  # read now: a malformed file is refused before any stage runs
            from xmfast.candidates import read_candidates

            files = read_candidates(published["candidates"], published.get("qrels"), prep.eval_negatives,
                                    lambda n: f"eval_negatives = {n} in [prepare]")
            prep_settings["candidates"] = {split: c.files for split, c in files.items()}
        dataset = add(Stage(id=f"{t}/dataset", kind="prepare", target=t, path=exp.out / t / "dataset",
                            label="dataset", settings=prep_settings))
        sets = (source_sets or [(m,) for m in available if m != t]) if multi else []
        for seed in exp.seeds:
            made: dict[tuple[str, str, tuple[str, ...]], Stage] = {}

            def train_stage(model: Model, sources: tuple[str, ...]) -> Stage:
                """The training of `model` on `sources`, after the runs it starts from (same sources)."""
                if ("train", model.name, sources) in made:
                    return made["train", model.name, sources]
                model_config = configs.train(model.name, bool(sources))
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
                                 settings=settings(model.name, configs.finetune(model.name, bool(sources)),
                                                   finetune_config(model.name, sources, seed), finetune=True)),
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


def _keyed(settings: dict[str, Any]) -> dict[str, Any]:
    """What of a stage's settings its key covers: all of them, but for a model without training
    only the sources and seed of its training settings, the ones its fit() reads (a changed
    [train] epochs or lr re-runs the trained models, not pop or EASE); the stage still records
    and runs with the whole configuration."""
    model = settings.get("model")
    if model is None or get_model(model).trained:
        return settings
    train = settings["train_config"]
    return {**settings, "train_config": {k: train[k] for k in ("sources", "seed")}}


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
    always fits together and each hyper-parameter is set in one place.

    A run trained with the sources (``with_sources``: a ``++`` entry, a cross-market model and
    the runs they start from) also reads ``[model.NAME++]`` over ``[model.NAME]``: EASE pooled
    over seven markets wants another regularisation than EASE on one, and each is tuned on its
    own (``[tune."ease++"]``)."""

    def __init__(self, exp: Experiment, where: str) -> None:
        self.exp, self.where = exp, where
        self._train: dict[tuple[str, bool], Any] = {}

    def train_values(self, name: str, with_sources: bool = False) -> dict[str, Any]:
        """`name`'s training settings: [train], then [train.NAME], then (with the sources)
        [train.NAME++], each over the one before."""
        pooled = self.exp.train_by_model.get(name + "++", {}) if with_sources else {}
        return {**self.exp.train, **self.exp.train_by_model.get(name, {}), **pooled}

    def recipe(self, name: str, with_sources: bool = False) -> str | None:
        """The recipe `name` trains with (see train_values)."""
        return self.train_values(name, with_sources).get("recipe")

    def train(self, name: str, with_sources: bool = False) -> Any:
        if (name, with_sources) not in self._train:
            model = get_model(name)
            tables = [t for t in ([name, name + "++"] if with_sources else [name])
                      if t == name or t in self.exp.model_settings]
            linked = {slot: dep for slot, dep in model.starts_from.items()
                      if any(f.name == slot for f in fields(model.config_type))}
            if model.fine_tunes and model.name not in model.fine_tunes:
                base_slots = get_model(model.fine_tunes[0]).starts_from
                linked.update({f.name: base_slots[f.name] for f in fields(model.config_type) if f.name in base_slots})
            recipe = self.recipe(name, with_sources)
            values: dict[str, Any] = {}
            for t in tables:  # each table checked as it is added, so an error names the table it is in
                own = self.exp.model_settings.get(t, {})
                shared = [slot for slot in linked if slot in own]
                if shared:
                    dep = linked[shared[0]]
                    pooled = with_sources and has_pooled_variant(get_model(dep))
                    raise XmfastError(f"{self.where}: {table_name('model', t)} cannot set {shared[0]!r}: it is the "
                                      f"settings of the {dep} run {name} starts from; set them in "
                                      f"{table_name('model', dep)}"
                                      + (f" (or {table_name('model', dep + '++')} for its run trained with the sources)"
                                         if pooled else ""))
                values.update(own)
                try:
                    config = model.config_from(values, recipe)
                except SettingError as e:  # the line: in this table, else the earlier one that set it
                    read = [("model", u) for u in reversed(tables[: tables.index(t) + 1])]
                    raise XmfastError(f"{_at(self.exp, read, e.path)}: {table_name('model', t)}: {e.detail}") from None
                except XmfastError as e:
                    raise XmfastError(f"{self.where}: {table_name('model', t)}: "
                                      f"{str(e).removeprefix(f'model {name}: ')}") from None
            for slot, dep in model.starts_from.items():
                if slot in linked:
                    config = replace(config, **{slot: self.train(dep, with_sources)})
            self._train[name, with_sources] = config
        return self._train[name, with_sources]

    def finetune(self, name: str, with_sources: bool = False) -> Any:
        model = get_model(name)
        base = model.fine_tunes[0]
        own = None if name in model.fine_tunes else self.train(name, with_sources)
        try:
            return model.config_from_base(own, base, self.train(base, with_sources))
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

    def on_stage_event(self, stage: Stage, event: StageEvent) -> None:
        """Progress of a stage running in a worker process (``jobs`` > 1), in place of the
        training observer's hooks, which cannot cross into that process."""


@dataclass(frozen=True)
class StageEvent:
    """A training hook of a stage running in a worker process, as plain data (it crosses a pipe).

    ``start``: a training begins after epoch `epoch` of `epochs` (`monitor` is its validation
    metric); ``epoch_start``: epoch `epoch` begins, `batches` long; ``batch``: `batches` of
    epoch `epoch` done, running mean `loss` (sent a few times a second, not every step);
    ``epoch_end``: `record` is the epoch's line of metrics.jsonl; ``message``: `text`."""

    kind: Literal["start", "epoch_start", "batch", "epoch_end", "message"]
    epoch: int = 0
    epochs: int = 0
    batches: int = 0
    loss: float | None = None
    monitor: str = ""
    record: dict[str, Any] | None = None
    text: str = ""


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


class Executor(Protocol):
    """Runs the stages to do somewhere else (:class:`xmfast.cluster.DaskExecutor`), under the
    contract of ``jobs`` > 1: this process alone writes the ledger, and the executor returns
    the seconds of each stage it finished."""

    def run(self, p: Plan, actions: dict[str, Action], observer: ExperimentObserver, stop_after: int | None,
            tensorboard: Path | None) -> dict[str, float]: ...


def run_experiment(p: Plan, *, observer: ExperimentObserver | None = None,
                   stop_after: int | None = None, jobs: int = 1, tensorboard: Path | None = None,
                   executor: Executor | None = None) -> ExperimentResult:
    """Executes the stages that are not cached, in dependency order. Interrupting it is safe:
    a re-run continues (an interrupted training resumes from its last checkpoint).

    `jobs` > 1 runs up to that many independent stages at once, each in a worker process
    (:func:`_run_parallel`), with the results of a serial run on the CPU bit for bit when that
    run has a worker's number of threads (max(1, cores // jobs)): some kernels (ACMR's) sum in
    an order that depends on the thread count.

    `stop_after` ends the first executed training stage after that many epochs, as a crash
    would (with `jobs` > 1: every training stage running then); tests use it to check that a
    re-run continues.

    `tensorboard` DIR: each training stage run now (not a cached one) also writes its curves and
    hyper-parameters to DIR/<stage id> (see :mod:`xmfast.training.tensorboard`).

    `executor` runs the stages elsewhere instead (a Dask cluster: :mod:`xmfast.cluster`); its
    workers, not `jobs`, say how many run at once."""
    from xmfast import outputs
    from xmfast._io import check_output

    check_jobs(jobs, cluster=executor is not None)
    if tensorboard is not None:
        from xmfast.training.tensorboard import require

        require(tensorboard)  # before any stage starts (without importing torch here)
        tensorboard = Path(tensorboard).absolute()  # the same directory for every worker
    # Only an experiment's own directory (or a fresh one) holds its stages, and never the data.
    check_output(p.experiment.out, outputs.EXPERIMENT_DIR, inputs=p.experiment.data.inputs)
    observer = observer or ExperimentObserver()
    actions = stage_actions(p)
    observer.on_plan(p, actions)
    if executor is not None:
        return ExperimentResult(p, actions, executor.run(p, actions, observer, stop_after, tensorboard))
    if jobs > 1:
        return ExperimentResult(p, actions, _run_parallel(p, actions, observer, jobs, stop_after, tensorboard))
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
        _record(p.experiment, stage, "started")
        finished = _execute(p.experiment, stage, actions[stage.id], by_id, observer.training_observer(stage),
                            stop_after, tensorboard)
        seconds[stage.id] = time.perf_counter() - t0
        if not finished:
            return ExperimentResult(p, actions, seconds)
        _record(p.experiment, stage, "finished", seconds[stage.id])
        observer.on_stage_end(stage, seconds[stage.id])
    return ExperimentResult(p, actions, seconds)


def check_jobs(jobs: int, *, cluster: bool = False) -> None:
    """Refuses a number of stages at once that is not a whole number of at least 1, and any
    other than 1 with a `cluster`, whose workers say how many run at once."""
    from xmfast.errors import argument

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise XmfastError(f"{argument('jobs', None)} is the number of stages run at once: a whole number of at "
                          f"least 1 (1 runs one stage at a time), got {jobs!r}")
    if cluster and jobs > 1:
        raise XmfastError(f"{argument('jobs', jobs)} starts worker processes on this machine; on a cluster its "
                          f"workers run the stages, one each at a time: leave out {argument('jobs', None)} and start "
                          f"as many workers as stages to run at once")


def _record(exp: Experiment, stage: Stage, status: str, seconds: float | None = None) -> None:
    """The stage's ledger entry: "started" before it runs (a re-run resumes it), "finished" after."""
    entry: dict[str, Any] = {"id": stage.id, "key": stage.key, "status": status}
    if seconds is not None:
        entry["seconds"] = seconds
    write_json_atomic(_ledger_path(exp, stage), entry)


def _execute(exp: Experiment, stage: Stage, action: Action, by_id: dict[str, Stage], train_observer: Any,
             stop_after: int | None, tensorboard: Path | None = None, *, validation_only: bool = False) -> bool:
    if stage.kind == "prepare":  # without torch: a worker process that only prepares never imports it
        from xmfast.prepare import KCore, PrepareConfig
        from xmfast.prepare import prepare as run_prepare

        values = dict(stage.settings["prepare"])
        for key in ("kcore", "reference_kcore"):
            values[key] = KCore(**values[key])
        config = PrepareConfig(**values, **_published_paths(exp))
        run_prepare(exp.data, stage.path, config, overwrite=True)
        return True
    from xmfast import training
    from xmfast._added import fill_absent
    from xmfast.dataset import PreparedDataset
    from xmfast.models import config_from_dict

    if tensorboard is not None:  # named by the stage, so a resumed stage continues its curves
        from xmfast.training.tensorboard import with_tensorboard

        train_observer = with_tensorboard(train_observer, Path(tensorboard) / stage.id)
    if action == "resume":
        return training.resume(stage.result_path, observer=train_observer, stop_after=stop_after) is not None
    assert stage.model is not None
    spec = get_model(stage.model)
    model_config = spec.config_from(stage.settings["model_config"], recorded=True)
    config = config_from_dict(training.TrainConfig, {**fill_absent(training.TrainConfig, stage.settings["train_config"]),
                                                      "device": exp.device})
    deps = [by_id[d] for d in stage.deps]
    if stage.kind == "finetune":
        base = next(d for d in deps if d.kind == "train")
        results = training.finetune(base.path, stage.path, [stage.target], model_config, config, model=stage.model,
                                    overwrite=True, observer=train_observer, stop_after=stop_after)
        return all(r is not None for r in results.values())
    dataset = PreparedDataset.load(by_id[stage.deps[0]].path)
    pretrained = {name: by_id[d].path for name, d in stage.pretrained.items()}
    result = training.train(dataset, stage.path, stage.model, model_config, config, pretrained=pretrained,
                            overwrite=True, observer=train_observer, stop_after=stop_after,
                            validation_only=validation_only)
    return result is not None


# ---- stages in parallel (run_experiment(jobs=N)) -----------------------------------------------------
# Each worker is a `python -c` subprocess (not a multiprocessing pool) in a process group of its
# own: a terminal's Ctrl-C reaches the parent alone, which stops every worker once, by name, and
# waits for each to leave its stage resumable; a pool's workers would share the terminal's group
# (interrupted mid-handshake, with tracebacks) and one dead worker breaks a whole pool. Workers
# live for the whole run, so torch is imported once per worker, not once per stage.
_WORKER_CODE = ("import json, os, sys; sys.path[:] = json.loads(os.environ['XMFAST_WORKER_PATH']); "
                "from xmfast.experiment import _worker_main; _worker_main()")


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _gpus(device: str) -> list[str]:
    """The GPUs workers take turns on: CUDA_VISIBLE_DEVICES's entries, else every GPU torch
    sees; none for a CPU experiment or a device naming one GPU (`cuda:1`: all share it)."""
    import os

    if device not in ("auto", "cuda"):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def threads_per_job(jobs: int) -> int:
    """The CPU threads of each of `jobs` worker processes: the cores divided among them."""
    return max(1, _cores() // jobs)


def worker_env(threads: int, gpu: str | None) -> dict[str, str]:
    """The environment of a worker process (a stage's or a tuning trial's): the parent's sys.path
    (XMFAST_WORKER_PATH), its share of threads (torch, OpenMP, MKL, Rust) and its GPU."""
    import json
    import os
    import sys

    env = {**os.environ, "XMFAST_WORKER_PATH": json.dumps(sys.path), "XMFAST_WORKER_THREADS": str(threads)}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[var] = str(threads)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def exit_with_parent() -> None:
    """In a worker process: Ctrl-C to itself when its parent is gone (checked every second), so a
    killed parent's workers stop as on Ctrl-C instead of running on unseen."""
    import os
    import signal
    import threading

    parent = os.getppid()

    def orphaned() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # Ctrl-C is for the main thread
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=orphaned, daemon=True).start()


class _Worker:
    """A worker process (see :func:`_worker_main`) and its end of the socket between them."""

    def __init__(self, threads: int, gpu: str | None) -> None:
        import subprocess
        import sys
        from multiprocessing import Pipe

        self.conn, theirs = Pipe(duplex=True)
        env = {**worker_env(threads, gpu), "XMFAST_WORKER_FD": str(theirs.fileno())}
        # Its own session: a terminal's Ctrl-C goes to the parent, which stops the workers itself.
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], env=env, pass_fds=[theirs.fileno()],
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.stage: Stage | None = None
        self.started = 0.0
        self.stopped = False

    def interrupt(self) -> None:
        """Ctrl-C for the stage it runs (once: a second one could land in its cleanup)."""
        import signal

        if not self.stopped and self.proc.poll() is None:
            self.stopped = True
            self.proc.send_signal(signal.SIGINT)

    def close(self, timeout: float = 30.0) -> None:
        """Tells an idle worker to end and waits for it; one that does not is killed (as a kill
        would leave it: resumable)."""
        import subprocess

        with contextlib.suppress(OSError):  # already gone: the wait below says so
            self.conn.send(None)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


def start_stage(exp: Experiment, stage: Stage, actions: dict[str, Action], done: set[str],
                observer: ExperimentObserver, place: int, total: int) -> bool:
    """What every scheduler does before handing `stage` out: look at the ledger once more (another
    process may have finished it meanwhile: then it is cached and done, and False is returned),
    else announce it and record it as started."""
    if _stage_action(exp, stage) == "cached":
        actions[stage.id] = "cached"
        done.add(stage.id)
        return False
    observer.on_stage_start(stage, actions[stage.id], place, total)
    _record(exp, stage, "started")
    return True


def _heights(p: Plan) -> dict[str, int]:
    """Each stage's longest chain of stages that wait for it (itself included): among the stages
    ready to start, the longest chain goes first, so the grid's critical path is not left last."""
    waiting: dict[str, list[str]] = {s.id: [] for s in p.stages}
    for s in p.stages:
        for d in s.deps:
            waiting[d].append(s.id)
    height: dict[str, int] = {}
    for s in reversed(p.stages):  # dependency order, reversed: every waiting stage is counted first
        height[s.id] = 1 + max((height[w] for w in waiting[s.id]), default=0)
    return height


def _run_parallel(p: Plan, actions: dict[str, Action], observer: ExperimentObserver, jobs: int,
                  stop_after: int | None, tensorboard: Path | None = None) -> dict[str, float]:
    """Runs the stages to do on up to `jobs` worker processes, each stage as soon as every stage
    it reads is finished. The parent alone writes the ledger; a worker writes only its stage's
    output (distinct directories), under the same run lock as a serial run. Threads are divided
    among the workers (max(1, cores // jobs) each) and, with GPUs, each worker gets one in turn
    (CUDA_VISIBLE_DEVICES). Ctrl-C stops every running stage as a serial Ctrl-C would (resumable)
    before KeyboardInterrupt goes on; a stage's error stops the others and is raised."""
    import os
    from multiprocessing.connection import wait

    from xmfast.errors import argument

    if os.name != "posix":  # pragma: no cover - workers are handed their socket as POSIX file descriptors
        raise XmfastError(f"{argument('jobs', jobs)} needs a POSIX system (Linux, macOS); here run one stage at a "
                          f"time ({argument('jobs', 1)})")
    exp = p.experiment
    by_id = p.by_id()
    height = _heights(p)
    queue = sorted((s for s in p.stages if actions[s.id] != "cached"),
                   key=lambda s: -height[s.id])  # stable: plan order among equals
    total = len(queue)
    done = {s.id for s in p.stages if actions[s.id] == "cached"}
    threads = threads_per_job(jobs)
    gpus = _gpus(exp.device)
    workers: list[_Worker] = []
    seconds: dict[str, float] = {}
    failure: BaseException | None = None
    stopping = False

    def running() -> list[_Worker]:
        return [w for w in workers if w.stage is not None]

    def stop(reason: BaseException) -> None:
        nonlocal failure, stopping
        stopping = True
        failure = failure or reason
        for w in running():
            w.interrupt()

    def hear(w: _Worker) -> None:
        """One message from `w` about its stage."""
        nonlocal stopping
        stage = w.stage
        assert stage is not None
        try:
            message = w.conn.recv()
        except Exception:  # EOF, or a message cut short: the worker is gone
            message = ("died",)
        if message[0] == "event":
            observer.on_stage_event(stage, message[1])
            return
        w.stage = None
        if message[0] == "done":
            seconds[stage.id] = time.perf_counter() - w.started
            if message[1]:
                _record(exp, stage, "finished", seconds[stage.id])
                observer.on_stage_end(stage, seconds[stage.id])
                done.add(stage.id)
            else:  # stop_after: as a crash would, nothing more starts (those running end as they end)
                stopping = True
        elif message[0] == "error":
            stop(XmfastError(message[1]))
        elif message[0] == "crash":
            stop(RuntimeError(f"stage {stage.id} failed in its worker process:\n{message[1]}"))
        elif w.stopped:  # "interrupted", or gone, after we stopped it: resumable, its ledger says "started"
            return
        elif message[0] == "interrupted":  # Ctrl-C that reached the worker alone: as if it reached us
            stop(KeyboardInterrupt())
        else:
            code = w.proc.wait()
            stop(XmfastError(f"stage {stage.id}: its worker process ended unexpectedly (exit status {code}); its "
                             f"output is left as a kill leaves it: run the experiment again to continue"))

    try:
        try:
            while True:
                while not stopping:
                    ready = next((s for s in queue if all(d in done for d in s.deps)), None)
                    idle = next((w for w in workers if w.stage is None and w.proc.poll() is None), None)
                    if ready is None or (idle is None and sum(w.proc.poll() is None for w in workers) >= jobs):
                        break
                    if idle is None:
                        idle = _Worker(threads, gpus[len(workers) % len(gpus)] if gpus else None)
                        workers.append(idle)
                    queue.remove(ready)
                    if not start_stage(exp, ready, actions, done, observer, total - len(queue), total):
                        continue
                    needed = {d: by_id[d] for d in (*ready.deps, *ready.pretrained.values())}
                    idle.stage, idle.started = ready, time.perf_counter()
                    with contextlib.suppress(OSError):  # it died idle: its end of file, heard next, says so
                        idle.conn.send((exp, ready, actions[ready.id], needed, stop_after, tensorboard))
                busy = running()
                if not busy:
                    break
                for conn in wait([w.conn for w in busy]):
                    hear(next(w for w in busy if w.conn is conn))
        except KeyboardInterrupt:
            stop(KeyboardInterrupt())
            try:  # each stopped stage saves what a serial Ctrl-C saves, and says so
                while busy := running():
                    for conn in wait([w.conn for w in busy]):
                        hear(next(w for w in busy if w.conn is conn))
            except KeyboardInterrupt:  # a second Ctrl-C: no more waiting (a kill leaves them resumable too)
                for w in running():
                    w.proc.kill()
    finally:
        for w in workers:
            if w.stage is not None:  # left running by an error of the parent's own
                w.interrupt()
            w.close()
    if failure is not None:
        raise failure
    return seconds


def _worker_main() -> None:
    """A worker process of :func:`_run_parallel`: runs the stages its parent sends over the
    socket (fd XMFAST_WORKER_FD), one at a time, reporting progress and each outcome; ends on
    None, on Ctrl-C from its parent (the stage left as a serial Ctrl-C leaves it), or when its
    parent is gone (checked every second: it then stops as on Ctrl-C)."""
    import os
    import signal
    import traceback
    from multiprocessing.connection import Connection

    # Ctrl-C is how the parent stops a stage (a background job inherits SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    conn = Connection(int(os.environ["XMFAST_WORKER_FD"]))
    exit_with_parent()

    def send(message: tuple[Any, ...]) -> None:  # whole or not at all: Ctrl-C waits for the end of a message
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            conn.send(message)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    try:
        from xmfast import core

        while (task := conn.recv()) is not None:
            exp, stage, action, by_id, stop_after, tensorboard = task
            try:
                if stage.kind != "prepare":  # (torch is imported on the first stage that trains)
                    import torch

                    torch.set_num_threads(int(os.environ["XMFAST_WORKER_THREADS"]))
                finished = _execute(exp, stage, action, by_id, _Relay(send), stop_after, tensorboard)
            except (XmfastError, core.DataFormatError) as e:
                send(("error", str(e)))
            except Exception:  # a bug: its traceback, for the parent to raise
                send(("crash", traceback.format_exc()))
            else:
                send(("done", finished))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(OSError):  # the parent may be gone already
            send(("interrupted",))
    except (EOFError, OSError):  # the parent is gone: nothing to report to
        return


class _Relay:
    """A TrainObserver in a worker process: each hook goes to the parent as a StageEvent."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.epoch = self.batches = 0
        self.sent = 0.0

    def event(self, kind: str, **values: Any) -> None:
        self.send(("event", StageEvent(kind, **values)))  # type: ignore[arg-type]

    def on_start(self, trainer: Any) -> None:
        self.event("start", epoch=trainer.epoch, epochs=trainer.config.epochs, monitor=trainer.config.monitor)

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches = epoch, 0
        self.event("epoch_start", epoch=epoch, batches=batches)

    def on_batch(self, mean_loss: float | None, instances: int) -> None:
        self.batches += 1
        now = time.monotonic()
        if now - self.sent >= 0.25:
            self.sent = now
            self.event("batch", epoch=self.epoch, batches=self.batches,
                       loss=None if mean_loss is None else float(mean_loss))

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.event("epoch_end", epoch=record["epoch"], record=record)

    def on_message(self, text: str) -> None:
        self.event("message", text=text)


def write_experiment_report(exp: Experiment, source: Path) -> Path:
    """OUT/report.md (with its CSV, JSON and plots) over every finished run of the experiment,
    prefaced by its description, how it was made and, when it was tuned, the search's ranges,
    trials and chosen values (write_report adds them)."""
    from xmfast.report import build_report, collect_runs, write_report

    exp = exp.whole or exp  # a part's report is the whole output directory's
    made = (f"Made by `xmfast run {source}` (data `{exp.data}`, protocol {exp.protocol}, seeds "
            f"{', '.join(map(str, exp.seeds))}).")
    preface = f"{exp.description.strip()}\n\n{made}" if exp.description.strip() else made
    return write_report(build_report(collect_runs([exp.out])), exp.out / "report.md", title=f"{exp.name}: results",
                        preface=preface, inputs=[exp.out])


__all__ = ["Executor", "Experiment", "ExperimentObserver", "ExperimentResult", "Plan", "Stage", "StageEvent", "plan",
           "read_experiment", "run_experiment", "check_jobs", "stage_actions", "write_experiment_report"]
