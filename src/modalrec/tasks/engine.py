"""How the per-partition steps of a task's preparation are mapped over the partitions.

The steps (`tasks.ctr_steps.scan` / `build`, ...) are pure functions of one partition: the embedded default runs
them one after the other in this process (one partition of events in memory at a time); `RayEngine` runs the same
functions as Ray tasks, on a local Ray instance or a cluster (`ray.init(address=...)`), and returns the same
results in partition order. Nothing here schedules work itself: Ray does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


class LocalEngine:
    """Runs each step in this process, partition after partition."""

    name = "local"

    def map(self, fn: Callable[[int], Any], items: Iterable[int]) -> list:
        """Every result, in order (small results: scans, sample times)."""
        return [fn(i) for i in items]

    def imap(self, fn: Callable[[int], Any], items: Iterable[int]) -> Iterator:
        """The results one at a time, in order, each computed when the previous one was taken (a partition's
        prepared arrays: the caller writes each away before the next exists)."""
        for i in items:
            yield fn(i)


def local_engine() -> LocalEngine:
    return LocalEngine()
