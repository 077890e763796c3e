#!/usr/bin/env bash
# Lifecycle stages on V1 (Online Retail) with the transformer's value and churn heads: the stage of every
# customer at the validation and test cut-offs with its reason, the stage table with what each stage's
# customers did in the holdout (also against their own past spend rate), and the transition matrix.
# The transformer runs with the setting the V1 benchmark chose on validation (run benchmarks/v1.sh first).
set -euo pipefail
DATA=${1:-../shared/data/online-retail}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
python benchmarks/lifecycle_v1.py --data "$DATA" --value-model transformer \
  --params-from benchmarks/results/v1_online_retail.json \
  --out benchmarks/results/v1_lifecycle.json
python benchmarks/make_page.py
