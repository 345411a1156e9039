"""Checkpoints and starting runs: reading a checkpoint as untrusted input, loading weights with
one clear error, and finding the trained runs a model starts from (NMF's GMF and MLP runs, a
fine-tuned model's base run), recorded in the new run's run.json."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError, spelled
from xmfast.models import Model, Sizes, get_model
from xmfast.models.schedule import TrainConfig
from xmfast.runs import Run, to_plain
from xmfast.training.rows import resolve_sources

CHECKPOINT_VERSION = 1


@dataclass
class EarlyStopping:
    """Best value of the monitored metric so far and epochs since it last improved."""

    best_value: float = -math.inf
    best_epoch: int = 0
    stale: int = 0

    def update(self, epoch: int, value: float, *, reset: bool = True) -> bool:
        """Records an epoch's value; True when it is a new best. Without `reset` a new best does
        not zero `stale`, which then counts every epoch without improvement (ACMR's code)."""
        if value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
            if reset:
                self.stale = 0
            return True
        self.stale += 1
        return False




def read_checkpoint(path: Path, run: Run | None = None, *, resumable: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, or one clear error naming `path`: a missing, truncated, zeroed or
    foreign file, or (when `run` is given) a checkpoint written for another dataset or model.

    A checkpoint is untrusted input: it is read with ``weights_only=True``, which rebuilds
    tensors and plain data only (xmfast writes nothing else), so a file whose unpickling would
    run code is refused, never executed. `resumable` also checks what :meth:`Trainer.restore`
    uses (optimizer, RNG and early-stopping state), so a damaged ``last.pt`` fails here, whole."""
    if not Path(path).is_file():
        raise XmfastError(f"{path}: missing; the run has no such checkpoint")
    state = load_untrusted(path, "written by xmfast", "delete it and train the run again")
    problem = _state_problem(state, resumable)
    if problem:
        raise XmfastError(f"{path}: not an xmfast checkpoint ({problem}); train the run again")
    if state.get("version") != CHECKPOINT_VERSION:
        raise XmfastError(f"{path}: checkpoint version {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
    if run is not None:
        if "dataset" in state and state["dataset"] != run.dataset_fingerprint:
            raise XmfastError(f"{path}: written for dataset {str(state['dataset'])[:12]}, but the run's dataset is "
                              f"{run.dataset_fingerprint[:12]}; the checkpoint belongs to another run")
        if "model_name" in state and state["model_name"] != run.model:
            raise XmfastError(f"{path}: a {state['model_name']} checkpoint in a {run.model} run; it belongs to another run")
    return state


def load_untrusted(path: Path, expected: str, remedy: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, each failure one error naming `path`:
    a file that refers to code (`expected` says what it should have been) or that cannot be
    decoded; `remedy` says what to do. torch's own text is left out: it is long and advises
    loading with weights_only=False."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler: a forbidden name, or bytes it cannot read
        code = re.search(r"GLOBAL ([\w.]+)", str(e))
        if code:
            raise XmfastError(f"{path}: refers to {code.group(1)}, not only tensors and plain data, so it was not "
                              f"{expected} and loading it could run code; refused: {remedy}") from None
        raise _damaged(path, e, remedy) from None
    except Exception as e:  # noqa: BLE001 - any failure to decode untrusted bytes is a damaged file
        raise _damaged(path, e, remedy) from None


def _damaged(path: Path, e: Exception, remedy: str = "train the run again") -> XmfastError:
    return XmfastError(f"{path}: not a readable checkpoint ({type(e).__name__}); the file is damaged (truncated, "
                       f"zeroed or another format): {remedy}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "empty"


def _state_problem(state: Any, resumable: bool) -> str | None:
    """What is wrong with a loaded checkpoint's layout (see :meth:`Trainer._state`), or None."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict"
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        return "no model weights"
    if not resumable:
        return None
    if not isinstance(state.get("epoch"), int) or isinstance(state["epoch"], bool) or state["epoch"] < 0:
        return "no epoch number"
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list):
        return "no optimizer state"
    stopping = state.get("stopping")
    if not isinstance(stopping, dict) or set(stopping) != {f.name for f in fields(EarlyStopping)} \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in stopping.values()):
        return "no early-stopping state"
    rngs = [state.get("torch_rng"), *(state.get("cuda_rng") if isinstance(state.get("cuda_rng"), list) else [None])]
    if not all(isinstance(r, torch.Tensor) and r.dtype == torch.uint8 and r.dim() == 1 for r in rngs):
        return "no random generator state"
    return None


def load_weights(module: nn.Module, weights: dict[str, Any], path: Path, *, load: Any = None) -> None:
    """`module.load_state_dict(weights)` (or `load(weights)`, e.g. FOREC's fork), with a mismatch
    reported as one error naming `path`."""
    try:
        (load or module.load_state_dict)(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0].rstrip(":")
        raise XmfastError(f"{path}: its weights do not fit the run's model ({first}); the checkpoint belongs to "
                          "another model or settings") from None




@dataclass
class StartingRun:
    """A finished run a new one starts from, as a model's :meth:`~xmfast.models.Model.initialise`
    receives it: its `run`, `model` name and `config`, its weights (``best.pt``, or ``last.pt``
    when `checkpoint` is last; read as untrusted input) and :meth:`module`, its network built for
    `sizes` with those weights."""

    run: Run
    sizes: Sizes
    device: Any = "cpu"
    checkpoint: str = "best"  # best or last (TrainConfig.start_checkpoint)

    @property
    def model(self) -> str:
        return self.run.model

    @property
    def config(self) -> Any:
        return get_model(self.run.model).config_from(self.run.info["model_config"], recorded=True)

    @property
    def path(self) -> Path:
        return self.run.last_checkpoint if self.checkpoint == "last" else self.run.best_checkpoint

    @property
    def weights(self) -> dict[str, Any]:
        return read_checkpoint(self.path, self.run)["model"]

    def module(self) -> nn.Module:
        """The starting run's own network with its weights, on the new run's device."""
        model = get_model(self.run.model)
        module = model.build(self.sizes, self.config)
        load_weights(module, self.weights, self.path)
        return module.to(self.device)


def initialise(model: Model, module: nn.Module, runs: dict[str, Run], config: Any, sizes: Sizes, device: Any,
               checkpoint: str = "best") -> None:
    """`model.initialise` with the starting runs (their `checkpoint`, best or last); weights that
    do not fit are one error naming the checkpoints."""
    starting = {slot: StartingRun(run, sizes, device, checkpoint) for slot, run in runs.items()}
    try:
        model.initialise(module, starting, config)
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
        paths = ", ".join(str(s.path) for s in starting.values())
        raise XmfastError(f"{paths}: the weights do not fit the {model.name} model ({first}); the run belongs to "
                          "another model or settings") from None


def linked_config(model_config: Any, slot: str) -> Any:
    """The settings a starting run in `slot` must have been trained with: the model's own
    setting of that name (NMF's ``gmf`` and ``mlp`` branches), or None (any settings)."""
    if any(f.name == slot for f in fields(model_config)):
        return to_plain(getattr(model_config, slot))
    return None


def find_pretrained(dataset: PreparedDataset, model: Model, model_config: Any, config: TrainConfig, out: Path,
                    given: dict[str, Path] | None) -> dict[str, Run]:
    """The finished runs `model` starts from (NMF: a GMF and an MLP run; MAML: an NMF++ run), by
    slot. Given paths are checked; missing ones are looked for among the sibling directories of
    `out`: finished runs of the right model on the same dataset, with the same sources and (where
    the model links them) the same settings. When more than one sibling matches (say two seeds),
    none is guessed: the error lists them with the option that names one, since the choice
    changes every number."""
    wanted = model.requires(model_config)
    given = dict(given or {})
    extra = sorted(set(given) - set(wanted))
    if extra:
        raise XmfastError(f"{spelled(f'pretrained[{extra[0]!r}]', f'--{extra[0]}-run')}: model {model.name} starts from "
                          f"{', '.join(wanted) or 'no trained run'}" + (" with this configuration" if model.starts_from else ""))
    sources = list(resolve_sources(dataset, config.sources))
    found: dict[str, Run] = {}
    for slot, name in wanted.items():
        want_config = linked_config(model_config, slot)
        if slot in given:
            run = Run.open(given[slot])
            problem = _pretrained_mismatch(run, name, dataset, sources, want_config, config)
            if problem:
                raise XmfastError(f"{given[slot]}: cannot initialise {model.name}: {problem}")
            found[slot] = run
            continue
        candidates = []
        parent = out.resolve().parent
        for path in sorted(parent.iterdir()) if parent.is_dir() else []:
            if path.resolve() == out.resolve() or not (path / "run.json").is_file():
                continue
            try:
                run = Run.open(path)
            except XmfastError:
                continue
            if not _pretrained_mismatch(run, name, dataset, sources, want_config, config):
                candidates.append(run)
        if not candidates:
            raise XmfastError(
                f"{model.name} starts from a trained {name} run, and none was found next to {out} (a finished "
                f"{name} run on this dataset with sources [{', '.join(sources)}], augmentation "
                f"{config.augmentation}, sampling {config.sampling}"
                + (f" and the same {name} settings" if want_config is not None else "")
                + f"); train one first or give it with {spelled(f'pretrained={{{slot!r}: RUN}}', f'--{slot}-run')}"
                + (f", or pass {spelled('pretrained=False in its settings', '--no-pretrained')}"
                   if hasattr(model_config, "pretrained") else "")
            )
        if len(candidates) > 1:
            listed = "; ".join(describe_pretrained(pretrained_record(r, digest=False)) for r in candidates)
            raise XmfastError(
                f"{model.name} starts from a trained {name} run, and {len(candidates)} match next to {out}: {listed}; "
                f"name the one to start from with " + spelled(f"pretrained={{{slot!r}: RUN}} (e.g. {str(candidates[0].path)!r})",
                                                              f"--{slot}-run (e.g. --{slot}-run {candidates[0].path})")
            )
        found[slot] = candidates[0]
    return found


def pretrained_record(run: Run, *, digest: bool = True, checkpoint: str = "best") -> dict[str, Any]:
    """What a run starts from, as its run.json records it (``pretrained_runs``) and the command
    prints it: the pretrained run's absolute path, model, seed, sources, selected epoch and the
    blake2b digest of the checkpoint whose weights it takes (``best.pt``, or ``last.pt`` for
    `checkpoint` last), which tells whether that run was retrained since. With `digest` the
    checkpoint is read first (:func:`read_checkpoint`), so an unsafe or damaged one is refused
    before :func:`run_info`'s new run directory exists."""
    import json

    tc = run.info.get("train_config", {})
    try:
        selected = json.loads((run.path / "results.json").read_text(encoding="utf-8")).get("selected_epoch")
    except (OSError, ValueError, AttributeError):
        selected = None
    record = {"path": str(run.path.resolve()), "model": run.model, "seed": tc.get("seed"), "sources": run.sources,
              "selected_epoch": selected}
    if digest:
        from xmfast._io import digest_file

        path = run.last_checkpoint if checkpoint == "last" else run.best_checkpoint
        read_checkpoint(path, run)
        record["checkpoint"] = path.name
        record["checkpoint_blake2b"] = digest_file(path)
    return record


def describe_pretrained(record: dict[str, Any]) -> str:
    """One line for a :func:`pretrained_record`: the path first, then the settings that tell
    two candidate runs apart."""
    sources = ", ".join(record.get("sources") or []) or "none"
    text = f"{record['model']} run {record['path']} (seed {record.get('seed')}, sources {sources}"
    if record.get("selected_epoch") is not None:
        text += f", selected epoch {record['selected_epoch']}"
    if record.get("checkpoint_blake2b"):
        text += f", {record.get('checkpoint', 'best.pt')} {record['checkpoint_blake2b'][:12]}"
    return text + ")"


def _pretrained_mismatch(run: Run, name: str, dataset: PreparedDataset, sources: list[str], want_config: Any,
                         config: TrainConfig) -> str | None:
    tc = run.info.get("train_config", {})
    if run.model != name:
        return f"it is a {run.model} run, not {name}"
    if run.status != "finished":
        return f"it is not finished (status {run.status})"
    if run.dataset_fingerprint != dataset.fingerprint:
        return "it was trained on another dataset"
    if list(tc.get("sources", [])) != sources:
        return f"its sources [{', '.join(tc.get('sources', []))}] differ from [{', '.join(sources)}]"
    if sources and (tc.get("augmentation") != config.augmentation or tc.get("sampling") != config.sampling):
        return "its augmentation or sampling differs"
    if want_config is not None and run.info.get("model_config") != want_config:
        return f"its {name} settings {run.info.get('model_config')} differ from {want_config}"
    return None


