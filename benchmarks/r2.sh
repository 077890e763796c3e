#!/usr/bin/env bash
# R2 (Online Retail, next purchases after 2011-09-09, full ranking, no exclusion): classical baselines.
set -euo pipefail
DATA=${1:-../shared/data/online-retail/online_retail_2010_2011.csv.gz}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r2 --data "$DATA" --models popularity,itemknn,als,bpr --seeds 3 \
  --out benchmarks/results/r2_online_retail_baselines.json
python benchmarks/make_page.py
