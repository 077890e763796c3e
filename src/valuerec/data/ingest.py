"""Adapters from raw files to the event schema, with validation that names file, line, field and reason.

Three adapters:
- generic CSV / Parquet / JSONL with a column mapping (``read_events``);
- Online Retail (UCI), cleaned as in BENCHMARKS.md V1 (``read_online_retail``);
- the S3-Rec sequence format, ``user item item ...`` per line (``read_s3rec``).

Every adapter returns ``(events, items, report)``; nothing touches the store until the whole file has
validated, and then ``EventStore.add_events`` writes it in one transaction.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from valuerec.data.schema import (DEFAULT_EVENT_TYPE, EARLIEST_DATE, EVENT_TYPES, MAX_NUMBER, MONETARY_TYPES,
                                  DataError)
from valuerec.data.store import EventStore

MAX_PROBLEMS_SHOWN = 20


@dataclass
class ColumnMap:
    """Which source column holds each schema field. ``None`` means "use the schema name"."""

    user: str | None = None
    item: str | None = None
    time: str | None = None
    value: str | None = None
    event: str | None = None
    quantity: str | None = None
    event_id: str | None = None
    time_format: str | None = None  # strftime format, "unix" (seconds) or "unix_ms"; None = ISO-ish


@dataclass
class IngestReport:
    source: str
    rows_read: int = 0
    events: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    added: int = 0
    duplicates: int = 0
    trimmed_ids: dict[str, int] = field(default_factory=dict)   # field -> ids with spaces around them
    float_ids: dict[str, int] = field(default_factory=dict)     # field -> text ids like '17850.0'
    other_types: dict[str, int] = field(default_factory=dict)   # event type -> events the models read as 'other'
    item_table: int = 0                 # rows of the item table given
    item_table_without_events: int = 0  # of those, ids no stored event has

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def notes(self) -> list[str]:
        """What ingest changed or what the models will not tell apart, for the user to know."""
        out = [f"{n:,} {f.replace('_id', '')} id value(s) had spaces around them, stored without (\"bob \" is \"bob\"; "
               "look them up without the spaces)" for f, n in self.trimmed_ids.items() if n]
        for f, n in self.float_ids.items():
            if n:
                out.append(f"{n:,} {f.replace('_id', '')} id value(s) look like numbers written as floats "
                           f"('17850.0'): stored as written, so '17850' in another file would be another id")
        if self.item_table and self.item_table_without_events == self.item_table:
            out.append(f"none of the item table's {self.item_table:,} ids matches an event's item id: are they "
                       "written the same way (e.g. '12' against '12.0', or another id column)?")
        elif self.item_table_without_events:
            out.append(f"{self.item_table_without_events:,} of the item table's {self.item_table:,} items have no "
                       "events (yet): the transformer scores them by their text / attributes")
        if self.other_types:
            kinds = ", ".join(f"{t!r} ({n:,})" for t, n in sorted(self.other_types.items()))
            out.append(f"event type(s) {kinds} are stored as given, but the models read every type outside "
                       f"{', '.join(EVENT_TYPES)} as 'other', so they cannot tell these apart")
        return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- pseudonymisation -----------------------------------------------------------------------------
def load_pseudonymisation_key(key_file: str | None = None) -> bytes:
    """The key comes from a file outside the store or from $VALUEREC_PSEUDONYM_KEY; never stored."""
    if key_file:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as e:
            raise DataError(f"--pseudonymise-key-file {key_file}: cannot read it ({e.strerror or e})") from None
    else:
        key = os.environ.get("VALUEREC_PSEUDONYM_KEY", "").encode()
    if len(key) < 16:
        raise DataError("pseudonymisation key must be at least 16 bytes "
                        "(give --pseudonymise-key-file or set VALUEREC_PSEUDONYM_KEY)")
    return key


def pseudonymise(user_ids: pd.Series, key: bytes) -> pd.Series:
    """Keyed hash (HMAC-SHA256) of each user id: stable for one key, not reversible without it."""
    uniq = user_ids.unique()
    mapping = {u: "u_" + hmac.new(key, str(u).encode(), hashlib.sha256).hexdigest()[:20] for u in uniq}
    return user_ids.map(mapping)


# -- validation helpers -----------------------------------------------------------------------------
class _Problems:
    def __init__(self, path: str, unit: str = "line"):
        self.path, self.unit = path, unit
        self.items: list[str] = []
        self.count = 0

    def add(self, line: int | str, fld: str, reason: str) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS_SHOWN:
            self.items.append(f"{self.path}, {self.unit} {line}, field '{fld}': {reason}")

    def add_mask(self, mask: np.ndarray, lines: np.ndarray, fld: str, values: pd.Series, reason: str) -> None:
        idx = np.flatnonzero(mask)
        self.count += len(idx)
        room = MAX_PROBLEMS_SHOWN - len(self.items)
        for i in idx[: max(room, 0)]:
            v = values.iloc[i]
            v = v.item() if isinstance(v, np.generic) else v     # 17, not np.int64(17)
            self.items.append(f"{self.path}, {self.unit} {lines[i]}, field '{fld}': {reason} (got {v!r})")

    def raise_if_any(self) -> None:
        if self.count:
            raise DataError(f"{self.path}: {self.count} problem(s); nothing was written",
                            self.items, self.count)


def parse_timestamps(raw: pd.Series, time_format: str | None) -> pd.Series:
    """Naive UTC timestamps, as the HTTP service stores them: a time with an offset (``+05:00``,
    ``Z``) is converted to UTC, a time without one is taken as UTC."""
    s = raw.astype("string").str.strip()
    if time_format in ("unix", "unix_s"):
        return pd.to_datetime(pd.to_numeric(s, errors="coerce"), unit="s", errors="coerce")
    if time_format == "unix_ms":
        return pd.to_datetime(pd.to_numeric(s, errors="coerce"), unit="ms", errors="coerce")
    if time_format:
        try:
            return _naive_utc(pd.to_datetime(s, format=time_format, errors="coerce", utc=True))
        except ValueError as e:
            raise DataError(f"--time-format {time_format!r}: {e}") from None
    try:
        return _naive_utc(pd.to_datetime(s, format="ISO8601", errors="coerce", utc=True))
    except (ValueError, TypeError):
        return _naive_utc(pd.to_datetime(s, errors="coerce", format="mixed", utc=True))


def _naive_utc(ts: pd.Series) -> pd.Series:
    return ts.dt.tz_convert("UTC").dt.tz_localize(None) if ts.dt.tz is not None else ts


# A time more than a day past the clock, or before 1900, is almost always a wrong year or unit.
EARLIEST_TIME = pd.Timestamp(EARLIEST_DATE)
FUTURE_SLACK = pd.Timedelta(days=1)
# Epoch input whose dates all fall before this is in the wrong unit (an event log from 1970 is not plausible).
EPOCH_UNIT_CHECK = pd.Timestamp("1971-01-01")


def _check_time_range(problems: _Problems, ts: pd.Series, lines: np.ndarray, fld: str, raw: pd.Series) -> None:
    """Flag parsed timestamps in the future (beyond a day of slack) or before 1900."""
    latest = pd.Timestamp.now(tz="UTC").tz_localize(None) + FUTURE_SLACK
    for mask, why in ((ts > latest, "is in the future ({t} UTC, more than 1 day after the current clock)"),
                      (ts < EARLIEST_TIME, "is before 1900-01-01 ({t} UTC; implausible, wrong year or unit?)")):
        for i in np.flatnonzero(mask.fillna(False).to_numpy()):
            problems.add(lines[i], fld, f"{raw.iloc[i]} " + why.format(t=ts.iloc[i]))


def _check_scalars(problems: _Problems, raw: pd.Series, lines: np.ndarray, fld: str) -> None:
    """Flag JSON objects, lists and booleans (JSONL, Parquet) where an id or a name is expected."""
    if pd.api.types.is_bool_dtype(raw):
        kinds = pd.Series("a boolean", index=raw.index)
    elif raw.dtype == object:
        kinds = raw.map(lambda v: "an object" if isinstance(v, dict)
                        else "a list" if isinstance(v, (list, tuple, np.ndarray))
                        else "a boolean" if isinstance(v, (bool, np.bool_)) else None)
    else:
        return
    for i in np.flatnonzero(kinds.notna().to_numpy()):
        problems.add(lines[i], fld, f"expected a string or number, got {kinds.iloc[i]} ({raw.iloc[i]!r})")


def _numeric(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.astype(float)
    return pd.to_numeric(raw.astype("string").str.strip(), errors="coerce")


# What reading a broken .gz raises: a truncated file (EOFError), one that is not gzip (BadGzipFile, an
# OSError), a corrupt stream (zlib.error).
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _bad_gzip(path: Path, err: Exception) -> DataError:
    return DataError(f"{path}: not a valid or complete gzip file ({type(err).__name__}: {err or 'truncated'}); "
                     "download or compress it again")


def _not_utf8(path: Path, err: UnicodeDecodeError) -> DataError:
    """The first line of ``path`` that is not UTF-8, as a DataError naming the line and the byte."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            for ln, line in enumerate(f, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    return DataError(f"{path}, line {ln}: not UTF-8 (byte 0x{line[e.start]:02x} at column "
                                     f"{e.start + 1}); save the file as UTF-8")
    except OSError:
        pass
    return DataError(f"{path}: not UTF-8 (byte 0x{err.object[err.start]:02x}: {err.reason}); save the file as UTF-8")


# -- generic adapter --------------------------------------------------------------------------------
# Event files are read, checked and written this many rows at a time (all in one transaction), so a
# file of any size ingests in bounded memory.
CHUNK_ROWS = 500_000


def _read_table(path: Path, sep: str | None, no_header: bool, columns: list[str] | None) -> tuple[pd.DataFrame, int]:
    """Read a whole file as strings. Returns the frame and the line number of its first data row."""
    parts = list(_iter_table(path, sep, no_header, columns, None))
    if len(parts) == 1:
        return parts[0]
    return pd.concat([f for f, _ in parts], ignore_index=True), parts[0][1]


def _table_kind(path: Path, fmt: str | None = None) -> str:
    """csv, jsonl or parquet: ``fmt`` when it names one (an explicit --format), else from the file name."""
    if fmt in ("csv", "jsonl", "parquet"):
        return fmt
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")):
        return "jsonl"
    return "csv"


def _iter_table(path: Path, sep: str | None, no_header: bool, columns: list[str] | None,
                chunk_rows: int | None, fmt: str | None = None) -> Iterator[tuple[pd.DataFrame, int]]:
    """Read a file as strings, ``chunk_rows`` rows at a time (None: all at once). Yields each frame
    and the line number of its first row; always at least one frame (empty when the file has no rows).
    ``fmt`` (csv, jsonl, parquet) overrides the file name's extension."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (no header, no rows)")
    kind = _table_kind(path, fmt)
    if kind != "parquet":
        with open(path, "rb") as f:
            if f.read(4) == b"PAR1":      # read as text it would fail on some line's field count
                raise DataError(f"{path}: is a Parquet file, not {kind} text"
                                + ("; drop --format" if fmt in ("csv", "jsonl") else "; use --format parquet"))
    try:
        yield from _iter_table_utf8(path, sep, no_header, columns, chunk_rows, kind)
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    except GZIP_ERRORS as e:
        raise _bad_gzip(path, e) from None


def _chunks(reader) -> Iterator[pd.DataFrame]:
    """pandas' reader with a chunksize is an iterator of frames; without, one frame."""
    if isinstance(reader, pd.DataFrame):
        yield reader
    else:
        with reader:
            yield from reader


def _iter_table_utf8(path: Path, sep: str | None, no_header: bool, columns: list[str] | None,
                     chunk_rows: int | None, kind: str) -> Iterator[tuple[pd.DataFrame, int]]:
    if sep is None and path.name.lower().endswith((".tsv", ".tsv.gz")):
        sep = "\t"
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            pf = pq.ParquetFile(path)
            batches = pf.iter_batches(batch_size=chunk_rows or max(pf.metadata.num_rows, 1))
            line, any_rows = 1, False
            for batch in batches:
                df = batch.to_pandas(integer_object_nulls=True)   # ints with a gap stay ints, not floats
                yield df.astype(object).where(df.notna(), None), line
                line += len(df)
                any_rows = True
            if not any_rows:
                yield pf.schema_arrow.empty_table().to_pandas(), 1
        except (ValueError, OSError, pa.ArrowException) as e:   # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: not a Parquet file ({e})") from None
        return
    if kind == "jsonl":
        try:
            line = 1
            for df in _chunks(pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows)):
                yield df, line
                line += len(df)
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON lines ({e})") from None
        return
    if no_header:
        if not columns:
            raise DataError(f"{path}: --no-header needs --columns a,b,c naming each column")
        _no_repeats(columns, "--columns names")
        try:
            line = 1
            # read without names, so a row with more fields than --columns is an error (with names,
            # pandas takes the extra leading fields as the index: an id "alice smith" split on the
            # whitespace would silently become "smith")
            for df in _chunks(pd.read_csv(path, sep=sep or r"\s+", header=None, dtype=str,
                                          keep_default_na=False, na_values=[""], chunksize=chunk_rows,
                                          engine="python" if sep is None else "c")):
                df = df.reset_index(drop=True)
                if df.shape[1] > len(columns):
                    extra = df.iloc[:, len(columns):].notna().any(axis=1).to_numpy()
                    if not extra.any():       # only empty fields past the last column: a trailing separator
                        df = df.iloc[:, :len(columns)]
                    else:
                        r = int(np.flatnonzero(extra)[0])
                        n = int(np.flatnonzero(df.iloc[r].notna().to_numpy())[-1]) + 1
                        raise DataError(f"{path}, line {line + r}: {n} fields, expected {len(columns)} (the names "
                                        f"in --columns){' (a value with spaces? give --sep)' if sep is None else ''}")
                if df.shape[1] < len(columns):
                    df = df.reindex(columns=range(len(columns)))
                df.columns = columns
                yield df, line
                line += len(df)
        except pd.errors.ParserError as e:
            m = _TOO_MANY_FIELDS.search(str(e))
            if m:
                raise DataError(f"{path}, line {m[2]}: {m[3]} fields, expected {m[1]} (the names in --columns)") from None
            raise DataError(f"{path}: cannot parse as delimited text with separator "
                            f"{sep or 'whitespace'!r}: {e}") from None
        return
    # The header is read as a row, so a row with more fields than the header is an error rather than
    # silently shifting every column (pandas takes an extra first field as the index).
    try:
        header, line = None, 2
        for df in _chunks(pd.read_csv(path, sep=sep or ",", header=None, dtype=str, keep_default_na=False,
                                      na_values=[""], chunksize=chunk_rows)):
            if header is None:
                header = [f"Unnamed: {i}" if h is None or h != h else str(h) for i, h in enumerate(df.iloc[0])]
                _no_repeats(header, f"{path}: the header names")
                df = df.iloc[1:]
            df = df.reset_index(drop=True)
            if df.shape[1] < len(header):    # a later chunk whose rows all have fewer fields
                df = df.reindex(columns=range(len(header)))
            df.columns = header
            yield df, line
            line += len(df)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no header, no rows)") from None
    except pd.errors.ParserError as e:
        m = _TOO_MANY_FIELDS.search(str(e))
        if m:
            raise DataError(f"{path}, line {m[2]} has {m[3]} fields, the header has {m[1]} "
                            "(a trailing delimiter, or a value that needs quotes?)") from None
        raise DataError(f"{path}: cannot parse as delimited text with separator {sep or ','!r}: {e}") from None


_TOO_MANY_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _no_repeats(names: list[str], what: str) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names, start=1):
        if n in seen:
            raise DataError(f"{what} {n!r} twice (columns {seen[n]} and {i}); rename or drop one")
        seen[n] = i


def read_events(path: str | Path, cmap: ColumnMap | None = None, sep: str | None = None,
                no_header: bool = False, columns: list[str] | None = None,
                default_event_type: str = DEFAULT_EVENT_TYPE) -> tuple[pd.DataFrame, pd.DataFrame, IngestReport]:
    """Read and validate a whole generic event file (CSV, TSV, Parquet, JSONL)."""
    report = IngestReport(source=str(path))
    parts = list(iter_events(path, cmap, sep, no_header, columns, default_event_type, None, report))
    out = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    return out.reset_index(drop=True), pd.DataFrame(columns=["item_id", "text", "attributes", "price"]), report


# The end of a missing-column error: `ingest`'s options; commands without them replace it.
MAP_COLUMNS_HINT = " Map columns with --user-col/--item-col/--time-col/--value-col/--event-col/--quantity-col."


def _field_columns(path: Path, present: set[str], cmap: ColumnMap) -> dict[str, str]:
    """Schema field -> source column, after checking that the required ones are there and that no
    column is mapped to two fields."""
    src = {
        "user_id": cmap.user or "user_id", "item_id": cmap.item or "item_id",
        "timestamp": cmap.time or "timestamp", "value": cmap.value or "value",
        "event_type": cmap.event or "event_type", "quantity": cmap.quantity or "quantity",
        "event_id": cmap.event_id or "event_id",
    }
    required = ["user_id", "timestamp"] + (["item_id"] if cmap.item else [])
    explicit = {"value": cmap.value, "event_type": cmap.event, "quantity": cmap.quantity, "event_id": cmap.event_id}
    missing = [f"'{src[f]}' (for {f})" for f in required if src[f] not in present]
    missing += [f"'{col}' (for {f})" for f, col in explicit.items() if col and col not in present]
    if missing:
        hint = ""
        if len(present) == 1:
            only = next(iter(present))
            for cand in [";", "\t", "|", ","]:
                if cand in only:
                    hint = f" The header is one column {only!r}: is the delimiter {cand!r}? Use --sep."
                    break
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the file has "
                        f"{sorted(present)}.{hint}{MAP_COLUMNS_HINT}")
    options = {"user_id": "--user-col", "item_id": "--item-col", "timestamp": "--time-col", "value": "--value-col",
               "event_type": "--event-col", "quantity": "--quantity-col", "event_id": "--event-id-col"}
    by_col: dict[str, list[str]] = {}
    for f, col in src.items():
        if col in present:
            by_col.setdefault(col, []).append(options[f])
    for col, opts in by_col.items():
        if len(opts) > 1:
            raise DataError(f"{path}: {' and '.join(opts)} {'both' if len(opts) == 2 else 'all'} name {col!r}; "
                            "map each field to its own column")
    return src


def _id_text(ids: pd.Series) -> pd.Series:
    """Ids read as numbers (JSON, Parquet): a whole float, which is how an integer column with a gap
    arrives, as the integer's text, so an id reads '5' in every chunk of a file, not '5.0' in a chunk
    where the column had a null."""
    if pd.api.types.is_float_dtype(ids):
        v = ids.to_numpy(dtype=float)
        whole = np.isfinite(v) & (np.floor(v) == v)
        if not whole.any():
            return ids
        out = ids.astype(object)
        out[whole] = [str(int(x)) for x in v[whole]]
        return out
    if ids.dtype == object:     # built by hand: Series.map would turn ints next to a None into floats
        def text(x):
            if isinstance(x, (float, np.floating)) and float(x).is_integer():
                return str(int(x))
            if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
                return str(x)
            return x
        return pd.Series([text(x) for x in ids.to_numpy()], index=ids.index, dtype=object)
    return ids


def iter_events(path: str | Path, cmap: ColumnMap | None = None, sep: str | None = None,
                no_header: bool = False, columns: list[str] | None = None,
                default_event_type: str = DEFAULT_EVENT_TYPE, chunk_rows: int | None = CHUNK_ROWS,
                report: IngestReport | None = None, fmt: str | None = None) -> Iterator[pd.DataFrame]:
    """Read and validate a generic event file ``chunk_rows`` rows at a time (None: all at once),
    yielding each chunk's events in the schema. The whole file is checked: after the first problem
    no more chunks are yielded, the rest is still read to list every problem (the first 20, then a
    count), and the generator ends with one DataError. Consume it inside a transaction that is
    rolled back on the error (``EventStore.add_event_stream``), so a bad file writes nothing.
    ``report`` (optional) is filled with the rows read and events yielded. ``fmt`` (csv, jsonl, parquet)
    overrides the file name's extension."""
    path = Path(path)
    cmap = cmap or ColumnMap()
    report = report if report is not None else IngestReport(source=str(path))
    problems = _Problems(str(path))
    expected_time = cmap.time_format or "ISO 8601 (e.g. 2011-09-09 08:26:00); set --time-format"
    src, seen = None, None
    monetary_before = 0     # purchase / return rows in the chunks read so far
    typed = _table_kind(path, fmt) != "csv"
    for df, first_line in _iter_table(path, sep, no_header, columns, chunk_rows, fmt):
        cols = [str(c) for c in df.columns]
        if src is None:
            src, seen = _field_columns(path, set(cols), cmap), cols
        elif cols != seen:   # JSON lines: a chunk without some key, or with a new one
            for c in (c for c in cols if c not in seen):
                # read whole, the lines before would have no number here: an error for each purchase or
                # return without a value or a quantity (a view's empty value is 0, its empty quantity 1)
                lacking = monetary_before if c in (src["quantity"], src["value"]) else 0
                if lacking:
                    at = int(np.flatnonzero(df[c].notna().to_numpy())[0]) if df[c].notna().any() else 0
                    problems.add(first_line + at, c, f"first given here; the {lacking:,} purchase or return "
                                                     "line(s) before this chunk lack it, and each needs a number")
            seen = seen + [c for c in cols if c not in seen]
            df = df.reindex(columns=seen)
        if len(df) == 0:
            continue
        if typed:     # CSV is read as text; JSON and Parquet ids can arrive as numbers
            for f in ("user_id", "item_id", "event_id"):
                if src[f] in df.columns:
                    df[src[f]] = _id_text(df[src[f]])
        report.rows_read += len(df)
        for f in ("user_id", "item_id"):
            if src[f] in df.columns:
                raw = df[src[f]].astype("string")
                n = int((raw.notna() & (raw != raw.str.strip())).sum())
                if n:
                    report.trimmed_ids[f] = report.trimmed_ids.get(f, 0) + n
                if not typed:   # a spreadsheet or pandas export of a float column (ids next to a gap)
                    dotted = raw[raw.str.contains(".", regex=False).fillna(False)]   # the regex on those only
                    nf = int(dotted.str.fullmatch(r"\s*-?\d+\.0+\s*").fillna(False).sum())
                    if nf:
                        report.float_ids[f] = report.float_ids.get(f, 0) + nf
        out = _check_rows(df, src, np.arange(len(df)) + first_line, problems, cmap.time_format, expected_time,
                          default_event_type)
        for t, n in out["event_type"][~out["event_type"].isin(EVENT_TYPES)].value_counts().items():
            report.other_types[str(t)] = report.other_types.get(str(t), 0) + int(n)
        monetary_before += int(out["event_type"].isin(MONETARY_TYPES).sum())
        if problems.count:
            continue
        out = out.astype({"user_id": object, "item_id": object, "event_type": object, "event_id": object})
        report.events += len(out)
        yield out.reset_index(drop=True)
    if report.rows_read == 0 and not problems.count:
        raise DataError(f"{path}: the file has a header but no rows")
    if monetary_before and src["value"] not in seen:     # every amount would be stored as 0
        raise DataError(f"{path}: {monetary_before:,} purchase or return event(s) but no value column "
                        f"{src['value']!r}; the file has {sorted(seen)}. Name the amount's column with --value-col")
    problems.raise_if_any()


def check_event_frame(events: pd.DataFrame, source: str = "events") -> pd.DataFrame:
    """An event frame given to ``EventStore.add_events``, checked with the rules of file ingest: one
    DataError naming the column and row index of each problem (the first 20, then a count).

    Timestamps must be datetimes (an offset is converted to naive UTC) or ISO 8601 strings; event
    types are stripped and lower-cased, and empty ones get the default type."""
    t = events["timestamp"]
    if pd.api.types.is_numeric_dtype(t) or pd.api.types.is_timedelta64_dtype(t):
        raise DataError(f"{source}: column 'timestamp' holds {t.dtype} numbers, not dates; convert them first, "
                        "e.g. pd.to_datetime(x, unit='s') for unix seconds")
    problems = _Problems(source, unit="row")
    lines = events.index.to_numpy()
    for fld in ("user_id", "item_id", "event_id"):      # e.g. ids read as floats next to NaN
        if fld in events.columns:
            whole = events[fld].map(lambda v: isinstance(v, (float, np.floating)) and float(v).is_integer())
            problems.add_mask(whole.to_numpy(dtype=bool), lines, fld, events[fld],
                              "a whole-number float is stored as text with '.0' (17293.0 -> '17293.0', not "
                              "'17293'); give ids as strings or integers")
    src = {f: f for f in ["user_id", "item_id", "timestamp", "value", "event_type", "quantity", "event_id"]}
    out = _check_rows(events, src, lines, problems, None,
                      "a datetime or an ISO 8601 string (e.g. 2011-09-09 08:26:00)", DEFAULT_EVENT_TYPE)
    problems.raise_if_any()
    return out.astype({"user_id": object, "item_id": object, "event_type": object, "event_id": object})


def _check_rows(df: pd.DataFrame, src: dict[str, str], lines: np.ndarray, problems: _Problems,
                time_format: str | None, expected_time: str, default_event_type: str) -> pd.DataFrame:
    """The per-row checks of event data (``src``: schema field -> column); adds to ``problems`` and
    returns the normalised events in the schema."""
    present = set(map(str, df.columns))
    for fld in ("user_id", "item_id", "event_type", "event_id"):
        if src[fld] in present:
            _check_scalars(problems, df[src[fld]], lines, src[fld])
    out = pd.DataFrame(index=df.index)

    user = df[src["user_id"]].astype("string").str.strip()
    problems.add_mask((user.isna() | (user == "")).to_numpy(), lines, src["user_id"], user, "empty user id")
    out["user_id"] = user

    if src["item_id"] in present:
        item = df[src["item_id"]].astype("string").str.strip()
        out["item_id"] = item.where(item != "", None)
    else:
        out["item_id"] = None  # value-only data: a plain transaction log

    raw_t = df[src["timestamp"]]
    if pd.api.types.is_datetime64_any_dtype(raw_t):
        ts = _naive_utc(raw_t)
    else:
        ts = parse_timestamps(raw_t, time_format)
    bad = ts.isna().to_numpy().copy()
    if time_format is None and bad.any():
        # whole numbers where dates were expected: most likely Unix time, which needs saying
        num = pd.to_numeric(raw_t.astype("string").str.strip(), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        unix = bad & np.isfinite(num)
        for mask, unit in ((unix & (np.abs(num) < 1e11), "unix"), (unix & (np.abs(num) >= 1e11), "unix_ms")):
            problems.add_mask(mask, lines, src["timestamp"], raw_t,
                              f"a number, not a date; if it is Unix time, pass --time-format {unit} "
                              f"({'seconds' if unit == 'unix' else 'milliseconds'})")
        bad &= ~unix
    problems.add_mask(bad, lines, src["timestamp"], raw_t, f"unparseable date, expected {expected_time}")
    _check_time_range(problems, ts, lines, src["timestamp"], raw_t)
    if time_format == "unix_ms" and ts.notna().any() and (ts.dropna() < EPOCH_UNIT_CHECK).all():
        # every date in 1970: seconds read as milliseconds (seconds read as ms land 1000x closer to 1970)
        problems.add_mask(ts.notna().to_numpy(), lines, src["timestamp"], raw_t,
                          f"with --time-format unix_ms every date is before {EPOCH_UNIT_CHECK:%Y-%m-%d}; "
                          "the numbers look like seconds: pass --time-format unix")
    out["timestamp"] = ts

    if src["event_type"] in present:
        types = df[src["event_type"]].astype("string").str.strip().str.lower()
        types = types.fillna(default_event_type).replace("", default_event_type)
    else:
        types = pd.Series(default_event_type, index=df.index, dtype="string")
    for fld, default in (("value", 0.0), ("quantity", 1.0)):
        if src[fld] in present:
            raw = df[src[fld]]
            num = _numeric(raw)
            # a view or a click has no amount: its empty value is 0 and its empty quantity 1 (click-stream
            # logs fill them on purchases only); a purchase or return needs both
            empty = (raw.isna() | (raw.astype("string").str.strip() == "")).fillna(True)
            num = num.where(~(empty & ~types.isin(MONETARY_TYPES)), default)
            bad_nan = num.isna().to_numpy()
            comma = np.zeros(len(raw), dtype=bool)      # the hint's regex only where the number is bad
            if bad_nan.any():
                comma[bad_nan] = raw[bad_nan].astype("string").str.fullmatch(r"\s*-?\d+,\d+\s*").fillna(False)
            problems.add_mask(bad_nan & comma, lines, src[fld], raw,
                              "not a number: a decimal comma or a thousands separator? write 38.11 or 1234.5")
            problems.add_mask(bad_nan & ~comma, lines, src[fld], raw, "not a number (NaN or empty)")
            neg = (num < 0).fillna(False).to_numpy()
            problems.add_mask(neg, lines, src[fld], raw, "negative; record returns as event_type 'return' with a positive value")
            arr = num.to_numpy(dtype=float, na_value=0.0)
            problems.add_mask(np.isinf(arr), lines, src[fld], raw, "infinite")
            problems.add_mask(np.isfinite(arr) & (np.abs(arr) > MAX_NUMBER), lines, src[fld], raw,
                              f"too large (above {MAX_NUMBER:.3g}, the largest number the models compute with)")
            out[fld] = num.astype(float)
        else:
            out[fld] = default

    out["event_type"] = types if src["event_type"] in present else default_event_type
    if src["event_id"] in present:
        eid = df[src["event_id"]].astype("string").str.strip()
        out["event_id"] = eid.where(eid != "", None)
    else:
        out["event_id"] = None
    return out


def read_items(path: str | Path, item_col: str = "item_id", text_col: str = "text",
               price_col: str = "price", attributes_col: str = "attributes", sep: str | None = None) -> pd.DataFrame:
    """Read an item table (CSV/Parquet/JSONL): item_id, free text, attributes (list or ';'-separated), price."""
    path = Path(path)
    df, first_line = _read_table(path, sep, False, None)
    if item_col not in df.columns:
        raise DataError(f"{path}: missing column '{item_col}' (for item_id); the file has {sorted(map(str, df.columns))}")
    if not {text_col, price_col, attributes_col} & set(map(str, df.columns)):    # would load as empty metadata
        raise DataError(f"{path}: no item column this reader uses; expected one or more of '{text_col}', "
                        f"'{price_col}', '{attributes_col}' next to '{item_col}'; the file has "
                        f"{sorted(map(str, df.columns))}. Rename the columns")
    problems = _Problems(str(path))
    lines = np.arange(len(df)) + first_line
    _check_scalars(problems, df[item_col], lines, item_col)
    ids = df[item_col].astype("string").str.strip()
    empty = (ids.isna() | (ids == "")).to_numpy()
    problems.add_mask(empty, lines, item_col, df[item_col], "empty item id")
    repeated = ids.duplicated(keep="first").to_numpy() & ~empty
    first_line = dict(zip(ids[~empty & ~repeated], lines[~empty & ~repeated]))
    for i in np.flatnonzero(repeated):
        problems.add(lines[i], item_col, f"item id {ids.iloc[i]!r} repeats line {first_line[ids.iloc[i]]}; "
                                         "give each item one row")
    out = pd.DataFrame({"item_id": ids.astype(object)})
    out["text"] = df[text_col] if text_col in df.columns else None
    if price_col in df.columns:
        raw = df[price_col]
        price = _numeric(raw)
        problems.add_mask((price < 0).fillna(False).to_numpy(), lines, price_col, raw, "negative price")
        parr = price.to_numpy(dtype=float, na_value=0.0)
        problems.add_mask(np.isinf(parr), lines, price_col, raw, "infinite price")
        problems.add_mask(np.isfinite(parr) & (np.abs(parr) > MAX_NUMBER), lines, price_col, raw,
                          f"price too large (above {MAX_NUMBER:.3g}, the largest number the models compute with)")
        problems.add_mask((price.isna() & raw.notna()).to_numpy(), lines, price_col, raw, "not a number")
        out["price"] = price
    else:
        out["price"] = None
    if attributes_col in df.columns:
        out["attributes"] = df[attributes_col].map(
            lambda a: a if isinstance(a, list) else ([x for x in str(a).split(";") if x] if a is not None and a == a else None))
    else:
        out["attributes"] = None
    problems.raise_if_any()
    return out


# -- Online Retail ------------------------------------------------------------------------------------
# Online Retail's stock codes that are not products (postage, carriage, discounts, manual adjustments,
# fees, commission, samples). The protocols keep them as items, as BENCHMARKS.md's cleaning does; a
# deployed model should not recommend them: ``train --never-recommend online-retail`` (the demo does).
ONLINE_RETAIL_NON_PRODUCTS = ("POST", "DOT", "C2", "M", "m", "D", "CRUK", "BANK CHARGES", "AMAZONFEE", "S", "B")

ONLINE_RETAIL_COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
                         "CustomerID", "Country"]


def read_online_retail(path: str | Path, time_format: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, IngestReport]:
    """UCI Online Retail, cleaned as in BENCHMARKS.md V1.

    Rows without CustomerID are dropped (guest checkouts). A purchase has Quantity > 0, UnitPrice > 0
    and an InvoiceNo not starting with 'C'; its value is Quantity x UnitPrice. Cancellations ('C'
    invoices) stay as ``return`` events with positive value and quantity. Other rows (zero-price
    lines, stock adjustments) are dropped and counted. Each line keeps its own event id
    (invoice:line), because an invoice may legitimately list the same product twice.

    InvoiceDate is read with ``time_format`` (as ``--time-format``) when given, else as
    ``2010-12-01 08:26:00``, or as the common export's ``12/1/2010 8:26`` (month first) when every
    row has that form and none the first.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    except GZIP_ERRORS as e:
        raise _bad_gzip(path, e) from None
    missing = [c for c in ONLINE_RETAIL_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: not an Online Retail file, missing column(s) {missing}")
    report = IngestReport(source=str(path), rows_read=len(df))
    lines = np.arange(len(df)) + 2
    problems = _Problems(str(path))
    qty = _numeric(df["Quantity"])
    price = _numeric(df["UnitPrice"])
    if time_format:
        ts = parse_timestamps(df["InvoiceDate"], time_format)
        expected = time_format
    else:
        ts = pd.to_datetime(df["InvoiceDate"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
        if len(ts) and ts.isna().all():
            us = pd.to_datetime(df["InvoiceDate"], format="%m/%d/%Y %H:%M", errors="coerce")
            ts = us if us.notna().all() else ts
        expected = "YYYY-MM-DD HH:MM:SS (or M/D/YYYY H:MM on every row); set --time-format"
    problems.add_mask(ts.isna().to_numpy(), lines, "InvoiceDate", df["InvoiceDate"], f"unparseable date, expected {expected}")
    _check_time_range(problems, ts, lines, "InvoiceDate", df["InvoiceDate"])
    problems.add_mask(qty.isna().to_numpy(), lines, "Quantity", df["Quantity"], "not a number")
    problems.add_mask(price.isna().to_numpy(), lines, "UnitPrice", df["UnitPrice"], "not a number")
    problems.raise_if_any()

    has_customer = df["CustomerID"].notna().to_numpy()
    invoice = df["InvoiceNo"].astype(str)
    is_cancel = invoice.str.startswith("C").to_numpy()
    is_purchase = has_customer & ~is_cancel & (qty > 0).to_numpy() & (price > 0).to_numpy()
    is_return = has_customer & is_cancel & (qty < 0).to_numpy() & (price > 0).to_numpy()
    report.dropped = {
        "no_customer_id": int((~has_customer).sum()),
        "not_purchase_or_return": int((has_customer & ~is_purchase & ~is_return).sum()),
    }
    keep = is_purchase | is_return
    cust = df["CustomerID"].astype(str).str.replace(r"\.0$", "", regex=True)
    events = pd.DataFrame({
        "event_id": (invoice + ":" + pd.Series(lines, index=df.index).astype(str))[keep].to_numpy(),
        "user_id": cust[keep].to_numpy(),
        "item_id": df["StockCode"].astype(str).str.strip()[keep].to_numpy(),
        "timestamp": ts[keep].to_numpy(),
        "event_type": np.where(is_purchase[keep], "purchase", "return"),
        "value": (qty.abs() * price)[keep].to_numpy(dtype=float),
        "quantity": qty.abs()[keep].to_numpy(dtype=float),
    })
    # Item table: the most frequent description of each stock code, its median unit price.
    rows = pd.DataFrame({"item_id": df["StockCode"].astype(str).str.strip(), "text": df["Description"],
                         "price": price})[keep]
    text = (rows.dropna(subset=["text"]).groupby(["item_id", "text"]).size().reset_index(name="n")
            .sort_values(["item_id", "n"], ascending=[True, False]).drop_duplicates("item_id"))
    items = rows.groupby("item_id", as_index=False)["price"].median().merge(
        text[["item_id", "text"]], on="item_id", how="left")
    items["attributes"] = None
    report.events = len(events)
    return events, items, report


# -- S3-Rec sequence format -----------------------------------------------------------------------------
S3REC_EPOCH = pd.Timestamp("2000-01-01")


def read_s3rec(path: str | Path, attributes: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, IngestReport]:
    """``user item item ...`` per line, items in time order. No timestamps survive in this format,
    so event k of a user gets time S3REC_EPOCH + k seconds: order is kept, gaps carry no meaning."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    users, items, pos = [], [], []
    problems = _Problems(str(path))
    try:
        with open(path, encoding="utf-8") as f:
            for ln, line in enumerate(f, start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    problems.add(ln, "items", "a user with no items")
                    continue
                users.extend([parts[0]] * (len(parts) - 1))
                items.extend(parts[1:])
                pos.extend(range(len(parts) - 1))
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    if not users and not problems.count:
        raise DataError(f"{path}: the file is empty")
    problems.raise_if_any()
    pos_arr = np.asarray(pos, dtype=np.int64)
    events = pd.DataFrame({
        "user_id": users, "item_id": items,
        "timestamp": S3REC_EPOCH + pd.to_timedelta(pos_arr, unit="s"),
        "event_type": "interaction", "value": 0.0, "quantity": 1.0,
    })
    # Position makes the id: a user may interact with the same item twice in this format.
    events["event_id"] = events["user_id"] + ":" + pd.Series(pos_arr).astype(str)
    item_df = pd.DataFrame({"item_id": pd.unique(events["item_id"])})
    item_df["text"], item_df["price"], item_df["attributes"] = None, None, None
    if attributes is not None:
        with open(attributes) as f:
            attrs = json.load(f)
        item_df["attributes"] = item_df["item_id"].map(lambda i: [str(a) for a in attrs.get(i, [])] or None)
    report = IngestReport(source=str(path), rows_read=len(events), events=len(events))
    return events, item_df, report


def find_attributes_file(path: str | Path) -> Path | None:
    p = Path(path)
    cand = p.with_name(p.stem + "_item2attributes.json")
    return cand if cand.exists() else None


# -- entry point ------------------------------------------------------------------------------------------
def ingest(store: EventStore, path: str | Path, fmt: str = "auto", cmap: ColumnMap | None = None,
           sep: str | None = None, no_header: bool = False, columns: list[str] | None = None,
           attributes: str | Path | None = None, items_path: str | Path | None = None,
           pseudonymise_key: bytes | None = None, event_type: str | None = None,
           chunk_rows: int | None = CHUNK_ROWS) -> IngestReport:
    """Validate a whole file and write it to the store in one transaction: a problem anywhere writes
    nothing. ``event_type``: the type of events whose row names none (default 'interaction'), e.g.
    'purchase' for a transaction log. Generic files (CSV, Parquet, JSONL) are read, checked and written
    ``chunk_rows`` rows at a time inside that transaction, so memory does not grow with the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise DataError(f"--event-type {event_type!r}: expected one of {EVENT_TYPES}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    explicit = fmt if fmt in ("csv", "parquet", "jsonl") else None     # --format over the file's extension
    if fmt == "auto":
        fmt = detect_format(path)
    if event_type is not None and fmt in ("online-retail", "s3rec"):
        raise DataError(f"--event-type is for generic event files (csv, parquet, jsonl); the {fmt} format sets "
                        "its own event types")
    if fmt in ("online-retail", "s3rec"):      # options these readers cannot use are refused, not dropped
        cm = cmap or ColumnMap()
        unused = [opt for opt, v in (("--user-col", cm.user), ("--item-col", cm.item), ("--time-col", cm.time),
                                     ("--value-col", cm.value), ("--event-col", cm.event),
                                     ("--quantity-col", cm.quantity), ("--event-id-col", cm.event_id),
                                     ("--time-format", cm.time_format if fmt == "s3rec" else None),
                                     ("--sep", sep), ("--no-header", no_header or None), ("--columns", columns))
                  if v is not None]
        if unused:
            raise DataError(f"{', '.join(unused)}: for generic event files (csv, parquet, jsonl); the {fmt} format "
                            "has fixed columns" + (" (it takes --time-format)" if fmt == "online-retail" else ""))
    if fmt == "online-retail":
        events, items, report = read_online_retail(path, (cmap or ColumnMap()).time_format)
    elif fmt == "s3rec":
        events, items, report = read_s3rec(path, attributes or find_attributes_file(path))
    elif fmt in ("csv", "parquet", "jsonl", "events"):
        # read, check and write chunk by chunk in one transaction: bounded memory, still all or nothing
        items = read_items(items_path) if items_path is not None else None
        report = IngestReport(source=str(path))
        chunks = iter_events(path, cmap, sep, no_header, columns, event_type or DEFAULT_EVENT_TYPE,
                             chunk_rows, report, explicit)
        if pseudonymise_key is not None:
            chunks = (c.assign(user_id=pseudonymise(c["user_id"], pseudonymise_key)) for c in chunks)
        res = store.add_event_stream(chunks, items, source=str(path), sha256=file_sha256(path))
        report.added, report.duplicates = res.added, res.duplicates
        _count_item_table(store, items, report)
        return report
    else:
        raise DataError(f"{path}: unknown format {fmt!r} (auto, csv, parquet, jsonl, online-retail, s3rec)")
    if items_path is not None:
        items = read_items(items_path)
    if pseudonymise_key is not None:
        events["user_id"] = pseudonymise(events["user_id"], pseudonymise_key)
        if "event_id" in events and events["event_id"].notna().any() and fmt == "s3rec":
            events["event_id"] = events["user_id"] + ":" + events["event_id"].str.split(":").str[-1]
    res = store.add_events(events, items, source=str(path), sha256=file_sha256(path), checked=True)
    report.added, report.duplicates = res.added, res.duplicates
    _count_item_table(store, items if items_path is not None else None, report)   # the user's own table
    return report


def _count_item_table(store, items: pd.DataFrame | None, report: IngestReport) -> None:
    """How many of an item table's ids no stored event has (all of them: likely written another way)."""
    if items is None or not len(items):
        return
    ids = items["item_id"].astype(str).tolist()
    with store._lock:
        seen = store.con.execute("SELECT count(DISTINCT item_id) FROM events WHERE item_id IN "
                                 "(SELECT unnest(?::VARCHAR[]))", [ids]).fetchall()[0][0]
    report.item_table = len(set(ids))
    report.item_table_without_events = report.item_table - int(seen)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")):
        return "jsonl"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        try:
            header = pd.read_csv(path, nrows=0).columns.tolist()
        except Exception:  # noqa: BLE001 - any unreadable header falls through to the generic reader
            header = []
        return "online-retail" if all(c in header for c in ONLINE_RETAIL_COLUMNS[:7]) else "csv"
    if name.endswith(".txt"):
        with open(path, errors="replace") as f:
            first = f.readline().split()
        if len(first) >= 2 and all(tok.isdigit() for tok in first):
            return "s3rec"
    return "csv"
