"""`valuerec retrain`: fine-tune on new events; write a new version only if it is no worse."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console

from valuerec.commands.errors import cell, print_error

console = Console(stderr=True)


def retrain_cmd(
    model: Path = typer.Option(..., "--model", help="Current model directory"),
    store: Path = typer.Option(..., "--store", help="DuckDB event store with the new events"),
    out: Path = typer.Option(..., "--out", help="Versions root: the new model goes to OUT/vNNNN"),
    holdout_days: float = typer.Option(14.0, "--holdout-days", help="Recent days held out to compare old and new"),
    epochs: int = typer.Option(5, "--epochs", help="Fine-tuning epochs (transformer)"),
    metric: str = typer.Option("ndcg@20", "--metric"),
    tolerance: float = typer.Option(0.0, "--tolerance", help="Accept a candidate this much worse on the metric (negative: it must be this much better)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fine-tune the current model on the store's events; keep it only if it is no worse."""
    from valuerec.data.schema import DataError
    from valuerec.training.retrain import retrain

    for p, what in ((model, "model directory"), (store, "store")):
        if not p.exists():
            print_error(console, f"{what} {p} does not exist")
            raise typer.Exit(code=2)
    try:
        rep = retrain(model, store, out, holdout_days=holdout_days, epochs=epochs, metric=metric, tolerance=tolerance)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    if as_json:
        print(json.dumps(asdict(rep), indent=2, default=str))
        return
    for note in rep.notes:
        console.print(f"[yellow]note[/yellow]: {cell(note)}")
    if not rep.base:   # nothing new to learn from: no comparison was made
        return
    console.print(f"held out: {rep.holdout_users} users active since {rep.holdout_from}; {rep.new_items} new items")
    console.print(f"current  {metric} = {rep.base[metric]:.4f}")
    console.print(f"candidate {metric} = {rep.candidate[metric]:.4f}")
    if rep.accepted:
        console.print(f"[green]accepted[/green]: {rep.version_dir} (reload the service: POST /v1/admin/reload)")
    else:
        if rep.candidate[metric] >= rep.base[metric]:     # only a negative tolerance rejects a better one
            why = f"the candidate does not beat the current model by {-tolerance:g} (--tolerance {tolerance:g})"
        elif tolerance > 0:
            why = f"the candidate is worse by more than --tolerance {tolerance:g}"
        else:
            why = "the candidate is worse"
        console.print(f"[yellow]rejected[/yellow]: {why}; nothing written")


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain_cmd)
