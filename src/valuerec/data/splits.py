"""Splits: leave-one-out (R1) and cut-off (R2, V1), parameterised so any store can be split.

A split yields training sequences (what ``fit`` sees) and ``EvalTask`` objects (what each evaluation
ranks for: the input histories, the target items, what to exclude, and the targets' revenue).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from valuerec.data.dataset import Catalogue, Sequences, catalogue_from, sequences_from
from valuerec.data.schema import DataError


@dataclass
class EvalTask:
    """What to rank, for whom, against which targets."""

    inputs: Sequences                          # history fed to the model, one per evaluated user
    targets: list[np.ndarray]                  # item indices to find (a set per user)
    exclude: list[np.ndarray] | None = None    # item indices scored -inf (None: exclude nothing)
    target_revenue: list[np.ndarray] | None = None  # revenue of each target item (revenue@K)
    total_revenue: np.ndarray | None = None    # all holdout revenue of each user (denominator)
    name: str = ""

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx) -> "EvalTask":
        idx = np.asarray(idx)
        pick = (lambda xs: None if xs is None else [xs[i] for i in idx])
        return EvalTask(inputs=self.inputs.subset(idx), targets=pick(self.targets), exclude=pick(self.exclude),
                        target_revenue=pick(self.target_revenue),
                        total_revenue=None if self.total_revenue is None else self.total_revenue[idx],
                        name=self.name)


@dataclass
class Split:
    catalogue: Catalogue
    train: Sequences           # what fit() sees for model selection
    valid: EvalTask
    test: EvalTask
    train_full: Sequences      # what fit() sees for the final test model (train + validation period)
    info: dict


def leave_one_out(events: pd.DataFrame, items: pd.DataFrame | None = None) -> Split:
    """R1: per user, the last item is the test target, the second-to-last the validation target.

    Validation input = the training items; test input = training items + the validation item. Items
    in the input history are excluded from ranking. Users with fewer than 3 events take part only
    where they have an input and a target (2 events: test only).
    """
    if len(events) == 0:
        raise DataError("leave-one-out split: the store has no events")
    cat = catalogue_from(events, items)
    seqs = sequences_from(events, cat)
    lens = seqs.lengths()
    train = seqs.prefix(np.maximum(lens - 2, 0))
    train_full = seqs.prefix(np.maximum(lens - 1, 0))
    v_users = np.flatnonzero(lens >= 3)
    t_users = np.flatnonzero(lens >= 2)
    valid = EvalTask(inputs=train.subset(v_users),
                     targets=[seqs.items[u][-2:-1] for u in v_users],
                     exclude=[train.items[u] for u in v_users], name="valid")
    test = EvalTask(inputs=train_full.subset(t_users),
                    targets=[seqs.items[u][-1:] for u in t_users],
                    exclude=[train_full.items[u] for u in t_users], name="test")
    info = {"users": int(len(seqs)), "items": int(len(cat)), "events": int(lens.sum()),
            "valid_users": int(len(v_users)), "test_users": int(len(t_users))}
    return Split(catalogue=cat, train=train, valid=valid, test=test, train_full=train_full, info=info)


def _cutoff_task(events: pd.DataFrame, cat: Catalogue, cutoff: pd.Timestamp, end: pd.Timestamp | None,
                 target_types: tuple[str, ...], history_types: tuple[str, ...] | None, name: str,
                 ) -> tuple[EvalTask, np.ndarray]:
    hist_ev = events[events["timestamp"] < cutoff]
    if history_types is not None:
        hist_ev = hist_ev[hist_ev["event_type"].isin(history_types)]
    fut = events[(events["timestamp"] >= cutoff) & events["event_type"].isin(target_types)]
    if end is not None:
        fut = fut[fut["timestamp"] < end]
    hist_users = set(hist_ev["user_id"].astype(str))
    fut = fut[fut["user_id"].astype(str).isin(hist_users)]
    users = np.array(sorted(pd.unique(fut["user_id"].astype(str))), dtype=object)
    inputs = sequences_from(hist_ev, cat, users=users)
    g = fut.assign(item_idx=fut["item_id"].map(lambda i: cat.index.get(str(i), -1)))
    targets, revenue, total = [], [], []
    grouped = {u: d for u, d in g.groupby(g["user_id"].astype(str))}
    for u in users:
        d = grouped[u]
        total.append(float(d["value"].sum()))
        # Items first seen after the cut-off cannot be ranked; they stay in the targets' count
        # (recall denominator, revenue denominator) but not in the rankable set.
        per_item = d.groupby("item_id")["value"].sum()
        idx = np.array([cat.index.get(str(i), -1) for i in per_item.index], dtype=np.int64)
        targets.append(idx)
        revenue.append(per_item.to_numpy(dtype=np.float64))
    task = EvalTask(inputs=inputs, targets=targets, exclude=None, target_revenue=revenue,
                    total_revenue=np.asarray(total), name=name)
    return task, users


def cutoff_split(events: pd.DataFrame, items: pd.DataFrame | None, cutoff, valid_cutoff,
                 end=None, target_types: tuple[str, ...] = ("purchase",),
                 history_types: tuple[str, ...] | None = ("purchase",)) -> Split:
    """R2: history before the cut-off, targets = distinct items bought in [cutoff, end).

    Validation uses the same construction with ``valid_cutoff`` and targets before ``cutoff``. The
    catalogue is every item seen (in history events) before the test cut-off; the model for
    validation is fitted on events before ``valid_cutoff`` only.
    """
    cutoff, valid_cutoff = pd.Timestamp(cutoff), pd.Timestamp(valid_cutoff)
    end = pd.Timestamp(end) if end is not None else None
    if len(events) == 0:
        raise DataError("cut-off split: the store has no events")
    lo, hi = events["timestamp"].min(), events["timestamp"].max()
    for name, t in (("cutoff", cutoff), ("valid cutoff", valid_cutoff)):
        if not (lo < t <= hi):
            raise DataError(f"{name} {t} lies outside the data ({lo} to {hi})")
    if valid_cutoff >= cutoff:
        raise DataError(f"valid cutoff {valid_cutoff} must be before the cutoff {cutoff}")
    hist = events[events["timestamp"] < cutoff]
    if history_types is not None:
        hist = hist[hist["event_type"].isin(history_types)]
    cat = catalogue_from(hist, items)
    test, _ = _cutoff_task(events, cat, cutoff, end, target_types, history_types, "test")
    valid, _ = _cutoff_task(events, cat, valid_cutoff, cutoff, target_types, history_types, "valid")
    train_ev = hist[hist["timestamp"] < valid_cutoff]
    train = sequences_from(train_ev, cat)
    train_full = sequences_from(hist, cat)
    info = {"cutoff": str(cutoff), "valid_cutoff": str(valid_cutoff), "end": str(end) if end else None,
            "items": int(len(cat)), "test_users": int(len(test)), "valid_users": int(len(valid)),
            "train_users": int(len(train)), "train_full_users": int(len(train_full))}
    return Split(catalogue=cat, train=train, valid=valid, test=test, train_full=train_full, info=info)


def with_history_exclusion(task: EvalTask, exclude: bool) -> EvalTask:
    """``task`` with each user's input items excluded from the ranking (``exclude=True``) or not.

    Excluding them also drops them from the targets, which the ranking could no longer reach: what is
    left asks for items new to the user (their revenue share still counts all of the holdout spend), and
    users with no new target leave the task."""
    if not exclude:
        return EvalTask(inputs=task.inputs, targets=task.targets, exclude=None, target_revenue=task.target_revenue,
                        total_revenue=task.total_revenue, name=task.name)
    seen = [np.unique(h[h >= 0]) for h in task.inputs.items]
    keep = [~np.isin(t, s) for t, s in zip(task.targets, seen)]
    users = np.flatnonzero([k.any() for k in keep])
    return EvalTask(inputs=task.inputs.subset(users), targets=[task.targets[u][keep[u]] for u in users],
                    exclude=[seen[u] for u in users],
                    target_revenue=(None if task.target_revenue is None
                                    else [task.target_revenue[u][keep[u]] for u in users]),
                    total_revenue=None if task.total_revenue is None else task.total_revenue[users], name=task.name)
