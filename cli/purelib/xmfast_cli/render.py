"""Rich presentation of results: tables and progress. No computation happens here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # annotations only: `models` and `compare` need no numpy
    from xmfast.stats import CrossMarket, MarketStats

console = Console()
err_console = Console(stderr=True)
# Off a terminal (a pipe, a log file, Slurm, CI) a line stays one line, as grep and tail expect;
# rich would break it at 80 columns. Tables are drawn as plain text there anyway (see Grid).
for _c in (console, err_console):
    _c.soft_wrap = not _c.is_terminal


# ---- tables that never cut a number ---------------------------------------------------------
@dataclass
class Grid:
    """A table's content, apart from how it is drawn: :func:`show` draws it as a rich table on a
    terminal (split into column groups that fit, never an ellipsis in a number) and as plain,
    complete text anywhere else (a pipe, a Slurm or CI log), where rich would cut it at 80
    columns. Cells may hold rich markup (bold for the best value); plain text drops it."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    # Headers for a narrow terminal (e.g. `N@10` for `ndcg@10`); default: the headers.
    short: list[str] | None = None
    keys: int = 1  # leading columns that name a row, repeated in every column group
    left: int | None = None  # columns aligned left (default: the key columns); the rest right
    note: str = ""  # a footnote under the table (what a column means)

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"{len(cells)} cells for {len(self.headers)} columns")
        self.rows.append(list(cells))


_SHORT_METRIC = {"hr": "HR", "ndcg": "N", "precision": "P", "map": "MAP", "mrr": "MRR", "auc": "AUC", "recall": "R"}


def short_metric(name: str) -> str:
    """`ndcg@10` → `N@10`, `precision@5` → `P@5`, `mrr` → `MRR`: headers for narrow tables."""
    base, at, k = name.partition("@")
    return _SHORT_METRIC.get(base, base) + at + k


def _plain(cell: str) -> str:
    return Text.from_markup(cell).plain


def _widths(grid: Grid, headers: list[str]) -> list[int]:
    return [max([Text.from_markup(h).cell_len] + [Text.from_markup(r[c]).cell_len for r in grid.rows])
            for c, h in enumerate(headers)]


def plain_text(grid: Grid) -> str:
    """The table as aligned plain text, every cell complete (for pipes and log files)."""
    headers = [_plain(h) for h in grid.headers]
    rows = [[_plain(c) for c in r] for r in grid.rows]
    widths = [max([len(h)] + [len(r[c]) for r in rows]) for c, h in enumerate(headers)]
    left = grid.keys if grid.left is None else grid.left

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [_plain(grid.title), line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    if grid.note:
        out.append(_plain(grid.note))
    return "\n".join(out)


def _column_groups(widths: list[int], keys: int, room: int) -> list[list[int]]:
    """The non-key columns split into the fewest consecutive groups, as even in size as possible,
    that each fit `room` cells beside the key columns (a rich table with borders costs 3 cells
    per column plus 1). A column too wide for any group gets one of its own."""
    base = 1 + sum(w + 3 for w in widths[:keys])
    columns = list(range(keys, len(widths)))
    if not columns:
        return [[]]
    for n in range(1, len(columns) + 1):
        size, extra = divmod(len(columns), n)
        groups, start = [], 0
        for g in range(n):
            end = start + size + (1 if g < extra else 0)
            groups.append(columns[start:end])
            start = end
        if all(base + sum(widths[c] + 3 for c in group) <= room or len(group) == 1 for group in groups):
            return groups
    return [[c] for c in columns]


def rich_tables(grid: Grid, width: int) -> list[Table]:
    """The grid as rich tables for a terminal `width` cells wide: full headers if they fit, else
    the short ones, else the columns split into groups (each repeating the key columns). Number
    columns never wrap or shrink; only a long key (a run name) may fold onto a second line."""
    headers = grid.headers
    widths = _widths(grid, headers)
    if 1 + sum(w + 3 for w in widths) > width and grid.short is not None:
        headers = grid.short
        widths = _widths(grid, headers)
    left = grid.keys if grid.left is None else grid.left
    groups = _column_groups(widths, grid.keys, width)
    tables = []
    for g, group in enumerate(groups):
        title = grid.title if len(groups) == 1 else f"{grid.title} ({g + 1}/{len(groups)})"
        last = g == len(groups) - 1
        table = Table(title=title, caption=grid.note if last and grid.note else None, caption_justify="left")
        columns = list(range(grid.keys)) + group
        for c in columns:
            if c < grid.keys:
                table.add_column(headers[c], justify="left" if c < left else "right", overflow="fold")
            else:
                table.add_column(headers[c], justify="left" if c < left else "right", no_wrap=True,
                                 min_width=widths[c])
        for r in grid.rows:
            table.add_row(*[r[c] for c in columns])
        tables.append(table)
    return tables


def show(*grids: Grid, to: Console | None = None) -> None:
    """Prints tables where a person or a log will read them: see :class:`Grid`."""
    out = to or console
    for grid in grids:
        if out.is_terminal:
            for table in rich_tables(grid, out.width):
                out.print(table)
        else:
            out.print(plain_text(grid), markup=False, highlight=False, soft_wrap=True, emoji=False)


def live() -> bool:
    """Whether progress displays are shown: only on an interactive standard error. Elsewhere
    (a pipe, a log file) rich's transient display leaves nothing but a blank line on stop, which
    would stand before an `error:` line or after the output."""
    return err_console.is_interactive


def market_table(stats: Sequence[MarketStats], target: str, title: str) -> Grid:
    table = Grid(title, ["market", "users", "items", "ratings", "density", f"items shared with {target}"],
                 short=["market", "users", "items", "ratings", "density", f"shared w/ {target}"])
    for s in stats:
        name = f"[bold]{s.market}[/] (target)" if s.market == target else s.market
        table.add_row(
            name, f"{s.users:,}", f"{s.items:,}", f"{s.ratings:,}", f"{s.density:.4%}",
            f"{s.shared_items:,} ({s.shared_share:.0%})",
        )
    return table


def overlap_tables(cm: CrossMarket) -> list[Grid]:
    items = Grid("Items shared between markets", ["", *cm.markets])
    pairs = Grid("Co-occurring item pairs shared between markets (row's pairs also seen in column)", ["", *cm.markets])
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
    """A transient spinner that shows which step a long command is in (nothing, and rich's
    progress module not even imported, where nothing is shown: see :func:`live`)."""
    if not live():
        yield lambda name: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def on_step(name: str) -> None:
            progress.update(task, description=f"{description}: {name}")

        yield on_step


def figure(value: float | None) -> str:
    """A metric for a table; None (no query to average over) is shown as such, not as nan."""
    return "n/a" if value is None else f"{value:.4f}"


def results_table(evaluation, title: str) -> Grid:  # noqa: ANN001 - xmfast.evaluation.Evaluation
    """Per-market and overall means of every metric, with query counts."""
    metrics = list(evaluation.metrics)
    table = Grid(title, ["market", "queries", *metrics], short=["market", "queries", *map(short_metric, metrics)])
    counts = evaluation.counts()
    per_market = evaluation.per_market()
    for market, values in per_market.items():
        table.add_row(market, f"{counts[market]:,}", *[figure(values[m]) for m in evaluation.metrics])
    if len(per_market) == 1:  # the "all" row would repeat the market's
        return table
    overall = evaluation.aggregate()
    table.add_row("[bold]all[/]", f"[bold]{len(evaluation):,}[/]", *[f"[bold]{figure(overall[m])}[/]" for m in evaluation.metrics])
    return table


def comparison_table(table) -> Grid:  # noqa: ANN001 - xmfast.compare.ComparisonTable
    """`xmfast compare`: one row per result, the mean of each metric over the shared queries, and
    one column of the test against the reference (see :func:`comparison_footnote`)."""
    from rich.markup import escape

    metric = table.test_metric
    head = f"Δ {metric} vs {escape(table.reference)} (p, Holm)"
    grid = Grid(f"{len(table.rows)} results on {table.queries:,} shared queries (split {table.split or '?'}, ties "
                f"{table.ties or '?'}): mean of each metric",
                ["model", *table.metrics, head],
                short=["model", *map(short_metric, table.metrics), f"Δ {short_metric(metric)} (p, Holm)"])
    for row in table.rows:
        cells = [f"{row.means[m]:.4f}" for m in table.metrics]
        if row.tests is None:
            test = "reference"
        else:
            c = row.tests[metric]
            test = f"{c.difference:+.4f} ({c.t_adjusted:.2g})" + (" ✱" if c.significant else "")
        grid.add_row(escape(row.name), *cells, test)
    return grid


def comparison_footnote(table) -> str:  # noqa: ANN001 - xmfast.compare.ComparisonTable
    """What the mark column means: the test, the correction and the family."""
    from xmfast.compare import footnote

    return (f"{footnote(table.reference, table.test_metric, table.family)}; the number in brackets is that adjusted "
            "p. --tests lists every metric's paired t (raw and Holm), Wilcoxon and sign p-values.")


def comparison_tests_table(table) -> Grid:  # noqa: ANN001 - xmfast.compare.ComparisonTable
    """`xmfast compare --tests`: every metric of every row against the reference, with all three tests."""
    from rich.markup import escape

    grid = Grid(f"Paired tests against {escape(table.reference)} over {table.queries:,} queries (two-sided; "
                "Holm within each metric)",
                ["model", "metric", "Δ", "wins/losses", "t p", "t p (Holm)", "Wilcoxon p", "sign p"], keys=2)
    for row in table.rows:
        for m in table.metrics if row.tests else ():
            c = row.tests[m]
            grid.add_row(escape(row.name), m, f"{c.difference:+.4f}" + (" ✱" if c.significant else ""),
                         f"{c.wins}/{c.losses}", f"{c.t_pvalue:.2e}", f"{c.t_adjusted:.2e}", f"{c.wilcoxon_pvalue:.2e}",
                         f"{c.sign_pvalue:.2e}")
    return grid


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[callable]:
    """A transient bar for chunked work; yields `update(done, total)` (a no-op where nothing is
    shown, as :func:`steps`)."""
    if not live():
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


class TrainProgress:
    """Epoch and batch bars for `xmfast train` (an :class:`xmfast.training.TrainObserver`):
    the batch bar shows the running loss and instances/s; each finished epoch prints a line."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

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
        self.epoch = 0  # the last finished epoch of the training in progress, of `epochs`
        self.epochs = 0

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def on_start(self, trainer) -> None:  # noqa: ANN001 - xmfast.training.Trainer
        cfg = trainer.config
        self._monitor = cfg.monitor
        self.epoch, self.epochs = trainer.epoch, cfg.epochs
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
        self.epoch = record["epoch"]
        self.progress.update(self.epoch_task, advance=1, info=f"valid {self._monitor} {v[self._monitor]:.4f}")
        self.on_message(epoch_line(record))

    def on_message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)


def epoch_line(record: dict) -> str:
    """A finished epoch, as its metrics.jsonl record says: loss, speed, validation."""
    v = record["valid"]
    mark = " [green]best[/]" if record["best"] else ""
    return (f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}  {record['instances_per_s'] or 0:,.0f} inst/s  "
            f"valid hr@10 {v['hr@10']:.4f} ndcg@10 {v['ndcg@10']:.4f}{mark}")


def train_summary(result) -> Grid:  # noqa: ANN001 - xmfast.training.TrainResult
    """Validation and test results of a finished run."""
    run = result.run
    what = f"epoch {result.selected_epoch} of {result.epochs_run}" if result.epochs_run else "no training"
    early = ", stopped early" if result.stopped_early else ""
    from xmfast.models import label_of

    name = label_of(run.info)
    sources = f", sources {', '.join(run.sources)}" if run.sources else ""
    metrics = list(result.test.metrics)
    table = Grid(f"{name} → {run.path} ({what}{early}; target {run.info['target']}{sources}, {len(result.test):,} test users)",
                 ["split", *metrics], short=["split", *map(short_metric, metrics)])
    for name, ev in (("valid", result.valid), ("test", result.test)):
        agg = ev.aggregate()
        table.add_row(name, *[figure(agg[m]) for m in ev.metrics])
    return table


SHOWN_USERS = 20  # `recommend` prints a table per user for at most this many; more go to a CSV (-o)


def recommendations_table(recs, dataset, limit: int = SHOWN_USERS) -> list[Grid]:  # noqa: ANN001
    """One small table per user (at most `limit` users), the last saying what the score is."""
    tables = []
    rows = recs.rows(dataset)
    by_user: dict[tuple[str, str], list] = {}
    for market, user, rank, item, score in rows:
        by_user.setdefault((market, user), []).append((rank, item, score))
    from rich.markup import escape

    for (market, user), items in list(by_user.items())[:limit]:
        t = Grid(f"top {len(items)} for user {escape(user)} ({market})", ["rank", "item", "score"], left=2)
        for rank, item, score in items:
            t.add_row(str(rank), escape(item), f"{score:.4f}")
        tables.append(t)
    if tables:
        tables[-1].note = escape(f"score: {recs.score_meaning}; higher is better (items are ranked by it).")
    return tables


class ExperimentProgress(TrainProgress):
    """`xmfast run`: an overall bar over the stages that run, with the epoch and batch bars of
    the current training beneath it (one live display: rich allows only one at a time)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_task = None
        self.stage: str | None = None  # the stage running now, and its place among those to run
        self.place = ""
        self.ended = 0  # stages run to their end

    def interrupted(self, again: str) -> str:
        """After Ctrl-C: the stage it stopped in, what of it is saved, and the command `again`
        that continues (a re-run reuses finished stages and resumes a run from its checkpoint)."""
        if self.stage is None:
            done = f"{self.ended} stages had finished" if self.ended else "no stage had started"
            return f"{done}; continue with {again}"
        stopped = f"stage {self.stage} ({self.place}) stopped" + (
            f" after epoch {self.epoch} of {self.epochs}; its checkpoint is saved" if self.epoch
            else " before its first epoch ended" if self.epochs else "")
        return f"{stopped}; finished stages are kept; continue with {again}"

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
        self.stage, self.place, self.epoch, self.epochs = stage.id, f"{index} of {total}", 0, 0
        self.progress.update(self.stage_task, info=stage.id)
        self.on_message(f"[{index}/{total}] {verb} {stage.kind} {stage.id}")

    def on_stage_end(self, stage, seconds: float) -> None:  # noqa: ANN001
        self.stage = None
        self.ended += 1
        self.progress.advance(self.stage_task)

    def training_observer(self, stage):  # noqa: ANN001, ANN201
        return self


class StagesProgress:
    """`xmfast run --jobs N`: the overall bar over the stages that run and a bar under it for
    each stage running now (its epochs; the epoch in progress and its loss beside it); a line
    when a stage starts, at each epoch it finishes (named by the stage) and when it ends."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=err_console, transient=True, disable=not live(),
        )
        self.stage_task = None
        self.tasks: dict[str, object] = {}  # running stage -> its bar
        self.place: dict[str, str] = {}  # running stage -> "3 of 40"
        self.epochs: dict[str, tuple[int, int]] = {}  # running stage -> (last finished epoch, epochs)
        self.batches: dict[str, int] = {}  # running stage -> batches of its epoch in progress
        self.monitor: dict[str, str] = {}
        self.ended = 0

    def __enter__(self) -> StagesProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def interrupted(self, again: str) -> str:
        """After Ctrl-C: the stages it stopped, what of each is saved, and the command `again`
        that continues (a re-run reuses finished stages and resumes each run from its checkpoint)."""
        if not self.tasks:
            done = f"{self.ended} stages had finished" if self.ended else "no stage had started"
            return f"{done}; continue with {again}"

        def saved(stage: str) -> str:  # as ExperimentProgress says it of the one stage a serial run stops in
            epoch, epochs = self.epochs.get(stage, (0, 0))
            return (f"; after epoch {epoch} of {epochs}, its checkpoint saved" if epoch
                    else "; before its first epoch ended" if epochs else "")

        stopped = ", ".join(f"{s} ({self.place[s]}{saved(s)})" for s in self.tasks)
        return (f"{'stage' if len(self.tasks) == 1 else 'stages'} {stopped} stopped; finished stages are kept; "
                f"continue with {again}")

    def on_plan(self, plan, actions) -> None:  # noqa: ANN001 - xmfast.experiment.Plan
        todo = sum(1 for a in actions.values() if a != "cached")
        self.on_message(f"[bold]{plan.experiment.name}[/]: {len(plan.stages)} stages, {todo} to run, "
                        f"{len(plan.stages) - todo} reused")
        self.stage_task = self.progress.add_task("stages", total=todo, info="")

    def on_stage_start(self, stage, action, index: int, total: int) -> None:  # noqa: ANN001
        from rich.markup import escape

        verb = {"resume": "resuming", "run": "running"}[action]
        self.place[stage.id] = f"{index} of {total}"
        self.tasks[stage.id] = self.progress.add_task(f"  {escape(stage.id)}", total=None, info="")
        self.on_message(f"[{index}/{total}] {verb} {stage.kind} {escape(stage.id)}")

    def on_stage_event(self, stage, event) -> None:  # noqa: ANN001 - xmfast.experiment.Stage, StageEvent
        from rich.markup import escape

        task = self.tasks[stage.id]
        if event.kind == "start":
            self.epochs[stage.id] = (event.epoch, event.epochs)
            self.monitor[stage.id] = event.monitor
            self.progress.update(task, total=event.epochs, completed=event.epoch)
        elif event.kind == "epoch_start":
            self.batches[stage.id] = event.batches
            self.progress.update(task, info=f"epoch {event.epoch}")
        elif event.kind == "batch":
            loss = "" if event.loss is None else f", loss {event.loss:.4f}"
            self.progress.update(task, info=f"epoch {event.epoch}: {event.batches}/{self.batches.get(stage.id, 0)} "
                                            f"batches{loss}")
        elif event.kind == "epoch_end":
            record = event.record
            monitor = self.monitor.get(stage.id, "ndcg@10")
            self.epochs[stage.id] = (record["epoch"], self.epochs.get(stage.id, (0, 0))[1])
            self.progress.update(task, completed=record["epoch"],
                                 info=f"valid {monitor} {record['valid'][monitor]:.4f}")
            self.on_message(f"{escape(stage.id)} {epoch_line(record)}")
        elif event.kind == "message":
            self.on_message(f"{escape(stage.id)}: {escape(event.text)}")

    def on_stage_end(self, stage, seconds: float) -> None:  # noqa: ANN001
        from rich.markup import escape

        self.progress.remove_task(self.tasks.pop(stage.id))
        for facts in (self.place, self.epochs, self.batches, self.monitor):
            facts.pop(stage.id, None)
        self.ended += 1
        self.progress.advance(self.stage_task)
        self.on_message(f"finished {escape(stage.id)} ({seconds:.0f} s)")

    def training_observer(self, stage):  # noqa: ANN001, ANN201 - stages report through on_stage_event
        return None

    def on_message(self, text: str) -> None:  # a line each, however long: lines of several stages interleave
        self.progress.console.print(text, highlight=False, soft_wrap=True)


def plan_table(plan, actions) -> Grid:  # noqa: ANN001 - xmfast.experiment.Plan
    """`xmfast run --dry-run`: every stage, what it depends on and what running would do."""
    todo = sum(1 for a in actions.values() if a != "cached")
    t = Grid(f"{plan.experiment.name}: {len(plan.stages)} stages, {todo} to run ({plan.experiment.out})",
             ["stage", "kind", "after", "action"], left=4)
    style = {"cached": "dim", "resume": "yellow", "run": "bold"}
    for s in plan.stages:
        t.add_row(s.id, s.kind, ", ".join(d.rsplit("/", 1)[-1] for d in s.deps if not d.endswith("/dataset")) or "–",
                  f"[{style[actions[s.id]]}]{actions[s.id]}[/]")
    return t


def report_table(report) -> list[Grid]:  # noqa: ANN001 - xmfast.report.Report
    """The report's main table, one per market, for the terminal (:func:`report_notes` under them)."""
    from rich.markup import escape

    tables = []
    metrics = list(report.metrics)
    def test(vs) -> str:  # noqa: ANN001 - xmfast.compare.PairedTest or None
        return "–" if vs is None else f"{vs.mean_difference:+.4f} ({vs.p_adjusted:.2g})" + (" ✱" if vs.significant else "")

    for s in report.sections:  # as the markdown: the dataset tells apart two of one market, seeds are their values
        baseline = s.baseline or "baseline"
        t = Grid(f"{s.target} (protocol {s.protocol}, dataset {s.fingerprint[:12]}, {s.users:,} test users)",
                 ["model", "seeds", *metrics, f"Δ vs {report.reference} (p, Holm)", f"Δ vs {baseline} (p, Holm)"],
                 short=["model", "seeds", *map(short_metric, metrics), f"Δ {report.reference} (p, Holm)",
                        f"Δ {baseline} (p, Holm)"])
        for r in s.rows:
            cells = []
            for m in report.metrics:
                text = f"{r.mean[m]:.4f}" + (f" ± {r.std[m]:.4f}" if len(r.runs) > 1 else "")
                cells.append(f"[bold]{text}[/]" if r.name in s.best[m] else text)
            t.add_row(escape(r.name), ", ".join(map(str, r.seeds)), *cells, test(r.vs_reference), test(r.vs_baseline))
        tables.append(t)
    return tables


def leaderboard_tables(boards) -> list[Grid]:  # noqa: ANN001 - xmfast.leaderboard.Board
    """Each leaderboard for the terminal: the mean per market, bold where best, † on the market's
    best baseline and +✱ / −✱ where significantly above / below it (the markdown has the differences)."""
    from rich.markup import escape

    from xmfast.compare import MARK
    from xmfast.leaderboard import BEST_BASELINE

    tables = []
    for b in boards:
        t = Grid(f"leaderboard, protocol {b.protocol} (test {b.metric})", ["model", *b.columns, f"{MARK} wins"])
        for r in b.rows:
            cells = []
            for c in b.columns:
                cell = r.cells.get(c)
                if cell is None:
                    cells.append("–")
                    continue
                text = f"{cell.mean:.4f}"
                text = f"[bold]{text}[/]" if cell.best else text
                sign = "+" if (cell.diff or 0) > 0 else "−"
                mark = BEST_BASELINE if cell.best_baseline else (sign + MARK if cell.significant else "")
                cells.append(text + (f" {mark}" if mark else ""))
            t.add_row(escape(r.name), *cells, "–" if r.baseline else f"{r.wins()}/{len(r.cells)}")
        t.note = (f"{BEST_BASELINE} the market's best baseline; +{MARK} / −{MARK} significantly above / below it "
                  f"(Holm); {MARK} wins: markets significantly above it")
        tables.append(t)
    return tables


def report_notes(report) -> list[str]:  # noqa: ANN001 - xmfast.report.Report
    """Lines under the report's tables: what the mark means, how rows of one model differ."""
    from xmfast.compare import footnote
    from xmfast.report import TEST_METRIC

    out = []
    for s in report.sections:
        family = sum(r.vs_reference is not None for r in s.rows)
        if family:
            out.append(f"{s.target}: {footnote(report.reference, TEST_METRIC, family)}")
        out += [f"{s.target}: {name}: {text}" for name, text in s.legend.items()]
    return out


def models_listing(entries: list, to: Console | None = None) -> None:  # noqa: ANN001
    """`xmfast models`: each registered model (or the error that keeps one from loading), what
    training it has and what it starts from, then its description on its own wrapped line, so
    that nothing is cut at 80 columns."""
    import textwrap

    from rich.markup import escape

    out = to or console
    out.print("Registered models (`xmfast models NAME` describes one):", highlight=False, markup=False)
    width = max((len(name) for name, _ in entries), default=0)
    for name, m in entries:
        if isinstance(m, str):
            out.print(f"  [bold]{escape(name.ljust(width))}[/]  [red]cannot be loaded[/]: {escape(m)}", highlight=False)
            continue
        if not m.trained:
            how = "baseline, no training" if m.baseline else "no training loop"
        elif m.fine_tunes and m.name not in m.fine_tunes:
            how = f"fine-tunes {' or '.join(m.fine_tunes)} runs ({m.objective})"
        else:
            how = f"objective {m.objective}" + (", then fine-tuned on the target" if m.name in m.fine_tunes else "")
        starts = ", ".join(dict.fromkeys(m.requires(m.config_type()).values()))
        if starts:
            how += f"; starts from {starts}"
        out.print(f"  [bold]{escape(name.ljust(width))}[/]  {escape(how)}", highlight=False)
        pad = " " * (width + 4)
        text = textwrap.fill(m.description, width=max(out.width, 40), initial_indent=pad, subsequent_indent=pad)
        out.print(f"[dim]{escape(text)}[/]", highlight=False, soft_wrap=True)


def model_settings_table(model) -> Grid:  # noqa: ANN001 - xmfast.models.Model
    """One model's settings: the option (and TOML key) of each, its type and default."""
    from rich.markup import escape

    from xmfast.configs import setting_options, settings_of

    options = setting_options(model.config_type)
    short = {s.path: o for o, s in options.items() if o.count(".") == 0 and o != s.option}
    t = Grid(f"{model.name}: {model.description}", ["option", "TOML key", "type", "default"], left=3)
    for s in settings_of(model.config_type):
        option = short.get(s.path, s.option)
        import typing

        if typing.get_origin(s.hint) is typing.Literal:
            hint = " | ".join(map(str, typing.get_args(s.hint)))
        else:
            hint = str(s.hint) if typing.get_origin(s.hint) else getattr(s.hint, "__name__", str(s.hint))
        default = ",".join(map(str, s.default)) if isinstance(s.default, tuple) else str(s.default)
        t.add_row(escape(option), escape(".".join(s.path)), escape(hint), escape(default))
    for slot, dep in model.starts_from.items():
        t.add_row(escape(f"--{slot.replace('_', '-')}-run"), "–", "run directory",
                  escape(f"a finished {dep} run next to --out"))
    return t
