"""Lifecycle stages: where each user is in their life with us, from history and predicted value.

Stages (``STAGES``) and the rule that assigns each, checked in this order (the first that holds wins,
so every user gets exactly one stage, with the rule's name and numbers as the reason):

1. ``lapsed``    - the user has events, but none for longer than the horizon (recency > horizon).
2. ``new``       - no purchase yet (acquisition), including users with no events at all.
                   A purchase is an order: purchase events with the same timestamp (the lines of
                   one invoice) count once.
3. ``at-risk``   - predicted churn probability above ``churn_threshold`` (needs a value model).
4. ``activated`` - exactly one purchase.
5. ``advocate``  - repeat buyer, predicted value in the top ``1 - advocate_value_quantile`` of the
                   population (or above ``advocate_value_threshold``), and tenure > ``advocate_min_tenure_days``.
6. ``expanding`` - repeat buyer whose predicted value over the horizon exceeds their own past spend
                   rate over a horizon times ``expanding_factor`` (needs a value model).
7. ``retained``  - repeat buyer, active (not lapsed), none of the above.

Lapsed and at-risk come first because they can happen at any point of the journey and call for a
different treatment (win-back) than the journey stage would. Without a value model, at-risk and
expanding cannot be judged and advocate ranks users by past spend instead of predicted value; the
reason says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from valuerec.configcheck import check_types
from valuerec.data.dataset import Sequences, unix_seconds
from valuerec.data.schema import EVENT_TYPES, DataError, event_type_code

STAGES = ["new", "activated", "retained", "expanding", "advocate", "at-risk", "lapsed"]
NOT_YET = "not yet active"    # transition rows: no event before the first date
DAY = 86400.0


@dataclass
class LifecycleConfig:
    """Thresholds of the stage rules. Unknown keys are an error (``from_dict``)."""

    horizon_days: float = 91.0                 # the value horizon; lapsed = no activity for longer
    churn_threshold: float = 0.6               # at-risk: churn_prob above this
    expanding_factor: float = 1.5              # expanding: predicted value > past rate x this
    advocate_value_quantile: float = 0.9       # advocate: predicted value in the top decile ...
    advocate_value_threshold: float | None = None  # ... or above this absolute value, when given
    advocate_min_tenure_days: float = 180.0    # ... and tenure longer than this
    purchase_types: tuple[str, ...] = ("purchase",)  # event types that count as purchases

    def __post_init__(self) -> None:
        if isinstance(self.purchase_types, str):    # tuple("purchase") would be its letters
            raise DataError(f"lifecycle config: purchase_types must be a list of event types, e.g. "
                            f"[\"{self.purchase_types}\"], got the string {self.purchase_types!r}")
        self.purchase_types = tuple(self.purchase_types)
        unknown = [t for t in self.purchase_types if t not in EVENT_TYPES]
        if unknown:
            raise DataError(f"lifecycle config: purchase_types {unknown} are not event types; known: "
                            f"{list(EVENT_TYPES)}")
        check_types(self, "lifecycle config")
        if self.horizon_days <= 0:
            raise DataError(f"lifecycle config: horizon_days must be > 0, got {self.horizon_days}")
        if not 0.0 <= self.churn_threshold <= 1.0:
            raise DataError(f"lifecycle config: churn_threshold must be in [0, 1], got {self.churn_threshold}")
        if not 0.0 < self.advocate_value_quantile < 1.0:
            raise DataError("lifecycle config: advocate_value_quantile must be in (0, 1), "
                            f"got {self.advocate_value_quantile}")
        if self.expanding_factor <= 0:
            raise DataError(f"lifecycle config: expanding_factor must be > 0, got {self.expanding_factor}")

    @classmethod
    def for_model(cls, model, d: dict | None = None, *, model_threshold: bool = False) -> "LifecycleConfig":
        """``from_dict``, with the horizon taken from ``model`` (its ``horizon_days_``: the window its
        predicted value covers) unless ``d`` sets it: "expanding" compares that value with the past
        spend rate over the same number of days.

        ``model_threshold``: the "top value" bar for advocates is the one the model measured on its
        training population (``advocate_value_threshold_``, when it has one) unless ``d`` sets it. Use
        it for a few users at a time, who are no population to take a quantile over."""
        d = dict(d or {})
        h = getattr(model, "horizon_days_", None) if model is not None else None
        if "horizon_days" not in d and isinstance(h, (int, float)) and h > 0:
            d["horizon_days"] = float(h)
        thr = getattr(model, "advocate_value_threshold_", None) if model is not None else None
        if (model_threshold and d.get("advocate_value_threshold") is None and "advocate_value_quantile" not in d
                and thr is not None):
            d["advocate_value_threshold"] = float(thr)
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict | None) -> "LifecycleConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"lifecycle config: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["purchase_types"] = list(self.purchase_types)
        return out


def for_event_types(config: LifecycleConfig, event_types) -> tuple[LifecycleConfig, str | None]:
    """``config`` for a log whose events are of ``event_types`` (names as stored, or model codes): when
    none of them is one of its ``purchase_types`` (a log of views, plays or ratings), every type the log
    has counts as a purchase, and a note says so; otherwise ``config`` unchanged and no note. The one rule
    of `lifecycle`, `report`, the stage policy and the service for logs without purchases."""
    names = set()
    for t in event_types:
        if isinstance(t, (int, np.integer)):
            if 0 <= int(t) < len(EVENT_TYPES):
                names.add(EVENT_TYPES[int(t)])
        elif t is not None:
            names.add(EVENT_TYPES[event_type_code(str(t))])
    if not names or names & set(config.purchase_types):
        return config, None
    asked = list(config.purchase_types)
    new = LifecycleConfig.from_dict({**config.to_dict(), "purchase_types": sorted(names, key=EVENT_TYPES.index)})
    return new, (f"the store has no events of type {asked}; counting every event ({', '.join(new.purchase_types)}) "
                 "as a purchase")


def config_for_few_users(model, event_types, d: dict | None = None) -> LifecycleConfig:
    """The stages' settings for one user (or a few) at a time, as the stage policy and the service
    assign them: ``model``'s horizon and the "top value" bar it measured on its training population
    (``model`` None: no value model), and in a log whose ``event_types`` hold no purchase, every event
    counted as one (``for_event_types``)."""
    return for_event_types(LifecycleConfig.for_model(model, d, model_threshold=True), event_types)[0]


def history_features(histories: Sequences, as_of: np.ndarray, config: LifecycleConfig) -> pd.DataFrame:
    """Per user: tenure, recency (days), purchase count (orders: purchase events sharing a
    timestamp count once), past spend and past spend rate over one horizon, from events strictly
    before ``as_of``. Without times, every event counts and tenure /
    recency are unknown (NaN)."""
    U = len(histories)
    as_of = unix_seconds(as_of, U)
    codes = np.array([event_type_code(t) for t in config.purchase_types])
    tenure = np.full(U, np.nan)
    recency = np.full(U, np.nan)
    n_events = np.zeros(U, dtype=np.int64)
    n_purch = np.zeros(U, dtype=np.int64)
    spend = np.zeros(U)
    for u in range(U):
        n = len(histories.items[u])
        keep = np.ones(n, dtype=bool)
        if histories.times is not None and n:
            t = histories.times[u].astype(np.float64)
            keep = t < as_of[u]
            if keep.any():
                tenure[u] = (as_of[u] - t[keep].min()) / DAY
                recency[u] = (as_of[u] - t[keep].max()) / DAY
        n_events[u] = int(keep.sum())
        if histories.event_types is not None:
            is_p = np.isin(histories.event_types[u], codes) & keep
        else:
            is_p = keep  # no event types: every event is a purchase
        if histories.times is not None and n:
            # A purchase is an order: purchase events at the same time (lines of one invoice) count once.
            n_purch[u] = int(len(np.unique(histories.times[u][is_p])))
        else:
            n_purch[u] = int(is_p.sum())
        if histories.values is not None:
            spend[u] = float(np.asarray(histories.values[u], dtype=np.float64)[is_p].sum())
    # Spend rate per horizon; a tenure shorter than one horizon counts as one horizon (a first-week
    # buyer is not extrapolated to 13x their basket).
    span = np.maximum(np.nan_to_num(tenure, nan=config.horizon_days), config.horizon_days)
    rate = spend / span * config.horizon_days
    return pd.DataFrame({"tenure_days": tenure, "recency_days": recency, "n_events": n_events,
                         "n_purchases": n_purch, "past_spend": spend, "past_rate_h": rate})


def assign_stages(histories: Sequences, as_of, value_pred: dict | None = None,
                  config: LifecycleConfig | None = None) -> pd.DataFrame:
    """One stage per user with a reason. ``value_pred`` is a model's ``predict_value`` output
    (``expected_value``, ``churn_prob`` per user) or None. Returns a DataFrame with ``user_id``,
    ``stage``, ``rule``, ``reason`` and the numbers the rules used.

    Unless ``config`` sets ``advocate_value_threshold``, the advocates' "top value" bar is a quantile
    over the users given, so a user's stage depends on who else is in the call: right for a whole
    population, wrong for a few users at a time. For those, pass
    ``LifecycleConfig.for_model(model, model_threshold=True)`` (the bar the model measured on its
    training population; also its horizon)."""
    config = config or LifecycleConfig()
    U = len(histories)
    as_of = unix_seconds(as_of, U)
    df = history_features(histories, as_of, config)
    uid = histories.user_ids if histories.user_ids is not None else np.arange(U)
    df.insert(0, "user_id", np.asarray(uid, dtype=object))
    if value_pred is not None:
        ev = np.asarray(value_pred["expected_value"], dtype=np.float64).reshape(-1)
        ch = np.asarray(value_pred["churn_prob"], dtype=np.float64).reshape(-1)
        if len(ev) != U or len(ch) != U:
            raise DataError(f"value prediction has {len(ev)} rows for {U} users")
        df["expected_value"], df["churn_prob"] = ev, ch
        value_for_rank = ev
    else:
        df["expected_value"], df["churn_prob"] = np.nan, np.nan
        value_for_rank = df["past_spend"].to_numpy()
    buyers = df["n_purchases"].to_numpy() >= 1
    if config.advocate_value_threshold is not None:
        adv_thr = float(config.advocate_value_threshold)
    elif buyers.any():
        vb = value_for_rank[buyers]
        vb = vb[np.isfinite(vb)]
        adv_thr = float(np.quantile(vb, config.advocate_value_quantile)) if len(vb) else np.inf
    else:
        adv_thr = np.inf
    h = config.horizon_days
    stages, rules, reasons = [], [], []
    for u, r in enumerate(df.itertuples(index=False)):
        v = value_for_rank[u]
        vname = "predicted value" if value_pred is not None else "past spend (no value model)"
        if r.n_events > 0 and np.isfinite(r.recency_days) and r.recency_days > h:
            d = 0 if round(r.recency_days) > round(h) else 1     # never "60 days > horizon 60"
            s, why = "lapsed", f"no activity for {r.recency_days:.{d}f} days > horizon {h:.{d}f}"
        elif r.n_purchases == 0:
            s, why = "new", f"no purchase yet ({r.n_events} events)"
        elif value_pred is not None and r.churn_prob > config.churn_threshold:
            s, why = "at-risk", f"churn probability {r.churn_prob:.2f} > {config.churn_threshold:.2f}"
        elif r.n_purchases == 1:
            s, why = "activated", f"exactly one purchase ({r.past_spend:.2f} spent, {_ago(r.recency_days)})"
        elif v >= adv_thr and np.isfinite(r.tenure_days) and r.tenure_days > config.advocate_min_tenure_days:
            s, why = "advocate", (f"{vname} {v:.2f} >= top-value threshold {adv_thr:.2f} and tenure "
                                  f"{r.tenure_days:.0f} > {config.advocate_min_tenure_days:.0f} days")
        elif value_pred is not None and r.expected_value > r.past_rate_h * config.expanding_factor:
            s, why = "expanding", (f"predicted value {r.expected_value:.2f} > past rate {r.past_rate_h:.2f} "
                                   f"x {config.expanding_factor:g}")
        else:
            s, why = "retained", f"{r.n_purchases} purchases, {_ago(r.recency_days)}"
        stages.append(s)
        rules.append(s)
        reasons.append(f"{s}: {why}")
    df.insert(1, "stage", stages)
    df.insert(2, "rule", rules)
    df.insert(3, "reason", reasons)
    df.attrs["advocate_value_threshold"] = adv_thr
    df.attrs["config"] = config.to_dict()
    return df


def _ago(recency_days: float) -> str:
    return f"last active {recency_days:.0f} days ago" if np.isfinite(recency_days) else "active (no times)"


def stage_sizes(stages: pd.DataFrame) -> pd.DataFrame:
    """Users per stage (every stage listed, in ``STAGES`` order) and their share."""
    counts = stages["stage"].value_counts().reindex(STAGES, fill_value=0)
    out = pd.DataFrame({"stage": STAGES, "users": counts.to_numpy(dtype=np.int64)})
    out["share"] = out["users"] / max(int(out["users"].sum()), 1)
    return out


def truncate(histories: Sequences, as_of) -> Sequences:
    """Each history cut to its events strictly before ``as_of`` (histories must carry times)."""
    if histories.times is None:
        raise DataError("lifecycle transitions need event times; these histories have none")
    as_of = unix_seconds(as_of, len(histories))
    # Histories are time-ordered, so "before as_of" is a prefix.
    lens = [int(np.searchsorted(t.astype(np.float64), a, side="left")) for t, a in zip(histories.times, as_of)]
    return histories.prefix(lens)


ValueFn = Callable[[Sequences, np.ndarray], dict]


def predict_value_safe(value_model, histories: Sequences, as_of, fill: float = np.nan) -> dict:
    """``value_model.predict_value`` for the users with a purchase before their as-of; the others
    (value models may refuse them) get ``fill``. Purchases are events of type ``purchase`` (every
    event when there are no types)."""
    U = len(histories)
    as_of = unix_seconds(as_of, U)
    code = event_type_code("purchase")
    has = np.zeros(U, dtype=bool)
    for u in range(U):
        n = len(histories.items[u])
        m = np.ones(n, dtype=bool)
        if histories.times is not None:
            m &= histories.times[u].astype(np.float64) < as_of[u]
        if histories.event_types is not None:
            m &= histories.event_types[u] == code
        has[u] = bool(m.any())
    keys = ("expected_value", "p_buy", "churn_prob", "lower", "upper")
    out = {k: np.full(U, fill, dtype=np.float64) for k in keys}
    idx = np.flatnonzero(has)
    if len(idx):
        pred = value_model.predict_value(histories.subset(idx), as_of[idx])
        for k in keys:
            if k in pred:
                out[k][idx] = np.asarray(pred[k], dtype=np.float64).reshape(-1)
    return out


def stages_at(histories: Sequences, as_of, value_fn: ValueFn | None = None,
              config: LifecycleConfig | None = None) -> pd.DataFrame:
    """Stages as they were at ``as_of`` (unix seconds or a time, as ``unix_seconds`` takes): histories
    cut there, value predicted there."""
    at = unix_seconds(as_of, len(histories), "stages_at: as_of")
    h = truncate(histories, at)
    pred = value_fn(h, at) if value_fn is not None else None
    return assign_stages(h, at, pred, config)


def transition_matrix(histories: Sequences, date_a: float, date_b: float, value_fn: ValueFn | None = None,
                      config: LifecycleConfig | None = None) -> pd.DataFrame:
    """Counts of users moving from stage at ``date_a`` (rows) to stage at ``date_b`` (columns),
    over all users in ``histories``; every stage appears in both axes, and the first row,
    ``NOT_YET``, counts the users with no event before ``date_a`` (they were no user yet; "new" is a
    user with events but no purchase). The dates: unix seconds or times, as ``unix_seconds`` takes."""
    date_a = float(unix_seconds(date_a, 1, "transition_matrix: first date")[0])
    date_b = float(unix_seconds(date_b, 1, "transition_matrix: second date")[0])
    if not date_a < date_b:
        when = (lambda t: pd.Timestamp(float(t), unit="s"))
        raise DataError(f"transition matrix: the first date {when(date_a)} must be before the second {when(date_b)} "
                        "(lifecycle: --since before --at)")
    a = stages_at(histories, date_a, value_fn, config)["stage"].to_numpy().astype(object)
    b = stages_at(histories, date_b, value_fn, config)["stage"].to_numpy()
    if histories.times is not None:
        absent = np.array([not (np.asarray(t) < date_a).any() for t in histories.times])
        a[absent] = NOT_YET
    rows = [NOT_YET] + list(STAGES)
    m = pd.crosstab(pd.Categorical(a, categories=rows), pd.Categorical(b, categories=STAGES), dropna=False)
    m.index.name, m.columns.name = "from", "to"
    return m.reindex(index=rows, columns=STAGES, fill_value=0).astype(np.int64)
