"""The ACMR table of docs/analysis.md (issue 7): test HR@5, HR@10, NDCG@5 and NDCG@10 of each
target market after pre-training and after fine-tuning, beside the published fine-tuned NDCG@10.

    python docs/results_acmr.py runs/acmr
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = ("de", "fr", "ca", "jp", "mx", "in", "uk")
# Hu et al. (Information Systems 2024), the published log of one fine-tuned run: test NDCG@10.
PUBLISHED_NDCG10 = {"de": 0.598, "fr": 0.596, "ca": 0.431, "jp": 0.527, "mx": 0.733, "in": 0.693, "uk": 0.569}
METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")


def _results(path: Path) -> dict | None:
    f = path / "results.json"
    return json.loads(f.read_text()) if f.is_file() else None


def main(root: Path) -> None:
    print("| target | stage | epochs (selected) | " + " | ".join(m.upper().replace("@", "@") for m in METRICS)
          + " | published NDCG@10 |")
    print("|---|---|---|" + "---|" * len(METRICS) + "---|")
    for t in TARGETS:
        for stage, path in (("pre-trained", root / t / "pretrain"), ("fine-tuned", root / t / "finetune" / t)):
            r = _results(path)
            if r is None:
                status = "not run"
                if (path / "run.json").is_file():
                    status = json.loads((path / "run.json").read_text()).get("status", "?")
                print(f"| {t} | {stage} | {status} |" + " – |" * len(METRICS) + " |")
                continue
            cells = " | ".join(f"{r['test'][m]:.4f}" for m in METRICS)
            published = f"{PUBLISHED_NDCG10[t]:.3f}" if stage == "fine-tuned" else ""
            print(f"| {t} | {stage} | {r.get('epochs_run', '?')} ({r['selected_epoch']}) | {cells} | {published} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/acmr"))
