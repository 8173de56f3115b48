"""Raw segments (POST /segments): a live segment's frames, speech and comments in, encoded off the request path
exactly as training encoded them (`serve.content`), registered as POST /items registers an item, progressively.

Two lanes of worker processes (`EncoderPool`s): the fast lane (one process) encodes images and texts (frames,
comments, a transcript given as text; about 50 ms a frame and 4 ms a comment on 2 CPU cores), the slow lane
(`workers` processes) audio (speech recognition and MFCC statistics; ASR takes about 4.6 s per 9 s clip). The
segment is registered as soon as a lane has its vectors, normally the fast one within a fraction of a second, so it
is recommendable then, with the modalities it has (a missing one reads as absent, as offline). Each later lane
updates the registered item (`ItemRegistry.update`: same id and row, same expiry, the model forgets what it
memoised about the row), so once every lane is done the segment scores as if it had been registered with every
vector at once. Speech never holds frames back: the lanes have their own processes. A segment without fast
modalities is registered at once with its side features (and the words of text modalities the model reads as
bags of words); one whose lanes all fail is not registered.

A later POST of the same id supersedes the earlier one (results still encoding for it are dropped). A segment
deleted or expired before its slow modalities arrive stays deleted: the update is made only while the state store
holds the registration it updates.

The slow lane is room-aware (`EncoderPool(supersede=True)`): when a room (the segment's group feature, as
`ItemRegistry.room`) posts a newer segment while an older one of the same room still waits for a slow worker, the
older one's slow job is dropped before it starts (`superseded`): the older segment stays recommendable with what it
has, and the lane's queue holds at most one segment per live room, the newest. `max_queued` (`serve
--segment-queue N`) bounds that queue: beyond N waiting jobs the oldest is dropped (`dropped`). Jobs already running,
and rooms whose speech keeps up, lose nothing. The fast lane (which registers segments) keeps every job. Status (`GET /segments/{id}`): this process's record of the segments it was
sent (the latest 10,000); for another process's segment, or after a restart, what the state store holds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np

from .content import ContentEncoder, ContentError, EncoderPool, RawSegmentRequest, to_new_item
from .encoder_pool import JobDropped

log = logging.getLogger("modalrec.serve")

FAST, SLOW = "fast", "slow"


@dataclass
class _Segment:
    request: RawSegmentRequest
    words: dict[str, str]
    t0: float  # perf_counter at the request
    lanes: dict[str, list[str]]  # lane -> its raw modalities (the fast lane: also those read as words only)
    modalities: dict[str, str]  # raw modality -> encoding, registered, failed, discarded, superseded, dropped
    vectors: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # the stored document of the latest registration made for it
    deleted: bool = False
    first_s: float | None = None
    complete_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def status_url(segment_id: str) -> str:
    return "/segments/" + quote(segment_id, safe="/")


class SegmentService:
    """Encodes raw segments in two lanes of worker processes and registers them progressively (see the module).
    `workers` 0: no worker processes, no segment accepted (`accepting`); the status of registered ones only.
    `on_result(result, seconds)`: called with "registered" (seconds from the request to recommendable), "updated",
    "complete" (seconds to the last modality), "failed", "discarded", "superseded", "dropped" (a slow job dropped
    before it started; metrics). `nice`: added to the worker processes' niceness (`os.nice`), so they yield the
    cores to scoring. `max_queued`: the bound of the slow lane's waiting jobs (None: its live rooms bound it)."""

    KEEP = 10_000  # segment records kept for GET /segments/{id}

    def __init__(self, encoder: ContentEncoder, registry, workers: int = 1, threads: int | None = 1,
                 warm: bool = True, on_result=None, nice: int = 0, max_queued: int | None = None):
        if workers < 0:
            raise ValueError(f"segment workers must be >= 0, got {workers}")
        self.encoder, self.registry, self.on_result = encoder, registry, on_result
        self.accepting = workers > 0
        self.lane_of = {name: SLOW if m.kind == "audio" else FAST for name, (m, _) in encoder.sources.items()}
        self.pools: dict[str, EncoderPool] = {}
        for lane, n in ((FAST, 1), (SLOW, workers)):
            names = [m for m, ln in self.lane_of.items() if ln == lane]
            if names and self.accepting:
                slow = lane == SLOW
                self.pools[lane] = EncoderPool(encoder, n, threads, warm=encoder.views(names) if warm else False,
                                               nice=nice, supersede=slow, max_queued=max_queued if slow else None)
        self._ready = [f for pool in self.pools.values() for f in pool.start()]
        self._records: OrderedDict[str, _Segment] = OrderedDict()
        self._lock = threading.Lock()
        self.counts = {k: 0 for k in ("accepted", "registered", "updated", "failed", "discarded", "superseded",
                                      "dropped")}
        self.latency: dict[str, deque] = {"recommendable": deque(maxlen=10_000), "complete": deque(maxlen=10_000)}

    # ------------------------------------------------------------------------------------------ requests
    def ready(self) -> bool:
        """Every worker process is up (its encoders loaded)."""
        return all(f.done() and not f.exception() for f in self._ready)

    def wait_ready(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for f in self._ready:
            f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.ready()

    def submit(self, request: RawSegmentRequest, raw: dict[str, list]) -> dict:
        """Queues a checked segment (`ContentEncoder.check`); returns its status at once."""
        enc, sid = self.encoder, request.id
        words = enc.words(raw)
        parts: dict[str, dict] = {FAST: {}, SLOW: {}}
        for name, values in raw.items():
            if name in self.lane_of:
                parts[self.lane_of[name]][name] = values
        lanes = {lane: list(part) for lane, part in parts.items()}
        lanes[FAST] += [n for n in words if n not in self.lane_of]
        rec = _Segment(request, words, time.perf_counter(), lanes,
                       {n: "encoding" for names in lanes.values() for n in names})
        with self._lock:
            self._records.pop(sid, None)  # a later POST of the id: the earlier one's results are dropped
            self._records[sid] = rec
            while len(self._records) > self.KEEP:
                self._records.popitem(last=False)
            self.counts["accepted"] += 1
        if not parts[FAST]:  # nothing to encode before the first registration: it happens now
            self._done(rec, FAST, {}, {}, None)
        room = self.registry.room(request)
        for lane, part in parts.items():
            if part:
                self.pools[lane].submit(
                    sid, part, lambda _sid, v, t, lane=lane: self._done(rec, lane, v, t, None),
                    lambda _sid, e, lane=lane: self._done(rec, lane, None, None, e), key=room)
        return self.status(sid)

    def _done(self, rec: _Segment, lane: str, vectors, tokens, error: BaseException | None) -> None:
        """A lane finished (in a pool thread): register the segment with what it has, or update it."""
        sid, names, result = rec.request.id, rec.lanes[lane], None
        with rec.lock:
            if self._records.get(sid) is not rec:
                return  # superseded by a later POST of the id
            if isinstance(error, JobDropped):  # never encoded: the segment keeps what it has
                for n in names:
                    rec.modalities[n] = error.reason
                    rec.errors[n] = error.message
                result = error.reason
            elif error is not None:
                msg = error.message if isinstance(error, ContentError) else (str(error) or type(error).__name__)
                for n in names:
                    rec.modalities[n] = "failed"
                    rec.errors[n] = msg
                result = "failed"
            else:
                rec.vectors.update(vectors)
                rec.tokens.update(tokens)
                item = to_new_item(rec.request, rec.vectors, rec.tokens, rec.words)
                try:
                    if rec.body is None:
                        bodies: dict[str, str] = {}
                        _, errors = self.registry.register([item], bodies)
                        body = bodies.get(sid)
                    elif rec.deleted:
                        body, errors = None, []
                    else:
                        body, errors = self.registry.update(item, rec.body)
                except Exception as e:
                    log.exception("segment %r: registration failed", sid)
                    body, errors = None, [{"msg": f"registration failed: {type(e).__name__}: {e}"}]
                if errors:
                    for n in names:
                        rec.modalities[n] = "failed"
                        rec.errors[n] = "; ".join(e["msg"] for e in errors)[:500]
                    result = "failed"
                elif body is None:  # deleted, expired or registered again since its first registration
                    rec.deleted = True
                    for n in names:
                        rec.modalities[n] = "discarded"
                    result = "discarded"
                else:
                    result = "updated" if rec.body is not None else "registered"
                    rec.body = body
                    for n in names:
                        rec.modalities[n] = "registered"
                    if rec.first_s is None:
                        rec.first_s = time.perf_counter() - rec.t0
            # complete: every lane done and none dropped (a dropped modality never arrives: not a complete segment)
            states = set(rec.modalities.values())
            complete = (rec.complete_s is None and rec.body is not None
                        and not states & {"encoding", "superseded", "dropped"})
            if complete:
                rec.complete_s = time.perf_counter() - rec.t0
        with self._lock:
            self.counts[result] += 1
            if result == "registered":
                self.latency["recommendable"].append(rec.first_s)
            if complete:
                self.latency["complete"].append(rec.complete_s)
        if self.on_result is not None:
            self.on_result(result, rec.first_s if result == "registered" else None)
            if complete:
                self.on_result("complete", rec.complete_s)

    # ------------------------------------------------------------------------------------------ status
    def status(self, segment_id: str) -> dict | None:
        """The segment's `SegmentStatus` as a dict; None for an id neither sent here nor registered."""
        reg = self.registry
        with self._lock:
            rec = self._records.get(segment_id)
        if rec is None:
            body = reg.registered_body(segment_id)
            if body is None:
                return None
            return {"id": segment_id, "status": "registered", "status_url": status_url(segment_id),
                    "recommendable": True, "modalities": None, "registered": self.raw_in(body)}
        with rec.lock:
            pending = "encoding" in rec.modalities.values()
            # a segment a swapped-in bundle knows stays registered (absorbed: scored with the bundle's row)
            gone = rec.deleted or (rec.body is not None and reg.registered_body(segment_id) != rec.body)
            status = ("deleted" if gone else ("partial" if pending else "registered") if rec.body is not None
                      else "queued" if pending else "failed")
            return {"id": segment_id, "status": status, "status_url": status_url(segment_id),
                    "recommendable": status in ("partial", "registered"), "modalities": dict(rec.modalities),
                    "registered": [n for n, s in rec.modalities.items() if s == "registered"],
                    "errors": dict(rec.errors) or None,
                    "seconds_to_recommendable": rec.first_s, "seconds_to_complete": rec.complete_s}

    def raw_in(self, body: str) -> list[str]:
        """The raw modalities a stored item document holds (their vectors, tokens or words)."""
        try:
            doc = json.loads(body)
        except ValueError:
            return []
        held = set(doc.get("vectors") or {}) | set(doc.get("tokens") or {})
        out = [name for name, (_, targets) in self.encoder.sources.items() if any(t.name in held for t in targets)]
        return out + [n for n in doc.get("text") or {} if n not in out]

    def stats(self) -> dict:
        """Per lane: workers, queued (of them waiting: not started), encoded, failed, superseded, dropped, the bound,
        worker seconds per segment by raw modality; segment counts; p50 / p99 seconds from the request to
        recommendable and to complete (the latest 10,000 segments). GET /segments answers it."""
        with self._lock:
            lat = {k: list(v) for k, v in self.latency.items()}
            counts = dict(self.counts)

        def pct(xs: list[float]) -> dict:
            return {"n": len(xs), "p50": float(np.percentile(xs, 50)) if xs else None,
                    "p99": float(np.percentile(xs, 99)) if xs else None}

        return {"lanes": {lane: pool.stats() for lane, pool in self.pools.items()}, "segments": counts,
                "seconds": {k: pct(v) for k, v in lat.items()}, "ready": self.ready()}

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close(wait=True, cancel=True)


def add_segment_routes(app, *, bundle, registry, service, require_key, sync_items, invalid, metrics) -> None:
    """POST /segments and GET /segments/{id} on `app`. `service()`: (the SegmentService, or None and why not: the
    bundle cannot encode raw content, or the service runs without segment workers), 409 with the reason then.
    `invalid(errors)`: the app's 422 exception."""
    from fastapi import Depends, HTTPException
    from fastapi import Path as PathParam
    from fastapi.responses import JSONResponse

    from .schemas import NewItem, SegmentStatus

    def usable(posting: bool) -> SegmentService:
        svc, refusal = service()
        if svc is None or (posting and not svc.accepting):
            raise HTTPException(409, f"raw segments cannot be encoded here: {refusal}")
        return svc

    @app.post("/segments", status_code=202, response_model=SegmentStatus, tags=["items"],
              dependencies=[Depends(require_key)],
              responses={409: {"description": "the bundle's run encoded no raw content (or other encoders are "
                                              "installed), or the id is one of the bundle's items"}},
              summary="A new segment's raw content (base64 frames and speech, comment texts): encoded off the request "
                      "path as training encoded it and registered as by POST /items, recommendable once its fast "
                      "modalities are in (frames, comments), updated when the slow ones (speech) are")
    def post_segment(req: RawSegmentRequest) -> JSONResponse:
        svc = usable(True)
        sync_items()
        if bundle.pipeline.items.lookup([req.id])[0] > 0:
            raise HTTPException(409, f"segment '{req.id}' is one of the bundle's items: the trained model's items "
                                     "stay as exported")
        enc = svc.encoder
        try:
            raw = enc.check(enc.decode_request(req.raw))
        except ContentError as e:
            raise invalid([{"loc": ("body", *e.loc), "msg": e.message, "type": "raw_content"}]) from None
        # the side features fail now, not once encoded
        _, errors = registry.prepare(NewItem(id=req.id, categorical=req.categorical, multi=req.multi), ())
        if errors:
            raise invalid(errors)
        status = svc.submit(req, raw)
        metrics.inc("modalrec_segments", "accepted")
        return JSONResponse(status, status_code=202, headers={"Location": status["status_url"]})

    @app.get("/segments", tags=["items"], summary="The segment encoders: per lane its workers, segments queued (of them "
             "waiting: not started), encoded, failed, superseded (a slow job replaced by a newer segment of its room "
             "before it started) and dropped (beyond serve --segment-queue); segment counts by result; seconds to "
             "recommendable and to complete")
    def segments_state() -> dict:
        return usable(False).stats()

    @app.get("/segments/{segment_id:path}", response_model=SegmentStatus, tags=["items"],
             responses={404: {"description": "no such segment (never sent here, or not registered)"}},
             summary="A segment's status: queued, partial (recommendable, slow modalities still encoding), registered, "
                     "failed or deleted, with each raw modality's state")
    def get_segment(segment_id: str = PathParam(..., min_length=1, max_length=256)) -> dict:
        svc = usable(False)
        sync_items()
        status = svc.status(segment_id)
        if status is None:
            raise HTTPException(404, f"segment '{segment_id}' is unknown: not sent to this process (or among the "
                                     f"latest {SegmentService.KEEP}) and not registered")
        return status
