"""`valuerec ingest` and `valuerec store-info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.console import Console

from valuerec.commands.errors import cell, print_error
from valuerec.data.ingest import ColumnMap, ingest, load_pseudonymisation_key
from valuerec.data.schema import DataError
from valuerec.data.store import EventStore

console = Console(stderr=True)


def ingest_cmd(
    path: Path = typer.Argument(..., help="Event file: CSV/TSV, Parquet, JSONL, Online Retail CSV(.gz) or S3-Rec .txt"),
    store: Path = typer.Option(..., "--store", help="DuckDB event store file (created if missing)"),
    fmt: str = typer.Option("auto", "--format", help="auto, csv, parquet, jsonl, online-retail, s3rec"),
    user_col: Optional[str] = typer.Option(None, "--user-col"),
    item_col: Optional[str] = typer.Option(None, "--item-col"),
    time_col: Optional[str] = typer.Option(None, "--time-col"),
    value_col: Optional[str] = typer.Option(None, "--value-col"),
    event_col: Optional[str] = typer.Option(None, "--event-col"),
    event_type: Optional[str] = typer.Option(None, "--event-type", help="Type of the events whose row names none "
                                             "(default interaction), e.g. purchase for a transaction log"),
    quantity_col: Optional[str] = typer.Option(None, "--quantity-col"),
    event_id_col: Optional[str] = typer.Option(None, "--event-id-col"),
    time_format: Optional[str] = typer.Option(None, "--time-format", help="strftime format, 'unix' or 'unix_ms'"),
    sep: Optional[str] = typer.Option(None, "--sep", help="Field delimiter (default ',' for CSV, tab for .tsv, whitespace with --no-header)"),
    no_header: bool = typer.Option(False, "--no-header", help="The file has no header line; name columns with --columns"),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated column names for --no-header"),
    attributes: Optional[Path] = typer.Option(None, "--attributes", help="S3-Rec item2attributes JSON"),
    items: Optional[Path] = typer.Option(None, "--items", help="Item table file (item_id, text, attributes, price)"),
    pseudonymise: bool = typer.Option(False, "--pseudonymise", help="Replace user ids by a keyed hash"),
    key_file: Optional[Path] = typer.Option(None, "--pseudonymise-key-file", help="Key file (else $VALUEREC_PSEUDONYM_KEY)"),
    chunk_rows: int = typer.Option(500_000, "--chunk-rows", min=1,
                                   help="CSV / Parquet / JSONL rows read, checked and written at a time (one "
                                        "transaction for the whole file either way)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validate a file and add its events to the store (one transaction: all or nothing)."""
    cmap = ColumnMap(user=user_col, item=item_col, time=time_col, value=value_col, event=event_col,
                     quantity=quantity_col, event_id=event_id_col, time_format=time_format)
    # A failed ingest writes nothing: files it created (a new store, its WAL) are removed again.
    new_files = [p for p in (store, store.with_name(store.name + ".wal")) if not p.exists()]
    try:
        if store.is_dir():
            raise DataError(f"--store {store}: is a directory, expected a DuckDB store file")
        if key_file is not None and not pseudonymise:     # the raw ids would be stored
            raise DataError(f"--pseudonymise-key-file {key_file}: given without --pseudonymise; add --pseudonymise "
                            "to store keyed hashes of the user ids, or drop the key file")
        key = load_pseudonymisation_key(str(key_file) if key_file else None) if pseudonymise else None
        with EventStore(store) as st:
            with console.status(f"ingesting {path} ..."):
                report = ingest(st, path, fmt=fmt, cmap=cmap, sep=sep, no_header=no_header,
                                columns=columns.split(",") if columns else None, attributes=attributes,
                                items_path=items, pseudonymise_key=key, event_type=event_type,
                                chunk_rows=chunk_rows)
            summary = st.summary()
    except BaseException as e:
        for p in new_files:
            try:
                p.unlink(missing_ok=True)
            except OSError:      # e.g. its folder could not be made: nothing to remove
                pass
        if not isinstance(e, DataError):
            raise
        print_error(console, e)
        raise typer.Exit(code=2) from None
    if as_json:
        print(json.dumps({"report": report.as_dict(), "notes": report.notes(), "store": summary}, indent=2))
    else:
        console.print(f"{path}: read {report.rows_read:,} rows -> {report.events:,} events; "
                      f"added {report.added:,}, duplicates skipped {report.duplicates:,}"
                      + (f", dropped {report.dropped}" if report.dropped else ""))
        for note in report.notes():
            console.print(f"[yellow]note:[/yellow] {cell(note)}", highlight=False)
        console.print(f"store {store}: {summary['events']:,} events, {summary['users']:,} users, "
                      f"{summary['items_with_events']:,} items, {summary['first']} .. {summary['last']}")


def store_info_cmd(store: Path = typer.Argument(..., help="DuckDB event store")) -> None:
    """Print what a store holds."""
    if not store.exists():
        print_error(console, f"{store}: no such store")
        raise typer.Exit(code=2)
    try:
        with EventStore(store, read_only=True) as st:
            summary = st.summary()
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    print(json.dumps(summary, indent=2))


def pseudonym_cmd(
    user: list[str] = typer.Argument(..., help="User id(s) as in your data"),
    key_file: Optional[Path] = typer.Option(None, "--pseudonymise-key-file", help="Key file (else $VALUEREC_PSEUDONYM_KEY)"),
) -> None:
    """Print the id a store ingested with --pseudonymise holds for each user id (the same keyed hash),
    to look users up there."""
    from valuerec.data.ingest import pseudonymise
    try:
        key = load_pseudonymisation_key(str(key_file) if key_file else None)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    ids = [u.strip() for u in user]
    for raw, hashed in zip(user, pseudonymise(pd.Series(ids, dtype=object), key)):
        print(f"{raw}\t{hashed}")


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest_cmd)
    app.command("pseudonym")(pseudonym_cmd)
    app.command("store-info")(store_info_cmd)
