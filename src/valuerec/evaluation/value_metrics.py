"""Customer-value and churn metrics (BENCHMARKS.md V1).

Value: ``normalized_gini`` of the gain curve (1.0 = perfect ordering, -1.0 = reversed), Spearman,
``decile_mape``, RMSE, MAE, aggregate bias. Churn: ROC AUC, PR AUC (average precision), Brier.

Ties in the prediction are resolved by expectation, not by row order: tied customers share their
mean actual value, which is the gain curve averaged over every order of the tie. So a constant
prediction scores Gini 0 whatever the row order (a stable sort would reward lucky file order).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from valuerec.data.schema import DataError


def _check(y_true, y_pred, name: str = "prediction") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise DataError(f"{name}: {p.shape[0]} predictions for {y.shape[0]} actual values")
    if len(y) == 0:
        raise DataError(f"{name}: no customers to evaluate")
    for label, arr in (("actual", y), (name, p)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataError(f"{name}: {int(bad.sum())} non-finite {label} value(s) (first at row {int(np.argmax(bad))})")
    return y, p


def gain_curve(y_true, y_pred) -> np.ndarray:
    """Cumulative share of actual value captured by the top-k customers ranked by ``y_pred``,
    for k = 0..n (length n + 1, starts at 0, ends at 1). Ties share their mean actual value."""
    y, p = _check(y_true, y_pred)
    total = y.sum()
    if total <= 0:
        raise DataError("gain curve: the actual values sum to zero or less; the Gini is undefined")
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    # Replace each tie group's values by the group mean (expected curve over random tie-breaks).
    _, start, counts = np.unique(-ps, return_index=True, return_counts=True)
    sums = np.add.reduceat(ys, start)
    ys = np.repeat(sums / counts, counts)
    return np.concatenate([[0.0], np.cumsum(ys) / total])


def gini(y_true, y_pred) -> float:
    """Gini of the gain curve: 2 x (trapezoid area under it) - 1 (0 = random, >0 = better)."""
    curve = gain_curve(y_true, y_pred)
    n = len(curve) - 1
    area = (curve[:-1] + curve[1:]).sum() / (2 * n)
    return float(2 * area - 1)


def normalized_gini(y_true, y_pred) -> float:
    """Gini of the prediction's ordering over the Gini of the perfect ordering (by actual value)."""
    y, p = _check(y_true, y_pred)
    best = gini(y, y)
    if best <= 0:
        raise DataError("normalized Gini: every customer has the same actual value; the Gini is undefined")
    return gini(y, p) / best


def spearman(y_true, y_pred) -> float:
    y, p = _check(y_true, y_pred)
    if np.all(p == p[0]) or np.all(y == y[0]):
        return 0.0  # no ordering information: zero correlation by convention, never NaN
    return float(stats.spearmanr(y, p).statistic)


def decile_table(y_true, y_pred, n_groups: int = 10) -> list[dict]:
    """Customers sorted by prediction (highest first) into ``n_groups`` near-equal groups; per group
    the mean predicted and mean actual value. Ties are broken by row order (groups need a cut)."""
    y, p = _check(y_true, y_pred)
    if len(y) < n_groups:
        raise DataError(f"decile table: {len(y)} customers cannot fill {n_groups} groups")
    order = np.argsort(-p, kind="stable")
    rows = []
    for g, idx in enumerate(np.array_split(order, n_groups)):
        rows.append({"decile": g + 1, "n": int(len(idx)), "mean_predicted": float(p[idx].mean()),
                     "mean_actual": float(y[idx].mean()), "share_of_actual": float(y[idx].sum() / max(y.sum(), 1e-300))})
    return rows


def decile_mape(y_true, y_pred, n_groups: int = 10) -> tuple[float, int]:
    """Mean over groups of |mean predicted - mean actual| / mean actual. Groups whose mean actual is 0
    have no defined percentage error; they are skipped and their number is returned beside the MAPE."""
    table = decile_table(y_true, y_pred, n_groups)
    errs = [abs(r["mean_predicted"] - r["mean_actual"]) / r["mean_actual"] for r in table if r["mean_actual"] > 0]
    skipped = n_groups - len(errs)
    if not errs:
        raise DataError("decile MAPE: every group has zero actual value")
    return float(np.mean(errs)), skipped


def roc_auc(y_true, score) -> float:
    """Probability that a random positive scores above a random negative (ties count one half)."""
    y, s = _check(y_true, score, "churn score")
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"ROC AUC: needs both classes, got {n_pos} positive and {n_neg} negative")
    ranks = stats.rankdata(s)  # average ranks for ties
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pr_auc(y_true, score) -> float:
    """Average precision: sum over positives of precision at that positive's threshold. Tied scores
    form one threshold (precision over the whole tie group), as in scikit-learn."""
    y, s = _check(y_true, score, "churn score")
    pos = y > 0.5
    if not pos.any():
        raise DataError("PR AUC: no positive labels")
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], pos[order].astype(np.float64)
    # Thresholds at the end of each tie group.
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]
    tp = np.cumsum(yy)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / pos.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(y_true, prob) -> float:
    y, p = _check(y_true, prob, "churn probability")
    if (p < 0).any() or (p > 1).any():
        raise DataError("Brier score: probabilities must lie in [0, 1]")
    return float(np.mean((p - y) ** 2))


def value_metrics(y_true, y_pred) -> dict:
    y, p = _check(y_true, y_pred, "expected value")
    mape, skipped = decile_mape(y, p)
    return {
        "gini": normalized_gini(y, p),
        "spearman": spearman(y, p),
        "decile_mape": mape,
        "decile_mape_groups_skipped": skipped,
        "rmse": float(np.sqrt(np.mean((p - y) ** 2))),
        "mae": float(np.mean(np.abs(p - y))),
        "bias": float(p.sum() / y.sum() - 1.0) if y.sum() > 0 else float("inf"),
        "decile_table": decile_table(y, p),
    }


def churn_metrics(churned, churn_prob) -> dict:
    return {"auc": roc_auc(churned, churn_prob), "pr_auc": pr_auc(churned, churn_prob),
            "brier": brier(churned, churn_prob)}


def interval_coverage(y_true, lower, upper) -> float:
    """Share of customers whose actual value lies in [lower, upper]."""
    y = np.asarray(y_true, dtype=np.float64)
    return float(np.mean((y >= np.asarray(lower) - 1e-9) & (y <= np.asarray(upper) + 1e-9)))
