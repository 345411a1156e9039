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
from xmfast.runs import runs_inside


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
