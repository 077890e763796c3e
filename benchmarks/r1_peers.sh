#!/usr/bin/env bash
# R1 with a peer implementation on the same split: RecTools' SASRec (item ids, full softmax, the same
# size as ours: 2 blocks, 1 head, 64 factors, dropout 0.5, 50 events; early stopping on validation
# NDCG@10 checked every epoch, the same 30-minute CPU budget (1 thread) as our transformer), in its
# own venv, with item-kNN run beside it. Our transformer's figures on this split are in r1_beauty.json
# (ours also reads the item attributes; without them, see r1_beauty_gpu_no_attributes.json).
# On this CPU a RecTools epoch takes minutes (seconds_per_epoch in the result), so the budget, not
# early stopping, ends its training.
set -euo pipefail
DATA=${1:-../shared/data/amazon-beauty}
SEEDS=${SEEDS:-1}
[ -x .venv-rectools/bin/python ] || bash benchmarks/peers/setup_rectools.sh
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
valuerec bench r1 --data "$DATA" --models itemknn --seeds "$SEEDS" \
  --peer rectools_sasrec=.venv-rectools/bin/python \
  --params '{"itemknn": {"neighbours": 200, "recency_decay": 0.6}, "peer:rectools_sasrec": {"max_seconds": 1800, "eval_every": 1, "patience": 3, "max_epochs": 200, "threads": 1}}' \
  --out benchmarks/results/r1_beauty_peers.json
python benchmarks/make_page.py
