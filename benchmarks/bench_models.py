"""What every model costs (issue 23): per registered model and target market, the time to fit a
model without training, or the time of one training epoch of a trained one, on the real XMarket
files with the machine's cores (or its GPU: `--device`), beside each trained model's default
number of epochs, so that a reader can see what a whole leaderboard stage costs.

The models are the registry's (a model registered later appears by itself), each as the
leaderboard's experiment file of `--protocol` (experiments/leaderboard-forec.toml by default)
lists it (`ease` and `ease++`, `nmf` and `nmf++`), and one the file does not list by its name.
Each target market is planned and trained as `xmfast run` would that file (its settings, its
first seed, the six other markets as sources), so prerequisites come with their model: MAML is
trained from an NMF++ run, FOREC fine-tuned from a MAML run (its own epochs are timed, not its
parent's), ACMR pre-trained on all markets and then fine-tuned on the target (two rows). Models
with a `pretrained` setting (NMF, MA-NMF) train from scratch: an epoch costs the same, and the
runs they would start from are rows of their own. Only the number of epochs is changed.

A fit is timed from the prepared dataset to a scorer (EASE: the Gram matrix, its Cholesky
inverse and B), median of `--repeat` after one untimed fit; a fit of more than `--once` seconds
is timed once, its first call (a warm-up would double the cost of the slowest models for a few
percent). An epoch is the engine's own `seconds` in metrics.jsonl (negatives, batches, steps;
validation not included), median over the timed epochs: `--epochs` (3), or `--history-epochs`
(1) for the models that train on histories (ACMR, SASRec: one epoch is long, and stable).

`--models` restricts the entries; the runs they start from are trained (and shown) too.
With the defaults (every model, all 7 markets) it took 50 minutes on 2 idle CPU cores
(2026-11-30), about half of it ACMR's pre-training epoch (219-256 s for every target: it trains
on all markets); one epoch per history model is the cheapest honest figure, so the
defaults cannot go lower without leaving a market or a model out. On a busy machine it is far
slower (torch's 2 threads wait for each other: that epoch took 999 s at 0.9 cores of other load).

    python benchmarks/bench_models.py                                  # every model, all 7 markets
    python benchmarks/bench_models.py --markets in --models gmf,acmr --epochs 2
    python benchmarks/bench_models.py --data data/sample --markets in,jp  # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    REAL_DATA,
    ROOT,
    OtherLoad,
    console,
    fmt_s,
    print_machine,
    print_torch,
    repeat,
    table,
    timed,
)
from rich.console import Console

from xmfast.errors import XmfastError
from xmfast.experiment import (
    ExperimentObserver,
    Plan,
    Stage,
    plan,
    read_experiment,
    run_experiment,
)
from xmfast.markets import DataSource
from xmfast.models import get_model, model_names

progress = Console(stderr=True)  # progress on stderr: stdout is the table RESULTS.md is made from


def leaderboard_entries(listed: tuple[str, ...]) -> list[str]:
    """Every registered model as the leaderboard lists it (its pooled variant too), in registry
    order; a model the leaderboard does not list, by its name."""
    by_model: dict[str, list[str]] = {}
    for entry in listed:
        by_model.setdefault(get_model(entry).name, []).append(entry)
    return [entry for name in model_names() for entry in by_model.get(name, [name])]


def from_scratch(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """[model.NAME] tables with ``pretrained = false`` for every model that has the setting."""
    out = dict(settings)
    for name in model_names():
        if any(f.name == "pretrained" for f in dataclasses.fields(get_model(name).config_type)):
            out[name] = {**out.get(name, {}), "pretrained": False}
    return out


def with_epochs(exp: Any, epochs: int, history_epochs: int) -> Any:
    """`exp` with every training and fine-tuning stage cut to the timed epochs."""
    def n(name: str) -> int:
        return history_epochs if get_model(name).batch == "histories" else epochs

    names = model_names()
    return dataclasses.replace(
        exp,
        train_by_model={name: {**exp.train_by_model.get(name, {}), "epochs": n(name)} for name in names},
        finetune_by_model={name: {**exp.finetune_by_model.get(name, {}), "epochs": n(name)}
                           for name in names if get_model(name).fine_tunes})


def market_plans(board: Any, data: Path, market: str, out: Path, entries: list[str], device: str,
                 epochs: int, history_epochs: int) -> tuple[Plan, Plan]:
    """The leaderboard `board` for one target market, its first seed and `entries` (NMF-family
    from scratch): planned as it is (the default epochs) and cut to the timed epochs."""
    exp = dataclasses.replace(board, data=DataSource(data), out=out, targets=(market,), seeds=board.seeds[:1],
                              models=tuple(entries), device=device, model_settings=from_scratch(board.model_settings))
    return plan(exp), plan(with_epochs(exp, epochs, history_epochs))


def schedule(stage: Stage) -> str:
    """A stage's default number of epochs, and its early stopping when it has one."""
    config = stage.settings["train_config"]
    return f"{config['epochs']}" + (f" (patience {config['patience']})" if config.get("patience") else "")


class Progress(ExperimentObserver):
    def on_stage_start(self, stage: Stage, action: str, index: int, total: int) -> None:
        progress.print(f"[dim]{stage.target}: {stage.label} ({index}/{total})[/]", highlight=False)

    def on_stage_end(self, stage: Stage, seconds: float) -> None:
        progress.print(f"[dim]{stage.target}: {stage.label} done in {fmt_s(seconds)}[/]", highlight=False)


def epoch_seconds(stage: Stage) -> float:
    lines = (stage.result_path / "metrics.jsonl").read_text().splitlines()
    return statistics.median(json.loads(line)["seconds"] for line in lines if line.strip())


def fit_seconds(stage: Stage, dataset: Any, n: int, once: float) -> float:
    from xmfast.training.rows import resolve_sources

    spec = get_model(stage.model)
    config = spec.config_from(stage.settings["model_config"], recorded=True)
    sources = resolve_sources(dataset, stage.sources) if stage.sources else ()
    first, _ = timed(lambda: spec.fit(dataset, config, sources))
    return first if first > once else statistics.median(repeat(lambda: spec.fit(dataset, config, sources), n, 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--markets", default="ca,de,fr,in,jp,mx,uk",
                        help="target markets, each with all other markets of --data as sources")
    parser.add_argument("--protocol", choices=("forec", "acmr"), default="forec",
                        help="the leaderboard file whose settings are timed: experiments/leaderboard-PROTOCOL.toml")
    parser.add_argument("--models", help="entries to time, as the leaderboard names them (gmf,gmf++,acmr); "
                        "default: every registered model")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per trained model")
    parser.add_argument("--history-epochs", type=int, default=1,
                        help="timed epochs of the models that train on histories (ACMR, SASRec)")
    parser.add_argument("--repeat", type=int, default=3, help="timed fits per model without training")
    parser.add_argument("--once", type=float, default=2.0, help="a fit longer than this (s) is timed once")
    parser.add_argument("--device", help="cpu, cuda (default: the leaderboard file's, auto)")
    args = parser.parse_args()

    source = ROOT / "experiments" / f"leaderboard-{args.protocol}.toml"
    board = read_experiment(source)
    entries = leaderboard_entries(board.models)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in entries]
        if unknown:
            raise XmfastError(f"--models: {unknown[0]!r} is not one of {', '.join(entries)}")
        entries = [e for e in entries if e in wanted]
    markets = [m.strip() for m in args.markets.split(",") if m.strip()]
    print_machine()
    load = OtherLoad()
    import torch

    device = args.device or board.device
    shown = device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    _, gpu = print_torch(shown)

    rows: dict[str, dict[str, str]] = {}
    epochs: dict[str, tuple[str, str]] = {}  # row -> (what is measured, default epochs)
    sizes: dict[str, str] = {}
    model_of: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for market in markets:
            default_plan, timed_plan = market_plans(board, args.data, market, Path(tmp) / market, entries, device,
                                                    args.epochs, args.history_epochs)
            defaults = {s.id: s for s in default_plan.stages}
            fitted = {s.id for s in timed_plan.stages if s.kind != "prepare" and not get_model(s.model).trained}
            run_experiment(Plan(timed_plan.experiment, [s for s in timed_plan.stages if s.id not in fitted]),
                           observer=Progress())
            from xmfast.dataset import PreparedDataset

            dataset = PreparedDataset.load(timed_plan.stages[0].path)
            sizes[market] = f"{int((dataset.train_market() == dataset.market_index(market)).sum()):,} target rows"
            for stage in timed_plan.stages:
                if stage.kind == "prepare":
                    continue
                model_of[stage.label] = stage.model
                if stage.id in fitted:
                    progress.print(f"[dim]{market}: {stage.label} (fit)[/]", highlight=False)
                    rows.setdefault(stage.label, {})[market] = fmt_s(fit_seconds(stage, dataset, args.repeat, args.once))
                    epochs.setdefault(stage.label, ("fit", "–"))
                else:
                    rows.setdefault(stage.label, {})[market] = fmt_s(epoch_seconds(stage))
                    epochs.setdefault(stage.label, ("epoch", schedule(defaults[stage.id])))
    threads = torch.get_num_threads()
    t = table(f"Protocol {args.protocol}: fit time, or median time of one training epoch (measured), per target "
              f"market; default epochs of a leaderboard run (not measured); device {shown}{gpu}, torch threads {threads}",
              ["model", "measured", "default epochs", *[f"{m} ({sizes[m]})" for m in markets]])
    order = model_names()  # registry order, a model's rows together (the plan puts pooled runs last)
    for name in sorted(rows, key=lambda r: order.index(model_of[r])):
        t.add_row(name, *epochs[name], *[rows[name].get(m, "–") for m in markets])
    console.print(t)
    load.report()


if __name__ == "__main__":
    try:
        main()
    except XmfastError as e:
        sys.exit(f"error: {e}")
