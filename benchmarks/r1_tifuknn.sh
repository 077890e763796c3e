#!/usr/bin/env bash
# R1 with TIFU-KNN (Hu et al. 2020; the R2 baseline that beats our transformer there) beside item-kNN, R1's
# strongest classical baseline, in one run. R1's events carry no usable times, so each event is its own
# basket. R1 excludes the input history from the ranking, which removes TIFU-KNN's own-history term
# (alpha only scales it): what is left is its neighbour term, the time-decayed item vectors of the most
# similar other users. The grid (neighbours x group decay) is chosen on R1's validation item; a first
# grid (group decay 0.6-0.9, 50-1000 neighbours) chose its lowest decay, so the grid reaches down to 0.2.
# Our transformer's R1 figures are in r1_beauty.json (a separate run).
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r1 --data "$DATA" --models itemknn,tifuknn --seeds 1 --threads 1 --cache-dir runs/stores_r1_tifuknn \
  --params '{"itemknn": {"neighbours": 200, "recency_decay": 0.6}, "tifuknn": {"basket": "event", "alpha": 0.5, "neighbours": [100, 300, 1000], "within_decay": 0.9, "group_decay": [0.2, 0.4, 0.6, 0.8]}}' \
  --out benchmarks/results/r1_beauty_tifuknn.json
python benchmarks/make_page.py
