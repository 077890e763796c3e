"""Seconds per training epoch of the behaviour transformer on R1 data (Amazon Beauty), per loss.

Development measurement on whatever machine runs it: a fixed number of epochs, no validation, for
each configuration in turn, in one process (so the figures are comparable as ratios).

    python benchmarks/transformer_speed.py --data ../shared/data/amazon-beauty/Beauty.txt \
        --out benchmarks/results/r1_beauty_transformer_speed_dev.json --threads 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import torch

from valuerec.data.ingest import find_attributes_file, read_s3rec
from valuerec.data.splits import leave_one_out
from valuerec.models.transformer import BehaviourTransformer

CONFIGS = {
    "ce_full_catalogue": {"loss": "ce"},
    "sampled_uniform_2048": {"loss": "sampled", "negatives": "uniform", "n_negatives": 2048},
    "sampled_in_batch": {"loss": "sampled", "negatives": "in-batch"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    events, items, _ = read_s3rec(data, find_attributes_file(data))
    split = leave_one_out(events, items)
    rows = {}
    for name, cfg in CONFIGS.items():
        t0 = time.perf_counter()
        m = BehaviourTransformer(seed=0, d_model=args.d_model, epochs=args.epochs, progress=False, **cfg)
        m.fit(split.train, split.catalogue)
        secs = [h["train_seconds"] for h in m.history_]
        rows[name] = {"params": cfg, "train_seconds_per_epoch": secs, "fit_seconds": time.perf_counter() - t0,
                      "train_loss": [h["train_loss"] for h in m.history_]}
        print(name, [round(s, 1) for s in secs], flush=True)
    result = {"protocol": "R1", "dataset": "amazon-beauty", "development_run": True,
              "what": "seconds per training epoch (train split, no validation), d_model=%d" % args.d_model,
              "command": "python " + " ".join(os.sys.argv),
              "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
              "device": f"cpu ({platform.machine()}), torch threads={args.threads}, shared 2-core machine",
              "runs": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
