"""The model side of the service, without HTTP: users' sequences, candidates and scores.

Train/serve parity: every request is turned into the model's `Batch` by the bundle's feature pipeline
(`FeaturePipeline.request`, the same `Collator` as training and evaluation), from its item and user side
tables and a one-user history holding the served sequence, so a (user, item, history, time) gets the same
tensors, and the same score, as offline. The model runs in its serving mode (`Model.prepare_serving`): the
exact faster paths for batches whose rows share one history. Nothing here names a model.

History semantics: with `context.time` given, the ranker reads the events strictly before that time (the
offline leakage rule, for replay and what-if requests); without it, every stored event (the request happens
now, after them). Events of channels the model was not trained to read as history are kept and counted but
not fed to the ranker; retrieval uses the items of every channel. Events of items unknown to the bundle (and
not registered) are cold: stored and counted, left out of the model's sequence. Graph features (a task with
`task.graph`) read the user's stored edge events since the graph's end through the same pipeline.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from ..nn.serving import native_bf16
from ..pipeline import History, OnlineEvent, Sequence
from .bundle import Bundle
from .ops import ReadWriteLock
from .registry import ItemRegistry
from .retrieval import Retriever
from .state import StateStore

log = logging.getLogger("modalrec.serve")


class Scorer:
    def __init__(self, bundle: Bundle, state: StateStore, retrieval_history: int = 20, fast_paths: bool = True,
                 item_sync_s: float | None = 1.0, item_ttl_s: float | None = None, precision: str = "fp32"):
        self.bundle = bundle
        self.state = state
        self.pipeline = bundle.pipeline
        self.model = bundle.model
        self.n_items = bundle.n_items
        self.retrieval_history = retrieval_history
        self.precision = precision
        if precision == "bf16" and not native_bf16():
            log.warning("precision bf16: this CPU has no native bf16 matrix products (AVX512-BF16 or AMX); "
                        "they are emulated and slower than fp32")
        self.lock = ReadWriteLock()
        table = self.pipeline.item_table  # the live table: the registry appends registered items' rows to it
        self.fast_paths = self.model.prepare_serving(table, self.n_items, precision) if fast_paths else 0
        self.collate = self.pipeline.collator(
            History.of_one(np.zeros(0, np.int64), np.zeros(0, np.int64), None), None, inputs=self.model.inputs,
            item_table=table, n_model_items=self.n_items,
            target_tokens=self.model.serve_target_tokens if fast_paths else True)
        self.registry = ItemRegistry(bundle, state, self.lock, item_sync_s=item_sync_s, item_ttl_s=item_ttl_s)
        self.retriever = Retriever(bundle, self.registry, retrieval_history)

    # ids
    def user_index(self, user: str) -> int:
        return int(self.pipeline.users.lookup([user])[0])

    def item_index(self, items: list[str]) -> np.ndarray:
        return self.registry.ids.lookup(items)

    # a user's events
    def fetch(self, user: str):
        """The pipeline's view of the user's stored events (`pipeline.Fetch`): the latest `n` of `channels`
        strictly before `before`; with `since`, nothing when the store's counters show no event that late."""
        def fetch(channels, n, before=None, since=None):
            if since is not None:
                counters = self.state.counters(user)
                last = max((c["last_time"] for ch, c in counters.items() if channels is None or ch in channels
                            if c.get("n", 0) > 0), default=None)
                if last is None or last < since:  # one cheap read for most users
                    return []
            return [OnlineEvent(e.item, e.time, e.channel, e.value)
                    for e in self.state.recent(user, n, channels=channels, before=before)]
        return fetch

    def seed(self, user: str, before: int | None = None) -> Sequence:
        """The user's history recorded with the run (the bundle's seed), strictly before `before` when given."""
        h = self.bundle.history
        row = int(self.bundle.history_users.lookup([user])[0]) - 1
        items, times, tags = h.user(row + 1 if row >= 0 else -1, before)
        return Sequence(items, times, tags if tags is not None else np.zeros(len(items), np.int64))

    def history(self, user: str, before: int | None = None) -> Sequence:
        """The ranker's sequence, at most max_history long: the bundle's seed history, then the stored events."""
        return self.pipeline.online_sequence(self.seed(user, before), self.fetch(user), self.item_index, before)

    def explicit_history(self, events: list[tuple[str, int, str | None]], before: int | None) -> Sequence:
        return self.pipeline.explicit_sequence(events, self.item_index, before)

    def retrieval_query(self, user: str, before: int | None = None) -> np.ndarray:
        """Recent items of every channel (a like or a purchase says as much as a view), oldest first."""
        n = self.retrieval_history
        s = self.seed(user, before)
        online = self.state.recent(user, n, before=before)
        o_items = self.item_index([e.item or "" for e in online]) if online else np.zeros(0, np.int64)
        o_times = np.array([e.time for e in online], dtype=np.int64)
        known = o_items > 0
        items = np.concatenate([s.items[-n:], o_items[known]])
        times = np.concatenate([s.times[-n:], o_times[known]])
        return items[np.argsort(times, kind="stable")][-n:]

    # context features
    def context_codes(self, features: dict, item_features: dict, names: list[str]) -> dict[str, np.ndarray]:
        """(C,) codes of each context feature for candidates `names`: the candidate's own value
        (`item_features`), else the request's (`features`), else 0 (unknown), as offline for unseen values."""
        out = {}
        for name, voc in self.pipeline.context.items():
            values = [str(item_features.get(n, {}).get(name, features.get(name, ""))) for n in names]
            out[name] = voc.lookup(values).astype(np.int64)
        return out

    def check_context(self, features: dict, item_features: dict) -> list[dict]:
        """Validation errors (422) for context feature names the model does not read."""
        known = set(self.pipeline.context)
        msg = f"unknown context feature; the model reads {sorted(known) or 'none'}"
        locs = [("features", n) for n in features] + [("item_features", item, n)
                                                      for item, feats in item_features.items() for n in feats]
        return [{"loc": ("body", "context", *loc), "msg": msg, "type": "value_error"}
                for loc in locs if loc[-1] not in known]

    # the ranker
    @torch.inference_mode()
    def score(self, user: str | None, seq: Sequence, t: int, candidates: np.ndarray, before: int | None = None,
              context: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits (ctr) or scores (topk) of candidate item rows for a user (raw id; None: unknown, without
        online state) with sequence `seq` at time `t`."""
        uidx = self.user_index(user) if user is not None else 0
        with self.lock.read():  # a registration does not change the item tables under a request
            graph = None
            if self.pipeline.graph is not None:
                group = self.pipeline.item_table.categorical[self.pipeline.graph.group_feature]
                graph = self.pipeline.graph_request(uidx, self.fetch(user) if user is not None else None,
                                                    self.item_index, group, candidates, before)
            # a copy per request: the pipeline points the collator at this request's one-user history, and
            # requests of other threads must not see it
            batch = self.pipeline.request(copy.copy(self.collate), uidx, seq, t, candidates, context, graph)
            out = self.model(batch).float().reshape(-1).numpy().astype(np.float64)
            # an item the model knows nothing about (an unknown id, an item registered with an id only) gets the
            # user's prior, as offline, not an extrapolation from inputs no training batch held
            blank = self.pipeline.uninformed(candidates, self.pipeline.item_table)
            if blank.any():
                out[blank] = self._prior(uidx, user, seq, t, before, context, blank)
        return out

    def _prior(self, uidx, user, seq, t, before, context, blank) -> float:
        """ctr: the mean probability (as a logit) of the user's request with each of the pipeline's probe items as
        the candidate, with the request's context of the first unknown candidate; top-K: -inf (never ranked)."""
        probes = self.pipeline.prior_items()
        if self.pipeline.settings.task != "ctr" or not len(probes):
            return float("-inf")
        j = int(np.flatnonzero(blank)[0])
        ctx = {name: np.full(len(probes), codes[j], np.int64) for name, codes in (context or {}).items()}
        graph = None
        if self.pipeline.graph is not None:
            group = self.pipeline.item_table.categorical[self.pipeline.graph.group_feature]
            graph = self.pipeline.graph_request(uidx, self.fetch(user) if user is not None else None,
                                                self.item_index, group, probes, before)
        batch = self.pipeline.request(copy.copy(self.collate), uidx, seq, t, probes, ctx, graph)
        return float(self.pipeline.prior_of(self.model(batch).float().reshape(1, -1).numpy().astype(np.float64))[0])

    def retrieve(self, query_items: np.ndarray, n: int, exclude: set[int],
                 among: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Candidates (see `serve.retrieval`); `among`: only these rows (the live rooms' registered items)."""
        with self.lock.read():
            if among is not None:
                return self.retriever.retrieve_among(query_items, n, exclude, among)
            return self.retriever.retrieve(query_items, n, exclude)
