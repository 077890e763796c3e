"""EventStore.add_events as a library call: the rows are checked with the rules of file ingest, a bad
frame is one DataError naming column and row, and nothing is written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from valuerec.data.schema import DataError
from valuerec.data.store import EventStore

T = pd.Timestamp("2011-01-01 10:00")


def frame(n=3, **cols) -> pd.DataFrame:
    df = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "item_id": [f"i{i}" for i in range(n)],
                       "timestamp": [T + pd.Timedelta(hours=i) for i in range(n)],
                       "event_type": ["purchase"] * n, "value": [5.0] * n, "quantity": [1.0] * n})
    for c, v in cols.items():
        df[c] = pd.Series(v, dtype=object) if isinstance(v, list) else v
    return df


@pytest.fixture
def store(tmp_path):
    with EventStore(tmp_path / "s.duckdb") as st:
        st.add_events(frame(2))
        yield st


def refused(store, events, match, items=None):
    before = store.events()
    with pytest.raises(DataError, match=match) as e:
        store.add_events(events, items)
    pd.testing.assert_frame_equal(store.events(), before)       # nothing written, nothing lost
    return str(e.value)


@pytest.mark.parametrize("col, bad, match", [
    ("value", [5.0, -50.0, 1.0], r"events, row 1, field 'value': negative"),
    ("value", [5.0, np.inf, 1.0], r"events, row 1, field 'value': infinite"),
    ("value", [5.0, 1e39, 1.0], r"events, row 1, field 'value': too large \(above 3.4e\+38"),
    ("quantity", [1.0, 1e300, 1.0], r"events, row 1, field 'quantity': too large"),
    ("value", [5.0, np.nan, 1.0], r"events, row 1, field 'value': not a number"),
    ("value", [5.0, "abc", 1.0], r"events, row 1, field 'value': not a number \(NaN or empty\) \(got 'abc'\)"),
    ("quantity", [1.0, 1.0, -1.0], r"events, row 2, field 'quantity': negative"),
    ("user_id", ["u0", None, "u2"], r"events, row 1, field 'user_id': empty user id"),
    ("user_id", [17293.0, 1.0, 2.0], r"events, row 0, field 'user_id': a whole-number float is stored as text with '.0' .*\(got 17293.0\)"),
    ("user_id", ["u0", 17293.0, "u2"], r"events, row 1, field 'user_id': a whole-number float"),
    ("timestamp", [T, pd.NaT, T], r"events, row 1, field 'timestamp': unparseable date"),
    ("timestamp", [T, "notadate", T], r"events, row 1, field 'timestamp': unparseable date, expected a datetime or an ISO"),
    ("timestamp", [T, pd.Timestamp("2300-01-01"), T], r"events, row 1, field 'timestamp': .* is in the future"),
])
def test_bad_rows_are_one_error_naming_column_and_row(store, col, bad, match):
    msg = refused(store, frame(**{col: bad}), match)
    assert msg.split("\n")[0].endswith("problem(s); nothing was written")


def test_numeric_timestamps_are_refused_with_a_hint(store):
    ev = frame(timestamp=np.array([1.3e9, 1.3e9 + 60, 1.3e9 + 120]))
    refused(store, ev, r"column 'timestamp' holds float64 numbers, not dates; .*pd.to_datetime\(x, unit='s'\)")
    ev = frame(timestamp=np.array([1300000000, 1300000060, 1300000120]))
    refused(store, ev, r"holds int64 numbers")
    assert store.time_range()[0] == T                   # the store's start did not move to 1970


def test_problems_are_listed_up_to_20_then_counted(store):
    ev = frame(30, value=[-1.0] * 30)
    ev.index = ev.index + 100
    msg = refused(store, ev, r"events: 30 problem\(s\)")
    assert "events, row 100, field 'value'" in msg and "row 119" in msg and "row 120" not in msg
    assert "... and 10 more problem(s)" in msg


def test_types_and_times_are_normalised_as_ingest_does(store):
    ev = frame(user_id=["a", "b", "c"], event_type=["PURCHASE ", " View", None],
               timestamp=pd.Series(pd.date_range("2011-01-01 12:00", periods=3, freq="h", tz="Europe/Paris")))
    store.add_events(ev)
    got = store.events("user_id IN ('a', 'b', 'c')")
    assert list(got["event_type"]) == ["purchase", "view", "interaction"]
    assert list(got["timestamp"]) == list(pd.date_range("2011-01-01 11:00", periods=3, freq="h"))   # naive UTC
    again = frame(1, user_id=["a"], timestamp=["2011-01-01T12:00:00+01:00"], event_type=["purchase"])
    assert store.add_events(again).duplicates == 1       # the same event, given as an ISO string with an offset


def test_integer_ids_and_missing_event_ids_still_work(store):
    ev = frame(2, user_id=pd.Series([17293, 17294]), item_id=pd.Series([1, 2]))
    assert store.add_events(ev).added == 2
    assert {"17293", "17294"} <= set(store.events()["user_id"])


def test_items_without_item_id_are_refused(store):
    refused(store, frame(1), r"items: missing column 'item_id'", items=pd.DataFrame({"text": ["a mug"]}))
    refused(store, frame(1), r"items: 1 row\(s\) with an empty item_id \(rows \[1\]\)",
            items=pd.DataFrame({"item_id": ["i0", None], "text": ["a", "b"]}))
    with pytest.raises(DataError, match="missing column 'item_id'"):
        store.add_items(pd.DataFrame({"text": ["a mug"]}))
    assert len(store.items()) == 0


def test_a_write_that_runs_out_of_memory_is_a_clear_error_and_writes_nothing(tmp_path):
    import numpy as np

    n = 200_000
    ev = pd.DataFrame({"user_id": [f"u{i % 1000}" for i in range(n)], "item_id": [f"i{i % 500}" for i in range(n)],
                       "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), unit="s"),
                       "event_type": "view", "value": 1.0, "quantity": 1.0})
    with EventStore(tmp_path / "s.duckdb") as st:
        st.add_events(ev.head(3))
        st.con.execute("SET memory_limit='8MB'")
        with pytest.raises(DataError, match=r"big.csv: the store ran out of memory writing 200,000 events in one "
                                            r"transaction \(Out of Memory Error.*\); nothing was written. Split the file"):
            st.add_events(ev, source="big.csv")
        st.con.execute("SET memory_limit='1GB'")
        assert st.count_events() == 3
        st.add_events(ev.head(10))            # the store still works: the failed write left nothing open
        assert st.count_events() == 10


def test_rollback_after_a_commit_that_already_ended_the_transaction(tmp_path):
    with EventStore(tmp_path / "s.duckdb") as st:
        st.con.execute("BEGIN TRANSACTION")
        st.con.execute("COMMIT")
        st._rollback()                        # no transaction: nothing to do, and no second error


def test_a_duckdb_file_that_is_not_an_event_store_is_refused_untouched(tmp_path):
    import duckdb

    from valuerec.data.schema import DataError
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    con = duckdb.connect(str(tmp_path / "sales.duckdb"))
    con.execute("CREATE TABLE sales (x INTEGER)")
    con.close()
    with pytest.raises(DataError, match=r"empty.duckdb: a DuckDB database but not a valuerec event store \(it holds"):
        EventStore(tmp_path / "empty.duckdb", read_only=True)
    with pytest.raises(DataError, match=r"its tables are \['sales'\]"):
        EventStore(tmp_path / "sales.duckdb")                     # not even for writing: nothing added
    con = duckdb.connect(str(tmp_path / "sales.duckdb"), read_only=True)
    assert [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == ["sales"]
    con.close()
    with EventStore(tmp_path / "empty.duckdb") as st:            # an empty database may become a store
        assert st.count_events() == 0


def test_add_events_needs_only_user_and_time_as_file_ingest(store):
    """Only user_id and timestamp are required, as the schema says: the other columns get ingest's
    defaults (was 'missing column(s) [event_type, value, quantity]')."""
    df = frame(2)[["user_id", "item_id", "timestamp"]]
    df["user_id"] = ["plain-a", "plain-b"]
    store.add_events(df)
    got = store.user_events("plain-a")
    assert len(got) == 1 and got["event_type"].iloc[0] == "interaction" and got["value"].iloc[0] == 0.0
    with pytest.raises(DataError, match=r"missing column\(s\) \['timestamp'\]"):
        store.add_events(df.drop(columns="timestamp"))


def test_sequences_from_a_pandas_frame_as_a_user_would_build_it():
    """Numeric user ids keep each user's own events (the slices were cut in text order over a frame
    sorted by number, so user 2 got user 10's events); timezone-aware times are UTC; unix-second
    numbers are refused rather than read as nanoseconds; event_type and value may be left out."""
    from valuerec.data.dataset import Catalogue, sequences_from

    cat = Catalogue(item_ids=np.array(list("abcde"), dtype=object))
    ev = pd.DataFrame({"user_id": [2, 2, 10, 10, 10], "item_id": list("abcde"),
                       "timestamp": pd.date_range("2024-01-01", periods=5, freq="D")})
    h = sequences_from(ev, cat)
    assert list(h.user_ids) == ["10", "2"]
    assert [list(x) for x in h.items] == [[2, 3, 4], [0, 1]]
    two = sequences_from(ev, cat, users=np.array([2, 10], dtype=object))
    assert [list(x) for x in two.items] == [[0, 1], [2, 3, 4]] and list(two.user_ids) == ["2", "10"]
    tz = ev.assign(timestamp=ev["timestamp"].dt.tz_localize("Europe/Berlin"))
    assert sequences_from(tz, cat).times[1][0] == int(pd.Timestamp("2023-12-31 23:00").timestamp())
    with pytest.raises(DataError, match="unit='s'"):
        sequences_from(ev.assign(timestamp=np.arange(5) * 86400 + 1_704_067_200), cat)
    assert sequences_from(ev, cat).event_types[0].tolist() == [0, 0, 0]          # the default type
    with pytest.raises(DataError, match=r"missing column\(s\) \['timestamp'\]"):
        sequences_from(ev.drop(columns="timestamp"), cat)


def test_sequences_from_plain_lists_work_in_every_model():
    """Sequences(items=[[1, 2, 3]]) failed in every model ("'>=' not supported between 'list' and 'int'"),
    and subset() of one with list user ids raised a TypeError."""
    from valuerec.data.dataset import Catalogue, Sequences
    from valuerec.models import ItemKNN

    h = Sequences(items=[[1, 2, 3], [2, 3]], user_ids=["a", "b"])
    assert h.items[0].dtype == np.int64 and list(h.subset([1]).user_ids) == ["b"]
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(5)], dtype=object))
    top, _ = ItemKNN(neighbours=3).fit(h, cat).recommend(h, k=2)
    assert top.shape == (2, 2)
