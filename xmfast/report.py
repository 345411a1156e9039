"""Reports over finished runs: per target market and model, test metrics as mean ± standard
deviation over seeds, the best per column marked, paired t-tests (Holm-adjusted, the convention of
xmfast.compare) against a reference model (single-market NMF by default) and the best baseline,
a legend of what differs between rows of one model, published figures beside runs of their own
setting, and plots.

The numbers come only from the runs' own files (``results.json`` for the aggregates,
``test.json`` for the per-user values the tests pair, ``metrics.jsonl`` for the curves), so a
report can always be traced back to the runs it lists.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmfast._io import (
    digest_json,
    sweep_leftovers,
    write_json_atomic,
    write_text_atomic,
)
from xmfast.compare import ALPHA, CORRECTION, MARK, PairedTest, adjust, paired_t_test
from xmfast.errors import XmfastError, argument
from xmfast.leaderboard import Board, boards_records, build_boards, render_boards
from xmfast.tune_summary import summary_markdown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPORT_METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
TEST_METRIC = "ndcg@10"  # the metric significance tests and plots use
REFERENCE = "nmf"  # the default row every other is tested against (single-market NeuMF, FOREC's reference)


# ---- reading runs --------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One finished run, as the report needs it."""

    path: Path
    label: str
    model: str
    target: str
    protocol: str
    fingerprint: str
    sources: tuple[str, ...]
    seed: int
    settings: str  # digest of what distinguishes runs other than the seed
    valid: dict[str, float]
    test: dict[str, float]
    selected_epoch: int | None
    markets: int  # markets in the dataset (to say "all others")
    inputs: dict[str, str] = field(default_factory=dict)  # market -> blake3 of its rating file
    # The settings that make the run what it is, flat: `model.alpha`, `train.epochs`, and for a
    # fine-tuned run `base.train.epochs` (its base's); without the seed and where it ran.
    config: dict[str, Any] = field(default_factory=dict)

    def per_user(self) -> dict[tuple[str, str], dict[str, float]]:
        """Per test query: the metrics (from test.json), keyed by (market, user)."""
        file = self.path / "test.json"
        records = _read_json(file).get("per_user")
        if not isinstance(records, list):
            raise XmfastError(f"{file}: no per-user records (needed for significance tests)")
        for n, r in enumerate(records, 1):
            if not (isinstance(r, dict) and isinstance(r.get("market"), str) and isinstance(r.get("user"), str)
                    and _is_number(r.get(TEST_METRIC)) and _is_number(r.get("rank"))):
                raise XmfastError(f"{file}: per-user record {n} lacks its market, user, rank or {TEST_METRIC} "
                                  f"(damaged?); evaluate the run again with `xmfast evaluate {self.path} --json`")
        return {(r["market"], r["user"]): r for r in records}

    def curve(self, metric: str) -> list[tuple[int, float]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    value = rec.get("valid", {}).get(metric)
                    if value is not None:
                        out.append((int(rec["epoch"]), float(value)))
                except (ValueError, TypeError, KeyError, AttributeError):
                    raise XmfastError(f"{path}, line {n}: not an epoch record (damaged?); report without plots "
                                      "(--no-plots) or train the run again") from None
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XmfastError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XmfastError(f"{path}: not JSON ({e})") from None
    except OSError as e:  # a directory, unreadable
        raise XmfastError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(value, dict):
        raise XmfastError(f"{path}: not a JSON object")
    return value


def run_label(info: dict[str, Any]) -> str:
    """The name a table gives a run: the model's label from the registry (``nmf++`` for a
    single-market model trained with sources, ``acmr (pre-trained)`` before its fine-tuning), or
    the label a run saved from a scores file was given."""
    from xmfast.models import label_of

    if isinstance(info.get("scores"), dict):
        return str(info["model"])
    return label_of(info)


def _row_order(label: str, model: str, sources: tuple[str, ...]) -> tuple[int, int, str]:
    """Where a row goes in its section: baselines first, then single-market models, then those
    with sources, each group in registry order (models not registered, e.g. saved scores, last)."""
    from xmfast.models import get_model, model_names

    names = model_names()
    try:
        spec = get_model(model)
    except XmfastError:
        return (1 + bool(sources), len(names), label)
    tier = 0 if spec.baseline else 1 + bool(sources)
    return (tier, names.index(spec.name), label)


def read_run(path: Path) -> RunRecord:
    """The record of the finished run at `path`; a damaged run.json or results.json (a missing
    field, a value of the wrong type) is an error naming the file."""
    info = _read_json(path / "run.json")
    results = _read_json(path / "results.json")
    if not isinstance(info.get("model"), str) or not isinstance(info.get("train_config", {}), dict) \
            or not isinstance(info.get("dataset", {}), dict) or not isinstance(info.get("pretrained") or {}, dict):
        raise XmfastError(f"{path / 'run.json'}: the model, train_config, dataset or pretrained field is missing or "
                          "of the wrong type (damaged?); train the run again")
    for split in ("valid", "test"):
        values = results.get(split)
        if not isinstance(values, dict) or not all(_is_number(v) for v in values.values()):
            raise XmfastError(f"{path / 'results.json'}: '{split}' is not a table of metric values (damaged?); "
                              f"evaluate the run again or train it again")
    try:
        return _run_record(path, info, results)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise XmfastError(f"{path}: run.json or results.json has a field missing or of the wrong type ({e!r}; "
                          "damaged?); train the run again") from None


def _run_record(path: Path, info: dict[str, Any], results: dict[str, Any]) -> RunRecord:
    tc = dict(info.get("train_config", {}))
    seed = int(tc.get("seed", 0))
    tc = _settings_only(tc) if _trained(str(info["model"])) else {"sources": tc.get("sources", [])}
    manifest = Path(str(info.get("dataset", {}).get("path") or "")) / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        markets = len(data.get("markets", []))
        inputs = {str(i["market"]): str(i["blake3"]) for i in data.get("inputs", [])}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        # the dataset moved: sources are listed rather than called "all others", no published figures
        markets, inputs = 0, {}
    sources = tuple(tc_sources := info.get("train_config", {}).get("sources") or ())
    base = (info.get("pretrained") or {}).get("base")
    base_tc: dict[str, Any] = {}
    base_info: dict[str, Any] = {}
    if base:
        try:
            base_info = _read_json(Path(base) / "run.json")
            base_tc = dict(base_info.get("train_config") or {})
        except XmfastError:
            pass
        if not tc_sources:  # a fine-tuned run: the sources are those its base learned from
            sources = tuple(base_tc.get("sources") or ())
    model_config = _recorded_model_config(info)
    config = {**_flat("model", model_config), **_flat("train", tc),
              **({"base.model": base_info["model"]} if isinstance(base_info.get("model"), str) else {}),
              **_flat("base.train", _settings_only(base_tc))}
    # a fine-tuned run is what it was fine-tuned from too (FOREC from MAML is not FOREC from NMF++)
    finetune: Any = {"model": base_info.get("model"), "train": _settings_only(base_tc)} if base else False
    return RunRecord(
        path=path, label=run_label(info), model=str(info["model"]), target=str(info.get("target") or results["target"]),
        protocol=str(info.get("dataset", {}).get("protocol", "?")),
        fingerprint=str(info.get("dataset", {}).get("fingerprint", "")),
        sources=sources, seed=seed,
        settings=digest_json({"model": info.get("model"), "model_config": model_config, "train": tc,
                              "finetune": finetune})[:8],
        valid=dict(results["valid"]), test=dict(results["test"]), selected_epoch=results.get("selected_epoch"),
        markets=markets, inputs=inputs, config=config,
    )


_NOT_SETTINGS = ("seed", "device", "eval_batch", "amp", "cuda_graphs")  # how or where it ran, not what


def _trained(model: str) -> bool:
    """Whether `model` has a training loop. One without (pop, EASE) reads no training setting but
    its sources, and a grid re-uses its runs when [train] changes (experiment._keyed), so its
    runs' recorded epochs or lr do not make them different rows. A model not installed here
    counts as trained: every recorded setting then tells its runs apart, as before."""
    from xmfast.models import get_model

    try:
        return get_model(model).trained
    except XmfastError:
        return True


def _settings_only(train_config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in train_config.items() if k not in _NOT_SETTINGS}


def _recorded_model_config(info: dict[str, Any]) -> dict[str, Any]:
    """The run's model settings as run.json records them, with the settings added since it was
    written at the value their absence means (a run from before ACMR's `embedding_norm` existed
    had it off), so runs alike are one row and a legend names what differs; as recorded when
    the model is not installed or the record does not read."""
    from xmfast.models import get_model
    from xmfast.runs import to_plain

    values = info.get("model_config") or {}
    try:
        return to_plain(get_model(str(info["model"])).config_from(values, recorded=True))
    except (XmfastError, KeyError, TypeError, ValueError):
        return dict(values) if isinstance(values, dict) else {}


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    """Nested settings as one level of dotted keys (`model.gmf.embedding_dim`)."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(_flat(f"{prefix}.{k}", v))
    return out


def collect_runs(paths: Iterable[Path]) -> list[RunRecord]:
    """Every finished run (a directory with run.json and results.json) at or under `paths`. A path
    that is a file (an `xmfast evaluate --json` file, say), or under which no run is finished, is
    an error naming it: a report never leaves out silently what it was given."""
    found: dict[Path, RunRecord] = {}
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise XmfastError(f"{root}: no such run or directory")
        if not root.is_dir():
            raise XmfastError(_not_a_run_message(root))
        candidates = [root] if (root / "run.json").is_file() else sorted(p.parent for p in root.rglob("run.json"))
        finished = [d for d in candidates if ".partial-" not in str(d) and (d / "results.json").is_file()]
        if not finished:
            if candidates == [root]:
                raise XmfastError(f"{root}: the run is not finished (no results.json); finish it with "
                                  f"`xmfast train --resume {root}`")
            raise XmfastError(f"{root}: no finished runs under it (a run has run.json and results.json)")
        for run_dir in finished:
            found.setdefault(run_dir.resolve(), read_run(run_dir))
    if not found:
        raise XmfastError("give at least one run directory, or a directory to search for runs")
    return list(found.values())


def _not_a_run_message(path: Path) -> str:
    """The error for a file given instead of a run, naming an evaluation JSON as such."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read(1 << 24))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and data.get("format") == "xmfast-evaluation":
        run = f" ({data['run']})" if isinstance(data.get("run"), str) else ""
        return (f"{path}: an `xmfast evaluate --json` file; a report reads run directories only: give the run "
                f"it evaluates{run}")
    return f"{path}: a file, not a run directory; give run directories, or directories to search for them"


# ---- statistics ----------------------------------------------------------------------------------
# The tests and their one convention (paired t-test, Holm, ✱) live in xmfast.compare, shared with
# `xmfast compare`; PairedTest and paired_t_test stay importable from here.

# ---- published figures ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedFigure:
    """A figure from the literature and the setting it was measured in. `match` is that setting
    as run settings (see :func:`figure_matches`); `setting` says it in words for the footnote;
    `reference` is the full citation (paper, table or repository file and commit)."""

    source: str
    cite: str
    protocol: str
    data: dict[str, str]  # market -> blake3 of the rating files the figure was measured on
    model: str
    target: str
    metric: str
    value: float
    match: dict[str, Any] = field(default_factory=dict)
    setting: str = ""
    reference: str = ""


def figure_matches(figure: PublishedFigure, run: RunRecord) -> bool:
    """Whether `run` was made in the figure's setting, so the two numbers can stand side by side:
    the same protocol, target, model (label) and rating files (every input's blake3 digest), and
    every key of the figure's `match` equal to the run's: `sources = "all"` (every other market
    of the dataset) or a list of markets, any other key a run setting as :attr:`RunRecord.config`
    names it (`train.epochs`, `model.blocks`, `base.train.epochs` for a fine-tuned run's base).
    A setting the run does not record does not match."""
    if (figure.protocol, figure.target, figure.model) != (run.protocol, run.target, run.label) or not run.inputs \
            or not all(figure.data.get(m) == d for m, d in run.inputs.items()):
        return False
    for key, want in figure.match.items():
        if key == "sources":
            if want == "all":
                if not run.markets or len(set(run.sources)) != run.markets - 1:
                    return False
            elif sorted(want) != sorted(run.sources):
                return False
        elif key not in run.config or run.config[key] != want:
            return False
    return True


def read_published(path: Path | None = None) -> list[PublishedFigure]:
    """The published figures shipped with xmfast (xmfast/published.toml), or those of `path`."""
    path = Path(path) if path is not None else Path(__file__).with_name("published.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XmfastError(f"{path}: no such published-figures file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise XmfastError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:  # a directory, unreadable
        raise XmfastError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return _published_figures(path, data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise XmfastError(f"{path}: not a published-figures file (a field is missing or of the wrong type: {e!r}); "
                          "see xmfast/published.toml for the layout") from None


def _published_figures(path: Path, data: dict[str, Any]) -> list[PublishedFigure]:
    sources = data.get("sources", {})
    datasets = data.get("data", {})
    out = []
    for n, fig in enumerate(data.get("figures", []), 1):
        src = sources.get(fig.get("source"))
        if src is None:
            raise XmfastError(f"{path}: figure {n} names an unknown source {fig.get('source')!r}")
        if src.get("data") not in datasets:
            raise XmfastError(f"{path}: source {fig['source']!r} names no [data.NAME] table of file digests")
        if not isinstance(fig.get("match"), dict) or not isinstance(fig.get("setting"), str):
            raise XmfastError(f"{path}: figure {n} lacks its setting (a `match` table of run settings and a "
                              "`setting` sentence): a figure is shown only beside runs of its own setting")
        for target, value in fig["values"].items():
            out.append(PublishedFigure(str(fig["source"]), str(src["cite"]), str(src["protocol"]),
                                       {str(k): str(v) for k, v in dict(datasets[src["data"]]).items()},
                                       str(fig["model"]), str(target), str(fig["metric"]), float(value),
                                       dict(fig["match"]), str(fig["setting"]),
                                       str(src.get("reference", "")).replace("{TARGET}", str(target).upper())))
    return out


# ---- the report ----------------------------------------------------------------------------------
@dataclass
class Row:
    """One model in one section: its runs over seeds."""

    label: str
    sources: tuple[str, ...]
    settings: str
    runs: list[RunRecord]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    vs_reference: PairedTest | None = None
    vs_baseline: PairedTest | None = None
    published: PublishedFigure | None = None
    name: str = ""  # unique in its section: the label, with the sources when several rows share it

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)


@dataclass
class Section:
    """The runs of one target market on one prepared dataset."""

    protocol: str
    target: str
    fingerprint: str
    rows: list[Row]
    users: int = 0
    best: dict[str, set[str]] = field(default_factory=dict)  # metric -> the rows with the best mean (ties: all)
    baseline: str | None = None  # the best baseline's row name
    legend: dict[str, str] = field(default_factory=dict)  # row name -> how its settings differ (settings_legend)


@dataclass
class Report:
    sections: list[Section]
    metrics: tuple[str, ...]
    published: list[PublishedFigure]
    reference: str = REFERENCE

    def rows(self) -> Iterable[tuple[Section, Row]]:
        for s in self.sections:
            for r in s.rows:
                yield s, r


def _sources_text(row: Row, markets: int) -> str:
    if not row.sources:
        return "–"
    if markets and len(row.sources) == markets - 1 and len(row.sources) > 1:
        return f"all {len(row.sources)} others"
    return ", ".join(row.sources)


def build_report(runs: Sequence[RunRecord], *, metrics: Sequence[str] = REPORT_METRICS,
                 published: Sequence[PublishedFigure] | None = None, reference: str | None = None) -> Report:
    """Groups runs by (dataset, model label, sources, settings): each group's seeds are one row.
    `reference` is the label of the row every other is tested against (run without sources;
    default REFERENCE, whose absence leaves the column empty; a reference given and found in no
    section is an error rather than a column of dashes)."""
    if reference is not None and not any(r.label == reference and not r.sources for r in runs):
        labels = sorted({r.label for r in runs if not r.sources})
        raise XmfastError(f"{argument('reference', reference)}: no run of {reference} without sources among the runs "
                          f"(rows that can be the reference: {', '.join(labels) or 'none'})")
    reference = reference or REFERENCE
    published = list(read_published() if published is None else published)
    sections: dict[tuple[str, str, str], dict[tuple[str, tuple[str, ...], str], list[RunRecord]]] = {}
    for r in runs:
        sections.setdefault((r.protocol, r.target, r.fingerprint), {}).setdefault((r.label, r.sources, r.settings), []).append(r)
    out = []
    for (protocol, target, fingerprint), groups in sorted(sections.items()):
        rows = []
        for (label, sources, settings), group in groups.items():
            seeds = [r.seed for r in group]
            if len(set(seeds)) != len(seeds):
                dup = next(s for s in seeds if seeds.count(s) > 1)
                paths = ", ".join(str(r.path) for r in group if r.seed == dup)
                raise XmfastError(f"runs {paths} are the same model, settings and seed ({dup}); report one of them")
            row = Row(label, sources, settings, sorted(group, key=lambda r: r.seed))
            for m in metrics:
                values = np.array([r.test.get(m, np.nan) for r in group], dtype=np.float64)
                row.mean[m] = float(values.mean())
                row.std[m] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row.published = next((f for f in published if f.metric == TEST_METRIC
                                  and all(figure_matches(f, r) for r in group)), None)
            rows.append(row)
        rows.sort(key=lambda r: (*_row_order(r.label, r.runs[0].model, r.sources), r.sources, r.settings))
        _name_rows(rows)
        section = Section(protocol, target, fingerprint, rows)
        for m in metrics:
            top = max(r.mean[m] for r in rows)
            section.best[m] = {r.name for r in rows if r.mean[m] >= top - 1e-12}
        section.legend = settings_legend(rows)
        _significance(section, reference)
        out.append(section)
    return Report(out, tuple(metrics), published, reference)


def _name_rows(rows: list[Row]) -> None:
    for row in rows:
        same = [r for r in rows if r.label == row.label]
        row.name = row.label
        if len(same) > 1:
            if len({r.sources for r in same}) == len(same):
                row.name = f"{row.label} ({', '.join(row.sources) or 'target only'})"
            else:
                row.name = f"{row.label} [{row.settings}]"


def settings_legend(rows: Sequence[Row]) -> dict[str, str]:
    """For rows that share a label but not their settings: row name -> the settings in which it
    differs from the others of its label (`alpha 0.3`), from the runs' model and training
    settings. Sources are left out (the sources column shows them); rows alike but for the seed
    are one row already."""
    out: dict[str, str] = {}
    for label in dict.fromkeys(r.label for r in rows):
        same = [r for r in rows if r.label == label]
        if len({r.settings for r in same}) < 2:
            continue
        configs = [{k: v for k, v in r.runs[0].config.items() if k not in ("train.sources", "base.train.sources")}
                   for r in same]
        keys = sorted({k for c in configs for k in c if len({repr(x.get(k)) for x in configs}) > 1})
        if keys:  # else they differ in their sources only, which the sources column shows
            for r, c in zip(same, configs):
                out[r.name] = "; ".join(f"{_setting_name(k)} {_setting_value(c.get(k))}" for k in keys)
    return out


def _setting_name(key: str) -> str:
    """`model.alpha` -> `alpha`, `train.epochs` -> `epochs`; `base.train.epochs` stays as it is."""
    for prefix in ("model.", "train."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _setting_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _mean_per_user(row: Row) -> dict[tuple[str, str], float]:
    per_seed = [r.per_user() for r in row.runs]
    keys = set(per_seed[0]).intersection(*per_seed[1:])
    return {k: float(np.mean([p[k][TEST_METRIC] for p in per_seed])) for k in keys}


def _is_baseline(row: Row) -> bool:
    from xmfast.models import get_model

    try:
        return get_model(row.runs[0].model).baseline
    except XmfastError:
        return False


def _significance(section: Section, reference: str) -> None:
    """Each row against the reference row (single-market NMF by default) and against the best
    baseline (by mean test NDCG@10): paired t-tests on the per-user test NDCG@10, averaged over
    each row's seeds, Holm-adjusted within each of the two columns of the section."""
    per_user = {row.name: _mean_per_user(row) for row in section.rows}
    section.users = max((len(v) for v in per_user.values()), default=0)
    nmf = next((r for r in section.rows if r.label == reference and not r.sources), None)
    baselines = [r for r in section.rows if _is_baseline(r)]
    baseline = max(baselines, key=lambda r: r.mean.get(TEST_METRIC, -1.0)) if baselines else None
    section.baseline = baseline.name if baseline else None

    def test(row: Row, ref: Row | None) -> PairedTest | None:
        if ref is None or ref is row:
            return None
        a, b = per_user[row.name], per_user[ref.name]
        keys = sorted(set(a) & set(b))
        if len(keys) < 2:
            return None
        return paired_t_test([a[k] for k in keys], [b[k] for k in keys])

    # each column of marks is one Holm family (see xmfast.compare)
    for row, t in zip(section.rows, adjust([test(row, nmf) for row in section.rows])):
        row.vs_reference = t
    for row, t in zip(section.rows, adjust([test(row, baseline) for row in section.rows])):
        row.vs_baseline = t


def leaderboards(report: Report) -> list[Board]:
    """The report's leaderboards (xmfast.leaderboard): one per protocol with several markets."""
    return build_boards(report, TEST_METRIC, _is_baseline)


# ---- writing -------------------------------------------------------------------------------------
def _cell(row: Row, metric: str, best: bool) -> str:
    text = f"{row.mean[metric]:.4f}"
    if len(row.runs) > 1:
        text += f" ± {row.std[metric]:.4f}"
    return f"**{text}**" if best else text


def _test_cell(t: PairedTest | None) -> str:
    """The mean difference, the raw and the Holm-adjusted p, and the mark (on the adjusted p)."""
    if t is None:
        return "–"
    mark = f" {MARK}" if t.significant else ""
    return f"{t.mean_difference:+.4f} (p {t.p:.3g}, {CORRECTION} {t.p_adjusted:.3g}){mark}"


def significance_note(report: Report) -> str:
    """What the Δ columns and their mark mean (the report's text; the terminal prints it too)."""
    return (f"The Δ columns are paired t-tests (two-sided, over users) on the per-user test {TEST_METRIC.upper()} "
            f"(averaged over each model's seeds) against single-market {report.reference} and against the best baseline (by mean test "
            f"{TEST_METRIC.upper()}): the mean difference, the two-sided p-value and the p-value adjusted for multiple "
            f"comparisons by {CORRECTION}'s method (each column of a market is one family); {MARK} when the "
            f"adjusted p < {ALPHA}. {CORRECTION} because each mark claims something of one model, a family-wise "
            "error rate, which it controls whatever the dependence between the tests.")


def published_notes(section: Section) -> list[str]:
    """One footnote per published figure shown in the section: its setting and full reference."""
    out = []
    for r in section.rows:
        f = r.published
        if f is not None:
            out.append(f"{r.name}, {f.value:.3f} (`{f.source}`): measured with {f.setting}. {f.reference or f.cite}")
    return out


def report_records(report: Report) -> list[dict[str, Any]]:
    """The report's table as plain records (the CSV and JSON outputs)."""
    out = []
    for s, r in report.rows():
        rec: dict[str, Any] = {
            "protocol": s.protocol, "target": s.target, "dataset": s.fingerprint[:16], "model": r.name,
            "label": r.label, "sources": list(r.sources), "settings": r.settings, "seeds": r.seeds,
            "users": s.users, "runs": [str(x.path) for x in r.runs],
        }
        for m in report.metrics:
            rec[f"{m} mean"] = r.mean[m]
            rec[f"{m} std"] = r.std[m]
            rec[f"{m} per seed"] = [x.test.get(m) for x in r.runs]
        for name, t in ((f"vs {report.reference}", r.vs_reference), ("vs best baseline", r.vs_baseline)):
            rec[f"{name} diff"] = t.mean_difference if t else None
            rec[f"{name} p"] = t.p if t else None
            rec[f"{name} p {CORRECTION}"] = t.p_adjusted if t else None
        rec["settings differ"] = s.legend.get(r.name)
        rec["published " + TEST_METRIC] = r.published.value if r.published else None
        rec["published source"] = r.published.source if r.published else None
        rec["published setting"] = r.published.setting if r.published else None
        rec["published reference"] = r.published.reference if r.published else None
        out.append(rec)
    return out


def render_markdown(report: Report, *, title: str, preface: str = "", plots: dict[str, str] | None = None) -> str:
    lines = [f"# {title}", ""]
    if preface.strip():
        lines += [preface.strip(), ""]
    lines += [
        "Test metrics of the selected checkpoint, mean ± standard deviation over seeds (the seeds column); "
        "**bold** is the best mean of the column in its market. " + significance_note(report) + " The published "
        "column is a figure from the literature, shown only beside runs made in the figure's setting (the same "
        "protocol, rating files, market, model, sources, schedule and model size); each is footnoted with its "
        "setting and reference.",
        "",
    ]
    lines += render_boards(leaderboards(report))
    for s in report.sections:
        lines += [f"## {s.target} (protocol {s.protocol}, dataset {s.fingerprint[:12]}, {s.users:,} test users)", ""]
        head = ["model", "sources", "seeds", *(m.upper().replace("NDCG", "NDCG").replace("HR", "HR") for m in report.metrics),
                f"Δ vs {report.reference}", f"Δ vs {s.baseline or 'baseline'}", "published NDCG@10"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in s.rows:
            markets = max((x.markets for x in r.runs), default=0)
            cells = [r.name, _sources_text(r, markets), ", ".join(map(str, r.seeds)),
                     *(_cell(r, m, r.name in s.best[m]) for m in report.metrics),
                     _test_cell(r.vs_reference), _test_cell(r.vs_baseline),
                     f"{r.published.value:.3f}" if r.published else ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if s.legend:
            lines += ["Rows of the same model with different settings (what differs between them):", ""]
            lines += [f"- `{name}`: {text}" for name, text in s.legend.items()]
            lines.append("")
        for note in published_notes(s):
            lines += [f"Published: {note}", ""]
        for key in (f"curves-{s.target}-{s.fingerprint[:8]}", f"ranks-{s.target}-{s.fingerprint[:8]}"):
            if plots and key in plots:
                lines += [f"![{key}]({plots[key]})", ""]
    if plots and "bars" in plots:
        lines += ["## Test NDCG@10 per market", "", f"![bars]({plots['bars']})", ""]
    used = sorted({r.published.source: r.published for _, r in report.rows() if r.published}.items())
    if used:
        lines += ["## Published figures", ""]
        lines += [f"- `{src}`: {f.cite}." for src, f in used]
        lines.append("")
    lines += ["## Runs", "", "| market | model | seed | run directory |", "|---|---|---|---|"]
    for s, r in report.rows():
        for x in r.runs:
            lines.append(f"| {s.target} | {r.name} | {x.seed} | `{x.path}` |")
    lines.append("")
    return "\n".join(lines)


# One colour per model in every report, whatever else the report holds: the built-in models have
# fixed colours of Paul Tol's colour-blind-safe "muted" scheme (pop, a baseline, grey); any other
# model (installed, registered from code, a saved scores file) a stable hash into the extra colours.
# Variants of a model (``nmf++``, ``acmr (pre-trained)``) keep its hue and differ in line style and
# hatch, so the plots can be read in grey scale too.
MODEL_COLOURS = {"pop": "#777777", "cooc": "#999933", "gmf": "#88CCEE", "mlp": "#DDCC77", "nmf": "#332288",
                 "maml": "#117733", "forec": "#CC6677", "acmr": "#AA4499",
                 "magmf": "#33BBEE", "mamlp": "#EE7733", "manmf": "#EE3377",  # Tol's vibrant
                 "ease": "#0072B2", "itemknn": "#009E73", "mf": "#CC79A7",  # Okabe–Ito, apart from OTHER_COLOURS
                 "sasrec": "#661100",  # Tol's dark red, apart from acmr's purple
                 "easemix": "#A6761D"}  # ColorBrewer Dark2's ochre, apart from the others
OTHER_COLOURS = ("#44AA99", "#882255", "#E69F00", "#D55E00", "#000000")
# (line style, bar hatch) of a model's plain runs, its ++ runs, its pre-trained runs, then others.
VARIANT_STYLES = (("-", ""), ("--", "//"), (":", ".."), ("-.", "xx"), ((0, (5, 1, 1, 1, 1, 1)), "\\\\"),
                  ((0, (1, 3)), "oo"), ((0, (8, 2)), "--"))


@dataclass(frozen=True)
class PlotStyle:
    color: str
    linestyle: Any
    hatch: str


def model_colour(model: str) -> str:
    """The colour of `model` (a registered name, or a scores file's label) in every plot."""
    import hashlib

    key = model.lower().removesuffix("++")
    if key in MODEL_COLOURS:
        return MODEL_COLOURS[key]
    return OTHER_COLOURS[int.from_bytes(hashlib.blake2b(key.encode()).digest()[:4], "big") % len(OTHER_COLOURS)]


def _variant(row: Row) -> int:
    model = row.runs[0].model.lower()
    label = row.label.lower()
    if label == model:
        return 0
    if label == model + "++":
        return 1
    if label.endswith("(pre-trained)"):
        return 2
    return 3


def plot_styles(report: Report) -> dict[str, PlotStyle]:
    """Each row name's colour (its model's, :func:`model_colour`) and line style / hatch (its
    variant's); two rows that would look alike (two settings of one model, two models sharing an
    extra colour) take the next free style."""
    styles: dict[str, PlotStyle] = {}
    taken: set[tuple[str, int]] = set()
    for _, row in report.rows():
        if row.name in styles:
            continue
        color = model_colour(row.runs[0].model)
        v = _variant(row)
        while (color, v) in taken and v < len(VARIANT_STYLES) - 1:
            v += 1
        taken.add((color, v))
        styles[row.name] = PlotStyle(color, *VARIANT_STYLES[v])
    return styles


def _figure(width: float, height: float) -> Any:
    """A figure outside pyplot (no global state, nothing to close), laid out so that a legend
    placed outside the axes gets room of its own."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _legend_outside(fig: Any, ax: Any, where: str = "right") -> None:
    """The legend beside (`right`) or below (`below`) the axes, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if where == "right":
        fig.legend(handles, labels, loc="outside right upper", fontsize="small", frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", fontsize="small", frameon=False,
                   ncol=min(len(labels), 4))


def plot_name(section: Section) -> str:
    """A market's name in its plots' titles: with the protocol, as a report of two protocols has
    two plots of each market (the file names differ by dataset, the pictures must too). It is
    the title's first line: on one line with the plot's description it ran into the legend."""
    return f"{section.target}, protocol {section.protocol}"


def curves_figure(section: Section, styles: dict[str, PlotStyle]) -> Any | None:
    """Validation NDCG@10 per epoch of each row (mean over its seeds); None when no row has a curve."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7.5, 4)
    ax = fig.add_subplot()
    drawn = False
    for r in section.rows:
        curves = [dict(x.curve(TEST_METRIC)) for x in r.runs]
        epochs = sorted(set().union(*curves)) if curves else []
        if not epochs:
            continue
        means = [np.mean([c[e] for c in curves if e in c]) for e in epochs]
        st = styles[r.name]
        ax.plot(epochs, means, marker="o", markersize=3.5, label=r.name, color=st.color, linestyle=st.linestyle)
        drawn = True
    if not drawn:
        return None
    ax.set(title=f"{plot_name(section)}\nvalidation {TEST_METRIC.upper()} per epoch (mean over seeds)",
           xlabel="epoch", ylabel=f"validation {TEST_METRIC.upper()}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax)
    return fig


def ranks_figure(section: Section, styles: dict[str, PlotStyle]) -> Any | None:
    """The share of test users whose held-out item ranks within the top k, per row."""
    from matplotlib.ticker import FuncFormatter

    fig = _figure(7.5, 4)
    ax = fig.add_subplot()
    drawn = False
    for r in section.rows:
        ranks = np.concatenate([[u["rank"] for u in x.per_user().values()] for x in r.runs]).astype(np.float64)
        if len(ranks) == 0:
            continue
        top = int(ranks.max()) + 1
        cdf = [(ranks < k).mean() for k in range(1, top + 1)]
        st = styles[r.name]
        ax.step(range(1, top + 1), cdf, where="post", label=r.name, color=st.color, linestyle=st.linestyle)
        drawn = True
    if not drawn:
        return None
    ax.set(title=f"{plot_name(section)}\nshare of test users with the positive in the top k", xlabel="k (rank cut-off)",
           ylabel="share of users", xscale="log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10, 100 rather than 10^0
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax)
    return fig


def bar_labels(sections: Sequence[Section]) -> list[str]:
    """Each market's label under its bars: the target, with the dataset's fingerprint on a second
    line where two prepared datasets of one market would otherwise share a label (as the tables'
    titles name the dataset)."""
    shared = {s.target for s in sections if sum(t.target == s.target for t in sections) > 1}
    return [f"{s.target}\n{s.fingerprint[:8]}" if s.target in shared else s.target for s in sections]


def bars_figure(report: Report, styles: dict[str, PlotStyle]) -> Any | None:
    """Test NDCG@10 (mean ± std over seeds) of every row, grouped by market, one panel per protocol
    (each with a slot for only the models it has, so a protocol with fewer rows leaves no gaps);
    one legend below them all."""
    protocols = list(dict.fromkeys(s.protocol for s in report.sections if s.rows))
    if not protocols:
        return None
    panels = [[s for s in report.sections if s.protocol == p] for p in protocols]
    most = max(len(ss) * len({r.name for s in ss for r in s.rows}) for ss in panels)
    fig = _figure(min(11.0, max(6.5, 0.4 * most)), 1.6 + 3.0 * len(panels))  # a page wide at most
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    handles: dict[str, Any] = {}
    for ax, protocol, sections in zip(axes, protocols, panels):
        names = list(dict.fromkeys(r.name for s in sections for r in s.rows))
        width = 0.8 / len(names)
        xs = np.arange(len(sections))
        for i, name in enumerate(names):
            means, errs = [], []
            for s in sections:
                r = next((r for r in s.rows if r.name == name), None)
                means.append(r.mean[TEST_METRIC] if r else np.nan)
                errs.append(r.std[TEST_METRIC] if r else 0.0)
            st = styles[name]
            bars = ax.bar(xs + i * width - 0.4 + width / 2, means, width, yerr=errs, capsize=2, label=name,
                          color=st.color, hatch=st.hatch or None, edgecolor="white", linewidth=0.5)
            handles.setdefault(name, bars)
        ax.set_xticks(xs, bar_labels(sections))
        ax.set(ylabel=f"test {TEST_METRIC.upper()}", title=f"protocol {protocol}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Test {TEST_METRIC.upper()}: mean ± std over seeds")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize="small", frameon=False,
               ncol=min(len(handles), 5))
    return fig


def _plots(report: Report, directory: Path) -> dict[str, str]:
    """PNG plots under `directory`; returns their names relative to the report."""
    directory.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    styles = plot_styles(report)

    def save(fig: Any, key: str) -> None:
        if fig is None:
            return
        path = directory / f"{key}.png"
        sweep_leftovers(path)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        tmp.replace(path)
        made[key] = f"{directory.name}/{path.name}"

    for s in report.sections:
        suffix = f"{s.target}-{s.fingerprint[:8]}"
        save(curves_figure(s, styles), f"curves-{suffix}")
        save(ranks_figure(s, styles), f"ranks-{suffix}")
    save(bars_figure(report, styles), "bars")
    return made


def write_report(report: Report, out: Path, *, title: str = "xmfast report", preface: str = "",
                 plots: bool = True, inputs: Sequence[Path] = ()) -> Path:
    """Writes ``out`` (markdown, its first line a marker) and, beside it, ``<stem>.csv``,
    ``<stem>.json`` and the plots under ``<stem>-plots/``. Every file is written under a
    temporary name and renamed; none replaces anything but a report's files, nor the `inputs`
    (the run directories or folders the report reads, which may hold it). An input that is an
    experiment's output with a tune study (OUT/tune/summary.json) adds its tuning section after
    the preface (:func:`xmfast.tune_summary.summary_markdown`), for `xmfast run`'s report and `xmfast
    report OUT` alike."""
    from xmfast import outputs
    from xmfast._io import check_output, output_errors

    tuning = [summary_markdown(Path(p)) for p in dict.fromkeys(inputs) if p is not None and Path(p).is_dir()]
    preface = "\n\n".join(t.strip() for t in (preface, *tuning) if t.strip())

    out = Path(out)
    plot_dir = out.parent / f"{out.stem}-plots"
    # Every file it would replace is checked before any is written (see xmfast.outputs).
    for path, kind in ((out, outputs.REPORT_MD), (out.with_suffix(".csv"), outputs.REPORT_CSV),
                       (out.with_suffix(".json"), outputs.REPORT_JSON), (plot_dir, outputs.REPORT_PLOTS)):
        check_output(path, kind, containers=inputs)
    with output_errors(plot_dir):
        out.parent.mkdir(parents=True, exist_ok=True)
        made = _plots(report, plot_dir) if plots else {}
    records = report_records(report)
    buffer = io.StringIO()
    columns = list(records[0]) if records else []
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: (";".join(map(str, v)) if isinstance(v, list) else v) for k, v in rec.items()})
    write_text_atomic(out.with_suffix(".csv"), buffer.getvalue())
    write_json_atomic(out.with_suffix(".json"), {"format": outputs.REPORT_FORMAT, "rows": records,
                                                   "leaderboards": boards_records(leaderboards(report))})
    write_text_atomic(out, outputs.REPORT_MARKER + "\n" + render_markdown(report, title=title, preface=preface, plots=made))
    return out


__all__ = ["PairedTest", "PublishedFigure", "Report", "RunRecord", "build_report", "collect_runs", "figure_matches",
           "leaderboards", "paired_t_test", "published_notes", "read_published", "render_markdown", "report_records",
           "settings_legend", "significance_note", "write_report"]
