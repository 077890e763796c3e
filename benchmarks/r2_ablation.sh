#!/usr/bin/env bash
# R2 ablation of the behaviour transformer, in one run (3 seeds, selection on validation): the full
# configuration of r2_transformer.sh, without the item text (MiniLM description embeddings), and
# without the learned repeat term; the repeat baseline beside them for reference.
set -euo pipefail
DATA=${1:-../shared/data/online-retail/online_retail_2010_2011.csv.gz}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
BASE='"target": "next_basket", "d_model": 64, "n_layers": 2, "max_len": 50, "dropout": 0.3, "lr": 0.001, "epochs": 25, "eval_every": 1, "patience": 4, "progress": false'
valuerec bench r2 --data "$DATA" --models repeat,transformer,transformer:no_text,transformer:no_repeat --seeds 3 \
  --params "{\"transformer\": {\"repeat\": true, $BASE}, \"transformer:no_text\": {\"repeat\": true, \"use_text\": false, $BASE}, \"transformer:no_repeat\": {\"repeat\": false, $BASE}}" \
  --out benchmarks/results/r2_ablation.json
python benchmarks/make_page.py
