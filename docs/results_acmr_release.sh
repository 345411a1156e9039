#!/usr/bin/env bash
# ACMR's released weights (laowangzi/ACMR, ../shared/acmr-release) on xmfast's protocol acmr
# candidates, beside pop, for each target: the datasets and pop runs are those of
# docs/results_acmr.sh (runs/acmr: protocol acmr, split and candidates seed 42, every other market
# a source), so the figures sit beside xmfast's own ACMR runs there. The released runs go to
# $RELEASED (runs/acmr-release), not runs/acmr: their figures are upper bounds (they trained on
# most of these test pairs), so `xmfast report runs/acmr` keeps them out of its tables.
# Evaluation only (the test split), on the CPU unless DEVICE says otherwise. Rerun with
#   TARGETS="in jp" bash docs/results_acmr_release.sh
# and the table of docs/results.md's "Released ACMR weights" is the one it prints at the end.
set -euo pipefail
DATA=${DATA:-../shared/xmarket}
RELEASE=${RELEASE:-../shared/acmr-release}
OUT=${OUT:-runs/acmr}
RELEASED=${RELEASED:-runs/acmr-release}
TARGETS=${TARGETS:-"in jp mx fr de uk ca"}
DEVICE=${DEVICE:-cpu}

for t in $TARGETS; do
  ds=$OUT/$t/dataset
  [ -f "$ds/manifest.json" ] || xmfast prepare "$DATA" --target "$t" --sources all --protocol acmr --seed 42 --out "$ds"
  [ -f "$OUT/$t/pop/results.json" ] || xmfast train "$ds" -m pop -o "$OUT/$t/pop" --seed 42 --overwrite
  [ -f "$RELEASED/$t/results.json" ] || xmfast import-acmr "$RELEASE/checkpoints/ACMR_${t}_finetune.pt" "$ds" \
    --log "$RELEASE/logs/${t^^}.log" --data "$DATA" -o "$RELEASED/$t" --device "$DEVICE" --overwrite
done
python - "$OUT" "$RELEASED" $TARGETS <<'PY'
import json, sys
from pathlib import Path
out, released, targets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
def ndcg(run):
    f = run / "results.json"
    return json.loads(f.read_text())["test"]["ndcg@10"] if f.is_file() else None
def cell(v):
    return "–" if v is None else f"{v:.4f}"
print("| target | pop | acmr (xmfast, fine-tuned) | acmr (released) |")
print("|---|---|---|---|")
for t in targets:
    print(f"| {t} | {cell(ndcg(out / t / 'pop'))} | {cell(ndcg(out / t / 'finetune' / t))} | {cell(ndcg(released / t))} |")
PY
