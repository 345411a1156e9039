"""The entry points of training: :func:`train` a model of the registry into a run directory,
:func:`resume` an interrupted run, :func:`load_scorer` for a run's model. Which engine trains a
model, how it starts and what it optimises come from the model's declaration, never its name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch

from xmfast import core
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError, spelled
from xmfast.models import Model, Sizes, config_from_dict, get_model, with_recipe
from xmfast.models.schedule import TrainConfig
from xmfast.runs import Run, fitted_scorer, run_model, scores_origin, to_plain
from xmfast.training import distributed
from xmfast.training.checkpoints import find_pretrained, load_weights, pretrained_record, read_checkpoint
from xmfast.training.loop import ModelScorer, Trainer, TrainObserver, TrainResult, resolve_device
from xmfast.runs import evaluate_run_split, evaluate_run_splits, write_results
from xmfast.training.rows import resolve_sources, training_view


def check_build(model: Model, sizes: Sizes, config: Any) -> None:
    """Builds `model`'s network once on the meta device (shapes, no memory), so settings that
    make no network (a negative width, mismatched shapes) are one error naming the model before
    any run directory is written, not a traceback and a half-made run. A build that needs real
    tensors is tried on the CPU before it is called an error."""
    def first_line(e: BaseException) -> str:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"

    if _builds_on_meta(model, sizes, config):
        return
    try:  # a build that needs real tensors, or settings that make no network: find out for real
        model.build(sizes, config)
    except XmfastError:
        raise
    except Exception as e:  # noqa: BLE001
        raise XmfastError(f"model {model.name}: its settings make no network ({first_line(e)})") from None


def _builds_on_meta(model: Model, sizes: Sizes, config: Any) -> bool:
    """Whether `model` builds on the meta device; an XmfastError of its own is raised as is."""
    try:
        with torch.device("meta"):
            model.build(sizes, config)
    except XmfastError:
        raise
    except Exception:  # noqa: BLE001 - a user's build may raise anything
        return False
    return True


def trainer_for(model: Model) -> type[Trainer]:
    """The engine class of `model`: the one it names (MAML's meta-learning), the sequence engine
    for history batches, else the standard loop."""
    own = model.trainer()
    if own is not None:
        return own
    if model.batch == "histories":
        from xmfast.training.sequence import SequenceTrainer

        return SequenceTrainer
    return Trainer


def run_info(dataset: PreparedDataset, spec: Model, model_config: Any, config: TrainConfig,
             pretrained: dict[str, Run] | None = None) -> dict[str, Any]:
    import platform

    sources = resolve_sources(dataset, config.sources)
    return {
        "model": spec.name,
        # the table name, fixed now: a report reads it even where the model is not installed
        "label": with_recipe(spec.label(sources=bool(sources), fine_tuned="base" in (pretrained or {})), config.recipe),
        "model_config": to_plain(model_config),
        "train_config": to_plain(replace(config, sources=resolve_sources(dataset, config.sources))),
        "dataset": {"path": str(Path(dataset.path).resolve()) if dataset.path else None,
                    "fingerprint": dataset.fingerprint, "protocol": dataset.protocol},
        "target": dataset.target,
        "pretrained": {name: str(r.path.resolve()) for name, r in (pretrained or {}).items()},
        "pretrained_runs": {name: pretrained_record(r, checkpoint=config.start_checkpoint)
                            for name, r in (pretrained or {}).items()},
        "versions": {"xmfast": core.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "status": "created",
    }


def train(
    dataset: PreparedDataset,
    out: Path,
    model: str,
    model_config: Any = None,
    config: TrainConfig | None = None,
    *,
    pretrained: dict[str, Path] | None = None,
    overwrite: bool = False,
    observer: TrainObserver | None = None,
    stop_after: int | None = None,
    validation_only: bool = False,
    tensorboard: Path | None = None,
) -> TrainResult | None:
    """Trains `model` on `dataset` into the run directory `out` (see :mod:`xmfast.runs`).

    Baselines (pop, cooc) are "trained" too: their run holds the configuration and results, so
    every table can list them next to the neural models. Without `config`, the model's own
    defaults apply (FOREC's for the NCF family, the paper's schedule for ACMR).

    Started by ``torchrun`` with more than one process, every process calls this and they train
    together (see :mod:`xmfast.training.distributed`); rank 0 writes the run, every rank returns its result.
    `validation_only` (a tuning trial) trains and validates but never scores the test split
    and returns None.

    `tensorboard` DIR: the run's curves and hyper-parameters also go to DIR/<name of `out`> (see
    :mod:`xmfast.training.tensorboard`; a model without training writes none)."""
    spec = get_model(model)
    config = config if config is not None else spec.train_config()
    distributed.init(config.device)
    if model.endswith("++") and not config.sources:
        config = replace(config, sources=("all",))
    model_config = model_config if model_config is not None else spec.config_type()
    if not isinstance(model_config, spec.config_type):
        raise XmfastError(f"model {spec.name} takes a {spec.config_type.__name__}, not {type(model_config).__name__}")
    if dataset.path is None:
        raise XmfastError("train on a saved prepared dataset (its path and fingerprint go into the run)")
    dataset.require_evaluated_users()
    if not spec.trained:
        return distributed.on_main(lambda: _train_baseline(dataset, out, spec, model_config, config, overwrite=overwrite,
                                                           validation_only=validation_only))
    if spec.fine_tunes and spec.name not in spec.fine_tunes:
        raise XmfastError(f"{spec.name} is made from a trained run by " + spelled(
            f"xmfast.training.finetune(RUN, OUT, model={spec.name!r})", f"`xmfast finetune RUN --model {spec.name}`"))
    if spec.needs_sources and not resolve_sources(dataset, config.sources):
        raise XmfastError(f"{spec.name} learns across markets: give source markets "
                          "(" + spelled("TrainConfig(sources=('de',)), or ('all',)", "--sources de, or all") + ")")

    resolve_device(config.device)  # a device this machine lacks is refused before the run directory exists
    observer = _with_log(observer, tensorboard, Path(out), fine_tuned=False)  # tensorboard missing: refused here too

    def create() -> tuple[dict[str, Run], Run]:
        check_build(spec, Sizes(dataset.n_groups, dataset.n_items, len(dataset.markets)), model_config)
        runs = find_pretrained(dataset, spec, model_config, config, Path(out), pretrained)
        return runs, Run.create(out, run_info(dataset, spec, model_config, config, runs), overwrite=overwrite,
                                inputs=[dataset.path, *(r.path for r in runs.values())])

    runs, run = distributed.on_main(create)
    with distributed.writing(run):
        trainer = trainer_for(spec)(dataset, run, spec, model_config, config, pretrained=runs, observer=observer,
                                      stop_after=stop_after, validation_only=validation_only)
        return trainer.fit()


def resume(run_path: Path, *, dataset_path: Path | None = None, observer: TrainObserver | None = None,
           stop_after: int | None = None, device: str | None = None,
           tensorboard: Path | None = None) -> TrainResult | None:
    """Continues an interrupted run from its last checkpoint; it ends where an uninterrupted run
    with the same settings would. A run stopped before its first epoch ended starts from epoch 0,
    so `resume` continues every unfinished run. `device` overrides the run's (a run started on a
    GPU continues on the CPU); it changes where the run trains, not its settings in run.json.
    `tensorboard` DIR continues the run's curves where :func:`train` (or :func:`finetune`) put them."""
    run = Run.open(run_path)
    if run.status == "finished":
        raise XmfastError(f"{run_path}: already finished; nothing to resume")
    if scores_origin(run):
        raise XmfastError(scores_origin(run))
    spec = get_model(run.model)
    if not spec.trained:
        raise XmfastError(f"{run_path}: a {spec.name} run has no training to resume; train it again")
    dataset = run.load_dataset(dataset_path)
    model_config = spec.config_from(run.info["model_config"], recorded=True)
    config = run_train_config(run)
    if device is not None:
        config = replace(config, device=device)
    resolve_device(config.device)
    observer = _with_log(observer, tensorboard, Path(run_path), fine_tuned="base" in run.info.get("pretrained", {}))
    distributed.init(config.device)
    pretrained = {name: Run.open(Path(p)) for name, p in run.info.get("pretrained", {}).items()}
    with distributed.writing(run):
        trainer = trainer_for(spec)(dataset, run, spec, model_config, config, pretrained=pretrained,
                                      observer=observer, stop_after=stop_after)
        if run.finished_an_epoch:
            trainer.restore()
        else:  # killed before its first checkpoint: nothing to continue, so it starts over
            if distributed.is_main():
                run.write_metrics([])
            (observer or TrainObserver()).on_message(f"{run_path}: no epoch had finished; training it from epoch 0")
        return trainer.fit()




def log_name(run_path: Path, *, fine_tuned: bool) -> str:
    """A run's directory under ``--tensorboard DIR``: its own name, or for a fine-tuned run (one
    of ``finetune``'s OUT/<market>) OUT's name and the market, so `resume` finds either again."""
    path = Path(run_path).resolve()
    return f"{path.parent.name}/{path.name}" if fine_tuned else path.name


def _with_log(observer: Any, tensorboard: Path | None, run_path: Path, *, fine_tuned: bool) -> Any:
    """`observer`, joined by a TensorBoard log of the run when `tensorboard` is given."""
    if tensorboard is None:
        return observer
    from xmfast.training.tensorboard import with_tensorboard

    return with_tensorboard(observer, Path(tensorboard) / log_name(run_path, fine_tuned=fine_tuned))


def _train_baseline(dataset: PreparedDataset, out: Path, spec: Model, model_config: Any, config: TrainConfig,
                    *, overwrite: bool, validation_only: bool = False) -> TrainResult | None:
    """A model without a training loop: fitted, evaluated and written as a run like any other.
    With `validation_only` (a tuning trial) it is fitted and validated once (valid.json, status
    "validated"), the test split never scored, and returns None."""
    run = Run.create(out, run_info(dataset, spec, model_config, config), overwrite=overwrite, inputs=[dataset.path])
    scorer = spec.fit(dataset, model_config, resolve_sources(dataset, config.sources))
    if validation_only:
        with run.writing():
            evaluate_run_split(dataset, scorer, run, "valid")
            run.save_info(status="validated")
        return None
    with run.writing():
        valid, test = evaluate_run_splits(dataset, scorer, run)
        write_results(run, None, valid, test, extra={})
    return TrainResult(run, 0, 0, valid, test)


def load_scorer(run: Run, dataset: PreparedDataset, *, device: str = "auto",
                checkpoint: Literal["best", "last"] | None = None) -> Any:
    """A scorer for a finished (or interrupted) run: its model with the selected checkpoint, or
    a model without training fitted again on the dataset."""
    fitted = fitted_scorer(run, dataset)
    if fitted is not None:
        return fitted
    spec, model_config = run_model(run)
    which = checkpoint or run.info["train_config"].get("select", "best")
    path = run.best_checkpoint if which == "best" else run.last_checkpoint
    if not path.is_file():
        raise XmfastError(f"{path}: missing; the run has no {which} checkpoint (status {run.status})")
    dev = resolve_device(device)
    model = spec.build(Sizes(dataset.n_groups, dataset.n_items, len(dataset.markets)), model_config)
    load_weights(model, read_checkpoint(path, run)["model"], path)
    model = model.to(dev)
    spec.attach(model, training_view(dataset, run_train_config(run), tuple(run.sources)))
    return ModelScorer(model, dev)


def run_train_config(run: Run) -> TrainConfig:
    """The training settings a run was made with."""
    from xmfast._added import fill_absent

    return config_from_dict(TrainConfig, fill_absent(TrainConfig, run.info["train_config"]))
