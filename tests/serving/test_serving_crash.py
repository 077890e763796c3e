"""Crash safety: events acknowledged by the service survive a SIGKILL mid-stream, exactly once."""

from __future__ import annotations

import threading
import time

import httpx

from serving_support import WRITE_KEY, ServerProcess, auth, build_fixture, server_env
from valuerec.data.store import EventStore


def batch(n: int) -> list[dict]:
    return [{"user_id": f"crash-u{n % 7}", "item_id": f"i{(n + j) % 30}", "timestamp": 1.70e9 + n * 10 + j,
             "event_type": "view", "event_id": f"crash-{n}-{j}"} for j in range(1 + n % 4)]


def test_acknowledged_events_survive_sigkill_exactly_once(tmp_path):
    fx = build_fixture(tmp_path)
    env = server_env(fx)
    server = ServerProcess(env, log_path=tmp_path / "server.log").start()
    acked: list[int] = []          # batches the server answered 200 for
    unknown: list[int] = []        # the batch in flight when the server died
    stop = threading.Event()

    def stream():
        with httpx.Client(base_url=server.url, timeout=10.0, trust_env=False) as c:
            n = 0
            while not stop.is_set():
                try:
                    r = c.post("/v1/events", json={"events": batch(n)}, headers=auth(WRITE_KEY))
                except httpx.HTTPError:
                    unknown.append(n)
                    return
                assert r.status_code == 200, r.text
                acked.append(n)
                n += 1

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.time() + 20
    while len(acked) < 30 and time.time() < deadline:
        time.sleep(0.05)
    server.kill()                  # SIGKILL mid-stream: no shutdown hook, no checkpoint
    t.join(20)
    stop.set()
    assert len(acked) >= 30, "the client did not get going before the kill"

    # Restart on the same store (through `valuerec serve` this time); the client re-sends everything
    # it is unsure about and more.
    server = ServerProcess(env, log_path=tmp_path / "server2.log", cli=True,
                           extra_args=["--model", str(fx["models"] / "v1")]).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10.0, trust_env=False) as c:
            resent = acked[-5:] + unknown
            for n in resent:
                r = c.post("/v1/events", json={"events": batch(n)}, headers=auth(WRITE_KEY))
                assert r.status_code == 200, r.text
                if n in acked:
                    assert r.json()["accepted"] == 0 and r.json()["duplicates"] == len(batch(n))
    finally:
        server.stop()

    with EventStore(fx["store"], read_only=True) as st:
        got = st.events("event_id LIKE 'crash-%'")
    counts = got["event_id"].value_counts()
    assert counts.max() == 1                                           # nothing twice
    expected = {e["event_id"] for n in acked + unknown for e in batch(n)}
    assert expected <= set(counts.index)                               # every acknowledged event is there
    assert set(counts.index) <= {e["event_id"] for n in range(max(acked + unknown) + 1) for e in batch(n)}
