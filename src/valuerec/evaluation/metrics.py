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


def target_ranks_reference(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) of ``targets`` (B, T; -1 = padding/unknown) under ``scores`` (B, N), the plain
    way: count the items above each target. Unknown targets get rank +inf. Stable tie-break by index."""
    B, N = scores.shape
    valid = targets >= 0
    t = targets.clamp(min=0)
    ts = torch.gather(scores, 1, t)  # (B, T)
    ranks = torch.empty(targets.shape, dtype=torch.float64, device=scores.device)
    idx = torch.arange(N, device=scores.device)
    for j in range(targets.shape[1]):
        if not bool(valid[:, j].any()):
            ranks[:, j] = math.inf
            continue
        s = ts[:, j:j + 1]
        # One pass: items above the target, or tied with it and earlier in the catalogue.
        ahead = (scores > s) | ((scores == s) & (idx[None, :] < t[:, j:j + 1]))
        ranks[:, j] = (torch.count_nonzero(ahead, dim=1) + 1).double()
    # An excluded target (-inf) is never found.
    ranks[torch.isinf(ts) & (ts < 0)] = math.inf
    ranks[~valid] = math.inf
    return ranks


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, sort_above: int = 8) -> torch.Tensor:
    """Same as ``target_ranks_reference``. With many targets per user (R2 baskets), one stable sort
    per row gives every item's rank at once; with few, counting is cheaper than sorting."""
    B, N = scores.shape
    valid = targets >= 0
    t = targets.clamp(min=0)
    if targets.shape[1] <= sort_above:
        # Counting as in the reference, but summing the mask by a mat-vec product, which is several
        # times faster than a boolean reduction on CPU (exact: counts < 2**24 in float32).
        ts = torch.gather(scores, 1, t)  # (B, T)
        dt = torch.float32 if N < 2 ** 24 else torch.float64
        ones = torch.ones(N, dtype=dt, device=scores.device)
        idx = torch.arange(N, device=scores.device)
        ranks = torch.full(targets.shape, math.inf, dtype=torch.float64, device=scores.device)
        for j in range(targets.shape[1]):
            if not bool(valid[:, j].any()):
                continue
            s = ts[:, j:j + 1]
            ahead = (scores > s) | ((scores == s) & (idx[None, :] < t[:, j:j + 1]))
            ranks[:, j] = (ahead.to(dt) @ ones).double() + 1
        ranks[torch.isinf(ts) & (ts < 0)] = math.inf
        ranks[~valid] = math.inf
        return ranks
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices      # (B, N)
    pos = torch.empty_like(order)
    pos.scatter_(1, order, torch.arange(N, device=scores.device).expand(B, N))  # item -> 0-based rank
    ranks = (torch.gather(pos, 1, t) + 1).double()                               # (B, T)
    ts = torch.gather(scores, 1, t)
    ranks[torch.isinf(ts) & (ts < 0)] = math.inf
    ranks[~valid] = math.inf
    return ranks


def topk_mask_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) bool: the items in each row's top-k under a stable descending sort (plain version)."""
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, top, True)
    return mask


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Same set as ``topk_mask_reference`` without a full sort. ``topk`` already gives the exact set
    where the k-th and (k+1)-th scores differ; rows with a tie across that boundary take everything
    above the k-th score, then tied items in catalogue order until k are taken."""
    B, N = scores.shape
    k = min(k, N)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0 or B == 0:
        return mask
    if k == N:
        return ~mask
    vals, inds = torch.topk(scores, k + 1, dim=1)             # (B, k+1)
    clean = vals[:, k] < vals[:, k - 1]                       # (B,) no tie at the boundary
    mask[clean] = mask[clean].scatter_(1, inds[clean, :k], True)
    tie_rows = torch.nonzero(~clean).flatten()
    if len(tie_rows):
        sub = scores[tie_rows]                                # (b, N)
        kth = vals[tie_rows, k - 1:k]                         # (b, 1)
        above = sub > kth
        need = k - above.sum(dim=1)
        tied = sub == kth
        take = tied & (torch.cumsum(tied, dim=1) <= need[:, None])
        mask[tie_rows] = above | take
    return mask


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
        ideal = _ideal_dcg(n_targets, k)
        out[f"ndcg@{k}"] = gains.sum(axis=1) / ideal
        if target_revenue is not None and total_revenue is not None:
            rev = np.where(hit, target_revenue, 0.0).sum(axis=1)
            out[f"revenue@{k}"] = np.where(total_revenue > 0, rev / np.maximum(total_revenue, 1e-12), 0.0)
    return out


def _ideal_dcg(n_targets: np.ndarray, k: int) -> np.ndarray:
    """DCG of a perfect list: sum_{i=1}^{min(n, k)} 1/log2(i + 1), per user."""
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    return table[np.minimum(np.asarray(n_targets, dtype=np.int64), k)]


def evaluate(score_fn: Callable, task: EvalTask, n_items: int, ks: Sequence[int] = (10, 20),
             batch_size: int = 512, device: str | torch.device = "cpu", coverage_k: int = 10) -> dict:
    """Rank the full catalogue for every user in ``task``; return mean metrics.

    ``score_fn(inputs: Sequences) -> (B, n_items) tensor``. Returns metric means, ``coverage@k``
    (distinct items in all top-k lists / catalogue size), the number of users, and timings.
    """
    return evaluate_variants(score_fn, {"": None}, task, n_items, ks, batch_size, device, coverage_k)[""]


def evaluate_variants(parts_fn: Callable, variants: dict[str, Callable | None], task: EvalTask, n_items: int,
                      ks: Sequence[int] = (10, 20), batch_size: int = 512, device: str | torch.device = "cpu",
                      coverage_k: int = 10) -> dict[str, dict]:
    """``evaluate`` for several scorings that share one expensive step, in one pass over the users.

    ``parts_fn(inputs)`` runs once per batch; each variant maps its output to (B, n_items) scores
    (``None``: the output already is the scores). Returns ``{variant: metrics}`` as ``evaluate`` does;
    ``score_seconds`` is the shared step plus that variant's own step.
    """
    ks = sorted(set(ks) | {coverage_k})
    U = len(task)
    per_user: dict[str, dict[str, list[np.ndarray]]] = {v: {} for v in variants}
    seen_topk = {v: torch.zeros(n_items, dtype=torch.bool) for v in variants}
    score_seconds = dict.fromkeys(variants, 0.0)
    t0 = time.perf_counter()
    for start in range(0, U, batch_size):
        idx = np.arange(start, min(start + batch_size, U))
        batch = task.subset(idx)
        ts = time.perf_counter()
        with torch.no_grad():
            parts = parts_fn(batch.inputs)
        shared_s = time.perf_counter() - ts
        T = max(1, max(len(t) for t in batch.targets))
        tgt = np.full((len(idx), T), -1, dtype=np.int64)
        rev = np.zeros((len(idx), T))
        for i, t in enumerate(batch.targets):
            tgt[i, :len(t)] = t
            if batch.target_revenue is not None:
                rev[i, :len(t)] = batch.target_revenue[i]
        n_t = np.array([len(t) for t in batch.targets])
        for name, fn in variants.items():
            ts = time.perf_counter()
            with torch.no_grad():
                scores = (parts if fn is None else fn(parts)).float().to(device)
            score_seconds[name] += shared_s + time.perf_counter() - ts
            if scores.shape != (len(idx), n_items):
                raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {(len(idx), n_items)}")
            scores = torch.nan_to_num(scores, nan=-1e30)
            if batch.exclude is not None:
                apply_exclusions(scores, batch.exclude)
            ranks = target_ranks(scores, torch.as_tensor(tgt, device=scores.device)).cpu().numpy()
            m = ranking_metrics_from_ranks(ranks, n_t, ks,
                                           rev if batch.target_revenue is not None else None,
                                           batch.total_revenue)
            for metric, v in m.items():
                per_user[name].setdefault(metric, []).append(v)
            # Top-k lists with the same stable tie-break as the ranks.
            seen_topk[name] |= topk_mask(scores, coverage_k).any(dim=0).cpu()
    elapsed = time.perf_counter() - t0
    out = {}
    for name in variants:
        result = {metric: float(np.concatenate(v).mean()) for metric, v in per_user[name].items()}
        result[f"coverage@{coverage_k}"] = float(seen_topk[name].sum().item() / max(n_items, 1))
        result["users"] = U
        result["eval_seconds"] = elapsed
        result["score_seconds"] = score_seconds[name]
        out[name] = result
    return out
