"""Worker processes encoding raw segments off the request path (`EncoderPool`), each with its own
`serve.content.ContentEncoder` built once from the run's plan, so no request waits for a network.

Each worker ends when its service does (`exit_with_parent`: even a SIGKILLed service), and can run at a lower
CPU priority (`nice`: `serve --segment-nice N`), so the encoders (speech recognition) take what scoring leaves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


class EncoderPool:
    """`workers` processes encoding raw segments off the request path, each with its `ContentEncoder` (the plan of
    `encoder`). `threads`: torch threads per worker (1 leaves the other cores to scoring). `nice`: added to each
    worker's niceness when it starts (`os.nice`; 0: the service's priority). `warm`: load the
    networks when a worker starts (True: every one of the plan; a collection of views: those). `on_done(segment_id, vectors, tokens)` / `on_error(segment_id, exception)` run
    in a thread of this process: keep them short (e.g. `registry.register([to_new_item(...)])`)."""

    def __init__(self, encoder: ContentEncoder, workers: int = 1, threads: int | None = 1, warm=True,
                 start_method: str = "spawn", nice: int = 0):
        import multiprocessing

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        warm = warm if isinstance(warm, bool) else sorted(warm)
        if nice < 0:
            raise ValueError(f"nice must be >= 0 (a lower priority than the service's), got {nice}")
        self.workers, self._args, self.nice = workers, (encoder.plan, encoder.cache_dir, threads, warm), nice
        self._closing = False
        self._context = multiprocessing.get_context(start_method)  # spawn: no fork of a threaded server
        self._lock = threading.Lock()
        self._executor = self._start()
        self.submitted = self.encoded = self.failed = 0
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
               on_error: Callable[[str, BaseException], None] | None = None) -> Future:
        """Queues one segment; returns at once."""
        self._set(segment_id, "queued")
        with self._lock:
            try:
                fut = self._executor.submit(_encode_in_worker, raw)
            except BrokenProcessPool:  # a worker died (killed, out of memory): a fresh pool
                log.warning("content encoder pool broken; starting a new one")
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._start()
                fut = self._executor.submit(_encode_in_worker, raw)
            self.submitted += 1
        fut.add_done_callback(lambda f: self._finish(segment_id, f, on_done, on_error))
        return fut

    def _finish(self, segment_id: str, fut: Future, on_done, on_error) -> None:
        try:
            vectors, tokens, spent = fut.result()
        except BaseException as e:  # noqa: BLE001 - reported to the caller, never raised in the pool's thread
            with self._lock:
                self.failed += 1
            why = (("cancelled: the service is stopping" if self._closing else "cancelled")
                   if isinstance(e, CancelledError) else str(e) or type(e).__name__)
            if isinstance(e, CancelledError):
                e = CancelledError(why)  # the reason reaches on_error too (a segment's errors)
            log.warning("segment %r not encoded: %s", segment_id, why)
            self._set(segment_id, "failed", why)
            if on_error is not None:
                _call(on_error, segment_id, e)
            return
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
        """Queue length (submitted, not finished), segments encoded and failed, worker seconds per raw modality."""
        with self._lock:
            return {"workers": self.workers, "queued": self.submitted - self.encoded - self.failed,
                    "encoded": self.encoded, "failed": self.failed, "seconds": dict(self.seconds),
                    "seconds_per_segment": {n: self.seconds[n] / c for n, c in self.segments.items()}}

    def niceness(self) -> list[int]:
        """The niceness the workers report (one answer per worker process, though a worker may answer twice)."""
        with self._lock:
            futures = [self._executor.submit(_niceness) for _ in range(self.workers)]
        return [f.result() for f in futures]

    def close(self, wait: bool = True, cancel: bool = False) -> None:
        self._closing = True
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
