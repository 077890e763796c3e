"""A learned second stage: the probability that a user buys each of a recommender's candidates.

Value-aware re-ranking ranks by expected revenue, P(buy item) x value(user, item). The softmax of a
next-item model's scores is a poor P(buy) for that product: it is trained for the single next event,
not "bought at all within the horizon", and its scale (temperature) is arbitrary. ``PurchaseStage``
learns the probability directly, as the second stage of a two-stage recommender: on a labelled
window (histories before a cut-off, purchases in the horizon after it) every user's top-N candidates
of the recommender are rows, the label is "bought in the window", and a LightGBM classifier reads

- the recommender: log softmax of the score over the catalogue, gap to the user's best score, rank;
- the value term: log of the candidate's item value (e.g. ``ItemValueModel``) and log p + log value;
- the user and the item together: distinct days the user bought it, days since the first and the
  last of them, the user's mean interval between them and how "due" it is (days since last over the
  interval), its share of the user's purchase days, the user's mean log line revenue on it;
- the user: purchase days, days since the last and the first, purchase rate, distinct items, mean
  log line revenue;
- the item (from a reference history, all users, before the cut-off): distinct buyers in the last
  30 and 90 days and overall, the trend (30 vs 90 days), the share of its buyers who bought it on
  two or more days, its log mean line revenue;
- optional companion recommenders (``companions``, e.g. ALS and BPR fitted on the same history): each
  one's log softmax at the candidate and log of the candidate's rank in its full-catalogue ranking,
  so the stage can weigh several recommenders' opinions of the same candidates.

``fit`` learns on one window; ``at(reference, as_of, companions)`` moves the item statistics (and,
when given, the companions refitted on the later history) to a later cut-off (the classifier stays); ``predict(ctx)`` gives (B, C) probabilities for a ``PolicyContext``, so
``value_aware`` with ``p="learned"`` can use it. With ``folds > 1``, ``fit`` also trains one
classifier per fold of the training users, and ``out_of_fold()`` predicts every training user with
the classifier that did not see them: the honest validation curve for choosing the policy's weight.

Two options reach past a single classifier x the item value (both chosen on validation by
``benchmarks/policies.py``, neither on by default):

- ``bags > 1``: each classifier is the geometric mean of ``bags`` LightGBM classifiers, each on 70% of
  the rows and 70% of the features (a variance reduction; ``bags=1`` is one classifier on everything);
- ``value_source``: what the stage multiplies P(buy) by in ``value_aware`` with ``p="learned"``.
  ``"item"`` (default): the context's item value (e.g. ``ItemValueModel``). ``"stage"``: a hurdle
  model's value, exp(a LightGBM regressor of log revenue fitted on the candidates that were bought,
  over the same features), so the value is learned on the very rows it ranks. ``"mean"``: the
  geometric mean of the two. A fit given ``target_revenue`` learns the regressor whatever the source,
  so ``with_value_source`` can switch between the three without refitting.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from valuerec.data.dataset import Sequences
from valuerec.data.schema import DataError, event_type_code

DAY = 86400.0
VALUE_SOURCES = ("item", "stage", "mean")
FEATURES = [
    "m_log_p", "m_gap", "m_rank", "log_v", "log_ev",
    "ui_days", "ui_since_last", "ui_since_first", "ui_interval", "ui_due", "ui_share", "ui_log_mean",
    "u_days", "u_rec", "u_ten", "u_rate", "u_items", "u_log_mean",
    "it_pop30", "it_pop90", "it_popall", "it_trend", "it_repeat", "it_log_line",
]


def _purchases(h: Sequences, as_of: np.ndarray) -> pd.DataFrame:
    """Purchase events with an item before each user's as-of: u, i, t (unix s), day, value."""
    if h.times is None:
        raise DataError("the purchase stage needs histories with event times")
    lens = h.lengths()
    if lens.sum() == 0:
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in ("u", "i", "t", "day")}).assign(value=np.zeros(0))
    d = pd.DataFrame({"u": np.repeat(np.arange(len(h), dtype=np.int64), lens),
                      "i": np.concatenate(h.items).astype(np.int64),
                      "t": np.concatenate(h.times).astype(np.int64),
                      "value": (np.concatenate(h.values).astype(np.float64) if h.values is not None
                                else np.full(int(lens.sum()), np.nan))})
    keep = (d["i"].to_numpy() >= 0) & (d["t"].to_numpy() < as_of[d["u"].to_numpy()])
    if h.event_types is not None:
        keep &= np.concatenate(h.event_types) == event_type_code("purchase")
    d = d[keep]
    return d.assign(day=d["t"].to_numpy() // int(DAY))


class _ItemReference:
    """Item statistics over all users of a reference history, as of one cut-off."""

    def __init__(self, reference: Sequences, as_of: float, n_items: int):
        d = _purchases(reference, np.full(len(reference), float(as_of)))
        d = d[d["i"].to_numpy() < n_items]
        self.as_of = float(as_of)

        def buyers(sub):
            return np.bincount(sub.drop_duplicates(["u", "i"])["i"].to_numpy(), minlength=n_items).astype(float)
        t = d["t"].to_numpy()
        self.pop30 = buyers(d[t >= as_of - 30 * DAY])
        self.pop90 = buyers(d[t >= as_of - 90 * DAY])
        self.popall = buyers(d)
        days = d[["u", "i", "day"]].drop_duplicates().groupby(["u", "i"]).size()
        rep = np.bincount(days.index.get_level_values("i").to_numpy()[days.to_numpy() >= 2], minlength=n_items)
        self.repeat = np.where(self.popall > 0, rep / np.maximum(self.popall, 1), np.nan)
        v = d["value"].to_numpy()
        ok = np.isfinite(v) & (v > 0)
        s = np.bincount(d["i"].to_numpy()[ok], weights=v[ok], minlength=n_items)
        c = np.bincount(d["i"].to_numpy()[ok], minlength=n_items)
        self.log_line = np.where(c > 0, np.log(np.maximum(s, 1e-300) / np.maximum(c, 1)), np.nan)

    ARRAYS = ("pop30", "pop90", "popall", "repeat", "log_line")


class _Bag:
    """Several boosters read as one classifier: the geometric mean of their P."""

    def __init__(self, boosters: list):
        self.boosters = list(boosters)

    def predict(self, X: np.ndarray) -> np.ndarray:
        logs = [np.log(np.clip(b.predict(X), 1e-12, None)) for b in self.boosters]
        return np.exp(np.mean(logs, axis=0))


class PurchaseStage:
    """LightGBM P(user buys candidate within the horizon) over a recommender's top-N candidates."""

    DIRNAME = "purchase_stage"

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.05, num_leaves: int = 15,
                 min_child_samples: int = 50, folds: int = 5, seed: int = 0, companions: dict | None = None,
                 bags: int = 1, value_source: str = "item"):
        if folds < 1 or int(folds) != folds:
            raise DataError(f"PurchaseStage: folds must be a positive integer, got {folds}")
        if bags < 1 or int(bags) != bags:
            raise DataError(f"PurchaseStage: bags must be a positive integer, got {bags}")
        if value_source not in VALUE_SOURCES:
            raise DataError(f"PurchaseStage: value_source must be one of {VALUE_SOURCES}, got {value_source!r}")
        self.bags = int(bags)
        self.value_source = value_source
        self.params = dict(n_estimators=int(n_estimators), learning_rate=float(learning_rate),
                           num_leaves=int(num_leaves), min_child_samples=int(min_child_samples))
        self.folds = int(folds)
        self.seed = int(seed)
        self.companions = dict(sorted((companions or {}).items()))
        for name, m in self.companions.items():
            if not hasattr(m, "score"):
                raise DataError(f"PurchaseStage: companion {name!r} is not a recommender (no score())")

    @property
    def feature_names(self) -> list[str]:
        return FEATURES + [f"c_{n}_{k}" for n in self.companions for k in ("log_p", "log_rank")]

    # -- features ---------------------------------------------------------------------------------
    def features(self, ctx) -> np.ndarray:
        """(B * C, F) features of every (user, candidate) of a ``PolicyContext`` (padding rows too)."""
        if not hasattr(self, "ref_"):
            raise DataError("PurchaseStage: call fit() (or load()) first")
        B, C = ctx.candidates.shape
        cand = ctx.candidates.reshape(-1)
        users = np.repeat(np.arange(B), C)
        ok = cand >= 0
        names = self.feature_names
        X = np.full((B * C, len(names)), np.nan)
        col = {f: k for k, f in enumerate(names)}
        # the recommender
        full = ctx.full_scores.double()
        lse = torch.logsumexp(full, dim=1, keepdim=True)
        sc = ctx.scores.double()
        X[:, col["m_log_p"]] = torch.where(ctx.valid, sc - lse, torch.full_like(sc, np.nan)).reshape(-1).numpy()
        top = torch.where(ctx.valid, sc, torch.full_like(sc, -torch.inf)).max(dim=1, keepdim=True).values
        X[:, col["m_gap"]] = torch.where(ctx.valid, sc - top, torch.full_like(sc, np.nan)).reshape(-1).numpy()
        X[:, col["m_rank"]] = np.tile(np.arange(C, dtype=np.float64), B)
        # the value term
        v = ctx.values_of_candidates().numpy().reshape(-1) if ctx.item_value is not None else np.full(B * C, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            X[:, col["log_v"]] = np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)
        X[:, col["log_ev"]] = X[:, col["m_log_p"]] + X[:, col["log_v"]]
        # the user's history (purchases before the as-of)
        as_of = (np.full(B, self.ref_.as_of) if ctx.as_of is None
                 else np.broadcast_to(np.asarray(ctx.as_of, dtype=np.float64), (B,)))
        now = as_of / DAY
        d = _purchases(ctx.histories, as_of)
        X[:, col["ui_days"]] = 0.0
        X[:, col["u_days"]] = 0.0
        X[:, col["u_items"]] = 0.0
        if len(d):
            days = d[["u", "i", "day"]].drop_duplicates()
            ud = days.groupby("u")["day"]
            u_days, u_last, u_first = (np.full(B, np.nan) for _ in range(3))
            u_days[ud.size().index] = ud.nunique().to_numpy()
            u_last[ud.size().index] = ud.max().to_numpy()
            u_first[ud.size().index] = ud.min().to_numpy()
            u_items = np.zeros(B)
            u_items[ud.size().index] = days.groupby("u")["i"].nunique().to_numpy()
            lv = np.log(np.where(d["value"].to_numpy() > 0, d["value"].to_numpy(), np.nan))
            d = d.assign(lv=lv)
            u_lm = np.full(B, np.nan)
            g = d.groupby("u")["lv"].mean()
            u_lm[g.index] = g.to_numpy()
            X[:, col["u_days"]] = np.nan_to_num(u_days[users])
            X[:, col["u_rec"]] = now[users] - u_last[users]
            X[:, col["u_ten"]] = now[users] - u_first[users]
            X[:, col["u_rate"]] = X[:, col["u_days"]] / (X[:, col["u_ten"]] + 1)
            X[:, col["u_items"]] = u_items[users]
            X[:, col["u_log_mean"]] = u_lm[users]
            # user x item, keyed by u * M + i
            M = int(max(d["i"].max(), cand.max() if len(cand) else 0) + 1)
            gi = days.groupby(["u", "i"])["day"]
            agg = pd.DataFrame({"n": gi.size(), "last": gi.max(), "first": gi.min(),
                                "lm": d.groupby(["u", "i"])["lv"].mean()})
            keys = agg.index.get_level_values("u").to_numpy() * M + agg.index.get_level_values("i").to_numpy()
            pos = pd.Index(keys).get_indexer(users * M + np.clip(cand, 0, None))
            hit = (pos >= 0) & ok
            a = agg.iloc[pos[hit]]
            n = a["n"].to_numpy(np.float64)
            X[hit, col["ui_days"]] = n
            X[hit, col["ui_since_last"]] = now[users[hit]] - a["last"].to_numpy()
            X[hit, col["ui_since_first"]] = now[users[hit]] - a["first"].to_numpy()
            interval = np.where(n > 1, (a["last"].to_numpy() - a["first"].to_numpy()) / np.maximum(n - 1, 1), np.nan)
            X[hit, col["ui_interval"]] = interval
            X[hit, col["ui_due"]] = X[hit, col["ui_since_last"]] / interval
            X[hit, col["ui_log_mean"]] = a["lm"].to_numpy()
        X[:, col["ui_share"]] = X[:, col["ui_days"]] / np.maximum(X[:, col["u_days"]], 1)
        # the item (reference statistics; NaN for items added after them)
        known = ok & (cand < len(self.ref_.popall))
        ci = np.where(known, cand, 0)
        for f, arr in (("it_pop30", self.ref_.pop30), ("it_pop90", self.ref_.pop90), ("it_popall", self.ref_.popall),
                       ("it_repeat", self.ref_.repeat), ("it_log_line", self.ref_.log_line)):
            X[:, col[f]] = np.where(known, arr[ci], np.nan)
        X[:, col["it_trend"]] = (X[:, col["it_pop30"]] + 1) / (X[:, col["it_pop90"]] / 3 + 1)
        # companion recommenders: their view of the same candidates
        for name, m in self.companions.items():
            with torch.no_grad():
                sc = torch.nan_to_num(m.score(ctx.histories).double().cpu(), nan=-1e30)
            if sc.shape[1] < int(cand.max(initial=0)) + 1:
                raise DataError(f"PurchaseStage: companion {name!r} scores {sc.shape[1]} items, the candidates "
                                f"reach item {int(cand.max())}")
            lsm = torch.log_softmax(sc, dim=1)
            idx = torch.as_tensor(np.clip(ctx.candidates, 0, None))
            cs = torch.gather(sc, 1, idx)
            asc = torch.sort(sc, dim=1).values
            rank = sc.shape[1] - torch.searchsorted(asc, cs.contiguous(), right=True)   # (B, C) items scored above
            X[:, col[f"c_{name}_log_p"]] = torch.gather(lsm, 1, idx).reshape(-1).numpy()
            X[:, col[f"c_{name}_log_rank"]] = np.log1p(rank.reshape(-1).numpy().astype(np.float64))
        X[~ok] = np.nan
        return X

    # -- fit --------------------------------------------------------------------------------------
    def fit(self, model, histories: Sequences, targets: list[np.ndarray], *, as_of: float, reference: Sequences,
            item_value=None, n_candidates: int = 100, exclude=None, batch_size: int = 512,
            target_revenue: list[np.ndarray] | None = None) -> "PurchaseStage":
        """Learn on one labelled window: ``histories`` end before ``as_of`` (the cut-off), ``targets[u]``
        are the items user u bought in the horizon after it; ``reference`` is the history of all users
        before the cut-off (item statistics). ``exclude``: None or item indices per user, as the
        candidates will be built when the stage is used. ``target_revenue[u]``: what user u spent on
        each of ``targets[u]`` (aligned with it); given, the stage also learns a value regressor (needed
        for ``value_source`` "stage" and "mean")."""
        import lightgbm as lgb

        from valuerec.policies.rerank import build_context

        if len(targets) != len(histories):
            raise DataError(f"PurchaseStage.fit: {len(targets)} target sets for {len(histories)} histories")
        if len(histories) == 0:
            raise DataError("PurchaseStage.fit: no users to learn from")
        late = [u for u, t in enumerate(histories.times or []) if len(t) and t.max() >= as_of]
        if late:
            raise DataError(f"PurchaseStage.fit: {len(late)} histories have events at or after the cut-off "
                            f"(first: row {late[0]}); pass the histories before it, the labels separately")
        if self.folds > 1 and histories.user_ids is None:
            raise DataError("PurchaseStage.fit: folds > 1 needs histories with user_ids (for out-of-fold scores)")
        if target_revenue is None and self.value_source != "item":
            raise DataError(f"PurchaseStage.fit: value_source={self.value_source!r} learns a value regressor and "
                            "needs target_revenue (what each user spent on each target item)")
        if target_revenue is not None:
            if len(target_revenue) != len(targets):
                raise DataError(f"PurchaseStage.fit: {len(target_revenue)} target_revenue arrays for {len(targets)} "
                                "target sets")
            bad = [u for u in range(len(targets)) if len(target_revenue[u]) != len(targets[u])]
            if bad:
                raise DataError(f"PurchaseStage.fit: target_revenue[{bad[0]}] has {len(target_revenue[bad[0]])} "
                                f"values for {len(targets[bad[0]])} target items")
        cat = getattr(model, "catalogue_", None)
        self.n_items = int(len(cat)) if cat is not None else int(model.score(histories.subset([0])).shape[1])
        self.n_candidates = int(n_candidates)
        self.ref_ = _ItemReference(reference, as_of, self.n_items)
        Xs, ys, rows, revs = [], [], [], []
        for s in range(0, len(histories), batch_size):
            idx = np.arange(s, min(s + batch_size, len(histories)))
            ctx = build_context(model, histories.subset(idx), n_candidates=n_candidates,
                                exclude=None if exclude is None else [exclude[i] for i in idx],
                                as_of=np.full(len(idx), float(as_of)), item_value=item_value)
            cand = ctx.candidates
            y = np.stack([np.isin(cand[r], targets[u]) for r, u in enumerate(idx)]).reshape(-1)
            keep = cand.reshape(-1) >= 0
            Xs.append(self.features(ctx)[keep])
            ys.append(y[keep])
            if target_revenue is not None:
                rev = np.zeros(cand.shape)
                for r, u in enumerate(idx):
                    spent = dict(zip(np.asarray(targets[u]).tolist(), np.asarray(target_revenue[u], np.float64).tolist()))
                    rev[r] = [spent.get(int(c), 0.0) if c >= 0 else 0.0 for c in cand[r]]
                revs.append(rev.reshape(-1)[keep])
            rows.append(np.repeat(idx, cand.shape[1])[keep])
        X, y, row = np.concatenate(Xs), np.concatenate(ys).astype(np.int8), np.concatenate(rows)
        self.exclude_history_ = exclude is not None
        if len(y) == 0:
            raise DataError("PurchaseStage.fit: the recommender gave no candidates; nothing to learn")
        if y.min() == y.max():
            raise DataError(f"PurchaseStage.fit: every candidate is labelled {int(y[0])}: the targets never "
                            "(or always) fall among the recommender's top candidates; nothing to learn")

        def train(mask):
            if self.bags == 1:
                return lgb.LGBMClassifier(**self.params, random_state=self.seed, n_jobs=1, verbose=-1).fit(
                    X[mask], y[mask]).booster_
            return _Bag([lgb.LGBMClassifier(**self.params, random_state=self.seed + b, subsample=0.7, subsample_freq=1,
                                            colsample_bytree=0.7, n_jobs=1, verbose=-1).fit(X[mask], y[mask]).booster_
                         for b in range(self.bags)])

        # the hurdle's value: log revenue of the bought candidates that carried revenue
        rv = np.concatenate(revs) if target_revenue is not None else None
        if rv is not None and not ((y == 1) & (rv > 0)).any():
            raise DataError("PurchaseStage.fit: no bought candidate has a positive target_revenue; the value "
                            "regressor has nothing to learn")

        def train_value(mask, fold=None):
            pos = mask & (y == 1) & (rv > 0)
            if not pos.any():
                raise DataError(f"PurchaseStage.fit: the users outside fold {fold} bought no candidate with a positive "
                                "target_revenue; the value regressor has nothing to learn there (use fewer folds)")
            return lgb.LGBMRegressor(**self.params, random_state=self.seed, n_jobs=1, verbose=-1).fit(
                X[pos], np.log(rv[pos])).booster_
        everyone = np.ones(len(y), bool)
        self.booster_ = train(everyone)
        self.value_booster_ = train_value(everyone) if rv is not None else None
        self.train_rows_, self.train_users_, self.positive_rate_ = int(len(y)), int(len(histories)), float(y.mean())
        self.fold_boosters_, self.fold_value_boosters_, self.fold_of_ = [], [], {}
        if self.folds > 1:
            fold = np.random.default_rng(self.seed).permutation(len(histories)) % self.folds
            self.fold_of_ = {str(u): int(f) for u, f in zip(histories.user_ids, fold)}
            self.fold_boosters_ = [train(fold[row] != f) for f in range(self.folds)]
            if rv is not None:
                self.fold_value_boosters_ = [train_value(fold[row] != f, f) for f in range(self.folds)]
        return self

    def with_value_source(self, value_source: str) -> "PurchaseStage":
        """The same fitted stage with another ``value_source`` (no refit; "stage" and "mean" need a fit
        given ``target_revenue``)."""
        if value_source not in VALUE_SOURCES:
            raise DataError(f"PurchaseStage: value_source must be one of {VALUE_SOURCES}, got {value_source!r}")
        if value_source != "item" and getattr(self, "value_booster_", None) is None:
            raise DataError(f"PurchaseStage: value_source={value_source!r} needs a stage fitted with target_revenue")
        out = copy.copy(self)
        out.value_source = value_source
        return out

    # -- predict ----------------------------------------------------------------------------------
    def predict(self, ctx, out_of_fold: bool = False) -> np.ndarray:
        """(B, C) P(buy) of each candidate (0 at padding). ``out_of_fold``: users seen in fit get the
        fold classifier that did not see them (others the full one)."""
        return self.predict_with_value(ctx, out_of_fold)[0]

    def predict_with_value(self, ctx, out_of_fold: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(P, V): P as ``predict``; V the (B, C) value the stage ranks by (``value_source``), or None
        for "item" (the policy then reads the context's item value). Padding: P 0, V 0."""
        X = self.features(ctx)
        B, C = ctx.candidates.shape
        rowfold = None
        if out_of_fold and self.fold_boosters_:
            if ctx.histories.user_ids is None:
                raise DataError("out-of-fold predictions need histories with user_ids")
            rowfold = np.repeat(np.array([self.fold_of_.get(str(u), -1) for u in ctx.histories.user_ids]), C)

        def run(full, per_fold):
            out = full.predict(X)
            if rowfold is not None:
                for f, b in enumerate(per_fold):
                    m = rowfold == f
                    if m.any():
                        out[m] = b.predict(X[m])
            return out.reshape(B, C)
        pad = ctx.candidates < 0
        p = np.where(pad, 0.0, run(self.booster_, self.fold_boosters_))
        if self.value_source == "item":
            return p, None
        v = np.exp(run(self.value_booster_, self.fold_value_boosters_))
        if self.value_source == "mean":
            iv = ctx.values_of_candidates().numpy().reshape(B, C) if ctx.item_value is not None else None
            if iv is None:
                raise DataError("PurchaseStage: value_source='mean' needs the context's item values")
            v = np.sqrt(v * np.clip(iv, 0.0, None))
        return p, np.where(pad, 0.0, v)

    def out_of_fold(self) -> "_OutOfFold":
        if not getattr(self, "fold_boosters_", None):
            raise DataError("PurchaseStage: out-of-fold predictions need fit() with folds > 1")
        return _OutOfFold(self)

    def at(self, reference: Sequences, as_of: float, companions: dict | None = None) -> "PurchaseStage":
        """The same classifier with item statistics from ``reference`` as of a later cut-off, and with
        ``companions`` (the same recommenders refitted on the later history) when given."""
        if not hasattr(self, "booster_"):
            raise DataError("PurchaseStage: call fit() first")
        out = copy.copy(self)
        out.ref_ = _ItemReference(reference, as_of, self.n_items)
        if companions is not None:
            if sorted(companions) != list(self.companions):
                raise DataError(f"PurchaseStage.at: companions {sorted(companions)}, the stage was fitted with "
                                f"{list(self.companions)}")
            out.companions = dict(sorted(companions.items()))
        return out

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path) -> "PurchaseStage":
        """Write ``purchase_stage.json``, the classifier and the item statistics into directory ``path``
        (the per-fold classifiers are for validation only and are not saved)."""
        if not hasattr(self, "booster_"):
            raise DataError("PurchaseStage: call fit() before save()")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        boosters = self.booster_.boosters if isinstance(self.booster_, _Bag) else [self.booster_]
        for b, booster in enumerate(boosters):
            (path / ("booster.txt" if b == 0 else f"booster_{b}.txt")).write_text(booster.model_to_string())
        if getattr(self, "value_booster_", None) is not None:
            (path / "value_booster.txt").write_text(self.value_booster_.model_to_string())
        np.savez(path / "item_reference.npz", **{k: getattr(self.ref_, k) for k in _ItemReference.ARRAYS})
        for name, m in self.companions.items():
            m.save(path / "companions" / name)
        (path / "purchase_stage.json").write_text(json.dumps({
            "params": self.params, "seed": self.seed, "n_items": self.n_items, "n_candidates": self.n_candidates,
            "reference_as_of": self.ref_.as_of, "train_rows": self.train_rows_, "train_users": self.train_users_,
            "positive_rate": self.positive_rate_, "companions": list(self.companions),
            "exclude_history": getattr(self, "exclude_history_", None), "bags": self.bags,
            "value_source": self.value_source, "value_regressor": getattr(self, "value_booster_", None) is not None,
            "features": self.feature_names}, indent=2))
        return self

    @classmethod
    def load(cls, path) -> "PurchaseStage":
        import lightgbm as lgb

        path = Path(path)
        try:
            meta = json.loads((path / "purchase_stage.json").read_text())
            arrays = np.load(path / "item_reference.npz")
            bags = meta.get("bags", 1)
            if isinstance(bags, bool) or not isinstance(bags, int) or bags < 1:
                raise DataError(f"{path}: not a saved purchase stage (purchase_stage.json: bags {bags!r}, expected a "
                                "whole number >= 1)")
            source = meta.get("value_source", "item")
            if source not in VALUE_SOURCES:
                raise DataError(f"{path}: not a saved purchase stage (purchase_stage.json: value_source {source!r}, "
                                f"expected one of {VALUE_SOURCES})")
            boosters = [lgb.Booster(model_str=(path / ("booster.txt" if b == 0 else f"booster_{b}.txt")).read_text())
                        for b in range(bags)]
            value_booster = (lgb.Booster(model_str=(path / "value_booster.txt").read_text())
                             if meta.get("value_regressor") else None)
        except (OSError, ValueError, KeyError, TypeError, lgb.basic.LightGBMError) as e:
            raise DataError(f"{path}: not a saved purchase stage ({e})") from None
        from valuerec.models.base import load_model

        companions = {n: load_model(path / "companions" / n) for n in meta.get("companions", [])}
        m = cls(folds=1, seed=meta["seed"], companions=companions, bags=bags, **meta["params"])
        if meta.get("features") != m.feature_names:
            raise DataError(f"{path}: saved with features {meta.get('features')}, this version reads {m.feature_names}")
        m.n_items, m.n_candidates = int(meta["n_items"]), int(meta["n_candidates"])
        m.train_rows_, m.train_users_, m.positive_rate_ = meta["train_rows"], meta["train_users"], meta["positive_rate"]
        m.ref_ = _ItemReference.__new__(_ItemReference)
        m.ref_.as_of = float(meta["reference_as_of"])
        for k in _ItemReference.ARRAYS:
            setattr(m.ref_, k, arrays[k])
        m.booster_ = boosters[0] if bags == 1 else _Bag(boosters)
        m.value_booster_, m.fold_boosters_, m.fold_value_boosters_, m.fold_of_ = value_booster, [], [], {}
        m.value_source = source
        if source != "item" and value_booster is None:
            raise DataError(f"{path}: not a saved purchase stage (value_source {source!r} without a saved value "
                            "regressor, value_booster.txt)")
        m.exclude_history_ = meta.get("exclude_history")
        return m


class _OutOfFold:
    """``predict(ctx)`` with each training user's held-out fold classifier."""

    def __init__(self, stage: PurchaseStage):
        self.stage = stage

    def predict(self, ctx) -> np.ndarray:
        return self.stage.predict(ctx, out_of_fold=True)

    def predict_with_value(self, ctx):
        return self.stage.predict_with_value(ctx, out_of_fold=True)


def load_purchase_stage(model_dir) -> PurchaseStage | None:
    """The purchase stage saved beside a recommender (``MODEL_DIR/purchase_stage``), or None."""
    p = Path(model_dir) / PurchaseStage.DIRNAME
    return PurchaseStage.load(p) if (p / "purchase_stage.json").exists() else None
