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
items of every channel. Events of items unknown to the bundle (and not registered through POST /items)
are cold: stored and counted, left out of the model's sequence (the model has nothing learnt about them).

Items that appear after export (a live stream's new 5-minute segment, a new product) are registered
through `POST /items` with their raw side features (mapped through the bundle's feature vocabularies,
vocab_item_features.json) and precomputed content (dense vectors, token tables). The Scorer appends a
row to its item tables and an id to its vocabulary, so /score, /recommend and the histories /events
builds read the item's features from then on. The model's id tables have only the bundle's rows: a
registered item reaches the model with id index 0 (unknown, as offline for an item the model never saw)
and its own side features and content. Registered items are kept in the state store and replayed at
startup; retrieval gets their vectors from the model's ItemEncoder (as the bundle's index was built) and
their group (first categorical feature: a new segment's streamer).

Registered items are removed by `DELETE /items/{id}` (or `POST /items/delete` for a batch) or when their TTL
(`ttl_s` of the item, else the service's --item-ttl) passes: a tombstone in the state store first (the
response waits for it; other processes drop the item at their next sync, a restart does not replay it), then
the id is unpublished here. A deleted item is unknown again, a cold start as an id never registered, and never
retrieved; its table row stays (indices never move) as a tombstone, taken back if the id is registered again,
and taken by a new item once it is a minute old (`ItemIds.REUSE_AFTER_S`), so a service whose items come and go
(live segments with a TTL) holds rows for the items of about a minute plus their TTL, not for every item it ever
saw (/healthz reports `item_rows` and `tombstones`). The bundle's own items cannot be deleted (409): they are the
exported model's.

Writes (`POST /events`, `POST /items`, deleting items, and reading a user's stored state) need the API key: header
`X-API-Key: KEY` or `Authorization: Bearer KEY`; missing key -> 401, wrong key -> 403.
"""

from __future__ import annotations

import bisect
import copy
import gc
import heapq
import hmac
import json
import logging
import math
import os
import threading
import time
from collections import deque
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)

from ..data.batch import Collator, History
from ..nn.item_encoder import ItemEncoder
from ..nn.layers import versions
from ..tasks.base import _words, channel_codes
from .bundle import SIDE_GROUPS, Bundle, _item_encoder, load_bundle, normalise
from .state import StateStore, StoredEvent, open_state

log = logging.getLogger("modalrec.serve")

API_KEY_ENV = "MODALREC_API_KEY"
MAX_BODY_BYTES = 1 << 20
MAX_EVENTS = 1000
MAX_ITEMS = 5000
MAX_NEW_ITEMS = 1000  # items per POST /items
MAX_TIME = 1 << 40
# arithmetic of the serving fast path's (candidate, history position) products: fp32 (the offline model's, to
# float rounding) or bf16 (2-3x the matrix-product rate on CPUs with AVX512-BF16 or AMX; lossy, see
# SharedHistoryAttention)
Precision = Literal["fp32", "bf16"]


class Sequence(NamedTuple):
    """One user's behaviour sequence as the ranker reads it, chronological: item indices, times (seconds) and
    action tag codes (`Schema.history_tags`; zeros for a model whose history is untagged)."""

    items: np.ndarray
    times: np.ndarray
    tags: np.ndarray
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


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
    per (candidate, position) pair, and the product term becomes matrix products over blocks of positions sized to
    stay in cache, so a request does about a quarter of the work at about twice the arithmetic rate. The rest of the MLP and the pooling are the unit's own layers.
    Rows that are not bitwise identical (or an MLP of another shape) take the unit's own forward.
    Same function up to float rounding; the parity test holds the service to 1e-5 of offline scores.

    `precision="bf16"` runs those products and the MLP after them in bfloat16 (8-bit mantissa) and keeps the
    scores and everything after them in fp32: on a CPU with native bf16 the unit takes about half the time, and
    since the attention scores are pooled and pass through the rest of the model, final logits move by about
    1e-4 (measured by `benchmarks/serve_load.py --precision bf16`, which records the differences)."""

    def __init__(self, att: torch.nn.Module, block: int | None = None, precision: Precision = "fp32"):
        super().__init__()
        self.att = att
        first = att.mlp.net[0] if hasattr(att, "mlp") and hasattr(att.mlp, "net") and len(att.mlp.net) else None
        self.ok = isinstance(first, torch.nn.Linear) and first.in_features % 4 == 0
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        # bf16: the matrix products run at 2-3x the rate, and fewer, larger blocks measured faster (the whole
        # 200 x 100 request at once: 4.4-4.9 ms against 5.2-6.3 ms in blocks of 1 << 19)
        self.block = block or (1 << 18 if precision == "fp32" else 1 << 21)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # bf16: the layers after the first run on a bf16 copy of their weights (the unit's own stay fp32)
        self.rest_lowp = copy.deepcopy(att.mlp.net[1:]).to(torch.bfloat16) if self.ok and precision == "bf16" else None
        self._first: tuple | None = None  # (version key, the first layer's combined weights), see `first_layer`

    def first_layer(self, lin: torch.nn.Linear, d: int) -> tuple[torch.Tensor, ...]:
        """(Wq + Wd, (Wk - Wd)^T, Wm, b) of the unit's first layer, the first and third in the fast path's dtype:
        computed once, again only after the weights change (in place or replaced)."""
        w, b = lin.weight, lin.bias
        key = versions(w, b)
        if self._first is None or self._first[0] != key:
            wq, wk, wd, wm = w.detach().split(d, dim=1)
            self._first = (key, ((wq + wd).to(self.dtype), (wk - wd).T.contiguous(), wm.to(self.dtype).contiguous(),
                                 b.detach()))
        return self._first[1]

    def forward(self, query, keys, mask, values=None):
        att = self.att
        if (not self.ok or torch.is_grad_enabled() or query.dim() != 2 or keys.dim() != 3 or len(query) < 2
                or not self._shared(mask) or not self._shared(keys)):
            return att(query, keys, mask, values)
        lin = att.mlp.net[0]
        d = query.shape[-1]
        if lin.in_features != 4 * d:
            return att(query, keys, mask, values)
        # the layers after the first: the unit's own, or their bf16 copy (the pooling below stays fp32)
        rest = att.mlp.net[1:] if self.rest_lowp is None else self.rest_lowp
        w_qd, w_kd, w_m, bias = self.first_layer(lin, d)
        m = mask[0]
        kr = keys[0][m]  # (n, d) real positions
        c, n, h = len(query), len(kr), lin.out_features
        # every (candidate, position) pair by matrix products: pre[c, i] = q_c (Wq + Wd + Wm diag(k_i)) + (Wk - Wd) k_i + b,
        # i.e. q (C, d) @ [(k_i (x) Wm) + (Wq + Wd)]^T (d, n h) with the per-position term as the addmm bias row
        hk = torch.addmm(bias, kr, w_kd).to(self.dtype)  # (n, h)
        kl = kr.to(self.dtype)
        mixed = torch.addcmul(w_qd.unsqueeze(0), kl.unsqueeze(1), w_m.unsqueeze(0))  # (n, h, d)
        # in blocks of P positions whose (C, P h) activations (and the block's (P h, d) weights) stay in the
        # core's L2 cache: the MLP then runs compute-bound instead of streaming C n h floats through memory
        # once per layer (2-2.5x faster for 200 candidates x 100 positions)
        q = query.to(self.dtype)
        real = torch.empty(c, n, dtype=query.dtype, device=query.device)
        step = max(1, self.block // max(1, c * h))
        for p in range(0, n, step):
            pre = torch.addmm(hk[p:p + step].reshape(1, -1), q, mixed[p:p + step].reshape(-1, d).T)
            real[:, p:p + step] = rest(pre.view(-1, h)).view(c, -1)
        scores = att._dense(real.reshape(-1), mask)  # real is (C, n) row-major: mask's real positions in order
        if values is None:
            v0 = torch.where(m.unsqueeze(-1), keys[0], torch.zeros((), dtype=keys.dtype, device=keys.device))
            return scores @ v0
        v = torch.where(mask.unsqueeze(-1), values, torch.zeros((), dtype=values.dtype, device=values.device))
        return torch.einsum("bl,bld->bd", scores, v)

    @staticmethod
    def _shared(t: torch.Tensor) -> bool:
        """Every row equal to row 0: by construction (the collate's stride-0 shared history) or by value."""
        return t.stride(0) == 0 or torch.equal(t, t[:1].expand_as(t))


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (oneDNN with AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without oneDNN
        return False


def with_serving_fast_paths(model: torch.nn.Module, precision: Precision = "fp32") -> int:
    """Wraps every `TargetAttention` of `model` in `SharedHistoryAttention`; returns how many."""
    from ..nn.sequence import TargetAttention

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is TargetAttention:
                setattr(parent, name, SharedHistoryAttention(child, precision=precision))
                n += 1
    return n


class AppendableRows:
    """An item table (one row per item index) that grows: the bundle's array, never copied, then rows of
    registered items in a second buffer whose capacity doubles (amortised O(1) per appended row).

    `rows[idx]` for an index array of any shape returns a new array as numpy fancy indexing does; indices
    within the bundle's rows read the bundle's array directly."""

    def __init__(self, base: np.ndarray):
        self.base = base
        self.n_base = len(base)
        self.extra = np.zeros((0, *base.shape[1:]), dtype=base.dtype)
        self.n_extra = 0

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_base + self.n_extra, *self.base.shape[1:])

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return self.n_base + self.n_extra

    def reserve(self, n_extra: int) -> None:
        """Room for `n_extra` appended rows (reallocates, doubling, only when the buffer is full)."""
        if n_extra > len(self.extra):
            grown = np.zeros((max(n_extra, 2 * len(self.extra), 16), *self.base.shape[1:]), dtype=self.dtype)
            grown[: self.n_extra] = self.extra[: self.n_extra]
            self.extra = grown
        self.n_extra = max(self.n_extra, n_extra)

    def __setitem__(self, index: int, value) -> None:
        if index < self.n_base:
            raise IndexError(f"row {index} belongs to the bundle's table, which stays as trained")
        self.extra[index - self.n_base] = value

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        if idx.size == 0 or int(idx.max()) < self.n_base:
            return self.base[idx]
        out = np.empty((*idx.shape, *self.base.shape[1:]), dtype=self.dtype)
        old = idx < self.n_base
        out[old] = self.base[idx[old]]
        out[~old] = self.extra[idx[~old] - self.n_base]
        return out


class ItemIds:
    """The service's item vocabulary: the bundle's ids (indices 1 .. n-1, as trained), then the ids registered
    through POST /items (n, n + 1, ...). Index 0 stays unknown.

    A deleted registered id (`remove`) is no longer looked up (index 0, as an id never registered) and its row
    becomes a tombstone. Registering the same id again takes that row back (`add`). Once a tombstone is
    `reuse_after_s` seconds old (of `clock`), a new id may take its row instead of appending one, so a service
    whose items come and go (live segments with a TTL) keeps as many rows as items live within that time, not
    one per item it ever saw. Rows never move, and the delay keeps a request that looked an item up just before
    its deletion (requests take milliseconds) from reading another item's row under that index."""

    REUSE_AFTER_S = 60.0

    def __init__(self, base, clock=time.monotonic, reuse_after_s: float = REUSE_AFTER_S):
        self.base = base
        self.n_base = len(base)
        self.extra: dict[str, int] = {}  # live registered ids
        self.extra_ids: list[str] = []  # the id of every appended row (a tombstone's: the id deleted last)
        self.removed: dict[str, int] = {}  # deleted ids -> their tombstone index
        self.clock = clock
        self.reuse_after_s = reuse_after_s
        self._free: deque[tuple[float, int]] = deque()  # (when deleted, tombstone index), oldest first
        self._freed_at: dict[int, float] = {}  # tombstone index -> when deleted (stale _free entries differ)
        self.reused = 0  # rows taken over by another id

    def __len__(self) -> int:
        """Indices in use (bundle rows + appended rows, tombstones included): the item tables' length."""
        return self.n_base + len(self.extra_ids)

    @property
    def tombstones(self) -> int:
        return len(self.removed)

    def lookup(self, values) -> np.ndarray:
        idx = self.base.lookup(values)
        if self.extra:
            for j in np.flatnonzero(idx == 0):
                idx[j] = self.extra.get(str(values[j]), 0)
        return idx

    def id_of(self, index: int) -> str | None:
        """The id of a row, a tombstone's too: a request that retrieved an item just before its deletion (the
        retrieval overlapped the DELETE) still names it, and lookups are what deletion changes."""
        if index < self.n_base:
            return self.base.id_of(index)
        j = index - self.n_base
        return self.extra_ids[j] if j < len(self.extra_ids) else None

    def _reusable(self) -> int | None:
        """The oldest tombstone old enough to be taken by another id, or None."""
        while self._free:
            t, index = self._free[0]
            if self._freed_at.get(index) != t:  # taken back by its id, or deleted again later: a stale entry
                self._free.popleft()
                continue
            return index if t + self.reuse_after_s <= self.clock() else None
        return None

    def index_for(self, item: str) -> int:
        """The index `add(item)` will give: its live or tombstone index, else a reusable tombstone's, else the
        next new one."""
        index = self.extra.get(item, self.removed.get(item))
        if index is None:
            index = self._reusable()
        return self.n_base + len(self.extra_ids) if index is None else index

    def add(self, item: str) -> int:
        """A new id's index (its tombstone's when it was deleted, else a reusable tombstone's, else a new one);
        published (visible to `lookup`) only after its rows are written."""
        index = self.removed.pop(item, None)
        if index is not None:
            self._freed_at.pop(index, None)
        else:
            index = self._reusable()
            if index is not None:  # another id's old tombstone: that id, registered again, gets another row
                self._free.popleft()
                del self._freed_at[index]
                j = index - self.n_base
                del self.removed[self.extra_ids[j]]
                self.extra_ids[j] = item
                self.reused += 1
            else:
                index = self.n_base + len(self.extra_ids)
                self.extra_ids.append(item)
        self.extra[item] = index
        return index

    def remove(self, item: str) -> int | None:
        """Unpublishes a registered id (lookups find 0 from now on); returns its index, now a tombstone, or
        None when the id is not registered."""
        index = self.extra.pop(item, None)
        if index is not None:
            self.removed[item] = index
            now = self.clock()
            self._freed_at[index] = now
            self._free.append((now, index))
        return index


class ReadWriteLock:
    """Many readers (requests scoring with the item tables) or one writer (POST /items appending or replacing
    rows); a waiting writer holds back new readers, so registrations are not starved under load."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Scorer:
    """The model side of the service, without HTTP: histories, retrieval and scores.

    Items registered after export (`register`) get indices n_items, n_items + 1, ... in the Scorer's
    vocabulary (`ids`) and rows appended to its item tables (`side`, retrieval vectors); every batch
    reaches the model with those indices replaced by 0 (`model_ids`), the model's id tables having only
    the bundle's rows.

    Items registered by other processes sharing the state store arrive through `sync_items` (called at the
    start of requests): at most one store query per `item_sync_s` seconds (0: every call; None: never, items
    of other processes then arrive at a restart).

    Registered items leave by `delete` (DELETE /items) or when their TTL passes (`ttl_s` of the item, else
    `item_ttl_s`; the expiry sweep `expire_items` runs at the start of requests, at most once a second). Both
    write a tombstone to the store first (other processes drop the item at their next sync; a restart does not
    replay it), then unpublish the id here: it is looked up as 0, a cold start like an id never registered, and
    retrieval skips its row (`alive`). The row stays (indices never move); registering the id again takes it
    back, and after `ItemIds.reuse_after_s` a new id may take it (`ItemIds`)."""

    EXPIRY_SWEEP_S = 1.0  # at most one expiry sweep per this many seconds (of `clock`)

    def __init__(self, bundle: Bundle, state: StateStore, retrieval_history: int = 20, fast_paths: bool = True,
                 item_sync_s: float | None = 1.0, item_ttl_s: float | None = None, precision: Precision = "fp32"):
        self.bundle = bundle
        self.state = state
        self.retrieval_history = retrieval_history
        self.channels = None if bundle.history_channels is None else set(bundle.history_channels)
        # a tagged history (task.history_channel_tags): each event's channel -> its action tag code
        self.tags: dict[str, int] = dict(bundle.schema.history_tags)
        self.collator_template = {"item_side": bundle.item_side, "max_history": bundle.max_history,
                                  "with_time": bundle.with_time, "token_scope": bundle.token_scope}
        self.graph = bundle.graph
        self.n_items = bundle.schema.n_items  # rows of the model's item id tables
        self.model = bundle.model
        self.precision = precision
        if precision == "bf16" and not native_bf16():
            log.warning("precision bf16: this CPU has no native bf16 matrix products (AVX512-BF16 or AMX); "
                        "they are emulated and slower than fp32")
        self.fast_paths = with_serving_fast_paths(bundle.model, precision) if fast_paths else 0
        if fast_paths:  # the bundle's items never change: each is encoded once, here, not in every request
            for m in bundle.model.modules():
                if isinstance(m, ItemEncoder):
                    m.cache_items(bundle.item_side, self.n_items)
        # MMBee memoises MFQ's vector per target item index (batch.item), its only read of batch.item when the
        # batch has `uniq`: batch.item then keeps the registered items' own indices (distinct memo keys), and a
        # replaced item's memo is dropped (`forget`); every other model gets 0 there too
        self.memo = bool(fast_paths and hasattr(bundle.model, "cache_content"))
        if self.memo:  # MMBee: fuse each segment's content once; its token tables are read only for that
            bundle.model.cache_content(source=lambda items: self.side.gather(items, tokens=True))
            self.collator_template["target_tokens"] = False
        # group retrieval: items sharing the first item categorical feature (the streamer of a live segment, a
        # movie's category; SIM's hard-search key) with the user's recent items, most popular first
        cats = bundle.item_side.categorical
        self.group_feature = next(iter(cats), None)
        self.group = cats[self.group_feature] if cats else None
        self.streamer_code = None if self.graph is None else self.graph.streamer_code
        self.vectors = bundle.item_vectors  # (n, d) retrieval vectors, rows appended for registered items
        self.has_vector: AppendableRows | None = None  # registered items with a retrieval vector
        source = str((bundle.manifest.get("retrieval") or {}).get("source") or "")
        self.vector_source = source
        self.encoder = _item_encoder(bundle.model) if source == "item_encoder" else None
        # registered items (POST /items)
        self.ids = ItemIds(bundle.item_vocab, clock=lambda: self.clock())  # rows of old tombstones are reused
        self.side = bundle.item_side  # the Collator's table: its arrays become AppendableRows at the first item
        self._growable = False
        self._rw = ReadWriteLock()
        self._registering = threading.Lock()  # one registration or sync at a time: store order = memory order
        # items of other processes: the bodies applied here (id -> stored JSON, so an item seen again with the
        # same body, our own registrations included, is not applied again) and the store's item sequence
        # number read last; both changed under _registering
        if item_sync_s is not None and not (item_sync_s >= 0 and math.isfinite(item_sync_s)):
            raise ValueError(f"item_sync_s must be a number of seconds >= 0, or None (no syncing), not {item_sync_s!r}")
        self._items_since = getattr(state, "items_since", None)
        self.item_sync_s = item_sync_s if self._items_since is not None else None
        if item_sync_s is not None and self._items_since is None:
            log.warning("the %s state store has no items_since: items registered by other processes reach this "
                        "one only at a restart", getattr(state, "kind", type(state).__name__))
        self.clock = time.monotonic  # replaceable (tests)
        self._next_sync = -math.inf
        self._applied: dict[str, str] = {}
        self._item_seq = 0
        self.items_synced = 0  # items applied from other processes (new + replaced)
        self.deletions_synced = 0  # items deleted (or expired) by other processes, dropped here
        # deletion and expiry
        if item_ttl_s is not None and not (item_ttl_s > 0 and math.isfinite(item_ttl_s)):
            raise ValueError(f"item_ttl_s must be a number of seconds > 0, or None (items never expire), "
                             f"not {item_ttl_s!r}")
        self.item_ttl_s = item_ttl_s
        self._delete_items = getattr(state, "delete_items", None)
        # expiry times are unix seconds, stored in the item's document: every process sharing the store (and a
        # restart) agrees on them, so they are read on the wall clock, not on `clock` (replaceable: tests)
        self.wall_clock = time.time
        self._next_sweep = -math.inf
        self._expiry: dict[str, float] = {}  # live registered id -> when it expires (unix seconds)
        self._expiry_heap: list[tuple[float, str]] = []  # (expiry, id); entries no longer in _expiry are stale
        self.alive: AppendableRows | None = None  # False: a deleted item's row (a tombstone), never retrieved
        self.born: AppendableRows | None = None  # when each registered row was written last (a counter)
        self._born = 1
        self.replayed = self.replay()

    # ids
    def user_index(self, user: str) -> int:
        return int(self.bundle.user_vocab.lookup([user])[0])

    def item_index(self, items: list[str]) -> np.ndarray:
        return self.ids.lookup(items)

    @property
    def n_registered(self) -> int:
        """Registered items known now (deleted and expired ones not counted)."""
        return len(self.ids.extra)

    def model_ids(self, batch) -> None:
        """Item indices of registered items (>= n_items, beyond the model's id tables) become 0, unknown, in
        the batch's id tensors; their side features and content, gathered by index, stay theirs."""
        n = self.n_items
        if len(self.ids) <= n:
            return

        def unknown(t):
            return t.masked_fill(t >= n, 0) if t is not None and bool((t >= n).any()) else t

        h = batch.hist
        if h.dim() == 2 and h.shape[0] > 1 and h.stride(0) == 0:  # the collate's shared history: keep it shared
            batch.hist = unknown(h[:1]).expand_as(h)
        else:
            batch.hist = unknown(h)
        batch.uniq = unknown(batch.uniq)
        batch.candidates = unknown(batch.candidates)
        if not self.memo:
            batch.item = unknown(batch.item)

    # items registered after export
    def prepare(self, item: NewItem, where: tuple) -> tuple[dict | None, list[dict]]:
        """The item table rows of a request item (group -> name -> value, every feature of the bundle's
        side table; what the request leaves out is unknown / absent), or validation errors (422) located
        at `where` (e.g. ("items", 3)) for unknown names, wrong dimensions and too many tokens."""
        side, fv = self.side, self.bundle.item_features
        errors: list[dict] = []

        def bad(loc: tuple, msg: str, kind: str = "value_error") -> None:
            errors.append({"loc": ("body", *where, *loc), "msg": msg, "type": kind})

        row: dict[str, dict] = {g: {} for g in SIDE_GROUPS}
        for name in side.categorical:
            row["categorical"][name] = 0
        for name, arr in side.multi.items():
            row["multi"][name] = np.zeros(arr.shape[1], dtype=arr.dtype)
        for name, arr in side.dense.items():
            row["dense"][name] = np.zeros(arr.shape[1], dtype=arr.dtype)
            row["presence"][name] = False
        for name, arr in side.tokens.items():
            row["tokens"][name] = np.zeros(arr.shape[1:], dtype=arr.dtype)
            row["token_mask"][name] = np.zeros(arr.shape[1], dtype=bool)
        no_vocab = ("the bundle has no raw value map for this feature (vocab_item_features.json; bundles exported "
                    "before it have none: export the run again)")
        for name, value in item.categorical.items():
            if name not in side.categorical:
                bad(("categorical", name), f"unknown item categorical feature; the model reads "
                    f"{sorted(side.categorical) or 'none'}")
            elif fv is None or (name not in fv.categorical and name not in fv.numeric):
                bad(("categorical", name), no_vocab)
            else:
                row["categorical"][name] = fv.categorical_code(name, value)
        texts = {} if fv is None else fv.text
        words_of = {f: m for m, f in texts.items()}
        for name, values in item.multi.items():
            if name not in side.multi:
                bad(("multi", name), f"unknown item multi-valued feature; the model reads {sorted(side.multi) or 'none'}")
            elif fv is None or name not in fv.multi:
                bad(("multi", name), no_vocab)
            elif words_of.get(name) in item.text:
                bad(("multi", name), f"given twice: as words here and as text '{words_of[name]}'")
            else:
                row["multi"][name] = fv.multi_codes(name, values, len(row["multi"][name]), dedupe=name in words_of)
        for modality, text in item.text.items():
            if modality not in texts:
                bad(("text", modality), f"unknown text modality; the model reads the words of {sorted(texts) or 'none'}"
                    + ("" if fv is not None else f" ({no_vocab})"))
                continue
            name = texts[modality]
            row["multi"][name] = fv.multi_codes(name, _words(text), len(row["multi"][name]), dedupe=True)
        for name, vec in item.vectors.items():
            if name not in side.dense:
                bad(("vectors", name), f"unknown dense content modality; the model reads {sorted(side.dense) or 'none'}"
                    + (f" (token modalities {sorted(side.tokens)} go under 'tokens')" if side.tokens else ""))
                continue
            dim = len(row["dense"][name])
            if len(vec) != dim:
                bad(("vectors", name), f"expected {dim} values for modality '{name}', found {len(vec)}",
                    "vector_dimension")
                continue
            v = np.asarray(vec, dtype=np.float64)
            dtype = row["dense"][name].dtype
            if np.abs(v).max() > np.finfo(dtype).max:
                bad(("vectors", name), f"values beyond the range of the modality's {dtype} table "
                    f"(+-{float(np.finfo(dtype).max):.4g})")
                continue
            row["dense"][name], row["presence"][name] = v.astype(dtype), True
        for name, toks in item.tokens.items():
            if name not in side.tokens:
                bad(("tokens", name), f"unknown token modality; the model reads {sorted(side.tokens) or 'none'}"
                    + (f" (dense modalities {sorted(side.dense)} go under 'vectors')" if side.dense else ""))
                continue
            t_max, dim = row["tokens"][name].shape
            if len(toks) > t_max:
                bad(("tokens", name), f"at most {t_max} tokens of modality '{name}' (the model's token table), "
                    f"found {len(toks)}", "too_many_tokens")
                continue
            wrong = [j for j, tok in enumerate(toks) if len(tok) != dim]
            for j in wrong:
                bad(("tokens", name, j), f"expected {dim} values per token of modality '{name}', found "
                    f"{len(toks[j])}", "vector_dimension")
            if wrong or not toks:
                continue
            v = np.asarray(toks, dtype=np.float64)
            dtype = row["tokens"][name].dtype
            if np.abs(v).max() > np.finfo(dtype).max:
                bad(("tokens", name), f"values beyond the range of the modality's {dtype} token table "
                    f"(+-{float(np.finfo(dtype).max):.4g})")
                continue
            row["tokens"][name][: len(toks)] = v.astype(dtype)
            row["token_mask"][name][: len(toks)] = True
        return (None if errors else row), errors

    def register(self, items: list[NewItem]) -> tuple[dict | None, list[dict]]:
        """Validates every item (nothing is stored when one is invalid: the errors are returned), stores the
        new ones durably in the state store, then adds them to the item tables. An id known to the bundle
        changes nothing (its tables stay as trained); an id registered before is replaced; a deleted or expired
        id is registered afresh (in its old row). An item's expiry (`ttl_s`, else the service's `item_ttl_s`,
        from now) is stored with it. Returns counts."""
        rows, errors = [], []
        for i, item in enumerate(items):
            row, errs = self.prepare(item, ("items", i))
            rows.append(row)
            errors += errs
        if errors:
            return None, errors
        in_bundle = self.bundle.item_vocab.lookup([it.id for it in items]) > 0
        known = [it.id for it, k in zip(items, in_bundle) if k]
        now = self.wall_clock()
        entries, docs = [], []
        for it, row, k in zip(items, rows, in_bundle):
            if k:
                continue
            ttl = it.ttl_s if it.ttl_s is not None else self.item_ttl_s
            expires = None if ttl is None else now + ttl  # registering again restarts the TTL
            entries.append((it.id, row, expires))
            docs.append((it.id, _item_doc(it, expires)))
        with self._registering:
            self.state.put_items(docs)
            registered, replaced = self._apply(entries)
            self._applied.update(docs)  # read back by sync_items with this body: not applied a second time
        return {"registered": registered, "replaced": replaced, "known_to_bundle": len(known),
                "known_ids": known, "items": self.n_registered}, []

    def replay(self) -> int:
        """Registers the items stored by earlier runs (startup). Items that no longer fit the bundle (another
        bundle served on the same state: an id it now knows, a changed dimension) are skipped with a warning.
        Records the store's item sequence number read before loading: what is written meanwhile comes again
        through sync_items (and is skipped there when loaded here with the same body). Items whose expiry passed
        while no process ran are loaded too: the first request's expiry sweep deletes them before it scores."""
        seq_of = getattr(self.state, "item_seq", None)
        with self._registering:
            self._item_seq = int(seq_of()) if seq_of is not None and self._items_since is not None else 0
            load = getattr(self.state, "load_items", None)
            docs = [(i, body) for i, body in (load() if load is not None else []) if body]
            if not docs:
                return 0
            entries, bodies, known, skipped = self._stored_rows(docs)
            self._apply(entries)
            self._applied.update(bodies)
        log.info("replayed %d registered items from the state store (%d now known to the bundle, %d skipped)",
                 len(entries), known, skipped)
        return len(entries)

    def _stored_rows(self, docs: list[tuple[str, str]]) -> tuple[list[tuple[str, dict, float | None]], dict[str, str],
                                                                 int, int]:
        """The item table rows of stored items (id, JSON document): (entries for _apply: id, rows, expiry; id ->
        body of those; ids the bundle knows; items skipped with a warning as invalid or not fitting this bundle)."""
        entries, bodies, skipped, known = [], {}, 0, 0
        for item_id, body in docs:
            try:
                item, expires = _read_doc(body)
            except ValueError as e:  # pydantic's ValidationError and json's errors are ValueErrors
                log.warning("stored item %r is not a valid item (%s); skipped", item_id, str(e).splitlines()[0])
                skipped += 1
                continue
            if self.bundle.item_vocab.lookup([item.id])[0] > 0:
                known += 1
                continue
            row, errs = self.prepare(item, ("stored item", item.id))
            if errs:
                log.warning("stored item %r does not fit this bundle (%s); skipped", item.id, errs[0]["msg"])
                skipped += 1
                continue
            entries.append((item.id, row, expires))
            bodies[item.id] = body
        return entries, bodies, known, skipped

    def refresh_items(self) -> dict[str, int]:
        """At the start of a request: the items other processes registered, replaced or deleted since the last
        sync (`sync_items`), then the expiry sweep (`expire_items`); both throttled, so most calls cost two clock
        reads. Returns counts for the metrics: registered, replaced, deleted (by other processes, or expired
        in the store before this process's sweep got to them), expired (deleted in the store by this sweep)."""
        registered, replaced, deleted = self._sync(False)
        expired, gone = self.expire_items()
        return {"registered": registered, "replaced": replaced, "deleted": deleted + gone, "expired": expired}

    def sync_items(self, force: bool = False) -> tuple[int, int]:
        """Applies the items other processes sharing the state store wrote since the last sync: returns
        (new ids, replaced); deleted ones are dropped (counted in `deletions_synced`). At most one store query
        per item_sync_s seconds, unless `force`: between those a call costs a clock read. A call while another
        thread registers or syncs returns at once (that thread holds the lock; the next call after it catches
        up) rather than queueing requests behind it. A failing store is logged and the request goes on with
        the items already known."""
        registered, replaced, _ = self._sync(force)
        return registered, replaced

    def _sync(self, force: bool) -> tuple[int, int, int]:
        """sync_items, returning (new ids, replaced, deleted)."""
        if self.item_sync_s is None or (not force and self.clock() < self._next_sync):
            return 0, 0, 0
        if not self._registering.acquire(blocking=False):
            return 0, 0, 0
        try:
            now = self.clock()
            if not force and now < self._next_sync:  # another thread synced while this one got the lock
                return 0, 0, 0
            self._next_sync = now + self.item_sync_s
            try:
                docs, seq = self._items_since(self._item_seq)
                if seq < self._item_seq:  # a new or restored store: its numbers start again; read it all
                    log.warning("the state store's item sequence went back from %d to %d (a new or restored "
                                "store?): reading every sequenced item again", self._item_seq, seq)
                    docs, seq = self._items_since(0)
            except Exception as e:  # noqa: BLE001 - scoring goes on with the items it has; retried next interval
                log.warning("could not read items registered by other processes from the %s state store: %s",
                            getattr(self.state, "kind", "?"), e)
                return 0, 0, 0
            # own registrations and items seen before come back with the body applied here: not applied again
            # (a replacement would drop MMBee's memoised content for nothing). Tombstones (body None) of ids
            # known here drop them; of ids unknown here (own deletions among them) change nothing. Each id
            # comes once, in its latest state, so the two lists commute
            changed = [(i, body) for i, body in docs if body is not None and self._applied.get(i) != body]
            deleted = len(self._remove([i for i, body in docs if body is None]))
            entries, bodies, _, _ = self._stored_rows(changed)
            registered, replaced = self._apply(entries)
            self._applied.update(bodies)
            self._item_seq = seq
            self.items_synced += registered + replaced
            self.deletions_synced += deleted
        finally:
            self._registering.release()
        if registered or replaced or deleted:
            log.info("applied %d new, %d replaced and %d deleted items of other processes", registered, replaced,
                     deleted)
        return registered, replaced, deleted

    def delete(self, ids: list[str]) -> dict[str, str]:
        """Deletes registered items: durably in the state store first (a tombstone that other processes sync
        and that keeps a restart from replaying the item), then here. Returns, for each distinct id in order,
        'deleted' (the store had it, or this process still knew it: it is unknown from now on), 'not_registered'
        (never registered, or deleted or expired before) or 'bundle_item' (the bundle's items are part of the
        exported model, which stays as trained: never deleted). Raises NotImplementedError for a state store
        without delete_items."""
        unique = list(dict.fromkeys(ids))
        in_bundle = self.bundle.item_vocab.lookup(unique) > 0 if unique else np.zeros(0, bool)
        out = {i: "bundle_item" for i, k in zip(unique, in_bundle) if k}
        ours = [i for i, k in zip(unique, in_bundle) if not k]
        if ours:
            if self._delete_items is None:
                raise NotImplementedError(f"the {getattr(self.state, 'kind', type(self.state).__name__)} state store "
                                          "cannot delete items (it has no delete_items)")
            with self._registering:
                stored = set(self._delete_items(ours))
                removed = set(self._remove(ours))
            for i in ours:
                out[i] = "deleted" if i in stored or i in removed else "not_registered"
        return {i: out[i] for i in unique}

    def expire_items(self, force: bool = False) -> tuple[int, int]:
        """Deletes the registered items whose expiry time (unix seconds, `wall_clock`) has passed: in the state
        store, only while the stored registration is the one that expired (another process may have registered
        the id again, with a later expiry, since this one last synced), then here. At most one sweep per
        EXPIRY_SWEEP_S seconds of `clock` unless `force`; a call between sweeps, or with no expiring item,
        costs a clock read at most. The due items come off a heap ordered by expiry: a sweep reads only them,
        never every item. Returns (expired: deleted in the store by this sweep; dropped here only: the store
        had deleted or replaced them already). A failing store is logged and the items stay (a deletion
        happens in the store first, or not at all) until the next sweep, a second later."""
        if not self._expiry_heap or (not force and self.clock() < self._next_sweep):
            return 0, 0
        if not self._registering.acquire(blocking=False):  # a registration, sync or sweep is under way
            return 0, 0
        try:
            now = self.clock()
            if not force and now < self._next_sweep:
                return 0, 0
            self._next_sweep = now + self.EXPIRY_SWEEP_S
            wall, heap, due = self.wall_clock(), self._expiry_heap, {}
            while heap and heap[0][0] <= wall:
                t, item = heapq.heappop(heap)
                if self._expiry.get(item) == t:  # else stale: registered again with another expiry, or deleted
                    due[item] = t
            if not due:
                return 0, 0
            ids = list(due)
            try:
                stored = set(self._delete_items(ids, [self._applied[i] for i in ids])) if self._delete_items else set()
            except Exception as e:  # noqa: BLE001 - requests go on; the next sweep tries again
                for item, t in due.items():
                    heapq.heappush(heap, (t, item))
                log.warning("could not delete %d expired items in the %s state store (retried at the next sweep): "
                            "%s", len(ids), getattr(self.state, "kind", "?"), e)
                return 0, 0
            removed = self._remove(ids)
            dropped = len(set(removed) - stored)  # the store had deleted or replaced them: another process's doing
            self.deletions_synced += dropped
        finally:
            self._registering.release()
        log.info("%d registered items expired (%d deleted in the state store by this process)", len(removed),
                 len(stored))
        return len(stored), dropped

    def _set_expiry(self, item: str, expires: float | None) -> None:
        """Records a live item's expiry (None: never); the old heap entry goes stale. Under _registering."""
        if expires is None:
            self._expiry.pop(item, None)
            return
        self._expiry[item] = expires
        heapq.heappush(self._expiry_heap, (expires, item))
        if len(self._expiry_heap) > 2 * len(self._expiry) + 64:  # mostly stale entries (TTLs refreshed): rebuild
            self._expiry_heap = [(t, i) for i, t in self._expiry.items()]
            heapq.heapify(self._expiry_heap)

    def _remove(self, ids: list[str]) -> list[str]:
        """Unpublishes the live registered ids among `ids`: lookups find 0 from now on (a cold start, as an id
        never registered), retrieval skips their rows (`alive`), their expiry and applied body are forgotten,
        and MMBee drops their memoised content. The rows stay as tombstones (other items' indices never move);
        the id registered again takes its row back, a new id an old tombstone's (`ItemIds`). Returns the ids
        removed. Under _registering."""
        live = [i for i in dict.fromkeys(ids) if i in self.ids.extra]
        if not live:
            return []
        with self._rw.write():
            indices = [self.ids.remove(item) for item in live]
            for index in indices:
                self.alive[index] = False
            if self.memo and hasattr(self.model, "forget"):
                self.model.forget(indices)
        for item in live:
            self._expiry.pop(item, None)
            self._applied.pop(item, None)
        return live

    def _tables(self) -> list[AppendableRows]:
        out = [arr for group in SIDE_GROUPS for arr in getattr(self.side, group).values()]
        return out + [t for t in (self.vectors, self.has_vector, self.alive, self.born) if t is not None]

    def _make_growable(self) -> None:
        """At the first registered item: every item table becomes an AppendableRows over the bundle's array
        (the bundle's arrays are neither copied nor changed). Under the write lock."""
        if self._growable:
            return
        for group in SIDE_GROUPS:
            table = getattr(self.side, group)
            for name in list(table):
                table[name] = AppendableRows(np.asarray(table[name]))
        if self.group_feature is not None:
            self.group = self.side.categorical[self.group_feature]
        if self.graph is not None:
            self.streamer_code = self.side.categorical[self.graph.streamer_feature]
        if self.vectors is not None:
            self.vectors = AppendableRows(self.vectors)
            self.has_vector = AppendableRows(np.zeros(self.n_items, dtype=bool))
        self.alive = AppendableRows(np.ones(self.n_items, dtype=bool))
        self.born = AppendableRows(np.zeros(self.n_items, dtype=np.int64))  # registration order (rows are reused)
        self._growable = True

    @torch.inference_mode()
    def _retrieval_vectors(self, rows: list[dict]) -> np.ndarray | None:
        """(k, d) L2-normalised retrieval vectors of new rows, as the bundle's were computed (bundle.item_vectors:
        the ItemEncoder output, here with id 0; or a dense content modality); zero rows where there is none."""
        if self.vectors is None or not rows:
            return None
        d = self.vectors.shape[1]
        if self.encoder is not None:
            feats = {}
            for group in ("categorical", "multi", "dense"):
                for name in getattr(self.side, group):
                    feats[name] = torch.from_numpy(np.stack([np.asarray(r[group][name]) for r in rows]))
            for name in self.side.dense:
                feats[name] = feats[name].float()
            pres = {name: torch.from_numpy(np.array([r["presence"][name] for r in rows], dtype=bool))
                    for name in self.side.presence}
            vec = self.encoder(torch.zeros(len(rows), dtype=torch.long), feats, pres).float().numpy()
        elif self.vector_source.startswith("content:") and self.vector_source[8:] in self.side.dense:
            name = self.vector_source[8:]
            vec = np.stack([r["dense"][name].astype(np.float32) if r["presence"][name] else np.zeros(d, np.float32)
                            for r in rows])
        else:  # an id embedding: a new item has no row in it
            return np.zeros((len(rows), d), dtype=np.float32)
        return normalise(vec) if vec.shape[1] == d else np.zeros((len(rows), d), dtype=np.float32)

    def _apply(self, entries: list[tuple[str, dict, float | None]]) -> tuple[int, int]:
        """Adds (id, rows, expiry) to the item tables and the vocabulary, latest wins; returns (new ids,
        replaced). A deleted id comes back as new, in its tombstone's row. Under _registering."""
        if not entries:
            return 0, 0
        latest: dict[str, tuple[dict, float | None]] = {}
        registered = replaced = 0
        for item_id, row, expires in entries:
            if item_id in latest or item_id in self.ids.extra:
                replaced += 1
            else:
                registered += 1
            latest[item_id] = (row, expires)
        vectors = self._retrieval_vectors([row for row, _ in latest.values()])
        with self._rw.write():
            self._make_growable()
            fresh = [i for i in latest if i not in self.ids.extra and i not in self.ids.removed]
            total = len(self.ids.extra_ids) + len(fresh)  # at most: old tombstones' rows may be reused
            for table in self._tables():
                table.reserve(total)
            again: list[int] = []
            for j, (item_id, (row, _)) in enumerate(latest.items()):
                index = self.ids.index_for(item_id)
                if index < len(self.ids):
                    again.append(index)  # replaced content, a tombstone's row taken back, or reused by a new id
                for group in SIDE_GROUPS:
                    for name, value in row[group].items():
                        getattr(self.side, group)[name][index] = value
                if vectors is not None:
                    self.vectors[index] = vectors[j]
                    self.has_vector[index] = bool(np.any(vectors[j]))
                self.alive[index] = True
                self.born[index] = self._born
                self._born += 1
                if item_id not in self.ids.extra:
                    added = self.ids.add(item_id)  # rows first, then the id: a lookup never finds a half-written item
                    assert added == index, (added, index)
            if again and self.memo and hasattr(self.model, "forget"):
                # MMBee's memoised MFQ vectors of replaced content; of a reused row too (a request that looked the
                # id up before its deletion may have memoised the old content under that index since)
                self.model.forget(again)
        for item_id, (_, expires) in latest.items():
            self._set_expiry(item_id, expires)
        return registered, replaced

    # histories: (item indices, times, action tags) of one user, chronological; the tags are the codes of the
    # events' channels for a model that reads a tagged history (`self.tags`), else zeros
    def seed(self, uidx: int, before: int | None = None) -> Sequence:
        h = self.bundle.history
        if uidx <= 0 or uidx + 1 >= len(h.ptr):
            return Sequence(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        lo, hi = h.ptr[uidx], h.ptr[uidx + 1]
        items, times = h.items[lo:hi], h.times[lo:hi]
        tags = h.tags[lo:hi] if h.tags is not None else np.zeros(hi - lo, np.int64)
        if before is not None:
            keep = times < before
            items, times, tags = items[keep], times[keep], tags[keep]
        return Sequence(items, times, tags)

    def history(self, user: str, uidx: int, before: int | None = None) -> Sequence:
        """The ranker's sequence, at most max_history long: the bundle's seed history, then the stored events."""
        L = self.bundle.max_history
        online = self.state.recent(user, 2 * L, channels=self.channels, before=before)
        o_items = self.item_index([e.item or "" for e in online]) if online else np.zeros(0, np.int64)
        o_times = np.array([e.time for e in online], dtype=np.int64)
        o_tags = channel_codes(np.array([e.channel for e in online], dtype=object), self.tags)  # 0: untagged
        known = o_items > 0
        return self.merge(self.seed(uidx, before), Sequence(o_items[known], o_times[known], o_tags[known]))

    def merge(self, seed: Sequence, online: Sequence) -> Sequence:
        items, times, tags = (np.concatenate([a, b]).astype(np.int64) for a, b in zip(seed, online))
        order = np.argsort(times, kind="stable")[-self.bundle.max_history:]  # equal times: seed events first
        return Sequence(items[order], times[order], tags[order])

    def explicit_history(self, events: list[tuple[str, int, str | None]], before: int | None) -> Sequence:
        """A request's own history: (item, time, channel) events; no channel: the first history channel."""
        items = self.item_index([i for i, _, _ in events]) if events else np.zeros(0, np.int64)
        times = np.array([t for _, t, _ in events], dtype=np.int64)
        first = next(iter(self.tags), "")
        tags = channel_codes(np.array([c or first for _, _, c in events], dtype=object), self.tags)
        keep = items > 0
        if before is not None:
            keep &= times < before
        empty = np.zeros(0, np.int64)
        return self.merge(Sequence(empty, empty, empty), Sequence(items[keep], times[keep], tags[keep]))

    def retrieval_query(self, user: str, uidx: int, before: int | None = None) -> np.ndarray:
        """Recent items of every channel (a like or a purchase says as much as a view), oldest first."""
        n = self.retrieval_history
        s_items, s_times, _ = self.seed(uidx, before)
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
        codes = self.streamer_code[self.item_index([e.item for e in events])]
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
        extra = g.expansion.lookup(np.zeros(c, np.int64), self.streamer_code[candidates])
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
        msg = f"unknown context feature; the model reads {sorted(known) or 'none'}"
        locs = [("features", n) for n in features] + [("item_features", item, n)
                                                      for item, feats in item_features.items() for n in feats]
        return [{"loc": ("body", "context", *loc), "msg": msg, "type": "value_error"}
                for loc in locs if loc[-1] not in known]

    @torch.inference_mode()
    def score(self, uidx: int, hist_items: np.ndarray, hist_times: np.ndarray, t: int,
              candidates: np.ndarray, user: str | None = None, before: int | None = None,
              context: dict[str, np.ndarray] | None = None, hist_tags: np.ndarray | None = None) -> np.ndarray:
        """Logits (ctr) or scores (topk) of `candidates` for a user with this sequence at time `t`.
        `user` (the raw id) and `before` (context.time) select the online gifts a graph expansion reads;
        without `user` the expansion is the bundle's offline one. `context`: (C,) codes per context feature
        (`context_codes`); features it lacks are unknown (0). `hist_tags`: the events' action tag codes, for a
        model that reads a tagged history (`Sequence.tags`)."""
        if self.tags and hist_tags is None and len(hist_items):
            raise ValueError("this model reads a tagged history (schema.history_tags): pass hist_tags")
        with self._rw.read():  # a registration does not change the item tables under a request
            return self._score(uidx, hist_items, hist_times, hist_tags, t, candidates, user, before, context)

    def _score(self, uidx, hist_items, hist_times, hist_tags, t, candidates, user, before, context) -> np.ndarray:
        n = len(hist_items)
        h_items, h_times = hist_items.astype(np.int64), hist_times.astype(np.int64)
        h_tags = None if not self.tags else np.asarray(hist_tags if n else np.zeros(0), dtype=np.int64)
        if n == 0:  # one padding event beyond the cut: the window masks it, as offline for a user's first sample
            h_items, h_times = np.zeros(1, np.int64), np.full(1, t, np.int64)
            h_tags = None if h_tags is None else np.zeros(1, np.int64)
        history = History(np.array([0, n], dtype=np.int64), h_items, h_times, h_tags)
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
            self.model_ids(batch)
            out = self.bundle.model(batch)
        else:  # topk: one sequence, the candidates as a (1, C) slate
            batch = collate(np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([n]), np.array([t]))
            batch.user = batch.group = torch.full((1,), uidx, dtype=torch.long)
            batch.candidates = torch.from_numpy(cand).view(1, -1)
            self.model_ids(batch)
            out = self.bundle.model(batch).view(-1)
        return out.float().numpy().astype(np.float64)

    # retrieval
    def retrieve(self, query_items: np.ndarray, n: int, exclude: set[int]) -> tuple[np.ndarray, int]:
        """Up to `n` candidates: a quarter from the groups of the recent items (same first categorical
        feature, e.g. the streamers the user just watched or gifted: their registered segments, latest
        first, then their other segments, most popular first), then the nearest items to the recent items'
        mean vector (the bundle's faiss index and an exact search over the registered items' vectors,
        merged by similarity), then popular ones. Returns (candidates, how many came from the user's
        history: group + ANN)."""
        with self._rw.read():
            return self._retrieve(query_items, n, exclude)

    def _retrieve(self, query_items: np.ndarray, n: int, exclude: set[int]) -> tuple[np.ndarray, int]:
        b = self.bundle
        out: list[int] = []
        seen = set(exclude)
        seen.add(0)
        n = min(n, self.ids.n_base - 1 + self.n_registered)
        m = len(self.ids.extra_ids)  # appended rows, tombstones (deleted items: alive False) included
        live = self.alive.extra[:m] if m else None
        # the bundle's items (faiss, popular) are never deleted; registered ones are read only where alive
        if self.group is not None and len(query_items):
            codes = set(self.group[query_items[-self.retrieval_history:]].tolist()) - {0}
            if codes:
                same = b.popular[np.isin(self.group[b.popular], list(codes))]
                if m:
                    new = np.flatnonzero(np.isin(self.group.extra[:m], list(codes)) & live)
                    new = new[np.argsort(-self.born.extra[:m][new], kind="stable")] + self.n_items  # latest first
                    same = np.concatenate([new, same])
                for item in same[: max(1, n // 4)].tolist():
                    if item not in seen:
                        out.append(int(item))
                        seen.add(int(item))
        n_ann = 0
        if b.index is not None and self.vectors is not None and len(query_items):
            recent = query_items[-self.retrieval_history:]
            w = 0.9 ** np.arange(len(recent))[::-1]  # the latest items weigh most
            q = (self.vectors[recent] * w[:, None]).sum(0)
            norm = np.linalg.norm(q)
            if norm > 0:
                want = n - n // 4  # a quarter stays for popular items: exploration beyond the history's neighbours
                q = (q / norm).astype(np.float32)
                k = min(b.index.ntotal, want + len(seen))
                sims, ids = b.index.search(q[None, :], k)
                found = [(float(s), int(i) + 1) for s, i in zip(sims[0], ids[0]) if i >= 0]
                if m and self.has_vector is not None:
                    sim = self.vectors.extra[:m] @ q
                    sim[~(self.has_vector.extra[:m] & live)] = -np.inf
                    top = min(m, want + len(seen))
                    best = np.argpartition(-sim, top - 1)[:top] if top < m else np.arange(m)
                    found += [(float(sim[j]), self.n_items + int(j)) for j in best if np.isfinite(sim[j])]
                    found.sort(key=lambda x: -x[0])  # stable: the bundle's neighbours first on ties
                for _, item in found:
                    if item not in seen:
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
                     "modalrec_items_total": "Items received by /items, by result (registered, replaced, "
                                             "known_to_bundle, deleted), and expired: deleted by this process's "
                                             "TTL sweep.",
                     "modalrec_items_synced_total": "Items registered or deleted by other processes sharing the state "
                                                    "store and applied here, by result (registered, replaced, "
                                                    "deleted).",
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
        await self._error(send, 429, f"rate limit of {self.limiter.rate:g} requests/s per client (bursts of "
                          f"{self.limiter.burst:g}) exceeded; retry after {retry} s", (b"retry-after", str(retry).encode()))

    async def _too_large(self, send):
        await self._error(send, 413, f"request body larger than {self.max_body} bytes", (b"connection", b"close"))

    @staticmethod
    async def _error(send, status: int, message: str, header: tuple[bytes, bytes]) -> None:
        """A JSON error response ({"detail", "message"}) sent before the app sees the request."""
        body = json.dumps({"detail": message, "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                header]})
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


Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Vector = Annotated[list[Finite], Field(min_length=1, max_length=8192)]


class NewItem(_Strict):
    """An item that appeared after export, described as the model's side table describes items."""

    id: Id
    categorical: dict[Name, str | int | float | None] = Field(
        default_factory=dict, max_length=256, description="item categorical (or numeric) feature -> raw value, "
        "as in the training data (e.g. {\"streamer_id\": \"s7\"}); a value not seen in training, a null or a "
        "feature left out is unknown (code 0), as offline")
    multi: dict[Name, Annotated[list[str | int], Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=256, description="multi-valued feature -> raw values (e.g. "
        "{\"tags\": [\"a\", \"b\"]}); values not seen in training are dropped")
    text: dict[Name, Annotated[str, StringConstraints(max_length=100_000)]] = Field(
        default_factory=dict, max_length=64, description="text modality -> its text, read as the model reads it "
        "(a bag of the words seen in training)")
    vectors: dict[Name, Vector] = Field(
        default_factory=dict, max_length=64, description="dense content modality -> its precomputed vector, of "
        "the dimension the model reads (e.g. an audio embedding)")
    tokens: dict[Name, Annotated[list[Vector], Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=64, description="token modality -> its precomputed token vectors (frames, "
        "comments), at most the model's token count T, each of its dimension; [] or left out: absent")
    ttl_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="seconds from this registration after which the item expires: it is then deleted "
        "(as by DELETE /items/{id}) on every service process sharing the state store, within about a second of "
        "that time. Default: the service's --item-ttl (none: never). Registering the id again restarts it")


def _item_doc(item: NewItem, expires_at: float | None) -> str:
    """The stored JSON document of a registered item: the validated request item, plus `expires_at` (unix
    seconds) when it expires. An absolute time in the document, so every process sharing the store, and every
    restart, agrees on when the item expires, whatever its own --item-ttl."""
    body = item.model_dump_json(exclude_defaults=True)
    if expires_at is None:
        return body
    return f'{body[:-1]},"expires_at":{json.dumps(float(expires_at))}}}'  # the object's last member


def _read_doc(body: str) -> tuple[NewItem, float | None]:
    """(item, expiry) of a stored document (`_item_doc`); ValueError when it is not one."""
    d = json.loads(body)
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, found {type(d).__name__}")  # noqa: TRY004 - one error kind
    expires = d.pop("expires_at", None)
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))
                                or not math.isfinite(expires)):
        raise ValueError(f"expires_at must be unix seconds, found {expires!r}"[:200])
    return NewItem.model_validate(d), None if expires is None else float(expires)


class ItemsRequest(_Strict):
    items: list[NewItem] = Field(..., min_length=1, max_length=MAX_NEW_ITEMS)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [
        {"id": "seg-123", "categorical": {"streamer_id": "s7"}, "vectors": {"speech_mfcc": [0.1, -0.3, 0.7]},
         "tokens": {"frames_emb": [[0.2, 0.1, -0.4], [0.0, 0.3, 0.1]], "comments_emb": [[0.5, -0.1, 0.2]]}},
    ]}]})


class ItemsResponse(BaseModel):
    registered: int = Field(..., description="new ids, scoreable from now on (durable when this response is sent)")
    replaced: int = Field(..., description="ids registered before: their features are replaced (the latest wins)")
    known_to_bundle: int = Field(..., description="ids the bundle knows: nothing changed, its tables stay as trained")
    known_ids: list[str] = Field(..., description="those ids")
    items: int = Field(..., description="items registered with the service in all")


DeleteResult = Literal["deleted", "not_registered", "bundle_item"]


class DeleteItemResponse(BaseModel):
    id: str
    result: Literal["deleted"] = Field("deleted", description="unknown from now on (durable when this response is "
                                                               "sent): scored as a cold start, never retrieved")
    items: int = Field(..., description="items registered with the service in all, after the deletion")


class DeleteItemsRequest(_Strict):
    ids: list[Id] = Field(..., min_length=1, max_length=MAX_NEW_ITEMS, description="registered item ids to delete")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ids": ["seg-123", "seg-124"]}]})


class DeletedItem(BaseModel):
    id: str
    result: DeleteResult = Field(..., description="deleted: unknown from now on; not_registered: nothing to delete "
                                                  "(never registered, or deleted or expired before); bundle_item: "
                                                  "part of the exported model, not deletable")


class DeleteItemsResponse(BaseModel):
    deleted: int = Field(..., description="ids deleted (durable when this response is sent)")
    not_registered: int = Field(..., description="ids neither registered nor known to the bundle: nothing to do")
    bundle_items: int = Field(..., description="ids the bundle knows: unchanged (the exported model's items)")
    results: list[DeletedItem] = Field(..., description="one per distinct id, in request order")
    items: int = Field(..., description="items registered with the service in all, after the deletion")


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
    known: bool = Field(..., description="False: an item neither the bundle knows nor POST /items registered, "
                                         "scored as a cold start")


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
    channel: str | None = Field(None, max_length=64, description="the event's channel (watch, gift, ...): its action "
                                "tag for a model trained with task.history_channel_tags; default: the first history "
                                "channel")


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
               rate_burst: float | None = None, item_sync_s: float | None = 1.0, item_ttl_s: float | None = None,
               precision: Precision = "fp32"):
    """The FastAPI app serving `bundle_dir` with user state at `state_url` (default: SQLite beside the
    bundle). `api_key` (default: $MODALREC_API_KEY) guards the write endpoints; without one they answer 403.
    `rate_limit` (requests/s per client address, bursts of `rate_burst`, default twice the rate) answers 429
    with Retry-After above it; None: no limit. `item_sync_s`: how often (seconds) /recommend, /score and
    /items look in the state store for items registered by other processes sharing it (0: at every request;
    None: never, they then arrive at a restart). `item_ttl_s`: seconds after which a registered item without its
    own `ttl_s` expires (None: never). `precision`: arithmetic of the activation unit's serving fast path
    (see SharedHistoryAttention)."""
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi import Path as PathParam
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
    scorer = Scorer(bundle, state, item_sync_s=item_sync_s, item_ttl_s=item_ttl_s, precision=precision)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    metrics = Metrics()
    metrics.info = {"model": bundle.model_name, "task": bundle.task, "seed": str(bundle.manifest.get("seed")),
                    "state": state.kind, "items": str(len(bundle.item_vocab) - 1), "precision": precision}
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

    def sync_items() -> None:
        """Items registered or deleted by other processes sharing the state store, then expired items
        (throttled: see Scorer.refresh_items)."""
        changes = scorer.refresh_items()
        for result in ("registered", "replaced", "deleted"):
            if changes[result]:
                metrics.inc("modalrec_items_synced_total", "result", result, changes[result])
        if changes["expired"]:
            metrics.inc("modalrec_items_total", "result", "expired", changes["expired"])

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
                "state": state.kind, "users": len(bundle.user_vocab) - 1, "items": len(bundle.item_vocab) - 1,
                "registered_items": scorer.n_registered, "item_rows": len(scorer.ids) - scorer.ids.n_base,
                "tombstones": scorer.ids.tombstones, "precision": precision}

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
        cold_item_events = int((scorer.item_index(with_item) == 0).sum()) if with_item else 0
        metrics.inc("modalrec_events_total", "result", "accepted", res.accepted)
        metrics.inc("modalrec_events_total", "result", "duplicate", res.duplicates)
        if cold_user_events:
            metrics.inc("modalrec_cold_starts_total", "kind", "event_user", cold_user_events)
        if cold_item_events:
            metrics.inc("modalrec_cold_starts_total", "kind", "event_item", cold_item_events)
        return EventsResponse(accepted=res.accepted, duplicates=res.duplicates, cold_user_events=cold_user_events,
                              cold_item_events=cold_item_events)

    @app.post("/items", response_model=ItemsResponse, tags=["items"], dependencies=[Depends(require_key)],
              summary="Register items that appeared after export (a new live segment, a new product): scoreable "
                      "at once; acknowledged only once durably stored")
    def post_items(req: ItemsRequest) -> ItemsResponse:
        sync_items()  # an id another process registered counts as a replacement here too
        t0 = time.perf_counter()
        res, errors = scorer.register(req.items)
        if errors:
            raise _Invalid(errors)
        stage("items", t0)
        for result in ("registered", "replaced", "known_to_bundle"):
            if res[result]:
                metrics.inc("modalrec_items_total", "result", result, res[result])
        return ItemsResponse(**res)

    def delete_items(ids: list[str]) -> dict[str, str]:
        sync_items()
        t0 = time.perf_counter()
        try:
            results = scorer.delete(ids)
        except NotImplementedError as e:
            raise HTTPException(501, str(e)) from None
        stage("items", t0)
        deleted = sum(r == "deleted" for r in results.values())
        if deleted:
            metrics.inc("modalrec_items_total", "result", "deleted", deleted)
        return results

    @app.delete("/items/{item_id:path}", response_model=DeleteItemResponse, tags=["items"],
                dependencies=[Depends(require_key)],
                responses={404: {"description": "the id is not registered (never, or deleted or expired before)"},
                           409: {"description": "the id is the bundle's: part of the exported model, not deletable"}},
                summary="Delete an item registered through POST /items: unknown from now on (a cold start, never "
                        "retrieved) on every process sharing the state store; acknowledged once durably stored")
    def delete_item(item_id: str = PathParam(..., min_length=1, max_length=256)) -> DeleteItemResponse:
        result = delete_items([item_id])[item_id]
        if result == "bundle_item":
            raise HTTPException(409, f"item '{item_id}' is part of the exported bundle: the trained model's items "
                                     "stay as exported; only items registered through POST /items can be deleted")
        if result == "not_registered":
            raise HTTPException(404, f"item '{item_id}' is not registered: POST /items never registered it, or it "
                                     "was deleted or expired before")
        return DeleteItemResponse(id=item_id, items=scorer.n_registered)

    @app.post("/items/delete", response_model=DeleteItemsResponse, tags=["items"], dependencies=[Depends(require_key)],
              summary="Delete several registered items; reports each id (deleted, not_registered, bundle_item) "
                      "without failing the batch; acknowledged once durably stored")
    def delete_items_batch(req: DeleteItemsRequest) -> DeleteItemsResponse:
        results = delete_items(req.ids)
        counts = {r: sum(v == r for v in results.values()) for r in ("deleted", "not_registered", "bundle_item")}
        return DeleteItemsResponse(deleted=counts["deleted"], not_registered=counts["not_registered"],
                                   bundle_items=counts["bundle_item"],
                                   results=[DeletedItem(id=i, result=r) for i, r in results.items()],
                                   items=scorer.n_registered)

    def sequence(user: str, uidx: int, ctx: Context, explicit: list[HistoryEvent] | None):
        before = to_seconds(ctx.time)
        if explicit is not None:
            seq = scorer.explicit_history([(h.item, to_seconds(h.time), h.channel) for h in explicit], before)
        else:
            seq = scorer.history(user, uidx, before)
        # without a given time the request happens now, after every event it reads
        t = before if before is not None else max(int(time.time()), int(seq.times.max()) if len(seq.times) else 0)
        return seq, t, before

    @app.post("/recommend", response_model=RecommendResponse, tags=["recommend"],
              summary="Top-K items for a user: ANN retrieval over item vectors, then the ranker")
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        # on the event loop, not a worker thread: ranking is CPU-bound and holds the GIL anyway, and the hop to the
        # thread pool (with the GIL handed back and forth while the loop reads other requests) cost ~1.5 ms of
        # p50 under load (benchmarks/serve_load.py); /events, which waits on fsync, stays on the pool
        sync_items()
        if req.context.features or req.context.item_features:
            errors = scorer.check_context(req.context.features, req.context.item_features)
            if errors:
                raise _Invalid(errors)
        t0 = time.perf_counter()
        uidx = scorer.user_index(req.user)
        seq, t, before = sequence(req.user, uidx, req.context, None)
        items = seq.items
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
            names = [scorer.ids.id_of(int(i)) for i in cand]
            retrieved = {"ann": n_ann, "popular": len(cand) - n_ann, "given": 0}
        t0 = stage("retrieval", t0)
        if len(cand) == 0:
            return RecommendResponse(user=req.user, cold_start=uidx == 0, history_length=len(items), items=[],
                                     retrieved=retrieved, model=bundle.model_name)
        ctx = scorer.context_codes(req.context.features, req.context.item_features, names)
        logits = scorer.score(uidx, seq.items, seq.times, t, cand, user=req.user, before=before, context=ctx,
                              hist_tags=seq.tags)
        top = np.argsort(-logits, kind="stable")[: req.k]
        stage("rank", t0)
        if uidx == 0:
            metrics.inc("modalrec_cold_starts_total", "kind", "recommend_user")
        return RecommendResponse(user=req.user, cold_start=uidx == 0, history_length=len(items),
                                 items=scored([names[j] for j in top], cand[top], logits[top]),
                                 retrieved=retrieved, model=bundle.model_name)

    @app.post("/score", response_model=ScoreResponse, tags=["recommend"],
              summary="Scores (ctr: click probabilities) of given items for a user")
    async def score(req: ScoreRequest) -> ScoreResponse:  # on the event loop, as /recommend
        sync_items()
        if req.context.features or req.context.item_features:
            errors = scorer.check_context(req.context.features, req.context.item_features)
            if errors:
                raise _Invalid(errors)
        if req.history and scorer.tags:  # a tagged model: every channel named must be one it was trained to read
            errors = [{"loc": ("body", "history", i, "channel"), "type": "value_error",
                       "msg": f"unknown channel '{h.channel}'; the model's history reads {sorted(scorer.tags)}"}
                      for i, h in enumerate(req.history) if h.channel is not None and h.channel not in scorer.tags]
            if errors:
                raise _Invalid(errors)
        t0 = time.perf_counter()
        uidx = scorer.user_index(req.user)
        seq, t, before = sequence(req.user, uidx, req.context, req.history)
        t0 = stage("state", t0)
        cand = scorer.item_index(req.items)
        ctx = scorer.context_codes(req.context.features, req.context.item_features, list(req.items))
        logits = scorer.score(uidx, seq.items, seq.times, t, cand, user=req.user, before=before, context=ctx,
                              hist_tags=seq.tags)
        stage("rank", t0)
        if uidx == 0:
            metrics.inc("modalrec_cold_starts_total", "kind", "score_user")
        n_cold = int((cand == 0).sum())
        if n_cold:
            metrics.inc("modalrec_cold_starts_total", "kind", "score_item", n_cold)
        return ScoreResponse(user=req.user, cold_start=uidx == 0, history_length=len(seq.items),
                             scores=scored(list(req.items), cand, logits), model=bundle.model_name)

    @app.get("/users/{user:path}", response_model=UserState, tags=["events"], dependencies=[Depends(require_key)],
             summary="A user's stored online events (oldest first) and counters")
    def user_state(user: str, n: int = Query(100, ge=1, le=10_000)) -> UserState:
        return UserState(user=user, known=scorer.user_index(user) > 0,
                         events=[e.to_json() for e in state.recent(user, n)], counters=state.counters(user))

    return app


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """glibc's allocator: serve blocks up to `mmap_threshold` bytes from the heap and keep up to `trim_threshold`
    freed bytes there instead of returning them to the system. A request's activations (a few MB each) are then
    reused from one request to the next instead of being mapped, page-faulted and zeroed afresh: the default
    thresholds (128 kB, adapting only part of the way) cost a DIN request over 200 x 100 pairs about 40% of its
    scoring time (MovieLens bundle, bf16: 13-17 ms -> 8-9 ms a request). The price is that the process keeps its
    peak heap. Returns whether both settings took (False off glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def serve(bundle_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, state_url: str | None = None,
          api_key: str | None = None, threads: int | None = 1, log_level: str = "info",
          rate_limit: float | None = None, rate_burst: float | None = None, item_sync_s: float | None = 1.0,
          item_ttl_s: float | None = None, precision: Precision = "fp32") -> None:
    """Runs the service with uvicorn (one process; request handlers run in its thread pool). Several such
    processes can share one state store: items registered or deleted through one reach the others within
    `item_sync_s` seconds; registered items expire after `item_ttl_s` seconds unless they give their own
    (see create_app)."""
    import uvicorn

    if os.environ.get("MODALREC_KEEP_FREED_MEMORY", "1") != "0" and not keep_freed_memory():
        log.warning("could not tune the C allocator (not glibc?): requests map and fault their buffers afresh")
    app = create_app(bundle_dir, state_url, api_key, threads=threads, rate_limit=rate_limit, rate_burst=rate_burst,
                     item_sync_s=item_sync_s, item_ttl_s=item_ttl_s, precision=precision)
    # the bundle's objects live as long as the process: moved out of the collector's generations, a full
    # collection during a request no longer walks them (tail latency)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
