#!/usr/bin/env bash
# Faithfulness of explanations with the trained transformers: R1 uses a transformer trained by
# `valuerec train` on R1's training split (early stopping on validation); V1 fits the transformer's
# value and churn heads on the history before 2011-09-09 (the V1 setting).
set -euo pipefail
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
R1=${1:-../shared/data/amazon-beauty}
MODEL=runs/s1/model-transformer
if [ ! -f "$MODEL/config.json" ]; then
  valuerec train --data "$R1/Beauty.txt" --model transformer --protocol r1 --epochs 15 \
    --config '{"eval_every": 5}' --threads 1 --out "$MODEL"
fi
python benchmarks/explain_faithfulness.py --r1-data "$R1" --r1-model-dir "$MODEL" --value-model transformer \
  --value-params '{"value_weight": 1.0, "churn_weight": 1.0, "next_item_weight": 0.5, "use_values": true, "loss": "sampled", "negatives": "in-batch", "batch_size": 256, "value_step_days": 28.0, "epochs": 6, "d_model": 64, "max_len": 50, "dropout": 0.2, "progress": false}'
python benchmarks/make_page.py
