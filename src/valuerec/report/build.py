"""Gather what the report shows from a model directory, an event store and the result files.

Each section is computed from the model and the store (or read from a result file); a section whose
inputs are missing (e.g. a model without a value head) is left out and the report says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from valuerec.data.dataset import sequences_from
from valuerec.data.store import EventStore
from valuerec.models import load_model
from valuerec.report.html import ReportInputs, load_results

log = logging.getLogger(__name__)


def training_curves(model) -> dict | None:
    """Per-epoch train loss and validation metrics from the training history the model saved."""
    hist = getattr(model, "history_", None) or []
    if not hist:
        return None
    keep_val = ("ndcg@10", "hr@10", "ndcg@20", "recall@20", "gini", "auc")
    curves: dict[str, list] = {"epochs": [int(r.get("epoch", i + 1)) for i, r in enumerate(hist)]}
    for i, r in enumerate(hist):
        flat = {k: v for k, v in r.items() if k.startswith("train_") and k != "train_seconds"}
        flat.update({f"val_{k}": v for k, v in (r.get("val") or {}).items() if k in keep_val})
        for k, v in flat.items():
            if isinstance(v, (int, float)):
                curves.setdefault(k, [None] * len(hist))[i] = float(v)
    return curves


def value_backtest(model, events: pd.DataFrame, horizon_days: float) -> dict | None:
    """Predict value as of ``last event - horizon`` for everyone with a purchase before it, and compare
    with what they spent in the following horizon. The model may have trained on this period: the
    report labels it an in-sample backtest; the out-of-sample figures are in the V1 result file."""
    if not hasattr(model, "predict_value"):
        return None
    end = events["timestamp"].max()
    cutoff = end - pd.Timedelta(days=horizon_days)
    purchases = events[events["event_type"] == "purchase"]
    hist = events[events["timestamp"] < cutoff]
    users = np.array(sorted(purchases[purchases["timestamp"] < cutoff]["user_id"].unique()), dtype=object)
    if len(users) < 10:
        return None
    seqs = sequences_from(hist, model.catalogue_, users=users, unknown_items="keep")
    pred = model.predict_value(seqs, as_of=np.full(len(users), int(cutoff.timestamp())))
    fut = purchases[(purchases["timestamp"] >= cutoff)].groupby("user_id")["value"].sum()
    y = fut.reindex(users).fillna(0.0).to_numpy()
    return {"y_true": y, "y_pred": np.asarray(pred["expected_value"], float), "churn_true": y <= 0,
            "churn_prob": np.asarray(pred["churn_prob"], float),
            "label": f"In-sample backtest on the store: value predicted as of {cutoff.date()} for the "
                     f"{len(users)} customers with a purchase before it, against their spend in the next "
                     f"{horizon_days:g} days. Out-of-sample figures: the V1 result file."}


def build_inputs(model_dir: str | Path, store_path: str | Path, results_dir: str | Path | None,
                 n_examples: int = 3, title: str = "valuerec report") -> ReportInputs:
    model = load_model(model_dir)
    inputs = ReportInputs(title=title)
    if results_dir is not None:
        inputs.results = load_results(results_dir)
    inputs.training_curves = training_curves(model)
    with EventStore(store_path, read_only=True) as st:
        events, items = st.events(), st.items()
    horizon = float(getattr(getattr(model, "model_config", None), "horizon_days", 90.0) or 90.0)
    inputs.value_eval = value_backtest(model, events, horizon)
    if inputs.value_eval is None:
        inputs.notes.append(f"The model in {model_dir} has no value head: the value and churn charts are left out.")
    inputs.lifecycle = lifecycle_summary(model, events)
    inputs.examples = examples(model, events, items, n_examples)
    return inputs


def lifecycle_summary(model, events: pd.DataFrame) -> dict | None:
    try:
        from valuerec.policies.lifecycle import stage_report
    except ImportError:
        return None
    return stage_report(model, events)


def examples(model, events: pd.DataFrame, items: pd.DataFrame, n: int) -> list[dict]:
    cat = model.catalogue_
    text = dict(zip(items["item_id"].astype(str), items["text"])) if len(items) else {}
    counts = events.groupby("user_id").size().sort_values(ascending=False)
    # a spread of users: heavy, median and light (with at least 3 events)
    pool = counts[counts >= 3]
    if pool.empty:
        return []
    picks = list(dict.fromkeys(pool.index[[0, len(pool) // 2, len(pool) - 1]]))[:n]
    out = []
    now = int(events["timestamp"].max().timestamp())
    for uid in picks:
        ev = events[events["user_id"] == uid]
        seqs = sequences_from(ev, cat, users=np.array([uid], dtype=object))
        top, _ = model.recommend(seqs, k=10, exclude=None)
        ex = {"user_id": uid,
              "history": [{"time": str(r.timestamp), "event_type": r.event_type, "item_id": r.item_id,
                           "text": text.get(str(r.item_id))} for r in ev.tail(10).itertuples()],
              "recommendations": [{"item_id": str(cat.item_ids[i]), "text": text.get(str(cat.item_ids[i]))}
                                  for i in top[0]]}
        if hasattr(model, "predict_value"):
            vs = sequences_from(ev, cat, users=np.array([uid], dtype=object), unknown_items="keep")
            pv = model.predict_value(vs, as_of=np.array([now]))
            ex["value"] = {k: float(np.asarray(v)[0]) for k, v in pv.items()}
        ex.update(_stage_and_influence(model, seqs, uid, top[0][0]))
        out.append(ex)
    return out


def _stage_and_influence(model, seqs, uid, top_item) -> dict:
    res: dict = {}
    try:
        from valuerec.explain.influence import explain_user
    except ImportError:
        return res
    infl = explain_user(model, seqs, target=f"item:{model.catalogue_.item_ids[top_item]}", top=5)
    res["influences"] = infl
    return res
