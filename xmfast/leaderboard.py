"""The leaderboard: one table per protocol, models as rows and target markets as columns.

A report's sections answer "which model is best on this market"; the question the field asks is
"which model is best across markets", and a model only counts as progress where it beats the
strongest *baseline* of its market (pop, cooc, EASE, ItemKNN, …) with significance. The
leaderboard therefore reuses, unchanged, each section's means and its paired tests against the
best baseline (Holm over the rows of the market, as the section's own Δ column), and adds one
count per model: on how many markets it is significantly above that baseline.

It reads the report's objects by attribute only and does not import :mod:`xmfast.report`, which
renders it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xmfast.compare import ALPHA, CORRECTION, MARK

# The report's Report, Section and Row, read by attribute only (the report imports this module)
Report = Section = Row = Any

BEST_BASELINE = "†"  # marks the cell of the baseline the market's tests are against


@dataclass
class Cell:
    mean: float
    std: float
    seeds: int
    best: bool  # the best mean of its column
    best_baseline: bool  # the baseline the column's tests are against
    diff: float | None = None  # mean difference to that baseline (None for itself, or untested)
    significant: bool = False  # Holm-adjusted p < ALPHA, either direction
    p_adjusted: float | None = None

    @property
    def wins(self) -> bool:
        """Significantly above the market's best baseline."""
        return self.significant and self.diff is not None and self.diff > 0


@dataclass
class BoardRow:
    name: str
    baseline: bool
    cells: dict[str, Cell] = field(default_factory=dict)  # column -> cell

    def wins(self) -> int:
        return sum(c.wins for c in self.cells.values())


@dataclass
class Board:
    protocol: str
    metric: str
    columns: list[str]  # one per section: the target (with its dataset when a target has several)
    rows: list[BoardRow]

    def leaders(self) -> list[BoardRow]:
        """The rows significantly above the best baseline on more than half of the columns."""
        return [r for r in self.rows if not r.baseline and 2 * r.wins() > len(self.columns)]


def _sources_kind(row: Row) -> str:
    markets = max((x.markets for x in row.runs), default=0)
    if not row.sources:
        return ""
    if markets and len(row.sources) == markets - 1 and len(row.sources) > 1:
        return "all others"
    return ", ".join(row.sources)


def _key(section: Section, row: Row) -> tuple[str, str, str]:
    # The same model across markets: its label, which sources (by kind: "all others" is the same
    # choice whatever the target), and how its settings differ from its label's other rows in
    # that market (empty unless a market has several, so tuned per-market values stay one row).
    return row.label, _sources_kind(row), section.legend.get(row.name, "")


def build_boards(report: Report, metric: str, is_baseline: Any) -> list[Board]:
    """One board per protocol with at least two target markets (a single market's section is
    already its own leaderboard). `is_baseline(row)` says whether a row is a baseline."""
    by_protocol: dict[str, list[Section]] = {}
    for s in report.sections:
        by_protocol.setdefault(s.protocol, []).append(s)
    boards = []
    for protocol, sections in by_protocol.items():
        if len({s.target for s in sections}) < 2:
            continue
        targets = [s.target for s in sections]
        columns = [s.target if targets.count(s.target) == 1 else f"{s.target} ({s.fingerprint[:8]})" for s in sections]
        rows: dict[tuple[str, str, str], BoardRow] = {}
        for column, s in zip(columns, sections):
            for r in s.rows:
                board_row = rows.setdefault(_key(s, r), BoardRow("", bool(is_baseline(r))))
                t = r.vs_baseline
                board_row.cells[column] = Cell(
                    r.mean[metric], r.std[metric], len(r.runs), r.name in s.best.get(metric, ()),
                    r.name == s.baseline, None if t is None else t.mean_difference,
                    bool(t is not None and t.significant), None if t is None else t.p_adjusted)
        _name(rows)
        boards.append(Board(protocol, metric, columns, list(rows.values())))
    return boards


def _name(rows: dict[tuple[str, str, str], BoardRow]) -> None:
    for (label, kind, legend), row in rows.items():
        same = [k for k in rows if k[0] == label]
        name = label
        if len({k[1] for k in same}) > 1:
            name += f" ({kind or 'target only'})"
        if legend:
            name += f" [{legend}]"
        row.name = name


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    text = f"{cell.mean:.4f}"
    if cell.best:
        text = f"**{text}**"
    if cell.best_baseline:
        return f"{text} {BEST_BASELINE}"
    if cell.diff is not None:
        text += f" ({cell.diff:+.3f}{' ' + MARK if cell.significant else ''})"
    return text


def render_boards(boards: Sequence[Board]) -> list[str]:
    """Markdown lines: a leaderboard per protocol, its legend, and what it shows in one sentence."""
    lines: list[str] = []
    for b in boards:
        metric = b.metric.upper()
        lines += [f"## Leaderboard, protocol {b.protocol} (test {metric})", ""]
        head = ["model", *b.columns, f"{MARK} above best baseline"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in b.rows:
            wins = "–" if r.baseline else f"{r.wins()} of {len(r.cells)}"
            lines.append("| " + " | ".join([r.name, *(_cell_text(r.cells.get(c)) for c in b.columns), wins]) + " |")
        lines.append("")
        lines += [f"Mean test {metric} over seeds; **bold** is the best of its market; {BEST_BASELINE} marks the "
                  f"market's best baseline (by mean), and every other cell shows its difference to it, with "
                  f"{MARK} when a {CORRECTION}-adjusted paired t-test over users gives p < {ALPHA} (the family is "
                  "the market's rows, as in the market's own table below). The last column counts the markets where "
                  "a model is significantly above that baseline.", ""]
        lines += [_verdict(b), ""]
    return lines


def _verdict(board: Board) -> str:
    """The finding, stated plainly either way."""
    markets = len(board.columns)
    leaders = board.leaders()
    if leaders:
        names = ", ".join(f"{r.name} ({r.wins()} of {len(r.cells)})" for r in leaders)
        return f"Significantly above the best baseline on most of the {markets} markets: {names}."
    models = [r for r in board.rows if not r.baseline]
    if not models:
        return "No model other than baselines is in this protocol's runs."
    top = max(models, key=lambda r: r.wins())
    if not top.wins():
        return f"No model is significantly above the best baseline on any of the {markets} markets."
    return (f"No model is significantly above the best baseline on most of the {markets} markets; "
            f"the most is {top.wins()} ({top.name}).")


def boards_records(boards: Iterable[Board]) -> list[dict[str, Any]]:
    """The boards as plain records (for JSON)."""
    return [{"protocol": b.protocol, "metric": b.metric, "model": r.name, "baseline": r.baseline,
             "above best baseline": r.wins(),
             "cells": {c: None if c not in r.cells else {
                 "mean": r.cells[c].mean, "std": r.cells[c].std, "seeds": r.cells[c].seeds,
                 "best": r.cells[c].best, "best baseline": r.cells[c].best_baseline,
                 "diff": r.cells[c].diff, f"p {CORRECTION}": r.cells[c].p_adjusted,
                 "significant": r.cells[c].significant} for c in b.columns}}
            for b in boards for r in b.rows]


__all__ = ["Board", "BoardRow", "Cell", "build_boards", "render_boards", "boards_records", "BEST_BASELINE"]
