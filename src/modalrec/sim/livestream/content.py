"""What each segment's content shows: per modality, which segments have it and which state (hot, tier)
it shows; frame keys, speech clips and comments drawn from the pools."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .params import FALSE_HOT, MODALITIES, N_SCENES, SPEECH_VARIANTS, STYLES, TIERS, VISIBILITY
from .pools import (
    COMMENTS_HOT_GENERIC,
    COMMENTS_HOT_STYLE,
    COMMENTS_NOISE_GENERIC,
    COMMENTS_NOISE_STYLE,
    COMMENTS_TIER,
    SPEECH_HOT,
    SPEECH_OPENERS,
    SPEECH_TIER,
)
from .world import _World


def _pool(groups: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = [s for g in groups for s in g]
    sizes = np.array([len(g) for g in groups])
    return np.array(flat, dtype=object), np.cumsum(sizes) - sizes, sizes


# comment pool layout: [hot generic, hot per style x5, tier x3, noise generic, noise per style x5]
_COMMENT_POOL, _COMMENT_OFF, _COMMENT_SIZE = _pool(
    [COMMENTS_HOT_GENERIC, *[COMMENTS_HOT_STYLE[s] for s in STYLES], *[COMMENTS_TIER[t] for t in TIERS],
     COMMENTS_NOISE_GENERIC, *[COMMENTS_NOISE_STYLE[s] for s in STYLES]])
_C_HOT, _C_HOT_STYLE, _C_TIER = 0, 1, 1 + len(STYLES)
_C_NOISE, _C_NOISE_STYLE = _C_TIER + len(TIERS), _C_TIER + len(TIERS) + 1


def clip_text(style: int, tier: int, hot: bool, variant: int) -> str:
    """The sentences of speech clip (style, tier, hot, variant): what the streamer says in such a segment."""
    s = STYLES[style]
    parts = [SPEECH_OPENERS[s][variant % len(SPEECH_OPENERS[s])],
             SPEECH_TIER[TIERS[tier]][(variant + style) % len(SPEECH_TIER[TIERS[tier]])]]
    if hot:
        parts.append(SPEECH_HOT[s][variant % len(SPEECH_HOT[s])])
    return " ".join(parts)


@dataclass
class _Content:
    frame_keys: list[tuple[int, int, int, int]]  # distinct (streamer, scene, tier, hot) rendered
    frames_seg: np.ndarray  # segments (world index) with frames
    frames_offsets: np.ndarray
    frames_values: np.ndarray  # index into frame_keys
    clip_texts: list[str]
    speech_seg: np.ndarray
    speech_clip: np.ndarray  # index into clip_texts
    comments_seg: np.ndarray
    comments_offsets: np.ndarray
    comments_values: np.ndarray  # index into _COMMENT_POOL


def _shown(w: _World, segs: np.ndarray, modality: str,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(hot, tier) a modality shows for `segs`: the truth with probability VISIBILITY, else an unrelated
    state."""
    vis = VISIBILITY[modality]
    hot = np.where(rng.random(len(segs)) < vis, w.seg_hot[segs], rng.random(len(segs)) < FALSE_HOT)
    tier = np.where(rng.random(len(segs)) < vis, w.seg_tier[segs], rng.integers(len(TIERS), size=len(segs)))
    return hot.astype(bool), tier.astype(np.int64)


def _content(p: dict, w: _World, keep: np.ndarray, rng: np.random.Generator) -> _Content:
    segs = np.flatnonzero(keep)
    n = len(segs)
    present = {m: segs[rng.random(n) >= p["missing"][m]] for m in MODALITIES}
    st = w.seg_streamer
    style = w.st_style[st]

    # ---- frames: 1..3 per segment; a hot segment shows its banner on the first frame, often on others
    fs = present["frames"]
    f_hot, f_tier = _shown(w, fs, "frames", rng)
    n_frames = 1 + (rng.random(len(fs)) < 0.6) + (rng.random(len(fs)) < 0.3)
    frame_seg = np.repeat(np.arange(len(fs)), n_frames)
    j = np.arange(len(frame_seg)) - np.repeat(np.cumsum(n_frames) - n_frames, n_frames)
    scene = rng.integers(N_SCENES, size=len(frame_seg))
    hot_frame = f_hot[frame_seg] & ((j == 0) | (rng.random(len(frame_seg)) < 0.7))
    code = ((st[fs][frame_seg] * N_SCENES + scene) * len(TIERS) + f_tier[frame_seg]) * 2 + hot_frame
    uniq, frame_values = np.unique(code, return_inverse=True)
    frame_keys = [(int(c // (2 * len(TIERS) * N_SCENES)), int(c // (2 * len(TIERS)) % N_SCENES),
                   int(c // 2 % len(TIERS)), int(c % 2)) for c in uniq.tolist()]

    # ---- speech: one pool clip per segment
    ss = present["speech"]
    s_hot, s_tier = _shown(w, ss, "speech", rng)
    variant = rng.integers(SPEECH_VARIANTS, size=len(ss))
    ccode = ((style[ss] * len(TIERS) + s_tier) * 2 + s_hot) * SPEECH_VARIANTS + variant
    cuniq, speech_clip = np.unique(ccode, return_inverse=True)
    clip_texts = [clip_text(int(c // (SPEECH_VARIANTS * 2 * len(TIERS))), int(c // (SPEECH_VARIANTS * 2) % 3),
                            bool(c // SPEECH_VARIANTS % 2), int(c % SPEECH_VARIANTS)) for c in cuniq.tolist()]

    # ---- comments: more in hot and good segments; on-topic with probability 0.55, else chatter
    cs = present["comments"]
    c_hot, c_tier = _shown(w, cs, "comments", rng)
    n_c = np.clip(1 + rng.poisson(1.5 + 2.5 * c_hot + 0.8 * (c_tier - 1)), 1, 8)
    cseg = np.repeat(np.arange(len(cs)), n_c)
    cstyle = style[cs][cseg]
    on_topic = rng.random(len(cseg)) < 0.55
    hot_topic = c_hot[cseg] & (rng.random(len(cseg)) < 0.7)
    style_flavour = rng.random(len(cseg)) < 0.4
    group = np.where(on_topic,
                     np.where(hot_topic, np.where(style_flavour, _C_HOT_STYLE + cstyle, _C_HOT),
                              _C_TIER + c_tier[cseg]),
                     np.where(style_flavour, _C_NOISE_STYLE + cstyle, _C_NOISE))
    comment_values = _COMMENT_OFF[group] + (rng.random(len(cseg)) * _COMMENT_SIZE[group]).astype(np.int64)

    def offsets(counts: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)

    return _Content(frame_keys, fs, offsets(n_frames), frame_values.astype(np.int64), clip_texts, ss,
                    speech_clip.astype(np.int64), cs, offsets(n_c), comment_values)


def _list_table(seg_ids: np.ndarray, segs: np.ndarray, offsets: np.ndarray, values: np.ndarray,
                column: str = "path") -> pa.Table:
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.string()))
    return pa.table({"entity_id": pa.array(seg_ids[segs], pa.string()), column: lists})
