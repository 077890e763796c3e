"""Pieces of the service without a socket: the value endpoint with a model that has a value head
(in-process ASGI client), settings parsing, and record validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving_support import API_KEYS, READ_KEY, auth, build_fixture
from valuerec.data.dataset import catalogue_from, sequences_from
from valuerec.data.schema import DataError
from valuerec.data.store import EventStore
from valuerec.data.validate import validate_event_records
from valuerec.models.base import MODEL_REGISTRY
from valuerec.models.popularity import Popularity
from valuerec.serving.app import create_app
from valuerec.serving.settings import Settings, parse_api_keys


class PopularityWithValue(Popularity):
    """Value = total past spend (a known answer), churn = 1 / (1 + number of events)."""

    def predict_value(self, histories, as_of):
        spend = np.array([float(np.sum(v)) for v in histories.values])
        n = np.array([len(v) for v in histories.values], dtype=float)
        return {"expected_value": spend, "churn_prob": 1.0 / (1.0 + n), "p_buy": n / (1.0 + n)}


@pytest.fixture(scope="module")
def value_client(tmp_path_factory):
    # Registered only while this fixture lives, so suites that iterate over every registered model
    # never see this test double.
    PopularityWithValue.name = "test-popularity-with-value"
    MODEL_REGISTRY[PopularityWithValue.name] = PopularityWithValue
    try:
        yield from _value_client(tmp_path_factory)
    finally:
        MODEL_REGISTRY.pop(PopularityWithValue.name, None)


def _value_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("value")
    fx = build_fixture(root)
    with EventStore(fx["store"]) as st:
        ev, it = st.events(), st.items()
    cat = catalogue_from(ev, it)
    PopularityWithValue().fit(sequences_from(ev, cat), cat).save(root / "models" / "v3")
    settings = Settings.from_env({"VALUEREC_STORE": str(fx["store"]), "VALUEREC_MODEL_DIR": str(root / "models" / "v3"),
                                  "VALUEREC_API_KEYS": API_KEYS})
    with TestClient(create_app(settings)) as c:
        yield c, fx


def test_value_endpoint_uses_predict_value_and_adds_the_stage(value_client):
    c, fx = value_client
    ev = fx["events"]
    r = c.get("/v1/users/u0/value", headers=auth(READ_KEY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == "test-popularity-with-value" and body["known_user"]
    assert body["value"]["expected_value"] == pytest.approx(ev.loc[ev["user_id"] == "u0", "value"].sum())
    assert body["value"]["churn_prob"] == pytest.approx(1 / 7)
    assert body["as_of"].startswith(str(ev["timestamp"].max().date()))   # default: newest event in the store
    if body["stage"] is not None:            # lifecycle rules present
        assert body["stage"] == "retained" and body["stage_reason"].startswith("retained")


def test_value_before_a_users_first_event_knows_no_history(value_client):
    c, _ = value_client
    body = c.get("/v1/users/u0/value", params={"as_of": "1990-01-01"}, headers=auth(READ_KEY)).json()
    assert body["known_user"] is False and body["history_length"] == 0, body
    if body["stage"] is not None:
        assert body["stage"] == "new"
    body = c.get("/v1/users/u0/value", headers=auth(READ_KEY)).json()
    assert body["known_user"] is True and body["history_length"] == 6


def test_value_for_an_unknown_user_and_a_bad_as_of(value_client):
    c, _ = value_client
    body = c.get("/v1/users/nobody/value", headers=auth(READ_KEY)).json()
    assert body["known_user"] is False and body["value"]["expected_value"] == 0.0
    r = c.get("/v1/users/u0/value", params={"as_of": "yesterday-ish"}, headers=auth(READ_KEY))
    assert r.status_code == 422 and "as_of" in r.json()["message"]
    assert r.json()["detail"][0]["loc"] == ["query", "as_of"]


def test_api_keys_parse_with_scopes_and_admin_implies_all():
    keys = parse_api_keys("key-aaaa1:read,write; key-bbbb2:admin\n# comment\nkey-cccc3:read", "env")
    assert keys["key-aaaa1"] == {"read", "write"}
    assert keys["key-bbbb2"] == {"read", "write", "admin"}
    assert keys["key-cccc3"] == {"read"}


@pytest.mark.parametrize("text, words", [("key-aaaa1", "key:scopes"), ("key-aaaa1:fly", "scopes must be"),
                                         ("short:read", "at least 8")])
def test_bad_api_key_config_is_a_clear_error(text, words):
    with pytest.raises(DataError, match=words):
        parse_api_keys(text, "env")


def test_settings_need_keys_store_and_model(tmp_path):
    with pytest.raises(DataError, match="VALUEREC_STORE"):
        Settings.from_env({"VALUEREC_MODEL_DIR": "m", "VALUEREC_API_KEYS": API_KEYS})
    with pytest.raises(DataError, match="no API keys"):
        Settings.from_env({"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m"})
    with pytest.raises(DataError, match="VALUEREC_MAX_K"):
        Settings.from_env({"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m", "VALUEREC_API_KEYS": API_KEYS,
                           "VALUEREC_MAX_K": "ten"})
    f = tmp_path / "keys.txt"
    f.write_text("file-key-123:read\n")
    s = Settings.from_env({"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m", "VALUEREC_API_KEYS_FILE": str(f)})
    assert s.api_keys == {"file-key-123": frozenset({"read"})}


def test_validate_records_matches_ingest_rules():
    df = validate_event_records([
        {"user_id": " u1 ", "item_id": "i1", "timestamp": "2024-01-01T10:00:00+02:00", "value": 3},
        {"user_id": "u2", "timestamp": 1_700_000_000, "event_type": "View"},
    ])
    assert list(df["user_id"]) == ["u1", "u2"]
    assert df["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T08:00:00")      # offset -> UTC
    assert df["timestamp"].iloc[1] == pd.Timestamp(1_700_000_000, unit="s")
    assert df["item_id"].iloc[1] is None and df["event_type"].iloc[1] == "view"
    assert list(df["quantity"]) == [1.0, 1.0] and list(df["value"]) == [3.0, 0.0]   # a view's value is 0
    with pytest.raises(DataError, match=r"events\[0\]\.value: a purchase needs its amount"):
        validate_event_records([{"user_id": "u2", "timestamp": 1_700_000_000, "event_type": "Purchase"}])
    with pytest.raises(DataError) as e:
        validate_event_records([{"user_id": "", "timestamp": "2024-13-45"}, {"user_id": "a", "timestamp": 1e13},
                                {"user_id": "b", "timestamp": "2024-01-01", "value": -1}])
    msg = str(e.value)
    assert "events[0].user_id: empty user id" in msg and "events[0].timestamp: unparseable date" in msg
    assert "events[1].timestamp" in msg and "events[2].value: negative" in msg and "nothing was written" in msg


@pytest.mark.parametrize("env", [{}, {"VALUEREC_PRELOAD_MAX_EVENTS": "0"}, {"VALUEREC_CACHE_USERS": "5"}],
                         ids=["preloaded", "no-preload", "tiny-cache"])
def test_group_commit_counts_and_cached_histories_match_the_store(tmp_path, env):
    """Concurrent writers with overlapping event ids: each id is accepted exactly once across all
    requests, and every cached history equals a fresh read of the store afterwards."""
    import threading

    from valuerec.serving.state import ServiceState

    fx = build_fixture(tmp_path)
    settings = Settings.from_env({"VALUEREC_STORE": str(fx["store"]), "VALUEREC_MODEL_DIR": str(fx["models"] / "v1"),
                                  "VALUEREC_API_KEYS": API_KEYS, **env})
    state = ServiceState(settings)
    state.start()
    try:
        results = []

        def writer(w):
            for j in range(10):
                recs = [{"user_id": f"u{(w + j) % 8}", "item_id": f"i{(w * 3 + j) % 30}",
                         "timestamp": 1.71e9 + j * 60 + w, "event_id": f"g-{(w * 10 + j) % 25}"}]  # ids repeat
                results.append(state.add_events(validate_event_records(recs)))
                state.history(state.runtime, f"u{(w + j + 1) % 8}")   # reads interleave with writes

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # ids repeat with other content: each repeat is a conflict, never a second stored event
        assert sum(a for a, _, _ in results) == 25 and sum(d + len(c) for _, d, c in results) == 40 - 25
        rt = state.runtime
        for u in [f"u{i}" for i in range(8)]:
            cached = state.history(rt, u)
            ev = state.store.user_events(u)
            s = sequences_from(ev, rt.catalogue, users=np.array([u], dtype=object), unknown_items="keep")
            assert list(cached.items) == list(s.items[0]), u
            assert list(cached.times) == list(s.times[0]), u
    finally:
        state.close()


def test_future_tolerance_setting():
    base = {"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m", "VALUEREC_API_KEYS": API_KEYS}
    assert Settings.from_env(base).max_future_h == 24.0
    assert Settings.from_env({**base, "VALUEREC_MAX_FUTURE_H": "0.5"}).max_future_h == 0.5
    with pytest.raises(DataError, match="VALUEREC_MAX_FUTURE_H"):
        Settings.from_env({**base, "VALUEREC_MAX_FUTURE_H": "-1"})


@pytest.mark.parametrize("case", ["port", "empty-models-root", "not-a-store"])
def test_serve_refuses_bad_arguments_with_one_line(tmp_path, case):
    """`valuerec serve` checks its port, models root and store before starting: exit 2 and one line,
    no traceback (a port over 65535 used to be taken modulo 65536)."""
    import os
    import subprocess
    import sys

    fx = build_fixture(tmp_path)
    args = {"port": ["--store", str(fx["store"]), "--model", str(fx["models"] / "v1"), "--port", "99999"],
            "empty-models-root": ["--store", str(fx["store"]), "--models-root", str(tmp_path / "empty")],
            "not-a-store": ["--store", str(tmp_path / "notes.txt"), "--model", str(fx["models"] / "v1"),
                            "--port", "1"]}[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a DuckDB file\n")
    env = {**os.environ, "VALUEREC_API_KEYS": API_KEYS, "COLUMNS": "200"}
    try:
        p = subprocess.run([sys.executable, "-m", "valuerec.cli", "serve", *args], env=env, capture_output=True,
                           text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the server started instead of refusing the arguments")
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "Traceback" not in out and "startup failed" not in out, out
    want = {"port": "65535", "empty-models-root": "no model directory (with config.json) inside",
            "not-a-store": "cannot open the event store"}[case]
    assert want in out, out


def test_explain_occludes_only_the_most_recent_events(tmp_path):
    from valuerec.serving.state import ServiceState

    base = {"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m", "VALUEREC_API_KEYS": API_KEYS}
    assert Settings.from_env(base).explain_max_events == 1000
    with pytest.raises(DataError, match="VALUEREC_EXPLAIN_MAX_EVENTS"):
        Settings.from_env({**base, "VALUEREC_EXPLAIN_MAX_EVENTS": "0"})
    fx = build_fixture(tmp_path)
    settings = Settings.from_env({"VALUEREC_STORE": str(fx["store"]), "VALUEREC_MODEL_DIR": str(fx["models"] / "v1"),
                                  "VALUEREC_API_KEYS": API_KEYS, "VALUEREC_EXPLAIN_MAX_EVENTS": "4"})
    state = ServiceState(settings)
    state.start()
    try:
        ex = state.explain("u0", None, None, top=100, greedy=2)["explanation"]
        assert ex["events_total"] == 6 and ex["events_occluded"] == 4
        scored = sorted(e["position"] for e in ex["events"] if e["effect"] is not None)
        assert scored == [2, 3, 4, 5]       # the two oldest events are not occluded: no effect given
        assert all(e["position"] >= 2 for e in ex["greedy"]["events"])
    finally:
        state.close()


def test_an_item_index_serves_the_same_recommendations(tmp_path):
    """$VALUEREC_ANN=on builds an HNSW index of the transformer's item vectors; on this small catalogue
    it returns the items full scoring returns, and /healthz says which retrieval is in use."""
    pytest.importorskip("faiss")
    from valuerec.data.dataset import catalogue_from, sequences_from
    from valuerec.data.store import EventStore
    from valuerec.models.transformer import BehaviourTransformer
    from valuerec.serving.state import ServiceState

    fx = build_fixture(tmp_path)
    with EventStore(fx["store"], read_only=True) as st:
        ev, it = st.events(), st.items()
    cat = catalogue_from(ev, it)
    BehaviourTransformer(seed=0, d_model=16, n_layers=1, max_len=10, epochs=3, use_text=False,
                         progress=False).fit(sequences_from(ev, cat), cat).save(tmp_path / "tr")
    answers = {}
    for ann in ("off", "on"):
        settings = Settings.from_env({"VALUEREC_STORE": str(fx["store"]), "VALUEREC_MODEL_DIR": str(tmp_path / "tr"),
                                      "VALUEREC_API_KEYS": API_KEYS, "VALUEREC_ANN": ann})
        state = ServiceState(settings)
        state.start()
        try:
            assert state.health()["model"]["retrieval"] == ("index" if ann == "on" else "full")
            answers[ann] = [[i["item_id"] for i in state.recommend(f"u{u}", 5, "auto", True)["items"]]
                            for u in range(20)]
        finally:
            state.close()
    assert answers["on"] == answers["off"]
    # the index was kept with the model: under 'auto' a small catalogue now uses it too
    assert (tmp_path / "tr" / "ann_index" / "index.faiss").exists()
    state = ServiceState(Settings.from_env({"VALUEREC_STORE": str(fx["store"]),
                                            "VALUEREC_MODEL_DIR": str(tmp_path / "tr"), "VALUEREC_API_KEYS": API_KEYS}))
    state.start()
    try:
        assert state.health()["model"]["retrieval"] == "index"
    finally:
        state.close()
    with pytest.raises(DataError, match="VALUEREC_ANN"):
        Settings.from_env({"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m", "VALUEREC_API_KEYS": API_KEYS,
                           "VALUEREC_ANN": "maybe"})


def test_explain_without_as_of_reads_the_newest_events(tmp_path):
    """The default as_of is just after the store's newest event, so a user whose only event is that
    newest one is explained from it (the models read the events strictly before their as_of)."""
    from valuerec.serving.state import ServiceState

    fx = build_fixture(tmp_path)
    settings = Settings.from_env({"VALUEREC_STORE": str(fx["store"]), "VALUEREC_MODEL_DIR": str(fx["models"] / "v1"),
                                  "VALUEREC_API_KEYS": API_KEYS})
    state = ServiceState(settings)
    state.start()
    try:
        newest = fx["events"]["timestamp"].max() + pd.Timedelta(hours=1)
        state.add_events(validate_event_records([{"user_id": "fresh", "item_id": "i3", "timestamp": newest.isoformat()}]))
        ex = state.explain("fresh", "i4", None, top=10)
        assert ex["as_of"] > newest and [e["item_id"] for e in ex["explanation"]["events"]] == ["i3"]
    finally:
        state.close()


def test_timeouts_and_limits_must_be_finite_and_keys_files_may_have_a_bom(tmp_path):
    base = {"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m", "VALUEREC_API_KEYS": API_KEYS}
    for name, raw in [("VALUEREC_WRITE_TIMEOUT_S", "0"), ("VALUEREC_WRITE_TIMEOUT_S", "-5"),
                      ("VALUEREC_WRITE_TIMEOUT_S", "nan"), ("VALUEREC_MAX_FUTURE_H", "inf"),
                      ("VALUEREC_POPULAR_TTL_S", "nan"), ("VALUEREC_GIL_SWITCH_MS", "nan")]:
        with pytest.raises(DataError, match=f"\\${name}='{raw}': expected a finite number"):
            Settings.from_env({**base, name: raw})
    assert Settings.from_env({**base, "VALUEREC_MAX_FUTURE_H": "0"}).max_future_h == 0.0
    f = tmp_path / "keys.txt"
    f.write_bytes("\ufefffirst-key-1234:read\r\nsecond-key-1234:admin\r\n".encode("utf-8"))   # Notepad's UTF-8
    s = Settings.from_env({"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m", "VALUEREC_API_KEYS_FILE": str(f)})
    assert set(s.api_keys) == {"first-key-1234", "second-key-1234"}


def test_serving_without_keys_needs_a_loopback_host():
    from valuerec.serving.settings import is_loopback
    assert all(is_loopback(h) for h in ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
    assert not any(is_loopback(h) for h in ["0.0.0.0", "10.0.0.1", "example.com", "", None])
    base = {"VALUEREC_STORE": "s", "VALUEREC_MODEL_DIR": "m", "VALUEREC_AUTH_DISABLED": "1"}
    assert Settings.from_env({**base, "VALUEREC_HOST": "127.0.0.2"}).auth_disabled
    # uvicorn --factory: nothing says where it listens unless $VALUEREC_HOST does
    for env in (base, {**base, "VALUEREC_HOST": "0.0.0.0"}):
        with pytest.raises(DataError, match="only allowed on a loopback host"):
            Settings.from_env(env)


def test_serve_refuses_a_port_in_use_before_loading_the_model(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    fx = build_fixture(tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "valuerec.cli", "serve", "--store", str(fx["store"]), "--model",
                            str(fx["models"] / "v1"), "--port", str(port)],
                           env={**os.environ, "VALUEREC_API_KEYS": API_KEYS, "COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and f"--port {port}: cannot listen there" in out and "Traceback" not in out, out


def test_a_store_the_model_cannot_read_is_said_and_new_users_still_get_items(tmp_path):
    """An empty store, or one of items the model never saw, is served with a warning (log, /healthz);
    new users then get the model's own popular items instead of an empty list."""
    from fastapi.testclient import TestClient

    from valuerec.serving.app import create_app

    fx = build_fixture(tmp_path)
    other = tmp_path / "other.duckdb"
    with EventStore(other) as st:
        st.add_events(pd.DataFrame({"user_id": ["a", "b"], "item_id": ["X1", "X2"],
                                    "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"]),
                                    "event_type": "view", "value": 0.0, "quantity": 1.0}))
    for store, words in [(tmp_path / "empty.duckdb", "has no events yet"),
                         (other, "none of the store's 2 items is in the model's catalogue")]:
        settings = Settings.from_env({"VALUEREC_STORE": str(store), "VALUEREC_MODEL_DIR": str(fx["models"] / "v2"),
                                      "VALUEREC_API_KEYS": API_KEYS})
        with TestClient(create_app(settings)) as c:
            warnings = c.get("/healthz").json()["model"]["warnings"]
            assert len(warnings) == 1 and words in warnings[0], warnings
            r = c.get("/v1/users/someone/recommendations?k=5", headers={"X-API-Key": "admin-key-7890"})
            assert r.status_code == 200 and len(r.json()["items"]) == 5, r.text


def test_popularity_for_new_users_counts_users_not_events(tmp_path):
    from fastapi.testclient import TestClient

    from valuerec.serving.app import create_app

    fx = build_fixture(tmp_path)
    settings = Settings.from_env({"VALUEREC_STORE": str(fx["store"]), "VALUEREC_MODEL_DIR": str(fx["models"] / "v1"),
                                  "VALUEREC_API_KEYS": API_KEYS, "VALUEREC_MAX_BATCH": "1000",
                                  "VALUEREC_MAX_BODY_BYTES": "1000000"})
    key = {"X-API-Key": "admin-key-7890"}
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json()["model"]["warnings"] == []
        top = c.get("/v1/users/newcomer/recommendations?k=1", headers=key).json()["items"][0]["item_id"]
        item = "i29" if top != "i29" else "i28"
        spam = [{"user_id": "spammer", "item_id": item, "timestamp": f"2024-02-01T00:{m:02d}:00"} for m in range(60)]
        assert c.post("/v1/events", json={"events": spam}, headers=key).json()["accepted"] == 60
        c.delete("/v1/users/spammer", headers=key)      # an erasure re-counts at once (the TTL is 30 s)
        spam2 = [{**e, "user_id": "spammer2"} for e in spam]
        assert c.post("/v1/events", json={"events": spam2}, headers=key).json()["accepted"] == 60
        # 60 events of one user do not outweigh items that several users had
        assert c.get("/v1/users/newcomer2/recommendations?k=1", headers=key).json()["items"][0]["item_id"] == top
