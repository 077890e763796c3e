"""Retrieval through an item index on a large catalogue: latency and agreement with full scoring.

The same seeded synthetic log as ``benchmarks/scale.py`` (its ``generate``, ``stage_ingest`` and
``stage_train``) at one size; the behaviour transformer is fitted for one epoch with sparse item
gradients. Then, for 1,000 users: top-10 by scoring the whole catalogue, and top-10 from an HNSW index of
the item vectors (``BehaviourTransformer.build_ann_index``, what the service uses for catalogues of 200k
items and more): index build seconds, p50 / p95 latency for single users, seconds for the batch, and the
share of full scoring's top 10 that the index path returns (overlap@10; 1.0 = the same items).

    python benchmarks/scale_index.py --events 10000000 --out benchmarks/results/scale_index.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import generate, latencies, sample_histories, stage_ingest, stage_train  # noqa: E402

from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/scale_index")
    ap.add_argument("--out", default="benchmarks/results/scale_index.json")
    args = ap.parse_args(argv)
    import torch

    from valuerec.models import load_model
    torch.set_num_threads(1)
    result = {"protocol": "scale", "dataset": "synthetic (seeded Zipf items, N / 50 users, one year)",
              "data_sha256": None, "git_commit": git_commit(), "command": command_line(),
              "device": device_info("cpu"), "started_at": now_iso(), "seed": args.seed, "models": {},
              "description": "Top-10 by scoring the whole catalogue against top-10 from an HNSW index of the "
                             "item vectors, same model (one epoch, sparse item gradients), 1,000 users"}
    d = Path(args.work)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    m = generate(d / "events.parquet", args.events, args.items, args.seed)
    m.update({k: v for k, v in stage_ingest(d).items() if k in ("ingest_s",)})
    m.update(stage_train(d, 1, True))
    model = load_model(d / "model_sparse")
    seqs = sample_histories(d, model)
    m["full_p50_ms"], m["full_p95_ms"], m["full_batch1000_s"] = latencies(model, seqs)
    full, _ = model.recommend(seqs, k=10)
    t0 = time.perf_counter()
    model.build_ann_index()
    m["index_build_s"] = time.perf_counter() - t0
    m["index_p50_ms"], m["index_p95_ms"], m["index_batch1000_s"] = latencies(model, seqs)
    got, _ = model.recommend(seqs, k=10)
    m["index_overlap@10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, full)]))
    result["models"][f"events={args.events:,}"] = {"metrics": m, "seeds": [args.seed],
                                                   "train_seconds": m["sparse_train_s"],
                                                   "eval_seconds": m["index_batch1000_s"], "params": {}}
    shutil.rmtree(d, ignore_errors=True)
    path = write_result(args.out, result)
    print(f"{m}\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
