#!/usr/bin/env bash
# Probe: does the R2 transformer gain from a longer history window? r2_transformer.sh keeps the last
# 50 events (order lines) of each customer; an Online Retail invoice has about 20 lines, so 50 lines
# are the last two or three orders (the repeat and co-occurrence terms see the whole history). This
# runs r2_transformer.sh's setting (ema_decay 0, which it chose) with max_len 50, 100 and 200, chosen
# on the validation cut-off, one seed, beside the repeat baseline. Each grid point's validation
# NDCG@20 is in the result's selection entry.
set -euo pipefail
DATA=${1:-../shared/data/online-retail/online_retail_2010_2011.csv.gz}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r2 --data "$DATA" --models repeat,transformer --seeds 1 \
  --params '{"transformer": {"repeat": true, "target": "window", "d_model": 64, "n_layers": 2, "max_len": [50, 100, 200], "dropout": 0.3, "lr": 0.001, "epochs": 25, "eval_every": 1, "patience": 4, "cooc_weight": "auto", "cooc_repeat_share": "auto", "cooc_recency_decay": 1.0, "cooc_neighbours": 50, "progress": false, "ema_decay": 0.0}}' \
  --out benchmarks/results/r2_maxlen_probe.json
