"""Every endpoint over a real socket: happy paths, bad input, auth, limits, idempotency, freshness,
erasure and reload. The server is one subprocess per module (see conftest)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving_support import ADMIN_KEY, READ_KEY, WRITE_KEY, auth
from valuerec.data.store import EventStore


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served["url"], timeout=30.0, trust_env=False) as c:
        yield c


def recs(client, user, key=READ_KEY, **params):
    r = client.get(f"/v1/users/{user}/recommendations", params=params, headers=auth(key))
    assert r.status_code == 200, r.text
    return r.json()


def ids(body):
    return [it["item_id"] for it in body["items"]]


# -- happy paths -------------------------------------------------------------------------------------
def test_healthz_needs_no_key_and_names_the_model(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["model"]["name"] == "itemknn" and body["model"]["version"] == "v1"


def test_recommendations_for_a_known_user_come_from_the_model_and_skip_history(client, served):
    ev = served["events"]
    hist = set(ev.loc[ev["user_id"] == "u0", "item_id"])
    body = recs(client, "u0", k=4)
    assert body["policy"] == "model" and body["k"] == 4 and body["history_length"] == 6
    got = ids(body)
    assert len(got) == 4
    assert not set(got) & hist                                          # exclude_history=true
    assert all(int(i[1:]) < 10 for i in got)                           # u0 is in cluster 0 (i0..i9)
    first = body["items"][0]
    assert first["text"] == f"item number {first['item_id'][1:]}" and first["price"] is not None
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_exclude_history_false_can_return_history_items(client, served):
    ev = served["events"]
    hist = set(ev.loc[ev["user_id"] == "u1", "item_id"])
    assert set(ids(recs(client, "u1", k=10, exclude_history="false"))) & hist


def test_unknown_user_gets_the_new_user_fallback(client):
    body = recs(client, "never-seen-user", k=5)
    assert body["policy"] == "new_user" and body["history_length"] == 0
    assert len(body["items"]) == 5
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0   # popularity counts


def test_popular_policy_on_request(client):
    assert recs(client, "u0", k=3, policy="popular")["policy"] == "popular"


def test_similar_items_from_the_model(client):
    r = client.get("/v1/items/i3/similar", params={"k": 5}, headers=auth(READ_KEY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "model"
    got = ids(body)
    assert len(got) == 5 and "i3" not in got and all(int(i[1:]) < 10 for i in got)


def test_value_is_501_with_a_clear_message_for_a_model_without_value_head(client):
    r = client.get("/v1/users/u0/value", headers=auth(READ_KEY))
    assert r.status_code == 501
    assert "predict_value" in r.json()["detail"] and "itemknn" in r.json()["detail"]


def test_stage_from_lifecycle_rules(client):
    r = client.get("/v1/users/u0/stage", headers=auth(READ_KEY))
    if r.status_code == 501:
        pytest.skip("lifecycle module not available")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stage"] == "retained"        # 6 purchases, active within the horizon
    assert body["features"]["n_purchases"] == 6 and body["reason"].startswith("retained")


def test_stage_history_length_counts_only_events_up_to_as_of(client):
    lengths = {}
    for as_of in ("1990-01-01", "2024-01-01T02:30:00", None):     # u0's six events: 2024-01-01 00:00 .. 05:00
        r = client.get("/v1/users/u0/stage", params={"as_of": as_of} if as_of else {}, headers=auth(READ_KEY))
        if r.status_code == 501:
            pytest.skip("lifecycle module not available")
        assert r.status_code == 200, r.text
        lengths[as_of] = (r.json()["history_length"], r.json()["features"]["n_events"])
    assert lengths["1990-01-01"] == (0, 0)
    assert lengths["2024-01-01T02:30:00"] == (3, 3)
    assert lengths[None][0] == 6


def test_explain_lists_events_by_influence(client):
    r = client.get("/v1/users/u0/explain", params={"top": 3}, headers=auth(READ_KEY))
    if r.status_code == 501:
        pytest.skip("explain module not available")
    assert r.status_code == 200, r.text
    ex = r.json()["explanation"]
    assert ex["target_kind"] == "item" and len(ex["events"]) == 3
    effects = [abs(e["effect"]) for e in ex["events"]]
    assert effects == sorted(effects, reverse=True) and effects[0] > 0
    # the default target is the top recommendation
    assert r.json()["target"] == ids(recs(client, "u0", k=1))[0]


def test_explain_reads_only_the_events_before_as_of(client):
    r = client.get("/v1/users/u0/explain", params={"top": 10, "as_of": "2024-01-01T02:30:00"}, headers=auth(READ_KEY))
    if r.status_code == 501:
        pytest.skip("explain module not available")
    assert r.status_code == 200, r.text
    events = r.json()["explanation"]["events"]
    assert len(events) == 3           # u0's events at 00:00, 01:00 and 02:00, not the three after
    assert sorted(e["time"] for e in events) == ["2024-01-01 00:00:00", "2024-01-01 01:00:00", "2024-01-01 02:00:00"]
    r = client.get("/v1/users/u0/explain", params={"as_of": "1990-01-01"}, headers=auth(READ_KEY))
    assert r.status_code == 404 and "no events before 1990-01-01" in r.text


def test_explain_greedy_set_over_http(client):
    r = client.get("/v1/users/u0/explain", params={"greedy": 2}, headers=auth(READ_KEY))
    if r.status_code == 501:
        pytest.skip("explain module not available")
    assert r.status_code == 200, r.text
    ex = r.json()["explanation"]
    g = ex["greedy"]
    assert g["k"] == 2 and len(g["events"]) == 2 and ex["events_total"] == ex["events_occluded"] == 6
    assert g["events"][0]["step_effect"] == pytest.approx(max(e["effect"] for e in ex["events"]))
    assert sum(e["step_effect"] for e in g["events"]) == pytest.approx(g["set_effect"])
    assert g["target_without_set"] == pytest.approx(ex["target_score"] - g["set_effect"])
    assert "greedy" not in client.get("/v1/users/u0/explain", headers=auth(READ_KEY)).json()["explanation"]
    r = client.get("/v1/users/u0/explain", params={"greedy": 21}, headers=auth(READ_KEY))
    assert r.status_code == 422 and "greedy" in r.text
    r = client.get("/v1/users/u0/explain", params={"greedy": 2, "greedy_direction": "abs"}, headers=auth(READ_KEY))
    g, events = r.json()["explanation"]["greedy"], r.json()["explanation"]["events"]
    assert g["direction"] == "abs" and g["method"].endswith("(either way)")
    assert abs(g["events"][0]["step_effect"]) == pytest.approx(max(abs(e["effect"]) for e in events))
    assert ex["greedy"]["direction"] == "supporting"      # auto, for an item's score
    r = client.get("/v1/users/u0/explain", params={"greedy": 2, "greedy_direction": "up"}, headers=auth(READ_KEY))
    assert r.status_code == 422 and "greedy_direction" in r.text


def test_metrics_count_requests_per_route(client):
    client.get("/v1/users/u0/recommendations", headers=auth(READ_KEY))
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'route="/v1/users/{user_id}/recommendations"' in text
    assert "valuerec_http_request_duration_seconds_bucket" in text
    assert 'valuerec_model_info{name="itemknn",version="v1"} 1.0' in text


def test_openapi_documents_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ["/v1/users/{user_id}/recommendations", "/v1/users/{user_id}/value", "/v1/users/{user_id}/explain",
              "/v1/items/{item_id}/similar", "/v1/events", "/v1/users/{user_id}", "/v1/admin/reload", "/healthz"]:
        assert p in paths


# -- errors: each with a clear message, and the server keeps serving -------------------------------
@pytest.mark.parametrize("event, field, words", [
    ({"item_id": "i1", "timestamp": "2024-02-01T00:00:00"}, "user_id", "Field required"),
    ({"user_id": "u0", "item_id": "i1", "timestamp": "31/31/2024"}, "timestamp", "unparseable date"),
    ({"user_id": "u0", "item_id": "i1", "timestamp": "2024-02-01", "value": -5}, "value", "negative"),
    ({"user_id": "u0", "item_id": "i1", "timestamp": "2024-02-01", "quantity": "lots"}, "quantity", "valid number"),
    ({"user_id": "u0", "timestamp": "2024-02-01", "colour": "red"}, "colour", "Extra inputs"),
    ({"user_id": "u0", "item_id": "i1", "timestamp": True}, "events[0].timestamp",
     "expected an ISO 8601 string or unix seconds, got a boolean"),
    ({"user_id": "u0", "item_id": "i1", "timestamp": "2024-02-01", "value": True}, "events[0].value",
     "expected a number, got a boolean"),
    ({"user_id": "u0", "item_id": "i1", "timestamp": "2024-02-01", "quantity": False}, "events[0].quantity",
     "expected a number, got a boolean"),
    ({"user_id": "u0", "item_id": "i1", "timestamp": "2099-06-01"}, "events[0].timestamp",
     "2099-06-01T00:00:00 is in the future (more than 24 h after the server clock)"),
    ({"user_id": "u0", "item_id": "i1", "timestamp": "2024-02-01", "event_type": "purchase"}, "events[0].value",
     "a purchase needs its amount"),     # an omitted amount is not 0 spent
])
def test_malformed_events_are_422_naming_the_field(client, event, field, words):
    r = client.post("/v1/events", json={"events": [event]}, headers=auth(WRITE_KEY))
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in body["message"] and words in body["message"], body
    assert client.get("/healthz").status_code == 200


def test_a_future_event_is_rejected_and_does_not_move_the_default_as_of(client):
    before = client.get("/v1/users/u0/stage", headers=auth(READ_KEY)).json()
    r = client.post("/v1/events", headers=auth(WRITE_KEY), json={"events": [
        {"user_id": "future-user", "item_id": "i1", "timestamp": "2024-02-01T00:00:00"},
        {"user_id": "future-user", "item_id": "i2", "timestamp": 4.1e9}]})
    assert r.status_code == 422 and "events[1].timestamp: 2099-12-03T16:53:20 is in the future" in r.json()["message"], r.text
    assert recs(client, "future-user")["history_length"] == 0                    # nothing of the batch stored
    after = client.get("/v1/users/u0/stage", headers=auth(READ_KEY)).json()
    assert after.get("as_of") == before.get("as_of")


def test_a_bad_event_rejects_the_whole_batch(client, served):
    before = recs(client, "batch-user")["history_length"]
    r = client.post("/v1/events", headers=auth(WRITE_KEY), json={"events": [
        {"user_id": "batch-user", "item_id": "i1", "timestamp": "2024-02-01T00:00:00"},
        {"user_id": "batch-user", "item_id": "i2", "timestamp": "not a date"}]})
    assert r.status_code == 422 and "events[1].timestamp" in r.json()["message"]
    assert recs(client, "batch-user")["history_length"] == before == 0


def test_not_json_is_422(client):
    r = client.post("/v1/events", content=b"{not json", headers={**auth(WRITE_KEY), "content-type": "application/json"})
    assert r.status_code == 422
    deep = b"[" * 5_000 + b"]" * 5_000                  # valid JSON, too deep for the parser: not a bare 400
    r = client.post("/v1/events", content=deep, headers={**auth(WRITE_KEY), "content-type": "application/json"})
    assert r.status_code == 422 and "cannot be parsed as JSON" in r.json()["message"], r.text


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_are_422_not_500(client, raw):
    body = ('{"events":[{"user_id":"nan-user","item_id":"i1","timestamp":"2011-12-10","value":%s}]}' % raw).encode()
    r = client.post("/v1/events", content=body, headers={**auth(WRITE_KEY), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "events[0].value: must be a finite number" in r.json()["message"]
    assert recs(client, "nan-user")["history_length"] == 0


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", None])
@pytest.mark.parametrize("body", [b'\xff\xfe{"events":[]}', b'{"events":[{"user_id":"u\xff","timestamp":1.7e9}]}'])
def test_a_body_that_is_not_utf8_is_422(client, body, ctype):
    headers = {**auth(WRITE_KEY), **({"content-type": ctype} if ctype else {})}
    r = client.post("/v1/events", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert "not UTF-8 JSON" in r.json()["message"]


def test_unknown_item_is_404(client):
    r = client.get("/v1/items/no-such-item/similar", headers=auth(READ_KEY))
    assert r.status_code == 404 and "no-such-item" in r.json()["detail"]


def test_too_large_k_is_422(client):
    r = client.get("/v1/users/u0/recommendations", params={"k": 51}, headers=auth(READ_KEY))
    assert r.status_code == 422 and "k" in r.json()["message"] and "50" in r.json()["message"]
    r = client.get("/v1/users/u0/recommendations", params={"k": 0}, headers=auth(READ_KEY))
    assert r.status_code == 422


def test_value_aware_policy_reranks_with_the_learned_item_values(client, served):
    """The model directory holds learned item values; the service re-ranks with them at its 'now'
    (the store's newest event), exactly as the library does."""
    import numpy as np
    import pandas as pd

    from valuerec.data.dataset import sequences_from
    from valuerec.models import load_model
    from valuerec.models.item_value import load_item_values
    from valuerec.policies.rerank import apply_policy

    body = recs(client, "u0", k=5, policy="value_aware")
    assert body["policy"] == "value_aware"
    model_dir = served["models"] / "v1"
    model, iv = load_model(model_dir), load_item_values(model_dir)
    assert iv is not None
    ev = served["events"]        # the store holds exactly these (earlier tests' writes were all rejected)
    hist = sequences_from(ev[ev["user_id"] == "u0"], model.catalogue_, users=np.array(["u0"], dtype=object))
    top, _ = apply_policy("value_aware", model, hist, k=5, exclude="history", item_value=iv,
                          as_of=np.array([pd.Timestamp(ev["timestamp"].max()).value / 1e9]))
    assert ids(body) == [str(model.catalogue_.item_ids[i]) for i in top[0] if i >= 0]


def test_expected_revenue_policy_uses_the_saved_purchase_stage(client, served):
    """``expected_revenue`` ranks by the saved purchase stage's P(buy) x the learned item value."""
    import numpy as np
    import pandas as pd

    from valuerec.data.dataset import sequences_from
    from valuerec.models import load_model
    from valuerec.models.item_value import load_item_values
    from valuerec.models.purchase_stage import load_purchase_stage
    from valuerec.policies.rerank import apply_policy

    body = recs(client, "u1", k=5, policy="expected_revenue")
    assert body["policy"] == "expected_revenue"
    model_dir = served["models"] / "v1"
    model, iv, stage = load_model(model_dir), load_item_values(model_dir), load_purchase_stage(model_dir)
    assert stage is not None
    ev = served["events"]
    hist = sequences_from(ev[ev["user_id"] == "u1"], model.catalogue_, users=np.array(["u1"], dtype=object))
    now = np.array([pd.Timestamp(ev["timestamp"].max()).value / 1e9])
    top, _ = apply_policy("expected_revenue", model, hist, k=5, exclude="history", item_value=iv,
                          purchase_model=stage, as_of=now)
    assert ids(body) == [str(model.catalogue_.item_ids[i]) for i in top[0] if i >= 0]


def test_stage_policy_says_which_stage_ranked_the_list(client):
    """policy=stage answers the user's stage (the one /stage gives) and the policy it maps to."""
    from valuerec.policies.rerank import DEFAULT_STAGE_POLICIES

    body = recs(client, "u0", k=5, policy="stage")
    stage = client.get("/v1/users/u0/stage", headers=auth(READ_KEY)).json()["stage"]
    assert body["policy"] == "stage" and body["stage"] == stage
    assert body["stage_policy"] == DEFAULT_STAGE_POLICIES[stage]
    assert recs(client, "u0", k=5)["stage"] is None


def test_unknown_policy_is_422(client):
    r = client.get("/v1/users/u0/recommendations", params={"policy": "nonsense"}, headers=auth(READ_KEY))
    assert r.status_code == 422 and "policy" in r.json()["message"]


def test_too_large_body_is_413_and_too_large_batch_is_422(client):
    big = {"events": [{"user_id": "u0", "item_id": "i1", "timestamp": "2024-02-01T00:00:00",
                       "event_id": f"big-{i}"} for i in range(400)]}     # > 20,000 bytes
    r = client.post("/v1/events", json=big, headers=auth(WRITE_KEY))
    assert r.status_code == 413 and "20000 bytes" in r.json()["detail"]
    many = {"events": [{"user_id": "u", "timestamp": 1.7e9} for _ in range(101)]}  # < 20,000 bytes, > 100 events
    r = client.post("/v1/events", json=many, headers=auth(WRITE_KEY))
    assert r.status_code == 422 and "limit is 100" in r.json()["message"]
    assert client.get("/healthz").status_code == 200


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(30):
            yield b" " * 1000     # no Content-Length: the limit is enforced while streaming
    r = client.post("/v1/events", content=chunks(), headers={**auth(WRITE_KEY), "content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"X-API-Key": "wrong-key-000"}, 401),
    ({"Authorization": "Bearer wrong-key-000"}, 401),
    ({"Authorization": f"Bearer {READ_KEY}"}, 200),
])
def test_missing_or_wrong_key_is_401(client, headers, status):
    r = client.get("/v1/users/u0/recommendations", headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert "API key" in r.json()["detail"]


def test_wrong_scope_is_403(client):
    r = client.post("/v1/events", json={"events": [{"user_id": "u0", "timestamp": 1.7e9}]}, headers=auth(READ_KEY))
    assert r.status_code == 403 and "'write' scope" in r.json()["detail"]
    r = client.post("/v1/admin/reload", headers=auth(WRITE_KEY))
    assert r.status_code == 403 and "'admin' scope" in r.json()["detail"]
    r = client.delete("/v1/users/u5", headers=auth(READ_KEY))
    assert r.status_code == 403


# -- behaviour -------------------------------------------------------------------------------------
def test_same_event_id_twice_is_stored_once(client):
    ev = {"user_id": "idem-user", "item_id": "i12", "timestamp": "2024-02-02T10:00:00", "event_id": "client-1"}
    r1 = client.post("/v1/events", json={"events": [ev]}, headers=auth(WRITE_KEY)).json()
    r2 = client.post("/v1/events", json={"events": [ev, {**ev, "item_id": "i13"}]}, headers=auth(WRITE_KEY)).json()
    assert (r1["accepted"], r1["duplicates"], r1["conflicts"]) == (1, 0, 0)
    # the identical re-send is a duplicate; the same id with other content is a conflict, named
    assert (r2["received"], r2["accepted"], r2["duplicates"], r2["conflicts"]) == (2, 0, 1, 1)
    assert r2["conflicting_event_ids"] == ["client-1"]
    # within one batch too: the first is stored, the second with other content is a conflict
    r3 = client.post("/v1/events", headers=auth(WRITE_KEY), json={"events": [
        {**ev, "event_id": "client-2"}, {**ev, "event_id": "client-2", "value": 3.0}]}).json()
    assert (r3["accepted"], r3["duplicates"], r3["conflicts"], r3["conflicting_event_ids"]) == (1, 0, 1, ["client-2"])
    assert recs(client, "idem-user")["history_length"] == 2
    # nothing stored changed: the seen items are still i12 (twice), not i13
    assert "i13" in ids(recs(client, "idem-user", k=30, exclude_history="true"))


def test_next_recommendation_reflects_a_new_event(client):
    user = "fresh-user"
    assert recs(client, user)["policy"] == "new_user"
    r = client.post("/v1/events", headers=auth(WRITE_KEY), json={"events": [
        {"user_id": user, "item_id": "i23", "timestamp": "2024-02-03T00:00:00", "event_type": "purchase",
         "value": 4.5}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    body = recs(client, user, k=5)
    assert body["policy"] == "model" and body["history_length"] == 1
    got = ids(body)
    assert "i23" not in got and all(20 <= int(i[1:]) < 30 for i in got)   # i23's cluster
    # and a second event moves it again: the cached state is updated, not stale
    top = got[0]
    client.post("/v1/events", headers=auth(WRITE_KEY), json={"events": [
        {"user_id": user, "item_id": top, "timestamp": "2024-02-03T00:01:00"}]})
    assert top not in ids(recs(client, user, k=5))


def test_delete_user_erases_events_and_state(client):
    user = "erase-me"
    client.post("/v1/events", headers=auth(WRITE_KEY), json={"events": [
        {"user_id": user, "item_id": "i1", "timestamp": "2024-02-01T00:00:00"},
        {"user_id": user, "item_id": "i2", "timestamp": "2024-02-01T00:01:00"}]})
    assert recs(client, user)["policy"] == "model"
    r = client.delete(f"/v1/users/{user}", headers=auth(WRITE_KEY))
    assert r.status_code == 200 and r.json() == {"user_id": user, "deleted_events": 2}
    body = recs(client, user)
    assert body["policy"] == "new_user" and body["history_length"] == 0


def test_concurrent_requests_all_succeed(client, served):
    errors = []

    def worker(n):
        with httpx.Client(base_url=served["url"], timeout=30.0, trust_env=False) as c:
            for j in range(15):
                if j % 5 == 0:
                    r = c.post("/v1/events", headers=auth(WRITE_KEY), json={"events": [
                        {"user_id": f"conc{n}", "item_id": f"i{j}", "timestamp": 1.7e9 + j, "event_id": f"c{n}-{j}"}]})
                else:
                    r = c.get(f"/v1/users/u{(n * 7 + j) % 60}/recommendations", headers=auth(READ_KEY))
                if r.status_code != 200:
                    errors.append(r.text)
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert recs(client, "conc0")["history_length"] == 3


def test_reload_swaps_the_model_without_failing_requests(client, served):
    stop = threading.Event()
    statuses, problems = [], []

    def reader():
        with httpx.Client(base_url=served["url"], timeout=30.0, trust_env=False) as c:
            while not stop.is_set():
                try:
                    r = c.get("/v1/users/u0/recommendations", headers=auth(READ_KEY))
                except httpx.HTTPError as e:
                    problems.append(repr(e))
                    continue
                statuses.append(r.status_code)
                if r.status_code != 200:
                    problems.append(f"{r.status_code}: {r.text[:300]}")

    t = threading.Thread(target=reader)
    t.start()
    deadline = time.time() + 30
    while len(statuses) < 3 and time.time() < deadline:   # the reader is going before the first swap
        time.sleep(0.01)
    try:
        bad = client.post("/v1/admin/reload", json={"path": str(served["models"] / "missing")}, headers=auth(ADMIN_KEY))
        assert bad.status_code == 409 and "not a model directory" in bad.json()["detail"], bad.text
        assert bad.json()["detail"].endswith("still serving v1")
        outside = client.post("/v1/admin/reload", json={"path": str(served["root"])}, headers=auth(ADMIN_KEY))
        assert outside.status_code == 422 and "outside the models root" in outside.json()["message"]
        r = client.post("/v1/admin/reload", headers=auth(ADMIN_KEY))   # newest under the models root: v2
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["previous"]["version"] == "v1" and body["current"]["version"] == "v2"
        assert body["current"]["name"] == "popularity"
        after = recs(client, "u0")
        assert after["model"] == {"name": "popularity", "version": "v2"}
        r = client.post("/v1/admin/reload", json={"path": str(served["models"] / "v1")}, headers=auth(ADMIN_KEY))
        assert r.status_code == 200 and r.json()["current"]["version"] == "v1"
    finally:
        stop.set()
        t.join()
    assert problems == [] and len(statuses) >= 3, (problems[:5], len(statuses))
    assert client.get("/healthz").json()["model"]["version"] == "v1"


def test_bad_query_parameters_point_at_the_query(client, served):
    r = client.get("/v1/users/u0/stage", params={"as_of": "yesterday-ish"}, headers=auth(READ_KEY))
    if r.status_code != 501:      # lifecycle module present
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "as_of"], r.text
        assert "query.as_of: unparseable date 'yesterday-ish'" in r.json()["message"]
    # a policy the loaded model cannot answer (v2, popularity, has no purchase stage): 501 like other
    # answers the model cannot give
    r = client.post("/v1/admin/reload", json={"path": str(served["models"] / "v2")}, headers=auth(ADMIN_KEY))
    assert r.status_code == 200, r.text
    try:
        r = client.get("/v1/users/u0/recommendations", params={"policy": "expected_revenue"}, headers=auth(READ_KEY))
        assert r.status_code == 501, r.text
        detail = r.json()["detail"]
        assert detail.startswith("policy=expected_revenue: model 'popularity' (v2) cannot answer it")
        assert "needs a purchase stage" in detail and "--purchase-stage" in detail
    finally:
        r = client.post("/v1/admin/reload", json={"path": str(served["models"] / "v1")}, headers=auth(ADMIN_KEY))
        assert r.status_code == 200, r.text


def test_a_skipped_event_does_not_move_the_default_as_of(client):
    """Only stored events move "as of" (a conflicting re-send far in the future is skipped), and
    erasing the user who holds the newest event moves it back."""
    def as_of():
        return client.get("/v1/users/u0/stage", headers=auth(READ_KEY)).json().get("as_of")
    before = as_of()
    ev = {"user_id": "asof-user", "item_id": "i1", "timestamp": "2024-03-05T00:00:00", "event_id": "asof-1"}
    assert client.post("/v1/events", json={"events": [ev]}, headers=auth(WRITE_KEY)).json()["accepted"] == 1
    stored = as_of()
    late = {**ev, "timestamp": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%S")}
    r = client.post("/v1/events", json={"events": [late]}, headers=auth(WRITE_KEY)).json()
    assert r["accepted"] == 0 and r["conflicts"] == 1
    if stored is not None:        # lifecycle module present
        assert as_of() == stored == "2024-03-05T00:00:01"
        assert client.delete("/v1/users/asof-user", headers=auth(WRITE_KEY)).json()["deleted_events"] == 1
        assert as_of() == before


@pytest.mark.parametrize("when", ["3000-01-01", "1677-01-01", "9999-12-31T23:59:59"])
@pytest.mark.parametrize("route", ["value", "stage", "explain"])
def test_an_as_of_outside_the_event_range_is_422(client, route, when):
    r = client.get(f"/v1/users/u0/{route}", params={"as_of": when}, headers=auth(READ_KEY))
    if r.status_code == 501:      # value: the served item-kNN has no value head, which is said first
        return
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "as_of"], r.text
    assert "outside 1900-01-01..2100-01-01" in r.json()["message"]


def test_ids_with_a_slash_can_be_read_and_erased(client):
    ev = {"user_id": "shop/42", "item_id": "i3", "timestamp": "2024-03-01T00:00:00"}
    assert client.post("/v1/events", json={"events": [ev]}, headers=auth(WRITE_KEY)).json()["accepted"] == 1
    body = recs(client, "shop%2F42")
    assert body["user_id"] == "shop/42" and body["history_length"] == 1
    r = client.delete("/v1/users/shop%2F42", headers=auth(WRITE_KEY))
    assert r.status_code == 200 and r.json()["deleted_events"] == 1, r.text
    assert recs(client, "shop%2F42")["history_length"] == 0


def test_event_times_follow_ingest_rules(client):
    cases = [("now", "unparseable date"), ("today", "unparseable date"),
             (1.7e12, "milliseconds (or finer), not unix seconds; divide by 1000"),
             ("1899-12-31T00:00:00", "outside 1900..2100")]
    for ts, words in cases:
        r = client.post("/v1/events", json={"events": [{"user_id": "t-user", "item_id": "i1", "timestamp": ts}]},
                        headers=auth(WRITE_KEY))
        assert r.status_code == 422 and words in r.json()["message"], (ts, r.text)
    ok = client.post("/v1/events", json={"events": [{"user_id": "t-user", "item_id": "i1",
                                                      "timestamp": "1950-06-01T00:00:00"}]}, headers=auth(WRITE_KEY))
    assert ok.status_code == 200 and ok.json()["accepted"] == 1     # file ingest takes 1900 onwards too
    client.delete("/v1/users/t-user", headers=auth(WRITE_KEY))


def test_snapshot_then_retrain_then_reload_while_serving(client, served, tmp_path):
    """The live loop: the store the service holds cannot be opened by `retrain`; a snapshot of it can,
    and what retrain writes is then served, all without stopping the server."""
    from typer.testing import CliRunner

    from valuerec.cli import app
    # feedback after the model: known users come back (for retrain's held-out window), a new one arrives
    back = [{"user_id": f"u{u}", "item_id": f"i{(u % 3) * 10 + 9}", "timestamp": "2024-03-09T12:00:00",
             "event_type": "purchase", "value": 2.0} for u in range(12)]
    ev = {"user_id": "loop-user", "item_id": "i5", "timestamp": "2024-03-10T00:00:00", "event_type": "purchase",
          "value": 4.0}
    assert client.post("/v1/events", json={"events": [*back, ev]}, headers=auth(WRITE_KEY)).json()["accepted"] == 13
    assert client.post("/v1/admin/snapshot", headers=auth(WRITE_KEY)).status_code == 403
    r = client.post("/v1/admin/snapshot", headers=auth(ADMIN_KEY))
    assert r.status_code == 200, r.text
    snap = r.json()
    assert snap["newest_event"] == "2024-03-10T00:00:00" and snap["removed"] == []
    with EventStore(snap["path"], read_only=True) as st:       # a plain store file, openable while serving
        assert st.count_events() == snap["events"] and len(st.events("user_id = 'loop-user'")) == 1
    busy = CliRunner().invoke(app, ["retrain", "--model", str(served["models"] / "v1"), "--store", str(served["store"]),
                                    "--out", str(tmp_path / "m")])
    assert busy.exit_code == 2 and "POST /v1/admin/snapshot" in " ".join(busy.output.split()), busy.output
    out = served["models"]
    r = CliRunner().invoke(app, ["retrain", "--model", str(out / "v1"), "--store", snap["path"], "--out", str(out),
                                 "--holdout-days", "3"])
    assert r.exit_code == 0, r.output
    new = sorted(p.name for p in out.iterdir() if p.name.startswith("v0"))
    assert new == ["v0001"], r.output          # the refitted item-kNN was no worse on the held-out users
    r = client.post("/v1/admin/reload", json={"path": str(out / "v0001")}, headers=auth(ADMIN_KEY))
    assert r.status_code == 200 and r.json()["current"]["version"] == "v0001", r.text
    assert "loop-user" in str(recs(client, "loop-user")) and recs(client, "loop-user")["history_length"] == 1
    r = client.post("/v1/admin/reload", json={"path": str(out / "v1")}, headers=auth(ADMIN_KEY))
    assert r.status_code == 200
    # older snapshots beyond $VALUEREC_SNAPSHOT_KEEP (3) are removed, once they are 10 minutes old; only this
    # store's: another store's snapshot in the same folder, whose name starts with this one's, stays
    folder = Path(snap["path"]).parent
    other = folder / "store-eu-20240101T000000000000Z.duckdb"
    other.write_bytes(b"another store's snapshot")
    hour_ago = time.time() - 3600
    for p in (Path(snap["path"]), other):
        os.utime(p, (hour_ago, hour_ago))
    for _ in range(3):
        last = client.post("/v1/admin/snapshot", headers=auth(ADMIN_KEY)).json()
    assert last["removed"] == [snap["path"]]
    assert not Path(snap["path"]).exists() and Path(last["path"]).exists() and other.exists()
    young = client.post("/v1/admin/snapshot", headers=auth(ADMIN_KEY)).json()
    assert young["removed"] == []           # beyond the 3 kept, but written minutes ago: a retrain may read it


def test_accepted_events_are_in_the_store(served, client):
    """What the API acknowledged is in the store file, once. Reading the file needs the server
    stopped (DuckDB locks it), so this runs last in the module."""
    ev = {"user_id": "stored-user", "item_id": "i7", "timestamp": "2024-03-01T12:00:00", "event_type": "purchase",
          "value": 9.5, "quantity": 2, "event_id": "store-check-1"}
    acks = [client.post("/v1/events", json={"events": [ev]}, headers=auth(WRITE_KEY)).json() for _ in range(2)]
    assert [a["accepted"] for a in acks] == [1, 0]
    client.delete("/v1/users/stored-user-2", headers=auth(WRITE_KEY))
    served["server"].stop()
    with EventStore(served["store"], read_only=True) as st:
        got = st.events("user_id = 'stored-user'")
    assert list(got["event_id"]) == ["store-check-1"]
    row = got.iloc[0]
    assert (row["item_id"], row["event_type"], row["value"], row["quantity"]) == ("i7", "purchase", 9.5, 2.0)
    assert str(row["timestamp"]) == "2024-03-01 12:00:00"
    with EventStore(served["store"], read_only=True) as st:     # conflicting re-sends changed nothing stored
        idem = st.events("user_id = 'idem-user'")
    assert sorted(idem["event_id"]) == ["client-1", "client-2"]
    assert set(idem["item_id"]) == {"i12"} and set(idem["value"]) == {0.0}
