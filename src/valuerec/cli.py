"""The `valuerec` command line: thin shells over library functions, one module per area."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit is slow with a threaded BLAS
os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")

import typer  # noqa: E402

from valuerec.commands import data, demo, report, bench, recommend, serve, value  # noqa: E402
from valuerec.commands import explain, lifecycle  # noqa: E402
from valuerec.commands import retrain, train  # noqa: E402

app = typer.Typer(help="valuerec: one behaviour transformer for recommendations, value, churn and lifecycle.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

for module in (data, demo, report, bench, recommend, serve, value, lifecycle, explain, train, retrain):
    module.register(app)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    app()
