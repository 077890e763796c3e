"""Full-catalogue ranking metrics, batched on torch (CPU or GPU).

Ranks are exact: an item's rank is 1 + the number of items scored higher + the number scored equally
with a lower index (a stable sort by descending score). Excluded items score -inf and never count
(their rank is past every real item). Relevance is binary over each user's target set; targets that
are not in the catalogue (index -1) cannot be found but still count in the denominators.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from valuerec.data.splits import EvalTask
from valuerec.models.base import apply_exclusions


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) of ``targets`` (B, T; -1 = padding/unknown) under ``scores`` (B, N).
    Unknown targets get rank +inf. Stable tie-break by item index."""
    B, N = scores.shape
    valid = targets >= 0
    t = targets.clamp(min=0)
    ts = torch.gather(scores, 1, t)  # (B, T)
    ranks = torch.empty(targets.shape, dtype=torch.float64, device=scores.device)
    idx = torch.arange(N, device=scores.device)
    for j in range(targets.shape[1]):
        s = ts[:, j:j + 1]
        higher = (scores > s).sum(1)
        ties_before = ((scores == s) & (idx[None, :] < t[:, j:j + 1])).sum(1)
        ranks[:, j] = (higher + ties_before + 1).double()
    # An excluded target (-inf) is never found.
    ranks[torch.isinf(ts) & (ts < 0)] = math.inf
    ranks[~valid] = math.inf
    return ranks


def ranking_metrics_from_ranks(ranks: np.ndarray, n_targets: np.ndarray, ks: Sequence[int],
                               target_revenue: np.ndarray | None = None,
                               total_revenue: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-user metrics from ranks (U, T) (inf = not found / padding) and the true size of each
    target set (``n_targets``, including unrankable targets)."""
    out: dict[str, np.ndarray] = {}
    n_targets = np.maximum(n_targets, 1)
    best = ranks.min(axis=1)
    out["mrr"] = np.where(np.isfinite(best), 1.0 / best, 0.0)
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = hit.any(axis=1).astype(float)
        out[f"recall@{k}"] = hit.sum(axis=1) / n_targets
        gains = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1.0), 0.0)
        ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, min(n, k) + 2))) for n in n_targets])
        out[f"ndcg@{k}"] = gains.sum(axis=1) / ideal
        if target_revenue is not None and total_revenue is not None:
            rev = np.where(hit, target_revenue, 0.0).sum(axis=1)
            out[f"revenue@{k}"] = np.where(total_revenue > 0, rev / np.maximum(total_revenue, 1e-12), 0.0)
    return out


def evaluate(score_fn: Callable, task: EvalTask, n_items: int, ks: Sequence[int] = (10, 20),
             batch_size: int = 512, device: str | torch.device = "cpu", coverage_k: int = 10) -> dict:
    """Rank the full catalogue for every user in ``task``; return mean metrics.

    ``score_fn(inputs: Sequences) -> (B, n_items) tensor``. Returns metric means, ``coverage@k``
    (distinct items in all top-k lists / catalogue size), the number of users, and timings.
    """
    ks = sorted(set(ks) | {coverage_k})
    U = len(task)
    per_user: dict[str, list[np.ndarray]] = {}
    seen_topk = torch.zeros(n_items, dtype=torch.bool)
    t0 = time.perf_counter()
    score_seconds = 0.0
    for start in range(0, U, batch_size):
        idx = np.arange(start, min(start + batch_size, U))
        batch = task.subset(idx)
        ts = time.perf_counter()
        with torch.no_grad():
            scores = score_fn(batch.inputs).float().to(device)
        score_seconds += time.perf_counter() - ts
        if scores.shape != (len(idx), n_items):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {(len(idx), n_items)}")
        scores = torch.nan_to_num(scores, nan=-1e30)
        if batch.exclude is not None:
            apply_exclusions(scores, batch.exclude)
        T = max(1, max(len(t) for t in batch.targets))
        tgt = np.full((len(idx), T), -1, dtype=np.int64)
        rev = np.zeros((len(idx), T))
        for i, t in enumerate(batch.targets):
            tgt[i, :len(t)] = t
            if batch.target_revenue is not None:
                rev[i, :len(t)] = batch.target_revenue[i]
        ranks = target_ranks(scores, torch.as_tensor(tgt, device=scores.device)).cpu().numpy()
        n_t = np.array([len(t) for t in batch.targets])
        m = ranking_metrics_from_ranks(ranks, n_t, ks,
                                       rev if batch.target_revenue is not None else None,
                                       batch.total_revenue)
        for name, v in m.items():
            per_user.setdefault(name, []).append(v)
        # Top-k lists with the same stable tie-break as the ranks.
        top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :coverage_k]
        seen_topk[top.flatten().cpu()] = True
    result = {name: float(np.concatenate(v).mean()) for name, v in per_user.items()}
    result[f"coverage@{coverage_k}"] = float(seen_topk.sum().item() / max(n_items, 1))
    result["users"] = U
    result["eval_seconds"] = time.perf_counter() - t0
    result["score_seconds"] = score_seconds
    return result
