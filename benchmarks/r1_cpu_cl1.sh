#!/usr/bin/env bash
# R1 on the CPU with the configuration that `benchmarks/r1_gpu_sweep.sh` chose on validation (cl1: the
# contrastive regulariser at weight 0.1, temperature 0.2), under the CPU budget r1_beauty.json then had
# (1 thread and at most 30 minutes of training per seed, validation every 5 epochs, patience 2), beside
# the baselines. Seeds 0 and 1 run in parallel, then seed 2 with the baselines (r1_cpu_seeds.sh); the
# parts are joined into OUT/r1_beauty_cl1.json. Usage: r1_cpu_cl1.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
OUT=${2:-benchmarks/results}
EPOCHS=${EPOCHS:-60}
MAX_SECONDS=${MAX_SECONDS:-1800}
T='"loss": "ce", "dropout": 0.5, "eval_every": 5, "patience": 2, "epochs": '$EPOCHS', "max_seconds": '$MAX_SECONDS', "cooc_weight": "auto", "progress": false, "contrastive_weight": 0.1, "contrastive_temperature": 0.2'
bash "$(dirname "$0")/r1_cpu_seeds.sh" transformer:cl1 cl1 "$T" "$OUT/r1_beauty_cl1.json" "$DATA"
