"""Gradient x input attribution: a one-backward-pass approximation of occlusion influence.

For a target F of the input token embeddings x_1..x_T, event t's attribution is
``sum_d (x_t - baseline_t)_d * dF/dx_t,d`` (baseline 0 = the token absent). For a model linear in its
tokens this equals occlusion exactly; for the transformer it is an approximation, and
``attribution_agreement`` measures how well it ranks events like exact occlusion does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from valuerec.data.dataset import Sequences
from valuerec.data.schema import DataError


def gradient_x_input(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     baseline: torch.Tensor | None = None) -> torch.Tensor:
    """``forward(x) -> (B,)`` target from input embeddings ``x`` (B, T, D). Returns (B, T)."""
    x = x.detach().requires_grad_(True)
    y = forward(x)                                                         # (B,)
    (g,) = torch.autograd.grad(y.sum(), x)
    ref = x.detach() if baseline is None else x.detach() - baseline
    return (ref * g).sum(-1)                                               # (B, T)


def transformer_gradient_x_input(model, histories: Sequences, items=None) -> list[np.ndarray]:
    """Gradient x input of the behaviour transformer's next-item score of ``items[u]`` (default:
    each user's top item outside their history) with respect to each event's input token (item +
    event type + time gap embedding). Returns one array per user, aligned with ``histories.items[u]``;
    events the model does not see (unknown item, beyond ``max_len``) get 0."""
    from valuerec.models.transformer import collate

    module = getattr(model, "module_", None)
    if module is None or not hasattr(module, "encoder"):
        raise DataError("gradient attribution needs a fitted behaviour transformer (module_.encoder)")
    cfg = model.model_config
    enc = module.encoder
    if items is None:
        top, _ = model.recommend(histories, k=1, exclude="history")
        items = top[:, 0]
    items = np.asarray(items, dtype=np.int64)
    hist = model._histories(histories)
    b = collate(hist, cfg.max_len, with_targets=False, n_buckets=cfg.n_time_buckets)
    device = next(module.parameters()).device
    b = b.to(device)
    captured: dict[str, torch.Tensor] = {}

    def item_hook(mod, inp, out):
        # Only the per-token lookup (B, T), not the whole-table call that scores items.
        if len(inp) and inp[0] is not None and inp[0].dim() == 2 and "item" not in captured:
            out = out.detach().requires_grad_(True)
            captured["item"] = out
            return out
        return None

    def keep(name):
        def hook(mod, inp, out):
            if inp[0].dim() == 2 and name not in captured:
                captured[name] = out.detach()
        return hook

    handles = [enc.item_table.register_forward_hook(item_hook)]
    if enc.type_emb is not None:
        handles.append(enc.type_emb.register_forward_hook(keep("type")))
    if enc.gap_emb is not None:
        handles.append(enc.gap_emb.register_forward_hook(keep("gap")))
    was_training = module.training
    module.eval()
    try:
        h = module.encode(b)                                               # (B, T, D)
        last = (b.lengths - 1).clamp(min=0)
        state = h[torch.arange(h.shape[0], device=device), last]           # (B, D)
        vec = enc.item_table(torch.as_tensor(items, device=device))        # (B, D)
        y = (state * vec).sum(-1)                                          # (B,)
        x = captured["item"]
        (g,) = torch.autograd.grad(y.sum(), x)                             # (B, T, D)
    finally:
        for hd in handles:
            hd.remove()
        module.train(was_training)
    token = captured["item"].detach() + captured.get("type", 0) + captured.get("gap", 0)
    attr = ((token * g).sum(-1) * b.mask).detach().cpu().numpy()          # (B, T)
    out = []
    for u in range(len(histories)):
        raw = np.asarray(histories.items[u])
        seen = np.flatnonzero((raw >= 0) & (raw < cfg.n_items))[-cfg.max_len:]
        a = np.zeros(len(raw))
        a[seen] = attr[u, :len(seen)]
        out.append(a)
    return out


def attribution_agreement(reference: list[np.ndarray], approx: list[np.ndarray], min_events: int = 3) -> dict:
    """Per-user Spearman and Pearson correlation of two attributions (e.g. occlusion vs gradient x
    input), averaged over users with at least ``min_events`` events and non-constant attributions;
    plus how often the two agree on the single most influential event."""
    sp, pe, top = [], [], []
    for r, a in zip(reference, approx):
        r, a = np.asarray(r, float), np.asarray(a, float)
        if len(r) < min_events or np.ptp(r) == 0 or np.ptp(a) == 0:
            continue
        sp.append(spearmanr(r, a).statistic)
        pe.append(pearsonr(r, a).statistic)
        top.append(float(np.argmax(np.abs(r)) == np.argmax(np.abs(a))))
    return {"spearman": float(np.mean(sp)) if sp else None, "pearson": float(np.mean(pe)) if pe else None,
            "top1_agreement": float(np.mean(top)) if top else None, "users": len(sp)}
