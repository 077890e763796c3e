"""The FastAPI application: ``create_app()`` builds it; the lifespan opens the store and loads the model
once. Run it with ``valuerec serve`` or ``uvicorn --factory valuerec.serving.app:create_app``
(settings from ``VALUEREC_*`` environment variables, see ``settings.py``)."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from valuerec import __version__ as _pkg_version
from valuerec.data.schema import DataError
from valuerec.serving.metrics import Metrics, MetricsMiddleware
from valuerec.serving.routes import InputError, make_router
from valuerec.serving.settings import Settings
from valuerec.serving.state import NotAvailable, NotFound, ServiceState

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


def _validation_response(errors: list[dict]) -> JSONResponse:
    message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors), "message": message})


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
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type", "input", "ctx")} for e in exc.errors()]
        for e in errors:  # the raw input can be a whole body; keep messages short
            if isinstance(e.get("input"), (dict, list)):
                e.pop("input")
        return _validation_response(errors)

    @app.exception_handler(InputError)
    async def on_input_error(request: Request, exc: InputError):
        return _validation_response([{"loc": list(exc.loc), "msg": str(exc), "type": "value_error"}])

    @app.exception_handler(DataError)
    async def on_data_error(request: Request, exc: DataError):
        lines = exc.problems or [str(exc)]
        return _validation_response([{"loc": ["body"], "msg": line, "type": "value_error"} for line in lines])

    @app.exception_handler(NotAvailable)
    async def on_not_available(request: Request, exc: NotAvailable):
        return JSONResponse(status_code=501, content={"detail": str(exc)})

    @app.exception_handler(NotFound)
    async def on_not_found(request: Request, exc: NotFound):
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(TimeoutError)
    async def on_timeout(request: Request, exc: TimeoutError):
        return JSONResponse(status_code=503, content={
            "detail": f"{exc}; the batch may or may not be stored: send it again with the same event ids "
                      "(re-sends of stored ids are skipped)"})

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)   # outermost: times everything, 413s included
    return app
