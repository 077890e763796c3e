"""Validate events given as records (e.g. a JSON batch from the HTTP service) with the same rules and
messages as file ingest (``valuerec.data.ingest.read_events``).

Returns a frame in the event schema, ready for ``EventStore.add_events``; raises ``DataError`` naming
the record, field and reason, and nothing is written when any record is bad.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from valuerec.data.schema import DEFAULT_EVENT_TYPE, EARLIEST_DATE, MAX_NUMBER, MONETARY_TYPES, DataError

# Timestamps outside this range are almost always mistakes (a wrong year, year 20111), as in file ingest;
# the service also refuses times more than $VALUEREC_MAX_FUTURE_H past its clock.
MIN_TIME = pd.Timestamp(EARLIEST_DATE)
MAX_TIME = pd.Timestamp("2100-01-01")
# Unix seconds at or above this are years past 5138: milliseconds (or microseconds) given as seconds.
MAX_UNIX_SECONDS = 1e11


def _one_timestamp(v) -> pd.Timestamp | None:
    """ISO 8601 string (naive = UTC; an offset is converted to UTC), or a number of unix seconds."""
    try:
        if isinstance(v, bool) or v is None:
            return None
        if isinstance(v, (int, float, np.integer, np.floating)):
            if not np.isfinite(v) or abs(v) >= MAX_UNIX_SECONDS:
                return None
            return pd.Timestamp(float(v), unit="s")
        s = str(v).strip()
        if not s[:1].isdigit():      # ISO 8601 starts with the year: not "now", "today", "nan" or ""
            return None
        t = pd.Timestamp(s)
        if t is pd.NaT:
            return None
        if t.tzinfo is not None:
            t = t.tz_convert("UTC").tz_localize(None)
        return t
    except (ValueError, TypeError, OverflowError):
        return None


def _number(v, default: float) -> tuple[float | None, str | None]:
    """(number, problem) with the ingest rules: numeric, not NaN, not infinite, not negative."""
    if v is None:
        return default, None
    if isinstance(v, bool):
        return None, "not a number (NaN or empty)"
    try:
        x = float(str(v).strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        return None, "not a number (NaN or empty)"
    if x != x:
        return None, "not a number (NaN or empty)"
    if x in (float("inf"), float("-inf")):
        return None, "infinite"
    if x < 0:
        return None, "negative; record returns as event_type 'return' with a positive value"
    if x > MAX_NUMBER:
        return None, f"too large (above {MAX_NUMBER:.3g}, the largest number the models compute with)"
    return x, None


def _text(v) -> str | None:
    if v is None or (isinstance(v, float) and v != v):
        return None
    s = str(v).strip()
    return s or None


class EventRow(NamedTuple):
    """One validated event: the event schema as plain Python values (``timestamp`` naive UTC)."""

    event_id: str | None
    user_id: str
    item_id: str | None
    timestamp: pd.Timestamp
    event_type: str
    value: float
    quantity: float


def validate_event_rows(records: list[dict], source: str = "events",
                        default_event_type: str = DEFAULT_EVENT_TYPE) -> list[EventRow]:
    """Records with schema fields (user_id, timestamp required; item_id, event_type, value,
    quantity, event_id optional) -> validated rows.

    Plain Python per record (a request batch is small, and pandas' per-call overhead would dominate),
    with the rules and messages of file ingest."""
    if not records:
        raise DataError(f"{source}: no events")
    problems: list[str] = []
    count = 0

    def bad(n: int, fld: str, reason: str, got) -> None:
        nonlocal count
        count += 1
        if len(problems) < 20:
            problems.append(f"{source}[{n}].{fld}: {reason} (got {got!r})")

    rows: list[EventRow] = []
    for n, r in enumerate(records):
        user = _text(r.get("user_id"))
        if user is None:
            bad(n, "user_id", "empty user id", r.get("user_id"))
        raw_ts = r.get("timestamp")
        ts = _one_timestamp(raw_ts)
        if ts is None:
            big = (isinstance(raw_ts, (int, float, np.integer, np.floating)) and not isinstance(raw_ts, bool)
                   and np.isfinite(raw_ts) and abs(raw_ts) >= MAX_UNIX_SECONDS)
            bad(n, "timestamp", "a number this large is milliseconds (or finer), not unix seconds; divide by 1000"
                if big else "unparseable date, expected ISO 8601 (e.g. 2011-09-09T08:26:00) or unix seconds", raw_ts)
        elif not (MIN_TIME <= ts < MAX_TIME):
            bad(n, "timestamp", f"outside {MIN_TIME.year}..{MAX_TIME.year} (a wrong year or unit?)", raw_ts)
        nums = {}
        et = _text(r.get("event_type"))
        etype = et.lower() if et else default_event_type
        for fld, default in (("value", 0.0), ("quantity", 1.0)):
            v = r.get(fld)
            if etype not in MONETARY_TYPES and (
                    (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and v != v)):
                v = None     # as in file ingest: a view's empty value is 0 and quantity 1; a purchase needs them
            if fld == "value" and v is None and etype in MONETARY_TYPES:
                bad(n, fld, f"a {etype} needs its amount; give 'value'", v)
                continue
            x, why = _number(v, default)
            if why:
                bad(n, fld, why, r.get(fld))
            nums[fld] = x
        if count:
            continue
        # Microsecond resolution, like the store's TIMESTAMP column.
        rows.append(EventRow(_text(r.get("event_id")), user, _text(r.get("item_id")), ts.floor("us"),
                             etype, nums["value"], nums["quantity"]))
    if count:
        raise DataError(f"{source}: {count} problem(s); nothing was written", problems, count)
    return rows


def rows_frame(rows: list[EventRow]) -> pd.DataFrame:
    """Validated rows -> an event frame (schema columns), ready for ``EventStore.add_events``."""
    obj = (lambda xs: pd.Series(np.array(xs, dtype=object), dtype=object, copy=False))
    return pd.DataFrame({
        "event_id": obj([r.event_id for r in rows]), "user_id": obj([r.user_id for r in rows]),
        "item_id": obj([r.item_id for r in rows]),
        "timestamp": np.array([r.timestamp.value // 1000 for r in rows], dtype="datetime64[us]"),
        "event_type": obj([r.event_type for r in rows]),
        "value": np.array([r.value for r in rows], dtype=np.float64),
        "quantity": np.array([r.quantity for r in rows], dtype=np.float64)}, copy=False)


def validate_event_records(records: list[dict], source: str = "events",
                           default_event_type: str = DEFAULT_EVENT_TYPE) -> pd.DataFrame:
    """Records -> a validated event frame (see ``validate_event_rows`` for the rules)."""
    return rows_frame(validate_event_rows(records, source, default_event_type))
