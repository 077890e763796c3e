"""The behaviour transformer: one causal encoder over a user's events, with heads on top.

Read top to bottom: config -> token embedding -> blocks -> encoder -> heads -> batches -> the
``Recommender`` wrapper that fits, scores, saves and loads.

Every event becomes one token::

    token_t = item_vector(item_t) + type_emb(event_type_t) + gap_emb(bucket(time_t - time_{t-1})) + pos_emb(t)
    item_vector(i) = id_emb(i) [+ mean(attr_emb(attributes of i))] [+ text_proj(frozen text embedding of i)]

Pre-LN blocks with causal self-attention (``scaled_dot_product_attention``) give ``h_t``, a summary
of events ``1..t``. The next-item head scores every item as ``h_t . item_vector(i)``: the output
table is the same content-aware item vector as the input (tied), so an item with text or attributes
but no interactions still gets a meaningful score.

Batches are right-padded, so the causal mask alone keeps real positions from ever seeing padding:
a history's outputs do not depend on what else is in the batch or how far it is padded.

An optional trailing *query token* asks for the state "as of" a time after the last event: its
gap embedding encodes ``as_of - last event time``. Heads that depend on recency (value, churn)
read ``h`` there; the next-item head reads the last event.

Adding a head: give it a module, put its weighted loss into the dict returned by
``BehaviourModel.forward`` (the training loop sums that dict), and its config weight in
``TransformerConfig`` (``value_weight``, ``churn_weight`` are already there).
"""

from __future__ import annotations

import json
import os
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from valuerec.data.dataset import Catalogue, Sequences, catalogue_from, unix_seconds
from valuerec.configcheck import check_types, require
from valuerec.data.schema import EVENT_TYPES, DataError
from valuerec.models.base import Recommender, register
from valuerec.models.value_heads import (ValueHeads, cutoff_grid, n_query_features, purchase_mask, rfm_inputs,
                                         summary_features,
                                         window_labels)

log = logging.getLogger(__name__)

N_EVENT_TYPES = len(EVENT_TYPES)
QUERY_TYPE = N_EVENT_TYPES  # the event-type slot of the trailing query token
COOC_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # cooc_weight="auto" tries these
COOC_REPEAT_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)                   # cooc_repeat_share="auto" tries these
COOC_FLOOR = 1e-6   # added to the normalised kNN scores before the log (items no neighbour points to)


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------
@dataclass
class TransformerConfig:
    """Architecture and loss. Training settings (epochs, lr, ...) live in ``training.loop.TrainConfig``."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    max_len: int = 50             # events kept per history (the most recent ones)
    all_windows: bool = True      # train on every max_len window of a long history, not only the last
    dropout: float = 0.3          # embedding, residual and MLP dropout
    attn_dropout: float = 0.0
    mlp_ratio: int = 4
    # side information (each used only where the catalogue has it)
    use_item_ids: bool = True     # False: a pure content model (needs text and/or attributes)
    use_attributes: bool = True
    use_text: bool = True
    text_model: str = "all-MiniLM-L6-v2"
    use_event_types: bool = True
    use_time_gaps: bool = True
    n_time_buckets: int = 32      # 0 = no previous event, then log2-spaced gaps in seconds
    # next-item loss
    loss: str = "ce"              # "ce": full-catalogue softmax; "sampled": sampled softmax + log-Q
    negatives: str = "in-batch"   # sampled only: "in-batch", "uniform" or "popularity"
    n_negatives: int = 1024       # sampled only, for uniform / popularity negatives
    label_smoothing: float = 0.0
    # item id embeddings get sparse gradients and lazy Adam updates (only the rows of each batch's items
    # move, as torch's SparseAdam): much faster steps on catalogues of 100k+ items; one process only
    sparse_item_grads: bool = False
    # contrastive regulariser (DuoRec's unsupervised model augmentation, Qiu et al., 2022): two dropout
    # views of each training window's last state are pulled together against the batch's other windows
    # (InfoNCE over cosine similarities / contrastive_temperature; windows with the same next item are not
    # counted as negatives); added to the loss with this weight (0 = off)
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.2
    # repeat consumption: logit(i) += g(state) * log(1 + times i occurs in the user's whole history,
    # also before the max_len events the encoder sees), g a learned linear function of the user state
    # (how much this user re-buys); full softmax only
    repeat: bool = False
    # what each position learns to predict: "next" (the next event's item, SASRec), "next_basket"
    # (an item of the next basket: the events at the first later timestamp; for baskets / invoices) or
    # "window" (an item bought within target_window_days after: "what will they buy in the next months")
    target: str = "next"
    target_window_days: float = 90.0   # target="window": any item bought within this many days after
    # co-occurrence prior at scoring time: score(i) = log p_model(i) + cooc_weight * log(1e-6 + q(i)),
    # q = (1 - cooc_repeat_share) * knn + cooc_repeat_share * own, where knn = the cosine item-kNN scores
    # of the history (``itemknn``, fitted on the same training histories) and own = the history's own
    # (recency-weighted) item counts (buy-again, for data that does not exclude past items), each
    # normalised to sum 1. "auto" tries COOC_WEIGHTS x COOC_REPEAT_SHARES on validation after training
    # and keeps the best (weight 0 is among them: the prior is dropped when it does not help).
    cooc_weight: float | str = 0.0
    cooc_repeat_share: float | str = 0.0
    cooc_neighbours: int = 200
    cooc_recency_decay: float = 0.6
    # further heads (added by later work; weights 0 = head off)
    value_weight: float = 0.0
    churn_weight: float = 0.0
    horizon_days: float = 90.0
    next_item_weight: float = 1.0  # 0 = a value-only model (e.g. a transaction log without items)
    use_values: bool = False      # add log1p(event revenue) to each token (useful for value heads)
    value_step_days: float = 14.0  # spacing of the calendar cut-offs that value / churn train on
    value_max_cuts: int = 26      # at most this many labelled cut-offs (newest first)
    value_hidden: int = 0         # hidden units between the state and the value / churn heads (0 = linear)
    # what the value / churn heads (and the query token) see beside the encoder: "summary" = 8 numbers
    # of the whole history; "rfm" = the V1 baselines' 22 RFM features, standardised
    value_features: str = "summary"
    data_end: float = 0.0         # unix s where the training data end (0 = the last event seen)
    # sizes fixed by the data at fit time (saved so load() rebuilds the exact module)
    n_items: int = 0
    n_attributes: int = 0
    max_attributes: int = 0
    text_dim: int = 0

    def __post_init__(self) -> None:
        check_types(self, "transformer config")
        c = self
        require("transformer config", {
            "d_model": (c.d_model, c.d_model >= 1, ">= 1"), "n_heads": (c.n_heads, c.n_heads >= 1, ">= 1"),
            "max_len": (c.max_len, c.max_len >= 1, ">= 1"), "n_layers": (c.n_layers, c.n_layers >= 0, ">= 0"),
            "mlp_ratio": (c.mlp_ratio, c.mlp_ratio >= 1, ">= 1"),
            "dropout": (c.dropout, 0.0 <= c.dropout < 1.0, "in [0, 1)"),
            "attn_dropout": (c.attn_dropout, 0.0 <= c.attn_dropout < 1.0, "in [0, 1)"),
            "label_smoothing": (c.label_smoothing, 0.0 <= c.label_smoothing < 1.0, "in [0, 1)"),
            "n_negatives": (c.n_negatives, c.n_negatives >= 1, ">= 1"),
            "target_window_days": (c.target_window_days, c.target_window_days > 0, "> 0 days"),
            "horizon_days": (c.horizon_days, c.horizon_days > 0, "> 0 days"),
            "value_step_days": (c.value_step_days, c.value_step_days > 0, "> 0 days"),
            "value_max_cuts": (c.value_max_cuts, c.value_max_cuts >= 1, ">= 1"),
            "value_hidden": (c.value_hidden, c.value_hidden >= 0, ">= 0"),
            "value_weight": (c.value_weight, c.value_weight >= 0, ">= 0"),
            "churn_weight": (c.churn_weight, c.churn_weight >= 0, ">= 0"),
            "next_item_weight": (c.next_item_weight, c.next_item_weight >= 0, ">= 0"),
        })
        if not (self.next_item_weight > 0 or self.value_weight > 0 or self.churn_weight > 0):
            # every head off: the loss is 0 and training would save the initial weights
            raise DataError("transformer config: next_item_weight, value_weight and churn_weight are all 0, so "
                            "there is nothing to learn; set at least one of them > 0")
        if self.d_model % self.n_heads:
            raise DataError(f"transformer config: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.loss not in ("ce", "sampled"):
            raise DataError(f"transformer config: loss={self.loss!r}, expected 'ce' or 'sampled'")
        if self.negatives not in ("in-batch", "uniform", "popularity"):
            raise DataError(f"transformer config: negatives={self.negatives!r}, "
                            "expected 'in-batch', 'uniform' or 'popularity'")
        if self.value_features not in ("summary", "rfm"):
            raise DataError(f"transformer config: value_features={self.value_features!r}, expected 'summary' or 'rfm'")
        if self.target not in ("next", "next_basket", "window"):
            raise DataError(f"transformer config: target={self.target!r}, expected 'next', 'next_basket' or 'window'")
        if self.repeat and self.loss != "ce":
            raise DataError("transformer config: repeat=True needs loss='ce' (the repeat term is added to every "
                            "item's logit)")
        for name, hi in (("cooc_weight", float("inf")), ("cooc_repeat_share", 1.0)):
            v = getattr(self, name)
            if v == "auto":
                continue
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise DataError(f"transformer config: {name}={v!r}, expected 'auto' or a number") from None
            if not 0.0 <= v <= hi:
                raise DataError(f"transformer config: {name}={v}, expected 'auto' or a number in [0, {hi:g}]")
            setattr(self, name, v)
        if self.cooc_repeat_share == "auto" and self.cooc_weight == 0.0:
            raise DataError("transformer config: cooc_repeat_share='auto' needs a co-occurrence prior "
                            "(cooc_weight > 0 or 'auto')")
        if self.cooc_neighbours < 1 or not 0.0 < self.cooc_recency_decay <= 1.0:
            raise DataError("transformer config: cooc_neighbours >= 1 and 0 < cooc_recency_decay <= 1 required")
        if self.contrastive_weight < 0 or self.contrastive_temperature <= 0:
            raise DataError("transformer config: contrastive_weight >= 0 and contrastive_temperature > 0 required")
        if self.max_len < 1 or self.n_layers < 0 or self.n_time_buckets < 2:
            raise DataError("transformer config: max_len >= 1, n_layers >= 0, n_time_buckets >= 2 required")


def time_gap_bucket(gap_seconds: np.ndarray | torch.Tensor, n_buckets: int):
    """Log2 buckets of a gap: bucket 0 = no previous event (gap < 0), 1 + floor(log2(1 + gap)) else,
    capped at ``n_buckets - 1``. 1 s -> 2, 1 h -> 12, 1 day -> 17, 90 days -> 23."""
    if isinstance(gap_seconds, torch.Tensor):
        g = gap_seconds.double()
        b = 1 + torch.floor(torch.log2(1.0 + g.clamp(min=0)))
        return torch.where(g < 0, torch.zeros_like(b), b.clamp(max=n_buckets - 1)).long()
    g = np.asarray(gap_seconds, dtype=np.float64)
    b = 1 + np.floor(np.log2(1.0 + np.maximum(g, 0)))
    return np.where(g < 0, 0, np.minimum(b, n_buckets - 1)).astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)                              # 3 x (B, T, D)
        q = q.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, D/H)
        k = k.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)
        # Right padding: a real position only ever looks left, so the causal mask is the whole mask
        # (and the fused flash / memory-efficient kernels apply on GPU).
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)                             # (B, T, D)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ItemTable(nn.Module):
    """Content-aware item vectors: id embedding + mean attribute embedding + projected text embedding.
    Used both as input tokens and as the (tied) output table of the next-item head."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        D = cfg.d_model
        self.id_emb = nn.Embedding(cfg.n_items, D, sparse=cfg.sparse_item_grads) if cfg.use_item_ids else None
        # attributes: a padded (n_items, max_attributes) index matrix, pad = n_attributes (zero row)
        self.attr_emb = (nn.Embedding(cfg.n_attributes + 1, D, padding_idx=cfg.n_attributes)
                         if cfg.n_attributes > 0 else None)
        self.register_buffer("attr_index", torch.full((cfg.n_items, max(cfg.max_attributes, 1)),
                                                      cfg.n_attributes, dtype=torch.long))
        # text: frozen sentence embeddings (n_items, text_dim), zero rows where an item has no text
        self.text_proj = nn.Linear(cfg.text_dim, D, bias=False) if cfg.text_dim > 0 else None
        self.register_buffer("text_emb", torch.zeros(cfg.n_items, max(cfg.text_dim, 1)))
        if self.id_emb is None and self.attr_emb is None and self.text_proj is None:
            raise DataError("transformer: use_item_ids=False needs item text or attributes in the catalogue")

    def table(self) -> torch.Tensor:
        """Every item's vector (n_items, D). Outside autograd it is computed once and reused while no
        weight or buffer changes (serving scores one user at a time; the text projection of the
        whole catalogue would otherwise dominate each request)."""
        if torch.is_grad_enabled():
            return self()
        key = tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))
        if getattr(self, "_table_key", None) != key:
            self._table = self()
            self._table_key = key
        return self._table

    def forward(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of items ``idx`` (any shape, values in 0..n_items-1), or of every item if None."""
        if idx is None:
            idx = torch.arange(self.attr_index.shape[0], device=self.attr_index.device)
        out = 0
        if self.id_emb is not None:
            out = out + self.id_emb(idx)                                    # (..., D)
        if self.attr_emb is not None:
            a = self.attr_index[idx]                                        # (..., A)
            n = (a != self.attr_emb.padding_idx).sum(-1, keepdim=True).clamp(min=1)
            out = out + self.attr_emb(a).sum(-2) / n                        # (..., D) mean over attributes
        if self.text_proj is not None:
            out = out + self.text_proj(self.text_emb[idx])                  # (..., D)
        return out


def validation_ks(monitor: str) -> tuple[int, ...]:
    """The cut-offs a validation pass scores: 10 and 20, and the one early stopping monitors (``ndcg@5``)."""
    k = monitor.rpartition("@")[2]
    return tuple(sorted({10, 20} | ({int(k)} if k.isdigit() and int(k) > 0 else set())))


def _read_index(cache: str | Path | None, meta: dict):
    """The index kept in ``cache`` if it was built from the same vectors and settings, else None."""
    if cache is None:
        return None
    import faiss
    path = Path(cache)
    try:
        if json.loads((path / "index.json").read_text()) != meta:
            return None
        return faiss.read_index(str(path / "index.faiss"))
    except (OSError, ValueError, RuntimeError):     # missing, damaged or foreign: build it again
        return None


def _write_index(cache: str | Path | None, index, meta: dict) -> None:
    """Keep ``index`` in ``cache`` (written beside, then moved in: never half a file); a read-only
    place is skipped with a log line."""
    if cache is None:
        return
    import faiss
    path = Path(cache)
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "index.json").unlink(missing_ok=True)   # no moment where old settings describe a new index
        tmp = path / f".index.faiss.{os.getpid()}"
        faiss.write_index(index, str(tmp))
        tmp.replace(path / "index.faiss")
        (path / "index.json").write_text(json.dumps(meta, indent=2))
    except (OSError, RuntimeError) as e:
        log.warning("item index not kept in %s: %s", path, e)


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Right-padded event tensors (B, T); ``mask`` marks real events."""

    items: torch.Tensor            # (B, T) long, item index; 0 at padding
    types: torch.Tensor            # (B, T) long, event-type code
    gaps: torch.Tensor             # (B, T) long, time-gap bucket
    mask: torch.Tensor             # (B, T) bool
    targets: torch.Tensor | None = None   # (B, T) long, next item; -1 = no target
    times: torch.Tensor | None = None     # (B, T) float64 unix seconds (labels for value / churn heads)
    values: torch.Tensor | None = None    # (B, T) float revenue per event
    query_gaps: torch.Tensor | None = None  # (B,) long, gap bucket of a trailing query token
    query_feats: torch.Tensor | None = None  # (B, F) summary numbers of the history before the query
    value_target: torch.Tensor | None = None  # (B,) revenue in the window after the query time
    churn_target: torch.Tensor | None = None  # (B,) 1 = no purchase in that window
    value_mask: torch.Tensor | None = None    # (B,) 1 = the whole window is observed (label exists)
    prior_counts: torch.Tensor | None = None  # (B, n_items) item counts of the events before the window

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    def to(self, device) -> "Batch":
        return Batch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                        for f in fields(self)})


def prepare_history(items: np.ndarray, times: np.ndarray | None, types: np.ndarray | None,
                    values: np.ndarray | None, n_items: int, n_buckets: int) -> dict[str, np.ndarray]:
    """One history as model arrays: items outside the catalogue dropped, gap buckets computed."""
    items = np.asarray(items, dtype=np.int64)
    keep = (items >= 0) & (items < n_items)
    items = items[keep]
    t = np.asarray(times, dtype=np.float64)[keep] if times is not None else np.zeros(len(items))
    ty = np.asarray(types, dtype=np.int64)[keep] if types is not None else np.zeros(len(items), np.int64)
    ty = np.where((ty >= 0) & (ty < N_EVENT_TYPES), ty, N_EVENT_TYPES - 1)
    v = np.asarray(values, dtype=np.float32)[keep] if values is not None else np.zeros(len(items), np.float32)
    gap = np.diff(t, prepend=np.nan)
    gap = np.where(np.isnan(gap), -1.0, np.maximum(gap, 0.0))
    return {"items": items, "times": t, "types": ty, "gaps": time_gap_bucket(gap, n_buckets), "values": v}


def training_windows(h: dict[str, np.ndarray], max_len: int, all_windows: bool) -> list[dict[str, np.ndarray]]:
    """The last ``max_len + 1`` events (SASRec), and with ``all_windows`` also the earlier windows,
    stepping back ``max_len`` events at a time, so every event of a long history is a target once."""
    n = len(h["items"])
    ends = [n]
    while all_windows and ends[-1] - max_len >= 2:
        ends.append(ends[-1] - max_len)
    return [{**{k: v[max(0, e - max_len - 1):e] for k, v in h.items() if k != "prior_items"},
             "prior_items": np.concatenate([h.get("prior_items", np.zeros(0, np.int64)),
                                            h["items"][:max(0, e - max_len - 1)]])} for e in ends]


def next_basket_targets(items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each event, an item of the next basket: the events at the first later timestamp (-1 where
    there is none). The events of a basket share the next basket's items among them in turn, so over
    a basket every item of the next one is a target (deterministic, no sampling)."""
    n = len(items)
    out = np.full(n, -1, np.int64)
    if n == 0:
        return out
    start = np.searchsorted(times, times, side="right")               # first event after each time
    ok = start < n
    nxt_time = np.where(ok, times[np.minimum(start, n - 1)], np.nan)
    end = np.searchsorted(times, nxt_time, side="right")              # end of that basket
    # position within the own basket decides which next-basket item it targets
    own_start = np.searchsorted(times, times, side="left")
    k = np.arange(n) - own_start
    size = np.maximum(end - start, 1)
    out[ok] = items[(start + k % size)[ok]]
    return out


def future_window_targets(items: np.ndarray, times: np.ndarray, window_seconds: float) -> np.ndarray:
    """For each event, an item bought later within ``window_seconds`` (strictly later timestamp;
    -1 where there is none). Successive events take successive items of their window in turn, so
    every item of a user's near future is a target (deterministic, no sampling)."""
    n = len(items)
    out = np.full(n, -1, np.int64)
    if n == 0:
        return out
    start = np.searchsorted(times, times, side="right")
    end = np.searchsorted(times, times + window_seconds, side="right")
    ok = end > start
    size = np.maximum(end - start, 1)
    out[ok] = items[(start + np.arange(n) % size)[ok]]
    return out


def collate(histories: list[dict[str, np.ndarray]], max_len: int, with_targets: bool,
            as_of: np.ndarray | None = None, n_buckets: int = 32, count_items: int = 0,
            target: str = "next", target_window_days: float = 90.0) -> Batch:
    """Pad histories to the longest one in the batch (at most ``max_len``, keeping the latest events).

    ``with_targets``: the SASRec shifted-sequence form for training. Inputs are events 1..n-1 and the
    target at position t is item t+1, over the last ``max_len + 1`` events; with
    ``target="next_basket"`` it is an item of the next basket (``next_basket_targets``).
    """
    cut = max_len + 1 if with_targets else max_len
    hs = [{k: v[-cut:] for k, v in h.items() if k != "prior_items"} for h in histories]
    prior = None
    if count_items:   # the repeat term counts every earlier event, also those left out of the window
        prior = torch.zeros(len(histories), count_items)
        for b, h in enumerate(histories):
            before = np.concatenate([h.get("prior_items", np.zeros(0, np.int64)), h["items"][:-cut]])
            before = before[(before >= 0) & (before < count_items)]
            if len(before):
                prior[b].index_add_(0, torch.from_numpy(before.astype(np.int64)), torch.ones(len(before)))
    lens = [max(len(h["items"]) - (1 if with_targets else 0), 0) for h in hs]
    B, T = len(hs), max(max(lens, default=0), 1)
    items = np.zeros((B, T), np.int64)
    types = np.zeros((B, T), np.int64)
    gaps = np.zeros((B, T), np.int64)
    times = np.zeros((B, T), np.float64)
    values = np.zeros((B, T), np.float32)
    mask = np.zeros((B, T), bool)
    targets = np.full((B, T), -1, np.int64) if with_targets else None
    for b, (h, n) in enumerate(zip(hs, lens)):
        items[b, :n], types[b, :n], gaps[b, :n] = h["items"][:n], h["types"][:n], h["gaps"][:n]
        times[b, :n], values[b, :n], mask[b, :n] = h["times"][:n], h["values"][:n], True
        if with_targets and target == "next_basket":
            targets[b, :n] = next_basket_targets(h["items"], h["times"])[:n]
        elif with_targets and target == "window":
            targets[b, :n] = future_window_targets(h["items"], h["times"], target_window_days * 86400.0)[:n]
        elif with_targets:
            targets[b, :n] = h["items"][1:n + 1]
    query = None
    if as_of is not None:
        last = np.array([h["times"][n - 1] if n else np.nan for h, n in zip(hs, lens)])
        gap = np.where(np.isnan(last), -1.0, np.maximum(np.asarray(as_of, np.float64) - last, 0.0))
        query = torch.from_numpy(time_gap_bucket(gap, n_buckets))
    return Batch(items=torch.from_numpy(items), types=torch.from_numpy(types), gaps=torch.from_numpy(gaps),
                 mask=torch.from_numpy(mask), targets=None if targets is None else torch.from_numpy(targets),
                 times=torch.from_numpy(times), values=torch.from_numpy(values), query_gaps=query,
                 prior_counts=prior)


# ---------------------------------------------------------------------------------------------------
# Encoder and heads
# ---------------------------------------------------------------------------------------------------
class BehaviourEncoder(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.item_table = ItemTable(cfg)
        self.type_emb = nn.Embedding(N_EVENT_TYPES + 1, D) if cfg.use_event_types else None
        self.gap_emb = nn.Embedding(cfg.n_time_buckets, D) if cfg.use_time_gaps else None
        self.value_proj = nn.Linear(1, D) if cfg.use_values else None
        self.pos_emb = nn.Embedding(cfg.max_len + 1, D)   # +1: room for the trailing query token
        self.query_emb = nn.Parameter(torch.zeros(D))     # stands in for the item of the query token
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(D)

    def forward(self, batch: Batch, item_vectors: torch.Tensor | None = None,
                query_extra: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, T, D), or (B, T+1, D) with a query token at index ``lengths`` when
        ``batch.query_gaps`` is set. ``item_vectors`` (n_items, D) saves recomputing the table;
        ``query_extra`` (B, D) is added to the query token's input."""
        B, T = batch.items.shape
        if item_vectors is not None:
            x = item_vectors[batch.items]                                  # (B, T, D)
        else:
            x = self.item_table(batch.items)                               # (B, T, D)
        if self.type_emb is not None:
            x = x + self.type_emb(batch.types)
        if self.gap_emb is not None:
            x = x + self.gap_emb(batch.gaps)
        if self.value_proj is not None and batch.values is not None:
            x = x + self.value_proj(torch.log1p(batch.values.clamp(min=0).float()).unsqueeze(-1))
        x = x * batch.mask.unsqueeze(-1)                                   # padding tokens = 0
        if batch.query_gaps is not None:
            # Append a slot and write the query token right after each history's last event.
            x = torch.cat([x, x.new_zeros(B, 1, x.shape[-1])], dim=1)      # (B, T+1, D)
            q = self.query_emb.expand(B, -1)
            if self.type_emb is not None:
                q = q + self.type_emb.weight[QUERY_TYPE]
            if self.gap_emb is not None:
                q = q + self.gap_emb(batch.query_gaps)
            if query_extra is not None:
                q = q + query_extra                                        # (B, D), e.g. summary numbers
            x = x.index_put((torch.arange(B, device=x.device), batch.lengths), q)
            T = T + 1
        pos = torch.arange(T, device=x.device).clamp(max=self.cfg.max_len)
        x = self.drop(x + self.pos_emb(pos))                               # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)                                                # (B, T, D)


class NextItemHead(nn.Module):
    """Scores every item against the state: ``h . item_vector``. Loss: full softmax cross-entropy or
    sampled softmax with log-Q correction (Yi et al., 2019) for large catalogues."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("log_pop", torch.zeros(cfg.n_items))   # log training frequency (smoothed)
        self.repeat_gate = nn.Linear(cfg.d_model, 1) if cfg.repeat else None
        # how re-buyable each item is (consumables vs one-offs), learned; 0 at the start
        self.repeat_item = nn.Parameter(torch.zeros(cfg.n_items)) if cfg.repeat else None

    def scores(self, h: torch.Tensor, item_vectors: torch.Tensor,
               repeat_counts: torch.Tensor | None = None) -> torch.Tensor:
        """``h . item_vector`` (..., n_items); with the repeat term, plus (g(h) + r_item) * log1p(counts)."""
        s = h @ item_vectors.T
        if self.repeat_gate is not None and repeat_counts is not None:
            s = s + (self.repeat_gate(h) + self.repeat_item) * torch.log1p(repeat_counts)
        return s

    def loss(self, h: torch.Tensor, targets: torch.Tensor, item_table: ItemTable,
             item_vectors: torch.Tensor | None = None, items: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, prior_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss over positions with a target. h (B, T, D), targets (B, T) with -1 = none;
        ``items`` / ``mask`` (B, T): the inputs, for the repeat term's counts."""
        sel = targets >= 0
        counts = None
        if self.repeat_gate is not None and items is not None:
            counts = prefix_counts(items, mask, self.cfg.n_items)          # (B, T, n_items)
            if prior_counts is not None:
                counts = counts + prior_counts[:, None, :]
            counts = counts[sel]                                           # (P, n_items)
        h, y = h[sel], targets[sel]                                        # (P, D), (P,)
        if self.cfg.loss == "ce":
            if item_vectors is None:
                item_vectors = item_table()
            logits = self.scores(h, item_vectors, counts).float()         # (P, n_items)
            return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        cands, log_q, log_q_pos = self.sample_negatives(y)
        return sampled_softmax_loss(h, y, cands, log_q, log_q_pos, item_table)

    def sample_negatives(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate items (C,), log of their expected count in the sample (C,), and the same for
        each positive (P,): the log-Q correction subtracted from every logit."""
        N, K = self.cfg.n_items, self.cfg.n_negatives
        if self.cfg.negatives == "in-batch":
            # The batch's own targets: an item appears in proportion to its frequency in the data.
            cands, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
            log_q = torch.log(counts.float())
            return cands, log_q, log_q[inverse]
        if K >= N:  # the whole catalogue: the exact softmax (the reference the tests compare against)
            cands = torch.arange(N, device=y.device)
            return cands, torch.zeros(N, device=y.device), torch.zeros(len(y), device=y.device)
        if self.cfg.negatives == "uniform":
            cands = torch.randint(0, N, (K,), device=y.device)
            return (cands, torch.full((K,), math.log(K / N), device=y.device),
                    torch.full((len(y),), math.log(K / N), device=y.device))
        p = torch.softmax(self.log_pop, 0)                                  # p(i) ~ (1 + count_i)
        cands = torch.multinomial(p, K, replacement=True)
        return cands, torch.log(K * p[cands]), torch.log(K * p[y])


def prefix_counts(items: torch.Tensor, mask: torch.Tensor, n_items: int) -> torch.Tensor:
    """(B, T, n_items): how often each item occurs in events 0..t of each history (causal counts)."""
    B, T = items.shape
    onehot = torch.zeros(B, T, n_items, device=items.device)
    onehot.scatter_(2, items.clamp(0, n_items - 1)[..., None], mask[..., None].float())
    return onehot.cumsum(1)


def sampled_softmax_loss(h: torch.Tensor, y: torch.Tensor, cands: torch.Tensor, log_q: torch.Tensor,
                         log_q_pos: torch.Tensor, item_table: ItemTable) -> torch.Tensor:
    """-log softmax of the positive among [positive, candidates], every logit minus its log Q.
    Candidates equal to the positive are masked (accidental hits). h (P, D), y (P,), cands (C,)."""
    pos = (h * item_table(y)).sum(-1).float() - log_q_pos                 # (P,)
    neg = (h @ item_table(cands).T).float() - log_q[None, :]               # (P, C)
    neg = neg.masked_fill(cands[None, :] == y[:, None], float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)                         # (P, 1 + C)
    return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=h.device))


class BehaviourModel(nn.Module):
    """Encoder + heads. ``forward(batch)`` returns a dict of weighted losses; training sums it."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = BehaviourEncoder(cfg)
        self.next_item = NextItemHead(cfg)
        self.value_heads = (ValueHeads(cfg.d_model, cfg.value_hidden, n_query_features(cfg.value_features),
                                       standardise=cfg.value_features == "rfm")
                            if cfg.value_weight > 0 or cfg.churn_weight > 0 else None)
        self.apply(self._init_weights)
        if self.next_item.repeat_gate is not None:
            with torch.no_grad():   # start with the repeat term on: log1p(count) ~ one logit unit per doubling
                self.next_item.repeat_gate.bias.fill_(1.0)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def encode(self, batch: Batch, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        extra = None
        if self.value_heads is not None and batch.query_gaps is not None and batch.query_feats is not None:
            extra = self.value_heads.query_input(batch.query_feats)       # (B, D)
        return self.encoder(batch, item_vectors, extra)                    # (B, T[+1], D)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        full = self.cfg.loss == "ce"
        item_vectors = self.encoder.item_table() if full and self.cfg.n_items else None  # (n_items, D)
        h = self.encode(batch, item_vectors)                               # (B, T[+1], D)
        T = batch.items.shape[1]
        losses = {}
        has_targets = batch.targets is not None and bool((batch.targets >= 0).any())
        if self.cfg.next_item_weight > 0 and has_targets:
            losses["next_item"] = self.cfg.next_item_weight * self.next_item.loss(
                h[:, :T], batch.targets, self.encoder.item_table, item_vectors, batch.items, batch.mask,
                batch.prior_counts)
        if self.cfg.contrastive_weight > 0 and has_targets and self.training:
            losses["contrastive"] = self.cfg.contrastive_weight * self.contrastive_loss(
                h[:, :T], self.encode(batch, item_vectors)[:, :T], batch.targets)
        if self.value_heads is not None and batch.value_target is not None:
            hq = h[torch.arange(h.shape[0], device=h.device), batch.lengths]  # (B, D) at the query token
            losses.update(self.value_heads.losses(hq, batch.query_feats, batch.value_target, batch.churn_target,
                                                  batch.value_mask, self.cfg.value_weight, self.cfg.churn_weight))
        if not losses:  # nothing to learn from this batch; keep the graph connected for DDP
            losses["none"] = h.sum() * 0.0
        return losses

    def contrastive_loss(self, h1: torch.Tensor, h2: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """InfoNCE between two dropout views (B, T, D) of the same windows, at each window's last position
        with a target: view 1 of window b must pick view 2 of b among view 2 of every window, and the other
        way round. Windows with the same next item as b are left out of b's negatives."""
        has = targets >= 0                                                 # (B, T)
        rows = has.any(dim=1)
        if int(rows.sum()) < 2:
            return h1.sum() * 0.0
        T = targets.shape[1]
        last = T - 1 - torch.flip(has, dims=[1]).float().argmax(dim=1)     # (B,) last position with a target
        b = torch.arange(h1.shape[0], device=h1.device)[rows]
        y = targets[b, last[rows]]                                         # (R,)
        same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool, device=y.device)
        labels = torch.arange(len(y), device=y.device)
        # in float32 even under bf16 autocast: cosines / a small temperature need the precision
        with torch.autocast(device_type=h1.device.type, enabled=False):
            z1 = F.normalize(h1[b, last[rows]].float(), dim=-1)            # (R, D)
            z2 = F.normalize(h2[b, last[rows]].float(), dim=-1)
            logits = (z1 @ z2.T / self.cfg.contrastive_temperature).masked_fill(same, float("-inf"))
            return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    @torch.no_grad()
    def state(self, batch: Batch) -> torch.Tensor:
        """The user state (B, D): at the query token if the batch has one, else at the last event."""
        vectors = self.encoder.item_table.table() if self.cfg.n_items else None   # cached: no grad here
        h = self.encode(batch, vectors)                                    # (B, T, D)
        idx = batch.lengths if batch.query_gaps is not None else (batch.lengths - 1).clamp(min=0)
        return h[torch.arange(h.shape[0], device=h.device), idx]           # (B, D)


# ---------------------------------------------------------------------------------------------------
# The Recommender
# ---------------------------------------------------------------------------------------------------
def _split_kwargs(kwargs: dict) -> tuple[TransformerConfig, "TrainConfig"]:
    from valuerec.training.loop import TrainConfig
    model_keys = {f.name for f in fields(TransformerConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(kwargs) - model_keys - train_keys)
    if unknown:
        raise DataError(f"transformer: unknown config key(s) {unknown}; known: "
                        f"{sorted(model_keys | train_keys)}")
    try:
        mc = TransformerConfig(**{k: v for k, v in kwargs.items() if k in model_keys})
        tc = TrainConfig(**{k: v for k, v in kwargs.items() if k in train_keys})
    except TypeError as e:
        raise DataError(f"transformer config: {e}") from None
    return mc, tc


def transfer_weights(src: "BehaviourTransformer", dst: "BehaviourTransformer") -> None:
    """Copy every weight of ``src`` into ``dst`` whose shape matches; item-indexed tables are copied
    row by row for the item ids both catalogues share (new items keep their fresh rows). Buffers
    computed from the catalogue (attributes, text, popularity) stay as ``dst`` built them."""
    s_state, d_state = src.module_.state_dict(), dst.module_.state_dict()
    shared = [(i, src.catalogue_.index[str(item)]) for i, item in enumerate(dst.catalogue_.item_ids)
              if str(item) in src.catalogue_.index]
    d_idx = torch.tensor([a for a, _ in shared], dtype=torch.long)
    s_idx = torch.tensor([b for _, b in shared], dtype=torch.long)
    skip = {"encoder.item_table.attr_index", "encoder.item_table.text_emb", "next_item.log_pop"}
    with torch.no_grad():
        for name, t in d_state.items():
            if name in skip or name not in s_state:
                continue
            if name in ("encoder.item_table.id_emb.weight", "next_item.repeat_item"):
                t[d_idx] = s_state[name][s_idx]
            elif s_state[name].shape == t.shape:
                t.copy_(s_state[name])
    dst.module_.load_state_dict(d_state)


def _validation_in_training(train: Sequences, valid) -> bool:
    """True when over half of the validation users' training history is their validation input
    followed by their validation target (a refit on train + validation, e.g. ``Split.train_full``)."""
    if train.user_ids is None or valid.inputs.user_ids is None or not len(valid):
        return False
    where = {str(u): i for i, u in enumerate(train.user_ids)}
    hits = 0
    for u, inp, tgt in zip(valid.inputs.user_ids, valid.inputs.items, valid.targets):
        i = where.get(str(u))
        if i is not None and len(tgt) and len(train.items[i]) > len(inp) and train.items[i][len(inp)] in set(tgt):
            hits += 1
    return hits > len(valid) / 2


@register("transformer")
class BehaviourTransformer(Recommender):
    """``BehaviourTransformer(seed=0, d_model=64, epochs=200, ...)``: every field of
    ``TransformerConfig`` and ``training.loop.TrainConfig`` is a keyword; unknown keys are an error."""

    # Benchmarks fit it on the training split and stop early on validation (see evaluation.protocols).
    final_fit = "train"

    def __init__(self, seed: int = 0, **config):
        self.seed = int(seed)
        self.model_config, self.train_config = _split_kwargs(config)

    def config(self) -> dict:
        return {"seed": self.seed, **asdict(self.model_config), **asdict(self.train_config)}

    # -- fit -------------------------------------------------------------------------------------
    def fit(self, train: Sequences, catalogue: Catalogue, valid=None,
            warm_start: "BehaviourTransformer | None" = None) -> "BehaviourTransformer":
        """Train from scratch, or from ``warm_start``'s weights (fine-tuning; items are matched by id,
        so the catalogue may have grown: new items start from their text / attribute vectors). The fit
        seeds the global random generators from ``seed`` and gives the caller's states back after."""
        from valuerec.training.loop import caller_rng_kept
        with caller_rng_kept():
            return self._fit(train, catalogue, valid, warm_start)

    def _fit(self, train: Sequences, catalogue: Catalogue, valid=None,
             warm_start: "BehaviourTransformer | None" = None) -> "BehaviourTransformer":
        from valuerec.evaluation.metrics import evaluate
        from valuerec.training.loop import train_model

        torch.manual_seed(self.seed)
        self.cooc_sim_ = None
        self.ann_ = None        # item vectors change: an index built before would be stale
        if valid is not None and _validation_in_training(train, valid):
            log.warning("transformer: most validation targets are also in the training histories; early stopping "
                        "on them selects on training data. Fit on the training split, or pass a fixed 'epochs' "
                        "and valid=None for a final refit.")
        self.catalogue_ = catalogue
        cfg = self._configure_for(catalogue)
        self.module_ = BehaviourModel(cfg)
        self._fill_item_side_info(catalogue)
        # fine-tuning keeps the heads' input scaling and starting point: the transferred head weights
        # were learned on them
        self._warm_heads = (warm_start is not None and getattr(warm_start.module_, "value_heads", None) is not None
                            and warm_start.model_config.value_features == cfg.value_features)
        if warm_start is not None:
            transfer_weights(warm_start, self)
        raw = train
        train = train.item_only()
        hist = self._histories(train)
        counts = np.bincount(np.concatenate([h["items"] for h in hist]) if hist else np.zeros(0, np.int64),
                             minlength=cfg.n_items)
        self.module_.next_item.log_pop.copy_(torch.from_numpy(np.log1p(counts).astype(np.float32)))
        if self.module_.value_heads is not None:
            n_examples, make_batch, lengths = self._value_examples(raw, hist)
        else:
            examples = [w for h in hist if len(h["items"]) >= 2
                        for w in training_windows(h, cfg.max_len, cfg.all_windows)]
            if not examples:
                raise DataError("transformer: no training history has 2 or more events")
            lengths = np.array([min(len(h["items"]) - 1, cfg.max_len) for h in examples])
            n_examples = len(examples)

            def make_batch(idx: np.ndarray) -> Batch:
                return collate([examples[i] for i in idx], cfg.max_len, with_targets=True,
                               n_buckets=cfg.n_time_buckets, count_items=cfg.n_items if cfg.repeat else 0,
                               target=cfg.target, target_window_days=cfg.target_window_days)

        def validate(module: BehaviourModel) -> dict:
            self.module_ = module
            return evaluate(self.score, valid, cfg.n_items, ks=validation_ks(self.train_config.monitor))

        result = train_model(self.module_, n_examples, make_batch, self.train_config, seed=self.seed,
                             evaluate_fn=validate if valid is not None and len(valid) else None,
                             lengths=lengths, run_info=self._run_info(raw))
        self.module_ = result.model
        self.history_ = result.history
        self.best_ = result.best
        self.device_ = result.device
        if cfg.cooc_weight == "auto" or cfg.cooc_weight > 0:
            self._fit_cooc(train, valid)
        if self.module_.value_heads is not None:
            self._value_reference(raw)
        return self

    def _run_info(self, train: Sequences) -> dict:
        """What a checkpoint must share with this fit beside the train settings: the model's settings and,
        when it checkpoints, a digest of the training events (other data of the same size is another run)."""
        info = asdict(self.model_config)
        if self.train_config.checkpoint_dir:
            import hashlib
            h = hashlib.blake2b(digest_size=8)
            for arrays in (train.items, train.times, train.event_types, train.values):
                for a in arrays or []:
                    h.update(len(a).to_bytes(8, "little") + np.ascontiguousarray(a).tobytes())
                h.update(b"|")
            info["training_data"] = h.hexdigest()
        return info

    # -- co-occurrence prior -----------------------------------------------------------------------
    def _fit_cooc(self, train: Sequences, valid) -> None:
        """Item-kNN over the training histories; with cooc_weight / cooc_repeat_share 'auto', the
        setting that scores best on validation (``train_config.monitor``), all scored in one pass."""
        from valuerec.evaluation.metrics import evaluate_variants
        from valuerec.models.itemknn import ItemKNN
        cfg = self.model_config
        knn = ItemKNN(neighbours=cfg.cooc_neighbours, recency_decay=cfg.cooc_recency_decay)
        self.cooc_sim_ = knn.fit(train, self.catalogue_).sim_.tocsr().astype(np.float32)
        if "auto" not in (cfg.cooc_weight, cfg.cooc_repeat_share):
            return
        if valid is None or not len(valid):
            raise DataError("transformer: cooc_weight / cooc_repeat_share 'auto' are chosen on validation data; "
                            "pass valid data or fixed numbers")
        monitor = self.train_config.monitor
        weights = COOC_WEIGHTS if cfg.cooc_weight == "auto" else (cfg.cooc_weight,)
        shares = COOC_REPEAT_SHARES if cfg.cooc_repeat_share == "auto" else (cfg.cooc_repeat_share,)
        grid = [(w, a) for w in weights for a in (shares if w else shares[:1])]   # w = 0: no prior at all
        key = (lambda w, a: f"w={w:g},repeat_share={a:g}")
        variants = {key(w, a): (lambda parts, w=w, a=a: self._combine_cooc(*parts, w, a)) for w, a in grid}
        curve = evaluate_variants(lambda h: self._score_parts(h, with_own=max(shares) > 0), variants, valid,
                                  self.n_items, ks=validation_ks(monitor))
        first = curve[key(*grid[0])]
        if monitor not in first:
            raise DataError(f"transformer: monitor {monitor!r} is not a validation metric; known: {sorted(first)}")
        # ties: the smaller weight, then the smaller repeat share
        w, a = max(grid, key=lambda g: (curve[key(*g)][monitor], -g[0], -g[1]))
        cfg.cooc_weight, cfg.cooc_repeat_share = float(w), float(a)
        self.cooc_selection_ = {"monitor": monitor, "chosen": {"cooc_weight": float(w), "cooc_repeat_share": float(a)},
                                "curve": {k: {m: v[m] for m in dict.fromkeys((monitor, "hr@10", "ndcg@10", "ndcg@20",
                                                                              "recall@20")) if m in v}
                                          for k, v in curve.items()}}
        log.info("transformer: cooc_weight %.2f, cooc_repeat_share %.2f chosen on validation (%s %.4f; without the "
                 "prior %.4f)", w, a, monitor, curve[key(w, a)][monitor], curve[key(*grid[0])][monitor]
                 if grid[0][0] == 0 else float("nan"))

    def _cooc_parts(self, histories: Sequences, with_own: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n_items) kNN scores and (if asked) own recency-weighted counts, each normalised to sum 1
        per row (all-zero rows stay zero)."""
        from valuerec.models.itemknn import history_weights
        H = history_weights(histories, self.n_items, self.model_config.cooc_recency_decay)
        k = torch.from_numpy((H @ self.cooc_sim_).toarray().astype(np.float32))
        k = k / k.sum(dim=1, keepdim=True).clamp(min=1e-30)
        if not with_own:
            return k, None
        own = torch.from_numpy(H.toarray().astype(np.float32))
        return k, own / own.sum(dim=1, keepdim=True).clamp(min=1e-30)

    def _score_parts(self, histories: Sequences, with_own: bool | None = None) -> tuple:
        """(model log-probabilities, kNN share, own-count share or None, empty-history mask)."""
        if with_own is None:
            with_own = self.model_config.cooc_repeat_share not in ("auto", 0.0)
        sc, empty = self._model_scores(histories)
        return (torch.log_softmax(sc, dim=1), *self._cooc_parts(histories, with_own), empty)

    @staticmethod
    def _combine_cooc(log_p: torch.Tensor, knn: torch.Tensor, own: torch.Tensor | None, empty: torch.Tensor,
                      w: float, share: float = 0.0) -> torch.Tensor:
        """log_p + w * log(COOC_FLOOR + q), q = (1 - share) * knn + share * own; rows where q has no
        mass (no known item, or no neighbour) and empty histories keep log_p."""
        if not w:
            return log_p.clone()
        q = knn if not share else (1.0 - share) * knn + share * own
        has = q.sum(dim=1, keepdim=True) > 0
        out = log_p + w * torch.where(has, torch.log(q + COOC_FLOOR), torch.zeros_like(q))
        out[empty] = log_p[empty]          # an empty history keeps its popularity scores
        return out

    def refit_params(self) -> dict:
        """Config values this fit chose on validation ('auto' settings), to reuse in a refit without it."""
        sel = getattr(self, "cooc_selection_", None)
        return dict(sel["chosen"]) if sel else {}

    def fit_report(self) -> dict:
        sel = getattr(self, "cooc_selection_", None)
        return {"cooc_selection": sel} if sel else {}

    def uses_cooc(self) -> bool:
        w = self.model_config.cooc_weight
        return getattr(self, "cooc_sim_", None) is not None and w != "auto" and w > 0

    def ablation_score_fns(self) -> dict:
        """Scorings of the same fitted model without a part, for benchmarks to report beside it."""
        if not self.uses_cooc():
            return {}
        return {"no_cooc_prior": lambda h: self._model_scores(h)[0]}

    @property
    def has_value_head(self) -> bool:
        return getattr(self, "module_", None) is not None and self.module_.value_heads is not None

    @property
    def has_next_item_head(self) -> bool:
        """False for a value-only model (trained with ``next_item_weight=0``): its item scores are
        untrained, so it cannot recommend."""
        return float(self.model_config.next_item_weight) > 0

    @property
    def horizon_days_(self) -> float | None:
        """The window ``predict_value`` covers, under the name the value baselines give it (None
        without value heads)."""
        return float(self.model_config.horizon_days) if self.has_value_head else None

    def _value_reference(self, raw: Sequences) -> None:
        """The top-decile bar of predicted value over the training population at the data end: what
        "top value" means when stages are assigned one user at a time (the service)."""
        end = getattr(self, "data_end_", None)
        buyers = [u for u in range(len(raw)) if len(raw.items[u]) and
                  purchase_mask(np.asarray(raw.event_types[u]) if raw.event_types is not None else np.zeros(len(raw.items[u]), np.int64),
                                np.asarray(raw.values[u]) if raw.values is not None else np.zeros(len(raw.items[u]))).any()]
        if end is None or not buyers:
            return
        pred = self.predict_value(raw.subset(buyers), as_of=end)
        self.advocate_value_threshold_ = float(np.quantile(pred["expected_value"], 0.9))

    def _configure_for(self, catalogue: Catalogue) -> TransformerConfig:
        cfg = self.model_config
        attrs = catalogue.attributes if cfg.use_attributes else None
        vocab = sorted({str(a) for lst in attrs or [] if lst for a in lst})
        max_a = max((len(lst) for lst in attrs or [] if lst), default=0)
        text_dim = 0
        if cfg.use_text and catalogue.text is not None:
            from valuerec.features.text import embedding_dim
            text_dim = embedding_dim(cfg.text_model)
        # A value-only log has no items; one placeholder row keeps the item table well-formed.
        cfg.n_items = max(len(catalogue), 1)
        cfg.n_attributes, cfg.max_attributes, cfg.text_dim = len(vocab), max_a, text_dim
        self._attr_vocab = {a: i for i, a in enumerate(vocab)}
        return cfg

    def _fill_item_side_info(self, catalogue: Catalogue) -> None:
        cfg, table = self.model_config, self.module_.encoder.item_table
        if cfg.n_attributes:
            idx = np.full((cfg.n_items, cfg.max_attributes), cfg.n_attributes, np.int64)
            for i, lst in enumerate(catalogue.attributes):
                for j, a in enumerate(lst or []):
                    idx[i, j] = self._attr_vocab[str(a)]
            table.attr_index.copy_(torch.from_numpy(idx))
        if cfg.text_dim:
            from valuerec.features.text import embed_texts
            table.text_emb.copy_(torch.from_numpy(embed_texts(catalogue.text, cfg.text_model)))

    def _histories(self, seqs: Sequences) -> list[dict[str, np.ndarray]]:
        cfg = self.model_config
        return [prepare_history(seqs.items[u], None if seqs.times is None else seqs.times[u],
                                None if seqs.event_types is None else seqs.event_types[u],
                                None if seqs.values is None else seqs.values[u], cfg.n_items, cfg.n_time_buckets)
                for u in range(len(seqs))]

    # -- value and churn -------------------------------------------------------------------------
    def _raw_arrays(self, seqs: Sequences, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All events of user u (also those without an item): times, types, values."""
        n = len(seqs.items[u])
        t = np.asarray(seqs.times[u], np.float64) if seqs.times is not None else np.arange(n, dtype=np.float64)
        ty = np.asarray(seqs.event_types[u], np.int64) if seqs.event_types is not None else np.zeros(n, np.int64)
        v = np.asarray(seqs.values[u], np.float64) if seqs.values is not None else np.zeros(n)
        return t, ty, v

    def _value_examples(self, raw: Sequences, hist: list[dict[str, np.ndarray]]):
        """(user, cut-off) examples on a calendar grid: the history before the cut-off, a query token
        at it, and the value / churn labels of the window after it (masked where not fully observed)."""
        cfg = self.model_config
        if raw.times is None:
            raise DataError("transformer value heads need event times")
        arrays = [self._raw_arrays(raw, u) for u in range(len(raw))]
        t_all = np.concatenate([a[0] for a in arrays if len(a[0])]) if arrays else np.zeros(0)
        if len(t_all) == 0:
            raise DataError("transformer: no training events")
        data_end = float(cfg.data_end) if cfg.data_end else float(t_all.max()) + 1.0
        self.data_end_ = data_end
        cuts = cutoff_grid(float(t_all.min()), data_end, cfg.horizon_days, cfg.value_step_days, cfg.value_max_cuts)
        H = cfg.horizon_days * 86_400.0
        ex_user, ex_cut, feats, y_val, y_churn, y_mask, lengths = [], [], [], [], [], [], []
        for u, (t, ty, v) in enumerate(arrays):
            buy_t = t[purchase_mask(ty, v)]
            for c in cuts:
                # the population as in V1: at least one purchase before the cut-off
                if not len(buy_t) or buy_t[0] >= c:
                    continue
                val, _ = window_labels(t, ty, v, c, cfg.horizon_days)
                ex_user.append(u)
                ex_cut.append(c)
                if cfg.value_features == "summary":
                    before = t < c
                    feats.append(summary_features(t[before], ty[before], v[before], c, cfg.horizon_days))
                y_val.append(val)
                # churn as V1 scores it: no purchase in the window
                y_churn.append(float(not ((buy_t >= c) & (buy_t < c + H)).any()))
                y_mask.append(float(c + H <= data_end))
                lengths.append(min(int((hist[u]["times"] < c).sum()), cfg.max_len))
        if not ex_user:
            raise DataError("transformer: no user has a purchase before any training cut-off")
        ex_user, ex_cut = np.asarray(ex_user), np.asarray(ex_cut)
        if cfg.value_features == "rfm":   # one vectorised table per cut-off, rows picked per example
            feats = np.zeros((len(ex_user), n_query_features("rfm")), np.float32)
            for c in np.unique(ex_cut):
                at = ex_cut == c
                feats[at] = rfm_inputs(raw.subset(ex_user[at]), int(np.ceil(c)))  # t < c == t < ceil(c)
        else:
            feats = np.stack(feats).astype(np.float32)
        if not getattr(self, "_warm_heads", False):
            self.module_.value_heads.set_standardisation(feats)
        y_val, y_churn, y_mask = (np.asarray(a, np.float32) for a in (y_val, y_churn, y_mask))
        labelled = y_mask > 0
        if labelled.any() and not getattr(self, "_warm_heads", False):
            self.module_.value_heads.ziln.init_from_targets(y_val[labelled])
            self.module_.value_heads.init_churn_from_targets(y_churn[labelled])
        log.info("value heads: %d examples over %d cut-offs (%d labelled)", len(ex_user), len(cuts),
                 int(labelled.sum()))

        def make_batch(idx: np.ndarray) -> Batch:
            hs = []
            for i in idx:
                h, c = hist[ex_user[i]], ex_cut[i]
                keep = h["times"] < c
                hs.append({k: a[keep] for k, a in h.items()})
            b = collate(hs, cfg.max_len, with_targets=False, as_of=ex_cut[idx], n_buckets=cfg.n_time_buckets)
            # next-item targets inside the history before the cut-off: position t predicts item t+1
            tgt = torch.full_like(b.items, -1)
            tgt[:, :-1] = torch.where(b.mask[:, 1:], b.items[:, 1:], torch.full_like(b.items[:, 1:], -1))
            b.targets = tgt
            b.query_feats = torch.from_numpy(feats[idx])
            b.value_target = torch.from_numpy(y_val[idx])
            b.churn_target = torch.from_numpy(y_churn[idx])
            b.value_mask = torch.from_numpy(y_mask[idx])
            return b

        return len(ex_user), make_batch, np.asarray(lengths)

    def predict_value(self, histories: Sequences, as_of, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Value over the horizon as of ``as_of`` (unix s, scalar or one per history), from the events
        before it: expected_value, p_buy, churn_prob (no purchase in the window; p_buy = 1 - churn_prob,
        from the churn head when it is trained), lower / upper (10% / 90% quantiles)."""
        module, cfg = self.module_, self.model_config
        if module.value_heads is None:
            raise DataError("this transformer has no value head (train it with value_weight > 0)")
        # NaN / inf would be answered with NaNs; milliseconds put every event "before" a far future
        as_of = unix_seconds(as_of, len(histories), "predict_value: as_of")
        if len(histories) == 0:
            return {k: np.zeros(0) for k in ("expected_value", "p_buy", "churn_prob", "lower", "upper")}
        device = next(module.parameters()).device
        hist = self._histories(histories)
        if module.training:   # eval() walks every submodule: skip it when already set
            module.eval()
        out: dict[str, list] = {}
        with torch.no_grad():
            for s0 in range(0, len(hist), batch_size):
                idx = list(range(s0, min(s0 + batch_size, len(hist))))
                hs, fs = [], []
                for u in idx:
                    if cfg.value_features == "summary":
                        t, ty, v = self._raw_arrays(histories, u)
                        before = t < as_of[u]
                        fs.append(summary_features(t[before], ty[before], v[before], as_of[u], cfg.horizon_days))
                    keep = hist[u]["times"] < as_of[u]
                    hs.append({k: a[keep] for k, a in hist[u].items()})
                if cfg.value_features == "rfm":
                    fs = rfm_inputs(histories.subset(idx), np.ceil(as_of[idx]).astype(np.int64))
                b = collate(hs, cfg.max_len, with_targets=False, as_of=as_of[idx], n_buckets=cfg.n_time_buckets)
                b.query_feats = torch.from_numpy(np.asarray(np.stack(fs), np.float32))
                b = b.to(device)
                h = module.encode(b)                                       # (b, T+1, D)
                hq = h[torch.arange(h.shape[0], device=h.device), b.lengths]  # (b, D) at the query token
                for k, val in module.value_heads.predict(hq, b.query_feats).items():
                    out.setdefault(k, []).append(np.asarray(val))
        out = {k: np.concatenate(v) for k, v in out.items()}
        # One answer to "will they buy in the window": the churn head's, which is trained on exactly that
        # label, when it is trained (churn_weight > 0); else the ZILN head's p(buy). Expected value and
        # its interval stay the ZILN head's.
        if cfg.churn_weight > 0:
            out["p_buy"] = 1.0 - out["churn_prob"]
        else:
            out["churn_prob"] = 1.0 - out["p_buy"]
        return out

    # -- inference -------------------------------------------------------------------------------
    def encode_histories(self, histories: Sequences, as_of=None, batch_size: int = 256) -> torch.Tensor:
        """User states (B, D) on CPU. ``as_of`` (unix seconds, scalar or (B,)) adds the query token."""
        cfg, module = self.model_config, self.module_
        device = next(module.parameters()).device
        hist = self._histories(histories)
        if as_of is not None:
            as_of = np.broadcast_to(np.asarray(as_of, dtype=np.float64), (len(hist),))
        out = []
        if module.training:   # eval() walks every submodule: skip it when already set
            module.eval()
        with torch.no_grad():
            for s in range(0, len(hist), batch_size):
                b = collate(hist[s:s + batch_size], cfg.max_len, with_targets=False,
                            as_of=None if as_of is None else as_of[s:s + batch_size],
                            n_buckets=cfg.n_time_buckets).to(device)
                out.append(module.state(b).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, cfg.d_model)

    def score(self, histories: Sequences, as_of=None, batch_size: int = 256) -> torch.Tensor:
        """(B, n_items) scores. Items outside the catalogue are ignored; histories are cut to the
        last ``max_len`` events; an empty history gets the training popularity (log counts). With a
        co-occurrence prior (``cooc_weight``) the scores are log-probabilities plus the weighted prior.
        ``as_of`` is accepted for the common interface and not used: the next item is read at the last
        event (the recency-aware query token serves the value / churn heads, ``encode_histories``)."""
        if not self.uses_cooc():
            return self._model_scores(histories, batch_size)[0]
        cfg = self.model_config
        return self._combine_cooc(*self._score_parts(histories), cfg.cooc_weight, cfg.cooc_repeat_share)

    def _model_scores(self, histories: Sequences, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(the network's scores (B, n_items), empty-history mask (B,))."""
        module = self.module_
        device = next(module.parameters()).device
        if module.training:   # eval() walks every submodule: skip it when already set
            module.eval()
        out, empties = [], []
        with torch.no_grad():
            vectors = module.encoder.item_table.table()                    # (n_items, D)
            for s in range(0, len(histories), batch_size):
                sub = histories.subset(np.arange(s, min(s + batch_size, len(histories))))
                hist = self._histories(sub)
                cfg = self.model_config
                b = collate(hist, cfg.max_len, with_targets=False, n_buckets=cfg.n_time_buckets,
                            count_items=cfg.n_items if cfg.repeat else 0).to(device)
                h = module.state(b)                                        # (b, D)
                counts = None
                if module.next_item.repeat_gate is not None:                # over the whole history
                    counts = torch.zeros(len(b.items), self.n_items, device=device).scatter_add_(
                        1, b.items.clamp(0, self.n_items - 1), b.mask.float()) + b.prior_counts
                sc = module.next_item.scores(h, vectors, counts).float()  # (b, n_items)
                empty = b.lengths == 0
                if empty.any():
                    sc[empty] = module.next_item.log_pop
                out.append(sc.cpu())
                empties.append(empty.cpu())
        if not out:
            return torch.zeros(0, self.n_items), torch.zeros(0, dtype=torch.bool)
        return torch.cat(out), torch.cat(empties)

    # -- retrieval through an index (large catalogues) -------------------------------------------------
    def build_ann_index(self, exact: bool = False, m: int = 32, ef_construction: int = 128,
                        ef_search: int = 256, extra: int = 100, cache: str | Path | None = None,
                        ) -> "BehaviourTransformer":
        """Index the item vectors (faiss, inner product) so that ``recommend`` retrieves candidates instead
        of scoring the whole catalogue: HNSW graph search (approximate; ``m``, ``ef_*`` trade speed for
        recall), or brute force with ``exact=True`` (a check, no faster than plain scoring).

        The network's score of an item is state . item_vector (+ the repeat term for items in the
        history). So the index's top ``k + excluded + extra`` items by state . vector, together with the
        user's own items and, with a co-occurrence prior, the items that prior scores, hold the full
        ranking's top k whenever the index finds the true nearest items; those candidates are scored
        exactly. With the prior the scores returned leave out the softmax's normaliser (one constant per
        user): their order, not their level, matches ``score``. ``add_items`` rebuilds the index.

        ``cache``: a directory where the index is kept (``index.faiss`` + ``index.json``) and read back
        when it was built from the same item vectors with the same settings (building an HNSW graph of
        600k items takes minutes on one thread); a stale or unreadable one is rebuilt."""
        import hashlib

        import faiss
        vec = np.ascontiguousarray(self.module_.encoder.item_table.table().detach().float().cpu().numpy())
        meta = {"vectors_sha256": hashlib.sha256(vec.tobytes()).hexdigest(), "shape": list(vec.shape),
                "exact": exact, "m": m, "ef_construction": ef_construction, "faiss": faiss.__version__}
        index = _read_index(cache, meta)
        if index is None:
            if exact:
                index = faiss.IndexFlatIP(vec.shape[1])
            else:
                index = faiss.IndexHNSWFlat(vec.shape[1], m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = ef_construction
            index.add(vec)
            _write_index(cache, index, meta)
        if not exact:
            index.hnsw.efSearch = ef_search
        self.ann_, self.ann_extra_ = index, int(extra)
        self.ann_params_ = dict(exact=exact, m=m, ef_construction=ef_construction, ef_search=ef_search, extra=extra,
                                cache=cache)
        return self

    def recommend(self, histories: Sequences, k: int = 10, exclude: list[np.ndarray] | str | None = "history",
                  ) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, "ann_", None) is None:
            return super().recommend(histories, k, exclude)
        blocked = self.blocked_items()
        if len(blocked):    # the index search leaves them out as it leaves out excluded items
            if isinstance(exclude, str) and exclude == "history":
                exclude = [h[h >= 0] for h in histories.items]
            exclude = [np.union1d(np.asarray(e, dtype=np.int64), blocked)
                       for e in (exclude if exclude is not None else [np.zeros(0, np.int64)] * len(histories))]
        return self._recommend_indexed(histories, k, exclude)

    def _recommend_indexed(self, histories: Sequences, k: int, exclude) -> tuple[np.ndarray, np.ndarray]:
        cfg, module = self.model_config, self.module_
        if isinstance(exclude, str) and exclude == "history":
            exclude = [h[h >= 0] for h in histories.items]
        B, N = len(histories), self.n_items
        if int(k) < 1:
            raise DataError(f"recommend: k={k}, must be >= 1")
        k = min(int(k), N)
        own = [np.asarray(x)[(np.asarray(x) >= 0) & (np.asarray(x) < N)] for x in histories.items]
        state = self.encode_histories(histories)                            # (B, D)
        n_ex = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        _, found = self.ann_.search(np.ascontiguousarray(state.numpy(), dtype=np.float32),
                                    min(N, k + n_ex + self.ann_extra_))
        q = None
        if self.uses_cooc():
            knn, own_q = self._cooc_parts(histories, cfg.cooc_repeat_share not in ("auto", 0.0))
            share = cfg.cooc_repeat_share
            q = (knn if not share else (1.0 - share) * knn + share * own_q).numpy()
        device = next(module.parameters()).device       # a model fitted on a GPU stays there: score on the CPU
        with torch.no_grad():
            vectors = module.encoder.item_table.table().float().cpu()
            gate = (module.next_item.repeat_gate(state.to(device)).squeeze(1).float().cpu()
                    if module.next_item.repeat_gate is not None else None)
            repeat_item = (module.next_item.repeat_item.detach().float().cpu()
                           if module.next_item.repeat_item is not None else None)
        top_i = np.full((B, k), -1, dtype=np.int64)
        top_s = np.full((B, k), -np.inf, dtype=np.float32)
        for u in range(B):
            if len(own[u]) == 0:       # an empty history: the training popularity, as score() gives it
                cand = torch.arange(N)
                s = module.next_item.log_pop.detach().float().cpu().clone()
                if q is not None:   # score() gives log-probabilities when it combines the prior
                    s = torch.log_softmax(s, dim=0)
            else:
                parts = [found[u][found[u] >= 0], own[u]]
                if q is not None:
                    parts.append(np.flatnonzero(q[u] > 0))
                cand = torch.as_tensor(np.unique(np.concatenate(parts)), dtype=torch.long)
                with torch.no_grad():
                    s = (vectors[cand] @ state[u]).float()
                    if gate is not None:
                        # times each candidate occurs in the history (no catalogue-sized count array per user)
                        ids, n_of = np.unique(own[u], return_counts=True)
                        at = np.minimum(np.searchsorted(ids, cand.numpy()), len(ids) - 1)
                        counts = torch.as_tensor(np.where(ids[at] == cand.numpy(), n_of[at], 0), dtype=torch.float32)
                        s = s + (gate[u] + repeat_item[cand]) * torch.log1p(counts)
                if q is not None and q[u].sum() > 0:
                    s = s + cfg.cooc_weight * torch.log(torch.as_tensor(q[u][cand.numpy()]) + COOC_FLOOR)
            if exclude is not None and len(exclude[u]):
                s[torch.as_tensor(np.isin(cand.numpy(), exclude[u]))] = float("-inf")
            kk = min(k, len(cand))
            v, j = torch.topk(s, kk)
            top_i[u, :kk], top_s[u, :kk] = cand[j].numpy(), v.numpy()
        top_i[top_s == -np.inf] = -1        # fewer than k left: -1, as the full ranking gives
        return top_i, top_s

    # -- new items -------------------------------------------------------------------------------
    def add_items(self, items: Catalogue) -> "BehaviourTransformer":
        """Append items the model has never seen (ids not yet in the catalogue), without retraining.

        A new item's vector is its content alone: id embedding 0, plus its known attributes and its
        projected text embedding. So an item with text is scored sensibly before any interaction.
        """
        new = [i for i, x in enumerate(items.item_ids) if str(x) not in self.catalogue_.index]
        if not new:
            return self
        old, cfg = self.catalogue_, self.model_config
        n_old = len(old)
        pad = (lambda xs, n: list(xs) if xs is not None else [None] * n)
        text = pad(old.text, n_old) + [items.text[i] if items.text is not None else None for i in new]
        attrs = pad(old.attributes, n_old) + [items.attributes[i] if items.attributes is not None else None
                                              for i in new]
        price = np.concatenate([old.price if old.price is not None else np.full(n_old, np.nan),
                                [items.price[i] if items.price is not None else np.nan for i in new]])
        self.catalogue_ = Catalogue(item_ids=np.concatenate([old.item_ids, items.item_ids[new]]),
                                    text=text if any(t is not None for t in text) else None,
                                    attributes=attrs if any(a is not None for a in attrs) else None, price=price)
        old_state = self.module_.state_dict()
        cfg.n_items = len(self.catalogue_)
        device = next(self.module_.parameters()).device
        module = BehaviourModel(cfg).to(device)
        state = module.state_dict()
        for k, v in old_state.items():
            if state[k].shape == v.shape:
                state[k] = v
            else:  # an (n_items, ...) table: old rows kept, new rows filled below
                state[k][:n_old] = v
                state[k][n_old:] = 0
        module.load_state_dict(state)
        table = module.encoder.item_table
        with torch.no_grad():
            if cfg.n_attributes:
                vocab = self._attr_vocab
                for row, i in enumerate(new, start=n_old):
                    known = [vocab[str(a)] for a in (attrs[row] or []) if str(a) in vocab][: cfg.max_attributes]
                    table.attr_index[row] = cfg.n_attributes
                    table.attr_index[row, :len(known)] = torch.tensor(known, dtype=torch.long)
            if cfg.text_dim:
                from valuerec.features.text import embed_texts
                table.text_emb[n_old:] = torch.from_numpy(embed_texts(text[n_old:], cfg.text_model)).to(device)
        self.module_ = module.eval()
        if getattr(self, "cooc_sim_", None) is not None:   # new items: no co-occurrences yet
            self.cooc_sim_.resize((cfg.n_items, cfg.n_items))
        if getattr(self, "ann_", None) is not None:
            self.build_ann_index(**self.ann_params_)
        return self

    def add_store_items(self, items: "pd.DataFrame | None") -> int:
        """``add_items`` for the rows of a store's item table (``EventStore.items()``) this model has not
        seen and can score by content: with text when it embeds item text, with attributes when it
        embeds attributes. The cold start of items that have no events yet; returns how many were added."""
        cfg = self.model_config
        if items is None or not len(items) or not (cfg.text_dim or cfg.n_attributes):
            return 0
        has_text = items["text"].map(lambda t: isinstance(t, str) and bool(t.strip())) if cfg.text_dim else False
        has_attrs = (items["attributes"].map(lambda a: isinstance(a, list) and len(a) > 0)
                     if cfg.n_attributes else False)
        new = items[(has_text | has_attrs) & ~items["item_id"].astype(str).isin(self.catalogue_.index)]
        if new.empty:
            return 0
        self.add_items(catalogue_from(pd.DataFrame({"item_id": pd.Series([], dtype=object)}), new,
                                      restrict_to_events=False))
        return len(new)

    # -- persistence -----------------------------------------------------------------------------
    def _save_state(self, path: Path) -> None:
        from safetensors.torch import save_file
        state = {k: v.detach().cpu().contiguous() for k, v in self.module_.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))
        (path / "attributes.json").write_text(json.dumps(sorted(self._attr_vocab, key=self._attr_vocab.get)))
        if getattr(self, "cooc_sim_", None) is not None:
            sp.save_npz(path / "cooc_sim.npz", self.cooc_sim_.tocsr())
        metrics = {"history": getattr(self, "history_", []), "best": getattr(self, "best_", None),
                   "advocate_value_threshold": getattr(self, "advocate_value_threshold_", None),
                   "cooc_selection": getattr(self, "cooc_selection_", None)}
        from valuerec.evaluation.results import finite_json
        (path / "metrics.json").write_text(json.dumps(finite_json(metrics), indent=2, default=float, allow_nan=False))

    def _load_state(self, path: Path) -> None:
        from safetensors.torch import load_file
        self.module_ = BehaviourModel(self.model_config)
        self.module_.load_state_dict(load_file(str(path / "model.safetensors")))
        vocab = json.loads((path / "attributes.json").read_text()) if (path / "attributes.json").exists() else []
        self._attr_vocab = {a: i for i, a in enumerate(vocab)}
        self.module_.eval()
        self.cooc_sim_ = None
        if (path / "cooc_sim.npz").exists():
            self.cooc_sim_ = sp.load_npz(path / "cooc_sim.npz").tocsr().astype(np.float32)
        elif self.model_config.cooc_weight == "auto" or self.model_config.cooc_weight > 0:
            raise DataError(f"{path}: the config uses a co-occurrence prior but cooc_sim.npz is missing")
        mpath = path / "metrics.json"
        if mpath.exists():
            m = json.loads(mpath.read_text())
            self.history_, self.best_ = m.get("history", []), m.get("best")
            if m.get("advocate_value_threshold") is not None:
                self.advocate_value_threshold_ = float(m["advocate_value_threshold"])
            if m.get("cooc_selection"):
                self.cooc_selection_ = m["cooc_selection"]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.module_.parameters())
