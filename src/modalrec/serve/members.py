"""The live registered items of an item registry (`serve.registry`): each one's row, room, registration order and
expiry, whatever row it is scored with.

A registered item normally has its own appended row. An item registered online that the served bundle knows (a
refreshed bundle trained on data that had the segment: `absorbed`) is scored with the bundle's row, the trained
one, yet stays what it was registered as: a live member of its room (`room_items`: /recommend's live_only and
one_per_room), with its place in the registration order, its expiry, and its deletion (DELETE /items) removing it
from its room. Registration order (`seq`) is a counter of the registry, taken at every write of the item (its
registration, a replacement, a segment's later modalities), the same one its appended rows record (`born`).

Not thread-safe by itself: written under the registry's `_registering` lock (and its write lock for what requests
read: rooms, rows), read under its read lock.
"""

from __future__ import annotations

import heapq

import numpy as np


class Members:
    """Live registered ids -> row, room, order and expiry (see the module)."""

    def __init__(self):
        self.item_room: dict[str, str] = {}  # live registered id -> its room (the group feature's raw value)
        self.room_items: dict[str, dict[str, int]] = {}  # room -> its live registered ids -> the rows they score with
        self.absorbed: dict[str, int] = {}  # live registered ids the bundle knows -> the bundle's row
        self._seq: dict[int, int] = {}  # row of a room member -> its registration order
        self.expiry: dict[str, float] = {}  # live registered id -> when it expires (unix seconds)
        self._heap: list[tuple[float, str]] = []  # (expiry, id); entries no longer in `expiry` are stale

    def set(self, item: str, row: int, room: str | None, seq: int, absorbed: bool) -> None:
        """Records a live registered id (scored with `row`: its own, or the bundle's when `absorbed`) in `room`
        (None: no room), registered `seq`-th; replaces what was recorded of it. Under the write lock."""
        self.drop(item)
        if absorbed:
            self.absorbed[item] = row
        if room is not None:
            self.item_room[item] = room
            self.room_items.setdefault(room, {})[item] = row
            self._seq[row] = seq

    def drop(self, item: str) -> None:
        """Forgets a registered id's room and absorption (its expiry stays: `set_expiry`). Under the write lock."""
        self.absorbed.pop(item, None)
        room = self.item_room.pop(item, None)
        if room is not None:
            members = self.room_items[room]
            row = members.pop(item, None)
            self._seq.pop(row, None)
            if not members:
                del self.room_items[room]

    def live_rows(self, rooms: set[str], one_per_room: bool = False) -> np.ndarray:
        """The rows of the live registered items of `rooms` (with `one_per_room`: each room's latest registered),
        sorted. Under the read lock."""
        rows: list[int] = []
        for room in rooms:
            items = self.room_items.get(room)
            if not items:
                continue
            if one_per_room:
                rows.append(max(items.values(), key=self._seq.__getitem__))
            else:
                rows.extend(items.values())
        return np.array(sorted(rows), dtype=np.int64)

    def order(self, rows: np.ndarray) -> np.ndarray:
        """The registration order of room members' `rows` (larger: later)."""
        return np.array([self._seq.get(int(r), 0) for r in rows], dtype=np.int64)

    # ------------------------------------------------------------------------------------------ expiry
    def set_expiry(self, item: str, expires: float | None) -> None:
        """Records a live item's expiry (None: never); the old heap entry goes stale."""
        if expires is None:
            self.expiry.pop(item, None)
            return
        self.expiry[item] = expires
        heapq.heappush(self._heap, (expires, item))
        if len(self._heap) > 2 * len(self.expiry) + 64:  # mostly stale entries (TTLs refreshed): rebuild
            self._heap = [(t, i) for i, t in self.expiry.items()]
            heapq.heapify(self._heap)

    @property
    def expiring(self) -> bool:
        return bool(self._heap)

    def due(self, wall: float) -> dict[str, float]:
        """Takes off the heap the items whose expiry is at or before `wall`: id -> expiry."""
        heap, out = self._heap, {}
        while heap and heap[0][0] <= wall:
            t, item = heapq.heappop(heap)
            if self.expiry.get(item) == t:  # else stale: registered again with another expiry, or deleted
                out[item] = t
        return out

    def not_done(self, due: dict[str, float]) -> None:
        """Puts back items taken by `due` whose deletion failed (the next sweep tries again)."""
        for item, t in due.items():
            heapq.heappush(self._heap, (t, item))
