"""Rich presentation of results: tables and progress. No computation happens here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from xmfast.stats import CrossMarket, MarketStats

console = Console()
err_console = Console(stderr=True)


def live() -> bool:
    """Whether progress displays are shown: only on an interactive standard error. Elsewhere
    (a pipe, a log file) rich's transient display leaves nothing but a blank line on stop, which
    would stand before an `error:` line or after the output."""
    return err_console.is_interactive


def market_table(stats: Sequence[MarketStats], target: str, title: str) -> Table:
    table = Table(title=title)
    for col in ("market", "users", "items", "ratings", "density", f"items shared with {target}"):
        table.add_column(col, justify="left" if col == "market" else "right")
    for s in stats:
        name = f"[bold]{s.market}[/] (target)" if s.market == target else s.market
        table.add_row(
            name, f"{s.users:,}", f"{s.items:,}", f"{s.ratings:,}", f"{s.density:.4%}",
            f"{s.shared_items:,} ({s.shared_share:.0%})",
        )
    return table


def overlap_tables(cm: CrossMarket) -> list[Table]:
    items = Table(title="Items shared between markets")
    pairs = Table(title="Co-occurring item pairs shared between markets (row's pairs also seen in column)")
    for t in (items, pairs):
        t.add_column("")
        for m in cm.markets:
            t.add_column(m, justify="right")
    for a, name in enumerate(cm.markets):
        items.add_row(name, *[f"{v:,}" for v in cm.shared_items[a]])
        own = cm.pairs[a]
        pairs.add_row(
            f"{name} ({own:,} pairs)",
            *[f"{v / own:.0%}" if own else "-" for v in cm.shared_pairs[a]],
        )
    return [items, pairs]


@contextlib.contextmanager
def steps(description: str) -> Iterator[callable]:
    """A transient spinner that shows which step a long command is in."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=err_console, transient=True, disable=not live(),
    ) as progress:
        task = progress.add_task(description, total=None)

        def on_step(name: str) -> None:
            progress.update(task, description=f"{description}: {name}")

        yield on_step


def results_table(evaluation, title: str) -> Table:  # noqa: ANN001 - xmfast.evaluation.Evaluation
    """Per-market and overall means of every metric, with query counts."""
    table = Table(title=title)
    table.add_column("market")
    table.add_column("queries", justify="right")
    for m in evaluation.metrics:
        table.add_column(m, justify="right")
    counts = evaluation.counts()
    for market, values in evaluation.per_market().items():
        table.add_row(market, f"{counts[market]:,}", *[f"{values[m]:.4f}" for m in evaluation.metrics])
    overall = evaluation.aggregate()
    table.add_row("[bold]all[/]", f"[bold]{len(evaluation):,}[/]", *[f"[bold]{overall[m]:.4f}[/]" for m in evaluation.metrics])
    return table


def comparison_table(comparison) -> Table:  # noqa: ANN001 - xmfast.compare.Comparison
    table = Table(title=f"B = {comparison.name_b} against A = {comparison.name_a} ({comparison.queries:,} paired queries)")
    for col in ("metric", "A", "B", "B-A", "wins/losses", "t p", "Wilcoxon p", "sign p"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for c in comparison.metrics:
        mark = "*" if c.wilcoxon_pvalue < 0.05 else ""
        table.add_row(
            c.metric, f"{c.mean_a:.4f}", f"{c.mean_b:.4f}", f"{c.difference:+.4f}{mark}", f"{c.wins}/{c.losses}",
            f"{c.t_pvalue:.1e}", f"{c.wilcoxon_pvalue:.1e}", f"{c.sign_pvalue:.1e}",
        )
    return table


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[callable]:
    """A transient bar for chunked work; yields `update(done, total)`."""
    from rich.progress import BarColumn, MofNCompleteColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True, disable=not live(),
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


class TrainProgress:
    """Epoch and batch bars for `xmfast train` (an :class:`xmfast.training.TrainObserver`):
    the batch bar shows the running loss and instances/s; each finished epoch prints a line."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err_console, transient=True,
            disable=not live(),
        )
        self.epoch_task = None
        self.batch_task = None
        self._started = 0.0
        self._instances = 0
        self._monitor = "ndcg@10"

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def on_start(self, trainer) -> None:  # noqa: ANN001 - xmfast.training.Trainer
        cfg = trainer.config
        self._monitor = cfg.monitor
        markets = ", ".join(f"{m} {trainer.rows.count(m):,}" for m in trainer.rows.markets)
        self.on_message(
            f"[bold]{trainer.spec.name}[/] on {trainer.dataset.target} ({'sources ' + ', '.join(trainer.sources) if trainer.sources else 'target only'}); "
            f"training rows: {markets}; device {trainer.device}; epochs {trainer.epoch + 1}–{cfg.epochs}"
        )
        from rich.markup import escape

        from xmfast.training import describe_pretrained

        for record in trainer.pretrained.values():  # which run it starts from (also in run.json)
            self.progress.console.print(f"{trainer.spec.name} starts from {escape(describe_pretrained(record))}",
                                        highlight=False, soft_wrap=True)  # a path stays on one line
        self.epoch_task = self.progress.add_task("epochs", total=cfg.epochs, completed=trainer.epoch, info="")

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        import time

        self._started = time.perf_counter()
        self._instances = 0
        if self.batch_task is not None:
            self.progress.remove_task(self.batch_task)
        self.batch_task = self.progress.add_task(f"epoch {epoch}", total=batches, info="")

    def on_batch(self, mean_loss: float | None, instances: int) -> None:
        import time

        self._instances += instances
        if mean_loss is not None:
            rate = self._instances / max(time.perf_counter() - self._started, 1e-9)
            self.progress.update(self.batch_task, advance=1, info=f"loss {mean_loss:.4f}, {rate:,.0f} inst/s")
        else:
            self.progress.advance(self.batch_task)

    def on_epoch_end(self, record: dict) -> None:
        v = record["valid"]
        mark = " [green]best[/]" if record["best"] else ""
        self.progress.update(self.epoch_task, advance=1, info=f"valid {self._monitor} {v[self._monitor]:.4f}")
        self.on_message(
            f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}  {record['instances_per_s'] or 0:,.0f} inst/s  "
            f"valid hr@10 {v['hr@10']:.4f} ndcg@10 {v['ndcg@10']:.4f}{mark}"
        )

    def on_message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)


def train_summary(result) -> Table:  # noqa: ANN001 - xmfast.training.TrainResult
    """Validation and test results of a finished run."""
    run = result.run
    what = f"epoch {result.selected_epoch} of {result.epochs_run}" if result.epochs_run else "baseline"
    early = ", stopped early" if result.stopped_early else ""
    from xmfast.models import get_model

    spec = get_model(run.model)
    name = run.model + ("++" if run.sources and spec.neural and not (spec.cross_market or spec.fine_tuned) else "")
    sources = f", sources {', '.join(run.sources)}" if run.sources else ""
    table = Table(title=f"{name} → {run.path} ({what}{early}; target {run.info['target']}{sources}, {len(result.test):,} test users)")
    table.add_column("split")
    for m in result.test.metrics:
        table.add_column(m, justify="right")
    for name, ev in (("valid", result.valid), ("test", result.test)):
        agg = ev.aggregate()
        table.add_row(name, *[f"{agg[m]:.4f}" for m in ev.metrics])
    return table


def recommendations_table(recs, dataset, limit: int = 20) -> list[Table]:  # noqa: ANN001
    """One small table per user (at most `limit` users)."""
    tables = []
    rows = recs.rows(dataset)
    by_user: dict[tuple[str, str], list] = {}
    for market, user, rank, item, score in rows:
        by_user.setdefault((market, user), []).append((rank, item, score))
    from rich.markup import escape

    for (market, user), items in list(by_user.items())[:limit]:
        t = Table(title=f"top {len(items)} for user {escape(user)} ({market})")
        t.add_column("rank", justify="right")
        t.add_column("item")
        t.add_column("score", justify="right")
        for rank, item, score in items:
            t.add_row(str(rank), escape(item), f"{score:.4f}")
        tables.append(t)
    return tables


class ExperimentProgress(TrainProgress):
    """`xmfast run`: an overall bar over the stages that run, with the epoch and batch bars of
    the current training beneath it (one live display: rich allows only one at a time)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_task = None

    def on_plan(self, plan, actions) -> None:  # noqa: ANN001 - xmfast.experiment.Plan
        todo = sum(1 for a in actions.values() if a != "cached")
        self.on_message(f"[bold]{plan.experiment.name}[/]: {len(plan.stages)} stages, {todo} to run, "
                        f"{len(plan.stages) - todo} reused")
        self.stage_task = self.progress.add_task("stages", total=todo, info="")

    def on_stage_start(self, stage, action, index: int, total: int) -> None:  # noqa: ANN001
        for task in (self.epoch_task, self.batch_task):
            if task is not None:
                self.progress.remove_task(task)
        self.epoch_task = self.batch_task = None
        verb = {"resume": "resuming", "run": "running"}[action]
        self.progress.update(self.stage_task, info=stage.id)
        self.on_message(f"[{index}/{total}] {verb} {stage.kind} {stage.id}")

    def on_stage_end(self, stage, seconds: float) -> None:  # noqa: ANN001
        self.progress.advance(self.stage_task)

    def training_observer(self, stage):  # noqa: ANN001, ANN201
        return self


def plan_table(plan, actions) -> Table:  # noqa: ANN001 - xmfast.experiment.Plan
    """`xmfast run --dry-run`: every stage, what it depends on and what running would do."""
    todo = sum(1 for a in actions.values() if a != "cached")
    t = Table(title=f"{plan.experiment.name}: {len(plan.stages)} stages, {todo} to run "
                    f"({plan.experiment.out})")
    t.add_column("stage", no_wrap=True)
    t.add_column("kind")
    t.add_column("after")
    t.add_column("action")
    style = {"cached": "dim", "resume": "yellow", "run": "bold"}
    for s in plan.stages:
        t.add_row(s.id, s.kind, ", ".join(d.rsplit("/", 1)[-1] for d in s.deps if not d.endswith("/dataset")) or "–",
                  f"[{style[actions[s.id]]}]{actions[s.id]}[/]")
    return t


def report_table(report) -> list[Table]:  # noqa: ANN001 - xmfast.report.Report
    """The report's main table, one per market, for the terminal."""
    tables = []
    for s in report.sections:
        t = Table(title=f"{s.target} (protocol {s.protocol}, {s.users:,} test users)")
        t.add_column("model")
        t.add_column("seeds", justify="right")
        for m in report.metrics:
            t.add_column(m, justify="right")
        t.add_column("Δ vs nmf (p)", justify="right")
        for r in s.rows:
            cells = []
            for m in report.metrics:
                text = f"{r.mean[m]:.4f}" + (f" ± {r.std[m]:.4f}" if len(r.runs) > 1 else "")
                cells.append(f"[bold]{text}[/]" if r.name in s.best[m] else text)
            vs = r.vs_nmf
            t.add_row(r.name, str(len(r.runs)), *cells,
                      "–" if vs is None else f"{vs.mean_difference:+.4f} ({vs.p:.2g})")
        tables.append(t)
    return tables
