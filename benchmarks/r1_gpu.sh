#!/usr/bin/env bash
# R1 on one GPU, trained until early stopping: the behaviour transformer with the item attributes
# (S3-Rec's Beauty_item2attributes.json) beside the baselines, on the same split and protocol as
# r1_transformer.sh (full softmax, dropout 0.5, validation every 5 epochs, patience 2, the co-occurrence
# prior's weight chosen on validation). Its 3 seeds run as 3 processes sharing the GPU (--first-seed),
# the baselines in a 4th; `valuerec bench merge` pools them into OUT/r1_beauty_gpu.json. Each fit stops
# at early stopping, 200 epochs or MAX_SECONDS of training. The parts and logs go to
# OUT/r1_gpu_parts.tar.gz. Usage: r1_gpu.sh DATA_DIR OUT_DIR (VALUEREC: how to call the CLI).
# A variant: VARIANT=NAME EXTRA='"d_model": 128' runs transformer:NAME with those settings added, without
# the baselines, into OUT/r1_beauty_gpu_NAME.json.
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
OUT=${2:-benchmarks/results}
EPOCHS=${EPOCHS:-200}
MAX_SECONDS=${MAX_SECONDS:-330}
VALUEREC=${VALUEREC:-valuerec}
DEVICE=${DEVICE:-cuda}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} OPENBLAS_NUM_THREADS=1
VARIANT=${VARIANT:-}
EXTRA=${EXTRA:-}
MODEL=transformer${VARIANT:+:$VARIANT}
SUFFIX=${VARIANT:+_$VARIANT}
mkdir -p "$OUT"
WORK=$(mktemp -d)
T='"loss": "ce", "dropout": 0.5, "eval_every": 5, "patience": 2, "epochs": '$EPOCHS', "max_seconds": '$MAX_SECONDS', "cooc_weight": "auto", "progress": false'${EXTRA:+, $EXTRA}
# --no-refit: each seed keeps its own validation-stopped fit (how this script's result files were made),
# so the seeds can run as separate parts; r1_transformer.sh refits instead (bench r1's default).
COMMON=(bench r1 --no-refit --data "$DATA" --attributes "$DATA/Beauty_item2attributes.json" --device "$DEVICE" --threads 4)
PIDS=()
PARTS=()
if [ -z "$VARIANT" ]; then
  $VALUEREC "${COMMON[@]}" --models popularity,itemknn,als,bpr --seeds 3 --cache-dir runs/stores_gpu_base \
    --out "$WORK/baselines.json" > "$WORK/baselines.log" 2>&1 &
  PIDS+=($!)
  PARTS+=("$WORK/baselines.json")
fi
for s in 0 1 2; do
  $VALUEREC "${COMMON[@]}" --models "$MODEL" --seeds 1 --first-seed $s --cache-dir runs/stores_gpu${SUFFIX}_$s \
    --params "{\"$MODEL\": {$T}}" --out "$WORK/transformer_seed$s.json" > "$WORK/transformer_seed$s.log" 2>&1 &
  PIDS+=($!)
  PARTS+=("$WORK/transformer_seed$s.json")
done
rc=0
for p in "${PIDS[@]}"; do wait "$p" || rc=$?; done
tar -czf "$OUT/r1_gpu${SUFFIX}_parts.tar.gz" -C "$WORK" .
grep -h "test seed" "$WORK"/*.log || true
[ $rc -eq 0 ] || { tail -n 20 "$WORK"/*.log; exit $rc; }
$VALUEREC bench merge "${PARTS[@]}" --out "$OUT/r1_beauty_gpu$SUFFIX.json"
