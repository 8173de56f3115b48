"""`FeaturePipeline`: everything fitted from the data that turns events into model inputs, saved with the run.

Fitted once on the training period (`tasks` decide what the training period is):
- the user and item vocabularies: the catalogue (users / items tables) plus the ids of the training
  period's events; an id first seen later is unknown (index 0), as it is for a service;
- the item and user side tables with the maps from raw values to their codes (`side.fit_side`);
- per-sample context codes (values of the training samples only) and the training statistics the models
  read (item counts, smoothed positive rates, user counts);
- the history builder's settings: sample and history channels, action tags, the label rule, the history
  length, the leakage rule (a sample's history holds the user's events strictly before it);
- the graph features (GIE) fitted on the training period's edge events.

Saved under `RUN/pipeline/` in open formats (Parquet, JSON, safetensors; never pickle) and loaded by every
later step: evaluation, `modalrec predict`, export, and the service.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file, save_file

from ..data.batch import Batch, GraphInputs
from ..data.errors import DataError, Problem
from ..models.base import Schema
from .collate import Collator
from .graph import MAX_ONLINE_EDGES, GraphFeatures
from .history import History
from .side import FeatureMaps, SideSizes, SideTable
from .vocab import Vocab

FORMAT = "modalrec-pipeline"
PRIOR_PROBES = 64  # items drawn from the training targets whose mean score is an unknown item's
VERSION = 1
_STAT_FIELDS = ("item_counts", "item_positive_rate", "user_counts", "prior_items")


class Sequence(NamedTuple):
    """One user's behaviour sequence as the ranker reads it, chronological: item rows, times (seconds) and
    action tag codes (zeros for an untagged history)."""

    items: np.ndarray
    times: np.ndarray
    tags: np.ndarray

    @classmethod
    def empty(cls) -> Sequence:
        z = np.zeros(0, np.int64)
        return cls(z, z, z)


class OnlineEvent(NamedTuple):
    """An event a service stored for a user (what `fetch` returns): raw item id, time, channel, value."""

    item: str | None
    time: int
    channel: str
    value: float | None


# fetch(channels or None for every channel, at most n events, before time or None, since time or None) -> the
# user's latest stored events strictly before `before`, oldest first (with `since`, the caller may answer []
# when it knows of no event at or after it): how the pipeline reads a user's online state without knowing where
# it is kept
Fetch = Callable[..., list[OnlineEvent]]


@dataclass
class PipelineSettings:
    """The history builder and label rule (JSON-serialisable)."""

    task: str
    max_history: int
    sample_channels: list[str] | None = None
    history_channels: list[str] | None = None  # None: every channel
    history_tags: dict[str, int] = field(default_factory=dict)  # channel -> action tag code (empty: untagged)
    history_positive_only: bool = False
    label_column: str = "label"
    label_threshold: float | None = None
    with_time: bool = False
    token_scope: str = "all"
    context_features: list[str] = field(default_factory=list)
    time_range: list[float] | None = None  # the data's plausible event times (None: the default range)
    # how raw content became the vectors the model reads: the run's content encoding settings (`data.encode`,
    # None: none ran) and every modality of the data it was fitted on (raw and encoded, with the encoder and
    # version that made each vector modality), so new raw content is encoded exactly as training's was
    content: dict | None = None

    def time_rule(self):
        """The plausible range of event times (`data.timerange.TimeRange`) online events are checked against."""
        from ..data.timerange import DEFAULT_TIME_RANGE, TimeRange

        return DEFAULT_TIME_RANGE if self.time_range is None else TimeRange(*self.time_range)


@dataclass
class FeaturePipeline:
    settings: PipelineSettings
    users: Vocab
    items: Vocab
    item_table: SideTable
    item_maps: FeatureMaps
    item_sizes: SideSizes
    user_table: SideTable = field(default_factory=SideTable)
    user_maps: FeatureMaps = field(default_factory=FeatureMaps)
    user_sizes: SideSizes = field(default_factory=SideSizes)
    context: dict[str, Vocab] = field(default_factory=dict)
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    graph: GraphFeatures | None = None
    # task-specific schema parts a task restores itself (multilabel: n_labels, the touchpoint channels)
    schema_extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ schema
    def schema(self) -> Schema:
        s = self.settings
        return Schema(
            task=s.task, n_users=len(self.users), n_items=len(self.items), max_history=s.max_history,
            item_categorical=dict(self.item_sizes.categorical), item_multi=dict(self.item_sizes.multi),
            item_dense=dict(self.item_sizes.dense), item_tokens=dict(self.item_sizes.tokens),
            user_categorical=dict(self.user_sizes.categorical), user_multi=dict(self.user_sizes.multi),
            user_dense=dict(self.user_sizes.dense),
            item_counts=self.stats.get("item_counts"), item_positive_rate=self.stats.get("item_positive_rate"),
            item_code_counts={k.split(".", 1)[1]: v for k, v in self.stats.items() if k.startswith("code_counts.")},
            item_dense_mean={k.split(".", 1)[1]: v for k, v in self.stats.items() if k.startswith("dense_mean.")},
            user_counts=self.stats.get("user_counts"),
            graph_init=self.graph.graph_init() if self.graph is not None else {},
            context_categorical={n: len(v) for n, v in self.context.items()},
            history_tags=dict(s.history_tags), n_labels=int(self.schema_extra.get("n_labels", 0)),
        )

    # ------------------------------------------------------------------------------------- coding events
    def count_codes(self, items: np.ndarray) -> None:
        """What an unknown item reads (`Schema.item_code_counts`, `item_dense_mean`), over the training samples'
        items `items`: the frequency of every categorical code, of every multi-valued value (index 0: samples whose
        list is empty), and the mean vector of every dense modality the training samples always had."""
        t = self.item_table
        for name, codes in t.categorical.items():
            self.stats[f"code_counts.{name}"] = np.bincount(codes[items], minlength=self.item_sizes.categorical[name]
                                                            ).astype(np.float64)
        for name, arr in t.multi.items():
            rows = arr[items]
            counts = np.bincount(rows[rows > 0], minlength=self.item_sizes.multi[name]).astype(np.float64)
            counts[0] = float((rows == 0).all(1).sum())
            self.stats[f"code_counts.{name}"] = counts
        for name, arr in t.dense.items():
            present = np.asarray(t.presence[name][items], dtype=bool)
            if len(items) and present.all():
                self.stats[f"dense_mean.{name}"] = np.asarray(arr[items], dtype=np.float64).mean(0)

    def uninformed(self, rows: np.ndarray, table: SideTable | None = None) -> np.ndarray:
        """(n,) bool: item rows the model knows nothing about: no id it was trained with (row 0, or a row
        registered after training) and not one side feature, content value or token of their own. Such an item
        is scored by the prior (ctr: the user's mean score over `prior_items`; top-K: never ranked), never by a model
        extrapolating from an input no training batch held (an unknown id, a new item registered with an id only)."""
        table = table if table is not None else self.item_table
        rows = np.asarray(rows, dtype=np.int64)
        out = (rows == 0) | (rows >= len(self.items))
        if self.settings.task != "ctr":
            return rows == 0  # top-K: an item without a row of the model's is never ranked (the model says so)
        if not out.any():
            return out
        sel = np.flatnonzero(out)
        r = rows[sel]
        has = np.zeros(len(r), dtype=bool)
        for arr in table.categorical.values():
            has |= np.asarray(arr[r]) > 0
        for arr in table.multi.values():
            has |= (np.asarray(arr[r]) > 0).any(1)
        for arr in table.presence.values():
            has |= np.asarray(arr[r], dtype=bool)
        for arr in table.token_mask.values():
            has |= np.asarray(arr[r], dtype=bool).any(1)
        out[sel] = ~has
        return out

    def count_codes_from(self, item_counts: np.ndarray) -> None:
        """`count_codes` from the training targets' count of every item row (`item_counts`): the same numbers,
        reduced over partitions."""
        t, w = self.item_table, np.asarray(item_counts, dtype=np.float64)
        for name, codes in t.categorical.items():
            self.stats[f"code_counts.{name}"] = np.bincount(np.asarray(codes), weights=w,
                                                            minlength=self.item_sizes.categorical[name])
        for name, arr in t.multi.items():
            arr = np.asarray(arr)
            slots = np.repeat(w, arr.shape[1]).reshape(arr.shape)
            filled = arr > 0
            counts = np.bincount(arr[filled], weights=slots[filled], minlength=self.item_sizes.multi[name])
            counts[0] = float(w[~filled.any(1)].sum())
            self.stats[f"code_counts.{name}"] = counts
        for name, arr in t.dense.items():
            present = np.asarray(t.presence[name], dtype=bool)
            used = w > 0
            if used.any() and present[used].all():
                self.stats[f"dense_mean.{name}"] = _weighted_mean(arr, w, used)

    def fit_prior_from(self, item_counts: np.ndarray, n: int = PRIOR_PROBES, seed: int = 0) -> None:
        """`fit_prior` from the training targets' count of every item row: `n` probes drawn in proportion."""
        w = np.asarray(item_counts, dtype=np.float64).copy()
        w[0] = 0.0
        if w.sum() > 0:
            pick = np.random.default_rng(seed).choice(len(w), size=n, p=w / w.sum())
            self.stats["prior_items"] = np.sort(pick).astype(np.float64)

    def prior_items(self) -> np.ndarray:
        """ctr: the probe items of the prior (`fit_prior`): what an item the model knows nothing about is taken to
        be, a target drawn at random from the training samples."""
        return np.asarray(self.stats.get("prior_items", np.zeros(0)), dtype=np.int64)

    def fit_prior(self, items: np.ndarray, n: int = PRIOR_PROBES, seed: int = 0) -> None:
        """Draws the prior's probe items among the training samples' targets (so in proportion to how often each
        was a target)."""
        items = np.asarray(items, dtype=np.int64)
        items = items[items > 0]
        if len(items):
            pick = np.random.default_rng(seed).choice(len(items), size=min(n, len(items)), replace=False)
            self.stats["prior_items"] = np.sort(items[pick]).astype(np.float64)

    @staticmethod
    def prior_of(probe_logits: np.ndarray) -> np.ndarray:
        """(n, P) logits of n users' samples against the P probe items -> (n,) the logit of the mean probability:
        the user's expected score of an item drawn at random, the score of an item the model knows nothing about."""
        p = np.clip((1.0 / (1.0 + np.exp(-probe_logits))).mean(-1), 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))

    def history_channels(self) -> list[str] | None:
        s = self.settings
        return s.history_channels or s.sample_channels

    def tag_codes(self, channels: np.ndarray) -> np.ndarray | None:
        """(n,) tag code of each event's channel (0: a channel the history does not tag); None: untagged."""
        codes = self.settings.history_tags
        if not codes:
            return None
        # a hash factorisation (np.unique sorted Python strings: most of a large preparation's time)
        inverse, names = pd.factorize(np.asarray(channels, dtype=object).reshape(-1))
        lookup = np.array([codes.get(str(c), 0) for c in names] + [0], dtype=np.int64)  # -1 (empty): the last, 0
        return lookup[inverse]

    @staticmethod
    def label_rule(raw: np.ndarray, threshold: float | None) -> np.ndarray:
        """The label column as is (0/1) or thresholded (e.g. rating >= 4)."""
        return ((raw >= threshold) if threshold is not None else raw).astype(np.float32)

    def labels(self, raw: np.ndarray) -> np.ndarray:
        return self.label_rule(raw, self.settings.label_threshold)

    def context_codes(self, table: pa.Table, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-row codes of the context features from an events table (0: empty or unseen in training)."""
        from .context import context_strings

        out = {}
        for name, vocab in self.context.items():
            col = table[name] if rows is None else table[name].take(pa.array(rows, pa.int64()))
            out[name] = vocab.lookup(context_strings(col, name))
        return out

    def collator(self, history: History, user_rows: np.ndarray | None, inputs: frozenset[str] | None = None,
                 item_table: SideTable | None = None, n_model_items: int | None = None,
                 target_tokens: bool = True) -> Collator:
        s = self.settings
        return Collator(history, item_table if item_table is not None else self.item_table, s.max_history,
                        user_rows=user_rows, user_table=self.user_table, with_time=s.with_time,
                        token_scope=s.token_scope, target_tokens=target_tokens, inputs=inputs,
                        n_model_items=n_model_items)

    # ------------------------------------------------------------------------------------------- online
    def online_sequence(self, seed: Sequence, fetch: Fetch, item_rows: Callable[[list[str]], np.ndarray],
                        before: int | None) -> Sequence:
        """The ranker's sequence of a served user: `seed` (their stored history from the run, chronological)
        merged with their online events of the history channels, at most `max_history` long. Events of
        items without a row are cold: left out, as offline for an item the vocabulary does not hold."""
        L = self.settings.max_history
        online = fetch(self.history_channels(), 2 * L, before)
        rows = item_rows([e.item or "" for e in online]) if online else np.zeros(0, np.int64)
        times = np.array([e.time for e in online], dtype=np.int64)
        tags = self.tag_codes(np.array([e.channel for e in online], dtype=object))
        tags = np.zeros(len(rows), np.int64) if tags is None else tags
        known = rows > 0
        if before is not None:
            keep = seed.times < before
            seed = Sequence(seed.items[keep], seed.times[keep], seed.tags[keep])
        return self.merge(seed, Sequence(rows[known], times[known], tags[known]))

    def explicit_sequence(self, events: list[tuple[str, int, str | None]],
                          item_rows: Callable[[list[str]], np.ndarray], before: int | None) -> Sequence:
        """A request's own history: (item, time, channel) events; no channel: the first history channel."""
        rows = item_rows([i for i, _, _ in events]) if events else np.zeros(0, np.int64)
        times = np.array([t for _, t, _ in events], dtype=np.int64)
        first = next(iter(self.settings.history_tags), "")
        tags = self.tag_codes(np.array([c or first for _, _, c in events], dtype=object))
        tags = np.zeros(len(rows), np.int64) if tags is None else tags
        keep = rows > 0
        if before is not None:
            keep &= times < before
        return self.merge(Sequence.empty(), Sequence(rows[keep], times[keep], tags[keep]))

    def merge(self, seed: Sequence, online: Sequence) -> Sequence:
        items, times, tags = (np.concatenate([a, b]).astype(np.int64) for a, b in zip(seed, online))
        order = np.argsort(times, kind="stable")[-self.settings.max_history:]  # equal times: seed events first
        return Sequence(items[order], times[order], tags[order])

    def graph_request(self, user: int, fetch: Fetch | None, item_rows: Callable[[list[str]], np.ndarray],
                      group_of: np.ndarray, candidates: np.ndarray, before: int | None) -> GraphInputs | None:
        """The graph inputs of a request: the user's expansion with their edge events since the graph's end."""
        g = self.graph
        if g is None:
            return None
        new_groups = new_amounts = None
        if fetch is not None:
            events = [e for e in fetch([g.channel], MAX_ONLINE_EDGES, before, g.edges_before)
                      if e.time >= g.edges_before and e.item is not None]
            if events:
                codes = group_of[item_rows([e.item for e in events])]
                amounts = g.amounts([e.value for e in events])
                keep = codes > 0  # edges to items without a row (or without a group) are not edges
                new_groups, new_amounts = codes[keep], amounts[keep]
        return g.request(user, group_of[candidates], new_groups, new_amounts)

    def request(self, collate: Collator, user: int, seq: Sequence, t: int, candidates: np.ndarray,
                context: dict[str, np.ndarray] | None = None, graph: GraphInputs | None = None) -> Batch:
        """The batch of a service request: one user (vocabulary row) with sequence `seq` at time `t` against
        C candidate item rows: a (C,) ctr batch, or for topk one row with the candidates as its (1, C) slate."""
        n = len(seq.items)
        items, times, tags = seq
        if n == 0:  # one padding event beyond the cut: the window masks it, as offline for a user's first sample
            items, times = np.zeros(1, np.int64), np.full(1, t, np.int64)
            tags = np.zeros(1, np.int64)
        hist = History.of_one(items, times, tags if self.settings.history_tags else None)
        collate.history = hist
        cand = candidates.astype(np.int64)
        if self.settings.task == "ctr":
            c = len(cand)
            ctx = context or {}
            ctx = {name: np.asarray(ctx.get(name, np.zeros(c, np.int64)), np.int64) for name in self.context}
            return collate(np.zeros(c, np.int64), cand, np.full(c, n, np.int64), np.full(c, t, np.int64),
                           user_rows=np.full(c, user, np.int64), context=ctx, graph=graph)
        batch = collate(np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([n]), np.array([t]),
                        user_rows=np.array([user], np.int64))
        import torch

        batch.candidates = torch.from_numpy(cand).view(1, -1)
        if collate.n_model_items is not None:
            batch.candidates = batch.candidates.masked_fill(batch.candidates >= collate.n_model_items, 0)
        return batch

    # ------------------------------------------------------------------------------------- persistence
    def save(self, folder: str | os.PathLike) -> dict[str, str]:
        """Writes the pipeline to `folder` (created); returns {relative file: sha256}."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _ids(folder / "users.parquet", self.users)
        _ids(folder / "items.parquet", self.items)
        save_file(self.item_table.arrays(), str(folder / "item_table.safetensors"))
        if self.user_table:
            save_file(self.user_table.arrays(), str(folder / "user_table.safetensors"))
        stats = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float64)) for k, v in self.stats.items() if v is not None}
        extra_arrays = {k: np.ascontiguousarray(v) for k, v in self.schema_extra.get("arrays", {}).items()}
        save_file(stats | {f"extra.{k}": v for k, v in extra_arrays.items()}, str(folder / "stats.safetensors"))
        meta = {
            "format": FORMAT, "version": VERSION, "settings": self.settings.__dict__,
            "item_maps": self.item_maps.to_json(), "user_maps": self.user_maps.to_json(),
            "item_sizes": _sizes_json(self.item_sizes), "user_sizes": _sizes_json(self.user_sizes),
            "context": {n: v.ids for n, v in self.context.items()},
            "schema_extra": {k: v for k, v in self.schema_extra.items() if k != "arrays"},
            "graph": self.graph is not None,
        }
        if self.graph is not None:
            self.graph.save(folder / "graph")
        (folder / "pipeline.json").write_text(json.dumps(meta, indent=1, allow_nan=False))
        return hash_tree(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, hashes: dict[str, str] | None = None) -> FeaturePipeline:
        """Reads a saved pipeline; with `hashes` (from the run's manifest) every file is verified first."""
        folder = Path(folder)
        meta_file = folder / "pipeline.json"
        if not meta_file.is_file():
            raise DataError(Problem(str(meta_file), None, None, "a feature pipeline saved with the run "
                                    "(modalrec train writes RUN/pipeline/)", "no such file"))
        if hashes:
            verify_tree(folder, hashes)
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError as e:
            raise DataError(Problem(str(meta_file), None, None, "JSON", str(e).splitlines()[0])) from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(Problem(str(meta_file), None, "format", f"{FORMAT} version {VERSION}",
                                    f"{meta.get('format')} version {meta.get('version')}"))
        stats_raw = load_file(str(folder / "stats.safetensors"))
        extra = dict(meta.get("schema_extra", {}))
        arrays = {k[len("extra."):]: v for k, v in stats_raw.items() if k.startswith("extra.")}
        if arrays:
            extra["arrays"] = arrays
        user_file = folder / "user_table.safetensors"
        return cls(
            settings=PipelineSettings(**meta["settings"]),
            users=_read_ids(folder / "users.parquet"), items=_read_ids(folder / "items.parquet"),
            item_table=SideTable.from_arrays(load_file(str(folder / "item_table.safetensors")),
                                             str(folder / "item_table.safetensors")),
            item_maps=FeatureMaps.from_json(meta["item_maps"]), item_sizes=_sizes_of(meta["item_sizes"]),
            user_table=(SideTable.from_arrays(load_file(str(user_file)), str(user_file)) if user_file.is_file()
                        else SideTable()),
            user_maps=FeatureMaps.from_json(meta["user_maps"]), user_sizes=_sizes_of(meta["user_sizes"]),
            context={n: Vocab(v) for n, v in meta.get("context", {}).items()},
            stats={k: v for k, v in stats_raw.items() if k in _STAT_FIELDS or k.startswith(("code_counts.", "dense_mean."))},
            graph=GraphFeatures.load(folder / "graph") if meta.get("graph") else None,
            schema_extra=extra,
        )


def _sizes_json(s: SideSizes) -> dict:
    return {"categorical": s.categorical, "multi": s.multi, "dense": s.dense,
            "tokens": {n: list(v) for n, v in s.tokens.items()}}


def _sizes_of(raw: dict) -> SideSizes:
    return SideSizes(dict(raw.get("categorical", {})), dict(raw.get("multi", {})), dict(raw.get("dense", {})),
                     {n: (int(v[0]), int(v[1])) for n, v in raw.get("tokens", {}).items()})


def _ids(path: Path, vocab: Vocab) -> None:
    pq.write_table(pa.table({"id": vocab.array}), path)


def _read_ids(path: Path) -> Vocab:
    return Vocab(pq.read_table(path)["id"])


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def verify_tree(folder: Path, hashes: dict[str, str]) -> None:
    """Every listed file exists with its sha256; names the first that does not."""
    for name, digest in hashes.items():
        p = folder / name
        if not p.is_file():
            raise DataError(Problem(str(p), None, None, "a file listed in the run's manifest", "no such file"))
        found = sha256_of(p)
        if found != digest:
            raise DataError(Problem(str(p), None, None, f"sha256 {digest} (manifest.json)",
                                    f"sha256 {found}: the file is corrupt or was modified"))


def _weighted_mean(arr, w: np.ndarray, used: np.ndarray, rows: int = 1 << 18) -> np.ndarray:
    """sum(w[i] * arr[i] for used i) / sum(w), in float64, a slice of rows at a time (a float64 copy of 6.56M
    128-d vectors would be 6.7 GB)."""
    total = np.zeros(arr.shape[1], dtype=np.float64)
    for a in range(0, len(w), rows):
        u = used[a:a + rows]
        if u.any():
            total += (np.asarray(arr[a:a + rows][u], np.float64) * w[a:a + rows][u, None]).sum(0)
    return total / w.sum()
