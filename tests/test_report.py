"""`xmfast report`: its numbers are the runs' own, its significance test is right on hand-made
cases, and published figures appear only beside runs on the data they were measured on."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xmfast.experiment import plan, read_experiment, run_experiment
from xmfast.report import (
    PublishedFigure,
    build_report,
    collect_runs,
    paired_t_test,
    read_published,
    render_markdown,
    write_report,
)
from xmfast.errors import XmfastError
from xmfast_cli.app import app

runner = CliRunner()


# ---- the paired t-test by hand -----------------------------------------------------------------
def test_paired_t_test_one_degree_of_freedom() -> None:
    # differences 1 and 3: mean 2, sd sqrt(2), standard error 1, so t = 2; with one degree of
    # freedom t is Cauchy-distributed: p = 1 - (2/pi) atan(|t|)
    r = paired_t_test([3.0, 5.0], [2.0, 2.0])
    assert r.n == 2 and r.mean_difference == pytest.approx(2.0)
    assert r.t == pytest.approx(2.0)
    assert r.p == pytest.approx(1 - 2 / math.pi * math.atan(2.0), rel=1e-9)


def test_paired_t_test_two_degrees_of_freedom() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1/sqrt(3)) = 2 sqrt(3); with two degrees of
    # freedom the two-sided p is 1 - |t| / sqrt(2 + t^2)
    r = paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    t = 2 * math.sqrt(3)
    assert r.t == pytest.approx(t)
    assert r.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    # the order of the arguments flips the sign, not p
    s = paired_t_test([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert s.t == pytest.approx(-t) and s.p == pytest.approx(r.p)


def test_paired_t_test_degenerate_cases() -> None:
    assert paired_t_test([0.5, 0.25], [0.5, 0.25]).p == 1.0
    constant = paired_t_test([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])  # every user gains exactly 1
    assert constant.p == 0.0 and constant.t == math.inf


# ---- against the runs' own files ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("report") / "runs"
    path = out.parent / "e.toml"
    path.write_text(f'data = "{sample_dir}"\nout = "{out}"\ntargets = ["in"]\nsources = ["de"]\n'
                    'models = ["pop", "cooc", "gmf", "mlp", "nmf", "gmf++"]\nseeds = [1, 2, 3]\ndevice = "cpu"\n'
                    "[train]\nepochs = 2\n", encoding="utf-8")
    run_experiment(plan(read_experiment(path)))
    return out


def test_report_numbers_equal_the_runs_json(tiny_runs: Path, tmp_path: Path) -> None:
    report = build_report(collect_runs([tiny_runs]))
    assert len(report.sections) == 1
    section = report.sections[0]
    names = [r.name for r in section.rows]
    assert names == ["pop", "cooc", "gmf", "mlp", "nmf", "gmf++"]
    for row in section.rows:
        setting = "single" if row.label in ("pop", "gmf", "mlp", "nmf") else "src-de"
        per_seed = [json.loads((tiny_runs / f"in/{setting}/s{s}/{row.label}/results.json").read_text())["test"]
                    for s in (1, 2, 3)]
        for m in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"):
            values = [r[m] for r in per_seed]
            assert row.mean[m] == pytest.approx(sum(values) / 3, abs=1e-12)
            assert row.std[m] == pytest.approx(float(np.std(values, ddof=1)), abs=1e-12)
        assert row.seeds == [1, 2, 3]
    for m in report.metrics:
        top = max(r.mean[m] for r in section.rows)
        assert section.best[m] == {r.name for r in section.rows if r.mean[m] == top}

    # the paired test of gmf against nmf, recomputed from test.json by hand
    def per_user(label: str, setting: str) -> dict:
        out: dict = {}
        for s in (1, 2, 3):
            for u in json.loads((tiny_runs / f"in/{setting}/s{s}/{label}/test.json").read_text())["per_user"]:
                out.setdefault((u["market"], u["user"]), []).append(u["ndcg@10"])
        return {k: sum(v) / len(v) for k, v in out.items()}

    gmf, nmf = per_user("gmf", "single"), per_user("nmf", "single")
    keys = sorted(gmf)
    d = np.array([gmf[k] - nmf[k] for k in keys])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    row = next(r for r in section.rows if r.name == "gmf")
    assert row.vs_reference is not None and row.vs_reference.n == len(keys) == section.users
    assert row.vs_reference.mean_difference == pytest.approx(d.mean(), abs=1e-12)
    assert row.vs_reference.t == pytest.approx(t, rel=1e-9)
    assert next(r for r in section.rows if r.name == "nmf").vs_reference is None
    # the best baseline is the better of pop and cooc by mean test NDCG@10
    pop, cooc = (next(r for r in section.rows if r.name == n) for n in ("pop", "cooc"))
    assert section.baseline == max((pop, cooc), key=lambda r: r.mean["ndcg@10"]).name

    # the written files carry the same numbers
    path = write_report(report, tmp_path / "r.md", title="t")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["model"] for r in rows] == names
    for r, row in zip(rows, section.rows):
        assert float(r["ndcg@10 mean"]) == pytest.approx(row.mean["ndcg@10"], abs=1e-12)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"][2]["ndcg@10 per seed"] == [x.test["ndcg@10"] for x in section.rows[2].runs]
    text = path.read_text()
    assert f"{section.rows[4].mean['ndcg@10']:.4f} ± {section.rows[4].std['ndcg@10']:.4f}" in text
    for png in ("bars.png", "curves-in-", "ranks-in-"):
        assert png in text
    pngs = list((tmp_path / "r-plots").glob("*.png"))
    assert len(pngs) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_published_figures_only_for_the_data_they_were_measured_on(tiny_runs: Path) -> None:
    runs = collect_runs([tiny_runs])
    shipped = read_published()
    assert {f.target for f in shipped if f.model == "acmr"} == {"de", "fr", "ca", "jp", "mx", "in", "uk"}
    # the synthetic sample is not XMarket: no published figure appears beside it
    assert all(r.published is None for _, r in build_report(runs, published=shipped).rows())
    sample_inputs = runs[0].inputs
    same_data = [PublishedFigure("x", "a paper", "forec", dict(sample_inputs), "nmf", "in", "ndcg@10", 0.5)]
    rows = {r.name: r for _, r in build_report(runs, published=same_data).rows()}
    assert rows["nmf"].published is not None and rows["nmf"].published.value == 0.5
    assert rows["gmf"].published is None
    other_protocol = [PublishedFigure("x", "a paper", "acmr", dict(sample_inputs), "nmf", "in", "ndcg@10", 0.5)]
    assert all(r.published is None for _, r in build_report(runs, published=other_protocol).rows())


def test_report_cli(tiny_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep" / "report.md"
    result = runner.invoke(app, ["report", str(tiny_runs / "in" / "single"), "--out", str(out), "--no-plots",
                                 "--title", "Tiny"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("<!-- xmfast-report -->\n# Tiny") and "| nmf | – | 1, 2, 3 |" in text and "gmf++" not in text
    assert not (tmp_path / "rep" / "report-plots").exists()
    bad = runner.invoke(app, ["report", str(tmp_path / "nothing"), "--out", str(out)])
    assert bad.exit_code == 2 and "no such run or directory" in bad.output


# ---- issue 22: Holm, the legend of rows of one model, published figures of their own setting ------
def holm_by_hand(p: list[float]) -> list[float]:
    """Holm's adjusted p-values from the definition: the i-th smallest p_(i) becomes
    max over j <= i of min(1, (m - j + 1) p_(j))."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out = [0.0] * len(p)
    for rank, i in enumerate(order):
        out[i] = max(min(1.0, (len(p) - j) * p[order[j]]) for j in range(rank + 1))
    return out


def test_report_files_carry_raw_and_holm_adjusted_p(tiny_runs: Path, tmp_path: Path) -> None:
    report = build_report(collect_runs([tiny_runs]))
    rows = report.sections[0].rows
    tested = [r for r in rows if r.vs_reference is not None]
    assert [r.name for r in tested] == ["pop", "cooc", "gmf", "mlp", "gmf++"]  # all but nmf itself
    expected = holm_by_hand([r.vs_reference.p for r in tested])
    assert [r.vs_reference.p_adjusted for r in tested] == pytest.approx(expected, rel=1e-12)
    baseline = [r for r in rows if r.vs_baseline is not None]
    assert [r.vs_baseline.p_adjusted for r in baseline] == pytest.approx(
        holm_by_hand([r.vs_baseline.p for r in baseline]), rel=1e-12)
    write_report(report, tmp_path / "r.md", title="t", plots=False)
    data = {r["model"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    table = {r["model"]: r for r in csv.DictReader((tmp_path / "r.csv").open())}
    for row, adjusted in zip(tested, expected):
        assert data[row.name]["vs nmf p"] == row.vs_reference.p
        assert data[row.name]["vs nmf p Holm"] == pytest.approx(adjusted, rel=1e-12)
        assert float(table[row.name]["vs nmf p"]) == pytest.approx(row.vs_reference.p, rel=1e-12)
        assert float(table[row.name]["vs nmf p Holm"]) == pytest.approx(adjusted, rel=1e-12)
    assert data["nmf"]["vs nmf p Holm"] is None
    text = (tmp_path / "r.md").read_text()
    gmf = next(r for r in rows if r.name == "gmf").vs_reference
    assert f"(p {gmf.p:.3g}, Holm {gmf.p_adjusted:.3g})" in text
    assert "adjusted for multiple comparisons by Holm's method" in text and "not corrected" not in text


def test_rows_of_one_model_with_other_settings_get_a_legend(tiny_runs: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", str(tiny_runs / "in" / "dataset"), "-m", "gmf", "--epochs", "1", "--seed", "1",
                            "-o", str(tmp_path / "gmf-1epoch")])
    assert r.exit_code == 0, r.output
    report = build_report(collect_runs([tiny_runs / "in" / "single", tmp_path / "gmf-1epoch"]))
    section = report.sections[0]
    gmf = [row for row in section.rows if row.label == "gmf"]
    assert len(gmf) == 2 and all(row.name.startswith("gmf [") for row in gmf)
    one = next(row for row in gmf if len(row.runs) == 1)
    three = next(row for row in gmf if len(row.runs) == 3)
    assert section.legend == {three.name: "epochs 2", one.name: "epochs 1"} or \
        section.legend == {one.name: "epochs 1", three.name: "epochs 2"}
    out = tmp_path / "rep" / "r.md"
    r = runner.invoke(app, ["report", str(tiny_runs / "in" / "single"), str(tmp_path / "gmf-1epoch"), "-o", str(out),
                            "--no-plots"])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert f"- `{one.name}`: epochs 1" in text and f"- `{three.name}`: epochs 2" in text
    assert f"{one.name}: epochs 1" in r.output and f"{three.name}: epochs 2" in r.output  # under the terminal table
    assert json.loads((out.parent / "r.json").read_text())["rows"][0]["settings differ"] is None  # pop: alone
    # rows of one label that differ only in their sources need no legend (the sources column says it)
    assert build_report(collect_runs([tiny_runs])).sections[0].legend == {}


def test_published_figure_only_beside_runs_of_its_setting(tiny_runs: Path) -> None:
    """The tiny runs trained 2 epochs: a figure measured after 50 is not shown beside them, one of
    2 epochs is; the sources, the model size and a fine-tuned run's base count the same way."""
    runs = collect_runs([tiny_runs])
    data = dict(runs[0].inputs)

    def shown(match: dict, model: str = "nmf") -> bool:
        figure = PublishedFigure("x", "a paper", "forec", data, model, "in", "ndcg@10", 0.5, match,
                                 "2 epochs, embedding 8", "A. Author, A paper, Table 3")
        rows = {r.name: r for _, r in build_report(runs, published=[figure]).rows()}
        return rows[model].published is figure

    assert not shown({"train.epochs": 50})
    assert shown({"train.epochs": 2})
    assert shown({"train.epochs": 2, "model.gmf.embedding_dim": 8, "model.mlp.layers": [16, 64, 32, 16, 8]})
    assert not shown({"train.epochs": 2, "model.gmf.embedding_dim": 16})  # another model size
    assert not shown({"train.epochs": 2, "model.no_such_setting": 1})  # a setting the run lacks never matches
    assert shown({"sources": ["de"], "train.epochs": 2}, "gmf++")
    assert not shown({"sources": ["uk"]}, "gmf++")
    assert not shown({"sources": "all"}, "gmf++")  # de is one of the dataset's three other markets
    assert not shown({"base.train.epochs": 50})  # not fine-tuned: it has no base
    # the footnote gives the setting and the reference
    figure = PublishedFigure("x", "a paper", "forec", data, "nmf", "in", "ndcg@10", 0.5, {"train.epochs": 2},
                             "2 epochs", "A. Author, A paper (2020), Table 3")
    text = render_markdown(build_report(runs, published=[figure]), title="t")
    assert "Published: nmf, 0.500 (`x`): measured with 2 epochs. A. Author, A paper (2020), Table 3" in text


def test_shipped_figures_are_cited_and_carry_their_setting(tmp_path: Path) -> None:
    import re

    shipped = read_published()
    assert shipped and {f.model for f in shipped} == {"acmr"}  # the uncited FOREC re-run figures are gone
    for f in shipped:
        assert re.search(r"\b[0-9a-f]{40}\b", f.reference) and f"log/{f.target.upper()}.log" in f.reference
        assert f.match["train.epochs"] == 50 and f.match["sources"] == "all" and "50 epochs" in f.setting
        assert "quoted" not in f.cite
    # a figures file without a setting is refused: it would be shown beside any run
    bad = tmp_path / "p.toml"
    bad.write_text('[data.d]\nin = "x"\n[sources.s]\ncite = "c"\nprotocol = "forec"\ndata = "d"\n'
                   '[[figures]]\nsource = "s"\nmodel = "nmf"\nmetric = "ndcg@10"\nvalues = { in = 0.5 }\n')
    with pytest.raises(XmfastError, match="figure 1 lacks its setting"):
        read_published(bad)


def test_figure_matches_all_sources_and_a_fine_tuned_runs_base(tmp_path: Path) -> None:
    from xmfast.report import RunRecord, figure_matches

    def run(sources: tuple[str, ...], config: dict) -> RunRecord:
        return RunRecord(tmp_path, "acmr", "acmr", "jp", "acmr", "f", sources, 1, "s", {}, {}, None, 4,
                         {"jp": "a", "de": "b", "uk": "c", "in": "d"}, config)

    figure = PublishedFigure("x", "c", "acmr", {"jp": "a", "de": "b", "uk": "c", "in": "d"}, "acmr", "jp", "ndcg@10",
                             0.5, {"sources": "all", "train.epochs": 50, "base.train.epochs": 50}, "s", "r")
    fine_tuned = {"train.epochs": 50, "base.train.epochs": 50}
    assert figure_matches(figure, run(("de", "uk", "in"), fine_tuned))
    assert not figure_matches(figure, run(("de", "uk"), fine_tuned))  # not every other market
    assert not figure_matches(figure, run(("de", "uk", "in"), {"train.epochs": 50, "base.train.epochs": 1}))
    assert not figure_matches(figure, run(("de", "uk", "in"), {"train.epochs": 50}))  # no base recorded
    other_files = run(("de", "uk", "in"), fine_tuned)
    other_files.inputs = {**other_files.inputs, "jp": "z"}
    assert not figure_matches(figure, other_files)


@pytest.mark.parametrize("terminal", [True, False])
def test_the_report_table_keeps_every_number_at_80_columns_and_in_a_pipe(tiny_runs: Path, terminal: bool) -> None:
    import io

    from rich.console import Console

    from xmfast_cli.render import report_table, show

    report = build_report(collect_runs([tiny_runs]))
    buffer = io.StringIO()
    show(*report_table(report), to=Console(file=buffer, width=80, force_terminal=terminal, color_system=None))
    text = buffer.getvalue()
    assert "…" not in text
    for _, row in report.rows():
        assert row.name in text
        for m in report.metrics:
            assert f"{row.mean[m]:.4f} ± {row.std[m]:.4f}" in text
        if row.vs_reference is not None:
            assert f"{row.vs_reference.mean_difference:+.4f} ({row.vs_reference.p_adjusted:.2g})" in text
        if row.vs_baseline is not None:  # the markdown's second test column too
            assert f"{row.vs_baseline.mean_difference:+.4f} ({row.vs_baseline.p_adjusted:.2g})" in text
    assert any(row.vs_baseline is not None for _, row in report.rows())
    for s in report.sections:  # the markdown's heading: the dataset tells two of one market apart
        assert f"{s.target} (protocol {s.protocol}, dataset {s.fingerprint[:12]}, {s.users:,} test users)" in text
    if not terminal:  # seeds are their values, as in the markdown (not their count)
        seeds = {", ".join(map(str, row.seeds)) for _, row in report.rows()}
        assert any(len(x) > 1 for x in seeds) and all(x in text for x in seeds)


def test_runs_of_a_model_without_training_are_one_row_whatever_train_settings_they_recorded(
        sample_dir: Path, tmp_path: Path) -> None:
    """A grid re-uses pop's and EASE's runs when [train] changes (they read none of it), so one
    seed may record epochs = 1 and the next epochs = 2: still one row of two seeds (GMF's s1 is
    trained again with the new epochs)."""
    file = tmp_path / "e.toml"
    body = (f'data = "{sample_dir}"\nout = "{tmp_path / "out"}"\ntargets = ["in"]\nmodels = ["pop", "gmf"]\n'
            'seeds = [1]\ndevice = "cpu"\n[train]\nepochs = 1\n')
    file.write_text(body, encoding="utf-8")
    run_experiment(plan(read_experiment(file)))
    file.write_text(body.replace("seeds = [1]", "seeds = [1, 2]").replace("epochs = 1", "epochs = 2"), encoding="utf-8")
    result = run_experiment(plan(read_experiment(file)))
    assert "in/single/s1/pop" not in result.executed and "in/single/s1/gmf" in result.executed
    rows = {(row.name, tuple(row.seeds)) for _, row in build_report(collect_runs([tmp_path / "out"])).rows()}
    assert ("pop", (1, 2)) in rows and ("gmf", (1, 2)) in rows and len(rows) == 2


def test_bar_labels_name_the_dataset_only_where_two_markets_would_share_a_label() -> None:
    from xmfast.report import Section, bar_labels

    sections = [Section("forec", "in", "aaaaaaaa1111", []), Section("forec", "in", "bbbbbbbb2222", []),
                Section("acmr", "in", "cccccccc3333", []), Section("forec", "jp", "dddddddd4444", [])]
    assert bar_labels(sections[:2] + sections[3:]) == ["in\naaaaaaaa", "in\nbbbbbbbb", "jp"]
    assert bar_labels(sections[2:]) == ["in", "jp"]  # a panel per protocol: acmr's one `in` is plain
