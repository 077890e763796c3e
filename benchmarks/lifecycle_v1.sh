#!/usr/bin/env bash
# Lifecycle stages on V1 (Online Retail) with the transformer's value and churn heads: the stage of every
# customer at the validation and test cut-offs with its reason, the stage table with what each stage's
# customers did in the holdout (also against their own past spend rate), and the transition matrix.
set -euo pipefail
DATA=${1:-../shared/data/online-retail}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
python benchmarks/lifecycle_v1.py --data "$DATA" --value-model transformer \
  --params '{"value_weight": 1.0, "churn_weight": 1.0, "next_item_weight": 0.5, "use_values": true, "loss": "sampled", "negatives": "in-batch", "batch_size": 256, "value_step_days": 28.0, "epochs": 6, "d_model": 64, "max_len": 50, "dropout": 0.2, "progress": false}' \
  --out benchmarks/results/v1_lifecycle.json
python benchmarks/make_page.py
