"""Items registered with the service after export (`POST /items`): a live stream's new segment, a new product.

A registered item gets a row appended to the item tables (`serve.tables.AppendableRows`) and an id in the
service's vocabulary (`ItemIds`), so /score, /recommend and the histories /events builds read its features from
then on. Its raw features are coded by the bundle's feature pipeline (`FeatureMaps.encode_row`: the training
codes by construction); the model's id tables have only the bundle's rows, so a registered item reaches the model
with id 0 (unknown, as offline for an item the model never saw) and its own side features and content. Registered
items are kept in the state store and replayed at startup; retrieval gets their vectors as the bundle's were
computed (`bundle.item_vector_rows`) and their group (`group_feature`: the room or channel an item belongs to).

Items registered by other processes sharing the state store arrive through `sync_items` (called at the start of
requests): at most one store query per `item_sync_s` seconds (0: every call; None: never, items of other
processes then arrive at a restart).

Registered items leave by `delete` (DELETE /items) or when their TTL passes (`ttl_s` of the item, else
`item_ttl_s`; the expiry sweep `expire_items` runs at the start of requests, at most once a second). Both write a
tombstone to the store first (other processes drop the item at their next sync; a restart does not replay it),
then unpublish the id here: it is looked up as 0, a cold start like an id never registered, and retrieval skips
its row (`alive`). The row stays (indices never move); registering the id again takes it back, and after
`ItemIds.reuse_after_s` a new id may take it (`ItemIds`). The model drops what it memoised about a row whose
content changed (`Model.forget_items`). `update` replaces a registered item's content keeping its expiry, and
only while the store still holds the registration it updates (a segment's slow modalities, `serve.segments`).

Each registered item's room is the raw value of its group feature (as text): live rooms (`serve.rooms`) select
their registered items through `room_items` / `live_rows` (`serve.members`: rooms, registration order, expiry).
An item registered online that the bundle knows (a refreshed bundle, swapped in, trained on data that had it) is
`absorbed`: scored with the bundle's trained row, it stays registered (a live member of its room, with its expiry,
deletable, its segment status kept) until it is deleted or expires.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np

from ..pipeline.side import GROUPS as SIDE_GROUPS
from .bundle import Bundle, item_vector_rows
from .item_sync import StoreSync
from .members import Members
from .ops import ReadWriteLock
from .schemas import NewItem, _item_doc
from .state import StateStore
from .tables import AppendableRows, ItemIds

log = logging.getLogger("modalrec.serve")


class ItemRegistry(StoreSync):
    """The item tables of a service process: the bundle's rows and the registered ones, with their lifecycle."""

    EXPIRY_SWEEP_S = 1.0  # at most one expiry sweep per this many seconds (of `clock`)

    def __init__(self, bundle: Bundle, state: StateStore, lock: ReadWriteLock, item_sync_s: float | None = 1.0,
                 item_ttl_s: float | None = None):
        self.bundle = bundle
        self.state = state
        self.model = bundle.model
        self.table = bundle.pipeline.item_table  # the collate's table: its arrays become AppendableRows at the first item
        self.maps = bundle.pipeline.item_maps
        self.n_items = bundle.n_items  # rows of the model's item id tables
        self._rw = lock
        # the group of an item: the interaction graph's group feature (when the run has a graph), else its first categorical feature
        # in the data's order (the creator of a video, a movie's category); the loaded table's names are sorted
        cats = self.table.categorical
        graph = bundle.pipeline.graph
        order = [*([graph.group_feature] if graph is not None else []), *bundle.pipeline.item_sizes.categorical, *cats]
        self.group_feature = next((name for name in order if name in cats), None)
        self.group = cats[self.group_feature] if cats else None
        self.vectors = bundle.item_vectors  # (n, d) retrieval vectors, rows appended for registered items
        self.has_vector: AppendableRows | None = None  # registered items with a retrieval vector
        self.vector_source = str((bundle.manifest.get("retrieval") or {}).get("source") or "")
        self.ids = ItemIds(bundle.pipeline.items, clock=lambda: self.clock())  # rows of old tombstones are reused
        self._growable = False
        self._registering = threading.Lock()  # one registration or sync at a time: store order = memory order
        if item_sync_s is not None and not (item_sync_s >= 0 and math.isfinite(item_sync_s)):
            raise ValueError(f"item_sync_s must be a number of seconds >= 0, or None (no syncing), not {item_sync_s!r}")
        self._items_since = getattr(state, "items_since", None)
        self.item_sync_s = item_sync_s if self._items_since is not None else None
        if item_sync_s is not None and self._items_since is None:
            log.warning("the %s state store has no items_since: items registered by other processes reach this "
                        "one only at a restart", getattr(state, "kind", type(state).__name__))
        self.clock = time.monotonic  # replaceable (tests)
        self._next_sync = -math.inf
        self._applied: dict[str, str] = {}  # id -> the stored body applied here
        self._item_seq = 0
        self.items_synced = 0  # items applied from other processes (new + replaced)
        self.deletions_synced = 0  # items deleted (or expired) by other processes, dropped here
        if item_ttl_s is not None and not (item_ttl_s > 0 and math.isfinite(item_ttl_s)):
            raise ValueError(f"item_ttl_s must be a number of seconds > 0, or None (items never expire), "
                             f"not {item_ttl_s!r}")
        self.item_ttl_s = item_ttl_s
        self._delete_items = getattr(state, "delete_items", None)
        # expiry times are unix seconds, stored in the item's document: every process sharing the store (and a
        # restart) agrees on them, so they are read on the wall clock, not on `clock` (replaceable: tests)
        self.wall_clock = time.time
        self._next_sweep = -math.inf
        self.alive: AppendableRows | None = None  # False: a deleted item's row (a tombstone), never retrieved
        self.born: AppendableRows | None = None  # when each registered row was written last (a counter)
        self._born = 1
        self.members = Members()  # live registered ids: rooms, registration order, expiry, absorbed ones
        self.replayed = self.replay()

    @property
    def n_registered(self) -> int:
        """Registered items known now (deleted and expired ones not counted; absorbed ones counted)."""
        return len(self.ids.extra) + len(self.members.absorbed)

    @property
    def room_items(self) -> dict[str, dict[str, int]]:
        return self.members.room_items

    @property
    def item_room(self) -> dict[str, str]:
        return self.members.item_room

    @property
    def _expiry(self) -> dict[str, float]:  # the expiry schedule moved to `members` (kept for older callers)
        return self.members.expiry

    @property
    def _expiry_heap(self) -> list[tuple[float, str]]:
        return self.members._heap

    def is_registered(self, item: str) -> bool:
        """A live registered id: its own row, or absorbed (the bundle's row)."""
        return item in self.ids.extra or item in self.members.absorbed

    def registered_body(self, item: str) -> str | None:
        """The stored document of a live registered id, None for another id."""
        return self._applied.get(item) if self.is_registered(item) else None

    def prepare(self, item: NewItem, where: tuple) -> tuple[dict | None, list[dict]]:
        """The item table row of a request item (group -> name -> value, every feature of the table; what the
        request leaves out is unknown / absent), or validation errors (422) located at `where`."""
        row, problems = self.maps.encode_row(self.table, item.categorical, item.multi, item.text, item.vectors,
                                             item.tokens)
        return row, [{"loc": ("body", *where, *loc), "msg": msg, "type": kind} for loc, msg, kind in problems]

    def room(self, item: NewItem) -> str | None:
        """The item's room: its group feature's raw value as text (None: no group feature, or no value)."""
        value = item.categorical.get(self.group_feature) if self.group_feature is not None else None
        return None if value is None else str(value)

    def register(self, items: list[NewItem], bodies: dict[str, str] | None = None) -> tuple[dict | None, list[dict]]:
        """Validates every item (nothing is stored when one is invalid: the errors are returned), stores the
        new ones durably in the state store, then adds them to the item tables. An id known to the bundle
        changes nothing (its tables stay as trained); an id registered before is replaced; a deleted or expired
        id is registered afresh (in its old row). An item's expiry (`ttl_s`, else the service's `item_ttl_s`,
        from now) is stored with it. Returns counts; `bodies` gets each stored document by id."""
        rows, errors = [], []
        for i, item in enumerate(items):
            row, errs = self.prepare(item, ("items", i))
            rows.append(row)
            errors += errs
        if errors:
            return None, errors
        in_bundle = self.bundle.pipeline.items.lookup([it.id for it in items]) > 0
        known = [it.id for it, k in zip(items, in_bundle) if k]
        now = self.wall_clock()
        entries, docs = [], []
        for it, row, k in zip(items, rows, in_bundle):
            if k:
                continue
            ttl = it.ttl_s if it.ttl_s is not None else self.item_ttl_s
            expires = None if ttl is None else now + ttl  # registering again restarts the TTL
            entries.append((it.id, row, expires, self.room(it)))
            docs.append((it.id, _item_doc(it, expires)))
        with self._registering:
            self.state.put_items(docs)
            registered, replaced = self._apply(entries)
            self._applied.update(docs)  # read back by sync_items with this body: not applied a second time
        if bodies is not None:
            bodies.update(docs)
        return {"registered": registered, "replaced": replaced, "known_to_bundle": len(known),
                "known_ids": known, "items": self.n_registered}, []

    def update(self, item: NewItem, expected: str) -> tuple[str | None, list[dict]]:
        """Replaces a registered item's features and content as `register` does (the model forgets what it memoised
        about its row), keeping its expiry, only while this process and the state store hold `expected` (the
        document the caller registered): an item deleted, expired or registered again since stays as it is.
        Returns (the new stored document, or None when it was not updated; validation errors)."""
        row, errors = self.prepare(item, ("item",))
        if errors:
            return None, errors
        with self._registering:
            if not self.is_registered(item.id) or self._applied.get(item.id) != expected:
                return None, []
            expires = self.members.expiry.get(item.id)
            body = _item_doc(item, expires)
            update = getattr(self.state, "update_items", None)
            if update is not None:
                if not update([(item.id, body, expected)]):
                    return None, []  # another process deleted or registered it again: its sync will tell
            else:
                self.state.put_items([(item.id, body)])
            self._apply([(item.id, row, expires, self.room(item))])
            self._applied[item.id] = body
        return body, []

    def live_rows(self, rooms: set[str], one_per_room: bool = False) -> np.ndarray:
        """The rows of the live registered items of `rooms` (absorbed ones: the bundle's rows; with `one_per_room`:
        each room's latest registered); call under the read lock."""
        return self.members.live_rows(rooms, one_per_room)

    def delete(self, ids: list[str]) -> dict[str, str]:
        """Deletes registered items: durably in the state store first (a tombstone that other processes sync
        and that keeps a restart from replaying the item), then here. Returns, for each distinct id in order,
        'deleted' (the store had it, or this process still knew it: it is unknown from now on), 'not_registered'
        (never registered, or deleted or expired before) or 'bundle_item' (the bundle's items are part of the
        exported model, which stays as trained: never deleted; an absorbed registered item is deleted as a
        registration, its bundle row staying). Raises NotImplementedError for a state store without delete_items."""
        unique = list(dict.fromkeys(ids))
        in_bundle = self.bundle.pipeline.items.lookup(unique) > 0 if unique else np.zeros(0, bool)
        in_bundle &= np.array([i not in self.members.absorbed for i in unique], dtype=bool)
        out = {i: "bundle_item" for i, k in zip(unique, in_bundle) if k}
        ours = [i for i, k in zip(unique, in_bundle) if not k]
        if ours:
            if self._delete_items is None:
                raise NotImplementedError(f"the {getattr(self.state, 'kind', type(self.state).__name__)} state store "
                                          "cannot delete items (it has no delete_items)")
            with self._registering:
                stored = set(self._delete_items(ours))
                removed = set(self._remove(ours))
            for i in ours:
                out[i] = "deleted" if i in stored or i in removed else "not_registered"
        return {i: out[i] for i in unique}

    def expire_items(self, force: bool = False) -> tuple[int, int]:
        """Deletes the registered items whose expiry time (unix seconds, `wall_clock`) has passed: in the state
        store, only while the stored registration is the one that expired (another process may have registered
        the id again, with a later expiry, since this one last synced), then here. At most one sweep per
        EXPIRY_SWEEP_S seconds of `clock` unless `force`; a call between sweeps, or with no expiring item,
        costs a clock read at most. The due items come off a heap ordered by expiry: a sweep reads only them,
        never every item. Returns (expired: deleted in the store by this sweep; dropped here only: the store
        had deleted or replaced them already). A failing store is logged and the items stay (a deletion
        happens in the store first, or not at all) until the next sweep, a second later."""
        if not self.members.expiring or (not force and self.clock() < self._next_sweep):
            return 0, 0
        if not self._registering.acquire(blocking=False):  # a registration, sync or sweep is under way
            return 0, 0
        try:
            now = self.clock()
            if not force and now < self._next_sweep:
                return 0, 0
            self._next_sweep = now + self.EXPIRY_SWEEP_S
            due = self.members.due(self.wall_clock())
            if not due:
                return 0, 0
            ids = list(due)
            try:
                stored = set(self._delete_items(ids, [self._applied[i] for i in ids])) if self._delete_items else set()
            except Exception as e:  # noqa: BLE001 - requests go on; the next sweep tries again
                self.members.not_done(due)
                log.warning("could not delete %d expired items in the %s state store (retried at the next sweep): "
                            "%s", len(ids), getattr(self.state, "kind", "?"), e)
                return 0, 0
            removed = self._remove(ids)
            dropped = len(set(removed) - stored)  # the store had deleted or replaced them: another process's doing
            self.deletions_synced += dropped
        finally:
            self._registering.release()
        log.info("%d registered items expired (%d deleted in the state store by this process)", len(removed),
                 len(stored))
        return len(stored), dropped

    def _remove(self, ids: list[str]) -> list[str]:
        """Unpublishes the live registered ids among `ids`: lookups find 0 from now on (a cold start, as an id
        never registered), retrieval skips their rows (`alive`), their expiry and applied body are forgotten,
        and the model drops what it memoised about them. The rows stay as tombstones (other items' indices never move);
        the id registered again takes its row back, a new id an old tombstone's (`ItemIds`). An absorbed id leaves its
        room and registration only (its bundle row stays as trained). Returns the ids removed. Under _registering."""
        live = [i for i in dict.fromkeys(ids) if self.is_registered(i)]
        if not live:
            return []
        with self._rw.write():
            indices = [self.ids.remove(item) for item in live if item in self.ids.extra]
            for index in indices:
                self.alive[index] = False
            for item in live:
                self.members.drop(item)
            if indices:
                self.model.forget_items(indices)
        for item in live:
            self.members.expiry.pop(item, None)
            self._applied.pop(item, None)
        return live

    def _tables(self) -> list[AppendableRows]:
        out = [arr for group in SIDE_GROUPS for arr in getattr(self.table, group).values()]
        return out + [t for t in (self.vectors, self.has_vector, self.alive, self.born) if t is not None]

    def _make_growable(self) -> None:
        """At the first registered item: every item table becomes an AppendableRows over the bundle's array
        (the bundle's arrays are neither copied nor changed). Under the write lock."""
        if self._growable:
            return
        for group in SIDE_GROUPS:
            table = getattr(self.table, group)
            for name in list(table):
                table[name] = AppendableRows(np.asarray(table[name]))
        if self.group_feature is not None:
            self.group = self.table.categorical[self.group_feature]
        if self.vectors is not None:
            self.vectors = AppendableRows(self.vectors)
            self.has_vector = AppendableRows(np.zeros(self.n_items, dtype=bool))
        self.alive = AppendableRows(np.ones(self.n_items, dtype=bool))
        self.born = AppendableRows(np.zeros(self.n_items, dtype=np.int64))  # registration order (rows are reused)
        self._growable = True

    def _apply(self, entries: list[tuple[str, dict | None, float | None, str | None]]) -> tuple[int, int]:
        """Adds (id, rows, expiry, room) to the item tables and the vocabulary, latest wins; returns (new ids,
        replaced). A deleted id comes back as new, in its tombstone's row. An id the bundle knows is absorbed: a
        member of its room scored with the bundle's row (its rows, when given, are not written). Under _registering."""
        if not entries:
            return 0, 0
        latest: dict[str, tuple[dict | None, float | None, str | None]] = {}
        registered = replaced = 0
        for item_id, row, expires, room in entries:
            if item_id in latest or self.is_registered(item_id):
                replaced += 1
            else:
                registered += 1
            latest[item_id] = (row, expires, room)
        in_bundle = self.bundle.pipeline.items.lookup(list(latest))
        absorbed = {i: int(k) for i, k in zip(latest, in_bundle) if k > 0}
        own = {i: v for i, v in latest.items() if i not in absorbed}
        vectors = None
        if self.vectors is not None and own:
            vectors = item_vector_rows(self.model, [row for row, _, _ in own.values()], self.table,
                                       self.vectors.shape[1], self.vector_source)
        with self._rw.write():
            self._make_growable()
            fresh = [i for i in own if i not in self.ids.extra and i not in self.ids.removed]
            total = len(self.ids.extra_ids) + len(fresh)  # at most: old tombstones' rows may be reused
            for table in self._tables():
                table.reserve(total)
            again: list[int] = []
            j = 0
            for item_id, (row, _, room) in latest.items():  # in order: the registration order of the members
                if item_id in absorbed:
                    self.members.set(item_id, absorbed[item_id], room, self._born, absorbed=True)
                    self._born += 1
                    continue
                index = self.ids.index_for(item_id)
                if index < len(self.ids):
                    again.append(index)  # replaced content, a tombstone's row taken back, or reused by a new id
                for group in SIDE_GROUPS:
                    for name, value in row[group].items():
                        getattr(self.table, group)[name][index] = value
                if vectors is not None:
                    self.vectors[index] = vectors[j]
                    self.has_vector[index] = bool(np.any(vectors[j]))
                j += 1
                self.alive[index] = True
                self.born[index] = self._born
                if item_id not in self.ids.extra:
                    added = self.ids.add(item_id)  # rows first, then the id: a lookup never finds a half-written item
                    assert added == index, (added, index)
                self.members.set(item_id, index, room, self._born, absorbed=False)
                self._born += 1
            if again:
                # what the model memoised about replaced content; about a reused row too (a request that looked the
                # id up before its deletion may have memoised the old content under that index since)
                self.model.forget_items(again)
        for item_id, (_, expires, _) in latest.items():
            self.members.set_expiry(item_id, expires)
        return registered, replaced
