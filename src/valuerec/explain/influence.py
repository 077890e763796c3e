"""Which past events drove a score: exact occlusion influence.

An event's influence on a target (an item's score, predicted value, churn probability) is
``target(full history) - target(history without that event)``. All leave-one-out histories of a user
go to the model in one batch (chunked only by ``batch_size``), so the cost is one batched forward pass
over n + 1 histories. Positive influence: the event pushed the target up.

Targets are functions ``target_fn(histories, owner) -> (B,) array``, where ``owner[b]`` is the index
of the user whose (edited) history is row b; that lets one batch mix users with different targets.
``item_target``, ``value_target`` and ``churn_target`` build them from any model with
``score(Sequences)`` or ``predict_value(Sequences, as_of)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from valuerec.data.dataset import Catalogue, Sequences, unix_seconds
from valuerec.data.schema import EVENT_TYPES, DataError

TargetFn = Callable[[Sequences, np.ndarray], np.ndarray]


# -- targets ------------------------------------------------------------------------------------------
def item_target(model, items) -> TargetFn:
    """The model's score of ``items[owner]`` (one item per user; a scalar for all). Items are catalogue
    indices (``catalogue.index[item_id]``), not item ids."""
    raw = np.atleast_1d(np.asarray(items))
    if raw.dtype.kind not in "iu":
        raise DataError(f"item_target: items must be catalogue indices (integers), got {raw.dtype} "
                        f"{raw[:3].tolist()}; map item ids with catalogue.index[item_id]")
    items = raw.astype(np.int64)
    # A model that keeps a learned vector per trained history (ALS, BPR) would score the full history
    # with it and every edited one by fold-in, so each event's "influence" would mostly be the gap
    # between the two: score them all by fold-in.
    same_path = bool(getattr(model, "scores_trained_users_by_id", False))

    def f(h: Sequences, owner: np.ndarray) -> np.ndarray:
        from valuerec.models.base import raw_scores
        if same_path and h.user_ids is not None:
            h = replace(h, user_ids=None)
        with torch.no_grad(), raw_scores():   # an emptied history on the scale of the others
            s = model.score(h)
        it = items[owner] if len(items) > 1 else np.full(len(owner), items[0])
        out = (it < 0) | (it >= s.shape[1])
        if out.any():   # a negative index would wrap to the end of the catalogue
            raise DataError(f"item_target: item index {int(it[out][0])} is outside the catalogue (0..{s.shape[1] - 1})")
        return s[torch.arange(len(h)), torch.as_tensor(it)].double().cpu().numpy()
    return f


def _value_key_target(value_model, as_of, key: str) -> TargetFn:
    raw = as_of.to_numpy() if isinstance(as_of, (pd.Series, pd.Index)) else as_of
    as_of = unix_seconds(raw, len(np.atleast_1d(np.asarray(raw, dtype=object))))

    def f(h: Sequences, owner: np.ndarray) -> np.ndarray:
        a = as_of[owner] if len(as_of) > 1 else np.full(len(owner), as_of[0])
        return np.asarray(value_model.predict_value(h, a)[key], dtype=np.float64).reshape(-1)
    return f


def value_target(value_model, as_of) -> TargetFn:
    """Predicted value over the horizon (``expected_value``) at ``as_of[owner]``."""
    return _value_key_target(value_model, as_of, "expected_value")


def churn_target(value_model, as_of) -> TargetFn:
    """Predicted churn probability at ``as_of[owner]``."""
    return _value_key_target(value_model, as_of, "churn_prob")


# -- editing histories --------------------------------------------------------------------------------
def delete_events(histories: Sequences, drops: list[np.ndarray]) -> Sequences:
    """Row b = history b without the events at positions ``drops[b]``."""
    def cut(xs):
        if xs is None:
            return None
        out = []
        for x, d in zip(xs, drops):
            m = np.ones(len(x), dtype=bool)
            m[np.asarray(d, dtype=np.int64)] = False
            out.append(x[m])
        return out
    return Sequences(items=cut(histories.items), times=cut(histories.times),
                     event_types=cut(histories.event_types), values=cut(histories.values),
                     user_ids=histories.user_ids)


def _evaluate_edits(target_fn: TargetFn, histories: Sequences, owners: np.ndarray, drops: list[np.ndarray],
                    batch_size: int) -> np.ndarray:
    """target_fn over edited histories: row r = history owners[r] minus drops[r], chunked."""
    out = np.empty(len(owners))
    for s in range(0, len(owners), batch_size):
        o = owners[s:s + batch_size]
        h = delete_events(histories.subset(o), drops[s:s + batch_size])
        out[s:s + batch_size] = target_fn(h, o)
    return out


def occlusion(target_fn: TargetFn, histories: Sequences, users=None, batch_size: int = 1024,
              last: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Exact leave-one-out influence of every event of each user in ``users`` (default: all).
    Returns (target of the full history per user, influence array per user). All users' edited
    histories share batches. ``last``: occlude only each user's ``last`` most recent events (the
    cost is quadratic in history length); earlier events get NaN."""
    users = np.arange(len(histories)) if users is None else np.asarray(users, dtype=np.int64)
    owners, drops, starts = [], [], []
    for u in users:
        n = len(histories.items[u])
        first = 0 if last is None else max(n - last, 0)
        starts.append(first)
        owners += [u] * (n - first + 1)
        drops += [np.zeros(0, np.int64)] + [np.array([i]) for i in range(first, n)]
    vals = _evaluate_edits(target_fn, histories, np.asarray(owners, dtype=np.int64), drops, batch_size)
    full, infl, pos = np.empty(len(users)), [], 0
    for j, u in enumerate(users):
        n, first = len(histories.items[u]), starts[j]
        full[j] = vals[pos]
        a = np.full(n, np.nan)
        a[first:] = vals[pos] - vals[pos + 1:pos + 1 + n - first]
        infl.append(a)
        pos += n - first + 1
    return full, infl


def greedy_deletion(target_fn: TargetFn, histories: Sequences, users=None, k: int = 3,
                    direction: str = "supporting", batch_size: int = 1024,
                    last: int | None = None, stop_without_gain: bool = False,
                    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The ``k`` events whose deletion together moves the target most, chosen greedily: step j deletes
    the event that, with the j - 1 chosen before it, moves the target most. Occlusion scores each event
    alone; when a history repeats its evidence (the same item twice, close substitutes), deleting one
    copy barely moves the target and occlusion ranks both low, while this finds the set.

    ``direction``: ``"supporting"`` lowers the target most (the events that raised it: for an item's
    score, why it is recommended); ``"abs"`` moves it most either way. ``last``: consider only each
    user's ``last`` most recent events. Cost: ``k`` batched passes over each user's n histories.

    ``stop_without_gain``: end a user's set at the first step where no remaining event lowers the target
    further (``"abs"``: moves it further from the full history's), so every listed step helps;
    otherwise every user gets k events.

    Returns (target of the full history per user, chosen positions per user in the order chosen,
    target after each step per user). A user with k events or fewer gets all of them (in greedy order)."""
    if direction not in ("supporting", "abs"):
        raise DataError(f"greedy_deletion: direction={direction!r}, expected 'supporting' or 'abs'")
    if k < 1:
        raise DataError(f"greedy_deletion: k={k}, must be >= 1")
    users = np.arange(len(histories)) if users is None else np.asarray(users, dtype=np.int64)
    full = _evaluate_edits(target_fn, histories, users, [np.zeros(0, np.int64)] * len(users), batch_size)
    chosen = [np.zeros(0, np.int64) for _ in users]
    after = [np.zeros(0) for _ in users]
    done = np.zeros(len(users), dtype=bool)
    for _ in range(k):
        owners, drops, cands = [], [], []
        for j, u in enumerate(users):
            n = len(histories.items[u])
            first = 0 if last is None else max(n - last, 0)
            c = np.zeros(0, np.int64) if done[j] else np.setdiff1d(np.arange(first, n), chosen[j])
            cands.append(c)
            owners += [u] * len(c)
            drops += [np.append(chosen[j], i) for i in c]
        if not owners:
            break
        vals = _evaluate_edits(target_fn, histories, np.asarray(owners, dtype=np.int64), drops, batch_size)
        pos = 0
        for j, c in enumerate(cands):
            if len(c):
                v = vals[pos:pos + len(c)]
                def moved(x):     # how far the target moved from the full history's
                    return full[j] - x if direction == "supporting" else np.abs(full[j] - x)
                m = moved(v)
                b = int(np.argmax(m))    # first of equals: the earliest event
                if stop_without_gain and not m[b] > (moved(after[j][-1]) if len(after[j]) else 0.0):
                    done[j] = True
                    pos += len(c)
                    continue
                chosen[j] = np.append(chosen[j], c[b])
                after[j] = np.append(after[j], v[b])
            pos += len(c)
    return full, chosen, after


# -- explanations -------------------------------------------------------------------------------------
def explain_events(history: Sequences, influence: np.ndarray, catalogue: Catalogue | None = None,
                   top: int | None = 10, stored_item_ids: list | None = None) -> pd.DataFrame:
    """The events of one user (row 0 of ``history``) with their effect, largest |effect| first: the
    ``top`` of them (>= 1), or all with ``top=None``.

    ``stored_item_ids`` (one per event, as stored) names the items the model's catalogue does not hold
    (added after training), which the history marks -1; ``in_catalogue`` then says which those are."""
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1):
        raise DataError(f"explain_events: top={top!r}, expected an integer >= 1 (or None for every event)")
    items = history.items[0]
    df = pd.DataFrame({"position": np.arange(len(items)), "item_index": items})
    if catalogue is not None:
        ids = [str(catalogue.item_ids[i]) if i >= 0 else None for i in items]
        if stored_item_ids is not None and len(stored_item_ids) == len(items):
            ids = [cid if cid is not None else (None if s is None or s != s else str(s))
                   for cid, s in zip(ids, stored_item_ids)]
        df["item_id"] = ids
        if stored_item_ids is not None and len(stored_item_ids) == len(items):
            df["in_catalogue"] = items >= 0
        df["text"] = ([catalogue.text[i] if i >= 0 else None for i in items]
                      if catalogue.text is not None else None)
    if history.times is not None:
        df["time"] = pd.to_datetime(history.times[0], unit="s").astype(str)
    if history.event_types is not None:
        df["event_type"] = [EVENT_TYPES[t] if 0 <= t < len(EVENT_TYPES) else str(t) for t in history.event_types[0]]
    if history.values is not None:
        df["value"] = history.values[0].astype(float)
    df["effect"] = np.asarray(influence, dtype=np.float64)
    df = df.reindex(df["effect"].abs().sort_values(ascending=False, kind="stable").index)
    return df.head(top).reset_index(drop=True) if top is not None else df.reset_index(drop=True)


GREEDY_METHOD = {
    "supporting": "greedy deletion: each step deletes the event that, with those deleted before it, lowers the "
                  "target most",
    "abs": "greedy deletion: each step deletes the event that, with those deleted before it, moves the target "
           "most (either way)"}
GREEDY_DIRECTIONS = ("auto", "supporting", "abs")


def resolve_greedy_direction(direction: str, target_kind: str) -> str:
    """The ``greedy_deletion`` direction for a target: ``"auto"`` is ``"abs"`` for a churn probability and
    ``"supporting"`` for an item's score or a value. A customer's purchases hold their churn probability
    down, so the events that explain it are mostly those whose deletion raises it; "supporting" would look
    only for events that raised it, which few histories have."""
    if direction not in GREEDY_DIRECTIONS:
        raise DataError(f"greedy direction {direction!r}: expected one of {', '.join(GREEDY_DIRECTIONS)}")
    if direction != "auto":
        return direction
    return "abs" if target_kind == "churn" else "supporting"


def greedy_explanation(events: pd.DataFrame, full: float, chosen: np.ndarray, after: np.ndarray, k: int,
                       rows: Callable[[pd.DataFrame], list], scalar: Callable = float,
                       direction: str = "supporting") -> dict:
    """One user's ``greedy_deletion`` result as an explanation: the chosen events' rows of ``events``
    (``explain_events(..., top=None)``) in the order chosen, each with the target after its step and
    the step's effect, and the target without the whole set. ``rows`` and ``scalar`` turn the table
    and the numbers into the caller's output (JSON records, the service's plain values); ``direction``
    is the one ``greedy_deletion`` was given."""
    after = np.asarray(after, dtype=np.float64)
    table = events.set_index("position").loc[np.asarray(chosen, dtype=np.int64)].reset_index()
    table["target_after"] = after
    table["step_effect"] = np.concatenate([[full], after[:-1]]) - after
    without = float(after[-1]) if len(after) else float(full)
    return {"k": int(k), "direction": direction, "method": GREEDY_METHOD[direction],
            "target_without_set": scalar(without), "set_effect": scalar(float(full) - without),
            "events": rows(table)}


# -- faithfulness -------------------------------------------------------------------------------------
@dataclass
class FaithfulnessResult:
    top: float          # mean |target change| deleting the k most influential events
    random: float       # mean |target change| deleting k random events (mean over draws)
    users: int
    k: int
    per_user_top: np.ndarray
    per_user_random: np.ndarray

    @property
    def ratio(self) -> float:
        return float(self.top / self.random) if self.random > 0 else float("inf")

    def ratio_interval(self, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float] | None:
        """Percentile bootstrap interval of ``ratio`` over users (users resampled with replacement, the
        same resample for both means): how far the ratio depends on which users were drawn."""
        if self.users < 2:
            return None
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, self.users, size=(n_boot, self.users))
        top, rnd = self.per_user_top[idx].mean(1), self.per_user_random[idx].mean(1)
        ratios = np.where(rnd > 0, top / np.where(rnd > 0, rnd, 1.0), np.inf)
        lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def as_dict(self) -> dict:
        k = self.k
        ci = self.ratio_interval()
        return {f"top{k}": float(self.top), f"random{k}": float(self.random), "ratio": self.ratio,
                "ratio_ci95": None if ci is None else list(ci),
                "users": int(self.users), "k": k,
                f"median_top{k}": float(np.median(self.per_user_top)) if self.users else None,
                f"median_random{k}": float(np.median(self.per_user_random)) if self.users else None,
                "share_users_top_gt_random": float(np.mean(self.per_user_top > self.per_user_random))
                if self.users else None}


def faithfulness(target_fn: TargetFn, histories: Sequences, users=None, k: int = 3, n_random: int = 5,
                 seed: int = 0, batch_size: int = 1024, influences: list[np.ndarray] | None = None,
                 rank: str = "abs", orders: list[np.ndarray] | None = None) -> FaithfulnessResult:
    """Deletion test: for each user with more than k events, |target(full) - target(without the k
    most influential events)| vs the same for k events drawn at random (mean over ``n_random``
    draws). A faithful explanation moves the target more.

    ``rank``: which events are "most influential". ``"abs"``: largest |influence| in either direction
    (a supporting and an opposing event can cancel when deleted together). ``"supporting"``: largest
    positive influence, the events that raised the target (for an item's score: the reasons it is
    recommended), deleted together they all push the same way.

    ``influences`` (from ``occlusion``) and ``orders`` are per user of ``users``, including those with
    k events or fewer, which the test leaves out.
    ``orders``: the events to delete, the first k of each user's array (e.g. ``greedy_deletion``'s
    chosen positions), one per user of ``users``; given, they replace the ranking by influence."""
    if rank not in ("abs", "supporting"):
        raise DataError(f"faithfulness: rank={rank!r}, expected 'abs' or 'supporting'")
    users = np.arange(len(histories)) if users is None else np.asarray(users, dtype=np.int64)
    for name, given in (("influences", influences), ("orders", orders)):
        if given is not None and len(given) != len(users):
            raise DataError(f"faithfulness: {len(given)} {name} for {len(users)} users")
    keep = [j for j, u in enumerate(users) if len(histories.items[u]) > k]
    users = users[keep]
    if len(users) == 0:
        raise DataError(f"faithfulness: no user has more than k={k} events")
    full = None
    if orders is not None:
        orders = [orders[j] for j in keep]
    elif influences is not None:
        influences = [influences[j] for j in keep]
    else:
        full, influences = occlusion(target_fn, histories, users, batch_size)
    rng = np.random.default_rng(seed)
    owners, drops = [], []
    for j, u in enumerate(users):
        n = len(histories.items[u])
        owners += [u] * (2 + n_random)
        if orders is not None:
            order = np.asarray(orders[j], dtype=np.int64)
        else:
            infl = np.asarray(influences[j])
            order = np.argsort(-np.abs(infl) if rank == "abs" else -infl, kind="stable")
        drops += [np.zeros(0, np.int64), order[:k]]
        drops += [rng.choice(n, size=k, replace=False) for _ in range(n_random)]
    vals = _evaluate_edits(target_fn, histories, np.asarray(owners, dtype=np.int64), drops, batch_size)
    vals = vals.reshape(len(users), 2 + n_random)
    base = vals[:, 0] if full is None else full
    top = np.abs(base - vals[:, 1])
    rnd = np.abs(base[:, None] - vals[:, 2:]).mean(axis=1)
    return FaithfulnessResult(top=float(top.mean()), random=float(rnd.mean()), users=len(users), k=k,
                              per_user_top=top, per_user_random=rnd)
