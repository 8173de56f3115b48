"""The Redis state store (`redis://HOST:PORT[/DB]`): several service processes share it. See `serve.state`
for the contract every store keeps (durability, idempotent event ids, the item log)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from .state import AppendResult, StateURLError, StoredEvent, _check_if_body

log = logging.getLogger("modalrec.serve")


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

# Items and rooms alike. KEYS: a hash (id -> document), its sequence counter, its log zset (as _PUT_ITEMS_LUA or
# _PUT_ROOMS_LUA); ARGV: the sequence number read last -> {current number, id1, document1 ('' if gone), ...}
_LOG_SINCE_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')
local out = {tonumber(redis.call('GET', KEYS[2]) or '0')}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[1], id) or ''
end
return out
"""


# KEYS: as _PUT_ITEMS_LUA; ARGV: id1, new body1, expected body1, ... -> the ids rewritten
_UPDATE_ITEMS_LUA = """
local out = {}
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 2] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    local seq = redis.call('INCR', KEYS[2])
    redis.call('ZADD', KEYS[3], seq, ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

# KEYS: rooms hash (room -> "live|time"), room sequence counter, room log zset (one hash slot)
# ARGV: room1, live1 (0/1), time1, ... -> 1 (applied) or 0 (stale: the stored event of the room is later) each
_PUT_ROOMS_LUA = """
local out = {}
for i = 1, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local t = tonumber(ARGV[i + 2])
  if cur and tonumber(string.match(cur, '|(.*)$')) > t then
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. '|' .. ARGV[i + 2])
    local seq = redis.call('INCR', KEYS[2])
    redis.call('ZADD', KEYS[3], seq, ARGV[i])
    out[#out + 1] = 1
  end
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
        self._log_since = self.client.register_script(_LOG_SINCE_LUA)
        self._delete_items = self.client.register_script(_DELETE_ITEMS_LUA)
        self._update_items = self.client.register_script(_UPDATE_ITEMS_LUA)
        self._put_rooms = self.client.register_script(_PUT_ROOMS_LUA)
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

    def update_items(self, items: list[tuple[str, str, str]]) -> list[str]:
        if not items:
            return []
        return list(self._update_items(keys=self._item_keys(), args=[x for triple in items for x in triple]))

    def _room_keys(self) -> list[str]:
        rooms = f"{{{self.prefix}:rooms}}"
        return [rooms, f"{rooms}:seq", f"{rooms}:log"]

    def put_rooms(self, events: list[tuple[str, bool, int]]) -> list[bool]:
        if not events:
            return []
        args = [x for room, live, t in events for x in (room, int(bool(live)), int(t))]
        return [bool(x) for x in self._put_rooms(keys=self._room_keys(), args=args)]

    def rooms_since(self, seq: int) -> tuple[list[tuple[str, bool, int]], int]:
        res = self._log_since(keys=self._room_keys(), args=[int(seq)])
        flat, out = res[1:], []
        for k in range(0, len(flat), 2):
            live, _, t = flat[k + 1].partition("|")
            if t:
                out.append((flat[k], live == "1", int(t)))
        return out, int(res[0])

    def load_items(self) -> list[tuple[str, str]]:
        return sorted(self.client.hscan_iter(f"{self.prefix}:items", count=1000))

    def items_since(self, seq: int) -> tuple[list[tuple[str, str | None]], int]:
        res = self._log_since(keys=self._item_keys(), args=[int(seq)])
        flat = res[1:]
        # an id in the log without a body was deleted (delete_items, or by hand): a tombstone, body None
        return [(flat[k], flat[k + 1] or None) for k in range(0, len(flat), 2)], int(res[0])

    def item_seq(self) -> int:
        return int(self.client.get(self._item_keys()[1]) or 0)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()
