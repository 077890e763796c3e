"""The event store: a DuckDB file (embedded, the default) holding events and the item table.

Every write is one transaction: a batch either lands whole or not at all, so a bad file or a crash
mid-write never leaves half a batch behind. Events carry an ``event_id``; re-sending an event with an
id the store already holds adds nothing (idempotent ingest, also used by the HTTP service).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from valuerec.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, REQUIRED_EVENT_COLUMNS, DataError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id   VARCHAR PRIMARY KEY,
    user_id    VARCHAR NOT NULL,
    item_id    VARCHAR,
    ts         TIMESTAMP NOT NULL,
    event_type VARCHAR NOT NULL,
    value      DOUBLE NOT NULL,
    quantity   DOUBLE NOT NULL,
    seq        BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    item_id    VARCHAR PRIMARY KEY,
    text       VARCHAR,
    attributes VARCHAR,
    price      DOUBLE
);
CREATE TABLE IF NOT EXISTS ingests (
    source     VARCHAR,
    sha256     VARCHAR,
    added      BIGINT,
    duplicates BIGINT,
    ingested_at TIMESTAMP DEFAULT current_timestamp
);
CREATE SEQUENCE IF NOT EXISTS event_seq START 1;
"""


def event_hash(df: pd.DataFrame) -> pd.Series:
    """Content hash of each event: exact duplicates (same user, item, time, type, value, quantity)
    get the same id and are stored once."""
    key = (
        df["user_id"].astype(str)
        + "\x1f" + df["item_id"].fillna("").astype(str)
        + "\x1f" + df["timestamp"].astype("datetime64[us]").astype("int64").astype(str)
        + "\x1f" + df["event_type"].astype(str)
        + "\x1f" + df["value"].map(repr)
        + "\x1f" + df["quantity"].map(repr)
    )
    return key.map(lambda s: hashlib.blake2b(s.encode(), digest_size=12).hexdigest())


def row_event_id(user_id: str, item_id: str | None, ts: pd.Timestamp, event_type: str, value: float,
                 quantity: float) -> str:
    """``event_hash`` of one event given as plain values (the same id for the same content)."""
    key = "\x1f".join((str(user_id), "" if item_id is None else str(item_id), str(pd.Timestamp(ts).value // 1000),
                        str(event_type), repr(float(value)), repr(float(quantity))))
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def store_open_error(path: str | Path, err: Exception) -> DataError | None:
    """DuckDB's error opening ``path`` as a one-line DataError saying what is wrong; None if unknown."""
    msg = str(err)
    if Path(path).is_dir():
        return DataError(f"{path}: is a directory, not a DuckDB store")
    if "Could not set lock" in msg:
        pid = re.search(r"\(PID (\d+)\)", msg)
        return DataError(f"{path} is in use by another process{f' (PID {pid.group(1)})' if pid else ''}, "
                         "e.g. a running valuerec serve; stop it or use its HTTP API (to retrain while it serves, "
                         "POST /v1/admin/snapshot writes a copy of the store to train on)")
    if "not a valid DuckDB database file" in msg:
        return DataError(f"{path}: not a DuckDB store (the file exists but is not a DuckDB database)")
    return None


def _plain(v) -> str:
    return str(pd.Timestamp(v)) if isinstance(v, (datetime.datetime, pd.Timestamp)) else repr(v) \
        if isinstance(v, str) else str(v)


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and pd.Timestamp(a) == pd.Timestamp(b)
                                         if isinstance(a, (datetime.datetime, pd.Timestamp)) else a == b)


def _refuse_repeated_ids(ev: pd.DataFrame) -> None:
    """Rows of one batch that give the same event id with different content: an error naming them."""
    rep = ev[ev["event_id"].duplicated(keep=False)]
    if not len(rep):
        return
    content = ["user_id", "item_id", "timestamp", "event_type", "value", "quantity"]
    n = rep[content].astype(str).groupby(rep["event_id"]).nunique().max(axis=1)
    bad = n[n > 1].index.tolist()
    if bad:
        raise DataError(f"{len(bad)} event id(s) appear more than once with different content, e.g. "
                        f"{', '.join(repr(b) for b in bad[:5])}. An event id names one event: give each its own "
                        "id (or none, to key events by their content); nothing was written")


DUCKDB_MAGIC = b"DUCK"          # bytes 8..11 of every DuckDB database file


def _check_store_path(path: Path) -> None:
    """Refuse an existing file that is not a DuckDB database. DuckDB would open e.g. a CSV file as an
    empty in-memory database: writes would report success and vanish, reads would fail later."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(12)
    if head[8:12] != DUCKDB_MAGIC:
        kind = next((k for ext, k in ((".csv", "a CSV"), (".tsv", "a TSV"), (".parquet", "a Parquet"),
                                      (".pq", "a Parquet"), (".jsonl", "a JSON lines"), (".json", "a JSON"),
                                      (".gz", "a compressed"), (".txt", "a text"))
                     if path.name.lower().endswith(ext)), "another kind of")
        raise DataError(f"{path}: not a DuckDB store ({kind} file, it seems); give --store a new or existing "
                        ".duckdb file, and the data file as the input")


def _out_of_memory(err: BaseException) -> bool:
    """DuckDB ran out of its memory limit (during a write or at commit)."""
    return isinstance(err, duckdb.OutOfMemoryException) or (
        isinstance(err, duckdb.Error) and ("failed to pin block" in str(err) or "Out of Memory" in str(err)))


class StoredEvent(NamedTuple):
    """An event as the store committed it (``seq``: its arrival number)."""

    event_id: str
    user_id: str
    item_id: str | None
    ts: datetime.datetime
    event_type: str
    value: float
    seq: int


@dataclass
class WriteResult:
    added: int
    duplicates: int


class EventStore:
    """A DuckDB-backed event store. Thread-safe for one process (a lock serialises writes)."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = str(path)
        if self.path != ":memory:":
            _check_store_path(Path(self.path))
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:     # a parent that is a file, no permission
                raise DataError(f"{self.path}: cannot create the store's folder {Path(self.path).parent} "
                                f"({e.strerror or e})") from None
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.Error as e:
            mapped = store_open_error(self.path, e)
            if mapped is None:
                raise
            raise mapped from None
        self._lock = threading.RLock()
        tables = {r[0] for r in self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
        if "events" not in tables and (read_only or tables):
            self.con.close()
            what = f"its tables are {sorted(tables)[:10]}" if tables else "it holds no table"
            raise DataError(f"{self.path}: a DuckDB database but not a valuerec event store ({what}); ingest "
                            "events into a new store with `valuerec ingest FILE --store NEW.duckdb`")
        if not read_only:
            self.con.execute(_SCHEMA)
        # Stores written before event_id became the primary key fall back to an anti-join.
        self._has_pk = bool(self.con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'events' "
            "AND constraint_type = 'PRIMARY KEY'").fetchall()[0][0])

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "EventStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------
    def _rollback(self) -> None:
        """Roll back the open transaction. A COMMIT that failed (e.g. out of memory) has already ended
        it, and a second error must not hide the first."""
        try:
            self.con.execute("ROLLBACK")
        except duckdb.TransactionException as e:
            if "no transaction is active" not in str(e):
                raise

    def add_events(self, events: pd.DataFrame, items: pd.DataFrame | None = None,
                   source: str | None = None, sha256: str | None = None, *, checked: bool = False) -> WriteResult:
        """Append events (schema columns) and upsert items, in one transaction.

        The events are checked with the rules of file ingest (``ingest.check_event_frame``): timestamps
        must be datetimes or ISO 8601 strings (numbers are refused: convert unix seconds with
        ``pd.to_datetime(x, unit='s')``), values and quantities finite and not negative, ids not empty or
        floats; event types are stripped and lower-cased. Any bad row is one DataError naming the column
        and row index, and nothing is written. ``checked=True`` skips the checks for a frame that has
        already passed them (ingest's adapters).

        Events whose ``event_id`` is already stored, or repeated within the batch, are dropped and
        counted as duplicates. A missing ``event_id`` is filled with the event's content hash.
        """
        # unchecked frames need only the required columns: the checks fill the others as file ingest does
        # (no item: a value-only event; the default event type; value and quantity defaults)
        need = EVENT_COLUMNS if checked else REQUIRED_EVENT_COLUMNS
        missing = [c for c in need if c not in events.columns and c != "event_id"]
        if missing:
            raise DataError(f"events are missing column(s) {missing}")
        if not checked:
            from valuerec.data.ingest import check_event_frame   # ingest imports this module
            events = check_event_frame(events)
        return self.add_event_stream([events], items, source, sha256)

    def add_event_stream(self, frames, items: pd.DataFrame | None = None, source: str | None = None,
                         sha256: str | None = None) -> WriteResult:
        """Append checked event frames (e.g. ``ingest.iter_events``' chunks) and upsert items, all in
        one transaction: an error from the iterator (a bad row anywhere in a file) rolls back every
        frame written before it. Duplicates as in ``add_events``, also across frames."""
        added = n_in = 0
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                for events in frames:
                    n_in += len(events)
                    added += self._insert_events(events)
                if items is not None and len(items):
                    self._upsert_items(items)
                if source is not None:
                    self.con.execute(
                        "INSERT INTO ingests (source, sha256, added, duplicates) VALUES (?, ?, ?, ?)",
                        [source, sha256, added, n_in - added],
                    ).fetchall()
                self.con.execute("COMMIT")
            except BaseException as e:
                self._rollback()
                try:
                    self.con.unregister("_new_events")
                except duckdb.Error:
                    pass
                if _out_of_memory(e):
                    why = " ".join(str(e).split("Possible solutions")[0].split())
                    raise DataError(f"{source or 'events'}: the store ran out of memory writing {n_in:,} events in "
                                    f"one transaction ({why}); nothing was written. "
                                    "Split the file and ingest the parts one by one (each is all or nothing), "
                                    "or run on a machine with more memory") from None
                raise
        return WriteResult(added=int(added), duplicates=int(n_in - added))

    def _insert_events(self, events: pd.DataFrame) -> int:
        """Insert one checked frame inside the caller's transaction; returns how many were added."""
        ev = events.copy()
        if "event_id" not in ev.columns:
            ev["event_id"] = None
        no_id = ev["event_id"].isna()
        if no_id.any():
            ev.loc[no_id, "event_id"] = event_hash(ev.loc[no_id])
        ev["event_id"] = ev["event_id"].astype(str)
        ev = ev[EVENT_COLUMNS]
        given = ~no_id.to_numpy()
        if given.any():
            _refuse_repeated_ids(ev[given])
        ev = ev.drop_duplicates("event_id", keep="first")
        ev = ev.rename(columns={"timestamp": "ts"})
        ev["ts"] = pd.to_datetime(ev["ts"]).astype("datetime64[us]")
        ev["order_in_batch"] = np.arange(len(ev), dtype=np.int64)
        # Registered as an Arrow table, not the DataFrame: DuckDB's scan of pandas object (string) columns
        # leaves more memory behind in the open transaction (benchmarks/ingest_memory_probe.py), and
        # ingest keeps one transaction open over every chunk of a file.
        self.con.register("_new_events", pa.Table.from_pandas(ev, preserve_index=False))
        if given.any():
            self._refuse_changed_ids()
        try:
            if self._has_pk:
                # The primary key index finds already-stored ids without scanning the table.
                added = self.con.execute(
                    """
                    INSERT INTO events
                    SELECT event_id, user_id, item_id, ts, event_type, value, quantity, nextval('event_seq')
                    FROM (SELECT * FROM _new_events ORDER BY order_in_batch)
                    ON CONFLICT DO NOTHING
                    """
                ).fetchall()[0][0]
            else:
                added = self.con.execute(
                    """
                    INSERT INTO events
                    SELECT n.event_id, n.user_id, n.item_id, n.ts, n.event_type, n.value, n.quantity,
                           nextval('event_seq')
                    FROM (SELECT * FROM _new_events ORDER BY order_in_batch) n
                    ANTI JOIN events e ON e.event_id = n.event_id
                    ORDER BY n.order_in_batch
                    """
                ).fetchall()[0][0]
        except duckdb.Error:
            raise           # the transaction is aborted: add_event_stream rolls back, then unregisters
        self.con.unregister("_new_events")
        return int(added)

    def _refuse_changed_ids(self) -> None:
        """An event id given in the data that is already stored (or came earlier in this transaction)
        with other content is an error, not a duplicate to skip: the new content would be lost."""
        cols = ("user_id", "item_id", "ts", "event_type", "value", "quantity")
        differs = " OR ".join(f"n.{c} IS DISTINCT FROM e.{c}" for c in cols)
        rows = self.con.execute(
            f"SELECT n.event_id, {', '.join(f'e.{c}' for c in cols)}, {', '.join(f'n.{c}' for c in cols)} "
            f"FROM _new_events n JOIN events e ON e.event_id = n.event_id WHERE {differs} "
            "ORDER BY n.order_in_batch LIMIT 6").fetchall()
        if rows:
            shown = []
            for r in rows[:5]:
                old, new = dict(zip(cols, r[1:7])), dict(zip(cols, r[7:13]))
                diff = ", ".join(f"{c} {_plain(old[c])} stored, {_plain(new[c])} given" for c in cols
                                 if not _same(old[c], new[c]))
                shown.append(f"{r[0]!r} ({diff})")
            raise DataError("event ids already stored with different content: " + "; ".join(shown)
                            + ("; ..." if len(rows) > 5 else "") + ". An event id names one event: give the "
                            "changed events new ids (or none, to key them by their content); nothing was written")

    def add_event_rows(self, rows: Sequence[tuple], chunk: int = 256) -> tuple[list[StoredEvent], int]:
        """Append validated events given as tuples in schema order (event_id, user_id, item_id,
        timestamp, event_type, value, quantity), in one transaction; returns (the newly stored events
        in arrival order, how many were duplicates).

        The path for small batches (the HTTP service): plain parametrised INSERTs, no DataFrame, and
        the stored rows come back from the same statement. Same rules as ``add_events``: a missing
        event_id becomes the content hash; an id already stored, or repeated in the batch, is skipped."""
        seen: set[str] = set()
        todo = []
        for r in rows:
            eid = r[0] if r[0] is not None else row_event_id(r[1], r[2], r[3], r[4], r[5], r[6])
            if eid in seen:
                continue
            seen.add(eid)
            todo.append((str(eid), r[1], r[2], pd.Timestamp(r[3]).to_pydatetime(), r[4], float(r[5]), float(r[6])))
        stored: list[StoredEvent] = []
        if not self._has_pk:    # an old store without the key: the DataFrame path's anti-join keeps it idempotent
            df = pd.DataFrame(todo, columns=EVENT_COLUMNS)
            with self._lock:
                res = self.add_events(df, checked=True)
                if res.added:
                    got = self.con.execute(
                        "SELECT event_id, user_id, item_id, ts, event_type, value, seq FROM events "
                        "WHERE event_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY seq",
                        [[t[0] for t in todo]]).fetchall()
                    stored = [StoredEvent(*g) for g in got][-res.added:]
            return stored, len(rows) - len(stored)
        def insert(part: list[tuple]) -> None:
            sql = ("INSERT INTO events VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, nextval('event_seq'))"] * len(part))
                   + " ON CONFLICT DO NOTHING RETURNING event_id, user_id, item_id, ts, event_type, value, seq")
            stored.extend(StoredEvent(*g) for g in self.con.execute(sql, [x for t in part for x in t]).fetchall())

        with self._lock:
            if len(todo) <= chunk:
                insert(todo)        # one statement: its own transaction
            else:
                self.con.execute("BEGIN TRANSACTION")
                try:
                    for a in range(0, len(todo), chunk):
                        insert(todo[a:a + chunk])
                    self.con.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
        stored.sort(key=lambda e: e.seq)
        return stored, len(rows) - len(stored)

    def _upsert_items(self, items: pd.DataFrame) -> None:
        if "item_id" not in items.columns:
            raise DataError(f"items: missing column 'item_id'; the frame has {sorted(map(str, items.columns))}")
        empty = np.flatnonzero((items["item_id"].isna() | (items["item_id"].astype(str).str.strip() == "")).to_numpy())
        if len(empty):
            raise DataError(f"items: {len(empty)} row(s) with an empty item_id (rows {items.index[empty[:20]].tolist()}"
                            f"{' ...' if len(empty) > 20 else ''}); nothing was written")
        it = items.copy()
        for c in ITEM_COLUMNS:
            if c not in it.columns:
                it[c] = None
        it = it[ITEM_COLUMNS].drop_duplicates("item_id", keep="last")
        it["item_id"] = it["item_id"].astype(str)
        it["attributes"] = it["attributes"].map(
            lambda a: None if a is None or (isinstance(a, float) and np.isnan(a))
            else (a if isinstance(a, str) else json.dumps(list(a)))
        )
        it["price"] = pd.to_numeric(it["price"], errors="coerce")
        it["text"] = it["text"].astype(object).where(it["text"].notna(), None)
        self.con.register("_new_items", it)
        # Keep known fields where the new row has none (an event-only batch must not erase text).
        self.con.execute(
            """
            INSERT INTO items SELECT item_id, text, attributes, price FROM _new_items
            ON CONFLICT (item_id) DO UPDATE SET
                text = COALESCE(excluded.text, items.text),
                attributes = COALESCE(excluded.attributes, items.attributes),
                price = COALESCE(excluded.price, items.price)
            """
        ).fetchall()
        self.con.unregister("_new_items")

    def add_items(self, items: pd.DataFrame) -> None:
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                self._upsert_items(items)
                self.con.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def delete_user(self, user_id: str) -> int:
        """Erase every event of a user (privacy). Returns how many were removed."""
        with self._lock:
            n = self.con.execute("SELECT count(*) FROM events WHERE user_id = ?", [user_id]).fetchall()[0][0]
            self.con.execute("DELETE FROM events WHERE user_id = ?", [user_id]).fetchall()
        return int(n)

    def snapshot(self, dest: str | Path) -> Path:
        """A consistent copy of the whole store in a new DuckDB file ``dest`` (events, items, ingest log,
        the arrival counter), written beside it and then moved in. It is read on a cursor of its own,
        as one transaction: writes go on meanwhile, and the copy holds what was committed when it
        began. What a running service hands to ``valuerec retrain``, which cannot open the store the
        service holds."""
        dest = Path(dest)
        if dest.exists():
            raise DataError(f"{dest}: exists; a snapshot is written to a new file")
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.partial")
        with self._lock:
            cur = self.con.cursor()
        try:
            db = cur.execute("SELECT current_database()").fetchall()[0][0]
            alias = f"snapshot_{threading.get_ident()}"
            cur.execute(f"ATTACH '{str(tmp).replace(chr(39), chr(39) * 2)}' AS {alias}")
            try:
                cur.execute(f'COPY FROM DATABASE "{db}" TO {alias}')
            finally:
                cur.execute(f"DETACH {alias}")
            tmp.replace(dest)
        except BaseException:
            for p in (tmp, tmp.with_name(tmp.name + ".wal")):
                p.unlink(missing_ok=True)
            raise
        finally:
            cur.close()
        return dest

    # -- reads ----------------------------------------------------------------------------------
    def count_events(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM events").fetchall()[0][0])

    def has_event_ids(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        with self._lock:
            df = self.con.execute(
                "SELECT event_id FROM events WHERE event_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
            ).fetchdf()
        return set(df["event_id"])

    def events(self, where: str | None = None, params: list | None = None) -> pd.DataFrame:
        """Events as a DataFrame with schema column names, ordered by user, time, arrival."""
        sql = ("SELECT event_id, user_id, item_id, ts AS timestamp, event_type, value, quantity, seq "
               "FROM events")
        if where:
            sql += f" WHERE {where}"
        sql += " ORDER BY user_id, ts, seq"
        with self._lock:
            return self.con.execute(sql, params or []).fetchdf()

    def item_counts(self) -> pd.Series:
        """Events per item id, most first (ties by id): the store's popularity."""
        with self._lock:
            rows = self.con.execute("SELECT item_id, count(*) AS n FROM events WHERE item_id IS NOT NULL "
                                    "GROUP BY item_id ORDER BY n DESC, item_id").fetchall()
        return pd.Series([r[1] for r in rows], index=[str(r[0]) for r in rows], dtype=np.int64)

    def user_events(self, user_id: str) -> pd.DataFrame:
        return self.events("user_id = ?", [user_id])

    def items(self) -> pd.DataFrame:
        with self._lock:
            df = self.con.execute("SELECT item_id, text, attributes, price FROM items ORDER BY item_id").fetchdf()
        df["attributes"] = df["attributes"].map(lambda s: json.loads(s) if isinstance(s, str) else None)
        return df

    def event_types(self) -> list[str]:
        """The distinct event types stored."""
        with self._lock:
            return [r[0] for r in self.con.execute("SELECT DISTINCT event_type FROM events").fetchall()]

    def looks_pseudonymised(self) -> bool:
        """Whether the stored user ids look like ingest's keyed hashes (``u_`` and 20 hex digits)."""
        import re
        with self._lock:
            rows = self.con.execute("SELECT user_id FROM events USING SAMPLE 20 ROWS").fetchall()
        return bool(rows) and all(re.fullmatch(r"u_[0-9a-f]{20}", str(r[0])) for r in rows)

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        lo, hi = self.con.execute("SELECT min(ts), max(ts) FROM events").fetchall()[0]
        if lo is None:
            return None
        return pd.Timestamp(lo), pd.Timestamp(hi)

    def summary(self) -> dict:
        with self._lock:
            n_ev, n_users, n_items = self.con.execute(
                "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM events"
            ).fetchall()[0]
            by_type = dict(self.con.execute(
                "SELECT event_type, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC").fetchall())
            n_cat = self.con.execute("SELECT count(*) FROM items").fetchall()[0][0]
        tr = self.time_range()
        return {
            "events": int(n_ev), "users": int(n_users), "items_with_events": int(n_items),
            "item_table": int(n_cat), "event_types": {k: int(v) for k, v in by_type.items()},
            "first": str(tr[0]) if tr else None, "last": str(tr[1]) if tr else None,
        }
