"""Every kind of output xmfast writes, and how an existing one is recognised.

An output path is replaced only when it holds nothing (no file), or an artefact of the same kind
recognised here (see :func:`xmfast._io.check_output`): never a user's folder or file that
happens to be at that path.
"""

from __future__ import annotations

from pathlib import Path

from xmfast._io import OutputKind, first_line, json_format

REPORT_MARKER = "<!-- xmfast-report -->"
"""The first line of a report's markdown: what marks it as one xmfast may replace."""
DATASET_FORMAT = "xmfast-prepared"
"""`manifest.json`'s format: what marks a directory as a prepared dataset (xmfast.dataset reads it)."""
RUN_FORMAT = "xmfast-run"
"""`run.json`'s format: what marks a directory as a run (xmfast.runs reads it)."""
EVALUATION_FORMAT = "xmfast-evaluation"
"""An evaluation JSON's format (xmfast.evaluation writes and reads it)."""
REPORT_FORMAT = "xmfast-report"
STATS_FORMAT = "xmfast-stats"
RECOMMENDATIONS_HEADER = "market,user,rank,item,score"


def _dataset(path: Path) -> bool:
    return json_format(path, "manifest.json") == DATASET_FORMAT


def _run(path: Path) -> bool:
    return json_format(path, "run.json") == RUN_FORMAT


def _finetune_dir(path: Path) -> bool:
    """Holds only runs (one per market) and leftovers of killed writers."""
    return all(p.name.startswith(".") or (p.is_dir() and (_run(p) or not any(p.iterdir()))) for p in path.iterdir())


def _columns(n: int):  # noqa: ANN202
    return lambda path: len(first_line(path).split()) == n


def _report_beside(path: Path) -> bool:
    return json_format(path.with_suffix(".json")) == REPORT_FORMAT


DATASET = OutputKind("prepared dataset", True, _dataset)
RUN = OutputKind("run directory", True, _run)
FINETUNE_DIR = OutputKind("fine-tuning output directory (one run per market)", True, _finetune_dir)
EXPERIMENT_DIR = OutputKind("experiment output directory (with a .stages ledger)", True,
                            lambda p: (p / ".stages").is_dir())
SYNTH_DIR = OutputKind("synthetic data directory (with synth.json)", True, lambda p: (p / "synth.json").is_file())
REPORT_MD = OutputKind("report", False, lambda p: first_line(p) == REPORT_MARKER or _report_beside(p))
REPORT_JSON = OutputKind("report JSON", False, lambda p: json_format(p) == REPORT_FORMAT)
REPORT_CSV = OutputKind("report CSV", False, lambda p: _report_beside(p) or first_line(p).startswith("protocol,target,"))
REPORT_PLOTS = OutputKind("report plot directory", True,
                          lambda p: all(f.suffix == ".png" or f.name.startswith(".") for f in p.iterdir()))
STATS_JSON = OutputKind("statistics JSON", False, lambda p: json_format(p) == STATS_FORMAT)
RECOMMENDATIONS_CSV = OutputKind("recommendations CSV", False, lambda p: first_line(p) == RECOMMENDATIONS_HEADER)
TREC_RUN = OutputKind("TREC run", False, _columns(6))
TREC_QRELS = OutputKind("TREC qrels", False, _columns(4))
EVALUATION_JSON = OutputKind("evaluation JSON", False, lambda p: json_format(p) == EVALUATION_FORMAT)
EXPORT_FORMAT = "xmfast-export"
"""The export sidecar's format (xmfast.export writes and reads it)."""
EXPORT_SIDECAR = "xmfast-export.json"
EXPORT_DIR = OutputKind("export directory (with xmfast-export.json)", True,
                        lambda p: json_format(p, EXPORT_SIDECAR) == EXPORT_FORMAT)
