"""Live rooms: which rooms (the groups items belong to: a channel, a seller, a live room) are live now, the same on every process sharing the state store.

A room is the group of an item: the raw value, as text, of its group feature (`ItemRegistry.group_feature`: the
group feature of the pipeline's interaction graph when the run has one, else the first item categorical feature). `POST /rooms` records room starts and stops in the state store: one row per
room holding its latest event by time (an event older than the stored one is stale and ignored, so events that
arrive out of order, or through several processes, end in the same state), each change numbered by a store-wide
room sequence. Every process applies what the others wrote since the last number it saw, at most once per
`sync_s` seconds (the service's --item-sync), as it does for items.

Live now: a room whose latest event is a start; a room without any event is live while it has a registered item
(not deleted, not expired), so a segment's TTL is its room's implicit end. A stopped room stays stopped, whatever
segments arrive for it, until a start. A live candidate (`/recommend` with `live_only`) is a registered item
(POST /segments or POST /items) of a live room: the bundle's items are segments of past streams, never live.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import NamedTuple

from .schemas import (  # module level: FastAPI reads the annotations
    RoomsRequest,
    RoomsResponse,
    RoomsState,
    to_seconds,
)

log = logging.getLogger("modalrec.serve")


class RoomEvent(NamedTuple):
    room: str
    live: bool
    time: int  # unix seconds


class Rooms:
    """The rooms' latest start / stop events known to this process (`explicit`), synced with the state store."""

    def __init__(self, state, sync_s: float | None = 1.0):
        self.state = state
        self._put = getattr(state, "put_rooms", None)
        self._since = getattr(state, "rooms_since", None)
        self.sync_s = sync_s if self._since is not None else None
        self.explicit: dict[str, tuple[bool, int]] = {}  # room -> (live, time of its latest event)
        self.clock = time.monotonic  # replaceable (tests)
        self._seq = 0
        self._next_sync = -math.inf
        self._lock = threading.Lock()
        self.synced = 0  # room changes applied from other processes
        if self._since is not None:
            self.sync(force=True)  # startup: every room's state

    def post(self, events: list[RoomEvent]) -> tuple[int, int]:
        """Stores the events durably, then applies them here; returns (applied, stale)."""
        if self._put is None:
            raise NotImplementedError(f"the {getattr(self.state, 'kind', type(self.state).__name__)} state store "
                                      "cannot keep rooms (it has no put_rooms)")
        with self._lock:
            applied = self._put([tuple(e) for e in events])
            for e, ok in zip(events, applied):
                if ok:
                    self.explicit[e.room] = (bool(e.live), int(e.time))
        n = sum(applied)
        return n, len(events) - n

    def sync(self, force: bool = False) -> int:
        """Applies the room changes other processes stored since the last sync (at most one store query per
        `sync_s` seconds unless `force`; a call while another thread syncs returns at once). Returns how many."""
        if self.sync_s is None and not force or self._since is None:
            return 0
        if not force and self.clock() < self._next_sync:
            return 0
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            self._next_sync = self.clock() + (self.sync_s or 0.0)
            try:
                changes, seq = self._since(self._seq)
                if seq < self._seq:  # a new or restored store: read it all
                    changes, seq = self._since(0)
                    self.explicit.clear()
            except Exception as e:  # noqa: BLE001 - requests go on with the rooms known; retried next interval
                log.warning("could not read room events from the %s state store: %s",
                            getattr(self.state, "kind", "?"), e)
                return 0
            for room, live, t in changes:
                self.explicit[room] = (bool(live), int(t))
            self._seq = seq
            self.synced += len(changes)
            return len(changes)
        finally:
            self._lock.release()

    def live(self, rooms_with_items) -> set[str]:
        """The rooms live now: started ones, and those without any event that have a registered item
        (`rooms_with_items`: the registry's `room_items`, read under its read lock)."""
        explicit = self.explicit
        out = {room for room, (on, _) in list(explicit.items()) if on}
        out.update(room for room in list(rooms_with_items) if room not in explicit)
        return out

    def states(self, rooms_with_items) -> list[dict]:
        """Every room known here: room, live, how it is known (event or segments), time of its latest event,
        registered items."""
        explicit = dict(self.explicit)
        out = []
        for room in sorted(set(explicit) | set(rooms_with_items)):
            n = len(rooms_with_items.get(room, ()))
            if room in explicit:
                on, t = explicit[room]
                out.append({"room": room, "live": on, "by": "event", "time": t, "items": n})
            else:
                out.append({"room": room, "live": True, "by": "items", "time": None, "items": n})
        return out


def add_room_routes(app, *, rooms: Rooms, registry, lock, require_key, sync_items, invalid, time_errors,
                    metrics) -> None:
    """POST /rooms and GET /rooms on `app` (`lock`: the item tables' read/write lock; `time_errors`: the bundle's
    time rule, `EventRule.time_errors`)."""
    from fastapi import Depends, HTTPException

    def live_now() -> set[str]:
        with lock.read():
            return rooms.live(registry.room_items)

    @app.post("/rooms", response_model=RoomsResponse, tags=["items"], dependencies=[Depends(require_key)],
              summary="Rooms started or stopped: /recommend with live_only returns only registered items of live rooms, "
                      "on every process sharing the state store; acknowledged once durably stored")
    def post_rooms(req: RoomsRequest) -> RoomsResponse:
        errors = time_errors([(("rooms", i, "time"), e.time) for i, e in enumerate(req.rooms)])
        if errors:
            raise invalid(errors)
        now = int(time.time())
        try:
            applied, stale = rooms.post([RoomEvent(e.room, e.live, to_seconds(e.time, now)) for e in req.rooms])
        except NotImplementedError as e:
            raise HTTPException(501, str(e)) from None
        metrics.inc("modalrec_rooms", "applied", applied)
        if stale:
            metrics.inc("modalrec_rooms", "stale", stale)
        return RoomsResponse(applied=applied, stale=stale, live_rooms=len(live_now()))

    @app.get("/rooms", response_model=RoomsState, tags=["items"],
             summary="Every room known here: live or not, by its latest event or (without one) its registered items")
    def get_rooms() -> RoomsState:
        sync_items()
        with lock.read():
            states = rooms.states(registry.room_items)
        return RoomsState(live_rooms=sum(s["live"] for s in states), rooms=states)
