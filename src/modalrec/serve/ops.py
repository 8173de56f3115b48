"""Operating the service: Prometheus metrics, the per-client rate limit, the body size limit, and the
read/write lock of the item tables. Each is a maintained package's; this module only wires them in.

- metrics: `prometheus_client` (one registry per app, exposition format 0.0.4);
- rate limit: `limits` (a moving window of `burst` requests per `burst / rate` seconds, rounded up to whole
  seconds, per client address, in memory), answered 429 with Retry-After;
- read/write lock: `readerwriterlock` (writer preferring: a registration waiting for the tables holds back new
  requests, so it is not starved under load);
- the API key the write endpoints require, and the C allocator's setting for steady request latency.
"""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager

import prometheus_client as prom
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from readerwriterlock import rwlock

prom.disable_created_metrics()

BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
COUNTERS = {
    "modalrec_events": ("result", "Events received, by result (accepted, duplicate)."),
    "modalrec_items": ("result", ("Items received by /items, by result (registered, replaced, known_to_bundle, "
                       "deleted), and expired: deleted by this process's TTL sweep.")),
    "modalrec_items_synced": ("result", ("Items registered or deleted by other processes sharing the state store "
                              "and applied here, by result (registered, replaced, deleted).")),
    "modalrec_cold_starts": ("kind", "Requests or events about users/items unknown to the bundle."),
    "modalrec_segments": ("result", ("Raw segments (POST /segments) by result: accepted, registered (first "
                          "registration: recommendable), updated (slow modalities added), failed, discarded (encoded "
                          "after the segment was deleted), superseded (a slow job dropped before it started: a newer "
                          "segment of the same room was queued), dropped (a slow job dropped before it started: "
                          "beyond serve --segment-queue waiting jobs).")),
    "modalrec_rooms": ("result", "Room events (POST /rooms) by result (applied, stale)."),
    "modalrec_bundle_swaps": ("result", ("Bundle swaps (POST /admin/bundle) by result (swapped, refused: not a "
                              "bundle that can serve the same API, busy: another swap under way).")),
}


class Metrics:
    """The service's Prometheus metrics: request counts and latencies by route, per-stage latencies, and the
    event / item / cold-start counters, in a registry of their own (several apps in one process stay apart)."""

    def __init__(self, info: dict[str, str]):
        self.registry = prom.CollectorRegistry()
        self.info = prom.Info("modalrec", "The served bundle (updated by a bundle swap).", registry=self.registry)
        self.info.info(info)
        self.requests = prom.Counter("modalrec_requests", "HTTP requests by route, method and status code.",
                                     ["route", "method", "status"], registry=self.registry)
        self.latency = prom.Histogram("modalrec_request_duration_seconds", "Time from request start to the end of "
                                      "the response, by route.", ["route"], buckets=BUCKETS, registry=self.registry)
        self.stages = prom.Histogram("modalrec_stage_duration_seconds", "Time spent in each step of a request "
                                     "(state, retrieval, rank, write).", ["stage"], buckets=BUCKETS,
                                     registry=self.registry)
        self.counters = {name: prom.Counter(name, help_, [label], registry=self.registry)
                         for name, (label, help_) in COUNTERS.items()}
        self.segment_latency = prom.Histogram(
            "modalrec_segment_seconds", "Time from POST /segments to the segment's first registration "
            "(recommendable) and to its last modality (complete).", ["phase"],
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 60.0), registry=self.registry)
        self.segment_queue = prom.Gauge("modalrec_segment_queue", "Segments submitted to an encoder lane and not "
                                        "finished, by lane (fast: frames, comments; slow: speech).", ["lane"],
                                        registry=self.registry)
        self.segment_waiting = prom.Gauge("modalrec_segment_waiting", "Of those, the segments no worker has started, "
                                          "by lane.", ["lane"], registry=self.registry)
        self.segment_encode = prom.Gauge("modalrec_segment_encode_seconds", "Mean worker seconds per segment, by raw "
                                         "modality.", ["modality"], registry=self.registry)
        self.live_rooms = prom.Gauge("modalrec_live_rooms", "Rooms live now.", registry=self.registry)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def stage(self, name: str, seconds: float) -> None:
        self.stages.labels(name).observe(seconds)

    def inc(self, name: str, value: str, by: float = 1.0) -> None:
        """Adds `by` to counter `name` (modalrec_events, ..., without _total) for label value `value`."""
        self.counters[name].labels(value).inc(by)

    def segments(self, stats: dict) -> None:
        """Sets the encoder gauges from `SegmentService.stats()`."""
        for lane, s in stats["lanes"].items():
            self.segment_queue.labels(lane).set(s["queued"])
            self.segment_waiting.labels(lane).set(s["waiting"])
            for modality, seconds in s["seconds_per_segment"].items():
                self.segment_encode.labels(modality).set(seconds)

    def render(self) -> bytes:
        return prom.generate_latest(self.registry)


class RateLimiter:
    """At most `burst` requests per client in any window of `burst / rate` seconds (rounded up to whole
    seconds): `rate` requests per second on average, bursts of `burst` (default twice the rate).

    Clients without a request in the last window are at their full budget: they are forgotten (the state holds
    the clients of the last window only, whatever the number of addresses seen)."""

    def __init__(self, rate: float, burst: float | None = None):
        if not rate > 0:
            raise ValueError(f"rate limit must be > 0 requests/s, got {rate!r}")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst if burst is not None else 2 * rate))
        self.window = max(1, math.ceil(self.burst / self.rate))
        self.item = RateLimitItemPerSecond(int(self.burst), self.window)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.clients: OrderedDict[str, float] = OrderedDict()  # client -> its last request, oldest first
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0.0 when the request may go (it is counted), else the seconds until the client may send again."""
        now = time.time()
        with self._lock:
            self.clients[client] = now
            self.clients.move_to_end(client)
            while self.clients:  # idle clients (nothing in the last window) are at their full budget: forgotten
                oldest, last = next(iter(self.clients.items()))
                if last >= now - self.window:
                    break
                del self.clients[oldest]
                self.limiter.clear(self.item, oldest)
        if self.limiter.hit(self.item, client):
            return 0.0
        reset, _ = self.limiter.get_window_stats(self.item, client)
        return max(reset - now, 1e-3)


class ReadWriteLock:
    """Many readers (requests scoring with the item tables) or one writer (registrations, deletions)."""

    def __init__(self):
        self._lock = rwlock.RWLockWrite()

    @contextmanager
    def read(self):
        with self._lock.gen_rlock():
            yield

    @contextmanager
    def write(self):
        with self._lock.gen_wlock():
            yield


class Limits:
    """Pure ASGI middleware: per-client rate limit (429), body size limit (413) and per-request metrics.

    The operations routes (/healthz, /metrics) are never rate limited: probes must see an overloaded
    service as alive."""

    UNLIMITED = ("/healthz", "/metrics")

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, limiter: RateLimiter | None = None,
                 route_limits: dict[str, int] | None = None):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.limiter = limiter
        self.route_limits = route_limits or {}  # exact path -> its own body limit (raw segments: larger)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}
        if self.limiter is not None and scope.get("path") not in self.UNLIMITED:
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.limiter.take(str(client))
            if wait > 0.0:
                try:
                    return await self._too_many(send, wait)
                finally:
                    self.metrics.request("rate limited", scope.get("method", ""), 429, time.perf_counter() - t0)

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        limit = self.route_limits.get(scope.get("path"), self.max_body)
        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                return await self._too_large(send_wrapped, limit)
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                body, more = bytearray(), True
                while more:  # read (and bound) the whole body before the app sees any of it
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > limit:
                        return await self._too_large(send_wrapped, limit)
                sent = False

                async def replay():
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": bytes(body), "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_wrapped)
            else:
                await self.app(scope, receive, send_wrapped)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            self.metrics.request(path, scope.get("method", ""), status["code"], time.perf_counter() - t0)

    async def _too_many(self, send, wait: float):
        retry = max(1, math.ceil(wait))
        await self._error(send, 429, f"rate limit of {self.limiter.rate:g} requests/s per client (bursts of "
                          f"{self.limiter.burst:g}) exceeded; retry after {retry} s", (b"retry-after", str(retry).encode()))

    async def _too_large(self, send, limit: int):
        await self._error(send, 413, f"request body larger than {limit} bytes", (b"connection", b"close"))

    @staticmethod
    async def _error(send, status: int, message: str, header: tuple[bytes, bytes]) -> None:
        """A JSON error response ({"detail", "message"}) sent before the app sees the request."""
        body = json.dumps({"detail": message, "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                header]})
        await send({"type": "http.response.body", "body": body})


def key_guard(key: str | None, env: str):
    """The dependency the write endpoints declare: the API key, from X-API-Key or a bearer token."""
    from fastapi import Depends, HTTPException
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")
    bearer = HTTPBearer(auto_error=False, description="the service's API key as a bearer token")

    def require_key(x_key: str | None = Depends(header_key),
                    auth: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = x_key or (auth.credentials if auth is not None else None)
        if key is None:
            raise HTTPException(403, f"writes are disabled: the service was started without an API key (${env})")
        if not given:
            raise HTTPException(401, "missing API key: send header X-API-Key (or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(403, "invalid API key")

    return require_key


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """glibc's allocator: serve blocks up to `mmap_threshold` bytes from the heap and keep up to `trim_threshold`
    freed bytes there instead of returning them to the system. A request's activations (a few MB each) are then
    reused from one request to the next instead of being mapped, page-faulted and zeroed afresh (the default
    thresholds cost a request over 200 x 100 (candidate, position) pairs about 40% of its scoring time). The
    price is that the process keeps its peak heap. Returns whether both settings took (False off glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))
