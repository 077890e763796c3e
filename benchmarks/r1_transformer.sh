#!/usr/bin/env bash
# R1 with the behaviour transformer beside the baselines, in one run (3 seeds, selection on validation).
# CPU settings: sampled softmax with 2,048 uniform negatives (a full-catalogue epoch is ~3x slower on CPU).
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r1 --data "$DATA" --models popularity,itemknn,als,bpr,transformer --seeds 3 \
  --params '{"transformer": {"loss": "sampled", "negatives": "uniform", "n_negatives": 2048, "dropout": 0.5, "eval_every": 5, "patience": 4, "epochs": 70, "progress": false}}' \
  --out benchmarks/results/r1_beauty.json
python benchmarks/make_page.py
