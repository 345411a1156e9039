"""The leaderboard: models as rows and markets as columns, each cell the section's own mean and
its test against the market's best baseline, and a plain count of significant wins."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from xmfast.compare import PairedTest
from xmfast.experiment import plan, read_experiment, run_experiment
from xmfast.leaderboard import BEST_BASELINE, build_boards, render_boards
from xmfast.report import build_report, collect_runs, leaderboards, write_report


def _row(label: str, mean: float, *, sources: tuple[str, ...] = (), diff: float | None = None,
         p: float = 1.0, name: str | None = None) -> NS:
    test = None if diff is None else PairedTest(n=10, mean_difference=diff, t=1.0, p=p, p_adjusted=p)
    return NS(label=label, name=name or label, sources=sources, mean={"ndcg@10": mean}, std={"ndcg@10": 0.01},
              runs=[NS(markets=4)] * 3, vs_baseline=test)


def _section(target: str, rows: list[NS], baseline: str, protocol: str = "forec") -> NS:
    top = max(r.mean["ndcg@10"] for r in rows)
    return NS(protocol=protocol, target=target, fingerprint=target * 8, rows=rows, baseline=baseline,
              best={"ndcg@10": {r.name for r in rows if r.mean["ndcg@10"] == top}}, legend={})


def _hand_report() -> NS:
    others = ("de", "jp", "uk")
    in_rows = [_row("pop", 0.30, diff=-0.10, p=0.001), _row("cooc", 0.40),
               _row("nmf", 0.45, diff=0.05, p=0.01), _row("nmf++", 0.42, sources=others, diff=0.02, p=0.2)]
    jp_rows = [_row("pop", 0.20), _row("cooc", 0.18, diff=-0.02, p=0.5),
               _row("nmf", 0.26, diff=0.06, p=0.001), _row("nmf++", 0.19, sources=("de", "in", "uk"), diff=-0.01, p=0.9)]
    uk_rows = [_row("pop", 0.50), _row("nmf", 0.55, diff=0.05, p=0.04)]
    return NS(sections=[_section("in", in_rows, "cooc"), _section("jp", jp_rows, "pop"), _section("uk", uk_rows, "pop"),
                        _section("in", [_row("pop", 0.7)], "pop", protocol="acmr")])


def test_cells_wins_and_names_by_hand() -> None:
    boards = build_boards(_hand_report(), "ndcg@10", lambda r: r.label in ("pop", "cooc"))
    assert [b.protocol for b in boards] == ["forec"]  # acmr has one market: no leaderboard
    b = boards[0]
    assert b.columns == ["in", "jp", "uk"]
    rows = {r.name: r for r in b.rows}
    assert list(rows) == ["pop", "cooc", "nmf", "nmf++"]  # nmf++ on every market: "all others" either way
    nmf = rows["nmf"]
    assert [nmf.cells[c].diff for c in b.columns] == [0.05, 0.06, 0.05]
    assert nmf.wins() == 3 and rows["nmf++"].wins() == 0 and not rows["nmf++"].cells["in"].wins
    assert rows["cooc"].cells["in"].best_baseline and rows["pop"].cells["jp"].best_baseline
    assert "uk" not in rows["cooc"].cells
    assert nmf.cells["in"].best and not rows["nmf++"].cells["in"].best
    assert [r.name for r in b.leaders()] == ["nmf"]
    text = "\n".join(render_boards(boards))
    assert "| nmf | **0.4500** (+0.050 ✱) | **0.2600** (+0.060 ✱) | **0.5500** (+0.050 ✱) | 3 of 3 |" in text
    assert f"| cooc | 0.4000 {BEST_BASELINE} | 0.1800 (-0.020) | – | – |" in text
    assert "Significantly above the best baseline on most of the 3 markets: nmf (3 of 3)." in text


def test_a_negative_finding_is_said_plainly() -> None:
    report = _hand_report()
    for s in report.sections:
        for r in s.rows:
            if r.vs_baseline is not None:
                r.vs_baseline = PairedTest(n=10, mean_difference=r.vs_baseline.mean_difference, t=1.0, p=0.3, p_adjusted=0.3)
    report.sections[0].rows[2].vs_baseline = PairedTest(n=10, mean_difference=0.05, t=3.0, p=0.001, p_adjusted=0.001)
    (b,) = build_boards(report, "ndcg@10", lambda r: r.label in ("pop", "cooc"))
    assert b.leaders() == []
    assert ("No model is significantly above the best baseline on most of the 3 markets; the most is 1 (nmf)."
            in render_boards([b]))


def test_sources_that_differ_by_market_kind_split_rows() -> None:
    report = _hand_report()
    report.sections[1].rows[3].sources = ("de",)  # jp's nmf++ from one source only
    (b,) = build_boards(report, "ndcg@10", lambda r: r.label in ("pop", "cooc"))
    assert [r.name for r in b.rows] == ["pop", "cooc", "nmf", "nmf++ (all others)", "nmf++ (de)"]


@pytest.fixture(scope="module")
def two_markets(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("board") / "runs"
    path = out.parent / "e.toml"
    path.write_text(f'data = "{sample_dir}"\nout = "{out}"\ntargets = ["in", "jp"]\nsources = ["de"]\n'
                    'models = ["pop", "cooc", "gmf"]\nseeds = [1, 2]\ndevice = "cpu"\n[train]\nepochs = 1\n',
                    encoding="utf-8")
    run_experiment(plan(read_experiment(path)))
    return out


def test_the_report_leads_with_the_board_from_its_own_sections(two_markets: Path, tmp_path: Path) -> None:
    report = build_report(collect_runs([two_markets]))
    (b,) = leaderboards(report)
    sections = {s.target: s for s in report.sections}
    for row in b.rows:
        for market, cell in row.cells.items():
            (same,) = [r for r in sections[market].rows if r.label == row.name]
            assert cell.mean == same.mean["ndcg@10"] and cell.seeds == 2
            assert cell.best_baseline == (same.name == sections[market].baseline)
            assert cell.diff == (None if same.vs_baseline is None else same.vs_baseline.mean_difference)
    out = write_report(report, tmp_path / "r.md", plots=False)
    text = out.read_text(encoding="utf-8")
    assert text.index("## Leaderboard, protocol forec") < text.index("## in (protocol forec")
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert {r["model"] for r in data["leaderboards"]} == {r.name for r in b.rows}


def test_the_cli_shows_the_board_first(two_markets: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from xmfast_cli.app import app

    r = CliRunner().invoke(app, ["report", str(two_markets), "-o", str(tmp_path / "r.md"), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert r.output.index("leaderboard, protocol forec") < r.output.index("in (protocol forec")
    assert "wins" in r.output


def test_no_win_anywhere_is_said_so() -> None:
    report = _hand_report()
    for s in report.sections:
        for r in s.rows:
            if r.vs_baseline is not None and r.vs_baseline.mean_difference > 0:
                r.vs_baseline = PairedTest(n=10, mean_difference=0.01, t=1.0, p=0.3, p_adjusted=0.3)
    (b,) = build_boards(report, "ndcg@10", lambda r: r.label in ("pop", "cooc"))
    assert "No model is significantly above the best baseline on any of the 3 markets." in render_boards([b])
