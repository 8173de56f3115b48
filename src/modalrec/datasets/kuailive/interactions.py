"""The interaction files (click, comment, like, gift, negative): reading, the streamer check against room.csv,
and the attribution of gifts to clicks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...data.errors import DataError, Problem
from .csvio import _first_bad, _np, _read_csv
from .layout import INTERACTION_COLUMNS, ROOM_FILE, StreamerMismatch
from .rooms import _Rooms


@dataclass
class _Interactions:
    file: Path
    channel: str
    user: np.ndarray  # int64
    live: np.ndarray  # int64
    streamer: np.ndarray  # int64
    time_ms: np.ndarray  # int64
    row: np.ndarray  # 1-based data row
    value: np.ndarray | None  # float64: watch ms or gift price


def _read_interactions(file: Path, channel: str, extra: str | None) -> _Interactions:
    required = INTERACTION_COLUMNS + ([extra] if extra else [])
    t = _read_csv(file, required, ints=INTERACTION_COLUMNS, floats=[extra] if extra else [])
    time_ms = _np(t["timestamp"])
    probs: list[Problem] = []
    _first_bad(probs, time_ms <= 0, file, "timestamp", "a positive Unix time in milliseconds",
               lambda r: str(time_ms[r]))
    value = None
    if extra:
        value = _np(t[extra]).astype(np.float64)
        what = "a watch time in milliseconds >= 0" if extra == "watch_live_time" else "a gift price >= 0"
        _first_bad(probs, ~np.isfinite(value) | (value < 0), file, extra, what, lambda r: repr(float(value[r])))
    if probs:
        raise DataError(probs)
    return _Interactions(file, channel, _np(t["user_id"]), _np(t["live_id"]), _np(t["streamer_id"]), time_ms,
                         np.arange(1, t.num_rows + 1, dtype=np.int64), value)


def _check_streamers(parts: list[_Interactions], rooms: _Rooms, mode: StreamerMismatch,
                     notes: list[str]) -> list[_Interactions]:
    """Each interaction's streamer_id against its room's (room.csv rules)."""
    out = []
    for p in parts:
        pos = np.clip(np.searchsorted(rooms.live_id, p.live), 0, max(len(rooms.live_id) - 1, 0))
        known = (rooms.live_id[pos] == p.live) if len(rooms.live_id) else np.zeros(len(p.live), dtype=bool)
        wrong = known & (rooms.streamer[pos] != p.streamer)
        if not wrong.any():
            out.append(p)
            continue
        if mode == "error":
            r = int(np.flatnonzero(wrong)[0])
            raise DataError(Problem(str(p.file), int(p.row[r]), "streamer_id",
                                    f"the streamer of live_id {p.live[r]} in {ROOM_FILE} "
                                    f"({rooms.streamer[pos[r]]}, row {rooms.first_row[pos[r]]}); pass "
                                    "streamer_mismatch='room' or 'drop' to load such rows anyway",
                                    f"{p.streamer[r]} ({int(wrong.sum())} such row(s))"))
        if mode == "drop":
            keep = ~wrong
            p = _Interactions(p.file, p.channel, p.user[keep], p.live[keep], p.streamer[keep], p.time_ms[keep],
                              p.row[keep], None if p.value is None else p.value[keep])
            notes.append(f"{int(wrong.sum())} {p.file.name} rows dropped: streamer_id differs from {ROOM_FILE}")
        else:
            p.streamer = np.where(wrong, rooms.streamer[pos], p.streamer)
            notes.append(f"{int(wrong.sum())} {p.file.name} rows whose streamer_id differs from {ROOM_FILE} "
                         "kept under the room's streamer")
        out.append(p)
    return out


def attribute_gifts(click_user: np.ndarray, click_live: np.ndarray, click_ms: np.ndarray, gift_user: np.ndarray,
                    gift_live: np.ndarray, gift_ms: np.ndarray) -> np.ndarray:
    """For every gift, the index of the click it is attributed to (-1: none): the latest click of the
    same user in the same room at or before the gift's time."""
    if not len(gift_user):
        return np.zeros(0, dtype=np.int64)
    if not len(click_user):
        return np.full(len(gift_user), -1, dtype=np.int64)
    pairs = np.concatenate([np.stack([click_user, click_live], 1), np.stack([gift_user, gift_live], 1)])
    _, group = np.unique(pairs, axis=0, return_inverse=True)
    group = group.reshape(-1).astype(np.int64)
    cg, gg = group[:len(click_user)], group[len(click_user):]
    t0 = min(int(click_ms.min()), int(gift_ms.min()))
    span = max(int(click_ms.max()), int(gift_ms.max())) - t0 + 1
    # one sortable key: (user, room) group, then time; a gift at a click's very millisecond counts
    ckey = cg * span + (click_ms - t0)
    gkey = gg * span + (gift_ms - t0)
    order = np.argsort(ckey, kind="stable")
    pos = np.searchsorted(ckey[order], gkey, side="right") - 1
    found = pos >= 0
    idx = np.where(found, order[np.maximum(pos, 0)], -1)
    same = found & (cg[np.maximum(idx, 0)] == gg)
    return np.where(same, idx, -1)

