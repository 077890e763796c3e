"""The value/churn protocol on a small synthetic store: features, labels, bad input, the runner, the
ValueModel contract (save/load round trip) and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from valuerec.data.dataset import Sequences
from valuerec.data.schema import EVENT_TYPE_CODE, DataError
from valuerec.data.store import EventStore
from valuerec.evaluation.value_protocol import build_tasks, build_value_task, run_value_benchmark
from valuerec.features.labels import holdout_window, labels_from_sequences, value_labels
from valuerec.features.rfm import rfm_features, rfm_from_sequences, to_unix
from valuerec.models.value_baselines import (OUTPUT_KEYS, LightGBMValue, PastSpend, ZILNMLP,
                                             load_value_model)

START = pd.Timestamp("2021-01-01")
CUTOFF = pd.Timestamp("2021-07-01")
VAL_CUTOFF = pd.Timestamp("2021-04-01")


def synthetic_events(n_users: int = 150, seed: int = 0) -> pd.DataFrame:
    """Customers buying at their own Poisson rate over a year, some lapsing; a few returns and views."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        rate = rng.gamma(1.0, 1 / 20)  # purchases per day
        spend = rng.lognormal(3, 0.5)
        lapse = rng.uniform(0, 365) if rng.random() < 0.5 and u > 0 else 1e9  # u0: a steady buyer
        t = rng.uniform(0, 120) if u > 0 else 1.0
        while t < min(365, lapse):
            rows.append((f"u{u}", f"i{rng.integers(30)}", START + pd.Timedelta(days=t), "purchase",
                         float(rng.gamma(2, spend / 2)), 1.0))
            if rng.random() < 0.05:
                rows.append((f"u{u}", rows[-1][1], rows[-1][2] + pd.Timedelta(days=2), "return", rows[-1][4], 1.0))
            t += rng.exponential(1 / rate)
    rows.append(("viewer", "i1", START + pd.Timedelta(days=10), "view", 0.0, 1.0))  # never buys
    rows.append(("late", "i2", CUTOFF + pd.Timedelta(days=3), "purchase", 50.0, 1.0))  # first buys after cut-off
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value", "quantity"])


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return synthetic_events()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, events):
    path = tmp_path_factory.mktemp("store") / "value.duckdb"
    with EventStore(path) as st:
        st.add_events(events)
    return path


# -- features and labels ------------------------------------------------------------------------------
def test_rfm_features_hand_checked():
    day = lambda d, h=12: pd.Timestamp("2021-01-01") + pd.Timedelta(days=d, hours=h)  # noqa: E731
    ev = pd.DataFrame({
        "user_id": ["a", "a", "a", "a", "a", "b"],
        "item_id": ["x", "y", "x", "x", "z", "x"],
        "timestamp": [day(0), day(0, 13), day(10), day(30), day(12), day(5)],
        "event_type": ["purchase", "purchase", "purchase", "purchase", "return", "purchase"],
        "value": [10.0, 5.0, 20.0, 100.0, 7.0, 8.0],
        "quantity": 1.0,
    })
    f = rfm_features(ev, day(20, 0))  # the day-30 purchase lies after the cut-off and must not count
    a = f.loc["a"]
    assert a["n_purchase_days"] == 2 and a["frequency"] == 1 and a["n_orders"] == 3 and a["n_lines"] == 3
    assert a["recency"] == 10.0 and a["T"] == 20.0  # first purchase day 0, last day 10, cut-off day 20
    assert a["monetary_value"] == pytest.approx(20.0)  # repeat-day spend: day 10 only
    assert a["total_revenue"] == 35.0 and a["n_returns"] == 1 and a["return_value"] == 7.0
    assert a["recency_days"] == pytest.approx(9.5) and a["tenure_days"] == pytest.approx(19.5)
    assert a["revenue_last_30"] == 35.0 and a["max_order_value"] == 20.0 and a["n_distinct_items"] == 2
    assert a["avg_order_value"] == pytest.approx(35 / 3)
    assert f.loc["b", "frequency"] == 0 and f.loc["b", "monetary_value"] == 0 and f.loc["b", "T"] == 15.0


def test_rfm_from_sequences_matches_events_path(events):
    task = build_value_task(events, None, CUTOFF, 60, "t")
    f_seq = rfm_from_sequences(task.histories, task.as_of)
    f_ev = rfm_features(events, CUTOFF)
    pd.testing.assert_frame_equal(f_seq.drop(columns="n_distinct_items"), f_ev.drop(columns="n_distinct_items"),
                                  check_names=False)


def test_users_without_history_are_explicit(events):
    with pytest.raises(DataError, match="no purchase before the cut-off"):
        rfm_features(events, CUTOFF, users=["u0", "viewer"])
    kept = rfm_features(events, CUTOFF, users=["u0", "viewer"], missing="keep")
    assert not kept.loc["viewer", "has_purchase"] and kept.loc["viewer", "total_revenue"] == 0
    assert list(rfm_features(events, CUTOFF, users=["u0", "viewer"], missing="drop").index) == ["u0"]
    task = build_value_task(events, None, CUTOFF, 60)
    assert "viewer" not in task.labels.user_ids and "late" not in task.labels.user_ids
    model = PastSpend().fit_value(task.fit_histories, task.as_of, 60)
    empty = Sequences(items=[np.zeros(0, np.int64)], times=[np.zeros(0, np.int64)],
                      event_types=[np.zeros(0, np.int64)], values=[np.zeros(0, np.float32)],
                      user_ids=np.array(["nobody"], dtype=object))
    with pytest.raises(DataError, match="no purchase before their as-of"):
        model.predict_value(empty, task.as_of)


def test_labels_and_window_checks(events):
    w = holdout_window(events, CUTOFF, 30)
    lab = value_labels(events, w, ["u0", "u1", "late"])
    pur = events[(events.event_type == "purchase") & (events.timestamp >= CUTOFF)
                 & (events.timestamp < CUTOFF + pd.Timedelta(days=30))]
    assert lab.revenue[0] == pytest.approx(pur.loc[pur.user_id == "u0", "value"].sum())
    assert lab.churned[2] == 0.0 and lab.revenue[2] == 50.0
    assert set(np.unique(lab.churned)) <= {0.0, 1.0}
    last = events.timestamp.max()
    with pytest.raises(DataError, match="after the data ends"):
        holdout_window(events, CUTOFF, (last - CUTOFF).days + 5)
    with pytest.raises(DataError, match="outside the data"):
        holdout_window(events, "2030-01-01", 30)
    with pytest.raises(DataError, match="outside the data"):
        holdout_window(events, "2019-01-01", 30)
    with pytest.raises(DataError, match="positive"):
        holdout_window(events, CUTOFF, -3)
    to_end = holdout_window(events, CUTOFF, None)
    assert to_end.inclusive_end and to_end.end == last
    with pytest.raises(DataError, match="the holdout needs at least a day"):   # was "horizon_days=0.0" later on
        holdout_window(events, last, None)
    with pytest.raises(DataError, match="after the test cutoff"):
        build_tasks(events, None, CUTOFF, VAL_CUTOFF, horizon_days=120)
    with pytest.raises(DataError, match="must be before"):
        build_tasks(events, None, CUTOFF, CUTOFF + pd.Timedelta(days=1), horizon_days=30)


def test_labels_from_sequences_agrees_with_events(events):
    task = build_value_task(events[events.timestamp < CUTOFF + pd.Timedelta(days=400)], None, VAL_CUTOFF, 60)
    full = build_value_task(events, None, CUTOFF, 60)
    # Revenue of [VAL_CUTOFF, VAL_CUTOFF + 60d) computed from the histories before CUTOFF.
    idx = {u: i for i, u in enumerate(full.fit_histories.user_ids)}
    rows = [idx[u] for u in task.labels.user_ids]
    rev, churn = labels_from_sequences(full.fit_histories.subset(rows), to_unix(VAL_CUTOFF),
                                       to_unix(VAL_CUTOFF + pd.Timedelta(days=60)))
    np.testing.assert_allclose(rev, task.labels.revenue, rtol=1e-5)
    np.testing.assert_array_equal(churn, task.labels.churned)


# -- the contract ---------------------------------------------------------------------------------------
class TinyLGB(LightGBMValue):
    @classmethod
    def param_grid(cls):
        return [{"n_estimators": 30, "num_leaves": 4, "min_child_samples": 5}]


class TinyZILN(ZILNMLP):
    @classmethod
    def param_grid(cls):
        return [{"epochs": 5, "hidden": 8}, {"epochs": 15, "hidden": 8}]


@pytest.mark.parametrize("cls,params", [(PastSpend, {}), (TinyLGB, TinyLGB.param_grid()[0]),
                                        (TinyZILN, {"epochs": 5, "hidden": 8})])
def test_contract_outputs_and_save_load(events, tmp_path, cls, params):
    task = build_value_task(events, None, CUTOFF, 60)
    m = cls(seed=0, **params).fit_value(task.fit_histories, task.as_of, 60)
    pred = m.predict_value(task.histories, np.full(len(task.histories), task.as_of))
    assert set(pred) == set(OUTPUT_KEYS)
    for k, v in pred.items():
        assert v.shape == (len(task.histories),) and np.isfinite(v).all(), k
    assert (pred["p_buy"] >= 0).all() and (pred["p_buy"] <= 1).all()
    np.testing.assert_allclose(pred["churn_prob"], 1 - pred["p_buy"])
    assert (pred["lower"] <= pred["upper"]).all() and (pred["expected_value"] >= 0).all()
    # Events at or after the as-of time are ignored.
    later = build_value_task(events, None, CUTOFF + pd.Timedelta(days=30), 30)
    idx = {u: i for i, u in enumerate(later.histories.user_ids)}
    sub = later.histories.subset([idx[u] for u in task.histories.user_ids])
    again = m.predict_value(sub, task.as_of)
    np.testing.assert_allclose(again["expected_value"], pred["expected_value"], rtol=1e-6)
    # Save / load round trip (no pickle: JSON + text / safetensors).
    m.save(tmp_path / "m")
    assert not list(tmp_path.glob("m/*.pkl"))
    loaded = load_value_model(tmp_path / "m") if cls is PastSpend else cls.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_value(task.histories, task.as_of)["expected_value"],
                               pred["expected_value"], rtol=1e-6)


def test_predict_before_fit_is_an_error(events):
    task = build_value_task(events, None, CUTOFF, 60)
    with pytest.raises(DataError, match="before fit"):
        PastSpend().predict_value(task.histories, task.as_of)


def test_runner_selects_on_validation_and_reports(events, tmp_path):
    res = run_value_benchmark(events, None, CUTOFF, VAL_CUTOFF, horizon_days=60,
                              models=["past_spend", "tiny_lgb", "tiny_ziln"], n_seeds=2,
                              extra_models={"tiny_lgb": TinyLGB, "tiny_ziln": TinyZILN}, save_dir=tmp_path)
    info = res["tasks"]["test"]
    expect_pop = events[(events.timestamp < CUTOFF) & (events.event_type == "purchase")].user_id.nunique()
    assert info["population"] == expect_pop
    for name in ("past_spend", "tiny_lgb", "tiny_ziln"):
        r = res["models"][name]
        assert -1 <= r["metrics"]["gini"] <= 1 and 0 <= r["metrics"]["auc"] <= 1
        assert len(r["metrics"]["decile_table"]) == 10
        assert (tmp_path / name / "config.json").exists()
    assert res["models"]["past_spend"]["seeds"] == [0]
    assert res["models"]["tiny_ziln"]["seeds"] == [0, 1]
    sel = res["models"]["tiny_ziln"]["selection"]
    assert len(sel["grid"]) == 2 and sel["chosen"] == max(sel["grid"], key=lambda g: g["score"])["params"]
    # The past-spend baseline is exactly calibration revenue x horizon / calibration days.
    task = build_value_task(events, None, CUTOFF, 60)
    cal_days = (CUTOFF - events.timestamp.min()) / pd.Timedelta(days=1)
    f = rfm_features(events, CUTOFF)
    from valuerec.evaluation.value_metrics import normalized_gini
    assert res["models"]["past_spend"]["metrics"]["gini"] == pytest.approx(
        normalized_gini(task.labels.revenue, f["total_revenue"].to_numpy() * 60 / cal_days))
    with pytest.raises(DataError, match="unknown value model"):
        run_value_benchmark(events, None, CUTOFF, VAL_CUTOFF, 60, models=["nope"])


def test_cli_bench_value_and_value(store_path, tmp_path):
    from valuerec.cli import app

    runner = CliRunner()
    out = tmp_path / "res.json"
    r = runner.invoke(app, ["bench", "value", "--store", str(store_path), "--cutoff", "2021-07-01",
                            "--val-cutoff", "2021-04-01", "--horizon-days", "60", "--models", "past_spend",
                            "--out", str(out), "--save-models", str(tmp_path / "models")])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert {"protocol", "dataset", "data_sha256", "git_commit", "command", "device", "started_at", "models"} <= set(res)
    assert res["models"]["past_spend"]["metrics"]["gini"] > 0
    mdir = str(tmp_path / "models" / "past_spend")
    r = runner.invoke(app, ["value", "--model", mdir, "--store", str(store_path), "--user", "u0", "--json",
                            "--as-of", "2021-07-01"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)[0]
    assert rec["user_id"] == "u0" and rec["horizon_days"] == 60 and rec["expected_value"] >= 0
    r = runner.invoke(app, ["value", "--model", mdir, "--store", str(store_path), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "p.csv")) > 100
    # Bad input: a user without purchases, a horizon past the data, an unknown model.
    r = runner.invoke(app, ["value", "--model", mdir, "--store", str(store_path), "--user", "viewer"])
    assert r.exit_code == 2 and "no purchase" in r.output
    r = runner.invoke(app, ["bench", "value", "--store", str(store_path), "--cutoff", "2021-12-01",
                            "--val-cutoff", "2021-04-01", "--horizon-days", "90", "--models", "past_spend"])
    assert r.exit_code == 2 and "after the data ends" in r.output
    r = runner.invoke(app, ["bench", "value", "--store", str(store_path), "--cutoff", "2021-07-01",
                            "--val-cutoff", "2021-04-01", "--models", "nope"])
    assert r.exit_code != 0


def test_recommender_adapter_plugs_into_the_runner(events):
    """A Recommender with predict_value (as the transformer will be) runs through the same protocol."""
    from valuerec.models.value_baselines import RecommenderValueModel

    class FakeRecommender:
        def __init__(self, seed=0, horizon_days=0.0, scale=1.0):
            self.horizon_days, self.scale = horizon_days, scale

        def fit(self, train, catalogue, valid=None):
            self.catalogue_ = catalogue
            return self

        def predict_value(self, histories, as_of):
            spend = np.array([v[t == EVENT_TYPE_CODE["purchase"]].sum() for v, t in
                              zip(histories.values, histories.event_types)], dtype=np.float64)
            p = np.full(len(spend), 0.5)
            return {"expected_value": spend * self.scale, "p_buy": p, "churn_prob": 1 - p,
                    "lower": np.zeros_like(spend), "upper": spend * 2}

    class FakeValue(RecommenderValueModel):
        recommender_cls = FakeRecommender
        grid = [{"scale": 0.5}, {"scale": 1.0}]

    res = run_value_benchmark(events, None, CUTOFF, VAL_CUTOFF, 60, models=["fake", "past_spend"], n_seeds=2,
                              extra_models={"fake": FakeValue})
    fake, past = res["models"]["fake"], res["models"]["past_spend"]
    # Same ordering as past spend (cumulative spend before the cut-off) -> the same Gini.
    assert fake["metrics"]["gini"] == pytest.approx(past["metrics"]["gini"])
    assert fake["metrics"]["auc"] == pytest.approx(0.5) and fake["seeds"] == [0, 1]


def test_a_model_that_fails_on_the_data_is_left_out_not_the_run(store_path, tmp_path):
    """A degenerate fit (e.g. BG/NBD on too few repeat buyers gives NaN predictions) used to end the whole
    bench with no result file; the model is now left out, named with its reason, and the rest run."""
    from valuerec.evaluation.value_protocol import run_value_bench
    from valuerec.models.value_baselines import PastSpend

    class Broken(PastSpend):
        def predict_value(self, histories, as_of):
            out = super().predict_value(histories, as_of)
            out["expected_value"] = out["expected_value"] * np.nan
            return _finalise(out)

    from valuerec.models.value_baselines import _finalise
    res = run_value_bench(store_path, CUTOFF, VAL_CUTOFF, 60, ["broken", "past_spend"], 1, out=tmp_path / "r.json",
                          extra_models={"broken": Broken})
    saved = json.loads((tmp_path / "r.json").read_text())
    assert list(saved["models"]) == ["past_spend"] and "non-finite" in saved["failed_models"]["broken"]
    assert res["failed_models"]["broken"] == saved["failed_models"]["broken"]
    with pytest.raises(DataError, match="every value model failed: broken: .*non-finite"):
        run_value_bench(store_path, CUTOFF, VAL_CUTOFF, 60, ["broken"], 1, extra_models={"broken": Broken})
    # a reference protocol (expected figures given, as V1) is no run of it without every model
    pop = res["split"]["test"]["population"]
    with pytest.raises(DataError, match="broken: .*non-finite"):
        run_value_bench(store_path, CUTOFF, VAL_CUTOFF, 60, ["past_spend", "broken"], 1,
                        extra_models={"broken": Broken}, expect={"population": pop})


def test_run_value_bench_checks_expected_figures(store_path, events, tmp_path):
    from valuerec.evaluation.value_protocol import run_value_bench

    pop = events[(events.timestamp < CUTOFF) & (events.event_type == "purchase")].user_id.nunique()
    with pytest.raises(DataError, match="the protocol expects"):
        run_value_bench(store_path, CUTOFF, VAL_CUTOFF, 60, ["past_spend"], 1, expect={"population": pop + 1})
    res = run_value_bench(store_path, CUTOFF, VAL_CUTOFF, 60, ["past_spend"], 1, out=tmp_path / "r.json",
                          expect={"population": pop}, meta={"past_spend_gini": 0.5})
    chk = json.loads((tmp_path / "r.json").read_text())["checks"]
    assert chk["population"]["measured"] == pop
    assert chk["past_spend_gini"]["measured"] == pytest.approx(res["models"]["past_spend"]["metrics"]["gini"])


def test_cli_bench_value_bad_settings_fail_before_any_fit(store_path, tmp_path):
    from valuerec.cli import app

    runner = CliRunner()
    (tmp_path / "afile").write_text("x")
    base = ["bench", "value", "--store", str(store_path), "--cutoff", "2021-07-01", "--val-cutoff", "2021-04-01",
            "--models", "past_spend"]
    for extra, message in [
        (["--cutoff", "nope"], "--cutoff 'nope': not a date/time"),
        (["--val-cutoff", "2021-13-45"], "--val-cutoff '2021-13-45': not a date/time"),
        (["--out", str(tmp_path)], "is a directory; give a file path"),
        (["--save-models", str(tmp_path / "afile")], "--save-models"),
        (["--models", ""], "no value models given"),
        (["--threads", "-1"], "--threads"),
        (["--val-cutoff", "2020-06-09"], "validation cutoff (--val-cutoff) 2020-06-09 00:00:00 lies outside"),
    ]:
        r = runner.invoke(app, base + extra)
        text = " ".join(r.output.replace("│", " ").split())
        assert r.exit_code == 2 and message in text, (extra, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_validation_window_message_without_a_horizon():
    """No --horizon-days: the validation window runs to the test cut-off; when the data before the
    test cut-off stop short of it, the message says so (not 'horizon of N days ... omit the horizon')."""
    days = [*range(0, 100, 2), *range(130, 200, 2)]
    ev = pd.DataFrame({"user_id": [f"u{d % 5}" for d in days], "item_id": "i1",
                       "timestamp": [START + pd.Timedelta(days=d) for d in days], "event_type": "purchase",
                       "value": 10.0, "quantity": 1.0})
    with pytest.raises(DataError, match="the validation window .*up to the test cutoff") as e:
        build_tasks(ev, None, START + pd.Timedelta(days=125), START + pd.Timedelta(days=50))
    assert "omit the horizon" not in str(e.value)


def test_short_test_holdout_is_warned_about(store_path, events):
    from valuerec.cli import app

    cutoff = pd.Timestamp(events["timestamp"].max()) - pd.Timedelta(days=2)
    r = CliRunner().invoke(app, ["bench", "value", "--store", str(store_path), "--cutoff", str(cutoff),
                                 "--val-cutoff", "2021-04-01", "--models", "past_spend", "--seeds", "1"])
    assert r.exit_code == 0, r.output
    assert "warning: the test holdout is only" in " ".join(r.output.split())
