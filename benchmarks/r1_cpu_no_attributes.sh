#!/usr/bin/env bash
# R1 attribute ablation on the CPU with the settings of r1_transformer.sh (full softmax, dropout 0.5, weight
# average 0.999, co-occurrence prior chosen on validation, refit on train_full for the epochs validation
# chose), without S3-Rec's item attributes: item ids only. One seed (SEEDS=3 for all three) in one process
# with 2 threads; compare with seed 0 of r1_beauty.json.
# Usage: r1_cpu_no_attributes.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
OUT=${2:-benchmarks/results}
SEEDS=${SEEDS:-1}
T='"loss": "ce", "dropout": 0.5, "ema_decay": 0.999, "eval_every": 5, "patience": 2, "epochs": 90, "max_seconds": 3000, "cooc_weight": "auto", "progress": false, "use_attributes": false'
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1
valuerec bench r1 --data "$DATA" --threads 2 --seeds "$SEEDS" --refit --models transformer:no_attributes \
  --cache-dir runs/stores_r1_no_attributes --params "{\"transformer:no_attributes\": {$T}}" \
  --out "$OUT/r1_beauty_cpu_no_attributes.json"
python benchmarks/make_page.py
