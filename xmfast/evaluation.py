"""Ranked evaluation of held-out items: sampled candidates or full ranking.

Every number xmfast reports is computed here, on top of two Rust helpers: :func:`core.standings`
counts, per query, the candidates scoring above and tied with the positive (one pass, no sort),
and :func:`core.metric_values` turns those counts into metrics under a tie policy.

* **Sampled** evaluation scores the candidates stored in the prepared dataset (column 0 is the
  held-out item, then the negatives), so every model sees identical candidates.
* **Full ranking** scores every item of the query's market and leaves out the user's known items
  in that market: the training items, and the validation item when evaluating on test.

Tie policies (see :class:`EvalConfig`): ``pessimistic`` (default) makes the positive lose every
tie, ``optimistic`` win every tie, ``expected`` averages over random tie orders and ``trec``
orders ties by item id as a string, descending, as trec_eval and pytrec_eval do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from xmfast import _trec_format, core, outputs
from xmfast._io import loads_strict, write_json_atomic
from xmfast.dataset import HeldOut, PreparedDataset
from xmfast.errors import XmfastError, check_int

TiePolicy = Literal["pessimistic", "optimistic", "expected", "trec"]
TIE_POLICIES: tuple[str, ...] = ("pessimistic", "optimistic", "expected", "trec")
Split = Literal["valid", "test"]
Mode = Literal["sampled", "full"]
CUT_MEASURES: tuple[str, ...] = ("hr", "ndcg", "precision", "map")
PLAIN_MEASURES: tuple[str, ...] = ("mrr", "auc")
RESULTS_FORMAT = outputs.EVALUATION_FORMAT


@dataclass(frozen=True)
class EvalConfig:
    """What to compute: measures at cut-offs, and how ties are ranked."""

    cutoffs: tuple[int, ...] = (5, 10, 20)
    measures: tuple[str, ...] = ("hr", "ndcg", "mrr")
    ties: TiePolicy = "pessimistic"

    def __post_init__(self) -> None:
        if self.ties not in TIE_POLICIES:
            raise XmfastError(f"unknown tie policy {self.ties!r} (expected one of {', '.join(TIE_POLICIES)})")
        unknown = [m for m in self.measures if m not in CUT_MEASURES + PLAIN_MEASURES]
        if unknown:
            raise XmfastError(
                f"unknown measure {unknown[0]!r} (expected any of {', '.join(CUT_MEASURES + PLAIN_MEASURES)})"
            )
        if not self.cutoffs or any(k < 1 for k in self.cutoffs):
            raise XmfastError("cut-offs must be positive integers")
        for k in self.cutoffs:
            check_int("cut-off", k)  # the Rust metrics read k as a u32

    @property
    def metric_names(self) -> list[str]:
        """Canonical names, e.g. ``hr@10``, ``ndcg@10``, ``mrr``."""
        names = [f"{m}@{k}" for m in self.measures if m in CUT_MEASURES for k in self.cutoffs]
        return names + [m for m in self.measures if m in PLAIN_MEASURES]


RUN_EVAL = EvalConfig(cutoffs=(5, 10, 20), measures=("hr", "ndcg", "mrr"))
"""What every run records of its selected model (valid.json, test.json, results.json)."""


@dataclass(frozen=True)
class Standings:
    """Per query: candidates above the positive, tied with it, ties trec ranks first, and the
    number of other candidates. Enough to compute any metric under any tie policy."""

    greater: np.ndarray
    ties: np.ndarray
    trec_lost: np.ndarray
    others: np.ndarray

    def __len__(self) -> int:
        return int(self.greater.shape[0])

    @classmethod
    def concat(cls, parts: list[Standings]) -> Standings:
        if not parts:
            empty = np.zeros(0, dtype=np.uint32)
            return cls(empty, empty, empty, empty)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("greater", "ties", "trec_lost", "others")))

    def take(self, index: np.ndarray) -> Standings:
        return Standings(self.greater[index], self.ties[index], self.trec_lost[index], self.others[index])

    def rank(self, policy: TiePolicy) -> np.ndarray:
        """0-based rank of the positive (for ``expected``: the mean rank g + t/2, as float)."""
        g = self.greater.astype(np.int64)
        if policy == "pessimistic":
            return g + self.ties
        if policy == "optimistic":
            return g
        if policy == "trec":
            return g + self.trec_lost
        return g + self.ties / 2.0

    def values(self, metrics: list[str], policy: TiePolicy) -> np.ndarray:
        _, values = core.metric_values(self.greater, self.ties, self.trec_lost, self.others, metrics, policy)
        return values


def standings(
    scores: np.ndarray,
    positive: np.ndarray | None = None,
    *,
    keys: np.ndarray | None = None,
    column_keys: np.ndarray | None = None,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> Standings:
    """:func:`core.standings` with dtype handling: float16/bfloat16-like inputs are widened to
    float32 (exact, so ties and order are kept); other float types are used as they are."""
    scores = _as_score_array(scores)
    kwargs: dict[str, Any] = {}
    if keys is not None:
        kwargs["keys"] = np.ascontiguousarray(keys, dtype=np.uint32)
    if column_keys is not None:
        kwargs["column_keys"] = np.ascontiguousarray(column_keys, dtype=np.uint32)
    if exclude is not None:
        kwargs["exclude_offsets"], kwargs["exclude_items"] = exclude
    pos = None if positive is None else np.ascontiguousarray(positive, dtype=np.uint32)
    try:
        d = core.standings(scores, pos, **kwargs)
    except ValueError as e:
        raise XmfastError(f"scores: {e}") from None
    return Standings(d["greater"], d["ties"], d["trec_lost"], d["others"])


def _as_score_array(scores: Any) -> np.ndarray:
    """Scores as float32 or float64 for the Rust ranking, compared exactly whatever their dtype.

    Narrower floats widen exactly. Integers (and floats wider than float64) are cast to
    float64 when every value survives the cast; otherwise each value is replaced by its rank
    among the array's distinct values, which keeps every order and every tie: a plain cast made
    distinct integers above 2^53 equal, so they silently ranked as ties."""
    a = np.asarray(scores)
    if a.dtype == np.float32 or a.dtype == np.float64:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        return np.ascontiguousarray(a, dtype=np.float32)  # exact widening
    if a.dtype.kind not in "iubf":
        raise XmfastError(f"scores must be a float array, not {a.dtype}")
    wide = a.astype(np.float64)
    if a.dtype.kind in "iu":
        exact = a.size == 0 or (int(a.min()) >= -EXACT_INTEGERS and int(a.max()) <= EXACT_INTEGERS)
    else:
        exact = a.dtype.kind == "b" or bool(np.array_equal(wide.astype(a.dtype), a, equal_nan=True))
    if exact:
        return np.ascontiguousarray(wide)
    _, inverse = np.unique(a, return_inverse=True)
    ranks = inverse.reshape(a.shape).astype(np.float64)
    if a.dtype.kind == "f":
        ranks[np.isnan(a)] = np.nan  # still refused where NaN is
    return np.ascontiguousarray(ranks)


def column_means(values: np.ndarray) -> np.ndarray:
    """``values.mean(axis=0)`` of a queries × metrics matrix, to the bit: in one pass in Rust
    for two or more columns (numpy's strided reduction is several times slower), by numpy itself
    for one (where it sums pairwise)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] > 1:
        return core.column_means(values)
    return values.mean(axis=0)


EXACT_INTEGERS = 2**53
"""Every integer of at most this magnitude is exactly a float64."""


class Ids(Sequence[str]):
    """The original ids of a vocabulary's numbers `index`, each read when asked for: an
    evaluation keeps its queries' user and item ids this way, so that computing metrics over
    millions of queries builds no million Python strings unless per-user records are written."""

    __slots__ = ("index", "vocab")

    def __init__(self, vocab: core.Vocab, index: np.ndarray) -> None:
        self.vocab = vocab
        self.index = np.asarray(index)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, i: Any) -> Any:  # an int gives a str, a slice or an index array gives Ids
        if isinstance(i, (int, np.integer)):
            return self.vocab[int(self.index[i])]
        return Ids(self.vocab, self.index[i])

    def __repr__(self) -> str:
        return f"Ids({list(self[:3])}{', ...' if len(self) > 3 else ''}; {len(self)} ids)"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the plain list of ids: the vocabulary is a Rust object, and an evaluation
        crosses processes whole (rank 0's results broadcast under torchrun)."""
        return (list, ([self.vocab[int(i)] for i in self.index],))


@dataclass
class Evaluation:
    """Per-query results of one evaluation, with their aggregates."""

    split: str
    mode: Mode
    config: EvalConfig
    markets: list[str]
    query_market: np.ndarray  # index into `markets`, per query
    query_user: Sequence[str]  # original user id, per query (Ids: read on demand)
    positive_item: Sequence[str]  # original item id of the held-out item, per query
    standings: Standings
    values: np.ndarray  # queries × metrics
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return self.config.metric_names

    def __len__(self) -> int:
        return len(self.standings)

    @property
    def tie_share(self) -> float:
        """Share of queries whose positive is tied with at least one other candidate."""
        return float(np.mean(self.standings.ties > 0)) if len(self) else 0.0

    def aggregate(self, mask: np.ndarray | None = None) -> dict[str, float | None]:
        """Mean of each metric over the queries (all, or those of `mask`); None, written as
        JSON null, where there is no query: an undefined mean is not a number."""
        values = self.values if mask is None else self.values[mask]
        if values.shape[0] == 0:
            return {m: None for m in self.metrics}
        return {m: float(v) for m, v in zip(self.metrics, column_means(values))}

    def per_market(self) -> dict[str, dict[str, float]]:
        out = {}
        for i, name in enumerate(self.markets):
            mask = self.query_market == i
            if mask.any():
                out[name] = self.aggregate(mask)
        return out

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.query_market == i)) for i, name in enumerate(self.markets)}

    def ranks(self) -> np.ndarray:
        return self.standings.rank(self.config.ties)

    def summary(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "split": self.split,
            "mode": self.mode,
            "ties": self.config.ties,
            "metrics": self.metrics,
            "queries": len(self),
            "tie_share": self.tie_share,
            "overall": self.aggregate(),
            "per_market": self.per_market(),
            "queries_per_market": self.counts(),
            **self.info,
        }

    def to_json(self, path: Path, *, per_user: bool = True) -> None:
        """Writes aggregates and, with `per_user`, one record per query (user id, market, rank of
        the positive, tie counts and every metric) for case studies and significance tests."""
        data = self.summary()
        if per_user:
            ranks = self.ranks()
            records = []
            for q in range(len(self)):
                rec: dict[str, Any] = {
                    "market": self.markets[int(self.query_market[q])],
                    "user": self.query_user[q],
                    "item": self.positive_item[q],
                    "rank": float(ranks[q]) if self.config.ties == "expected" else int(ranks[q]),
                    "greater": int(self.standings.greater[q]),
                    "ties": int(self.standings.ties[q]),
                    "candidates": int(self.standings.others[q]) + 1,
                }
                rec.update({m: float(v) for m, v in zip(self.metrics, self.values[q])})
                records.append(rec)
            data["per_user"] = records
        write_json_atomic(Path(path), data)


def read_results(path: Path) -> dict[str, Any]:
    """Reads an evaluation JSON written by :meth:`Evaluation.to_json`."""
    path = Path(path)
    try:
        data = loads_strict(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XmfastError(f"{path}: no such results file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise XmfastError(f"{path}: not a JSON results file ({e})") from None
    except OSError as e:  # a directory, a file without read permission
        raise XmfastError(f"{path}: cannot read it as a results file ({e.strerror or e})") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise XmfastError(f"{path}: not an xmfast evaluation results file")
    return data


# ---- scoring models ------------------------------------------------------------------------


class Scorer(Protocol):
    """Anything that scores items for (market, user) groups of a prepared dataset. It may say
    what its scores are in a `meaning` string (``recommend`` prints it under its tables)."""

    def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of `items[i, j]` for group `groups[i]`; `items` is (n, c), result (n, c)."""
        ...

    def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of every item of the 1-d `items` for each group: (len(groups), len(items))."""
        ...


def held_out(dataset: PreparedDataset, split: Split) -> HeldOut:
    if split not in ("valid", "test"):
        raise XmfastError(f"unknown split {split!r} (expected valid or test)")
    return dataset.valid if split == "valid" else dataset.test


def _queries_of(dataset: PreparedDataset, held: HeldOut, markets: list[str] | None) -> np.ndarray:
    """Indices of the held-out rows whose market is in `markets` (all rows when None)."""
    if markets is None:
        return np.arange(len(held))
    unknown = [m for m in markets if m not in dataset.markets]
    if unknown:
        raise XmfastError(f"market {unknown[0]!r} is not in the dataset (it has {', '.join(dataset.markets)})")
    codes = [dataset.markets.index(m) for m in markets]
    market_of = np.asarray(dataset.group_market)[np.asarray(held.group)]
    if len(codes) == 1:  # the usual case (the target), without np.isin's set machinery
        return np.flatnonzero(market_of == codes[0])
    return np.flatnonzero(np.isin(market_of, codes))


def _take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]`` for ascending distinct `rows`: a view, not a copy, when they are one range
    (a market's held-out rows are: groups are numbered market by market)."""
    a = np.asarray(a)
    if rows.size == a.shape[0]:
        return a
    if rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size:
        return a[int(rows[0]) : int(rows[-1]) + 1]
    return a[rows]


def _query_ids(dataset: PreparedDataset, held: HeldOut, rows: np.ndarray) -> tuple[np.ndarray, Ids, Ids]:
    """Market, user and held-out item of the held-out rows `rows`."""
    group = _take_rows(held.group, rows)
    market = np.asarray(dataset.group_market[group], dtype=np.int64)
    return market, Ids(dataset.users, dataset.group_user[group]), Ids(dataset.items, _take_rows(held.item, rows))


def evaluate_sampled(
    dataset: PreparedDataset,
    split: Split,
    scores: np.ndarray,
    config: EvalConfig = EvalConfig(),
    *,
    markets: list[str] | None = None,
) -> Evaluation:
    """Evaluates scores of the stored candidates of `split` (same shape as its candidates,
    column 0 the held-out item). `markets` restricts the queries to those markets."""
    held = held_out(dataset, split)
    scores = _as_score_array(scores)
    if scores.shape != held.candidates.shape:
        raise XmfastError(
            f"scores have shape {scores.shape} but the {split} candidates have shape {held.candidates.shape}"
        )
    rows = _queries_of(dataset, held, markets)
    return _sampled(dataset, split, held, rows, _take_rows(scores, rows), config)  # only the queries reported


def _sampled(dataset: PreparedDataset, split: Split, held: HeldOut, rows: np.ndarray, scores: np.ndarray,
             config: EvalConfig) -> Evaluation:
    """The evaluation of the held-out rows `rows` (ascending) from their scores (one row each)."""
    keys = None
    if config.ties == "trec":
        keys = dataset.items.order_keys()[_take_rows(held.candidates, rows)]
    return _finish(dataset, split, "sampled", held, standings(scores, keys=keys), config, rows)


NPY_MAGIC = b"\x93NUMPY"
SCORES_FORMATS = "a scores file is a .npy float matrix (queries × stored candidates, saved with numpy.save) or a TREC run"


def read_scores(path: Path, dataset: PreparedDataset, split: Split) -> np.ndarray:
    """Scores of the stored candidates of `split` from a file: a .npy matrix (recognised by its
    NumPy header, whatever the name) or else a TREC run. Every problem is one XmfastError that
    names the file; nothing is unpickled."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise XmfastError(f"{path}: no such scores file") from None
    except IsADirectoryError:
        raise XmfastError(f"{path}: a directory, not a scores file; {SCORES_FORMATS}") from None
    except OSError as e:
        raise XmfastError(f"{path}: cannot read the scores file ({e.strerror or e})") from None
    if not head.startswith(NPY_MAGIC):
        if path.suffix.lower() == ".npy":
            raise XmfastError(f"{path}: not a .npy file (no NumPy header); {SCORES_FORMATS}")
        if head.startswith(b"PK\x03\x04"):
            raise XmfastError(f"{path}: a zip archive (.npz?), not one scores matrix; {SCORES_FORMATS}")
        try:
            run = _trec_format.read_run(path)
        except XmfastError as e:
            if "expected 6 columns" in str(e) or "not UTF-8 text" in str(e):
                raise XmfastError(f"{e}; {SCORES_FORMATS}") from None
            raise
        return _trec_format.run_to_scores(run, dataset, split, path)
    try:
        scores = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):  # numpy's advice to set allow_pickle=True would be unsafe here
            raise XmfastError(f"{path}: holds Python objects (a pickled object array), not numbers; {SCORES_FORMATS}") from None
        raise XmfastError(f"{path}: damaged .npy file ({_one_line(e)}); {SCORES_FORMATS}") from None
    except (EOFError, OSError, SyntaxError, TypeError, UnicodeError) as e:
        raise XmfastError(f"{path}: damaged .npy file ({_one_line(e)}); {SCORES_FORMATS}") from None
    try:
        scores = _as_score_array(scores)
    except XmfastError as e:
        raise XmfastError(f"{path}: {e}") from None
    expected = held_out(dataset, split).candidates.shape
    if scores.shape != expected:
        raise XmfastError(
            f"{path}: scores have shape {scores.shape} but the {split} candidates have shape {expected} "
            f"(one row per {split} query, column 0 its held-out item); score the stored {split} candidates"
        )
    nan = np.isnan(scores)
    if nan.any():
        row, col = (int(x) for x in np.argwhere(nan)[0])
        raise XmfastError(
            f"{path}: {int(nan.sum()):,} scores are NaN (first: row {row}, column {col}); give every candidate a number"
        )
    return scores


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def evaluate_scorer(
    dataset: PreparedDataset,
    split: Split,
    scorer: Scorer,
    config: EvalConfig = EvalConfig(),
    *,
    full: bool = False,
    markets: list[str] | None = None,
    batch_queries: int = 4096,
    max_scores: int = 1 << 25,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Evaluates a scorer on `split`: on the stored candidates, or with `full` over every item of
    each query's market (known items left out). Work is chunked to bound memory."""
    held = held_out(dataset, split)
    n = len(held)
    if not full:
        candidates = np.asarray(held.candidates)
        # Only the queries that will be reported are scored and ranked.
        wanted = _queries_of(dataset, held, markets)
        scores: np.ndarray | None = None
        for start in range(0, wanted.size, batch_queries):
            rows = wanted[start : start + batch_queries]
            part = np.asarray(scorer.score(np.asarray(held.group)[rows], candidates[rows]))
            if scores is None:
                scores = np.zeros((wanted.size, candidates.shape[1]), dtype=part.dtype)
            scores[start : start + rows.size] = part
            if progress:
                progress(min(start + batch_queries, wanted.size), wanted.size)
        if scores is None:
            scores = np.zeros((wanted.size, candidates.shape[1]), dtype=np.float32)
        return _sampled(dataset, split, held, wanted, _as_score_array(scores), config)
    parts_st: list[Standings] = []
    order: list[np.ndarray] = []
    done = 0
    n = _queries_of(dataset, held, markets).size
    for chunk in full_ranking_chunks(dataset, split, max_scores=max_scores, batch_queries=batch_queries,
                                     markets=markets):
        scores = scorer.score_all(np.asarray(held.group[chunk.queries]), chunk.catalog)
        st = standings(
            scores, chunk.positive, column_keys=chunk.column_keys(dataset) if config.ties == "trec" else None,
            exclude=chunk.exclude,
        )
        parts_st.append(st)
        order.append(chunk.queries)
        done += len(chunk.queries)
        if progress:
            progress(done, n)
    index = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    ascending = np.argsort(index, kind="stable")
    return _finish(dataset, split, "full", held, Standings.concat(parts_st).take(ascending), config, index[ascending])


@dataclass(frozen=True)
class FullRankingChunk:
    """Queries of one market and the columns to rank them over (the market's catalog)."""

    market: int
    queries: np.ndarray  # indices into the split's held-out rows
    catalog: np.ndarray  # item ids, sorted: the columns
    positive: np.ndarray  # column of each query's held-out item
    exclude: tuple[np.ndarray, np.ndarray]  # CSR of columns to leave out, per query

    def column_keys(self, dataset: PreparedDataset) -> np.ndarray:
        return dataset.items.order_keys()[self.catalog]


def full_ranking_chunks(
    dataset: PreparedDataset, split: Split, *, max_scores: int = 1 << 25, batch_queries: int = 4096,
    markets: list[str] | None = None,
) -> Iterator[FullRankingChunk]:
    """Splits a split's queries (those of `markets`, default all) by market into chunks of at
    most `max_scores` scores each, with the known items (training, plus validation when ranking
    test) as column exclusions."""
    held = held_out(dataset, split)
    group = np.asarray(held.group)
    market_of = np.asarray(dataset.group_market[group])
    wanted = set(dataset.markets if markets is None else markets)
    for m in range(len(dataset.markets)):
        if dataset.markets[m] not in wanted:
            continue
        queries = np.flatnonzero(market_of == m)
        if queries.size == 0:
            continue
        catalog = np.asarray(dataset.catalog(dataset.markets[m]))
        rows = max(1, min(batch_queries, max_scores // max(1, catalog.size)))
        for start in range(0, queries.size, rows):
            q = queries[start : start + rows]
            g = group[q]
            lo = dataset.train_offsets[g].astype(np.int64)
            hi = dataset.train_offsets[g + 1].astype(np.int64)
            sizes = hi - lo
            known = [np.asarray(dataset.train_item[a:b]) for a, b in zip(lo, hi)]
            if split == "test":
                known = [np.append(k, dataset.valid.item[qi]) for k, qi in zip(known, q)]
                sizes = sizes + 1
            offsets = np.zeros(q.size + 1, dtype=np.uint64)
            np.cumsum(sizes, out=offsets[1:])
            flat = np.concatenate(known) if known else np.zeros(0, dtype=np.uint32)
            columns = np.searchsorted(catalog, flat).astype(np.uint32)
            positive = np.searchsorted(catalog, np.asarray(held.item)[q]).astype(np.uint32)
            yield FullRankingChunk(m, q, catalog, positive, (offsets, columns))


def _finish(
    dataset: PreparedDataset,
    split: str,
    mode: Mode,
    held: HeldOut,
    st: Standings,
    config: EvalConfig,
    rows: np.ndarray,
) -> Evaluation:
    """The evaluation of the held-out rows `rows` (ascending), whose standings `st` holds."""
    query_market, users, items = _query_ids(dataset, held, rows)
    values = st.values(config.metric_names, config.ties)
    info = {"dataset": str(dataset.path) if dataset.path else None, "fingerprint": dataset.fingerprint,
            "protocol": dataset.protocol, "config": {f.name: getattr(config, f.name) for f in fields(config)}}
    return Evaluation(split, mode, config, list(dataset.markets), query_market, users, items, st, values, info)
