#!/usr/bin/env bash
# ACMR's released weights (laowangzi/ACMR, ../shared/acmr-release) on xmfast's protocol acmr
# candidates, beside pop, for each target: the datasets are those of docs/results_acmr.sh (protocol
# acmr, split and candidates seed 42, every other market a source), so the rows sit beside
# xmfast's own ACMR runs there. Evaluation only (the test split), on the CPU unless DEVICE says
# otherwise. Rerun with
#   TARGETS="in jp" bash docs/results_acmr_release.sh
# and the table of docs/results.md's "Released ACMR weights" is the one it prints at the end.
set -euo pipefail
DATA=${DATA:-../shared/xmarket}
RELEASE=${RELEASE:-../shared/acmr-release}
OUT=${OUT:-runs/acmr}
TARGETS=${TARGETS:-"in jp mx fr de uk ca"}
DEVICE=${DEVICE:-cpu}

for t in $TARGETS; do
  ds=$OUT/$t/dataset
  [ -f "$ds/manifest.json" ] || xmfast prepare "$DATA" --target "$t" --sources all --protocol acmr --seed 42 --out "$ds"
  [ -f "$OUT/$t/pop/results.json" ] || xmfast train "$ds" -m pop -o "$OUT/$t/pop" --seed 42 --overwrite
  [ -f "$OUT/$t/released/results.json" ] || xmfast import-acmr "$RELEASE/checkpoints/ACMR_${t}_finetune.pt" "$ds" \
    --log "$RELEASE/logs/${t^^}.log" --data "$DATA" -o "$OUT/$t/released" --device "$DEVICE" --overwrite
done
python - "$OUT" $TARGETS <<'PY'
import json, sys
from pathlib import Path
out, targets = Path(sys.argv[1]), sys.argv[2:]
def ndcg(run):
    f = out / run / "results.json"
    return json.loads(f.read_text())["test"]["ndcg@10"] if f.is_file() else None
def cell(v):
    return "–" if v is None else f"{v:.4f}"
print("| target | pop | acmr (xmfast, fine-tuned) | acmr (released) |")
print("|---|---|---|---|")
for t in targets:
    print(f"| {t} | {cell(ndcg(f'{t}/pop'))} | {cell(ndcg(f'{t}/finetune/{t}'))} | {cell(ndcg(f'{t}/released'))} |")
PY
