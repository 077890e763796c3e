"""Optimiser pieces for sparse item-embedding gradients (large catalogues).

With ``nn.Embedding(sparse=True)`` a step's gradient holds only the rows of the items in the batch.
``LazyAdamW`` updates those rows alone (their moments and weights, as ``torch.optim.SparseAdam``) and
every dense parameter with AdamW, in one optimiser, so the training loop, its learning-rate schedule and
checkpoints treat it like any other. A dense Adam step over an item table touches every row of it
(weights, gradient and both moments) at every step: with 600k items and 64 dimensions that is most of
a CPU step's time, whatever the batch.
"""

from __future__ import annotations

import math

import torch


class LazyAdamW(torch.optim.Optimizer):
    """AdamW for dense gradients; for sparse ones the lazy Adam of ``torch.optim.SparseAdam`` (only the
    rows present in the gradient move; weight decay, if any, applies to those rows)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                if g.is_sparse:
                    g = g.coalesce()
                    rows, vals = g.indices()[0], g.values()
                    m_rows = m[rows].mul_(b1).add_(vals, alpha=1 - b1)
                    v_rows = v[rows].mul_(b2).addcmul_(vals, vals, value=1 - b2)
                    m[rows], v[rows] = m_rows, v_rows
                    upd = m_rows.div(v_rows.sqrt().add_(eps)).mul_(lr * math.sqrt(bc2) / bc1)
                    if wd:
                        p[rows] = p[rows].mul_(1 - lr * wd).sub_(upd)
                    else:
                        p.index_add_(0, rows, upd, alpha=-1)
                else:
                    if wd:
                        p.mul_(1 - lr * wd)
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
                    p.addcdiv_(m, denom, value=-lr / bc1)
        return loss


def has_sparse_grads(model: torch.nn.Module) -> bool:
    """Whether any embedding of ``model`` makes sparse gradients."""
    return any(isinstance(m, torch.nn.Embedding) and m.sparse for m in model.modules())


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients: their norm is that of
    their coalesced values (a row repeated in the batch is one row of the gradient)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    total = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad.values() if p.grad.is_sparse else p.grad) for p in params]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad * coef
        else:
            p.grad.mul_(coef)
    return total
