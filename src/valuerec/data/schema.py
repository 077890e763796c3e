"""The event schema every adapter normalises to, and the item table."""

from __future__ import annotations

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "timestamp", "event_type", "value", "quantity"]
REQUIRED_EVENT_COLUMNS = ["user_id", "timestamp"]
ITEM_COLUMNS = ["item_id", "text", "attributes", "price"]

# Known event types get stable integer codes (the transformer embeds them); any other string maps to
# "other" at model time but is stored verbatim.
EVENT_TYPES = ["interaction", "view", "cart", "purchase", "return", "rating", "other"]
EVENT_TYPE_CODE = {name: i for i, name in enumerate(EVENT_TYPES)}
DEFAULT_EVENT_TYPE = "interaction"


def event_type_code(name: str) -> int:
    return EVENT_TYPE_CODE.get(name, EVENT_TYPE_CODE["other"])


class DataError(ValueError):
    """Bad input. The message names the file, line, field and reason."""

    def __init__(self, message: str, problems: list[str] | None = None, n_problems: int | None = None):
        self.problems = problems or []
        self.n_problems = n_problems if n_problems is not None else len(self.problems)
        lines = [message]
        shown = self.problems[:20]
        lines += [f"  - {p}" for p in shown]
        if self.n_problems > len(shown):
            lines.append(f"  ... and {self.n_problems - len(shown)} more problem(s)")
        super().__init__("\n".join(lines))


# Values, quantities and prices are computed in float32 by the models: anything larger would become inf / NaN.
MAX_NUMBER = 3.4028234663852886e38      # float(np.finfo(np.float32).max)
MONETARY_TYPES = ("purchase", "return")   # event types whose value is an amount that must be given


# A time before this date is almost always a wrong year or unit (file ingest and the HTTP service alike).
EARLIEST_DATE = "1900-01-01"
