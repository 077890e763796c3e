"""Value and churn heads on the behaviour transformer: labels, learning a known pattern, value-only
data, save/load."""

import numpy as np
import pandas as pd
import pytest
import torch

from valuerec.data.dataset import catalogue_from, sequences_from
from valuerec.data.schema import DataError
from valuerec.models import load_model
from valuerec.models.transformer import BehaviourTransformer
from valuerec.models.value_heads import cutoff_grid, summary_features, window_labels

DAY = 86_400.0
T0 = pd.Timestamp("2024-01-01")


def synthetic_log(n_users=60, days=360, seed=0, with_items=True):
    """Half the users buy every week for the whole period (loyal, spend ~20 a week); the other half
    buy weekly for the first 120 days and then never again (churned)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        loyal = u % 2 == 0
        last_day = days if loyal else 120
        for d in range(int(rng.integers(0, 7)), last_day, 7):
            item = f"i{(u + d // 7) % 5}" if loyal else f"i{5 + (d // 7) % 5}"
            rows.append((f"u{u}", item if with_items else None, T0 + pd.Timedelta(days=d), "purchase",
                         float(rng.uniform(15, 25))))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    df["quantity"] = 1.0
    return df


def test_labels_and_features_known_case():
    t = np.array([0.0, 10, 20]) * DAY
    ty = np.array([3, 3, 3])  # purchase
    v = np.array([5.0, 7.0, 11.0])
    assert window_labels(t, ty, v, 5 * DAY, 10) == (7.0, 0.0)     # only day 10 in [5, 15)
    assert window_labels(t, ty, v, 21 * DAY, 10) == (0.0, 1.0)
    f = summary_features(t[:2], ty[:2], v[:2], 15 * DAY, 90)
    assert f[1] == pytest.approx(np.log1p(2)) and f[2] == pytest.approx(np.log1p(12.0))
    cuts = cutoff_grid(0.0, 100 * DAY, 30, 10, 50)
    assert cuts[-1] == 100 * DAY and np.all(cuts[:-1] <= 70 * DAY)


def _fit(df, **kw):
    cutoff = T0 + pd.Timedelta(days=240)
    hist = df[df.timestamp < cutoff]
    cat = catalogue_from(hist, None)
    seqs = sequences_from(hist, cat, unknown_items="keep")
    torch.manual_seed(0)
    params = dict(value_weight=1.0, churn_weight=1.0, horizon_days=60, value_step_days=14, d_model=16,
                  n_heads=1, n_layers=1, max_len=20, dropout=0.0, epochs=40, lr=3e-3, batch_size=64,
                  progress=False, use_text=False, use_values=True, data_end=cutoff.timestamp())
    params.update(kw)
    model = BehaviourTransformer(seed=0, **params).fit(seqs, cat)
    return model, seqs, cutoff


@pytest.mark.parametrize("hidden,features", [(0, "summary"), (32, "summary"), (32, "rfm")])
def test_value_heads_learn_who_stays(tmp_path, monkeypatch, hidden, features):
    df = synthetic_log()
    model, seqs, cutoff = _fit(df, value_hidden=hidden, value_features=features)
    assert isinstance(model.module_.value_heads.trunk, torch.nn.Identity) == (hidden == 0)
    pred = model.predict_value(seqs, as_of=cutoff.timestamp())
    loyal = np.array([int(u[1:]) % 2 == 0 for u in seqs.user_ids])
    assert pred["churn_prob"][loyal].max() < pred["churn_prob"][~loyal].min()
    assert pred["expected_value"][loyal].min() > pred["expected_value"][~loyal].max()
    # loyal users spend ~20 a week: ~170 over 60 days; the estimate is in the right range
    assert 60 < np.median(pred["expected_value"][loyal]) < 400
    assert np.all(pred["lower"] <= pred["upper"])
    # churn and p(buy) are one answer, the churn head's (V1 scores churn as 1 - p_buy)
    np.testing.assert_allclose(pred["p_buy"] + pred["churn_prob"], 1.0)
    heads, raw = model.module_.value_heads, []
    own = heads.predict
    monkeypatch.setattr(heads, "predict", lambda h, f: raw.append(own(h, f)) or raw[-1])
    model.predict_value(seqs, as_of=cutoff.timestamp())
    churn_head = np.concatenate([r["churn_prob"] for r in raw])
    ziln_p = np.concatenate([1.0 - r["p_buy"] for r in raw])
    np.testing.assert_allclose(pred["churn_prob"], churn_head, rtol=1e-6)
    assert np.abs(churn_head - ziln_p).max() > 1e-5   # two heads; the line above shows the churn head is used
    monkeypatch.undo()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    again = loaded.predict_value(seqs, as_of=cutoff.timestamp())
    np.testing.assert_allclose(again["expected_value"], pred["expected_value"], rtol=1e-5)
    # the training population's top-decile value bar travels with the model (stages one user at a time)
    assert loaded.has_value_head and loaded.advocate_value_threshold_ == pytest.approx(model.advocate_value_threshold_)
    assert np.quantile(pred["expected_value"], 0.5) < loaded.advocate_value_threshold_
    assert loaded.horizon_days_ == 60.0   # `valuerec value` reports the horizon it predicts over
    heads = loaded.module_.value_heads
    assert heads.standardise == (features == "rfm")
    if features == "rfm":   # the standardisation of the training examples is saved with the weights
        assert not torch.equal(heads.feat_std, torch.ones_like(heads.feat_std))
        torch.testing.assert_close(heads.feat_mean, model.module_.value_heads.feat_mean)


def test_rfm_query_features_are_the_baselines_features_per_example():
    """Per cut-off, the vectorised RFM rows the heads train on equal each user's own features computed
    alone, only from events before the cut-off; a log without event types counts revenue as purchases."""
    from valuerec.data.dataset import Sequences
    from valuerec.features.rfm import FEATURES, rfm_from_sequences
    from valuerec.models.value_baselines import _mlp_inputs
    from valuerec.models.value_heads import rfm_inputs

    df = synthetic_log(n_users=8)
    cat = catalogue_from(df, None)
    seqs = sequences_from(df, cat, unknown_items="keep")
    c = int((T0 + pd.Timedelta(days=100)).timestamp())
    got = rfm_inputs(seqs, c)
    assert got.shape == (8, len(FEATURES))
    for u in range(8):
        keep = seqs.times[u] < c
        alone = Sequences(items=[seqs.items[u][keep]], times=[seqs.times[u][keep]],
                          event_types=[seqs.event_types[u][keep]], values=[seqs.values[u][keep]])
        np.testing.assert_allclose(got[u], _mlp_inputs(rfm_from_sequences(alone, c))[0], rtol=1e-6)
    untyped = Sequences(items=seqs.items, times=seqs.times, values=seqs.values,
                        event_types=[np.zeros_like(t) for t in seqs.event_types])   # all 'interaction'
    np.testing.assert_allclose(rfm_inputs(untyped, c), got, rtol=1e-6)


def test_unknown_value_features_is_a_clear_error():
    with pytest.raises(DataError, match="value_features"):
        BehaviourTransformer(value_weight=1.0, value_features="everything")


def test_value_only_data_without_items():
    df = synthetic_log(with_items=False)
    model, seqs, cutoff = _fit(df, next_item_weight=0.0, epochs=30)
    pred = model.predict_value(seqs, as_of=cutoff.timestamp())
    loyal = np.array([int(u[1:]) % 2 == 0 for u in seqs.user_ids])
    assert pred["churn_prob"][loyal].mean() + 0.3 < pred["churn_prob"][~loyal].mean()


def test_predict_value_without_value_head_is_a_clear_error():
    df = synthetic_log(n_users=6)
    model, seqs, cutoff = _fit(df, value_weight=0.0, churn_weight=0.0, epochs=1)
    with pytest.raises(DataError, match="no value head"):
        model.predict_value(seqs, as_of=cutoff.timestamp())


def test_rfm_training_examples_and_prediction_see_the_same_features(monkeypatch):
    """The RFM row a (user, cut-off) training example gets equals what predict_value feeds the heads
    for that user as of that cut-off; a fractional cut-off with an event right after it (at its
    ceiling, in whole seconds) keeps that event out of both."""
    from valuerec.models.value_heads import cutoff_grid

    df = synthetic_log(n_users=6)
    data_end = (T0 + pd.Timedelta(days=240)).timestamp() + 0.4
    model, seqs, _ = _fit(df, value_hidden=8, value_features="rfm", epochs=1, data_end=data_end)
    cfg = model.model_config
    cuts = cutoff_grid(float(min(t.min() for t in seqs.times)), data_end, cfg.horizon_days, cfg.value_step_days,
                       cfg.value_max_cuts)
    c = float(cuts[0])
    assert c != np.ceil(c)
    # two extra purchases for user 0: at floor(c), before the cut-off, so in both feature rows; at
    # ceil(c), after it, so in neither
    for arr, val in ((seqs.times, [int(np.floor(c)), int(np.ceil(c))]), (seqs.items, [seqs.items[0][-1]] * 2),
                     (seqs.event_types, [3, 3]), (seqs.values, [700.0, 1000.0])):
        arr[0] = np.append(arr[0], val)
    order = np.argsort(seqs.times[0], kind="stable")
    for arr in (seqs.times, seqs.items, seqs.event_types, seqs.values):
        arr[0] = arr[0][order]
    n, make_batch, _ = model._value_examples(seqs, model._histories(seqs.item_only()))
    pairs = [(u, cc) for u in range(len(seqs)) for cc in cuts
             if (seqs.times[u][seqs.event_types[u] == 3] < cc).any()]
    assert len(pairs) == n
    train_feats = make_batch(np.arange(n)).query_feats.numpy()
    heads, seen = model.module_.value_heads, []
    own = heads.predict
    monkeypatch.setattr(heads, "predict", lambda h, f: seen.append(f.numpy().copy()) or own(h, f))
    for row, (u, cc) in enumerate(pairs):
        if cc != c:
            continue
        seen.clear()
        model.predict_value(seqs.subset([u]), as_of=cc)
        np.testing.assert_allclose(seen[0][0], train_feats[row], rtol=1e-6)
        if u == 0:   # 700.0 at floor(c) is in the spend features, 1000.0 at ceil(c) is not
            np.testing.assert_allclose(seen[0][0], rfm_inputs_alone(seqs, 0, cc), rtol=1e-6)


def rfm_inputs_alone(seqs, u, c):
    from valuerec.data.dataset import Sequences
    from valuerec.models.value_heads import rfm_inputs
    keep = seqs.times[u] < c
    one = Sequences(items=[seqs.items[u][keep]], times=[seqs.times[u][keep]],
                    event_types=[seqs.event_types[u][keep]], values=[seqs.values[u][keep]])
    return rfm_inputs(one, int(np.ceil(c)))[0]


def test_rfm_feature_constant_in_training_does_not_blow_up_prediction():
    """No returns in training (their features are constant zero): a user's first return must not
    send the prediction to absurd values."""
    df = synthetic_log(n_users=12)
    model, seqs, cutoff = _fit(df, value_hidden=8, value_features="rfm", epochs=3)
    before = model.predict_value(seqs.subset([0]), as_of=cutoff.timestamp())
    ret = seqs.subset([0])
    t_ret = int(cutoff.timestamp()) - 86_400
    ret.times[0] = np.append(ret.times[0], t_ret)
    ret.items[0] = np.append(ret.items[0], ret.items[0][-1])
    ret.event_types[0] = np.append(ret.event_types[0], 4)     # a return
    ret.values[0] = np.append(ret.values[0], 5.0)
    after = model.predict_value(ret, as_of=cutoff.timestamp())
    assert np.isfinite(after["expected_value"]).all()
    assert after["expected_value"][0] < 20 * max(before["expected_value"][0], 1.0)
    assert 0.0 < after["p_buy"][0] < 1.0


def test_without_a_trained_churn_head_churn_is_one_minus_the_ziln_p_buy(monkeypatch):
    df = synthetic_log(n_users=8)
    model, seqs, cutoff = _fit(df, churn_weight=0.0, epochs=2)
    heads, raw = model.module_.value_heads, []
    own = heads.predict
    monkeypatch.setattr(heads, "predict", lambda h, f: raw.append(own(h, f)) or raw[-1])
    pred = model.predict_value(seqs, as_of=cutoff.timestamp())
    ziln_p = np.concatenate([r["p_buy"] for r in raw])
    np.testing.assert_allclose(pred["p_buy"], ziln_p, rtol=1e-6)
    np.testing.assert_allclose(pred["churn_prob"], 1.0 - ziln_p, rtol=1e-6)


def test_fine_tuning_keeps_the_heads_input_scaling():
    """Warm-started from a model with RFM-fed heads, a fit on new data keeps the base model's feature
    scaling (its head weights were learned on it) instead of re-deriving it from the new data."""
    df = synthetic_log(n_users=12)
    base, seqs, cutoff = _fit(df, value_hidden=8, value_features="rfm", epochs=1)
    small = df[df["user_id"].isin(["u0", "u1", "u2", "u3"])]
    cat = catalogue_from(small[small.timestamp < cutoff], None)
    sub = sequences_from(small[small.timestamp < cutoff], cat, unknown_items="keep")
    params = dict(value_weight=1.0, churn_weight=1.0, horizon_days=60, value_step_days=14, d_model=16, n_heads=1,
                  n_layers=1, max_len=20, dropout=0.0, epochs=1, lr=3e-3, batch_size=64, progress=False,
                  use_text=False, use_values=True, data_end=cutoff.timestamp(), value_hidden=8, value_features="rfm")
    tuned = BehaviourTransformer(seed=0, **params).fit(sub, cat, warm_start=base)
    fresh = BehaviourTransformer(seed=0, **params).fit(sub, cat)
    b, t, f = (m.module_.value_heads for m in (base, tuned, fresh))
    torch.testing.assert_close(t.feat_mean, b.feat_mean)
    torch.testing.assert_close(t.feat_std, b.feat_std)
    assert not torch.allclose(f.feat_mean, b.feat_mean)   # the new data's own scaling differs


def test_the_settings_v1_chose_are_the_ones_the_code_names():
    """TransformerValue.chosen (what the demo trains) is the setting the committed V1 run chose."""
    import json
    from pathlib import Path

    from valuerec.models.transformer_value import TransformerValue
    res = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "v1_online_retail.json"
    chosen = json.loads(res.read_text())["models"]["transformer"]["selection"]["chosen"]
    assert chosen == TransformerValue.chosen


def test_churn_head_starts_at_the_training_churn_rate():
    """Before any training step the churn head predicts the labelled examples' churn rate, not 0.5
    by accident of initialisation."""
    from valuerec.models.value_heads import ValueHeads
    heads = ValueHeads(d_model=8, hidden=4)
    heads.init_churn_from_targets(np.array([1.0, 0.0, 0.0, 0.0]))
    assert torch.sigmoid(heads.churn.bias).item() == pytest.approx(0.25, abs=1e-6)
    df = synthetic_log(n_users=20)
    model, seqs, cutoff = _fit(df, epochs=0)
    pred = model.predict_value(seqs, as_of=cutoff.timestamp())
    n, make_batch, _ = model._value_examples(seqs, model._histories(seqs.item_only()))
    b = make_batch(np.arange(n))
    rate = float((b.churn_target * b.value_mask).sum() / b.value_mask.sum())
    assert abs(rate - 0.5) > 0.2   # (about 0.19 here) far enough from 0.5 to tell the two starts apart
    assert abs(float(np.mean(pred["churn_prob"])) - rate) < 0.05


def test_train_command_on_value_only_data(tmp_path):
    """A plain transaction log (customer, date, amount; no items): train's error used to suggest a
    value-only transformer, which then failed with 'no training events'. Now it trains the value and
    churn heads on every event, and `value` predicts from the saved model."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from valuerec.cli import app

    from value_only_support import CONFIG as cfg
    from value_only_support import train_value_only

    store, _, n_events, r = train_value_only(tmp_path)
    runner = CliRunner()
    assert "value and churn heads only" in r.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["protocol"] == "value-only" and metrics["split"]["events"] == n_events
    r = runner.invoke(app, ["value", "--model", str(tmp_path / "m"), "--store", str(store), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)      # every user (it was the table's top 20, without a word)
    assert len(out) == 30 and all(np.isfinite(u["expected_value"]) and 0 <= u["churn_prob"] <= 1 for u in out)
    r = runner.invoke(app, ["value", "--model", str(tmp_path / "m"), "--store", str(store), "--json", "--top", "5"])
    top5 = json.loads(r.stdout)
    assert [u["user_id"] for u in top5] == [u["user_id"] for u in sorted(
        out, key=lambda u: -u["expected_value"])][:5]
    r = runner.invoke(app, ["value", "--model", str(tmp_path / "m"), "--store", str(store)])
    assert r.exit_code == 0 and "top 20 shown" in " ".join(r.stdout.split())
    r = runner.invoke(app, ["value", "--model", str(tmp_path / "m"), "--store", str(store), "--json",
                            "--user", "c3", "--user", "c3"])
    assert r.exit_code == 0 and [u["user_id"] for u in json.loads(r.stdout)] == ["c3"]   # asked twice, listed once
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "afile").touch()
    for bad, msg in (("dir.csv", "is a directory"), ("afile/x.csv", "a folder on its path is a file")):
        r = runner.invoke(app, ["value", "--model", str(tmp_path / "m"), "--store", str(store),
                                "--out", str(tmp_path / bad)])
        assert r.exit_code == 2 and msg in r.output, r.output
    # explain follows `value`: a customer without a purchase has no value to explain
    from valuerec.data.store import EventStore
    with EventStore(store) as st:
        st.add_events(pd.DataFrame({"user_id": ["viewer"], "item_id": [None], "event_type": ["view"], "value": [0.0],
                                    "quantity": [1.0], "timestamp": [pd.Timestamp("2023-03-01")]}))
    base = ["explain", "--model", str(tmp_path / "m"), "--store", str(store), "--json"]
    r = runner.invoke(app, base + ["--user", "viewer", "--target", "value"])
    assert r.exit_code == 2 and "has no purchase before" in r.output
    r = runner.invoke(app, ["value", "--model", str(tmp_path / "m"), "--store", str(store), "--user", "viewer"])
    assert r.exit_code == 2 and "no purchase before" in r.output
    r = runner.invoke(app, base + ["--user", "c3", "--target", "churn"])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.stdout)["target"]["value"] <= 1
    # a ranking model, or a ranking option, is still refused on such data
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "popularity", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "no events with an item_id" in r.output
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp_path / "m2"),
                            "--device", "cpu", "--config", cfg, "--refit"])
    assert r.exit_code == 2 and "need items to rank" in r.output


def test_predict_value_refuses_non_finite_or_millisecond_as_of_and_takes_no_histories():
    """as_of = inf answered NaNs, NaN a prediction from an empty history; milliseconds put the
    window centuries ahead. No histories give empty arrays (was KeyError)."""
    df = synthetic_log(n_users=20)
    model, seqs, cutoff = _fit(df, epochs=0)
    t = cutoff.timestamp()
    for bad, words in ((np.inf, "is not finite"), (np.nan, "is not finite"),
                       (t * 1000, "looks like milliseconds")):
        with pytest.raises(DataError, match=words):
            model.predict_value(seqs, as_of=bad)
    empty = model.predict_value(seqs.subset([]), as_of=t)
    assert set(empty) >= {"expected_value", "p_buy", "churn_prob"} and all(len(v) == 0 for v in empty.values())
    mask = np.zeros(len(seqs), bool)
    mask[[1, 3]] = True
    assert list(seqs.subset(mask).user_ids) == list(seqs.user_ids[[1, 3]])
