"""Ingest: adapters, validation messages, transactions, idempotency, pseudonymisation."""

import gzip
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.ingest import ColumnMap, ingest, pseudonymise, read_online_retail
from valuerec.data.schema import DataError
from valuerec.data.store import EventStore

GOOD = "user_id,item_id,timestamp,event_type,value\nu1,a,2024-01-01 10:00:00,purchase,3.5\n" \
       "u1,b,2024-01-02 10:00:00,view,0\nu2,a,2024-01-03 09:00:00,purchase,2\n"


@pytest.fixture
def store(tmp_path):
    with EventStore(tmp_path / "s.duckdb") as st:
        yield st


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_generic_csv_round_trip(tmp_path, store):
    rep = ingest(store, write(tmp_path, "e.csv", GOOD))
    assert (rep.events, rep.added, rep.duplicates) == (3, 3, 0)
    ev = store.events()
    assert list(ev["user_id"]) == ["u1", "u1", "u2"]
    assert list(ev["event_type"]) == ["purchase", "view", "purchase"]
    assert ev["value"].tolist() == [3.5, 0.0, 2.0]
    assert ev["quantity"].tolist() == [1.0, 1.0, 1.0]


def test_same_file_twice_adds_nothing(tmp_path, store):
    p = write(tmp_path, "e.csv", GOOD)
    ingest(store, p)
    rep = ingest(store, p)
    assert rep.added == 0 and rep.duplicates == 3
    assert store.count_events() == 3


def test_exact_duplicates_dropped_and_counted(tmp_path, store):
    p = write(tmp_path, "e.csv", GOOD + "u2,a,2024-01-03 09:00:00,purchase,2\n")
    rep = ingest(store, p)
    assert rep.added == 3 and rep.duplicates == 1


def test_column_mapping_and_time_format(tmp_path, store):
    text = "cust;sku;when;amount;kind\n7;x;01/02/2024;1.5;cart\n"
    p = write(tmp_path, "m.csv", text)
    cmap = ColumnMap(user="cust", item="sku", time="when", value="amount", event="kind", time_format="%d/%m/%Y")
    ingest(store, p, cmap=cmap, sep=";")
    ev = store.events()
    assert ev.loc[0, "timestamp"] == pd.Timestamp("2024-02-01")
    assert ev.loc[0, "event_type"] == "cart" and ev.loc[0, "item_id"] == "x"


def test_headerless_whitespace(tmp_path, store):
    p = write(tmp_path, "h.txt", "1 10 1700000000\n2 11 1700000100\n")
    ingest(store, p, fmt="csv", no_header=True, columns=["user_id", "item_id", "timestamp"],
           cmap=ColumnMap(time_format="unix"))
    assert store.count_events() == 2


def test_parquet_and_jsonl(tmp_path, store):
    df = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"],
                       "timestamp": ["2024-01-01T00:00:00", "2024-01-02T00:00:00"]})
    df.to_parquet(tmp_path / "e.parquet")
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(r) for r in df.assign(user_id=["c", "d"]).to_dict("records")))
    ingest(store, tmp_path / "e.parquet")
    ingest(store, tmp_path / "e.jsonl")
    assert store.count_events() == 4


def test_timezone_offsets_stored_as_naive_utc(tmp_path, store):
    """Offsets are converted to UTC and a time without one is taken as UTC, like the HTTP service."""
    from valuerec.data.validate import validate_event_records

    stamps = ["2011-01-01T10:00:00+05:00", "2011-01-01T10:00:00Z", "2011-01-01 10:00:00"]
    want = [pd.Timestamp("2011-01-01 05:00:00"), pd.Timestamp("2011-01-01 10:00:00"),
            pd.Timestamp("2011-01-01 10:00:00")]
    ingest(store, write(tmp_path, "same.csv", "user_id,item_id,timestamp\nu0,a,2011-01-01T10:00:00+05:00\n"))
    ingest(store, write(tmp_path, "tz.csv", "user_id,item_id,timestamp\n"
                        + "".join(f"u{i},a,{t}\n" for i, t in enumerate(stamps))))
    (tmp_path / "tz.jsonl").write_text("".join(json.dumps({"user_id": f"j{i}", "item_id": "a", "timestamp": t}) + "\n"
                                               for i, t in enumerate(stamps)))
    ingest(store, tmp_path / "tz.jsonl")
    pd.DataFrame({"user_id": ["p0", "p1"], "item_id": ["a", "a"],
                  "timestamp": pd.to_datetime(["2011-01-01 10:00", "2011-07-01 10:00"]).tz_localize("Europe/Berlin")}
                 ).to_parquet(tmp_path / "tz.parquet")
    ingest(store, tmp_path / "tz.parquet")
    ev = store.events().set_index("user_id")["timestamp"]
    assert [ev[f"u{i}"] for i in range(3)] == want
    assert [ev[f"j{i}"] for i in range(3)] == want
    assert list(ev[["p0", "p1"]]) == [pd.Timestamp("2011-01-01 09:00"), pd.Timestamp("2011-07-01 08:00")]
    assert ev["u0"] == validate_event_records([{"user_id": "x", "timestamp": stamps[0]}])["timestamp"][0]


def test_timezone_offsets_via_cli_train_data_path(tmp_path):
    from valuerec.evaluation.protocols import cached_store

    p = write(tmp_path, "tz.csv", "user_id,item_id,timestamp\nu1,a,2011-01-01T10:00:00+05:00\n"
                                  "u1,b,2011-01-02T10:00:00+05:00\n")
    db, _ = cached_store(p, "csv", tmp_path / "cache")
    with EventStore(db, read_only=True) as st:
        assert st.time_range() == (pd.Timestamp("2011-01-01 05:00"), pd.Timestamp("2011-01-02 05:00"))


def test_value_only_data(tmp_path, store):
    p = write(tmp_path, "v.csv", "customer,date,amount\nc1,2024-01-01,10\nc1,2024-02-01,5\n")
    ingest(store, p, cmap=ColumnMap(user="customer", time="date", value="amount"))
    ev = store.events()
    assert ev["item_id"].isna().all() and ev["value"].sum() == 15


# -- bad input: a clear message naming file, line, field; the store is left as it was -------------
@pytest.mark.parametrize("name,text,fragments", [
    ("missing.csv", "user_id,item_id\nu1,a\n", ["missing column", "'timestamp'"]),
    ("baddate.csv", "user_id,item_id,timestamp\nu1,a,2024-01-01\nu2,b,not-a-date\n",
     ["line 3", "'timestamp'", "unparseable date", "not-a-date"]),
    ("nan.csv", "user_id,item_id,timestamp,event_type,value\nu1,a,2024-01-01,purchase,\n",
     ["line 2", "'value'", "not a number"]),
    ("neg.csv", "user_id,item_id,timestamp,value\nu1,a,2024-01-01,-3\n", ["line 2", "'value'", "negative"]),
    ("empty.csv", "", ["empty"]),
    ("header_only.csv", "user_id,item_id,timestamp\n", ["no rows"]),
    ("delim.csv", "user_id;item_id;timestamp\nu1;a;2024-01-01\n", ["delimiter ';'", "--sep"]),
    ("emptyuser.csv", "user_id,item_id,timestamp\n,a,2024-01-01\n", ["line 2", "'user_id'", "empty user id"]),
    ("events.csv", "user_id,item_id,timestamp\nu1,a,2011-01-01\nu1,b,2999-01-01\n",
     ["events.csv, line 3, field 'timestamp': 2999-01-01 is in the future"]),
    ("old.csv", "user_id,item_id,timestamp\nu1,a,1800-01-01\n",
     ["old.csv, line 2, field 'timestamp': 1800-01-01 is before 1900-01-01"]),
    ("ragged.csv", "user_id,item_id,timestamp\nu1,a,2024-01-01\nu2,b,2024-01-02,extra\n",
     ["ragged.csv, line 3 has 4 fields, the header has 3"]),
    ("trailing.csv", "user_id,item_id,timestamp,value\nu1,a,2024-01-01,5,\nu2,b,2024-01-02,3,\n",
     ["trailing.csv, line 2 has 5 fields, the header has 4"]),
    ("dupcol.csv", "user_id,item_id,timestamp,timestamp\nu1,a,2024-01-01,2024-01-02\n",
     ["dupcol.csv: the header names 'timestamp' twice (columns 3 and 4)"]),
    ("unix.csv", "user_id,item_id,timestamp\nu1,a,1700000000\nu2,b,1700000000123\n",
     ["unix.csv, line 2, field 'timestamp': a number, not a date; if it is Unix time, pass --time-format unix "
      "(seconds) (got '1700000000')", "line 3, field 'timestamp': a number, not a date; if it is Unix time, pass "
      "--time-format unix_ms (milliseconds)"]),
    ("unix.jsonl", '{"user_id": "u1", "item_id": "a", "timestamp": 1700000000}\n',
     ["unix.jsonl, line 1, field 'timestamp': a number, not a date; if it is Unix time, pass --time-format unix "
      "(seconds) (got 1700000000)"]),
])
def test_bad_input_clear_error_store_untouched(tmp_path, store, name, text, fragments):
    ingest(store, write(tmp_path, "good.csv", GOOD))
    before = store.events()
    with pytest.raises(DataError) as e:
        ingest(store, write(tmp_path, name, text), cmap=ColumnMap(item="item_id") if "missing" in name else None)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, (f, msg)
    pd.testing.assert_frame_equal(store.events(), before)


def test_future_unix_ms_rejected_and_tomorrow_kept(tmp_path, store):
    now_ms = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    p = write(tmp_path, "ms.csv", f"user_id,item_id,timestamp\nu1,a,{now_ms + 12 * 3600_000}\nu2,b,99999999999999\n")
    with pytest.raises(DataError, match=r"ms.csv, line 3, field 'timestamp': 99999999999999 is in the future \(5138-"):
        ingest(store, p, cmap=ColumnMap(time_format="unix_ms"))
    assert store.count_events() == 0
    ok = write(tmp_path, "ok.csv", f"user_id,item_id,timestamp\nu1,a,{now_ms + 12 * 3600_000}\nu2,b,1000\n")
    assert ingest(store, ok, cmap=ColumnMap(time_format="unix_ms")).added == 2   # half a day ahead; 1970


def test_bundled_demo_data_passes_the_time_checks():
    from valuerec.demo import demo_data_path

    events, _, _ = read_online_retail(demo_data_path())
    assert events["timestamp"].min().year == 2010 and events["timestamp"].max().year == 2011


def test_unreadable_files_clear_error_store_untouched(tmp_path, store):
    ingest(store, write(tmp_path, "good.csv", GOOD))
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"user_id,item_id,timestamp\nu1,a,2024-01-01\nu\xff2,b,2024-01-02\n")
    with pytest.raises(DataError, match=r"latin1.csv, line 3: not UTF-8 \(byte 0xff at column 2\)"):
        ingest(store, latin)
    (tmp_path / "seq.txt").write_bytes(b"1 5 6\n2 \xfe 7\n")
    with pytest.raises(DataError, match=r"seq.txt, line 2: not UTF-8 \(byte 0xfe"):
        ingest(store, tmp_path / "seq.txt")
    (tmp_path / "fake.parquet").write_text(GOOD)
    with pytest.raises(DataError, match=r"fake.parquet: not a Parquet file \("):
        ingest(store, tmp_path / "fake.parquet")
    (tmp_path / "adir").mkdir()
    with pytest.raises(DataError, match=r"adir: is a directory"):
        ingest(store, tmp_path / "adir")
    with pytest.raises(DataError, match=r"latin1.csv, line 3: not UTF-8"):
        ingest(store, write(tmp_path, "e.csv", GOOD), items_path=latin)
    assert store.count_events() == 3


def test_headerless_ragged_rows_and_bad_time_format(tmp_path, store):
    p = write(tmp_path, "h.txt", "1 10 1700000000\n2 11 1700000100 extra\n")
    cols = ["user_id", "item_id", "timestamp"]
    with pytest.raises(DataError, match=r"h.txt, line 2: 4 fields, expected 3"):
        ingest(store, p, fmt="csv", no_header=True, columns=cols, cmap=ColumnMap(time_format="unix"))
    with pytest.raises(DataError, match=r"h.txt, line 2: 4 fields, expected 3"):
        ingest(store, p, fmt="csv", no_header=True, columns=cols, sep=" ", cmap=ColumnMap(time_format="unix"))
    # a first row with more fields than --columns: pandas took the extra leading field as the index, so
    # the id "alice smith" was stored as "smith" with no error
    trailing = write(tmp_path, "t.txt", "alice,10,2024-01-01,\nbob,11,2024-01-02,\n")
    assert ingest(store, trailing, fmt="csv", no_header=True, columns=cols, sep=",").added == 2   # trailing ','
    store.delete_user("alice"), store.delete_user("bob")
    spaced = write(tmp_path, "s.txt", "alice smith\t10\t2024-01-01\nbob\t11\t2024-01-02\n")
    with pytest.raises(DataError, match=r"s.txt, line 1: 4 fields, expected 3 .*give --sep"):
        ingest(store, spaced, fmt="csv", no_header=True, columns=cols)
    with pytest.raises(DataError, match=r"--columns names 'item_id' twice"):
        ingest(store, p, fmt="csv", no_header=True, columns=["user_id", "item_id", "item_id"])
    with pytest.raises(DataError, match=r"^--time-format '%Q': .*bad directive"):
        ingest(store, write(tmp_path, "e.csv", GOOD), cmap=ColumnMap(time_format="%Q"))
    assert store.count_events() == 0


def test_two_fields_mapped_to_one_column_rejected(tmp_path, store):
    p = write(tmp_path, "e.csv", GOOD)
    with pytest.raises(DataError, match=r"e.csv: --user-col and --item-col both name 'item_id'"):
        ingest(store, p, cmap=ColumnMap(user="item_id"))
    with pytest.raises(DataError, match=r"--time-col and --value-col both name 'value'"):
        ingest(store, p, cmap=ColumnMap(time="value"))
    assert store.count_events() == 0


def test_jsonl_ids_must_be_strings_or_numbers(tmp_path, store):
    rows = [{"user_id": "u1", "item_id": "a", "timestamp": "2024-01-01"},
            {"user_id": {"a": 1}, "item_id": "a", "timestamp": "2024-01-01"},
            {"user_id": "u3", "item_id": ["x"], "timestamp": "2024-01-01"},
            {"user_id": True, "item_id": "b", "timestamp": "2024-01-01"},
            {"user_id": 7, "item_id": 1.5, "timestamp": "2024-01-01"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        ingest(store, tmp_path / "t.jsonl")
    msg = str(e.value)
    assert e.value.n_problems == 3, msg
    for frag in ["t.jsonl, line 2, field 'user_id': expected a string or number, got an object",
                 "t.jsonl, line 3, field 'item_id': expected a string or number, got a list",
                 "t.jsonl, line 4, field 'user_id': expected a string or number, got a boolean"]:
        assert frag in msg, (frag, msg)
    (tmp_path / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1] + rows[4:]))
    ingest(store, tmp_path / "ok.jsonl")
    assert sorted(store.events()["user_id"]) == ["7", "u1"]


def test_error_list_is_capped_with_count(tmp_path, store):
    rows = "".join(f"u{i},a,bad{i}\n" for i in range(30))
    with pytest.raises(DataError) as e:
        ingest(store, write(tmp_path, "many.csv", "user_id,item_id,timestamp\n" + rows))
    assert e.value.n_problems == 30
    assert "and 10 more problem(s)" in str(e.value)
    assert store.count_events() == 0


def test_negative_item_price_rejected(tmp_path, store):
    items = write(tmp_path, "items.csv", "item_id,text,price\na,Mug,2.5\nb,Cup,-1\n")
    with pytest.raises(DataError, match=r"line 3, field 'price': negative price"):
        ingest(store, write(tmp_path, "e.csv", GOOD), items_path=items)
    assert store.count_events() == 0


def test_infinite_or_huge_item_price_rejected(tmp_path, store):
    items = write(tmp_path, "items.csv", "item_id,text,price\na,Mug,inf\nb,Cup,1e400\nc,Jug,1e39\nd,Pot,2\n")
    with pytest.raises(DataError) as e:
        ingest(store, write(tmp_path, "e.csv", GOOD), items_path=items)
    msg = str(e.value)
    assert "line 2, field 'price': infinite price" in msg and "line 3, field 'price': infinite price" in msg
    assert "line 4, field 'price': price too large" in msg and "line 5" not in msg
    assert store.count_events() == 0


def test_empty_or_repeated_item_id_in_item_table_rejected(tmp_path, store):
    ingest(store, write(tmp_path, "good.csv", GOOD))
    items = write(tmp_path, "items.csv", "item_id,text,price\na,Mug,2.5\n,Cup,1\n")
    with pytest.raises(DataError, match=r"items.csv, line 3, field 'item_id': empty"):
        ingest(store, write(tmp_path, "e.csv", GOOD.replace("u1", "u9")), items_path=items)
    items = write(tmp_path, "items2.csv", "item_id,text,price\na,Mug,2.5\nb,Cup,1\na,Big mug,3\n")
    with pytest.raises(DataError, match=r"items2.csv, line 4, field 'item_id': item id 'a' repeats line 2"):
        ingest(store, write(tmp_path, "e.csv", GOOD.replace("u1", "u9")), items_path=items)
    assert store.count_events() == 3 and len(store.items()) == 0


def test_cli_bad_file_exits_nonzero(tmp_path):
    p = write(tmp_path, "bad.csv", "user_id,item_id,timestamp\nu1,a,yesterday\n")
    res = CliRunner().invoke(app, ["ingest", str(p), "--store", str(tmp_path / "s.duckdb")])
    assert res.exit_code == 2
    assert "unparseable date" in res.output
    with EventStore(tmp_path / "s.duckdb") as st:
        assert st.count_events() == 0


def test_cli_failed_ingest_leaves_no_new_store(tmp_path):
    from valuerec.evaluation.protocols import cached_store

    bad = write(tmp_path, "bad.csv", "user_id,item_id,timestamp\nu1,a,yesterday\n")
    db = tmp_path / "new.duckdb"
    res = CliRunner().invoke(app, ["ingest", str(bad), "--store", str(db)])
    assert res.exit_code == 2 and "unparseable date" in res.output
    assert not db.exists() and not (tmp_path / "new.duckdb.wal").exists()
    with pytest.raises(DataError):
        cached_store(bad, "csv", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    res = CliRunner().invoke(app, ["ingest", str(write(tmp_path, "good.csv", GOOD)), "--store", str(db)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["ingest", str(bad), "--store", str(db)])   # an existing store stays
    assert res.exit_code == 2
    with EventStore(db) as st:
        assert st.count_events() == 3


def test_cli_bad_store_paths(tmp_path):
    good = write(tmp_path, "good.csv", GOOD)
    (tmp_path / "dir.duckdb").mkdir()
    res = CliRunner().invoke(app, ["ingest", str(good), "--store", str(tmp_path / "dir.duckdb")])
    assert res.exit_code == 2 and "--store" in res.output and "is a directory" in res.output, res.output
    fake = write(tmp_path, "fake.duckdb", "not a database\n")
    res = CliRunner().invoke(app, ["ingest", str(good), "--store", str(fake)])
    assert res.exit_code == 2 and "not a DuckDB store" in res.output, res.output
    assert fake.read_text() == "not a database\n"
    res = CliRunner().invoke(app, ["ingest", str(tmp_path), "--store", str(tmp_path / "s.duckdb")])
    assert res.exit_code == 2 and "is a directory, expected a file" in res.output, res.output


def test_store_locked_by_another_process(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "locked.duckdb"
    with EventStore(db) as st:
        ingest(st, write(tmp_path, "good.csv", GOOD))
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('ready', flush=True); time.sleep(60)", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(DataError, match=rf"locked.duckdb is in use by another process \(PID {holder.pid}\), "
                                            "e.g. a running valuerec serve; stop it or use its HTTP API"):
            EventStore(db)
        res = CliRunner().invoke(app, ["ingest", str(write(tmp_path, "more.csv", GOOD)), "--store", str(db)])
        assert res.exit_code == 2 and "in use by another process" in res.output, res.output
    finally:
        holder.kill()
        holder.wait()
    assert db.exists()
    with EventStore(db, read_only=True) as st:
        assert st.count_events() == 3


def test_pseudonymisation_is_keyed_and_stable():
    s = pd.Series(["alice", "bob", "alice"])
    a = pseudonymise(s, b"k" * 32)
    b = pseudonymise(s, b"j" * 32)
    assert a[0] == a[2] and a[0] != a[1]
    assert a[0] != b[0] and "alice" not in a[0]


def test_pseudonymise_cli_never_stores_key(tmp_path, monkeypatch):
    key = "secret-key-0123456789abcdef"
    monkeypatch.setenv("VALUEREC_PSEUDONYM_KEY", key)
    p = write(tmp_path, "e.csv", GOOD)
    db = tmp_path / "s.duckdb"
    res = CliRunner().invoke(app, ["ingest", str(p), "--store", str(db), "--pseudonymise"])
    assert res.exit_code == 0, res.output
    with EventStore(db) as st:
        users = set(st.events()["user_id"])
    assert not users & {"u1", "u2"}
    assert key.encode() not in db.read_bytes()
    # looking a user up: `valuerec pseudonym` gives the stored id, and recommend's error points to it
    res = CliRunner().invoke(app, ["pseudonym", "u1", " u2 "])
    assert res.exit_code == 0, res.output
    hashed = dict(line.split("\t") for line in res.stdout.strip().splitlines())
    assert {hashed["u1"], hashed[" u2 "]} == users
    res = CliRunner().invoke(app, ["train", "--store", str(db), "--model", "popularity", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    base = ["recommend", "--model", str(tmp_path / "m"), "--store", str(db), "--user"]
    res = CliRunner().invoke(app, base + ["u1"])
    assert res.exit_code == 2 and "valuerec pseudonym ID" in " ".join(res.output.split())
    assert CliRunner().invoke(app, base + [hashed["u1"]]).exit_code == 0


def test_s3rec_format(tmp_path, store):
    p = write(tmp_path, "Tiny.txt", "1 5 6 7\n2 6 5\n")
    (tmp_path / "Tiny_item2attributes.json").write_text(json.dumps({"5": [1, 2], "6": [2]}))
    ingest(store, p)
    ev = store.events()
    assert ev[ev.user_id == "1"]["item_id"].tolist() == ["5", "6", "7"]
    items = store.items().set_index("item_id")
    assert items.loc["5", "attributes"] == ["1", "2"] and items.loc["7", "attributes"] is None


ONLINE_RETAIL_HEAD = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def test_online_retail_cleaning(tmp_path):
    rows = [
        "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
        "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",  # same line twice
        "C536379,85123A,WHITE HANGING HEART,-2,2010-12-01 09:41:00,2.55,17850.0,United Kingdom",  # return
        "536380,22728,ALARM CLOCK,3,2010-12-01 09:45:00,3.75,,United Kingdom",  # guest
        "536381,22728,ALARM CLOCK,1,2010-12-01 09:45:00,0,12583.0,France",  # zero price
    ]
    p = tmp_path / "or.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write(ONLINE_RETAIL_HEAD + "\n".join(rows) + "\n")
    events, items, rep = read_online_retail(p)
    assert rep.dropped == {"no_customer_id": 1, "not_purchase_or_return": 1}
    assert events["event_type"].tolist() == ["purchase", "purchase", "return"]
    assert events["value"].tolist() == pytest.approx([15.3, 15.3, 5.1])
    assert events["user_id"].unique().tolist() == ["17850"]
    assert items.set_index("item_id").loc["85123A", "text"] == "WHITE HANGING HEART"


def test_online_retail_full_counts(shared_data, tmp_path):
    events, _, _ = read_online_retail(shared_data / "online-retail" / "online_retail_2010_2011.csv.gz")
    purchases = events[events.event_type == "purchase"]
    assert len(purchases) == 397_884
    assert purchases["user_id"].nunique() == 4_338


def test_row_write_path_matches_the_frame_path(tmp_path):
    """EventStore.add_event_rows (the service's small-batch path) stores what add_events would:
    the same content-hash ids, duplicates in the batch and in the store skipped (the row path also skips
    a repeated id with other content, which the frame path refuses), arrival order kept,
    and the stored rows come back with their sequence numbers; batches over one statement's chunk
    land whole."""
    from valuerec.data.store import event_hash, row_event_id
    from valuerec.data.validate import rows_frame, validate_event_rows

    recs = [{"user_id": "u1", "item_id": "a", "timestamp": "2024-01-01T10:00:00.1234567", "value": 2.5},
            {"user_id": "u1", "item_id": None, "timestamp": 1_700_000_000, "quantity": 3},
            {"user_id": "u2", "item_id": "b", "timestamp": "2024-01-02", "event_id": "client-1"},
            {"user_id": "u2", "item_id": "c", "timestamp": "2024-01-03", "event_id": "client-1"}]   # same id
    rows = validate_event_rows(recs)
    frame = rows_frame(rows)
    assert [row_event_id(*r[1:]) for r in rows[:2]] == list(event_hash(frame.iloc[:2]))
    with EventStore(tmp_path / "rows.duckdb") as a, EventStore(tmp_path / "frame.duckdb") as b:
        stored, dups = a.add_event_rows(rows)
        assert dups == 1 and [e.item_id for e in stored] == ["a", None, "b"]
        assert [e.seq for e in stored] == sorted(e.seq for e in stored)
        # the frame path (file ingest) refuses an id given twice with different content; the service's
        # row path skips the second and reports it as a conflict (tests/serving)
        with pytest.raises(DataError, match="'client-1'"):
            b.add_events(frame)
        assert b.count_events() == 0
        assert b.add_events(frame.iloc[:3]).added == 3
        cols = ["event_id", "user_id", "item_id", "timestamp", "event_type", "value", "quantity"]
        pd.testing.assert_frame_equal(a.events()[cols], b.events()[cols])
        again, dups = a.add_event_rows(rows)           # everything already stored
        assert again == [] and dups == 4 and a.count_events() == 3
        many = validate_event_rows([{"user_id": f"m{i}", "timestamp": 1.6e9 + i} for i in range(600)])
        stored, dups = a.add_event_rows(many, chunk=256)
        assert len(stored) == 600 and dups == 0 and a.count_events() == 603


def test_event_type_for_rows_that_name_none(tmp_path):
    p = tmp_path / "payments.csv"
    p.write_text("customer,date,amount\nc1,2011-01-02,5.5\nc2,2011-01-03,7\n")
    store = tmp_path / "s.duckdb"
    res = CliRunner().invoke(app, ["ingest", str(p), "--store", str(store), "--user-col", "customer",
                                   "--time-col", "date", "--value-col", "amount", "--event-type", "purchase"])
    assert res.exit_code == 0, res.output
    with EventStore(store, read_only=True) as st:
        ev = st.events()
    assert list(ev["event_type"]) == ["purchase", "purchase"] and ev["item_id"].isna().all()
    bad = CliRunner().invoke(app, ["ingest", str(p), "--store", str(tmp_path / "b.duckdb"), "--user-col", "customer",
                                   "--time-col", "date", "--value-col", "amount", "--event-type", "buy"])
    assert bad.exit_code == 2 and "--event-type 'buy': expected one of" in bad.output
    assert not (tmp_path / "b.duckdb").exists()


def test_a_given_event_id_with_new_content_is_an_error_not_a_duplicate(tmp_path, store):
    """An event id names one event. Re-sending it unchanged is a duplicate (skipped); with other
    content it used to be skipped too, silently losing the new content. Now the file is refused."""
    head = "eid,user_id,item_id,timestamp,value\n"
    first = write(tmp_path, "a.csv", head + "e1,A,X,2023-01-01,5\n")
    ingest(store, first, cmap=ColumnMap(event_id="eid"))
    rep = ingest(store, first, cmap=ColumnMap(event_id="eid"))
    assert (rep.added, rep.duplicates) == (0, 1)
    changed = write(tmp_path, "b.csv", head + "e2,B,Y,2023-01-02,1\ne1,A,X,2023-01-01,999\n")
    with pytest.raises(DataError, match=r"already stored with different content: 'e1' \(value 5.0 stored, 999.0 given\)"):
        ingest(store, changed, cmap=ColumnMap(event_id="eid"))
    within = write(tmp_path, "c.csv", head + "e3,A,X,2023-01-01,5\ne3,B,Y,2023-01-02,1\n")
    with pytest.raises(DataError, match=r"appear more than once with different content, e.g. 'e3'"):
        ingest(store, within, cmap=ColumnMap(event_id="eid"))
    assert store.count_events() == 1 and store.events()["value"].tolist() == [5.0]   # nothing written
    # across chunks of one file, too (the earlier chunk is in the same transaction)
    across = write(tmp_path, "d.csv", head + "e4,A,X,2023-01-03,5\ne5,A,X,2023-01-04,5\ne4,A,Y,2023-01-03,5\n")
    with pytest.raises(DataError, match=r"'e4' \(item_id 'X' stored, 'Y' given\)"):
        ingest(store, across, cmap=ColumnMap(event_id="eid"), chunk_rows=2)
    assert store.count_events() == 1


def test_an_empty_value_is_zero_for_views_and_an_error_for_purchases(tmp_path, store):
    """Clickstream logs leave the amount empty on views and carts: that is 0. A purchase or a return
    without its amount is still an error."""
    ok = write(tmp_path, "clicks.csv", "user_id,item_id,timestamp,event_type,value,quantity\n"
                                       "u1,a,2024-01-01,view,,\nu1,a,2024-01-02,cart,,\nu1,a,2024-01-03,purchase,9.5,2\n")
    assert ingest(store, ok).added == 3
    assert store.events()["value"].tolist() == [0.0, 0.0, 9.5]
    assert store.events()["quantity"].tolist() == [1.0, 1.0, 2.0]     # an empty quantity on a view is 1
    bad = write(tmp_path, "bad.csv", "user_id,item_id,timestamp,event_type,value\n"
                                     "u2,a,2024-01-01,view,\nu2,a,2024-01-02,return,\n")
    with pytest.raises(DataError, match=r"line 3, field 'value': not a number"):
        ingest(store, bad)
    assert store.count_events() == 3


def test_the_services_row_check_refuses_numbers_the_models_cannot_hold():
    """POST /v1/events validates rows with validate_event_rows: the float32 bound of file ingest holds
    there too (a larger value became NaN predictions)."""
    from valuerec.data.validate import validate_event_rows

    with pytest.raises(DataError) as e:
        validate_event_rows([{"user_id": "u", "timestamp": "2024-01-01", "value": 1e39},
                             {"user_id": "u", "timestamp": "2024-01-02", "quantity": 5e38},
                             {"user_id": "u", "timestamp": "2024-01-03", "value": 3e38}])
    assert e.value.n_problems == 2
    assert "[0].value: too large" in str(e.value) and "[1].quantity: too large" in str(e.value)

    rows = validate_event_rows([{"user_id": "u", "timestamp": "2024-01-01", "event_type": "view", "value": ""},
                                {"user_id": "u", "timestamp": "2024-01-02", "event_type": "cart", "value": float("nan")}])
    assert [r.value for r in rows] == [0.0, 0.0]       # as in file ingest: a view's empty value is 0
    rows = validate_event_rows([{"user_id": "u", "timestamp": "2024-01-01", "event_type": "view", "quantity": ""}])
    assert rows[0].quantity == 1.0                     # ... and its empty quantity 1
    with pytest.raises(DataError, match=r"\[0\]\.value: not a number"):
        validate_event_rows([{"user_id": "u", "timestamp": "2024-01-01", "event_type": "purchase", "value": ""}])


# -- a purchase or return needs its amount, also when the file has no value column at all ---------------
def test_purchases_without_a_value_column_are_refused(tmp_path, store):
    ingest(store, write(tmp_path, "good.csv", GOOD))
    before = store.events()
    p = write(tmp_path, "shop.csv", "customer,sku,ts,revenue,action\nu1,a,2024-01-01,5.0,purchase\n"
                                    "u2,b,2024-01-02,3.0,return\n")
    cmap = ColumnMap(user="customer", item="sku", time="ts", event="action")
    with pytest.raises(DataError, match=r"shop.csv: 2 purchase or return event\(s\) but no value column 'value'; "
                                        r"the file has \['action', 'customer', 'revenue', 'sku', 'ts'\]\. "
                                        r"Name the amount's column with --value-col"):
        ingest(store, p, cmap=cmap)
    j = write(tmp_path, "novalue.jsonl", "".join(json.dumps({"customer": f"u{i}", "sku": "a", "ts": "2024-01-01",
                                                             "action": "view" if i else "purchase"}) + "\n"
                                                 for i in range(5)))
    with pytest.raises(DataError, match=r"novalue.jsonl: 1 purchase or return event\(s\) but no value column"):
        ingest(store, j, cmap=cmap, chunk_rows=2)     # the purchase is in the first chunk, nothing after it
    with pytest.raises(DataError, match=r"pay.csv: 1 purchase or return"):
        ingest(store, write(tmp_path, "pay.csv", "user_id,timestamp\nc1,2024-01-01\n"), event_type="purchase")
    pd.testing.assert_frame_equal(store.events(), before)
    # views and clicks have no amount: a file of them needs no value column
    views = write(tmp_path, "views.csv", "customer,sku,ts,action\nu1,a,2024-01-01,view\nu2,b,2024-01-02,click\n")
    assert ingest(store, views, cmap=cmap).added == 2


def test_cli_purchases_without_a_value_column(tmp_path):
    p = write(tmp_path, "shop.csv", "customer,sku,ts,revenue,action\nu1,a,2024-01-01,5.0,purchase\n")
    res = CliRunner().invoke(app, ["ingest", str(p), "--store", str(tmp_path / "s.duckdb"), "--user-col", "customer",
                                   "--item-col", "sku", "--time-col", "ts", "--event-col", "action"])
    assert res.exit_code == 2 and "error:" in res.output and "--value-col" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "s.duckdb").exists()


def test_http_records_without_value_are_refused():
    from valuerec.data.validate import validate_event_rows

    with pytest.raises(DataError, match=r"events\[1\]\.value: a purchase needs its amount; give 'value'"):
        validate_event_rows([{"user_id": "u1", "timestamp": "2024-01-01", "event_type": "view"},
                             {"user_id": "u1", "timestamp": "2024-01-01", "event_type": "purchase"}])
    assert validate_event_rows([{"user_id": "u1", "timestamp": "2024-01-01", "event_type": "purchase",
                                 "value": 0}])[0].value == 0.0


def test_broken_gzip_is_a_clear_error_and_writes_nothing(tmp_path, store):
    ingest(store, write(tmp_path, "good.csv", GOOD))
    before = store.events()
    rows = "".join(f"u{i},a{i % 7},2024-01-01 10:{i % 60:02d}:00,view,0\n" for i in range(3000))
    whole = gzip.compress((GOOD.splitlines(keepends=True)[0] + rows).encode())
    (tmp_path / "trunc.csv.gz").write_bytes(whole[: len(whole) * 2 // 3])
    (tmp_path / "fake.csv.gz").write_text(GOOD)
    (tmp_path / "fake.jsonl.gz").write_text('{"user_id": "u1"}\n')
    with gzip.open(tmp_path / "or.csv.gz", "wt") as f:
        f.write(ONLINE_RETAIL_HEAD + "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,UK\n" * 3000)
    (tmp_path / "or_trunc.csv.gz").write_bytes((tmp_path / "or.csv.gz").read_bytes()[:-200])
    for name in ("trunc.csv.gz", "fake.csv.gz", "fake.jsonl.gz", "or_trunc.csv.gz"):
        with pytest.raises(DataError, match=rf"{name}: not a valid or complete gzip file"):
            ingest(store, tmp_path / name, chunk_rows=100)    # the chunks before the break are rolled back
    pd.testing.assert_frame_equal(store.events(), before)
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "trunc.csv.gz"), "--store", str(tmp_path / "n.duckdb")])
    assert res.exit_code == 2 and "trunc.csv.gz: not a valid or complete gzip file" in res.output, res.output
    assert "Aborted" not in res.output and not (tmp_path / "n.duckdb").exists()


def test_explicit_format_overrides_the_extension_and_tsv_is_tab_separated(tmp_path, store):
    rows = [{"user_id": "u1", "item_id": "a", "timestamp": "2024-01-01 10:00:00", "event_type": "purchase", "value": 5}]
    p = write(tmp_path, "events.ndjson.txt", "".join(json.dumps(r) + "\n" for r in rows))
    assert ingest(store, p, fmt="jsonl").added == 1
    assert store.events()["value"].tolist() == [5.0]
    pd.read_csv(write(tmp_path, "good.csv", GOOD)).to_parquet(tmp_path / "export.parq")
    assert ingest(store, tmp_path / "export.parq", fmt="parquet").added == 3
    with pytest.raises(DataError, match=r"g.csv: not a Parquet file"):
        ingest(store, write(tmp_path, "g.csv", GOOD), fmt="parquet")
    tsv = write(tmp_path, "e.tsv", GOOD.replace(",", "\t").replace("u1", "t1"))
    assert ingest(store, tsv).added == 2       # u2's event is the one from export.parq
    assert {"t1", "u2"} <= set(store.events()["user_id"])


def test_online_retail_time_format_and_unusable_options(tmp_path, store):
    rows = ["536397,35004B,DUCKS,12,12/1/2010 10:51,4.65,17924.0,United Kingdom",
            "536398,35004C,DUCKS,6,12/13/2010 8:05,4.65,17925.0,United Kingdom"]
    p = write(tmp_path, "or_kaggle.csv", ONLINE_RETAIL_HEAD + "\n".join(rows) + "\n")
    events, _, _ = read_online_retail(p)          # the common export, month first: every row has that form
    assert events["timestamp"].astype(str).tolist() == ["2010-12-01 10:51:00", "2010-12-13 08:05:00"]
    events, _, _ = read_online_retail(p, time_format="%m/%d/%Y %H:%M")
    assert events["timestamp"].astype(str).tolist() == ["2010-12-01 10:51:00", "2010-12-13 08:05:00"]
    with pytest.raises(DataError, match=r"line 3, field 'InvoiceDate': unparseable date, expected %d/%m/%Y %H:%M"):
        ingest(store, p, cmap=ColumnMap(time_format="%d/%m/%Y %H:%M"))   # day 13 is no month
    mixed = write(tmp_path, "or_mixed.csv", ONLINE_RETAIL_HEAD + rows[0] + "\n"
                  + "536399,35004C,DUCKS,6,2010-12-02 08:05:00,4.65,17925.0,United Kingdom\n")
    with pytest.raises(DataError, match=r"line 2, field 'InvoiceDate': unparseable date, expected YYYY-MM-DD HH:MM:SS "
                                        r"\(or M/D/YYYY H:MM on every row\); set --time-format"):
        read_online_retail(mixed)
    with pytest.raises(DataError, match=r"--user-col, --value-col: for generic event files \(csv, parquet, jsonl\); "
                                        r"the online-retail format has fixed columns"):
        ingest(store, p, cmap=ColumnMap(user="CustomerID", value="UnitPrice"))
    with pytest.raises(DataError, match=r"--time-format, --sep: for generic event files"):
        ingest(store, write(tmp_path, "seq.txt", "1 5 6\n2 7 8\n"), cmap=ColumnMap(time_format="unix"), sep=" ")
    assert store.count_events() == 0
    assert ingest(store, p).added == 2


def test_key_file_without_pseudonymise_is_refused(tmp_path):
    key = write(tmp_path, "key", "k" * 32)
    res = CliRunner().invoke(app, ["ingest", str(write(tmp_path, "e.csv", GOOD)), "--store", str(tmp_path / "s.duckdb"),
                                   "--pseudonymise-key-file", str(key)])
    assert res.exit_code == 2 and f"--pseudonymise-key-file {key}: given without --pseudonymise" in res.output
    assert not (tmp_path / "s.duckdb").exists()


def test_item_table_without_a_known_column_is_refused(tmp_path, store):
    items = write(tmp_path, "items.csv", "item_id,title,cost\na,Red mug,3\nb,Blue mug,4\n")
    with pytest.raises(DataError, match=r"items.csv: no item column this reader uses; expected one or more of 'text', "
                                        r"'price', 'attributes' next to 'item_id'; the file has \['cost', 'item_id', "
                                        r"'title'\]"):
        ingest(store, write(tmp_path, "e.csv", GOOD), items_path=items)
    assert store.count_events() == 0
    ingest(store, write(tmp_path, "e.csv", GOOD), items_path=write(tmp_path, "p.csv", "item_id,price,title\na,3,x\n"))
    assert store.count_events() == 3


def test_unix_ms_on_seconds_is_refused(tmp_path, store):
    p = write(tmp_path, "sec.csv", "user_id,item_id,timestamp\nu1,a,1704067200\nu2,b,1704153600\n")
    with pytest.raises(DataError, match=r"sec.csv, line 2, field 'timestamp': with --time-format unix_ms every date is "
                                        r"before 1971-01-01; the numbers look like seconds: pass --time-format unix "
                                        r"\(got '1704067200'\)"):
        ingest(store, p, cmap=ColumnMap(time_format="unix_ms"))
    assert store.count_events() == 0
    assert ingest(store, p, cmap=ColumnMap(time_format="unix")).added == 2
    ms = write(tmp_path, "ms.csv", "user_id,item_id,timestamp\nu1,a,1704067200000\n")
    with pytest.raises(DataError, match=r"ms.csv, line 2, field 'timestamp': 1704067200000 is in the future"):
        ingest(store, ms, cmap=ColumnMap(time_format="unix"))     # the reverse: milliseconds read as seconds


def test_ingest_says_which_ids_it_trimmed_and_which_types_the_models_merge(tmp_path):
    """Ids are stored without surrounding spaces (" bob " is "bob"), and event types outside the
    known ones are read as 'other' by the models: both happened without a word. Lookups by the padded
    id find the user."""
    import json as _json

    from typer.testing import CliRunner

    from valuerec.cli import app

    p = write(tmp_path, "ws.csv", "user,item,ts,action\n bob ,p1,2024-01-01,play\nbob,p2,2024-01-02,like\n"
                                  "ann,p1,2024-01-03,view\n")
    store = tmp_path / "ws.duckdb"
    r = CliRunner().invoke(app, ["ingest", str(p), "--store", str(store), "--user-col", "user", "--item-col", "item",
                                 "--time-col", "ts", "--event-col", "action", "--json"])
    assert r.exit_code == 0, r.output
    notes = _json.loads(r.stdout)["notes"]
    assert any("1 user id value(s) had spaces" in n for n in notes)
    assert any("'like' (1), 'play' (1)" in n and "'other'" in n for n in notes)
    r = CliRunner().invoke(app, ["train", "--store", str(store), "--model", "popularity", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["recommend", "--model", str(tmp_path / "m"), "--store", str(store),
                                 "--user", " bob ", "--json"])
    assert r.exit_code == 0 and _json.loads(r.stdout)["history_events"] == 2, r.output


def test_a_parquet_file_read_as_text_and_a_decimal_comma_are_named(tmp_path, store):
    """--format csv on a Parquet file failed on some line's field count; '38,11' was 'not a number
    (NaN or empty)' with no word about the comma."""
    df = pd.DataFrame({"user_id": ["u1"], "item_id": ["a"], "timestamp": ["2024-01-01"]})
    pq = tmp_path / "e.parquet"
    df.to_parquet(pq)
    with pytest.raises(DataError, match=r"e.parquet: is a Parquet file, not csv text; drop --format"):
        ingest(store, pq, fmt="csv")
    renamed = tmp_path / "e.csv"
    renamed.write_bytes(pq.read_bytes())
    with pytest.raises(DataError, match=r"e.csv: is a Parquet file, not csv text; use --format parquet"):
        ingest(store, renamed)
    p = write(tmp_path, "c.csv", 'user_id,item_id,timestamp,event_type,value\nu1,a,2024-01-01,purchase,"38,11"\n')
    with pytest.raises(DataError, match=r"line 2, field 'value': not a number: a decimal comma or a thousands separator\?"):
        ingest(store, p)
    assert store.count_events() == 0


def test_ingest_notes_float_written_ids_and_an_item_table_that_matches_no_event(tmp_path, store):
    """A CSV export of a float id column ('17850.0') and an item table whose ids match no event's
    were stored without a word; the report's notes now name both."""
    p = write(tmp_path, "f.csv", "user_id,item_id,timestamp\n17850.0,1.0,2024-01-01\n13047.0,2.0,2024-01-02\n")
    items = write(tmp_path, "items.csv", "item_id,text\n1,mug\n2,candle\n")
    report = ingest(store, p, items_path=items)
    notes = " | ".join(report.notes())
    assert "2 user id value(s) look like numbers written as floats" in notes
    assert "none of the item table's 2 ids matches an event's item id" in notes
    ok = write(tmp_path, "items2.csv", "item_id,text\n1.0,mug\n9,new lamp\n")
    assert any("1 of the item table's 2 items have no events" in n for n in ingest(store, p, items_path=ok).notes())
