"""KuaiLive (Qu et al., 2025): 21 days of Kuaishou live streaming, 23,772 users, 452,621 streamers.

Reads the release folder (https://imgkkk574.github.io/KuaiLive, Zenodo record 16565801, the unzipped
KuaiLive.zip). Column names as documented on the dataset page (detailed_statistics.html, checked
against the repository imgkkk574/KuaiLive, pages/decriptions.md)::

    room.csv        p_date, live_id, streamer_id, live_type, start_timestamp, end_timestamp,
                    live_content_category, live_name_id        (a room live across midnight has one
                                                                 row per day, p_date = YYYYMMDD)
    click.csv       user_id, live_id, streamer_id, timestamp, watch_live_time   (watch time in ms)
    comment.csv     user_id, live_id, streamer_id, timestamp
    like.csv        user_id, live_id, streamer_id, timestamp
    gift.csv        user_id, live_id, streamer_id, timestamp, gift_price
    negative.csv    user_id, live_id, streamer_id, timestamp   (exposures that were not clicked)
    user.csv        user_id + side columns (age, gender, country, device_brand, device_price,
                    reg_timestamp, fans_num, follow_num, first_watch_live_timestamp,
                    accu_watch_live_cnt, accu_watch_live_duration, is_live_streamer,
                    is_photo_author, onehot_feat0..6)
    streamer.csv    streamer_id + side columns (gender, age, country, device_brand, device_price,
                    live_operation_tag, fans_user_num, fans_group_fans_num, follow_user_num,
                    first_live_timestamp, accu_live_cnt, accu_live_duration, accu_play_cnt,
                    accu_play_duration, reg_timestamp, onehot_feat0..6)
    title embeddings  one row per live_name_id (bge-base-zh-v1.5 title vectors reduced by PCA to 128)

Not confirmed, hence accepted in documented alternatives: the name of the title-embedding file
differs between versions of the dataset page (``title_embeddings.npy``,
``title_embeddings_pca128.npy``, ``title_embeddings.pca128.npz``); the first of `TITLE_FILES`
present is read. An ``.npz`` must hold either exactly one 2-D float array (row r = live_name_id r) or
one 2-D float array plus one 1-D integer array of the same length giving each row's live_name_id.
The page does not say whether a room without a title has a live_name_id; an empty cell or a negative
id is read as "no title" (no ``title_emb`` row: a missing modality). The side columns of user.csv and
streamer.csv are read as they come (every column besides the id, as text), since only the ids are
needed to join them. Timestamps are Unix milliseconds (the examples on the page, e.g. 1746374400022).

Mapping onto `InteractionData`
------------------------------
items = live rooms: ``item_id`` = live_id; ``streamer_id``, ``category`` (live_content_category),
``live_type``, ``start_time`` / ``end_time`` (seconds; the earliest start and latest end over the
room's daily rows), ``p_date`` (first day), ``live_name_id``, and with ``streamer_side=True`` every
streamer.csv column prefixed ``streamer_``. Features: streamer_id, category, live_type (categorical;
plus the streamer side columns but the dates with ``streamer_side``). A room that interactions name
but room.csv lacks gets an items row with the streamer of those interactions and empty room fields
(counted in ``spec.description``); live_type is kept as text (documented as an int64 code).
users: user.csv (features: its columns but ``*_timestamp``
dates), plus empty rows for users that only appear in interactions (counted).

events, channels ``click``, ``comment``, ``like``, ``gift`` and ``impression`` (negative.csv;
``impressions=False`` skips that largest file). ``time`` is in SECONDS (the house unit that models
bucket) and ``time_ms`` keeps the millisecond order; ``event_id`` = "<file stem>:<1-based row>", so
every event names its source row. Columns:

- ``label``: on click, 1.0 if the user sent a gift in that room attributed to this click, else 0.0
  (the gift-through-rate sample of MMBee); 1.0 on gift; empty elsewhere. A gift is attributed to
  the user's latest click in the same room at or before the gift's time (a later click of the same
  room takes the credit for later gifts). Gifts with no such click keep their gift event but label no
  click; their number is in ``spec.description``.
- ``price``: on click, the summed gift_price of the gifts attributed to it (0 if none); on gift,
  gift_price; empty elsewhere.
- ``duration``: watch_live_time in seconds on click; empty elsewhere.
- ``clicked``: 1.0 on click, 0.0 on impression, empty elsewhere (a click-through label).

content: ``title_emb`` (item, vector, dim from the file) for every room with a title id.

Every problem in the input raises `DataError` naming the file, the 1-based data row, the column,
what was expected and what was found: a missing file or column, a cell that is not an integer, a
negative watch time or price, a room that room.csv gives two streamers, an interaction whose
streamer_id is not its room's streamer (``streamer_mismatch="room"`` keeps such rows under the room's
streamer, ``"drop"`` drops them; both count them in the description), a title id beyond the
embedding rows. Research use only (CC BY-NC-SA 4.0); cite the paper, see `CITATION`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..data.errors import DataError, Problem
from ..data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec

SOURCE = "KuaiLive, https://imgkkk574.github.io/KuaiLive (Zenodo record 16565801)"
CITATION = ("Changle Qu, Sunhao Dai, Ke Guo, Liqin Zhao, Yanan Niu, Xiao Zhang, Jun Xu. 2025. KuaiLive: A "
            "Real-time Interactive Dataset for Live Streaming Recommendation. arXiv:2508.05633")
ROOM_FILE, USER_FILE, STREAMER_FILE = "room.csv", "user.csv", "streamer.csv"
ROOM_COLUMNS = ["p_date", "live_id", "streamer_id", "live_type", "start_timestamp", "end_timestamp",
                "live_content_category", "live_name_id"]
INTERACTION_COLUMNS = ["user_id", "live_id", "streamer_id", "timestamp"]
# file -> (channel, its extra numeric column)
INTERACTION_FILES = {
    "click.csv": ("click", "watch_live_time"),
    "comment.csv": ("comment", None),
    "like.csv": ("like", None),
    "gift.csv": ("gift", "gift_price"),
    "negative.csv": ("impression", None),
}
CHANNELS = ["impression", "click", "comment", "like", "gift"]  # order of events at equal times
TITLE_FILES = ("title_embeddings.npy", "title_embeddings_pca128.npy", "title_embeddings.pca128.npy",
               "title_embeddings.pca128.npz", "title_embeddings_pca128.npz", "title_embeddings.npz")
StreamerMismatch = Literal["error", "room", "drop"]


# ------------------------------------------------------------------------------------------ CSV
def _header(file: Path) -> list[str]:
    if not file.is_file():
        raise DataError(Problem(str(file), None, None, "a file of the KuaiLive release", "no such file"))
    with open(file, encoding="utf-8-sig") as fh:
        line = fh.readline()
    cols = [c.strip().strip('"') for c in line.rstrip("\r\n").split(",")] if line.strip() else []
    if not cols:
        raise DataError(Problem(str(file), None, None, "a header row", "an empty file"))
    return cols


def _read_csv(file: Path, required: list[str], ints: list[str], floats: list[str] = (),
              all_columns: bool = False) -> pa.Table:
    """`required` columns (and every column when `all_columns`): `ints` as int64, `floats` as float64,
    the rest as text. Every malformed row or cell becomes a Problem with its 1-based data row."""
    header = _header(file)
    missing = [c for c in required if c not in header]
    if missing:
        shown = header if len(header) <= 10 else header[:10] + ["..."]
        raise DataError([Problem(str(file), None, c, f"a column named '{c}'", f"no such column (has {shown})")
                         for c in missing])
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise DataError(Problem(str(file), None, dup[0], "each column name once in the header", "a repeat"))
    wanted = header if all_columns else list(required)
    types = {c: pa.string() for c in wanted} | {c: pa.int64() for c in ints} | {c: pa.float64() for c in floats}
    convert = pacsv.ConvertOptions(column_types=types, include_columns=wanted, null_values=[""],
                                   strings_can_be_null=True)
    bad_rows: list = []
    try:
        table = pacsv.read_csv(file, read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
                               convert_options=convert,
                               parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad_rows.append(r)
                                                                or "skip"))
    except pa.ArrowInvalid as e:
        raise DataError(_diagnose(file, header, wanted, ints, floats)
                        or [Problem(str(file), None, None, "a readable CSV file", str(e).splitlines()[0])]) from None
    if bad_rows:
        raise DataError(_diagnose(file, header, wanted, ints, floats)
                        or [Problem(str(file), None, None, "a readable CSV file",
                                    f"{len(bad_rows)} malformed row(s)")])
    probs = []
    for c in list(ints) + list(floats):
        col = table[c]
        if col.null_count:
            r = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0]) + 1
            probs.append(Problem(str(file), r, c, "an integer" if c in ints else "a number",
                                 f"an empty cell ({col.null_count} in this column)"))
    if probs:
        raise DataError(probs)
    return table


def _diagnose(file: Path, header: list[str], wanted: list[str], ints: list[str], floats: list[str]) -> list[Problem]:
    """Why a typed read failed: rows with the wrong number of fields, else the first cell of each
    numeric column that is not a number. Reads everything as text on one thread (line numbers)."""
    bad_rows: list = []
    try:
        table = pacsv.read_csv(
            file, read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted},
                                                 include_columns=wanted),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad_rows.append(r) or "skip"))
    except pa.ArrowInvalid as e:
        return [Problem(str(file), None, None, "a readable CSV file", str(e).splitlines()[0])]
    if bad_rows:
        return [Problem(str(file), r.number - 1 if r.number else None, None,
                        f"{r.expected_columns} fields as in the header",
                        f"{r.actual_columns} field(s): {r.text[:60]!r}") for r in bad_rows[:20]]
    probs = []
    for c in list(ints) + list(floats):
        text = pc.utf8_trim_whitespace(table[c].combine_chunks())
        pattern = r"^[+-]?\d{1,18}$" if c in ints else r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
        ok = pc.fill_null(pc.match_substring_regex(text, pattern), True).to_numpy(zero_copy_only=False)
        if not ok.all():
            r = int(np.flatnonzero(~ok)[0])
            more = f" ({int((~ok).sum())} such rows)" if (~ok).sum() > 1 else ""
            probs.append(Problem(str(file), r + 1, c, "an integer" if c in ints else "a number",
                                 repr(table[c][r].as_py()) + more))
    return probs


def _first_bad(probs: list[Problem], mask: np.ndarray, file: Path, column: str, expected: str, found) -> None:
    if mask.any():
        r = int(np.flatnonzero(mask)[0])
        more = f" ({int(mask.sum())} such rows)" if mask.sum() > 1 else ""
        probs.append(Problem(str(file), r + 1, column, expected, found(r) + more))


def _np(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False) if isinstance(col, pa.Array) else col.combine_chunks().to_numpy(
        zero_copy_only=False)


# ----------------------------------------------------------------------------------------- rooms
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


# ---------------------------------------------------------------------------------- interactions
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


# ------------------------------------------------------------------------------------- side files
def _read_side(file: Path, key: str) -> pa.Table:
    t = _read_csv(file, [key], ints=[key], all_columns=True)
    ids = _np(t[key])
    order = np.argsort(ids, kind="stable")
    dup = np.zeros(len(ids), dtype=bool)
    dup[order[1:]] = ids[order][1:] == ids[order][:-1]
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        raise DataError(Problem(str(file), r + 1, key, f"one row per {key}", f"a repeat of {ids[r]} "
                                f"({int(dup.sum())} repeated row(s))"))
    cols = {key: pc.cast(t[key], pa.string())}
    for c in t.column_names:
        if c != key:
            cols[c] = pc.cast(t[c], pa.string())
    return pa.table(cols)


def _side_features(table: pa.Table, key: str, prefix: str = "") -> list[FeatureSpec]:
    """Side columns as categorical features; dates (`*_timestamp`) stay columns only."""
    return [FeatureSpec(name=prefix + c, kind="categorical") for c in table.column_names
            if c != key and not c.endswith("_timestamp")]


# ---------------------------------------------------------------------------------------- titles
def _title_file(path: Path) -> Path | None:
    for name in TITLE_FILES:
        if (path / name).is_file():
            return path / name
    return None


def _read_titles(file: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(vectors (n, d) float32, the live_name_id of each row or None when row r is live_name_id r)."""
    try:
        loaded = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(Problem(str(file), None, None, "a NumPy .npy/.npz file of float vectors (no pickle)",
                                str(e).splitlines()[0])) from None
    ids = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
        mats = [k for k, v in arrays.items() if v.ndim == 2 and np.issubdtype(v.dtype, np.floating)]
        vecs = [k for k, v in arrays.items() if v.ndim == 1 and np.issubdtype(v.dtype, np.integer)]
        if len(mats) != 1 or len(arrays) > 2 or (len(arrays) == 2 and len(vecs) != 1):
            shapes = {k: f"{v.dtype}{list(v.shape)}" for k, v in arrays.items()}
            raise DataError(Problem(str(file), None, None, "one 2-D float array (row = live_name_id), optionally "
                                    "with one 1-D integer array of the rows' live_name_id", f"arrays {shapes}"))
        emb = arrays[mats[0]]
        if vecs:
            ids = arrays[vecs[0]].astype(np.int64)
            if len(ids) != len(emb):
                raise DataError(Problem(str(file), None, vecs[0], f"{len(emb)} ids, one per row of '{mats[0]}'",
                                        f"{len(ids)}"))
            if len(np.unique(ids)) != len(ids):
                raise DataError(Problem(str(file), None, vecs[0], "unique live_name_id values", "repeats"))
    else:
        emb = loaded
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise DataError(Problem(str(file), None, None, "a 2-D float array (one row per live_name_id)",
                                f"{emb.dtype} of shape {list(emb.shape)}"))
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        raise DataError(Problem(str(file), r + 1, None, "finite numbers", f"NaN or infinity in row {r} "
                                f"(live_name_id {ids[r] if ids is not None else r})"))
    return emb.astype(np.float32), ids


def _title_content(rooms: _Rooms, file: Path, room_file: Path) -> tuple[pa.Table, int, int]:
    """The title_emb table of the rooms of room.csv, the vector width, and the rooms without a title."""
    emb, ids = _read_titles(file)
    col = rooms.table["live_name_id"]
    has = pc.is_valid(col).to_numpy(zero_copy_only=False)
    name = pc.fill_null(col, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if ids is None:
        row = np.where(has, name, -1)
        bad = has & (name >= len(emb))
    else:
        order = np.argsort(ids)
        pos = np.clip(np.searchsorted(ids[order], name), 0, len(ids) - 1)
        hit = ids[order][pos] == name
        row = np.where(has & hit, order[pos], -1)
        bad = has & ~hit
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(Problem(str(room_file), int(rooms.first_row[r]), "live_name_id",
                                f"a title id with a row in {file.name} ({len(emb)} rows)",
                                f"{name[r]} ({int(bad.sum())} such room(s))"))
    sel = row >= 0
    dim = emb.shape[1]
    vectors = emb[row[sel]]
    table = pa.table({
        "entity_id": rooms.table["item_id"].filter(pa.array(sel)),
        "vector": pa.ListArray.from_arrays(pa.array(np.arange(int(sel.sum()) + 1, dtype=np.int32) * dim),
                                           pa.array(vectors.reshape(-1), pa.float32())),
    })
    return table, dim, int((~sel).sum())


# ------------------------------------------------------------------------------------------ load
def load(path: str | os.PathLike, *, impressions: bool = True, titles: bool = True, streamer_side: bool = False,
         streamer_mismatch: StreamerMismatch = "error") -> InteractionData:
    """Read the KuaiLive release folder into `InteractionData` (see the module doc).

    `impressions`: read negative.csv as channel ``impression``; `titles`: the title-embedding file
    must be present and becomes modality ``title_emb`` (False: not read); `streamer_side`: join
    streamer.csv onto the rooms as ``streamer_*`` item features; `streamer_mismatch`: what to do with
    interactions whose streamer_id is not their room's ("error", "room", "drop")."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(Problem(str(path), None, None, "the folder of the unzipped KuaiLive release",
                                "no such directory"))
    if streamer_mismatch not in ("error", "room", "drop"):
        raise ValueError(f"streamer_mismatch must be 'error', 'room' or 'drop', got {streamer_mismatch!r}")
    files = [ROOM_FILE, USER_FILE, STREAMER_FILE] + [f for f in INTERACTION_FILES
                                                     if impressions or f != "negative.csv"]
    missing = [Problem(str(path / f), None, None, "a file of the KuaiLive release", "no such file")
               for f in files if not (path / f).is_file()]
    title_file = _title_file(path) if titles else None
    if titles and title_file is None:
        missing.append(Problem(str(path / TITLE_FILES[0]), None, None, "the title embeddings, one of "
                               f"{', '.join(TITLE_FILES)} (or titles=False)", "no such file"))
    if missing:
        raise DataError(missing)

    notes: list[str] = []
    rooms = _read_rooms(path / ROOM_FILE)
    users = _read_side(path / USER_FILE, "user_id")
    streamers = _read_side(path / STREAMER_FILE, "streamer_id")
    parts = [_read_interactions(path / f, ch, extra) for f, (ch, extra) in INTERACTION_FILES.items()
             if impressions or f != "negative.csv"]
    parts = _check_streamers(parts, rooms, streamer_mismatch, notes)
    by_channel = {p.channel: p for p in parts}
    click, gift = by_channel["click"], by_channel["gift"]

    attributed = attribute_gifts(click.user, click.live, click.time_ms, gift.user, gift.live, gift.time_ms)
    hit = attributed >= 0
    click_label = np.zeros(len(click.user))
    click_label[attributed[hit]] = 1.0
    click_price = np.bincount(attributed[hit], weights=gift.value[hit], minlength=len(click.user))
    n_orphan = int((~hit).sum())

    events = _events(parts, click_label, click_price)
    items, n_unknown_rooms = _items(rooms, parts, streamers if streamer_side else None)
    users_t, n_unknown_users = _users(users, parts)

    content: dict[str, pa.Table] = {}
    modalities: list[ModalitySpec] = []
    if title_file is not None:
        table, dim, n_untitled = _title_content(rooms, title_file, path / ROOM_FILE)
        content["title_emb"] = table
        modalities.append(ModalitySpec(name="title_emb", entity="item", kind="vector", dim=dim,
                                       description=f"live room title embedding from {title_file.name} "
                                                   "(bge-base-zh-v1.5, PCA); rooms without a title id have "
                                                   "no row"))
        if n_untitled:
            notes.append(f"{n_untitled} room(s) without a title embedding")
    if n_unknown_rooms:
        notes.append(f"{n_unknown_rooms} room(s) named by interactions but absent from {ROOM_FILE} (items rows "
                     "with the interactions' streamer and empty room fields)")
    if n_unknown_users:
        notes.append(f"{n_unknown_users} user(s) absent from {USER_FILE} (users rows with empty side fields)")
    if n_orphan:
        notes.append(f"{n_orphan} gift(s) without an earlier click of the user in that room (they label no click)")

    item_features = [FeatureSpec(name="streamer_id", kind="categorical"),
                     FeatureSpec(name="category", kind="categorical"),
                     FeatureSpec(name="live_type", kind="categorical")]
    if streamer_side:
        item_features += _side_features(streamers, "streamer_id", prefix="streamer_")
    counts = {p.channel: len(p.user) for p in parts}
    n_clicks = max(len(click.user), 1)
    desc = (f"KuaiLive: {users_t.num_rows} users, {items.num_rows} live rooms of "
            f"{len(np.unique(rooms.streamer))} streamers; events "
            + ", ".join(f"{counts[c]} {c}" for c in CHANNELS if c in counts)
            + f"; {int(click_label.sum())} clicks followed by a gift ({click_label.sum() / n_clicks:.4f})")
    desc += "".join(f"; {n}" for n in notes)
    spec = DatasetSpec(
        name="kuailive", description=desc, semi_synthetic=False,
        channels=[c for c in CHANNELS if c in counts],
        item_features=item_features, user_features=_side_features(users, "user_id"),
        modalities=modalities, event_columns=["event_id", "time_ms", "label", "price", "duration", "clicked"],
        source=SOURCE, citation=CITATION,
    )
    return InteractionData(spec, events, items, users_t, content).validate(str(path))


def _events(parts: list[_Interactions], click_label: np.ndarray, click_price: np.ndarray) -> pa.Table:
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "live", "ms", "channel", "row", "label",
                                                         "price", "duration", "clicked")}
    stems: list[np.ndarray] = []
    nan = np.nan
    for p in parts:
        n = len(p.user)
        full = np.full(n, nan)
        label = {"click": click_label, "gift": np.ones(n)}.get(p.channel, full)
        price = {"click": click_price, "gift": p.value}.get(p.channel, full)
        duration = p.value / 1000.0 if p.channel == "click" else full
        clicked = {"click": np.ones(n), "impression": np.zeros(n)}.get(p.channel, full)
        for k, v in (("user", p.user), ("live", p.live), ("ms", p.time_ms), ("row", p.row), ("label", label),
                     ("price", price), ("duration", duration), ("clicked", clicked),
                     ("channel", np.full(n, CHANNELS.index(p.channel), dtype=np.int64))):
            cols[k].append(v)
        stems.append(np.full(n, p.file.stem, dtype=object))
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    stem = np.concatenate(stems)
    order = np.lexsort((cat["row"], cat["channel"], cat["ms"]))
    cat = {k: v[order] for k, v in cat.items()}
    row_text = pc.cast(pa.array(cat["row"]), pa.string())
    event_id = pc.binary_join_element_wise(pa.array(stem[order], pa.string()), row_text, ":")

    def opt(v: np.ndarray) -> pa.Array:
        return pa.array(v, pa.float64(), mask=np.isnan(v))

    return pa.table({
        "user_id": pc.cast(pa.array(cat["user"]), pa.string()),
        "item_id": pc.cast(pa.array(cat["live"]), pa.string()),
        "time": pa.array(cat["ms"] // 1000, pa.int64()),
        "time_ms": pa.array(cat["ms"], pa.int64()),
        "channel": pa.array(np.asarray(CHANNELS, dtype=object)[cat["channel"]], pa.string()),
        "event_id": event_id,
        "label": opt(cat["label"]),
        "price": opt(cat["price"]),
        "duration": opt(cat["duration"]),
        "clicked": opt(cat["clicked"]),
    })


def _items(rooms: _Rooms, parts: list[_Interactions], streamers: pa.Table | None) -> tuple[pa.Table, int]:
    live = np.concatenate([p.live for p in parts])
    streamer = np.concatenate([p.streamer for p in parts])
    unknown = ~np.isin(live, rooms.live_id)
    table = rooms.table
    n_new = 0
    if unknown.any():
        new_live, first = np.unique(live[unknown], return_index=True)
        n_new = len(new_live)
        extra = {name: pa.nulls(n_new, table.schema.field(name).type) for name in table.column_names}
        extra["item_id"] = pc.cast(pa.array(new_live), pa.string())
        extra["streamer_id"] = pc.cast(pa.array(streamer[unknown][first]), pa.string())
        extra["in_room_file"] = pa.array(np.zeros(n_new, dtype=bool))
        table = pa.concat_tables([table, pa.table(extra, schema=table.schema)])
    if streamers is not None:
        side = streamers.rename_columns([c if c == "streamer_id" else f"streamer_{c}"
                                         for c in streamers.column_names])
        table = table.append_column("__row", pa.array(np.arange(table.num_rows)))
        table = table.join(side, "streamer_id", join_type="left outer")  # a join does not keep row order
        table = table.take(pc.sort_indices(table, [("__row", "ascending")])).drop_columns(["__row"])
    return table, n_new


def _users(users: pa.Table, parts: list[_Interactions]) -> tuple[pa.Table, int]:
    seen = np.unique(np.concatenate([p.user for p in parts]))
    known = pc.cast(users["user_id"], pa.int64()).to_numpy(zero_copy_only=False)
    new = seen[~np.isin(seen, known)]
    if not len(new):
        return users, 0
    extra = {name: pa.nulls(len(new), pa.string()) for name in users.column_names}
    extra["user_id"] = pc.cast(pa.array(new), pa.string())
    return pa.concat_tables([users, pa.table(extra, schema=users.schema)]), len(new)
