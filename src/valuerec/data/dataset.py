"""Per-user, time-ordered sequences and the item catalogue, built from the event store.

Models never see raw ids: items are indices ``0..n_items-1`` into a ``Catalogue``; users are rows of
a ``Sequences`` batch. Every model takes and returns these, so all of them plug into one evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from valuerec.data.schema import EVENT_TYPE_CODE, DataError


@dataclass
class Sequences:
    """A batch of user histories. ``items[u]`` are item indices in time order; the optional arrays
    run parallel to it. Item index -1 marks an event with no item (value-only data)."""

    items: list[np.ndarray]
    times: list[np.ndarray] | None = None        # unix seconds, int64
    event_types: list[np.ndarray] | None = None  # codes from schema.EVENT_TYPES
    values: list[np.ndarray] | None = None       # revenue per event
    user_ids: np.ndarray | None = None           # raw user ids, for reporting

    def __post_init__(self) -> None:
        # plain lists (a user's own batch) become the arrays every model indexes with
        def arrays(xs, dtype):
            if xs is None or all(isinstance(x, np.ndarray) for x in xs):
                return xs
            return [x if isinstance(x, np.ndarray) else np.asarray(x, dtype=dtype) for x in xs]
        self.items = arrays(self.items, np.int64)
        self.times = arrays(self.times, np.int64)
        self.event_types = arrays(self.event_types, np.int64)
        self.values = arrays(self.values, np.float32)
        if self.user_ids is not None and not isinstance(self.user_ids, np.ndarray):
            self.user_ids = np.asarray(list(self.user_ids), dtype=object)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx) -> "Sequences":
        """The histories at positions ``idx`` (integers, or a boolean mask over all of them)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if len(idx) != len(self):
                raise ValueError(f"subset: a boolean mask of {len(idx)} for {len(self)} histories")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)     # np.asarray([]) is float
        pick = (lambda xs: None if xs is None else [xs[i] for i in idx])
        return Sequences(items=pick(self.items), times=pick(self.times), event_types=pick(self.event_types),
                         values=pick(self.values),
                         user_ids=None if self.user_ids is None else self.user_ids[idx])

    def prefix(self, lengths) -> "Sequences":
        """Each history cut to its first ``lengths[u]`` events."""
        cut = (lambda xs: None if xs is None else [x[:n] for x, n in zip(xs, lengths)])
        return Sequences(items=cut(self.items), times=cut(self.times), event_types=cut(self.event_types),
                         values=cut(self.values), user_ids=self.user_ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.items], dtype=np.int64)

    def item_only(self) -> "Sequences":
        """Drop events without an item (the recommender view of a history)."""
        masks = [x >= 0 for x in self.items]
        sel = (lambda xs: None if xs is None else [x[m] for x, m in zip(xs, masks)])
        return Sequences(items=sel(self.items), times=sel(self.times), event_types=sel(self.event_types),
                         values=sel(self.values), user_ids=self.user_ids)

    @staticmethod
    def concat(a: "Sequences", b: "Sequences") -> "Sequences":
        """Per user, a's events followed by b's."""
        cat = (lambda x, y: None if x is None or y is None else [np.concatenate([p, q]) for p, q in zip(x, y)])
        return Sequences(items=cat(a.items, b.items), times=cat(a.times, b.times),
                         event_types=cat(a.event_types, b.event_types), values=cat(a.values, b.values),
                         user_ids=a.user_ids)


@dataclass
class Catalogue:
    """The item table, indexed ``0..n-1``."""

    item_ids: np.ndarray                        # raw ids (str), position = index
    text: list[str | None] | None = None
    attributes: list[list[str] | None] | None = None
    price: np.ndarray | None = None             # float, NaN where unknown
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids, dtype=object)
        if not self.index:
            self.index = {str(i): n for n, i in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)

    def lookup(self, ids, unknown: str = "raise") -> np.ndarray:
        out = np.empty(len(ids), dtype=np.int64)
        for n, i in enumerate(ids):
            j = self.index.get(str(i))
            if j is None:
                if unknown == "raise":
                    raise DataError(f"unknown item id {i!r}")
                j = -1
            out[n] = j
        return out

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame({"item_id": self.item_ids.astype(str)})
        df["text"] = self.text if self.text is not None else None
        df["attributes"] = ([json.dumps(a) if a is not None else None for a in self.attributes]
                            if self.attributes is not None else None)
        df["price"] = self.price if self.price is not None else np.nan
        df.to_parquet(path / "items.parquet", index=False)

    @classmethod
    def load(cls, path: str | Path) -> "Catalogue":
        df = pd.read_parquet(Path(path) / "items.parquet")
        attrs = [json.loads(a) if isinstance(a, str) else None for a in df["attributes"]]
        text = [t if isinstance(t, str) else None for t in df["text"]]
        return cls(item_ids=df["item_id"].to_numpy(dtype=object),
                   text=text if any(t is not None for t in text) else None,
                   attributes=attrs if any(a is not None for a in attrs) else None,
                   price=df["price"].to_numpy(dtype=float))

    def subset_known(self, item_ids) -> "Catalogue":
        keep = [self.index[i] for i in item_ids]
        return Catalogue(item_ids=self.item_ids[keep],
                         text=None if self.text is None else [self.text[i] for i in keep],
                         attributes=None if self.attributes is None else [self.attributes[i] for i in keep],
                         price=None if self.price is None else self.price[keep])


def catalogue_from(events: pd.DataFrame, items: pd.DataFrame | None, restrict_to_events: bool = True) -> Catalogue:
    """Items are those with events (sorted for a stable index), joined with the item table."""
    ids = pd.unique(events["item_id"].dropna().astype(str))
    if not restrict_to_events and items is not None and len(items):
        ids = pd.unique(np.concatenate([ids, items["item_id"].astype(str).to_numpy()]))
    ids = np.array(sorted(ids, key=_natural_key), dtype=object)
    cat = Catalogue(item_ids=ids)
    if items is not None and len(items):
        it = items.set_index(items["item_id"].astype(str))
        it = it[~it.index.duplicated()].reindex(ids)
        text = [t if isinstance(t, str) else None for t in it["text"]] if "text" in it else None
        attrs = [a if isinstance(a, list) else None for a in it["attributes"]] if "attributes" in it else None
        cat.text = text if text and any(t is not None for t in text) else None
        cat.attributes = attrs if attrs and any(a is not None for a in attrs) else None
        if "price" in it:
            cat.price = pd.to_numeric(it["price"], errors="coerce").to_numpy(dtype=float)
    return cat


def _natural_key(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def _sorted_by(df: pd.DataFrame, keys: list[str]) -> bool:
    """Whether ``df`` is already in ``keys`` order (lexicographic, as ``sort_values`` would put it)."""
    if len(df) < 2:
        return True
    cols = [df[k].to_numpy() for k in keys]
    try:
        # row i <= row i + 1 lexicographically: decided by the first key that differs
        undecided = np.ones(len(df) - 1, dtype=bool)
        for c in cols:
            a, b = c[:-1], c[1:]
            if (undecided & (a > b)).any():
                return False
            undecided &= a == b
        return True
    except TypeError:          # mixed types (e.g. None among strings): let sort_values decide
        return False


def unix_seconds(as_of, n: int, name: str = "as_of") -> np.ndarray:
    """``as_of`` for ``n`` histories as float64 unix seconds, one per history: a number of unix seconds,
    a ``pd.Timestamp`` / ``datetime`` / ``np.datetime64`` (timezone-aware ones converted to UTC, naive
    ones taken as UTC), an ISO 8601 string, or an array / list / Series of them (length 1 or ``n``).
    A DataError names ``name`` for anything else, a wrong length, a non-finite value or milliseconds."""
    def fail(why: str):
        raise DataError(f"{name}: {why}; expected unix seconds, a timestamp or an ISO 8601 string, one or "
                        f"one per history ({n})")
    if isinstance(as_of, (pd.Series, pd.Index)):
        as_of = as_of.to_numpy()
    a = np.asarray(as_of)
    if a.ndim > 1:
        fail(f"an array of shape {a.shape}")
    if a.dtype.kind in "iuf":
        out = a.astype(np.float64)
    elif a.dtype.kind == "b":
        fail("booleans")
    else:
        try:
            ts = pd.to_datetime(pd.Series(np.atleast_1d(a)), utc=True, format="ISO8601") if a.dtype.kind in "OUS" \
                else pd.to_datetime(pd.Series(np.atleast_1d(a)), utc=True)
        except (ValueError, TypeError) as e:
            fail(f"{np.atleast_1d(a)[:3].tolist()!r} is not a time")
        if ts.isna().any():
            fail("an empty time (NaT / None)")
        out = (ts.dt.tz_localize(None).to_numpy().astype("datetime64[s]").astype(np.int64)).astype(np.float64)
        if a.ndim == 0:
            out = out[0]
    out = np.atleast_1d(out)
    if len(out) not in (1, n):
        fail(f"{len(out)} values for {n} histories")
    bad = np.flatnonzero(~np.isfinite(out) | (np.abs(out) >= 1e11))
    if len(bad):
        v = out[bad[0]]
        fail(f"value {bad[0]} = {float(v)!r}" + (" looks like milliseconds (divide by 1000)" if np.isfinite(v)
                                                 else " is not finite"))
    return np.broadcast_to(out, (n,)).copy()


def sequences_from(events: pd.DataFrame, catalogue: Catalogue, users: np.ndarray | None = None,
                   unknown_items: str = "drop") -> Sequences:
    """Group events (schema columns, any order) into per-user time-ordered sequences.

    ``users`` fixes the output order (users without events get empty histories); by default, every
    user with an event, sorted. User ids are matched as text (``5`` and ``"5"`` are one user). Items
    not in the catalogue are dropped (or kept as -1 with ``unknown_items='keep'``, for value-only use).
    ``user_id`` and ``timestamp`` (datetimes, timezone-aware ones converted to UTC, or ISO 8601
    strings) are required; without ``item_id`` every event is value-only, without ``event_type``
    events get the store's default type, without ``value`` a value of 0.
    """
    missing = [c for c in ("user_id", "timestamp") if c not in events.columns]
    if missing:
        raise DataError(f"events are missing column(s) {missing}; required: user_id, timestamp")
    ev = _with_defaults(events)
    # users in the text order their ids are matched in (numbers sorted as numbers would cut one user's
    # events into another's slice)
    ev["user_id"] = ev["user_id"].astype(str)
    keys = ["user_id", "timestamp", "seq"] if "seq" in ev.columns else ["user_id", "timestamp"]
    if not _sorted_by(ev, keys):      # the store already returns them in this order: no copy then
        ev = ev.sort_values(keys, kind="stable")
    # vectorised id -> index lookups (a Python call per event took most of the time on large logs)
    present = ev["item_id"].notna().to_numpy()
    item_idx = np.full(len(ev), -1, dtype=np.int64)
    if present.any():
        ids = pd.Index(np.asarray(catalogue.item_ids, dtype=object).astype(str))
        item_idx[present] = ids.get_indexer(ev["item_id"].to_numpy()[present].astype(str))
    keep = item_idx >= 0 if unknown_items == "drop" else np.ones(len(ev), dtype=bool)
    if not keep.all():
        ev = ev[keep]
        item_idx = item_idx[keep]
    uid = ev["user_id"].to_numpy()
    times = ev["timestamp"].astype("datetime64[s]").astype("int64").to_numpy()
    codes = pd.Series(ev["event_type"].to_numpy(), dtype=object).map(EVENT_TYPE_CODE)
    etypes = codes.fillna(EVENT_TYPE_CODE["other"]).to_numpy(dtype=np.int64)
    values = ev["value"].to_numpy(dtype=np.float32)
    if users is None:
        users = np.array(sorted(pd.unique(uid)), dtype=object)
    # Split the user-sorted arrays into per-user slices.
    order_users, starts = np.unique(uid, return_index=True)
    ends = np.append(starts[1:], len(uid))
    where = {u: (s, e) for u, s, e in zip(order_users, starts, ends)}
    items_l, times_l, types_l, values_l = [], [], [], []
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for u in users:
        s, e = where.get(str(u), (0, 0))
        items_l.append(item_idx[s:e] if e > s else empty_i)
        times_l.append(times[s:e] if e > s else empty_i)
        types_l.append(etypes[s:e] if e > s else empty_i)
        values_l.append(values[s:e] if e > s else empty_f)
    return Sequences(items=items_l, times=times_l, event_types=types_l, values=values_l,
                     user_ids=np.array([str(u) for u in users], dtype=object))


def _with_defaults(events: pd.DataFrame) -> pd.DataFrame:
    """A shallow copy of ``events`` with naive-UTC datetime timestamps and the optional columns filled;
    numbers as timestamps are refused (unix seconds would be read as nanoseconds)."""
    from valuerec.data.schema import DEFAULT_EVENT_TYPE
    ev = events.copy(deep=False)
    t = ev["timestamp"]
    if pd.api.types.is_numeric_dtype(t) or pd.api.types.is_timedelta64_dtype(t):
        raise DataError(f"column 'timestamp' holds {t.dtype} numbers, not dates; convert them first, e.g. "
                        "pd.to_datetime(x, unit='s') for unix seconds")
    if not pd.api.types.is_datetime64_any_dtype(t):
        try:
            t = pd.to_datetime(t, utc=True, format="ISO8601")
        except (ValueError, TypeError) as e:
            raise DataError(f"column 'timestamp': not datetimes or ISO 8601 strings ({e})") from None
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    if t.isna().any():
        raise DataError(f"column 'timestamp': {int(t.isna().sum())} empty time(s), first at row "
                        f"{t.index[t.isna().to_numpy()][0]!r}")
    ev["timestamp"] = t
    if "item_id" not in ev.columns:
        ev["item_id"] = None
    if "event_type" not in ev.columns:
        ev["event_type"] = DEFAULT_EVENT_TYPE
    if "value" not in ev.columns:
        ev["value"] = 0.0
    return ev


def catalogue_overlap_note(catalogue, item_ids) -> str | None:
    """A note when a store's item events share no item with the model's catalogue (a store of other
    data, or a model trained elsewhere): the model then sees histories of unknown items only."""
    if catalogue is None:
        return None
    ids = {str(i) for i in item_ids if i is not None and i == i}
    if not ids or any(i in catalogue.index for i in ids):
        return None
    return (f"none of the store's {len(ids):,} items is in the model's catalogue of {len(catalogue):,}: is this "
            "the store the model was trained on? Predictions use the histories' times and values only")
