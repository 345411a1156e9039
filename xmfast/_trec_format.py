"""The TREC run and qrels file formats: writing and reading them, nothing else.

This is the layer below :mod:`xmfast.evaluation` (which reads a run as a scores file) and
:mod:`xmfast.trec` (the public module, which re-exports these and evaluates runs); it imports
neither, so the two never import each other.

A query is a (market, user) pair, written ``{market}:{user_id}``; documents are original item
ids. A run line is ``qid Q0 docno rank score tag``; a qrels line is ``qid 0 docno relevance``.
Scores are written with Python's shortest round-trip repr of the float64 value, so a float32
score survives exactly and ties stay ties.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmfast._io import write_text_atomic
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError


def query_id(market: str, user: str) -> str:
    return f"{market}:{user}"


def _queries(dataset: PreparedDataset, split: str) -> list[str]:
    held = dataset.valid if split == "valid" else dataset.test
    markets = dataset.markets
    return [
        query_id(markets[int(m)], dataset.users[int(u)])
        for m, u in zip(dataset.group_market[held.group], dataset.group_user[held.group])
    ]


def write_run(path: Path, dataset: PreparedDataset, split: str, scores: np.ndarray, tag: str = "xmfast") -> None:
    """Writes the scores of the stored candidates of `split` as a TREC run, each query's lines in
    trec_eval's order (score descending, then docno descending)."""
    held = dataset.valid if split == "valid" else dataset.test
    scores = np.asarray(scores)
    if scores.shape != held.candidates.shape:
        raise XmfastError(f"scores have shape {scores.shape} but the {split} candidates have {held.candidates.shape}")
    items = dataset.items
    lines = []
    for qid, cand, row in zip(_queries(dataset, split), np.asarray(held.candidates), scores):
        docs = [(float(s), items[int(c)]) for c, s in zip(cand, row)]
        docs.sort(key=lambda d: (d[0], d[1].encode()), reverse=True)
        lines.extend(f"{qid} Q0 {doc} {rank} {score!r} {tag}" for rank, (score, doc) in enumerate(docs, 1))
    write_text_atomic(Path(path), "\n".join(lines) + ("\n" if lines else ""))


def write_qrels(path: Path, dataset: PreparedDataset, split: str) -> None:
    """Writes the held-out item of every query of `split` as its one relevant document."""
    held = dataset.valid if split == "valid" else dataset.test
    lines = [f"{qid} 0 {dataset.items[int(i)]} 1" for qid, i in zip(_queries(dataset, split), held.item)]
    write_text_atomic(Path(path), "\n".join(lines) + ("\n" if lines else ""))


@dataclass(frozen=True)
class Run:
    """A parsed run: per query, its documents and scores in file order."""

    docs: dict[str, list[str]]
    scores: dict[str, list[float]]


def read_run(path: Path) -> Run:
    """Parses a TREC run file; a malformed line raises XmfastError naming file and line."""
    path = Path(path)
    docs: dict[str, list[str]] = defaultdict(list)
    scores: dict[str, list[float]] = defaultdict(list)
    seen: dict[str, set[str]] = defaultdict(set)
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise XmfastError(f"{path}:{number}: expected 6 columns (qid Q0 docno rank score tag), found {len(parts)}")
        qid, _, doc, _, score_text, _ = parts
        try:
            score = float(score_text)
        except ValueError:
            raise XmfastError(f"{path}:{number}: score {score_text!r} is not a number") from None
        if np.isnan(score):
            raise XmfastError(f"{path}:{number}: score is NaN")
        if doc in seen[qid]:
            raise XmfastError(f"{path}:{number}: document {doc} appears twice for query {qid}")
        seen[qid].add(doc)
        docs[qid].append(doc)
        scores[qid].append(score)
    return Run(dict(docs), dict(scores))


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Parses a TREC qrels file into {qid: {docno: relevance}}."""
    path = Path(path)
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 4:
            raise XmfastError(f"{path}:{number}: expected 4 columns (qid iteration docno relevance), found {len(parts)}")
        try:
            out[parts[0]][parts[2]] = int(parts[3])
        except ValueError:
            raise XmfastError(f"{path}:{number}: relevance {parts[3]!r} is not an integer") from None
    return dict(out)


def _lines(path: Path, what: str = "a TREC file"):
    """Numbered non-blank lines of a UTF-8 text file (a leading byte-order mark skipped); a file
    that cannot be read is one error naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
    except FileNotFoundError:
        raise XmfastError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise XmfastError(f"{path}: not UTF-8 text ({e})") from None
    except IsADirectoryError:
        raise XmfastError(f"{path}: a directory, not {what}") from None
    except OSError as e:
        raise XmfastError(f"{path}: cannot read ({e.strerror or e})") from None


def run_to_scores(run: Run, dataset: PreparedDataset, split: str, path: Path | str = "run") -> np.ndarray:
    """Scores of the stored candidates of `split` taken from a run (documents the run lacks are
    an error; documents outside the candidates are ignored)."""
    held = dataset.valid if split == "valid" else dataset.test
    out = np.empty(held.candidates.shape, dtype=np.float64)
    items = dataset.items
    for q, (qid, cand) in enumerate(zip(_queries(dataset, split), np.asarray(held.candidates))):
        if qid not in run.docs:
            raise XmfastError(f"{path}: no scores for query {qid}")
        lookup = dict(zip(run.docs[qid], run.scores[qid]))
        for j, c in enumerate(cand):
            doc = items[int(c)]
            if doc not in lookup:
                raise XmfastError(f"{path}: query {qid} has no score for candidate {doc}")
            out[q, j] = lookup[doc]
    return out
