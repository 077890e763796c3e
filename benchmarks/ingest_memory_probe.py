"""Probe: where does ingest's peak memory go?

On a synthetic Parquet log (the generator of ``benchmarks/scale.py``), each variant runs in its own
process and reports its peak resident memory and time:

- ``duckdb_key``: DuckDB alone, the file inserted by SQL (``read_parquet``) into a table keyed by
  event id (ids hashed in SQL), in one transaction: what the store's key costs;
- ``duckdb_nokey``: the same without the key;
- ``ingest``: ``valuerec.data.ingest.ingest`` as it is (checked 500k-row chunks, one transaction,
  each chunk handed to DuckDB as an Arrow table);
- ``ingest_pandas``: the same with each chunk handed to DuckDB as the pandas frame (as before the
  change to Arrow);
- ``ingest_limit2gb``: ``ingest`` with DuckDB's ``memory_limit`` at 2 GB.

Writes ``benchmarks/results/ingest_memory_probe.json``.

    python benchmarks/ingest_memory_probe.py --events 10000000
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import generate  # noqa: E402

from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result  # noqa: E402

VARIANTS = ("duckdb_key", "duckdb_nokey", "ingest", "ingest_pandas", "ingest_limit2gb")


def run_variant(name: str, src: Path, work: Path) -> dict:
    store = work / f"{name}.duckdb"
    for p in (store, store.with_name(store.name + ".wal")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    if name.startswith("duckdb"):
        import duckdb
        con = duckdb.connect(str(store))
        key = "PRIMARY KEY" if name == "duckdb_key" else ""
        con.execute(f"CREATE TABLE events (event_id VARCHAR {key}, user_id VARCHAR, item_id VARCHAR, "
                    "ts TIMESTAMP, event_type VARCHAR, value DOUBLE)")
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO events SELECT md5(user_id || item_id || CAST(timestamp AS VARCHAR) || "
                    f"CAST(value AS VARCHAR))[1:24], user_id, item_id, timestamp, event_type, value "
                    f"FROM read_parquet('{src}')")
        con.execute("COMMIT")
        con.close()
    else:
        import pyarrow as pa

        from valuerec.data import store as store_mod
        from valuerec.data.ingest import ingest
        from valuerec.data.store import EventStore
        if name == "ingest_pandas":   # hand DuckDB the frame itself, as before
            store_mod.pa = type("NoArrow", (), {"Table": type("T", (), {"from_pandas": staticmethod(
                lambda df, preserve_index=False: df)})})
        with EventStore(store) as st:
            if name == "ingest_limit2gb":
                st.con.execute("SET memory_limit='2GB'")
                st.con.execute(f"SET temp_directory='{work / 'tmp'}'")
            ingest(st, src)
        store_mod.pa = pa
    seconds = time.perf_counter() - t0
    size = store.stat().st_size / 1e6
    store.unlink(missing_ok=True)
    return {"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "store_mb": size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--work", default="runs/ingest_memory")
    ap.add_argument("--out", default="benchmarks/results/ingest_memory_probe.json")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.variant:
        print(json.dumps(run_variant(args.variant, work / "events.parquet", work)))
        return 0
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if [v for v in names if v not in VARIANTS]:
        ap.error(f"--variants: choose from {', '.join(VARIANTS)}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = {"protocol": "ingest-memory-probe", "dataset": "synthetic (seeded Zipf items, N / 50 users, one year)",
              "data_sha256": None, "git_commit": git_commit(), "command": command_line(),
              "device": device_info("cpu"), "started_at": now_iso(), "seed": args.seed,
              "description": "peak resident memory of ingest variants on one synthetic Parquet log, each in its "
                             "own process, one transaction each", "models": {}}
    info = generate(work / "events.parquet", args.events, args.items, args.seed)
    result["data"] = info
    for name in names:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, __file__, "--variant", name, "--work", str(work)], env=env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            m = {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
        else:
            m = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"{name}: {m}", file=sys.stderr, flush=True)
        result["models"][name] = {"metrics": m, "seeds": [args.seed], "train_seconds": m.get("seconds"),
                                  "params": {}}
    shutil.rmtree(work, ignore_errors=True)
    write_result(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
