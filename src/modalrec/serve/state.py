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

import json
import logging
import sqlite3
import threading
import time
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
        return SQLiteState(Path(path), synchronous=opts.get("synchronous", "full"))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .state_redis import RedisState

        return RedisState(url)
    raise StateURLError(f"state URL '{url}': expected sqlite:///PATH or redis://HOST:PORT")


# ------------------------------------------------------------------------------------------ SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    item TEXT,
    channel TEXT NOT NULL,
    time INTEGER NOT NULL,
    value REAL,
    event_id TEXT,
    payload TEXT,
    received REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_user_event_id ON events(user, event_id) WHERE event_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_user_time ON events(user, time, seq);
CREATE TABLE IF NOT EXISTS counters (
    user TEXT NOT NULL,
    channel TEXT NOT NULL,
    n INTEGER NOT NULL,
    value REAL NOT NULL,
    last_time INTEGER NOT NULL,
    PRIMARY KEY (user, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated REAL NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY,
    live INTEGER NOT NULL,
    time INTEGER NOT NULL,
    updated REAL NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rooms_seq ON rooms(seq);
"""
# after the migration of an items table created without seq (the index needs the column)
_SQLITE_ITEMS_SEQ_INDEX = "CREATE INDEX IF NOT EXISTS items_seq ON items(seq)"


def _check_if_body(ids: list[str], if_body: list[str] | None) -> None:
    """`delete_items`' documents to compare: one per id, or none."""
    if if_body is not None and len(if_body) != len(ids):
        raise ValueError(f"delete_items: {len(ids)} ids but {len(if_body)} documents to compare")


class SQLiteState:
    kind = "sqlite"

    def __init__(self, path: Path, synchronous: str = "full", busy_timeout_ms: int = 10_000):
        synchronous = synchronous.upper()
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise StateURLError(f"sqlite synchronous must be full, normal or extra, not '{synchronous.lower()}'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # One writer at a time inside this process: threads queue on a lock (FIFO-ish, no sleeping)
        # instead of on SQLite's busy handler, which backs off in sleeps of up to 100 ms. Other
        # processes sharing the file still meet busy_timeout.
        self._write = threading.Lock()
        con = self._con()
        con.executescript(_SQLITE_SCHEMA)
        self._migrate_items(con)

    def _migrate_items(self, con: sqlite3.Connection) -> None:
        """Adds the item sequence column to an items table created before it existed: its rows get seq 0
        (read at startup by load_items, never returned by items_since). Checked again under the write lock
        of the file, so two processes opening an old database at once add the column once."""
        if "seq" not in {r[1] for r in con.execute("PRAGMA table_info(items)")}:
            with self._write:
                con.execute("BEGIN IMMEDIATE")
                try:
                    if "seq" not in {r[1] for r in con.execute("PRAGMA table_info(items)")}:
                        con.execute("ALTER TABLE items ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
                        log.info("%s: added the item sequence column to the items table", self.path)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
        con.execute(_SQLITE_ITEMS_SEQ_INDEX)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            # one connection per thread: WAL readers never block the writer or each other
            con = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                  timeout=self.busy_timeout_ms / 1000)
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite could not switch to WAL mode (got {mode})")
            con.execute(f"PRAGMA synchronous={self.synchronous}")
            con.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def append_events(self, events: list[StoredEvent]) -> AppendResult:
        res = AppendResult()
        if not events:
            return res
        con = self._con()
        now = time.time()
        with self._write:
            return self._append(con, events, res, now)

    def _append(self, con: sqlite3.Connection, events: list[StoredEvent], res: AppendResult, now: float) -> AppendResult:
        con.execute("BEGIN IMMEDIATE")
        try:
            for e in events:
                cur = con.execute(
                    "INSERT OR IGNORE INTO events(user, item, channel, time, value, event_id, payload, received) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.user, e.item, e.channel, int(e.time), e.value, e.event_id,
                     None if e.payload is None else json.dumps(e.payload, separators=(",", ":")), now),
                )
                if cur.rowcount == 0:
                    res.duplicates += 1
                    continue
                e.seq = int(cur.lastrowid)
                res.accepted += 1
                res.seqs.append(e.seq)
                con.execute(
                    "INSERT INTO counters(user, channel, n, value, last_time) VALUES (?, ?, 1, ?, ?) "
                    "ON CONFLICT(user, channel) DO UPDATE SET n = n + 1, value = value + excluded.value, "
                    "last_time = max(last_time, excluded.last_time)",
                    (e.user, e.channel, float(e.value or 0.0), int(e.time)),
                )
            con.execute("COMMIT")  # the acknowledgement point: returns after the WAL write (+fsync if FULL)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return res

    def recent(self, user: str, n: int, channels: Iterable[str] | None = None,
               before: int | None = None) -> list[StoredEvent]:
        if n <= 0:
            return []
        sql = "SELECT user, item, channel, time, value, event_id, payload, seq FROM events WHERE user = ?"
        args: list = [user]
        if channels is not None:
            ch = list(channels)
            if not ch:
                return []
            sql += f" AND channel IN ({','.join('?' * len(ch))})"
            args += ch
        if before is not None:
            sql += " AND time < ?"
            args.append(int(before))
        sql += " ORDER BY time DESC, seq DESC LIMIT ?"
        args.append(int(n))
        rows = self._con().execute(sql, args).fetchall()
        return [StoredEvent(r[0], r[1], r[2], int(r[3]), r[4], r[5], None if r[6] is None else json.loads(r[6]),
                            int(r[7])) for r in reversed(rows)]

    def counters(self, user: str) -> dict[str, dict]:
        rows = self._con().execute("SELECT channel, n, value, last_time FROM counters WHERE user = ?",
                                   (user,)).fetchall()
        return {r[0]: {"n": int(r[1]), "value": float(r[2]), "last_time": int(r[3])} for r in rows}

    def count(self, user: str | None = None) -> int:
        if user is None:
            return int(self._con().execute("SELECT count(*) FROM events").fetchone()[0])
        return int(self._con().execute("SELECT count(*) FROM events WHERE user = ?", (user,)).fetchone()[0])

    def event_ids(self, user: str) -> set[str]:
        rows = self._con().execute("SELECT event_id FROM events WHERE user = ? AND event_id IS NOT NULL",
                                   (user,)).fetchall()
        return {r[0] for r in rows}

    def put_items(self, items: list[tuple[str, str]]) -> None:
        if not items:
            return
        con = self._con()
        now = time.time()
        with self._write:
            con.execute("BEGIN IMMEDIATE")
            try:
                # the file's write lock is held from here to COMMIT (every process): the next numbers are ours.
                # Rows are never deleted (a deletion leaves a tombstone row) and a rewrite only raises a row's
                # seq, so MAX never goes back
                base = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0])
                con.executemany("INSERT INTO items(id, body, updated, seq) VALUES (?, ?, ?, ?) ON CONFLICT(id) "
                                "DO UPDATE SET body = excluded.body, updated = excluded.updated, seq = excluded.seq",
                                [(i, body, now, base + k) for k, (i, body) in enumerate(items, 1)])
                con.execute("COMMIT")  # acknowledged after the WAL write (+fsync if FULL), as events
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def delete_items(self, ids: list[str], if_body: list[str] | None = None) -> list[str]:
        if not ids:
            return []
        _check_if_body(ids, if_body)
        con = self._con()
        now = time.time()
        deleted: list[str] = []
        with self._write:
            con.execute("BEGIN IMMEDIATE")
            try:
                seq = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0])
                for k, item in enumerate(ids):
                    # the row stays as a tombstone (empty body) carrying the deletion's number: items_since
                    # reports it, load_items skips it, and MAX(seq) cannot go back
                    sql = "UPDATE items SET body = '', updated = ?, seq = ? WHERE id = ? AND body != ''"
                    args: tuple = (now, seq + 1, item)
                    if if_body is not None:
                        sql += " AND body = ?"
                        args += (if_body[k],)
                    if con.execute(sql, args).rowcount:
                        seq += 1
                        deleted.append(item)
                con.execute("COMMIT")  # acknowledged after the WAL write (+fsync if FULL), as registrations
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return deleted

    def update_items(self, items: list[tuple[str, str, str]]) -> list[str]:
        if not items:
            return []
        con = self._con()
        now = time.time()
        done: list[str] = []
        with self._write:
            con.execute("BEGIN IMMEDIATE")
            try:
                seq = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0])
                for item, body, expected in items:
                    if con.execute("UPDATE items SET body = ?, updated = ?, seq = ? WHERE id = ? AND body = ?",
                                   (body, now, seq + 1, item, expected)).rowcount:
                        seq += 1
                        done.append(item)
                con.execute("COMMIT")  # acknowledged after the WAL write (+fsync if FULL), as registrations
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return done

    def put_rooms(self, events: list[tuple[str, bool, int]]) -> list[bool]:
        if not events:
            return []
        con = self._con()
        now = time.time()
        applied: list[bool] = []
        with self._write:
            con.execute("BEGIN IMMEDIATE")
            try:
                seq = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM rooms").fetchone()[0])
                for room, live, t in events:
                    ok = con.execute(
                        "INSERT INTO rooms(room, live, time, updated, seq) VALUES (?, ?, ?, ?, ?) ON CONFLICT(room) "
                        "DO UPDATE SET live = excluded.live, time = excluded.time, updated = excluded.updated, "
                        "seq = excluded.seq WHERE excluded.time >= rooms.time",
                        (room, int(bool(live)), int(t), now, seq + 1)).rowcount > 0
                    seq += ok
                    applied.append(ok)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return applied

    def rooms_since(self, seq: int) -> tuple[list[tuple[str, bool, int]], int]:
        con = self._con()
        con.execute("BEGIN")  # one snapshot, as items_since
        try:
            rows = con.execute("SELECT room, live, time FROM rooms WHERE seq > ? ORDER BY seq", (int(seq),)).fetchall()
            current = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM rooms").fetchone()[0])
        finally:
            con.execute("COMMIT")
        return [(r[0], bool(r[1]), int(r[2])) for r in rows], current

    def load_items(self) -> list[tuple[str, str]]:
        # rowid: first registration order (an upsert keeps the row), so a restart assigns the same order;
        # tombstones (deleted items: empty body) are not replayed
        return [(r[0], r[1]) for r in self._con().execute("SELECT id, body FROM items WHERE body != '' ORDER BY rowid")]

    def items_since(self, seq: int) -> tuple[list[tuple[str, str | None]], int]:
        con = self._con()
        # one read transaction: the rows and the current number come from one snapshot of the WAL, so a
        # write committed in between is neither missed nor counted as read
        con.execute("BEGIN")
        try:
            rows = con.execute("SELECT id, body FROM items WHERE seq > ? ORDER BY seq", (int(seq),)).fetchall()
            current = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0])
        finally:
            con.execute("COMMIT")
        return [(r[0], r[1] or None) for r in rows], current

    def item_seq(self) -> int:
        return int(self._con().execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0])

    def ping(self) -> bool:
        self._con().execute("SELECT 1").fetchone()
        return True

    def close(self) -> None:
        with self._lock:
            for con in self._all:
                try:
                    con.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()
