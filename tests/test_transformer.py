"""The behaviour transformer: shapes, causality, padding, persistence, and the loss fast paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.schema import DataError
from valuerec.models import MODEL_REGISTRY, load_model
from valuerec.models.transformer import (
    BehaviourModel, BehaviourTransformer, TransformerConfig, collate, prepare_history,
    sampled_softmax_loss, time_gap_bucket,
)

N_ITEMS = 25
TINY = dict(d_model=16, n_layers=2, n_heads=2, max_len=8, dropout=0.0, epochs=2, batch_size=16,
            progress=False, warmup_steps=0)


def catalogue(n=N_ITEMS, attributes=True) -> Catalogue:
    attrs = [[f"brand{i % 3}", f"cat{i % 5}"] if i % 4 else None for i in range(n)] if attributes else None
    return Catalogue(item_ids=np.array([f"i{i}" for i in range(n)], dtype=object), attributes=attrs)


def sequences(n_users=40, seed=0, n=N_ITEMS) -> Sequences:
    rng = np.random.default_rng(seed)
    items, times, types = [], [], []
    for _ in range(n_users):
        L = int(rng.integers(2, 14))
        items.append(rng.integers(0, n, L).astype(np.int64))
        times.append(np.cumsum(rng.integers(1, 10_000, L)).astype(np.int64))
        types.append(rng.integers(0, 4, L).astype(np.int64))
    return Sequences(items=items, times=times, event_types=types)


@pytest.fixture(scope="module")
def fitted() -> BehaviourTransformer:
    torch.manual_seed(0)
    return BehaviourTransformer(seed=1, **TINY).fit(sequences(), catalogue())


def module(**kw) -> BehaviourModel:
    cfg = TransformerConfig(**{**dict(d_model=16, n_layers=2, n_heads=2, max_len=8, dropout=0.0), **kw},
                            n_items=N_ITEMS)
    torch.manual_seed(0)
    return BehaviourModel(cfg).eval()


def batch_of(seqs: Sequences, max_len=8, with_targets=False, as_of=None):
    hs = [prepare_history(seqs.items[u], seqs.times[u], seqs.event_types[u], None, N_ITEMS, 32)
          for u in range(len(seqs))]
    return collate(hs, max_len, with_targets=with_targets, as_of=as_of)


def test_registered_and_config_rejects_unknown_keys():
    assert MODEL_REGISTRY["transformer"] is BehaviourTransformer
    with pytest.raises(DataError, match="unknown config key"):
        BehaviourTransformer(d_modle=32)
    with pytest.raises(DataError, match="divisible"):
        BehaviourTransformer(d_model=30, n_heads=4)
    with pytest.raises(DataError, match="loss"):
        BehaviourTransformer(loss="bce")


def test_shapes():
    m = module()
    b = batch_of(sequences(5), with_targets=True)
    h = m.encode(b)
    assert h.shape == (5, b.items.shape[1], 16)
    losses = m.train()(b)
    assert set(losses) == {"next_item"} and losses["next_item"].ndim == 0
    assert torch.isfinite(losses["next_item"])
    assert m.encoder.item_table().shape == (N_ITEMS, 16)


def test_time_gap_buckets():
    g = np.array([-1, 0, 1, 3600, 86_400, 90 * 86_400, 1e12])
    b = time_gap_bucket(g, 32)
    assert list(b[:6]) == [0, 1, 2, 12, 17, 23] and b[6] == 31
    assert torch.equal(time_gap_bucket(torch.tensor(g), 32), torch.from_numpy(b))


def test_causality_future_events_never_change_earlier_outputs():
    m = module()
    seqs = sequences(1, seed=3)
    while len(seqs.items[0]) < 6:
        seqs = Sequences(items=[np.concatenate([seqs.items[0]] * 2)], times=[np.arange(2 * len(seqs.items[0]))],
                         event_types=[np.concatenate([seqs.event_types[0]] * 2)])
    n = min(len(seqs.items[0]), 8)
    j = n - 2
    other = Sequences(items=[seqs.items[0].copy()], times=[seqs.times[0].copy()],
                      event_types=[seqs.event_types[0].copy()])
    other.items[0][-n + j] = (other.items[0][-n + j] + 1) % N_ITEMS      # change event j ...
    other.event_types[0][-n + j] = 5
    h1, h2 = m.encode(batch_of(seqs)), m.encode(batch_of(other))
    assert torch.allclose(h1[0, :j], h2[0, :j], atol=1e-6)                # ... positions before j: unchanged
    assert not torch.allclose(h1[0, j:n], h2[0, j:n], atol=1e-4)          # at and after j: changed


def test_padding_invariance_and_batch_equals_single(fitted):
    seqs = sequences(12, seed=5)
    together = fitted.score(seqs)
    alone = torch.cat([fitted.score(seqs.subset([u])) for u in range(len(seqs))])
    assert torch.allclose(together, alone, atol=1e-5)
    # the same history padded to different widths gives the same outputs at its real positions
    m = fitted.module_
    short = seqs.subset([int(np.argmin(seqs.lengths()))])
    long = seqs.subset([int(np.argmax(seqs.lengths()))])
    n = len(short.items[0])
    h_alone = m.encode(batch_of(short))
    both = Sequences(items=[short.items[0], long.items[0]], times=[short.times[0], long.times[0]],
                     event_types=[short.event_types[0], long.event_types[0]])
    h_batch = m.encode(batch_of(both))
    assert h_batch.shape[1] > n
    assert torch.allclose(h_alone[0, :n], h_batch[0, :n], atol=1e-5)


def test_unknown_items_dropped_and_long_histories_truncated(fitted):
    s = sequences(1, seed=9)
    noisy = Sequences(items=[np.concatenate([[-1], s.items[0], [N_ITEMS + 3]])],
                      times=[np.concatenate([[0], s.times[0], [s.times[0][-1] + 1]])],
                      event_types=[np.concatenate([[0], s.event_types[0], [0]])])
    assert torch.allclose(fitted.score(s), fitted.score(noisy), atol=1e-6)
    long = Sequences(items=[np.arange(20) % N_ITEMS], times=[np.arange(20) * 60], event_types=[np.zeros(20, np.int64)])
    last = Sequences(items=[long.items[0][-8:]], times=[long.times[0][-8:]], event_types=[long.event_types[0][-8:]])
    # the kept window's first event has no previous event in the window: compare through the model arrays
    h_long = prepare_history(long.items[0], long.times[0], long.event_types[0], None, N_ITEMS, 32)
    assert len(collate([h_long], 8, with_targets=False).items[0]) == 8
    assert fitted.score(long).shape == (1, N_ITEMS)
    assert torch.equal(collate([h_long], 8, with_targets=False).items[0], torch.from_numpy(last.items[0]))


def test_empty_history_gets_popularity(fitted):
    empty = Sequences(items=[np.zeros(0, np.int64)], times=[np.zeros(0, np.int64)], event_types=[np.zeros(0, np.int64)])
    sc = fitted.score(empty)[0]
    counts = np.bincount(np.concatenate([s[:] for s in sequences().items]), minlength=N_ITEMS)
    assert torch.allclose(sc, torch.from_numpy(np.log1p(counts).astype(np.float32)))


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert isinstance(again, BehaviourTransformer)
    seqs = sequences(7, seed=11)
    assert torch.equal(fitted.score(seqs), again.score(seqs))
    assert again.config() == fitted.config()
    assert (tmp_path / "m" / "metrics.json").exists() and len(again.history_) == TINY["epochs"]


def test_sampled_softmax_with_all_items_equals_full_ce():
    torch.manual_seed(0)
    m = module(loss="sampled", negatives="uniform", n_negatives=10_000)
    b = batch_of(sequences(6), with_targets=True)
    h = m.encode(b)
    y = b.targets[b.targets >= 0]
    hs = h[b.targets >= 0]
    table = m.encoder.item_table
    # reference: full softmax
    h1 = hs.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(h1 @ table().T, y)
    ref.backward()
    # fast path: candidates = every item, log Q = 0
    h2 = hs.detach().clone().requires_grad_(True)
    cands, log_q, log_q_pos = m.next_item.sample_negatives(y)
    fast = sampled_softmax_loss(h2, y, cands, log_q, log_q_pos, table)
    fast.backward()
    assert torch.allclose(ref, fast, atol=1e-5)
    assert torch.allclose(h1.grad, h2.grad, atol=1e-6)
    # and the model's own loss path takes it
    assert torch.allclose(m.next_item.loss(h, b.targets, table), ref, atol=1e-5)


def test_sampled_softmax_log_q_correction_is_exact_for_uniform_shift():
    """A constant log-Q shifts every logit equally: the loss must not change."""
    m = module()
    b = batch_of(sequences(4), with_targets=True)
    h = m.encode(b)[b.targets >= 0]
    y = b.targets[b.targets >= 0]
    cands = torch.arange(N_ITEMS)
    a = sampled_softmax_loss(h, y, cands, torch.zeros(N_ITEMS), torch.zeros(len(y)), m.encoder.item_table)
    c = sampled_softmax_loss(h, y, cands, torch.full((N_ITEMS,), 2.5), torch.full((len(y),), 2.5),
                             m.encoder.item_table)
    assert torch.allclose(a, c, atol=1e-5)


@pytest.mark.parametrize("negatives", ["in-batch", "uniform", "popularity"])
def test_sampled_training_runs(negatives):
    model = BehaviourTransformer(seed=0, **{**TINY, "epochs": 1}, loss="sampled", negatives=negatives, n_negatives=8)
    model.fit(sequences(), catalogue())
    assert np.isfinite(model.history_[0]["train_loss"])


def test_query_token_encodes_recency_without_touching_the_history():
    m = module()
    seqs = sequences(3, seed=2)
    last = np.array([t[-1] for t in seqs.times], dtype=np.float64)
    b0 = batch_of(seqs)
    b_day = batch_of(seqs, as_of=last + 86_400)
    b_year = batch_of(seqs, as_of=last + 365 * 86_400)
    h0, h_day = m.encode(b0), m.encode(b_day)
    T = b0.items.shape[1]
    assert h_day.shape[1] == T + 1
    for u in range(3):          # the events' outputs do not see the query token (causal)
        n = int(b0.lengths[u])
        assert torch.allclose(h0[u, :n], h_day[u, :n], atol=1e-6)
    s_day, s_year = m.state(b_day), m.state(b_year)
    assert s_day.shape == (3, 16)
    assert not torch.allclose(s_day, s_year, atol=1e-4)   # recency changes the state


def test_cold_item_with_attributes_has_a_content_vector(fitted):
    table = fitted.module_.encoder.item_table
    assert table.attr_emb is not None and fitted.model_config.n_attributes == 8
    # item 1 has attributes, item 4 has none: without the id part, only item 1 keeps a vector
    with torch.no_grad():
        attr_part = table(torch.tensor([1, 4])) - table.id_emb(torch.tensor([1, 4]))
    assert attr_part[0].abs().sum() > 0 and attr_part[1].abs().sum() == 0


def test_add_items_then_save_load(fitted, tmp_path):
    import copy
    model = copy.deepcopy(fitted)
    seqs = sequences(3, seed=4)
    before = model.score(seqs)
    new = Catalogue(item_ids=np.array(["i1", "new-a", "new-b"], dtype=object),
                    attributes=[["brand1"], ["brand1", "cat2", "unseen-attr"], None])
    model.add_items(new)
    assert model.n_items == N_ITEMS + 2
    after = model.score(seqs)
    assert torch.allclose(after[:, :N_ITEMS], before, atol=1e-5)
    table = model.module_.encoder.item_table
    with torch.no_grad():
        vec = table(torch.tensor([N_ITEMS, N_ITEMS + 1]))
    assert vec[0].abs().sum() > 0 and vec[1].abs().sum() == 0     # known attributes give a vector
    model.save(tmp_path / "m2")
    again = load_model(tmp_path / "m2")
    assert torch.equal(again.score(seqs), after)


def test_repeat_term_counts_the_visible_history_and_is_causal():
    """The repeat term's training counts at position t are the counts of events 0..t (never later
    ones), and scoring adds g(state) * log1p(count) for exactly the items in the history."""
    from valuerec.models.transformer import prefix_counts

    items = torch.tensor([[2, 3, 2, 0], [1, 1, 1, 1]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    c = prefix_counts(items, mask, 5)
    assert c[0, 0].tolist() == [0, 0, 1, 0, 0] and c[0, 2].tolist() == [0, 0, 2, 1, 0]
    assert c[0, 3].tolist() == c[0, 2].tolist()            # padding adds nothing
    assert c[1, :, 1].tolist() == [1, 2, 3, 4]
    seqs = Sequences(items=[np.array([0, 1, 1, 2]), np.array([3, 4])])
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(6)], dtype=object))
    # max_len=2: the encoder sees two events, the repeat term still counts the whole history
    m = BehaviourTransformer(d_model=16, n_layers=1, max_len=2, epochs=1, repeat=True, progress=False).fit(seqs, cat)
    gate = m.module_.next_item.repeat_gate
    with torch.no_grad():
        plain = m.score(seqs)
        gate.weight.zero_()
        gate.bias.fill_(2.0)
        boosted = m.score(seqs)
        gate.bias.fill_(0.0)
        base = m.score(seqs)
    diff = boosted - base
    expect = torch.zeros(2, 6)
    expect[0, [0, 1, 2]] = torch.log1p(torch.tensor([1.0, 2.0, 1.0])) * 2
    expect[1, [3, 4]] = torch.log1p(torch.tensor([1.0, 1.0])) * 2
    assert torch.allclose(diff, expect, atol=1e-5)
    assert plain.shape == (2, 6)
    # training windows carry the events before them, and collate adds them to the counts
    from valuerec.models.transformer import collate, prepare_history, training_windows
    h = prepare_history(np.array([0, 1, 1, 2, 3, 1]), None, None, None, 6, 8)
    wins = training_windows(h, 2, True)
    assert [list(w["items"]) for w in wins] == [[2, 3, 1], [1, 1, 2], [0, 1]]
    assert [list(w["prior_items"]) for w in wins] == [[0, 1, 1], [0], []]
    b = collate(wins, 2, with_targets=True, count_items=6)
    assert b.prior_counts.tolist() == [[1, 2, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6]
    with pytest.raises(DataError, match="repeat=True needs loss='ce'"):
        BehaviourTransformer(repeat=True, loss="sampled")


def test_item_table_cache_follows_weight_changes():
    """The no-grad item table is reused while the weights stand still and recomputed after any
    in-place change (an optimiser step, a reload)."""
    seqs = Sequences(items=[np.array([0, 1, 2]), np.array([2, 3])])
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(5)], dtype=object))
    m = BehaviourTransformer(d_model=8, n_layers=1, epochs=1, progress=False).fit(seqs, cat)
    table = m.module_.encoder.item_table
    with torch.no_grad():
        a = table.table()
        assert table.table() is a
        table.id_emb.weight.add_(1.0)
        b = table.table()
    assert b is not a and torch.allclose(b, table().detach())
    assert torch.allclose(m.score(seqs), m.score(seqs))


def test_next_basket_targets_point_at_the_next_timestamp():
    """Each event's target is an item of the next basket (first later timestamp); a basket's events
    share out the next basket's items; the last basket has no target; never an earlier item."""
    from valuerec.models.transformer import next_basket_targets

    items = np.array([10, 11, 12, 20, 21, 30])
    times = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    assert next_basket_targets(items, times).tolist() == [20, 21, 20, 30, 30, -1]
    assert next_basket_targets(np.array([5]), np.array([1.0])).tolist() == [-1]
    with pytest.raises(DataError, match="target="):
        BehaviourTransformer(target="later")


def test_future_window_targets_take_turns_over_the_window():
    """target='window': each event targets an item bought strictly later and within the window;
    successive events cycle through the window's items; nothing in the window -> no target."""
    from valuerec.models.transformer import future_window_targets

    items = np.array([10, 11, 12, 20, 21, 30])
    times = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 300.0])
    assert future_window_targets(items, times, 10.0).tolist() == [20, 21, 20, -1, -1, -1]
    assert future_window_targets(items, times, 1000.0).tolist() == [20, 21, 30, 30, 30, -1]


def test_contrastive_loss_matches_its_reference_and_skips_same_target_negatives():
    """The InfoNCE of two views at each window's last target position, against a plain loop; windows
    with the same next item are no negatives; off by default, on in training only."""
    m = module(contrastive_weight=0.5, contrastive_temperature=0.5)
    g = torch.Generator().manual_seed(0)
    h1, h2 = torch.randn(4, 5, 16, generator=g), torch.randn(4, 5, 16, generator=g)
    targets = torch.tensor([[1, -1, 3, -1, -1], [4, 5, 6, 7, 8], [-1, -1, -1, -1, -1], [9, 9, 7, 8, -1]])
    last = {0: 2, 1: 4, 3: 3}                                    # row 2 has no target: left out
    z1 = {b: F.normalize(h1[b, t], dim=0) for b, t in last.items()}
    z2 = {b: F.normalize(h2[b, t], dim=0) for b, t in last.items()}
    y = {b: int(targets[b, t]) for b, t in last.items()}        # rows 1 and 3 both end on item 8
    terms = []
    for a, za, zb in ((1, z1, z2), (2, z2, z1)):
        for b in last:
            negs = [c for c in last if c == b or y[c] != y[b]]
            logits = torch.stack([za[b] @ zb[c] / 0.5 for c in negs])
            terms.append(-(logits[negs.index(b)] - torch.logsumexp(logits, 0)) / len(last))
    want = 0.5 * sum(terms)
    assert m.contrastive_loss(h1, h2, targets).item() == pytest.approx(want.item(), rel=1e-5)
    # identical views with distinct targets: the loss is far below that of unrelated views
    same = m.contrastive_loss(h1, h1, torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]]))
    assert same < m.contrastive_loss(h1, h2, torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]]))
    seqs = sequences(8)
    b = batch_of(seqs, with_targets=True)
    assert "contrastive" not in m(b)                             # eval mode: no second view
    m.train()
    assert "contrastive" in m(b) and "contrastive" not in module().train()(b)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):     # the logits stay in float32
        assert m.contrastive_loss(h1, h2, targets).dtype == torch.float32
        assert m.contrastive_loss(h1, h2, targets).item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(DataError, match="contrastive"):
        TransformerConfig(contrastive_temperature=0.0)
    model = BehaviourTransformer(seed=0, **{**TINY, "dropout": 0.2, "contrastive_weight": 0.3}).fit(seqs, catalogue())
    assert torch.isfinite(model.score(seqs)).all()


def test_fit_is_seeded_and_leaves_the_callers_random_generators_alone():
    """fit seeds Python's, numpy's and torch's global generators from its own seed (two fits agree),
    and gives the caller's states back: a notebook's later draws were tied to the model's seed."""
    import random

    seqs, cat = sequences(n_users=20), catalogue()
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    expected = (np.random.rand(), random.random(), torch.rand(1).item())
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    kw = dict(d_model=16, n_layers=1, max_len=8, epochs=1, batch_size=8, progress=False, use_text=False)
    a = BehaviourTransformer(seed=5, **kw).fit(seqs, cat)
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == expected
    b = BehaviourTransformer(seed=5, **kw).fit(seqs, cat)
    assert torch.equal(a.score(seqs), b.score(seqs))
