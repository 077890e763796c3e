#!/usr/bin/env bash
# R1 ablation on one GPU, trained until early stopping like r1_gpu.sh: the behaviour transformer without
# the item attributes (item ids only, the setting of the CPU run r1_transformer.sh), in bf16 autocast
# (as r1_gpu.sh) and in float32 (amp off). 3 seeds each, six processes sharing the GPU (--first-seed);
# `valuerec bench merge` pools them into OUT/r1_beauty_gpu_no_attributes.json. Parts and logs go to
# OUT/r1_gpu_no_attributes_parts.tar.gz. Usage: r1_gpu_no_attributes.sh DATA_DIR OUT_DIR.
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
OUT=${2:-benchmarks/results}
EPOCHS=${EPOCHS:-200}
MAX_SECONDS=${MAX_SECONDS:-300}
VALUEREC=${VALUEREC:-valuerec}
DEVICE=${DEVICE:-cuda}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
WORK=$(mktemp -d)
T='"use_attributes": false, "loss": "ce", "dropout": 0.5, "eval_every": 5, "patience": 2, "epochs": '$EPOCHS', "max_seconds": '$MAX_SECONDS', "cooc_weight": "auto", "progress": false'
# --no-refit: each seed keeps its own validation-stopped fit (how this script's result files were made),
# so the seeds can run as separate parts; r1_transformer.sh refits instead (bench r1's default).
COMMON=(bench r1 --no-refit --data "$DATA" --attributes "$DATA/Beauty_item2attributes.json" --device "$DEVICE" --threads 2)
PIDS=()
for v in no_attributes no_attributes_fp32; do
  AMP=$([ $v = no_attributes ] && echo true || echo false)
  for s in 0 1 2; do
    $VALUEREC "${COMMON[@]}" --models transformer:$v --seeds 1 --first-seed $s --cache-dir runs/stores_gpu_${v}_$s \
      --params "{\"transformer:$v\": {$T, \"amp\": $AMP}}" --out "$WORK/${v}_seed$s.json" > "$WORK/${v}_seed$s.log" 2>&1 &
    PIDS+=($!)
  done
done
rc=0
for p in "${PIDS[@]}"; do wait "$p" || rc=$?; done
tar -czf "$OUT/r1_gpu_no_attributes_parts.tar.gz" -C "$WORK" .
grep -h "test seed" "$WORK"/*.log || true
[ $rc -eq 0 ] || { tail -n 20 "$WORK"/*.log; exit $rc; }
$VALUEREC bench merge "$WORK"/no_attributes_seed{0,1,2}.json "$WORK"/no_attributes_fp32_seed{0,1,2}.json \
  --out "$OUT/r1_beauty_gpu_no_attributes.json"
