"""`generate` / `simulate`: the stages run in order, each on its own random stream, and their output
assembled into the InteractionData and its dataset spec."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ...data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec
from .behaviour import _events, _Gifts, _gifts, _Watches, _watches
from .content import _COMMENT_POOL, _content, _list_table
from .frames import _render_frames
from .params import (
    ACTIVITY,
    GIFT,
    START,
    WATCH_AFFINITY,
    cache_key,
    cache_root,
    espeak_available,
    resolve_params,
)
from .speech import _synthesise_speech
from .world import _items_table, _segment_ids, _users, _world


class _Progress:
    def __init__(self, on: bool):
        self.on, self.t0, self.t = on, time.perf_counter(), time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        if self.on:
            print(f"[livestream] {what} ({now - self.t:.1f} s, total {now - self.t0:.1f} s)", file=sys.stderr)
        self.t = now


# ---------------------------------------------------------------------------------------------- generate
def generate(n_users: int | None = None, n_streamers: int | None = None, days: int | None = None,
             seed: int = 0, media_dir: str | os.PathLike | None = None, preset: str | None = None,
             missing: dict[str, float] | None = None, content_signal: float = 1.0, hot_rate: float = 0.08,
             espeak: bool | None = None, progress: bool = False, gift_rate: float = 0.02,
             segment_minutes: int = 5, cold_streamers: float = 0.1,
             cold_users: float = 0.1, watch_affinity: float = WATCH_AFFINITY, communities: int | None = None,
             gift_affinity: float = GIFT.affinity, gift_loyalty: float = GIFT.loyalty) -> InteractionData:
    """Simulate the live-streaming world of the module docstring.

    `preset` ("tiny", "demo", "bench", "large") sets n_users / n_streamers / days that are not given
    (default: demo). `media_dir` receives frames/ and speech/ (default: $MODALREC_CACHE or
    ~/.cache/modalrec, + livestream/<parameter key>/media); files already there are reused.
    `missing`: per-modality rates of segments without that modality (defaults frames 0.05, speech
    0.25, comments 0.3). `espeak`: None = use espeak-ng when installed; False = transcript as text.
    `watch_affinity`: weight of the community affinity in the choice of what to watch (default 0.5; 0 makes
    the gifting communities invisible in what users watch, visible only in who gifts whom). `communities`: the
    number of streamer communities (default n_streamers // 6 within [2, 40]); `gift_affinity`: weight of the
    community affinity in the gift logit (default 0.8). Fewer communities and a larger weight plant gifting
    circles that show in who gifts whom (what GIE reads; see benchmarks/gie_signal.py). `gift_loyalty`: weight
    of log(1 + the user's earlier gifts to this streamer) in the gift logit (default 0: gifts are independent
    draws; > 0 makes gifters loyal fans who come back to the streamers they gifted)."""
    p = resolve_params(n_users, n_streamers, days, seed, preset, missing, content_signal, hot_rate, gift_rate,
                       segment_minutes, cold_streamers, cold_users, espeak, watch_affinity, communities, gift_affinity,
                       gift_loyalty)
    return simulate(p, media_dir, progress)


def simulate(p: dict, media_dir: str | os.PathLike | None = None, progress: bool = False) -> InteractionData:
    """`generate` from a parameter set `resolve_params` returned."""
    media = Path(media_dir) if media_dir is not None else cache_root() / "livestream" / cache_key(p) / "media"
    prog = _Progress(progress)
    # world, schedule, users, watches, gifts, events, content: one stream each
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(7)]
    world = _world(p, rngs[0], rngs[1])
    prog(f"world: {p['n_streamers']} streamers, {len(world.seg_streamer)} segments")
    users = _users(p, world, rngs[2])
    watches = _watches(p, world, users, rngs[3])
    if not len(watches.user):
        raise ValueError(f"livestream: this world has no watches ({p['n_users']} users, {p['n_streamers']} "
                         f"streamers, {p['days']} days): give more users, streamers or days")
    prog(f"watches: {len(watches.user)}")
    gifts = _gifts(p, world, users, watches, rngs[4])
    prog(f"gifts: rate {gifts.label.mean():.4f}")
    # segments nobody watched are not part of the data: they carry no sample and no history
    keep = np.zeros(len(world.seg_streamer), dtype=bool)
    keep[watches.seg] = True
    content = _content(p, world, keep, rngs[6])
    prog("content drawn")
    media.mkdir(parents=True, exist_ok=True)
    frame_paths = _render_frames(world, content.frame_keys, media / "frames", progress)
    prog(f"frames: {len(content.frame_keys)} distinct images")
    if p["espeak"]:
        clip_values = _synthesise_speech(content.clip_texts, media / "speech", progress)
    else:
        clip_values = list(content.clip_texts)
    prog(f"speech: {len(content.clip_texts)} distinct clips")
    seg_ids = _segment_ids(world)
    events = _events(world, users, watches, gifts, seg_ids, rngs[5])
    prog(f"events: {events.num_rows}")
    items = _items_table(world, keep, seg_ids)
    tier_names = np.asarray(ACTIVITY, dtype=object)[users.tier]
    users_table = pa.table({
        "user_id": pa.array(users.ids, pa.string()),
        "activity": pa.array(np.where(users.cold, "new", tier_names), pa.string()),
        "gt_tier": pa.array(tier_names, pa.string()),
        "gt_join_time": pa.array(START + users.join_slot.astype(np.int64) * world.seg_len, pa.int64()),
    })
    speech_values = np.asarray(clip_values, dtype=object)[content.speech_clip]
    tables = {
        "frames": _list_table(seg_ids, content.frames_seg, content.frames_offsets,
                              np.asarray(frame_paths, dtype=object)[content.frames_values]),
        "speech": pa.table({
            "entity_id": pa.array(seg_ids[content.speech_seg], pa.string()),
            "path" if p["espeak"] else "text": pa.array(speech_values, pa.string()),
        }),
        "comments": _list_table(seg_ids, content.comments_seg, content.comments_offsets,
                                _COMMENT_POOL[content.comments_values], column="text"),
    }
    prog("tables built")
    return InteractionData(_spec(p, watches, gifts), events, items, users_table, tables)


# ---------------------------------------------------------------------------------------------- spec
def _spec(p: dict, wa: _Watches, gi: _Gifts) -> DatasetSpec:
    if p["espeak"]:
        speech = ModalitySpec(name="speech", entity="item", kind="audio",
                              description="the streamer's speech in the segment: one clip of a pool of "
                                          "sentences spoken by espeak-ng (-v en-us+f2 -s 160 -g 10), 16 kHz mono "
                                          "16-bit WAV")
    else:
        why = "espeak-ng not installed" if not espeak_available() else "espeak-ng disabled (espeak=False)"
        speech = ModalitySpec(name="speech", entity="item", kind="text",
                              description=f"transcript: {why}; the sentences the streamer says in the "
                                          "segment")
    return DatasetSpec(
        name="livestream",
        description=(f"simulated live-streaming platform (modalrec.sim.livestream, seed {p['seed']}): "
                     f"{p['n_users']} users, {p['n_streamers']} streamers, {p['days']} days, "
                     f"{len(wa.user)} watches, gift rate {gi.label.mean():.4f}, content_signal "
                     f"{p['content_signal']}; ground truth: p_true on watches, gt_hot / gt_quality / "
                     "gt_community on items and gt_tier on users (not declared features)"),
        semi_synthetic=False,
        channels=["watch", "comment", "like", "gift"],
        item_features=[FeatureSpec(name="streamer_id", kind="categorical"),
                       FeatureSpec(name="category", kind="categorical")],
        user_features=[FeatureSpec(name="activity", kind="categorical")],
        modalities=[
            ModalitySpec(name="frames", entity="item", kind="image", multi=True,
                         description="1 to 3 screenshots of the segment (224x224 PNG): a scene from a real "
                                     "photo with style overlays, look by quality, banner in hot moments"),
            speech,
            ModalitySpec(name="comments", entity="item", kind="text", multi=True,
                         description="1 to 8 viewer comments posted during the segment"),
        ],
        event_columns=["label", "price", "duration", "p_true"],
        source="modalrec.sim.livestream.generate (simulated; photos bundled with scikit-image, speech by "
               "espeak-ng)",
        citation="Deng et al., MMBee: Live Streaming Gift-Sending Recommendations via Multi-Modal Fusion and "
                 "Behaviour Expansion, KDD 2024",
    )
