"""What a user will spend on an item if they buy it: the value term of value-aware re-ranking.

``value_aware`` ranks by p(item) x value(user, item). The simple values are the item's price or its
mean revenue per purchase line; both ignore who is buying. In a wholesale log such as Online Retail a
customer's spend on an item depends mostly on the customer (order sizes span three orders of
magnitude) and on what they spent on that item before.

``ItemValueModel`` learns it. At fit time, with cut-off ``c`` and horizon ``H``, every (user, item)
pair bought in the last horizon before the cut-off, [c - H, c), is one training row: its target is
the log of the revenue the user spent on the item in that window, its features come from the history
before c - H only. At prediction time the same features are read from the whole history before the
cut-off. The regressor is LightGBM (L2 on log revenue); the prediction is exp of it, so it estimates
the geometric mean spend given a purchase. Two options are measured against this default on R2
(``benchmarks/r2_value_probe.py``): ``target="mean"`` estimates the mean spend (LightGBM's gamma
objective, log link), the quantity expected revenue strictly calls for; ``n_windows > 1`` adds the pairs
of earlier windows, ``step_days`` apart, each with features from the history before it.

Features (``FEATURES``), for user u and item i:
- item: log mean revenue per line over all users, log of its mean over the last horizon, log price,
  log(1 + number of lines);
- user and item: lines of i by u, log mean / last / max revenue of u's lines of i, days since u last
  bought i (NaN when never);
- user: u's spend scale (geometric mean of u's line revenue over the item's mean line revenue), log
  mean line revenue overall and over the last horizon, lines, distinct items, days since the last
  purchase.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from valuerec.data.dataset import Sequences
from valuerec.data.schema import DataError, event_type_code

DAY = 86400.0
FEATURES = [
    "item_log_line", "item_log_line_recent", "item_log_price", "item_log_lines",
    "ui_lines", "ui_log_mean", "ui_log_last", "ui_log_max", "ui_days_since",
    "u_log_scale", "u_log_mean", "u_log_mean_recent", "u_lines", "u_items", "u_days_since",
]


def purchase_lines(histories: Sequences) -> pd.DataFrame:
    """Purchase lines (``u``, ``t``, ``item``, ``value``) with an item and a positive value."""
    if histories.times is None or histories.values is None:
        raise DataError("item values need histories with times and values (revenue per event)")
    lens = histories.lengths()
    if lens.sum() == 0:
        return pd.DataFrame({"u": np.zeros(0, np.int64), "t": np.zeros(0, np.int64),
                             "item": np.zeros(0, np.int64), "value": np.zeros(0)})
    df = pd.DataFrame({"u": np.repeat(np.arange(len(histories), dtype=np.int64), lens),
                       "t": np.concatenate(histories.times).astype(np.int64),
                       "item": np.concatenate(histories.items).astype(np.int64),
                       "value": np.concatenate(histories.values).astype(np.float64)})
    keep = (df["item"].to_numpy() >= 0) & (df["value"].to_numpy() > 0) & np.isfinite(df["value"].to_numpy())
    if histories.event_types is not None:
        keep &= np.concatenate(histories.event_types) == event_type_code("purchase")
    return df[keep].reset_index(drop=True)


class _ItemStats:
    """Per-item line statistics of one period (all users), with a fallback for unseen items."""

    def __init__(self, lines: pd.DataFrame, n_items: int, as_of: float, horizon_s: float, price: np.ndarray):
        def sum_and_count(df):
            s = np.bincount(df["item"], weights=df["value"], minlength=n_items)
            c = np.bincount(df["item"], minlength=n_items)
            return s, c
        s, c = sum_and_count(lines)
        overall = float(lines["value"].mean()) if len(lines) else 1.0
        p = np.where(np.isfinite(price) & (price > 0), price, np.nan)
        fallback = np.where(np.isfinite(p), p, overall)
        self.line = np.where(c > 0, s / np.maximum(c, 1), fallback)
        self.count = c.astype(np.float64)
        rs, rc = sum_and_count(lines[lines["t"].to_numpy() >= as_of - horizon_s])
        self.line_recent = np.where(rc > 0, rs / np.maximum(rc, 1), np.nan)
        self.log_price = np.log(np.where(np.isfinite(p), p, np.nan))


class ItemValueModel:
    """LightGBM estimate of a user's revenue on an item within the horizon, given they buy it.

    ``fit(histories, cutoff)``; then ``candidate_values(histories, candidates)`` gives (B, C) values
    and calling the model on histories gives (B, n_items), so it can be a policy's ``item_value``.
    """

    def __init__(self, horizon_days: float = 91.0, n_estimators: int = 300, learning_rate: float = 0.05,
                 num_leaves: int = 31, min_child_samples: int = 50, seed: int = 0, target: str = "log",
                 n_windows: int = 1, step_days: float = 28.0):
        if horizon_days <= 0:
            raise DataError(f"ItemValueModel: horizon_days must be > 0, got {horizon_days}")
        if target not in ("log", "mean"):
            raise DataError(f"ItemValueModel: target must be 'log' or 'mean', got {target!r}")
        if n_windows < 1 or int(n_windows) != n_windows or step_days <= 0:
            raise DataError(f"ItemValueModel: n_windows must be a positive integer and step_days > 0, got "
                            f"{n_windows} and {step_days}")
        self.target = target
        self.n_windows, self.step_days = int(n_windows), float(step_days)
        self.horizon_days = float(horizon_days)
        self.params = dict(n_estimators=n_estimators, learning_rate=learning_rate, num_leaves=num_leaves,
                           min_child_samples=min_child_samples)
        self.seed = seed

    # -- features ---------------------------------------------------------------------------------
    def _features(self, lines: pd.DataFrame, n_users: int, as_of: np.ndarray, stats: _ItemStats,
                  users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(R, F) features of (users[r], items[r]) from ``lines`` before each user's as-of."""
        H = self.horizon_days * DAY
        lines = lines[lines["t"].to_numpy() < as_of[lines["u"].to_numpy()]]
        R = len(users)
        X = np.full((R, len(FEATURES)), np.nan)
        col = {f: k for k, f in enumerate(FEATURES)}
        known = items < len(stats.line)    # items added to the catalogue after the fit: no item statistics

        def take(arr):
            return np.where(known, arr[np.where(known, items, 0)], np.nan)
        X[:, col["item_log_line"]] = np.log(take(stats.line))
        X[:, col["item_log_line_recent"]] = np.log(take(stats.line_recent))
        X[:, col["item_log_price"]] = take(stats.log_price)
        X[:, col["item_log_lines"]] = np.log1p(take(stats.count))
        X[:, col["ui_lines"]] = 0.0
        u_age = as_of[users]
        if len(lines):
            v = lines["value"].to_numpy()
            lu, lt, li = lines["u"].to_numpy(), lines["t"].to_numpy(), lines["item"].to_numpy()
            # user level
            known_l = li < len(stats.line)
            ratio = np.where(known_l, np.log(v) - np.log(stats.line[np.where(known_l, li, 0)]), np.nan)
            ug = pd.DataFrame({"u": lu, "lv": np.log(v), "ratio": ratio, "t": lt, "item": li}).groupby("u")
            scale = ug["ratio"].mean()
            mean = ug["lv"].mean()
            n = ug.size()
            n_items = ug["item"].nunique()
            last_t = ug["t"].max()
            rec = pd.DataFrame({"u": lu, "lv": np.log(v)})[lt >= as_of[lu] - H].groupby("u")["lv"].mean()
            for name, s in (("u_log_scale", scale), ("u_log_mean", mean), ("u_lines", n), ("u_items", n_items),
                            ("u_log_mean_recent", rec)):
                arr = np.full(n_users, np.nan)
                arr[s.index.to_numpy()] = s.to_numpy(np.float64)
                X[:, col[name]] = arr[users]
            days = np.full(n_users, np.nan)
            days[last_t.index.to_numpy()] = (as_of[last_t.index.to_numpy()] - last_t.to_numpy()) / DAY
            X[:, col["u_days_since"]] = days[users]
            X[:, col["u_lines"]] = np.nan_to_num(X[:, col["u_lines"]])
            X[:, col["u_items"]] = np.nan_to_num(X[:, col["u_items"]])
            # user x item level: keyed by u * n_items + item
            n_it = int(max(len(stats.line), li.max() + 1, items.max() + 1 if len(items) else 0))
            key = lu * n_it + li
            order = np.argsort(lt, kind="stable")
            g = pd.DataFrame({"k": key[order], "v": v[order], "t": lt[order]}).groupby("k")
            agg = pd.DataFrame({"n": g.size(), "mean": np.log(g["v"].mean()), "last": np.log(g["v"].last()),
                                "max": np.log(g["v"].max()), "t": g["t"].max()})
            want = users * n_it + items
            pos = agg.index.get_indexer(want)
            hit = pos >= 0
            a = agg.iloc[pos[hit]]
            X[hit, col["ui_lines"]] = a["n"].to_numpy(np.float64)
            X[hit, col["ui_log_mean"]] = a["mean"].to_numpy()
            X[hit, col["ui_log_last"]] = a["last"].to_numpy()
            X[hit, col["ui_log_max"]] = a["max"].to_numpy()
            X[hit, col["ui_days_since"]] = (u_age[hit] - a["t"].to_numpy()) / DAY
        return X

    # -- fit / predict ----------------------------------------------------------------------------
    def fit(self, histories: Sequences, cutoff: float, n_items: int, price: np.ndarray | None = None
            ) -> "ItemValueModel":
        """Learn from the pairs bought in [cutoff - H, cutoff), features from before cutoff - H."""
        import lightgbm as lgb

        H = self.horizon_days * DAY
        lines = purchase_lines(histories)
        if len(lines) and lines["item"].max() >= n_items:
            raise DataError(f"ItemValueModel.fit: item index {int(lines['item'].max())} outside the "
                            f"catalogue of {n_items} items")
        self.n_items = int(n_items)
        self.price = np.full(n_items, np.nan) if price is None else np.asarray(price, dtype=np.float64)
        self.cutoff = float(cutoff)
        t = lines["t"].to_numpy()
        n_users = len(histories)
        Xs, ys, groups = [], [], []
        for j in range(self.n_windows):   # windows ending at the cut-off and step_days apart before it
            end = self.cutoff - j * self.step_days * DAY
            start = end - H
            before, window = lines[t < start], lines[(t >= start) & (t < end)]
            if len(window) == 0 or len(before) == 0:
                if j == 0:
                    raise DataError(f"ItemValueModel.fit: no purchases in the {self.horizon_days:g} days before the "
                                    "cut-off, or none before that window: the history is too short to learn item "
                                    "values")
                break   # earlier windows have even less history before them
            pairs = window.groupby(["u", "item"])["value"].sum().reset_index()
            train_stats = _ItemStats(before, n_items, start, H, self.price)
            Xs.append(self._features(before, n_users, np.full(n_users, start), train_stats,
                                     pairs["u"].to_numpy(), pairs["item"].to_numpy()))
            ys.append(pairs["value"].to_numpy())
            groups.append(j * n_users + pairs["u"].to_numpy())
        X, y = np.concatenate(Xs), self._training_target(np.concatenate(ys), np.concatenate(groups))
        self.windows_used_ = len(ys)
        self.model_ = lgb.LGBMRegressor(**self.params, random_state=self.seed, n_jobs=1, verbose=-1,
                                        **({"objective": "gamma"} if self.target == "mean" else {}))
        self.model_.fit(X, y)
        self.train_rows_ = int(len(y))
        # Item statistics for prediction: the whole history before the cut-off.
        self.stats_ = _ItemStats(lines, n_items, self.cutoff, H, self.price)
        return self

    def _training_target(self, revenue: np.ndarray, group: np.ndarray) -> np.ndarray:
        """The regressor's target from each pair's window revenue; ``group`` numbers (window, user)."""
        return np.log(revenue) if self.target == "log" else revenue

    def candidate_values(self, histories: Sequences, candidates: np.ndarray, as_of=None) -> np.ndarray:
        """(B, C) predicted revenue of each candidate (-1 = padding gets 0); as-of defaults to the
        fit's cut-off (events at or after it are ignored). Items added to the catalogue after the fit
        are valued from the user's features alone."""
        if not hasattr(self, "model_"):
            raise DataError("ItemValueModel: call fit() first")
        B, C = candidates.shape
        if B != len(histories):
            raise DataError(f"candidate_values: {B} candidate rows for {len(histories)} histories")
        as_of = np.full(B, self.cutoff) if as_of is None else np.asarray(as_of, dtype=np.float64)
        users = np.repeat(np.arange(B), C)
        items = candidates.reshape(-1)
        ok = items >= 0
        out = np.zeros(B * C)
        if ok.any():
            X = self._features(purchase_lines(histories), B, as_of, self.stats_, users[ok], items[ok])
            pred = self.model_.predict(X)
            out[ok] = pred if self.target == "mean" else np.exp(pred)
        return out.reshape(B, C)

    def __call__(self, histories: Sequences) -> np.ndarray:
        """(B, n_items) predicted revenue of every item."""
        cand = np.tile(np.arange(self.n_items), (len(histories), 1))
        return self.candidate_values(histories, cand)

    # -- persistence ------------------------------------------------------------------------------
    DIRNAME = "item_value"

    def save(self, path) -> "ItemValueModel":
        """Write ``item_value.json``, the booster and the item statistics into directory ``path``."""
        import json
        from pathlib import Path

        if not hasattr(self, "model_"):
            raise DataError("ItemValueModel: call fit() before save()")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "booster.txt").write_text(self.model_.booster_.model_to_string())
        np.savez(path / "item_stats.npz", line=self.stats_.line, count=self.stats_.count,
                 line_recent=self.stats_.line_recent, log_price=self.stats_.log_price, price=self.price)
        (path / "item_value.json").write_text(json.dumps({
            "horizon_days": self.horizon_days, "params": self.params, "seed": self.seed, "target": self.target,
            "n_windows": self.n_windows, "step_days": self.step_days, "cutoff": self.cutoff,
            "n_items": self.n_items, "train_rows": self.train_rows_, "features": FEATURES}, indent=2))
        return self

    @classmethod
    def load(cls, path) -> "ItemValueModel":
        import json
        from pathlib import Path

        import lightgbm as lgb

        path = Path(path)
        try:
            meta = json.loads((path / "item_value.json").read_text())
            arrays = np.load(path / "item_stats.npz")
            booster = lgb.Booster(model_str=(path / "booster.txt").read_text())
        except (OSError, ValueError, KeyError, lgb.basic.LightGBMError) as e:
            raise DataError(f"{path}: not a saved item value model ({e})") from None
        if meta.get("features") != FEATURES:
            raise DataError(f"{path}: saved with features {meta.get('features')}, this version reads {FEATURES}")
        m = cls(horizon_days=meta["horizon_days"], seed=meta["seed"], target=meta.get("target", "log"),
                n_windows=meta.get("n_windows", 1), step_days=meta.get("step_days", 28.0), **meta["params"])
        m.n_items, m.cutoff, m.train_rows_ = int(meta["n_items"]), float(meta["cutoff"]), int(meta["train_rows"])
        m.price = arrays["price"]
        m.stats_ = _ItemStats.__new__(_ItemStats)
        for k in ("line", "count", "line_recent", "log_price"):
            setattr(m.stats_, k, arrays[k])
        m.model_ = booster     # Booster.predict takes the same feature matrix
        return m


def load_item_values(model_dir) -> ItemValueModel | None:
    """The item value model saved beside a recommender (``MODEL_DIR/item_value``), or None."""
    from pathlib import Path

    p = Path(model_dir) / ItemValueModel.DIRNAME
    return ItemValueModel.load(p) if (p / "item_value.json").exists() else None
