#!/usr/bin/env bash
# R2 policies over item-kNN candidates (its neighbours chosen on validation): the same value-aware
# re-rankers, purchase stage and stage policies as benchmarks/r2_policies.sh, whose candidates come from
# the behaviour transformer. Shows how much of the stage's gain depends on the recommender under it.
set -euo pipefail
DATA=${1:-../shared/data/online-retail}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
python benchmarks/policies.py --data "$DATA" --model itemknn \
  --stage-companions 'none;als;als+bpr;als+bpr+itemknn' --out benchmarks/results/r2_policies_itemknn.json
python benchmarks/make_page.py
