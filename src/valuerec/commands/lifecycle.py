"""`valuerec lifecycle`: every user's lifecycle stage (with the reason) from a model and a store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from valuerec.commands.errors import catalogue_overlap_note, print_error
from valuerec.data.dataset import Catalogue, Sequences, catalogue_from, sequences_from
from valuerec.data.schema import DataError
from valuerec.data.store import EventStore
from valuerec.models.base import add_cold_start_items

console = Console(stderr=True)


@dataclass
class Loaded:
    """What the lifecycle / explain commands work from."""

    recommender: object | None   # anything with score(Sequences)
    value_model: object | None   # anything with predict_value(Sequences, as_of)
    catalogue: Catalogue
    histories: Sequences         # all requested users, events before as_of
    as_of: int                   # unix seconds
    model_name: str
    item_ids: tuple = ()         # the distinct item ids of those events (as stored)
    stored_items: dict | None = None  # user -> item id of each history event as stored (listed users only)


def _load_dir(path: Path):
    """A saved recommender or value model, by the kind in its config.json."""
    from valuerec.models.base import load_model, predicts_value, read_model_config
    if read_model_config(path).get("kind") == "value":
        from valuerec.models.value_baselines import load_value_model
        return None, load_value_model(path)
    m = load_model(path)
    return m, (m if predicts_value(m) else None)


def parse_time(value: str | None, what: str = "--at") -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        ts = None
    if ts is None or ts is pd.NaT:
        raise DataError(f"{what} {value!r}: not a date/time (expected e.g. 2011-09-09 or 2011-09-09T12:00)")
    if ts.tzinfo is not None:     # the store holds naive UTC (ingest converts offsets the same way)
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def load_context(model: Path, store: Path, value_model: Path | None = None, at: str | None = None,
                 users: list[str] | None = None) -> Loaded:
    """Load the model(s) and the histories (events strictly before ``at``; default: just after the
    store's last event) of ``users`` (default: everyone in the store)."""
    if not Path(store).exists():
        raise DataError(f"{store}: no such store")
    rec, vm = _load_dir(Path(model))
    if value_model is not None:
        _, vm = _load_dir(Path(value_model))
        if vm is None:
            raise DataError(f"{value_model}: not a value model (no predict_value, or a transformer trained without "
                            "value heads: value_weight=0)")
    with EventStore(store, read_only=True) as st:
        rng = st.time_range()
        if rng is None:
            raise DataError(f"{store}: the store has no events")
        at_ts = parse_time(at) if at is not None else rng[1] + pd.Timedelta(seconds=1)
        if at_ts <= rng[0]:
            raise DataError(f"--at {at_ts}: no event is before it (the store's events run from {rng[0]} to {rng[1]})")
        if users is None:
            events = st.events("ts < ?", [at_ts.to_pydatetime()])
        else:
            events = st.events("ts < ? AND user_id IN (SELECT unnest(?::VARCHAR[]))",
                               [at_ts.to_pydatetime(), [str(u) for u in users]])
        items = st.items()
    if rec is not None:
        if users is not None:   # explain: the items without events yet, as recommend and the service rank them
            add_cold_start_items(rec, model, items)   # (its note is recommend's to give)
        cat = rec.catalogue_
    else:
        cat = catalogue_from(events, items, restrict_to_events=False)
    uid = np.array([str(u) for u in users], dtype=object) if users is not None else None
    # Value-only events (no item, or an item the model does not know) stay in as -1: they carry value.
    hist = sequences_from(events, cat, users=uid, unknown_items="keep")
    name = getattr(rec, "name", None) or getattr(vm, "name", "model")
    return Loaded(recommender=rec, value_model=vm, catalogue=cat, histories=hist,
                  as_of=int(at_ts.value // 10**9), model_name=str(name),
                  item_ids=tuple(events["item_id"].dropna().astype(str).unique()),
                  stored_items=_stored_items(events, hist) if users is not None else None)


def _stored_items(events: pd.DataFrame, hist: Sequences) -> dict:
    """Each listed user's item ids as stored, in history order (the histories keep every event and
    sort them as the store does; a user whose times disagree is left out rather than misaligned)."""
    out = {}
    ev = events.assign(user_id=events["user_id"].astype(str)).sort_values(["user_id", "timestamp", "seq"],
                                                                          kind="stable")
    groups = dict(tuple(ev.groupby("user_id", sort=False)))
    for u, t in zip(hist.user_ids, hist.times or []):
        g = groups.get(str(u))
        if g is None:
            continue
        times = g["timestamp"].astype("datetime64[s]").astype("int64").to_numpy()
        if len(times) == len(t) and np.array_equal(times, np.asarray(t, dtype=np.int64)):
            out[str(u)] = list(g["item_id"])
    return out


def lifecycle_report(model: Path, store: Path, value_model: Path | None = None, at: str | None = None,
                     since: str | None = None, config: dict | None = None) -> dict:
    """Stages of every user at ``at`` (and the transition matrix from ``since``), as a dict."""
    from valuerec.policies.lifecycle import (LifecycleConfig, assign_stages, for_event_types, predict_value_safe,
                                             stage_sizes, transition_matrix)
    LifecycleConfig.from_dict(config)     # a bad --config is refused before anything is loaded
    ctx = load_context(model, store, value_model, at)
    vm = ctx.value_model
    # Interaction-only data (e.g. ratings, clicks): every event counts as a purchase.
    present = set(np.concatenate(ctx.histories.event_types).tolist()) if ctx.histories.event_types else set()
    cfg, note = for_event_types(LifecycleConfig.for_model(vm, config), present)
    overlap = catalogue_overlap_note(getattr(ctx.recommender or vm, "catalogue_", None), ctx.item_ids)
    if overlap:
        note = overlap if note is None else f"{note}; {overlap}"
    pred = predict_value_safe(vm, ctx.histories, ctx.as_of) if vm is not None else None
    df = assign_stages(ctx.histories, ctx.as_of, pred, cfg)
    out = {"as_of": str(pd.Timestamp(ctx.as_of, unit="s")), "model": ctx.model_name,
           "value_model": getattr(vm, "name", None), "config": cfg.to_dict(),
           "advocate_value_threshold": df.attrs.get("advocate_value_threshold"),
           "note": note, "sizes": stage_sizes(df).to_dict(orient="records"),
           "users": json.loads(df.to_json(orient="records"))}
    if since is not None:
        s = parse_time(since, "--since")
        value_fn = (lambda h, a: predict_value_safe(vm, h, a)) if vm is not None else None
        m = transition_matrix(ctx.histories, s.value // 10**9, ctx.as_of, value_fn, cfg)
        out["transitions"] = {"from": str(s), "to": out["as_of"],
                              "matrix": {a: {b: int(m.loc[a, b]) for b in m.columns} for a in m.index}}
    return out


def lifecycle_cmd(
    model: Path = typer.Option(..., "--model", help="Saved model directory (recommender or value model)"),
    store: Path = typer.Option(..., "--store", help="DuckDB event store"),
    at: Optional[str] = typer.Option(None, "--at", help="Stages as of this date (default: after the last event)"),
    since: Optional[str] = typer.Option(None, "--since", help="Also show the transition matrix from this date"),
    value_model: Optional[Path] = typer.Option(None, "--value-model",
                                               help="Value model directory, when --model has no value head"),
    config: Optional[str] = typer.Option(None, "--config", help="Lifecycle thresholds as JSON, e.g. "
                                         "'{\"churn_threshold\": 0.7}'"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (sizes and every user's stage and reason)"),
) -> None:
    """Assign every user a lifecycle stage (new, activated, retained, expanding, advocate, at-risk, lapsed)."""
    try:
        try:
            cfg = json.loads(config) if config else None
        except json.JSONDecodeError as e:
            raise DataError(f"--config is not valid JSON: {e}") from None
        if cfg is not None and not isinstance(cfg, dict):
            raise DataError("--config must be a JSON object")
        with console.status("assigning stages ..."):
            res = lifecycle_report(model, store, value_model, at, since, cfg)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    if as_json:
        print(json.dumps(res, indent=2, default=str))
        return
    if res.get("note"):
        console.print(f"[yellow]note:[/yellow] {res['note']}", highlight=False)
    if res["value_model"] is None:
        console.print("[yellow]note:[/yellow] no value model: at-risk and expanding are not assigned")
    t = Table(title=f"lifecycle stages at {res['as_of']} ({res['model']})")
    for c in ("stage", "users", "share"):
        t.add_column(c, justify="left" if c == "stage" else "right")
    for r in res["sizes"]:
        t.add_row(r["stage"], f"{r['users']:,}", f"{r['share']:.1%}")
    Console().print(t)
    if "transitions" in res:
        tr = res["transitions"]
        t2 = Table(title=f"transitions {tr['from']} -> {tr['to']} (rows: from)")
        rows = list(tr["matrix"])                    # "not yet active" first, then the stages
        cols = list(next(iter(tr["matrix"].values())))
        t2.add_column("from \\ to")
        for s in cols:
            t2.add_column(s, justify="right")
        for a in rows:
            t2.add_row(a, *[str(tr["matrix"][a][b]) for b in cols])
        Console().print(t2)


def register(app: typer.Typer) -> None:
    app.command("lifecycle")(lifecycle_cmd)
