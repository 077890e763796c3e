"""The transformer's co-occurrence prior: weight chosen on validation, exact scoring, persistence,
and the shared-pass evaluation it is chosen with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.schema import DataError
from valuerec.data.splits import EvalTask
from valuerec.evaluation.metrics import evaluate, evaluate_variants
from valuerec.models import load_model
from valuerec.models.itemknn import ItemKNN
from valuerec.models.transformer import COOC_FLOOR, COOC_REPEAT_SHARES, COOC_WEIGHTS, BehaviourTransformer

N = 30
TINY = dict(d_model=16, n_layers=1, n_heads=1, max_len=8, dropout=0.0, epochs=1, batch_size=32,
            progress=False, warmup_steps=0)


def paired_sequences(n_users: int, seed: int) -> tuple[Sequences, EvalTask]:
    """Items come in pairs (2k, 2k+1) that are always bought one after the other; the validation
    target is the partner of the last input item, which item-item co-occurrence finds at once."""
    rng = np.random.default_rng(seed)
    items, inputs, targets = [], [], []
    for _ in range(n_users):
        pairs = rng.choice(N // 2, size=int(rng.integers(2, 5)), replace=False)
        seq = np.concatenate([[2 * p, 2 * p + 1] for p in pairs]).astype(np.int64)
        items.append(seq)
        inputs.append(seq[:-1])
        targets.append(seq[-1:])
    t = [np.arange(len(s), dtype=np.int64) * 1000 for s in items]
    ty = [np.zeros(len(s), np.int64) for s in items]
    train = Sequences(items=[s[:-1] for s in items], times=[x[:-1] for x in t], event_types=[x[:-1] for x in ty])
    valid = EvalTask(inputs=Sequences(items=inputs, times=[x[:-1] for x in t], event_types=[x[:-1] for x in ty]),
                     targets=targets, exclude=[s.copy() for s in inputs])
    return train, valid


def catalogue() -> Catalogue:
    return Catalogue(item_ids=np.array([f"i{i}" for i in range(N)], dtype=object))


@pytest.fixture(scope="module")
def fitted():
    train, valid = paired_sequences(120, seed=0)
    torch.manual_seed(0)
    return BehaviourTransformer(seed=0, cooc_weight="auto", **TINY).fit(train, catalogue(), valid=valid), train, valid


def test_config_rejects_bad_weights():
    with pytest.raises(DataError, match="cooc_weight"):
        BehaviourTransformer(cooc_weight="often")
    with pytest.raises(DataError, match="cooc_weight"):
        BehaviourTransformer(cooc_weight=-0.5)
    with pytest.raises(DataError, match="cooc_repeat_share"):
        BehaviourTransformer(cooc_weight=1.0, cooc_repeat_share=1.5)
    with pytest.raises(DataError, match="cooc_repeat_share"):
        BehaviourTransformer(cooc_repeat_share="auto")          # no prior to share
    with pytest.raises(DataError, match="cooc_neighbours"):
        BehaviourTransformer(cooc_neighbours=0)


def test_auto_needs_validation():
    train, _ = paired_sequences(30, seed=1)
    with pytest.raises(DataError, match="validation"):
        BehaviourTransformer(seed=0, cooc_weight="auto", **TINY).fit(train, catalogue())


def test_weight_is_chosen_on_validation_and_helps(fitted):
    model, _, valid = fitted
    sel = model.cooc_selection_
    assert set(sel["curve"]) == {f"w={w:g},repeat_share=0" for w in COOC_WEIGHTS}
    best = max(v["ndcg@10"] for v in sel["curve"].values())
    chosen = sel["chosen"]["cooc_weight"]
    assert chosen == model.model_config.cooc_weight and model.model_config.cooc_repeat_share == 0.0
    assert sel["curve"][f"w={chosen:g},repeat_share=0"]["ndcg@10"] == best
    # pairs are pure co-occurrence: one epoch of a tiny transformer does not find them, the prior does
    assert chosen > 0 and best > sel["curve"]["w=0,repeat_share=0"]["ndcg@10"] + 0.05
    # the chosen model scores validation exactly as the selection pass measured it
    again = evaluate(model.score, valid, N, ks=(10, 20))
    assert again["ndcg@10"] == pytest.approx(best, abs=1e-9)


def test_scores_equal_the_plain_formula(fitted):
    model, train, valid = fitted
    h = valid.inputs.subset(np.arange(10))
    net, empty = model._model_scores(h)
    assert not empty.any()
    knn = ItemKNN(neighbours=model.model_config.cooc_neighbours,
                  recency_decay=model.model_config.cooc_recency_decay).fit(train, catalogue())
    k = knn.score(h).double()
    ref = torch.log_softmax(net.double(), 1) + model.model_config.cooc_weight * torch.log(
        k / k.sum(1, keepdim=True) + COOC_FLOOR)
    assert torch.allclose(model.score(h).double(), ref, atol=1e-4)
    # the ablation is the network alone
    assert torch.equal(model.ablation_score_fns()["no_cooc_prior"](h), net)


def test_save_load_and_new_items(fitted, tmp_path):
    model, _, valid = fitted
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    h = valid.inputs
    assert torch.equal(model.score(h), again.score(h))
    assert again.cooc_selection_ == model.cooc_selection_
    (tmp_path / "m" / "cooc_sim.npz").unlink()
    with pytest.raises(DataError, match="cooc_sim.npz"):
        load_model(tmp_path / "m")
    # a new item joins the catalogue with no co-occurrences: old items' scores move only by the
    # network's softmax normaliser, and the new item gets the floor prior
    again.add_items(Catalogue(item_ids=np.array(["new"], dtype=object)))
    sc = again.score(h.subset(np.arange(3)))
    assert sc.shape == (3, N + 1) and torch.isfinite(sc).all()


def test_zero_weight_is_the_plain_network():
    train, valid = paired_sequences(40, seed=2)
    m = BehaviourTransformer(seed=0, cooc_weight=0.0, **TINY).fit(train, catalogue(), valid=valid)
    assert m.cooc_sim_ is None and m.ablation_score_fns() == {}
    net, _ = m._model_scores(valid.inputs)
    assert torch.equal(m.score(valid.inputs), net)


def test_evaluate_variants_equals_separate_evaluations():
    _, valid = paired_sequences(50, seed=3)
    rng = torch.Generator().manual_seed(0)
    base = torch.randn(len(valid), N, generator=rng)
    row = {id(x): i for i, x in enumerate(valid.inputs.items)}

    def parts(inputs):
        return base[[row[id(x)] for x in inputs.items]]

    out = evaluate_variants(parts, {"a": None, "b": lambda s: -s}, valid, N, batch_size=16)
    a = evaluate(parts, valid, N, batch_size=16)
    b = evaluate(lambda h: -parts(h), valid, N, batch_size=16)
    for m in ("ndcg@10", "hr@10", "mrr", "coverage@10"):
        assert out["a"][m] == a[m] and out["b"][m] == b[m]
    assert out["a"]["ndcg@10"] != out["b"]["ndcg@10"]


def test_repeat_share_grid_and_formula():
    """Without exclusion a history's own items are candidates: the prior mixes kNN and own counts."""
    train, valid = paired_sequences(80, seed=4)
    valid = EvalTask(inputs=valid.inputs, targets=[s[-1:] for s in valid.inputs.items])   # buy again
    m = BehaviourTransformer(seed=0, cooc_weight="auto", cooc_repeat_share="auto", **TINY).fit(
        train, catalogue(), valid=valid)
    sel = m.cooc_selection_
    assert len(sel["curve"]) == 1 + (len(COOC_WEIGHTS) - 1) * len(COOC_REPEAT_SHARES)
    # the target is the last item itself: only the own-count share can find it
    assert sel["chosen"]["cooc_weight"] > 0 and sel["chosen"]["cooc_repeat_share"] > 0
    cfg = m.model_config
    h = valid.inputs.subset(np.arange(6))
    net, _ = m._model_scores(h)
    knn = ItemKNN(neighbours=cfg.cooc_neighbours, recency_decay=cfg.cooc_recency_decay).fit(train, catalogue())
    k = knn.score(h).double()
    own = torch.zeros(6, N, dtype=torch.float64)
    for i, s in enumerate(h.items):
        for j, it in enumerate(s):
            own[i, it] += cfg.cooc_recency_decay ** (len(s) - 1 - j)
    a = cfg.cooc_repeat_share
    q = (1 - a) * k / k.sum(1, keepdim=True) + a * own / own.sum(1, keepdim=True)
    ref = torch.log_softmax(net.double(), 1) + cfg.cooc_weight * torch.log(q + COOC_FLOOR)
    assert torch.allclose(m.score(h).double(), ref, atol=1e-4)


def test_benchmark_refit_keeps_the_validation_choice_and_reports_the_ablation():
    """A refit on train_full has no validation data: the prior's weight chosen by the selection fit is
    carried into it, and the result reports the same model without the prior beside it."""
    from valuerec.data.splits import Split
    from valuerec.evaluation.protocols import ProtocolSpec, run_model
    train, valid = paired_sequences(80, seed=5)
    split = Split(catalogue=catalogue(), train=train, valid=valid, test=valid, train_full=train, info={})
    spec = ProtocolSpec(name="T", ks=(10,), coverage_k=10, metrics=["ndcg@10", "hr@10"], select_metric="ndcg@10",
                        refit_full=True)
    entry = run_model("transformer", split, spec, seeds=[0], params={**TINY, "cooc_weight": "auto"}, tune=False)
    inside = entry["validation"]["chosen_during_fit"]
    assert inside["cooc_weight"] > 0 and entry["params"]["cooc_weight"] == inside["cooc_weight"]
    assert set(entry["ablations"]) == {"no_cooc_prior"}
    assert entry["ablations"]["no_cooc_prior"]["ndcg@10"] < entry["metrics"]["ndcg@10"]
