"""The SQLite state store (`sqlite:///PATH`): events, counters, registered items and live rooms in one embedded
file, WAL mode, each batch one transaction acknowledged after COMMIT (the durability argument: `serve.state`)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from .state import AppendResult, StateURLError, StoredEvent, _check_if_body, log

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
            with self._transaction(con):  # committed after the WAL write (+fsync if FULL)
                if "seq" not in {r[1] for r in con.execute("PRAGMA table_info(items)")}:
                    con.execute("ALTER TABLE items ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
                    log.info("%s: added the item sequence column to the items table", self.path)
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
        with self._transaction(con):  # committed after the WAL write (+fsync if FULL)
            # the file's write lock is held from here to COMMIT (every process): the next numbers are ours.
            # Rows are never deleted (a deletion leaves a tombstone row) and a rewrite only raises a row's
            # seq, so MAX never goes back
            base = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0])
            con.executemany("INSERT INTO items(id, body, updated, seq) VALUES (?, ?, ?, ?) ON CONFLICT(id) "
                            "DO UPDATE SET body = excluded.body, updated = excluded.updated, seq = excluded.seq",
                            [(i, body, now, base + k) for k, (i, body) in enumerate(items, 1)])

    def delete_items(self, ids: list[str], if_body: list[str] | None = None) -> list[str]:
        if not ids:
            return []
        _check_if_body(ids, if_body)
        con = self._con()
        now = time.time()
        deleted: list[str] = []
        with self._transaction(con):  # committed after the WAL write (+fsync if FULL)
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
        return deleted

    @contextmanager
    def _transaction(self, con):
        """One write transaction under the write lock: committed at the end of the block, rolled back on any
        exception."""
        with self._write:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def update_items(self, items: list[tuple[str, str, str]]) -> list[str]:
        if not items:
            return []
        con = self._con()
        now = time.time()
        done: list[str] = []
        with self._transaction(con):  # committed after the WAL write (+fsync if FULL)
            seq = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM items").fetchone()[0])
            for item, body, expected in items:
                if con.execute("UPDATE items SET body = ?, updated = ?, seq = ? WHERE id = ? AND body = ?",
                               (body, now, seq + 1, item, expected)).rowcount:
                    seq += 1
                    done.append(item)
        return done

    def put_rooms(self, events: list[tuple[str, bool, int]]) -> list[bool]:
        if not events:
            return []
        con = self._con()
        now = time.time()
        applied: list[bool] = []
        with self._transaction(con):  # committed after the WAL write (+fsync if FULL)
            seq = int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM rooms").fetchone()[0])
            for room, live, t in events:
                ok = con.execute(
                    "INSERT INTO rooms(room, live, time, updated, seq) VALUES (?, ?, ?, ?, ?) ON CONFLICT(room) "
                    "DO UPDATE SET live = excluded.live, time = excluded.time, updated = excluded.updated, "
                    "seq = excluded.seq WHERE excluded.time >= rooms.time",
                    (room, int(bool(live)), int(t), now, seq + 1)).rowcount > 0
                seq += ok
                applied.append(ok)
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
