"""What every task shares: id vocabularies, the item side table, sample sets and the loader.

A task turns `InteractionData` into a `PreparedTask`: the model's `Schema`, the train/valid/test
`SampleSet`s (compact arrays: a sample is user, item, time and how many of the user's history
events precede it) and a `Collator` that builds `Batch`es from them. The task also owns the loss and
the evaluation protocol, so any model can be trained and judged by the same Trainer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..config import TaskConfig
from ..data.batch import Batch, Collator, ItemSide
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..models.base import Schema

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(["a", "an", "the", "of", "and", "or", "to", "in", "on", "for", "with", "by", "at", "from", "is", "are", "be", "it", "its", "this", "that"])


@dataclass
class Vocab:
    """Raw id (string) <-> index; index 0 is reserved for padding and unknown ids."""

    ids: list[str]
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {v: i + 1 for i, v in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids) + 1

    def lookup(self, values) -> np.ndarray:
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            codes = pc.index_in(pc.cast(values, pa.string()), value_set=pa.array(self.ids, pa.string()))
            return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        return np.array([self._index.get(str(v), 0) for v in values], dtype=np.int64)

    def id_of(self, index: int) -> str | None:
        return self.ids[index - 1] if 0 < index <= len(self.ids) else None


def _times(events: pa.Table) -> np.ndarray:
    t = events["time"]
    if pa.types.is_timestamp(t.type):
        t = pc.cast(pc.cast(t, pa.timestamp("s")), pa.int64())
    return t.to_numpy(zero_copy_only=False).astype(np.int64)


def _words(text: str | None) -> list[str]:
    if not text:
        return []
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1]


def _put_dense(side: ItemSide, dims: dict[str, int], name: str, n: int, rows: np.ndarray,
               values: np.ndarray) -> None:
    """One dense content modality: `values[i]` belongs to item index `rows[i]` (0 = unknown, skipped);
    items without a row are absent (presence False), their stored zeros never read as data."""
    arr = np.zeros((n, values.shape[1]), dtype=np.float32)
    pres = np.zeros(n, dtype=bool)
    keep = rows > 0
    arr[rows[keep]] = values[keep]
    pres[rows[keep]] = True
    side.dense[name] = arr
    side.presence[name] = pres
    dims[name] = values.shape[1]


def build_item_side(data: InteractionData, items: Vocab, cfg: TaskConfig) -> tuple[ItemSide, Schema]:
    """Side features per item index: categorical, multi-valued, text as bag of words, dense vectors."""
    n = len(items)
    side = ItemSide()
    cat_sizes: dict[str, int] = {}
    multi_sizes: dict[str, int] = {}
    dense_dims: dict[str, int] = {}
    token_dims: dict[str, tuple[int, int]] = {}
    _check_token_modalities(data, cfg)
    if data.items is not None:
        row_idx = items.lookup(data.items["item_id"])
        for f in data.spec.item_features:
            if f.name not in data.items.column_names:
                continue
            col = data.items[f.name]
            if f.kind == "categorical":
                codes, uniq = pd.factorize(pd.Series(col.to_pylist(), dtype=object), use_na_sentinel=True)
                arr = np.zeros(n, dtype=np.int64)
                arr[row_idx] = codes + 1
                side.categorical[f.name] = arr
                cat_sizes[f.name] = len(uniq) + 1
            elif f.kind == "numeric":  # quantile buckets: a categorical the embedding models can read
                vals = pd.to_numeric(pd.Series(col.to_pylist()), errors="coerce").to_numpy(dtype=np.float64)
                ok = np.isfinite(vals)
                arr = np.zeros(n, dtype=np.int64)
                if ok.any():
                    edges = np.unique(np.quantile(vals[ok], np.linspace(0, 1, 11)[1:-1]))
                    arr[row_idx[ok]] = np.searchsorted(edges, vals[ok], side="right") + 1
                side.categorical[f.name] = arr
                cat_sizes[f.name] = 12
            elif f.kind == "multi_categorical":
                lists = col.to_pylist()
                vocab: dict[str, int] = {}
                for lst in lists:
                    for v in lst or []:
                        vocab.setdefault(str(v), len(vocab) + 1)
                k = max(1, min(16, max((len(lst or []) for lst in lists), default=1)))
                arr = np.zeros((n, k), dtype=np.int64)
                for r, lst in zip(row_idx, lists):
                    codes = [vocab[str(v)] for v in (lst or [])][:k]
                    arr[r, : len(codes)] = codes
                side.multi[f.name] = arr
                multi_sizes[f.name] = len(vocab) + 1
    for m in data.spec.modalities:
        if m.entity != "item" or m.name not in data.content:
            continue
        table = data.content[m.name]
        rows = items.lookup(table["entity_id"])
        if m.kind == "text" and (cfg.text_modalities is None or m.name in cfg.text_modalities):
            texts = table["text"].to_pylist()
            if m.multi:  # several texts per item (e.g. viewer comments): one bag over all of them
                texts = [" ".join(t for t in (ts or []) if t) for ts in texts]
            tokenised = [_words(t) for t in texts]
            counts = Counter(w for ws in tokenised for w in set(ws))
            vocab = {w: i + 1 for i, (w, c) in enumerate(sorted(counts.items())) if c >= 2}
            vocab = {w: i + 1 for i, w in enumerate(vocab)}
            arr = np.zeros((n, cfg.max_words), dtype=np.int64)
            for r, ws in zip(rows, tokenised):
                if r == 0:
                    continue
                # most frequent words first would favour stop-like words; keep first occurrences in order
                codes = list(dict.fromkeys(vocab[w] for w in ws if w in vocab))[: cfg.max_words]
                arr[r, : len(codes)] = codes
            name = f"{m.name}_words"
            side.multi[name] = arr
            multi_sizes[name] = len(vocab) + 1
        elif m.kind == "vector" and m.multi and (cfg.token_modalities is None or m.name in cfg.token_modalities):
            tokens, mask, dim = _token_table(table, f"content/{m.name}.parquet", m.dim, rows, n, cfg.max_tokens)
            side.tokens[m.name] = tokens
            side.token_mask[m.name] = mask
            token_dims[m.name] = (int(tokens.shape[1]), dim)
        elif m.kind == "vector" and m.multi and (cfg.vector_modalities is None or m.name in cfg.vector_modalities):
            # not read as tokens: the mean of the item's vectors is its dense content, so every model can use it
            vectors, counts, dim = _vector_lists(table, f"content/{m.name}.parquet", m.dim)
            starts = np.cumsum(counts) - counts
            mean = np.add.reduceat(vectors, starts, axis=0) / counts[:, None] if len(counts) else vectors
            _put_dense(side, dense_dims, m.name, n, rows, mean)
        elif m.kind == "vector" and (cfg.vector_modalities is None or m.name in cfg.vector_modalities):
            vecs = table["vector"]
            dim = m.dim or len(vecs[0].as_py())
            flat = pc.list_flatten(vecs).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
            _put_dense(side, dense_dims, m.name, n, rows, flat)
    schema = Schema(
        task=cfg.kind, n_users=0, n_items=n, max_history=cfg.max_history,
        item_categorical=cat_sizes, item_multi=multi_sizes, item_dense=dense_dims, item_tokens=token_dims,
    )
    return side, schema


def _check_token_modalities(data: InteractionData, cfg: TaskConfig) -> None:
    if cfg.token_modalities is None:
        return
    usable = [m.name for m in data.spec.modalities if m.entity == "item" and m.kind == "vector" and m.multi]
    for name in cfg.token_modalities:
        if name not in usable:
            raise DataError(Problem(
                "task.token_modalities", None, name,
                f"a multi-valued item vector modality of dataset '{data.spec.name}' ({usable or 'it has none'}; "
                "raw frames, speech and comments become vectors through content encoding)",
                repr(name)))


def _vector_lists(table: pa.Table, file: str, dim: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """A multi-valued vector column (a list of equal-length vectors per row) -> (every vector (N, dim) float32
    in row order, vectors per row (rows,), dim). Rows without any vector, vectors of another length and
    non-finite values are errors naming the row: a missing modality is a missing row, never an empty one."""
    col = table["vector"]
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) or not (
            pa.types.is_list(arr.type.value_type) or pa.types.is_large_list(arr.type.value_type)
            or pa.types.is_fixed_size_list(arr.type.value_type)):
        raise DataError(Problem(file, None, "vector", "a list of vectors per row (multi-valued modality)",
                                str(arr.type)))
    counts = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    empty = (counts == 0) | pc.is_null(arr).to_numpy(zero_copy_only=False)
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise DataError(Problem(file, r + 1, "vector", "at least one vector (an entity without any has no row)",
                                f"an empty list ({int(empty.sum())} such row(s))"))
    inner = pc.list_flatten(arr)
    lengths = pc.fill_null(pc.list_value_length(inner), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    want = dim if dim is not None else int(lengths.max())  # the validation names any shorter one
    row_of = np.repeat(np.arange(len(counts)), counts)
    bad = lengths != want
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        found = "an empty value" if lengths[j] < 0 else f"length {int(lengths[j])}"
        raise DataError(Problem(file, int(row_of[j]) + 1, "vector", f"vectors of length {want}",
                                f"{found} (vector {j - int(np.searchsorted(row_of, row_of[j])) + 1} of the row)"))
    values = pc.list_flatten(inner).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, want)
    finite = np.isfinite(values).all(1)
    if not finite.all():
        r = int(row_of[np.flatnonzero(~finite)[0]])
        raise DataError(Problem(file, r + 1, "vector", "finite numbers", "NaN, infinity or an empty number"))
    return values, counts, want


def _token_table(table: pa.Table, file: str, dim: int | None, rows: np.ndarray, n: int,
                 max_tokens: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Padded token table of a multi-valued vector modality: (n, T, dim) float16 holding the first T vectors
    of each item in their stored order (frames in time order, comments as they came), the mask (n, T) bool,
    and dim. T = min(max_tokens, the longest list): a column no item fills would only cost memory here and
    copies in every batch (live-stream frames: 1..3 per segment, so T = 3 rather than 8 for 1280-d
    vectors). Items without a row keep an all-False mask: the modality is absent for them."""
    vectors, counts, dim = _vector_lists(table, file, dim)
    keep = rows > 0  # content of items the events never mention has no index
    kept = np.minimum(counts, max_tokens) * keep
    width = max(1, int(kept.max()) if len(kept) else 1)
    src_row = np.repeat(np.arange(len(counts)), kept)
    slot = np.arange(len(src_row)) - np.repeat(np.cumsum(kept) - kept, kept)
    values = vectors[(np.cumsum(counts) - counts)[src_row] + slot]
    f16 = np.finfo(np.float16).max
    over = np.abs(values).max(1) > f16 if len(values) else np.zeros(0, dtype=bool)
    if over.any():
        r = int(src_row[np.flatnonzero(over)[0]])
        raise DataError(Problem(file, r + 1, "vector", f"values within +-{f16:.0f} (token tables are float16)",
                                f"{float(np.abs(values[over]).max()):.4g}"))
    tokens = np.zeros((n, width, dim), dtype=np.float16)
    mask = np.zeros((n, width), dtype=bool)
    tokens[rows[src_row], slot] = values
    mask[rows[src_row], slot] = True
    return tokens, mask, dim


@dataclass
class Encoded:
    """Events with integer ids, sorted by (user, time), plus the vocabularies."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    channels: np.ndarray
    table: pa.Table  # events in the same (sorted) order
    user_vocab: Vocab
    item_vocab: Vocab


def encode_events(data: InteractionData) -> Encoded:
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
    times = _times(ev)
    order = np.lexsort((np.arange(len(times)), times, users))  # stable within equal times
    return Encoded(
        users=users[order], items=items[order], times=times[order],
        channels=np.asarray(ev["channel"].to_numpy(zero_copy_only=False))[order],
        table=ev.take(pa.array(order)), user_vocab=uv, item_vocab=iv,
    )


def channel_mask(channels: np.ndarray, wanted: list[str] | None) -> np.ndarray:
    if wanted is None:
        return np.ones(len(channels), dtype=bool)
    return np.isin(channels, np.asarray(wanted, dtype=object))


def channel_codes(channels: np.ndarray, codes: dict[str, int]) -> np.ndarray:
    """(n,) int64 code of each event's channel in `codes` (0 for a channel it does not list)."""
    names, inverse = np.unique(channels.astype(object), return_inverse=True)
    return np.array([codes.get(str(c), 0) for c in names], dtype=np.int64)[inverse.reshape(-1)]


@dataclass
class SampleSet:
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    cut: np.ndarray  # how many history events of the user precede the sample
    labels: np.ndarray | None = None
    groups: np.ndarray | None = None  # optional per-sample group label for breakdowns
    # ctr: per-sample categorical context codes (name -> (n,) int64, 0 = unknown), see `CTRTask`
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
    """A task bound to one dataset: schema, splits, loader, loss and evaluation."""

    kind: str = ""
    monitor: str = ""
    higher_is_better: bool = True
    schema: Schema
    collator: Collator
    splits: dict[str, SampleSet]
    group_names: dict[str, list[str]]

    def train_size(self) -> int:
        return len(self.splits["train"])

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
