#!/usr/bin/env bash
# Faithfulness of explanations with the trained transformers: R1 uses a transformer trained by
# `valuerec train` on R1's training split (early stopping on validation); V1 fits the transformer's
# value and churn heads on the history before 2011-09-09, with the setting the V1 benchmark chose on
# validation (run benchmarks/v1.sh first).
set -euo pipefail
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
R1=${1:-../shared/data/amazon-beauty}
MODEL=runs/s1/model-transformer
if [ ! -f "$MODEL/config.json" ]; then
  valuerec train --data "$R1/Beauty.txt" --model transformer --protocol r1 --epochs 15 \
    --config '{"eval_every": 5}' --threads 1 --out "$MODEL"
fi
python benchmarks/explain_faithfulness.py --r1-data "$R1" --r1-model-dir "$MODEL" --value-model transformer \
  --value-params-from benchmarks/results/v1_online_retail.json
python benchmarks/make_page.py
