"""The room-aware segment queue (issue 23): a room's newer segment drops its older one's slow job while that job still
waits for a worker (`superseded`), `serve --segment-queue N` drops the oldest waiting job beyond N (`dropped`); a
dropped job never runs, the newer one does, running jobs and rooms that keep up lose nothing, and the counts reach the
pool's stats, GET /segments, GET /segments/{id} and /metrics. The workers run a fake encoder (tests/serve/
fake_encoders.py) that records each job it starts and can hold the lane busy until the test releases it."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modalrec.serve.app import create_app
from modalrec.serve.content import ContentEncoder, RawSegmentRequest
from modalrec.serve.encoder_pool import EncoderPool, JobDropped
from modalrec.serve.segments import FAST, SLOW, SegmentService
from tests.serve import fake_encoders
from tests.serve.fake_encoders import job, ran

KEY = "k"


def _encoder() -> ContentEncoder:
    return ContentEncoder({"content": {"encode": {}, "modalities": []}})  # loads no network


def _pool(**kw) -> EncoderPool:
    pool = EncoderPool(_encoder(), workers=1, warm=False, encode=fake_encoders.encode, **kw)
    for f in pool.start():
        f.result(120)
    return pool


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class _Calls:
    def __init__(self):
        self.done: list[str] = []
        self.errors: dict[str, BaseException] = {}

    def on_done(self, sid, vectors, tokens):
        self.done.append(sid)

    def on_error(self, sid, error):
        self.errors[sid] = error


def test_a_rooms_newer_segment_supersedes_its_waiting_one(tmp_path):
    calls = _Calls()
    with _pool(supersede=True) as pool:
        def submit(sid, room, *modalities, block=False):
            return pool.submit(sid, {m: [job(sid, tmp_path, block)] for m in modalities or ("speech",)},
                               calls.on_done, calls.on_error, key=room)

        submit("a1", "room-a", block=True)
        _wait(lambda: "a1-speech" in ran(tmp_path))  # running: a newer segment of its room does not drop it
        a2 = submit("a2", "room-a")
        submit("b1", "room-b")
        submit("a3", "room-a")  # a2 waits: superseded
        submit("a4", "room-a", "speech", "music")  # a3 too: a4 holds every modality a3 holds
        submit("a5", "room-a")  # a4 stays: a5 lacks its music
        submit("x1", None)
        submit("x2", None)  # segments without a room never supersede each other
        stats = pool.stats()
        assert (stats["waiting"], stats["queued"], stats["superseded"], stats["dropped"]) == (5, 6, 2, 0)
        assert a2.cancelled()
        assert set(calls.errors) == {"a2", "a3"} and all(isinstance(e, JobDropped) for e in calls.errors.values())
        assert calls.errors["a2"].reason == "superseded" and "'a3'" in calls.errors["a2"].message
        assert pool.state("a2") == {"id": "a2", "status": "superseded", "error": calls.errors["a2"].message}
        (tmp_path / "release").touch()
        _wait(lambda: len(calls.done) == 6)
        stats = pool.stats()
    assert ran(tmp_path) == {"a1-speech", "b1-speech", "a4-speech", "a4-music", "a5-speech", "x1-speech", "x2-speech"}
    assert calls.done == ["a1", "b1", "a4", "a5", "x1", "x2"]  # the others in their order
    assert (stats["encoded"], stats["failed"], stats["superseded"], stats["queued"], stats["waiting"]) == (6, 0, 2, 0, 0)


def test_the_queue_bound_drops_the_oldest_waiting_job(tmp_path):
    calls = _Calls()
    with pytest.raises(ValueError, match="max_queued must be >= 1"):
        EncoderPool(_encoder(), workers=1, warm=False, max_queued=0)
    with _pool(supersede=True, max_queued=2) as pool:
        def submit(sid, room, block=False):
            pool.submit(sid, {"speech": [job(sid, tmp_path, block)]}, calls.on_done, calls.on_error, key=room)

        submit("a1", "room-a", block=True)
        _wait(lambda: "a1-speech" in ran(tmp_path))
        for sid, room in (("b1", "room-b"), ("c1", "room-c"), ("d1", "room-d"), ("c2", "room-c")):
            submit(sid, room)  # d1: b1 dropped (3 waiting > 2); c2: c1 superseded
        stats = pool.stats()
        assert (stats["waiting"], stats["dropped"], stats["superseded"], stats["max_queued"]) == (2, 1, 1, 2)
        assert {s: e.reason for s, e in calls.errors.items()} == {"b1": "dropped", "c1": "superseded"}
        assert "--segment-queue" in calls.errors["b1"].message
        (tmp_path / "release").touch()
        _wait(lambda: len(calls.done) == 3)
    assert ran(tmp_path) == {"a1-speech", "d1-speech", "c2-speech"} and calls.done == ["a1", "d1", "c2"]


def test_rooms_that_keep_up_lose_nothing(tmp_path):
    calls = _Calls()
    with _pool(supersede=True, max_queued=3) as pool:
        for k in range(4):  # every room posts its next segment once its previous one is encoded
            for room in ("r1", "r2", "r3"):
                sid = f"{room}-{k}"
                pool.submit(sid, {"speech": [job(sid, tmp_path)]}, calls.on_done, calls.on_error, key=room)
            _wait(lambda k=k: len(calls.done) == 3 * (k + 1))
        stats = pool.stats()
    assert not calls.errors and len(ran(tmp_path)) == 12
    assert (stats["encoded"], stats["superseded"], stats["dropped"]) == (12, 0, 0)
    # a pool that drops nothing (the fast lane) runs every job, however many wait
    calls = _Calls()
    with _pool() as pool:
        for k in range(8):
            pool.submit(f"f{k}", {"frames": [job(f"f{k}", tmp_path)]}, calls.on_done, calls.on_error, key="r1")
        _wait(lambda: len(calls.done) == 8)
    assert not calls.errors and calls.done == [f"f{k}" for k in range(8)]


def test_segment_status_and_metrics_count_superseded_speech(din_served, tmp_path):
    """Through the service: the older segment stays registered and recommendable without its speech, its status
    says `superseded`; GET /segments and /metrics count it; the newer segment's speech is encoded."""
    work = tmp_path / "jobs"
    work.mkdir()
    app = create_app(din_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}", api_key=KEY, segment_workers=0)
    with TestClient(app) as c:
        segments = app.state.segments
        svc = SegmentService(_encoder(), app.state.serving.registry, workers=0, on_result=segments["on_result"])
        # the lanes of a bundle with frames and speech, encoded by the fake encoder
        svc.lane_of = {"frames": FAST, "speech": SLOW}
        svc.pools = {FAST: _pool(), SLOW: _pool(supersede=True)}
        svc.accepting = True
        segments["service"] = svc

        def post(sid: str, room: str, block: bool = False) -> None:
            svc.submit(RawSegmentRequest(id=sid, categorical={"brand": room}, ttl_s=600),
                       {"frames": [job(sid, work)], "speech": [job(sid, work, block)]})

        def status(sid: str) -> dict:
            r = c.get(f"/segments/{sid}")
            assert r.status_code == 200, r.text
            return r.json()

        post("s0", "b1", block=True)
        _wait(lambda: "s0-speech" in ran(work))
        post("s1", "b1")
        post("s2", "b1")  # s1's speech waits: superseded
        post("s3", "b2")
        _wait(lambda: status("s1")["status"] == "registered")  # its frames are in; its speech never will be
        s1 = status("s1")
        assert s1["recommendable"] and s1["modalities"] == {"frames": "registered", "speech": "superseded"}
        assert s1["registered"] == ["frames"] and "'s2'" in s1["errors"]["speech"] and s1["seconds_to_complete"] is None
        slow = c.get("/segments").json()["lanes"]["slow"]
        assert (slow["superseded"], slow["dropped"], slow["waiting"], slow["queued"]) == (1, 0, 2, 3)
        assert 'modalrec_segment_waiting{lane="slow"} 2.0' in c.get("/metrics").text
        (work / "release").touch()
        for sid in ("s0", "s2", "s3"):
            _wait(lambda sid=sid: status(sid)["modalities"]["speech"] == "registered")
            assert status(sid)["status"] == "registered" and status(sid)["seconds_to_complete"] is not None
        assert "s1-speech" not in ran(work) and {"s1-frames", "s0-speech", "s2-speech", "s3-speech"} <= ran(work)
        state = c.get("/segments").json()
        assert {k: state["segments"][k] for k in ("registered", "updated", "superseded", "dropped")} == {
            "registered": 4, "updated": 3, "superseded": 1, "dropped": 0}
        metrics = c.get("/metrics").text
        assert 'modalrec_segments_total{result="superseded"} 1.0' in metrics
        assert 'modalrec_segment_queue{lane="slow"} 0.0' in metrics
        rec = c.post("/recommend", json={"user": "u1", "k": 10, "live_only": True}).json()
        assert {x["item"] for x in rec["items"]} == {"s0", "s1", "s2", "s3"}  # s1 still recommendable


def test_serve_passes_segment_queue_down(monkeypatch, tmp_path):
    from modalrec import cli
    from modalrec.serve import app as serve_app

    got = {}
    monkeypatch.setattr(serve_app, "serve", lambda bundle, **kw: got.update(kw))
    runner = CliRunner()
    r = runner.invoke(cli.app, ["serve", str(tmp_path), "--segment-queue", "6", "--api-key", "k"])
    assert r.exit_code == 0, r.output
    assert got["segment_queue"] == 6
    r = runner.invoke(cli.app, ["serve", str(tmp_path), "--api-key", "k"])
    assert r.exit_code == 0 and got["segment_queue"] is None
    assert runner.invoke(cli.app, ["serve", str(tmp_path), "--segment-queue", "0", "--api-key", "k"]).exit_code != 0
    assert "--segment-queue" in runner.invoke(cli.app, ["serve", "--help"]).output
