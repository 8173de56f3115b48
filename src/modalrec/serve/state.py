"""Online user state: each user's behaviour sequence and counters, written by `/events`.

Two stores behind one protocol (`StateStore`), chosen by URL:

- `sqlite:///PATH[?synchronous=full|normal]` (default): embedded, nothing to install. WAL mode; a
  batch of events is one transaction and `append_events` returns only after COMMIT, so an event is
  acknowledged only once SQLite has it in the WAL. Durability argument: with `synchronous=FULL` (the
  default) SQLite fsyncs the WAL at every commit, so an acknowledged event survives a killed process,
  an OS crash and a power cut. With `synchronous=NORMAL` the commit is written to the WAL file
  without fsync: it survives the service process being killed (the OS holds the written pages) but the
  last commits may be lost to an OS crash or power cut; in exchange commits avoid an fsync.
  `SQLITE_PATH` relative paths are relative to the working directory (SQLAlchemy's convention:
  `sqlite:////abs/path.db` for an absolute path).
- `redis://HOST:PORT[/DB]` (scale-out: several service processes share it): one Lua script per event
  (dedup, sequence number, append, counters: atomic per event); a batch is acknowledged after every
  script returned. Redis acknowledges before its own disk write unless the server runs with
  `appendonly yes` and `appendfsync always` (then the AOF is fsynced before the reply); with the
  default `everysec` up to a second of acknowledged events can be lost if Redis itself crashes. The
  store warns at start when it can see that the server is not configured so.

Events of a user are ordered by (time, arrival sequence). An event id, when given, makes the append
idempotent: a second event with the same (user, event_id) is ignored (counted as a duplicate).

Items registered after export (`POST /items`: a new live segment, a new product) are kept in the same
store, one JSON document per item id (the validated request item; a later registration of the id
replaces it), written with the same durability as events and read back at startup: SQLite table
`items`, Redis hash `PREFIX:items`.

Several service processes share one store (one SQLite file, one Redis), so an item registered through one
must reach the others without a restart: every item write takes the next number of a store-wide item
sequence, atomically with the write (SQLite: column `items.seq`, the next MAX inside the write
transaction; Redis: one Lua script HSETs the body, INCRs `{PREFIX:items}:seq` and ZADDs the id to the log
`{PREFIX:items}:log` scored by that number). A process remembers the last number it applied and asks
`items_since(n)` for what changed after it. Items written before the sequence existed (older stores)
carry number 0: `load_items` returns them at startup, `items_since` never does.

Deleting an item (`delete_items`: DELETE /items/ID, or the expiry of its TTL) is a write of the same log: it
takes the next sequence number, so `items_since` returns the id with body None (a tombstone) and every process
drops it at its next sync; `load_items` no longer returns it, so a restart does not bring it back. SQLite keeps
the row with an empty body (the tombstone carries the number; a row is never removed, so MAX(seq) never goes
back, and an older service reading the file skips the empty body as an invalid item rather than replaying it);
Redis HDELs the body and logs the id (a logged id without a body is a tombstone). A tombstone costs one small
row (SQLite) or log entry (Redis) per deleted id; registering the id again overwrites it. `update_items` rewrites
an item only while its stored document is the one expected (a segment's slow modalities arriving after its
first registration must not bring back an item deleted, or overwrite one registered again, meanwhile).

Live rooms (`POST /rooms`: a room started or stopped) follow the same protocol with a sequence of their own: one
row per room holding its latest event by time (an older event than the stored one is stale: ignored), every
applied event taking the next room sequence number (SQLite table `rooms`; Redis hash `{PREFIX:rooms}`, counter
`{PREFIX:rooms}:seq`, log `{PREFIX:rooms}:log`); `rooms_since(n)` returns what changed after number n.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs

log = logging.getLogger("modalrec.serve")


@dataclass
class StoredEvent:
    user: str
    item: str | None
    channel: str
    time: int  # unix seconds
    value: float | None = None
    event_id: str | None = None
    payload: dict | None = None
    seq: int = 0  # arrival order, assigned by the store

    def to_json(self) -> dict:
        return {"user": self.user, "item": self.item, "channel": self.channel, "time": self.time,
                "value": self.value, "event_id": self.event_id, "payload": self.payload, "seq": self.seq}


@dataclass
class AppendResult:
    accepted: int = 0
    duplicates: int = 0
    seqs: list[int] = field(default_factory=list)


class StateStore(Protocol):
    kind: str

    def append_events(self, events: list[StoredEvent]) -> AppendResult:
        """Stores the events durably (see the module doc) before returning."""

    def recent(self, user: str, n: int, channels: Iterable[str] | None = None,
               before: int | None = None) -> list[StoredEvent]:
        """The user's last `n` events (of `channels`, strictly before time `before`), oldest first."""

    def counters(self, user: str) -> dict[str, dict]:
        """channel -> {"n": events, "value": sum of values, "last_time": latest event time}."""

    def count(self, user: str | None = None) -> int:
        """Number of stored events (of one user)."""

    def event_ids(self, user: str) -> set[str]:
        """The event ids stored for a user."""

    def put_items(self, items: list[tuple[str, str]]) -> None:
        """Stores registered items (id, JSON document) durably before returning; an id stored before is
        replaced (the latest registration wins), in list order."""

    def load_items(self) -> list[tuple[str, str]]:
        """Every registered item not deleted since (id, JSON document), the latest registration of each id."""

    def delete_items(self, ids: list[str], if_body: list[str] | None = None) -> list[str]:
        """Deletes registered items durably before returning, each deletion a write of the item sequence (a
        tombstone `items_since` returns); returns the ids that were stored (and are deleted now), in list
        order; ids not stored (never registered, deleted before) are skipped. With `if_body` (one document per
        id) an id is deleted only while its stored document is that one: the expiry sweep of a process must not
        delete a registration another process made after the one that expired."""

    def items_since(self, seq: int) -> tuple[list[tuple[str, str | None]], int]:
        """The items (id, latest JSON document; None: deleted) written after item sequence number `seq`, in
        sequence order, each id once; and the store's current item sequence number (what to ask for next time)."""

    def item_seq(self) -> int:
        """The store's current item sequence number (0: no item written since the sequence exists)."""

    def update_items(self, items: list[tuple[str, str, str]]) -> list[str]:
        """(id, new document, expected document): rewrites each item (a new item sequence number) only while its
        stored document is the expected one; returns the ids rewritten, in list order."""

    def put_rooms(self, events: list[tuple[str, bool, int]]) -> list[bool]:
        """(room, live, time) events, stored durably before returning, each applied unless the stored event of
        its room is later (time); returns which were applied."""

    def rooms_since(self, seq: int) -> tuple[list[tuple[str, bool, int]], int]:
        """The rooms whose state changed after room sequence number `seq` (room, live, time of its latest
        event), in sequence order, each once; and the current room sequence number."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class StateURLError(ValueError):
    pass


def open_state(url: str) -> StateStore:
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):]
        path, _, query = rest.partition("?")
        if not path:
            raise StateURLError(f"state URL '{url}': expected sqlite:///PATH")
        opts = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = set(opts) - {"synchronous"}
        if unknown:
            raise StateURLError(f"state URL '{url}': unknown option(s) {sorted(unknown)} (allowed: synchronous)")
        from .state_sqlite import SQLiteState

        return SQLiteState(Path(path), synchronous=opts.get("synchronous", "full"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .state_redis import RedisState

        return RedisState(url)
    raise StateURLError(f"state URL '{url}': expected sqlite:///PATH or redis://HOST:PORT")


def _check_if_body(ids: list[str], if_body: list[str] | None) -> None:
    """`delete_items`' documents to compare: one per id, or none."""
    if if_body is not None and len(if_body) != len(ids):
        raise ValueError(f"delete_items: {len(ids)} ids but {len(if_body)} documents to compare")
