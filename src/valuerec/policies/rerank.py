"""Recommendation policies: named, configurable re-rankers over a model's top-N candidates.

A policy sees the candidates (the model's top ``n_candidates`` items per user, after exclusions) and
their relevance scores, plus whatever side information it needs (prices, item vectors, a value model,
lifecycle stages), and returns new scores over the candidates. ``apply_policy`` runs the whole thing
for any model with ``score(Sequences) -> (B, n_items)``; ``policy_score_fn`` wraps it as a scoring
function for ``evaluation.metrics.evaluate``.

Policies (``POLICIES``):
- ``plain``: the model's order.
- ``popular_diverse`` (new users): relevance blended with popularity, then maximal marginal relevance
  (MMR; Carbonell and Goldstein, 1998) over item vectors (the model's item embeddings, else hashed
  item text / attributes).
- ``favourites_winback`` (at-risk, lapsed): boosts items the user had before, recency-weighted
  (half-life), and adds them to the candidates.
- ``cross_sell_value`` (expanding): favours items priced above what the user usually buys, not yet bought.
- ``value_aware``: expected revenue p(item) x item value, blended with relevance p by weight ``w``
  (w = 0: by p, w = 1: by expected revenue). p is the softmax of the scores over the whole catalogue
  (``p="softmax"``; at w = 0 the model's own order) or, with ``p="learned"``, the probability that the
  user buys the candidate in the horizon from a second stage learned on a labelled window
  (``models.purchase_stage.PurchaseStage``, passed as ``purchase_model``).
- ``expected_revenue``: ``value_aware`` with the learned P(buy) and w = 1 (a name for the service).
- ``value_uplift``: "what if": each candidate appended as the next purchase, the value model re-scores
  the user; rank by the predicted change in value (blended with relevance by ``w``).
- ``stage``: each user gets the policy of their lifecycle stage.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from valuerec.configcheck import check_values, require
from valuerec.data.dataset import Catalogue, Sequences, unix_seconds
from valuerec.data.schema import DataError, event_type_code
from valuerec.models.base import apply_exclusions, mask_never_recommended, predicts_value

NEG = -1e30


# -- context ------------------------------------------------------------------------------------------
@dataclass
class PolicyContext:
    """Everything a policy may use, for a batch of B users and C candidates each."""

    histories: Sequences
    candidates: np.ndarray                 # (B, C) item indices, -1 = padding
    scores: torch.Tensor                   # (B, C) model relevance, -inf at padding
    full_scores: torch.Tensor              # (B, N) model scores over the catalogue, -inf = excluded
    catalogue: Catalogue | None = None
    as_of: np.ndarray | None = None        # (B,) unix seconds
    model: object | None = None
    value_model: object | None = None      # anything with predict_value(Sequences, as_of)
    item_value: np.ndarray | Callable | None = None  # (N,) value of one purchase of each item (default:
    #   price), a function of the histories giving a (B, N) per-user value, or an object with
    #   candidate_values(histories, candidates, as_of) -> (B, C) (models.item_value.ItemValueModel)
    item_vectors: np.ndarray | None = None  # (N, D) for diversity
    item_popularity: np.ndarray | None = None  # (N,) counts
    stages: np.ndarray | None = None       # (B,) stage names
    purchase_model: object | None = None   # predict(ctx) -> (B, C) P(buy) (models.purchase_stage)
    extras: dict = field(default_factory=dict)
    # values_of_candidates() computed once per context (a learned item value is a model call; the
    # purchase stage and the policy both read it); not copied by subset()
    _candidate_values: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def subset(self, idx: np.ndarray) -> "PolicyContext":
        t = torch.as_tensor(idx, dtype=torch.long)
        return replace(self, histories=self.histories.subset(idx), candidates=self.candidates[idx],
                       scores=self.scores[t], full_scores=self.full_scores[t],
                       as_of=None if self.as_of is None else self.as_of[idx],
                       stages=None if self.stages is None else self.stages[idx])

    @property
    def valid(self) -> torch.Tensor:
        return torch.as_tensor(self.candidates >= 0)

    def item_values(self) -> np.ndarray:
        """(N,) or (B, N) value of one purchase of each item."""
        v = self.item_value
        if v is None:
            return item_value_from_catalogue(self.catalogue)
        if hasattr(v, "candidate_values"):      # a learned model: every item, at this context's as-of
            every = np.tile(np.arange(self.full_scores.shape[1]), (len(self.histories), 1))
            return np.asarray(v.candidate_values(self.histories, every, self.as_of), dtype=np.float64)
        if callable(v):
            v = np.asarray(v(self.histories), dtype=np.float64)
            if v.shape[0] != len(self.histories):
                raise DataError(f"item_value function returned {v.shape[0]} rows for {len(self.histories)} users")
            return v
        return np.asarray(v, dtype=np.float64)

    def values_of_candidates(self) -> torch.Tensor:
        if self._candidate_values is None:
            self._candidate_values = self._compute_candidate_values()
        return self._candidate_values

    def _compute_candidate_values(self) -> torch.Tensor:
        if hasattr(self.item_value, "candidate_values"):   # values of the candidates only
            out = np.asarray(self.item_value.candidate_values(self.histories, self.candidates, self.as_of),
                             dtype=np.float64)
            if out.shape != self.candidates.shape:
                raise DataError(f"candidate_values returned shape {out.shape}, expected {self.candidates.shape}")
            return torch.as_tensor(np.where(self.candidates >= 0, out, 0.0), dtype=torch.float64)
        v = self.item_values()
        c = np.clip(self.candidates, 0, None)
        out = np.take_along_axis(v, c, axis=1) if v.ndim == 2 else v[c]
        return torch.as_tensor(np.where(self.candidates >= 0, out, 0.0), dtype=torch.float64)


def item_value_from_catalogue(catalogue: Catalogue | None) -> np.ndarray:
    """Item prices, unknown prices filled with the median known price."""
    if catalogue is None or catalogue.price is None or not np.isfinite(catalogue.price).any():
        raise DataError("this policy needs item prices (catalogue.price) or an explicit item_value array")
    p = np.asarray(catalogue.price, dtype=np.float64)
    return np.where(np.isfinite(p) & (p >= 0), p, np.nanmedian(p[p >= 0]))


def _minmax(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row to [0, 1] over valid entries (a constant row becomes all ones)."""
    x = x.double()
    big = torch.finfo(torch.float64).max
    lo = torch.where(valid, x, torch.full_like(x, big)).min(dim=1, keepdim=True).values
    hi = torch.where(valid, x, torch.full_like(x, -big)).max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(x))
    return torch.where(valid, out, torch.zeros_like(out))


def _log_p(ctx: PolicyContext, temperature: float) -> torch.Tensor:
    """(B, C) log softmax(score / T) over the whole (non-excluded) catalogue, at the candidates."""
    full = ctx.full_scores.double() / temperature
    lse = torch.logsumexp(full, dim=1, keepdim=True)
    s = ctx.scores.double() / temperature
    return torch.where(ctx.valid, s - lse, torch.full_like(s, -torch.inf))


# -- policies -----------------------------------------------------------------------------------------
POLICIES: dict[str, type["Policy"]] = {}


def register_policy(name: str):
    def deco(cls):
        cls.name = name
        POLICIES[name] = cls
        return cls
    return deco


class Policy:
    name: ClassVar[str] = "base"
    history_candidates: ClassVar[bool] = False  # add the user's past items to the candidates

    def rerank(self, ctx: PolicyContext) -> torch.Tensor:
        """(B, C) new scores; higher first. Padding must stay below every real candidate."""
        raise NotImplementedError


@register_policy("plain")
@dataclass
class Plain(Policy):
    def rerank(self, ctx: PolicyContext) -> torch.Tensor:
        return ctx.scores.double()


@register_policy("value_aware")
@dataclass
class ValueAware(Policy):
    w: float = 0.5              # weight of expected revenue vs relevance, in [0, 1]
    temperature: float = 1.0    # softmax temperature over the scores (p="softmax")
    p: str = "softmax"          # "softmax" of the scores, or "learned": ctx.purchase_model's P(buy)
    value_power: float = 1.0    # the value term is p x value ** value_power (> 1 leans to big spend)

    def __post_init__(self) -> None:
        if not 0.0 <= self.w <= 1.0:
            raise DataError(f"value_aware: w must be in [0, 1], got {self.w}")
        if self.temperature <= 0:
            raise DataError(f"value_aware: temperature must be > 0, got {self.temperature}")
        if self.p not in ("softmax", "learned"):
            raise DataError(f"value_aware: p must be 'softmax' or 'learned', got {self.p!r}")
        if not (np.isfinite(self.value_power) and self.value_power > 0):
            raise DataError(f"value_aware: value_power must be > 0, got {self.value_power}")

    def rerank(self, ctx: PolicyContext) -> torch.Tensor:
        valid = ctx.valid
        if self.p == "learned":
            if ctx.purchase_model is None:
                raise DataError("value_aware with p='learned' (and expected_revenue) needs a purchase stage: train "
                                "the model with `valuerec train ... --purchase-stage` (it saves MODEL_DIR/"
                                "purchase_stage), or pass a fitted models.purchase_stage.PurchaseStage")
            pm = ctx.purchase_model
            # a stage with its own value (PurchaseStage.value_source "stage"/"mean") returns it beside P
            p, v = pm.predict_with_value(ctx) if hasattr(pm, "predict_with_value") else (pm.predict(ctx), None)
            p = torch.as_tensor(np.asarray(p, dtype=np.float64))
            if p.shape != ctx.candidates.shape:
                raise DataError(f"purchase model returned shape {tuple(p.shape)}, expected {ctx.candidates.shape}")
            if v is not None and np.shape(v) != ctx.candidates.shape:
                raise DataError(f"purchase model's value has shape {np.shape(v)}, expected {ctx.candidates.shape}")
            p = torch.where(valid, p.clamp_min(1e-12), torch.zeros_like(p))
            v = None if v is None else torch.as_tensor(np.asarray(v, dtype=np.float64))
        else:
            p, v = _log_p(ctx, self.temperature).exp(), None
        # Normalise each term by its best candidate so w trades like for like; at w = 1 the order is
        # exactly expected revenue, at w = 0 exactly the model's.
        rel = p / p.max(dim=1, keepdim=True).values.clamp_min(1e-300)
        if v is None:
            v = ctx.values_of_candidates()
        er = p * (v if self.value_power == 1.0 else v.clamp_min(0) ** self.value_power)
        rev = er / er.max(dim=1, keepdim=True).values.clamp_min(1e-300)
        out = (1.0 - self.w) * rel + self.w * rev
        return torch.where(valid, out, torch.full_like(out, NEG))


@register_policy("expected_revenue")
@dataclass
class ExpectedRevenue(ValueAware):
    """``value_aware`` with the learned P(buy) at full weight: rank by P(buy in the horizon) x value.
    Needs a purchase model (``train --purchase-stage`` saves one beside the model)."""
    w: float = 1.0
    p: str = "learned"


@register_policy("favourites_winback")
@dataclass
class FavouritesWinback(Policy):
    history_candidates: ClassVar[bool] = True
    boost: float = 1.0             # weight of the favourites term vs relevance (both in [0, 1])
    half_life_days: float = 90.0   # recency weighting of past events (events, when there are no times)

    def __post_init__(self) -> None:
        require("favourites_winback", {
            "boost": (self.boost, bool(np.isfinite(self.boost)) and self.boost >= 0, "a finite number >= 0"),
            "half_life_days": (self.half_life_days, bool(np.isfinite(self.half_life_days)) and self.half_life_days > 0,
                               "a finite number of days > 0")})

    def rerank(self, ctx: PolicyContext) -> torch.Tensor:
        valid = ctx.valid
        rel = _minmax(ctx.scores, valid)
        w, returned = favourite_weights(ctx.histories, ctx.candidates, ctx.as_of, self.half_life_days,
                                        with_returned=True)
        fav = torch.as_tensor(w)
        fav = fav / fav.max(dim=1, keepdim=True).values.clamp_min(1e-12)
        out = rel + self.boost * fav
        # an item the user returned in full is neither a favourite nor something to win them back with
        keep = valid & ~torch.as_tensor(returned)
        return torch.where(keep, out, torch.full_like(out, NEG))


def favourite_weights(histories: Sequences, candidates: np.ndarray, as_of: np.ndarray | None,
                      half_life_days: float, with_returned: bool = False):
    """(B, C) sum over the user's past purchases of that item of 0.5 ** (age / half-life), less the
    same for its returns (at least 0: an item returned in full is no favourite). A user with no typed
    purchase counts every event that is not a return (a log of views or untyped interactions).
    ``with_returned``: also a (B, C) mask of the candidates the user returned and holds no purchase of
    on balance."""
    B, C = candidates.shape
    out = np.zeros((B, C))
    returned = np.zeros((B, C), dtype=bool)
    purchase, ret = event_type_code("purchase"), event_type_code("return")
    for u in range(B):
        items = histories.items[u]
        if len(items) == 0:
            continue
        if histories.times is not None and as_of is not None:
            age = np.maximum(as_of[u] - histories.times[u].astype(np.float64), 0.0) / 86400.0
        else:
            age = np.arange(len(items))[::-1].astype(np.float64)
        w = 0.5 ** (age / half_life_days)
        if histories.event_types is not None:
            types = np.asarray(histories.event_types[u])
            counted = types == purchase if (types == purchase).any() else types != ret
            w = np.where(counted, w, np.where(types == ret, -w, 0.0))
            if with_returned and (types == ret).any():
                net = pd.Series(np.where(types == purchase, 1.0, np.where(types == ret, -1.0, 0.0))).groupby(items).sum()
                gone = set(net.index[(net <= 0) & pd.Series(types == ret).groupby(items).any().reindex(net.index)])
                returned[u] = np.isin(candidates[u], list(gone)) & (candidates[u] >= 0)
        per_item = pd.Series(w).groupby(items).sum().clip(lower=0.0)
        out[u] = per_item.reindex(candidates[u]).fillna(0.0).to_numpy()
        out[u, candidates[u] < 0] = 0.0
    return (out, returned) if with_returned else out


@register_policy("cross_sell_value")
@dataclass
class CrossSellValue(Policy):
    gamma: float = 0.5   # weight of log(price / the user's usual price), clipped to +-2

    def __post_init__(self) -> None:
        require("cross_sell_value", {"gamma": (self.gamma, bool(np.isfinite(self.gamma)) and abs(self.gamma) <= 10,
                                               "a number in [-10, 10]")})

    def rerank(self, ctx: PolicyContext) -> torch.Tensor:
        valid = ctx.valid
        rel = _minmax(ctx.scores, valid)
        v = ctx.values_of_candidates().clamp_min(1e-9)
        all_v = ctx.item_values()
        all_v = all_v if all_v.ndim == 2 else np.broadcast_to(all_v, (len(ctx.histories), len(all_v)))
        ref = np.array([np.median(all_v[u, h[h >= 0]]) if (h >= 0).any() else np.median(all_v[u])
                        for u, h in enumerate(ctx.histories.items)])
        ratio = (v / torch.as_tensor(np.maximum(ref, 1e-9))[:, None]).log().clamp(-2, 2) / 2
        bought = torch.as_tensor(np.stack([np.isin(c, h) for c, h in zip(ctx.candidates, ctx.histories.items)])
                                 if len(ctx.candidates) else np.zeros((0, 0), bool))
        out = rel + self.gamma * ratio
        # Items already bought go last (not removed: a short candidate list still fills k).
        out = torch.where(bought, out - 10.0, out)
        return torch.where(valid, out, torch.full_like(out, NEG))


@register_policy("popular_diverse")
@dataclass
class PopularDiverse(Policy):
    popularity_weight: float = 0.5   # blend of popularity into relevance (when popularity is known)
    mmr_lambda: float = 0.7          # MMR: lambda x relevance - (1 - lambda) x max similarity to chosen
    k: int = 20                      # how many to pick greedily (the rest follow by relevance)

    def __post_init__(self) -> None:
        require("popular_diverse", {
            "popularity_weight": (self.popularity_weight, 0.0 <= self.popularity_weight <= 1.0, "in [0, 1]"),
            "mmr_lambda": (self.mmr_lambda, 0.0 <= self.mmr_lambda <= 1.0, "in [0, 1]"),
            "k": (self.k, self.k >= 1, ">= 1")})

    def rerank(self, ctx: PolicyContext) -> torch.Tensor:
        valid = ctx.valid
        rel = _minmax(ctx.scores, valid)
        if ctx.item_popularity is not None:
            pop = np.log1p(np.asarray(ctx.item_popularity, dtype=np.float64))[np.clip(ctx.candidates, 0, None)]
            rel = (1 - self.popularity_weight) * rel + self.popularity_weight * _minmax(torch.as_tensor(pop), valid)
        vec = ctx.item_vectors
        if vec is None:
            return torch.where(valid, rel, torch.full_like(rel, NEG))
        V = torch.as_tensor(np.asarray(vec, dtype=np.float32))[torch.as_tensor(np.clip(ctx.candidates, 0, None))]
        V = torch.nn.functional.normalize(V.double(), dim=-1)      # (B, C, D)
        sim = V @ V.transpose(1, 2)                                 # (B, C, C)
        return torch.where(valid, mmr(rel, sim, valid, self.mmr_lambda, self.k), torch.full_like(rel, NEG))


def mmr(rel: torch.Tensor, sim: torch.Tensor, valid: torch.Tensor, lam: float, k: int) -> torch.Tensor:
    """Greedy maximal marginal relevance, batched. Returns scores whose descending order is the MMR
    order for the first k picks, then the rest by relevance."""
    B, C = rel.shape
    chosen = torch.zeros(B, C, dtype=torch.bool)
    max_sim = torch.zeros(B, C, dtype=torch.float64)
    out = rel.clone() - 10.0                                       # unpicked: after every pick, by relevance
    rows = torch.arange(B)
    for step in range(min(k, C)):
        gain = lam * rel - (1 - lam) * max_sim
        gain = torch.where(valid & ~chosen, gain, torch.full_like(gain, -torch.inf))
        pick = gain.argmax(dim=1)
        ok = torch.isfinite(gain[rows, pick])
        chosen[rows[ok], pick[ok]] = True
        out[rows[ok], pick[ok]] = 10.0 + (C - step)
        max_sim = torch.maximum(max_sim, sim[rows, pick])        # (B, C)
    return out


@register_policy("value_uplift")
@dataclass
class ValueUplift(Policy):
    w: float = 1.0                 # weight of predicted value change vs relevance
    n_eval: int | None = None      # re-score only the top n_eval candidates (None: all)
    batch_size: int = 4096         # what-if histories per predict_value call

    def rerank(self, ctx: PolicyContext) -> torch.Tensor:
        vm = ctx.value_model if ctx.value_model is not None else ctx.model
        if vm is None or not hasattr(vm, "predict_value"):
            raise DataError("value_uplift needs a value model (predict_value)")
        if ctx.as_of is None:
            raise DataError("value_uplift needs as_of (the time of the what-if purchase)")
        valid = ctx.valid
        cands = ctx.candidates
        if self.n_eval is not None:
            cands = np.where(np.arange(cands.shape[1])[None, :] < self.n_eval, cands, -1)
        uplift = torch.as_tensor(what_if_uplift(vm, ctx.histories, cands, ctx.as_of,
                                                np.asarray(ctx.values_of_candidates()), self.batch_size))
        ev = torch.as_tensor(cands >= 0)
        out = (1 - self.w) * _minmax(ctx.scores, valid) + self.w * _minmax(uplift, ev)
        out = torch.where(ev, out, _minmax(ctx.scores, valid) - 10.0)   # not re-scored: after, by relevance
        return torch.where(valid, out, torch.full_like(out, NEG))


def what_if_uplift(value_model, histories: Sequences, candidates: np.ndarray, as_of: np.ndarray,
                   cand_values: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """(B, C) predicted expected value with the candidate appended as the next purchase (at as_of,
    for its item value) minus the predicted value of the history as it is (both predicted at
    as_of + 1 s). Batched over all (user, candidate) pairs."""
    B, C = candidates.shape
    from valuerec.policies.lifecycle import predict_value_safe
    # The what-if purchase happens at as_of; both predictions are made one second later, because
    # value models ignore events at or after their as-of time.
    as_of = np.asarray(as_of, dtype=np.float64)
    at = as_of + 1.0
    # A user with no purchase yet has no value to predict: their base is 0.
    base = predict_value_safe(value_model, histories, at, fill=0.0)["expected_value"]
    uu, cc = np.nonzero(candidates >= 0)
    out = np.zeros((B, C))
    purchase = event_type_code("purchase")
    for s in range(0, len(uu), batch_size):
        u, c = uu[s:s + batch_size], cc[s:s + batch_size]
        h = histories.subset(u)
        nxt = Sequences(items=[np.array([candidates[a, b]], np.int64) for a, b in zip(u, c)],
                        times=[np.array([int(as_of[a])], np.int64) for a in u],
                        event_types=[np.array([purchase], np.int64) for _ in u],
                        values=[np.array([cand_values[a, b]], np.float32) for a, b in zip(u, c)])
        h = _fill_missing(h)
        v = value_model.predict_value(Sequences.concat(h, nxt), at[u])["expected_value"]
        out[u, c] = np.asarray(v, dtype=np.float64) - base[u]
    return out


def _fill_missing(h: Sequences) -> Sequences:
    """Give a history the optional arrays the what-if event carries, so concat keeps them."""
    z = lambda dt: [np.zeros(len(x), dt) for x in h.items]  # noqa: E731
    return Sequences(items=h.items, times=h.times if h.times is not None else z(np.int64),
                     event_types=h.event_types if h.event_types is not None else
                     [np.full(len(x), event_type_code("purchase"), np.int64) for x in h.items],
                     values=h.values if h.values is not None else z(np.float32), user_ids=h.user_ids)


DEFAULT_STAGE_POLICIES = {
    "new": "popular_diverse", "activated": "plain", "retained": "plain", "expanding": "cross_sell_value",
    "advocate": "value_aware", "at-risk": "favourites_winback", "lapsed": "favourites_winback",
}


@register_policy("stage")
@dataclass
class StagePolicy(Policy):
    history_candidates: ClassVar[bool] = True   # favourites needs them; others ignore extra candidates
    mapping: dict = field(default_factory=lambda: dict(DEFAULT_STAGE_POLICIES))
    policy_params: dict = field(default_factory=dict)   # policy name -> its params

    def __post_init__(self) -> None:
        from valuerec.policies.lifecycle import STAGES
        bad = sorted(set(self.mapping) - set(STAGES))
        if bad:
            raise DataError(f"stage policy: unknown stage(s) {bad}; stages are {STAGES}")
        self._policies = {s: make_policy(n, **self.policy_params.get(n, {})) for s, n in self.mapping.items()}

    def rerank(self, ctx: PolicyContext) -> torch.Tensor:
        if ctx.stages is None:
            raise DataError("stage policy needs lifecycle stages (apply_policy assigns them given as_of)")
        out = torch.full(ctx.scores.shape, NEG, dtype=torch.float64)
        for stage in np.unique(ctx.stages):
            idx = np.flatnonzero(ctx.stages == stage)
            pol = self._policies.get(stage, Plain())
            sub = ctx.subset(idx)
            if not pol.history_candidates:
                # Candidates added from the history belong to favourites; others rank the model's own,
                # and without their past items unless the caller kept them (exclude=None, not 'auto').
                cand = sub.candidates.copy()
                if ctx.extras.get("exclude_history_by_default"):
                    for r, h in enumerate(sub.histories.items):
                        cand[r, np.isin(cand[r], h[h >= 0])] = -1
                extra = ctx.extras.get("added_from_history")
                if extra is not None:
                    cand[extra[idx]] = -1
                sub = replace(sub, candidates=cand,
                              scores=torch.where(torch.as_tensor(cand >= 0), sub.scores,
                                                 torch.full_like(sub.scores, -torch.inf)))
            out[torch.as_tensor(idx)] = pol.rerank(sub).double()
        return out


def make_policy(name: str, **params) -> Policy:
    if name not in POLICIES:
        raise DataError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    cls = POLICIES[name]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise DataError(f"policy {name!r}: unknown parameter(s) {unknown}; known: {sorted(known)}")
    return cls(**check_values(cls, params, f"policy {name!r}"))


# -- running a policy ---------------------------------------------------------------------------------
def item_feature_vectors(catalogue: Catalogue, dim: int = 256) -> np.ndarray | None:
    """Hashed bag of text words and attributes per item (for diversity when a model has no item
    embeddings); None when the catalogue has neither."""
    if catalogue.text is None and catalogue.attributes is None:
        return None
    out = np.zeros((len(catalogue), dim), dtype=np.float32)
    for i in range(len(catalogue)):
        toks = []
        if catalogue.text is not None and catalogue.text[i]:
            toks += [w for w in str(catalogue.text[i]).lower().split() if len(w) > 2]
        if catalogue.attributes is not None and catalogue.attributes[i]:
            toks += [f"attr:{a}" for a in catalogue.attributes[i]]
        for t in toks:
            out[i, zlib.crc32(t.encode()) % dim] += 1.0
        if not toks:
            out[i, zlib.crc32(str(catalogue.item_ids[i]).encode()) % dim] = 1.0
    return out


def model_item_vectors(model) -> np.ndarray | None:
    """The model's item embeddings when it exposes them (``item_embeddings()`` or ``item_vectors()``,
    or the behaviour transformer's item table)."""
    table = getattr(getattr(getattr(model, "module_", None), "encoder", None), "item_table", None)
    if table is not None:
        with torch.no_grad():
            return table().float().cpu().numpy()                        # (n_items, D)
    for attr in ("item_embeddings", "item_vectors"):
        f = getattr(model, attr, None)
        if callable(f):
            try:
                v = f()
            except Exception:  # noqa: BLE001  (a model may expose the method but not be fitted for it)
                continue
            if v is not None:
                return np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
    return None


def build_candidates(full: torch.Tensor, n_candidates: int, histories: Sequences | None = None,
                     ) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Top-n candidates of ``full`` (B, N; -inf excluded), plus the user's past items when
    ``histories`` is given. Returns (candidates (B, C), their scores, added-from-history mask)."""
    B, N = full.shape
    n = min(n_candidates, N)
    vals, top = torch.topk(full, n, dim=1)
    top = top.cpu().numpy()
    top[~torch.isfinite(vals).cpu().numpy()] = -1
    added = np.zeros_like(top, dtype=bool)
    if histories is not None:
        rows = []
        for u in range(B):
            h = histories.items[u]
            h = np.unique(h[(h >= 0) & (h < N)])
            h = h[np.isfinite(full[u, torch.as_tensor(h)].cpu().numpy())] if len(h) else h
            rows.append(h[~np.isin(h, top[u])])
        extra = max((len(r) for r in rows), default=0)
        if extra:
            pad = np.full((B, extra), -1, dtype=np.int64)
            for u, r in enumerate(rows):
                pad[u, :len(r)] = r
            added = np.concatenate([added, pad >= 0], axis=1)
            top = np.concatenate([top, pad], axis=1)
    idx = torch.as_tensor(np.clip(top, 0, None))
    sc = torch.gather(full, 1, idx.to(full.device)).cpu()
    sc = torch.where(torch.as_tensor(top >= 0), sc, torch.full_like(sc, -torch.inf))
    return top, sc, added


def _resolve_exclude(exclude, histories: Sequences, policy: Policy):
    if isinstance(exclude, str):
        if exclude == "auto":
            # Policies built on past items (favourites, stage) must be allowed to recommend them.
            exclude = None if policy.history_candidates else "history"
            if exclude is None:
                return None
        if exclude != "history":
            raise DataError(f"exclude must be 'auto', 'history', a list of arrays or None, got {exclude!r}")
        return [h[h >= 0] for h in histories.items]
    return exclude


def as_of_or_after_last(histories: Sequences, as_of=None) -> np.ndarray | None:
    """``as_of`` per history (``unix_seconds``); by default "now" is just after each user's last event
    (None when the histories have no times)."""
    if as_of is not None:
        return unix_seconds(as_of, len(histories))
    if histories.times is not None:
        return np.array([float(t.max()) + 1 if len(t) else 0.0 for t in histories.times])
    return None


def build_context(model, histories: Sequences, *, history_candidates: bool = False, n_candidates: int = 100,
                  exclude=None, catalogue: Catalogue | None = None, as_of=None, value_model=None,
                  item_value=None, item_vectors: np.ndarray | None = None,
                  item_popularity: np.ndarray | None = None, stages: np.ndarray | None = None,
                  purchase_model=None) -> PolicyContext:
    """Score one batch with ``model``, apply ``exclude`` (None or item indices per user), take the top
    ``n_candidates`` (plus the user's past items with ``history_candidates``) and gather the side
    information into a ``PolicyContext``. ``as_of`` defaults to just after each user's last event."""
    catalogue = catalogue if catalogue is not None else getattr(model, "catalogue_", None)
    with torch.no_grad():
        full = model.score(histories).float().cpu()
    full = torch.nan_to_num(full, nan=NEG)
    if exclude is not None:
        apply_exclusions(full, exclude)
    mask_never_recommended(model, full)   # never-recommend items are no candidates (nor past items added back)
    cands, cscores, added = build_candidates(full, n_candidates, histories if history_candidates else None)
    as_of = as_of_or_after_last(histories, as_of)
    return PolicyContext(histories=histories, candidates=cands, scores=cscores, full_scores=full,
                         catalogue=catalogue, as_of=as_of, model=model, value_model=value_model,
                         item_value=item_value, item_vectors=item_vectors, item_popularity=item_popularity,
                         stages=None if stages is None else np.asarray(stages, dtype=object),
                         purchase_model=purchase_model, extras={"added_from_history": added})


def policy_rerank(policy: Policy | str, model, histories: Sequences, *, n_candidates: int = 100,
                  exclude="auto", catalogue: Catalogue | None = None, as_of=None, value_model=None,
                  item_value: np.ndarray | None = None, item_vectors: np.ndarray | None = None,
                  item_popularity: np.ndarray | None = None, stages: np.ndarray | None = None,
                  lifecycle_config=None, purchase_model=None, params: dict | None = None,
                  ) -> tuple[np.ndarray, torch.Tensor]:
    """Score, pick candidates and re-rank one batch. Returns (candidates (B, C), policy scores (B, C)).

    ``exclude``: 'auto' (default: the user's past items are excluded, except for policies built on
    them, ``favourites_winback`` and ``stage``), 'history', None, or item indices per user."""
    pol = make_policy(policy, **(params or {})) if isinstance(policy, str) else policy
    catalogue = catalogue if catalogue is not None else getattr(model, "catalogue_", None)
    if item_vectors is None and pol.name in ("popular_diverse", "stage"):
        item_vectors = model_item_vectors(model)
        if item_vectors is None and catalogue is not None:
            item_vectors = item_feature_vectors(catalogue)
    auto = isinstance(exclude, str) and exclude == "auto"
    if pol.name == "stage" and auto:
        # its stages that leave past items out still need n_candidates others
        n_candidates += max((len(np.unique(h[h >= 0])) for h in histories.items), default=0)
    ctx = build_context(model, histories, history_candidates=pol.history_candidates, n_candidates=n_candidates,
                        exclude=_resolve_exclude(exclude, histories, pol), catalogue=catalogue, as_of=as_of,
                        value_model=value_model, item_value=item_value, item_vectors=item_vectors,
                        item_popularity=item_popularity, stages=stages, purchase_model=purchase_model)
    # 'auto' keeps past items for the policies built on them; the stage policy still leaves them out for
    # its stages whose own policy is not
    ctx.extras["exclude_history_by_default"] = auto
    if pol.name == "stage" and ctx.stages is None:
        ctx.stages = policy_stages(model, histories, ctx.as_of, value_model=value_model,
                                   lifecycle_config=lifecycle_config)
    return ctx.candidates, pol.rerank(ctx)


def policy_stages(model, histories: Sequences, as_of=None, *, value_model=None,
                  lifecycle_config=None) -> np.ndarray:
    """The lifecycle stage the stage policy gives each user: from their history, ``as_of`` (default:
    just after each user's last event) and the value model's predictions (``value_model``, else the
    model itself when it predicts value). Callers that report the stage pass the result on as
    ``stages=`` so the ranking and the report agree."""
    from valuerec.policies.lifecycle import LifecycleConfig, assign_stages, predict_value_safe
    as_of = as_of_or_after_last(histories, as_of)
    if as_of is None:
        raise DataError("the stage policy needs as_of or event times to assign lifecycle stages")
    vm = value_model if value_model is not None else (model if predicts_value(model) else None)
    pred = predict_value_safe(vm, histories, as_of) if vm is not None else None
    if lifecycle_config is None:
        # the model's own "top value" bar, so a user's stage does not depend on who else is in the batch
        lifecycle_config = LifecycleConfig.for_model(vm, model_threshold=True)
    return np.asarray(assign_stages(histories, as_of, pred, lifecycle_config)["stage"].to_numpy(), dtype=object)


def apply_policy(name: str, model, histories: Sequences, k: int = 10, *, batch_size: int = 512,
                 **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices and policy scores per user under policy ``name`` (see ``policy_rerank``
    for the keyword arguments: n_candidates, exclude, catalogue, as_of, value_model, item_value,
    item_vectors, item_popularity, stages, lifecycle_config, purchase_model, params). The candidate pool
    is at least k (``n_candidates``, default 100, grows to k), so that k items come back whenever the
    catalogue has them; rows with fewer than k candidates are padded with item -1 and score -inf."""
    params = kwargs.pop("params", None)
    pol = make_policy(name, **(params or {}))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"k={k!r}, must be a whole number >= 1")
    kwargs["n_candidates"] = max(int(kwargs.get("n_candidates", 100)), k)
    out_i, out_s = [], []
    as_of = kwargs.pop("as_of", None)
    as_of = None if as_of is None else unix_seconds(as_of, len(histories))
    stages = kwargs.pop("stages", None)
    if pol.name == "stage" and stages is None and len(histories):
        # once over every user, not per batch (a stage must not depend on the batch a user falls in)
        stages = policy_stages(model, histories, as_of, value_model=kwargs.get("value_model"),
                               lifecycle_config=kwargs.pop("lifecycle_config", None))
    for s in range(0, len(histories), batch_size):
        idx = np.arange(s, min(s + batch_size, len(histories)))
        a = None if as_of is None else as_of[idx]
        st = None if stages is None else np.asarray(stages, dtype=object)[idx]
        cands, sc = policy_rerank(pol, model, histories.subset(idx), as_of=a, stages=st, **kwargs)
        kk = min(k, cands.shape[1])
        order = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, :kk].numpy()
        top = np.take_along_axis(cands, order, axis=1)
        tsc = np.take_along_axis(sc.numpy(), order, axis=1)
        top[tsc <= NEG / 2] = -1
        if kk < k:
            top = np.pad(top, ((0, 0), (0, k - kk)), constant_values=-1)
            tsc = np.pad(tsc, ((0, 0), (0, k - kk)), constant_values=NEG)
        tsc[top < 0] = -np.inf     # padding scores -inf, as a model's recommend pads
        out_i.append(top)
        out_s.append(tsc)
    if not out_i:
        return np.zeros((0, k), np.int64), np.zeros((0, k))
    return np.concatenate(out_i), np.concatenate(out_s)


def policy_score_fn(name: str, model, n_items: int, **kwargs) -> Callable[[Sequences], torch.Tensor]:
    """A ``score_fn`` for ``evaluate``: (B, n_items) with the policy's order over the candidates
    (all above every non-candidate, which tie at the bottom). ``as_of`` / ``stages`` may be
    callables of the batch (the evaluation hands over sub-batches)."""
    params = kwargs.pop("params", None)
    pol = make_policy(name, **(params or {}))

    def score_fn(histories: Sequences) -> torch.Tensor:
        kw = dict(kwargs)
        for key in ("as_of", "stages"):
            if callable(kw.get(key)):
                kw[key] = kw[key](histories)
        cands, sc = policy_rerank(pol, model, histories, **kw)
        order = torch.sort(sc, dim=1, descending=True, stable=True).indices   # (B, C)
        C = cands.shape[1]
        out = torch.full((len(histories), n_items), NEG, dtype=torch.float32)
        ranked = np.take_along_axis(cands, order.numpy(), axis=1)
        ok_sc = np.take_along_axis(sc.numpy(), order.numpy(), axis=1) > NEG / 2
        rows, cols = np.nonzero((ranked >= 0) & ok_sc)
        out[torch.as_tensor(rows), torch.as_tensor(ranked[rows, cols])] = torch.as_tensor(
            (C - cols).astype(np.float32))
        return out
    return score_fn
