#!/usr/bin/env bash
# R1 on one GPU: a sweep of transformer configurations, each run as its own model (transformer:NAME) with
# 3 seeds in 3 processes, the baselines beside them; the configuration is chosen on validation only
# (`valuerec bench choose`: best mean validation NDCG@10 over the seeds) and copied as `transformer`.
# Every configuration has the settings of r1_gpu.sh (full softmax, dropout 0.5, attributes, the
# co-occurrence prior's weight chosen on validation, early stopping) plus the change its name stands for,
# fixed here before any run:
#   base  (none)                  l3   "n_layers": 3           h2   "n_heads": 2
#   ad    "attn_dropout": 0.2     ls   "label_smoothing": 0.1  wd   "weight_decay": 0.1
#   ev2   "eval_every": 2, "patience": 5 (finer early stopping)  lr2  "lr": 0.002
#   cl1   "contrastive_weight": 0.1 (DuoRec-style dropout views, temperature 0.2)
#   cl3   "contrastive_weight": 0.3 (the same, weight 0.3)
# Usage:
#   r1_gpu_sweep.sh run DATA_DIR PARTS_DIR [NAME...]   run these configurations (default: all) and, with
#                                                      BASELINES=1, the baselines; writes PARTS_DIR/*.json
#   r1_gpu_sweep.sh choose PARTS_DIR OUT_FILE           merge every part and choose on validation
# With PACK=FILE.tar.gz, `run` also packs PARTS_DIR into that one archive (for a device that returns
# only a few files). Parts from several `run` calls (e.g. a device's 10-minute limit) are joined by `choose`; each call's
# training cap is MAX_SECONDS (default 420 s), recorded in each part's settings.
set -euo pipefail
declare -A CONFIGS=(
  [base]=''
  [l3]='"n_layers": 3'
  [h2]='"n_heads": 2'
  [ad]='"attn_dropout": 0.2'
  [ls]='"label_smoothing": 0.1'
  [wd]='"weight_decay": 0.1'
  [ev2]='"eval_every": 2, "patience": 5'
  [lr2]='"lr": 0.002'
  [cl1]='"contrastive_weight": 0.1, "contrastive_temperature": 0.2'
  [cl3]='"contrastive_weight": 0.3, "contrastive_temperature": 0.2'
)
ORDER=(base l3 h2 ad ls wd ev2 lr2 cl1 cl3)
VALUEREC=${VALUEREC:-valuerec}
MODE=${1:?usage: r1_gpu_sweep.sh run DATA PARTS [NAME...] | choose PARTS OUT_FILE}
shift
if [ "$MODE" = choose ]; then
  PARTS_DIR=$1 OUT_FILE=$2
  # the parts this script writes, nothing else in the folder; candidates in the table's order (ties
  # go to the first, so base wins a tie)
  PARTS=() AMONG=()
  [ -f "$PARTS_DIR/baselines.json" ] && PARTS+=("$PARTS_DIR/baselines.json")
  for name in "${ORDER[@]}"; do
    found=("$PARTS_DIR"/transformer_"${name}"_seed*.json)
    [ -e "${found[0]}" ] || continue
    PARTS+=("${found[@]}")
    AMONG+=("transformer:$name")
  done
  [ ${#AMONG[@]} -ge 2 ] || { echo "choose: fewer than two configurations have parts in $PARTS_DIR" >&2; exit 2; }
  echo "candidates: ${AMONG[*]}" >&2
  $VALUEREC bench merge "${PARTS[@]}" --out "$OUT_FILE"
  $VALUEREC bench choose "$OUT_FILE" --among "$(IFS=,; echo "${AMONG[*]}")" --as transformer --out "$OUT_FILE"
  exit 0
fi
[ "$MODE" = run ] || { echo "unknown mode $MODE" >&2; exit 2; }
DATA=$1 PARTS_DIR=$2
shift 2
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=("${ORDER[@]}")
for name in "${NAMES[@]}"; do   # every name is checked before anything starts
  [ -n "${CONFIGS[$name]+x}" ] || { echo "unknown configuration $name (known: ${ORDER[*]})" >&2; exit 2; }
done
EPOCHS=${EPOCHS:-200}
MAX_SECONDS=${MAX_SECONDS:-420}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=1
mkdir -p "$PARTS_DIR"
T='"loss": "ce", "dropout": 0.5, "eval_every": 5, "patience": 2, "epochs": '$EPOCHS', "max_seconds": '$MAX_SECONDS', "cooc_weight": "auto", "progress": false'
# --no-refit: each seed keeps its own validation-stopped fit (how this script's result files were made),
# so the seeds can run as separate parts; r1_transformer.sh refits instead (bench r1's default).
COMMON=(bench r1 --no-refit --data "$DATA" --attributes "$DATA/Beauty_item2attributes.json" --device "$DEVICE" --threads "$THREADS")
PIDS=()
if [ "${BASELINES:-0}" = 1 ]; then
  $VALUEREC "${COMMON[@]}" --models popularity,itemknn,als,bpr --seeds 3 --cache-dir runs/stores_sweep_base \
    --out "$PARTS_DIR/baselines.json" > "$PARTS_DIR/baselines.log" 2>&1 &
  PIDS+=($!)
fi
for name in "${NAMES[@]}"; do
  extra=${CONFIGS[$name]}
  for s in 0 1 2; do
    $VALUEREC "${COMMON[@]}" --models "transformer:$name" --seeds 1 --first-seed $s \
      --cache-dir "runs/stores_sweep_${name}_$s" \
      --params "{\"transformer:$name\": {$T${extra:+, $extra}}}" \
      --out "$PARTS_DIR/transformer_${name}_seed$s.json" > "$PARTS_DIR/transformer_${name}_seed$s.log" 2>&1 &
    PIDS+=($!)
  done
done
rc=0
for p in "${PIDS[@]}"; do wait "$p" || rc=$?; done
# PACK=FILE.tar.gz: the parts and logs in one archive (a device that returns few files), failed or not
[ -z "${PACK:-}" ] || tar -czf "$PACK" -C "$PARTS_DIR" .

grep -h "valid\b.*ndcg@10=" "$PARTS_DIR"/*.log | sed 's/^.*\(transformer[^ ]*\) valid/\1 valid/' || true
[ $rc -eq 0 ] || { tail -n 20 "$PARTS_DIR"/*.log; exit $rc; }
