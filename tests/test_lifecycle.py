import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.dataset import Sequences, catalogue_from, sequences_from
from valuerec.data.schema import DataError, event_type_code
from valuerec.data.store import EventStore
from valuerec.models.popularity import Popularity
from valuerec.policies.lifecycle import (STAGES, LifecycleConfig, assign_stages, stage_sizes, stages_at,
                                         transition_matrix, truncate)

DAY = 86400
T0 = 1_700_000_000
P, V = event_type_code("purchase"), event_type_code("view")

runner = CliRunner()


def user(days_ago, types, values):
    days_ago = np.asarray(days_ago, dtype=float)
    order = np.argsort(-days_ago)
    return (np.arange(len(days_ago))[order].astype(np.int64), (T0 - days_ago[order] * DAY).astype(np.int64),
            np.asarray(types, np.int64)[order], np.asarray(values, np.float32)[order])


# One user per stage, built so the stage is known: (history, expected_value, churn_prob)
USERS = {
    "lapsed":    (user([300, 200], [P, P], [50, 50]), 0.0, 0.9),
    "new":       (user([5, 2], [V, V], [0, 0]), 1.0, 0.5),
    "at-risk":   (user([60, 30, 10], [P, P, P], [10, 10, 10]), 10.0, 0.8),
    "activated": (user([10], [P], [10]), 10.0, 0.1),
    "advocate":  (user([300, 200, 100, 5], [P, P, P, P], [100, 100, 100, 100]), 1000.0, 0.1),
    "expanding": (user([100, 5], [P, P], [10, 10]), 100.0, 0.2),
    "retained":  (user([200, 100, 5], [P, P, P], [100, 100, 100]), 20.0, 0.2),
}


def build(users=USERS):
    names = list(users)
    hs = [users[n][0] for n in names]
    seqs = Sequences(items=[h[0] for h in hs], times=[h[1] for h in hs], event_types=[h[2] for h in hs],
                     values=[h[3] for h in hs], user_ids=np.array(names, dtype=object))
    pred = {"expected_value": np.array([users[n][1] for n in names]),
            "churn_prob": np.array([users[n][2] for n in names])}
    return names, seqs, pred


def test_each_constructed_user_gets_its_stage_and_a_reason():
    names, seqs, pred = build()
    df = assign_stages(seqs, T0, pred, LifecycleConfig())
    assert len(df) == len(names)
    assert list(df["user_id"]) == names
    assert list(df["stage"]) == names  # user named after the stage it must get
    assert set(df["stage"]) == set(STAGES)
    for r in df.itertuples():
        assert r.reason.startswith(r.stage + ":")
        assert any(ch.isdigit() for ch in r.reason)  # the numbers the rule used
    lap = df.set_index("user_id").loc["lapsed"]
    assert lap["recency_days"] == pytest.approx(200.0)
    assert "200 days > horizon 91" in lap["reason"]
    assert "0.80 > 0.60" in df.set_index("user_id").loc["at-risk", "reason"]


def test_precedence_lapsed_beats_at_risk_and_new_beats_at_risk():
    names, seqs, pred = build()
    pred["churn_prob"][:] = 0.99
    df = assign_stages(seqs, T0, pred).set_index("user_id")
    assert df.loc["lapsed", "stage"] == "lapsed"
    assert df.loc["new", "stage"] == "new"
    assert (df.drop(index=["lapsed", "new"])["stage"] == "at-risk").all()


def test_without_value_model_no_at_risk_or_expanding():
    names, seqs, _ = build()
    df = assign_stages(seqs, T0, None).set_index("user_id")
    assert not df["stage"].isin(["at-risk", "expanding"]).any()
    assert df.loc["at-risk", "stage"] == "retained"
    assert df.loc["expanding", "stage"] == "retained"
    assert df.loc["advocate", "stage"] == "advocate"  # top past spend, long tenure
    assert "no value model" in df.loc["advocate", "reason"]


def test_config_unknown_key_and_bad_values_are_errors():
    with pytest.raises(DataError, match="unknown key"):
        LifecycleConfig.from_dict({"horizon_dayz": 30})
    with pytest.raises(DataError, match="churn_threshold"):
        LifecycleConfig(churn_threshold=1.5)
    cfg = LifecycleConfig.from_dict({"horizon_days": 30, "purchase_types": ["purchase"]})
    assert cfg.horizon_days == 30 and cfg.purchase_types == ("purchase",)


def test_horizon_threshold_changes_stage():
    names, seqs, pred = build()
    df = assign_stages(seqs, T0, pred, LifecycleConfig(horizon_days=4)).set_index("user_id")
    # Only users active within the last 4 days stay out of lapsed.
    assert df.loc["new", "stage"] == "new"
    assert df.loc["activated", "stage"] == "lapsed"


def test_stage_sizes_lists_every_stage():
    names, seqs, pred = build()
    sizes = stage_sizes(assign_stages(seqs, T0, pred))
    assert list(sizes["stage"]) == STAGES
    assert (sizes["users"] == 1).all()
    assert sizes["share"].sum() == pytest.approx(1.0)


def test_transition_matrix_counts():
    # u1: one purchase at day -50 then repeat at day -5  -> activated at -20, retained at 0
    # u2: purchase at -100 only                         -> activated at -20, lapsed at 0
    # u3: view at -30 then purchase at -2               -> new at -20, activated at 0
    # u4: no events before -20, view at -1              -> not yet active at -20 (was counted 'new'), new at 0
    hs = [user([50, 5], [P, P], [1, 1]), user([100], [P], [1]), user([30, 2], [V, P], [0, 1]), user([1], [V], [0])]
    seqs = Sequences(items=[h[0] for h in hs], times=[h[1] for h in hs], event_types=[h[2] for h in hs],
                     values=[h[3] for h in hs], user_ids=np.array(["u1", "u2", "u3", "u4"], dtype=object))
    m = transition_matrix(seqs, T0 - 20 * DAY, T0)
    assert list(m.index) == ["not yet active"] + STAGES and list(m.columns) == STAGES
    assert m.to_numpy().sum() == 4
    assert m.loc["activated", "retained"] == 1
    assert m.loc["activated", "lapsed"] == 1
    assert m.loc["new", "activated"] == 1
    assert m.loc["not yet active", "new"] == 1 and m.loc["new"].sum() == 1
    # Stages at the first date see only events before it, value model included.
    seen = []
    transition_matrix(seqs, T0 - 20 * DAY, T0,
                      value_fn=lambda h, a: seen.append((h.lengths().tolist(), a[0])) or
                      {"expected_value": np.zeros(len(h)), "churn_prob": np.zeros(len(h))})
    assert seen[0] == ([1, 1, 1, 0], T0 - 20 * DAY)
    with pytest.raises(DataError):
        transition_matrix(seqs, T0, T0 - DAY)


def test_truncate_needs_times():
    with pytest.raises(DataError, match="times"):
        truncate(Sequences(items=[np.array([1, 2])]), T0)


def test_invoice_lines_at_one_time_are_one_order():
    # Three purchase lines of one invoice (same timestamp) = one order -> activated, not retained.
    t = np.full(3, T0 - 5 * DAY, dtype=np.int64)
    seqs = Sequences(items=[np.array([1, 2, 3])], times=[t], event_types=[np.full(3, P, np.int64)],
                     values=[np.ones(3, np.float32)], user_ids=np.array(["u"], dtype=object))
    df = assign_stages(seqs, T0, None)
    assert df.loc[0, "n_purchases"] == 1 and df.loc[0, "stage"] == "activated"
    assert df.loc[0, "past_spend"] == pytest.approx(3.0)


# -- the command lifecycle on a tiny store ----------------------------------------


def test_lifecycle_command_json(cli_setup):
    tmp, store = cli_setup
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store), "--json",
                            "--since", "2011-03-01"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    stage = {u["user_id"]: u["stage"] for u in d["users"]}
    assert stage == {"u1": "advocate", "u2": "lapsed", "u3": "new"}
    assert all(u["reason"].startswith(u["stage"]) for u in d["users"])
    assert sum(s["users"] for s in d["sizes"]) == 3
    m = d["transitions"]["matrix"]
    # u2 bought on day 5: activated at 2011-03-01, lapsed at the end; u3's first event (a view) is in July
    assert m["activated"]["lapsed"] == 1 and m["not yet active"]["new"] == 1 and sum(m["new"].values()) == 0
    assert sum(sum(row.values()) for row in m.values()) == 3
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store), "--since", "2011-03-01"])
    assert r.exit_code == 0 and "not yet" in r.stdout, r.output


def test_lifecycle_command_rejects_unknown_config_key(cli_setup):
    tmp, store = cli_setup
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store),
                            "--config", '{"churn": 0.5}'])
    assert r.exit_code == 2
    assert "unknown key" in r.output


def test_lifecycle_command_interaction_only_store(tmp_path):
    t = pd.Timestamp("2000-01-01")
    ev = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["1", "2", "1"],
                       "timestamp": [t, t + pd.Timedelta(days=1), t + pd.Timedelta(days=1)],
                       "event_type": ["interaction"] * 3, "value": [0.0] * 3, "quantity": [1.0] * 3})
    store = tmp_path / "s.duckdb"
    with EventStore(store) as st:
        st.add_events(ev)
        events = st.events()
    cat = catalogue_from(events, None)
    Popularity().fit(sequences_from(events, cat), cat).save(tmp_path / "pop")
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp_path / "pop"), "--store", str(store), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert "counting every event" in d["note"]
    assert {u["user_id"]: u["stage"] for u in d["users"]} == {"a": "retained", "b": "activated"}


def test_dates_with_a_utc_offset_are_read_as_utc(cli_setup):
    """Ingest stores naive UTC; a date option with an offset means the same instant (it used to crash
    comparing tz-aware and naive times)."""
    from valuerec.commands.lifecycle import parse_time
    from valuerec.data.schema import DataError

    assert parse_time("2011-03-01T05:00:00+05:00") == pd.Timestamp("2011-03-01 00:00:00")
    assert parse_time("2011-03-01T00:00:00Z") == pd.Timestamp("2011-03-01 00:00:00")
    for bad in ("NaT", "soon"):
        with pytest.raises(DataError, match="not a date/time"):
            parse_time(bad, "--at")
    tmp, store = cli_setup
    base = ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store), "--json"]
    plain = runner.invoke(app, base + ["--at", "2011-06-01 00:00:00"])
    offset = runner.invoke(app, base + ["--at", "2011-06-01T02:00:00+02:00"])
    assert plain.exit_code == 0 and offset.exit_code == 0, offset.output
    assert json.loads(offset.stdout)["users"] == json.loads(plain.stdout)["users"]


def test_lifecycle_config_reads_the_models_horizon_and_refuses_bad_purchase_types():
    """'expanding' compares the predicted value with the past spend rate over the same days: the
    horizon comes from the value model unless the config sets it. purchase_types must be a list of
    known event types (a string used to be split into letters, and every event counted)."""
    from valuerec.policies.lifecycle import LifecycleConfig

    class Thirty:
        horizon_days_ = 30.0

    assert LifecycleConfig.for_model(Thirty()).horizon_days == 30.0
    assert LifecycleConfig.for_model(Thirty(), {"horizon_days": 60}).horizon_days == 60.0
    assert LifecycleConfig.for_model(None).horizon_days == LifecycleConfig().horizon_days == 91.0
    with pytest.raises(DataError, match=r"must be a list of event types, e.g. \[\"purchase\"\]"):
        LifecycleConfig.from_dict({"purchase_types": "purchase"})
    with pytest.raises(DataError, match=r"purchase_types \['buy'\] are not event types"):
        LifecycleConfig.from_dict({"purchase_types": ["buy"]})
    assert LifecycleConfig.from_dict({"purchase_types": ["purchase", "cart"]}).purchase_types == ("purchase", "cart")


def test_a_log_without_purchases_gets_one_stage_everywhere(tmp_path):
    """A content log (views and plays, no purchases): `lifecycle` counted every event as a purchase
    ('retained'), while recommend --policy stage and the report called the same users 'new'. One rule
    now (policies.lifecycle.for_event_types), in the service too."""
    from fastapi.testclient import TestClient

    from valuerec.report.build import lifecycle_summary
    from valuerec.serving.app import create_app
    from valuerec.serving.settings import Settings

    t = pd.Timestamp("2024-03-01")
    rows = [(f"u{u}", f"i{(u + j) % 6}", t + pd.Timedelta(days=3 * j + u), "view" if j % 2 else "play")
            for u in range(6) for j in range(5)]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"])
    store = tmp_path / "content.duckdb"
    with EventStore(store) as st:
        st.add_events(ev)
    r = CliRunner().invoke(app, ["train", "--store", str(store), "--model", "popularity", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["lifecycle", "--model", str(tmp_path / "m"), "--store", str(store), "--json"])
    assert r.exit_code == 0, r.output
    life = json.loads(r.stdout)
    assert "counting every event" in life["note"]
    stage = {u["user_id"]: u["stage"] for u in life["users"]}
    assert set(stage.values()) == {"retained"}
    r = CliRunner().invoke(app, ["recommend", "--model", str(tmp_path / "m"), "--store", str(store), "--user", "u2",
                                 "--policy", "stage", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stage"] == stage["u2"]
    from valuerec.models import load_model
    with EventStore(store, read_only=True) as st:
        events = st.events()
    report_stages, _ = lifecycle_summary(load_model(tmp_path / "m"), events, 91.0)
    assert dict(zip(report_stages["user_id"], report_stages["stage"])) == stage
    settings = Settings.from_env({"VALUEREC_STORE": str(store), "VALUEREC_MODEL_DIR": str(tmp_path / "m"),
                                  "VALUEREC_API_KEYS": "reader-key-123:read"})
    with TestClient(create_app(settings)) as c:
        key = {"X-API-Key": "reader-key-123"}
        assert c.get("/v1/users/u2/stage", headers=key).json()["stage"] == stage["u2"]
        assert c.get("/v1/users/u2/recommendations?policy=stage", headers=key).json()["stage"] == stage["u2"]


def test_stage_dates_take_timestamps_and_strings():
    """stages_at and transition_matrix took only unix seconds (float() of a Timestamp was a TypeError)."""
    hs = [user([50, 5], [P, P], [1, 1]), user([100], [P], [1])]
    seqs = Sequences(items=[h[0] for h in hs], times=[h[1] for h in hs], event_types=[h[2] for h in hs],
                     values=[h[3] for h in hs], user_ids=np.array(["u1", "u2"], dtype=object))
    a, b = T0 - 20 * DAY, T0
    ts = pd.Timestamp(a, unit="s")
    assert stages_at(seqs, ts)["stage"].tolist() == stages_at(seqs, a)["stage"].tolist()
    m = transition_matrix(seqs, ts.isoformat(), pd.Timestamp(b, unit="s", tz="UTC"))
    assert m.equals(transition_matrix(seqs, a, b))
    with pytest.raises(DataError, match="first date"):
        transition_matrix(seqs, "someday", b)
