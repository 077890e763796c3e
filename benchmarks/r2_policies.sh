#!/usr/bin/env bash
# R2 policies over the behaviour transformer's candidates, with the transformer of r2_transformer.sh
# (window target, learned repeat term, co-occurrence / buy-again prior chosen on validation; early
# stopping on validation, then refitted on train_full for the chosen epochs). Value-aware re-ranking:
# temperature and operating weight chosen on validation; the whole test curve is reported. The purchase
# stage tries four sets of companion recommenders and six powers of the value in p x value ** power
# (below 1 leans to P(buy), above 1 to big spend) and keeps the best pair on out-of-fold validation; at
# the chosen companions it then tries 1 or 3 bagged classifiers and three value sources (the learned item
# value, the stage's own hurdle value, their geometric mean), chosen the same way. The ALS and BPR
# companions are tuned on validation over the grids that R2's baseline reruns settled inside
# (r2_online_retail_baselines_edges.json), wider than the harness's DEFAULT_GRIDS.
set -euo pipefail
# SEED=N (default 0) runs another seed into r2_policies_seedN.json; benchmarks/policies_seeds.py summarises
# the seeds. The same policies over item-kNN candidates: benchmarks/r2_policies_itemknn.sh.
DATA=${1:-../shared/data/online-retail}
SEED=${SEED:-0}
OUT=benchmarks/results/r2_policies$([ "$SEED" = 0 ] || echo "_seed$SEED").json
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
python benchmarks/policies.py --data "$DATA" --model transformer \
  --model-params '{"repeat": true, "target": "window", "d_model": 64, "n_layers": 2, "max_len": 50, "dropout": 0.3, "lr": 0.001, "epochs": 25, "eval_every": 1, "patience": 4, "cooc_weight": "auto", "cooc_repeat_share": "auto", "cooc_recency_decay": 1.0, "cooc_neighbours": 50, "progress": false}' \
  --temperatures 0.1,0.3,1,3,10,30,100 --stage-companions 'none;als;als+bpr;als+bpr+itemknn' \
  --companion-grids '{"als": {"factors": [256, 512], "alpha": [0.3, 0.5], "regularization": [1.0, 2.0, 3.0], "iterations": [15, 30]}, "bpr": {"factors": [256, 512], "learning_rate": [0.005, 0.01], "regularization": 0.01, "iterations": [300, 600]}}' \
  --stage-value-powers 0.5,0.75,1,1.25,1.5,2 --stage-bags 1,3 --stage-value-sources item,stage,mean --seed "$SEED" --out "$OUT"
python benchmarks/make_page.py
