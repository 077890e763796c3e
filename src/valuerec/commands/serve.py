"""`valuerec serve`: the HTTP service (FastAPI under uvicorn) over a model and an event store."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from valuerec.commands.errors import print_error
from valuerec.data.schema import DataError

console = Console(stderr=True)
log = logging.getLogger("valuerec.serving")


def serve_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Model artefact directory to serve"),
    store: Path = typer.Option(..., "--store", help="DuckDB event store (created if missing)"),
    models_root: Optional[Path] = typer.Option(None, "--models-root",
                                               help="Directory of versioned model dirs; without --model the newest "
                                                    "is served, and POST /v1/admin/reload picks the newest"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port, 1..65535"),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without API keys (local experiments only)"),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request"),
) -> None:
    """Serve recommendations, value and event ingest over HTTP.

    API keys come from $VALUEREC_API_KEYS ('key:read,write;key2:admin') or $VALUEREC_API_KEYS_FILE;
    other limits from VALUEREC_* variables (see valuerec.serving.settings).
    """
    import uvicorn

    from valuerec.data.store import EventStore
    from valuerec.serving.app import create_app
    from valuerec.serving.settings import Settings
    from valuerec.serving.state import newest_model_dir

    env = dict(os.environ)
    if model is not None:
        env["VALUEREC_MODEL_DIR"] = str(model)
    if models_root is not None:
        env["VALUEREC_MODELS_ROOT"] = str(models_root)
    env["VALUEREC_STORE"] = str(store)
    env["VALUEREC_HOST"] = host
    if no_auth:
        env["VALUEREC_AUTH_DISABLED"] = "1"
    try:
        settings = Settings.from_env(env)
        from valuerec.models.base import load_model

        # Open the store once here, so a file that is not a DuckDB store (or is locked by another
        # process) is a one-line error rather than a traceback from the server's start-up.
        try:
            EventStore(settings.store).close()
        except Exception as e:  # noqa: BLE001 - duckdb's IO / lock errors
            why = " ".join(str(e).split())
            raise DataError(f"--store {settings.store}: cannot open the event store ({why})") from None
        check_listen(host, port)        # a busy port or a bad host before the model loads
        # Load the model once here (newest_model_dir: a DataError when the root has none), so a missing
        # or damaged model directory is a one-line error rather than a traceback from the server's start-up.
        load_model(settings.model_dir or newest_model_dir(settings.models_root))
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    log.info("starting valuerec service on http://%s:%d", host, port)
    uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log, log_level="info",
                loop="auto", http="auto", timeout_graceful_shutdown=10)


def check_listen(host: str, port: int) -> None:
    """Refuse, before the model loads, a host that does not resolve or a port another process holds."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise DataError(f"--host {host}: cannot listen there ({e.strerror or e})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            raise DataError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}; another "
                            "process may hold the port: choose another with --port)") from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
