"""The HTTP API's request and response types (pydantic): what each endpoint accepts and answers."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    WrapValidator,
)

MAX_BODY_BYTES = 1 << 20
MAX_EVENTS = 1000
MAX_ITEMS = 5000
MAX_NEW_ITEMS = 1000  # items per POST /items


def to_seconds(t: int | datetime | None, default: int | None = None) -> int | None:
    if t is None:
        return default
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return math.floor(t.timestamp())
    return int(t)


Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Channel = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]


def _parse_time(v: Any) -> int:
    """Unix seconds (an integer, or a float: floored) or an ISO 8601 datetime (UTC when no zone)."""
    if isinstance(v, datetime):
        return to_seconds(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 2**62:
        return math.floor(v)  # the plausible range is the bundle's rule (data.timerange), checked by the route
    if isinstance(v, str):
        try:
            return to_seconds(datetime.fromisoformat(v.strip()))
        except ValueError:
            pass
    raise ValueError("expected unix seconds or an ISO 8601 datetime such as "
                     f"2024-05-01T12:00:00Z, found {v!r}"[:200])


def _one_error(what: str) -> WrapValidator:
    """A union's value with one error naming what it accepts, instead of one error per member type (which names
    the field `...level.str`, `...level.int`)."""
    def validate(v: Any, handler):
        try:
            return handler(v)
        except ValidationError:
            raise ValueError(f"expected {what}, found {v!r}"[:200]) from None
    return WrapValidator(validate)


FeatureValue = Annotated[str | int, _one_error("a string or an integer")]
RawValue = Annotated[str | int | float | None, _one_error("a string, a number or null")]
RawListValue = Annotated[str | int, _one_error("a string or an integer")]


Time = Annotated[int, PlainValidator(_parse_time), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "format": "date-time"}],
    "description": "unix seconds or an ISO 8601 datetime"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Payload(_Strict):
    """Modality payloads of an event; all optional, stored with the event."""

    text: str | None = Field(None, max_length=20_000, description="conversation transcript, comment or query text")
    action: str | None = Field(None, max_length=256, description="web action tag, e.g. 'quote_started'")
    tags: list[Annotated[str, StringConstraints(max_length=128)]] | None = Field(None, max_length=64)
    vectors: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)],
                  Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1, max_length=4096)]] | None = Field(
        None, max_length=8,
        description="modality -> precomputed content vector (e.g. an image or audio embedding); a modality "
                    "the model reads must have its dimension")


class Event(_Strict):
    user: Id
    item: Id | None = Field(None, description="the item interacted with (none for e.g. a conversation)")
    channel: Channel = Field(..., description="kind of interaction: watch, comment, like, click, purchase, "
                                              "web_action, conversation, impression, ... (free text, [A-Za-z0-9_.:-])")
    time: Time | None = Field(None, description="unix seconds or ISO 8601; default: when the service receives it")
    value: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        None, description="e.g. watch seconds, an amount paid, 0/1 click label")
    event_id: Id | None = Field(None, description="idempotency key: a second event with the same user and id is ignored")
    payload: Payload | None = None


class EventsRequest(_Strict):
    events: list[Event] = Field(..., min_length=1, max_length=MAX_EVENTS)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"events": [
        {"user": "u42", "item": "i7", "channel": "watch", "time": 1717000000, "value": 35.0, "event_id": "e-1"},
        {"user": "u42", "item": "i7", "channel": "comment", "payload": {"text": "great goal!"}},
        {"user": "u42", "channel": "conversation", "payload": {"text": "I'd like a quote for my car"}},
    ]}]})


class EventRule:
    """What POST /events checks beyond the schema, from the bundle: event times within the run's plausible range
    (the import's rule, `data.timerange`) and payload vectors of a modality the model reads (a dense one, or a token
    modality: one token) with its dimension. One rule for the route (422) and the stream consumer (`modalrec consume
    --bundle`: the message dead-lettered), so both refuse the same events with the same message."""

    def __init__(self, dims: dict[str, int], time_rule):
        self.dims, self.time_rule = dims, time_rule

    @classmethod
    def of_bundle(cls, bundle) -> EventRule:
        schema = bundle.schema
        dims = dict(schema.item_dense) | {name: dim for name, (_, dim) in schema.item_tokens.items()}
        return cls(dims, bundle.pipeline.settings.time_rule())

    def time_errors(self, times, where: tuple = ("body",)) -> list[dict]:
        """Errors for (loc, time) pairs outside the plausible range of event times."""
        rule = self.time_rule
        return [{"loc": (*where, *loc), "type": "time_range", "msg": f"expected {rule.expected()}, found {rule.found(t)}"}
                for loc, t in times if t is not None and rule.message(t) is not None]

    def errors(self, events, where: tuple = ("body", "events")) -> list[dict]:
        """422 errors (loc, msg, type) of every event, located at `where` + (index, field...)."""
        errors = []
        for i, ev in enumerate(events):
            for name, vec in ((ev.payload.vectors or {}) if ev.payload else {}).items():
                if name in self.dims and len(vec) != self.dims[name]:
                    errors.append({"loc": (*where, i, "payload", "vectors", name), "type": "vector_dimension",
                                   "msg": f"expected {self.dims[name]} values for modality '{name}', found {len(vec)}"})
        return errors + self.time_errors([((i, "time"), ev.time) for i, ev in enumerate(events)], where)

    def __call__(self, event: Event) -> str | None:
        """The reason one event is refused (`field: message; ...`, as the consumer words its other reasons)."""
        errors = self.errors([event], ())
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors) or None


class EventsResponse(BaseModel):
    accepted: int = Field(..., description="stored (durable when this response is sent)")
    duplicates: int = Field(..., description="ignored: same user and event_id already stored")
    cold_user_events: int = Field(..., description="events of users the bundle does not know (cold starts)")
    cold_item_events: int = Field(..., description="events of items the bundle does not know (cold starts)")


Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Vector = Annotated[list[Finite], Field(min_length=1, max_length=8192)]


class NewItem(_Strict):
    """An item that appeared after export, described as the model's side table describes items."""

    id: Id
    categorical: dict[Name, RawValue] = Field(
        default_factory=dict, max_length=256, description="item categorical (or numeric) feature -> raw value, "
        "as in the training data (e.g. {\"creator_id\": \"c7\"}); a value not seen in training, a null or a "
        "feature left out is unknown (code 0), as offline")
    multi: dict[Name, Annotated[list[RawListValue], Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=256, description="multi-valued feature -> raw values (e.g. "
        "{\"tags\": [\"a\", \"b\"]}); values not seen in training are dropped")
    text: dict[Name, Annotated[str, StringConstraints(max_length=100_000)]] = Field(
        default_factory=dict, max_length=64, description="text modality -> its text, read as the model reads it "
        "(a bag of the words seen in training)")
    vectors: dict[Name, Vector] = Field(
        default_factory=dict, max_length=64, description="dense content modality -> its precomputed vector, of "
        "the dimension the model reads (e.g. an audio embedding)")
    tokens: dict[Name, Annotated[list[Vector], Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=64, description="token modality -> its precomputed token vectors (video "
        "frames, reviews), at most the model's token count T, each of its dimension; [] or left out: absent")
    ttl_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="seconds from this registration after which the item expires: it is then deleted "
        "(as by DELETE /items/{id}) on every service process sharing the state store, within about a second of "
        "that time. Default: the service's --item-ttl (none: never). Registering the id again restarts it")


def _item_doc(item: NewItem, expires_at: float | None) -> str:
    """The stored JSON document of a registered item: the validated request item, plus `expires_at` (unix
    seconds) when it expires. An absolute time in the document, so every process sharing the store, and every
    restart, agrees on when the item expires, whatever its own --item-ttl."""
    body = item.model_dump_json(exclude_defaults=True)
    if expires_at is None:
        return body
    return f'{body[:-1]},"expires_at":{json.dumps(float(expires_at))}}}'  # the object's last member


def _read_doc(body: str) -> tuple[NewItem, float | None]:
    """(item, expiry) of a stored document (`_item_doc`); ValueError when it is not one."""
    d = json.loads(body)
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, found {type(d).__name__}")  # noqa: TRY004 - one error kind
    expires = d.pop("expires_at", None)
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))
                                or not math.isfinite(expires)):
        raise ValueError(f"expires_at must be unix seconds, found {expires!r}"[:200])
    return NewItem.model_validate(d), None if expires is None else float(expires)


class ItemsRequest(_Strict):
    items: list[NewItem] = Field(..., min_length=1, max_length=MAX_NEW_ITEMS)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [
        {"id": "seg-123", "categorical": {"creator_id": "c7"}, "vectors": {"audio_emb": [0.1, -0.3, 0.7]},
         "tokens": {"frame_emb": [[0.2, 0.1, -0.4], [0.0, 0.3, 0.1]], "review_emb": [[0.5, -0.1, 0.2]]}},
    ]}]})


class ItemsResponse(BaseModel):
    registered: int = Field(..., description="new ids, scoreable from now on (durable when this response is sent)")
    replaced: int = Field(..., description="ids registered before: their features are replaced (the latest wins)")
    known_to_bundle: int = Field(..., description="ids the bundle knows: nothing changed, its tables stay as trained")
    known_ids: list[str] = Field(..., description="those ids")
    items: int = Field(..., description="items registered with the service in all")


DeleteResult = Literal["deleted", "not_registered", "bundle_item"]


class DeleteItemResponse(BaseModel):
    id: str
    result: Literal["deleted"] = Field("deleted", description="unknown from now on (durable when this response is "
                                                               "sent): scored as a cold start, never retrieved")
    items: int = Field(..., description="items registered with the service in all, after the deletion")


class DeleteItemsRequest(_Strict):
    ids: list[Id] = Field(..., min_length=1, max_length=MAX_NEW_ITEMS, description="registered item ids to delete")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ids": ["seg-123", "seg-124"]}]})


class DeletedItem(BaseModel):
    id: str
    result: DeleteResult = Field(..., description="deleted: unknown from now on; not_registered: nothing to delete "
                                                  "(never registered, or deleted or expired before); bundle_item: "
                                                  "part of the exported model, not deletable")


class DeleteItemsResponse(BaseModel):
    deleted: int = Field(..., description="ids deleted (durable when this response is sent)")
    not_registered: int = Field(..., description="ids neither registered nor known to the bundle: nothing to do")
    bundle_items: int = Field(..., description="ids the bundle knows: unchanged (the exported model's items)")
    results: list[DeletedItem] = Field(..., description="one per distinct id, in request order")
    items: int = Field(..., description="items registered with the service in all, after the deletion")


class Context(_Strict):
    time: Time | None = Field(None, description="score as of this time: only events strictly before it are read "
                                                "(default: now, every stored event)")
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_ITEMS, description="items never to recommend")
    features: dict[str, FeatureValue] = Field(
        default_factory=dict, max_length=64, description="per-sample context features the model reads "
        "(task.context_features, e.g. {\"price_level\": 3}) for every candidate; a feature left out, or a value "
        "not seen in training, is read as unknown")
    item_features: dict[Id, dict[str, FeatureValue]] = Field(
        default_factory=dict, max_length=MAX_ITEMS, description="per-candidate context features (item id -> "
        "{feature: value}), over `features`, e.g. an item's discount_level at this impression")


class RecommendRequest(_Strict):
    user: Id
    k: int = Field(10, ge=1, le=500)
    context: Context = Field(default_factory=Context)
    n_candidates: int = Field(200, ge=1, le=MAX_ITEMS, description="retrieved candidates the ranker scores")
    candidates: list[Id] | None = Field(None, max_length=MAX_ITEMS, description="rank these instead of retrieving")
    exclude_seen: bool = Field(False, description="leave out items in the user's recent history")
    live_only: bool | None = Field(None, description="only registered items of rooms live now (each item's `room` "
                                   "in the response); default: the service's `serve --live-only`")
    one_per_room: bool = Field(False, description="with live_only: only each live room's latest registered item, so "
                               "a room is shown once")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"user": "u42", "k": 5}, {"user": "u42", "k": 3, "context": {"exclude": ["i7"]}, "exclude_seen": True},
        {"user": "u42", "k": 5, "live_only": True, "one_per_room": True}]})


class ScoredItem(BaseModel):
    item: str
    score: float | None = Field(..., description="the model's logit (ctr) or score (topk); null where the model "
                                "gives none (a ranking model never ranks an item without a row in its id tables)")
    probability: float | None = Field(None, description="ctr: sigmoid(score), the predicted probability")
    known: bool = Field(..., description="False: an item neither the bundle knows nor POST /items registered, "
                                         "scored as a cold start")
    room: str | None = Field(None, description="with live_only: the item's room, live when the response was made")


class RecommendResponse(BaseModel):
    user: str
    cold_start: bool = Field(..., description="the user is unknown to the bundle (may still have online events)")
    history_length: int = Field(..., description="events in the sequence the ranker read")
    items: list[ScoredItem]
    retrieved: dict[str, int] = Field(..., description="candidates by source: ann, popular, given")
    model: str
    shortfall: str | None = Field(None, description="why fewer than `k` items came back (fewer candidates than k "
                                                    "after exclusions); null when all k did")
    live_rooms: int | None = Field(None, description="with live_only: the rooms live when the request was served")


class HistoryEvent(_Strict):
    item: Id
    time: Time
    channel: str | None = Field(None, max_length=64, description="the event's channel (watch, like, ...): its action "
                                "tag for a model trained with task.history_channel_tags; default: the first history "
                                "channel")


class ScoreRequest(_Strict):
    user: Id
    items: list[Id] = Field(..., min_length=1, max_length=MAX_ITEMS)
    context: Context = Field(default_factory=Context)
    history: list[HistoryEvent] | None = Field(
        None, max_length=10_000,
        description="score with this behaviour sequence instead of the stored one (replay, what-if, parity checks)")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"user": "u42", "items": ["i7", "i9", "new-item"]},
        {"user": "u42", "items": ["i7"], "context": {"time": 1717000000},
         "history": [{"item": "i3", "time": 1716990000}, {"item": "i9", "time": 1716995000}]}]})


class ScoreResponse(BaseModel):
    user: str
    cold_start: bool
    history_length: int
    scores: list[ScoredItem]
    model: str


class UserState(BaseModel):
    user: str
    known: bool
    events: list[dict[str, Any]]
    counters: dict[str, dict[str, float]]


MAX_ROOM_EVENTS = 1000


class RoomEventIn(_Strict):
    room: Id = Field(..., description="the room: the raw value, as text, of the items' group feature (the group "
                                      "feature of the run's interaction graph, else the first item categorical feature)")
    live: bool = Field(..., description="true: the room started (live from now on); false: it stopped")
    time: Time | None = Field(None, description="when; default: when the service receives it. A room keeps its "
                                                "latest event by time: an older one is stale and ignored")


class RoomsRequest(_Strict):
    rooms: list[RoomEventIn] = Field(..., min_length=1, max_length=MAX_ROOM_EVENTS)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"rooms": [
        {"room": "a0007", "live": True, "time": 1717000000}, {"room": "a0003", "live": False}]}]})


class RoomsResponse(BaseModel):
    applied: int = Field(..., description="events stored (durable when this response is sent)")
    stale: int = Field(..., description="events ignored: their room's stored event is later")
    live_rooms: int = Field(..., description="rooms live now (after these events)")


class RoomState(BaseModel):
    room: str
    live: bool
    by: Literal["event", "items"] = Field(..., description="event: its latest start / stop; items: no event, live "
                                                           "while it has registered items")
    time: int | None = Field(..., description="time of its latest event")
    items: int = Field(..., description="its registered items (not deleted, not expired)")


class RoomsState(BaseModel):
    live_rooms: int
    rooms: list[RoomState]


SegmentModality = Literal["encoding", "registered", "failed", "discarded", "superseded", "dropped"]


class SegmentStatus(BaseModel):
    id: str
    status: Literal["queued", "partial", "registered", "failed", "deleted"] = Field(
        ..., description="queued: nothing registered yet; partial: registered (recommendable) with its fast "
        "modalities, slow ones (speech) still encoding; registered: every modality in (or failed: see errors); "
        "failed: nothing registered; deleted: deleted, expired or registered again since")
    status_url: str
    recommendable: bool
    modalities: dict[str, SegmentModality] | None = Field(
        ..., description="raw modality -> encoding, registered, failed, discarded (encoded after the segment was "
        "deleted), superseded (a slow modality not encoded: a newer segment of the same room was queued before its "
        "encoding started) or dropped (not encoded: beyond serve --segment-queue waiting jobs); null where this "
        "process did not receive the segment: `registered` then says what the state store holds")
    registered: list[str] = Field(default_factory=list, description="raw modalities in the registered item")
    errors: dict[str, str] | None = None
    seconds_to_recommendable: float | None = Field(None, description="from the request to the first registration")
    seconds_to_complete: float | None = Field(None, description="from the request to the last modality registered")


class Invalid(Exception):
    """Raised by a route: a 422 with these errors (loc, msg, type), worded as the request validation's."""

    def __init__(self, errors: list[dict]):
        super().__init__(errors)
        self.errors = errors
