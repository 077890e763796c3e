"""HTTP routes: thin shells over ``ServiceState``.

The frequent reads (recommendations, value, stage) are answered on the event loop when everything
they need is in memory (the user's cached history, the popularity list): no thread hop and no
contention for the GIL between pool threads, which on a small machine costs more than the answer
itself. When a store read is needed they go to the thread pool, so a slow read never blocks the loop.
Events are validated on the loop and committed by the store's writer thread; the handler awaits the
commit without holding a pool thread. Rare or heavy routes (explain, similar, delete, reload) are
plain functions that FastAPI runs in its thread pool.

No ``from __future__ import annotations`` here: FastAPI must see the parameter types that
``make_router`` builds from the settings (k limit) as real objects."""

import asyncio
from typing import Annotated, Literal

import pandas as pd
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from valuerec.data.schema import DataError
from valuerec.data.validate import validate_event_rows
from valuerec.serving.auth import require
from valuerec.serving.deps import get_state
from valuerec.serving.schemas import (
    DeleteUserResponse, ErrorResponse, EventBatch, EventsResponse, ExplainResponse, HealthResponse, LoadedModel,
    ModelInfo, RecommendationsResponse, ReloadRequest, ReloadResponse, SimilarItemsResponse, SnapshotResponse,
    StageResponse, ValueResponse,
)
from valuerec.serving.settings import Settings
from valuerec.serving.state import ServiceState, policy_names


class InputError(Exception):
    """Bad input found after schema validation: HTTP 422 in the same shape as schema errors."""

    def __init__(self, message: str, loc: tuple = ("body",), problems: list[str] | None = None):
        super().__init__(message)
        self.loc = loc
        self.problems = problems or []


def _err(*codes: int) -> dict:
    text = {401: "Missing or invalid API key", 403: "The API key lacks the scope this route needs",
            404: "Not found", 409: "The model version cannot be loaded; the previous one still serves",
            413: "Request body too large", 500: "The service cannot write where it must (the reason is given)",
            501: "The loaded model cannot answer this"}
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


def _model(rt) -> ModelInfo:
    return ModelInfo(name=rt.name, version=rt.version)


async def _answer(in_memory: bool, fn, *args):
    """``fn(*args)`` inline when it needs no store read, else in the thread pool."""
    return fn(*args) if in_memory else await run_in_threadpool(fn, *args)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _reject_future(rows, hours: float) -> None:
    """422 for events more than ``hours`` past the server clock: one would move the store's newest
    event, the default "as of" time, and make every other customer look lapsed."""
    latest = pd.Timestamp.now(tz="UTC").tz_localize(None) + pd.Timedelta(hours=hours)
    late = [f"events[{n}].timestamp: {r.timestamp.isoformat()} is in the future "
            f"(more than {hours:g} h after the server clock)" for n, r in enumerate(rows) if r.timestamp > latest]
    if late:
        raise DataError(f"events: {len(late)} problem(s); nothing was written", late[:20], len(late))


def make_router(settings: Settings) -> APIRouter:
    r = APIRouter()
    UserId = Annotated[str, Path(min_length=1, max_length=256, description="User id as stored")]
    K = Annotated[int, Query(ge=1, le=settings.max_k, description=f"How many items (1..{settings.max_k})")]
    AsOf = Annotated[str | None, Query(description="Prediction time, ISO 8601; default: the newest event in the store")]
    State = Annotated[ServiceState, Depends(get_state)]
    Policy = Literal[tuple(["auto", "model", "popular"] + [p for p in policy_names() if p not in ("popular",)])]
    read, write, admin = Depends(require("read")), Depends(require("write")), Depends(require("admin"))

    @r.get("/v1/users/{user_id:path}/recommendations", response_model=RecommendationsResponse, tags=["users"],
           dependencies=[read], responses=_err(401, 403, 501))
    async def recommendations(user_id: UserId, state: State, k: K = 10,
                        policy: Annotated[Policy, Query(
                            description="auto: the model for users with history, popular items for new users; "
                                        "model: same (a user without history still gets the fallback); "
                                        "popular: most popular items; any other name: that re-ranking policy of "
                                        "valuerec.policies (e.g. stage: the policy of the user's lifecycle stage)"
                        )] = "auto",
                        exclude_history: Annotated[bool, Query(description="Leave out items the user already had")
                                                   ] = True) -> RecommendationsResponse:
        """Top-k items for a user from their history in the store (new events count at once); 501 for a
        policy the loaded model cannot answer (e.g. expected_revenue without a purchase stage)."""
        out = await _answer(state.in_memory(user_id), state.recommend, user_id, k, policy, exclude_history)
        stage = out.get("stage") or {}
        return RecommendationsResponse(user_id=user_id, policy=out["policy"], model=_model(out["runtime"]), k=k,
                                       history_length=out["history_length"], items=out["items"],
                                       stage=stage.get("stage"), stage_policy=stage.get("stage_policy"))

    @r.get("/v1/users/{user_id:path}/value", response_model=ValueResponse, tags=["users"], dependencies=[read],
           responses=_err(401, 403, 501))
    async def value(user_id: UserId, state: State, as_of: AsOf = None) -> ValueResponse:
        """Predicted customer value (and churn, lifecycle stage) from the model's value head; 501 when
        the loaded model has none."""
        out = await _answer(state.in_memory(user_id, popular=False), state.value, user_id, as_of)
        return ValueResponse(user_id=user_id, as_of=out["as_of"].isoformat(), model=_model(out["runtime"]),
                             known_user=out["known_user"], history_length=out["history_length"],
                             value=out["value"], stage=out["stage"], stage_reason=out["stage_reason"])

    @r.get("/v1/users/{user_id:path}/stage", response_model=StageResponse, tags=["users"], dependencies=[read],
           responses=_err(401, 403, 501))
    async def stage(user_id: UserId, state: State, as_of: AsOf = None) -> StageResponse:
        """Lifecycle stage (new, activated, retained, expanding, advocate, at-risk, lapsed) with the rule
        that assigned it; at-risk and expanding need a model with a value head."""
        out = await _answer(state.in_memory(user_id, popular=False), state.stage, user_id, as_of)
        return StageResponse(user_id=user_id, as_of=out["as_of"].isoformat(), model=_model(out["runtime"]),
                             history_length=out["history_length"], stage=out["stage"], reason=out["reason"],
                             features=out["features"], value=out["value"])

    @r.get("/v1/users/{user_id:path}/explain", response_model=ExplainResponse, tags=["users"], dependencies=[read],
           responses=_err(401, 403, 404, 501))
    def explain(user_id: UserId, state: State,
                target: Annotated[str | None, Query(max_length=256, description="What to explain: an item id, "
                                                    "'value' or 'churn'; default: the top recommendation")] = None,
                as_of: AsOf = None,
                top: Annotated[int, Query(ge=1, le=100, description="How many events to list")] = 10,
                greedy: Annotated[int, Query(ge=0, le=20, description="Also the set of this many events whose "
                                             "deletion together lowers the target most (greedy; 0 = off)")] = 0,
                greedy_direction: Annotated[Literal["auto", "supporting", "abs"], Query(
                    description="supporting: the set that lowers the target most; abs: the set that moves it "
                                "most either way; auto: abs for churn, else supporting")] = "auto",
                ) -> ExplainResponse:
        """Which past events drove a score: each event's occlusion influence (the score with the whole
        history minus the score without that event), largest first; with ``greedy=K``, also the K
        events that together lower it most (or, ``greedy_direction=abs``, move it most; the default for
        churn). Only the most recent ``$VALUEREC_EXPLAIN_MAX_EVENTS``
        events (1000) are occluded."""
        out = state.explain(user_id, target, as_of, top, greedy, greedy_direction)
        return ExplainResponse(user_id=user_id, target=out["target"], as_of=out["as_of"].isoformat(),
                               model=_model(out["runtime"]), explanation=out["explanation"])

    @r.get("/v1/items/{item_id:path}/similar", response_model=SimilarItemsResponse, tags=["items"],
           dependencies=[read], responses=_err(401, 403, 404))
    def similar(item_id: Annotated[str, Path(min_length=1, max_length=256)], state: State,
                k: K = 10) -> SimilarItemsResponse:
        """Items most similar to an item."""
        out = state.similar(item_id, k)
        return SimilarItemsResponse(item_id=item_id, method=out["method"], model=_model(out["runtime"]),
                                    items=out["items"])

    @r.post("/v1/events", response_model=EventsResponse, tags=["events"], dependencies=[write],
            responses=_err(401, 403, 413),
            description=f"Add a batch of events (at most {settings.max_batch}, body at most "
                        f"{settings.max_body_bytes} bytes). They are validated like file ingest and stored in one "
                        "transaction before the response; the next recommendation for their users reflects them. "
                        f"Timestamps more than {settings.max_future_h:g} h past the server clock are rejected "
                        "($VALUEREC_MAX_FUTURE_H). "
                        "Events whose event_id is already stored are skipped: counted as duplicates when their "
                        "content is the same (idempotent re-sends), as conflicts (ids listed) when it differs; "
                        "the stored event is kept either way.")
    async def post_events(batch: EventBatch, request: Request, state: State) -> EventsResponse:
        n = len(batch.events)
        if n > settings.max_batch:
            raise InputError(f"the batch has {n} events; the limit is {settings.max_batch} per request "
                             "(split it, or raise $VALUEREC_MAX_BATCH)", loc=("body", "events"))
        records = [e.model_dump(exclude_unset=True) for e in batch.events]   # an omitted value is not 0
        rows = (validate_event_rows(records, source="events") if n <= 64 else
                await run_in_threadpool(validate_event_rows, records, "events"))
        _reject_future(rows, settings.max_future_h)
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        slot = state.submit_rows(rows, lambda: loop.call_soon_threadsafe(_resolve, committed))
        try:
            await asyncio.wait_for(asyncio.shield(committed), timeout=settings.write_timeout_s)
        except TimeoutError:
            raise TimeoutError("the event store did not commit within the time limit") from None
        added, dups, conflicts = state.write_result(slot)
        metrics = request.app.state.metrics
        metrics.events.labels(outcome="accepted").inc(added)
        metrics.events.labels(outcome="duplicate").inc(dups)
        if conflicts:
            metrics.events.labels(outcome="conflict").inc(len(conflicts))
        return EventsResponse(received=n, accepted=added, duplicates=dups, conflicts=len(conflicts),
                              conflicting_event_ids=list(dict.fromkeys(conflicts))[:20])

    @r.delete("/v1/users/{user_id:path}", response_model=DeleteUserResponse, tags=["users"], dependencies=[write],
              responses=_err(401, 403))
    def delete_user(user_id: UserId, state: State) -> DeleteUserResponse:
        """Erase every event of a user and their cached state."""
        return DeleteUserResponse(user_id=user_id, deleted_events=state.delete_user(user_id))

    @r.post("/v1/admin/reload", response_model=ReloadResponse, tags=["admin"], dependencies=[admin],
            responses=_err(401, 403, 409))
    def reload(request: Request, state: State,
               body: Annotated[ReloadRequest | None, Body()] = None) -> ReloadResponse:
        """Load a model version completely, then swap it in; requests in flight finish on the old one."""
        metrics = request.app.state.metrics
        try:
            old, new = state.reload(body.path if body is not None else None)
        except Exception:
            metrics.reloads.labels(outcome="failed").inc()
            raise
        metrics.reloads.labels(outcome="ok").inc()
        metrics.set_model(new["name"], new["version"])
        return ReloadResponse(previous=LoadedModel(**old), current=LoadedModel(**new))

    @r.post("/v1/admin/snapshot", response_model=SnapshotResponse, tags=["admin"], dependencies=[admin],
            responses=_err(401, 403, 500))
    def snapshot(state: State) -> SnapshotResponse:
        """Copy the event store as committed now to a new DuckDB file (events keep arriving meanwhile),
        for `valuerec retrain --store PATH`, which cannot open the store this service holds; then
        POST /v1/admin/reload serves what it writes. Keeps the newest $VALUEREC_SNAPSHOT_KEEP copies."""
        return SnapshotResponse(**state.snapshot())

    @r.get("/healthz", response_model=HealthResponse, tags=["ops"])
    def healthz(state: State) -> HealthResponse:
        """Liveness and the model being served (no key needed)."""
        return HealthResponse(**state.health())

    metrics_deps = [] if settings.metrics_public else [admin]

    @r.get("/metrics", tags=["ops"], dependencies=metrics_deps, response_class=Response,
           responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def metrics(request: Request) -> Response:
        """Request counts and latencies per route (Prometheus text format)."""
        body, ctype = request.app.state.metrics.render()
        return Response(content=body, media_type=ctype)

    return r
