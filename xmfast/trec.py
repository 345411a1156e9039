"""TREC run and qrels files, so xmfast's numbers can be checked with trec_eval, pytrec_eval or ranx.

The file formats live in :mod:`xmfast._trec_format` (re-exported here), below
:mod:`xmfast.evaluation`, which reads runs as scores files; this module adds what needs the
evaluation: a run's metrics against qrels, and a scorer's run. So the imports go one way:
``trec`` → ``evaluation`` → ``_trec_format``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmfast import core
from xmfast._trec_format import Run, query_id, read_qrels, read_run, run_to_scores, write_qrels, write_run
from xmfast.errors import XmfastError
from xmfast.dataset import PreparedDataset
from xmfast.evaluation import EvalConfig, Evaluation, Scorer, Split, Standings, held_out

__all__ = [
    "Run", "evaluate_run", "export_run", "query_id", "read_qrels", "read_run", "run_to_scores", "write_qrels",
    "write_run",
]


def export_run(
    path: Path, dataset: PreparedDataset, split: Split, scores: Scorer | np.ndarray, tag: str = "xmfast"
) -> None:
    """Writes the stored candidates of `split` as a TREC run, scored by `scores`: a matrix of
    their scores, or a scorer (a model or baseline), which scores them here. The one way
    `evaluate` exports a run, whatever was evaluated."""
    if hasattr(scores, "score"):
        held = held_out(dataset, split)
        scores = scores.score(np.asarray(held.group), np.asarray(held.candidates))
    write_run(path, dataset, split, np.asarray(scores), tag)


def evaluate_run(
    run: Run,
    qrels: dict[str, dict[str, int]],
    config: EvalConfig,
    *,
    run_path: Path | str = "run",
    qrels_path: Path | str = "qrels",
    allow_missing: bool = False,
) -> Evaluation:
    """Evaluates a run against qrels with one relevant document per query, with no prepared
    dataset: the candidates of a query are the documents the run lists for it. A query whose
    relevant document is absent from its ranking scores 0 on every metric (it was not retrieved).
    A query of the qrels that the run lacks altogether is an error (a run for another split or
    dataset, or a truncated file), unless `allow_missing`: then it too scores 0, as trec_eval
    counts it with ``-c``. Either way ``info["unretrieved"]`` counts the queries that score 0
    for want of their document and ``info["missing_queries"]`` those the run lacks. Queries
    named ``market:user`` are grouped by market. The paths only name the files in errors."""
    qids = sorted(qrels)
    if not qids:
        raise XmfastError(f"{qrels_path}: no queries (an empty qrels file); give the qrels of the run's queries")
    positives = []
    for qid in qids:
        relevant = [d for d, r in qrels[qid].items() if r > 0]
        if len(relevant) != 1:
            raise XmfastError(
                f"{qrels_path}: query {qid} has {len(relevant)} relevant documents; leave-one-out needs exactly 1"
            )
        positives.append(relevant[0])
    missing = [q for q in qids if q not in run.docs]
    if missing and not allow_missing:
        raise XmfastError(
            f"{run_path}: no lines for {len(missing):,} of the {len(qids):,} queries in {qrels_path} (first: {missing[0]}); "
            "rank every query of the qrels (a run of another split or dataset, or cut short?)"
        )
    all_docs = sorted({d for qid in qids for d in run.docs.get(qid, [])} | set(positives), key=str.encode)
    key_of = {d: i for i, d in enumerate(all_docs)}
    found = np.array([p in run.docs.get(q, ()) for q, p in zip(qids, positives)], dtype=bool)
    present = [q for q, f in zip(qids, found) if f]
    flat_scores = np.array([s for q in present for s in run.scores[q]], dtype=np.float64)
    flat_keys = np.array([key_of[d] for q in present for d in run.docs[q]], dtype=np.uint32)
    offsets = np.zeros(len(present) + 1, dtype=np.uint64)
    np.cumsum([len(run.docs[q]) for q in present], out=offsets[1:])
    positive = np.array([run.docs[q].index(p) for q, p, f in zip(qids, positives, found) if f], dtype=np.uint32)
    d = core.standings(flat_scores, positive, offsets=offsets, keys=flat_keys)
    found_st = Standings(d["greater"], d["ties"], d["trec_lost"], d["others"])
    n = len(qids)
    full = {f: np.zeros(n, dtype=np.uint32) for f in ("greater", "ties", "trec_lost", "others")}
    for f in full:
        full[f][found] = getattr(found_st, f)
    st = Standings(**full)
    values = np.zeros((n, len(config.metric_names)))
    if found.any():
        values[found] = found_st.values(config.metric_names, config.ties)
    markets = sorted({q.split(":", 1)[0] if ":" in q else "all" for q in qids})
    query_market = np.array([markets.index(q.split(":", 1)[0] if ":" in q else "all") for q in qids], dtype=np.int64)
    users = [q.split(":", 1)[1] if ":" in q else q for q in qids]
    info = {"unretrieved": int((~found).sum()), "missing_queries": len(missing)}
    return Evaluation("run", "sampled", config, markets, query_market, users, positives, st, values, info)
