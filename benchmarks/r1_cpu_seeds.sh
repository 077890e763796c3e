#!/usr/bin/env bash
# R1 on the 2-core CPU machine, one transformer configuration beside the baselines, in parts: seeds 0 and
# 1 run in parallel (one thread each), then seed 2 beside the baselines; `valuerec bench merge` joins the
# parts into OUT_FILE. Each part caches its store under runs/stores_TAG_<part> (DuckDB allows one writer).
# Usage: r1_cpu_seeds.sh MODEL TAG 'TRANSFORMER_PARAMS' OUT_FILE [DATA_DIR]
#   MODEL: the model name, e.g. transformer or transformer:cl1; TRANSFORMER_PARAMS: the body of its JSON
#   params without braces, e.g. '"loss": "ce", "dropout": 0.5'. VALUEREC overrides the command.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: r1_cpu_seeds.sh MODEL TAG 'TRANSFORMER_PARAMS' OUT_FILE [DATA_DIR] (got $# arguments)" >&2
  exit 2
fi
MODEL=$1 TAG=$2 T=$3 OUT_FILE=$4
DATA=${5:-../shared/data/amazon-beauty}
VALUEREC=${VALUEREC:-valuerec}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$(dirname "$OUT_FILE")"
WORK=$(mktemp -d)
echo "parts and logs: $WORK"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT   # a failed part stops the others
# --no-refit: each seed keeps its own validation-stopped fit (how this script's result files were made),
# so the seeds can run as separate parts; r1_transformer.sh refits instead (bench r1's default).
COMMON=(bench r1 --no-refit --data "$DATA" --threads 1)
seed() {
  $VALUEREC "${COMMON[@]}" --models "$MODEL" --seeds 1 --first-seed "$1" --cache-dir "runs/stores_${TAG}_$1" \
    --params "{\"$MODEL\": {$T}}" --out "$WORK/transformer_seed$1.json" > "$WORK/transformer_seed$1.log" 2>&1
}
seed 0 & p0=$!
seed 1 & p1=$!
wait $p0
wait $p1
seed 2 & p2=$!
$VALUEREC "${COMMON[@]}" --models popularity,itemknn,als,bpr --seeds 3 --cache-dir "runs/stores_${TAG}_base" \
  --out "$WORK/baselines.json" > "$WORK/baselines.log" 2>&1
wait $p2
$VALUEREC bench merge "$WORK/baselines.json" "$WORK"/transformer_seed{0,1,2}.json --out "$OUT_FILE"
