"""`valuerec explain`: which of a user's past events drove a score (exact occlusion influence)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from valuerec.commands.errors import cell, print_error
from valuerec.commands.lifecycle import load_context
from valuerec.data.schema import DataError

console = Console(stderr=True)


def _signed(x) -> str:
    """An effect for the table: signed, or '-' for an event that was not occluded (older than
    --max-events) or whose score is not a number."""
    return f"{x:+.4f}" if isinstance(x, (int, float)) and np.isfinite(x) else "-"


def explain_user(model: Path, store: Path, user: str, target: str | None = None, top: int = 10,
                 value_model: Path | None = None, at: str | None = None, gradient: bool = False,
                 max_events: int | None = 1000, greedy: int = 0, greedy_direction: str = "auto") -> dict:
    """Influence of each of ``user``'s events on ``target`` (``item:ID``, ``value`` or ``churn``;
    default: the model's top recommended item, or value for a value model). ``greedy`` > 0 also
    gives the set of that many events whose deletion together lowers the target most, or with
    ``greedy_direction`` "abs" moves it most either way ("auto": "abs" for churn; greedy deletion)."""
    from valuerec.explain.influence import (churn_target, explain_events, greedy_deletion, greedy_explanation,
                                            item_target, occlusion, resolve_greedy_direction, value_target)
    from valuerec.models.base import ranks_items, require_next_item_head

    ctx = load_context(model, store, value_model, at, users=[str(user)])
    h = ctx.histories
    if len(h.items[0]) == 0:
        from valuerec.commands.recommend import PSEUDONYM_HINT
        from valuerec.data.store import EventStore
        with EventStore(store, read_only=True) as st:
            hashed = st.looks_pseudonymised()
        raise DataError(f"user {user!r} has no events in {store} before {pd.Timestamp(ctx.as_of, unit='s')}"
                        + (PSEUDONYM_HINT if hashed else ""))
    rec, vm, cat = ctx.recommender, ctx.value_model, ctx.catalogue
    if target is None:      # a value-only transformer has no item scores to explain: its value
        target = "item" if rec is not None and ranks_items(rec) else "value"
    if target.startswith("item"):
        if rec is None:
            raise DataError(f"--target {target}: {model} is not a recommender (no item scores)")
        require_next_item_head(rec, str(model), "; explain --target value or churn")
        if target == "item":
            top_items, top_scores = rec.recommend(h.item_only(), k=1, exclude="history")
            if top_items.shape[1] == 0 or not np.isfinite(top_scores[0, 0]):
                raise DataError(f"user {user!r}: every item of the model's catalogue is in their history, so "
                                "nothing is recommended and there is no top item to explain; pass --target item:ID")
            item = int(top_items[0, 0])
        elif target.startswith("item:"):
            item = int(cat.lookup([target[5:]], unknown="keep")[0])
            if item < 0:
                raise DataError(f"--target {target}: item {target[5:]!r} is not in the model's catalogue")
        else:
            raise DataError(f"--target {target!r}: expected item:ID, item, value or churn")
        # The recommender sees item events only; the explanation lists those events.
        n_all = len(h.items[0])
        h = h.item_only()
        if len(h.items[0]) == 0:
            raise DataError(f"user {user!r}: none of their {n_all} event(s) is an item in the model's catalogue, so "
                            "no event influences an item's score (items added after the model was trained are "
                            "unknown to it; retrain, or explain --target value with a value model)")
        fn, tname = item_target(rec, item), f"score of item {cat.item_ids[item]}"
        described = {"kind": "item", "item_id": str(cat.item_ids[item]),
                     "text": cat.text[item] if cat.text is not None else None}
    elif target in ("value", "churn"):
        if vm is None:
            raise DataError(f"--target {target}: no value model (pass one with --value-model)")
        from valuerec.data.schema import event_type_code
        types = h.event_types[0] if h.event_types is not None else np.zeros(0)
        if not (np.asarray(types) == event_type_code("purchase")).any():
            # as `valuerec value` does: a value is predicted for customers with a purchase
            raise DataError(f"user {user!r} has no purchase before {pd.Timestamp(ctx.as_of, unit='s')}; value models "
                            "need at least one (valuerec value refuses them too)")
        fn = value_target(vm, ctx.as_of) if target == "value" else churn_target(vm, ctx.as_of)
        tname = "predicted value" if target == "value" else "churn probability"
        described = {"kind": target}
    else:
        raise DataError(f"--target {target!r}: expected item:ID, item, value or churn")
    full, infl = occlusion(fn, h, last=max_events)
    stored = (ctx.stored_items or {}).get(str(user)) if not described["kind"] == "item" else None
    every = explain_events(h, infl[0], cat, top=None, stored_item_ids=stored)
    events = every.head(top) if top else every
    out = {"user": str(user), "model": ctx.model_name, "as_of": str(pd.Timestamp(ctx.as_of, unit="s")),
           "target": {**described, "name": tname, "value": float(full[0])}, "method": "occlusion",
           "events_total": int(len(h.items[0])),
           "events_occluded": int(min(len(h.items[0]), max_events or len(h.items[0]))),
           "events": json.loads(events.to_json(orient="records"))}
    if greedy > 0:
        direction = resolve_greedy_direction(greedy_direction, described["kind"])
        _, chosen, after = greedy_deletion(fn, h, k=greedy, direction=direction, last=max_events,
                                           stop_without_gain=True)
        out["greedy"] = greedy_explanation(every, float(full[0]), chosen[0], after[0], greedy,
                                           lambda df: json.loads(df.to_json(orient="records")), direction=direction)
    if gradient:
        from valuerec.explain.gradients import attribution_agreement, transformer_gradient_x_input
        if described["kind"] != "item" or not hasattr(rec, "module_"):
            raise DataError("--gradient works for item targets of the behaviour transformer")
        g = transformer_gradient_x_input(rec, h, items=np.array([cat.index[described["item_id"]]]))[0]
        pos = events["position"].to_numpy()
        for e, p in zip(out["events"], pos):
            e["gradient_x_input"] = float(g[p])
        out["gradient_agreement"] = attribution_agreement(infl, [g], min_events=2)
    return out


def explain_cmd(
    model: Path = typer.Option(..., "--model", help="Saved model directory (recommender or value model)"),
    store: Path = typer.Option(..., "--store", help="DuckDB event store"),
    user: str = typer.Option(..., "--user", help="User id as stored"),
    target: Optional[str] = typer.Option(None, "--target", help="item:ID, value or churn "
                                         "(default: the top recommended item)"),
    top: int = typer.Option(10, "--top", min=1, help="How many events to list"),
    value_model: Optional[Path] = typer.Option(None, "--value-model", help="Value model for value/churn targets"),
    at: Optional[str] = typer.Option(None, "--at", help="Explain as of this date (default: after the last event)"),
    gradient: bool = typer.Option(False, "--gradient", help="Also gradient x input (transformer, item targets)"),
    max_events: int = typer.Option(1000, "--max-events", min=1,
                                   help="Occlude only the most recent N events (cost grows with N squared)"),
    greedy: int = typer.Option(0, "--greedy", min=0, max=50,
                               help="Also the K events whose deletion together lowers the target most, chosen "
                                    "greedily (each step given the ones before; K passes of the occlusion's cost)"),
    greedy_direction: str = typer.Option("auto", "--greedy-direction",
                                         help="supporting: the set that lowers the target most; abs: the set that "
                                              "moves it most either way; auto: abs for churn, else supporting"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """List the past events that moved a user's score most (effect = score with - score without)."""
    user = user.strip()     # ids are stored without surrounding spaces
    try:
        with console.status("explaining ..."):
            res = explain_user(model, store, user, target, top, value_model, at, gradient, max_events, greedy,
                               greedy_direction)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    if as_json:
        print(json.dumps(res, indent=2, default=str))
        return
    tg = res["target"]
    title = (f"user {res['user']}: {tg['name']} = {tg['value']:.4f} ({res['model']}, "
             f"{res['events_total']} events, {res['events_occluded']} occluded, as of {res['as_of']})")
    t = Table(title=cell(title))
    cols = ["#", "item", "text", "time", "type", "effect"] + (["grad x input"] if "gradient_agreement" in res else [])
    for c in cols:
        t.add_column(c, justify="right" if c in ("#", "effect", "grad x input") else "left")
    for e in res["events"]:
        row = [str(e["position"]), cell(e.get("item_id") or ""), cell(e.get("text") or ""), cell(e.get("time") or ""),
               cell(e.get("event_type") or ""), _signed(e["effect"])]
        if "gradient_agreement" in res:
            row.append(_signed(e["gradient_x_input"]))
        t.add_row(*row)
    Console().print(t)
    if "greedy" in res:
        g = res["greedy"]
        how = "lower it most" if g["direction"] == "supporting" else "move it most"
        t = Table(title=cell(f"the {len(g['events'])} events that together {how}: {tg['value']:.4f} -> "
                             f"{g['target_without_set']:.4f} without them (greedy deletion)"))
        for c in ("step", "#", "item", "text", "time", "type", "step effect"):
            t.add_column(c, justify="right" if c in ("step", "#", "step effect") else "left")
        for i, e in enumerate(g["events"], start=1):
            t.add_row(str(i), str(e["position"]), cell(e.get("item_id") or ""), cell(e.get("text") or ""),
                      cell(e.get("time") or ""), cell(e.get("event_type") or ""), _signed(e["step_effect"]))
        Console().print(t)


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)
