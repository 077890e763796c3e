"""`valuerec recommend`: top-k items for one user from any saved model and the user's stored history."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from valuerec.commands.errors import cell, print_error
from valuerec.data.dataset import Sequences, sequences_from
from valuerec.data.schema import DataError
from valuerec.data.store import EventStore

console = Console(stderr=True)
PSEUDONYM_HINT = ("; this store's user ids look pseudonymised (ingest --pseudonymise): `valuerec pseudonym ID` "
                  "gives the id it stores for ID")


def recommend_for_user(model_dir: str | Path, store: str | Path, user: str, k: int = 10,
                       exclude_history: bool = True, fallback: bool = False,
                       history_types: list[str] | None = None, policy: str | None = None,
                       policy_params: dict | None = None) -> dict:
    """Recommendations for ``user`` as a dict (items with text/price where known).

    An unknown user (no events in the store) is a DataError, or with ``fallback`` the model's
    recommendations for an empty history (popular items for most models), marked in ``note``.
    ``history_types`` keeps only those event types in the history (e.g. ``["purchase"]`` for a model
    trained on purchases); None keeps every event.
    """
    from valuerec.models.base import add_cold_start_items, load_model, predicts_value, require_next_item_head
    model_dir, store = Path(model_dir), Path(store)
    if not (model_dir / "config.json").exists():
        raise DataError(f"{model_dir}: not a saved model (no config.json)")
    if not store.exists():
        raise DataError(f"{store}: no such store")
    model = load_model(model_dir)
    require_next_item_head(model, str(model_dir), "; `valuerec value` gives its predictions")
    with EventStore(store, read_only=True) as st:
        events = st.user_events(str(user))
        hashed = not len(events) and st.looks_pseudonymised()
        time_range = st.time_range()
        store_items = st.items()
        store_types = st.event_types() if policy == "stage" else []
    # cold start: items of the store's item table with no events yet, scored by their text / attributes
    added, left_out = add_cold_start_items(model, model_dir, store_items)
    cat = model.catalogue_
    if history_types:
        kept = events[events["event_type"].isin(history_types)]
        if len(events) and not len(kept):
            raise DataError(f"user {user!r} has no events of type(s) {sorted(history_types)}; their events are of "
                            f"type(s) {sorted(events['event_type'].unique())}")
        events = kept
    note = None
    stage_info = {}
    if len(events) == 0:
        if not fallback:
            raise DataError(f"user {user!r} has no events in {store}; use --fallback for "
                            "recommendations to an empty history" + (PSEUDONYM_HINT if hashed else ""))
        hist = Sequences(items=[np.zeros(0, np.int64)], times=[np.zeros(0, np.int64)],
                         event_types=[np.zeros(0, np.int64)], values=[np.zeros(0, np.float32)],
                         user_ids=np.array([str(user)], dtype=object))
        note = "unknown user: recommendations for an empty history"
    else:
        hist = sequences_from(events, cat, users=np.array([str(user)], dtype=object))
    known = hist.items[0][hist.items[0] >= 0]
    if policy and policy != "plain":
        from valuerec.policies.rerank import apply_policy, make_policy
        # "auto": past items are excluded, except for the policies built on them (favourites; the stage
        # policy for its stages whose policy is favourites)
        asked = exclude_history
        pol = make_policy(policy, **(policy_params or {}))
        exclude_history = ("by stage" if asked and pol.name == "stage" else asked and not pol.history_candidates)
        # The model is its own value model when it has a value head (the behaviour transformer).
        value_model = model if predicts_value(model) else None
        from valuerec.models.item_value import load_item_values
        from valuerec.models.purchase_stage import load_purchase_stage
        item_value = load_item_values(model_dir)     # learned item values, when trained with --item-values
        purchase_model = load_purchase_stage(model_dir)   # P(buy), when trained with --purchase-stage
        # "Now" is the newest event in the store (the data may be historical).
        now = None if time_range is None else float(pd.Timestamp(time_range[1]).value // 10**9 + 1)
        stages = None
        if pol.name == "stage":
            # assigned here so that the answer can say which stage, and so which policy, ranked the list
            from valuerec.policies.lifecycle import config_for_few_users
            from valuerec.policies.rerank import policy_stages
            stages = policy_stages(model, hist, now, value_model=value_model,
                                   lifecycle_config=config_for_few_users(value_model, store_types))
            stage_info = {"stage": str(stages[0]), "stage_policy": pol.mapping.get(str(stages[0]), "plain")}
        idx, scores = apply_policy(policy, model, hist, k=k, exclude="auto" if asked else None,
                                   value_model=value_model, params=policy_params, item_value=item_value,
                                   purchase_model=purchase_model, as_of=now, stages=stages)
        keep = idx[0] >= 0
        idx, scores = idx[:, keep], scores[:, keep]
    else:
        idx, scores = model.recommend(hist, k=k, exclude="history" if exclude_history else None)
        finite = scores[0][np.isfinite(scores[0])]
        if len(known) == 0 and len(finite) and float(finite.max()) == float(finite.min()):
            # the model has nothing to go on (no item of the history in its catalogue, and it scores
            # every item alike): the store's most popular items, as the service's new-user fallback
            with EventStore(store, read_only=True) as st:
                counts = st.item_counts()
            cidx = cat.lookup(list(counts.index), unknown="skip")
            ok = (cidx >= 0) & ~np.isin(cidx, model.blocked_items())
            idx = cidx[ok][None, :k]
            scores = counts.to_numpy(np.float64)[ok][None, :k]
            why = ("none of the user's events is an item the model knows" if len(events) else
                   "unknown user")
            note = f"{why}: the model scores every item alike, so these are the store's most popular items"
            if not ok.any():
                note = (f"{why}, and none of the store's items is in the model's catalogue: nothing to "
                        "recommend (is this the store the model was trained on?)")
        elif len(known) == 0 and len(events):
            note = "none of the user's events is an item the model knows: recommendations for an empty history"
    items = []
    for rank, (i, s) in enumerate(zip(idx[0], scores[0]), start=1):
        if not math.isfinite(float(s)):
            break  # fewer than k items left after exclusion
        i = int(i)
        items.append({
            "rank": rank, "item_id": str(cat.item_ids[i]), "score": float(s),
            "text": cat.text[i] if cat.text is not None else None,
            "price": (float(cat.price[i]) if cat.price is not None and np.isfinite(cat.price[i]) else None),
        })
    if added:
        note = ((note + "; ") if note else "") + (f"{added} item(s) of the store's item table without events are "
                                                  "scored from their text / attributes")
    if left_out:
        note = ((note + "; ") if note else "") + left_out
    return {"user": str(user), "model": model.name, "history_events": int(len(events)),
            "history_items_in_catalogue": int(len(known)), "exclude_history": exclude_history,
            "policy": policy or "plain", **stage_info,
            "note": note, "items": items}


def recommend_cmd(
    model: Path = typer.Option(..., "--model", help="Saved model directory (config.json + arrays)"),
    user: str = typer.Option(..., "--user", help="User id as stored"),
    store: Path = typer.Option(..., "--store", help="DuckDB event store holding the user's history"),
    k: int = typer.Option(10, "-k", "--k", min=1, help="How many items"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    exclude_history: bool = typer.Option(True, "--exclude-history/--no-exclude-history",
                                         help="Drop items already in the user's history"),
    fallback: bool = typer.Option(False, "--fallback", help="Unknown user: recommend for an empty history"),
    history_types: str = typer.Option("", "--history-types",
                                      help="Comma-separated event types to use as history (default: all)"),
    policy: str = typer.Option("plain", "--policy", help="Re-ranking policy: plain, value_aware, favourites_winback, "
                               "cross_sell_value, popular_diverse, value_uplift, stage, expected_revenue"),
    policy_params: Optional[str] = typer.Option(None, "--policy-params", help='Policy settings as JSON, e.g. {"w": 0.5} or {"w": 0.9, "p": "learned"}'),
) -> None:
    """Recommend k items for one user with any saved model."""
    user = user.strip()     # ids are stored without surrounding spaces
    try:
        types = [t.strip() for t in history_types.split(",") if t.strip()] or None
        pp = parse_policy_params(policy_params)
        if pp:   # checked for every policy, plain included (which takes none), before any data is read
            from valuerec.policies.rerank import make_policy
            make_policy(policy, **pp)
        res = recommend_for_user(model, store, user, k, exclude_history, fallback, types, policy, pp)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    if as_json:
        print(json.dumps(res, indent=2))
        return
    if res["note"]:
        console.print(f"[yellow]note:[/yellow] {cell(res['note'])}")
    if "stage" in res:
        console.print(f"stage: {cell(res['stage'])} -> policy {cell(res['stage_policy'])}")
    t = Table(title=cell(f"{res['model']} for user {res['user']} ({res['history_events']} events)"))
    for c in ("rank", "item", "score", "text", "price"):
        t.add_column(c, justify="right" if c in ("rank", "score", "price") else "left")
    for it in res["items"]:
        t.add_row(str(it["rank"]), cell(it["item_id"]), f"{it['score']:.4f}", cell(it["text"] or ""),
                  "" if it["price"] is None else f"{it['price']:.2f}")
    Console().print(t)


def parse_policy_params(text: str | None) -> dict | None:
    """``--policy-params``: a JSON object, or nothing."""
    if not text:
        return None
    try:
        pp = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"--policy-params {text!r}: not valid JSON ({e}); expected e.g. '{{\"w\": 0.5}}'") from None
    if not isinstance(pp, dict):
        raise DataError(f"--policy-params {text!r}: expected a JSON object such as '{{\"w\": 0.5}}'")
    return pp


def register(app: typer.Typer) -> None:
    app.command("recommend")(recommend_cmd)
