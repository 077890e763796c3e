"""Generic event files are read, checked and written in chunks inside one transaction: the same result
as reading the whole file, line numbers counted over the whole file, nothing written when any chunk
has a problem, and duplicates found across chunks."""

import json

import numpy as np
import pandas as pd
import pytest

from valuerec.data.ingest import ingest
from valuerec.data.schema import DataError
from valuerec.data.store import EventStore

ROWS = [(f"u{i % 4}", f"i{i % 5}", f"2024-01-{1 + i:02d} 10:00:00", "purchase" if i % 2 else "view", float(i))
        for i in range(11)]


def as_csv(rows, header="user_id,item_id,timestamp,event_type,value"):
    return header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)


def as_jsonl(rows):
    keys = ["user_id", "item_id", "timestamp", "event_type", "value"]
    return "".join(json.dumps(dict(zip(keys, r))) + "\n" for r in rows)


def write_parquet(path, rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    df.to_parquet(path)
    return path


def stored(path):
    with EventStore(path, read_only=True) as st:
        return st.events().drop(columns=["event_id"], errors="ignore")


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_chunks_store_what_one_read_stores(tmp_path, kind):
    src = tmp_path / f"e.{kind}"
    if kind == "parquet":
        write_parquet(src, ROWS)
    else:
        src.write_text(as_csv(ROWS) if kind == "csv" else as_jsonl(ROWS))
    reports = {}
    for chunk in (None, 1, 3, 100):
        with EventStore(tmp_path / f"s{chunk}.duckdb") as st:
            reports[chunk] = ingest(st, src, chunk_rows=chunk)
    whole = stored(tmp_path / "sNone.duckdb")
    assert len(whole) == 11
    for chunk in (1, 3, 100):
        pd.testing.assert_frame_equal(stored(tmp_path / f"s{chunk}.duckdb"), whole)
        assert (reports[chunk].rows_read, reports[chunk].events, reports[chunk].added) == (11, 11, 11)


def test_a_bad_row_in_a_later_chunk_writes_nothing_and_names_its_line(tmp_path):
    rows = list(ROWS)
    rows[8] = ("u1", "i1", "not-a-date", "view", 1.0)          # line 10 of the file (the header is line 1)
    rows[10] = ("u1", "i1", "2024-01-20 10:00:00", "view", -4.0)  # line 12
    with EventStore(tmp_path / "s.duckdb") as st:
        ingest(st, _csv(tmp_path, "first.csv", [("u9", "i9", "2023-06-01", "view", 0.0)]))
        before = st.events()
        with pytest.raises(DataError) as e:
            ingest(st, _csv(tmp_path, "bad.csv", rows), chunk_rows=3)     # chunks: lines 2-4, 5-7, 8-10, 11-12
        pd.testing.assert_frame_equal(st.events(), before)                # the first chunks were rolled back
        assert st.con.execute("SELECT count(*) FROM ingests").fetchall()[0][0] == 1
    msg = str(e.value)
    assert "bad.csv: 2 problem(s); nothing was written" in msg
    assert "bad.csv, line 10, field 'timestamp': unparseable date" in msg
    assert "bad.csv, line 12, field 'value': negative" in msg


def test_problems_are_counted_over_every_chunk(tmp_path):
    rows = [(f"u{i}", "i1", "bad", "view", 1.0) for i in range(30)]
    with EventStore(tmp_path / "s.duckdb") as st, pytest.raises(DataError) as e:
        ingest(st, _csv(tmp_path, "bad.csv", rows), chunk_rows=7)
    assert e.value.n_problems == 30 and len(e.value.problems) == 20 and "and 10 more problem(s)" in str(e.value)
    assert "line 21, field 'timestamp'" in e.value.problems[-1]        # the first 20 are listed: lines 2..21


def test_duplicates_across_chunks_are_stored_once(tmp_path):
    rows = ROWS[:4] + ROWS[:4] + ROWS[4:6]
    with EventStore(tmp_path / "s.duckdb") as st:
        rep = ingest(st, _csv(tmp_path, "dup.csv", rows), chunk_rows=3)
        assert (rep.added, rep.duplicates) == (6, 4) and st.count_events() == 6
        again = ingest(st, _csv(tmp_path, "dup.csv", rows), chunk_rows=2)
        assert (again.added, again.duplicates) == (0, 10)


def test_a_ragged_row_in_a_later_chunk_is_named(tmp_path):
    text = as_csv(ROWS[:7]) + "u1,i1,2024-02-01,view,1,extra\n"     # line 9
    with EventStore(tmp_path / "s.duckdb") as st, pytest.raises(DataError, match=r"line 9 has 6 fields, the header has 5"):
        ingest(st, _p(tmp_path, "r.csv", text), chunk_rows=3)
    assert stored(tmp_path / "s.duckdb").empty


def test_a_jsonl_key_that_first_appears_in_a_later_chunk(tmp_path):
    """Chunks give what one read gives: a value key missing on earlier purchase lines is refused (named
    at the line that first has it), on earlier views it is 0; an event_type key missing on earlier
    lines is accepted (the default type)."""
    lines = [json.dumps({"user_id": "u1", "item_id": "a", "timestamp": f"2024-01-0{d}", "event_type": t})
             for d, t in zip(range(1, 5), ("view", "purchase", "view", "view"))]
    lines.append(json.dumps({"user_id": "u1", "item_id": "a", "timestamp": "2024-01-06", "value": 5.0,
                             "event_type": "purchase"}))
    src = _p(tmp_path, "e.jsonl", "\n".join(lines) + "\n")
    with EventStore(tmp_path / "s.duckdb") as st, pytest.raises(DataError, match=r"line 5, field 'value': first "
                                                                 r"given here; the 1 purchase or return line\(s\)"):
        ingest(st, src, chunk_rows=2)
    views = [ln.replace('"purchase"', '"view"') if i < 4 else ln for i, ln in enumerate(lines)]
    vsrc = _p(tmp_path, "v.jsonl", "\n".join(views) + "\n")
    for chunk in (None, 2):
        with EventStore(tmp_path / f"v{chunk}.duckdb") as st:
            assert ingest(st, vsrc, chunk_rows=chunk).added == 5
            assert st.events()["value"].tolist() == [0.0] * 4 + [5.0]
    typed = [json.dumps({"user_id": "u1", "item_id": "a", "timestamp": f"2024-01-0{d}"}) for d in range(1, 4)]
    typed.append(json.dumps({"user_id": "u1", "item_id": "b", "timestamp": "2024-01-05", "event_type": "purchase",
                             "value": 2.0}))     # a purchase needs its amount, also when no line has a value
    src = _p(tmp_path, "t.jsonl", "\n".join(typed) + "\n")
    for chunk in (None, 2):
        with EventStore(tmp_path / f"t{chunk}.duckdb") as st:
            assert ingest(st, src, chunk_rows=chunk).added == 4
            assert st.events()["event_type"].tolist() == ["interaction"] * 3 + ["purchase"]
    with EventStore(tmp_path / "s2.duckdb") as st, pytest.raises(DataError, match=r"line 2, field 'value': not a number"):
        ingest(st, tmp_path / "e.jsonl", chunk_rows=None)   # read whole, the purchase without it has no value
    # a quantity key first given on a later purchase: the views before it need none (their empty quantity
    # is 1), whatever the chunk size (chunked, every earlier line was counted as lacking it)
    qty = [json.dumps({"user_id": "u1", "item_id": "a", "timestamp": f"2024-01-0{d}", "event_type": "view"})
           for d in range(1, 7)]
    qty.append(json.dumps({"user_id": "u1", "item_id": "a", "timestamp": "2024-01-08", "event_type": "purchase",
                           "value": 3.0, "quantity": 2}))
    qsrc = _p(tmp_path, "q.jsonl", "\n".join(qty) + "\n")
    for chunk in (None, 3):
        with EventStore(tmp_path / f"q{chunk}.duckdb") as st:
            assert ingest(st, qsrc, chunk_rows=chunk).added == 7
            assert st.events()["quantity"].tolist() == [1.0] * 6 + [2.0]


def test_a_header_without_rows_is_still_refused(tmp_path):
    with EventStore(tmp_path / "s.duckdb") as st, pytest.raises(DataError, match="has a header but no rows"):
        ingest(st, _p(tmp_path, "h.csv", "user_id,item_id,timestamp\n"), chunk_rows=2)


def _csv(tmp_path, name, rows):
    return _p(tmp_path, name, as_csv(rows))


def _p(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_cli_chunk_rows(tmp_path):
    from typer.testing import CliRunner

    from valuerec.cli import app
    rows = list(ROWS)
    rows[9] = ("u1", "i1", "2024-01-20 10:00:00", "view", "x")        # line 11
    r = CliRunner().invoke(app, ["ingest", str(_csv(tmp_path, "e.csv", rows)), "--store", str(tmp_path / "s.duckdb"),
                                 "--chunk-rows", "4"])
    assert r.exit_code == 2 and "e.csv, line 11, field 'value': not a number" in " ".join(r.output.split())
    assert not (tmp_path / "s.duckdb").exists()
    r = CliRunner().invoke(app, ["ingest", str(_csv(tmp_path, "ok.csv", ROWS)), "--store", str(tmp_path / "s.duckdb"),
                                 "--chunk-rows", "4", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["report"]["added"] == 11
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "ok.csv"), "--store", str(tmp_path / "s.duckdb"),
                                 "--chunk-rows", "0"])
    assert r.exit_code == 2 and "--chunk-rows" in r.output


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_numeric_ids_read_the_same_in_every_chunk(tmp_path, kind):
    """An integer id column with a gap arrives as floats in the chunk with the gap: still '5', never '5.0'."""
    rows = [{"user_id": 7, "item_id": 5, "timestamp": "2024-01-01"}, {"user_id": 7, "item_id": 5, "timestamp": "2024-01-02"},
            {"user_id": 8, "item_id": 5, "timestamp": "2024-01-03"}, {"user_id": 8, "item_id": None, "timestamp": "2024-01-04"}]
    src = tmp_path / f"e.{kind}"
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"user_id": pa.array([r["user_id"] for r in rows], pa.int64()),
                                 "item_id": pa.array([r["item_id"] for r in rows], pa.int64()),
                                 "timestamp": pa.array([r["timestamp"] for r in rows])}), src)
    else:
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for chunk in (None, 2):
        with EventStore(tmp_path / f"s{chunk}.duckdb") as st:
            ingest(st, src, chunk_rows=chunk)
            ev = st.events()
        assert ev["user_id"].tolist() == ["7", "7", "8", "8"]
        assert ev["item_id"].tolist()[:3] == ["5", "5", "5"] and ev["item_id"].isna().tolist()[3]
