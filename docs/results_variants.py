"""Test NDCG@10 of NMF runs under the evaluation choices that differ between FOREC's code and
xmfast's defaults: which checkpoint (best validation epoch or the last of 25) and how ties are
ranked (pessimistic, or trec_eval's item-id order), plus the spread over training seeds.

    python docs/results_variants.py runs/results [runs/seeds/s1 runs/seeds/s2 ...]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from xmfast.evaluation import EvalConfig, evaluate_scorer
from xmfast.runs import Run
from xmfast.training import load_scorer


def ndcg(run: Run, checkpoint: str, ties: str) -> float:
    data = run.load_dataset()
    scorer = load_scorer(run, data, device="cpu", checkpoint=checkpoint)  # type: ignore[arg-type]
    ev = evaluate_scorer(data, "test", scorer, EvalConfig(cutoffs=(10,), measures=("ndcg",), ties=ties),  # type: ignore[arg-type]
                         markets=[data.target])
    return ev.aggregate()["ndcg@10"]


def main(main_root: Path, seed_roots: list[Path]) -> None:
    print("| target | model | best epoch, pessimistic (reported) | best epoch, trec ties | epoch 25, pessimistic "
          f"| mean ± sd over seeds 42{''.join(', ' + p.name.lstrip('s') for p in seed_roots)} |")
    print("|---|---|---|---|---|---|")
    for target in sorted(p.name for p in main_root.iterdir() if p.is_dir()):
        for setting, name in (("single", "nmf"), ("all", "nmf++")):
            path = main_root / target / setting / "nmf"
            if not (path / "results.json").is_file():
                continue
            run = Run.open(path)
            reported = run.results()["test"]["ndcg@10"]
            seeds = [reported] + [
                Run.open(r / target / setting / "nmf").results()["test"]["ndcg@10"]
                for r in seed_roots if (r / target / setting / "nmf" / "results.json").is_file()
            ]
            spread = f"{statistics.mean(seeds):.4f} ± {statistics.stdev(seeds):.4f} (n={len(seeds)})" if len(seeds) > 1 else "–"
            print(f"| {target} | {name} | {reported:.4f} | {ndcg(run, 'best', 'trec'):.4f} | "
                  f"{ndcg(run, 'last', 'pessimistic'):.4f} | {spread} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
