"""The token and text content of the insurance release: session tags, conversation keywords, the
post-filter (availability) and the generated sentence text of semi-synthetic folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ...data.errors import Problem
from .csvio import _duplicates, _first, _ints, _prefixed, _raise, _read_csv, _speakers, _token_lists
from .layout import KEYWORDS_FILE, POST_FILTER_FILE, PURCHASES_FILE, SESSIONS_FILE
from .structure import InsuranceStructure


def _read_sessions(file: Path, referenced: np.ndarray, notes: list[str]) -> pa.Table:
    t = _read_csv(file, ["session_id", "action_number", "action_tags"])
    probs: list[Problem] = []
    sid, _ = _ints(t, "session_id", str(file), probs)
    num, _ = _ints(t, "action_number", str(file), probs)
    offsets, tags = _token_lists(t, "action_tags", str(file), probs)
    _raise(probs)
    _duplicates(probs, str(file), ("session_id", "action_number"), sid, num)
    _raise(probs)
    g = _group(sid, num, offsets, tags)
    keep = np.isin(g.ids, referenced)
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} sessions in {SESSIONS_FILE} that no purchase event references (not loaded)")
    table = pa.table({
        "entity_id": _prefixed("s", g.ids),
        "tokens": pa.ListArray.from_arrays(pa.array(g.token_offsets), pa.array(g.tokens, pa.int64())),
        "action_sizes": pa.ListArray.from_arrays(pa.array(g.row_offsets), pa.array(g.sizes, pa.int32())),
    })
    return table.filter(pa.array(keep))


def _read_keywords(file: Path, referenced: np.ndarray, notes: list[str]) -> pa.Table:
    t = _read_csv(file, ["conversation_id", "sentence_number", "sentence_speaker", "keywords"])
    probs: list[Problem] = []
    cid, _ = _ints(t, "conversation_id", str(file), probs)
    num, _ = _ints(t, "sentence_number", str(file), probs)
    speaker = _speakers(t, str(file), probs)
    offsets, kws = _token_lists(t, "keywords", str(file), probs)
    _raise(probs)
    _duplicates(probs, str(file), ("conversation_id", "sentence_number"), cid, num)
    _raise(probs)
    g = _group(cid, num, offsets, kws)
    keep = np.isin(g.ids, referenced)
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} conversations in {KEYWORDS_FILE} that no purchase event references "
                     "(not loaded)")
    table = pa.table({
        "entity_id": _prefixed("c", g.ids),
        "tokens": pa.ListArray.from_arrays(pa.array(g.token_offsets), pa.array(g.tokens, pa.int64())),
        "sentence_sizes": pa.ListArray.from_arrays(pa.array(g.row_offsets), pa.array(g.sizes, pa.int32())),
        "speakers": pa.ListArray.from_arrays(pa.array(g.row_offsets), pa.array(speaker[g.order].astype(str),
                                                                              pa.string())),
    })
    return table.filter(pa.array(keep))


def _read_post_filter(path: Path, st: InsuranceStructure) -> tuple[pa.Table | None, np.ndarray]:
    file = path / POST_FILTER_FILE
    if not file.exists():
        return None, np.zeros(0, np.int64)
    t = _read_csv(file, ["purchase_event_id", "item_id"])
    probs: list[Problem] = []
    pid, _ = _ints(t, "purchase_event_id", str(file), probs)
    item, _ = _ints(t, "item_id", str(file), probs)
    _raise(probs)
    _duplicates(probs, str(file), ("purchase_event_id", "item_id"), pid, item)
    _first(probs, ~np.isin(pid, st.purchase_event_ids), str(file), "purchase_event_id",
           f"a purchase event listed in {PURCHASES_FILE}", lambda r: str(pid[r]))
    _raise(probs)
    order = np.lexsort((item, pid))
    pid, item = pid[order], item[order]
    uniq, starts = np.unique(pid, return_index=True)
    offsets = np.r_[starts, len(pid)].astype(np.int32)
    table = pa.table({
        "entity_id": _prefixed("p", uniq),
        "tokens": pa.ListArray.from_arrays(pa.array(offsets), pc.cast(pa.array(item), pa.string())),
    })
    return table, np.unique(item)


def _read_text(file: Path, referenced: np.ndarray) -> pa.Table:
    t = _read_csv(file, ["conversation_id", "sentence_number", "sentence_speaker", "text"])
    probs: list[Problem] = []
    cid, _ = _ints(t, "conversation_id", str(file), probs)
    num, _ = _ints(t, "sentence_number", str(file), probs)
    speaker = _speakers(t, str(file), probs)
    _raise(probs)
    df = pd.DataFrame({"c": cid, "n": num, "line": speaker.astype(object) + ": " + t["text"].to_numpy(
        zero_copy_only=False).astype(object)})
    df = df[np.isin(cid, referenced)].sort_values(["c", "n"], kind="stable")
    joined = df.groupby("c", sort=True)["line"].agg("\n".join)
    return pa.table({"entity_id": _prefixed("c", joined.index.to_numpy(np.int64)),
                     "text": pa.array(joined.to_numpy(dtype=object), pa.string())})


@dataclass
class _Grouped:
    ids: np.ndarray  # entity ids (sorted, unique)
    order: np.ndarray  # file rows in (entity, number) order
    row_offsets: np.ndarray  # int32, per entity into the ordered rows
    sizes: np.ndarray  # tokens per ordered row
    token_offsets: np.ndarray  # int32, per entity into tokens
    tokens: np.ndarray  # int64, in (entity, number) order


def _group(ids: np.ndarray, numbers: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> _Grouped:
    """Rows (entity, number, token list) -> one entry per entity with its rows in `number` order."""
    order = np.lexsort((numbers, ids))
    sizes = np.diff(offsets)[order]
    # token positions of the rows in the new order
    starts = offsets[:-1][order]
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    tokens = values[np.repeat(starts, sizes) + within]
    uniq, first = np.unique(ids[order], return_index=True)
    row_offsets = np.r_[first, len(order)]
    token_offsets = np.r_[0, np.cumsum(sizes)][row_offsets]
    return _Grouped(uniq, order, row_offsets.astype(np.int32), sizes, token_offsets.astype(np.int32), tokens)

