"""S1: serving under load, loopback only (BENCHMARKS.md).

Starts the service on 127.0.0.1 with a model trained on R1 data (Amazon Beauty), then runs a bounded
load (a fixed number of requests at a fixed concurrency; it stops by itself) mixing recommendation,
value and event-ingest requests 70/20/10. A separate probe measures event-to-fresh-recommendation
delay during the load: read a user's top item, post an event on it, read again until the list
reflects it (with exclude_history the item must be gone).

A model without a value head answers /value with 501: those are counted apart (``value_501``), not
as errors. Everything (store, model, server log) lives under the gitignored ``runs/s1/``.

    python benchmarks/s1_serving.py                         # item-kNN trained on all Beauty events
    python benchmarks/s1_serving.py --model-dir runs/transformer/...   # any saved model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
console = Console(stderr=True)


def default_data() -> Path:
    shared = Path(os.environ.get("VALUEREC_SHARED_DATA", REPO.parent / "shared" / "data"))
    return shared / "amazon-beauty"


def build_store(data: Path, out: Path) -> tuple[Path, str]:
    """A fresh, writable store with every Beauty event (the benchmark writes to it)."""
    from valuerec.data.ingest import file_sha256, find_attributes_file, ingest
    from valuerec.data.store import EventStore

    path = data / "Beauty.txt" if data.is_dir() else data
    if not path.exists():
        raise SystemExit(f"no R1 data at {path} (give --data or set VALUEREC_SHARED_DATA)")
    store = out / "store.duckdb"
    for p in (store, store.with_name(store.name + ".wal")):
        if p.exists():
            p.unlink()
    with console.status(f"ingesting {path} -> {store}"), EventStore(store) as st:
        ingest(st, path, fmt="s3rec", attributes=find_attributes_file(path))
    return store, file_sha256(path)


def train_model(store: Path, name: str, out: Path) -> tuple[Path, float]:
    """Fit ``name`` on every event of the store (serving uses all the data there is)."""
    from valuerec.data.dataset import catalogue_from, sequences_from
    from valuerec.data.store import EventStore
    from valuerec.models import MODEL_REGISTRY

    with EventStore(store, read_only=True) as st:
        ev, items = st.events(), st.items()
    cat = catalogue_from(ev, items)
    seqs = sequences_from(ev, cat)
    t0 = time.perf_counter()
    with console.status(f"fitting {name} on {len(seqs):,} users, {len(cat):,} items"):
        model = MODEL_REGISTRY[name]().fit(seqs, cat)
    fit_s = time.perf_counter() - t0
    model_dir = out / f"model-{name}"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model.save(model_dir)
    return model_dir, fit_s


def store_users_items(store: Path) -> tuple[np.ndarray, np.ndarray]:
    from valuerec.data.store import EventStore
    with EventStore(store, read_only=True) as st:
        users = np.array([r[0] for r in st.con.execute("SELECT DISTINCT user_id FROM events ORDER BY 1").fetchall()])
        items = np.array([r[0] for r in st.con.execute(
            "SELECT DISTINCT item_id FROM events WHERE item_id IS NOT NULL ORDER BY 1").fetchall()])
    return users, items


def make_plan(n: int, mix: tuple[float, float, float], users: np.ndarray, items: np.ndarray, seed: int,
              unknown_share: float) -> list[tuple[str, str, dict | None]]:
    """The request sequence, fixed by the seed: (kind, path, json body)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["recommendations", "value", "events"], size=n, p=list(mix))
    plan = []
    for j, kind in enumerate(kinds):
        u = str(rng.choice(users)) if rng.random() >= unknown_share else f"new-{j}"
        if kind == "recommendations":
            plan.append((kind, f"/v1/users/{u}/recommendations?k=10", None))
        elif kind == "value":
            plan.append((kind, f"/v1/users/{u}/value", None))
        else:
            ev = {"user_id": u, "item_id": str(rng.choice(items)), "timestamp": 1.41e9 + j,
                  "event_type": "interaction", "event_id": f"s1-{seed}-{j}"}
            plan.append((kind, "/v1/events", {"events": [ev]}))
    return plan


class RawHTTP:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one connection, one request at a time.

    The load generator shares the machine's CPUs with the server, so it should cost as little as
    possible; a full client (httpx) spends several times more CPU per request than this."""

    def __init__(self, host: str, port: int, key: str):
        self.host, self.port, self.key = host, port, key
        self.reader = self.writer = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-API-Key: {self.key}\r\n"
                + (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body is not None else "")
                + "\r\n").encode()
        self.writer.write(head + (body or b""))
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data += await self.reader.readexactly(size)
                await self.reader.readline()
            return status, data
        return status, await self.reader.readexactly(length) if length else b""

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass


async def run_load(url: str, key: str, plan: list, concurrency: int, progress: Progress | None = None
                   ) -> tuple[list[tuple[str, int, float]], float]:
    """Send the plan with ``concurrency`` workers (one keep-alive connection each); returns
    (kind, status, seconds) per request and the wall time."""
    host, port = url.removeprefix("http://").split(":")
    results: list[tuple[str, int, float]] = []
    it = iter(plan)
    task = progress.add_task("load", total=len(plan)) if progress else None

    async def worker():
        conn = RawHTTP(host, int(port), key)
        try:
            for kind, path, body in it:
                t0 = time.perf_counter()
                try:
                    if body is not None:
                        status, _ = await conn.request("POST", path, json.dumps(body).encode())
                    else:
                        status, _ = await conn.request("GET", path)
                except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError):
                    status = -1
                    await conn.close()
                    conn = RawHTTP(host, int(port), key)
                results.append((kind, status, time.perf_counter() - t0))
                if progress:
                    progress.advance(task)
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - t0


async def freshness_probe(url: str, key: str, users: np.ndarray, stop: asyncio.Event, seed: int,
                          out: list[float], timeouts: list[str], polls: list[int], interval: float = 0.25) -> None:
    """Post an event on the user's current top item, then poll until the item leaves the list."""
    rng = np.random.default_rng(seed + 1)
    host, port = url.removeprefix("http://").split(":")
    conn = RawHTTP(host, int(port), key)

    async def top_items(u: str) -> list[str]:
        status, body = await conn.request("GET", f"/v1/users/{u}/recommendations?k=10")
        assert status == 200, body
        return [it["item_id"] for it in json.loads(body)["items"]]

    n = 0
    try:
        while not stop.is_set():
            u = str(rng.choice(users))
            top = (await top_items(u))[0]
            t0 = time.perf_counter()
            ev = {"events": [{"user_id": u, "item_id": top, "timestamp": 1.5e9 + n, "event_id": f"probe-{seed}-{n}"}]}
            status, body = await conn.request("POST", "/v1/events", json.dumps(ev).encode())
            assert status == 200, body
            n_polls = 0
            while True:
                n_polls += 1
                if top not in await top_items(u):
                    out.append(time.perf_counter() - t0)
                    polls.append(n_polls)
                    break
                if time.perf_counter() - t0 > 5:
                    timeouts.append(u)
                    break
            n += 1
            await asyncio.sleep(interval)
    finally:
        await conn.close()


async def load_with_probe(url, key, plan, concurrency, users, seed, progress):
    stop = asyncio.Event()
    fresh, timeouts, polls = [], [], []
    probe = asyncio.create_task(freshness_probe(url, key, users, stop, seed, fresh, timeouts, polls))
    results, wall = await run_load(url, key, plan, concurrency, progress)
    stop.set()
    await probe
    return results, wall, fresh, timeouts, polls


def pct(xs, q) -> float | None:
    return round(float(np.percentile(xs, q)) * 1000, 2) if len(xs) else None


def summarise(results, wall) -> dict:
    by = {}
    for kind in ("recommendations", "value", "events"):
        rows = [(s, t) for k, s, t in results if k == kind]
        ok = [t for s, t in rows if s == 200]
        allt = [t for _, t in rows]
        by[kind] = {"requests": len(rows), "ok": len(ok), "status_501": sum(1 for s, _ in rows if s == 501),
                    "errors": sum(1 for s, _ in rows if s not in (200, 501)),
                    "p50_ms": pct(allt, 50), "p95_ms": pct(allt, 95), "p99_ms": pct(allt, 99),
                    "max_ms": round(max(allt) * 1000, 2) if allt else None}
    errors = sum(v["errors"] for v in by.values())
    return {"rps": round(len(results) / wall, 1), "wall_seconds": round(wall, 3), "errors": errors,
            "value_501": by["value"]["status_501"], "endpoints": by}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data(), help="Amazon Beauty dir or Beauty.txt")
    ap.add_argument("--model", default="itemknn", help="model to train when --model-dir is not given")
    ap.add_argument("--model-dir", type=Path, default=None, help="serve this saved model instead of training one")
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--mix", default="0.7,0.2,0.1", help="recommendations,value,events shares")
    ap.add_argument("--unknown-users", type=float, default=0.05, help="share of requests for users not in the store")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "s1")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "s1_serving.json")
    args = ap.parse_args(argv)

    from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result
    from valuerec.serving.process import ServerProcess

    started = now_iso()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    store, sha = build_store(args.data, args.work_dir)
    fit_s = None
    if args.model_dir is None:
        model_dir, fit_s = train_model(store, args.model, args.work_dir)
    else:
        model_dir = args.model_dir
    model_name = json.loads((model_dir / "config.json").read_text())["model"]
    users, items = store_users_items(store)
    mix = tuple(float(x) for x in args.mix.split(","))
    if len(mix) != 3 or abs(sum(mix) - 1) > 1e-6:
        raise SystemExit("--mix needs three shares summing to 1")

    key = secrets.token_hex(16)           # a one-off key for this run, never stored
    env = {"VALUEREC_STORE": str(store), "VALUEREC_MODEL_DIR": str(model_dir), "VALUEREC_API_KEYS": f"{key}:read,write",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "VALUEREC_TORCH_THREADS": "1"}
    load_avg = os.getloadavg()
    server = ServerProcess(env, log_path=args.work_dir / "server.log")
    t0 = time.perf_counter()
    server.start(timeout=300)
    startup_s = time.perf_counter() - t0
    console.log(f"server up in {startup_s:.1f}s at {server.url} serving {model_name} from {model_dir}")
    try:
        warm = make_plan(args.warmup, mix, users, items, args.seed + 1000, args.unknown_users)
        asyncio.run(run_load(server.url, key, warm, args.concurrency))
        plan = make_plan(args.requests, mix, users, items, args.seed, args.unknown_users)
        with Progress(console=console, transient=True) as progress:
            results, wall, fresh, fresh_timeouts, polls = asyncio.run(
                load_with_probe(server.url, key, plan, args.concurrency, users, args.seed, progress))
        metrics_text = httpx.get(server.url + "/metrics", trust_env=False).text   # one request: httpx is fine
    finally:
        server.stop()

    summary = summarise(results, wall)
    fresh_ms = [f * 1000 for f in fresh]
    result = {
        "protocol": "S1", "dataset": "amazon-beauty", "data_sha256": sha, "git_commit": git_commit(),
        "command": command_line(), "device": device_info("cpu"), "started_at": started,
        "rps": summary["rps"], "errors": summary["errors"],
        "freshness_ms": round(float(np.median(fresh_ms)), 2) if fresh_ms else None,
        "freshness": {"probes": len(fresh_ms), "timeouts": len(fresh_timeouts),
                      "median_ms": round(float(np.median(fresh_ms)), 2) if fresh_ms else None,
                      "p95_ms": round(float(np.percentile(fresh_ms, 95)), 2) if fresh_ms else None,
                      "max_ms": round(float(max(fresh_ms)), 2) if fresh_ms else None,
                      "reads_until_fresh_max": int(max(polls)) if polls else None,
                      "how": "POST an event on the user's top item, then GET recommendations (exclude_history) "
                             "until the item is gone; measured during the load run. reads_until_fresh_max = 1 "
                             "means the first read after the POST's answer already reflected the event"},
        "endpoints": summary["endpoints"], "value_501": summary["value_501"],
        "concurrency": args.concurrency, "requests": args.requests, "warmup_requests": args.warmup,
        "mix": {"recommendations": mix[0], "value": mix[1], "events": mix[2]},
        "unknown_user_share": args.unknown_users, "wall_seconds": summary["wall_seconds"],
        "server": {"startup_seconds": round(startup_s, 2), "workers": 1, "host": "127.0.0.1",
                   "load_average_before": [round(x, 2) for x in load_avg],
                   "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
                   "client": "asyncio raw HTTP/1.1 keep-alive client (one connection per worker) on the same "
                             "machine, sharing its CPUs with the server"},
        "models": {model_name: {"metrics": {"rps": summary["rps"], "errors": summary["errors"],
                                            "p99_ms_recommendations":
                                                summary["endpoints"]["recommendations"]["p99_ms"]},
                                "seeds": [args.seed], "train_seconds": fit_s, "eval_seconds": summary["wall_seconds"],
                                "params": {"model_dir": str(model_dir)}}},
        "targets": {"errors": 0, "p99_ms_recommendations_max": 25, "rps_min": 300, "freshness_ms_max": 100},
    }
    result["targets_met"] = {
        "errors": result["errors"] == 0,
        "p99_recommendations": (summary["endpoints"]["recommendations"]["p99_ms"] or 1e9) <= 25,
        "rps": result["rps"] >= 300,
        "freshness": (result["freshness_ms"] or 1e9) <= 100 and not fresh_timeouts,
    }
    write_result(args.out, result)
    (args.work_dir / "metrics.txt").write_text(metrics_text)

    t = Table(title=f"S1 serving: {model_name}, {args.requests} requests, concurrency {args.concurrency}")
    for c in ("endpoint", "requests", "ok", "501", "errors", "p50 ms", "p95 ms", "p99 ms"):
        t.add_column(c, justify="right" if c != "endpoint" else "left")
    for k, v in summary["endpoints"].items():
        t.add_row(k, str(v["requests"]), str(v["ok"]), str(v["status_501"]), str(v["errors"]), str(v["p50_ms"]),
                  str(v["p95_ms"]), str(v["p99_ms"]))
    console.print(t)
    console.print(f"rps {result['rps']}, errors {result['errors']}, freshness median {result['freshness_ms']} ms "
                  f"(p95 {result['freshness']['p95_ms']}, {len(fresh_ms)} probes), device {result['device']}")
    console.print(f"targets met: {result['targets_met']}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
