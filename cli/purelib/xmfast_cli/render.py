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
        console=err_console, transient=True,
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
        console=err_console, transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update
