"""`xmfast compare`: one table of several results, each tested against a reference with the
project's one convention (paired t-test over users, Holm-adjusted, ✱), on hand-made results
whose p-values are worked out by hand; Holm checked against an independent implementation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from xmfast.compare import compare_table, holm
from xmfast_cli.app import app

runner = CliRunner()

USERS = ["u1", "u2", "u3"]
# Per-user ndcg@10 of four results on the same three queries; differences against A:
# B: 0.1, 0.2, 0.3 (mean 0.2, sd 0.1: t = 2√3), C: 0.1, 0.1, 0.4 (mean 0.2, sd √0.03: t = 2),
# D: -0.1, 0, 0.1 (t = 0).
VALUES = {"A": [0.1, 0.1, 0.1], "B": [0.2, 0.3, 0.4], "C": [0.2, 0.2, 0.5], "D": [0.0, 0.1, 0.2]}


def t2_p(t: float) -> float:
    """Two-sided p of Student's t with two degrees of freedom: 1 − |t| / sqrt(2 + t²)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


P_T = {"B": t2_p(2 * math.sqrt(3)), "C": t2_p(2.0), "D": 1.0}  # 0.0742, 0.1835, 1


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm's adjusted p-values from the textbook definition, with loops: the i-th smallest
    p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
    return out


def write_results(path: Path, values: list[float], metrics: tuple[str, ...] = ("hr@10", "ndcg@10")) -> Path:
    """An `xmfast evaluate --json` file with per-user records (hr@10 = 1 where ndcg@10 > 0.15)."""
    users = USERS if len(values) == len(USERS) else [f"u{i}" for i in range(len(values))]
    per_user = [{"market": "in", "user": u, "rank": 0, "hr@10": float(v > 0.15), "ndcg@10": v}
                for u, v in zip(users, values)]
    data = {"format": "xmfast-evaluation", "split": "test", "mode": "sampled", "ties": "pessimistic",
            "fingerprint": "f" * 64, "metrics": list(metrics), "queries": len(users),
            "overall": {m: float(np.mean([r[m] for r in per_user])) for m in metrics}, "per_user": per_user}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {name: write_results(tmp_path / f"{name}.json", v) for name, v in VALUES.items()}


# ---- Holm ------------------------------------------------------------------------------------------
def test_holm_by_hand_on_a_tiny_case() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # 0.5·2 capped at 1; 0.9 raised to it (monotone)
    assert holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])  # 0.01·2, then max(0.2·1, 0.02)
    assert holm([]) == [] and holm([0.2]) == [0.2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_equals_an_independent_implementation(p: list[float]) -> None:
    assert holm(p) == pytest.approx(holm_by_hand(p), abs=1e-12)
    # and its meaning: at level α, Holm's step-down procedure rejects exactly the adjusted p < α
    for alpha in (0.01, 0.05, 0.2):
        order = sorted(range(len(p)), key=lambda i: p[i])
        rejected = set()
        for k, i in enumerate(order):
            if p[i] * (len(p) - k) >= alpha:
                break
            rejected.add(i)
        assert rejected == {i for i, a in enumerate(holm(p)) if a < alpha}


# ---- the table ---------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.floats(0, 60), st.integers(1, 5000))
def test_the_cores_t_p_value_equals_scipys(t: float, df: int) -> None:
    """The paired test's p-value comes from the core (statrs), so that compare and report start
    without scipy (issue 25). It equals scipy's (Boost's) regularised incomplete beta function of
    the same identity to 1e-10 relative, scipy's Student t (stdtr, what scipy.stats.t.sf calls;
    3e-9 off itself at t = 1e-8, df = 1) to 1e-8, and is symmetric in t."""
    from scipy.special import betainc, stdtr

    from xmfast import core

    ours = core.t_two_sided_p(t, df)
    assert ours == core.t_two_sided_p(-t, df)
    beta = 1 - betainc(0.5, df / 2, t * t / (df + t * t)) if t < 1 else betainc(df / 2, 0.5, df / (df + t * t))
    student = min(1.0, float(2 * stdtr(df, -t)))
    if student > 1e-300:
        assert ours == pytest.approx(float(beta), rel=1e-10), (t, df)
        assert ours == pytest.approx(student, rel=1e-8), (t, df)
    else:
        assert ours < 1e-290


def test_the_cores_t_p_value_by_hand() -> None:
    """Closed forms: df = 1 (Cauchy) and df = 2; t = 0; infinite and missing t; bad df."""
    from xmfast import core

    assert core.t_two_sided_p(1.0, 1) == pytest.approx(0.5, rel=1e-14)
    assert core.t_two_sided_p(3.0, 1) == pytest.approx(1 - 2 * math.atan(3.0) / math.pi, rel=1e-13)
    for t in (0.3, 2.0, 2 * math.sqrt(3), 50.0):
        assert core.t_two_sided_p(t, 2) == pytest.approx(t2_p(t), rel=1e-12)
    assert core.t_two_sided_p(0.0, 10) == 1.0
    assert core.t_two_sided_p(math.inf, 10) == 0.0
    assert math.isnan(core.t_two_sided_p(math.nan, 10))
    with pytest.raises(ValueError, match="degrees of freedom"):
        core.t_two_sided_p(1.0, 0)


def test_p_values_of_a_tiny_case_by_hand(files: dict[str, Path]) -> None:
    table = compare_table([files[n] for n in "ABCD"], names=list("ABCD"))
    assert table.reference == "A" and table.queries == 3 and table.metrics == ["hr@10", "ndcg@10"]
    assert table.test_metric == "ndcg@10" and table.family == 3
    assert table.rows[0].tests is None
    adjusted = holm_by_hand([P_T[n] for n in "BCD"])  # 3 P_B, 2 P_C, 1
    assert adjusted == pytest.approx([3 * P_T["B"], 2 * P_T["C"], 1.0])
    for row, adj in zip(table.rows[1:], adjusted):
        c = row.tests["ndcg@10"]
        assert c.t_pvalue == pytest.approx(P_T[row.name], rel=1e-9)
        assert c.t_adjusted == pytest.approx(adj, rel=1e-9)
        assert row.means["ndcg@10"] == pytest.approx(np.mean(VALUES[row.name]))
        assert c.difference == pytest.approx(np.mean(VALUES[row.name]) - 0.1)
    b = table.rows[1].tests["ndcg@10"]
    # every user gains: the exact Wilcoxon and the sign test both give 2 · (1/2)³ = 0.25
    assert b.wilcoxon_pvalue == pytest.approx(0.25) and b.sign_pvalue == pytest.approx(0.25)
    assert (b.wins, b.losses) == (3, 0)
    assert not b.significant  # raw p 0.074, adjusted 0.22
    # another reference: the same tests seen from B
    other = compare_table([files[n] for n in "ABC"], names=list("ABC"), reference=1)
    assert other.reference == "B" and other.rows[1].tests is None
    assert other.rows[0].tests["ndcg@10"].t_pvalue == pytest.approx(P_T["B"], rel=1e-9)


def test_a_significant_difference_is_marked_after_holm(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.5, 50)
    a = write_results(tmp_path / "a.json", list(base))
    better = write_results(tmp_path / "b.json", list(base + 0.1 + rng.normal(0, 0.01, 50)))
    same = write_results(tmp_path / "c.json", list(base + rng.normal(0, 0.01, 50)))
    table = compare_table([a, better, same])
    b, c = (row.tests["ndcg@10"] for row in table.rows[1:])
    assert [b.t_adjusted, c.t_adjusted] == pytest.approx(holm_by_hand([b.t_pvalue, c.t_pvalue]), rel=1e-12)
    assert b.significant and b.t_pvalue < 1e-10
    assert not c.significant and c.t_adjusted >= c.t_pvalue


def test_cli_three_way_compare_is_one_table(files: dict[str, Path]) -> None:
    r = runner.invoke(app, ["compare", str(files["A"]), str(files["B"]), str(files["C"])])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    headers = [line for line in lines if line.startswith("model")]
    assert len(headers) == 1, r.output  # one table, not one per pair
    assert "hr@10" in headers[0] and "ndcg@10" in headers[0] and "Δ ndcg@10 vs" in headers[0]
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in map(str, files.values())}
    assert list(rows) == [str(files[n]) for n in "ABC"]
    assert rows[str(files["A"])].rstrip().endswith("reference")
    adjusted = holm_by_hand([P_T["B"], P_T["C"]])
    assert f"+0.2000 ({adjusted[0]:.2g})" in rows[str(files["B"])]
    assert f"+0.2000 ({adjusted[1]:.2g})" in rows[str(files["C"])]
    assert "0.3000" in rows[str(files["B"])] and "0.3000" in rows[str(files["C"])]  # ndcg@10 means
    footnote = " ".join(lines[lines.index(rows[str(files["C"])]) + 1:])
    assert "Holm-adjusted p < 0.05" in footnote and "paired t-test" in footnote and "ndcg@10" in footnote
    assert "2 comparisons" in footnote and "✱" in footnote
    # --tests: every metric, all three tests; --reference picks another row
    r = runner.invoke(app, ["compare", str(files["A"]), str(files["B"]), str(files["C"]), "--tests",
                            "--reference", str(files["B"])])
    assert r.exit_code == 0, r.output
    assert "Wilcoxon p" in r.output and "sign p" in r.output and f"vs {files['B']}" in r.output
    test_lines = [line for line in r.output.splitlines() if line.startswith(str(files["A"])) and "ndcg@10" in line]
    assert len(test_lines) == 1 and f"{P_T['B']:.2e}" in test_lines[0] and "2.50e-01" in test_lines[0]


def test_cli_compare_refuses_a_reference_not_compared(files: dict[str, Path]) -> None:
    r = runner.invoke(app, ["compare", str(files["A"]), str(files["B"]), "--reference", str(files["C"])])
    assert r.exit_code == 2
    assert f"error: --reference {files['C']}: not one of the results compared" in r.output
    r = runner.invoke(app, ["compare", str(files["A"]), str(files["B"]), "--test-metric", "mrr"])
    assert r.exit_code == 2 and "--test-metric mrr: not among the compared metrics (hr@10, ndcg@10)" in r.output


@pytest.mark.parametrize("terminal", [True, False])
def test_the_compare_table_keeps_every_number_at_80_columns_and_in_a_pipe(tmp_path: Path, terminal: bool) -> None:
    import io

    from rich.console import Console

    from xmfast_cli.render import comparison_table, show

    metrics = ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr", "auc", "map@10", "precision@10")
    rng = np.random.default_rng(3)
    paths = []
    for n in range(4):
        per_user = [{"market": "in", "user": f"u{i}", "rank": 0, **{m: float(rng.uniform()) for m in metrics}}
                    for i in range(20)]
        paths.append(tmp_path / f"runs-with-a-long-name-{n}.json")
        paths[-1].write_text(json.dumps({"format": "xmfast-evaluation", "split": "test", "ties": "pessimistic",
                                         "metrics": list(metrics), "per_user": per_user}), encoding="utf-8")
    table = compare_table(paths)
    buffer = io.StringIO()
    show(comparison_table(table), to=Console(file=buffer, width=80, force_terminal=terminal, color_system=None))
    text = buffer.getvalue()
    assert "…" not in text
    for row in table.rows:
        for m in metrics:
            assert f"{row.means[m]:.4f}" in text
        if row.tests:
            assert f"({row.tests['ndcg@10'].t_adjusted:.2g})" in text
