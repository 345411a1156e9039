"""What a finished search left behind (OUT/tune/summary.json), read and written out as text.

Apart from :mod:`xmfast.tune` because the report shows it: the report must read a search's
outcome without importing the search (which plans experiments, whose reports import the report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xmfast.errors import XmfastError

SUMMARY = "summary.json"  # in OUT/tune: each study's space, trial counts, best and default


def _read(out: Path) -> dict[str, Any] | None:
    path = Path(out) / "tune" / SUMMARY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["studies"] = dict(data["studies"])
        return data
    except (OSError, ValueError, KeyError, TypeError):
        raise XmfastError(f"{path}: damaged; run `xmfast tune` again to rewrite it") from None


def read_summary(out: Path) -> dict[str, Any] | None:
    """The studies of OUT/tune/summary.json (`out`: an experiment's output directory), or None
    when it was never tuned."""
    data = _read(out)
    return None if data is None else data["studies"]


def uses_default(study: dict[str, Any]) -> bool:
    """Whether `--use-tuned` keeps the experiment's own settings for this study: its default
    configuration's validation value beat every trial (or no trial completed)."""
    return study.get("chosen") == "default" or "best" not in study


def default_won(study: dict[str, Any]) -> str:
    """One line saying that the default configuration beat every trial of the study ("" when a
    trial beat it, or for a summary written before defaults were trained)."""
    default, best = study.get("default"), study.get("best")
    if default is None or not uses_default(study):
        return ""
    than = f"every trial (best {best['value']:.4f})" if best else "every trial (none completed)"
    return (f"{study['entry']} on {study['target']}: the default configuration (validation {study['monitor']} "
            f"{default['value']:.4f}) beat {than}; `xmfast run --use-tuned` keeps the default settings for it")


def edge_note(study: dict[str, Any]) -> str:
    """One line naming the chosen values that sit at an end of their searched range ("" when none
    does, when the default was kept, or for a summary written before edges were recorded)."""
    edges = study.get("edges") or {}
    best = study.get("best")
    if not edges or not best or uses_default(study):
        return ""
    values = {**best["train"], **best["model"]}
    said = ", ".join(f"{_setting_text(k, values[k])} ({edge} searched)" for k, edge in edges.items() if k in values)
    return (f"{study['entry']} on {study['target']}: chosen at the end of its range, {said}; "
            "unless that end is the setting's own limit, a wider range may do better")


def chosen_text(study: dict[str, Any]) -> str:
    """The best trial's values, as `xmfast tune` and the report print them."""
    best = study.get("best")
    if not best:
        return "none"
    return ", ".join(_setting_text(k, v) for k, v in {**best["train"], **best["model"]}.items())


def _setting_text(name: str, value: Any) -> str:
    return f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"


def summary_markdown(out: Path) -> str:
    """The report's tuning section of the experiment output `out`: each study's ranges, trials,
    chosen values and their validation value beside the default configuration's ("" when the
    experiment was never tuned)."""
    data = _read(out)
    studies = None if data is None else data["studies"]
    if not studies:
        return ""
    monitors = "; ".join(sorted({s["monitor"] for s in studies.values()}))
    # a report over several tuned experiments (the leaderboard's two protocols) has a section each,
    # and the table's rows do not say which; a summary written before it was recorded has no name
    named = f": {data['experiment']} (protocol {data['protocol']})" if data.get("experiment") else ""
    lines = [f"## Tuning{named}", "",
             f"Optuna TPE search (`xmfast tune`) on validation {monitors} only; the grid uses the chosen values "
             "with `xmfast run --use-tuned`. Default: the experiment's own settings, trained once as a trial is.", "",
             "| model | target | searched | trials (complete / pruned / failed) | chosen | validation | default "
             "| chosen − default |",
             "|---|---|---|---|---|---|---|---|"]
    for s in studies.values():
        t = s["trials"]
        best, default = s.get("best"), s.get("default")
        ranges = ", ".join(f"{k} {v}" for k, v in s["space"].items())
        value = f"{best['value']:.4f}" if best else ""
        base = f"{default['value']:.4f}" if default else ""
        gain = f"{best['value'] - default['value']:+.4f}" if best and default else ""
        lines.append(f"| {s['entry']} | {s['target']} | {ranges} | {t['complete']} / {t['pruned']} / {t['failed']} "
                     f"| {chosen_text(s)} | {value} | {base} | {gain} |")
    notes = [line for s in studies.values() for line in (default_won(s), edge_note(s)) if line]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"

__all__ = ["SUMMARY", "chosen_text", "default_won", "edge_note", "read_summary", "summary_markdown", "uses_default"]
