"""Tables never cut a number: at 80 columns on a terminal (short headers, then column groups)
and in a pipe or log file (plain, complete text)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from xmfast.evaluation import EvalConfig, evaluate_scorer
from xmfast.prepare import PrepareConfig, prepare
from xmfast_cli.app import app
from xmfast_cli.render import Grid, plain_text, results_table, short_metric, show

MEASURES = ("hr", "ndcg", "mrr", "auc", "map", "precision")


def _terminal(width: int) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, force_terminal=True, color_system=None, legacy_windows=False), buffer


def _pipe() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False), buffer


@pytest.fixture(scope="module")
def evaluation(sample_dir: Path):  # noqa: ANN201
    from xmfast.models.baselines import PopularityScorer

    ds = prepare(sample_dir, None, PrepareConfig(target="in", sources="all"))
    config = EvalConfig(cutoffs=(5, 10, 20), measures=MEASURES)
    return evaluate_scorer(ds, "test", PopularityScorer(ds), config, markets=list(ds.markets))


def _numbers(evaluation) -> set[str]:  # noqa: ANN001
    values = {f"{v:.4f}" for per in evaluation.per_market().values() for v in per.values()}
    values |= {f"{v:.4f}" for v in evaluation.aggregate().values()}
    return values


def test_short_metric_names() -> None:
    assert [short_metric(m) for m in ("ndcg@10", "hr@5", "precision@20", "map@10", "mrr", "auc", "other@3")] == [
        "N@10", "HR@5", "P@20", "MAP@10", "MRR", "AUC", "other@3"]


@pytest.mark.parametrize("width", [60, 80, 160])
def test_every_number_appears_whole_on_a_terminal(evaluation, width: int) -> None:  # noqa: ANN001
    grid = results_table(evaluation, "pop on the sample (test, sampled candidates)")
    assert len(grid.headers) == 2 + 3 * 4 + 2  # 4 cut-off metrics at 3 cut-offs, mrr, auc
    out, buffer = _terminal(width)
    show(grid, to=out)
    text = buffer.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    cells = set(re.findall(r"\d\.\d{4}", text))
    assert _numbers(evaluation) <= cells
    # every market row shows up in every column group, so each number can be read against its market
    groups = text.count("market")
    assert groups >= (1 if width >= 160 else 2)
    for market in evaluation.per_market():
        assert text.count(f" {market} ") >= groups


def test_short_headers_come_before_column_groups() -> None:
    grid = Grid("t", ["market", "ndcg@10", "precision@10"], short=["market", "N@10", "P@10"])
    grid.add_row("in", "0.1234", "0.5678")
    out, buffer = _terminal(30)  # full headers need 1 + 9 + 10 + 15 = 35 cells, short ones 26
    show(grid, to=out)
    text = buffer.getvalue()
    assert "N@10" in text and "P@10" in text and "ndcg" not in text
    assert text.count("market") == 1


def test_plain_text_in_a_pipe_is_complete(evaluation) -> None:  # noqa: ANN001
    grid = results_table(evaluation, "pop")
    out, buffer = _pipe()
    show(grid, to=out)
    text = buffer.getvalue()
    assert text == plain_text(grid) + "\n"
    assert "…" not in text and "━" not in text and "[bold]" not in text
    assert _numbers(evaluation) <= set(re.findall(r"\d\.\d{4}", text))
    header = text.splitlines()[1].split()
    assert header == ["market", "queries", *evaluation.metrics]  # full names where there is room
    assert text.splitlines()[-1].split()[0] == "all"


def test_plain_text_alignment() -> None:
    grid = Grid("title [bold]x[/]", ["model", "ndcg@10"])
    grid.add_row("[bold]nmf++[/]", "[bold]0.5[/]")
    grid.add_row("pop", "0.25")
    assert plain_text(grid) == "title x\nmodel  ndcg@10\n-----  -------\nnmf++      0.5\npop       0.25"


def test_grid_rejects_a_ragged_row() -> None:
    with pytest.raises(ValueError):
        Grid("t", ["a", "b"]).add_row("1")


def test_evaluate_into_a_pipe_prints_every_number(sample_dir: Path, tmp_path: Path) -> None:
    """The CLI's output captured as Slurm or CI would (not a terminal): every metric in full."""
    runner = CliRunner()
    ds = tmp_path / "ds"
    assert runner.invoke(app, ["prepare", str(sample_dir), "-t", "in", "-s", "all", "-o", str(ds)]).exit_code == 0
    out_json = tmp_path / "pop.json"
    r = runner.invoke(app, ["evaluate", str(ds), "--baseline", "pop", "--measures", ",".join(MEASURES),
                            "--markets", "", "--json", str(out_json), "--no-per-user"])
    assert r.exit_code == 0, r.output
    assert "…" not in r.output
    saved = json.loads(out_json.read_text())
    printed = set(re.findall(r"\d\.\d{4}", r.output))
    expected = {f"{v:.4f}" for v in saved["overall"].values()}
    expected |= {f"{v:.4f}" for per in saved["per_market"].values() for v in per.values()}
    assert len(expected) > 20 and expected <= printed


# ---- issue 22, item 9 -----------------------------------------------------------------------------
def test_one_market_has_no_second_all_row(sample_dir: Path) -> None:
    from xmfast.models.baselines import PopularityScorer

    ds = prepare(sample_dir, None, PrepareConfig(target="in", sources="all"))
    one = evaluate_scorer(ds, "test", PopularityScorer(ds), EvalConfig(), markets=["in"])
    grid = results_table(one, "pop")
    assert [r[0] for r in grid.rows] == ["in"]  # the old table repeated it as "all"
    assert plain_text(grid).splitlines()[-1].split()[:2] == ["in", f"{len(one):,}"]
    two = evaluate_scorer(ds, "test", PopularityScorer(ds), EvalConfig(), markets=["in", "de"])
    assert [_plain_cell(r[0]) for r in results_table(two, "pop").rows] == ["in", "de", "all"]


def _plain_cell(cell: str) -> str:
    from rich.text import Text

    return Text.from_markup(cell).plain


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("recommend")
    runner = CliRunner()
    ds = str(root / "ds")
    assert runner.invoke(app, ["prepare", str(sample_dir), "-t", "in", "-s", "de", "-o", ds]).exit_code == 0
    for model, extra in (("pop", []), ("cooc", ["--sources", "de"])):
        r = runner.invoke(app, ["train", ds, "-m", model, *extra, "-o", str(root / model)])
        assert r.exit_code == 0, r.output
    return root


def _users(run: Path, n: int) -> list[str]:
    from xmfast.runs import Run

    data = Run.open(run).load_dataset(None)
    groups = [g for g in range(data.n_groups) if data.markets[int(data.group_market[g])] == "in"][:n]
    return [data.users[int(data.group_user[g])] for g in groups]


@pytest.mark.parametrize(("model", "meaning"), [
    ("pop", "score: the item's number of training ratings in the user's market; higher is better"),
    ("cooc", ("score: how often the item co-occurs with the user's items in the training histories of in, de, "
              "summed over the user's items; higher is better")),
])
def test_recommend_says_what_its_score_is(baseline_runs: Path, model: str, meaning: str) -> None:
    users = _users(baseline_runs / model, 2)
    r = CliRunner().invoke(app, ["recommend", str(baseline_runs / model), "-u", users[0], "-u", users[1], "-k", "3"])
    assert r.exit_code == 0, r.output
    assert " ".join(r.output.split()).count(meaning) == 1  # once, under the last table
    assert r.output.rstrip().splitlines()[-1].startswith("score:")
    # on a terminal too, as the caption of the last table
    from xmfast.recommend import recommend, select_groups
    from xmfast.runs import Run
    from xmfast.training import load_scorer
    from xmfast_cli.render import recommendations_table

    run = Run.open(baseline_runs / model)
    data = run.load_dataset(None)
    recs = recommend(data, load_scorer(run, data, device="cpu"), select_groups(data, users), 3)
    out, buffer = _terminal(80)
    show(*recommendations_table(recs, data), to=out)
    assert " ".join(buffer.getvalue().split()).count(meaning.split(";")[0]) == 1


def test_a_neural_model_scores_by_its_logit_and_a_silent_scorer_gets_a_default(baseline_runs: Path) -> None:
    import numpy as np

    from xmfast.recommend import SCORE_MEANING, recommend, select_groups
    from xmfast.runs import Run
    from xmfast.training.loop import ModelScorer

    assert "logit" in ModelScorer.meaning

    class Silent:  # a scorer of the user's own, which does not say what its scores are
        def score_all(self, groups, items):  # noqa: ANN001, ANN202
            return np.zeros((len(groups), len(items)))

    data = Run.open(baseline_runs / "pop").load_dataset(None)
    recs = recommend(data, Silent(), select_groups(data, _users(baseline_runs / "pop", 1)), 2)
    assert recs.score_meaning == SCORE_MEANING


def test_recommend_for_many_users_asks_for_a_file(baseline_runs: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["recommend", str(baseline_runs / "pop"), "--all-users"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "-o FILE" in lines[0]
    assert "top " not in r.output  # the old command printed a table per user
    n = len(_users(baseline_runs / "pop", 10**9))
    assert f"{n:,} users would print {n:,} tables" in lines[0]
    # the command line's messages name its options, where the library's name Python arguments
    r = runner.invoke(app, ["recommend", str(baseline_runs / "pop"), "--all-users", "-u", _users(baseline_runs / "pop", 1)[0]])
    assert r.exit_code == 2
    assert " ".join(r.output.split()) == "error: give either --all-users or the users (--user, --users-file), not both"
    # a users file of 21 is refused as well; 20 are shown; with -o every user is written
    ids = tmp_path / "ids"
    ids.write_text("\n".join(_users(baseline_runs / "pop", 21)))
    assert runner.invoke(app, ["recommend", str(baseline_runs / "pop"), "--users-file", str(ids)]).exit_code == 2
    ids.write_text("\n".join(_users(baseline_runs / "pop", 20)))
    r = runner.invoke(app, ["recommend", str(baseline_runs / "pop"), "--users-file", str(ids), "-k", "1"])
    assert r.exit_code == 0 and r.output.count("top 1 for user") == 20
    r = runner.invoke(app, ["recommend", str(baseline_runs / "pop"), "--all-users", "-k", "1", "-o", str(tmp_path / "r.csv")])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 1 + n
