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
