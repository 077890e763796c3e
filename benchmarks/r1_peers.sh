#!/usr/bin/env bash
# R1 with a peer implementation on the same split, in its own venv, with item-kNN run beside it, under
# the 30-minute CPU budget (1 thread) our transformer had when this ran, early stopping on validation NDCG@10
# checked every epoch. Our transformer's figures on this split are in r1_beauty.json (ours also reads
# the item attributes; without them, see r1_beauty_gpu_no_attributes.json).
#   PEER=rectools (default): RecTools' SASRec (item ids, full softmax, the same size as ours: 2 blocks,
#     1 head, 64 factors, dropout 0.5, 50 events)          -> r1_beauty_peers.json
#   PEER=recbole: RecBole's SASRec with its own defaults (2 layers, 2 heads, 64 hidden, dropout 0.5,
#     50 events, CE over the catalogue) and its own trainer -> r1_beauty_peers_recbole.json
# On this CPU a peer's epoch takes minutes (seconds_per_epoch in the result), so the budget, not
# early stopping, ends its training.
# The RecTools peer refits on train_full for its best epoch count, as our models do (R1's protocol
# refits); the RecBole peer instead trains on the test inputs and holds out their last item for its own
# early stopping (docs/findings.md).
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
SEEDS=${SEEDS:-1}
PEER=${PEER:-rectools}
case "$PEER" in
  rectools) NAME=rectools_sasrec; OUT=benchmarks/results/r1_beauty_peers.json
            RUN='"max_seconds": 1800, "eval_every": 1, "patience": 3, "max_epochs": 200, "threads": 1' ;;
  recbole)  NAME=recbole_sasrec; OUT=benchmarks/results/r1_beauty_peers_recbole.json
            RUN='"max_seconds": 1800, "eval_step": 1, "stopping_step": 3, "max_epochs": 200, "threads": 1' ;;
  *) echo "r1_peers.sh: unknown PEER=$PEER (rectools or recbole)" >&2; exit 2 ;;
esac
[ -x ".venv-$PEER/bin/python" ] || bash benchmarks/peers/setup.sh "$PEER"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r1 --data "$DATA" --models itemknn --seeds "$SEEDS" \
  --peer "$NAME=.venv-$PEER/bin/python" \
  --params "{\"itemknn\": {\"neighbours\": 200, \"recency_decay\": 0.6}, \"peer:$NAME\": {$RUN}}" \
  --out "$OUT"
python benchmarks/make_page.py
