"""Conversation sentence embeddings (data_conversations_embedding/*.csv): streamed file by file.

`iter_sentence_embeddings` gives bounded-memory access to the sentence level; the loader keeps the
mean vector of each conversation (and, on request, every sentence vector)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...data.errors import DataError, Problem
from .csvio import _duplicates, _header, _ints, _prefixed, _raise, _read_csv, _speakers
from .layout import EMBEDDING_DIR, EMBEDDING_FILE


@dataclass
class SentenceEmbeddings:
    """The validated rows of one embedding file."""

    file: str
    conversation_id: np.ndarray  # int64
    sentence_number: np.ndarray  # int64
    speaker: np.ndarray  # str (object)
    vectors: np.ndarray  # float32 (n, dim)


def embedding_files(path: str | Path) -> list[Path]:
    """The embedding files of a release folder, in numeric order (gaps are allowed but warned about)."""
    folder = Path(path) / EMBEDDING_DIR
    if not folder.is_dir():
        raise DataError(Problem(str(folder), None, None, "a folder of data_conversations_embedding_{k}.csv "
                                "files", "no such folder"))
    found = sorted((int(m.group(1)), f) for f in folder.iterdir() if (m := EMBEDDING_FILE.match(f.name)))
    if not found:
        raise DataError(Problem(str(folder), None, None, "at least one data_conversations_embedding_{k}.csv",
                                "no such file"))
    numbers = [k for k, _ in found]
    missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
    if missing:
        warnings.warn(f"{folder}: embedding files {missing[:10]} are missing (reading the {len(found)} present)",
                      stacklevel=2)
    return [f for _, f in found]


def iter_sentence_embeddings(path: str | Path, embedding_dim: int | None = None) -> Iterator[SentenceEmbeddings]:
    """Stream the sentence embeddings file by file (bounded memory), each file fully validated."""
    dim = embedding_dim
    for f in embedding_files(path):
        header = _header(f)
        if dim is None:
            nums = sorted(int(m.group(1)) for c in header if (m := re.fullmatch(r"embedding_(\d+)", c)))
            dim = len(nums)
            if dim == 0:
                raise DataError(Problem(str(f), None, "embedding_1", "columns embedding_1 .. embedding_D",
                                        "no such column"))
        emb_cols = [f"embedding_{j}" for j in range(1, dim + 1)]
        extra = [c for c in header if re.fullmatch(r"embedding_\d+", c) and c not in set(emb_cols)]
        if extra:
            raise DataError(Problem(str(f), None, extra[0], f"exactly {dim} embedding columns (embedding_1 .. "
                                    f"embedding_{dim})", "an extra column"))
        t = _read_csv(f, ["conversation_id", "sentence_number", "sentence_speaker"], emb_cols, header=header)
        probs: list[Problem] = []
        conv, _ = _ints(t, "conversation_id", str(f), probs)
        num, _ = _ints(t, "sentence_number", str(f), probs)
        speaker = _speakers(t, str(f), probs)
        _raise(probs)
        _duplicates(probs, str(f), ("conversation_id", "sentence_number"), conv, num)
        vectors = np.empty((t.num_rows, dim), dtype=np.float32)
        for j, c in enumerate(emb_cols):
            col = t[c]
            if col.null_count:
                r = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
                probs.append(Problem(str(f), r + 1, c, "a number", f"an empty cell ({col.null_count} in this column)"))
                break
            vectors[:, j] = col.to_numpy()
        if not probs:
            bad = ~np.isfinite(vectors)
            if bad.any():
                r, j = np.argwhere(bad)[0]
                probs.append(Problem(str(f), int(r) + 1, emb_cols[j], "a finite number", str(vectors[r, j])))
        _raise(probs)
        yield SentenceEmbeddings(str(f), conv, num, speaker, vectors)


def _read_embeddings(path: Path, referenced: np.ndarray, embedding_dim: int | None, keep_sentences: bool,
                     notes: list[str]) -> tuple[pa.Table, int]:
    ids_parts, sums_parts, counts_parts, kept = [], [], [], []
    dim = embedding_dim
    unreferenced: set[int] = set()
    for part in iter_sentence_embeddings(path, embedding_dim):
        dim = part.vectors.shape[1]
        if part.conversation_id.size == 0:
            continue
        order = np.argsort(part.conversation_id, kind="stable")
        uniq, starts, counts = np.unique(part.conversation_id[order], return_index=True, return_counts=True)
        ids_parts.append(uniq)
        sums_parts.append(np.add.reduceat(part.vectors[order], starts, axis=0, dtype=np.float64))
        counts_parts.append(counts)
        unreferenced.update(uniq[~np.isin(uniq, referenced)].tolist())
        if keep_sentences:
            keep = np.isin(part.conversation_id, referenced)
            kept.append((part.conversation_id[keep], part.sentence_number[keep], part.speaker[keep],
                         part.vectors[keep]))
    if unreferenced:
        notes.append(f"{len(unreferenced)} conversations in {EMBEDDING_DIR}/ that no purchase event references "
                     "(not loaded)")
    dim = int(dim or 0)
    if ids_parts:
        ids = np.concatenate(ids_parts)
        sums = np.concatenate(sums_parts)
        counts = np.concatenate(counts_parts)
        order = np.argsort(ids, kind="stable")
        uniq, starts = np.unique(ids[order], return_index=True)
        sums = np.add.reduceat(sums[order], starts, axis=0)
        counts = np.add.reduceat(counts[order], starts)
    else:
        uniq, sums, counts = np.zeros(0, np.int64), np.zeros((0, dim)), np.zeros(0, np.int64)
    keep = np.isin(uniq, referenced)
    uniq, sums, counts = uniq[keep], sums[keep], counts[keep]
    means = (sums / counts[:, None]).astype(np.float32)
    cols = {
        "entity_id": _prefixed("c", uniq),
        "vector": pa.ListArray.from_arrays(pa.array(np.arange(len(uniq) + 1, dtype=np.int32) * dim),
                                           pa.array(means.reshape(-1))),
        "n_sentences": pa.array(counts.astype(np.int32)),
    }
    if keep_sentences:
        conv = np.concatenate([k[0] for k in kept]) if kept else np.zeros(0, np.int64)
        num = np.concatenate([k[1] for k in kept]) if kept else np.zeros(0, np.int64)
        spk = np.concatenate([k[2] for k in kept]) if kept else np.zeros(0, object)
        vec = np.concatenate([k[3] for k in kept]) if kept else np.zeros((0, dim), np.float32)
        order = np.lexsort((num, conv))
        conv, spk, vec = conv[order], spk[order], vec[order]
        dup = np.flatnonzero((conv[1:] == conv[:-1]) & (num[order][1:] == num[order][:-1]))
        if dup.size:
            c, n = conv[dup[0]], num[order][dup[0]]
            raise DataError(Problem(str(path / EMBEDDING_DIR), None, "sentence_number",
                                    "each (conversation_id, sentence_number) in one row of one file",
                                    f"conversation {c}, sentence {n} more than once (in two files)"))
        offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
        sent = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), dim)
        cols["sentence_vectors"] = pa.ListArray.from_arrays(offsets, sent)
        cols["sentence_speakers"] = pa.ListArray.from_arrays(offsets, pa.array(spk.astype(str), pa.string()))
    return pa.table(cols), dim

