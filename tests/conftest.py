import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VALUEREC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA} (set VALUEREC_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def cli_setup(tmp_path):
    """A tiny store (u1 buys often; u2 bought once long ago; u3 only viewed) and a saved popularity
    model: what the lifecycle and explain command tests run on."""
    import pandas as pd

    from valuerec.data.dataset import catalogue_from, sequences_from
    from valuerec.data.store import EventStore
    from valuerec.models.popularity import Popularity

    rows = []
    t = pd.Timestamp("2011-01-01")
    # u1: many purchases up to the end; u2: one purchase long ago (lapsed); u3: views only (new)
    for d in range(0, 200, 20):
        rows.append(("u1", f"i{d % 3}", t + pd.Timedelta(days=d), "purchase", 10.0 + d))
    rows.append(("u2", "i1", t + pd.Timedelta(days=5), "purchase", 5.0))
    rows.append(("u3", "i2", t + pd.Timedelta(days=190), "view", 0.0))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    ev["quantity"] = 1.0
    items = pd.DataFrame({"item_id": ["i0", "i1", "i2"], "text": ["red mug", "blue mug", "green cup"],
                          "attributes": [None] * 3, "price": [1.0, 2.0, 3.0]})
    store = tmp_path / "s.duckdb"
    with EventStore(store) as st:
        st.add_events(ev, items)
        events = st.events()
    cat = catalogue_from(events, items)
    Popularity().fit(sequences_from(events, cat), cat).save(tmp_path / "pop")
    return tmp_path, store


@pytest.fixture
def cli_setup_grown(cli_setup):
    """``cli_setup`` after the popularity model was saved: u1 and u2 bought again (new events to retrain on)."""
    import pandas as pd

    from valuerec.data.store import EventStore

    tmp, store = cli_setup
    t = pd.Timestamp("2011-01-01")
    ev = pd.DataFrame([("u1", "i2", t + pd.Timedelta(days=205), "purchase", 12.0),
                       ("u2", "i0", t + pd.Timedelta(days=207), "purchase", 6.0),
                       ("u1", "i1", t + pd.Timedelta(days=210), "purchase", 8.0)],
                      columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    ev["quantity"] = 1.0
    with EventStore(store) as st:
        st.add_events(ev)
    return tmp, store
