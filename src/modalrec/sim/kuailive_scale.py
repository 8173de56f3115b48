"""A planted live-streaming world in the KuaiLive-M3 shape, written day by day in bounded memory.

Why: `modalrec.sim.kuailive_release.write_release` builds the whole world in memory (every click, every room's
title), which is right for tests and for KuaiLive's 1M clicks but not for KuaiLive-M3's 146M interactions
(21,938 users, 6.56M rooms with 128-d content embeddings). This writer holds one day of events and one day of
rooms at a time (about interactions / days rows), so `benchmarks/scale.py` can write the 146M-interaction world
on a 24 GiB machine and time the streaming import, the out-of-core preparation and training on it.

What it writes into `folder` (the import layout of `modalrec data import`, with `spec.yaml` for it):
- events.parquet: user_id, live_id, time (unix seconds), channel (click | gift), label (a click: 1 when a gift
  follows it; a gift: 1), in time order; clicks and gifts together are the "interactions";
- rooms.parquet: live_id, streamer_id, category, live_type, start, end (one row per room);
- titles.parquet: live_id and emb_0 .. emb_{dim-1} (float32), one title vector per room.

The world (planted, so a ranker has something to learn; the counts are ours, only the shape is KuaiLive-M3's):
streamers belong to one of `CATEGORIES`, with Pareto popularity and a gift bias; every day `rooms / days` rooms
go live, each of a streamer drawn by popularity, for 1 to 3 hours between 08:00 and 23:00; a room's title is its
category's centroid, plus its hotness (N(0, 1), how much it invites gifts) along one direction, plus noise.
Users (fixed count) have Dirichlet(0.3) category affinities and an activity level; a click picks a category by
exp(2 x affinity), then one of that day's rooms of the category by its streamer's popularity, at a time while
the room is live; it is followed 1 to 60 s later by a gift with probability sigmoid(b + 5 affinity + streamer
bias + `title_effect` x hotness), b set on the first day so that the gift rate is `gift_rate`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .livestream.behaviour import _calibrate

T0 = 1_746_374_400  # 2025-05-05 00:00 UTC, unix seconds
DAY_S = 86_400
CATEGORIES = ["chat", "game", "shop", "music", "outdoor", "dance"]
M3_USERS, M3_ROOMS, M3_INTERACTIONS = 21_938, 6_560_000, 146_000_000
USER_ID0, STREAMER_ID0, ROOM_ID0 = 100_000, 10_000_000, 100_000_000


def m3_shape(interactions: int, users: int = M3_USERS, rooms_per_streamer: float = 14.5) -> dict:
    """The entity counts of a world of `interactions` in KuaiLive-M3's proportions: the users fixed, rooms in
    M3's ratio to interactions (6.56M per 146M), streamers `rooms_per_streamer` rooms each over the period."""
    rooms = max(round(interactions * M3_ROOMS / M3_INTERACTIONS), 60)
    return {"interactions": int(interactions), "users": int(users), "rooms": rooms,
            "streamers": max(round(rooms / rooms_per_streamer), len(CATEGORIES))}


def write_world(folder: str | os.PathLike, interactions: int, users: int = M3_USERS, rooms: int | None = None,
                streamers: int | None = None, days: int = 21, dim: int = 128, gift_rate: float = 0.04,
                title_effect: float = 1.0, seed: int = 0) -> dict:
    """Write the world into `folder` (created; existing files of the same names are replaced). `rooms` and
    `streamers` default to `m3_shape(interactions)`. Returns the counts written and the largest day's rows."""
    shape = m3_shape(interactions, users)
    rooms = shape["rooms"] if rooms is None else rooms
    streamers = shape["streamers"] if streamers is None else streamers
    for name, v, low in (("interactions", interactions, days), ("users", users, 1), ("rooms", rooms, days),
                         ("streamers", streamers, 1), ("days", days, 1), ("dim", dim, 1)):
        if v < low:
            raise ValueError(f"write_world: {name} must be at least {low}, got {v}")
    if not 0 < gift_rate < 1:
        raise ValueError(f"write_world: gift_rate must be in (0, 1), got {gift_rate}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_cat = len(CATEGORIES)
    st_cat = np.arange(streamers) % n_cat
    st_pop = rng.pareto(1.5, streamers) + 1.0
    st_cum = np.cumsum(st_pop / st_pop.sum())
    st_bias = rng.normal(0.0, 0.5, streamers)
    centroids = rng.normal(0.0, 1.0, (n_cat, dim))
    hot_dir = rng.normal(0.0, 1.0, dim)
    hot_dir /= np.linalg.norm(hot_dir)
    affinity = rng.dirichlet(np.full(n_cat, 0.3), users)
    activity = rng.choice([0.5, 1.0, 2.5], users, p=[0.5, 0.35, 0.15])
    p_cat = np.exp(2.0 * affinity)
    cat_cum = np.cumsum(p_cat / p_cat.sum(1, keepdims=True), axis=1)
    # interactions = clicks x (1 + gift_rate): the day's click budget so that the total comes out near the target
    clicks_day = np.diff(np.round(np.linspace(0, interactions / (1.0 + gift_rate), days + 1))).astype(np.int64)
    rooms_day = np.diff(np.round(np.linspace(0, rooms, days + 1))).astype(np.int64)

    ev_schema = pa.schema([("user_id", pa.int64()), ("live_id", pa.int64()), ("time", pa.int64()),
                           ("channel", pa.string()), ("label", pa.int8())])
    room_schema = pa.schema([("live_id", pa.int64()), ("streamer_id", pa.int64()), ("category", pa.string()),
                             ("live_type", pa.int8()), ("start", pa.int64()), ("end", pa.int64())])
    title_schema = pa.schema([("live_id", pa.int64())] + [(f"emb_{j}", pa.float32()) for j in range(dim)])
    counts = {"users": users, "streamers": streamers, "rooms": 0, "clicks": 0, "gifts": 0, "largest_day_rows": 0}
    bias = None
    room0 = 0
    with pq.ParquetWriter(folder / "events.parquet", ev_schema) as ev_w, \
            pq.ParquetWriter(folder / "rooms.parquet", room_schema) as room_w, \
            pq.ParquetWriter(folder / "titles.parquet", title_schema) as title_w:
        for d in range(days):
            # ---- the day's rooms
            nr = int(rooms_day[d])
            r_st = np.minimum(np.searchsorted(st_cum, rng.random(nr)), streamers - 1)
            r_cat = st_cat[r_st]
            r_start = T0 + d * DAY_S + rng.integers(8 * 3600, 20 * 3600, nr)
            r_len = rng.integers(1, 4, nr) * 3600
            r_hot = rng.normal(0.0, 1.0, nr)
            titles = (centroids[r_cat] + 2.0 * r_hot[:, None] * hot_dir
                      + rng.normal(0.0, 0.5, (nr, dim))).astype(np.float32)
            r_id = ROOM_ID0 + room0 + np.arange(nr)
            room_w.write_table(pa.table({
                "live_id": r_id, "streamer_id": STREAMER_ID0 + r_st,
                "category": pa.array(np.array(CATEGORIES)[r_cat]), "live_type": np.ones(nr, np.int8),
                "start": r_start, "end": r_start + r_len}, schema=room_schema))
            title_w.write_table(pa.Table.from_arrays([pa.array(r_id)] + [pa.array(titles[:, j]) for j in range(dim)],
                                                     schema=title_schema))
            del titles
            # ---- the day's clicks: user by activity, category by affinity, room of that category by popularity
            nc = int(clicks_day[d])
            cu = rng.choice(users, nc, p=activity / activity.sum())
            cc = np.minimum((cat_cum[cu] < rng.random(nc)[:, None]).sum(1), n_cat - 1)
            cr = np.empty(nc, np.int64)
            for c in range(n_cat):
                idx = np.flatnonzero(cc == c)
                cand = np.flatnonzero(r_cat == c)
                if not len(cand):  # no room of that category today: any room of the day
                    cand = np.arange(nr)
                w = np.cumsum(st_pop[r_st[cand]])
                cr[idx] = cand[np.minimum(np.searchsorted(w, rng.random(len(idx)) * w[-1]), len(cand) - 1)]
            ct = r_start[cr] + (rng.random(nc) * r_len[cr] * 0.9).astype(np.int64)
            logit = 5.0 * affinity[cu, cc] + st_bias[r_st[cr]] + title_effect * r_hot[cr]
            if bias is None:
                bias = _calibrate(logit, gift_rate)
            gift = rng.random(nc) < 1.0 / (1.0 + np.exp(-(logit + bias)))
            del logit
            g = np.flatnonzero(gift)
            user = np.concatenate([cu, cu[g]])
            room = np.concatenate([cr, cr[g]])
            time = np.concatenate([ct, ct[g] + rng.integers(1, 61, len(g))])
            is_gift = np.r_[np.zeros(nc, bool), np.ones(len(g), bool)]
            label = np.r_[gift, np.ones(len(g), bool)].astype(np.int8)
            del cu, cc, cr, ct, gift
            order = np.lexsort((is_gift, user, time))
            channel = pa.DictionaryArray.from_arrays(pa.array(is_gift[order].astype(np.int8)),
                                                     pa.array(["click", "gift"])).cast(pa.string())
            ev_w.write_table(pa.table({"user_id": USER_ID0 + user[order], "live_id": ROOM_ID0 + room0 + room[order],
                                       "time": time[order], "channel": channel, "label": label[order]},
                                      schema=ev_schema), row_group_size=1 << 20)
            counts["rooms"] += nr
            counts["clicks"] += nc
            counts["gifts"] += len(g)
            counts["largest_day_rows"] = max(counts["largest_day_rows"], nc + len(g))
            room0 += nr
            del user, room, time, is_gift, label, order, channel
    counts["interactions"] = counts["clicks"] + counts["gifts"]
    (folder / "spec.yaml").write_text(yaml.safe_dump(import_spec(dim), sort_keys=False))
    return counts


def import_spec(dim: int) -> dict:
    """The `modalrec data import` spec of the files `write_world` writes."""
    return {
        "name": "kuailive-m3-scale",
        "description": "planted live-streaming world in the KuaiLive-M3 shape (modalrec.sim.kuailive_scale)",
        "events": [{"file": "events.parquet", "user": "user_id", "item": "live_id", "time": "time",
                    "label": "label", "channel_column": "channel"}],
        "items": {"file": "rooms.parquet", "id": "live_id", "categorical": ["streamer_id", "category", "live_type"],
                  "numeric": []},
        "content": [{"name": "title_emb", "entity": "item", "kind": "vector", "file": "titles.parquet",
                     "id": "live_id", "columns": "emb_*", "dim": dim}],
    }
