"""The HTTP API's request and response bodies, and the answers each operation documents in the OpenAPI schema.

Every error answer (4xx) has one shape, :class:`ErrorBody`: ``detail`` says what is wrong in one line and
``errors`` lists the fields at fault (empty when the error is not about one field).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# --- requests -------------------------------------------------------------------------------------------


def _whole(value: Any) -> Any:
    """A float with no fractional part (3.0) as the integer it is: JSON Schema counts it as an integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Bodies are strict (no "1" for 1, no 0 for false: what the schema rejects, the server rejects), but a whole
# float is an integer as in JSON Schema.
Integer = Annotated[int, BeforeValidator(_whole)]
BODY = ConfigDict(extra="forbid", strict=True)


class _Body(BaseModel):
    model_config = BODY


Signal = Annotated[str, Field(min_length=1, max_length=50)]
Actions = Annotated[dict[Signal, Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(max_length=32)]
ACTIONS_DOC = ("What the user did with each item (signal -> number >= 0, e.g. {\"like\": 1, \"play_time_ms\": 5300}; "
               "null: the default interaction), read by a bundle's ranking stage.")

ContextName = Annotated[str, Field(min_length=1, max_length=50)]
Context = Annotated[dict[ContextName, Annotated[str, Field(max_length=200)] | Integer], Field(max_length=16)]
CONTEXT_DOC = ("Where an impression is shown (name -> text or integer, e.g. {\"tab\": 1}: the app surface), read by a "
               "bundle's ranking stage when its ranker was trained with that context (model.row_context); a value it "
               "never saw counts as unknown.")

# Event times: integers a float64 holds exactly (the models and the store compute with them); larger is an error.
# Whole floats are turned into integers for the list at once: one Python call, not one per entry.
Timestamp = Annotated[int, Field(ge=-(2**53), le=2**53)]
Timestamps = Annotated[list[Timestamp] | None, BeforeValidator(
    lambda v: [_whole(x) for x in v] if isinstance(v, list) and any(type(x) is float for x in v) else v)]
ItemId = Annotated[str, Field(min_length=1, max_length=200)]
PER_HISTORY_ITEM = ("timestamps", "actions", "history_context")


def _needs_history(name: str) -> dict[str, Any]:
    """JSON Schema: when `name` is a list, `history` must be one too (equal lengths: see the description)."""
    return {"if": {"properties": {name: {"type": "array"}}, "required": [name]},
            "then": {"properties": {"history": {"type": "array"}}, "required": ["history"]}}


class RecommendRequest(_Body):
    """Give `user_id` (history from the store) or `history` (explicit), not both; `timestamps`, `actions`
    and `history_context` need a `history` and hold one entry per history item."""

    model_config = ConfigDict(**BODY, json_schema_extra={"allOf": [
        {"not": {"properties": {"user_id": {"type": "string"}, "history": {"type": "array"}},
                 "required": ["user_id", "history"]}},
        *(_needs_history(name) for name in PER_HISTORY_ITEM)]})

    user_id: str | None = Field(None, min_length=1, max_length=200, description="Read the history from the store.")
    history: list[ItemId] | None = Field(None, max_length=10_000, description="Explicit history: raw item ids, "
                                                                              "oldest first.")
    timestamps: Timestamps = Field(None, description="Unix seconds, one per history item.")
    actions: list[Actions | None] | None = Field(None, description=ACTIONS_DOC + " One per history item.")
    history_context: list[Context | None] | None = Field(None, description=CONTEXT_DOC + " One per history item.")
    context: Context | None = Field(None, description=CONTEXT_DOC + " This request's: where the answer is shown.")
    k: Integer = Field(10, ge=1, le=1000)
    exclude_seen: bool = True
    allow: list[str] | None = Field(None, max_length=100_000, description="Only these items may be returned.")
    deny: list[str] | None = Field(None, max_length=100_000, description="Never return these items.")
    query: str | None = Field(None, min_length=1, max_length=1000, description="Steer results toward this text.")
    retriever: Literal["model", "generator"] | None = Field(
        None, description="Which retriever answers when the bundle has both an ID model and the semantic-ID generator "
        "(see `retrievers` in the answer); null: the bundle's own model. A generator trained with query conditioning "
        "decodes conditioned on `query` (mode generator+prompt); otherwise a query re-weights the scores (+query). "
        "A retriever the bundle lacks: its own model answers, with a warning.")

    @model_validator(mode="after")
    def _one_source(self) -> RecommendRequest:
        if self.user_id is not None and self.history is not None:
            raise ValueError("give user_id or history, not both")
        for name in PER_HISTORY_ITEM:
            given = getattr(self, name)
            if given is not None and (self.history is None or len(given) != len(self.history)):
                raise ValueError(f"{name} needs a history of the same length")
        return self


class EventsRequest(_Body):
    """`timestamps`, `actions` and `context`, when given, hold one entry per item."""

    user_id: str = Field(min_length=1, max_length=200)
    items: list[ItemId] = Field(min_length=1, max_length=1000)
    timestamps: Timestamps = Field(None, description="Unix seconds, one per item.")
    actions: list[Actions | None] | None = Field(None, description=ACTIONS_DOC + " One per item.")
    context: list[Context | None] | None = Field(None, description=CONTEXT_DOC + " One per item.")
    request_id: str | None = Field(None, min_length=1, max_length=64, description="The request_id of the "
                                   "/v1/recommend answer these items were engaged from (the experiment log ties "
                                   "them to what it showed).")

    @model_validator(mode="after")
    def _aligned(self) -> EventsRequest:
        for name in ("timestamps", "actions", "context"):
            given = getattr(self, name)
            if given is not None and len(given) != len(self.items):
                raise ValueError(f"{name} must have one entry per item")
        return self


class ReloadRequest(_Body):
    bundle: str = Field(min_length=1, description="Path of the bundle to serve from now on.")


# --- answers --------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str = Field(description="Where: a dotted path into the body (e.g. history.0), or a parameter name.")
    message: str


class ErrorBody(BaseModel):
    """What every 4xx answer holds."""

    detail: str = Field(description="What is wrong, in one line.")
    errors: list[FieldError] = Field(description="The fields at fault; empty when the error is not about one field.")


class Item(BaseModel):
    """A catalog item as the API shows it: its raw id and the catalog's display fields (title, ...)."""

    model_config = ConfigDict(extra="allow")
    item_id: str


class ScoredItem(Item):
    score: float | None = Field(description="The model's score; null in a popularity fallback.")
    fresh: bool | None = Field(None, description="True on a slot an experiment arm reserved for a fresh item "
                               "(its fresh_share); absent otherwise.")


class HistoryItem(Item):
    timestamp: int | None
    actions: dict[str, float] | None
    context: dict[str, str | int] | None
    known: bool = Field(description="Whether the served model knows the item.")


class RecommendResponse(BaseModel):
    user_id: str | None
    items: list[ScoredItem]
    model_version: str
    fallback: bool = Field(description="True: the popularity list answered (see reason).")
    reason: str | None
    mode: str = Field(description="What ranked the items: model, model+query, generator, content, popularity, ...")
    warnings: list[str]
    request_id: str = Field(description="This answer's id: send it with /v1/events to tie engagement to it.")
    experiment: str | None = Field(description="The running experiment (genrec serve --experiment), else null.")
    arm: str | None = Field(description="The experiment arm that answered; null outside an experiment and in "
                            "interleave mode (both arms' lists merged).")
    anonymous: bool = Field(description="No user_id: the arm was drawn for this request alone.")
    retrievers: list[str] = Field(description="The retrievers this bundle offers (`retriever` of a request), its "
                                  "own model first.")


class EventsResponse(BaseModel):
    user_id: str
    stored: int
    known: int = Field(description="How many of the stored items the served model knows.")
    history_length: int
    warnings: list[str]


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str


class SearchResponse(BaseModel):
    q: str
    items: list[Item]
    model_version: str


class UserHistoryResponse(BaseModel):
    user_id: str
    items: list[HistoryItem]
    model_reads: int = Field(description="How many of the most recent events the model reads.")
    model_version: str


class Series(BaseModel):
    """A metric at each look with its always-valid band (null: not yet estimable, or unbounded)."""

    value: list[float | None]
    low: list[float | None] = Field(description="Always-valid lower bound at each look (null: unbounded).")
    high: list[float | None] = Field(description="Always-valid upper bound at each look (null: unbounded).")
    tau: float | None = Field(description="The normal mixture's scale (null while no look has a standard error).")


class ArmSeries(Series):
    arm: str
    users: list[int] = Field(description="Identified users with an answer logged by each look.")


class DifferenceSeries(Series):
    arm: str
    control: str = Field(description="The arm it is compared with (the first arm).")
    users: list[int] | None = Field(None, description="Interleave mode: users with an engaged answer by each look.")


class ExperimentTimeline(BaseModel):
    """The running experiment's metric over time (genrec.experiment.timeline): per arm and against the first arm,
    at evenly spaced looks from the first logged answer to the latest logged answer or event."""

    experiment: str
    mode: str = Field(description="ab or interleave.")
    metric: str | None = Field(None, description="What the series measure (absent before the first answer).")
    alpha: float = Field(description="The bands hold at every look at once with probability >= 1 - alpha.")
    exposures: int = Field(description="Answers logged in the experiment.")
    engagements: int = Field(description="Logged events tied to those answers by request_id.")
    times: list[float] = Field(description="The looks (unix seconds).")
    arms: list[ArmSeries] = Field(description="ab mode: each arm's engagements per exposure.")
    differences: list[DifferenceSeries] = Field(description="Each arm minus the first arm (ab), or the preference "
                                                "for the second arm (interleave: > 0, it wins).")


class ReloadResponse(BaseModel):
    previous_version: str
    model_version: str


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready, or warming up (503).")
    model_version: str | None = None


ERROR_DOC = {400: "The request cannot be read (e.g. a body that is not JSON).",
             401: "Missing or wrong bearer token (when the server has an API key).",
             404: "Not found.",
             409: "The bundle was not loaded; the previous one keeps serving.",
             413: "The request body is over the server's size limit.",
             422: "A parameter or a body field is invalid (listed in errors)."}


def answers(ok: type[BaseModel] | None, *errors: int, media: dict[str, dict] | None = None) -> dict[int | str, Any]:
    """The ``responses=`` of a route: the 200 answer (``ok``'s JSON, or ``media``: media type -> schema) and
    ``errors``, each an :class:`ErrorBody`."""
    success: dict[str, Any] = {"description": "Successful Response"}
    if ok is not None:
        success["model"] = ok
    if media is not None:
        success["content"] = {kind: {"schema": schema} for kind, schema in media.items()}
    return {200: success, **{code: {"model": ErrorBody, "description": ERROR_DOC[code]} for code in errors}}
