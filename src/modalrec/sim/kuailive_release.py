"""A planted live-streaming world written in the KuaiLive release layout (`modalrec.datasets.kuailive`).

Why: the real release is a large download that many users do not have yet, and its own files are too big
for tests. This writes the same files (room.csv with one row per room, click / comment / like / gift /
negative .csv with Unix-millisecond times, user.csv and streamer.csv with the documented columns,
title_embeddings.npy) for a world of any size, so configs/livestream/*_kuailive.yaml and
`benchmarks/livestream.py --kuailive` can be run end to end before the real data is at hand, and
`benchmarks/kuailive_scale.py` can time the pipeline at the release's user and streamer counts.

The world (planted, so a ranker has something to learn):
- streamers belong to one of `CATEGORIES` (live_content_category); popularity is heavy-tailed (Pareto), and
  a streamer goes live on a day with a chance that grows with its popularity (about `rooms_per_streamer`
  rooms over the period); a room's title vector is its category's centroid, plus its "hotness" (N(0, 1),
  how much the room invites gifts, as a giveaway announced in a title) along one direction, plus noise;
- users have Dirichlet(0.3) affinities over the categories and an activity level; a click picks a
  category by exp(2 x affinity) and, within it, one of that day's rooms by popularity;
- a click is followed by a gift with probability sigmoid(b + 5 affinity(user, category) + streamer bias
  + `title_effect` x the room's hotness + 1.5 log(1 + the user's gifts to that streamer on earlier days)),
  b set so that the rate without loyalty is `gift_rate` (loyalty adds to it); gifts come 1 to 60 s after
  the click, in the same room, so the loader credits them to it;
- comments (10%) and likes (20%) follow some clicks; negative.csv holds exposures of other rooms of the same
  day that were not clicked (30% of clicks have one).
Not a model of Kuaishou: the counts, rates and effects are ours, chosen to be learnable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .livestream import _calibrate

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
T0 = 1746374400000  # 2025-05-05 00:00 +08:00 in ms
CATEGORIES = ["chat", "game", "shop", "music", "outdoor", "dance"]
USER_COLUMNS = ["user_id", "age", "gender", "country", "device_brand", "device_price", "reg_timestamp", "fans_num",
                "follow_num", "first_watch_live_timestamp", "accu_watch_live_cnt", "accu_watch_live_duration",
                "is_live_streamer", "is_photo_author"] + [f"onehot_feat{i}" for i in range(7)]
STREAMER_COLUMNS = ["streamer_id", "gender", "age", "country", "device_brand", "device_price", "live_operation_tag",
                    "fans_user_num", "fans_group_fans_num", "follow_user_num", "first_live_timestamp",
                    "accu_live_cnt", "accu_live_duration", "accu_play_cnt", "accu_play_duration",
                    "reg_timestamp"] + [f"onehot_feat{i}" for i in range(7)]
USER_ID0, STREAMER_ID0, ROOM_ID0 = 100_000, 900_000, 7_000_000


def write_release(folder: str | os.PathLike, n_users: int = 300, n_streamers: int = 36, days: int = 8,
                  clicks_per_user_day: float = 4.0, rooms_per_streamer: float = 6.4, gift_rate: float = 0.04,
                  title_effect: float = 1.0, dim: int = 16, seed: int = 0) -> dict:
    """Write the release files into `folder` (created). Returns what was written: counts of users, streamers,
    rooms, clicks, gifts, comments, likes, negatives."""
    if min(n_users, n_streamers, days) < 1 or clicks_per_user_day <= 0 or rooms_per_streamer <= 0:
        raise ValueError("write_release: n_users, n_streamers, days >= 1 and positive rates are required")
    if not 0 < gift_rate < 1:
        raise ValueError(f"write_release: gift_rate must be in (0, 1), got {gift_rate}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_cat = len(CATEGORIES)

    # ---- streamers and their rooms
    st_cat = np.arange(n_streamers) % n_cat
    st_pop = rng.pareto(1.5, n_streamers) + 1.0
    st_bias = rng.normal(0.0, 0.5, n_streamers)
    live_p = np.clip(rooms_per_streamer / days * st_pop / st_pop.mean(), 0.0, 0.95)
    room_day, room_st = np.nonzero(rng.random((days, n_streamers)) < live_p)  # day-major
    n_rooms = len(room_st)
    if n_rooms == 0:
        raise ValueError("write_release: no streamer went live; raise rooms_per_streamer")
    room_start = T0 + room_day * DAY_MS + rng.integers(8, 20, n_rooms) * HOUR_MS
    room_len = rng.integers(1, 4, n_rooms) * HOUR_MS
    centroids = rng.normal(0.0, 1.0, (n_cat, dim))
    hot_dir = rng.normal(0.0, 1.0, dim)
    hot_dir /= np.linalg.norm(hot_dir)
    room_hot = rng.normal(0.0, 1.0, n_rooms)  # how much the room invites gifts: seen in its title only
    titles = (centroids[st_cat[room_st]] + 2.0 * room_hot[:, None] * hot_dir
              + rng.normal(0.0, 0.5, (n_rooms, dim))).astype(np.float32)

    # ---- clicks: user by activity, day uniform, category by affinity, room of that day and category by popularity
    affinity = rng.dirichlet(np.full(n_cat, 0.3), n_users)
    activity = rng.choice([0.5, 1.0, 2.5], n_users, p=[0.5, 0.35, 0.15])
    n_clicks = round(clicks_per_user_day * n_users * days)
    cu = rng.choice(n_users, n_clicks, p=activity / activity.sum())
    cd = rng.integers(0, days, n_clicks)
    pc = np.exp(2.0 * affinity)
    cum = np.cumsum(pc / pc.sum(1, keepdims=True), axis=1)
    cc = np.minimum((cum[cu] < rng.random(n_clicks)[:, None]).sum(1), n_cat - 1)
    room_cat = st_cat[room_st]
    cr = np.full(n_clicks, -1, np.int64)
    group = cd * n_cat + cc
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(days * n_cat + 1))
    for g in range(days * n_cat):
        idx = order[bounds[g]:bounds[g + 1]]
        if not len(idx):
            continue
        d, c = divmod(g, n_cat)
        cand = np.flatnonzero((room_day == d) & (room_cat == c))
        if not len(cand):  # no room of that category live that day: any room of the day, else any room
            cand = np.flatnonzero(room_day == d)
            if not len(cand):
                cand = np.arange(n_rooms)
        w = np.cumsum(st_pop[room_st[cand]])
        cr[idx] = cand[np.minimum(np.searchsorted(w, rng.random(len(idx)) * w[-1]), len(cand) - 1)]
    cs = room_st[cr]
    ct = room_start[cr] + (rng.random(n_clicks) * room_len[cr] * 0.9).astype(np.int64)  # while the room is live
    by_time = np.lexsort((cu, ct))
    cu, cr, cs, ct, cd = cu[by_time], cr[by_time], cs[by_time], ct[by_time], room_day[cr[by_time]]
    watch_ms = rng.integers(5_000, 1_800_000, n_clicks)

    # ---- gifts, day by day so loyalty counts the gifts of earlier days
    base = affinity[cu, st_cat[cs]] * 5.0 + st_bias[cs] + title_effect * room_hot[cr]
    b = _calibrate(base, gift_rate)
    gift = np.zeros(n_clicks, bool)
    pair = cu.astype(np.int64) * n_streamers + cs
    keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for d in range(days):
        today = np.flatnonzero(cd == d)
        prior = np.zeros(len(today), np.int64)
        if len(keys):
            pos = np.minimum(np.searchsorted(keys, pair[today]), len(keys) - 1)
            prior = np.where(keys[pos] == pair[today], counts[pos], 0)
        p = 1.0 / (1.0 + np.exp(-(base[today] + b + 1.5 * np.log1p(prior))))
        gift[today] = rng.random(len(today)) < p
        new, n_new = np.unique(pair[today][gift[today]], return_counts=True)
        keys, inv = np.unique(np.r_[keys, new], return_inverse=True)
        counts = np.bincount(inv, weights=np.r_[counts, n_new], minlength=len(keys)).astype(np.int64)
    g = np.flatnonzero(gift)
    gift_t = ct[g] + rng.integers(1_000, 60_000, len(g))
    price = rng.choice([1, 5, 10, 50, 100], len(g), p=[0.4, 0.3, 0.15, 0.1, 0.05])
    com = np.flatnonzero(rng.random(n_clicks) < 0.1)
    lik = np.flatnonzero(rng.random(n_clicks) < 0.2)
    neg = np.flatnonzero(rng.random(n_clicks) < 0.3)
    # an exposure of another room live that day (rooms are day-major: a random offset within the day's block)
    day_first = np.searchsorted(room_day, np.arange(days))
    day_n = np.bincount(room_day, minlength=days)
    neg_room = day_first[cd[neg]] + (rng.random(len(neg)) * day_n[cd[neg]]).astype(np.int64)

    uid = USER_ID0 + np.arange(n_users)
    sid = STREAMER_ID0 + np.arange(n_streamers)
    lid = ROOM_ID0 + np.arange(n_rooms)
    dates = np.array([int((np.datetime64("2025-05-05") + np.timedelta64(d, "D")).astype(str).replace("-", ""))
                      for d in range(days)])
    _csv(folder / "room.csv", {
        "p_date": dates[room_day], "live_id": lid, "streamer_id": sid[room_st], "live_type": np.ones(n_rooms, int),
        "start_timestamp": room_start, "end_timestamp": room_start + room_len,
        "live_content_category": np.array(CATEGORIES)[room_cat], "live_name_id": np.arange(n_rooms)})
    _csv(folder / "click.csv", {"user_id": uid[cu], "live_id": lid[cr], "streamer_id": sid[cs], "timestamp": ct,
                                "watch_live_time": watch_ms})
    _csv(folder / "gift.csv", {"user_id": uid[cu[g]], "live_id": lid[cr[g]], "streamer_id": sid[cs[g]],
                               "timestamp": gift_t, "gift_price": price})
    for name, rows, offset in (("comment.csv", com, 500), ("like.csv", lik, 700)):
        _csv(folder / name, {"user_id": uid[cu[rows]], "live_id": lid[cr[rows]], "streamer_id": sid[cs[rows]],
                             "timestamp": ct[rows] + offset})
    _csv(folder / "negative.csv", {"user_id": uid[cu[neg]], "live_id": lid[neg_room],
                                   "streamer_id": sid[room_st[neg_room]], "timestamp": ct[neg] - 1})
    _csv(folder / "user.csv", {"user_id": uid} | {c: np.zeros(n_users, int) for c in USER_COLUMNS[1:]})
    _csv(folder / "streamer.csv", {"streamer_id": sid} | {c: np.zeros(n_streamers, int) for c in STREAMER_COLUMNS[1:]})
    np.save(folder / "title_embeddings.npy", titles)
    return {"users": n_users, "streamers": n_streamers, "rooms": n_rooms, "clicks": n_clicks, "gifts": len(g),
            "comments": len(com), "likes": len(lik), "negatives": len(neg)}


def _csv(path: Path, columns: dict) -> None:
    pacsv.write_csv(pa.table({k: pa.array(v) for k, v in columns.items()}), path,
                    pacsv.WriteOptions(quoting_style="none"))
