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
row (SQLite) or log entry (Redis) per deleted id; registering the id again overwrites it.
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


# ------------------------------------------------------------------------------------------- Redis

# KEYS: events zset, counters hash, event-id set, sequence counter (all of one user: one hash slot)
# ARGV: event_id ('' = none), time, member body (JSON), channel, value ('' = none)
_APPEND_LUA = """
if ARGV[1] ~= '' then
  if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 0 end
end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], ARGV[2], string.format('%016d', seq) .. '|' .. ARGV[3])
redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[4], 1)
if ARGV[5] ~= '' then redis.call('HINCRBYFLOAT', KEYS[2], 'v:' .. ARGV[4], ARGV[5]) end
local last = tonumber(redis.call('HGET', KEYS[2], 't:' .. ARGV[4]) or '-1e300')
if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[2], 't:' .. ARGV[4], ARGV[2]) end
return seq
"""

# KEYS: items hash, item sequence counter, item log zset (one hash slot: see RedisState._item_keys)
# ARGV: id1, body1, id2, body2, ... -> the last sequence number given
_PUT_ITEMS_LUA = """
local seq = 0
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  seq = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[3], seq, ARGV[i])
end
return seq
"""

# KEYS: as _PUT_ITEMS_LUA; ARGV: id1, expected body1 ('' = any), id2, ... -> the ids deleted. A deleted id
# loses its body and is logged with a new number: a logged id without a body is a tombstone
_DELETE_ITEMS_LUA = """
local out = {}
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and (ARGV[i + 1] == '' or cur == ARGV[i + 1]) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    local seq = redis.call('INCR', KEYS[2])
    redis.call('ZADD', KEYS[3], seq, ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

# KEYS: as _PUT_ITEMS_LUA; ARGV: the sequence number read last -> {current number, id1, body1, ...}
_ITEMS_SINCE_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')
local out = {tonumber(redis.call('GET', KEYS[2]) or '0')}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[1], id) or ''
end
return out
"""


class RedisState:
    """Events of a user in a sorted set scored by time; members `<seq:016d>|<json>` so equal times
    keep arrival order. Keys carry the user as a hash tag (`prefix:{user}:...`), so one user's keys
    live in one slot and the append script stays valid on a Redis Cluster."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "modalrec"):
        try:
            import redis
        except ImportError:  # pragma: no cover
            raise StateURLError("the Redis state store needs the 'redis' package (pip install modalrec[serve])")
        self.url = url
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise StateURLError(f"state URL '{url}': cannot reach Redis ({e})") from None
        self._append = self.client.register_script(_APPEND_LUA)
        self._put_items = self.client.register_script(_PUT_ITEMS_LUA)
        self._items_since = self.client.register_script(_ITEMS_SINCE_LUA)
        self._delete_items = self.client.register_script(_DELETE_ITEMS_LUA)
        self._warn_durability()

    def _warn_durability(self) -> None:
        try:
            cfg = self.client.config_get("append*")
        except Exception:  # noqa: BLE001 - CONFIG may be renamed or disabled on managed servers
            return
        if cfg.get("appendonly") != "yes" or cfg.get("appendfsync") != "always":
            log.warning("redis at %s runs with appendonly=%s appendfsync=%s: acknowledged events can be lost "
                        "if Redis crashes (use appendonly yes, appendfsync always)", self.url,
                        cfg.get("appendonly"), cfg.get("appendfsync"))

    def _keys(self, user: str) -> list[str]:
        base = f"{self.prefix}:{{{user}}}"
        return [f"{base}:ev", f"{base}:cnt", f"{base}:eid", f"{base}:seq"]

    def append_events(self, events: list[StoredEvent]) -> AppendResult:
        res = AppendResult()
        if not events:
            return res
        pipe = self.client.pipeline(transaction=False)
        for e in events:
            body = json.dumps({"i": e.item, "c": e.channel, "t": int(e.time), "v": e.value, "e": e.event_id,
                               "p": e.payload}, separators=(",", ":"))
            self._append(keys=self._keys(e.user),
                         args=[e.event_id or "", int(e.time), body, e.channel,
                               "" if e.value is None else repr(float(e.value))], client=pipe)
        for e, seq in zip(events, pipe.execute()):
            if int(seq) == 0:
                res.duplicates += 1
            else:
                e.seq = int(seq)
                res.accepted += 1
                res.seqs.append(e.seq)
        return res

    def _parse(self, user: str, member: str) -> StoredEvent:
        seq, _, body = member.partition("|")
        d = json.loads(body)
        return StoredEvent(user, d["i"], d["c"], int(d["t"]), d["v"], d["e"], d["p"], int(seq))

    def recent(self, user: str, n: int, channels: Iterable[str] | None = None,
               before: int | None = None) -> list[StoredEvent]:
        if n <= 0:
            return []
        key = self._keys(user)[0]
        top = "+inf" if before is None else f"({int(before)}"
        wanted = None if channels is None else set(channels)
        out: list[StoredEvent] = []
        offset, page = 0, max(n, 64) if wanted is None else max(4 * n, 256)
        while len(out) < n:
            members = self.client.zrevrangebyscore(key, top, "-inf", start=offset, num=page)
            if not members:
                break
            for m in members:
                e = self._parse(user, m)
                if wanted is None or e.channel in wanted:
                    out.append(e)
                    if len(out) == n:
                        break
            offset += len(members)
            if len(members) < page:
                break
        return out[::-1]

    def counters(self, user: str) -> dict[str, dict]:
        h = self.client.hgetall(self._keys(user)[1])
        out: dict[str, dict] = {}
        for k, v in h.items():
            kind, _, ch = k.partition(":")
            c = out.setdefault(ch, {"n": 0, "value": 0.0, "last_time": 0})
            if kind == "n":
                c["n"] = int(v)
            elif kind == "v":
                c["value"] = float(v)
            elif kind == "t":
                c["last_time"] = int(float(v))
        return out

    def count(self, user: str | None = None) -> int:
        if user is not None:
            return int(self.client.zcard(self._keys(user)[0]))
        total = 0
        for key in self.client.scan_iter(match=f"{self.prefix}:{{*}}:ev", count=1000):
            total += int(self.client.zcard(key))
        return total

    def event_ids(self, user: str) -> set[str]:
        return set(self.client.smembers(self._keys(user)[2]))

    def _item_keys(self) -> list[str]:
        """The items hash (named as before the sequence existed), the sequence counter and the log (id scored
        by the number of its latest write). The hash tag of the last two is the hash's whole name, so all
        three share one hash slot and the scripts stay valid on a Redis Cluster."""
        items = f"{self.prefix}:items"
        return [items, f"{{{items}}}:seq", f"{{{items}}}:log"]

    def put_items(self, items: list[tuple[str, str]]) -> None:
        if not items:
            return
        # one script: bodies, sequence numbers and log land together (a batch is atomic, as MULTI/EXEC was)
        self._put_items(keys=self._item_keys(), args=[x for i, body in items for x in (i, body)])

    def delete_items(self, ids: list[str], if_body: list[str] | None = None) -> list[str]:
        if not ids:
            return []
        _check_if_body(ids, if_body)
        # one script: the bodies go, the numbers and the log entries come, together (atomic, as put_items);
        # a stored body is never '' (a JSON document), so '' means "whatever is stored"
        expected = if_body if if_body is not None else [""] * len(ids)
        return list(self._delete_items(keys=self._item_keys(), args=[x for pair in zip(ids, expected) for x in pair]))

    def load_items(self) -> list[tuple[str, str]]:
        return sorted(self.client.hscan_iter(f"{self.prefix}:items", count=1000))

    def items_since(self, seq: int) -> tuple[list[tuple[str, str | None]], int]:
        res = self._items_since(keys=self._item_keys(), args=[int(seq)])
        flat = res[1:]
        # an id in the log without a body was deleted (delete_items, or by hand): a tombstone, body None
        return [(flat[k], flat[k + 1] or None) for k in range(0, len(flat), 2)], int(res[0])

    def item_seq(self) -> int:
        return int(self.client.get(self._item_keys()[1]) or 0)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()
