#!/usr/bin/env bash
# R2 with the behaviour transformer beside the baselines and a peer implementation, in one run (3 seeds).
# The baselines include 'repeat' (the user's own items by purchase count): R2 does not exclude past items
# and repeat buying dominates it; and 'tifuknn' (TIFU-KNN, Hu et al. 2020: time-decayed own item
# frequencies mixed with the nearest other customers'), the strongest next-basket baseline we know of.
# The transformer uses its learned repeat term and learns what each customer buys in
# the following 90 days (target="window") rather than the next invoice line; its epoch count is chosen
# on the validation cut-off, then it is refitted on everything before the test cut-off. Its scores add
# a co-occurrence / buy-again prior (item-kNN over the same histories mixed with the customer's own
# counts); the prior's weight and mix are chosen on the validation cut-off and the result file also
# reports the same fitted transformer without it ("ablations"). Three settings of the moving average of
# the weights (ema_decay 0, 0.99, 0.999) are tried on the validation cut-off (first seed); the best by
# validation NDCG@20 is refitted for the 3 seeds.
#
# The peer (PEER=1, the default; PEER=0 leaves it out) is RecTools' SASRec in its own venv
# (benchmarks/peers/setup.sh rectools, made here if missing), the same size as ours (2 blocks, 1 head,
# 64 factors, 50 events, full softmax, dropout 0.5 as ours on R1 (RecTools' default is 0.2); RecTools'
# defaults otherwise), on the same split: it stops early
# on validation NDCG@20 (checked every 2 epochs, patience 5, at most 600 s of training: about what our
# transformer's validation fits take), refits on everything before the test cut-off for that many epochs
# as ours does, and ranks the whole catalogue without excluding past items, as R2 asks.
#
# The transformer runs in one process, the baselines and then the peer in another, each on one thread;
# bench merge joins the two parts (same commit) into r2_online_retail.json.
# Usage: r2_transformer.sh [DATA] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/online-retail/online_retail_2010_2011.csv.gz}
OUT=${2:-benchmarks/results}
PEER=${PEER:-1}
VALUEREC=${VALUEREC:-valuerec}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
WORK=$(mktemp -d)
echo "parts and logs: $WORK"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
COMMON=(bench r2 --data "$DATA" --threads 1 --seeds 3)
$VALUEREC "${COMMON[@]}" --models transformer --cache-dir runs/stores_r2_transformer \
  --params '{"transformer": {"repeat": true, "target": "window", "d_model": 64, "n_layers": 2, "max_len": 50, "dropout": 0.3, "lr": 0.001, "epochs": 25, "eval_every": 1, "patience": 4, "cooc_weight": "auto", "cooc_repeat_share": "auto", "cooc_recency_decay": 1.0, "cooc_neighbours": 50, "progress": false, "ema_decay": [0.0, 0.99, 0.999]}}' \
  --out "$WORK/transformer.json" > "$WORK/transformer.log" 2>&1 & pt=$!
PEER_ARGS=()
if [ "$PEER" = 1 ]; then
  [ -x .venv-rectools/bin/python ] || bash benchmarks/peers/setup.sh rectools
  PEER_ARGS=(--peer rectools_sasrec=.venv-rectools/bin/python
             --params '{"peer:rectools_sasrec": {"max_epochs": 200, "eval_every": 2, "patience": 5, "max_seconds": 600, "threads": 1}}')
fi
$VALUEREC "${COMMON[@]}" --models popularity,repeat,itemknn,als,bpr,tifuknn --cache-dir runs/stores_r2_base \
  ${PEER_ARGS[@]+"${PEER_ARGS[@]}"} --out "$WORK/baselines.json" > "$WORK/baselines.log" 2>&1 &
for _ in 1 2; do   # whichever part fails first stops the run (the trap stops the other)
  wait -n || { echo "r2_transformer.sh: a part failed; see $WORK/transformer.log and $WORK/baselines.log" >&2; exit 1; }
done
$VALUEREC bench merge "$WORK/baselines.json" "$WORK/transformer.json" --out "$OUT/r2_online_retail.json"
python benchmarks/make_page.py
