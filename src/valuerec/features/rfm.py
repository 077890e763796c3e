"""Recency / frequency / monetary / tenure features as of a cut-off (BENCHMARKS.md V1).

Only ``purchase`` events count towards spend and frequency, as in V1; ``return`` events give their own
two features. Everything is measured in days. Two entry points build the same table:
``rfm_from_sequences(histories, as_of)`` (what value models see, one as-of time per user) and
``rfm_features(events, cutoff, users)`` (straight from the store's events DataFrame).

The BTYD columns follow the BG/NBD paper (Fader, Hardie & Lee 2005) at daily granularity, as
lifetimes and PyMC-Marketing summarise transactions: several purchases on one day are one transaction;
``frequency`` = repeat purchase days, ``recency`` = days from first to last purchase day, ``T`` = days
from the first purchase day to the as-of time, ``monetary_value`` = mean spend per repeat purchase day.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from valuerec.data.dataset import Sequences
from valuerec.data.schema import EVENT_TYPE_CODE, DataError

DAY = 86400.0
PURCHASE = EVENT_TYPE_CODE["purchase"]
RETURN = EVENT_TYPE_CODE["return"]
WINDOWS = (30, 90, 180)

# Feature columns the learned baselines use (BTYD columns included).
FEATURES = [
    "recency_days", "tenure_days", "n_orders", "n_purchase_days", "total_revenue", "avg_order_value",
    "max_order_value", "n_lines", "n_distinct_items", "n_returns", "return_value",
    *[f"revenue_last_{w}" for w in WINDOWS], *[f"orders_last_{w}" for w in WINDOWS],
    "frequency", "recency", "T", "monetary_value", "mean_gap_days",
]


def flatten(histories: Sequences) -> pd.DataFrame:
    """All events of a batch as one table: ``u`` (row in the batch), ``t`` (unix s), type, value, item."""
    if histories.times is None or histories.event_types is None or histories.values is None:
        raise DataError("value features need histories with times, event types and values")
    lens = histories.lengths()
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if len(xs) and lens.sum() else np.zeros(0, dt))
    return pd.DataFrame({
        "u": np.repeat(np.arange(len(histories), dtype=np.int64), lens),
        "t": cat(histories.times, np.int64),
        "type": cat(histories.event_types, np.int64),
        "value": cat(histories.values, np.float64),
        "item": cat(histories.items, np.int64),
    })


def _table(flat: pd.DataFrame, as_of: np.ndarray, n: int) -> pd.DataFrame:
    """Features of ``n`` users from a flat event table; events at or after a user's as-of are ignored."""
    as_of = np.asarray(as_of, dtype=np.int64)
    flat = flat[flat["t"].to_numpy() < as_of[flat["u"].to_numpy()]]
    out = pd.DataFrame(0.0, index=np.arange(n), columns=FEATURES)
    pur = flat[flat["type"] == PURCHASE]
    ret = flat[flat["type"] == RETURN]
    if len(ret):
        g = ret.groupby("u")
        out.loc[g.size().index, "n_returns"] = g.size().to_numpy(np.float64)
        out.loc[g.size().index, "return_value"] = g["value"].sum().to_numpy()
    has = np.zeros(n, dtype=bool)
    if len(pur):
        ua = as_of[pur["u"].to_numpy()]
        pur = pur.assign(day=pur["t"] // int(DAY), age=(ua - pur["t"].to_numpy()) / DAY)
        orders = pur.groupby(["u", "t"], sort=True)["value"].sum().reset_index()
        days = pur.groupby(["u", "day"], sort=True)["value"].sum().reset_index()
        g, go, gd = pur.groupby("u"), orders.groupby("u"), days.groupby("u")
        idx = g.size().index.to_numpy()
        has[idx] = True
        a = as_of[idx]
        first_t, last_t = g["t"].min().to_numpy(), g["t"].max().to_numpy()
        first_day, last_day = gd["day"].min().to_numpy(), gd["day"].max().to_numpy()
        n_days = gd.size().to_numpy(np.float64)
        rev = g["value"].sum().to_numpy()
        first_day_rev = days.drop_duplicates("u", keep="first")["value"].to_numpy()
        out.loc[idx, "recency_days"] = (a - last_t) / DAY
        out.loc[idx, "tenure_days"] = (a - first_t) / DAY
        out.loc[idx, "n_orders"] = go.size().to_numpy(np.float64)
        out.loc[idx, "n_purchase_days"] = n_days
        out.loc[idx, "total_revenue"] = rev
        out.loc[idx, "avg_order_value"] = rev / go.size().to_numpy()
        out.loc[idx, "max_order_value"] = go["value"].max().to_numpy()
        out.loc[idx, "n_lines"] = g.size().to_numpy(np.float64)
        out.loc[idx, "n_distinct_items"] = g["item"].nunique().to_numpy(np.float64)
        for w in WINDOWS:
            recent = pur[pur["age"] <= w]
            out.loc[idx, f"revenue_last_{w}"] = recent.groupby("u")["value"].sum().reindex(idx, fill_value=0.0).to_numpy()
            ro = orders[orders["u"].isin(recent["u"].unique())]
            ro = ro[(as_of[ro["u"].to_numpy()] - ro["t"].to_numpy()) / DAY <= w]
            out.loc[idx, f"orders_last_{w}"] = ro.groupby("u").size().reindex(idx, fill_value=0).to_numpy(np.float64)
        freq = n_days - 1
        out.loc[idx, "frequency"] = freq
        out.loc[idx, "recency"] = (last_day - first_day).astype(np.float64)
        out.loc[idx, "T"] = (a - first_day * DAY) / DAY
        out.loc[idx, "monetary_value"] = np.where(freq > 0, (rev - first_day_rev) / np.maximum(freq, 1), 0.0)
        out.loc[idx, "mean_gap_days"] = np.where(freq > 0, (last_day - first_day) / np.maximum(freq, 1), 0.0)
    out["has_purchase"] = has
    return out


def rfm_from_sequences(histories: Sequences, as_of) -> pd.DataFrame:
    """One row per history (same order). ``as_of`` is one unix time (s) or one per history.
    Users without a purchase before their as-of get zeros and ``has_purchase = False``."""
    as_of = np.broadcast_to(np.asarray(as_of, dtype=np.int64), (len(histories),))
    out = _table(flatten(histories), as_of, len(histories))
    if histories.user_ids is not None:
        out.index = pd.Index(histories.user_ids, name="user_id")
    return out


def to_unix(ts) -> int:
    return int(pd.Timestamp(ts).value // 10**9)


def rfm_features(events: pd.DataFrame, cutoff, users=None, missing: str = "raise") -> pd.DataFrame:
    """Features of ``users`` (default: everyone with a purchase before ``cutoff``) from store events.

    ``missing`` says what to do with a listed user who has no purchase before the cut-off:
    ``'raise'`` (a DataError naming them), ``'drop'`` or ``'keep'`` (a zero row, ``has_purchase`` False).
    """
    if missing not in ("raise", "drop", "keep"):
        raise DataError(f"missing={missing!r}: expected 'raise', 'drop' or 'keep'")
    cutoff = pd.Timestamp(cutoff)
    ev = events[events["timestamp"] < cutoff]
    uid = ev["user_id"].astype(str)
    if users is None:
        users = np.array(sorted(uid[ev["event_type"] == "purchase"].unique()), dtype=object)
    users = np.asarray(users, dtype=object).astype(str)
    pos = pd.Series(np.arange(len(users)), index=users)
    known = uid.isin(pos.index)
    ev, uid = ev[known], uid[known]
    flat = pd.DataFrame({
        "u": pos.loc[uid].to_numpy(),
        "t": pd.to_datetime(ev["timestamp"]).astype("datetime64[s]").astype("int64").to_numpy(),
        "type": ev["event_type"].map(lambda s: EVENT_TYPE_CODE.get(s, -1)).to_numpy(np.int64),
        "value": ev["value"].to_numpy(np.float64),
        "item": pd.factorize(ev["item_id"].fillna(""))[0],
    })
    out = _table(flat, np.full(len(users), to_unix(cutoff), dtype=np.int64), len(users))
    out.index = pd.Index(users, name="user_id")
    if not out["has_purchase"].all():
        none = out.index[~out["has_purchase"]]
        if missing == "raise":
            raise DataError(f"{len(none)} user(s) have no purchase before the cut-off {cutoff} "
                            f"(e.g. {list(none[:5])}); value features need at least one")
        if missing == "drop":
            out = out[out["has_purchase"]]
    return out
