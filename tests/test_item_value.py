import numpy as np
import pytest
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.schema import DataError, event_type_code
from valuerec.models.item_value import ItemValueModel, load_item_values, purchase_lines
from valuerec.policies.rerank import apply_policy

DAY = 86400
T0 = 1_700_000_000
P = event_type_code("purchase")
N_ITEMS = 30


def simulate(n_users=300, days=(0, 400), seed=0, scale=None, base=None, noise=None):
    """Users buy random items; a line's revenue = user scale x item base x lognormal noise (sigma 0.2,
    or ``noise[item]``). Returns the histories and the true (scale, base)."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 1.0, n_users)) if scale is None else scale
    base = np.exp(rng.normal(0, 0.7, N_ITEMS)) if base is None else base
    items, times, values = [], [], []
    for u in range(n_users):
        n = rng.integers(15, 40)
        t = np.sort(rng.uniform(*days, n))
        it = rng.integers(0, N_ITEMS, n)
        items.append(it.astype(np.int64))
        times.append((T0 + t * DAY).astype(np.int64))
        sd = 0.2 if noise is None else noise[it]
        values.append((scale[u] * base[it] * np.exp(rng.normal(0, 1.0, n) * sd)).astype(np.float32))
    h = Sequences(items=items, times=times, event_types=[np.full(len(x), P, np.int64) for x in items],
                  values=values, user_ids=np.array([f"u{u}" for u in range(n_users)], dtype=object))
    return h, scale, base


def test_learns_who_spends_what_and_beats_the_item_mean():
    h, scale, base = simulate()
    cutoff = T0 + 400 * DAY
    m = ItemValueModel(horizon_days=91, n_estimators=150).fit(h, cutoff, N_ITEMS)
    # One training row per (user, item) pair bought in the last 91 days before the cut-off.
    lines = purchase_lines(h)
    window = lines[(lines["t"] >= cutoff - 91 * DAY) & (lines["t"] < cutoff)]
    assert m.train_rows_ == len(window.groupby(["u", "item"]))
    rng = np.random.default_rng(1)
    cand = np.stack([rng.permutation(N_ITEMS)[:10] for _ in range(len(h))])
    pred = m.candidate_values(h, cand)
    assert pred.shape == cand.shape and np.isfinite(pred).all() and (pred > 0).all()
    truth = np.log(scale[:, None] * base[cand])
    item_mean = np.log(m.stats_.line[cand])            # what a user-blind line value gives
    corr = np.corrcoef(np.log(pred).ravel(), truth.ravel())[0, 1]
    corr_item = np.corrcoef(item_mean.ravel(), truth.ravel())[0, 1]
    assert corr > 0.9
    assert corr > corr_item + 0.2


def test_mean_target_values_a_spread_out_item_by_its_mean_spend_not_its_typical_one():
    # Half the items have the same typical (geometric mean) line revenue as the other half but a much
    # wider spread, so their mean revenue is exp(1.5^2 / 2) ~ 3x as high. The default log target
    # estimates the typical spend; the mean target the mean.
    noise = np.where(np.arange(N_ITEMS) < N_ITEMS // 2, 1.5, 0.05)
    h, _, _ = simulate(n_users=600, base=np.ones(N_ITEMS), scale=np.ones(600), noise=noise)
    cutoff = T0 + 400 * DAY
    cand = np.tile(np.arange(N_ITEMS), (len(h), 1))
    wide, narrow = noise[cand] > 1, noise[cand] < 1
    ratio = {}
    for target in ("log", "mean"):
        m = ItemValueModel(horizon_days=91, n_estimators=100, target=target).fit(h, cutoff, N_ITEMS)
        v = m.candidate_values(h, cand)
        ratio[target] = v[wide].mean() / v[narrow].mean()
    assert ratio["mean"] > 1.8              # 2.3 measured (trees shrink towards the overall mean)
    assert ratio["log"] < 1.4               # 1.2 measured (a pair's spend sums its lines, so not 1)
    assert ratio["mean"] > ratio["log"] + 0.6


def test_more_windows_add_the_pairs_of_each_earlier_window_while_history_lasts():
    h, _, _ = simulate(n_users=150)
    lines = purchase_lines(h)
    t = lines["t"].to_numpy()

    def pairs(end):
        w = lines[(t >= end - 91 * DAY) & (t < end)]
        return len(w.groupby(["u", "item"]))
    cutoff = T0 + 400 * DAY
    m = ItemValueModel(n_estimators=30, n_windows=3, step_days=28).fit(h, cutoff, N_ITEMS)
    assert m.windows_used_ == 3
    assert m.train_rows_ == sum(pairs(cutoff - j * 28 * DAY) for j in range(3))
    # The history starts at day 0: a window starting before it has nothing before it and is left out,
    # with every earlier one.
    early = T0 + 150 * DAY
    m = ItemValueModel(n_estimators=30, n_windows=5, step_days=28).fit(h, early, N_ITEMS)
    assert m.windows_used_ == 3      # windows start at days 59, 31, 3; the next would start at -25
    assert m.train_rows_ == sum(pairs(early - j * 28 * DAY) for j in range(3))


def test_prediction_ignores_events_at_or_after_as_of_and_pads_with_zero():
    h, _, _ = simulate(n_users=120)
    cutoff = T0 + 400 * DAY
    m = ItemValueModel(n_estimators=50).fit(h, cutoff, N_ITEMS)
    cand = np.tile(np.arange(N_ITEMS), (len(h), 1))
    cand[:, -3:] = -1
    before = m.candidate_values(h, cand)
    assert (before[:, -3:] == 0).all()
    # A huge purchase after the cut-off changes nothing.
    late = Sequences(items=[np.append(x, 0) for x in h.items],
                     times=[np.append(t, cutoff + DAY) for t in h.times],
                     event_types=[np.append(e, P) for e in h.event_types],
                     values=[np.append(v, 1e6).astype(np.float32) for v in h.values], user_ids=h.user_ids)
    np.testing.assert_allclose(m.candidate_values(late, cand), before)
    # Called on histories it gives every item, as a policy's item_value function does.
    full = m(h)
    assert full.shape == (len(h), N_ITEMS)
    np.testing.assert_allclose(full[:, :-3], before[:, :-3])


def test_save_load_round_trip(tmp_path):
    h, _, _ = simulate(n_users=60)
    cutoff = T0 + 400 * DAY
    cand = np.tile(np.arange(N_ITEMS), (len(h), 1))
    for target in ("mean", "log"):   # the last one stays on disk for the checks below
        m = ItemValueModel(n_estimators=30, target=target, n_windows=2, step_days=14).fit(h, cutoff, N_ITEMS)
        m.save(tmp_path / "item_value")
        assert load_item_values(tmp_path) is not None
        back = ItemValueModel.load(tmp_path / "item_value")
        assert (back.target, back.n_windows, back.step_days) == (target, 2, 14.0)
        np.testing.assert_allclose(back.candidate_values(h, cand), m.candidate_values(h, cand), rtol=1e-12)
    assert load_item_values(tmp_path / "nothing_here") is None
    (tmp_path / "item_value" / "booster.txt").write_text("garbage")
    with pytest.raises(DataError, match="not a saved item value model"):
        ItemValueModel.load(tmp_path / "item_value")


def test_bad_input_gets_clear_errors():
    h, _, _ = simulate(n_users=50)
    cutoff = T0 + 400 * DAY
    with pytest.raises(DataError, match="horizon_days"):
        ItemValueModel(horizon_days=0)
    with pytest.raises(DataError, match="target must be"):
        ItemValueModel(target="median")
    with pytest.raises(DataError, match="n_windows"):
        ItemValueModel(n_windows=0)
    with pytest.raises(DataError, match="times and values"):
        ItemValueModel().fit(Sequences(items=h.items), cutoff, N_ITEMS)
    with pytest.raises(DataError, match="too short"):
        ItemValueModel().fit(h, T0 + 10 * DAY, N_ITEMS)          # nothing before the window
    with pytest.raises(DataError, match="outside the catalogue"):
        ItemValueModel().fit(h, cutoff, 5)
    with pytest.raises(DataError, match="fit"):
        ItemValueModel().candidate_values(h, np.zeros((len(h), 2), np.int64))
    m = ItemValueModel(n_estimators=20).fit(h, cutoff, N_ITEMS)
    # An item added to the catalogue after the fit has no item statistics: valued from the user alone.
    new = m.candidate_values(h, np.full((len(h), 2), N_ITEMS + 3))
    assert np.isfinite(new).all() and (new > 0).all()
    with pytest.raises(DataError, match="candidate rows"):
        m.candidate_values(h, np.zeros((3, 2), np.int64))


class FlatScorer:
    def __init__(self, n):
        self.catalogue_ = Catalogue(item_ids=np.array([f"i{i}" for i in range(n)], dtype=object))
        self.n = n

    def score(self, h):
        return torch.zeros(len(h), self.n)


def test_value_aware_ranks_by_the_learned_values_when_relevance_ties():
    h, _, _ = simulate(n_users=80)
    cutoff = T0 + 400 * DAY
    m = ItemValueModel(n_estimators=50).fit(h, cutoff, N_ITEMS)
    top, _ = apply_policy("value_aware", FlatScorer(N_ITEMS), h, k=5, exclude=None, n_candidates=N_ITEMS,
                          item_value=m, params={"w": 1.0}, as_of=cutoff)
    vals = m.candidate_values(h, np.tile(np.arange(N_ITEMS), (len(h), 1)), np.full(len(h), cutoff))
    # Trees give equal values to some items, so compare the values in order, not the ids.
    np.testing.assert_allclose(np.take_along_axis(vals, top, axis=1), -np.sort(-vals, axis=1)[:, :5])


def test_train_with_item_values_then_recommend_uses_them(tmp_path):
    """``valuerec train --item-values`` saves the learned values beside the model; ``recommend
    --policy value_aware`` re-ranks with them (at the store's newest event as 'now')."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from valuerec.cli import app
    from valuerec.commands.recommend import recommend_for_user
    from valuerec.data.dataset import sequences_from
    from valuerec.data.store import EventStore
    from valuerec.models import load_model

    h, _, _ = simulate(n_users=80)
    rows = [(f"u{u}", f"i{i}", pd.Timestamp(int(t), unit="s").isoformat(), "purchase", float(v))
            for u in range(len(h)) for i, t, v in zip(h.items[u], h.times[u], h.values[u])]
    data = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"]).to_csv(data, index=False)
    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--model", "itemknn",
                                   "--protocol", "r2", "--cutoff", pd.Timestamp(T0 + 380 * DAY, unit="s").isoformat(),
                                   "--valid-cutoff", pd.Timestamp(T0 + 360 * DAY, unit="s").isoformat(),
                                   "--cache-dir", str(tmp_path / "stores"), "--item-values", "--no-test"])
    assert res.exit_code == 0, res.output
    iv = load_item_values(out)
    assert iv is not None and iv.train_rows_ > 0
    store = next((tmp_path / "stores").glob("*.duckdb"))
    got = recommend_for_user(out, store, "u5", k=5, exclude_history=False, policy="value_aware",
                             policy_params={"w": 1.0})
    # The same ranking by hand: the model's candidates re-ranked with the loaded item values.
    model = load_model(out)
    with EventStore(store, read_only=True) as st:
        ev, (_, newest) = st.user_events("u5"), st.time_range()
    hist = sequences_from(ev, model.catalogue_, users=np.array(["u5"], dtype=object))
    now = float(pd.Timestamp(newest).value // 10**9 + 1)
    top, _ = apply_policy("value_aware", model, hist, k=5, exclude=None, params={"w": 1.0}, item_value=iv, as_of=now)
    assert [it["item_id"] for it in got["items"]] == [str(model.catalogue_.item_ids[i]) for i in top[0] if i >= 0]
    # With a flat item value the order is the model's own, which differs for this user.
    plain_top, _ = apply_policy("value_aware", model, hist, k=5, exclude=None, params={"w": 1.0}, as_of=now,
                                item_value=np.ones(len(model.catalogue_)))
    assert json.dumps(top.tolist()) != json.dumps(plain_top.tolist())


def test_policies_that_read_every_items_value_get_the_learned_ones_at_their_as_of():
    from valuerec.policies.rerank import PolicyContext

    h, _, _ = simulate(n_users=40)
    cutoff = T0 + 400 * DAY
    m = ItemValueModel(n_estimators=30).fit(h, cutoff, N_ITEMS)
    as_of = np.full(len(h), float(cutoff - 30 * DAY))
    ctx = PolicyContext(histories=h, candidates=np.zeros((len(h), 1), np.int64), scores=torch.zeros(len(h), 1),
                        full_scores=torch.zeros(len(h), N_ITEMS), item_value=m, as_of=as_of)
    every = np.tile(np.arange(N_ITEMS), (len(h), 1))
    np.testing.assert_allclose(ctx.item_values(), m.candidate_values(h, every, as_of))
    assert not np.allclose(ctx.item_values(), m.candidate_values(h, every))     # the as-of matters
    top, _ = apply_policy("cross_sell_value", FlatScorer(N_ITEMS), h, k=3, exclude="history",
                          n_candidates=N_ITEMS, item_value=m, as_of=cutoff)
    assert (top >= 0).any()
