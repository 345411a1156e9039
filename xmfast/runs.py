"""Run directories: everything one training produced, in a layout every command can read.

::

    RUN/
      run.json          model, model and training configuration, dataset path and fingerprint,
                        pretrained runs, status (running | interrupted | finished), versions
      metrics.jsonl     one JSON line per finished epoch (loss, samples/s, validation metrics)
      checkpoints/      last.pt (model, optimizer, RNG and early-stopping state: resumable)
                        best.pt (the model of the best validation epoch)
      valid.json        evaluation of the selected checkpoint (per user, as `xmfast evaluate --json`)
      test.json
      results.json      the summary: selected epoch, validation and test aggregates

Baselines (pop, cooc) have no checkpoints; their scorer is rebuilt from the dataset.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xmfast import outputs
from xmfast._added import absent_value, is_added
from xmfast._io import holds_no_file, json_text, loads_strict, read_descriptor, write_json_atomic, write_text_atomic
from xmfast.dataset import PreparedDataset
from xmfast.errors import DatasetError, XmfastError, argument, spelled

if TYPE_CHECKING:
    from xmfast.evaluation import Evaluation

RUN_FORMAT = outputs.RUN_FORMAT
RUN_FORMAT_VERSION = 1


@contextlib.contextmanager
def _directory_lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking flock on the directory itself (POSIX; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XmfastError(
                f"{path}: another xmfast process is writing this run; wait for it to finish, or choose another "
                f"{argument('out', None, metavar='RUN')}"
            ) from None
        yield
    finally:
        os.close(fd)


def to_plain(value: Any) -> Any:
    """Dataclasses and tuples as JSON-ready values."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_plain(asdict(value))
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def key_plain(value: Any) -> Any:
    """:func:`to_plain` for stage keys: a setting declared with ``added(default)`` (see
    :mod:`xmfast._added`) is left out while it holds the value its absence means, so adding a
    setting does not make finished stages stale."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: key_plain(getattr(value, f.name)) for f in fields(value)
                if not (is_added(f) and getattr(value, f.name) == absent_value(f))}
    if isinstance(value, dict):
        return {k: key_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [key_plain(v) for v in value]
    return value


_VOLATILE = ("status", "versions")  # what a re-run of the same command may change in run.json


def _restartable(path: Path, info: dict[str, Any]) -> bool:
    """A run directory that the same command may start again: it never finished an epoch (or
    holds no file at all) and was created with the same settings as `info`."""
    if not (path / "run.json").exists():
        return holds_no_file(path)
    try:
        old = Run.open(path)
    except XmfastError:
        return False
    if old.status == "finished" or old.finished_an_epoch:
        return False
    same = {k: v for k, v in to_plain(info).items() if k not in _VOLATILE}
    return {k: v for k, v in old.info.items() if k not in _VOLATILE} == same


def _what_continues(path: Path) -> str:
    """For the "already exists" error: what the run at `path` is and the command that works."""
    try:
        old = Run.open(path)
    except XmfastError:
        return f" (pass {argument('overwrite')} to replace it)"
    if old.status == "finished":
        return f" (a finished run; pass {argument('overwrite')} to replace it)"
    done = old.last_epoch()
    where = f"stopped after epoch {done}" if done else "stopped before its first epoch ended"
    return (f" (an unfinished run, {where}; continue it with "
            f"{spelled(f'xmfast.training.resume({str(path)!r})', f'`xmfast train --resume {path}`')}, "
            f"or pass {argument('overwrite')} to replace it)")


class Run:
    """A run directory (see the module docstring)."""

    def __init__(self, path: Path, info: dict[str, Any]) -> None:
        self.path = Path(path)
        self.info = info

    # ---- locations ---------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    # ---- facts -------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return str(self.info["model"])

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    @property
    def dataset_fingerprint(self) -> str:
        return str(self.info["dataset"]["fingerprint"])

    @property
    def sources(self) -> list[str]:
        return list(self.info["train_config"].get("sources", []))

    # ---- life cycle --------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, info: dict[str, Any], *, overwrite: bool = False,
               inputs: Iterable[Path | None] = ()) -> Run:
        """Makes the run directory: built with its run.json under a temporary name and renamed
        into place, so a run directory without run.json never appears, whenever the process dies.

        An existing path is replaced only when it is a run (or holds no file) and is none of
        `inputs` (the dataset, the runs it starts from): with `overwrite`, or when it is a run
        that never finished an epoch and was created with the same settings (the same command,
        killed early, starts it again cleanly)."""
        from xmfast._io import atomic_directory, check_output

        path = Path(path)
        inputs = list(inputs)
        info = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, **info}
        check_output(path, outputs.RUN, inputs=inputs)  # a foreign path is refused even with --overwrite
        if path.exists() and not overwrite and not _restartable(path, info):
            raise XmfastError(f"{path}: already exists{_what_continues(path)}")
        with atomic_directory(path, overwrite=True, kind=outputs.RUN, inputs=inputs) as tmp:
            (tmp / "checkpoints").mkdir()
            write_json_atomic(tmp / "run.json", to_plain(info))
        return cls(path, info)

    @property
    def finished_an_epoch(self) -> bool:
        """Whether an epoch has finished (its checkpoint is what --resume continues from)."""
        return self.last_checkpoint.is_file()

    def last_epoch(self) -> int:
        """The last epoch whose checkpoint is saved (0: none), what --resume continues after."""
        if not self.finished_an_epoch:
            return 0
        return max((int(r.get("epoch", 0)) for r in self.read_metrics()), default=0)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Run]:
        """Holds the run's lock while a process trains into it: a second command writing the
        same run directory (training, resuming, overwriting) refuses instead of interleaving
        checkpoints. The operating system drops the lock when the process ends, however it ends."""
        with _directory_lock(self.path):
            yield self

    @classmethod
    def open(cls, path: Path) -> Run:
        info = read_descriptor(
            path, "run.json", fmt=RUN_FORMAT, version=RUN_FORMAT_VERSION, what="run directory",
            remedy="train one with `xmfast train`", error=XmfastError,
        )
        _check_info(Path(path) / "run.json", info)
        return cls(path, info)

    def save_info(self, **updates: Any) -> None:
        self.info.update(updates)
        write_json_atomic(self.path / "run.json", to_plain(self.info))

    def load_dataset(self, override: Path | None = None) -> PreparedDataset:
        """The prepared dataset the run was trained on (or `override`, which must be the same
        content: evaluating on other candidates would silently change every number)."""
        where = Path(override) if override is not None else Path(self.info["dataset"]["path"])
        if override is None and not where.is_absolute() and not where.exists():
            where = self.path / where
        try:
            dataset = PreparedDataset.load(where)
        except DatasetError as e:
            raise XmfastError(f"{e} (the dataset of run {self.path}; give it with "
                              f"{argument('dataset', None, metavar='DIR')} if it moved)") from None
        if dataset.fingerprint != self.dataset_fingerprint:
            raise XmfastError(
                f"{where}: dataset fingerprint {dataset.fingerprint[:12]} differs from the one run {self.path} "
                f"was trained on ({self.dataset_fingerprint[:12]}); re-prepare it with the run's settings"
            )
        return for_market(dataset, self.info.get("target") or dataset.target)

    # ---- per-epoch log -----------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        out = []
        text = self.metrics_path.read_text(encoding="utf-8")
        # A last line without its newline is an append a kill interrupted: that epoch's
        # checkpoint was never written after it (see Trainer.fit), so it is not part of the log.
        lines = text.split("\n")[:-1]
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    out.append(loads_strict(line))
                except ValueError as e:
                    raise XmfastError(f"{self.metrics_path}, line {n}: not JSON ({e})") from None
        return out

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrites the log atomically (resuming truncates it to the checkpointed epochs)."""
        write_text_atomic(self.metrics_path, "".join(json_text(r, sort_keys=True) + "\n" for r in records))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json_text(record, sort_keys=True) + "\n")

    def results(self) -> dict[str, Any]:
        file = self.path / "results.json"
        if not file.is_file():
            raise XmfastError(f"{self.path}: no results yet (status {self.status})")
        try:
            data = loads_strict(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise XmfastError(f"{file}: not a JSON results file ({e}); train the run again") from None
        if not isinstance(data, dict):
            raise XmfastError(f"{file}: not a results file (no table of figures); train the run again")
        return data


# The run.json fields later code reads, with their types (a dotted name is inside a table).
_INFO_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("model", str), ("model_config", dict), ("train_config", dict), ("dataset", dict), ("dataset.path", str),
    ("dataset.fingerprint", str), ("target", (str, type(None))), ("status", str), ("pretrained", dict),
)


def _check_info(file: Path, info: dict[str, Any]) -> None:
    """Type-checks the run.json fields used later, so an edited or damaged one is one error
    naming the field here, not a TypeError or a wrong lookup wherever it is first used."""
    for name, kind in _INFO_FIELDS:
        value: Any = info
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        optional = name in ("target", "pretrained", "status")
        if value is None and optional:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            want = "a table" if kind is dict else "a string"
            raise XmfastError(f"{file}: {name} is {json_text(value)}, not {want} (edited or damaged); "
                              "train the run again")
    if not all(isinstance(p, str) for p in (info.get("pretrained") or {}).values()):
        raise XmfastError(f"{file}: pretrained must map names to run paths (edited or damaged); train the run again")


def runs_inside(path: Path) -> list[Path]:
    """The run directories directly inside `path` when `path` is a directory but not a run itself
    (as `xmfast finetune`'s output holds one run per market); otherwise none."""
    path = Path(path)
    if not path.is_dir() or (path / "run.json").is_file():
        return []
    try:
        return sorted(p for p in path.iterdir() if (p / "run.json").is_file())
    except OSError:  # unreadable: the caller's own reading reports it
        return []


def for_market(dataset: PreparedDataset, market: str) -> PreparedDataset:
    """The same dataset (arrays shared, fingerprint unchanged) with `market` as its target: a
    fork fine-tuned on one of a dataset's source markets trains and is evaluated there."""
    if market == dataset.target:
        return dataset
    if market not in dataset.markets:
        raise XmfastError(f"market {market!r} is not in the dataset (it has {', '.join(dataset.markets)})")
    from dataclasses import replace

    return replace(dataset, target=market, sources=[m for m in dataset.markets if m != market])


# ---- what a finished run writes --------------------------------------------------------------------
def evaluate_run_splits(dataset: PreparedDataset, scorer: Any, run: Run, *, test_scorer: Any = None
                        ) -> tuple[Evaluation, Evaluation]:
    """The run's model on the target's validation and test queries (valid.json, test.json)."""
    return evaluate_run_split(dataset, scorer, run, "valid"), evaluate_run_split(dataset, test_scorer or scorer, run, "test")


def evaluate_run_split(dataset: PreparedDataset, scorer: Any, run: Run, split: str) -> Evaluation:
    """The run's model on the target's queries of `split`, written to the run's SPLIT.json."""
    from xmfast.evaluation import RUN_EVAL, evaluate_scorer

    evaluation = evaluate_scorer(dataset, split, scorer, RUN_EVAL, markets=[dataset.target])  # type: ignore[arg-type]
    evaluation.info["run"] = str(run.path)
    evaluation.info["model"] = run.model
    evaluation.to_json(run.path / f"{split}.json")
    return evaluation


def write_results(run: Run, selected_epoch: int | None, valid: Evaluation, test: Evaluation, extra: dict[str, Any]) -> None:
    """results.json, the summary every table reads; the run is finished once it is written."""
    write_json_atomic(run.path / "results.json", {
        "model": run.model, "selected_epoch": selected_epoch, "target": valid.markets and run.info["target"],
        "valid": valid.aggregate(), "test": test.aggregate(), "queries": len(test), **extra,
    })
    run.save_info(status="finished")


def save_scores_run(path: Path, dataset: PreparedDataset, scores: Any, *, label: str, scores_file: Path,
                    seed: int = 0, overwrite: bool = False) -> Run:
    """A run made of scores computed elsewhere (a test-split matrix, queries × stored candidates),
    so that `report` and `compare` read it like any trained run: run.json says where the scores
    came from (the file and its blake2b), test.json and results.json hold the target's test
    figures. It has no model: commands that need one to score refuse it by name."""
    import platform

    from xmfast import core
    from xmfast._io import digest_file
    from xmfast.evaluation import RUN_EVAL, evaluate_sampled
    from xmfast.models import model_names

    base = label.removesuffix("++").split(" (")[0]
    if base in model_names():
        raise XmfastError(f"{argument('label', label)}: the name of a registered model's runs; scores saved from a file get a "
                          "name of their own (e.g. --label my-" + base + ")")

    info = {
        "model": label,
        "scores": {"file": str(Path(scores_file).resolve()), "blake2b": digest_file(Path(scores_file)), "split": "test"},
        "model_config": {},
        "train_config": {"seed": seed, "sources": []},
        "dataset": {"path": str(Path(dataset.path).resolve()) if dataset.path else None,
                    "fingerprint": dataset.fingerprint, "protocol": dataset.protocol},
        "target": dataset.target,
        "pretrained": {},
        "versions": {"xmfast": core.__version__, "python": platform.python_version()},
        "status": "created",
    }
    test = evaluate_sampled(dataset, "test", scores, RUN_EVAL, markets=[dataset.target])
    run = Run.create(path, info, overwrite=overwrite, inputs=[p for p in (dataset.path, scores_file) if p])
    with run.writing():
        test.info.update({"run": str(run.path), "model": label})
        test.to_json(run.path / "test.json")
        write_json_atomic(run.path / "results.json", {
            "model": label, "selected_epoch": None, "target": dataset.target, "valid": {}, "test": test.aggregate(),
            "queries": len(test),
        })
        run.save_info(status="finished")
    return run


def scores_origin(run: Run) -> str | None:
    """For a run saved from a scores file: the error commands that need a model give."""
    scores = run.info.get("scores")
    if not isinstance(scores, dict):
        return None
    return (f"{run.path}: saved from the scores file {scores.get('file')} (xmfast evaluate --save-run); it has no "
            "model to score with, only its test figures (report and compare read them)")


def run_model(run: Run) -> tuple[Any, Any]:
    """The registered model of `run` and its settings, read from run.json; a run saved from a
    scores file (no model) or with settings this version cannot read is an error."""
    from xmfast.models import get_model

    origin = scores_origin(run)
    if origin:
        raise XmfastError(origin)
    spec = get_model(run.model)
    try:
        return spec, spec.config_from(run.info["model_config"], recorded=True)
    except XmfastError as e:
        raise XmfastError(f"{run.path / 'run.json'}: {e}; the file was edited or belongs to another version") from None


def fitted_scorer(run: Run, dataset: PreparedDataset) -> Any | None:
    """For a run of a model without training (pop, cooc, ...): its scorer, fitted again on the
    dataset; None for a trained model, whose network :func:`xmfast.training.load_scorer` loads.
    Kept out of xmfast.training so that commands on baselines never import torch."""
    spec, config = run_model(run)
    return None if spec.trained else spec.fit(dataset, config, tuple(run.sources))
