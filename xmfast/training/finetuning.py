"""Fine-tuning: a finished run continued per market, one run each (FOREC's forks with a market
head, ACMR's second stage). Which runs a model fine-tunes and how its configuration follows the
base run's are the model's declarations (``fine_tunes``, ``config_from_base``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from xmfast.errors import XmfastError
from xmfast.models import Sizes, get_model, model_names
from xmfast.models.schedule import TrainConfig
from xmfast.runs import Run, for_market
from xmfast.training import distributed
from xmfast.training.engine import _with_log, check_build, run_info, trainer_for
from xmfast.training.loop import TrainObserver, TrainResult, resolve_device


def fine_tuned_models() -> list[str]:
    """The registered models made by fine-tuning (nothing is loaded but their declarations)."""
    out = []
    for name in model_names():
        try:
            if get_model(name).fine_tunes:
                out.append(name)
        except XmfastError:  # a broken plug-in does not hide the others
            continue
    return out


def finetune(
    base: Path,
    out: Path,
    markets: list[str] | None = None,
    model_config: Any = None,
    config: TrainConfig | None = None,
    *,
    model: str,
    overwrite: bool = False,
    observer: TrainObserver | None = None,
    stop_after: int | None = None,
    given: dict[str, Any] | None = None,
    tensorboard: Path | None = None,
) -> dict[str, TrainResult | None]:
    """Fine-tunes a finished run on single markets with `model`, one run per market, `out/<market>`
    (FOREC forks a MAML or NMF++ run and fine-tunes a market head; ACMR continues its
    pre-training on the market alone).

    `markets` default to the base run's target; ``["all"]`` means its target and sources. A run
    pre-trained with the sources in full has seen their held-out items, so it is fine-tuned on
    its target only. `model_config` None takes the settings from the base run (see the model's
    ``config_from_base``); `config` None means the model's fine-tuning defaults. `given` holds
    the settings the user named (nested plain values): one the base run decides otherwise is
    an error, never ignored. `tensorboard` DIR: each run's curves and hyper-parameters also go to
    DIR/<name of `out`>/<market> (see :mod:`xmfast.training.tensorboard`)."""
    spec = get_model(model)
    if not spec.fine_tunes:
        raise XmfastError(f"model {spec.name} is not made by fine-tuning (fine-tuned models: "
                          f"{', '.join(fine_tuned_models()) or 'none'})")
    base_run = Run.open(base)
    bases = spec.fine_tunes
    if base_run.model not in bases or base_run.status != "finished":
        raise XmfastError(f"{base}: {spec.name} fine-tunes a finished {' or '.join(bases)} run "
                          f"(this is a {base_run.status} {base_run.model} run)")
    dataset = base_run.load_dataset()
    base_config = get_model(base_run.model).config_from(base_run.info["model_config"], recorded=True)
    if model_config is not None and not isinstance(model_config, spec.config_type):
        raise XmfastError(f"model {spec.name} takes a {spec.config_type.__name__}, not {type(model_config).__name__}")
    model_config = spec.config_from_base(model_config, base_run.model, base_config)
    _refuse_overridden(spec, model_config, given or {}, base)
    check_build(spec, Sizes(dataset.n_groups, dataset.n_items, len(dataset.markets)), model_config)
    run_markets = [dataset.target, *base_run.sources]
    wanted = run_markets if markets == ["all"] else (markets or [dataset.target])
    unknown = [m for m in wanted if m not in dataset.markets]
    if unknown:
        raise XmfastError(f"market {unknown[0]!r} is not in the dataset (it has {', '.join(dataset.markets)})")
    if base_run.info["train_config"].get("sources_in_full") and base_run.sources:
        leaky = [m for m in wanted if m != dataset.target]
        if leaky:
            raise XmfastError(f"{base}: pre-trained with the held-out items of {', '.join(base_run.sources)} as "
                              f"training rows, so it cannot be evaluated on {leaky[0]}; fine-tune it on "
                              f"{dataset.target} only")
    config = replace(config, sources=()) if config is not None else spec.finetune_config()
    from xmfast import outputs
    from xmfast._io import check_output

    inputs = [base_run.path, dataset.path]
    check_output(Path(out), outputs.FINETUNE_DIR, inputs=inputs)
    resolve_device(config.device)  # a device this machine lacks is refused before any run directory exists
    logs = {m: _with_log(observer, tensorboard, Path(out) / m, fine_tuned=True) for m in dict.fromkeys(wanted)}  # before any run
    distributed.init(config.device)
    for market in dict.fromkeys(wanted):
        for_market(dataset, market).require_evaluated_users()  # before any run is created
    results: dict[str, TrainResult | None] = {}
    for market in dict.fromkeys(wanted):
        data = for_market(dataset, market)
        run = distributed.on_main(lambda: Run.create(Path(out) / market, run_info(
            data, spec, model_config, config, {"base": base_run}), overwrite=overwrite, inputs=inputs))
        with distributed.writing(run):
            trainer = trainer_for(spec)(data, run, spec, model_config, config, pretrained={"base": base_run},
                                          observer=logs[market], stop_after=stop_after)
            results[market] = trainer.fit()  # None when stopped by `stop_after` (resumable)
    return results


def _refuse_overridden(model: Any, config: Any, given: dict[str, Any], base: Path, prefix: tuple[str, ...] = ()) -> None:
    """Each setting in `given` must be what `config` (after the base run's settings) holds."""
    for key, value in given.items():
        if isinstance(value, dict):
            _refuse_overridden(model, getattr(config, key), value, base, (*prefix, key))
            continue
        kept = getattr(config, key)
        if kept != value:
            option = "--" + ".".join(p.replace("_", "-") for p in (*prefix, key))
            raise XmfastError(f"{option}: {model.name} takes this setting from the run it fine-tunes ({base} has "
                              f"{kept!r}); drop it")

