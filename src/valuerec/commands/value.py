"""`valuerec value` (predict customer value and churn) and `valuerec bench value|v1` (the V1 protocol).

The bench commands hang off the ``bench`` group of ``commands/bench.py`` (added at registration, so
that module stays untouched).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from valuerec.commands.errors import catalogue_overlap_note, cell, print_error
from valuerec.commands.lifecycle import parse_time
from valuerec.data.schema import DataError

console = Console(stderr=True)
MODELS_HELP = "Comma-separated value models: past_spend,bgnbd_gg,lightgbm,ziln_mlp (and any registered later)"


def _value_models(models: str) -> list[str]:
    import valuerec.models  # noqa: F401  (registers every model, value adapters included)
    from valuerec.models.value_baselines import VALUE_MODEL_REGISTRY

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise typer.BadParameter(f"no value models given; known: {', '.join(sorted(VALUE_MODEL_REGISTRY))}")
    unknown = [m for m in names if m not in VALUE_MODEL_REGISTRY]
    if unknown:
        raise typer.BadParameter(f"unknown value model(s) {unknown}; known: {', '.join(sorted(VALUE_MODEL_REGISTRY))}")
    return names


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _fail(e: Exception) -> None:
    print_error(console, e)
    raise typer.Exit(code=2) from None


def bench_value_cmd(
    store: Path = typer.Option(..., "--store", help="DuckDB event store"),
    cutoff: str = typer.Option(..., "--cutoff", help="Test cut-off, e.g. 2011-09-09"),
    val_cutoff: str = typer.Option(..., "--val-cutoff", help="Validation cut-off (model choice only)"),
    horizon_days: Optional[float] = typer.Option(None, "--horizon-days",
                                                 help="Holdout length in days (default: to the end of the data)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Result JSON path"),
    models: str = typer.Option("past_spend,bgnbd_gg,lightgbm,ziln_mlp,transformer", "--models", help=MODELS_HELP),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds for stochastic models (deterministic ones run once)"),
    save_models: Optional[Path] = typer.Option(None, "--save-models", help="Save each final model (seed 0) under DIR/<name>"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads"),
) -> None:
    """Customer value and churn after a cut-off, on any store (the V1 protocol, parameterised)."""
    from valuerec.commands.bench import check_out_dir, check_out_file
    from valuerec.evaluation.value_protocol import run_value_bench

    _threads(threads)
    try:
        names = _value_models(models)
        cutoff, val_cutoff = str(parse_time(cutoff, "--cutoff")), str(parse_time(val_cutoff, "--val-cutoff"))
        check_out_file(out)
        check_out_dir(save_models, "--save-models")
        run_value_bench(store, cutoff, val_cutoff, horizon_days, names, seeds, out,
                        meta={"dataset": store.stem, "protocol": "value-cutoff"}, save_dir=save_models,
                        console=console)
    except DataError as e:
        _fail(e)


def bench_v1_cmd(
    data: Path = typer.Option(Path("../shared/data/online-retail"), "--data",
                              help="Online Retail csv(.gz) or a directory holding it"),
    out: Path = typer.Option(Path("benchmarks/results/v1_online_retail.json"), "--out"),
    models: str = typer.Option("past_spend,bgnbd_gg,lightgbm,ziln_mlp,transformer", "--models", help=MODELS_HELP),
    seeds: int = typer.Option(3, "--seeds", min=1),
    cache_dir: Path = typer.Option(Path("runs/stores"), "--cache-dir", help="Where the ingested store is cached"),
    save_models: Optional[Path] = typer.Option(Path("runs/v1/models"), "--save-models"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads"),
) -> None:
    """V1: customer value and churn after 2011-09-09 (Online Retail), validation cut-off 2011-06-09."""
    from valuerec.commands.bench import check_out_dir, check_out_file
    from valuerec.evaluation.protocols import cached_store, resolve_online_retail_data
    from valuerec.evaluation.value_protocol import V1_CUTOFF, V1_EXPECT, V1_VAL_CUTOFF, run_value_bench

    _threads(threads)
    try:
        names = _value_models(models)
        check_out_file(out)
        check_out_dir(save_models, "--save-models")
        path = resolve_online_retail_data(data)
        store_path, sha = cached_store(path, "online-retail", cache_dir, None, console)
        run_value_bench(store_path, V1_CUTOFF, V1_VAL_CUTOFF, None, names, seeds, out,
                        meta={"dataset": "online-retail", "protocol": "V1", "data_sha256": sha, "data_path": str(path),
                              "past_spend_gini": 0.634},
                        save_dir=save_models, console=console, expect=V1_EXPECT)
    except DataError as e:
        _fail(e)


def load_any_value_model(path: Path):
    """A saved value model (``ValueModel`` artefact) or any saved model with ``predict_value``
    (e.g. the behaviour transformer, loaded through ``models.base.load_model``)."""
    from valuerec.models.value_baselines import ValueModel

    from valuerec.models.base import load_model, read_model_config

    if read_model_config(path).get("kind") == "value":
        return ValueModel.load(path)

    model = load_model(path)
    if not hasattr(model, "predict_value"):
        raise DataError(f"{path}: model {getattr(model, 'name', '?')!r} has no value head (predict_value)")
    return model


def _some(ids: list[str], n: int = 20) -> str:
    """The first ``n`` ids, then how many more."""
    return str(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _type_hint(events: pd.DataFrame) -> str:
    """When the events hold no purchase at all: which types they have and how to ingest purchases."""
    if len(events) == 0 or (events["event_type"] == "purchase").any():
        return ""
    types = sorted(events["event_type"].astype(str).unique())
    return (f" (the store's events are of type(s) {types}; value models count 'purchase' events: ingest a "
            "transaction log with --event-col naming its event-type column, or --event-type purchase)")


def predict_population(model, events: pd.DataFrame, as_of: pd.Timestamp, users: list[str] | None = None) -> pd.DataFrame:
    """Predictions for ``users`` (default: everyone with a purchase before ``as_of``)."""
    from valuerec.data.dataset import catalogue_from, sequences_from

    before = events[events["timestamp"] < as_of]
    buyers = set(before.loc[before["event_type"] == "purchase", "user_id"].astype(str))
    if users:
        known = set(events["user_id"].astype(str))
        missing = [u for u in users if u not in known]
        if missing:
            raise DataError(f"{len(missing)} unknown user(s): {_some(missing)}")
        none = [u for u in users if u not in buyers]
        if none:
            raise DataError(f"{len(none)} user(s) have no purchase before {as_of}: {_some(none)}; value models need "
                            f"at least one{_type_hint(before)}")
        pop = np.asarray(users, dtype=object)
    else:
        pop = np.array(sorted(buyers), dtype=object)
        if not len(pop):
            raise DataError(f"no customer has a purchase before {as_of}{_type_hint(before)}")
    cat = getattr(model, "catalogue_", None) or catalogue_from(before, None)
    hist = sequences_from(before, cat, users=pop, unknown_items="keep")
    pred = model.predict_value(hist, np.full(len(pop), int(as_of.value // 10**9), dtype=np.int64))
    df = pd.DataFrame({"user_id": pop.astype(str)})
    for k in ("expected_value", "p_buy", "churn_prob", "lower", "upper"):
        if k in pred:
            df[k] = np.asarray(pred[k], dtype=np.float64)
    df["as_of"] = str(as_of)
    df["horizon_days"] = getattr(model, "horizon_days_", None)
    return df


def value_cmd(
    model: Path = typer.Option(..., "--model", help="Saved model directory (value baseline or transformer)"),
    store: Path = typer.Option(..., "--store", envvar="VALUEREC_STORE", help="DuckDB event store with the histories"),
    user: Optional[list[str]] = typer.Option(None, "--user", help="User id (repeat for several); default: all buyers"),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Predict as of this time (default: just after the last event)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write all predictions to FILE.csv or FILE.parquet"),
    top: Optional[int] = typer.Option(None, "--top", min=1,
                                      help="Rows to print, highest expected value first (default: 20 in the "
                                           "table, every user with --json)"),
) -> None:
    """Predict each customer's value over the model's horizon, p(buy), churn probability and an 80% interval."""
    from valuerec.data.store import EventStore

    try:
        if out is not None and out.suffix not in (".csv", ".parquet"):
            raise DataError(f"--out {out}: use a .csv or .parquet file name")
        if out is not None and out.is_dir():
            raise DataError(f"--out {out}: is a directory; give a file name")
        if out is not None and any(p.exists() and not p.is_dir() for p in out.parents):
            raise DataError(f"--out {out}: a folder on its path is a file")
        if user:    # ids are stored without surrounding spaces; a user asked twice is listed once
            user = list(dict.fromkeys(u.strip() for u in user))
        if not store.exists():
            raise DataError(f"{store}: no such store")
        m = load_any_value_model(model)
        with EventStore(store, read_only=True) as st:
            events = st.events()
        if len(events) == 0:
            raise DataError(f"{store}: the store has no events")
        t = parse_time(as_of, "--as-of") if as_of else pd.Timestamp(events["timestamp"].max()) + pd.Timedelta(seconds=1)
        df = predict_population(m, events, t, list(user) if user else None)
        overlap = catalogue_overlap_note(getattr(m, "catalogue_", None), events["item_id"].dropna().unique())
        if overlap:
            console.print(f"[yellow]note:[/yellow] {cell(overlap)}", highlight=False)
    except DataError as e:
        _fail(e)
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            (df.to_csv(out, index=False) if out.suffix == ".csv" else df.to_parquet(out, index=False))
        except OSError as e:
            _fail(DataError(f"--out {out}: cannot write it ({e.strerror or e})"))
        console.print(f"wrote {len(df):,} predictions to {out}")
    ranked = df.sort_values("expected_value", ascending=False, kind="stable") if not user else df
    if as_json:
        shown = ranked.head(top) if top and not user else ranked
        print(json.dumps(shown.to_dict(orient="records"), indent=2))
    elif out is None or user:
        shown = ranked.head(top or 20) if not user else ranked
        more = f", the top {len(shown):,} shown" if len(shown) < len(df) else ""
        tab = Table(title=f"value as of {t} over {df['horizon_days'].iloc[0]} days ({len(df):,} customers{more})")
        for c in ("user_id", "expected_value", "p_buy", "churn_prob", "lower", "upper"):
            tab.add_column(c, justify="left" if c == "user_id" else "right")
        for r in shown.itertuples():
            tab.add_row(cell(r.user_id), f"{r.expected_value:,.2f}", f"{r.p_buy:.3f}", f"{r.churn_prob:.3f}",
                        f"{r.lower:,.2f}", f"{r.upper:,.2f}")
        Console().print(tab)


def register(app: typer.Typer) -> None:
    app.command("value")(value_cmd)
    try:
        from valuerec.commands.bench import bench_app
    except ImportError:  # no bench group: fall back to top-level commands
        app.command("bench-value")(bench_value_cmd)
        app.command("bench-v1")(bench_v1_cmd)
        return
    bench_app.command("value")(bench_value_cmd)
    bench_app.command("v1")(bench_v1_cmd)
