"""Request and response bodies of the HTTP API (they are the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong and how to fix it")


class ModelInfo(BaseModel):
    name: str = Field(description="Registered model name, e.g. popularity, itemknn, transformer")
    version: str = Field(description="Model version (its artefact directory name)")


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="Model score (higher is better); popularity count for fallbacks")
    text: str | None = Field(None, description="Item title / description when the catalogue has one")
    price: float | None = Field(None, description="Item price when known")


class RecommendationsResponse(BaseModel):
    user_id: str
    policy: str = Field(
        description="What produced the list: 'model'; 'new_user' (the fallback, popular items, for a user "
                    "without known history); 'popular' on request; or the name of the re-ranking policy used")
    model: ModelInfo
    k: int
    history_length: int = Field(description="Events of this user in the store")
    stage: str | None = Field(None, description="policy=stage: the user's lifecycle stage, whose policy ranked "
                                                "the list")
    stage_policy: str | None = Field(None, description="policy=stage: the policy of that stage")
    items: list[RecommendedItem]


class ValueResponse(BaseModel):
    user_id: str
    as_of: str = Field(description="Prediction time (ISO 8601)")
    model: ModelInfo
    known_user: bool = Field(description="Whether the user has events at or before as_of")
    history_length: int = Field(description="Events of this user at or before as_of")
    value: dict[str, Any] = Field(description="The model's value prediction, e.g. expected revenue over its horizon, "
                                              "p(buy), churn probability")
    stage: str | None = Field(None, description="Lifecycle stage, when lifecycle rules are available")
    stage_reason: str | None = Field(None, description="The rule that assigned the stage, with its numbers")


class StageResponse(BaseModel):
    user_id: str
    as_of: str
    model: ModelInfo
    history_length: int = Field(description="Events of this user at or before as_of")
    stage: str = Field(description="new, activated, retained, expanding, advocate, at-risk or lapsed")
    reason: str = Field(description="The rule that assigned the stage, with its numbers")
    features: dict[str, Any] = Field(description="The numbers the rules used (recency, tenure, spend, ...)")
    value: dict[str, Any] | None = Field(None, description="The model's value prediction, when it has a value head")


class ExplainResponse(BaseModel):
    user_id: str
    target: str | None
    as_of: str
    model: ModelInfo
    explanation: dict[str, Any]


class SimilarItemsResponse(BaseModel):
    item_id: str
    method: Literal["model", "cooccurrence"] = Field(
        description="model: the model's item similarity (kNN rows, item factors or embeddings); "
                    "cooccurrence: users in the store who had both items")
    model: ModelInfo
    items: list[RecommendedItem]


class EventIn(BaseModel):
    """One event, in the same schema as file ingest."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    item_id: str | None = Field(None, max_length=256, description="Omit for value-only events (a plain transaction)")
    timestamp: str | float = Field(description="ISO 8601 (naive = UTC; an offset is converted to UTC) or unix seconds")
    event_type: str = Field("interaction", min_length=1, max_length=64,
                            description="interaction, view, cart, purchase, return, rating, or another label")
    value: float = Field(0.0, json_schema_extra={"minimum": 0},
                         description="Revenue of the event, >= 0; required for a purchase or a return "
                                     "(a return is event_type 'return' with a positive value), 0 when omitted "
                                     "for other events")
    quantity: float = Field(1.0, json_schema_extra={"minimum": 0}, description=">= 0")
    event_id: str | None = Field(None, min_length=1, max_length=256,
                                 description="Client id for idempotency: an event_id the store already holds is "
                                             "skipped (a duplicate when the content is the same, a conflict when "
                                             "it differs). Without one, the content hash is used.")

    @field_validator("timestamp", mode="before")
    @classmethod
    def _no_bool_time(cls, v: Any) -> Any:
        if isinstance(v, bool):     # JSON true would otherwise pass as 1.0 unix seconds
            raise ValueError("expected an ISO 8601 string or unix seconds, got a boolean")
        return v

    @field_validator("value", "quantity", mode="before")
    @classmethod
    def _no_bool_number(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("expected a number, got a boolean")
        return v

    @field_validator("value", "quantity")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if v < 0:
            raise ValueError("negative; record returns as event_type 'return' with a positive value")
        return v


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, description="One batch, written in one transaction (all or nothing)")


class EventsResponse(BaseModel):
    received: int
    accepted: int = Field(description="Events newly stored")
    duplicates: int = Field(description="Events skipped because the same event (same event_id and content) was "
                                        "already stored: idempotent re-sends")
    conflicts: int = Field(0, description="Events skipped because their event_id was already stored with other "
                                          "content; the stored event is kept unchanged")
    conflicting_event_ids: list[str] = Field(default_factory=list,
                                             description="The event ids of those conflicts (the first 20)")


class DeleteUserResponse(BaseModel):
    user_id: str
    deleted_events: int


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="Model artefact directory; omitted: the newest one under the "
                                               "service's models root")


class LoadedModel(BaseModel):
    name: str
    version: str
    path: str
    loaded_at: str
    n_items: int
    capabilities: dict[str, bool]
    retrieval: str = Field("full", description="How recommendations find their items: 'full' scores the whole "
                                               "catalogue, 'index' searches an HNSW index of the item vectors")
    never_recommended: int = Field(0, description="Catalogue items the model's never_recommend.txt leaves out of "
                                                  "every recommendation (postage, fees, ...)")
    warnings: list[str] = Field([], description="What the service noticed about this model and its store at load, "
                                                "e.g. a store whose items the model does not know")


class ReloadResponse(BaseModel):
    previous: LoadedModel
    current: LoadedModel


class SnapshotResponse(BaseModel):
    path: str = Field(description="The new DuckDB file: give it to `valuerec retrain --store`")
    events: int
    newest_event: str | None = Field(description="The newest event's time in the copy (UTC)")
    seconds: float
    removed: list[str] = Field(description="Older snapshots deleted to keep $VALUEREC_SNAPSHOT_KEEP")


class HealthResponse(BaseModel):
    status: str
    model: LoadedModel | None
    cached_users: int
    uptime_s: float
