#!/usr/bin/env bash
# ACMR on the real XMarket Electronics 5-core files under protocol acmr (issue 7): for each
# target, every other market is a source; pre-training on all markets (the sources in full plus
# the target's training split), then fine-tuning on the target, with the pop and cooc baselines
# on the same candidates as floors. Runs go under $OUT (default runs/acmr); docs/results.md is
# `xmfast report runs/xmarket runs/acmr …` over them. Rerun with
#   TARGETS="jp in" bash docs/results_acmr.sh
# Settings: the paper's (embedding 32, 4 blocks, 8 heads, feed-forward ×4, dropout 0.3, history
# 50 with random truncation, Adam lr 1e-3, L2 1e-7, batch 1024, 4 negatives, up to 50 epochs per
# stage with early stopping on validation NDCG@5, patience 3); split and candidates seed 42.
set -euo pipefail
DATA=${DATA:-../shared/xmarket}
OUT=${OUT:-runs/acmr}
TARGETS=${TARGETS:-"de fr ca jp mx in uk"}
SEED=${SEED:-42}
DEVICE=${DEVICE:-auto}
done_run() { [ -f "$1/results.json" ]; }   # a finished run is reused, not retrained
started() { [ -f "$1/checkpoints/last.pt" ]; }   # an interrupted one is resumed

for t in $TARGETS; do
  ds=$OUT/$t/dataset
  [ -f "$ds/manifest.json" ] || xmfast prepare "$DATA" --target "$t" --sources all --protocol acmr --seed 42 --out "$ds"
  done_run "$OUT/$t/pop" || xmfast train "$ds" -m pop -o "$OUT/$t/pop" --seed "$SEED" --overwrite
  done_run "$OUT/$t/cooc" || xmfast train "$ds" -m cooc --sources all -o "$OUT/$t/cooc" --seed "$SEED" --overwrite
  pre=$OUT/$t/pretrain ft=$OUT/$t/finetune
  if ! done_run "$pre"; then
    if started "$pre"; then xmfast train --resume "$pre"
    else xmfast train "$ds" -m acmr -o "$pre" --seed "$SEED" --device "$DEVICE" --overwrite; fi
  fi
  if ! done_run "$ft/$t"; then
    if started "$ft/$t"; then xmfast train --resume "$ft/$t"
    else xmfast finetune "$pre" -m acmr -o "$ft" --seed "$SEED" --device "$DEVICE" --overwrite; fi
  fi
done
