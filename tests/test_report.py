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
    write_report,
)
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
