"""The events, items and users tables of the KuaiLive mapping (see the package doc)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .interactions import _Interactions
from .layout import CHANNELS
from .rooms import _Rooms


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
