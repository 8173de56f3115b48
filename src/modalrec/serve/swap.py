"""Bundle hot swap (`POST /admin/bundle`): the service moves to another bundle while it serves, without a failed
request or a lost event.

The app serves one `Generation` at a time: a bundle, its `Scorer` (model, item registry, retrieval) on the
service's state store, the bundle's event rule. Every route reads `Serving.current` once, at its start, and uses
that generation to its end: a request in flight when the swap happens finishes on the old scorer, the next one
gets the new scorer. The swap itself is one reference assignment.

`Serving.swap(path)`, one at a time (a second one meanwhile: 409):
1. loads and verifies the bundle (`load_bundle`: every file's sha256) and checks that it can answer the same API
   (`incompatible`: same task; no context feature or history channel of the served bundle dropped; the same raw
   content encoding, since the vectors of registered items and the segment workers' encoders must stay valid);
   refused with 422 naming the file otherwise;
2. builds its Scorer on the SAME state store, while the old one keeps serving: users' events are read from the
   store, so none is lost or counted twice; the new item registry replays the registered items as a restart would;
3. under the write side of `gate` (registrations, deletions and segment registrations hold its read side, so they
   wait a moment): reads the items stored since its replay (`catch_up`: registered, replaced or deleted during the
   load), checks that every live registered item fits the new bundle (those it knows are absorbed: scored with its
   trained rows, still registered members of their rooms), then swaps.

The old generation is freed once its requests are done (`refreeze_later` when the collector was frozen).
Rooms live in the state store and the `Rooms` object is the service's, not a generation's. The segment service
keeps its worker processes (same encoding: same encoders) and reaches the current registry through
`CurrentRegistry`.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..pipeline.pipeline import sha256_of
from .bundle import Bundle, load_bundle
from .ops import ReadWriteLock
from .schemas import Context, EventRule, HistoryEvent, Invalid, ScoredItem
from .scoring import Scorer

log = logging.getLogger("modalrec.serve")


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., min_length=1, max_length=4096, description="the bundle directory, on the server")


class SwapRefused(Exception):
    """A swap not made (the served bundle stays): `status` 409 (another swap is under way) or 422 (not a bundle the
    service can swap to), `message` saying why and naming the file."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Generation:
    """What the service serves from one bundle."""

    path: str
    bundle: Bundle
    scorer: Scorer
    rule: EventRule  # the bundle's /events rule: time range, vector dimensions
    manifest_sha256: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def registry(self):
        return self.scorer.registry

    @property
    def is_ctr(self) -> bool:
        return self.bundle.task == "ctr"

    def scored(self, items: list[str], idx: np.ndarray, logits: np.ndarray) -> list[ScoredItem]:
        """Response items; a score the model gives as -inf (an item it never ranks) or NaN is null."""
        out = []
        for item, i, s in zip(items, idx, logits.tolist()):
            finite = math.isfinite(s)
            p = None
            if self.is_ctr and finite:  # the logistic function without overflow for large |s|
                p = 1.0 / (1.0 + math.exp(-s)) if s >= 0 else math.exp(s) / (1.0 + math.exp(s))
            out.append(ScoredItem(item=item, score=s if finite else None, probability=p, known=bool(i > 0)))
        return out

    def check_context(self, ctx: Context, history: list[HistoryEvent] | None = None) -> None:
        """422 for what the schema cannot know: times outside the bundle's range, context features the model does
        not read, and (a tagged model) history channels it was not trained on; every one of them at once."""
        errors = self.rule.time_errors([(("context", "time"), ctx.time)]
                                       + [(("history", i, "time"), h.time) for i, h in enumerate(history or [])])
        if ctx.features or ctx.item_features:
            errors += self.scorer.check_context(ctx.features, ctx.item_features)
        tags = self.bundle.pipeline.settings.history_tags
        if history and tags:  # a tagged model: every channel named must be one it was trained to read
            errors += [{"loc": ("body", "history", i, "channel"), "type": "value_error",
                        "msg": f"unknown channel '{h.channel}'; the model's history reads {sorted(tags)}"}
                       for i, h in enumerate(history) if h.channel is not None and h.channel not in tags]
        if errors:
            raise Invalid(errors)

    def describe(self) -> dict:
        return {"bundle": self.path, "model": self.bundle.model_name, "task": self.bundle.task,
                "seed": self.bundle.manifest.get("seed"), "manifest_sha256": self.manifest_sha256,
                "loaded_at": self.loaded_at}


def generation(path: str | Path, bundle: Bundle, state, **scorer_kw) -> Generation:
    return Generation(str(path), bundle, Scorer(bundle, state, **scorer_kw), EventRule.of_bundle(bundle),
                      sha256_of(Path(bundle.path) / "manifest.json"))


NOT_ENCODING = ("cache_dir", "media_root", "strict")  # content settings that do not change a vector


def content_plan(bundle: Bundle) -> dict | None:
    """How the bundle's run encoded raw content and the item layout the vectors fill (what `ContentEncoder` is
    built from), without the settings that change no vector; None: no raw content encoding."""
    p = bundle.pipeline
    content = p.settings.content or {}
    if not content.get("encode"):
        return None
    encode = {k: v for k, v in content["encode"].items() if k not in NOT_ENCODING}
    return {"content": {**content, "encode": encode},
            "tokens": {n: [int(t), int(d)] for n, (t, d) in p.item_sizes.tokens.items()},
            "dense": {n: int(d) for n, d in p.item_sizes.dense.items()}, "words": sorted(p.item_maps.text)}


def incompatible(old: Bundle, new: Bundle, path: str | Path) -> str | None:
    """Why `new` (at `path`) cannot replace `old` behind the same API, naming the file that says so; None: it can."""
    path = Path(path)
    if new.task != old.task:
        what = {"ctr": "click logits with probabilities", "topk": "next-item ranking scores without probabilities"}
        return (f"{path / 'config.yaml'}: task.kind '{new.task}' ({what.get(new.task, new.task)}), but the service "
                f"answers '{old.task}' ({what.get(old.task, old.task)}): its clients would get another kind of "
                f"score from /score and /recommend; serve that bundle as another service")
    dropped = sorted(set(old.pipeline.context) - set(new.pipeline.context))
    if dropped:
        return (f"{path / 'pipeline' / 'pipeline.json'}: the model does not read the context features {dropped} the "
                "served one reads: requests naming them would be refused (422)")
    dropped = sorted(set(old.pipeline.settings.history_tags) - set(new.pipeline.settings.history_tags))
    if dropped:
        return (f"{path / 'pipeline' / 'pipeline.json'}: the model does not read the history channels {dropped} the "
                "served one reads: /score histories naming them would be refused (422)")
    if content_plan(new) != content_plan(old):
        return (f"{path / 'pipeline' / 'pipeline.json'}: its raw content encoding (encoders, their settings or the "
                "model's vector sizes) differs from the served bundle's: the vectors of registered items and "
                "segments, and the encoders of the segment workers, would not match its model; restart the service "
                "on it instead")
    return None


def catch_up(registry) -> None:
    """Applies to a registry the items stored since its replay (registered, replaced or deleted meanwhile), whatever
    its item_sync_s. A store without `items_since` has nothing to read: its items come at the replay only."""
    if getattr(registry, "_items_since", None) is None:
        return
    saved = registry.item_sync_s
    registry.item_sync_s = 0.0 if saved is None else saved
    try:
        registry.sync_items(force=True)
    finally:
        registry.item_sync_s = saved


def refreeze_later(delay_s: float) -> None:
    """`modalrec serve` freezes the collector's generations after loading (`gc.freeze`: tail latency), and a frozen
    reference cycle is never collected: the old generation (its registry's id table refers back to it) would stay in
    memory for good. `delay_s` after a swap (the requests in flight on the old generation are done by then), in a
    thread: unfreeze, collect (one full collection: a pause of the order of 0.1 s), freeze the new generation."""
    def run():
        time.sleep(delay_s)
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    threading.Thread(target=run, name="modalrec-refreeze", daemon=True).start()


class Serving:
    """The generation the service serves now (`current`), and the swap to another one (see the module)."""

    def __init__(self, first: Generation, state, scorer_kw: dict, on_swap=None):
        self.current = first
        self.state = state
        self.scorer_kw = scorer_kw
        self.on_swap = on_swap  # called with (old, new) right after a swap
        self.gate = ReadWriteLock()  # read: a registration or deletion; write: the swap's last step
        self.swaps = 0
        self.swapping: tuple[str, float] | None = None  # (path, start) of the swap under way
        self.refreeze_after_s = 5.0  # see refreeze_later
        self._one = threading.Lock()
        self.registry = CurrentRegistry(self)
        self.lock = CurrentLock(self)
        self.bundle = CurrentBundle(self)

    def build(self, path: str, bundle: Bundle) -> Generation:
        return generation(path, bundle, self.state, **self.scorer_kw)

    def swap(self, path: str) -> dict:
        """Swaps to the bundle at `path` (see the module); returns the swap's report, raises SwapRefused."""
        if not self._one.acquire(blocking=False):
            other, since = self.swapping or ("?", time.time())
            raise SwapRefused(409, f"a swap to '{other}' is in progress (started {time.time() - since:.1f} s ago); "
                                   "one swap at a time: retry when it has answered")
        try:
            self.swapping = (path, time.time())
            t0 = time.perf_counter()
            old = self.current
            try:
                bundle = load_bundle(Path(path))
            except Exception as e:  # noqa: BLE001 - whatever it is, the served bundle stays; BundleError names the file
                why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                raise SwapRefused(422, f"'{path}' is not a bundle the service can load: {why}") from None
            reason = incompatible(old.bundle, bundle, path)
            if reason is not None:
                raise SwapRefused(422, f"refused to swap to '{path}': {reason}")
            new = self.build(path, bundle)  # the old generation serves meanwhile
            with self.gate.write():
                catch_up(new.registry)
                # every live registered item carries over: in a row of its own, or absorbed by the new bundle (one it
                # knows: scored with its trained row, still a member of its room; `serve.members`)
                lost = [i for i in [*old.registry.ids.extra, *old.registry.members.absorbed]
                        if not new.registry.is_registered(i)]
                if lost:
                    raise SwapRefused(422, f"refused to swap to '{path}': {len(lost)} registered items do not fit its "
                                           f"pipeline ({path}/pipeline; e.g. {lost[:3]}: see the log for why)")
                new.loaded_at = time.time()
                self.current = new
                self.swaps += 1
            if self.on_swap is not None:
                self.on_swap(old, new)
            if gc.get_freeze_count():
                refreeze_later(self.refreeze_after_s)
            log.info("swapped from bundle %s (%s) to %s (%s)", old.path, old.manifest_sha256[:12], path,
                     new.manifest_sha256[:12])
            return {"bundle": path, "model": bundle.model_name, "task": bundle.task,
                    "seed": bundle.manifest.get("seed"), "manifest_sha256": new.manifest_sha256,
                    "previous": old.describe(), "load_s": time.perf_counter() - t0, "swapped_at": new.loaded_at,
                    "registered_items": new.registry.n_registered, "swaps": self.swaps}
        finally:
            self.swapping = None
            self._one.release()


class CurrentRegistry:
    """The current generation's item registry, for what outlives a generation (the segment service, the segment and
    room routes): attributes read through to it, and registrations, updates and deletions hold the swap gate, so a
    swap never leaves one behind in the old registry."""

    def __init__(self, serving: Serving):
        self._serving = serving

    def __getattr__(self, name: str):
        return getattr(self._serving.current.scorer.registry, name)

    def register(self, items, bodies=None):
        with self._serving.gate.read():
            return self._serving.current.scorer.registry.register(items, bodies)

    def update(self, item, expected: str):
        with self._serving.gate.read():
            return self._serving.current.scorer.registry.update(item, expected)

    def delete(self, ids: list[str]):
        with self._serving.gate.read():
            return self._serving.current.scorer.registry.delete(ids)


class CurrentLock:
    """The current generation's item table lock (`Scorer.lock`)."""

    def __init__(self, serving: Serving):
        self._serving = serving

    def read(self):
        return self._serving.current.scorer.lock.read()

    def write(self):
        return self._serving.current.scorer.lock.write()


class CurrentBundle:
    """The current generation's bundle."""

    def __init__(self, serving: Serving):
        self._serving = serving

    def __getattr__(self, name: str):
        return getattr(self._serving.current.bundle, name)


def add_swap_route(app, *, serving: Serving, require_key, metrics) -> None:
    """POST /admin/bundle on `app`."""
    from fastapi import Depends
    from fastapi.responses import JSONResponse

    @app.post("/admin/bundle", tags=["ops"], dependencies=[Depends(require_key)],
              responses={409: {"description": "another swap is in progress"},
                         422: {"description": "not a valid bundle, or one that cannot serve the same API (another "
                                              "task, fewer context features or history channels, another raw "
                                              "content encoding); the message names the file"}},
              summary="Swap to another bundle (a refreshed one) while serving: loaded and verified beside the served "
                      "one, then swapped in one step; requests in flight finish on the old model")
    def swap_bundle(req: SwapRequest):  # a worker thread: the load must not hold the event loop
        try:
            out = serving.swap(req.path)
        except SwapRefused as e:
            metrics.inc("modalrec_bundle_swaps", "busy" if e.status == 409 else "refused")
            return JSONResponse({"detail": e.message, "message": e.message}, status_code=e.status)
        metrics.inc("modalrec_bundle_swaps", "swapped")
        return out
