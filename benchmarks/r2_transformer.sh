#!/usr/bin/env bash
# R2 with the behaviour transformer beside the baselines, in one run (3 seeds). The transformer's epoch
# count is chosen on the validation cut-off, then it is refitted on everything before the test cut-off.
set -euo pipefail
DATA=${1:-../shared/data/online-retail/online_retail_2010_2011.csv.gz}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r2 --data "$DATA" --models popularity,itemknn,als,bpr,transformer --seeds 3 \
  --params '{"transformer": {"d_model": 64, "n_layers": 2, "max_len": 50, "dropout": 0.3, "lr": 0.001, "epochs": 40, "eval_every": 2, "patience": 3, "progress": false}}' \
  --out benchmarks/results/r2_online_retail.json
python benchmarks/make_page.py
