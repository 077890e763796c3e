"""`valuerec demo`: the end-to-end run on the bundled Online Retail subset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from valuerec.commands.errors import print_error

console = Console(stderr=True)


def demo_cmd(
    out: Path = typer.Option(Path("valuerec-demo"), "--out", help="Where the store, models and report go"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1,
                                         help="Transformer epochs (default: a few minutes' worth)"),
    seed: int = typer.Option(0, "--seed", min=0),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings, for a smoke test"),
) -> None:
    """Ingest the bundled data, train, evaluate against baselines, and show recommendations."""
    from valuerec.data.schema import DataError
    from valuerec.demo import run_demo

    try:
        run_demo(out, epochs=epochs, seed=seed, quick=quick)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
