"""Full-ranking metrics against hand-computed cases, and fast paths against their plain references."""

import math

import numpy as np
import pytest
import torch

from valuerec.data.dataset import Sequences
from valuerec.data.splits import EvalTask
from valuerec.evaluation.metrics import (evaluate, ranking_metrics_from_ranks, target_ranks,
                                         target_ranks_reference, topk_mask, topk_mask_reference)


def task(targets, exclude=None, revenue=None, total=None):
    n = len(targets)
    return EvalTask(inputs=Sequences(items=[np.zeros(0, np.int64)] * n),
                    targets=[np.asarray(t, dtype=np.int64) for t in targets],
                    exclude=None if exclude is None else [np.asarray(e, dtype=np.int64) for e in exclude],
                    target_revenue=None if revenue is None else [np.asarray(r, float) for r in revenue],
                    total_revenue=None if total is None else np.asarray(total, float))


def fixed(scores):
    s = torch.tensor(scores, dtype=torch.float32)
    return lambda h: s[: len(h)] if len(h) == len(s) else s


def test_hr_ndcg_mrr_single_target():
    # Scores rank items 3 > 1 > 0 > 2 > 4. Target 0 is at rank 3.
    s = [[0.5, 0.8, 0.1, 0.9, 0.0]]
    r = evaluate(fixed(s), task([[0]]), 5, ks=(1, 3), coverage_k=1)
    assert r["hr@1"] == 0.0 and r["hr@3"] == 1.0
    assert r["ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert r["mrr"] == pytest.approx(1 / 3)
    assert r["coverage@1"] == pytest.approx(1 / 5)  # only item 3 is ever in a top-1 list


def test_ndcg_with_multiple_targets():
    # Targets {1, 2} at ranks 2 and 4 among items scored 3 > 1 > 0 > 2 > 4.
    s = [[0.5, 0.8, 0.1, 0.9, 0.0]]
    r = evaluate(fixed(s), task([[1, 2]]), 5, ks=(4, 2))
    dcg4 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert r["ndcg@4"] == pytest.approx(dcg4 / idcg)
    assert r["ndcg@2"] == pytest.approx((1 / math.log2(3)) / idcg)
    assert r["recall@2"] == pytest.approx(0.5) and r["recall@4"] == pytest.approx(1.0)
    assert r["hr@2"] == 1.0
    assert r["mrr"] == pytest.approx(0.5)  # best target rank 2


def test_recall_counts_unknown_targets_in_denominator():
    # Target -1 (an item first seen after the cutoff) can never be found but still counts.
    s = [[0.9, 0.1, 0.2]]
    r = evaluate(fixed(s), task([[0, -1]]), 3, ks=(1,))
    assert r["recall@1"] == pytest.approx(0.5)
    assert r["hr@1"] == 1.0
    idcg = 1 + 1 / math.log2(3)
    assert r["ndcg@1"] == pytest.approx(1.0)  # ideal at k=1 has one slot
    r3 = evaluate(fixed(s), task([[0, -1]]), 3, ks=(3,))
    assert r3["ndcg@3"] == pytest.approx(1.0 / idcg)


def test_revenue_share():
    # Holdout spend 100: 30 on item 0 (rank 1), 50 on item 2 (rank 3), 20 on an unknown item.
    s = [[0.9, 0.5, 0.1]]
    t = task([[0, 2, -1]], revenue=[[30.0, 50.0, 20.0]], total=[100.0])
    assert evaluate(fixed(s), t, 3, ks=(1,))["revenue@1"] == pytest.approx(0.30)
    assert evaluate(fixed(s), t, 3, ks=(3,))["revenue@3"] == pytest.approx(0.80)


def test_exclusions_move_targets_up_and_excluded_targets_are_never_found():
    s = [[0.9, 0.8, 0.1], [0.9, 0.8, 0.1]]
    # User 0: item 0 excluded, so target 1 moves to rank 1. User 1: the target itself is excluded.
    r = evaluate(fixed(s), task([[1], [0]], exclude=[[0], [0]]), 3, ks=(1,))
    assert r["hr@1"] == pytest.approx(0.5)
    assert r["mrr"] == pytest.approx(0.5)


def test_ties_break_by_item_index():
    s = [[1.0, 1.0, 1.0, 1.0]]
    r = evaluate(fixed(s), task([[2]]), 4, ks=(2, 3))
    assert r["hr@2"] == 0.0 and r["hr@3"] == 1.0
    assert r["mrr"] == pytest.approx(1 / 3)
    assert r["coverage@10"] == 1.0


def test_ranking_metrics_from_ranks_hand_case():
    ranks = np.array([[1.0, np.inf], [5.0, 2.0]])
    m = ranking_metrics_from_ranks(ranks, np.array([1, 2]), ks=(2,))
    assert m["hr@2"].tolist() == [1.0, 1.0]
    assert m["recall@2"].tolist() == [1.0, 0.5]
    assert m["mrr"].tolist() == [1.0, 0.5]
    idcg2 = 1 + 1 / math.log2(3)
    assert m["ndcg@2"][1] == pytest.approx((1 / math.log2(3)) / idcg2)


@pytest.mark.parametrize("seed", range(5))
def test_fast_paths_agree_with_references(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(40):
        B, N = 6, int(torch.randint(1, 40, (1,), generator=g))
        s = torch.randint(0, 4, (B, N), generator=g).float()  # many ties
        s[torch.rand(B, N, generator=g) < 0.25] = float("-inf")
        k = int(torch.randint(0, N + 3, (1,), generator=g))
        assert torch.equal(topk_mask(s, k), topk_mask_reference(s, k))
        T = int(torch.randint(1, 15, (1,), generator=g))
        t = torch.randint(-1, N, (B, T), generator=g)
        assert torch.equal(target_ranks(s, t, sort_above=0), target_ranks_reference(s, t))
        assert torch.equal(target_ranks(s, t), target_ranks_reference(s, t))


def test_evaluate_batching_does_not_change_results():
    rng = np.random.default_rng(0)
    S = torch.from_numpy(rng.integers(0, 5, size=(37, 23)).astype(np.float32))
    tg = [rng.choice(23, size=rng.integers(1, 4), replace=False) for _ in range(37)]
    ex = [rng.choice(23, size=2, replace=False) for _ in range(37)]
    t = task(tg, exclude=ex)
    t.inputs = Sequences(items=[np.array([i]) for i in range(37)])
    fn = (lambda h: S[[int(x[0]) for x in h.items]])
    a = evaluate(fn, t, 23, ks=(5, 10), batch_size=4)
    b = evaluate(fn, t, 23, ks=(5, 10), batch_size=512)
    for key in ("hr@5", "ndcg@10", "mrr", "recall@10", "coverage@10"):
        assert a[key] == pytest.approx(b[key])
