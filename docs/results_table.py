"""Prints the markdown table of docs/results.md from the runs that docs/results.sh wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: Path) -> None:
    print("| target | sources | model | selected epoch | valid NDCG@10 | test NDCG@10 | test HR@10 | test users |")
    print("|---|---|---|---|---|---|---|---|")
    for target in sorted(p for p in root.iterdir() if p.is_dir()):
        for setting in ("single", "de", "all"):
            for model in ("pop", "cooc", "gmf", "mlp", "nmf"):
                results = target / setting / model / "results.json"
                if not results.is_file():
                    continue
                r = json.loads(results.read_text())
                sources = {"single": "–", "de": "de", "all": "all 6 others"}[setting]
                name = model + ("++" if setting != "single" and model not in ("pop", "cooc") else "")
                epoch = r["selected_epoch"] if r["selected_epoch"] is not None else "–"
                print(
                    f"| {target.name} | {sources} | {name} | {epoch} | {r['valid']['ndcg@10']:.4f} | "
                    f"{r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} | {r['queries']:,} |"
                )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/results"))
