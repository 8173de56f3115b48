"""How an item registry (`serve.registry.ItemRegistry`) reads the items of the state store: the replay of every
stored item at startup (and when a swapped-in bundle's registry is built), then, at the start of requests, what
other processes sharing the store registered, replaced or deleted since (`sync_items`, throttled to one store query
per `item_sync_s` seconds), followed by the expiry sweep (`refresh_items`).

A stored item the bundle knows (a refreshed bundle trained on data that had it) is not skipped: it is applied as
absorbed (`serve.members`), a live member of its room scored with the bundle's row.
"""

from __future__ import annotations

import logging

from .schemas import _read_doc

log = logging.getLogger("modalrec.serve")


class StoreSync:
    """The state-store reading half of `ItemRegistry` (a mixin: it works on the registry's own state)."""

    def replay(self) -> int:
        """Registers the items stored by earlier runs (startup). Items that no longer fit the bundle (another
        bundle served on the same state: a changed dimension) are skipped with a warning; those it now knows are
        absorbed.
        Records the store's item sequence number read before loading: what is written meanwhile comes again
        through sync_items (and is skipped there when loaded here with the same body). Items whose expiry passed
        while no process ran are loaded too: the first request's expiry sweep deletes them before it scores."""
        seq_of = getattr(self.state, "item_seq", None)
        with self._registering:
            self._item_seq = int(seq_of()) if seq_of is not None and self._items_since is not None else 0
            load = getattr(self.state, "load_items", None)
            docs = [(i, body) for i, body in (load() if load is not None else []) if body]
            if not docs:
                return 0
            entries, bodies, known, skipped = self._stored_rows(docs)
            self._apply(entries)
            self._applied.update(bodies)
        log.info("replayed %d registered items from the state store (%d of them absorbed: now known to the bundle, "
                 "%d skipped)",
                 len(entries), known, skipped)
        return len(entries)

    def _stored_rows(self, docs: list[tuple[str, str]]) -> tuple[list[tuple], dict[str, str], int, int]:
        """The item table rows of stored items (id, JSON document): (entries for _apply: id, rows (None: an id the
        bundle knows, absorbed), expiry, room; id -> body of those; ids the bundle knows; items skipped with a warning
        as invalid or not fitting this bundle)."""
        entries, bodies, skipped, known = [], {}, 0, 0
        for item_id, body in docs:
            try:
                item, expires = _read_doc(body)
            except ValueError as e:  # pydantic's ValidationError and json's errors are ValueErrors
                log.warning("stored item %r is not a valid item (%s); skipped", item_id, str(e).splitlines()[0])
                skipped += 1
                continue
            if self.bundle.pipeline.items.lookup([item.id])[0] > 0:  # absorbed: scored with the bundle's row
                known += 1
                entries.append((item.id, None, expires, self.room(item)))
                bodies[item.id] = body
                continue
            row, errs = self.prepare(item, ("stored item", item.id))
            if errs:
                log.warning("stored item %r does not fit this bundle (%s); skipped", item.id, errs[0]["msg"])
                skipped += 1
                continue
            entries.append((item.id, row, expires, self.room(item)))
            bodies[item.id] = body
        return entries, bodies, known, skipped

    def refresh_items(self) -> dict[str, int]:
        """At the start of a request: the items other processes registered, replaced or deleted since the last
        sync (`sync_items`), then the expiry sweep (`expire_items`); both throttled, so most calls cost two clock
        reads. Returns counts for the metrics: registered, replaced, deleted (by other processes, or expired
        in the store before this process's sweep got to them), expired (deleted in the store by this sweep)."""
        registered, replaced, deleted = self._sync(False)
        expired, gone = self.expire_items()
        return {"registered": registered, "replaced": replaced, "deleted": deleted + gone, "expired": expired}

    def sync_items(self, force: bool = False) -> tuple[int, int]:
        """Applies the items other processes sharing the state store wrote since the last sync: returns
        (new ids, replaced); deleted ones are dropped (counted in `deletions_synced`). At most one store query
        per item_sync_s seconds, unless `force`: between those a call costs a clock read. A call while another
        thread registers or syncs returns at once (that thread holds the lock; the next call after it catches
        up) rather than queueing requests behind it. A failing store is logged and the request goes on with
        the items already known."""
        registered, replaced, _ = self._sync(force)
        return registered, replaced

    def _sync(self, force: bool) -> tuple[int, int, int]:
        """sync_items, returning (new ids, replaced, deleted)."""
        if self.item_sync_s is None or (not force and self.clock() < self._next_sync):
            return 0, 0, 0
        if not self._registering.acquire(blocking=False):
            return 0, 0, 0
        try:
            now = self.clock()
            if not force and now < self._next_sync:  # another thread synced while this one got the lock
                return 0, 0, 0
            self._next_sync = now + self.item_sync_s
            try:
                docs, seq = self._items_since(self._item_seq)
                if seq < self._item_seq:  # a new or restored store: its numbers start again; read it all
                    log.warning("the state store's item sequence went back from %d to %d (a new or restored "
                                "store?): reading every sequenced item again", self._item_seq, seq)
                    docs, seq = self._items_since(0)
            except Exception as e:  # noqa: BLE001 - scoring goes on with the items it has; retried next interval
                log.warning("could not read items registered by other processes from the %s state store: %s",
                            getattr(self.state, "kind", "?"), e)
                return 0, 0, 0
            # own registrations and items seen before come back with the body applied here: not applied again
            # (a replacement would drop a model's memoised content for nothing). Tombstones (body None) of ids
            # known here drop them; of ids unknown here (own deletions among them) change nothing. Each id
            # comes once, in its latest state, so the two lists commute
            changed = [(i, body) for i, body in docs if body is not None and self._applied.get(i) != body]
            deleted = len(self._remove([i for i, body in docs if body is None]))
            entries, bodies, _, _ = self._stored_rows(changed)
            registered, replaced = self._apply(entries)
            self._applied.update(bodies)
            self._item_seq = seq
            self.items_synced += registered + replaced
            self.deletions_synced += deleted
        finally:
            self._registering.release()
        if registered or replaced or deleted:
            log.info("applied %d new, %d replaced and %d deleted items of other processes", registered, replaced,
                     deleted)
        return registered, replaced, deleted
