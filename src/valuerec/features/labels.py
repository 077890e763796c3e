"""V1 targets after a cut-off: holdout revenue (value) and churn (no purchase in the holdout).

The holdout window is ``[cutoff, end]`` where ``end`` is ``cutoff + horizon_days`` (exclusive) or,
with ``horizon_days=None``, the last event in the data (inclusive; V1's "to the end of the data").
A window the data does not cover is an error, never a silent zero: a customer who "spent nothing"
in days that were never observed is not a churner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from valuerec.data.schema import DataError

DAY = pd.Timedelta(days=1)


@dataclass
class HoldoutWindow:
    cutoff: pd.Timestamp
    end: pd.Timestamp          # last instant counted
    inclusive_end: bool        # True: events at ``end`` count (to end of data)
    horizon_days: float        # window length in days (past-spend scaling, model horizon)

    def contains(self, ts: pd.Series) -> pd.Series:
        return (ts >= self.cutoff) & ((ts <= self.end) if self.inclusive_end else (ts < self.end))

    def as_dict(self) -> dict:
        return {"cutoff": str(self.cutoff), "end": str(self.end), "inclusive_end": self.inclusive_end,
                "horizon_days": self.horizon_days}


def holdout_window(events: pd.DataFrame, cutoff, horizon_days: float | None = None) -> HoldoutWindow:
    """Check the cut-off and horizon against the data's time range."""
    if len(events) == 0:
        raise DataError("value labels: the store has no events")
    cutoff = pd.Timestamp(cutoff)
    lo, hi = pd.Timestamp(events["timestamp"].min()), pd.Timestamp(events["timestamp"].max())
    if not (lo < cutoff <= hi):
        raise DataError(f"cutoff {cutoff} lies outside the data ({lo} to {hi}): "
                        "it needs events before it (history) and after it (holdout)")
    if horizon_days is None:
        if hi - cutoff < DAY:   # a holdout of hours: every horizon-based figure would divide by ~0
            raise DataError(f"cutoff {cutoff} leaves {hi - cutoff} of data after it (the data end {hi}): the "
                            "holdout needs at least a day; choose an earlier cutoff")
        return HoldoutWindow(cutoff, hi, True, (hi - cutoff) / DAY)
    if not np.isfinite(horizon_days) or horizon_days <= 0:
        raise DataError(f"horizon_days={horizon_days}: must be a positive number of days")
    end = cutoff + pd.Timedelta(days=float(horizon_days))
    # The data must reach into the window's last day; otherwise its tail was never observed.
    if end - DAY > hi:
        raise DataError(f"horizon of {horizon_days} days from {cutoff} ends {end}, after the data ends ({hi}); "
                        f"at most {int((hi - cutoff) / DAY) + 1} days are observed (or omit the horizon "
                        "to use everything after the cut-off)")
    return HoldoutWindow(cutoff, end, False, float(horizon_days))


@dataclass
class ValueLabels:
    user_ids: np.ndarray
    revenue: np.ndarray        # purchase revenue in the holdout
    n_purchases: np.ndarray    # purchase lines in the holdout
    churned: np.ndarray        # 1.0 where no purchase in the holdout
    window: HoldoutWindow


def value_labels(events: pd.DataFrame, window: HoldoutWindow, users) -> ValueLabels:
    """Holdout revenue and churn of ``users`` (purchases only, returns ignored as in V1)."""
    users = np.asarray(users, dtype=object).astype(str)
    pur = events[(events["event_type"] == "purchase") & window.contains(events["timestamp"])]
    g = pur.groupby(pur["user_id"].astype(str))
    rev = g["value"].sum().reindex(users, fill_value=0.0).to_numpy(np.float64)
    n = g.size().reindex(users, fill_value=0).to_numpy(np.int64)
    return ValueLabels(user_ids=users, revenue=rev, n_purchases=n, churned=(n == 0).astype(np.float64),
                       window=window)


def labels_from_sequences(histories, start, end) -> tuple[np.ndarray, np.ndarray]:
    """Purchase revenue and churn (no purchase) of each history in ``[start, end)`` (unix seconds,
    scalars or one per history). Used to build training windows inside the data a model may see."""
    from valuerec.features.rfm import PURCHASE, flatten

    n = len(histories)
    start = np.broadcast_to(np.asarray(start, dtype=np.int64), (n,))
    end = np.broadcast_to(np.asarray(end, dtype=np.int64), (n,))
    flat = flatten(histories)
    u = flat["u"].to_numpy()
    t = flat["t"].to_numpy()
    m = (flat["type"].to_numpy() == PURCHASE) & (t >= start[u]) & (t < end[u])
    rev = np.bincount(u[m], weights=flat["value"].to_numpy()[m], minlength=n)
    cnt = np.bincount(u[m], minlength=n)
    return rev.astype(np.float64), (cnt == 0).astype(np.float64)
