"""The HTTP service: online events in, top-K and scores out, from one bundle and one state store.

Request path of `/recommend`: the user's behaviour sequence (the bundle's seed history merged with the
events the state store got since) -> candidate retrieval (`serve.retrieval`) -> the ranker scores every
candidate (`serve.scoring`: the bundle's feature pipeline builds the batch, the model runs in serving mode)
-> top K. Items registered after export (`POST /items`, `serve.registry`) are scoreable and retrievable at
once; `DELETE /items/{id}` or their TTL removes them on every process sharing the state store. Raw segments
(`POST /segments`, `serve.segments`) are encoded in worker processes and registered progressively; live rooms
(`POST /rooms`, `serve.rooms`) restrict `/recommend` to registered items of rooms live now when asked (`live_only`).
`POST /admin/bundle` (`serve.swap`) swaps to another bundle while serving: every route reads the served generation
(bundle, scorer, registry, event rule) once, at its start.

Writes (`POST /events`, `/items`, `/segments`, `/rooms`, `/admin/bundle`, deleting items, reading a user's state) need the API key:
header `X-API-Key: KEY` or `Authorization: Bearer KEY`; missing key -> 401, wrong key -> 403. /docs (Swagger
UI) is served from the packaged assets, so it works without network access.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch

from .bundle import load_bundle
from .item_routes import add_item_routes
from .ops import Limits, Metrics, RateLimiter, keep_freed_memory, key_guard
from .rooms import Rooms, add_room_routes
from .schemas import (
    MAX_BODY_BYTES,
    Context,
    EventsRequest,
    EventsResponse,
    HistoryEvent,
    Invalid,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    UserState,
    to_seconds,
)
from .segments import SegmentService, add_segment_routes
from .state import StoredEvent, open_state
from .swap import Generation, Serving, add_swap_route, generation

API_KEY_ENV = "MODALREC_API_KEY"
SEGMENT_BODY_BYTES = 16 << 20  # POST /segments: a segment's frames and speech, base64


def _field(loc) -> str:
    parts = [p for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def default_state_url(bundle_dir: Path) -> str:
    bundle_dir = Path(bundle_dir).resolve()
    return f"sqlite:///{bundle_dir.parent / (bundle_dir.name + '-state.sqlite')}"


def create_app(bundle_dir: str | Path, state_url: str | None = None, api_key: str | None = None, *,
               max_body_bytes: int = MAX_BODY_BYTES, threads: int | None = None, rate_limit: float | None = None,
               rate_burst: float | None = None, item_sync_s: float | None = 1.0, item_ttl_s: float | None = None,
               precision: str = "fp32", segment_workers: int = 1, segment_threads: int | None = 1,
               live_only: bool = False, segment_body_bytes: int = SEGMENT_BODY_BYTES, segment_nice: int = 0,
               segment_queue: int | None = None):
    """The FastAPI app serving `bundle_dir` with user state at `state_url` (default: SQLite beside the
    bundle). `api_key` (default: $MODALREC_API_KEY) guards the write endpoints; without one they answer 403.
    `rate_limit` (requests/s per client address, bursts of `rate_burst`, default twice the rate) answers 429
    with Retry-After above it; None: no limit. `item_sync_s`: how often (seconds) /recommend, /score and
    /items look in the state store for items registered by other processes sharing it (0: at every request;
    None: never, they then arrive at a restart). `item_ttl_s`: seconds after which a registered item without its
    own `ttl_s` expires (None: never). `precision`: arithmetic of the serving fast paths (fp32 or bf16).
    `segment_workers`: processes encoding speech for POST /segments (one more encodes frames and comments; 0: no
    raw segments), started with the app (its lifespan), `segment_threads` torch threads each, `segment_nice` added
    to their niceness (`os.nice`: they yield the cores to scoring). `live_only`: the default of /recommend's
    `live_only`. `segment_body_bytes`: the body limit of POST /segments. `segment_queue`: at most that many segments
    wait for a speech worker (the oldest beyond it is dropped; None: no bound but one per room, `serve.segments`)."""
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    from .docs import mount_docs

    if threads:
        torch.set_num_threads(threads)
    bundle = load_bundle(Path(bundle_dir))
    try:
        import faiss

        faiss.omp_set_num_threads(max(1, threads or 1))
    except ImportError:  # pragma: no cover
        pass
    state = open_state(state_url or default_state_url(Path(bundle_dir)))
    scorer_kw = {"item_sync_s": item_sync_s, "item_ttl_s": item_ttl_s, "precision": precision}
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None

    def info(g: Generation) -> dict[str, str]:
        b = g.bundle
        return {"model": b.model_name, "task": b.task, "seed": str(b.manifest.get("seed")), "state": state.kind,
                "items": str(b.n_items - 1), "precision": precision, "bundle": g.path}

    def swapped(old: Generation, new: Generation) -> None:
        app.state.scorer = new.scorer
        metrics.info.info(info(new))

    # the generation served now (bundle, scorer, registry, event rule): POST /admin/bundle replaces it
    serving = Serving(generation(str(bundle_dir), bundle, state, **scorer_kw), state, scorer_kw, on_swap=swapped)
    registry = serving.registry  # the current generation's registry; writes through it wait for a swap's last step
    metrics = Metrics(info(serving.current))
    rooms = Rooms(state, item_sync_s)
    segments: dict = {"service": None, "refusal": "the service has not started (its lifespan did not run)"}

    def segment_service() -> tuple[SegmentService | None, str]:
        return segments["service"], segments["refusal"]

    def on_segment(result: str, seconds: float | None) -> None:
        if result == "complete":
            metrics.segment_latency.labels("complete").observe(seconds)
            return
        metrics.inc("modalrec_segments", result)
        if result == "registered":
            metrics.segment_latency.labels("recommendable").observe(seconds)

    segments["on_result"] = on_segment  # the segment service's callback into the metrics

    @asynccontextmanager
    async def lifespan(app):
        from .content import ContentEncoder, ContentSettingsError

        try:  # a swap keeps the encoding (swap.incompatible), so the service and its workers outlive it
            encoder = ContentEncoder.from_pipeline(serving.current.bundle.pipeline)  # the networks load in the workers
        except ContentSettingsError as e:
            segments["refusal"] = str(e)
        else:  # workers 0: no segment accepted, the status of registered ones still answered
            if segment_workers < 1:
                segments["refusal"] = "the service runs without segment workers (serve --segment-workers 0)"
            segments["service"] = SegmentService(encoder, registry, max(0, segment_workers), segment_threads,
                                                 on_result=on_segment, nice=segment_nice, max_queued=segment_queue)
        try:
            yield
        finally:
            service, segments["service"] = segments["service"], None
            segments["refusal"] = "the service is stopping"
            if service is not None:
                service.close()
            state.close()

    app = FastAPI(
        title="modalrec service", version=str(bundle.manifest.get("modalrec_version", "")),
        description=(f"Serves bundle `{Path(bundle_dir).name}` (model `{bundle.model_name}`, task `{bundle.task}`). "
                     "Write endpoints need the API key (header `X-API-Key` or `Authorization: Bearer`). "
                     f"Request bodies are limited to {max_body_bytes} bytes (413 above). Unknown users and items "
                     "are cold starts, never errors. Malformed payloads get 422 with `message` naming the field."),
        lifespan=lifespan, docs_url=None, redoc_url=None,
    )
    mount_docs(app)
    app.state.scorer = serving.current.scorer  # the current one's (a swap updates it)
    app.state.serving = serving
    app.state.metrics = metrics
    app.state.rooms = rooms
    app.state.segments = segments
    limiter = RateLimiter(rate_limit, rate_burst) if rate_limit else None
    app.add_middleware(Limits, metrics=metrics, max_body_bytes=max_body_bytes, limiter=limiter,
                       route_limits={"/segments": max(segment_body_bytes, max_body_bytes)})
    require_key = key_guard(key, API_KEY_ENV)

    def unprocessable(errors: list[dict]) -> JSONResponse:
        detail = [{"field": _field(e["loc"]), "loc": list(e["loc"]), "msg": e["msg"].removeprefix("Value error, "),
                   "type": e.get("type", "value_error")} for e in errors]
        message = "; ".join(f"{d['field']}: {d['msg']}" for d in detail[:10])
        if len(detail) > 10:
            message += f"; ... and {len(detail) - 10} more"
        return JSONResponse({"detail": detail, "message": message}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return unprocessable(list(exc.errors()))

    @app.exception_handler(Invalid)
    async def _invalid2(request: Request, exc: Invalid):
        return unprocessable(exc.errors)

    def sync_items(g: Generation | None = None) -> None:
        """Items registered or deleted by other processes sharing the state store, then expired items, then room
        events (throttled: see ItemRegistry.refresh_items, Rooms.sync), in generation `g` (default: the current)."""
        rooms.sync()
        changes = (g or serving.current).registry.refresh_items()
        for result in ("registered", "replaced", "deleted"):
            if changes[result]:
                metrics.inc("modalrec_items_synced", result, changes[result])
        if changes["expired"]:
            metrics.inc("modalrec_items", "expired", changes["expired"])

    live_default = live_only

    def stage(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        metrics.stage(name, t1 - t0)
        return t1

    @app.get("/healthz", tags=["ops"], summary="Liveness and readiness: the bundle is loaded and the state store answers")
    def healthz():
        g = serving.current
        try:
            ok = state.ping()
        except Exception as e:  # noqa: BLE001 - any store failure is reported by the probe, not raised
            return JSONResponse({"status": "error", "state": state.kind, "error": str(e)}, status_code=503)
        service, reg = segments["service"], g.registry
        with g.scorer.lock.read():
            live = len(rooms.live(reg.room_items))
        return {"status": "ok" if ok else "error", "model": g.bundle.model_name, "task": g.bundle.task,
                "bundle": g.path, "manifest_sha256": g.manifest_sha256, "swaps": serving.swaps,
                "swapping": serving.swapping is not None,
                "state": state.kind, "users": len(g.bundle.pipeline.users) - 1, "items": g.bundle.n_items - 1,
                "registered_items": reg.n_registered, "item_rows": len(reg.ids) - reg.ids.n_base,
                "tombstones": reg.ids.tombstones, "precision": precision, "live_rooms": live,
                "segments": "off" if service is None or not service.accepting else "ready" if service.ready()
                else "starting"}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics: request counts, latency histograms, events, "
             "cold starts")
    def prom():
        import prometheus_client

        service = segments["service"]
        if service is not None:
            metrics.segments(service.stats())
        g = serving.current
        with g.scorer.lock.read():
            metrics.live_rooms.set(len(rooms.live(g.registry.room_items)))
        return Response(metrics.render(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    @app.post("/events", response_model=EventsResponse, tags=["events"], dependencies=[Depends(require_key)],
              summary="Ingest a batch of interactions; acknowledged only once durably stored")
    def post_events(req: EventsRequest) -> EventsResponse:
        g = serving.current
        errors = g.rule.errors(req.events)
        if errors:
            raise Invalid(errors)
        now = int(time.time())
        stored = [StoredEvent(user=ev.user, item=ev.item, channel=ev.channel, time=to_seconds(ev.time, now),
                              value=ev.value, event_id=ev.event_id,
                              payload=None if ev.payload is None else ev.payload.model_dump(exclude_none=True))
                  for ev in req.events]
        t0 = time.perf_counter()
        res = state.append_events(stored)
        stage("write", t0)
        cold_user_events = int((g.bundle.pipeline.users.lookup([e.user for e in stored]) == 0).sum())
        with_item = [e.item for e in stored if e.item is not None]
        cold_item_events = int((g.scorer.item_index(with_item) == 0).sum()) if with_item else 0
        metrics.inc("modalrec_events", "accepted", res.accepted)
        metrics.inc("modalrec_events", "duplicate", res.duplicates)
        if cold_user_events:
            metrics.inc("modalrec_cold_starts", "event_user", cold_user_events)
        if cold_item_events:
            metrics.inc("modalrec_cold_starts", "event_item", cold_item_events)
        return EventsResponse(accepted=res.accepted, duplicates=res.duplicates, cold_user_events=cold_user_events,
                              cold_item_events=cold_item_events)

    def sequence(scorer, user: str, ctx: Context, explicit: list[HistoryEvent] | None):
        before = to_seconds(ctx.time)
        if explicit is not None:
            seq = scorer.explicit_history([(h.item, to_seconds(h.time), h.channel) for h in explicit], before)
        else:
            seq = scorer.history(user, before)
        # without a given time the request happens now, after every event it reads
        t = before if before is not None else max(int(time.time()), int(seq.times.max()) if len(seq.times) else 0)
        return seq, t, before

    @app.post("/recommend", response_model=RecommendResponse, tags=["recommend"],
              summary="Top-K items for a user: ANN retrieval over item vectors, then the ranker")
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        # on the event loop, not a worker thread: ranking is CPU-bound and holds the GIL anyway, and the hop to the
        # thread pool (with the GIL handed back and forth while the loop reads other requests) cost ~1.5 ms of
        # p50 under load (benchmarks/serve_load.py); /events, which waits on fsync, stays on the pool
        g = serving.current  # the whole request on one generation, whatever a swap does meanwhile
        scorer, registry = g.scorer, g.registry
        sync_items(g)
        g.check_context(req.context)
        live_only = live_default if req.live_only is None else req.live_only
        t0 = time.perf_counter()
        cold = scorer.user_index(req.user) == 0
        seq, t, before = sequence(scorer, req.user, req.context, None)
        exclude = set(scorer.item_index(req.context.exclude).tolist()) if req.context.exclude else set()
        t0 = stage("state", t0)
        live = live_rows = room_of = None
        if live_only:  # the registered items of the rooms live now, read together with their rooms
            with scorer.lock.read():
                live = rooms.live(registry.room_items)
                live_rows = registry.live_rows(live, req.one_per_room)
                room_of = dict(registry.item_room)
        if req.candidates is not None:
            cand = scorer.item_index(req.candidates)
            names = list(req.candidates)
            allowed = None if live_rows is None else set(live_rows.tolist())
            keep = [j for j, c in enumerate(cand) if (c == 0 or c not in exclude) and (allowed is None or c in allowed)]
            cand, names = cand[keep], [names[j] for j in keep]
            retrieved = {"ann": 0, "popular": 0, "given": len(cand)}
        else:
            query = scorer.retrieval_query(req.user, before)
            if req.exclude_seen:
                exclude |= set(query.tolist()) | set(seq.items.tolist())
            cand, n_ann = scorer.retrieve(query, req.n_candidates, exclude, among=live_rows)
            names = registry.ids.ids_of(cand)
            retrieved = {"ann": n_ann, "popular": len(cand) - n_ann, "given": 0}
        t0 = stage("retrieval", t0)
        if cold:
            metrics.inc("modalrec_cold_starts", "recommend_user")
        logits = (scorer.score(req.user, seq, t, cand, before=before,
                               context=scorer.context_codes(req.context.features, req.context.item_features, names))
                  if len(cand) else np.zeros(0))
        order = np.argsort(-logits, kind="stable")
        top = order[np.isfinite(logits[order])][: req.k]  # a candidate the model does not rank (-inf) never comes
        stage("rank", t0)
        short = None
        if len(top) < req.k:
            short = (f"{len(top)} of the {req.k} items asked for: only {len(cand)} candidates "
                     + ("were given" if req.candidates is not None and not live_only else
                        f"of the {len(req.candidates)} given are live" if req.candidates is not None else
                        f"exist after exclusions (n_candidates {req.n_candidates})"
                        + (f", among the registered items of the {len(live)} live rooms"
                           + (", one per room" if req.one_per_room else "") if live_only else "")))
            unranked = int((~np.isfinite(logits)).sum())
            if unranked:
                short += f", {unranked} of them without a score from the model (not ranked)"
        items = g.scored([names[j] for j in top], cand[top], logits[top])
        if live_only:
            for it in items:
                it.room = room_of.get(it.item)
        return RecommendResponse(user=req.user, cold_start=cold, history_length=len(seq.items), items=items,
                                 retrieved=retrieved, model=g.bundle.model_name, shortfall=short,
                                 live_rooms=None if live is None else len(live))

    @app.post("/score", response_model=ScoreResponse, tags=["recommend"],
              summary="Scores (ctr: click probabilities) of given items for a user")
    async def score(req: ScoreRequest) -> ScoreResponse:  # on the event loop, as /recommend
        g = serving.current
        scorer = g.scorer
        sync_items(g)
        g.check_context(req.context, req.history)
        t0 = time.perf_counter()
        cold = scorer.user_index(req.user) == 0
        seq, t, before = sequence(scorer, req.user, req.context, req.history)
        t0 = stage("state", t0)
        cand = scorer.item_index(req.items)
        ctx = scorer.context_codes(req.context.features, req.context.item_features, list(req.items))
        logits = scorer.score(req.user, seq, t, cand, before=before, context=ctx)
        stage("rank", t0)
        if cold:
            metrics.inc("modalrec_cold_starts", "score_user")
        n_cold = int((cand == 0).sum())
        if n_cold:
            metrics.inc("modalrec_cold_starts", "score_item", n_cold)
        return ScoreResponse(user=req.user, cold_start=cold, history_length=len(seq.items),
                             scores=g.scored(list(req.items), cand, logits), model=g.bundle.model_name)

    @app.get("/users/{user:path}", response_model=UserState, tags=["events"], dependencies=[Depends(require_key)],
             summary="A user's stored online events (the latest `n`, default 100, at most 10000; oldest first) and "
                     "counters")
    def user_state(user: str, n: int = Query(100, ge=1, le=10_000)) -> UserState:
        return UserState(user=user, known=serving.current.scorer.user_index(user) > 0,
                         events=[e.to_json() for e in state.recent(user, n)], counters=state.counters(user))

    add_item_routes(app, registry=registry, require_key=require_key, sync_items=sync_items, stage=stage,
                    metrics=metrics)
    add_segment_routes(app, bundle=serving.bundle, registry=registry, service=segment_service,
                       require_key=require_key, sync_items=sync_items, invalid=Invalid, metrics=metrics)
    add_room_routes(app, rooms=rooms, registry=registry, lock=serving.lock, require_key=require_key,
                    sync_items=sync_items, invalid=Invalid,
                    time_errors=lambda *a, **k: serving.current.rule.time_errors(*a, **k), metrics=metrics)
    add_swap_route(app, serving=serving, require_key=require_key, metrics=metrics)
    return app


def serve(bundle_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, state_url: str | None = None,
          api_key: str | None = None, threads: int | None = 1, log_level: str = "info",
          rate_limit: float | None = None, rate_burst: float | None = None, item_sync_s: float | None = 1.0,
          item_ttl_s: float | None = None, precision: str = "fp32", segment_workers: int = 1,
          live_only: bool = False, segment_nice: int = 0, segment_queue: int | None = None) -> None:
    """Runs the service with uvicorn (one process; request handlers run in its thread pool). Several such
    processes can share one state store: items registered or deleted through one reach the others within
    `item_sync_s` seconds; registered items expire after `item_ttl_s` seconds unless they give their own.
    `segment_workers`: processes encoding speech for POST /segments (plus one for frames and comments; 0: none),
    at niceness + `segment_nice`, at most `segment_queue` segments waiting for speech; `live_only`: /recommend returns
    only registered items of live rooms unless a request says otherwise."""
    import logging

    import uvicorn

    if os.environ.get("MODALREC_KEEP_FREED_MEMORY", "1") != "0" and not keep_freed_memory():
        logging.getLogger("modalrec.serve").warning("could not tune the C allocator (not glibc?): requests map and "
                                                    "fault their buffers afresh")
    app = create_app(bundle_dir, state_url, api_key, threads=threads, rate_limit=rate_limit, rate_burst=rate_burst,
                     item_sync_s=item_sync_s, item_ttl_s=item_ttl_s, precision=precision,
                     segment_workers=segment_workers, live_only=live_only, segment_nice=segment_nice,
                     segment_queue=segment_queue)
    # the bundle's objects live as long as the process: moved out of the collector's generations, a full
    # collection during a request no longer walks them (tail latency)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
