"""`valuerec report`: one self-contained HTML file from a model, a store and the result files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from valuerec.commands.errors import print_error

console = Console(stderr=True)


DEFAULT_RESULTS = Path("benchmarks/results")


def report_cmd(
    model: Path = typer.Option(..., "--model", help="Model directory"),
    store: Path = typer.Option(..., "--store", help="DuckDB event store"),
    results: Optional[Path] = typer.Option(DEFAULT_RESULTS, "--results", help="Directory of result JSON files"),
    out: Path = typer.Option(Path("report.html"), "--out"),
    examples: int = typer.Option(3, "--examples", min=0, help="Example users to show"),
) -> None:
    """Write the HTML report (opens offline; interactive charts; readable in print)."""
    from valuerec.commands.bench import check_out_file
    from valuerec.data.schema import DataError
    from valuerec.report.build import build_inputs
    from valuerec.report.html import write_report

    checks = [(model, "model directory"), (store, "store")]
    if results is not None and results != DEFAULT_RESULTS:   # the default may be absent (outside a checkout)
        checks.append((results, "--results directory"))
    for p, what in checks:
        if not p.exists():
            print_error(console, f"{what} {p} does not exist")
            raise typer.Exit(code=2)
    if results is not None and results.exists() and not results.is_dir():
        print_error(console, f"--results {results}: is a file; give the directory that holds the result files")
        raise typer.Exit(code=2)
    try:
        check_out_file(out)
        with console.status("building the report ..."):
            inputs = build_inputs(model, store, results if results and results.exists() else None, n_examples=examples)
            path = write_report(inputs, out)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    console.print(f"report written to {path.resolve()}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
