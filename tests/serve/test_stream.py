"""Events through a Redis stream (consumer group) into the state store, against a real redis-server on 127.0.0.1:
delivery to SQLite and Redis stores, the dead-letter stream, a crash between the append and the ack, kill -9 of
a consumer process mid-stream (nothing lost, nothing counted twice), two consumers sharing a group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

redis = pytest.importorskip("redis", reason="the redis Python package is not installed (pip install redis)")
pytest.importorskip("pydantic")

from modalrec.serve.state import AppendResult, open_state
from modalrec.serve.stream import Consumer, RedisStreamSource, SourceError, consume, publish


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server on a free 127.0.0.1 port (AOF fsynced at every write); `restart()` kills it (-9) and starts
    it again on the same port and files."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH: install the Debian package (apt-get install -y redis-server) "
                    "to run the Redis stream tests")
    port = _free_port()
    (tmp_path / "redis").mkdir()

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "yes", "--appendfsync", "always", "--dir", str(tmp_path / "redis"),
                                 "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                if client.ping():
                    client.close()
                    return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        proc.kill()
        pytest.fail("redis-server did not start")

    server = {"proc": start(), "url": f"redis://127.0.0.1:{port}/0"}

    def restart() -> None:
        server["proc"].send_signal(signal.SIGKILL)
        server["proc"].wait(10)
        server["proc"] = start()

    server["restart"] = restart
    yield server
    server["proc"].kill()
    server["proc"].wait(10)


@pytest.fixture
def redis_url(redis_server):
    return redis_server["url"]


def _events(n: int, users: int, with_ids: bool | None = None) -> list[dict]:
    """n events over `users` users; every other one without an event_id (its message id becomes the id)."""
    out = []
    for k in range(n):
        e = {"user": f"u{k % users}", "item": f"i{k % 37}", "channel": "watch" if k % 3 else "click",
             "time": 1_717_000_000 + k, "value": float(k % 5)}
        if with_ids or (with_ids is None and k % 2 == 0):
            e["event_id"] = f"p{k}"
        out.append(e)
    return out


def _expected(stream: str, events: list[dict], ids: list[str]) -> dict[str, set[str]]:
    want: dict[str, set[str]] = {}
    for e, mid in zip(events, ids):
        want.setdefault(e["user"], set()).add(e.get("event_id") or f"{stream}:{mid}")
    return want


def _assert_stored_once(state, stream: str, events: list[dict], ids: list[str]) -> None:
    want = _expected(stream, events, ids)
    per_user = Counter(e["user"] for e in events)
    assert state.count() == len(events)
    for user, n in per_user.items():
        assert state.count(user) == n, user
        assert state.event_ids(user) == want[user], user
        assert sum(c["n"] for c in state.counters(user).values()) == n, user  # counters counted once too


def _source(url: str, stream: str, consumer: str, **kw) -> RedisStreamSource:
    return RedisStreamSource(url, stream=stream, group="g", consumer=consumer, **kw)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_events_reach_the_state_store(redis_url, tmp_path, store):
    state = open_state(f"sqlite:///{tmp_path / 's.sqlite'}" if store == "sqlite" else redis_url)
    events = _events(300, 40)
    events[5].pop("time")  # no time: the entry's time in the stream
    events[7]["payload"] = {"text": "great goal", "tags": ["a"]}
    ids = publish(redis_url, "ev", events)
    ids += publish(redis_url, "ev", [events[0]])  # a producer's retry: same user and event_id
    c = Consumer(_source(redis_url, "ev", "c1"), state, batch=64, block_ms=50)
    assert c.run(exit_idle_s=0.3) == {"accepted": 300, "duplicates": 1, "invalid": 0, "redelivered": 0,
                                      "batches": 5}
    _assert_stored_once(state, "ev", events, ids[:300])
    by_id = {e.event_id: e for e in state.recent("u5", 100) + state.recent("u7", 100)}
    assert by_id[f"ev:{ids[5]}"].time == int(ids[5].split("-")[0]) // 1000
    assert by_id[f"ev:{ids[7]}"].payload == {"text": "great goal", "tags": ["a"]}
    assert c.source.pending() == 0
    state.close()


NOT_UTF8 = b'{"user": "u\xff", "channel": "c"}'


def test_invalid_messages_go_to_the_dead_letter_stream(redis_url, tmp_path):
    state = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")
    good = _events(20, 5)
    bad = ["not json", json.dumps({"item": "i1", "channel": "click"}),  # no user
           json.dumps({"user": "u1", "channel": "bad channel!"}), json.dumps({"user": "u1", "channel": "c", "x": 1}),
           '{"user": "u1", "channel": "c", "value": NaN}', json.dumps([1, 2])]
    mixed = good[:10] + bad + good[10:]
    ids = publish(redis_url, "ev", mixed)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    no_field = client.xadd("ev", {"something": "else"})  # an entry without the `event` field
    not_utf8 = redis.Redis.from_url(redis_url).xadd("ev", {"event": NOT_UTF8}).decode()
    c = Consumer(_source(redis_url, "ev", "c1"), state, batch=8, block_ms=50)
    stats = c.run(exit_idle_s=0.3)
    assert stats["accepted"] == 20 and stats["invalid"] == len(bad) + 2 and stats["duplicates"] == 0
    good_ids = ids[:10] + ids[10 + len(bad):]
    _assert_stored_once(state, "ev", good, good_ids)
    dead = [{k.decode(): v for k, v in d.items()} for _, d in redis.Redis.from_url(redis_url).xrange("ev:dead")]
    assert [d["id"].decode() for d in dead] == ids[10:10 + len(bad)] + [no_field, not_utf8]
    assert [d["event"].decode() for d in dead[:len(bad)]] == bad and dead[-1]["event"] == NOT_UTF8
    reasons = [d["reason"].decode() for d in dead]
    assert "Invalid JSON" in reasons[0] and reasons[1].startswith("user:") and reasons[2].startswith("channel:")
    assert "x: Extra inputs" in reasons[3] and reasons[4].startswith("value:") and "'event' field" in reasons[-2]
    assert "invalid unicode" in reasons[-1]
    assert all(d["group"] == b"g" and d["consumer"] == b"c1" for d in dead)
    assert c.source.pending() == 0  # acknowledged: never delivered again
    assert Consumer(_source(redis_url, "ev", "c1"), state, block_ms=20).run(exit_idle_s=0.1)["batches"] == 0
    client.close()
    state.close()


class _Died(BaseException):
    """A consumer dying at a chosen point (not an Exception: the run loop does not catch it)."""


class _DyingState:
    def __init__(self, state, after_append: bool):
        self.state, self.after_append = state, after_append

    def append_events(self, events) -> AppendResult:
        if self.after_append:
            self.state.append_events(events)  # durable, but the consumer dies before its ack
        raise _Died


def test_a_crash_before_the_ack_redelivers_and_counts_once(redis_url, tmp_path):
    state = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")
    events = _events(50, 7)
    ids = publish(redis_url, "ev", events)
    # died between the durable append and the ack: the same consumer name, restarted, reads its own pending
    with pytest.raises(_Died):
        Consumer(_source(redis_url, "ev", "c1"), _DyingState(state, True), batch=30).step()
    assert state.count() == 30
    c = Consumer(_source(redis_url, "ev", "c1"), state, batch=30, block_ms=50)
    assert c.run(exit_idle_s=0.2) == {"accepted": 20, "duplicates": 30, "invalid": 0, "redelivered": 30,
                                      "batches": 2}
    _assert_stored_once(state, "ev", events, ids)
    # died before the append: another consumer of the group claims the entries once idle long enough
    more = _events(40, 7, with_ids=False)
    more_ids = publish(redis_url, "ev", more)
    with pytest.raises(_Died):
        Consumer(_source(redis_url, "ev", "dead"), _DyingState(state, False), batch=25).step()
    c2 = Consumer(_source(redis_url, "ev", "c2", claim_idle_s=0.2), state, batch=25, block_ms=50)
    stats = c2.run(exit_idle_s=0.6)
    assert stats["accepted"] == 40 and stats["duplicates"] == 0 and stats["redelivered"] == 25
    _assert_stored_once(state, "ev", events + more, ids + more_ids)
    assert c2.source.pending() == 0
    state.close()


def test_a_store_failure_is_retried_not_dead_lettered(redis_url, tmp_path):
    state = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")
    fails = [2]

    class Flaky:
        def append_events(self, events):
            if fails[0]:
                fails[0] -= 1
                raise OSError("disk unavailable")
            return state.append_events(events)

    events = _events(30, 4)
    ids = publish(redis_url, "ev", events)
    c = Consumer(_source(redis_url, "ev", "c1"), Flaky(), batch=10, block_ms=50)
    stats = c.run(exit_idle_s=0.3)
    assert stats["accepted"] == 30 and stats["invalid"] == 0 and stats["redelivered"] == 20  # delivered twice more
    _assert_stored_once(state, "ev", events, ids)
    assert c.source.pending() == 0 and redis.Redis.from_url(redis_url).xlen("ev:dead") == 0
    state.close()


def test_the_consumer_rides_out_a_redis_restart(redis_server, tmp_path):
    """Redis killed (-9) and restarted under a running consumer: reads and acks fail for a while, the consumer
    waits and goes on from its pending entries; every event is stored once, nothing stays pending."""
    url = redis_server["url"]
    state = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")
    events = _events(1000, 50)
    ids = publish(url, "ev", events[:500])
    c = Consumer(_source(url, "ev", "c1"), state, batch=20, block_ms=50)
    t = threading.Thread(target=c.run)
    t.start()
    deadline = time.monotonic() + 20
    while state.count() < 100 and time.monotonic() < deadline:
        time.sleep(0.002)
    redis_server["restart"]()
    assert state.count() < 500  # it went down mid-stream
    ids += publish(url, "ev", events[500:])
    while (state.count() < 1000 or c.source.pending()) and time.monotonic() < deadline:
        time.sleep(0.05)
    c.stop()
    t.join(10)
    assert not t.is_alive()
    _assert_stored_once(state, "ev", events, ids)
    assert c.source.pending() == 0 and c.accepted == 1000
    state.close()


_CONSUMER = """
import json, logging, sys, time
import modalrec.serve.stream as stream
redis_url, state_url, name = sys.argv[1:4]
before, after = float(sys.argv[4]), float(sys.argv[5])
open_state = stream.open_state


class Slow:  # holds each batch a while before its append or between its durable append and its ack
    def __init__(self, st):
        self.st = st

    def append_events(self, events):
        time.sleep(before)
        res = self.st.append_events(events)
        time.sleep(after)
        return res

    def __getattr__(self, attr):
        return getattr(self.st, attr)


stream.open_state = lambda url: Slow(open_state(url))
logging.basicConfig(level=logging.INFO)
print(json.dumps(stream.consume(redis_url, state_url, stream="ev", group="g", consumer=name, batch=25, block_ms=100,
                                claim_idle_s=1.0)), flush=True)
"""


def test_kill_9_of_the_consumer_loses_and_doubles_nothing(redis_url, tmp_path):
    """A consumer process is SIGKILLed twice mid-stream while events are being published: first while it holds a
    batch it has not stored yet, then while it holds a batch stored but not acknowledged. The first restart keeps
    its name (it finishes its own pending entries), the second takes a new one (it claims the dead one's entries
    once idle 1 s) and finds that batch stored: duplicates. Every event ends up stored exactly once, nothing stays
    pending, and SIGTERM stops the last consumer cleanly."""
    state_url = f"sqlite:///{tmp_path / 's.sqlite'}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    log = os.open(tmp_path / "consumer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def start(name: str, before: float = 0.0, after: float = 0.0) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen([sys.executable, "-c", _CONSUMER, redis_url, state_url, name, str(before), str(after)],
                                env=env,
                                stdout=subprocess.PIPE, stderr=log, text=True)

    def pending_stored() -> tuple[int, int]:
        """Messages delivered and not acknowledged, and how many of their events the store has."""
        ids = [p["message_id"] for p in client.xpending_range("ev", "g", "-", "+", 1000)]
        docs = [json.loads(client.xrange("ev", m, m)[0][1]["event"]) for m in ids]
        return len(ids), sum((d.get("event_id") or f"ev:{m}") in st.event_ids(d["user"]) for m, d in zip(ids, docs))

    def kill_when(proc: subprocess.Popen, at_least: int, after_commit: bool) -> tuple[int, tuple[int, int]]:
        """SIGKILL once `at_least` events are stored and it holds unacknowledged messages: inside Slow's wait
        before the append, or (`after_commit`) right after a batch was stored, inside the wait before the ack."""
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None:
            n = st.count()
            if n >= at_least and client.xpending("ev", "g")["pending"] > 0:
                if after_commit:  # wait for the next commit: then it waits before its ack
                    while st.count() == n and time.monotonic() < deadline:
                        time.sleep(0.0005)
                    break
                time.sleep(0.005)  # still pending and no commit since: inside Slow's wait before the append
                if st.count() == n and client.xpending("ev", "g")["pending"] > 0:
                    break
            time.sleep(0.001)
        assert proc.poll() is None, (tmp_path / "consumer.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return st.count(), pending_stored()

    events = _events(3000, 150)
    ids: list[str] = []

    def producer():
        for k in range(0, len(events), 30):  # ~500 events/s
            ids.extend(publish(redis_url, "ev", events[k:k + 30]))
            time.sleep(0.05)

    proc = start("c1", before=0.05)
    while not client.exists("ev"):  # the consumer creates the stream and its group
        assert proc.poll() is None, (tmp_path / "consumer.log").read_text()
        time.sleep(0.05)
    st = open_state(state_url)
    pub = threading.Thread(target=producer)
    pub.start()
    n1, pending1 = kill_when(proc, 300, after_commit=False)
    proc = start("c1", after=0.05)  # the same name: re-reads its own pending entries first
    n2, pending2 = kill_when(proc, n1 + 300, after_commit=True)
    assert n1 < n2 < len(events), (n1, n2)  # both kills landed mid-stream
    proc = start("c2")  # a new name: claims c1's pending entries once idle 1 s
    pub.join(60)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        info = next(g for g in client.xinfo_groups("ev") if g["name"] == "g")
        if st.count() == len(events) and client.xpending("ev", "g")["pending"] == 0 and info["lag"] == 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a clean stop: finish the batch, ack, exit 0
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, (tmp_path / "consumer.log").read_text()[-3000:]
    assert len(ids) == len(events)
    _assert_stored_once(st, "ev", events, ids)
    assert client.xpending("ev", "g")["pending"] == 0
    # what the kills left: the first (most likely) a batch not stored yet, the second a batch stored and not
    # acknowledged, which the last consumer claimed and found stored
    last = json.loads(out.strip().splitlines()[-1])
    print("kills left (pending, of which stored):", pending1, pending2)
    assert pending1[0] > 0 and pending2[0] > 0 and pending2[1] == pending2[0], (pending1, pending2)
    assert last["invalid"] == 0 and last["redelivered"] >= pending2[0] and last["duplicates"] == pending2[0]
    st.close()
    client.close()
    os.close(log)


def test_two_consumers_split_the_work(redis_url, tmp_path):
    events = _events(2000, 120)
    ids = publish(redis_url, "ev", events)
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    consumers = [Consumer(_source(redis_url, "ev", f"c{k}"), open_state(url), batch=20, block_ms=50) for k in (1, 2)]
    results: list[dict] = []
    threads = [threading.Thread(target=lambda c=c: results.append(c.run(exit_idle_s=0.5))) for c in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r["accepted"] > 0 for r in results), results  # both took part
    assert sum(r["accepted"] for r in results) == 2000 and sum(r["duplicates"] for r in results) == 0
    st = open_state(url)
    _assert_stored_once(st, "ev", events, ids)
    assert consumers[0].source.pending() == 0
    for c in consumers:
        c.state.close()
    st.close()


def test_consume_stops_when_idle_and_returns_the_counters(redis_url, tmp_path):
    publish(redis_url, "ev", _events(10, 3) + ["{"])
    stats = consume(redis_url, f"sqlite:///{tmp_path / 's.sqlite'}", stream="ev", group="g", consumer="x",
                    block_ms=50, exit_idle_s=0.2)
    assert stats == {"accepted": 10, "duplicates": 0, "invalid": 1, "redelivered": 0, "batches": 1}


def test_an_unreachable_redis_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="cannot reach Redis"):
        consume(f"redis://127.0.0.1:{_free_port()}/0", f"sqlite:///{tmp_path / 's.sqlite'}", handle_signals=False)


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory):
    """A 1-epoch DIN bundle on the toy data (its time rule: the default plausible range)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("faiss")
    from modalrec.config import RunConfig
    from modalrec.serve.bundle import export_bundle
    from modalrec.train.run import train_run
    from tests.helpers import make_data

    root = tmp_path_factory.mktemp("stream_bundle")
    data = make_data(n_users=20, n_items=30, n_events=600)
    data.save(root / "data")
    cfg = RunConfig.model_validate({
        "name": "toy-din", "data": {"source": str(root / "data")},
        "task": {"kind": "ctr", "sample_channels": ["click"], "max_history": 5},
        "model": {"name": "din", "params": {"embed_dim": 8}},
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "num_threads": 1}, "seeds": [0]})
    train_run(cfg, root / "run", data=data, report=False)
    return export_bundle(root / "run", root / "bundle")


def test_consume_command_applies_the_bundles_checks(redis_url, tmp_path, toy_bundle):
    """`modalrec consume --bundle`: an event POST /events would refuse (its time outside the run's range, a payload
    vector of the wrong dimension) is dead-lettered with the message POST /events gives; the others are stored."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from modalrec.cli import app
    from modalrec.serve.app import create_app

    good = _events(3, 2, with_ids=True)
    bad_time = {"user": "u0", "item": "i1", "channel": "click", "time": 1_717_000_000_000, "event_id": "ms"}
    bad = [bad_time]
    with TestClient(create_app(toy_bundle, f"sqlite:///{tmp_path / 'http.sqlite'}", api_key="k",
                               segment_workers=0)) as c:
        dims = c.app.state.scorer.bundle.schema.item_dense
        if dims:  # a modality the model reads, with one value too many
            name, dim = next(iter(dims.items()))
            bad.append({"user": "u0", "channel": "click", "event_id": "vec", "payload": {"vectors": {name: [0.0] * (dim + 1)}}})
        messages = []
        for e in bad:
            r = c.post("/events", json={"events": [e]}, headers={"X-API-Key": "k"})
            assert r.status_code == 422
            messages.append(r.json()["message"].removeprefix("events[0]."))
    assert "time: expected a time from 1970-01-01" in messages[0]
    publish(redis_url, "ev", good[:2] + bad + good[2:])
    state = tmp_path / "s.sqlite"
    args = ["consume", "--redis", redis_url, "--state", f"sqlite:///{state}", "--stream", "ev", "--group", "g",
            "--consumer", "x", "--exit-idle", "0.3", "--bundle", str(toy_bundle)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1]) == {
        "accepted": 3, "duplicates": 0, "invalid": len(bad), "redelivered": 0, "batches": 1}
    dead = [{k.decode(): v.decode() for k, v in d.items()} for _, d in redis.Redis.from_url(redis_url).xrange("ev:dead")]
    assert [d["reason"] for d in dead] == messages
    st = open_state(f"sqlite:///{state}")
    assert st.count() == 3
    st.close()
    res = CliRunner().invoke(app, [*args[:-2], "--bundle", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "error:" in res.output


def test_the_stream_modules_start_without_torch():
    code = "import sys, modalrec.serve.stream, modalrec.serve.state; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
