#!/usr/bin/env bash
# Which setting of the V1-chosen value / churn heads makes their churn explanations weak? The V1 part of
# the faithfulness test (explain_faithfulness.py --skip r1) on the chosen setting with one thing
# changed at a time. The committed files were written with --out runs/scratch/<name>.json and copied
# here (each records its command and commit).
set -euo pipefail
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
run() {  # NAME OVERRIDES
  python benchmarks/explain_faithfulness.py --skip r1 --value-model transformer \
    --value-params-from benchmarks/results/v1_online_retail.json --value-params "$2" \
    --out "benchmarks/results/explain_v1_$1.json"
}
run summary '{"value_features": "summary"}'
run rfm_cuts2 '{"value_max_cuts": 2}'
run linear_head '{"value_hidden": 0}'
run cuts26 '{"value_max_cuts": 26}'
python benchmarks/make_page.py
