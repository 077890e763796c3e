import numpy as np
import pytest
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.schema import DataError, event_type_code
from valuerec.models.purchase_stage import FEATURES, PurchaseStage, load_purchase_stage
from valuerec.policies.rerank import apply_policy, build_context

DAY = 86400
T0 = 1_700_000_000
P = event_type_code("purchase")
N_ITEMS = 40


def simulate(n_users=300, end_day=400, seed=0):
    """Each user re-buys two 'staple' items on a fixed period of 20-40 days, and buys random items
    now and then. Returns all events up to ``end_day``."""
    rng = np.random.default_rng(seed)
    items, times, values = [], [], []
    for u in range(n_users):
        it, t = [], []
        for s in rng.choice(N_ITEMS, 2, replace=False):
            period = rng.uniform(20, 40)
            day = rng.uniform(0, period)
            while day < end_day:
                it.append(s)
                t.append(day)
                day += period * rng.uniform(0.9, 1.1)
        n_rand = rng.integers(5, 15)
        it += list(rng.integers(0, N_ITEMS, n_rand))
        t += list(rng.uniform(0, end_day, n_rand))
        order = np.argsort(t)
        items.append(np.asarray(it, np.int64)[order])
        times.append((T0 + np.asarray(t)[order] * DAY).astype(np.int64))
        values.append(rng.uniform(1, 20, len(it)).astype(np.float32))
    return Sequences(items=items, times=times, event_types=[np.full(len(x), P, np.int64) for x in items],
                     values=values, user_ids=np.array([f"s{seed}u{u}" for u in range(n_users)], dtype=object))


def window(h: Sequences, start_day: float, days: float = 30):
    """Histories before ``start_day`` and the items bought in [start_day, start_day + days)."""
    start, end = T0 + start_day * DAY, T0 + (start_day + days) * DAY
    before = h.prefix([int(np.searchsorted(t, start)) for t in h.times])
    targets = [np.unique(i[(t >= start) & (t < end)]) for i, t in zip(h.items, h.times)]
    return before, targets, start


class FixedScorer:
    """The same (slightly random) score of every item for every user: no personal signal."""

    def __init__(self, n, seed=0):
        self.catalogue_ = Catalogue(item_ids=np.array([f"i{i}" for i in range(n)], dtype=object))
        self.s = torch.as_tensor(np.random.default_rng(seed).normal(0, 0.1, n), dtype=torch.float32)

    def score(self, h):
        return self.s.repeat(len(h), 1)


def hits_at(top, targets, k=2):
    return np.mean([np.isin(top[u, :k], targets[u]).sum() / max(min(k, len(targets[u])), 1)
                    for u in range(len(targets)) if len(targets[u])])


def test_learns_when_a_staple_is_due_and_carries_to_a_later_cutoff_and_new_users():
    model = FixedScorer(N_ITEMS)
    train = simulate(seed=0)
    hist, targets, cut = window(train, 300)
    stage = PurchaseStage(n_estimators=100, folds=1).fit(model, hist, targets, as_of=cut, reference=hist,
                                                         n_candidates=N_ITEMS)
    assert stage.train_rows_ == len(hist) * N_ITEMS and 0 < stage.positive_rate_ < 0.5
    # New users, a later cut-off: item statistics move there, the classifier stays.
    new = simulate(n_users=200, seed=1)
    h2, t2, cut2 = window(new, 360, days=15)
    later = stage.at(h2, cut2)
    common = dict(k=2, exclude=None, n_candidates=N_ITEMS, as_of=cut2, item_value=np.ones(N_ITEMS))
    plain, _ = apply_policy("plain", model, h2, **common)
    learned, _ = apply_policy("value_aware", model, h2, params={"w": 0.0, "p": "learned"},
                              purchase_model=later, **common)
    # The plain order knows nothing about the user; the stage finds the staples that are due.
    assert hits_at(plain, t2) < 0.15
    assert hits_at(learned, t2) > 0.6
    # At w = 0 the order is exactly the stage's probabilities.
    ctx = build_context(model, h2, n_candidates=N_ITEMS, as_of=np.full(len(h2), cut2), item_value=np.ones(N_ITEMS))
    p = later.predict(ctx)
    chosen = np.argmax(ctx.candidates == learned[:, :1], axis=1)       # where the top item sits
    np.testing.assert_allclose(p[np.arange(len(h2)), chosen], p.max(axis=1))


def test_features_ignore_events_at_or_after_as_of_and_padding_rows():
    model = FixedScorer(N_ITEMS)
    h = simulate(n_users=60, end_day=200)
    hist, targets, cut = window(h, 150)
    stage = PurchaseStage(n_estimators=20, folds=1).fit(model, hist, targets, as_of=cut, reference=hist,
                                                        n_candidates=10)
    a = build_context(model, hist, n_candidates=10, as_of=np.full(len(hist), cut))
    b = build_context(model, h, n_candidates=10, as_of=np.full(len(h), cut))   # full history, same as-of
    np.testing.assert_array_equal(stage.features(a), stage.features(b))
    a.candidates[:, -2:] = -1
    X = stage.features(a).reshape(len(hist), 10, len(FEATURES))
    assert np.isnan(X[:, -2:]).all() and not np.isnan(X[:, :-2, FEATURES.index("ui_days")]).any()
    assert (stage.predict(a)[:, -2:] == 0).all()


def test_out_of_fold_uses_the_classifier_that_did_not_see_the_user():
    model = FixedScorer(N_ITEMS)
    h = simulate(n_users=150)
    hist, targets, cut = window(h, 300)
    stage = PurchaseStage(n_estimators=40, folds=3).fit(model, hist, targets, as_of=cut, reference=hist,
                                                        n_candidates=N_ITEMS)
    assert len(stage.fold_boosters_) == 3 and set(stage.fold_of_.values()) == {0, 1, 2}
    ctx = build_context(model, hist, n_candidates=N_ITEMS, as_of=np.full(len(hist), cut))
    full, oof = stage.predict(ctx), stage.out_of_fold().predict(ctx)
    assert not np.allclose(full, oof)
    u = 7
    f = stage.fold_of_[str(hist.user_ids[u])]
    X = stage.features(ctx).reshape(len(hist), N_ITEMS, -1)[u]
    np.testing.assert_allclose(oof[u], stage.fold_boosters_[f].predict(X))
    # Users the stage never saw get the classifier trained on everyone.
    other = simulate(n_users=20, seed=5)
    h5, _, _ = window(other, 300)
    c5 = build_context(model, h5, n_candidates=N_ITEMS, as_of=np.full(len(h5), cut))
    np.testing.assert_allclose(stage.out_of_fold().predict(c5), stage.predict(c5))


def test_save_load_round_trip(tmp_path):
    model = FixedScorer(N_ITEMS)
    h = simulate(n_users=80)
    hist, targets, cut = window(h, 300)
    stage = PurchaseStage(n_estimators=30, folds=2).fit(model, hist, targets, as_of=cut, reference=hist,
                                                        n_candidates=20)
    stage.save(tmp_path / "purchase_stage")
    back = load_purchase_stage(tmp_path)
    ctx = build_context(model, hist, n_candidates=20, as_of=np.full(len(hist), cut))
    np.testing.assert_allclose(back.predict(ctx), stage.predict(ctx), rtol=1e-12)
    assert load_purchase_stage(tmp_path / "nothing") is None
    (tmp_path / "purchase_stage" / "booster.txt").write_text("garbage")
    with pytest.raises(DataError, match="not a saved purchase stage"):
        PurchaseStage.load(tmp_path / "purchase_stage")


def test_bad_input_gets_clear_errors():
    model = FixedScorer(N_ITEMS)
    h = simulate(n_users=40)
    hist, targets, cut = window(h, 300)
    with pytest.raises(DataError, match="folds"):
        PurchaseStage(folds=0)
    with pytest.raises(DataError, match="target sets"):
        PurchaseStage().fit(model, hist, targets[:-1], as_of=cut, reference=hist)
    with pytest.raises(DataError, match="nothing to learn"):
        PurchaseStage(folds=1).fit(model, hist, [np.zeros(0, np.int64)] * len(hist), as_of=cut, reference=hist)
    with pytest.raises(DataError, match="user_ids"):
        PurchaseStage(folds=2).fit(model, Sequences(items=hist.items, times=hist.times), targets, as_of=cut,
                                   reference=hist)
    with pytest.raises(DataError, match="fit"):
        PurchaseStage().out_of_fold()
    with pytest.raises(DataError, match="at or after the cut-off"):
        PurchaseStage(folds=1).fit(model, h, [np.zeros(0, np.int64)] * len(h), as_of=cut, reference=hist)
    with pytest.raises(DataError, match="needs a purchase stage"):
        apply_policy("value_aware", model, hist, params={"p": "learned"}, exclude=None, item_value=np.ones(N_ITEMS))
    with pytest.raises(DataError, match="'softmax' or 'learned'"):
        apply_policy("value_aware", model, hist, params={"p": "magic"}, exclude=None)


def test_train_with_purchase_stage_then_recommend_uses_it(tmp_path):
    """``valuerec train --purchase-stage`` learns P(buy) on the validation window and saves it beside the
    model (here with two bagged classifiers and its own value); ``recommend --policy value_aware`` with
    p=learned re-ranks with it."""
    import pandas as pd
    from typer.testing import CliRunner

    from valuerec.cli import app
    from valuerec.commands.recommend import recommend_for_user
    from valuerec.data.dataset import sequences_from
    from valuerec.data.store import EventStore
    from valuerec.models import load_model
    from valuerec.models.item_value import load_item_values

    h = simulate(n_users=120, end_day=400)
    rows = [(f"u{u}", f"i{i}", pd.Timestamp(int(t), unit="s").isoformat(), "purchase", float(v))
            for u in range(len(h)) for i, t, v in zip(h.items[u], h.times[u], h.values[u])]
    data = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"]).to_csv(data, index=False)
    out = tmp_path / "model"
    args = ["train", "--data", str(data), "--out", str(out), "--model", "itemknn", "--protocol", "r2",
            "--cutoff", pd.Timestamp(T0 + 380 * DAY, unit="s").isoformat(),
            "--valid-cutoff", pd.Timestamp(T0 + 350 * DAY, unit="s").isoformat(),
            "--cache-dir", str(tmp_path / "stores"), "--no-test", "--purchase-stage", "--stage-bags", "2", "--stage-value", "stage",
            "--stage-companions", "repeat"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    stage, iv = load_purchase_stage(out), load_item_values(out)
    assert stage is not None and iv is not None and stage.train_rows_ > 0
    assert list(stage.companions) == ["repeat"] and "c_repeat_log_p" in stage.feature_names
    assert stage.bags == 2 and stage.value_source == "stage" and stage.value_booster_ is not None
    store = next((tmp_path / "stores").glob("*.duckdb"))
    assert stage.exclude_history_ is True       # built as recommend and serve build candidates by default
    params = {"w": 0.5, "p": "learned"}
    got = recommend_for_user(out, store, "u3", k=5, policy="value_aware", policy_params=params)
    model = load_model(out)
    with EventStore(store, read_only=True) as st:
        ev, (_, newest) = st.user_events("u3"), st.time_range()
    hist = sequences_from(ev, model.catalogue_, users=np.array(["u3"], dtype=object))
    now = float(pd.Timestamp(newest).value // 10**9 + 1)
    top, _ = apply_policy("value_aware", model, hist, k=5, exclude="history", params=params, item_value=iv,
                          purchase_model=stage, as_of=now)
    assert [it["item_id"] for it in got["items"]] == [str(model.catalogue_.item_ids[i]) for i in top[0] if i >= 0]
    had = {str(model.catalogue_.item_ids[i]) for i in hist.items[0] if i >= 0}
    assert got["items"] and not {it["item_id"] for it in got["items"]} & had
    # A leave-one-out split has no validation window to learn from: a clear error.
    loo = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "m2"), "--model",
                                   "popularity", "--protocol", "loo", "--cache-dir", str(tmp_path / "stores"),
                                   "--no-test", "--purchase-stage"])
    assert loo.exit_code == 2 and "validation window" in loo.output
    bad = CliRunner().invoke(app, args[:-1] + ["nonsense"])
    assert bad.exit_code == 2 and "unknown model" in bad.output and "nonsense" in bad.output
    # a stage value needs purchases with a value: said before the model trains
    free = tmp_path / "free.csv"
    pd.read_csv(data).assign(value=0.0).to_csv(free, index=False)
    r = CliRunner().invoke(app, [str(free) if a == str(data) else a for a in args[:-2]]
                           + ["--cache-dir", str(tmp_path / "stores2")])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "--stage-value stage: the validation window has no purchase with a positive value" in out
    assert "saved" not in out


def test_companion_recommenders_add_their_view_and_round_trip(tmp_path):
    """A companion's scores become two features per candidate (log softmax, log rank); save/load
    keeps the companion; at() swaps in refitted ones."""
    from valuerec.models.popularity import RepeatPopularity

    model = FixedScorer(N_ITEMS)
    h = simulate(n_users=150)
    hist, targets, cut = window(h, 300)
    rep = RepeatPopularity().fit(hist, model.catalogue_)
    stage = PurchaseStage(n_estimators=40, folds=1, companions={"repeat": rep}).fit(
        model, hist, targets, as_of=cut, reference=hist, n_candidates=N_ITEMS)
    assert stage.feature_names[-2:] == ["c_repeat_log_p", "c_repeat_log_rank"]
    ctx = build_context(model, hist, n_candidates=N_ITEMS, as_of=np.full(len(hist), cut))
    X = stage.features(ctx).reshape(len(hist), N_ITEMS, -1)
    sc = rep.score(hist).double()
    u, c = 4, 7
    item = ctx.candidates[u, c]
    assert X[u, c, -1] == pytest.approx(np.log1p(int((sc[u] > sc[u, item]).sum())))
    assert X[u, c, -2] == pytest.approx(float(torch.log_softmax(sc[u], 0)[item]))
    stage.save(tmp_path / "ps")
    back = PurchaseStage.load(tmp_path / "ps")
    assert list(back.companions) == ["repeat"]
    np.testing.assert_allclose(back.predict(ctx), stage.predict(ctx), rtol=1e-12)
    # at() swaps in refitted companions, and only the same set.
    later = stage.at(h, cut + 30 * DAY, companions={"repeat": RepeatPopularity().fit(h, model.catalogue_)})
    assert later.companions["repeat"] is not rep and stage.companions["repeat"] is rep
    with pytest.raises(DataError, match="companions"):
        stage.at(h, cut, companions={"other": rep})
    with pytest.raises(DataError, match="not a recommender"):
        PurchaseStage(companions={"x": object()})


def priced(h: Sequences, seed=0) -> Sequences:
    """``h`` with every purchase's value set by its item: item i costs (i + 1), +-10% noise."""
    rng = np.random.default_rng(seed)
    vals = [((i + 1) * rng.uniform(0.9, 1.1, len(i))).astype(np.float32) for i in h.items]
    return Sequences(items=h.items, times=h.times, event_types=h.event_types, values=vals, user_ids=h.user_ids)


def window_revenue(h: Sequences, targets, start_day: float, days: float = 30):
    """What each user spent on each of their target items in the window (aligned with ``targets``)."""
    start, end = T0 + start_day * DAY, T0 + (start_day + days) * DAY
    out = []
    for i, t, v, tg in zip(h.items, h.times, h.values, targets):
        m = (t >= start) & (t < end)
        out.append(np.array([float(v[m & (i == x)].sum()) for x in tg]))
    return out


def test_bagged_stage_and_a_value_learned_on_the_candidates(tmp_path):
    """``bags`` averages subsampled classifiers; with ``target_revenue`` the stage learns what a bought
    candidate is worth (the hurdle's value), which ``value_aware`` with p=learned then ranks by."""
    model = FixedScorer(N_ITEMS)
    h = priced(simulate(n_users=200))
    hist, targets, cut = window(h, 300)
    rev = window_revenue(h, targets, 300)
    iv = np.arange(1, N_ITEMS + 1, dtype=np.float64)[::-1].copy()   # a deliberately wrong item value
    stage = PurchaseStage(n_estimators=40, folds=2, bags=3, value_source="stage").fit(
        model, hist, targets, as_of=cut, reference=hist, n_candidates=N_ITEMS, target_revenue=rev, item_value=iv)
    assert len(stage.booster_.boosters) == 3 and len(stage.fold_value_boosters_) == 2
    ctx = build_context(model, hist, n_candidates=N_ITEMS, as_of=np.full(len(hist), cut), item_value=iv)
    p, v = stage.predict_with_value(ctx)
    np.testing.assert_array_equal(p, stage.predict(ctx))
    assert ((p > 0) & (p < 1)).all()
    single = PurchaseStage(n_estimators=40, folds=1).fit(model, hist, targets, as_of=cut, reference=hist,
                                                         n_candidates=N_ITEMS, item_value=iv)
    assert not np.allclose(single.predict(ctx), p)
    # The learned value follows the true price (item index + 1), not the wrong item value it was shown.
    from scipy.stats import spearmanr
    price = ctx.candidates.astype(np.float64) + 1
    assert spearmanr(v.reshape(-1), price.reshape(-1)).statistic > 0.8
    # "mean" is the geometric mean of the two values; "item" leaves the value to the context.
    _, vm = stage.with_value_source("mean").predict_with_value(ctx)
    np.testing.assert_allclose(vm, np.sqrt(v * iv[ctx.candidates]), rtol=1e-9)
    assert stage.with_value_source("item").predict_with_value(ctx)[1] is None
    # value_aware at w = 1 ranks by P x the stage's value.
    top, _ = apply_policy("value_aware", model, hist, k=5, exclude=None, params={"w": 1.0, "p": "learned"},
                          item_value=iv, purchase_model=stage, as_of=cut, n_candidates=N_ITEMS)
    want = np.take_along_axis(ctx.candidates, np.argsort(-(p * v), axis=1, kind="stable")[:, :5], 1)
    assert (top == want).mean() > 0.95
    # Out of fold: both the classifier and the value come from the fold that did not see the user.
    po, vo = stage.out_of_fold().predict_with_value(ctx)
    assert not np.allclose(po, p) and not np.allclose(vo, v)
    # Save / load keeps the bags, the regressor and the source.
    stage.save(tmp_path / "ps")
    back = PurchaseStage.load(tmp_path / "ps")
    assert back.bags == 3 and back.value_source == "stage"
    pb, vb = back.predict_with_value(ctx)
    np.testing.assert_allclose(pb, p, rtol=1e-12)
    np.testing.assert_allclose(vb, v, rtol=1e-12)


def test_value_source_and_bags_errors():
    model = FixedScorer(N_ITEMS)
    h = priced(simulate(n_users=60))
    hist, targets, cut = window(h, 300)
    rev = window_revenue(h, targets, 300)
    with pytest.raises(DataError, match="bags"):
        PurchaseStage(bags=0)
    with pytest.raises(DataError, match="value_source"):
        PurchaseStage(value_source="magic")
    with pytest.raises(DataError, match="needs target_revenue"):
        PurchaseStage(folds=1, value_source="stage").fit(model, hist, targets, as_of=cut, reference=hist)
    with pytest.raises(DataError, match=r"target_revenue\[0\] has"):
        PurchaseStage(folds=1).fit(model, hist, targets, as_of=cut, reference=hist,
                                   target_revenue=[np.zeros(len(t) + 1) for t in targets])
    with pytest.raises(DataError, match="no bought candidate has a positive"):
        PurchaseStage(folds=1).fit(model, hist, targets, as_of=cut, reference=hist,
                                   target_revenue=[np.zeros(len(t)) for t in targets])
    plain = PurchaseStage(n_estimators=20, folds=1).fit(model, hist, targets, as_of=cut, reference=hist)
    with pytest.raises(DataError, match="fitted with target_revenue"):
        plain.with_value_source("stage")
    one = [r if u == 0 else np.zeros(len(r)) for u, r in enumerate(rev)]   # one user's revenue: a fold without it
    with pytest.raises(DataError, match=r"outside fold \d+ bought no candidate.*use fewer folds"):
        PurchaseStage(n_estimators=20, folds=2).fit(model, hist, targets, as_of=cut, reference=hist, target_revenue=one)
    fitted = PurchaseStage(n_estimators=20, folds=1).fit(model, hist, targets, as_of=cut, reference=hist,
                                                         target_revenue=rev)
    ctx = build_context(model, hist, n_candidates=N_ITEMS, as_of=np.full(len(hist), cut))
    with pytest.raises(DataError, match="needs the context's item values"):
        fitted.with_value_source("mean").predict_with_value(ctx)

    class WrongValue:
        def predict_with_value(self, c):
            return np.full(c.candidates.shape, 0.5), np.ones((1, 1))
    with pytest.raises(DataError, match=r"purchase model's value has shape \(1, 1\), expected"):
        apply_policy("value_aware", model, hist, params={"p": "learned"}, exclude=None, item_value=np.ones(N_ITEMS),
                     purchase_model=WrongValue())


@pytest.mark.parametrize("edit, words", [({"bags": 0}, "bags 0, expected a whole number >= 1"),
                                         ({"value_source": "magic"}, "value_source 'magic', expected one of"),
                                         ({"value_source": "stage", "value_regressor": False},
                                          "without a saved value regressor")])
def test_a_damaged_saved_stage_names_the_field(tmp_path, edit, words):
    import json
    model = FixedScorer(N_ITEMS)
    hist, targets, cut = window(simulate(n_users=40), 300)
    PurchaseStage(n_estimators=10, folds=1).fit(model, hist, targets, as_of=cut, reference=hist).save(tmp_path / "ps")
    meta = json.loads((tmp_path / "ps" / "purchase_stage.json").read_text())
    (tmp_path / "ps" / "purchase_stage.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(DataError, match="not a saved purchase stage") as e:
        PurchaseStage.load(tmp_path / "ps")
    assert str(tmp_path / "ps") in str(e.value) and words in str(e.value)
