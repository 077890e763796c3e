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
from valuerec.models.base import predicts_value, ranks_items
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
    report labels it an in-sample backtest and points to `valuerec bench value` for out-of-sample figures."""
    if not predicts_value(model):
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
    data_end = float(getattr(getattr(model, "model_config", None), "data_end", 0.0) or 0.0)
    out_of_sample = 0 < data_end <= cutoff.timestamp() + 86_400
    kind = ("Out-of-sample check: the model was trained on events before "
            f"{pd.Timestamp(data_end, unit='s').date()} only." if out_of_sample else
            "In-sample backtest (the model may have trained on this period); for out-of-sample figures run "
            "`valuerec bench value` on this store (V1's are in its result file for Online Retail).")
    return {"y_true": y, "y_pred": np.asarray(pred["expected_value"], float), "churn_true": y <= 0,
            "churn_prob": np.asarray(pred["churn_prob"], float),
            "label": f"Value predicted as of {cutoff.date()} for the {len(users)} customers with a purchase "
                     f"before it, against their spend in the next {horizon_days:.0f} days. {kind}"}


def build_inputs(model_dir: str | Path, store_path: str | Path, results_dir: str | Path | None,
                 n_examples: int = 3, title: str = "valuerec report") -> ReportInputs:
    model = load_model(model_dir)
    inputs = ReportInputs(title=title)
    if results_dir is not None:
        inputs.results = load_results(results_dir, inputs.notes)
    inputs.training_curves = training_curves(model)
    with EventStore(store_path, read_only=True) as st:
        events, items = st.events(), st.items()
    horizon = float(getattr(getattr(model, "model_config", None), "horizon_days", 90.0) or 90.0)
    inputs.value_eval = value_backtest(model, events, horizon)
    if inputs.value_eval is None:
        inputs.notes.append(f"The model in {model_dir} has no value head: the value and churn charts are left out.")
    stages, inputs.lifecycle = lifecycle_summary(model, events, horizon)
    if not ranks_items(model):
        inputs.notes.append(f"The model in {model_dir} was trained without a next-item head (value-only): "
                            "the example users' recommendations are left out.")
    else:
        inputs.examples = examples(model, events, items, n_examples, stages)
    return inputs


def _value_fn(model):
    if not predicts_value(model):
        return None
    from valuerec.policies.lifecycle import predict_value_safe
    return lambda h, a: predict_value_safe(model, h, a)


def lifecycle_summary(model, events: pd.DataFrame, horizon_days: float) -> tuple[pd.DataFrame, dict]:
    """Stages of every user at the end of the store, sizes, and transitions from one horizon earlier."""
    from valuerec.policies.lifecycle import LifecycleConfig, for_event_types, stage_sizes, stages_at, transition_matrix

    users = np.array(sorted(events["user_id"].unique()), dtype=object)
    seqs = sequences_from(events, model.catalogue_, users=users, unknown_items="keep")
    end = float(events["timestamp"].max().timestamp()) + 1.0
    start = end - horizon_days * 86_400.0
    cfg, _ = for_event_types(LifecycleConfig(horizon_days=horizon_days), events["event_type"].unique())
    vf = _value_fn(model)
    stages = stages_at(seqs, end, vf, cfg)
    sizes = stage_sizes(stages)
    tm = transition_matrix(seqs, start, end, vf, cfg)
    fmt = lambda t: str(pd.Timestamp(t, unit="s").date())  # noqa: E731
    return stages, {"sizes": dict(zip(sizes["stage"], sizes["users"].astype(int).tolist())),
                    "transitions": {a: {b: int(tm.loc[a, b]) for b in tm.columns} for a in tm.index},
                    "from": fmt(start), "to": fmt(end), "at": fmt(end)}


def examples(model, events: pd.DataFrame, items: pd.DataFrame, n: int, stages: pd.DataFrame | None = None,
             max_events: int = 50) -> list[dict]:
    """A heavy, a median and a light user: history, recommendations, value, stage and the events
    that influenced the top recommendation most (exact occlusion over the last ``max_events``)."""
    from valuerec.explain.influence import explain_events, item_target, occlusion

    cat = model.catalogue_
    text = dict(zip(items["item_id"].astype(str), items["text"])) if len(items) else {}
    counts = events.groupby("user_id").size().sort_values(ascending=False, kind="stable")
    pool = counts[counts >= 3]
    if pool.empty:
        return []
    picks = list(dict.fromkeys(pool.index[[0, len(pool) // 2, len(pool) - 1]]))[:n]
    by_user = stages.set_index("user_id") if stages is not None else None
    now = int(events["timestamp"].max().timestamp()) + 1
    out = []
    for uid in picks:
        ev = events[events["user_id"] == uid]
        seqs = sequences_from(ev, cat, users=np.array([uid], dtype=object))
        top, _ = model.recommend(seqs, k=10, exclude=None)
        ex = {"user_id": uid,
              "history": [{"time": str(r.timestamp), "event_type": r.event_type, "item_id": r.item_id,
                           "text": text.get(str(r.item_id))} for r in ev.tail(10).itertuples()],
              # past items are kept (repeat buying counts) and marked, so the reader can tell them apart
              "recommendations": [{"item_id": str(cat.item_ids[i]), "text": text.get(str(cat.item_ids[i])),
                                   "again": bool(np.isin(i, seqs.items[0]))} for i in top[0] if i >= 0]}
        if predicts_value(model):
            vs = sequences_from(ev, cat, users=np.array([uid], dtype=object), unknown_items="keep")
            pv = model.predict_value(vs, as_of=np.array([now]))
            ex["value"] = {k: float(np.asarray(v)[0]) for k, v in pv.items()}
        if by_user is not None and uid in by_user.index:
            ex["stage"], ex["reason"] = str(by_user.loc[uid, "stage"]), str(by_user.loc[uid, "reason"])
        recent = seqs.prefix([len(seqs.items[0])])
        if len(recent.items[0]) > max_events:
            cut = len(recent.items[0]) - max_events
            recent = type(recent)(items=[recent.items[0][cut:]], times=[recent.times[0][cut:]],
                                  event_types=[recent.event_types[0][cut:]], values=[recent.values[0][cut:]],
                                  user_ids=recent.user_ids)
        _, infl = occlusion(item_target(model, int(top[0][0])), recent)
        df = explain_events(recent, infl[0], cat, top=5)
        ex["influences"] = [{"item_id": r.item_id, "text": r.text, "effect": float(r.effect)}
                            for r in df.itertuples()]
        out.append(ex)
    return out
