"""The world's latent structure: streamers, their rooms and segments (hot / quality), users; the items
table of the watched segments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .params import ACTIVITY, ACTIVITY_SHARE, DAY, GIFT, N_SCENES, START, STYLE_SHARE, STYLES
from .pools import PHOTOS


# ---------------------------------------------------------------------------------------------- the world
@dataclass
class _World:
    seg_len: int  # seconds
    n_slots: int
    slots_per_day: int
    cold_from_slot: int
    st_style: np.ndarray  # (n_streamers,)
    st_group: np.ndarray
    st_logpop: np.ndarray
    st_bias: np.ndarray
    st_scene_photo: np.ndarray  # (n_streamers, N_SCENES) index into PHOTOS[style]
    st_scene_seed: np.ndarray  # (n_streamers, N_SCENES) drawing seed of the scene
    n_groups: int
    seg_streamer: np.ndarray  # (S,)
    seg_room: np.ndarray  # room number within the streamer
    seg_g: np.ndarray  # position within the room
    seg_slot: np.ndarray  # global 5-minute slot
    seg_last: np.ndarray  # index of the last segment of the same room
    seg_hot: np.ndarray  # bool
    seg_quality: np.ndarray
    live_seg: np.ndarray  # (n_slots, n_streamers) segment index or -1

    @property
    def seg_tier(self) -> np.ndarray:
        return np.digitize(self.seg_quality, [-0.5, 0.5])


def _world(p: dict, rng: np.random.Generator, rng_sched: np.random.Generator) -> _World:
    n_s, days = p["n_streamers"], p["days"]
    seg_len = 60 * p["segment_minutes"]
    spd = DAY // seg_len
    cold_days = max(1, round(0.2 * days))
    style = rng.choice(len(STYLES), size=n_s, p=STYLE_SHARE)
    style[: len(STYLES)] = np.arange(min(n_s, len(STYLES)))  # every style present
    n_groups = int(p.get("communities") or np.clip(n_s // 6, 2, 40))
    group = rng.integers(n_groups, size=n_s)
    logpop = rng.normal(0.0, 0.8, n_s)
    bias = rng.normal(0.0, GIFT.streamer_bias_sd, n_s)
    n_photos = np.array([len(PHOTOS[STYLES[s]]) for s in style])
    scene_photo = (rng.random((n_s, N_SCENES)) * n_photos[:, None]).astype(np.int64)
    scene_seed = rng.integers(0, 2**31 - 1, size=(n_s, N_SCENES))
    debut = np.zeros(n_s, dtype=np.int64)
    cold = rng.random(n_s) < p["cold_streamers"]
    debut[cold] = days - 1 - rng.integers(cold_days, size=int(cold.sum()))
    p_live = rng.uniform(0.35, 0.95, n_s)
    hour = np.clip(rng.normal(18.5, 3.0, n_s), 7.0, 21.5)

    # ---- rooms: at most one a day, ending the same day, so one streamer's rooms never overlap
    live = rng_sched.random((n_s, days)) < p_live[:, None]
    live &= np.arange(days)[None, :] >= debut[:, None]
    r_st, r_day = np.nonzero(live)  # streamer-major, then chronological
    minutes = np.clip(30 + 5 * rng_sched.poisson(6.0, len(r_st)), 30, 120)
    length = np.maximum(minutes // p["segment_minutes"], 1)
    start_in_day = (hour[r_st] * 3600 + rng_sched.normal(0.0, 1800.0, len(r_st))) // seg_len
    start_in_day = np.clip(start_in_day, 0, spd - length).astype(np.int64)
    r_start = r_day * spd + start_in_day
    first_room = np.searchsorted(r_st, np.arange(n_s))
    r_number = np.arange(len(r_st)) - first_room[r_st]

    # ---- segments
    seg_room_idx = np.repeat(np.arange(len(r_st)), length)
    room_first = np.cumsum(length) - length
    seg_g = np.arange(len(seg_room_idx)) - room_first[seg_room_idx]
    seg_slot = r_start[seg_room_idx] + seg_g
    seg_last = (room_first + length - 1)[seg_room_idx]
    n_seg = len(seg_room_idx)
    # hot: a Markov chain along each room, stay 0.4, stationary rate hot_rate
    stay = 0.4
    enter = p["hot_rate"] * (1 - stay) / (1 - p["hot_rate"])  # <= 0.9 for hot_rate <= 0.6
    u = rng.random(n_seg)
    hot = np.zeros(n_seg, dtype=bool)
    first = seg_g == 0
    hot[first] = u[first] < p["hot_rate"]
    for g in range(1, int(length.max()) if len(length) else 0):
        at = np.flatnonzero(seg_g == g)
        hot[at] = u[at] < np.where(hot[at - 1], stay, enter)
    mood = rng.normal(0.0, 1.0, len(r_st))
    quality = 0.6 * mood[seg_room_idx] + 0.8 * rng.normal(0.0, 1.0, n_seg)

    n_slots = days * spd
    live_seg = np.full((n_slots, n_s), -1, dtype=np.int32)
    live_seg[seg_slot, r_st[seg_room_idx]] = np.arange(n_seg, dtype=np.int32)
    return _World(seg_len=seg_len, n_slots=n_slots, slots_per_day=spd,
                  cold_from_slot=(days - cold_days) * spd,
                  st_style=style, st_group=group, st_logpop=logpop, st_bias=bias, st_scene_photo=scene_photo,
                  st_scene_seed=scene_seed, n_groups=n_groups, seg_streamer=r_st[seg_room_idx],
                  seg_room=r_number[seg_room_idx], seg_g=seg_g, seg_slot=seg_slot, seg_last=seg_last,
                  seg_hot=hot, seg_quality=quality, live_seg=live_seg)


@dataclass
class _Users:
    ids: np.ndarray
    tier: np.ndarray  # true tier (index into ACTIVITY)
    cold: np.ndarray  # joined late: observable tier "new"
    join_slot: np.ndarray
    interest: np.ndarray  # (n_users, n_styles) clipped log-interest
    affinity: np.ndarray  # (n_users, n_groups) clipped log-affinity


def _users(p: dict, w: _World, rng: np.random.Generator) -> _Users:
    n = p["n_users"]
    tier = rng.choice(len(ACTIVITY), size=n, p=ACTIVITY_SHARE)
    cold = rng.random(n) < p["cold_users"]
    join = rng.integers(0, w.slots_per_day // 2, size=n)  # most users are there from the first day
    join[cold] = rng.integers(w.cold_from_slot, w.n_slots - w.slots_per_day // 4, size=int(cold.sum()))
    theta = rng.dirichlet(np.full(len(STYLES), 0.6), n)
    pi = rng.dirichlet(np.full(w.n_groups, 0.3), n)
    with np.errstate(divide="ignore"):
        interest = np.clip(np.log(len(STYLES) * theta), -2.5, 1.2)
        affinity = np.clip(np.log(w.n_groups * pi), -2.5, 1.5)
    ids = np.array([f"u{i:05d}" for i in range(n)], dtype=object)
    return _Users(ids, tier, cold, join, interest, affinity)


def _segment_ids(w: _World) -> np.ndarray:
    return np.array([f"a{s:04d}/r{r}/g{g}" for s, r, g in zip(w.seg_streamer.tolist(), w.seg_room.tolist(),
                                                               w.seg_g.tolist())], dtype=object)


def _items_table(w: _World, keep: np.ndarray, seg_ids: np.ndarray) -> pa.Table:
    """The watched segments (`keep`); `seg_ids` holds every segment's id."""
    idx = np.flatnonzero(keep)
    st = w.seg_streamer[idx]
    st_ids = np.array([f"a{s:04d}" for s in range(len(w.st_style))], dtype=object)
    room_ids = np.array([f"{a}/r{r}" for a, r in zip(st_ids[st], w.seg_room[idx].tolist())], dtype=object)
    return pa.table({
        "item_id": pa.array(seg_ids[idx], pa.string()),
        "streamer_id": pa.array(st_ids[st], pa.string()),
        "category": pa.array(np.asarray(STYLES, dtype=object)[w.st_style[st]], pa.string()),
        "room_id": pa.array(room_ids, pa.string()),
        "start_time": pa.array(START + w.seg_slot[idx] * w.seg_len, pa.int64()),
        "gt_hot": pa.array(w.seg_hot[idx], pa.bool_()),
        "gt_quality": pa.array(w.seg_quality[idx], pa.float64()),
        "gt_community": pa.array(w.st_group[st], pa.int64()),
    })
