"""Paired significance tests over users, and the comparison of evaluation results they serve.

One convention holds for every table xmfast prints or writes (``compare``, ``report``): a row is
marked ✱ when the two-sided **paired t-test** over users against the reference row gives a
**Holm-adjusted** p below 0.05. The family Holm corrects over is one column of marks: every row
tested against the same reference on the same metric in one table. Holm rather than
Benjamini–Hochberg because each mark is read as a claim about one model ("this one differs from
the reference"), which is a family-wise error rate question, and Holm controls it under any
dependence between the tests (they share the reference row and the users), where BH's false
discovery rate needs positive dependence. The paired t-test (Sakai 2014 and Smucker et al. 2007
found it agrees with the randomisation test on IR metrics); ``compare`` also computes the
Wilcoxon signed-rank and sign tests, but they never set the mark.

Two results are compared on the queries they share (same market and user). Results evaluated
on different datasets, splits or tie policies are refused, since their per-user numbers are not
paired.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from xmfast import core
from xmfast.errors import XmfastError
from xmfast.evaluation import read_results
from xmfast.runs import runs_inside

ALPHA = 0.05
MARK = "✱"
MARK_TEST = "two-sided paired t-test over users"
CORRECTION = "Holm"


def footnote(reference: str, metric: str, family: int) -> str:
    """What a ✱ means, in the words every table uses."""
    return (f"{MARK} {CORRECTION}-adjusted p < {ALPHA} of a {MARK_TEST} on {metric} against {reference} "
            f"({CORRECTION} over the {family} comparison{'s' if family != 1 else ''} of the column)")


# ---- the tests -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired t-test of per-user values: mean difference (a − b), t, p, and p after
    the Holm correction over its family (None until :func:`holm` is applied)."""

    n: int
    mean_difference: float
    t: float
    p: float
    p_adjusted: float | None = None

    @property
    def significant(self) -> bool:
        """Whether the row gets the mark: the adjusted p (the raw one before correction) < ALPHA."""
        return (self.p if self.p_adjusted is None else self.p_adjusted) < ALPHA


def paired_t_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedTest:
    """Student's paired t-test of a − b. Identical inputs give p = 1; a constant non-zero
    difference gives p = 0."""
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise XmfastError("a paired test needs at least two paired values")
    mean = float(x.mean())
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return PairedTest(len(x), mean, 0.0 if mean == 0 else math.copysign(math.inf, mean), 1.0 if mean == 0 else 0.0)
    t = mean / (sd / math.sqrt(len(x)))
    p = core.t_two_sided_p(t, len(x) - 1)  # the core's, not scipy's: see rust/core/src/stats.rs
    return PairedTest(len(x), mean, t, p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the i-th smallest p times
    (m − i + 1), made monotone from the smallest up and capped at 1. A p-value is rejected at
    level α exactly when its adjusted value is below α."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = scaled
    return [float(v) for v in out]


def adjust(tests: Sequence[PairedTest | None]) -> list[PairedTest | None]:
    """The tests of one family with their Holm-adjusted p filled in (None stays None)."""
    present = [t for t in tests if t is not None]
    adjusted = iter(holm([t.p for t in present]))
    return [None if t is None else replace(t, p_adjusted=next(adjusted)) for t in tests]


def paired_tests(a: np.ndarray, b: np.ndarray, *, all_tests: bool = True) -> tuple[float, float, float]:
    """Two-sided p-values of the paired t-test, Wilcoxon signed-rank test and sign test of b
    against a. Identical samples give p = 1 for every test; fewer than two pairs, nan for t.
    Without `all_tests` the Wilcoxon and sign p-values are nan (not computed: they need
    scipy.stats, a second to import, and only ``compare --tests`` shows them)."""
    diff = b - a
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        return 1.0, 1.0, 1.0
    t_p = paired_t_test(b, a).p if len(diff) >= 2 else math.nan
    if not all_tests:
        return t_p, math.nan, math.nan
    from scipy import stats

    w_p = float(stats.wilcoxon(b, a, zero_method="wilcox").pvalue)
    wins = int((nonzero > 0).sum())
    s_p = float(stats.binomtest(wins, int(nonzero.size), 0.5).pvalue)
    return t_p, w_p, s_p


# ---- comparing evaluation results --------------------------------------------------------------
@dataclass(frozen=True)
class MetricComparison:
    """One metric of a result B against a reference A over their shared queries: both means,
    the three tests' raw p-values, and the t-test's Holm-adjusted p within its column."""

    metric: str
    mean_a: float
    mean_b: float
    t_pvalue: float
    wilcoxon_pvalue: float
    sign_pvalue: float
    wins: int  # queries where b > a
    losses: int  # queries where b < a
    t_adjusted: float | None = None

    @property
    def difference(self) -> float:
        return self.mean_b - self.mean_a

    @property
    def significant(self) -> bool:
        """The mark of :data:`MARK`: the t-test's adjusted p (the raw one if not adjusted) < ALPHA."""
        p = self.t_pvalue if self.t_adjusted is None else self.t_adjusted
        return p < ALPHA


@dataclass(frozen=True)
class Comparison:
    name_a: str
    name_b: str
    queries: int
    metrics: list[MetricComparison]


@dataclass(frozen=True)
class ComparedRow:
    """One result in a comparison table: its mean of every metric over the shared queries, and
    (unless it is the reference) its tests against the reference, per metric."""

    name: str
    path: str
    means: dict[str, float]
    tests: dict[str, MetricComparison] | None  # None for the reference row


@dataclass(frozen=True)
class ComparisonTable:
    """Several results on the same queries: one row each, every one tested against the reference."""

    rows: list[ComparedRow]
    reference: str  # the reference row's name
    metrics: list[str]
    test_metric: str  # the metric whose test the table's mark column shows
    queries: int  # the queries every result has, which the means and tests use
    split: str | None
    ties: str | None

    @property
    def family(self) -> int:
        """How many tests one Holm family (one metric's column) holds: the rows but the reference."""
        return len(self.rows) - 1


def results_file(path: Path, split: str = "test") -> Path:
    """The evaluation JSON that `path` names: the file itself, or a run directory's
    ``{split}.json``. Any other directory (a fine-tuning output, a dataset) is an error."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / "run.json").is_file():
        file = path / f"{split}.json"
        if not file.is_file():
            raise XmfastError(f"{path}: the run has no {split}.json (not finished?); finish it with "
                              f"`xmfast train --resume {path}` or compare finished runs")
        return file
    runs = runs_inside(path)
    if runs:
        raise XmfastError(f"{path}: a directory of runs ({', '.join(r.name for r in runs)}), not one run; give one "
                          f"of them, e.g. {runs[0]}")
    raise XmfastError(f"{path}: a directory that is not a run (no run.json); give a run directory or an "
                      "`xmfast evaluate --json` file")


def load_per_user(path: Path) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, float]]]:
    """The results' header and per-query records, checked: every record has a market, a user and
    a number for every metric the header lists (a damaged file is an error naming it)."""
    data = read_results(path)
    if "per_user" not in data:
        raise XmfastError(f"{path}: has no per-user results (evaluate without --no-per-user)")
    metrics, records = data.get("metrics"), data["per_user"]
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise XmfastError(f"{path}: 'metrics' is not a list of metric names (damaged?); evaluate again with --json")
    if not isinstance(records, list):
        raise XmfastError(f"{path}: 'per_user' is not a list of records (damaged?); evaluate again with --json")
    per_user = {}
    for n, r in enumerate(records):
        ok = (isinstance(r, dict) and isinstance(r.get("market"), str) and isinstance(r.get("user"), str)
              and all(isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool) for m in metrics))
        if not ok:
            raise XmfastError(f"{path}: per-user record {n + 1} lacks its market, user or a number for each of "
                              f"{', '.join(metrics)} (damaged?); evaluate again with --json")
        key = (r["market"], r["user"])
        if key in per_user:
            raise XmfastError(f"{path}: query {key[0]}:{key[1]} appears twice (damaged?); evaluate again with --json")
        per_user[key] = r
    return data, per_user


def compare_table(paths: Sequence[Path], *, names: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                  reference: int = 0, test_metric: str | None = None, all_tests: bool = True) -> ComparisonTable:
    """Every result of `paths` (evaluation JSON files with per-user results) on the queries they
    all share, each tested against ``paths[reference]``; the t-tests of each metric are one Holm
    family. `test_metric` is the metric the table's mark column shows (default ndcg@10 if
    compared, else the first metric); without `all_tests`, the t-test alone (see
    :func:`paired_tests`)."""
    paths = [Path(p) for p in paths]
    names = list(names) if names is not None else [str(p) for p in paths]
    if len(paths) < 2 or len(names) != len(paths) or not 0 <= reference < len(paths):
        raise XmfastError("give at least two results files (and a reference among them)")
    loaded = [load_per_user(p) for p in paths]
    head_r = loaded[reference][0]
    for p, (head, _) in zip(paths, loaded):
        for key in ("split", "mode", "ties", "fingerprint"):
            if head.get(key) != head_r.get(key):
                raise XmfastError(f"{p}: {key} {head.get(key)!r} differs from {paths[reference]}'s "
                                  f"{head_r.get(key)!r}; only results on the same queries can be paired")
    shared = sorted(set.intersection(*(set(users) for _, users in loaded)))
    if not shared:
        raise XmfastError(f"{', '.join(map(str, paths))} have no query in common")
    chosen = list(metrics) if metrics else [m for m in head_r["metrics"] if all(m in h["metrics"] for h, _ in loaded)]
    for m in chosen:
        lacking = [str(p) for p, (h, _) in zip(paths, loaded) if m not in h["metrics"]]
        if lacking:
            raise XmfastError(f"metric {m} is not in {', '.join(lacking)} (it has "
                              f"{', '.join(loaded[paths.index(Path(lacking[0]))][0]['metrics'])}); choose "
                              "metrics every file has with --metrics")
    test_metric = test_metric or ("ndcg@10" if "ndcg@10" in chosen else chosen[0])
    if test_metric not in chosen:
        raise XmfastError(f"--test-metric {test_metric}: not among the compared metrics ({', '.join(chosen)})")
    values = [{m: np.array([users[k][m] for k in shared], dtype=np.float64) for m in chosen} for _, users in loaded]
    a = values[reference]
    tests: list[dict[str, MetricComparison] | None] = []
    for i, b in enumerate(values):
        if i == reference:
            tests.append(None)
            continue
        row = {}
        for m in chosen:
            t_p, w_p, s_p = paired_tests(a[m], b[m], all_tests=all_tests)
            row[m] = MetricComparison(m, float(a[m].mean()), float(b[m].mean()), t_p, w_p, s_p,
                                      int((b[m] > a[m]).sum()), int((b[m] < a[m]).sum()))
        tests.append(row)
    for m in chosen:  # one Holm family per metric: the other rows against the reference
        others = [t for t in tests if t is not None]
        for t, p in zip(others, holm([t[m].t_pvalue for t in others])):
            t[m] = replace(t[m], t_adjusted=p)
    rows = [ComparedRow(n, str(p), {m: float(v[m].mean()) for m in chosen}, t)
            for n, p, v, t in zip(names, paths, values, tests)]
    return ComparisonTable(rows, names[reference], chosen, test_metric, len(shared), head_r.get("split"),
                           head_r.get("ties"))


def compare_results(path_a: Path, path_b: Path, metrics: list[str] | None = None) -> Comparison:
    """Compares run B against run A (both evaluation JSON files with per-user results)."""
    table = compare_table([path_a, path_b], metrics=metrics)
    return Comparison(str(path_a), str(path_b), table.queries, list((table.rows[1].tests or {}).values()))
