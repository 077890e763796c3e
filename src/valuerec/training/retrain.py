"""Retraining from the live store: fine-tune the current model on what has happened since, and write a
new versioned model directory only if it is no worse on held-out recent events.

The most recent ``holdout_days`` of the store are held out: each user active both before and inside
that window is a test case (targets = the distinct items they touched inside it, as in R2). The
current model and the candidate (fine-tuned from the current weights on everything before the window,
with the catalogue grown by any new items) are scored on exactly the same cases. If the candidate is
at least as good on the chosen metric, it is fine-tuned once more on every event (so the deployed
model has seen the newest behaviour) and saved as the next version ``v0001``, ``v0002``, ...
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from valuerec.data.dataset import Catalogue, catalogue_from, catalogue_overlap_note, sequences_from
from valuerec.data.schema import DataError
from valuerec.data.splits import EvalTask
from valuerec.data.store import EventStore
from valuerec.evaluation.metrics import evaluate
from valuerec.models import MODEL_REGISTRY, Recommender, load_model

log = logging.getLogger(__name__)


@dataclass
class RetrainReport:
    base_model: str
    holdout_from: str
    holdout_users: int
    new_items: int
    metric: str
    base: dict = field(default_factory=dict)
    candidate: dict = field(default_factory=dict)
    accepted: bool = False
    version_dir: str | None = None
    seconds: float = 0.0
    model_data_until: str | None = None   # the last event the current model learned from, when it says
    store_until: str | None = None
    notes: list = field(default_factory=list)


def grow_catalogue(old: Catalogue, events: pd.DataFrame, items: pd.DataFrame) -> Catalogue:
    """The old catalogue with every item seen since appended (old indices unchanged), side info
    refreshed from the store's item table."""
    fresh = catalogue_from(events, items)
    new_ids = [i for i in fresh.item_ids if str(i) not in old.index]
    ids = np.concatenate([old.item_ids, np.asarray(new_ids, dtype=object)])
    it = items.set_index(items["item_id"].astype(str)) if len(items) else None

    def side(col, old_vals, default=None):
        vals = list(old_vals) if old_vals is not None else [default] * len(old)
        for i in new_ids:
            v = it[col].get(str(i)) if it is not None and col in it else default
            vals.append(v if v is not None and v == v else default)
        return vals

    text = side("text", old.text)
    attrs = side("attributes", old.attributes)
    price = np.asarray(side("price", old.price if old.price is not None else np.full(len(old), np.nan), np.nan),
                       dtype=float)
    return Catalogue(item_ids=ids, text=text if any(t for t in text) else None,
                     attributes=attrs if any(a for a in attrs) else None, price=price)


def holdout_task(events: pd.DataFrame, catalogue: Catalogue, start: pd.Timestamp) -> EvalTask:
    before, after = events[events["timestamp"] < start], events[events["timestamp"] >= start]
    users = np.array(sorted(set(before["user_id"]) & set(after["user_id"])), dtype=object)
    if len(users) == 0:
        fix = ("a shorter --holdout-days: it reaches back to or before the first event" if before.empty else
               "a longer --holdout-days")
        raise DataError(f"retrain: no user is active both before and after {start}; nothing to evaluate on "
                        f"(use {fix})")
    inputs = sequences_from(before, catalogue, users=users)
    groups = {u: g for u, g in after[after["item_id"].notna()].groupby("user_id")}
    targets, revenue, total = [], [], []
    for u in users:
        g = groups.get(u)
        if g is None:
            targets.append(np.zeros(0, np.int64))
            revenue.append(np.zeros(0))
            total.append(0.0)
            continue
        per_item = g.groupby("item_id")["value"].sum()
        targets.append(np.array([catalogue.index.get(str(i), -1) for i in per_item.index], dtype=np.int64))
        revenue.append(per_item.to_numpy(float))
        total.append(float(g["value"].sum()))
    keep = [i for i, t in enumerate(targets) if len(t)]
    task = EvalTask(inputs=inputs, targets=targets, exclude=None, target_revenue=revenue,
                    total_revenue=np.asarray(total), name="recent")
    return task.subset(keep)


def _score_on(model: Recommender, task: EvalTask, catalogue: Catalogue) -> dict:
    """Evaluate ``model`` on a task indexed by ``catalogue`` (which may hold items the model lacks:
    they get -inf, i.e. they count as misses)."""
    import torch

    own = model.catalogue_
    cols = torch.as_tensor(np.array([own.index.get(str(i), -1) for i in catalogue.item_ids]))

    def score(inputs):
        mapped = type(inputs)(items=[np.array([own.index.get(str(catalogue.item_ids[i]), -1) for i in s], dtype=np.int64)
                                     for s in inputs.items], times=inputs.times, event_types=inputs.event_types,
                              values=inputs.values, user_ids=inputs.user_ids)
        s = model.score(mapped).float()
        out = torch.full((s.shape[0], len(catalogue)), float("-inf"))
        ok = cols >= 0
        out[:, ok] = s[:, cols[ok]]
        return out

    return evaluate(score, task, len(catalogue), ks=(10, 20))


def retrain(model_dir: str | Path, store_path: str | Path, out_root: str | Path, holdout_days: float = 14.0,
            epochs: int = 5, metric: str = "ndcg@20", tolerance: float = 0.0, seed: int = 0) -> RetrainReport:
    t0 = time.perf_counter()
    if metric not in PICKED or metric == "users":
        raise DataError(f"retrain: metric {metric!r} is not measured; choose one of "
                        f"{[m for m in PICKED if m != 'users']}")
    if not (np.isfinite(holdout_days) and holdout_days > 0):
        raise DataError(f"retrain: holdout_days={holdout_days}, must be > 0 days")
    if not np.isfinite(tolerance):   # negative: the candidate must beat the current model by that much
        raise DataError(f"retrain: tolerance={tolerance}, must be a finite number")
    if epochs < 1:
        raise DataError(f"retrain: epochs={epochs}, must be >= 1")
    if Path(out_root).exists() and not Path(out_root).is_dir():
        raise DataError(f"retrain: --out {out_root} is a file; give the directory that holds the versions")
    m, o = Path(model_dir).resolve(), Path(out_root).resolve()
    if o == m or m in o.parents:
        raise DataError(f"retrain: --out {out_root} is the model directory {model_dir} or inside it; the versions "
                        "need a folder of their own (a later train --out over the model would delete them)")
    base = load_model(model_dir)
    with EventStore(store_path, read_only=True) as st:
        events, items = st.events(), st.items()
    if events.empty:
        raise DataError(f"retrain: the store {store_path} has no events")
    end = events["timestamp"].max()
    start = end - pd.Timedelta(days=holdout_days)
    item_events = events[events["item_id"].notna()]
    until = _model_data_until(base)
    if until is not None and end.floor("s") < until:
        raise DataError(f"retrain: the store {store_path} ends at {end}, before the events the model {model_dir} "
                        f"learned from (up to {until}); is it the store the model was trained on?")
    if until is not None and end.floor("s") == until:
        return RetrainReport(base_model=str(model_dir), holdout_from=str(start), holdout_users=0, new_items=0,
                             metric=metric, model_data_until=str(until), store_until=str(end),
                             notes=[f"nothing new: the store's last event ({end}) is the last one the model "
                                    f"learned from; nothing was trained or written"],
                             seconds=time.perf_counter() - t0)
    overlap = catalogue_overlap_note(base.catalogue_, item_events["item_id"].unique())
    cat = grow_catalogue(base.catalogue_, item_events, items)
    task = holdout_task(item_events, cat, start)
    report = RetrainReport(base_model=str(model_dir), holdout_from=str(start), holdout_users=len(task),
                           new_items=len(cat) - len(base.catalogue_), metric=metric,
                           model_data_until=None if until is None else str(until), store_until=str(end))
    if overlap is not None:     # a model trained on other data: it starts from nothing it knows here
        report.notes.append(overlap)
    if until is None:
        report.notes.append("the model does not record the events it learned from (saved by an older valuerec), "
                            "so whether the held-out events are new to it is not checked")
    elif start.floor("s") <= until:
        seen = int(((item_events["timestamp"] >= start) & (item_events["timestamp"].dt.floor("s") <= until)).sum())
        report.notes.append(f"the held-out window starts at {start}, before the model's data end ({until}): the "
                            f"current model learned from {seen} of the held-out events, which favours it; a "
                            f"--holdout-days below {_days(end - until)} holds out only new events")
    log.info("retrain: %d held-out users after %s, %d new items", len(task), start, report.new_items)
    report.base = _pick(_score_on(base, task, cat))

    def fit_candidate(train_events: pd.DataFrame) -> Recommender:
        train = sequences_from(train_events, cat)
        cls = MODEL_REGISTRY[base.name]
        cfg = dict(base.config())
        if base.name == "transformer":
            for k in ("n_items", "n_attributes", "max_attributes", "text_dim", "seed"):
                cfg.pop(k, None)
            cfg.update(epochs=epochs, warmup_steps=0, progress=False, checkpoint_dir=None)
            return cls(seed=seed, **cfg).fit(train, cat, warm_start=base)
        cfg.pop("seed", None)
        return (cls(seed=seed, **cfg) if "seed" in cls.__init__.__code__.co_varnames else cls(**cfg)).fit(train, cat)

    candidate = fit_candidate(item_events[item_events["timestamp"] < start])
    report.candidate = _pick(_score_on(candidate, task, cat))
    report.accepted = report.candidate[metric] >= report.base[metric] - tolerance
    if report.accepted:
        final = fit_candidate(item_events)
        final.never_recommend_ = base.never_recommend_     # the items the current model never recommends
        out_root = Path(out_root)
        out_root.mkdir(parents=True, exist_ok=True)
        n = 1 + max([int(p.name[1:]) for p in out_root.glob("v[0-9][0-9][0-9][0-9]")] or [0])
        vdir = out_root / f"v{n:04d}"
        tmp = out_root / f".v{n:04d}.tmp"
        final.save(tmp)
        report.seconds = time.perf_counter() - t0
        report.version_dir = str(vdir)
        (tmp / "retrain.json").write_text(json.dumps(asdict(report), indent=2, default=str))
        tmp.rename(vdir)  # appears whole or not at all: the service never loads half a model
    report.seconds = time.perf_counter() - t0
    return report


def _model_data_until(model: Recommender) -> pd.Timestamp | None:
    """The last event time the model learned from (to the second), if its directory records it."""
    span = getattr(model, "trained_on_", None) or {}
    try:
        return pd.Timestamp(span["until"]).floor("s") if span.get("until") else None
    except (TypeError, ValueError):
        return None


def _days(delta: pd.Timedelta) -> str:
    return f"{delta / pd.Timedelta(days=1):.3g}"


PICKED = ("ndcg@10", "ndcg@20", "recall@20", "hr@20", "revenue@20", "mrr", "users")


def _pick(m: dict) -> dict:
    return {k: float(v) for k, v in m.items() if k in PICKED}
