"""Side-by-side comparison of evaluation results with paired significance tests over users.

Two runs are compared on the queries they share (same market and user); per metric we report
both means, the difference, a paired t-test, the Wilcoxon signed-rank test and the sign test
(two-sided). Runs evaluated on different datasets, splits or tie policies are refused, since
their per-user numbers are not paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmfast.errors import XmfastError
from xmfast.evaluation import read_results


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    mean_a: float
    mean_b: float
    t_pvalue: float
    wilcoxon_pvalue: float
    sign_pvalue: float
    wins: int  # queries where b > a
    losses: int  # queries where b < a

    @property
    def difference(self) -> float:
        return self.mean_b - self.mean_a


@dataclass(frozen=True)
class Comparison:
    name_a: str
    name_b: str
    queries: int
    metrics: list[MetricComparison]


def load_per_user(path: Path) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, float]]]:
    data = read_results(path)
    if "per_user" not in data:
        raise XmfastError(f"{path}: has no per-user results (evaluate without --no-per-user)")
    per_user = {(r["market"], r["user"]): r for r in data["per_user"]}
    return data, per_user


def paired_tests(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Two-sided p-values of the paired t-test, Wilcoxon signed-rank test and sign test.
    Identical samples give p = 1 for every test."""
    from scipy import stats

    diff = b - a
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        return 1.0, 1.0, 1.0
    t_p = float(stats.ttest_rel(b, a).pvalue) if np.std(diff) > 0 else 0.0
    w_p = float(stats.wilcoxon(b, a, zero_method="wilcox").pvalue)
    wins = int((nonzero > 0).sum())
    s_p = float(stats.binomtest(wins, int(nonzero.size), 0.5).pvalue)
    return t_p, w_p, s_p


def compare_results(path_a: Path, path_b: Path, metrics: list[str] | None = None) -> Comparison:
    """Compares run B against run A (both evaluation JSON files with per-user results)."""
    head_a, users_a = load_per_user(path_a)
    head_b, users_b = load_per_user(path_b)
    for key in ("split", "mode", "ties", "fingerprint"):
        if head_a.get(key) != head_b.get(key):
            raise XmfastError(
                f"{path_b}: {key} {head_b.get(key)!r} differs from {path_a}'s {head_a.get(key)!r}; "
                "only results on the same queries can be paired"
            )
    shared = sorted(set(users_a) & set(users_b))
    if not shared:
        raise XmfastError(f"{path_a} and {path_b} have no query in common")
    names = metrics or [m for m in head_a["metrics"] if m in head_b["metrics"]]
    out = []
    for m in names:
        if m not in head_a["metrics"] or m not in head_b["metrics"]:
            raise XmfastError(f"metric {m} is not in both results files")
        a = np.array([users_a[k][m] for k in shared], dtype=np.float64)
        b = np.array([users_b[k][m] for k in shared], dtype=np.float64)
        t_p, w_p, s_p = paired_tests(a, b)
        out.append(MetricComparison(m, float(a.mean()), float(b.mean()), t_p, w_p, s_p,
                                    int((b > a).sum()), int((b < a).sum())))
    return Comparison(str(path_a), str(path_b), len(shared), out)
