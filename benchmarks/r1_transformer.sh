#!/usr/bin/env bash
# R1 with the behaviour transformer beside the baselines, in one run (3 seeds, selection on validation).
# CPU settings: full-catalogue softmax, dropout 0.5, validation every 5 epochs, at most 30 minutes of
# training per seed (1 thread). Its scores add the item co-occurrence prior, whose weight is chosen on
# validation after training; the result file also reports the same fitted models without it. The item
# attributes (Beauty_item2attributes.json beside Beauty.txt) are read automatically and used.
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r1 --data "$DATA" --models popularity,itemknn,als,bpr,transformer --seeds 3 \
  --params '{"transformer": {"loss": "ce", "dropout": 0.5, "eval_every": 5, "patience": 2, "epochs": 60, "max_seconds": 1800, "cooc_weight": "auto", "progress": false}}' \
  --out benchmarks/results/r1_beauty.json
python benchmarks/make_page.py
