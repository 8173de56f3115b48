"""How the per-partition steps of a task's preparation are mapped over the partitions.

The steps (`tasks.ctr_steps.scan` / `build`, ...) are pure functions of one partition: the embedded default runs
them one after the other in this process (one partition of events in memory at a time); `RayEngine` runs the same
functions as Ray tasks, on a local Ray instance or a cluster (`ray.init(address=...)`), and returns the same
results in partition order. Nothing here schedules work itself: Ray does (the only policy here is how many
partitions `imap` keeps in flight).

A step is a closure over the task's shared state (the config, the fitted pipeline, the partition loaders): the Ray
engine puts it in the object store once per `map` / `imap` and every task receives a reference to it, so the shared
state crosses the network once per node, not once per partition. A worker reads its partition itself, from the
partition's file (`PartitionedData.partition(i)`): the files must be on a filesystem every node sees, at the same
path.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

INSTALL_HINT = "pip install 'modalrec[cluster]'"
ENGINES = ("local", "ray")




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

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def local_engine() -> LocalEngine:
    return LocalEngine()


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"the 'ray' engine needs Ray, which is not installed: {INSTALL_HINT}") from e
    return ray


def _call(fn: Callable[[int], Any], i: int) -> Any:
    """A Ray task's body: the step on partition i (`fn` is resolved by Ray from the object store)."""
    return fn(i)


class RayEngine:
    """Runs each step as a Ray task (one CPU each), on the cluster at `address` ("auto": the cluster this machine
    belongs to, started with `ray start`; "ray://host:10001": a remote one through Ray Client) or, without an
    address, on a Ray instance started here with `num_workers` CPUs (None: every CPU). A Ray already initialised in
    this process is used as it is. Results come back in partition order, as the local engine's do.

    `imap` keeps at most `max_in_flight` partitions submitted and not yet taken (default: twice the cluster's
    CPUs): the object store holds at most that many partitions' results, and this process one at a time."""

    name = "ray"

    def __init__(self, address: str | None = None, num_workers: int | None = None,
                 max_in_flight: int | None = None, init_kwargs: dict | None = None):
        self._ray = _import_ray()
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"the ray engine's workers: at least 1, not {num_workers}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"the ray engine's max_in_flight: at least 1, not {max_in_flight}")
        self.address = address
        self.num_workers = num_workers
        self._max_in_flight = max_in_flight
        self._init_kwargs = dict(init_kwargs or {})
        self._started = False  # this engine called ray.init (and shuts it down on close)
        self._remote = None

    def _connect(self):
        ray = self._ray
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, **self._init_kwargs}
            if self.address is not None:
                ray.init(address=self.address, **kwargs)
            else:
                # "local": a new instance here, never a cluster `ray start` left running on this machine
                ray.init(address="local", num_cpus=self.num_workers, **kwargs)
            self._started = True
        if self._remote is None:
            self._remote = ray.remote(num_cpus=1)(_call)
        return ray

    @property
    def workers(self) -> int:
        """The CPUs Ray schedules the steps on (one task each)."""
        ray = self._connect()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight or 2 * self.workers

    def _get(self, refs):
        """ray.get, with a step's own exception (a DataError naming the bad input) raised as itself; the results
        copied out of the object store (zero-copy arrays would keep a partition's whole result pinned there for
        as long as any piece of it, e.g. its statistics, is kept)."""
        ray = self._ray
        try:
            out = ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from e
            raise
        return copy.deepcopy(out)

    def map(self, fn: Callable[[int], Any], items: Iterable[int]) -> list:
        """Every result, in order; every partition submitted at once (Ray runs as many as there are CPUs)."""
        ray = self._connect()
        shared = ray.put(fn)  # the closure (pipeline, config, loaders) crosses to each node once
        return self._get([self._remote.remote(shared, i) for i in items])

    def imap(self, fn: Callable[[int], Any], items: Iterable[int]) -> Iterator:
        """The results one at a time, in order, with at most `max_in_flight` partitions submitted and not yet
        taken (the next one is submitted as soon as one is taken, before it is yielded)."""
        ray = self._connect()
        shared = ray.put(fn)
        items = iter(items)
        window = self.max_in_flight
        pending: deque = deque(self._remote.remote(shared, i) for _, i in zip(range(window), items))
        try:
            while pending:
                result = self._get(pending.popleft())
                for i in items:
                    pending.append(self._remote.remote(shared, i))
                    break
                yield result
                del result
        finally:
            for ref in pending:  # the caller stopped early (or a step failed): the rest is not needed
                ray.cancel(ref)

    def close(self) -> None:
        """Shuts down the Ray instance this engine started (a Ray started elsewhere is left running)."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False
        self._remote = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def engine_from(name: str, address: str | None = None, workers: int | None = None) -> LocalEngine | RayEngine:
    """The engine called `name`: "local" (this process) or "ray" (Ray tasks: on the cluster at `address`, or, without
    one, on a Ray started here with `workers` CPUs; a cluster's size is its own, `workers` does not change it)."""
    if name == "local":
        if address is not None:
            raise ValueError(f"the local engine runs in this process: an address ({address!r}) needs engine 'ray'")
        return LocalEngine()
    if name == "ray":
        return RayEngine(address=address, num_workers=workers)
    raise ValueError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")
