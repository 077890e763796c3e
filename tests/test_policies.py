import re

import numpy as np
import pytest
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.schema import DataError, event_type_code
from valuerec.data.splits import EvalTask
from valuerec.evaluation.metrics import evaluate
from valuerec.policies.rerank import (POLICIES, apply_policy, make_policy, mmr, policy_score_fn,
                                      what_if_uplift)

DAY = 86400
T0 = 1_700_000_000
P = event_type_code("purchase")


class FixedScorer:
    """Stand-in recommender: the same scores for every user."""

    def __init__(self, scores, price=None):
        self.s = torch.as_tensor(scores, dtype=torch.float32)
        self.catalogue_ = Catalogue(item_ids=np.array([f"i{i}" for i in range(len(scores))], dtype=object),
                                    price=None if price is None else np.asarray(price, dtype=float))

    def score(self, h):
        return self.s.expand(len(h), -1).clone()


class LinearValue:
    """Stand-in value model: expected value = sum of per-item weights over the history before as_of
    (like the real value models, it ignores events at or after its as-of time)."""

    def __init__(self, w):
        self.w = np.asarray(w, dtype=float)

    def predict_value(self, h, as_of):
        as_of = np.broadcast_to(np.asarray(as_of, dtype=float), (len(h),))
        ev = np.array([self.w[x[(x >= 0) & (t < a)]].sum() for x, t, a in zip(h.items, h.times, as_of)])
        return {"expected_value": ev, "churn_prob": np.full(len(h), 0.1), "p_buy": np.full(len(h), 0.9),
                "lower": ev, "upper": ev}


def seqs(items, days_ago=None):
    items = [np.asarray(x, dtype=np.int64) for x in items]
    times = None if days_ago is None else [(T0 - np.asarray(d, float) * DAY).astype(np.int64) for d in days_ago]
    return Sequences(items=items, times=times,
                     event_types=[np.full(len(x), P, np.int64) for x in items],
                     values=[np.ones(len(x), np.float32) for x in items],
                     user_ids=np.array([f"u{i}" for i in range(len(items))], dtype=object))


def test_registry_has_all_policies_and_rejects_unknowns():
    assert {"plain", "popular_diverse", "favourites_winback", "cross_sell_value", "value_aware",
            "value_uplift", "stage"} <= set(POLICIES)
    with pytest.raises(DataError, match="unknown policy"):
        make_policy("nope")
    with pytest.raises(DataError, match="unknown parameter"):
        make_policy("value_aware", weight=0.3)
    with pytest.raises(DataError, match="w must be"):
        make_policy("value_aware", w=1.5)


def test_value_aware_w1_ranks_by_expected_revenue_w0_by_relevance():
    rng = np.random.default_rng(0)
    s = rng.normal(size=30)
    price = rng.uniform(1, 50, size=30)
    m = FixedScorer(s, price)
    h = seqs([[0, 1], [2]])
    top1, _ = apply_policy("value_aware", m, h, k=10, params={"w": 1.0}, n_candidates=30)
    for u in range(2):
        p = np.exp(s - s.max())
        er = p * price
        er[h.items[u]] = -np.inf
        assert list(top1[u]) == list(np.argsort(-er, kind="stable")[:10])
    top0, _ = apply_policy("value_aware", m, h, k=10, params={"w": 0.0}, n_candidates=30)
    plain, _ = apply_policy("plain", m, h, k=10, n_candidates=30)
    assert (top0 == plain).all()
    # plain equals the model's own top-k with history excluded
    sc = m.score(h).numpy()
    for u in range(2):
        sc[u, h.items[u]] = -np.inf
        assert list(plain[u]) == list(np.argsort(-sc[u], kind="stable")[:10])


def test_value_aware_temperature_moves_towards_price():
    s = np.array([2.0, 1.0, 0.0])
    price = np.array([1.0, 2.0, 100.0])
    m = FixedScorer(s, price)
    h = seqs([[]])
    hot, _ = apply_policy("value_aware", m, h, k=3, exclude=None, params={"w": 1.0, "temperature": 100.0})
    assert hot[0, 0] == 2  # nearly uniform p: price decides
    cold, _ = apply_policy("value_aware", m, h, k=3, exclude=None, params={"w": 1.0, "temperature": 0.01})
    assert cold[0, 0] == 0  # p concentrated on the top item


def test_value_aware_value_power_leans_towards_big_spend():
    s = np.array([1.0, 0.0])              # p ~ (0.73, 0.27)
    price = np.array([1.0, 2.5])          # expected revenue 0.73 vs 0.67: item 0 first at power 1
    m = FixedScorer(s, price)
    h = seqs([[]])
    one, _ = apply_policy("value_aware", m, h, k=2, exclude=None, params={"w": 1.0})
    two, _ = apply_policy("value_aware", m, h, k=2, exclude=None, params={"w": 1.0, "value_power": 2.0})
    assert one[0, 0] == 0 and two[0, 0] == 1  # 0.73 x 1 < 0.27 x 6.25
    with pytest.raises(DataError, match="value_power"):
        make_policy("value_aware", value_power=0.0)


def test_favourites_boosts_past_items_recency_weighted():
    s = np.linspace(1, 0, 20)  # model prefers low indices
    m = FixedScorer(s)
    # bought 18 recently and 19 long ago; both have the lowest model scores
    h = seqs([[19, 18]], days_ago=[[400, 1]])
    top, _ = apply_policy("favourites_winback", m, h, k=5, exclude=None, n_candidates=5, as_of=T0,
                          params={"boost": 3.0, "half_life_days": 300})
    # weights: 18 -> 0.5 ** (1/300) ~ 1, 19 -> 0.5 ** (400/300) = 0.40: recent favourite first
    assert list(top[0, :3]) == [18, 19, 0]
    short, _ = apply_policy("favourites_winback", m, h, k=5, exclude=None, n_candidates=5, as_of=T0,
                            params={"boost": 3.0, "half_life_days": 30})
    assert short[0, 0] == 18 and 19 not in short[0]  # 400 days at a 30-day half-life: forgotten
    # items outside the model's top-5 were added as candidates
    plain, _ = apply_policy("plain", m, h, k=5, exclude=None, n_candidates=5)
    assert 18 not in plain[0]
    # with history exclusion, past items cannot come back
    top_ex, _ = apply_policy("favourites_winback", m, h, k=5, n_candidates=5, as_of=T0, exclude="history")
    assert 18 not in top_ex[0] and 19 not in top_ex[0]
    # the default ('auto') keeps past items for favourites but excludes them for plain
    top_auto, _ = apply_policy("favourites_winback", m, h, k=5, n_candidates=5, as_of=T0,
                               params={"boost": 3.0, "half_life_days": 300})
    assert list(top_auto[0]) == list(top[0])
    plain_auto, _ = apply_policy("plain", m, seqs([[0, 1]]), k=3)
    assert list(plain_auto[0]) == [2, 3, 4]


def test_favourites_count_purchases_net_of_returns():
    """An item bought and returned in full is no favourite (returns used to count as favourite
    signals); views count only for a user without purchases."""
    from valuerec.policies.rerank import favourite_weights

    R, V = event_type_code("return"), event_type_code("view")
    h = Sequences(items=[np.array([1, 2, 1, 3]), np.array([4, 5, 4])],
                  times=[np.full(4, T0 - 10 * DAY), np.full(3, T0 - 10 * DAY)],
                  event_types=[np.array([P, P, R, V]), np.array([V, V, V])])
    cand = np.array([[1, 2, 3, -1], [4, 5, 1, -1]])
    w = favourite_weights(h, cand, np.full(2, float(T0)), 90.0)
    assert w[0, 0] == 0 and w[0, 1] > 0 and w[0, 2] == 0          # returned; bought; viewed beside purchases
    assert w[1, 0] == pytest.approx(2 * w[1, 1]) and w[1, 1] > 0   # a views-only user: every view counts
    m = FixedScorer(np.linspace(1, 0, 10))
    top, _ = apply_policy("favourites_winback", m, seqs([[8, 9, 8]], days_ago=[[3, 2, 1]]), k=3, as_of=T0,
                          params={"boost": 3.0})
    top_ret, _ = apply_policy("favourites_winback", m, Sequences(
        items=[np.array([8, 9, 8])], times=[(T0 - np.array([3, 2, 1]) * DAY).astype(np.int64)],
        event_types=[np.array([P, P, R])]), k=3, as_of=T0, params={"boost": 3.0})
    assert top[0, 0] == 8 and top_ret[0, 0] == 9


def test_recommend_json_says_whether_history_was_excluded(cli_setup):
    """favourites_winback and stage keep past items: the JSON's exclude_history says so (was true)."""
    import json

    from typer.testing import CliRunner

    from valuerec.cli import app

    tmp, store = cli_setup
    for policy, excluded in (("plain", True), ("value_aware", True), ("favourites_winback", False),
                             ("stage", "by stage")):
        r = CliRunner().invoke(app, ["recommend", "--model", str(tmp / "pop"), "--store", str(store), "--user", "u1",
                                     "--policy", policy, "--json", "-k", "3"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["exclude_history"] == excluded, policy
        # the stage policy says which stage, and so which policy, ranked the list
        assert ("stage" in out) == (policy == "stage")
        if policy == "stage":
            from valuerec.policies.rerank import DEFAULT_STAGE_POLICIES
            assert out["stage_policy"] == DEFAULT_STAGE_POLICIES[out["stage"]]
        if excluded is True:
            assert not {"i0", "i1", "i2"} & {i["item_id"] for i in out["items"]}


def test_cross_sell_prefers_pricier_unbought_items():
    s = np.array([1.0, 0.99, 0.98, 0.97])
    price = np.array([10.0, 1.0, 100.0, 10.0])
    m = FixedScorer(s, price)
    h = seqs([[0, 3]])  # usual price 10; item 0 already bought
    top, _ = apply_policy("cross_sell_value", m, h, k=4, exclude=None, params={"gamma": 1.0})
    assert top[0, 0] == 2          # 10x the usual price, not yet bought
    assert set(top[0, -2:]) == {0, 3}  # already bought: last


def test_mmr_picks_diverse_items():
    rel = torch.tensor([[1.0, 0.95, 0.5]], dtype=torch.float64)
    sim = torch.tensor([[[1, 1, 0], [1, 1, 0], [0, 0, 1]]], dtype=torch.float64)
    valid = torch.ones(1, 3, dtype=torch.bool)
    order = torch.argsort(mmr(rel, sim, valid, lam=0.5, k=3), descending=True)[0].tolist()
    assert order == [0, 2, 1]
    order = torch.argsort(mmr(rel, sim, valid, lam=1.0, k=3), descending=True)[0].tolist()
    assert order == [0, 1, 2]


def test_popular_diverse_uses_item_vectors():
    m = FixedScorer([1.0, 0.95, 0.5])
    vec = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    top, _ = apply_policy("popular_diverse", m, seqs([[]]), k=3, item_vectors=vec,
                          params={"mmr_lambda": 0.5, "k": 3})
    assert list(top[0]) == [0, 2, 1]


def test_value_uplift_ranks_by_predicted_value_change():
    w = np.array([0.0, 5.0, 1.0, 3.0, -2.0])
    m = FixedScorer(np.array([5.0, 4, 3, 2, 1]), price=np.ones(5))
    vm = LinearValue(w)
    h = seqs([[0], []], days_ago=[[3], []])  # the what-if purchase at as_of must count
    up = what_if_uplift(vm, h, np.array([[1, 2, -1], [3, 4, 1]]), np.array([T0, T0]), np.ones((2, 3)))
    assert np.allclose(up, [[5, 1, 0], [3, -2, 5]])
    top, _ = apply_policy("value_uplift", m, h, k=4, value_model=vm, as_of=T0, exclude=None)
    assert list(top[0]) == [1, 3, 2, 0]
    with pytest.raises(DataError, match="value model"):
        apply_policy("value_uplift", m, h, k=4, as_of=T0)


def test_stage_policy_routes_by_stage():
    s = np.linspace(1, 0, 10)
    m = FixedScorer(s, price=np.arange(1, 11, dtype=float))
    h = seqs([[9], [9]], days_ago=[[1], [1]])
    stages = np.array(["at-risk", "retained"], dtype=object)
    top, _ = apply_policy("stage", m, h, k=3, exclude=None, as_of=T0, stages=stages, n_candidates=3,
                          params={"policy_params": {"favourites_winback": {"boost": 2.0}}})
    assert top[0, 0] == 9          # at-risk -> favourites: past item first
    assert list(top[1]) == [0, 1, 2]  # retained -> plain
    # stages assigned from history when not given: one purchase, no value model -> activated -> plain
    top2, _ = apply_policy("stage", m, h, k=3, exclude=None, as_of=T0, n_candidates=3)
    assert list(top2[0]) == [0, 1, 2]
    with pytest.raises(DataError, match="unknown stage"):
        make_policy("stage", mapping={"vip": "plain"})
    # past items: by default (exclude='auto') only the stages whose policy is built on them get them
    h0 = seqs([[0], [0]], days_ago=[[1], [1]])
    auto, _ = apply_policy("stage", m, h0, k=3, as_of=T0, stages=stages, n_candidates=3)
    assert auto[0, 0] == 0 and list(auto[1]) == [1, 2, 3]    # at-risk: favourite first; retained: not again
    kept, _ = apply_policy("stage", m, h0, k=3, exclude=None, as_of=T0, stages=stages, n_candidates=3)
    assert list(kept[1]) == [0, 1, 2]                        # the caller kept them (repeat-buying data)


def test_stage_of_a_user_does_not_depend_on_who_else_is_ranked():
    """The advocates' "top value" bar is the value model's own (measured on its training population),
    not a quantile over the users ranked together: alone, any long-standing buyer used to be at the
    top of a population of one, so the stage policy called every such user an advocate."""
    from valuerec.policies.rerank import policy_stages

    m = FixedScorer(np.linspace(1, 0, 10), price=np.arange(1, 11, dtype=float))
    vm = LinearValue(np.arange(10, dtype=float))      # value = sum of item indices bought
    # two long-standing buyers (two orders, 200 and 1 days ago): predicted values 1 and 17
    h = seqs([[0, 1], [8, 9]], days_ago=[[200, 1], [200, 1]])
    vm.advocate_value_threshold_ = 10.0
    both = policy_stages(m, h, T0, value_model=vm)
    alone = [policy_stages(m, h.subset([u]), T0, value_model=vm)[0] for u in range(2)]
    assert list(both) == alone == ["retained", "advocate"]
    # apply_policy assigns stages once over all users, not per batch
    top_b, _ = apply_policy("stage", m, h, k=3, as_of=T0, value_model=vm, batch_size=1, n_candidates=3)
    top_s, _ = apply_policy("stage", m, h, k=3, as_of=T0, value_model=vm, stages=both, n_candidates=3)
    assert np.array_equal(top_b, top_s)
    # without a bar of the model's own, a batch's quantile is all there is (the lifecycle command's
    # population); a caller's config wins over the model's bar
    from valuerec.policies.lifecycle import LifecycleConfig
    del vm.advocate_value_threshold_
    assert list(policy_stages(m, h, T0, value_model=vm)) == ["retained", "advocate"]
    cfg = LifecycleConfig(advocate_value_threshold=100.0)
    assert policy_stages(m, h, T0, value_model=vm, lifecycle_config=cfg)[1] != "advocate"


def test_policy_settings_are_range_checked_and_returned_items_are_not_won_back():
    for name, params, words in [("favourites_winback", {"half_life_days": 0}, "half_life_days=0"),
                                ("favourites_winback", {"boost": -3}, "boost=-3"),
                                ("popular_diverse", {"mmr_lambda": 7}, "mmr_lambda=7"),
                                ("popular_diverse", {"k": -3}, "k=-3"),
                                ("cross_sell_value", {"gamma": 1e308}, "gamma=1e+308")]:
        with pytest.raises(DataError, match=re.escape(f"{name}: {words}")):
            make_policy(name, **params)
    m = FixedScorer(np.linspace(1, 0, 10))
    P, R = event_type_code("purchase"), event_type_code("return")
    only_returned = Sequences(items=[np.array([0, 0])], times=[(T0 - np.array([3, 2]) * DAY).astype(np.int64)],
                              event_types=[np.array([P, R])])           # bought item 0 and returned it
    top, _ = apply_policy("favourites_winback", m, only_returned, k=3, as_of=T0)
    assert 0 not in top[0] and list(top[0]) == [1, 2, 3]


def test_policy_score_fn_plain_matches_model_in_evaluate():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(4, 50)).astype(np.float32)

    class PerUser(FixedScorer):
        def score(self, h):
            return torch.as_tensor(s[[int(u[1:]) for u in h.user_ids]])

    m = PerUser(s[0])
    h = seqs([[1, 2], [3], [4, 5], [6]])
    task = EvalTask(inputs=h, targets=[np.array([7]), np.array([int(np.argmax(s[1]))]), np.array([9, 10]),
                                       np.array([11])], exclude=[x for x in h.items])
    ref = evaluate(m.score, task, 50, ks=(10, 20))
    got = evaluate(policy_score_fn("plain", m, 50, n_candidates=30), task, 50, ks=(10, 20))
    for key in ("ndcg@10", "ndcg@20", "hr@20", "recall@20"):
        assert got[key] == pytest.approx(ref[key])


def test_value_aware_per_user_item_value_function():
    s = np.zeros(4)  # equal relevance: the item value alone decides at w = 1
    m = FixedScorer(s, price=np.ones(4))
    h = seqs([[0], [1]])
    per_user = lambda hist: np.array([[1, 2, 3, 4] if x[0] == 0 else [4, 3, 2, 1] for x in hist.items], float)  # noqa: E731
    top, _ = apply_policy("value_aware", m, h, k=4, exclude=None, item_value=per_user, params={"w": 1.0})
    assert list(top[0]) == [3, 2, 1, 0] and list(top[1]) == [0, 1, 2, 3]


def test_model_item_vectors_reads_transformer_item_table_and_methods():
    from types import SimpleNamespace

    from valuerec.policies.rerank import model_item_vectors
    table = torch.nn.Embedding(5, 3)
    fake = SimpleNamespace(module_=SimpleNamespace(encoder=SimpleNamespace(item_table=lambda: table.weight)))
    np.testing.assert_allclose(model_item_vectors(fake), table.weight.detach().numpy())
    other = SimpleNamespace(item_embeddings=lambda: np.eye(2))
    np.testing.assert_allclose(model_item_vectors(other), np.eye(2))
    assert model_item_vectors(FixedScorer([1.0, 2.0])) is None


@pytest.mark.parametrize("name", ["plain", "value_aware", "popular_diverse", "favourites_winback",
                                  "cross_sell_value", "stage"])
def test_apply_policy_returns_k_items_beyond_the_default_candidate_pool(name):
    """k above the default 100 candidates: the pool grows to k, so k items come back (was ~100; 100
    plus the user's past items for favourites_winback) while the catalogue has them."""
    n = 300
    m = FixedScorer(np.linspace(1, 0, n), price=np.arange(1, n + 1, dtype=float))
    h = seqs([[0, 5, 7], [250]], days_ago=[[3, 2, 1], [400]])
    top, sc = apply_policy(name, m, h, k=150, as_of=T0)
    assert top.shape == (2, 150)
    for row, hist in zip(top, h.items):
        assert (row >= 0).all() and len(set(row)) == 150
        if name not in ("favourites_winback", "stage"):   # those may recommend past items
            assert not np.isin(row, hist).any()
    top, sc = apply_policy(name, m, h, k=n, as_of=T0)   # the whole catalogue, less what is excluded
    # stage: the recent user's stage (plain) leaves their 3 items out, the lapsed one's (favourites) not
    left = {"favourites_winback": [n, n], "stage": [n - 3, n]}.get(name, [n - 3, n - 1])
    assert list((top >= 0).sum(axis=1)) == left
    # padding scores -inf, as a model's recommend pads; real items keep finite scores
    assert np.isneginf(sc[top < 0]).all() and np.isfinite(sc[top >= 0]).all()


def test_as_of_takes_timestamps_and_arguments_are_checked():
    """as_of may be a Timestamp, datetime64 or ISO string as well as unix seconds (a Timestamp was a
    TypeError from float()); k < 1, an exclude list of the wrong length or of item ids are DataErrors."""
    import pandas as pd

    m = FixedScorer(np.linspace(1, 0, 10), price=np.arange(1, 11, dtype=float))
    vm = LinearValue(np.arange(10, dtype=float))
    h = seqs([[1, 2], [3]], days_ago=[[5, 1], [2]])
    ref, _ = apply_policy("value_uplift", m, h, k=3, as_of=T0, value_model=vm)
    for as_of in (pd.Timestamp(T0, unit="s"), pd.Timestamp(T0, unit="s", tz="UTC").tz_convert("Asia/Tokyo"),
                  np.datetime64(T0, "s"), pd.Timestamp(T0, unit="s").isoformat(), [T0, T0]):
        got, _ = apply_policy("value_uplift", m, h, k=3, as_of=as_of, value_model=vm)
        assert np.array_equal(got, ref), as_of
    for as_of, words in ((T0 * 1000, "milliseconds"), ([T0, T0, T0], "3 values for 2 histories"),
                         ("next tuesday", "not a time"), (float("nan"), "not finite")):
        with pytest.raises(DataError, match=words):
            apply_policy("value_uplift", m, h, k=3, as_of=as_of, value_model=vm)
    with pytest.raises(DataError, match="k=0"):
        apply_policy("plain", m, h, k=0)
    from valuerec.models.base import apply_exclusions
    with pytest.raises(DataError, match="exclude has 1 entries for 2 histories"):
        apply_exclusions(m.score(h), [np.array([1])])
    with pytest.raises(DataError, match="not catalogue indices"):
        apply_exclusions(m.score(h), [np.array(["i1"]), np.array([], dtype=np.int64)])
