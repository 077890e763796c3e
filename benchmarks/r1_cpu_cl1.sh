#!/usr/bin/env bash
# R1 on the CPU with the configuration that `benchmarks/r1_gpu_sweep.sh` chose on validation (cl1: the
# contrastive regulariser at weight 0.1, temperature 0.2), under the CPU budget r1_beauty.json then had
# (1 thread and at most 30 minutes of training per seed, validation every 5 epochs, patience 2), beside
# the baselines. Seeds 0 and 1 run in parallel, then seed 2 with the baselines; `valuerec bench merge`
# joins the parts into OUT/r1_beauty_cl1.json. Usage: r1_cpu_cl1.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
OUT=${2:-benchmarks/results}
VALUEREC=${VALUEREC:-valuerec}
EPOCHS=${EPOCHS:-60}
MAX_SECONDS=${MAX_SECONDS:-1800}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
WORK=$(mktemp -d)
echo "parts and logs: $WORK"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT   # a failed part stops the others
T='"loss": "ce", "dropout": 0.5, "eval_every": 5, "patience": 2, "epochs": '$EPOCHS', "max_seconds": '$MAX_SECONDS', "cooc_weight": "auto", "progress": false, "contrastive_weight": 0.1, "contrastive_temperature": 0.2'
COMMON=(bench r1 --data "$DATA" --threads 1)
seed() {
  $VALUEREC "${COMMON[@]}" --models transformer:cl1 --seeds 1 --first-seed "$1" --cache-dir "runs/stores_cl1_$1" \
    --params "{\"transformer:cl1\": {$T}}" --out "$WORK/transformer_seed$1.json" > "$WORK/transformer_seed$1.log" 2>&1
}
seed 0 & p0=$!
seed 1 & p1=$!
wait $p0
wait $p1
seed 2 & p2=$!
$VALUEREC "${COMMON[@]}" --models popularity,itemknn,als,bpr --seeds 3 --cache-dir runs/stores_cl1_base \
  --out "$WORK/baselines.json" > "$WORK/baselines.log" 2>&1
wait $p2
$VALUEREC bench merge "$WORK/baselines.json" "$WORK"/transformer_seed{0,1,2}.json --out "$OUT/r1_beauty_cl1.json"
