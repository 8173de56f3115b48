"""room.csv: the live rooms (one row per room and day, merged into one per room) and their title ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...data.errors import DataError, Problem
from .csvio import _first_bad, _np, _read_csv
from .layout import ROOM_COLUMNS


@dataclass
class _Rooms:
    live_id: np.ndarray  # int64, sorted, unique
    streamer: np.ndarray  # int64
    first_row: np.ndarray  # 1-based row of room.csv the room's fields come from
    table: pa.Table  # the merged room rows, in live_id order


def _read_rooms(file: Path) -> _Rooms:
    ints = ["p_date", "live_id", "streamer_id", "start_timestamp", "end_timestamp"]
    t = _read_csv(file, ROOM_COLUMNS, ints=ints)
    live, streamer = _np(t["live_id"]), _np(t["streamer_id"])
    p_date, start, end = _np(t["p_date"]), _np(t["start_timestamp"]), _np(t["end_timestamp"])
    name_id = t["live_name_id"]  # text: an empty cell means no title
    order = np.lexsort((np.arange(len(live)), start, p_date, live))
    ls = live[order]
    first = np.r_[True, ls[1:] != ls[:-1]] if len(ls) else np.zeros(0, dtype=bool)
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(ls)), 0))
    probs: list[Problem] = []
    s_sorted = streamer[order]
    clash = np.zeros(len(live), dtype=bool)
    clash[order] = s_sorted != s_sorted[group_start]
    first_of = np.empty(len(live), dtype=np.int64)
    first_of[order] = order[group_start]
    _first_bad(probs, clash, file, "streamer_id", "one streamer per live_id (rows of one room on several days "
               "agree)", lambda r: f"streamer {streamer[r]} for live_id {live[r]}, which row {first_of[r] + 1} "
               f"gives to streamer {streamer[first_of[r]]}")
    _first_bad(probs, start <= 0, file, "start_timestamp", "a positive Unix time in milliseconds",
               lambda r: str(start[r]))
    if probs:
        raise DataError(probs)
    starts = np.flatnonzero(first)
    head = order[starts]
    idx_of_group = np.cumsum(first) - 1
    room_start = np.full(len(starts), np.iinfo(np.int64).max)
    np.minimum.at(room_start, idx_of_group, start[order])
    room_end = np.full(len(starts), np.iinfo(np.int64).min)
    np.maximum.at(room_end, idx_of_group, end[order])
    take = pa.array(head)
    name_text = pc.utf8_trim_whitespace(name_id.take(take).combine_chunks())
    names = _title_ids(name_text, head, file)
    table = pa.table({
        "item_id": pc.cast(pa.array(live[head]), pa.string()),
        "streamer_id": pc.cast(pa.array(streamer[head]), pa.string()),
        "category": t["live_content_category"].take(take),
        "live_type": t["live_type"].take(take),
        "start_time": pa.array(room_start // 1000, pa.int64()),
        "end_time": pa.array(room_end // 1000, pa.int64()),
        "p_date": t["p_date"].take(take),
        "live_name_id": pa.array(names, pa.int64(), mask=names < 0),
        "in_room_file": pa.array(np.ones(len(head), dtype=bool)),
    })
    return _Rooms(live[head], streamer[head], head + 1, table)


def _title_ids(text: pa.Array, rows: np.ndarray, file: Path) -> np.ndarray:
    """live_name_id as int64, -1 for 'no title' (empty cell or a negative id)."""
    empty = pc.fill_null(pc.equal(text, ""), True).to_numpy(zero_copy_only=False)
    ok = pc.fill_null(pc.match_substring_regex(text, r"^[+-]?\d{1,18}$"), False).to_numpy(zero_copy_only=False)
    bad = ~ok & ~empty
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(Problem(str(file), int(rows[i]) + 1, "live_name_id", "an integer (or an empty cell: no "
                                "title)", repr(text[i].as_py())))
    out = np.full(len(text), -1, dtype=np.int64)
    out[ok] = pc.cast(text.filter(pa.array(ok)), pa.int64()).to_numpy(zero_copy_only=False)
    out[out < 0] = -1
    return out

