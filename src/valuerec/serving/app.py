"""The FastAPI application: ``create_app()`` builds it; the lifespan opens the store and loads the model
once. Run it with ``valuerec serve`` or ``uvicorn --factory valuerec.serving.app:create_app``
(settings from ``VALUEREC_*`` environment variables, see ``settings.py``). Without API keys
(``VALUEREC_AUTH_DISABLED=1``) the factory needs ``VALUEREC_HOST`` naming the loopback host uvicorn
listens on, as ``valuerec serve --no-auth`` checks its ``--host``."""

from __future__ import annotations

import json
import logging
import math
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from valuerec import __version__ as _pkg_version
from valuerec.data.schema import DataError
from valuerec.serving.metrics import Metrics, MetricsMiddleware
from valuerec.serving.routes import InputError, make_router
from valuerec.serving.settings import Settings
from valuerec.serving.state import ModelLoadError, NotAvailable, NotFound, ServiceState, StorageError

log = logging.getLogger("valuerec.serving")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: checked on Content-Length first, then while streaming."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    n = 0
                if n > self.limit:
                    await _send_413(send, self.limit)
                    return
        seen = {"n": 0, "over": False, "sent": False}

        async def limited_receive():
            if seen["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen["n"] += len(message.get("body", b""))
                if seen["n"] > self.limit:
                    # Stop reading; end the body here. Whatever the app answers to the cut body is
                    # replaced by the 413 below.
                    seen["over"] = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message):
            if not seen["over"]:
                await send(message)
            elif not seen["sent"] and message["type"] == "http.response.start":
                seen["sent"] = True
                await _send_413(send, self.limit)

        await self.app(scope, limited_receive, guarded_send)


async def _send_413(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body too large: the limit is {limit} bytes "
                                 "(send smaller batches, or raise $VALUEREC_MAX_BODY_BYTES)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _where(loc) -> str:
    """("body", "events", 0, "value") -> "events[0].value"; ("query", "k") -> "query.k"."""
    parts = list(loc)[1:] if len(loc) > 1 and loc[0] == "body" else list(loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def _scalar(v) -> bool:
    """Whether ``v`` can be echoed back as strict JSON (no NaN / Infinity, no bytes or objects)."""
    return v is None or isinstance(v, (str, int)) or (isinstance(v, float) and math.isfinite(v))


def _not_utf8(body: bytes) -> dict | None:
    try:
        body.decode("utf-8")
        return None
    except UnicodeDecodeError as e:
        return {"loc": ["body"], "type": "json_invalid",
                "msg": f"request body is not UTF-8 JSON (byte 0x{body[e.start]:02x} at position {e.start})"}


def _validation_response(errors: list[dict]) -> JSONResponse:
    message = "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg')}" for e in errors)
    try:
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors), "message": message})
    except (TypeError, ValueError, UnicodeError):   # something not JSON-able slipped in: answer without it
        plain = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
                 for e in errors]
        return JSONResponse(status_code=422, content={"detail": plain, "message": message})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not logging.getLogger().handlers:   # under plain uvicorn: make our INFO lines visible
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        state = ServiceState(settings)
        state.start()
        app.state.svc = state
        metrics.set_model(state.runtime.name, state.runtime.version)
        try:
            yield
        finally:
            state.close()
            log.info("store closed")

    app = FastAPI(title="valuerec", version=_pkg_version, lifespan=lifespan,
                  description="Recommendations, customer value and lifecycle from one behaviour model, "
                              "served live over an event store. Send an API key as `X-API-Key` or a bearer token.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(make_router(settings))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        errors = []
        for raw in exc.errors():
            e = {k: v for k, v in raw.items() if k in ("loc", "msg", "type", "input", "ctx")}
            e["loc"] = list(e.get("loc", ()))
            if isinstance(e.get("msg"), str) and e["msg"].startswith("Value error, "):
                e["msg"] = e["msg"][len("Value error, "):]
            got = e.pop("input", None)
            if isinstance(got, (bytes, bytearray)):
                # A body not sent as JSON (no JSON content type) reaches validation as raw bytes.
                bad = _not_utf8(bytes(got))
                if bad is not None:
                    return _validation_response([bad])
                e["msg"] = f"{e.get('msg')} (the body was not read as JSON: send it with Content-Type: application/json)"
            elif _scalar(got):     # never the whole body, NaN / Infinity or other objects: keep it JSON
                e["input"] = got
            if isinstance(e.get("ctx"), dict):
                e["ctx"] = {k: v if _scalar(v) else str(v) for k, v in e["ctx"].items()}
            errors.append(e)
        return _validation_response(errors)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException):
        # FastAPI answers a JSON body it cannot decode with a bare 400; say why when it is the encoding.
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            try:
                bad = _not_utf8(await request.body())
            except Exception:  # noqa: BLE001 - the body is gone: say it without the position
                bad = None
            return _validation_response([bad or {"loc": ["body"], "type": "json_invalid",
                                                 "msg": f"request body is not UTF-8 JSON ({exc.__cause__})"}])
        if exc.status_code == 400 and exc.__cause__ is not None:   # e.g. JSON nested too deep to parse
            return _validation_response([{"loc": ["body"], "type": "json_invalid",
                                          "msg": f"request body cannot be parsed as JSON "
                                                 f"({type(exc.__cause__).__name__})"}])
        return await http_exception_handler(request, exc)

    @app.exception_handler(InputError)
    async def on_input_error(request: Request, exc: InputError):
        return _validation_response([{"loc": list(exc.loc), "msg": str(exc), "type": "value_error"}])

    @app.exception_handler(DataError)
    async def on_data_error(request: Request, exc: DataError):
        lines = exc.problems or [str(exc)]
        loc = list(getattr(exc, "loc", ("body",)))    # QueryError: ("query", name)
        return _validation_response([{"loc": loc, "msg": line, "type": "value_error"} for line in lines])

    def answer_with(status: int):
        async def handler(request: Request, exc: Exception):
            return JSONResponse(status_code=status, content={"detail": str(exc)})
        return handler

    # what the service cannot do, as a status and the reason: 404 no such user or item; 409 a model
    # version that cannot be loaded (the old one serves on); 500 a place it cannot write; 501 an answer
    # the loaded model cannot give
    for exc_type, status in ((NotFound, 404), (ModelLoadError, 409), (StorageError, 500), (NotAvailable, 501)):
        app.add_exception_handler(exc_type, answer_with(status))

    @app.exception_handler(TimeoutError)
    async def on_timeout(request: Request, exc: TimeoutError):
        return JSONResponse(status_code=503, content={
            "detail": f"{exc}; the batch may or may not be stored: send it again with the same event ids "
                      "(re-sends of stored ids are skipped)"})

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)   # outermost: times everything, 413s included
    return app
