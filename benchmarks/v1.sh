#!/usr/bin/env bash
# V1 (Online Retail customer value and churn): the transformer's value/churn heads beside past spend,
# BG/NBD x Gamma-Gamma, LightGBM and the ZILN MLP, in one run (3 seeds, selection on the validation cut-off).
set -euo pipefail
DATA=${1:-../shared/data/online-retail}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench v1 --data "$DATA" --out benchmarks/results/v1_online_retail.json
python benchmarks/make_page.py
