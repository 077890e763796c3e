"""Value and churn heads of the behaviour transformer, and the cut-off examples that train them.

The state "as of" a time ``c`` is read at a trailing query token (see ``transformer.py``) whose input
carries the gap since the last event and a few summary numbers of the whole history before ``c``
(counts, spend, tenure, recency: the encoder only sees the last ``max_len`` events, the summary keeps
what lies further back). With ``value_features="rfm"`` those numbers are instead the RFM table the
V1 baselines use (``features.rfm``: 22 recency / frequency / monetary / tenure features, log1p of
counts and money, standardised on the training examples), so the heads see at least what the
LightGBM and ZILN-MLP baselines see, plus the encoder's state. Two heads read that state:

- value: a zero-inflated lognormal (``models.ziln``) over purchase revenue in ``[c, c + H)``,
  giving p(buy), mu and sigma; expected value = p * exp(mu + sigma^2 / 2);
- churn: the probability of no purchase in ``[c, c + H)`` (V1's churn label; the transformer
  reports p(buy) = 1 - churn).

Training examples are (user, c) pairs on a calendar grid of cut-offs, so one pass trains on every
cut-off of every user. A label exists only where the whole window is observed (``c + H <= data end``);
other cut-offs keep their next-item loss and mask the value and churn terms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from valuerec.data.schema import EVENT_TYPE_CODE
from valuerec.models.ziln import ZILNHead, ziln_loss, ziln_predict

DAY = 86_400.0
PURCHASE = EVENT_TYPE_CODE["purchase"]
N_SUMMARY = 8


def purchase_mask(types: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which events are purchases: typed 'purchase', or, in logs without event types (all
    'interaction'), any event with revenue (a plain transaction log)."""
    if (types == PURCHASE).any():
        return types == PURCHASE
    return values > 0


def summary_features(times: np.ndarray, types: np.ndarray, values: np.ndarray, as_of: float,
                     horizon_days: float) -> np.ndarray:
    """(N_SUMMARY,) numbers of a history before ``as_of``: log counts, log spend, tenure, recency."""
    buy = purchase_mask(types, values)
    if len(times) == 0:
        return np.zeros(N_SUMMARY, np.float32)
    bt, bv = times[buy], values[buy]
    days = np.unique(np.floor(bt / DAY)) if len(bt) else np.zeros(0)
    tenure = (as_of - times[0]) / DAY
    recency = (as_of - times[-1]) / DAY
    recency_buy = (as_of - bt[-1]) / DAY if len(bt) else tenure + horizon_days
    recent = bv[bt >= as_of - horizon_days * DAY].sum() if len(bt) else 0.0
    f = np.array([
        np.log1p(len(times)), np.log1p(len(days)), np.log1p(bv.sum()), np.log1p(recent),
        np.log1p(max(tenure, 0.0)) / 3, np.log1p(max(recency, 0.0)) / 3, np.log1p(max(recency_buy, 0.0)) / 3,
        np.log1p(bv.sum() / max(len(days), 1)),
    ], dtype=np.float32)
    return f


def rfm_inputs(histories, as_of) -> np.ndarray:
    """(n, len(FEATURES)) RFM inputs of each history as of ``as_of`` (unix s, scalar or per history):
    the V1 baselines' features (log1p of counts and money). A history from a log without event types
    (every one of its events an 'interaction') counts its events with revenue as purchases; each
    history is decided on its own, so a user's features never depend on who else is in the batch."""
    from valuerec.data.dataset import Sequences
    from valuerec.data.schema import DataError
    from valuerec.features.rfm import rfm_from_sequences
    from valuerec.models.value_baselines import _mlp_inputs

    if histories.times is None or histories.event_types is None or histories.values is None:
        raise DataError("value_features='rfm' needs histories with times, event types and values; "
                        "use value_features='summary' for data without them")
    interaction = EVENT_TYPE_CODE["interaction"]
    types = [np.where((np.asarray(v) > 0) & (np.asarray(ty) == interaction).all(), PURCHASE, np.asarray(ty))
             for ty, v in zip(histories.event_types, histories.values)]
    histories = Sequences(items=histories.items, times=histories.times, event_types=types,
                          values=histories.values, user_ids=histories.user_ids)
    return _mlp_inputs(rfm_from_sequences(histories, as_of))


def n_query_features(kind: str) -> int:
    from valuerec.features.rfm import FEATURES
    return {"summary": N_SUMMARY, "rfm": len(FEATURES)}[kind]


def window_labels(times: np.ndarray, types: np.ndarray, values: np.ndarray, c: float, horizon_days: float,
                  ) -> tuple[float, float]:
    """(revenue of purchases in [c, c+H), 1.0 if no event at all in that window else 0.0)."""
    w = (times >= c) & (times < c + horizon_days * DAY)
    buy = purchase_mask(types, values)
    return float(values[w & buy].sum()), float(not w.any())


def cutoff_grid(t_min: float, t_max: float, horizon_days: float, step_days: float, max_cuts: int) -> np.ndarray:
    """Calendar cut-offs from the first event to the data end, every ``step_days``, newest first;
    those whose window is fully observed come first in importance, the rest keep next-item only."""
    end_labelled = t_max - horizon_days * DAY
    if end_labelled <= t_min:
        return np.array([t_max], dtype=np.float64)
    cuts = np.arange(end_labelled, t_min, -step_days * DAY)[:max_cuts]
    return np.sort(np.append(cuts, t_max))


class ValueHeads(nn.Module):
    """ZILN value head and churn head on the query-token state (+ the summary numbers): linear, or
    behind one shared hidden layer of ``hidden`` units (ReLU). ``n_features`` summary numbers come in;
    with ``standardise`` they are centred and scaled by ``feat_mean`` / ``feat_std`` (set from the
    training examples by ``set_standardisation``, saved with the weights)."""

    def __init__(self, d_model: int, hidden: int = 0, n_features: int = N_SUMMARY, standardise: bool = False):
        super().__init__()
        self.standardise = standardise
        self.register_buffer("feat_mean", torch.zeros(n_features), persistent=standardise)
        self.register_buffer("feat_std", torch.ones(n_features), persistent=standardise)
        self.summary_proj = nn.Linear(n_features, d_model)   # into the query token's input
        width = d_model + n_features
        self.trunk = nn.Sequential(nn.Linear(width, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.ziln = ZILNHead(hidden or width)
        self.churn = nn.Linear(hidden or width, 1)

    @torch.no_grad()
    def set_standardisation(self, feats: np.ndarray) -> None:
        """Centre and scale from the training examples. A feature (nearly) constant in training keeps
        scale 1: dividing by its tiny spread would blow up the first user who differs (e.g. the first
        return in a log that had none)."""
        if self.standardise and len(feats):
            std = feats.std(0)
            self.feat_mean.copy_(torch.from_numpy(feats.mean(0).astype(np.float32)))
            self.feat_std.copy_(torch.from_numpy(np.where(std < 1e-3, 1.0, std).astype(np.float32)))

    @torch.no_grad()
    def init_churn_from_targets(self, churned: np.ndarray) -> None:
        """Start the churn head at the training churn rate (its bias = the rate's log-odds), as the
        ZILN head starts at the marginal spend: with few labelled examples (a small shop, one cut-off)
        a head started at 0.5 barely moves and every customer looks alike."""
        p = float(np.clip(np.mean(churned), 1e-3, 1 - 1e-3))
        self.churn.bias.fill_(float(np.log(p / (1 - p))))

    def _scaled(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.feat_mean) / self.feat_std if self.standardise else feats

    def query_input(self, feats: torch.Tensor) -> torch.Tensor:
        return self.summary_proj(self._scaled(feats))                     # (B, D)

    def forward(self, h: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(torch.cat([h, self._scaled(feats)], dim=-1))     # (B, D + F) or (B, hidden)
        return self.ziln(z), self.churn(z).squeeze(-1)                    # (B, 3), (B,)

    def losses(self, h: torch.Tensor, feats: torch.Tensor, value: torch.Tensor, churn: torch.Tensor,
               mask: torch.Tensor, value_weight: float, churn_weight: float) -> dict[str, torch.Tensor]:
        logits, churn_logit = self(h, feats)
        out = {}
        if value_weight > 0:
            out["value"] = value_weight * ziln_loss(logits.float(), value.float(), mask)
        if churn_weight > 0:
            bce = F.binary_cross_entropy_with_logits(churn_logit.float(), churn.float(), reduction="none")
            out["churn"] = churn_weight * (bce * mask).sum() / mask.sum().clamp(min=1)
        return out

    @torch.no_grad()
    def predict(self, h: torch.Tensor, feats: torch.Tensor) -> dict[str, np.ndarray]:
        logits, churn_logit = self(h, feats)
        out = ziln_predict(logits.float().cpu())
        out["churn_prob"] = torch.sigmoid(churn_logit.float()).cpu().numpy().astype(np.float64)
        return out
