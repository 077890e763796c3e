"""Zero-inflated lognormal (ZILN) loss and head (Wang, Liu & Miao 2019, "A Deep Probabilistic Model
for Customer Lifetime Value Prediction").

A customer's value over a horizon is 0 with probability 1 - p, else lognormal(mu, sigma). The head
emits three numbers per example: the logit of p, mu and a raw sigma (softplus keeps it positive). The
loss is the exact negative log-likelihood of that mixture, averaged over the batch:
``BCE(p, y > 0) + 1[y > 0] * (log y + log sigma + log sqrt(2 pi) + (log y - mu)^2 / (2 sigma^2))``.
The same head sits on the value MLP baseline and on the behaviour transformer's encoder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

SIGMA_FLOOR = 1e-3  # keeps the lognormal from collapsing onto one training value


def ziln_params(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 3) head output -> (p_buy logit, mu, sigma)."""
    return logits[..., 0], logits[..., 1], F.softplus(logits[..., 2]) + SIGMA_FLOOR


def ziln_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
              reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of ``target`` (>= 0) under the ZILN given by ``logits`` (..., 3).

    ``mask`` (same shape as ``target``, bool) drops positions without a label (the transformer's
    windows that run past the data); ``reduction`` is 'mean' over kept positions, 'sum' or 'none'.
    """
    p_logit, mu, sigma = ziln_params(logits)
    target = target.to(mu.dtype)
    positive = target > 0
    bce = F.binary_cross_entropy_with_logits(p_logit, positive.to(mu.dtype), reduction="none")
    safe = torch.where(positive, target, torch.ones_like(target))
    log_y = torch.log(safe)
    lognormal_nll = log_y + torch.log(sigma) + 0.5 * math.log(2 * math.pi) + (log_y - mu) ** 2 / (2 * sigma**2)
    nll = bce + positive.to(mu.dtype) * lognormal_nll
    if mask is not None:
        nll = nll * mask.to(nll.dtype)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    denom = mask.to(nll.dtype).sum().clamp(min=1) if mask is not None else torch.tensor(float(nll.numel()))
    return nll.sum() / denom


def ziln_predict(logits: torch.Tensor | np.ndarray, quantiles: tuple[float, float] = (0.1, 0.9)) -> dict[str, np.ndarray]:
    """Expected value, p_buy, churn probability and a central interval from ZILN head outputs.

    E[y] = p exp(mu + sigma^2 / 2). The q-quantile of the mixture is 0 while q <= 1 - p, else the
    lognormal's quantile at (q - (1 - p)) / p.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    p_logit, mu, sigma = (x.detach().cpu().numpy() for x in ziln_params(logits))
    p = 1.0 / (1.0 + np.exp(-p_logit))
    # Cap the exponent: an untrained or diverging head must not return inf.
    mean = p * np.exp(np.minimum(mu + sigma**2 / 2, 50.0))
    out = {"expected_value": mean, "p_buy": p, "churn_prob": 1.0 - p}
    for key, q in zip(("lower", "upper"), quantiles):
        out[key] = ziln_quantile(p, mu, sigma, q)
    return out


def ziln_quantile(p, mu, sigma, q: float) -> np.ndarray:
    p, mu, sigma = (np.asarray(x, dtype=np.float64) for x in (p, mu, sigma))
    qq = np.clip((q - (1.0 - p)) / np.maximum(p, 1e-12), 1e-12, 1 - 1e-12)
    val = np.exp(np.minimum(mu + sigma * stats.norm.ppf(qq), 50.0))
    return np.where(q <= 1.0 - p, 0.0, val)


class ZILNHead(nn.Module):
    """Linear map from a representation (..., d) to ZILN logits (..., 3)."""

    def __init__(self, d_in: int):
        super().__init__()
        self.proj = nn.Linear(d_in, 3)

    def init_from_targets(self, y: np.ndarray) -> None:
        """Start at the marginal distribution of the training targets (faster, stabler training)."""
        y = np.asarray(y, dtype=np.float64)
        pos = y[y > 0]
        p = np.clip((y > 0).mean(), 1e-3, 1 - 1e-3)
        mu = float(np.log(pos).mean()) if len(pos) else 0.0
        sd = float(np.log(pos).std()) if len(pos) > 1 else 1.0
        with torch.no_grad():
            self.proj.weight.mul_(0.1)
            self.proj.bias.copy_(torch.tensor([math.log(p / (1 - p)), mu,
                                               math.log(math.expm1(max(sd - SIGMA_FLOOR, 1e-2)))]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)  # (..., 3)
