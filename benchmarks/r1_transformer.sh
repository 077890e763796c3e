#!/usr/bin/env bash
# R1 with the behaviour transformer beside the baselines (3 seeds, selection on validation).
# CPU settings: full-catalogue softmax, dropout 0.5, validation every 5 epochs with patience 2, one
# thread per seed and at most 90 epochs or 50 minutes of training per seed (the earlier budget, 60 epochs
# or 30 minutes, stopped two of three seeds while their validation score still rose). Its scores add the
# item co-occurrence prior, whose weight is chosen on validation after training; the result file also
# reports the same fitted models without it. The item attributes (Beauty_item2attributes.json beside
# Beauty.txt) are read automatically and used.
# Seeds 0 and 1 run in parallel, then seed 2 beside the baselines (2 cores); `valuerec bench merge`
# joins the parts into OUT/r1_beauty.json. Usage: r1_transformer.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
OUT=${2:-benchmarks/results}
VALUEREC=${VALUEREC:-valuerec}
EPOCHS=${EPOCHS:-90}
MAX_SECONDS=${MAX_SECONDS:-3000}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
WORK=$(mktemp -d)
echo "parts and logs: $WORK"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT   # a failed part stops the others
T='"loss": "ce", "dropout": 0.5, "eval_every": 5, "patience": 2, "epochs": '$EPOCHS', "max_seconds": '$MAX_SECONDS', "cooc_weight": "auto", "progress": false'
COMMON=(bench r1 --data "$DATA" --threads 1)
seed() {
  $VALUEREC "${COMMON[@]}" --models transformer --seeds 1 --first-seed "$1" --cache-dir "runs/stores_r1_$1" \
    --params "{\"transformer\": {$T}}" --out "$WORK/transformer_seed$1.json" > "$WORK/transformer_seed$1.log" 2>&1
}
seed 0 & p0=$!
seed 1 & p1=$!
wait $p0
wait $p1
seed 2 & p2=$!
$VALUEREC "${COMMON[@]}" --models popularity,itemknn,als,bpr --seeds 3 --cache-dir runs/stores_r1_base \
  --out "$WORK/baselines.json" > "$WORK/baselines.log" 2>&1
wait $p2
$VALUEREC bench merge "$WORK/baselines.json" "$WORK"/transformer_seed{0,1,2}.json --out "$OUT/r1_beauty.json"
python benchmarks/make_page.py
