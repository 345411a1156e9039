"""Tables of docs/analysis.md for issue 6: NMF, NMF++, MAML and FOREC per target market, each
cross-market model with the source whose run validates best (NDCG@10), for several seeds.

    python docs/results_forec.py runs/results runs/seeds/s1 runs/seeds/s2
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

MODELS = ("nmf", "nmf++", "maml", "forec")


def _results(path: Path) -> dict | None:
    f = path / "results.json"
    return json.loads(f.read_text()) if f.is_file() else None


def best(root: Path, target: str, model: str) -> tuple[str, dict] | None:
    """(source, results) of the best-validating run of `model` for `target` under `root`."""
    if model == "nmf":
        r = _results(root / target / "single" / "nmf")
        return ("–", r) if r else None
    leaf = {"nmf++": "nmf", "maml": "maml", "forec": f"forec/{target}"}[model]
    found = [(d.name[4:], _results(d / leaf)) for d in sorted((root / target).glob("src-*"))]
    found = [(s, r) for s, r in found if r is not None]
    return max(found, key=lambda x: x[1]["valid"]["ndcg@10"]) if found else None


def main(roots: list[Path]) -> None:
    targets = sorted({p.name for r in roots for p in r.iterdir() if p.is_dir()}, key=["uk", "jp", "in", "mx"].index)
    print("| target | seed run | " + " | ".join(f"{m} test NDCG@10 / HR@10 (source)" for m in MODELS) + " |")
    print("|---|---|" + "---|" * len(MODELS))
    table: dict[tuple[str, str], list[float]] = {}
    for t in targets:
        for root in roots:
            cells = []
            for m in MODELS:
                b = best(root, t, m)
                if b is None:
                    cells.append("–")
                    continue
                src, r = b
                table.setdefault((t, m), []).append(r["test"]["ndcg@10"])
                cells.append(f"{r['test']['ndcg@10']:.4f} / {r['test']['hr@10']:.4f} ({src})")
            print(f"| {t} | {root} | " + " | ".join(cells) + " |")
    print()
    print("| target | " + " | ".join(f"{m} NDCG@10 mean ± sd" for m in MODELS) + " | FOREC − NMF | seeds |")
    print("|---|" + "---|" * len(MODELS) + "---|---|")
    diffs = []
    for t in targets:
        cells = []
        for m in MODELS:
            v = table.get((t, m), [])
            cells.append(f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else (f"{v[0]:.4f}" if v else "–"))
        f, n = table.get((t, "forec"), []), table.get((t, "nmf"), [])
        k = min(len(f), len(n))
        d = [a - b for a, b in zip(f[:k], n[:k])]
        diffs += d
        diff = f"{statistics.mean(d):+.4f} ± {statistics.stdev(d):.4f}" if len(d) > 1 else (f"{d[0]:+.4f}" if d else "–")
        print(f"| {t} | " + " | ".join(cells) + f" | {diff} | {k} |")
    if diffs:
        print(f"\nFOREC − NMF over all markets and seeds: {statistics.mean(diffs):+.4f} "
              f"(FOREC ahead in {sum(x > 0 for x in diffs)} of {len(diffs)})")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]] or [Path("runs/results")])
