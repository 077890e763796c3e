import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.schema import DataError
from valuerec.explain.gradients import attribution_agreement, gradient_x_input
from valuerec.explain.influence import (churn_target, delete_events, explain_events, faithfulness,
                                        greedy_deletion, item_target, occlusion, resolve_greedy_direction,
                                        value_target)

runner = CliRunner()


class BagOfItems:
    """Linear scorer: score(j | history) = sum over events of W[item_t, j]. Occlusion influence of
    event t on item j is exactly W[item_t, j]."""

    def __init__(self, W):
        self.W = torch.as_tensor(W, dtype=torch.float64)
        self.catalogue_ = Catalogue(item_ids=np.array([f"i{i}" for i in range(self.W.shape[0])], dtype=object),
                                    text=[f"item {i}" for i in range(self.W.shape[0])])

    def score(self, h):
        out = torch.zeros(len(h), self.W.shape[1], dtype=torch.float64)
        for u, x in enumerate(h.items):
            if len(x):
                out[u] = self.W[torch.as_tensor(x)].sum(0)
        return out


class LinearValue:
    """expected_value = a . (revenue of each event); churn = sigmoid(1 - 0.5 n_events)."""

    def __init__(self, a):
        self.a = a

    def predict_value(self, h, as_of):
        ev = np.array([self.a * float(v.sum()) for v in h.values])
        n = np.array([len(x) for x in h.items])
        return {"expected_value": ev, "churn_prob": 1 / (1 + np.exp(-(1 - 0.5 * n))),
                "p_buy": np.ones(len(h)), "lower": ev, "upper": ev}


def make_seqs(rng, n_users=4, n_items=12, lens=(5, 7, 1, 9)):
    items = [rng.integers(0, n_items, size=n).astype(np.int64) for n in lens[:n_users]]
    return Sequences(items=items, times=[np.arange(len(x), dtype=np.int64) * 86400 + 1_600_000_000 for x in items],
                     event_types=[np.full(len(x), 3, np.int64) for x in items],
                     values=[rng.uniform(1, 10, size=len(x)).astype(np.float32) for x in items],
                     user_ids=np.array([f"u{i}" for i in range(len(items))], dtype=object))


def test_occlusion_is_exact_on_bag_of_items():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(12, 12))
    m = BagOfItems(W)
    h = make_seqs(rng)
    targets = np.array([3, 5, 7, 0])
    full, infl = occlusion(item_target(m, targets), h, batch_size=4)  # small batches: chunking path
    for u in range(len(h)):
        assert full[u] == pytest.approx(W[h.items[u], targets[u]].sum())
        np.testing.assert_allclose(infl[u], W[h.items[u], targets[u]], atol=1e-12)


def test_occlusion_value_and_churn_targets():
    rng = np.random.default_rng(1)
    h = make_seqs(rng)
    vm = LinearValue(0.5)
    as_of = np.full(len(h), 1_700_000_000.0)
    _, infl = occlusion(value_target(vm, as_of), h)
    for u in range(len(h)):
        np.testing.assert_allclose(infl[u], 0.5 * h.values[u], rtol=1e-6)
    _, infl_c = occlusion(churn_target(vm, as_of), h, users=[1])
    n = len(h.items[1])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    assert np.allclose(infl_c[0], sig(1 - 0.5 * n) - sig(1 - 0.5 * (n - 1)))
    assert (infl_c[0] < 0).all()  # every event lowers churn


def test_explain_events_sorted_by_absolute_effect():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(12, 12))
    m = BagOfItems(W)
    h = make_seqs(rng).subset([3])
    _, infl = occlusion(item_target(m, 4), h)
    df = explain_events(h, infl[0], m.catalogue_, top=3)
    assert len(df) == 3
    assert list(df["effect"].abs()) == sorted(np.abs(infl[0]), reverse=True)[:3]
    r = df.iloc[0]
    assert r["item_id"] == f"i{r['item_index']}" and r["text"] == f"item {r['item_index']}"
    assert {"time", "event_type", "value"} <= set(df.columns)


def test_delete_events_removes_positions_in_all_arrays():
    rng = np.random.default_rng(3)
    h = make_seqs(rng).subset([1])
    d = delete_events(h, [np.array([0, 2])])
    keep = [i for i in range(len(h.items[0])) if i not in (0, 2)]
    assert (d.items[0] == h.items[0][keep]).all()
    assert (d.times[0] == h.times[0][keep]).all() and (d.values[0] == h.values[0][keep]).all()


def test_gradient_x_input_equals_occlusion_on_linear_model():
    torch.manual_seed(0)
    E = torch.randn(12, 8, dtype=torch.float64)      # item embeddings
    w = torch.randn(8, dtype=torch.float64)          # target = sum_t <w, e_t>
    rng = np.random.default_rng(4)
    h = make_seqs(rng, lens=(6, 6, 6, 6))

    class EmbedModel:
        catalogue_ = None

        def score(self, s):
            t = torch.stack([(E[torch.as_tensor(i, dtype=torch.long)] @ w).sum() for i in s.items])
            return t[:, None].expand(-1, 2)  # item 0's score is the target

    m = EmbedModel()
    _, occ = occlusion(item_target(m, 0), h)
    x = torch.stack([E[torch.as_tensor(i)] for i in h.items])                  # (B, T, D)
    g = gradient_x_input(lambda z: (z @ w).sum(1), x)                          # (B, T)
    for u in range(len(h)):
        np.testing.assert_allclose(g[u].numpy(), occ[u], atol=1e-10)
    agree = attribution_agreement(occ, [g[u].numpy() for u in range(len(h))])
    # Pearson is exactly 1; Spearman only near 1 because repeated items tie up to float noise.
    assert agree["pearson"] == pytest.approx(1.0) and agree["spearman"] > 0.95
    anti = attribution_agreement(occ, [-g[u].numpy() for u in range(len(h))])
    assert anti["pearson"] == pytest.approx(-1.0) and anti["top1_agreement"] == agree["top1_agreement"]


def test_faithfulness_top_beats_random_on_toy_model():
    rng = np.random.default_rng(5)
    n_items = 30
    W = np.zeros((n_items, 1))
    W[:, 0] = rng.exponential(size=n_items)          # all influences positive
    W[:3, 0] = 50.0                                  # three dominant items
    m = BagOfItems(W)
    items = [np.concatenate([[0, 1, 2], rng.integers(3, n_items, size=7)]) for _ in range(6)]
    for x in items:
        rng.shuffle(x)
    h = Sequences(items=[x.astype(np.int64) for x in items])
    res = faithfulness(item_target(m, 0), h, k=3, n_random=20, seed=0)
    assert res.users == 6
    assert res.top == pytest.approx(150.0)           # exactly the three dominant weights
    assert res.top >= 2 * res.random
    d = res.as_dict()
    assert d["top3"] == pytest.approx(150.0) and d["ratio"] > 2 and d["share_users_top_gt_random"] == 1.0
    lo, hi = d["ratio_ci95"]
    assert lo <= d["ratio"] <= hi and lo > 1      # the top set moves it more than random for every user
    # the interval is a bootstrap over users: resampled means of the per-user figures
    boot = np.random.default_rng(0).integers(0, 6, size=(2000, 6))
    ratios = res.per_user_top[boot].mean(1) / res.per_user_random[boot].mean(1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ratios, [0.025, 0.975])))
    # users with too few events are skipped
    short = Sequences(items=[np.array([1, 2], np.int64)] + h.items)
    assert faithfulness(item_target(m, 0), short, k=3, n_random=2).users == 6


def test_faithfulness_supporting_rank_keeps_deletions_in_one_direction():
    """With opposing events, |influence| ranking deletes a supporter and an opposer together (they
    cancel); the 'supporting' ranking deletes the three supporters and moves the target most."""
    W = np.zeros((6, 1))
    W[:, 0] = [10.0, 9.0, 8.0, -9.5, -9.0, 0.1]      # three supporters, two opposers, one neutral
    m = BagOfItems(W)
    h = Sequences(items=[np.array([0, 1, 2, 3, 4, 5], np.int64)])
    by_abs = faithfulness(item_target(m, 0), h, k=3, n_random=5, seed=0)
    supporting = faithfulness(item_target(m, 0), h, k=3, n_random=5, seed=0, rank="supporting")
    assert by_abs.top == pytest.approx(abs(10.0 - 9.5 + 9.0))     # 10, -9.5, 9: partly cancelling
    assert supporting.top == pytest.approx(27.0)                   # 10 + 9 + 8
    assert supporting.random == by_abs.random                      # same random draws
    with pytest.raises(DataError, match="rank="):
        faithfulness(item_target(m, 0), h, rank="largest")


class PairBonus(BagOfItems):
    """BagOfItems on target 0 plus a bonus when items 0 and 1 are both in the history (they only count
    together): deleting either removes the bonus, so occlusion credits it to both."""

    def score(self, h):
        out = super().score(h)
        out[:, 0] += torch.tensor([5.0 * (0 in x and 1 in x) for x in h.items], dtype=torch.float64)
        return out


def test_greedy_deletion_matches_occlusion_when_effects_add_up():
    W = np.array([[4.0], [-2.0], [3.0], [0.5], [2.0]])
    m = BagOfItems(W)
    h = Sequences(items=[np.array([0, 1, 2, 3, 4], np.int64), np.array([3, 2], np.int64)])
    full, chosen, after = greedy_deletion(item_target(m, 0), h, k=3)
    assert full.tolist() == [7.5, 3.5]
    assert chosen[0].tolist() == [0, 2, 4]                       # 4, 3, 2: occlusion's supporting order
    np.testing.assert_allclose(after[0], [3.5, 0.5, -1.5])       # the target after each deletion
    assert chosen[1].tolist() == [1, 0] and after[1].tolist() == [0.5, 0.0]   # 2 events: both, in order
    _, chosen_abs, _ = greedy_deletion(item_target(m, 0), h, k=2, direction="abs")
    assert chosen_abs[0].tolist() == [0, 2]
    # Asked for all 5, the set stops where no deletion lowers the target any more (item 1, weight -2,
    # would raise it), or, either way, moves it no further from the full score (7.5 -> -2 -> 0).
    for direction in ("supporting", "abs"):
        _, full_k, _ = greedy_deletion(item_target(m, 0), h, k=5, direction=direction)
        _, stopped, after = greedy_deletion(item_target(m, 0), h, k=5, direction=direction, stop_without_gain=True)
        assert full_k[0].tolist() == [0, 2, 4, 3, 1] and stopped[0].tolist() == [0, 2, 4, 3]
        np.testing.assert_allclose(after[0], [3.5, 0.5, -1.5, -2.0])
        assert stopped[1].tolist() == [1, 0]           # user 2: both of its events lower the target
    with pytest.raises(DataError, match="direction="):
        greedy_deletion(item_target(m, 0), h, direction="largest")


def test_greedy_direction_abs_finds_the_events_that_hold_a_target_down():
    """A churn-like target: most events lower it (purchases keep a customer), one raises it a little.
    The supporting set can only delete what raised it, so it moves the target less than the set chosen
    either way; 'auto' picks that one for churn, and the supporting one for items and value."""
    W = np.array([[-3.0], [-2.5], [0.2], [-2.0], [-0.1]])
    m = BagOfItems(W)
    h = Sequences(items=[np.array([0, 1, 2, 3, 4], np.int64)])
    fn = item_target(m, 0)
    _, sup, _ = greedy_deletion(fn, h, k=3, direction="supporting")
    _, both, after = greedy_deletion(fn, h, k=3, direction="abs")
    assert sup[0][0] == 2 and both[0].tolist() == [0, 1, 3]
    np.testing.assert_allclose(after[0], [-4.4, -1.9, 0.1])      # full: -7.4
    moved = {d: faithfulness(fn, h, k=3, n_random=5, seed=0, orders=o).top for d, o in (("sup", sup), ("abs", both))}
    assert moved["abs"] == pytest.approx(7.5) and moved["sup"] < moved["abs"]
    assert resolve_greedy_direction("auto", "churn") == "abs"
    assert resolve_greedy_direction("auto", "value") == resolve_greedy_direction("auto", "item") == "supporting"
    assert resolve_greedy_direction("supporting", "churn") == "supporting"
    with pytest.raises(DataError, match="greedy direction 'up'"):
        resolve_greedy_direction("up", "churn")


def test_greedy_deletion_finds_a_set_occlusion_misses():
    """Items 0 and 1 earn a bonus of 5 only together. Occlusion gives each 1 + 5 and deletes both;
    the bonus is gone after the first, so the greedy set deletes item 2 and 3 instead, and moves the
    target further."""
    W = np.array([[1.0], [1.0], [3.0], [2.5], [0.1]])
    m = PairBonus(W)
    h = Sequences(items=[np.array([4, 0, 1, 2, 3], np.int64)])
    fn = item_target(m, 0)
    _, infl = occlusion(fn, h)
    assert infl[0].tolist() == pytest.approx([0.1, 6.0, 6.0, 3.0, 2.5])
    full, chosen, after = greedy_deletion(fn, h, k=3)
    assert chosen[0].tolist() == [1, 3, 4] and full[0] - after[0][-1] == pytest.approx(11.5)
    by_occlusion = faithfulness(fn, h, k=3, n_random=5, seed=0, influences=infl, rank="supporting")
    greedy = faithfulness(fn, h, k=3, n_random=5, seed=0, orders=chosen)
    assert by_occlusion.top == pytest.approx(1 + 1 + 5 + 3) and greedy.top == pytest.approx(11.5)
    assert greedy.random == by_occlusion.random
    with pytest.raises(DataError, match="2 orders for 1 users"):
        faithfulness(fn, h, orders=chosen * 2)


def test_transformer_gradient_attribution_aligned_with_history():
    tr = pytest.importorskip("valuerec.models.transformer")
    from valuerec.explain.gradients import transformer_gradient_x_input

    rng = np.random.default_rng(6)
    n_items = 15
    cat = Catalogue(item_ids=np.array([str(i) for i in range(n_items)], dtype=object))
    train = Sequences(items=[rng.integers(0, n_items, size=8).astype(np.int64) for _ in range(20)])
    m = tr.BehaviourTransformer(d_model=16, n_layers=1, max_len=6, dropout=0.0, use_text=False, epochs=1,
                                batch_size=8, progress=False, device="cpu", warmup_steps=1)
    m.fit(train, cat)
    h = Sequences(items=[np.array([1, -1, 2, 3, 4, 5, 6, 7, 8], np.int64), np.array([9, 10], np.int64)])
    attr = transformer_gradient_x_input(m, h, items=np.array([0, 1]))
    assert [len(a) for a in attr] == [9, 2]
    assert attr[0][1] == 0.0                          # unknown item: the model never sees it
    assert (attr[0][:2] == 0).all()                   # beyond max_len=6 of the 8 known events
    assert np.isfinite(attr[0]).all() and np.abs(attr[0][3:]).sum() > 0 and np.abs(attr[1]).sum() > 0
    # Reference: exact occlusion on the same model and targets correlates with the gradient.
    _, occ = occlusion(item_target(m, np.array([0, 1])), h)
    assert all(len(o) == len(a) for o, a in zip(occ, attr))


def test_occlusion_last_only_occludes_recent_events():
    rng = np.random.default_rng(7)
    W = rng.normal(size=(12, 12))
    m = BagOfItems(W)
    h = make_seqs(rng)
    full, infl = occlusion(item_target(m, 2), h, last=2)
    for u in range(len(h)):
        n = len(h.items[u])
        assert np.isnan(infl[u][:max(n - 2, 0)]).all()
        np.testing.assert_allclose(infl[u][max(n - 2, 0):], W[h.items[u][max(n - 2, 0):], 2], atol=1e-12)
        assert full[u] == pytest.approx(W[h.items[u], 2].sum())


# -- the command explain on a tiny store ----------------------------------------


def test_explain_command_lists_events_with_effects(cli_setup):
    tmp, store = cli_setup
    r = runner.invoke(app, ["explain", "--model", str(tmp / "pop"), "--store", str(store), "--user", "u1",
                            "--target", "item:i0", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["target"]["item_id"] == "i0" and d["events_total"] == 10
    # Popularity ignores the history: every event's effect is exactly 0.
    assert all(e["effect"] == 0.0 for e in d["events"])
    assert {"item_id", "text", "time", "effect"} <= set(d["events"][0])
    # u1 has bought all three items: nothing is recommended, so there is no default target
    r = runner.invoke(app, ["explain", "--model", str(tmp / "pop"), "--store", str(store), "--user", "u1"])
    assert r.exit_code == 2 and "every item of the model's catalogue is in their history" in " ".join(r.output.split())
    r = runner.invoke(app, ["explain", "--model", str(tmp / "pop"), "--store", str(store), "--user", "nobody"])
    assert r.exit_code == 2 and "no events" in r.output
    r = runner.invoke(app, ["explain", "--model", str(tmp / "pop"), "--store", str(store), "--user", "u1",
                            "--target", "value"])
    assert r.exit_code == 2 and "no value model" in r.output


def test_explain_command_greedy_set(cli_setup):
    tmp, store = cli_setup
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "itemknn", "--out", str(tmp / "knn")])
    assert r.exit_code == 0, r.output
    base = ["explain", "--model", str(tmp / "knn"), "--store", str(store), "--user", "u1", "--target", "item:i1"]
    r = runner.invoke(app, base + ["--greedy", "2", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    g = d["greedy"]
    assert g["k"] == 2 and len(g["events"]) == 2 and g["direction"] == "supporting"
    assert len({e["position"] for e in g["events"]}) == 2
    # each step's effect is the drop from the step before; together they are the set's effect
    assert g["events"][0]["target_after"] == pytest.approx(d["target"]["value"] - g["events"][0]["step_effect"])
    assert sum(e["step_effect"] for e in g["events"]) == pytest.approx(g["set_effect"])
    assert g["set_effect"] == pytest.approx(d["target"]["value"] - g["target_without_set"])
    # the first step is occlusion's most supporting event
    assert g["events"][0]["step_effect"] == pytest.approx(max(e["effect"] for e in d["events"]))
    assert "item_id" in g["events"][0] and "time" in g["events"][0]
    r = runner.invoke(app, base + ["--greedy", "2"])
    assert r.exit_code == 0 and "together lower it most" in r.output
    r = runner.invoke(app, base + ["--greedy", "2", "--greedy-direction", "abs", "--json"])
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)["greedy"]
    assert g["direction"] == "abs" and "either way" in g["method"]
    assert abs(g["events"][0]["step_effect"]) == pytest.approx(max(abs(e["effect"]) for e in d["events"]))
    assert "together move it most" in runner.invoke(app, base + ["--greedy", "2", "--greedy-direction", "abs"]).output
    # events older than --max-events get no effect: the table shows '-' for them (it used to crash)
    r = runner.invoke(app, base + ["--max-events", "2", "--top", "5"])
    assert r.exit_code == 0, r.output
    assert r.output.count(" - ") + r.output.count(" -\n") >= 1 and "Traceback" not in r.output
    r = runner.invoke(app, base + ["--greedy", "2", "--greedy-direction", "down"])
    assert r.exit_code == 2 and "greedy direction 'down'" in r.output
    assert "greedy" not in json.loads(runner.invoke(app, base + ["--json"]).stdout)


def test_item_target_and_explain_events_refuse_arguments_that_would_mislead():
    """An item id string, a negative or out-of-range index (negative ones wrapped to the catalogue's
    end) and top < 1 (top=0 returned every event, top=-1 all but one) are errors."""
    rng = np.random.default_rng(0)
    m, h = BagOfItems(rng.normal(size=(12, 12))), make_seqs(rng)
    with pytest.raises(DataError, match="catalogue indices"):
        item_target(m, "3")
    for bad in (-1, 12):
        with pytest.raises(DataError, match="outside the catalogue"):
            occlusion(item_target(m, bad), h.subset([0]))
    _, infl = occlusion(item_target(m, 0), h.subset([0]))
    assert len(explain_events(h.subset([0]), infl[0], top=None)) == len(h.items[0])
    assert len(explain_events(h.subset([0]), infl[0], top=2)) == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="expected an integer >= 1"):
            explain_events(h.subset([0]), infl[0], top=bad)


def test_occlusion_of_als_scores_full_and_edited_histories_alike():
    """ALS scores a history it was trained on with its learned user vector and any other by fold-in.
    Occlusion used to compare the learned vector (full history) with fold-ins (each edit), so every
    event's "influence" was mostly the gap between the two; now both are folded in."""
    from valuerec.models import ALS

    rng = np.random.default_rng(0)
    h = make_seqs(rng, n_users=4, n_items=12, lens=(6, 8, 5, 9))
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(12)], dtype=object))
    m = ALS(factors=4, iterations=5, seed=0).fit(h, cat)
    target = item_target(m, np.array([1, 2, 3, 4]))
    full, infl = occlusion(target, h)
    anon = Sequences(items=h.items, times=h.times, event_types=h.event_types, values=h.values)
    full_anon, infl_anon = occlusion(target, anon)
    np.testing.assert_allclose(full, full_anon, rtol=1e-5, atol=1e-6)
    for a, b in zip(infl, infl_anon):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the model's own ranking still uses the learned vectors for its trained users
    assert not np.allclose(m.score(h).numpy(), m.score(anon).numpy())


def test_deleting_the_only_event_is_scored_on_the_models_own_scale():
    """item-kNN ranks an empty history by popularity (for recommendations), but an explanation that
    deletes a user's only event must compare it on the model's own scale: the popularity fallback
    made the one event that caused a recommendation look like it worked against it."""
    from valuerec.models import ItemKNN

    rng = np.random.default_rng(1)
    train = make_seqs(rng, n_users=4, n_items=12, lens=(6, 8, 5, 9))
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(12)], dtype=object))
    m = ItemKNN(neighbours=5).fit(train, cat)
    one = Sequences(items=[train.items[0][:1]], times=[train.times[0][:1]], event_types=[train.event_types[0][:1]],
                    values=[train.values[0][:1]])
    top = m.recommend(one, k=1)[0][0]
    full, infl = occlusion(item_target(m, top), one)
    assert full[0] > 0 and infl[0][0] == pytest.approx(full[0])      # the whole score is that event's doing
    assert np.ptp(m.score(Sequences(items=[np.zeros(0, np.int64)])).numpy()) > 0   # recommend still falls back
