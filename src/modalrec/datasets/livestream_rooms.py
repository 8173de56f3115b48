"""The rooms view of the simulated live-streaming world: items are live rooms, not 5-minute segments.

`load_dataset("livestream", ..., items="rooms")`. The simulator's items are segments (`a0042/r3/g5`: streamer
a0042's room 3, its segment 5), right for the gift-through-rate task, where a sample is a watched segment; top-K
recommends ROOMS, as KuaiLive's live_id and the service's live-only /recommend do. This view of the same world:

- items = the watched rooms (`a0042/r3`): ``streamer_id``, ``category`` (features, as on the segments),
  ``start_time`` / ``end_time`` (unix seconds: the room's first segment's start and its last segment's start plus
  the segment length, from the world's schedule, so the segments nobody watched count too; the room is live at t
  when start_time <= t < end_time, the rule of `task.live`), ``segments`` (its number of segments) and
  ``gt_community``;
- events name the room (``item_id`` = room id) and keep their segment as ``segment_id``. A user's watches of
  consecutive segments of one room (one visit: the simulator's user stays a geometric number of segments) are one
  ``watch`` event, as a KuaiLive click is one entry into a room: at the visit's first watch time, with the summed
  ``duration`` and ``price``, ``label`` 1 when any of its segments was gifted, ``p_true`` the probability of at
  least one gift and ``segments`` the number of segments watched. Comments, likes and gifts are as they were,
  renamed to their room. A user who comes back to a room after watching another (or after a gap) makes a new visit;
- no content: the frames, speech and comments describe segments and stay with the segments view.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data.interaction import InteractionData


def room_schedule(params: dict) -> pa.Table:
    """Every room of the world with (room_id, start_time, end_time, segments), from the schedule the simulator
    draws first (its world stream; the same draws as `sim.livestream.simulate` for these parameters)."""
    from ..sim.livestream import START, _world

    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(params["seed"]).spawn(7)]
    w = _world(params, rngs[0], rngs[1])
    key = w.seg_streamer.astype(np.int64) * (int(w.seg_room.max()) + 1) + w.seg_room
    first = np.ones(len(key), dtype=bool)  # segments come room by room, in order
    first[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(first)
    n = np.diff(np.r_[starts, len(key)])
    ids = [f"a{s:04d}/r{r}" for s, r in zip(w.seg_streamer[starts].tolist(), w.seg_room[starts].tolist())]
    return pa.table({"room_id": pa.array(ids, pa.string()),
                     "start_time": pa.array(START + w.seg_slot[starts] * w.seg_len, pa.int64()),
                     "end_time": pa.array(START + (w.seg_slot[starts] + n) * w.seg_len, pa.int64()),
                     "segments": pa.array(n, pa.int64())})


def rooms_view(data: InteractionData, params: dict) -> InteractionData:
    """The rooms view (module docstring) of the segments world `data` simulated with `params` (resolved)."""
    seg_len = 60 * params["segment_minutes"]
    it = data.items
    schedule = room_schedule(params)
    rooms = pc.unique(it["room_id"].combine_chunks())
    at = pc.index_in(rooms, value_set=schedule["room_id"].combine_chunks())
    if at.null_count:
        raise ValueError("livestream rooms: the world's schedule lacks rooms of the data "
                         f"(e.g. {rooms.filter(at.is_null())[0]}): the parameters are not the data's")
    first_seg = pc.index_in(rooms, value_set=it["room_id"].combine_chunks())  # a segment of each room: its streamer
    items = pa.table({
        "item_id": rooms,
        "streamer_id": it["streamer_id"].take(first_seg),
        "category": it["category"].take(first_seg),
        "start_time": schedule["start_time"].take(at),
        "end_time": schedule["end_time"].take(at),
        "segments": schedule["segments"].take(at),
        "gt_community": it["gt_community"].take(first_seg),
    })
    events = _room_events(data.events, it, seg_len)
    spec = data.spec.model_copy(update={
        "description": data.spec.description + "; rooms view (modalrec.datasets.livestream_rooms): items are the "
                       f"{items.num_rows} watched rooms with start_time / end_time, a watch is one visit of a room "
                       f"({int(pc.sum(pc.equal(events['channel'], 'watch')).as_py())} visits)",
        "modalities": [],
        "event_columns": [*data.spec.event_columns, "segment_id", "segments"],
    }, deep=True)
    return InteractionData(spec, events, items, data.users, {}).validate()


def _room_events(ev: pa.Table, items: pa.Table, seg_len: int) -> pa.Table:
    """Events renamed to their room, a visit's watches of consecutive segments merged into one watch."""
    seg_at = pc.index_in(ev["item_id"], value_set=items["item_id"].combine_chunks())
    if seg_at.null_count:
        raise ValueError("livestream rooms: events name segments the items table lacks")
    room = items["room_id"].take(seg_at).combine_chunks()
    seg_start = items["start_time"].take(seg_at).to_numpy().astype(np.int64)
    channel = np.asarray(ev["channel"].to_numpy(zero_copy_only=False), dtype=object)
    cols = {name: ev[name].combine_chunks() for name in ev.column_names}
    cols["segment_id"], cols["item_id"] = cols["item_id"], room
    cols["segments"] = pa.array(np.where(channel == "watch", 1.0, np.nan), pa.float64(), from_pandas=True)
    table = pa.table(cols)

    watch = np.flatnonzero(channel == "watch")
    users = np.asarray(table["user_id"].to_numpy(zero_copy_only=False), dtype=object)[watch]
    rooms = np.asarray(room.to_numpy(zero_copy_only=False), dtype=object)[watch]
    times = table["time"].to_numpy()[watch]
    order = np.lexsort((times, users))  # each user's watches in time order
    w, u, r, s = watch[order], users[order], rooms[order], seg_start[watch][order]
    # a visit goes on when the next watch is the same user's, in the same room, at the next segment
    cont = np.zeros(len(w), dtype=bool)
    cont[1:] = (u[1:] == u[:-1]) & (r[1:] == r[:-1]) & (s[1:] == s[:-1] + seg_len)
    visit = np.cumsum(~cont) - 1
    heads = w[~cont]

    def col(name):
        return table[name].to_numpy(zero_copy_only=False).astype(np.float64)[w]

    def total(values):
        return np.bincount(visit, weights=np.nan_to_num(values), minlength=len(heads))

    n_seg = np.bincount(visit, minlength=len(heads)).astype(np.float64)
    label = np.bincount(visit, weights=col("label"), minlength=len(heads)) > 0
    p_none = np.ones(len(heads))
    np.multiply.at(p_none, visit, 1.0 - np.nan_to_num(col("p_true")))
    merged = table.take(pa.array(heads, pa.int64()))
    for name, values in (("label", label.astype(np.float64)), ("price", total(col("price"))),
                         ("duration", np.round(total(col("duration")), 1)), ("p_true", 1.0 - p_none),
                         ("segments", n_seg)):
        merged = merged.set_column(merged.column_names.index(name), name, pa.array(values, pa.float64()))
    others = table.filter(pa.array(channel != "watch"))
    out = pa.concat_tables([merged, others])
    return out.take(pc.sort_indices(out, [("time", "ascending"), ("user_id", "ascending")]))
