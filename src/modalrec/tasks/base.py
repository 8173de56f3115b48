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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from safetensors.numpy import load_file, save_file

from ..config import TaskConfig
from ..data.batch import Batch
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..models.base import Schema
from ..pipeline import Collator, FeaturePipeline, History, PipelineSettings, Vocab, fit_side, hash_tree

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
        ev = data.events
        if ev.num_rows == 0:
            raise DataError(Problem("events", None, None, "at least one event", "an empty table"))
        uv = Vocab(pc.unique(ev["user_id"]).to_pylist())
        item_ids = pc.unique(ev["item_id"]).to_pylist()
        if data.items is not None:
            known = data.items["item_id"].to_pylist()
            seen = set(known)
            item_ids = known + [i for i in item_ids if i not in seen]
        iv = Vocab(item_ids)
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


def fit_pipeline(data: InteractionData, cfg: TaskConfig, log: EventLog, train_events: np.ndarray,
                 settings: PipelineSettings) -> tuple[FeaturePipeline, np.ndarray, np.ndarray]:
    """The pipeline's vocabularies and side tables, fitted on the catalogue (items / users tables and their
    content) and the events of the training period (`train_events`, a mask over the log). Returns the
    pipeline and the maps from the log's user and item rows to the pipeline's (0: unknown)."""
    users = list(data.users["user_id"].to_pylist()) if data.users is not None else []
    users += log.user_vocab.take(pd.unique(log.users[train_events])).to_pylist()
    user_vocab = Vocab(list(dict.fromkeys(users)))
    items = list(data.items["item_id"].to_pylist()) if data.items is not None else []
    items += log.item_vocab.take(pd.unique(log.items[train_events])).to_pylist()
    item_vocab = Vocab(list(dict.fromkeys(items)))
    item_table, item_maps, item_sizes = fit_side(
        data, "item", item_vocab, text_modalities=cfg.text_modalities, max_words=cfg.max_words,
        vector_modalities=cfg.vector_modalities, token_modalities=cfg.token_modalities, max_tokens=cfg.max_tokens,
        event_texts=event_texts(log, cfg, train_events))
    user_table, user_maps, user_sizes = fit_side(
        data, "user", user_vocab, text_modalities=cfg.text_modalities, max_words=cfg.max_words,
        vector_modalities=cfg.vector_modalities) if cfg.user_features else (None, None, None)
    settings.time_range = data.spec.time_range
    pipeline = FeaturePipeline(settings, user_vocab, item_vocab, item_table, item_maps, item_sizes)
    if user_table is not None:
        pipeline.user_table, pipeline.user_maps, pipeline.user_sizes = user_table, user_maps, user_sizes
    user_map = np.r_[0, user_vocab.lookup(log.user_vocab.array)].astype(np.int64)
    item_map = np.r_[0, item_vocab.lookup(log.item_vocab.array)].astype(np.int64)
    return pipeline, user_map, item_map


def event_texts(log: EventLog, cfg: TaskConfig, train_events: np.ndarray) -> dict[str, tuple[list[str], list[str]]]:
    """The item texts `task.event_text` asks for, from the training period's events only: per item, the distinct
    values of the column (case-insensitive, first occurrence in time order) joined with ', '."""
    out = {}
    for spec in cfg.event_text:
        if spec.column not in log.table.column_names:
            raise DataError(Problem("events", None, spec.column, f"an event column holding the text of "
                                    f"task.event_text '{spec.modality}'", f"columns {log.table.column_names}"))
        text = np.asarray(log.table[spec.column].to_numpy(zero_copy_only=False), dtype=object)
        rows = np.flatnonzero(train_events & (log.channels == spec.channel)
                              & np.array([isinstance(t, str) and t.strip() != "" for t in text]))
        rows = rows[np.argsort(log.times[rows], kind="stable")]
        seen: dict[str, dict[str, str]] = {}
        for item, value in zip(log.items[rows], text[rows]):
            seen.setdefault(log.item_vocab.ids[item - 1], {}).setdefault(value.strip().lower(), value.strip())
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
                  world: int = 1) -> Iterator[np.ndarray]:
    """Global batches of `batch_size`; under DDP each rank takes its contiguous share of every batch,
    so the averaged gradient equals the single-process gradient of the same global batch."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        if world > 1:
            chunk = np.array_split(chunk, world)[rank]
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
    sample_ids: dict[str, pa.Table]
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
                rank: int = 0, world: int = 1) -> Iterator[Batch]:
        s = self.splits[split]
        for idx in batch_indices(len(s), batch_size, shuffle, seed, epoch, rank, world):
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

    def save(self, run_dir: str | Path) -> dict[str, dict[str, str]]:
        """Writes RUN/pipeline/ and RUN/data/; returns their {file: sha256} for the manifest."""
        run_dir = Path(run_dir)
        hashes = {PIPELINE_DIR: self.pipeline.save(run_dir / PIPELINE_DIR)}
        folder = run_dir / DATA_DIR
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in self.history.arrays().items()},
                  str(folder / "history.safetensors"))
        pq.write_table(pa.table({"id": self.log_users.array}), folder / "log_users.parquet")
        for name, s in self.splits.items():
            save_file(s.arrays(), str(folder / f"samples_{name}.safetensors"))
            pq.write_table(self.sample_ids[name], folder / f"samples_{name}.parquet")
        extra = self.extra_arrays()
        if extra:
            save_file({k: np.ascontiguousarray(v) for k, v in extra.items()}, str(folder / "task.safetensors"))
        (folder / "task.json").write_text(json.dumps({"kind": self.kind, "splits": list(self.splits),
                                                      "meta": self.meta()}, indent=1, allow_nan=False))
        hashes[DATA_DIR] = hash_tree(folder)
        return hashes

    @classmethod
    def load(cls, run_dir: str | Path, cfg: TaskConfig, hashes: dict[str, dict[str, str]] | None = None) -> PreparedTask:
        """The task of a run directory, from RUN/pipeline/ and RUN/data/ alone (files verified against `hashes`)."""
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
        task.history = History.from_arrays(load_file(str(folder / "history.safetensors")))
        task.log_users = Vocab(pq.read_table(folder / "log_users.parquet")["id"])
        task.user_rows = np.r_[0, pipeline.users.lookup(task.log_users.array)].astype(np.int64)
        task.splits = {n: SampleSet.from_arrays(load_file(str(folder / f"samples_{n}.safetensors")))
                       for n in info["splits"]}
        task.sample_ids = {n: pq.read_table(folder / f"samples_{n}.parquet") for n in info["splits"]}
        extra_file = folder / "task.safetensors"
        task.restore(info.get("meta", {}), load_file(str(extra_file)) if extra_file.is_file() else {})
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
