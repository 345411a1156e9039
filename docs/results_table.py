"""Prints the markdown tables of docs/analysis.md from the runs that docs/results.sh wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETTINGS = {"single": "–", "de": "de", "all": "all 6 others"}


def results(path: Path) -> dict | None:
    file = path / "results.json"
    return json.loads(file.read_text()) if file.is_file() else None


def row(target: str, sources: str, name: str, r: dict) -> str:
    epoch = r["selected_epoch"] if r["selected_epoch"] is not None else "–"
    return (f"| {target} | {sources} | {name} | {epoch} | {r['valid']['ndcg@10']:.4f} | "
            f"{r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} | {r['queries']:,} |")


def main(root: Path) -> None:
    print("| target | sources | model | selected epoch | valid NDCG@10 | test NDCG@10 | test HR@10 | test users |")
    print("|---|---|---|---|---|---|---|---|")
    targets = sorted(p for p in root.iterdir() if p.is_dir())
    for target in targets:
        for setting, sources in SETTINGS.items():
            for model in ("pop", "cooc", "gmf", "mlp", "nmf"):
                r = results(target / setting / model)
                if r is not None:
                    name = model + ("++" if setting != "single" and model not in ("pop", "cooc") else "")
                    print(row(target.name, sources, name, r))
    # One source at a time (FOREC's setting): every source's NMF++, and the best by validation.
    per_source = {t.name: sorted(t.glob("src-*")) for t in targets if list(t.glob("src-*"))}
    if not per_source:
        return
    print()
    print("| target | source | NMF++ valid NDCG@10 | NMF++ test NDCG@10 | NMF++ test HR@10 |")
    print("|---|---|---|---|---|")
    best: dict[str, Path] = {}
    for target, dirs in per_source.items():
        scored = [(d, results(d / "nmf")) for d in dirs]
        scored = [(d, r) for d, r in scored if r is not None]
        for d, r in scored:
            print(f"| {target} | {d.name[4:]} | {r['valid']['ndcg@10']:.4f} | {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} |")
        if scored:
            best[target] = max(scored, key=lambda x: x[1]["valid"]["ndcg@10"])[0]
    print()
    print("| target | best source (NMF++ validation) | model | selected epoch | valid NDCG@10 | test NDCG@10 | test HR@10 | test users |")
    print("|---|---|---|---|---|---|---|---|")
    for target, d in best.items():
        for model in ("gmf", "mlp", "nmf"):
            r = results(d / model)
            if r is not None:
                print(row(target, d.name[4:], model + "++", r))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/results"))
