"""The behaviour transformer at 100M+ parameters, by configuration alone.

Issue #3 asks that the model scale "from a 2-layer CPU model to a 100M+-parameter GPU model by config
alone". This builds the large configuration through the same public path as every other model
(``BehaviourTransformer(**config).fit(...)``, the config ``valuerec train --config`` takes), on R1's
real catalogue (Amazon Beauty, 12,101 items, with its item attributes), and checks what a user of it
relies on:

- the parameter count (item table, attribute table, blocks, heads);
- training: a few epochs on a small sample of users (so that it ends on a CPU), the training loss per
  epoch, seconds per epoch and per step, and the process's peak resident memory;
- save and load give identical scores, and recommend() answers for histories the model never saw.

It does not measure quality: a 100M-parameter model is for GPUs and far larger logs than this sample.
On a CPU the figures say what one step costs, not what a GPU run would take.

    python benchmarks/transformer_large.py --out benchmarks/results/transformer_large_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from valuerec.data.ingest import file_sha256, find_attributes_file, read_s3rec
from valuerec.data.splits import leave_one_out
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result
from valuerec.models import load_model
from valuerec.models.transformer import BehaviourTransformer

LARGE = {"d_model": 1024, "n_layers": 8, "n_heads": 16, "max_len": 50, "dropout": 0.1, "loss": "ce"}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6   # Linux: kilobytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/amazon-beauty")
    ap.add_argument("--out", required=True)
    ap.add_argument("--users", type=int, default=256, help="training users sampled (seeded)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default=json.dumps(LARGE), help="transformer config (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = json.loads(args.config)
    started = now_iso()

    data = Path(args.data)
    path = data / "Beauty.txt" if data.is_dir() else data
    events, items, _ = read_s3rec(path, find_attributes_file(path))
    split = leave_one_out(events, items)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(split.train), size=min(args.users, len(split.train)), replace=False))
    train = split.train.subset(pick)

    model = BehaviourTransformer(seed=0, epochs=args.epochs, batch_size=args.batch_size, lr=3e-4,
                                 warmup_steps=0, progress=False, **cfg)
    t0 = time.perf_counter()
    model.fit(train, split.catalogue)
    fit_s = time.perf_counter() - t0
    net = model.module_
    n_params = int(sum(p.numel() for p in net.parameters()))
    by_part = {}
    for name, p in net.named_parameters():
        part = ".".join(name.split(".")[:2])   # encoder.item_table, encoder.blocks, ...; heads
        by_part[part] = by_part.get(part, 0) + int(p.numel())
    losses = [h["train_loss"] for h in model.history_]
    secs = [h["train_seconds"] for h in model.history_]
    steps_per_epoch = int(model.history_[0]["steps"])
    print(f"{n_params:,} parameters; loss per epoch {[round(x, 3) for x in losses]}; "
          f"{np.median(secs):.1f} s per epoch", flush=True)

    # save / load round trip and recommendations for histories the model never saw
    trained = set(map(str, np.asarray(split.train.user_ids)[pick]))
    held_out = np.array([i for i, u in enumerate(split.test.inputs.user_ids) if str(u) not in trained][:64])
    unseen = split.test.inputs.subset(held_out)
    with tempfile.TemporaryDirectory() as d:
        t1 = time.perf_counter()
        model.save(d)
        save_s = time.perf_counter() - t1
        size_mb = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file()) / 1e6
        loaded = load_model(d)
        same = bool(torch.equal(model.score(unseen), loaded.score(unseen)))
    model.recommend(unseen, k=10)        # the first call also builds what scoring caches
    t2 = time.perf_counter()
    top, top_scores = model.recommend(unseen, k=10)
    rec_s = time.perf_counter() - t2
    ok_recs = bool(top.shape == (len(unseen), 10) and np.isfinite(np.asarray(top_scores)).all())

    result = {
        "protocol": "scale-config", "dataset": "amazon-beauty (R1 catalogue, a seeded sample of users)",
        "data_sha256": file_sha256(path),
        "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
        "started_at": started,
        "description": "the transformer's 100M+-parameter configuration through the public fit / save / load / "
                       "recommend path on R1's catalogue; a capability check (parameters, cost of a step, memory, "
                       "round trip), not a quality run",
        "models": {"transformer:large": {
            "metrics": {"parameters": n_params, "train_loss_first_epoch": losses[0], "train_loss_last_epoch": losses[-1],
                        "seconds_per_epoch_median": float(np.median(secs)),
                        "seconds_per_step": float(np.median(secs)) / max(steps_per_epoch, 1),
                        "steps_per_epoch": steps_per_epoch, "peak_rss_gb": peak_rss_gb(),
                        "saved_mb": size_mb, "save_seconds": save_s,
                        "load_gives_identical_scores": same, "recommend_64_unseen_seconds": rec_s,
                        "recommend_ok": ok_recs},
            "seeds": [0], "train_seconds": fit_s, "eval_seconds": rec_s,
            "params": {**cfg, "epochs": args.epochs, "batch_size": args.batch_size, "lr": 3e-4,
                       "training_users": int(len(pick)), "items": int(len(split.catalogue))},
            "parameters_by_part": by_part, "train_loss": losses, "train_seconds_per_epoch": secs,
        }},
    }
    write_result(args.out, result)
    print(json.dumps(result["models"]["transformer:large"]["metrics"], indent=1))
    if n_params < 100_000_000 or not same or not ok_recs or not losses[-1] < losses[0]:
        sys.exit("transformer_large: the large configuration did not pass its checks (see the result file)")


if __name__ == "__main__":
    main()
