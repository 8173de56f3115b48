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

The package: `load` (here); ``layout`` (file names, columns, channels, constants); ``rooms`` (room.csv);
``interactions`` (the interaction files, the streamer check, `attribute_gifts`); ``side`` (user.csv,
streamer.csv); ``titles`` (the title embeddings); ``tables`` (the events, items and users tables);
``csvio`` (CSV reading and the checks that raise `DataError`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from ...data.errors import DataError, Problem
from ...data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec
from .interactions import _check_streamers, _read_interactions, attribute_gifts
from .layout import (
    CHANNELS,
    CITATION,
    INTERACTION_COLUMNS,
    INTERACTION_FILES,
    ROOM_COLUMNS,
    ROOM_FILE,
    SOURCE,
    STREAMER_FILE,
    TITLE_FILES,
    USER_FILE,
    StreamerMismatch,
)
from .rooms import _read_rooms
from .side import _read_side, _side_features
from .tables import _events, _items, _users
from .titles import _title_content, _title_file

__all__ = ["CHANNELS", "CITATION", "INTERACTION_COLUMNS", "INTERACTION_FILES", "ROOM_COLUMNS", "ROOM_FILE", "SOURCE",
           "STREAMER_FILE", "TITLE_FILES", "USER_FILE", "StreamerMismatch", "attribute_gifts", "load"]


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
