"""The HTTP service: online events in, top-K and scores out, from one bundle and one state store.

Request path of `/recommend`: the user's behaviour sequence (the bundle's seed history merged with the
events the state store got since) -> candidate retrieval (faiss inner product between the mean vector
of the user's recent items and every item vector, topped up with popular items; popular items only
for a user without history) -> the ranker (the trained model) scores every candidate -> top K.

Train/serve parity: `Scorer.score` builds the model's `Batch` with the offline `Collator` itself, from
the bundle's `ItemSide` arrays and a one-user `History` holding the served sequence, so a (user, item,
history, time) gets the same tensors, and the same score, as in training and evaluation.

Graph-guided interest expansion (MMBee's GIE, bundles of runs with task.graph.enabled): the batch carries,
as offline, the user's U->A->A expansion (`gie_user`) and each candidate's streamer A->U->A expansion
(`gie_streamer`). The offline U->A->A table holds the training period's gifts; it is served as is for a
user without new gifts (parity), and recomputed online (`graph.gie.OnlineExpansion`: the user's
training gift totals plus the stored gift-channel events at or after the graph's end, strictly before
`context.time` when given, through the same Swing graph and weighting) for a user who has gifted since,
so a new gift changes the next /recommend. A gift counts 1 (weight mode 'value': the event's `value`).

History semantics: with `context.time` given, the ranker reads the events strictly before that time
(the offline leakage rule, for replay and what-if requests); without it, every stored event (the
request happens now, after them). Events of channels the model was not trained to read as history
(`history_channels` of the run) are kept and counted but not fed to the ranker; retrieval uses the
items of every channel. Events of items unknown to the bundle are cold: stored and counted, left out of
the model's sequence (the model has nothing learnt about them).

Writes (`POST /events`, and reading a user's stored state) need the API key: header `X-API-Key: KEY`
or `Authorization: Bearer KEY`; missing key -> 401, wrong key -> 403.
"""

from __future__ import annotations

import bisect
import hmac
import json
import logging
import math
import os
import threading
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, WithJsonSchema

from ..data.batch import Collator, History
from .bundle import Bundle, load_bundle
from .state import StateStore, StoredEvent, open_state

log = logging.getLogger("modalrec.serve")

API_KEY_ENV = "MODALREC_API_KEY"
MAX_BODY_BYTES = 1 << 20
MAX_EVENTS = 1000
MAX_ITEMS = 5000
MAX_TIME = 1 << 40


# ------------------------------------------------------------------------------------------ scorer


def to_seconds(t: int | datetime | None, default: int | None = None) -> int | None:
    if t is None:
        return default
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return math.floor(t.timestamp())
    return int(t)


class SharedHistoryAttention(torch.nn.Module):
    """Serving fast path of DIN's local activation unit (`nn.TargetAttention`) for batches whose rows
    all read the same history: a service request scores C candidates against one user's sequence.

    The unit's first layer W [q, k, q - k, q * k] splits into (Wq + Wd) q + (Wk - Wd) k + Wm (q * k):
    the q and k terms are computed once per candidate and once per history position instead of once
    per (candidate, position) pair, and the product term becomes one matrix product, so a request
    does about a quarter of the work. The rest of the MLP and the pooling are the unit's own layers.
    Rows that are not bitwise identical (or an MLP of another shape) take the unit's own forward.
    Same function up to float rounding; the parity test holds the service to 1e-5 of offline scores."""

    def __init__(self, att: torch.nn.Module):
        super().__init__()
        self.att = att
        first = att.mlp.net[0] if hasattr(att, "mlp") and hasattr(att.mlp, "net") and len(att.mlp.net) else None
        self.ok = isinstance(first, torch.nn.Linear) and first.in_features % 4 == 0

    def forward(self, query, keys, mask, values=None):
        att = self.att
        if (not self.ok or query.dim() != 2 or keys.dim() != 3 or len(query) < 2
                or not self._shared(mask) or not self._shared(keys)):
            return att(query, keys, mask, values)
        lin, rest = att.mlp.net[0], att.mlp.net[1:]
        d = query.shape[-1]
        if lin.in_features != 4 * d:
            return att(query, keys, mask, values)
        wq, wk, wd, wm = lin.weight.split(d, dim=1)
        m = mask[0]
        kr = keys[0][m]  # (n, d) real positions
        c, n, h = len(query), len(kr), lin.out_features
        # every (candidate, position) pair in ONE product: pre[c, i] = q_c (Wq + Wd + Wm diag(k_i)) + (Wk - Wd) k_i + b,
        # i.e. q (C, d) @ [(k_i (x) Wm) + (Wq + Wd)]^T (d, n h) with the per-position term as the addmm bias row
        hk = torch.addmm(lin.bias, kr, (wk - wd).T)  # (n, h)
        mixed = torch.addcmul((wq + wd).unsqueeze(0), kr.unsqueeze(1), wm.unsqueeze(0))  # (n, h, d)
        pre = torch.addmm(hk.reshape(1, n * h), query, mixed.reshape(n * h, d).T)
        real = rest(pre.view(c * n, h)).view(c, n)
        scores = torch.zeros(mask.shape, dtype=real.dtype, device=keys.device)
        scores[:, m] = real
        if att.softmax:
            floor = torch.finfo(scores.dtype).min
            w = torch.softmax(scores.masked_fill(~mask, floor), dim=-1)
            scores = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
        if values is None:
            v0 = torch.where(m.unsqueeze(-1), keys[0], torch.zeros((), dtype=keys.dtype, device=keys.device))
            return scores @ v0
        v = torch.where(mask.unsqueeze(-1), values, torch.zeros((), dtype=values.dtype, device=values.device))
        return torch.einsum("bl,bld->bd", scores, v)


    @staticmethod
    def _shared(t: torch.Tensor) -> bool:
        """Every row equal to row 0: by construction (the collate's stride-0 shared history) or by value."""
        return t.stride(0) == 0 or torch.equal(t, t[:1].expand_as(t))


def with_serving_fast_paths(model: torch.nn.Module) -> int:
    """Wraps every `TargetAttention` of `model` in `SharedHistoryAttention`; returns how many."""
    from ..nn.sequence import TargetAttention

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is TargetAttention:
                setattr(parent, name, SharedHistoryAttention(child))
                n += 1
    return n


class Scorer:
    """The model side of the service, without HTTP: histories, retrieval and scores."""

    def __init__(self, bundle: Bundle, state: StateStore, retrieval_history: int = 20, fast_paths: bool = True):
        self.bundle = bundle
        self.state = state
        self.retrieval_history = retrieval_history
        self.channels = None if bundle.history_channels is None else set(bundle.history_channels)
        self.collator_template = {"item_side": bundle.item_side, "max_history": bundle.max_history,
                                  "with_time": bundle.with_time, "token_scope": bundle.token_scope}
        self.graph = bundle.graph
        self.n_items = bundle.schema.n_items
        self.fast_paths = with_serving_fast_paths(bundle.model) if fast_paths else 0
        if fast_paths and hasattr(bundle.model, "cache_content"):  # MMBee: fuse each segment's content once
            bundle.model.cache_content()
        # group retrieval: items sharing the first item categorical feature (the streamer of a live segment, a
        # movie's category; SIM's hard-search key) with the user's recent items, most popular first
        cats = bundle.item_side.categorical
        self.group = next(iter(cats.values())) if cats else None

    # ids
    def user_index(self, user: str) -> int:
        return int(self.bundle.user_vocab.lookup([user])[0])

    def item_index(self, items: list[str]) -> np.ndarray:
        return self.bundle.item_vocab.lookup(items)

    # histories
    def seed(self, uidx: int, before: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        h = self.bundle.history
        if uidx <= 0 or uidx + 1 >= len(h.ptr):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo, hi = h.ptr[uidx], h.ptr[uidx + 1]
        items, times = h.items[lo:hi], h.times[lo:hi]
        if before is not None:
            keep = times < before
            items, times = items[keep], times[keep]
        return items, times

    def history(self, user: str, uidx: int, before: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ranker's sequence: (item indices, times), chronological, at most max_history long."""
        L = self.bundle.max_history
        s_items, s_times = self.seed(uidx, before)
        online = self.state.recent(user, 2 * L, channels=self.channels, before=before)
        o_items = self.item_index([e.item or "" for e in online]) if online else np.zeros(0, np.int64)
        o_times = np.array([e.time for e in online], dtype=np.int64)
        known = o_items > 0
        return self.merge(s_items, s_times, o_items[known], o_times[known])

    def merge(self, s_items, s_times, o_items, o_times) -> tuple[np.ndarray, np.ndarray]:
        items = np.concatenate([s_items, o_items]).astype(np.int64)
        times = np.concatenate([s_times, o_times]).astype(np.int64)
        order = np.argsort(times, kind="stable")  # equal times: seed (offline) events first, as offline
        L = self.bundle.max_history
        return items[order][-L:], times[order][-L:]

    def explicit_history(self, events: list[tuple[str, int]], before: int | None) -> tuple[np.ndarray, np.ndarray]:
        items = self.item_index([i for i, _ in events]) if events else np.zeros(0, np.int64)
        times = np.array([t for _, t in events], dtype=np.int64)
        keep = items > 0
        if before is not None:
            keep &= times < before
        return self.merge(np.zeros(0, np.int64), np.zeros(0, np.int64), items[keep], times[keep])

    def retrieval_query(self, user: str, uidx: int, before: int | None = None) -> np.ndarray:
        """Recent items of every channel (a like or a purchase says as much as a view), oldest first."""
        n = self.retrieval_history
        s_items, s_times = self.seed(uidx, before)
        online = self.state.recent(user, n, before=before)
        o_items = self.item_index([e.item or "" for e in online]) if online else np.zeros(0, np.int64)
        o_times = np.array([e.time for e in online], dtype=np.int64)
        known = o_items > 0
        items = np.concatenate([s_items[-n:], o_items[known]])
        times = np.concatenate([s_times[-n:], o_times[known]])
        return items[np.argsort(times, kind="stable")][-n:]

    # graph-guided interest expansion
    MAX_GIFTS = 10_000  # the latest gift events a user's online expansion reads

    def new_gifts(self, user: str, before: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(streamer codes, amounts) of the user's stored gift events the bundle's graph has not seen (at
        or after its end, strictly before `before`); None when there are none."""
        g = self.graph
        if g is None:
            return None
        c = self.state.counters(user).get(g.channel)
        if not c or c["n"] <= 0 or c["last_time"] < g.gifts_before:  # one cheap read for most users
            return None
        events = self.state.recent(user, min(int(c["n"]), self.MAX_GIFTS), channels=[g.channel], before=before)
        events = [e for e in events if e.time >= g.gifts_before and e.item is not None]
        if not events:
            return None
        codes = g.streamer_code[self.item_index([e.item for e in events])]
        if g.online.cfg.weight_mode == "value":
            amounts = np.array([e.value if e.value is not None else 0.0 for e in events], dtype=np.float64)
        else:
            amounts = np.ones(len(events), dtype=np.float64)
        keep = codes > 0  # gifts to items unknown to the bundle (or without a streamer) are not edges
        return (codes[keep], amounts[keep]) if keep.any() else None

    def user_expansion(self, user: str | None, uidx: int, before: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The user's U->A->A expansion, (K,) streamer codes and (K,) scores: the offline row, or the
        online recomputation when the user has gifted since the graph was built."""
        online = self.graph.online
        new = self.new_gifts(user, before) if user is not None else None
        if new is None:
            return online.offline(uidx)
        return online.expand(uidx, *new)

    def gie_extras(self, user: str | None, uidx: int, before: int | None, candidates: np.ndarray) -> dict:
        """batch.extra gie_* for C candidates of one user, as `CTRTask.collate` builds them."""
        g = self.graph
        seq, w = self.user_expansion(user, uidx, before)
        c = len(candidates)
        extra = g.expansion.lookup(np.zeros(c, np.int64), g.streamer_code[candidates])
        # the user's expansion is the same for every candidate: stride-0 rows, attended to once by MMBee
        extra["gie_user"] = torch.from_numpy(np.ascontiguousarray(seq)).unsqueeze(0).expand(c, -1)
        extra["gie_user_w"] = torch.from_numpy(np.ascontiguousarray(w)).unsqueeze(0).expand(c, -1)
        return extra

    # the ranker
    def context_codes(self, features: dict, item_features: dict, names: list[str]) -> dict[str, np.ndarray]:
        """(C,) codes of each context feature of the bundle for candidates `names`: the candidate's own value
        (`item_features`), else the request's (`features`), else 0 (unknown), as offline for unseen values."""
        out = {}
        for name, voc in self.bundle.context_vocab.items():
            values = [str(item_features.get(n, {}).get(name, features.get(name, ""))) for n in names]
            out[name] = voc.lookup(values).astype(np.int64)
        return out

    def check_context(self, features: dict, item_features: dict) -> list[dict]:
        """Validation errors (422) for context feature names the model does not read."""
        known = set(self.bundle.context_vocab)
        errors = [{"loc": ("body", "context", "features", n), "msg": f"unknown context feature; the model reads "
                   f"{sorted(known) or 'none'}", "type": "value_error"} for n in features if n not in known]
        for item, feats in item_features.items():
            errors += [{"loc": ("body", "context", "item_features", item, n), "msg": "unknown context feature; the "
                        f"model reads {sorted(known) or 'none'}", "type": "value_error"} for n in feats if n not in known]
        return errors

    @torch.inference_mode()
    def score(self, uidx: int, hist_items: np.ndarray, hist_times: np.ndarray, t: int,
              candidates: np.ndarray, user: str | None = None, before: int | None = None,
              context: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits (ctr) or scores (topk) of `candidates` for a user with this sequence at time `t`.
        `user` (the raw id) and `before` (context.time) select the online gifts a graph expansion reads;
        without `user` the expansion is the bundle's offline one. `context`: (C,) codes per context feature
        (`context_codes`); features it lacks are unknown (0)."""
        n = len(hist_items)
        h_items, h_times = hist_items.astype(np.int64), hist_times.astype(np.int64)
        if n == 0:  # one padding event beyond the cut: the window masks it, as offline for a user's first sample
            h_items, h_times = np.zeros(1, np.int64), np.full(1, t, np.int64)
        history = History(np.array([0, n], dtype=np.int64), h_items, h_times)
        collate = Collator(history, **self.collator_template)
        cand = candidates.astype(np.int64)
        if self.bundle.task == "ctr":
            c = len(cand)
            batch = collate(np.zeros(c, np.int64), cand, np.full(c, n, np.int64), np.full(c, t, np.int64))
            batch.user = batch.group = torch.full((c,), uidx, dtype=torch.long)
            context = context or {}
            batch.context = {name: torch.from_numpy(np.asarray(context.get(name, np.zeros(c, np.int64)), np.int64))
                             for name in self.bundle.context_vocab}
            if self.graph is not None:
                batch.extra.update(self.gie_extras(user, uidx, before, cand))
            out = self.bundle.model(batch)
        else:  # topk: one sequence, the candidates as a (1, C) slate
            batch = collate(np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([n]), np.array([t]))
            batch.user = batch.group = torch.full((1,), uidx, dtype=torch.long)
            batch.candidates = torch.from_numpy(cand).view(1, -1)
            out = self.bundle.model(batch).view(-1)
        return out.float().numpy().astype(np.float64)

    # retrieval
    def retrieve(self, query_items: np.ndarray, n: int, exclude: set[int]) -> tuple[np.ndarray, int]:
        """Up to `n` candidates: a quarter from the groups of the recent items (same first categorical
        feature, e.g. the streamers the user just watched or gifted: their other segments), then the nearest
        items to the recent items' mean vector, then popular ones. Returns (candidates, how many came from
        the user's history: group + ANN)."""
        b = self.bundle
        out: list[int] = []
        seen = set(exclude)
        seen.add(0)
        n = min(n, self.n_items - 1)
        if self.group is not None and len(query_items):
            codes = set(self.group[query_items[-self.retrieval_history:]].tolist()) - {0}
            if codes:
                same = b.popular[np.isin(self.group[b.popular], list(codes))]
                for item in same[: max(1, n // 4)].tolist():
                    if item not in seen:
                        out.append(int(item))
                        seen.add(int(item))
        n_ann = 0
        if b.index is not None and b.item_vectors is not None and len(query_items):
            recent = query_items[-self.retrieval_history:]
            w = 0.9 ** np.arange(len(recent))[::-1]  # the latest items weigh most
            q = (b.item_vectors[recent] * w[:, None]).sum(0)
            norm = np.linalg.norm(q)
            if norm > 0:
                want = n - n // 4  # a quarter stays for popular items: exploration beyond the history's neighbours
                k = min(b.index.ntotal, want + len(seen))
                _, ids = b.index.search((q / norm).astype(np.float32)[None, :], k)
                for i in ids[0]:
                    item = int(i) + 1
                    if i >= 0 and item not in seen:
                        out.append(item)
                        seen.add(item)
                        if len(out) >= want:
                            break
                n_ann = len(out)
        n_ann = max(n_ann, len(out))
        for item in b.popular:
            if len(out) >= n:
                break
            item = int(item)
            if item not in seen:
                out.append(item)
                seen.add(item)
        return np.array(out, dtype=np.int64), n_ann


# ----------------------------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus text exposition (format 0.0.4), written by hand: counters and histograms."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.hist: dict[tuple[str, str], list] = {}  # (metric, label) -> [bucket counts..., sum, count]
        self.counters: dict[tuple[str, str, str], float] = {}  # (name, label name, label value)
        self.info: dict[str, str] = {}

    def observe(self, metric: str, label: str, seconds: float) -> None:
        with self._lock:
            h = self.hist.setdefault((metric, label), [0] * len(self.BUCKETS) + [0.0, 0])
            i = bisect.bisect_left(self.BUCKETS, seconds)
            if i < len(self.BUCKETS):
                h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
        self.observe("request", route, seconds)

    def inc(self, name: str, label: str, value: str, by: float = 1.0) -> None:
        with self._lock:
            key = (name, label, value)
            self.counters[key] = self.counters.get(key, 0.0) + by

    @staticmethod
    def _esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    def render(self) -> str:
        e = self._esc
        lines = ["# HELP modalrec_info The served bundle.", "# TYPE modalrec_info gauge",
                 "modalrec_info{" + ",".join(f'{k}="{e(v)}"' for k, v in self.info.items()) + "} 1",
                 "# HELP modalrec_requests_total HTTP requests by route, method and status code.",
                 "# TYPE modalrec_requests_total counter"]
        with self._lock:
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f'modalrec_requests_total{{route="{e(route)}",method="{method}",status="{status}"}} {n}')
            names = {"request": ("modalrec_request_duration_seconds", "route",
                                 "Time from request start to the end of the response, by route."),
                     "stage": ("modalrec_stage_duration_seconds", "stage",
                               "Time spent in each step of a request (state, retrieval, rank, write).")}
            for metric, (name, label, help_) in names.items():
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                for (m, value), h in sorted(self.hist.items()):
                    if m != metric:
                        continue
                    acc = 0
                    for le, c in zip(self.BUCKETS, h):
                        acc += c
                        lines.append(f'{name}_bucket{{{label}="{e(value)}",le="{le}"}} {acc}')
                    lines.append(f'{name}_bucket{{{label}="{e(value)}",le="+Inf"}} {h[-1]}')
                    lines.append(f'{name}_sum{{{label}="{e(value)}"}} {h[-2]:.9f}')
                    lines.append(f'{name}_count{{{label}="{e(value)}"}} {h[-1]}')
            helps = {"modalrec_events_total": "Events received by /events, by result (accepted, duplicate).",
                     "modalrec_cold_starts_total": "Requests or events about users/items unknown to the bundle."}
            for name, help_ in helps.items():
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
                for (n, label, value), v in sorted(self.counters.items()):
                    if n == name:
                        lines.append(f'{name}{{{label}="{e(value)}"}} {v:g}')
        return "\n".join(lines) + "\n"


class RateLimiter:
    """Token buckets per client (its address): `rate` requests per second on average, bursts up to `burst`.

    `take(client)` spends one token and returns 0.0, or returns the seconds until a token is available
    (the request is refused, nothing spent). Buckets of clients idle long enough to be full again are
    forgotten once more than `max_clients` are held, so memory stays bounded under many addresses."""

    def __init__(self, rate: float, burst: float | None = None, max_clients: int = 10_000,
                 clock=time.monotonic):
        if not rate > 0:
            raise ValueError(f"rate limit must be > 0 requests/s, got {rate!r}")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst if burst is not None else 2 * rate))
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > self.max_clients:
                full = (self.burst - 1.0) / self.rate  # idle this long: refilled, forgetting it changes nothing
                self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < full or c == client}
        return wait


class _Limits:
    """Pure ASGI middleware: per-client rate limit (429), body size limit (413) and per-request metrics.

    The operations routes (/healthz, /metrics) are never rate limited: probes must see an overloaded
    service as alive."""

    UNLIMITED = ("/healthz", "/metrics")

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, limiter: RateLimiter | None = None):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.limiter = limiter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500}
        if self.limiter is not None and scope.get("path") not in self.UNLIMITED:
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.limiter.take(str(client))
            if wait > 0.0:
                status["code"] = 429
                try:
                    return await self._too_many(send, wait)
                finally:
                    self.metrics.request("rate limited", scope.get("method", ""), 429, time.perf_counter() - t0)

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
                return await self._too_large(send_wrapped)
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                body, more = bytearray(), True
                while more:  # read (and bound) the whole body before the app sees any of it
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > self.max_body:
                        return await self._too_large(send_wrapped)
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
        msg = (f"rate limit of {self.limiter.rate:g} requests/s per client (bursts of {self.limiter.burst:g}) "
               f"exceeded; retry after {retry} s")
        body = json.dumps({"detail": msg, "message": msg}).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(retry).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _too_large(self, send):
        body = (f'{{"detail":"request body larger than {self.max_body} bytes",'
                f'"message":"request body larger than {self.max_body} bytes"}}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------- API types

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Channel = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]


def _parse_time(v: Any) -> int:
    """Unix seconds (an integer, or a float: floored) or an ISO 8601 datetime (UTC when no zone)."""
    if isinstance(v, datetime):
        return to_seconds(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= MAX_TIME:
        return math.floor(v)
    if isinstance(v, str):
        try:
            return to_seconds(datetime.fromisoformat(v.strip()))
        except ValueError:
            pass
    raise ValueError("expected unix seconds (a non-negative number) or an ISO 8601 datetime such as "
                     f"2024-05-01T12:00:00Z, found {v!r}"[:200])


Time = Annotated[int, PlainValidator(_parse_time), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "format": "date-time"}],
    "description": "unix seconds or an ISO 8601 datetime"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Payload(_Strict):
    """Modality payloads of an event; all optional, stored with the event."""

    text: str | None = Field(None, max_length=20_000, description="conversation transcript, comment or query text")
    action: str | None = Field(None, max_length=256, description="web action tag, e.g. 'quote_started'")
    tags: list[Annotated[str, StringConstraints(max_length=128)]] | None = Field(None, max_length=64)
    vectors: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)],
                  Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1, max_length=4096)]] | None = Field(
        None, max_length=8,
        description="modality -> precomputed content vector (e.g. an image or audio embedding); a modality "
                    "the model reads must have its dimension")


class Event(_Strict):
    user: Id
    item: Id | None = Field(None, description="the item interacted with (none for e.g. a conversation)")
    channel: Channel = Field(..., description="kind of interaction: watch, comment, like, gift, click, purchase, "
                                              "web_action, conversation, impression, ... (free text, [A-Za-z0-9_.:-])")
    time: Time | None = Field(None, description="unix seconds or ISO 8601; default: when the service receives it")
    value: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        None, description="e.g. watch seconds, gift amount, 0/1 click label")
    event_id: Id | None = Field(None, description="idempotency key: a second event with the same user and id is ignored")
    payload: Payload | None = None


class EventsRequest(_Strict):
    events: list[Event] = Field(..., min_length=1, max_length=MAX_EVENTS)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"events": [
        {"user": "u42", "item": "i7", "channel": "watch", "time": 1717000000, "value": 35.0, "event_id": "e-1"},
        {"user": "u42", "item": "i7", "channel": "comment", "payload": {"text": "great goal!"}},
        {"user": "u42", "channel": "conversation", "payload": {"text": "I'd like a quote for my car"}},
    ]}]})


class EventsResponse(BaseModel):
    accepted: int = Field(..., description="stored (durable when this response is sent)")
    duplicates: int = Field(..., description="ignored: same user and event_id already stored")
    cold_user_events: int = Field(..., description="events of users the bundle does not know (cold starts)")
    cold_item_events: int = Field(..., description="events of items the bundle does not know (cold starts)")


class Context(_Strict):
    time: Time | None = Field(None, description="score as of this time: only events strictly before it are read "
                                                "(default: now, every stored event)")
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_ITEMS, description="items never to recommend")
    features: dict[str, str | int] = Field(
        default_factory=dict, max_length=64, description="per-sample context features the model reads "
        "(task.context_features, e.g. {\"views_level\": 3}) for every candidate; a feature left out, or a value "
        "not seen in training, is read as unknown")
    item_features: dict[Id, dict[str, str | int]] = Field(
        default_factory=dict, max_length=MAX_ITEMS, description="per-candidate context features (item id -> "
        "{feature: value}), over `features`, e.g. an item's likes_level at this impression")


class RecommendRequest(_Strict):
    user: Id
    k: int = Field(10, ge=1, le=500)
    context: Context = Field(default_factory=Context)
    n_candidates: int = Field(200, ge=1, le=MAX_ITEMS, description="retrieved candidates the ranker scores")
    candidates: list[Id] | None = Field(None, max_length=MAX_ITEMS, description="rank these instead of retrieving")
    exclude_seen: bool = Field(False, description="leave out items in the user's recent history")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"user": "u42", "k": 5}, {"user": "u42", "k": 3, "context": {"exclude": ["i7"]}, "exclude_seen": True}]})


class ScoredItem(BaseModel):
    item: str
    score: float = Field(..., description="the model's logit (ctr) or score (topk)")
    probability: float | None = Field(None, description="ctr: sigmoid(score), the predicted probability")
    known: bool = Field(..., description="False: an item the bundle does not know, scored as a cold start")


class RecommendResponse(BaseModel):
    user: str
    cold_start: bool = Field(..., description="the user is unknown to the bundle (may still have online events)")
    history_length: int = Field(..., description="events in the sequence the ranker read")
    items: list[ScoredItem]
    retrieved: dict[str, int] = Field(..., description="candidates by source: ann, popular, given")
    model: str


class HistoryEvent(_Strict):
    item: Id
    time: Time


class ScoreRequest(_Strict):
    user: Id
    items: list[Id] = Field(..., min_length=1, max_length=MAX_ITEMS)
    context: Context = Field(default_factory=Context)
    history: list[HistoryEvent] | None = Field(
        None, max_length=10_000,
        description="score with this behaviour sequence instead of the stored one (replay, what-if, parity checks)")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"user": "u42", "items": ["i7", "i9", "new-item"]},
        {"user": "u42", "items": ["i7"], "context": {"time": 1717000000},
         "history": [{"item": "i3", "time": 1716990000}, {"item": "i9", "time": 1716995000}]}]})


class ScoreResponse(BaseModel):
    user: str
    cold_start: bool
    history_length: int
    scores: list[ScoredItem]
    model: str


class UserState(BaseModel):
    user: str
    known: bool
    events: list[dict[str, Any]]
    counters: dict[str, dict[str, float]]


# ------------------------------------------------------------------------------------------ the app


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
               rate_burst: float | None = None):
    """The FastAPI app serving `bundle_dir` with user state at `state_url` (default: SQLite beside the
    bundle). `api_key` (default: $MODALREC_API_KEY) guards the write endpoints; without one they answer 403.
    `rate_limit` (requests/s per client address, bursts of `rate_burst`, default twice the rate) answers 429
    with Retry-After above it; None: no limit."""
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

    if threads:
        torch.set_num_threads(threads)
    bundle = load_bundle(Path(bundle_dir))
    try:
        import faiss

        faiss.omp_set_num_threads(max(1, threads or 1))
    except ImportError:  # pragma: no cover
        pass
    state = open_state(state_url or default_state_url(Path(bundle_dir)))
    scorer = Scorer(bundle, state)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    metrics = Metrics()
    metrics.info = {"model": bundle.model_name, "task": bundle.task, "seed": str(bundle.manifest.get("seed")),
                    "state": state.kind, "items": str(len(bundle.item_vocab) - 1)}
    is_ctr = bundle.task == "ctr"
    dense_dims = dict(bundle.schema.item_dense)

    @asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = FastAPI(
        title="modalrec service",
        version=str(bundle.manifest.get("modalrec_version", "")),
        description=(f"Serves bundle `{Path(bundle_dir).name}` (model `{bundle.model_name}`, task `{bundle.task}`). "
                     "Write endpoints need the API key (header `X-API-Key` or `Authorization: Bearer`). "
                     f"Request bodies are limited to {max_body_bytes} bytes (413 above). Unknown users and items "
                     "are cold starts, never errors. Malformed payloads get 422 with `message` naming the field."),
        lifespan=lifespan,
    )
    app.state.scorer = scorer
    app.state.metrics = metrics
    limiter = RateLimiter(rate_limit, rate_burst) if rate_limit else None
    app.add_middleware(_Limits, metrics=metrics, max_body_bytes=max_body_bytes, limiter=limiter)

    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")
    bearer = HTTPBearer(auto_error=False, description="the service's API key as a bearer token")

    def require_key(x_key: str | None = Depends(header_key),
                    auth: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = x_key or (auth.credentials if auth is not None else None)
        if key is None:
            raise HTTPException(403, f"writes are disabled: the service was started without an API key (${API_KEY_ENV})")
        if not given:
            raise HTTPException(401, "missing API key: send header X-API-Key (or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(403, "invalid API key")

    def unprocessable(errors: list[dict]) -> JSONResponse:
        detail = [{"field": _field(e["loc"]), "loc": list(e["loc"]), "msg": e["msg"], "type": e.get("type", "value_error")}
                  for e in errors]
        message = "; ".join(f"{d['field']}: {d['msg']}" for d in detail[:10])
        if len(detail) > 10:
            message += f"; ... and {len(detail) - 10} more"
        return JSONResponse({"detail": detail, "message": message}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return unprocessable(list(exc.errors()))

    class _Invalid(Exception):
        def __init__(self, errors):
            self.errors = errors

    @app.exception_handler(_Invalid)
    async def _invalid2(request: Request, exc: _Invalid):
        return unprocessable(exc.errors)

    def stage(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        metrics.observe("stage", name, t1 - t0)
        return t1

    def scored(items: list[str], idx: np.ndarray, logits: np.ndarray) -> list[ScoredItem]:
        out = []
        for item, i, s in zip(items, idx, logits):
            p = 1.0 / (1.0 + math.exp(-s)) if is_ctr and math.isfinite(s) else None
            out.append(ScoredItem(item=item, score=float(s), probability=p, known=bool(i > 0)))
        return out

    @app.get("/healthz", tags=["ops"], summary="Liveness and readiness: the bundle is loaded and the state store answers")
    def healthz():
        try:
            ok = state.ping()
        except Exception as e:  # noqa: BLE001 - any store failure is reported by the probe, not raised
            return JSONResponse({"status": "error", "state": state.kind, "error": str(e)}, status_code=503)
        return {"status": "ok" if ok else "error", "model": bundle.model_name, "task": bundle.task,
                "state": state.kind, "users": len(bundle.user_vocab) - 1, "items": len(bundle.item_vocab) - 1}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse,
             summary="Prometheus metrics: request counts, latency histograms, events, cold starts")
    def prom():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/events", response_model=EventsResponse, tags=["events"], dependencies=[Depends(require_key)],
              summary="Ingest a batch of interactions; acknowledged only once durably stored")
    def post_events(req: EventsRequest) -> EventsResponse:
        errors = []
        for i, ev in enumerate(req.events):
            for name, vec in ((ev.payload.vectors or {}) if ev.payload else {}).items():
                if name in dense_dims and len(vec) != dense_dims[name]:
                    errors.append({"loc": ("body", "events", i, "payload", "vectors", name),
                                   "msg": f"expected {dense_dims[name]} values for modality '{name}', found {len(vec)}",
                                   "type": "vector_dimension"})
        if errors:
            raise _Invalid(errors)
        now = int(time.time())
        stored = [StoredEvent(user=ev.user, item=ev.item, channel=ev.channel, time=to_seconds(ev.time, now),
                              value=ev.value, event_id=ev.event_id,
                              payload=None if ev.payload is None else ev.payload.model_dump(exclude_none=True))
                  for ev in req.events]
        t0 = time.perf_counter()
        res = state.append_events(stored)
        stage("write", t0)
        cold_user_events = int((bundle.user_vocab.lookup([e.user for e in stored]) == 0).sum())
        with_item = [e.item for e in stored if e.item is not None]
        cold_item_events = int((bundle.item_vocab.lookup(with_item) == 0).sum()) if with_item else 0
        metrics.inc("modalrec_events_total", "result", "accepted", res.accepted)
        metrics.inc("modalrec_events_total", "result", "duplicate", res.duplicates)
        if cold_user_events:
            metrics.inc("modalrec_cold_starts_total", "kind", "event_user", cold_user_events)
        if cold_item_events:
            metrics.inc("modalrec_cold_starts_total", "kind", "event_item", cold_item_events)
        return EventsResponse(accepted=res.accepted, duplicates=res.duplicates, cold_user_events=cold_user_events,
                              cold_item_events=cold_item_events)

    def sequence(user: str, uidx: int, ctx: Context, explicit: list[HistoryEvent] | None):
        before = to_seconds(ctx.time)
        if explicit is not None:
            items, times = scorer.explicit_history([(h.item, to_seconds(h.time)) for h in explicit], before)
        else:
            items, times = scorer.history(user, uidx, before)
        # without a given time the request happens now, after every event it reads
        t = before if before is not None else max(int(time.time()), int(times.max()) if len(times) else 0)
        return items, times, t, before

    @app.post("/recommend", response_model=RecommendResponse, tags=["recommend"],
              summary="Top-K items for a user: ANN retrieval over item vectors, then the ranker")
    def recommend(req: RecommendRequest) -> RecommendResponse:
        if req.context.features or req.context.item_features:
            errors = scorer.check_context(req.context.features, req.context.item_features)
            if errors:
                raise _Invalid(errors)
        t0 = time.perf_counter()
        uidx = scorer.user_index(req.user)
        items, times, t, before = sequence(req.user, uidx, req.context, None)
        exclude = set(scorer.item_index(req.context.exclude).tolist()) if req.context.exclude else set()
        t0 = stage("state", t0)
        if req.candidates is not None:
            cand = scorer.item_index(req.candidates)
            names = list(req.candidates)
            keep = [j for j, c in enumerate(cand) if c == 0 or c not in exclude]
            cand, names = cand[keep], [names[j] for j in keep]
            retrieved = {"ann": 0, "popular": 0, "given": len(cand)}
        else:
            query = scorer.retrieval_query(req.user, uidx, before)
            if req.exclude_seen:
                exclude |= set(query.tolist()) | set(items.tolist())
            cand, n_ann = scorer.retrieve(query, req.n_candidates, exclude)
            names = [bundle.item_vocab.id_of(int(i)) for i in cand]
            retrieved = {"ann": n_ann, "popular": len(cand) - n_ann, "given": 0}
        t0 = stage("retrieval", t0)
        if len(cand) == 0:
            return RecommendResponse(user=req.user, cold_start=uidx == 0, history_length=len(items), items=[],
                                     retrieved=retrieved, model=bundle.model_name)
        ctx = scorer.context_codes(req.context.features, req.context.item_features, names)
        logits = scorer.score(uidx, items, times, t, cand, user=req.user, before=before, context=ctx)
        top = np.argsort(-logits, kind="stable")[: req.k]
        stage("rank", t0)
        if uidx == 0:
            metrics.inc("modalrec_cold_starts_total", "kind", "recommend_user")
        return RecommendResponse(user=req.user, cold_start=uidx == 0, history_length=len(items),
                                 items=scored([names[j] for j in top], cand[top], logits[top]),
                                 retrieved=retrieved, model=bundle.model_name)

    @app.post("/score", response_model=ScoreResponse, tags=["recommend"],
              summary="Scores (ctr: click probabilities) of given items for a user")
    def score(req: ScoreRequest) -> ScoreResponse:
        if req.context.features or req.context.item_features:
            errors = scorer.check_context(req.context.features, req.context.item_features)
            if errors:
                raise _Invalid(errors)
        t0 = time.perf_counter()
        uidx = scorer.user_index(req.user)
        items, times, t, before = sequence(req.user, uidx, req.context, req.history)
        t0 = stage("state", t0)
        cand = scorer.item_index(req.items)
        ctx = scorer.context_codes(req.context.features, req.context.item_features, list(req.items))
        logits = scorer.score(uidx, items, times, t, cand, user=req.user, before=before, context=ctx)
        stage("rank", t0)
        if uidx == 0:
            metrics.inc("modalrec_cold_starts_total", "kind", "score_user")
        n_cold = int((cand == 0).sum())
        if n_cold:
            metrics.inc("modalrec_cold_starts_total", "kind", "score_item", n_cold)
        return ScoreResponse(user=req.user, cold_start=uidx == 0, history_length=len(items),
                             scores=scored(list(req.items), cand, logits), model=bundle.model_name)

    @app.get("/users/{user:path}", response_model=UserState, tags=["events"], dependencies=[Depends(require_key)],
             summary="A user's stored online events (oldest first) and counters")
    def user_state(user: str, n: int = Query(100, ge=1, le=10_000)) -> UserState:
        return UserState(user=user, known=scorer.user_index(user) > 0,
                         events=[e.to_json() for e in state.recent(user, n)], counters=state.counters(user))

    return app


def serve(bundle_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, state_url: str | None = None,
          api_key: str | None = None, threads: int | None = 1, log_level: str = "info",
          rate_limit: float | None = None, rate_burst: float | None = None) -> None:
    """Runs the service with uvicorn (one process; request handlers run in its thread pool)."""
    import uvicorn

    app = create_app(bundle_dir, state_url, api_key, threads=threads, rate_limit=rate_limit, rate_burst=rate_burst)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
