"""Events from a streaming log into the state store: a consumer beside the service, besides POST /events.

A `Consumer` reads batches from an `EventSource` (here Redis Streams with a consumer group), validates each
message with the API's `Event` model, appends the batch to the state store the service reads, then acknowledges.

Delivery: at least once, stored once. A message is acknowledged (XACK) only after `append_events` returned, i.e.
once its event is durable (see `serve.state`). A consumer killed before the ack leaves the message pending in the
group and it is delivered again: to the same consumer name when it restarts (it first re-reads its own pending
entries, id "0"), or to another consumer once idle for `claim_idle_s` (XAUTOCLAIM). The store ignores the second
append: every event has an id, its own `event_id` or else `<stream>:<message id>` (the same at every delivery),
and a (user, event_id) stored before is a duplicate. So a kill -9 neither loses nor double-counts an event.

Message: one stream entry per event, field `event` = a JSON document with the fields of a POST /events event;
without `time`, the time the entry entered the stream (its id's milliseconds). A message that is not a valid event
(not UTF-8 JSON, a field rule broken, no `event` field) is logged, counted, added to the dead-letter stream
`<stream>:dead` (fields id, event, reason, group, consumer) and acknowledged, both in one MULTI: never retried,
never blocking the others. A failure of the store or of Redis is not the message's fault: nothing is acknowledged,
the consumer waits (backoff up to 30 s) and reads again from its pending entries. The bundle's rule (its time
range and payload vector dimensions, `schemas.EventRule`, what POST /events applies) needs the bundle:
`Consumer(check=...)` / `consume(check=...)` take it (`bundle_rule`; `modalrec consume --bundle`), and an event it
refuses is dead-lettered with the message POST /events would give.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from .schemas import Event, to_seconds
from .state import StateStore, StoredEvent, open_state

log = logging.getLogger("modalrec.serve.stream")

FIELD = "event"  # the stream entry's field holding the event's JSON document (UTF-8)


class SourceError(ValueError):
    """The stream cannot be used: Redis unreachable at start, or too old for consumer groups with XAUTOCLAIM."""


@dataclass
class Message:
    id: str  # unique in its source (a stream entry id)
    body: bytes | None  # the event's JSON document; None: the entry has no `event` field (or was deleted)
    time_ms: int  # when it entered the log
    redelivered: bool = False  # delivered before and not acknowledged (a crash, a claim from a dead consumer)


class EventSource(Protocol):
    name: str  # the log's name: prefix of the event ids given to events without one

    def read(self, count: int, block_ms: int) -> list[Message]:
        """Up to `count` messages: first those delivered before and never acknowledged, then new ones (waiting up
        to `block_ms` for one)."""

    def ack(self, ids: list[str], dead: Iterable[tuple[Message, str]] = ()) -> None:
        """Acknowledges messages (never delivered again); `dead` (message, reason) go to the dead-letter log,
        atomically with the acknowledgement."""

    def recover(self) -> None:
        """After a failure: the next reads deliver again what was read and not acknowledged."""

    def close(self) -> None: ...


def _entries(resp: Any) -> list[tuple[bytes, dict]]:
    """XREADGROUP's answer (RESP2 list or RESP3 map) -> [(id, fields)]."""
    if not resp:
        return []
    groups = resp.values() if isinstance(resp, dict) else (entries for _, entries in resp)
    out: list[tuple[bytes, dict]] = []
    for entries in groups:
        if entries and isinstance(entries[0], list):
            entries = entries[0]  # RESP3 wraps each stream's entries once more
        out += [(i, f or {}) for i, f in entries if i is not None]
    return out


class RedisStreamSource:
    """A consumer `consumer` of group `group` on stream `stream` (group and stream created when missing: XGROUP
    CREATE ... MKSTREAM, reading from `start`: "0" the whole stream, "$" only what comes after)."""

    def __init__(self, url: str, stream: str = "events", group: str = "modalrec", consumer: str | None = None,
                 claim_idle_s: float = 60.0, start: str = "0", dead_maxlen: int = 1_000_000):
        import redis

        self._redis = redis
        # bytes, not decoded: an entry that is not UTF-8 must reach the dead-letter stream, not fail the read
        self.client = redis.Redis.from_url(url, decode_responses=False, health_check_interval=30)
        self.name = self.stream = stream
        self.group, self.start = group, start
        self.consumer = consumer or socket.gethostname()
        self.dead_stream = f"{stream}:dead"
        self.dead_maxlen = dead_maxlen
        self.claim_idle_ms = max(1, int(claim_idle_s * 1000))
        self.claim_every_s = max(0.05, min(claim_idle_s / 2, 30.0))
        try:
            version = str(self.client.info("server").get("redis_version", "0"))
            self._ensure_group()
        except redis.RedisError as e:
            raise SourceError(f"stream URL '{url}': cannot reach Redis or create group '{group}' ({e})") from None
        if tuple(int(x) for x in version.split(".")[:2] if x.isdigit()) < (6, 2):
            raise SourceError(f"stream URL '{url}': Redis {version} is too old (XAUTOCLAIM needs 6.2 or later)")
        self._pending: bytes | str | None = "0"  # cursor in this consumer's own pending entries; None: all re-read
        self._claim_from, self._next_claim = "0-0", 0.0

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.start, mkstream=True)
        except self._redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _messages(self, entries: list[tuple[bytes, dict]], redelivered: bool) -> list[Message]:
        out = []
        for i, f in entries:
            mid = i.decode() if isinstance(i, bytes) else i
            out.append(Message(mid, f.get(FIELD.encode(), f.get(FIELD)), int(mid.split("-", 1)[0]), redelivered))
        return out

    def read(self, count: int, block_ms: int) -> list[Message]:
        if self._pending is not None:  # first what this consumer read before and did not acknowledge
            got = _entries(self.client.xreadgroup(self.group, self.consumer, {self.stream: self._pending}, count=count))
            if got:
                self._pending = got[-1][0]
                return self._messages(got, True)
            self._pending = None
        now = time.monotonic()
        if now >= self._next_claim:  # then what consumers that died left pending longer than claim_idle_s
            nxt, got, *_ = self.client.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms,
                                                 start_id=self._claim_from, count=count)
            self._claim_from = nxt
            if nxt in (b"0-0", "0-0"):  # a full pass over the group's pending entries: rest a while
                self._next_claim = now + self.claim_every_s
            got = [(i, f or {}) for i, f in got if i is not None]
            if got:
                return self._messages(got, True)
        got = _entries(self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count,
                                              block=max(1, block_ms)))
        return self._messages(got, False)

    def ack(self, ids: list[str], dead: Iterable[tuple[Message, str]] = ()) -> None:
        pipe = self.client.pipeline(transaction=True)
        for m, reason in dead:
            pipe.xadd(self.dead_stream, {"id": m.id, "event": m.body or b"", "reason": reason[:2000],
                                         "group": self.group, "consumer": self.consumer},
                      maxlen=self.dead_maxlen, approximate=True)
        if ids:
            pipe.xack(self.stream, self.group, *ids)
        pipe.execute()

    def recover(self) -> None:
        self._pending = "0"
        self._ensure_group()  # the stream (and group) may have been deleted meanwhile

    def pending(self) -> int:
        """Messages of the group delivered and not acknowledged (all consumers)."""
        return int(self.client.xpending(self.stream, self.group)["pending"])

    def close(self) -> None:
        self.client.close()


def _reason(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in e.errors())[:2000]


class Consumer:
    """Reads batches from `source`, appends the valid events to `state`, then acknowledges the batch. Counters:
    `accepted` (stored), `duplicates` (already stored: a redelivery, or a producer's retry), `invalid` (sent to
    the dead-letter log), `redelivered` (messages delivered again after a crash), `batches`."""

    def __init__(self, source: EventSource, state: StateStore, batch: int = 500, block_ms: int = 1000,
                 check: Callable[[Event], str | None] | None = None):
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.source, self.state, self.batch, self.block_ms, self.check = source, state, batch, block_ms, check
        self.accepted = self.duplicates = self.invalid = self.redelivered = self.batches = 0
        self._stop = threading.Event()

    def stats(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "invalid": self.invalid,
                "redelivered": self.redelivered, "batches": self.batches}

    def stop(self) -> None:
        """Finish the batch in hand (append, acknowledge), then return from `run`."""
        self._stop.set()

    def parse(self, m: Message) -> StoredEvent | str:
        """The message's event, or the reason it is not one."""
        if m.body is None:
            return f"no '{FIELD}' field (or the entry was deleted from the stream)"
        try:
            ev = Event.model_validate_json(m.body)
        except ValidationError as e:
            return _reason(e)
        if self.check is not None:
            try:
                reason = self.check(ev)
            except Exception as e:  # noqa: BLE001 - a rule that fails on a message refuses it, never loops on it
                reason = f"check failed: {type(e).__name__}: {e}"
            if reason:
                return reason
        return StoredEvent(user=ev.user, item=ev.item, channel=ev.channel, time=to_seconds(ev.time, m.time_ms // 1000),
                           value=ev.value, event_id=ev.event_id or f"{self.source.name}:{m.id}",
                           payload=None if ev.payload is None else ev.payload.model_dump(exclude_none=True))

    def step(self) -> int:
        """One batch: read, validate, append (durable on return), acknowledge. The number of messages handled."""
        msgs = self.source.read(self.batch, self.block_ms)
        if not msgs:
            return 0
        events: list[StoredEvent] = []
        dead: list[tuple[Message, str]] = []
        for m in msgs:
            r = self.parse(m)
            if isinstance(r, str):
                dead.append((m, r))
                log.warning("message %s of %s is not a valid event (dead-lettered): %s", m.id, self.source.name, r)
            else:
                events.append(r)
        self.redelivered += sum(m.redelivered for m in msgs)
        res = self.state.append_events(events)
        self.accepted += res.accepted
        self.duplicates += res.duplicates
        self.source.ack([m.id for m in msgs], dead)  # only now: the events are durable
        self.invalid += len(dead)
        self.batches += 1
        return len(msgs)

    def run(self, exit_idle_s: float | None = None, report_every_s: float = 30.0) -> dict[str, int]:
        """Loops over `step` until `stop()` (or, with `exit_idle_s`, until nothing came for that long). A failure of
        the log or the store leaves the batch unacknowledged: wait (0.1 s doubling to 30 s), read it again."""
        backoff = 0.0
        idle_since = last_report = time.monotonic()
        while not self._stop.is_set():
            try:
                n = self.step()
                backoff = 0.0
            except Exception as e:  # noqa: BLE001 - Redis or the store: nothing acknowledged, retried
                backoff = min(30.0, max(0.1, 2 * backoff))
                log.error("consumer of %s: %s: %s; retrying in %.1f s", self.source.name, type(e).__name__, e, backoff)
                self._stop.wait(backoff)
                try:
                    self.source.recover()
                except Exception as e2:  # noqa: BLE001 - still down: the next step fails and waits again
                    log.error("consumer of %s: recover: %s", self.source.name, e2)
                continue
            now = time.monotonic()
            if n:
                idle_since = now
            elif exit_idle_s is not None and now - idle_since >= exit_idle_s:
                break
            if now - last_report >= report_every_s:
                last_report = now
                log.info("consumer of %s: %s", self.source.name, self.stats())
        return self.stats()


def bundle_rule(bundle_dir) -> Callable[[Event], str | None]:
    """The check POST /events applies with the bundle at `bundle_dir` (loaded and verified: this imports torch)."""
    from pathlib import Path

    from .bundle import load_bundle
    from .schemas import EventRule

    return EventRule.of_bundle(load_bundle(Path(bundle_dir)))


def consume(redis_url: str, state_url: str, stream: str = "events", group: str = "modalrec",
            consumer: str | None = None, batch: int = 500, block_ms: int = 1000, claim_idle_s: float = 60.0,
            start: str = "0", exit_idle_s: float | None = None, handle_signals: bool = True,
            check: Callable[[Event], str | None] | None = None) -> dict[str, int]:
    """Moves events from a Redis stream into the state store the service reads, until SIGTERM/SIGINT.

    redis_url: the Redis holding the stream (redis://HOST:PORT[/DB]); state_url: the service's state store
    (sqlite:///PATH or redis://HOST:PORT, as `serve --state`); stream, group: the stream and consumer group (both
    created when missing; a new group reads from `start`: "0" the whole stream, "$" only new entries);
    consumer: this process's name in the group (default: the host name), unique among running consumers and
    the same across restarts, so a restarted consumer first finishes its own pending entries; batch: messages
    per read, append and ack; block_ms: longest wait of a read for new messages (also the longest delay of a
    clean stop); claim_idle_s: entries another consumer left pending longer than this are taken over (it
    died); exit_idle_s: return once nothing came for this long (a backfill, a benchmark; default: run on);
    handle_signals: the first SIGTERM/SIGINT stops cleanly (the batch in hand is appended and acknowledged),
    a second one interrupts at once (safe too: what is not acknowledged is delivered again); check: a rule an
    event must pass (the reason it fails, or None), e.g. `bundle_rule(BUNDLE)`: a failing event is dead-lettered
    with that reason. Returns the counters (accepted, duplicates, invalid, redelivered, batches)."""
    source = RedisStreamSource(redis_url, stream, group, consumer, claim_idle_s=claim_idle_s, start=start)
    try:
        state = open_state(state_url)
    except BaseException:
        source.close()
        raise
    c = Consumer(source, state, batch=batch, block_ms=block_ms, check=check)
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        if c._stop.is_set():
            raise KeyboardInterrupt
        log.info("consumer %s: signal %d, stopping after the batch in hand", source.consumer, signum)
        c.stop()

    if handle_signals and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, on_signal)
    log.info("consumer %s of group %s on stream %s -> %s", source.consumer, group, stream, state_url)
    try:
        return c.run(exit_idle_s)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        log.info("consumer %s stopped: %s", source.consumer, c.stats())
        source.close()
        state.close()


def _document(e: Any) -> str:
    if isinstance(e, str):
        return e
    if isinstance(e, BaseModel):
        return e.model_dump_json(exclude_none=True)
    if isinstance(e, StoredEvent):
        e = {k: v for k, v in e.to_json().items() if k != "seq" and v is not None}
    return json.dumps(e, separators=(",", ":"))


def publish(redis_url: str, stream: str, events: Iterable[Any], maxlen: int | None = None,
            chunk: int = 1000) -> list[str]:
    """Appends events to a stream (one entry each, field `event`): dicts, `Event`s, `StoredEvent`s or JSON text
    (sent as is, valid or not). `maxlen`: trim the stream to about that many entries. Returns the entry ids."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    ids: list[str] = []
    try:
        pipe = client.pipeline(transaction=False)
        for k, e in enumerate(events, 1):
            pipe.xadd(stream, {FIELD: _document(e)}, maxlen=maxlen, approximate=True)
            if k % chunk == 0:
                ids += pipe.execute()
        ids += pipe.execute()
    finally:
        client.close()
    return ids
