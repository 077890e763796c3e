#!/usr/bin/env bash
# R1 (Amazon Beauty, leave-one-out, full ranking): classical baselines, then the popularity reproduction check.
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r1 --data "$DATA" --models popularity,itemknn,als,bpr --seeds 3 \
  --out benchmarks/results/r1_beauty_baselines.json
# Reproduction only: popularity counted over every event including the test targets (see README).
valuerec bench r1 --data "$DATA" --models popularity-s3rec --seeds 1 \
  --out benchmarks/results/r1_beauty_popularity_s3rec_reproduction.json
python benchmarks/make_page.py
