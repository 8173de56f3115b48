"""What every task shares: the coded event log, sample sets, the fitted pipeline, persistence and the loader.

A task turns `InteractionData` into a `PreparedTask`: it decides the split protocol and so the training
period, fits the `FeaturePipeline` on that period (`modalrec.pipeline`), and holds the train/valid/test
`SampleSet`s (compact arrays: a sample is a user, an item, a time and how many of the user's history events
precede it) and the `History` they read. The task also owns the loss and the evaluation protocol, so any
model can be trained and judged by the same Trainer.

Two user index spaces meet here: the event log's users (every user of the data: the rows of `History` and
`SampleSet.users`, so a user the vocabulary does not know still has a history) and the pipeline's user
vocabulary (the model's ids and the user side table), joined by `user_rows`. Items are pipeline rows
throughout (0: an item the vocabulary does not hold; such events are left out of histories, as a service
leaves them out).

`save(folder)` writes what evaluation and prediction need besides the pipeline (the samples, their raw ids
and the history) to `RUN/data/`, and `TASKS[kind].load(run_dir, cfg)` restores the task from the run
directory alone, without the raw data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..config import TaskConfig
from ..data.batch import Batch
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..models.base import Schema
from ..pipeline import Collator, FeaturePipeline, History, PipelineSettings, Vocab, fit_side, hash_tree
from .store import SampleIds, read_arrays, write_arrays, write_task_json

DATA_DIR = "data"
PIPELINE_DIR = "pipeline"


def event_times(events: pa.Table) -> np.ndarray:
    t = events["time"]
    if pa.types.is_timestamp(t.type):
        t = pc.cast(pc.cast(t, pa.timestamp("s")), pa.int64())
    return t.to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class EventLog:
    """Events with integer ids, sorted by (user, time) (stable), plus the log vocabularies: every user and
    item id of the data (the pipeline's vocabularies hold only the training period's)."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    channels: np.ndarray
    table: pa.Table  # events in the same (sorted) order
    user_vocab: Vocab
    item_vocab: Vocab

    @classmethod
    def of(cls, data: InteractionData) -> EventLog:
        return cls.of_table(data.events)

    @classmethod
    def of_table(cls, ev: pa.Table) -> EventLog:
        """The events of one table (a partition of users, or all), with the users and items it names."""
        if ev.num_rows == 0:
            raise DataError(Problem("events", None, None, "at least one event", "an empty table"))
        uv = Vocab(pc.unique(ev["user_id"]))
        iv = Vocab(pc.unique(ev["item_id"]))
        users = uv.lookup(ev["user_id"])
        items = iv.lookup(ev["item_id"])
        times = event_times(ev)
        order = np.lexsort((np.arange(len(times)), times, users))  # stable within equal times
        return cls(users=users[order], items=items[order], times=times[order],
                   channels=np.asarray(ev["channel"].to_numpy(zero_copy_only=False))[order],
                   table=ev.take(pa.array(order)), user_vocab=uv, item_vocab=iv)


def channel_mask(channels: np.ndarray, wanted: list[str] | None) -> np.ndarray:
    if wanted is None:
        return np.ones(len(channels), dtype=bool)
    return np.isin(channels, np.asarray(wanted, dtype=object))


def fit_pipeline(data, cfg: TaskConfig, train_users: pa.Array, train_items: pa.Array, settings: PipelineSettings,
                 texts: dict[str, tuple[list[str], list[str]]] | None = None) -> FeaturePipeline:
    """The pipeline's vocabularies and side tables, fitted on the catalogue (items / users tables and their
    content) and the ids of the training period's events: the catalogue's ids in its order, then the others
    sorted (the same vocabulary however the events were partitioned)."""

    def vocab(table, key: str, ids: pa.Array) -> Vocab:
        known = table[key].combine_chunks().cast(pa.string()) if table is not None else pa.array([], pa.string())
        known = pc.unique(known)
        rest = pc.unique(ids.cast(pa.string()))
        rest = rest.filter(pc.invert(pc.is_in(rest, value_set=known)))
        return Vocab(pa.concat_arrays([known, pc.take(rest, pc.sort_indices(rest))]))

    user_vocab, item_vocab = vocab(data.users, "user_id", train_users), vocab(data.items, "item_id", train_items)
    item_table, item_maps, item_sizes = fit_side(
        data, "item", item_vocab, text_modalities=cfg.text_modalities, max_words=cfg.max_words,
        vector_modalities=cfg.vector_modalities, token_modalities=cfg.token_modalities, max_tokens=cfg.max_tokens,
        event_texts=texts)
    user_table, user_maps, user_sizes = fit_side(
        data, "user", user_vocab, text_modalities=cfg.text_modalities, max_words=cfg.max_words,
        vector_modalities=cfg.vector_modalities) if cfg.user_features else (None, None, None)
    settings.time_range = data.spec.time_range
    pipeline = FeaturePipeline(settings, user_vocab, item_vocab, item_table, item_maps, item_sizes)
    if user_table is not None:
        pipeline.user_table, pipeline.user_maps, pipeline.user_sizes = user_table, user_maps, user_sizes
    return pipeline


def event_texts(texts: list, cfg: TaskConfig) -> dict[str, tuple[list[str], list[str]]]:
    """The item texts `task.event_text` asks for, from the training period's text events (`texts`: per partition
    (modality, item ids, times, values)): per item, the distinct values (case-insensitive, the first occurrence in
    time order, then by value, kept) joined with ', '."""
    out = {}
    for spec in cfg.event_text:
        parts = [t for t in texts if t[0] == spec.modality]
        items = np.concatenate([np.asarray(t[1].to_numpy(zero_copy_only=False), dtype=object) for t in parts]) \
            if parts else np.zeros(0, object)
        times = np.concatenate([t[2] for t in parts]) if parts else np.zeros(0, np.int64)
        values = np.concatenate([t[3] for t in parts]) if parts else np.zeros(0, object)
        order = np.lexsort((values.astype(str), times))
        seen: dict[str, dict[str, str]] = {}
        for item, value in zip(items[order], values[order]):
            seen.setdefault(item, {}).setdefault(value.strip().lower(), value.strip())
        out[spec.modality] = (list(seen), [", ".join(v.values()) for v in seen.values()])
    return out


@dataclass
class SampleSet:
    users: np.ndarray  # rows of the event log's users (History rows)
    items: np.ndarray  # rows of the pipeline's item vocabulary (0: unknown)
    times: np.ndarray
    cut: np.ndarray  # how many history events of the user precede the sample
    labels: np.ndarray | None = None
    groups: np.ndarray | None = None  # optional per-sample group label for breakdowns
    # ctr: per-sample categorical context codes (name -> (n,) int64, 0 = unknown)
    context: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def take(self, idx: np.ndarray) -> SampleSet:
        return SampleSet(
            self.users[idx], self.items[idx], self.times[idx], self.cut[idx],
            None if self.labels is None else self.labels[idx],
            None if self.groups is None else self.groups[idx],
            {name: codes[idx] for name, codes in self.context.items()},
        )

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"users": self.users, "items": self.items, "times": self.times, "cut": self.cut}
        if self.labels is not None:
            out["labels"] = self.labels
        if self.groups is not None:
            out["groups"] = self.groups
        out |= {f"context.{n}": c for n, c in self.context.items()}
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> SampleSet:
        return cls(a["users"], a["items"], a["times"], a["cut"], a.get("labels"), a.get("groups"),
                   {k[len("context."):]: v for k, v in a.items() if k.startswith("context.")})


def batch_indices(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
                  world: int = 1, bounds: list[int] | None = None, start: int = 0) -> Iterator[np.ndarray]:
    """The batches of one process for one epoch; `start` skips that many steps (a resumed epoch) without
    building them.

    One shard (data prepared in memory): global batches of `batch_size` from one permutation of all samples;
    under DDP each rank takes its contiguous share of every batch, so the averaged gradient equals the
    single-process gradient of the same global batch.

    Several shards (`bounds`: the sample range of each partition, memory-mapped): the shards come in a seeded
    order and each is permuted on its own (the shuffle buffer is one shard's sample indices), so a batch reads
    one shard's rows. Under DDP the epoch's order is cut into `world` contiguous ranges: each rank streams its own
    shards (disjoint but for the one at each cut), in ceil(n / batch_size) steps on every rank."""
    steps = -(-n // batch_size)
    if bounds is None or len(bounds) <= 2:
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        for b in range(start, steps):
            yield from _share(order[b * batch_size:(b + 1) * batch_size], rank, world)
        return
    lo, hi = np.asarray(bounds[:-1], dtype=np.int64), np.asarray(bounds[1:], dtype=np.int64)
    shard_order = np.random.default_rng([seed, epoch]).permutation(len(lo)) if shuffle else np.arange(len(lo))
    sizes = (hi - lo)[shard_order]
    first = np.concatenate([[0], np.cumsum(sizes)])  # where each shard starts in the epoch's order
    cut = np.linspace(0, n, world + 1).round().astype(np.int64)  # this rank's range of the epoch's order
    if world == 1:  # batches of batch_size, the last one shorter
        lens = np.minimum(batch_size, n - batch_size * np.arange(steps))
    else:  # the rank's range in `steps` near-equal batches
        lens = np.diff(np.linspace(0, cut[rank + 1] - cut[rank], steps + 1).round().astype(np.int64))
    ends = cut[rank] + np.cumsum(lens)  # each step's end in the epoch's order
    shard, perm, buf = -1, None, []
    for step in range(steps):
        if step < start:
            continue
        a, z = int(ends[step] - lens[step]), int(ends[step])
        while a < z:  # the step's positions, shard by shard
            k = int(np.searchsorted(first, a, side="right") - 1)
            if k != shard:
                shard = k
                size = int(sizes[k])
                perm = (np.random.default_rng([seed, epoch, int(shard_order[k])]).permutation(size) if shuffle
                        else np.arange(size)) + lo[shard_order[k]]
            take = min(z, int(first[k + 1])) - a
            buf.append(perm[a - first[k]:a - first[k] + take])
            a += take
        if buf:
            chunk = np.concatenate(buf)
            buf = []
            if len(chunk):
                yield chunk


def _share(chunk: np.ndarray, rank: int, world: int) -> Iterator[np.ndarray]:
    chunk = np.array_split(chunk, world)[rank] if world > 1 else chunk
    if len(chunk):
        yield chunk


class PreparedTask:
    """A task bound to one dataset: the fitted pipeline, samples, history, loss and evaluation."""

    kind: str = ""
    monitor: str = ""
    higher_is_better: bool = True
    split_methods: tuple[str, ...] = ()
    pipeline: FeaturePipeline
    schema: Schema
    collator: Collator
    history: History
    log_users: Vocab  # the event log's users: rows of `history` and of SampleSet.users
    user_rows: np.ndarray  # (len(log_users),) each log user's row in the pipeline's user vocabulary (0: unknown)
    splits: dict[str, SampleSet]
    # each split's samples as raw ids (user_id, item_id, time, and a release's row id when the events have
    # one): what `modalrec predict` writes next to its scores
    sample_ids: SampleIds | dict[str, pa.Table]
    group_names: dict[str, list[str]]

    @classmethod
    def check_split(cls, cfg: TaskConfig) -> None:
        if cfg.split.method is None:
            cfg.split.method = cls.split_methods[0]
        if cls.split_methods and cfg.split.method not in cls.split_methods:
            raise DataError(Problem("task.split.method", None, None,
                                    f"a split protocol of the '{cls.kind}' task: {', '.join(cls.split_methods)}",
                                    repr(cfg.split.method)))

    @property
    def user_vocab(self) -> Vocab:
        return self.pipeline.users

    @property
    def item_vocab(self) -> Vocab:
        return self.pipeline.items

    def train_size(self) -> int:
        return len(self.splits["train"])

    def bind(self, inputs: frozenset[str] | None) -> None:
        """Batches from now on carry only the fields a model reads (`Model.inputs`; None: every field)."""
        if getattr(self, "collator", None) is not None:
            self.collator.inputs = inputs

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                rank: int = 0, world: int = 1, start: int = 0) -> Iterator[Batch]:
        """A split's batches (`batch_indices`: shard by shard when the task has several); `start` skips
        that many global batches."""
        s = self.splits[split]
        for idx in batch_indices(len(s), batch_size, shuffle, seed, epoch, rank, world, self.shard_bounds(split),
                                 start):
            yield self.collate(s.take(idx), train=(split == "train"), seed=seed, epoch=epoch)

    def collate(self, s: SampleSet, train: bool, seed: int = 0, epoch: int = 0) -> Batch:
        return self.collator(s.users, s.items, s.cut, s.times, s.labels)

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, split: str, batch_size: int) -> tuple[dict, dict]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- persistence
    def meta(self) -> dict:
        """Task-specific JSON state saved with the data (subclasses add theirs)."""
        return {}

    def extra_arrays(self) -> dict[str, np.ndarray]:
        """Task-specific arrays saved with the data (subclasses add theirs)."""
        return {}

    # the folder whose arrays this task reads memory-mapped (RUN/data), or None: they are in memory
    data_dir: Path | None = None
    # split -> [0, end of shard 0, end of shard 1, ...]: the sample range of each partition (one shard in memory)
    shards: dict[str, list[int]] | None = None

    def shard_bounds(self, split: str) -> list[int]:
        b = self.shards.get(split) if self.shards else None
        return list(b) if b else [0, len(self.splits[split])]

    def save(self, run_dir: str | Path) -> dict[str, dict[str, str]]:
        """Writes RUN/pipeline/ and RUN/data/ (`tasks.store`; arrays already written there by a partitioned
        preparation stay as they are); returns their {file: sha256} for the manifest."""
        run_dir = Path(run_dir)
        hashes = {PIPELINE_DIR: self.pipeline.save(run_dir / PIPELINE_DIR)}
        folder = run_dir / DATA_DIR
        folder.mkdir(parents=True, exist_ok=True)
        if self.data_dir is None or Path(self.data_dir).resolve() != folder.resolve():
            write_arrays(folder / "history", self.history.arrays())
            for name, s in self.splits.items():
                write_arrays(folder / "samples" / name, s.arrays())
                (folder / "ids").mkdir(exist_ok=True)
                pq.write_table(self.sample_ids[name], folder / "ids" / f"{name}.parquet")
        pq.write_table(pa.table({"id": self.log_users.array}), folder / "log_users.parquet")
        extra = self.extra_arrays()
        if extra:
            write_arrays(folder / "extra", extra)
        write_task_json(folder, self.kind, list(self.splits), self.meta(),
                        {name: self.shard_bounds(name) for name in self.splits})
        hashes[DATA_DIR] = hash_tree(folder)
        return hashes

    @classmethod
    def load(cls, run_dir: str | Path, cfg: TaskConfig, hashes: dict[str, dict[str, str]] | None = None) -> PreparedTask:
        """The task of a run directory, from RUN/pipeline/ and RUN/data/ alone (files verified against `hashes`;
        arrays memory-mapped)."""
        from ..pipeline import verify_tree

        run_dir = Path(run_dir)
        folder = run_dir / DATA_DIR
        if not (folder / "task.json").is_file():
            raise DataError(Problem(str(folder / "task.json"), None, None, "the prepared data of a run written by "
                                    "`modalrec train` (RUN/data/)", "no such file"))
        hashes = hashes or {}
        pipeline = FeaturePipeline.load(run_dir / PIPELINE_DIR, hashes.get(PIPELINE_DIR))
        if hashes.get(DATA_DIR):
            verify_tree(folder, hashes[DATA_DIR])
        info = json.loads((folder / "task.json").read_text())
        if info.get("kind") != cls.kind:
            raise DataError(Problem(str(folder / "task.json"), None, "kind", f"a {cls.kind} task", repr(info.get("kind"))))
        task = cls.__new__(cls)
        task.cfg = cfg
        task.pipeline = pipeline
        task.data_dir = folder
        task.history = History.from_arrays(read_arrays(folder / "history"))
        task.log_users = Vocab(pq.read_table(folder / "log_users.parquet")["id"])
        task.user_rows = np.r_[0, pipeline.users.lookup(task.log_users.array)].astype(np.int64)
        task.splits = {n: SampleSet.from_arrays(read_arrays(folder / "samples" / n)) for n in info["splits"]}
        task.shards = info.get("shards", {})
        task.sample_ids = SampleIds(folder / "ids", info["splits"])  # read when predictions name them
        task.restore(info.get("meta", {}), read_arrays(folder / "extra", mmap=False))
        return task

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Rebuilds what `__init__` derives besides the saved parts (schema, collator, ...)."""
        self.schema = self.pipeline.schema()
        self.collator = self.pipeline.collator(self.history, self.user_rows)
        self.group_names = {}


def sample_ids(log: EventLog, rows: np.ndarray) -> pa.Table:
    """The raw ids of samples (rows of the sorted event table): user_id, item_id, time, and `row` when the events
    carry a release's row id (a challenge's submission key)."""
    take = pa.array(rows, pa.int64())
    cols = {"user_id": log.table["user_id"].take(take), "item_id": log.table["item_id"].take(take),
            "time": pa.array(log.times[rows], pa.int64())}
    if "row" in log.table.column_names:
        cols["row"] = log.table["row"].take(take)
    return pa.table(cols)
