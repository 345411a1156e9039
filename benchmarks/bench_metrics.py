"""Ranked evaluation speed (issues 4 and 25).

* Sampled, every size (issue 25): from 100 × 100 to 1M × 1000 scores (float32), xmfast's
  sampled evaluation (``xmfast.evaluation.standings``, every metric: HR/NDCG/precision/MAP at
  k = 5, 10, 20, MRR and AUC, and their means) against plain numpy HR@10 and NDCG@10 of the same
  matrix, interleaved in the same run: target xmfast ≤ numpy at every size. Then
  ``evaluate_sampled`` on a prepared dataset (the real uk test set, or the sample's), with the
  queries' ids and the market filter, against the same numpy on the same rows.
* Sampled, 1M queries × 100 candidates (issue 4): target under 0.5 s on 2 cores; also the GB/s
  against reading the scores once, a vectorised numpy implementation of every metric and ranx
  (if installed).
* Full ranking: 100k users × 50k items, scores from 64-d embeddings in chunks, ranking of the
  held-out item with training items excluded, and top-10 retrieval.

Usage: python benchmarks/bench_metrics.py [--queries N] [--max-cells N] [--full-users N] [--full-items N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import (
    REAL_DATA, SAMPLE_DATA, OtherLoad, console, fmt_s, median, print_machine, print_targets, repeat, table, timed,
    verdict,
)

from xmfast import core, evaluation
from xmfast.evaluation import EvalConfig

CUTOFFS = (5, 10, 20)
CONFIG = EvalConfig(cutoffs=CUTOFFS, measures=("hr", "ndcg", "precision", "map", "mrr", "auc"))


def xmfast_metrics(scores: np.ndarray) -> np.ndarray:
    d = core.standings(scores)
    _, values = core.metric_values(d["greater"], d["ties"], d["trec_lost"], d["others"], CONFIG.metric_names)
    return values.mean(axis=0)


def numpy_metrics(scores: np.ndarray) -> np.ndarray:
    """The usual vectorised numpy way: count candidates above the positive (pessimistic ties)."""
    pos = scores[:, :1]
    rank = (scores[:, 1:] >= pos).sum(axis=1)
    n = scores.shape[1] - 1
    out = []
    for k in CUTOFFS:
        out.append((rank < k).mean())
    for k in CUTOFFS:
        out.append(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0).mean())
    for k in CUTOFFS:
        out.append(((rank < k) / k).mean())
    for k in CUTOFFS:
        out.append(np.where(rank < k, 1.0 / (rank + 1.0), 0.0).mean())
    out.append((1.0 / (rank + 1.0)).mean())
    out.append(((n - rank) / n).mean())
    return np.array(out)


SIZES = [(100, 100), (1_000, 100), (3_352, 100), (10_000, 100), (100_000, 100), (1_000_000, 100),
         (100, 1_000), (1_000, 1_000), (10_000, 1_000), (100_000, 1_000), (1_000_000, 1_000)]


def xmfast_evaluation(scores: np.ndarray) -> np.ndarray:
    """What evaluate_sampled computes from a score matrix: standings, every metric, the means."""
    return evaluation.column_means(evaluation.standings(scores).values(CONFIG.metric_names, CONFIG.ties))


def numpy_two(scores: np.ndarray) -> np.ndarray:
    """Plain numpy HR@10 and NDCG@10 (the positive in column 0 loses ties)."""
    rank = (scores[:, 1:] >= scores[:, :1]).sum(axis=1)
    hit = rank < 10
    return np.array([hit.mean(), np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean()])


def interleaved(fns: list, cells: int) -> list[float]:
    """Median seconds of each function, called in turn (so load from others falls on all alike);
    more rounds for small inputs."""
    rounds = max(3, min(301, int(3e7 / cells)))
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for t, fn in zip(times, fns):
            t.append(timed(fn)[0])
    return [median(t) for t in times]


def one_size(rng: np.random.Generator, n: int, c: int) -> tuple[float, float, bool]:
    """(xmfast seconds, numpy seconds, whether their HR@10 and NDCG@10 agree) on n × c scores."""
    scores = rng.random((n, c), dtype=np.float32)
    scores[:, 0] += 0.15  # a model better than random
    t_x, t_np = interleaved([lambda: xmfast_evaluation(scores), lambda: numpy_two(scores)], n * c)
    ours = xmfast_evaluation(scores)[[CONFIG.metric_names.index("hr@10"), CONFIG.metric_names.index("ndcg@10")]]
    return t_x, t_np, bool(np.allclose(ours, numpy_two(scores), rtol=0, atol=1e-12))


def bench_sizes(max_cells: int) -> dict[str, bool]:
    """xmfast's sampled evaluation (every metric) against numpy's HR@10 + NDCG@10, per size."""
    tab = table(f"Sampled evaluation at every size: xmfast (standings + {len(CONFIG.metric_names)} metrics + means) "
                "against numpy HR@10 + NDCG@10, same matrix, interleaved (median)",
                ["queries × candidates", "xmfast", "numpy (2 metrics)", "numpy / xmfast", "agrees", "target"])
    verdicts = {}
    rng = np.random.default_rng(0)
    for n, c in SIZES:
        if n * c > max_cells:
            tab.add_row(f"{n:,} × {c:,}", "skipped (--max-cells)", "", "", "", "")
            continue
        t_x, t_np, agree = one_size(rng, n, c)
        ok = t_x <= t_np
        verdicts[f"{n:,} × {c:,}: xmfast ≤ numpy (2 metrics)"] = ok and agree
        tab.add_row(f"{n:,} × {c:,}", fmt_s(t_x), fmt_s(t_np), f"{t_np / t_x:.1f}×", "yes" if agree else "NO", verdict(ok))
    console.print(tab)
    return verdicts


def bench_dataset() -> dict[str, bool]:
    """evaluate_sampled on a prepared dataset's test set: the whole path (market filter, query
    ids, Evaluation) against numpy's two metrics on the same rows."""
    from xmfast.prepare import PrepareConfig, prepare

    real = all((REAL_DATA / f"{m}_5core.txt").is_file() for m in ("ca", "de", "fr", "in", "jp", "mx", "uk"))
    data, target = (REAL_DATA, "uk") if real else (SAMPLE_DATA, "in")
    ds = prepare(Path(data), None, PrepareConfig(target=target, sources="all"))
    shape = ds.test.candidates.shape
    scores = np.random.default_rng(2).random(shape, dtype=np.float32)
    scores[:, 0] += 0.15
    mine = np.flatnonzero(np.asarray(ds.group_market)[np.asarray(ds.test.group)] == ds.markets.index(target))
    tab = table(f"evaluate_sampled on the {'real' if real else 'sample'} test set ({target} + all sources, "
                f"{len(CONFIG.metric_names)} metrics) against numpy HR@10 + NDCG@10 of the same rows",
                ["queries", "xmfast evaluate_sampled", "numpy (2 metrics)", "numpy / xmfast", "target"])
    verdicts = {}
    for label, markets, rows in ((f"{target} only: {mine.size:,} × {shape[1]}", [target], mine),
                                 (f"all markets: {shape[0]:,} × {shape[1]}", None, None)):
        sub = scores if rows is None else np.ascontiguousarray(scores[rows])
        t_x, t_np = interleaved([lambda: evaluation.evaluate_sampled(ds, "test", scores, CONFIG, markets=markets),
                                 lambda: numpy_two(sub)], sub.size)
        ok = t_x <= t_np
        verdicts[f"evaluate_sampled, {label}: ≤ numpy"] = ok
        tab.add_row(label, fmt_s(t_x), fmt_s(t_np), f"{t_np / t_x:.1f}×", verdict(ok))
    console.print(tab)
    return verdicts


RANX_METRICS = (
    [f"hit_rate@{k}" for k in CUTOFFS] + [f"ndcg@{k}" for k in CUTOFFS] + [f"precision@{k}" for k in CUTOFFS]
    + [f"map@{k}" for k in CUTOFFS] + ["mrr"]
)


def ranx_inputs(scores: np.ndarray):  # noqa: ANN201 - ranx types, imported lazily
    """ranx's Qrels and Run of a score matrix (column 0 the only relevant candidate)."""
    from ranx import Qrels, Run

    n, c = scores.shape
    q_ids = [f"q{i}" for i in range(n)]
    doc_ids = [f"d{j}" for j in range(c)]
    qrels = Qrels.from_dict({q: {"d0": 1} for q in q_ids})
    run = Run.from_dict({q: dict(zip(doc_ids, row.tolist())) for q, row in zip(q_ids, scores)})
    return qrels, run


def ranx_metrics(qrels, run) -> np.ndarray:  # noqa: ANN001
    from ranx import evaluate

    res = evaluate(qrels, run, RANX_METRICS)
    return np.array([res[m] for m in RANX_METRICS])


def ranx_available() -> bool:
    try:
        import ranx  # noqa: F401
    except ImportError:
        return False
    return True


def bench_sampled(queries: int, ranx_queries: int) -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((queries, 100), dtype=np.float32)
    scores[:, 0] += 0.15  # a model that is better than random
    t_x = repeat(lambda: xmfast_metrics(scores), 5)
    t_np = repeat(lambda: numpy_metrics(scores), 3)
    mx, mn = xmfast_metrics(scores), numpy_metrics(scores)
    agree = bool(np.allclose(mx, mn, atol=1e-12))
    gbps = scores.nbytes / median(t_x) / 1e9
    tab = table(f"Sampled evaluation: {queries:,} queries × 100 candidates, {len(CONFIG.metric_names)} metrics",
                ["implementation", "median", "GB/s of scores", "vs xmfast", "target", "agrees"])
    tab.add_row("xmfast (Rust)", fmt_s(median(t_x)), f"{gbps:.2f}", "1.0×", verdict(median(t_x) < 0.5), "-")
    tab.add_row("numpy (vectorised)", fmt_s(median(t_np)), f"{scores.nbytes / median(t_np) / 1e9:.2f}",
                f"{median(t_np) / median(t_x):.1f}× slower", "", "yes" if agree else "NO")
    small = scores[:ranx_queries]
    if ranx_available():
        ranx_metrics(*ranx_inputs(small[:100]))  # numba compiles ranx's kernels on first use: not timed
        t_dicts, (qrels, run) = timed(lambda: ranx_inputs(small))
        t_eval = median(repeat(lambda: ranx_metrics(qrels, run), 3))
        mr = ranx_metrics(qrels, run)
        t_xs = median(repeat(lambda: xmfast_metrics(small), 5))
        ours = xmfast_metrics(small)[:13]
        same = "yes" if np.allclose(ours, mr, atol=1e-9) else "NO"
        tab.add_row(f"xmfast on the first {ranx_queries:,} queries", fmt_s(t_xs), "", "1.0×", "", "-")
        tab.add_row(f"ranx evaluate, same {ranx_queries:,} queries (13 metrics, compiled)", fmt_s(t_eval), "",
                    f"{t_eval / t_xs:.0f}× slower", "", same)
        tab.add_row("ranx: building its Qrels/Run from the matrix", fmt_s(t_dicts), "", f"{t_dicts / t_xs:.0f}× slower", "", "")
    else:
        tab.add_row("ranx", "not installed (pip install '.[bench]')", "", "", "", "")
    # Reading the scores once: the memory-bandwidth floor.
    t_sum = median(repeat(lambda: scores.sum(dtype=np.float64), 3))
    tab.add_row("numpy sum of the scores (one read)", fmt_s(t_sum), f"{scores.nbytes / t_sum / 1e9:.2f}", "", "", "")
    console.print(tab)


def bench_full(users: int, items: int, dim: int = 64) -> None:
    rng = np.random.default_rng(1)
    user_emb = rng.standard_normal((users, dim), dtype=np.float32)
    item_emb = rng.standard_normal((items, dim), dtype=np.float32)
    positive = rng.integers(0, items, size=users).astype(np.uint32)
    history = 20
    ex_items = rng.integers(0, items, size=users * history).astype(np.uint32)
    ex_offsets = np.arange(0, users * history + 1, history, dtype=np.uint64)
    chunk = max(1, (1 << 26) // items)
    t_score = t_rank = t_top = 0.0
    hits = 0
    for start in range(0, users, chunk):
        stop = min(users, start + chunk)
        t0 = time.perf_counter()
        s = user_emb[start:stop] @ item_emb.T
        t1 = time.perf_counter()
        off = ex_offsets[start : stop + 1] - ex_offsets[start]
        ex = ex_items[int(ex_offsets[start]) : int(ex_offsets[stop])]
        d = core.standings(s, positive[start:stop], exclude_offsets=off, exclude_items=ex)
        t2 = time.perf_counter()
        idx, _ = core.top_k(s, 10, exclude_offsets=off, exclude_items=ex)
        t3 = time.perf_counter()
        hits += int(((d["greater"] + d["ties"]) < 10).sum())
        t_score += t1 - t0
        t_rank += t2 - t1
        t_top += t3 - t2
    n = users * items
    tab = table(f"Full ranking: {users:,} users × {items:,} items (64-d dot products, 20 exclusions per user)",
                ["step", "time", "scores/s"])
    tab.add_row("scoring (numpy matmul, float32)", fmt_s(t_score), f"{n / t_score / 1e9:.2f} G")
    tab.add_row("rank of the held-out item (xmfast standings)", fmt_s(t_rank), f"{n / t_rank / 1e9:.2f} G")
    tab.add_row("top-10 per user (xmfast top_k)", fmt_s(t_top), f"{n / t_top / 1e9:.2f} G")
    console.print(tab)
    # numpy top-10 on one chunk, for the ratio
    s = user_emb[:chunk] @ item_emb.T
    t_np = median(repeat(lambda: np.argpartition(-s, 10, axis=1)[:, :10], 3))
    t_rs = median(repeat(lambda: core.top_k(s, 10), 3))
    console.print(f"top-10 on {chunk:,} × {items:,}: xmfast {fmt_s(t_rs)}, numpy argpartition (unsorted, no "
                  f"exclusions) {fmt_s(t_np)} → {t_np / t_rs:.1f}× (HR@10 of random scores: {hits / users:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--max-cells", type=int, default=1_000_000_000,
                        help="skip sizes with more scores than this (1M × 1000 needs 5 GB of memory)")
    parser.add_argument("--only-sizes", action="store_true", help="the every-size and dataset tables alone")
    parser.add_argument("--ranx-queries", type=int, default=20_000)
    parser.add_argument("--full-users", type=int, default=100_000)
    parser.add_argument("--full-items", type=int, default=50_000)
    args = parser.parse_args()
    print_machine()
    load = OtherLoad()
    verdicts = bench_sizes(args.max_cells)
    verdicts.update(bench_dataset())
    if not args.only_sizes:
        bench_sampled(args.queries, args.ranx_queries)
        bench_full(args.full_users, args.full_items)
    print_targets(verdicts)
    load.report()


if __name__ == "__main__":
    main()
