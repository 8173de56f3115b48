"""Worker processes encoding raw segments off the request path (`EncoderPool`), each with its own
`serve.content.ContentEncoder` built once from the run's plan, so no request waits for a network.

Each worker ends when its service does (`exit_with_parent`: even a SIGKILLed service), and can run at a lower
CPU priority (`nice`: `serve --segment-nice N`), so the encoders (speech recognition) take what scoring leaves.

Jobs wait in the pool's own queue until a worker is free, so a job not started yet can still be dropped: with
`supersede`, a job of a key (a segment's room) drops the waiting jobs of the same key whose raw modalities it holds
too (the room's newer content replaces what was not encoded yet: the queue holds at most one job per room); with
`max_queued`, beyond that many waiting jobs the oldest is dropped. A dropped job never runs: its `on_error` gets
`JobDropped`, and the pool counts it (`stats`: superseded, dropped).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .content import ContentEncoder, RawSegment

log = logging.getLogger("modalrec.serve")

_WORKER: ContentEncoder | None = None


def exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Ends this worker process once `parent` is no longer its parent: a service killed with SIGKILL cannot shut
    its pool down, and the pool's queues never close (every worker holds both ends), so its workers would live on,
    each holding its networks (about 1 GB), until the machine restarts."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="modalrec-parent-watch", daemon=True).start()


def _start_worker(plan: dict, cache_dir, threads: int | None, warm: bool, parent: int | None = None,
                  nice: int = 0) -> None:
    global _WORKER
    from .content import ContentEncoder

    if parent is not None:
        exit_with_parent(parent)
    if nice:
        os.nice(nice)  # before the networks load: the worker yields the cores to scoring from its start
    if threads:
        import torch

        torch.set_num_threads(threads)
    _WORKER = ContentEncoder(plan, cache_dir)
    if warm:
        _WORKER.warm_up(None if warm is True else warm)


def _ready() -> bool:
    return _WORKER is not None


def _niceness() -> int:
    """The worker's CPU priority (niceness: 0 by default, higher yields more)."""
    return os.nice(0)


def _encode_in_worker(raw: RawSegment):
    vectors, tokens = _WORKER.encode(raw)
    return vectors, tokens, dict(_WORKER.last_seconds)


SUPERSEDED, OVERFLOW = "superseded", "dropped"


class JobDropped(CancelledError):
    """A waiting job the pool dropped before it started (`reason`: superseded by a newer job of its key, or dropped
    by the queue bound); it never runs."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(eq=False)
class _Job:
    segment_id: str
    raw: dict
    on_done: Callable
    on_error: Callable | None
    key: str | None
    modalities: frozenset[str]
    future: Future = field(default_factory=Future)


class EncoderPool:
    """`workers` processes encoding raw segments off the request path, each with its `ContentEncoder` (the plan of
    `encoder`). `threads`: torch threads per worker (1 leaves the other cores to scoring). `nice`: added to each
    worker's niceness when it starts (`os.nice`; 0: the service's priority). `warm`: load the
    networks when a worker starts (True: every one of the plan; a collection of views: those). `on_done(segment_id, vectors, tokens)` / `on_error(segment_id, exception)` run
    in a thread of this process: keep them short (e.g. `registry.register([to_new_item(...)])`). `supersede` and
    `max_queued`: which waiting jobs are dropped (see the module). `encode`: what a worker runs on a job's raw
    modalities, a picklable function returning (vectors, tokens, worker seconds per raw modality); the default is
    the worker's `ContentEncoder` (tests pass a fake slow one)."""

    def __init__(self, encoder: ContentEncoder, workers: int = 1, threads: int | None = 1, warm=True,
                 start_method: str = "spawn", nice: int = 0, supersede: bool = False, max_queued: int | None = None,
                 encode: Callable[[RawSegment], tuple] | None = None):
        import multiprocessing

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        warm = warm if isinstance(warm, bool) else sorted(warm)
        if nice < 0:
            raise ValueError(f"nice must be >= 0 (a lower priority than the service's), got {nice}")
        if max_queued is not None and max_queued < 1:
            raise ValueError(f"max_queued must be >= 1 (None: no bound), got {max_queued}")
        self.workers, self._args, self.nice = workers, (encoder.plan, encoder.cache_dir, threads, warm), nice
        self.supersede, self.max_queued = supersede, max_queued
        self._encode = encode or _encode_in_worker
        self._closing = self._shut = False
        self._context = multiprocessing.get_context(start_method)  # spawn: no fork of a threaded server
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._executor = self._start()
        self._waiting: deque[_Job] = deque()  # jobs no worker has yet, oldest first
        self._in_flight = 0  # jobs handed to the executor, not finished
        # a pool that never drops a job hands the executor one more than its workers, so a worker finds its next
        # job at once; one that drops hands it only as many as it has workers: every job not started stays droppable
        self._limit = workers + (0 if supersede or max_queued is not None else 1)
        self.submitted = self.encoded = self.failed = self.superseded = self.dropped = 0
        self.seconds: dict[str, float] = defaultdict(float)  # raw modality -> worker seconds, all segments
        self.segments: dict[str, int] = defaultdict(int)  # raw modality -> segments that had it
        self._states: OrderedDict[str, dict] = OrderedDict()  # the latest KEEP_STATES segments' states

    KEEP_STATES = 10_000

    def _set(self, segment_id: str, status: str, error: str | None = None) -> None:
        with self._lock:
            self._states.pop(segment_id, None)
            self._states[segment_id] = {"id": segment_id, "status": status, "error": error}
            while len(self._states) > self.KEEP_STATES:
                self._states.popitem(last=False)

    def state(self, segment_id: str) -> dict | None:
        """{"id", "status": queued, encoded (`on_done` returned) or failed, "error"}, None for an id not seen
        (in this process, among the latest KEEP_STATES)."""
        with self._lock:
            found = self._states.get(segment_id)
            return None if found is None else dict(found)

    def start(self) -> list[Future]:
        """Starts (and warms) the workers now rather than at the first segment: futures done when they are up."""
        with self._lock:
            return [self._executor.submit(_ready) for _ in range(self.workers)]

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, self._context, initializer=_start_worker,
                                   initargs=(*self._args, os.getpid(), self.nice))

    def submit(self, segment_id: str, raw: RawSegment, on_done: Callable[[str, dict, dict], None],
               on_error: Callable[[str, BaseException], None] | None = None, key: str | None = None) -> Future:
        """Queues one segment's raw modalities (`key`: its room, for `supersede`); returns at once a future of
        the worker's (vectors, tokens, seconds), cancelled if the job is dropped."""
        job = _Job(segment_id, raw, on_done, on_error, key, frozenset(raw))
        dropped: list[tuple[_Job, JobDropped]] = []
        self._set(segment_id, "queued")
        with self._lock:
            if self._closing:
                raise RuntimeError("the encoder pool is closed")
            if self.supersede and key is not None:
                older = [j for j in self._waiting if j.key == key and j.modalities <= job.modalities]
                for old in older:
                    self._waiting.remove(old)
                    dropped.append((old, JobDropped(SUPERSEDED, f"superseded: segment {segment_id!r} of the same room "
                                                    f"({key}) was queued before this one's encoding started")))
            self._waiting.append(job)
            while self.max_queued is not None and len(self._waiting) > self.max_queued:
                dropped.append((self._waiting.popleft(), JobDropped(OVERFLOW, f"dropped: more than {self.max_queued} "
                                "segments waited for this encoder lane (serve --segment-queue); the oldest is dropped")))
            self.submitted += 1
            self.superseded += sum(e.reason == SUPERSEDED for _, e in dropped)
            self.dropped += sum(e.reason == OVERFLOW for _, e in dropped)
            started = self._dispatch()
        self._watch(started)
        for old, why in dropped:
            self._drop(old, why)
        return job.future

    def _dispatch(self) -> list[tuple[_Job, Future]]:
        """Hands waiting jobs to the executor while it has room (under the lock); their futures are watched by the
        caller once the lock is released (a future done meanwhile runs its callback at once, in that thread)."""
        started = []
        while self._in_flight < self._limit and self._waiting and not self._shut:
            job = self._waiting.popleft()
            if not job.future.set_running_or_notify_cancel():  # cancelled by its caller
                self.failed += 1
                continue
            try:
                fut = self._executor.submit(self._encode, job.raw)
            except BrokenProcessPool:  # a worker died (killed, out of memory): a fresh pool
                log.warning("content encoder pool broken; starting a new one")
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._start()
                fut = self._executor.submit(self._encode, job.raw)
            self._in_flight += 1
            started.append((job, fut))
        return started

    def _watch(self, started: list[tuple[_Job, Future]]) -> None:
        for job, fut in started:
            fut.add_done_callback(lambda f, job=job: self._finished(job, f))

    def _finished(self, job: _Job, fut: Future) -> None:
        """A worker is done with `job` (in the executor's thread): the next waiting job starts, then the callbacks."""
        with self._lock:
            self._in_flight -= 1
            started = self._dispatch()
        self._watch(started)
        try:
            self._finish(job, fut)
        finally:
            with self._lock:
                self._idle.notify_all()

    def _drop(self, job: _Job, why: JobDropped) -> None:
        job.future.cancel()
        log.info("segment %r not encoded: %s", job.segment_id, why.message)
        self._set(job.segment_id, why.reason, why.message)
        if job.on_error is not None:
            _call(job.on_error, job.segment_id, why)

    def _finish(self, job: _Job, fut: Future) -> None:
        segment_id, on_done, on_error = job.segment_id, job.on_done, job.on_error
        try:
            vectors, tokens, spent = fut.result()
        except BaseException as e:  # noqa: BLE001 - reported to the caller, never raised in the pool's thread
            with self._lock:
                self.failed += 1
            why = (("cancelled: the service is stopping" if self._closing else "cancelled")
                   if isinstance(e, CancelledError) else str(e) or type(e).__name__)
            if isinstance(e, CancelledError):
                e = CancelledError(why)  # the reason reaches on_error too (a segment's errors)
            if not job.future.done():  # cancelled when the pool closed before the job started
                job.future.set_exception(e)
            log.warning("segment %r not encoded: %s", segment_id, why)
            self._set(segment_id, "failed", why)
            if on_error is not None:
                _call(on_error, segment_id, e)
            return
        job.future.set_result((vectors, tokens, spent))
        with self._lock:
            self.encoded += 1
            for name, s in spent.items():
                self.seconds[name] += s
                self.segments[name] += 1
        try:
            on_done(segment_id, vectors, tokens)
        except Exception as e:  # e.g. the registry refused the item: the segment failed, the pool goes on
            log.exception("content encoder callback failed for segment %r", segment_id)
            self._set(segment_id, "failed", str(e) or type(e).__name__)
        else:
            self._set(segment_id, "encoded")

    def stats(self) -> dict:
        """Queue length (`queued`: submitted, not finished; `waiting`: of them, not started), segments encoded,
        failed, superseded and dropped (never started), worker seconds per raw modality."""
        with self._lock:
            done = self.encoded + self.failed + self.superseded + self.dropped
            return {"workers": self.workers, "queued": self.submitted - done, "waiting": len(self._waiting),
                    "encoded": self.encoded, "failed": self.failed, "superseded": self.superseded,
                    "dropped": self.dropped, "max_queued": self.max_queued, "seconds": dict(self.seconds),
                    "seconds_per_segment": {n: self.seconds[n] / c for n, c in self.segments.items()}}

    def niceness(self) -> list[int]:
        """The niceness the workers report (one answer per worker process, though a worker may answer twice)."""
        with self._lock:
            futures = [self._executor.submit(_niceness) for _ in range(self.workers)]
        return [f.result() for f in futures]

    def close(self, wait: bool = True, cancel: bool = False) -> None:
        """Stops the pool: with `wait` and without `cancel` every queued job runs first; otherwise the jobs not
        started are cancelled (their `on_error` says the service is stopping)."""
        with self._lock:
            self._closing = True
            if wait and not cancel:
                self._idle.wait_for(lambda: not self._waiting and not self._in_flight)
            left, self._waiting = list(self._waiting), deque()
            self._shut = True
        for job in left:
            job.future.cancel()
            self._finish(job, job.future)
        self._executor.shutdown(wait=wait, cancel_futures=cancel)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _call(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # a failing callback must not stop the pool
        log.exception("content encoder callback failed for segment %r", args[0])
