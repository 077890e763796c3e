"""Development run of the behaviour transformer on R1 (Amazon Beauty, leave-one-out, full ranking).

Not the published benchmark (that is the bench harness, 3 seeds): one seed, a config from the command
line, validation-selected weights, test computed once at the end. Writes a JSON result file.

    python benchmarks/transformer_r1_dev.py --data ../shared/data/amazon-beauty/Beauty.txt \
        --out benchmarks/results/r1_beauty_transformer_dev.json --set epochs=200 d_model=64
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from valuerec.data.ingest import find_attributes_file, read_s3rec
from valuerec.data.splits import leave_one_out
from valuerec.evaluation.metrics import evaluate
from valuerec.models.transformer import BehaviourTransformer


def parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="transformer")
    ap.add_argument("--set", nargs="*", default=[], help="config key=value")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    params = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    data = Path(args.data)
    events, items, _ = read_s3rec(data, find_attributes_file(data))
    split = leave_one_out(events, items)
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    t0 = time.perf_counter()
    model = BehaviourTransformer(seed=args.seed, progress=False, **params).fit(split.train, split.catalogue,
                                                                                valid=split.valid)
    train_seconds = time.perf_counter() - t0
    test = evaluate(model.score, split.test, model.n_items, ks=(10, 20))
    val = evaluate(model.score, split.valid, model.n_items, ks=(10, 20))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    epochs_run = len(model.history_)
    result = {
        "protocol": "R1", "dataset": "amazon-beauty", "development_run": True,
        "note": "single-seed development run of committed code on CPU; not the 3-seed benchmark",
        "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "git_commit": commit,
        "command": "python " + " ".join(os.sys.argv), "started_at": started,
        "device": (f"cpu ({platform.processor() or platform.machine()}), torch threads={args.threads}, "
                   "shared 2-core machine"),
        "models": {args.name: {
            "metrics": {k: v for k, v in test.items() if k not in ("eval_seconds", "score_seconds")},
            "valid_metrics": {k: v for k, v in val.items() if k not in ("eval_seconds", "score_seconds")},
            "seeds": [args.seed], "epochs_run": epochs_run, "best_epoch": (model.best_ or {}).get("epoch"),
            "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(epochs_run, 1),
            "eval_seconds": test["eval_seconds"], "params": model.config(),
            "n_parameters": model.n_parameters(), "history": model.history_,
        }},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(out.read_text()) if out.exists() else None
    if prev and prev.get("development_run"):
        # several dev runs accumulate in one file, each under its own name
        prev["models"].update(result["models"])
        prev["runs"] = prev.get("runs", []) + [{"name": args.name, "command": result["command"], "started_at": started}]
        result = prev
    out.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({k: round(v, 4) for k, v in test.items() if isinstance(v, float)}, indent=1))


if __name__ == "__main__":
    main()
