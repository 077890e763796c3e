"""Scale: how ingest, training and recommendation grow with the event log (synthetic data).

For each size N (events), a seeded synthetic log is written to Parquet: N / 50 users, a Zipf-popular
catalogue of up to ``--items`` items, a year of timestamps, purchase values. Then, each stage in its own
process so that its peak memory (max RSS) is its own:

- ingest: ``valuerec.data.ingest.ingest`` into a fresh DuckDB store (checks, chunked writes, one
  transaction); seconds, events per second, peak memory, store size on disk;
- train: read the store, build the catalogue and histories, fit the behaviour transformer for one epoch
  with sampled softmax (in-batch negatives, the setting for large catalogues) on one thread; seconds of
  each step and peak memory; then again with ``sparse_item_grads`` (``sparse_*``: lazy Adam on the
  rows of each batch's items instead of a dense Adam step over the whole item table);
- recommend: load the saved model, then top-10 for 200 single users one at a time (p50 / p95 latency)
  and for 1,000 users in one batch.

Nothing here is a test: the figures are measurements of one run on the machine named in the result.

    python benchmarks/scale.py --events 1000000,5000000 --out benchmarks/results/scale_synthetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6    # Linux: KiB


def generate(path: Path, n: int, n_items: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, max(n // 50, 1), n)
    items = (rng.zipf(1.2, n) - 1) % n_items
    ts = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 365 * 86400, n), unit="s")
    df = pd.DataFrame({"user_id": "u" + pd.Series(users).astype(str), "item_id": "i" + pd.Series(items).astype(str),
                       "timestamp": ts, "event_type": "purchase", "value": rng.gamma(2.0, 10.0, n).round(2)})
    df.to_parquet(path)
    return {"events": n, "users": int(len(np.unique(users))), "items": int(len(np.unique(items))),
            "file_mb": path.stat().st_size / 1e6}


def stage_ingest(d: Path) -> dict:
    from valuerec.data.ingest import ingest
    from valuerec.data.store import EventStore
    t0 = time.perf_counter()
    with EventStore(d / "store.duckdb") as st:
        rep = ingest(st, d / "events.parquet")
    s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in d.glob("store.duckdb*"))
    return {"ingest_s": s, "ingest_events_per_s": rep.added / s, "ingest_peak_gb": peak_gb(),
            "store_mb": size / 1e6, "added": rep.added}


def stage_train(d: Path, epochs: int, sparse: bool) -> dict:
    import torch

    from valuerec.data.dataset import catalogue_from, sequences_from
    from valuerec.data.store import EventStore
    from valuerec.models.transformer import BehaviourTransformer
    torch.set_num_threads(1)
    out = {}
    t0 = time.perf_counter()
    with EventStore(d / "store.duckdb", read_only=True) as st:
        events, items = st.events(), st.items()
    out["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cat = catalogue_from(events, items)
    seqs = sequences_from(events, cat)
    out["histories_s"] = time.perf_counter() - t0
    del events
    t0 = time.perf_counter()
    model = BehaviourTransformer(seed=0, epochs=epochs, loss="sampled", negatives="in-batch", use_text=False,
                                 progress=False, device="cpu", num_threads=1,
                                 sparse_item_grads=sparse).fit(seqs, cat)
    out["train_s"] = time.perf_counter() - t0
    out["epoch_s"] = out["train_s"] / epochs
    model.save(d / ("model_sparse" if sparse else "model"))
    out["train_peak_gb"] = peak_gb()
    out["parameters"] = int(sum(p.numel() for p in model.module_.parameters()))
    return {f"sparse_{k}": v for k, v in out.items()} if sparse else out


def sample_histories(d: Path, model, n: int = 1000):
    """The histories of the store's first ``n`` users (by id), indexed by ``model``'s catalogue."""
    from valuerec.data.dataset import sequences_from
    from valuerec.data.store import EventStore
    with EventStore(d / "store.duckdb", read_only=True) as st:
        users = st.con.execute(f"SELECT DISTINCT user_id FROM events ORDER BY user_id LIMIT {int(n)}").fetchall()
        users = np.array([u[0] for u in users], dtype=object)
        ev = st.events("user_id IN (SELECT unnest(?::VARCHAR[]))", [list(users)])
    return sequences_from(ev, model.catalogue_, users=users)


def latencies(model, seqs, n: int = 200) -> tuple[float, float, float]:
    """p50 and p95 ms of top-10 for single users (the first ``n``), and seconds for the whole batch."""
    model.recommend(seqs.subset([0]), k=10)          # warm-up
    lat = []
    for u in range(min(n, len(seqs))):
        t0 = time.perf_counter()
        model.recommend(seqs.subset([u]), k=10)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.recommend(seqs, k=10)
    return 1000 * float(np.percentile(lat, 50)), 1000 * float(np.percentile(lat, 95)), time.perf_counter() - t0


def stage_recommend(d: Path) -> dict:
    import torch

    from valuerec.models import load_model
    torch.set_num_threads(1)
    model = load_model(d / "model")
    p50, p95, batch = latencies(model, sample_histories(d, model))
    return {"recommend_p50_ms": p50, "recommend_p95_ms": p95, "recommend_batch1000_s": batch,
            "recommend_peak_gb": peak_gb()}


def run_stage(name: str, d: Path, extra: list[str]) -> dict:
    """One stage in a fresh process (its own peak memory)."""
    cmd = [sys.executable, __file__, "--stage", name, "--dir", str(d)] + extra
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                    "OPENBLAS_NUM_THREADS": "1"})
    if res.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="1000000", help="comma list of log sizes")
    ap.add_argument("--items", type=int, default=1_000_000, help="catalogue size the Zipf draw wraps at")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/scale", help="where the synthetic files and stores go (deleted after)")
    ap.add_argument("--out", default="benchmarks/results/scale_synthetic.json")
    ap.add_argument("--stages", default="ingest,train,train_sparse,recommend",
                    help="comma list of the stages to run (recommend needs train)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        d = Path(args.dir)
        res = {"ingest": lambda: stage_ingest(d), "train": lambda: stage_train(d, args.epochs, False),
               "train_sparse": lambda: stage_train(d, args.epochs, True),
               "recommend": lambda: stage_recommend(d)}[args.stage]()
        print(json.dumps(res))
        return 0
    stages = [x.strip() for x in args.stages.split(",") if x.strip()]
    bad = [x for x in stages if x not in ("ingest", "train", "train_sparse", "recommend")]
    if bad or not stages:
        ap.error(f"--stages: unknown {bad}; choose from ingest, train, train_sparse, recommend")
    result = {"protocol": "scale", "stages": stages, "dataset": "synthetic (seeded Zipf items, N / 50 users, one year)",
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": now_iso(), "seed": args.seed, "epochs": args.epochs, "models": {},
              "data_sha256": None,   # generated here from the seed, not read from a file
              "description": "Ingest, one training epoch of the behaviour transformer (sampled softmax, 1 thread; "
                             "sparse_* with sparse item gradients) and top-10 recommendation, by log size; each "
                             "stage in its own process, peak_gb = its max resident memory"}
    for n in [int(x) for x in args.events.split(",")]:
        d = Path(args.work) / f"n{n}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        info = generate(d / "events.parquet", n, args.items, args.seed)
        print(f"{n:,} events: generated in {time.perf_counter() - t0:.0f}s {info}", file=sys.stderr, flush=True)
        m = dict(info)
        for stage in stages:
            m.update(run_stage(stage, d, ["--epochs", str(args.epochs)]))
            print(f"  {stage}: {m}", file=sys.stderr, flush=True)
        result["models"][f"events={n:,}"] = {"metrics": {k: v for k, v in m.items() if k != "added"},
                                             "seeds": [args.seed], "train_seconds": m.get("train_s"),
                                             "eval_seconds": m.get("recommend_batch1000_s"), "params": {}}
        shutil.rmtree(d, ignore_errors=True)
    path = write_result(args.out, result)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
