"""Should R1's transformer be refitted with the validation item as a training target? Decided on validation.

R1's baselines are fitted on ``train_full`` (each user's history up to the test target, so the validation
item is a training target). The transformer is fitted on ``train`` and stopped on validation, so its last
training target is one step older. Whether a refit on ``train_full`` for the epoch count chosen on
validation helps cannot be measured on the validation item itself (the refit trains on it). This script
measures it one step back, on validation data only, the test items never read:

- a shifted split: ``train'`` = each user's training items without the last one; ``valid'`` = that last
  training item, predicted from ``train'``;
- ``stopped``: fitted on ``train'`` with early stopping (and the co-occurrence prior's weight) on
  ``valid'``, as R1 fits the transformer now;
- ``refit``: fitted on ``train`` for the stopped fit's best epoch count, with its prior weight, no
  validation, as ``refit_full`` does;
- both scored on R1's real validation task (input ``train``, target the validation item).

    python benchmarks/r1_refit_check.py --data ../shared/data/amazon-beauty/Beauty.txt --seed 0 \
        --out runs/r1_refit_check_seed0.json --threads 1 --set loss=ce dropout=0.5 ema_decay=0.999 \
        eval_every=5 patience=2 epochs=90 max_seconds=3000 cooc_weight=auto
    python benchmarks/r1_refit_check.py --combine runs/r1_refit_check_seed0.json runs/r1_refit_check_seed1.json \
        --out benchmarks/results/r1_refit_check.json     # one file: every seed, and the means
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

import numpy as np
import torch

from valuerec.data.ingest import find_attributes_file, read_s3rec
from valuerec.data.splits import EvalTask, leave_one_out
from valuerec.evaluation.metrics import evaluate
from valuerec.models.transformer import BehaviourTransformer


def parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def shifted(split) -> tuple:
    """(train', valid'): the R1 construction moved one step back inside ``split.train``."""
    lens = split.train.lengths()
    train_p = split.train.prefix(np.maximum(lens - 1, 0))
    users = np.flatnonzero(lens >= 2)
    valid_p = EvalTask(inputs=train_p.subset(users), targets=[split.train.items[u][-1:] for u in users],
                       exclude=[train_p.items[u] for u in users], name="valid_shifted")
    return train_p, valid_p


def metrics(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("eval_seconds", "score_seconds")}


def combine(paths: list[str], out: str) -> None:
    """Seeds of one setting (each its own run of this script) in one file, with the mean per fit."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    for p, r in zip(paths[1:], runs[1:]):
        for k in ("data_sha256", "params", "protocol"):
            if r.get(k) != runs[0].get(k):
                raise SystemExit(f"{p}: {k} differs from {paths[0]}; not seeds of one setting")
    if len({r["seed"] for r in runs}) != len(runs):
        raise SystemExit("the same seed occurs twice")
    fits = list(runs[0]["models"])
    mean = {f: {m: float(np.mean([r["models"][f]["valid_metrics"][m] for r in runs]))
                for m in runs[0]["models"][f]["valid_metrics"]} for f in fits}
    result = {k: runs[0][k] for k in ("protocol", "dataset", "development_run", "note", "data_sha256", "params")}
    seeds = [r["seed"] for r in runs]
    result.update({"command": "python " + " ".join(os.sys.argv),
                   "git_commit": ", ".join(sorted({r["git_commit"] for r in runs})),
                   "started_at": min(r["started_at"] for r in runs), "device": runs[0]["device"], "seeds": seeds,
                   # the page shows ``validation_metrics``: here the mean over the seeds of R1's validation task
                   "models": {f: {"validation_metrics": mean[f], "seeds": seeds,
                                  "train_seconds": float(np.mean([r["models"][f]["train_seconds"] for r in runs])),
                                  "per_seed_validation": {str(r["seed"]): r["models"][f]["valid_metrics"] for r in runs}}
                              for f in fits},
                   "runs": runs})
    Path(out).write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({f: {m: round(v, 4) for m, v in mean[f].items() if m in ("ndcg@10", "hr@10")} for f in fits}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--combine", nargs="+", help="per-seed files of this script to join into --out")
    ap.add_argument("--data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="transformer config key=value")
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine, args.out)
    if not args.data:
        ap.error("--data is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    params = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    data = Path(args.data)
    events, items, _ = read_s3rec(data, find_attributes_file(data))
    split = leave_one_out(events, items)
    train_p, valid_p = shifted(split)
    started = dt.datetime.now(dt.timezone.utc).isoformat()

    t0 = time.perf_counter()
    stopped = BehaviourTransformer(**{"seed": args.seed, "progress": False, **params}).fit(train_p, split.catalogue,
                                                                                  valid=valid_p)
    stopped_s = time.perf_counter() - t0
    best_epoch = (stopped.best_ or {}).get("epoch") or len(stopped.history_)
    inside = stopped.refit_params()
    r_stopped = evaluate(stopped.score, split.valid, stopped.n_items, ks=(10, 20))
    logging.info("stopped (best epoch %s, %s): valid %s", best_epoch, inside,
                 {k: round(v, 4) for k, v in metrics(r_stopped).items()})
    del stopped

    refit_params = {**params, **inside, "epochs": int(best_epoch)}
    t0 = time.perf_counter()
    refit = BehaviourTransformer(**{"seed": args.seed, "progress": False, **refit_params}).fit(split.train, split.catalogue)
    refit_s = time.perf_counter() - t0
    r_refit = evaluate(refit.score, split.valid, refit.n_items, ks=(10, 20))
    logging.info("refit: valid %s", {k: round(v, 4) for k, v in metrics(r_refit).items()})

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    result = {
        "protocol": "R1 (validation only: refit check)", "dataset": "amazon-beauty", "development_run": True,
        "note": ("both fits scored on R1's validation task; 'stopped' trains on train minus each user's last "
                 "training item and stops on that item, 'refit' trains on train for the same epochs. No "
                 "test item is read."),
        "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "git_commit": commit + ("-dirty" if dirty else ""),
        "command": "python " + " ".join(os.sys.argv), "started_at": started,
        "device": (f"cpu ({platform.processor() or platform.machine()}), torch threads={args.threads}, "
                   "shared 2-core machine"),
        "seed": args.seed, "params": params, "best_epoch": best_epoch, "chosen_during_fit": inside,
        "models": {
            "stopped": {"valid_metrics": metrics(r_stopped), "train_seconds": stopped_s},
            "refit": {"valid_metrics": metrics(r_refit), "train_seconds": refit_s, "params": refit_params},
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({m: {k: round(v, 4) for k, v in result["models"][m]["valid_metrics"].items()
                          if isinstance(v, float)} for m in ("stopped", "refit")}, indent=1))


if __name__ == "__main__":
    main()
