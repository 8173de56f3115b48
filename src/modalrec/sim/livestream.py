"""A live-streaming platform with known ground truth: gift prediction from watches and raw content.

Built for issue 5 (MMBee, Deng et al., "MMBee: Live Streaming Gift-Sending Recommendations via
Multi-Modal Fusion and Behaviour Expansion", KDD 2024). The paper's task (its problem formulation) is
gift-through rate (GTR): given that a user watches a live segment, will they send a gift? Its signal
comes from the segment's multi-modal content (frames, speech, comments: the MFQ module, multi-modal
fusion with learnable queries) and from the user-streamer gifting graph (the GIE module, graph-guided
interest expansion). This world makes both kinds of signal real, hidden and measurable.

The world (all draws from `seed`; each stage has its own random stream, so `content_signal` changes the
gift probabilities, labels and prices and nothing else):

- Streamers (`a0000`, ...) have a content style (gaming, singing, chatting, outdoor, shopping; the
  visible `category`), a popularity, a gift bias, a latent COMMUNITY (the co-gifting structure) and a
  schedule: on each day they go live with a streamer-specific probability, one room (session) a day
  starting around their preferred hour, 30 min to 2 h long, split into `segment_minutes` segments.
  Cold streamers (`cold_streamers`, default 10%) debut only in the last 20% of the days.
- Segments (the items, `a0042/r3/g5`) have two HIDDEN variables: `hot` (a PK battle, gift rush or
  lucky draw; a two-state Markov chain along the room, stay probability 0.4, stationary rate
  `hot_rate`) and `quality` (standard normal: 0.6 room mood + 0.8 segment noise). Both are visible
  only in the content; they are kept in the items table as `gt_hot` and `gt_quality` (with the
  streamer's community as `gt_community`) for analysis and are NOT declared item features, so no
  model reads them. Segments nobody watched are left out of the data (they carry no sample).
- Users (`u00017`) have interests over styles (Dirichlet(0.6)), a sparse membership over the
  streamer communities (Dirichlet(0.3)) and an activity tier: heavy (8%, about 2.5 visits a day),
  regular (37%, 1 a day) or light (55%, 0.35 a day). Cold users (`cold_users`, default 10%) join in
  the last 20% of the days and show the observable tier "new"; every user's true tier and join time
  stay in the users table columns `gt_tier` and `gt_join_time` (not declared features).
- Watching: a user opens the app at a time drawn in proportion to how many rooms are live, picks a
  live streamer with probability ~ popularity * exp(1.0 interest + 0.5 community affinity) (0.5 is
  `watch_affinity`; at 0 what a user watches says nothing about their gifting community) and stays
  for a geometric number of segments (continuing with probability sigmoid(0.2 + 0.9 interest),
  clipped to [0.2, 0.85]; never past the room's end). Every watched segment is a `watch` event
  (the GTR sample) with the seconds watched; one watch per user and segment.
- Gifting (the ground truth, `p_true` on every watch):
      logit p = b0 + tier bias (heavy +1.6, regular 0, light -1.3) + 0.6 interest(user, style)
                + 0.8 affinity(user, streamer community) + streamer bias (N(0, 0.4))
                + content_signal * (2.5 hot + 0.9 quality)
                + gift_loyalty * log(1 + the user's gifts to this streamer at earlier watches)
  where interest = clip(log(5 theta), -2.5, 1.2) and affinity = clip(log(G pi), -2.5, 1.5) (0.8 is
  `gift_affinity`; the number of communities G is `communities`, default n_streamers // 6 within [2, 40];
  `gift_loyalty` defaults to 0: loyal fans, who come back to gift the streamers they gifted, are an option);
  b0 is solved so that the mean gift probability over the watches is `gift_rate` (default 2%), whatever
  `content_signal` is. The label is a Bernoulli draw of p; a gifted watch also emits a `gift` event a
  few seconds later with a lognormal price (by true tier, higher in hot segments). `content_signal=0`
  makes p a function of (user, streamer) (and of earlier gifts, with loyalty) only: the ablation in which
  content carries no gift signal.
- Watches emit `comment` and `like` events (more likely for liked styles and communities, never
  dependent on the hidden segment variables or the label), at times inside the watch. A comment
  event says who commented; the texts of the `comments` modality are the segment's whole chat.

Content (per segment; each modality may be missing: no row, at rates `missing`):
- `frames` (image, multi): 1 to 3 PNG frames, 224x224, rendered from a FINITE pool: per streamer 2
  scenes (a real photo bundled with scikit-image, chosen per style, cropped, flipped and tinted per
  scene, with style overlays: a game HUD, stage lights, chat bubbles, a compass, price tags) x 3
  quality tiers (low: dark, blurred, "360p"; high: vivid, sparkles, "HD") x {normal, hot (banner such
  as "PK BATTLE", gold frame, confetti)}.
- `speech` (audio): one clip from a pool of 5 styles x 3 tiers x {normal, hot} x 4 variants (120
  clips: a style opener, a tier sentence and, when hot, a call for gifts), spoken once each by
  espeak-ng (`-v en-us+f2 -s 160 -g 10`: the US voice with word gaps, which
  pocketsphinx's US model recognises about twice as well as `-v en`) and resampled to 16 kHz mono 16-bit WAV. Without espeak-ng (or with
  `espeak=False`) the modality is the transcript instead (kind "text"), and its description says so.
- `comments` (text, multi): 1 to 8 viewer comments (more in hot and good segments), each about the
  segment's state with probability 0.55 (gift calls when hot; complaints, small talk or praise by
  tier), otherwise unrelated chatter. Texts come from a fixed pool, so encoder caches stay bounded.
- Every modality shows the TRUE state only partly: with probability 0.8 (frames), 0.7 (speech) and
  0.6 (comments) it reflects the segment's hot state, independently again for its quality tier;
  otherwise it shows an unrelated state (hot on a normal segment with probability 0.03, a uniformly
  drawn tier). Rendered content never depends on `content_signal`.

Media file names are hashes of what they show, so a file present in `media_dir` is reused.

Deviations from the paper's data (Kuaishou logs, not public): the streams here are short rooms with
5-minute segments rather than hours of streams; the graph is a planted community structure; audio is
synthetic speech without music; gift prices are lognormal rather than a platform's gift catalogue.

Time is unix seconds from 2024-01-01; an event lies inside its segment. With a chronological split
that holds out the last ~20% of the time, cold streamers and users appear only in the test period.

Headroom, measured on the demo preset (seed 0, 18k watches): AUC of p_true 0.906; of p_true without
the content term 0.823 (what a model blind to content can reach at best); of the no-content logit plus
the Bayes-optimal estimate of the content term from the states the present modalities show 0.882
(what a perfect content reader can reach). The bench preset gives 0.906 / 0.826.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec

SIM_VERSION = "1"  # part of every cache key: bump when the same parameters would give other data
RENDER_VERSION = "1"  # part of every frame's file name: bump when the drawing changes

STYLES = ("gaming", "singing", "chatting", "outdoor", "shopping")
STYLE_SHARE = (0.25, 0.2, 0.25, 0.15, 0.15)
TIERS = ("low", "mid", "high")
ACTIVITY = ("heavy", "regular", "light")
ACTIVITY_SHARE = (0.08, 0.37, 0.55)
VISITS_PER_DAY = (2.5, 1.0, 0.35)
TIER_BIAS = (1.6, 0.0, -1.3)
PRICE_LOG_MEAN = (3.0, 1.9, 1.1)
START = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY = 86_400
MODALITIES = ("frames", "speech", "comments")
DEFAULT_MISSING = {"frames": 0.05, "speech": 0.25, "comments": 0.3}
VISIBILITY = {"frames": 0.8, "speech": 0.7, "comments": 0.6}
FALSE_HOT = 0.03
N_SCENES = 2
SPEECH_VARIANTS = 4
FRAME_SIZE = 224
SPEECH_RATE = 16_000

WATCH_AFFINITY = 0.5  # default weight of the community affinity in the choice of what to watch
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_users": 300, "n_streamers": 20, "days": 4},  # tests: ~2k watches, seconds
    "demo": {"n_users": 1_000, "n_streamers": 40, "days": 12},  # ~20k watches, well under a minute
    "bench": {"n_users": 10_000, "n_streamers": 300, "days": 21},  # >= 250k watches
    "large": {"n_users": 21_000, "n_streamers": 600, "days": 28},  # ~1M watches
}


@dataclass(frozen=True)
class GiftModel:
    """The weights of the ground-truth gift logit (see the module docstring); exposed for analysis."""

    interest: float = 0.6
    affinity: float = 0.8
    streamer_bias_sd: float = 0.4
    hot: float = 2.5
    quality: float = 0.9
    hot_price_log: float = 0.35
    loyalty: float = 0.0


GIFT = GiftModel()

# photos bundled with scikit-image (never downloaded), per style; grayscale ones are tinted per scene
PHOTOS: dict[str, tuple[str, ...]] = {
    "gaming": ("rocket.jpg", "hubble_deep_field.jpg", "motorcycle_left.png", "chessboard_RGB.png"),
    "singing": ("astronaut.png", "camera.png", "color.png"),
    "chatting": ("coffee.png", "chelsea.png", "clock_motion.png"),
    "outdoor": ("grass.png", "gravel.png", "moon.png", "horse.png", "brick.png"),
    "shopping": ("coins.png", "motorcycle_left.png", "coffee.png", "color.png"),
}
BANNERS: dict[str, tuple[str, ...]] = {
    "gaming": ("PK BATTLE", "CLUTCH TIME"),
    "singing": ("TOP FAN", "GIFT RUSH"),
    "chatting": ("LUCKY DRAW", "GIFT RUSH"),
    "outdoor": ("SUMMIT PUSH", "PK BATTLE"),
    "shopping": ("FLASH SALE", "GIFT RUSH"),
}

SPEECH_OPENERS: dict[str, tuple[str, ...]] = {
    "gaming": ("Alright chat, we are back in ranked.", "Let me try this boss one more time.",
               "Okay squad, we drop at the north side.", "This build is actually pretty strong."),
    "singing": ("Thank you for coming, the next song is a ballad.", "Let me tune the guitar for a second.",
                "This one is a request from the chat.", "I wrote this melody last night."),
    "chatting": ("So tell me how your day was.", "I just made a fresh cup of coffee.",
                 "Let us read some questions from the chat.", "My cat is sleeping right next to me."),
    "outdoor": ("We are hiking up to the lake today.", "The view from this ridge is incredible.",
                "It is getting windy up here.", "We just crossed the old bridge."),
    "shopping": ("The next item is the winter jacket.", "This serum sold out last week.",
                 "Let me show you the stitching up close.", "We have three colours in stock."),
}
SPEECH_TIER: dict[str, tuple[str, ...]] = {
    "low": ("Sorry, my connection keeps dropping, can you hear me?",
            "I am a bit tired today, this might be short.",
            "The camera is acting up again, give me a minute.", "Not many of you here today, that is fine."),
    "mid": ("Nothing special planned, we are just hanging out.", "Let me know what you want to see next.",
            "We will keep going for a while.", "Take your time, no rush tonight."),
    "high": ("The chat is on fire tonight, welcome to all the new friends!",
             "Everyone is here and the sound is perfect, this is the best stream this week!",
             "You are amazing, look at all these people joining!",
             "What an energy today, I love this crowd!"),
}
SPEECH_HOT: dict[str, tuple[str, ...]] = {
    "gaming": ("Final circle, one versus three, this is the clutch moment, send your support!",
               "PK battle starts now, send your gifts to win!"),
    "singing": ("Top fan challenge, the highest gifter picks the next song!",
                "Gift rush is on, every rose counts double!"),
    "chatting": ("Lucky draw in one minute, gifts give you extra tickets!",
                 "Gift rush is on, every rose counts double!"),
    "outdoor": ("We made it to the summit, light up the screen with gifts!",
                "PK battle starts now, send your gifts to win!"),
    "shopping": ("Flash sale, gift now to unlock the secret discount!",
                 "Gift rush is on, every rose counts double!"),
}

COMMENTS_HOT_GENERIC = (
    "PK time!!! everyone send roses", "gift rush lets gooo", "sending a rocket for this",
    "we have to win this",
    "top fan incoming", "go go go 666", "double points now, gifts!", "cannot miss this moment",
    "roses for you", "light it up!!", "everybody gift now", "we are winning, keep sending",
)
COMMENTS_HOT_STYLE: dict[str, tuple[str, ...]] = {
    "gaming": ("that clutch was insane, take my gift", "1v3 lets go, sending a rocket"),
    "singing": ("encore! sending a rose", "my gift for this song"),
    "chatting": ("lucky draw! I want a ticket", "gifting for the draw"),
    "outdoor": ("summit gift for you", "you made it! gift sent"),
    "shopping": ("flash sale! gifting to unlock", "gift sent, show the discount"),
}
COMMENTS_TIER: dict[str, tuple[str, ...]] = {
    "low": ("lagging again...", "cannot hear anything", "so boring today", "the picture is so dark",
            "audio keeps cutting out", "leaving, see you", "is the stream frozen?", "too blurry"),
    "mid": ("hi everyone", "nice", "ok", "what are we doing today", "hello hello", "just got here",
            "chilling", "same as yesterday"),
    "high": ("best stream ever", "this is amazing", "so good tonight", "crystal clear today",
             "love the energy", "you are the best", "wow wow wow", "never leaving this stream"),
}
COMMENTS_NOISE_GENERIC = (
    "hello from brazil", "first time here", "lol", "who else is watching at work", "what phone do you use",
    "hi mom", "brb", "anyone from london?", "what time is it there", "following now", "good morning",
    "is it raining there too", "haha", "can you say hi to me", "greetings from manila", "just woke up",
)
COMMENTS_NOISE_STYLE: dict[str, tuple[str, ...]] = {
    "gaming": ("what rank are you", "which game is this", "what mouse do you use", "try the other map"),
    "singing": ("what is the song name", "play the old one", "which guitar is that", "sing in spanish"),
    "chatting": ("what is the cat's name", "what are you drinking", "where do you live", "tell us a story"),
    "outdoor": ("where is this", "how long is the trail", "are there bears", "what camera is that"),
    "shopping": ("does it come in black", "how much is shipping", "size guide please", "is it waterproof"),
}


# ---------------------------------------------------------------------------------------------- parameters
def resolve_params(n_users: int | None = None, n_streamers: int | None = None, days: int | None = None,
                   seed: int = 0, preset: str | None = None, missing: dict[str, float] | None = None,
                   content_signal: float = 1.0, hot_rate: float = 0.08, gift_rate: float = 0.02,
                   segment_minutes: int = 5, cold_streamers: float = 0.1, cold_users: float = 0.1,
                   espeak: bool | None = None, watch_affinity: float = WATCH_AFFINITY, communities: int | None = None,
                   gift_affinity: float = GIFT.affinity, gift_loyalty: float = GIFT.loyalty) -> dict:
    """The full, checked parameter set of `generate` (what its output is a function of, media aside).

    `preset` fills in n_users / n_streamers / days that are not given (default preset: demo); `espeak`
    None becomes whether espeak-ng is installed. The result keys the caches."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown livestream preset {preset!r}: expected one of {sorted(PRESETS)}")
    base = PRESETS[preset or "demo"]
    n_users = base["n_users"] if n_users is None else n_users
    n_streamers = base["n_streamers"] if n_streamers is None else n_streamers
    days = base["days"] if days is None else days
    for name, v, lo in (("n_users", n_users, 10), ("n_streamers", n_streamers, 5), ("days", days, 2),
                        ("segment_minutes", segment_minutes, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"livestream: {name} must be an integer >= {lo}, got {v!r}")
    if 24 * 60 % segment_minutes:
        raise ValueError("livestream: segment_minutes must divide a day (1440 minutes), "
                         f"got {segment_minutes}")
    checks = (("content_signal", content_signal, 0.0, 10.0), ("hot_rate", hot_rate, 0.0, 0.6),
              ("gift_rate", gift_rate, 1e-4, 0.5), ("cold_streamers", cold_streamers, 0.0, 0.5),
              ("cold_users", cold_users, 0.0, 0.5), ("watch_affinity", watch_affinity, 0.0, 3.0),
              ("gift_affinity", gift_affinity, 0.0, 5.0), ("gift_loyalty", gift_loyalty, 0.0, 5.0))
    for name, v, lo, hi in checks:
        number = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
        if not number or not lo <= v <= hi:
            raise ValueError(f"livestream: {name} must be a number in [{lo}, {hi}], got {v!r}")
    miss = dict(DEFAULT_MISSING)
    for k, v in (missing or {}).items():
        if k not in DEFAULT_MISSING:
            raise ValueError(f"livestream: missing rates are for {list(DEFAULT_MISSING)}, got key {k!r}")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise ValueError(f"livestream: missing[{k!r}] must be a rate in [0, 1], got {v!r}")
        miss[k] = float(v)
    installed = espeak_available()
    if espeak is None:
        espeak = installed
    elif espeak and not installed:
        raise FileNotFoundError("livestream: espeak=True but espeak-ng is not on PATH (install the Debian "
                                "package espeak-ng, or pass espeak=None/False to emit the speech transcript "
                                "as text)")
    out = {"n_users": int(n_users), "n_streamers": int(n_streamers), "days": int(days), "seed": int(seed),
           "missing": miss, "content_signal": float(content_signal), "hot_rate": float(hot_rate),
            "gift_rate": float(gift_rate), "segment_minutes": int(segment_minutes),
            "cold_streamers": float(cold_streamers), "cold_users": float(cold_users), "espeak": bool(espeak),
            "version": SIM_VERSION}
    if communities is not None and (not isinstance(communities, (int, np.integer)) or isinstance(communities, bool)
                                    or not 2 <= communities <= n_streamers):
        raise ValueError(f"livestream: communities must be an integer in [2, n_streamers={n_streamers}], "
                         f"got {communities!r}")
    # only when changed, so the defaults keep the cache keys they had
    if watch_affinity != WATCH_AFFINITY:
        out["watch_affinity"] = float(watch_affinity)
    if communities is not None:
        out["communities"] = int(communities)
    if gift_affinity != GIFT.affinity:
        out["gift_affinity"] = float(gift_affinity)
    if gift_loyalty != GIFT.loyalty:
        out["gift_loyalty"] = float(gift_loyalty)
    return out


def cache_key(params: dict) -> str:
    """Stable 16-hex key of resolved parameters (`resolve_params`) and of how media are made (the voice):
    a cached world never points at clips spoken differently from what this code would speak."""
    return hashlib.sha256(json.dumps({**params, "voice": VOICE}, sort_keys=True).encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("MODALREC_CACHE", Path.home() / ".cache" / "modalrec"))


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


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


@dataclass
class _Watches:
    user: np.ndarray
    seg: np.ndarray
    time: np.ndarray  # int64 unix seconds
    duration: np.ndarray  # float seconds


def _watches(p: dict, w: _World, us: _Users, rng: np.random.Generator) -> _Watches:
    # ---- visit times: in proportion to how many rooms are live, within the user's active period
    n_live = (w.live_seg >= 0).sum(axis=1).astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(n_live)])
    active_days = (w.n_slots - us.join_slot) / w.slots_per_day
    rate = np.asarray(VISITS_PER_DAY)[us.tier] * active_days * (cum[-1] > cum[us.join_slot])
    n_visits = rng.poisson(rate)
    v_user = np.repeat(np.arange(len(n_visits)), n_visits)
    lo = cum[us.join_slot[v_user]]
    target = lo + rng.random(len(v_user)) * (cum[-1] - lo)
    v_slot = np.clip(np.searchsorted(cum, target, side="right") - 1, 0, w.n_slots - 1)

    # ---- the streamer: among those live in that slot, by popularity, interest and community
    v_seg = np.empty(len(v_user), dtype=np.int64)
    draw = rng.random(len(v_user))
    style, group = w.st_style, w.st_group
    for lo_i in range(0, len(v_user), 4096):
        sl = slice(lo_i, lo_i + 4096)
        uu = v_user[sl]
        logit = (w.st_logpop[None, :] + 1.0 * us.interest[uu][:, style]
                 + p.get("watch_affinity", WATCH_AFFINITY) * us.affinity[uu][:, group])
        segs = w.live_seg[v_slot[sl]]
        wt = np.where(segs >= 0, np.exp(logit - logit.max(axis=1, keepdims=True)), 0.0)
        cw = np.cumsum(wt, axis=1)
        pick = np.minimum((cw < (draw[sl] * cw[:, -1])[:, None]).sum(axis=1), cw.shape[1] - 1)
        v_seg[sl] = segs[np.arange(len(uu)), pick]
    ok = v_seg >= 0
    v_user, v_seg = v_user[ok], v_seg[ok]

    # ---- how long they stay: a geometric number of segments, longer for liked styles, within the room
    inter = us.interest[v_user, style[w.seg_streamer[v_seg]]]
    cont = np.clip(1.0 / (1.0 + np.exp(-(0.2 + 0.9 * inter))), 0.2, 0.85)
    k = np.minimum(rng.geometric(1.0 - cont), w.seg_last[v_seg] - v_seg + 1)
    entry = (rng.random(len(v_user)) * (w.seg_len - 30)).astype(np.int64)
    leave = rng.random(len(v_user))
    visit = np.repeat(np.arange(len(v_user)), k)
    j = np.arange(len(visit)) - np.repeat(np.cumsum(k) - k, k)
    seg = v_seg[visit] + j
    offset = np.where(j == 0, entry[visit], 0)
    last = j == k[visit] - 1
    span = w.seg_len - offset
    duration = np.where(last, 20.0 + leave[visit] * (span - 20.0), span.astype(np.float64))
    t = START + w.seg_slot[seg] * w.seg_len + offset
    user = v_user[visit]

    # one watch per (user, segment): overlapping visits of a user keep the earlier one
    order = np.lexsort((t, seg, user))
    user, seg, t, duration = user[order], seg[order], t[order], duration[order]
    first = np.ones(len(user), dtype=bool)
    first[1:] = (user[1:] != user[:-1]) | (seg[1:] != seg[:-1])
    user, seg, t, duration = user[first], seg[first], t[first], duration[first]
    order = np.lexsort((user, t))
    return _Watches(user[order], seg[order], t[order].astype(np.int64), np.round(duration[order], 1))


@dataclass
class _Gifts:
    p_true: np.ndarray
    label: np.ndarray  # bool
    price: np.ndarray  # 0 where no gift
    offset: np.ndarray  # seconds from the watch start to the gift
    intercept: float


def _gifts(p: dict, w: _World, us: _Users, wa: _Watches, rng: np.random.Generator) -> _Gifts:
    st = w.seg_streamer[wa.seg]
    base = (np.asarray(TIER_BIAS)[us.tier[wa.user]] + GIFT.interest * us.interest[wa.user, w.st_style[st]]
            + p.get("gift_affinity", GIFT.affinity) * us.affinity[wa.user, w.st_group[st]] + w.st_bias[st])
    hot = w.seg_hot[wa.seg]
    logit = base + p["content_signal"] * (GIFT.hot * hot + GIFT.quality * w.seg_quality[wa.seg])
    # every draw is made for every watch, so content_signal changes labels and prices but no other draw
    u = rng.random(len(logit))
    loyalty = p.get("gift_loyalty", GIFT.loyalty)
    if loyalty:
        b0, prob, label = _loyal_gifts(logit, wa.user * w.st_group.size + st, u, loyalty, p["gift_rate"])
    else:
        b0 = _calibrate(logit, p["gift_rate"])
        prob = 1.0 / (1.0 + np.exp(-(logit + b0)))
        label = u < prob
    log_price = (np.asarray(PRICE_LOG_MEAN)[us.tier[wa.user]] + GIFT.hot_price_log * p["content_signal"] * hot
                 + rng.normal(0.0, 0.9, len(prob)))
    price = np.where(label, np.maximum(np.round(np.exp(log_price), 2), 0.1), 0.0)
    offset = 2.0 + rng.random(len(prob)) * np.minimum(13.0, wa.duration - 3.0)
    return _Gifts(prob, label, price, offset.astype(np.int64), b0)


def _loyal_gifts(logit: np.ndarray, pair: np.ndarray, u: np.ndarray, loyalty: float,
                 rate: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Gifts of loyal fans: the logit of a watch gains loyalty * log(1 + the gifts its user made to its streamer
    at earlier watches), so labels are drawn in time order within each (user, streamer) pair (`pair` codes it;
    the watches come in time order) and vectorised across pairs, one watch of every pair per step. The
    intercept b0 is solved by bisection on the mean gift probability with the draws `u` held fixed (the mean
    grows with b0: every probability does, and so do the earlier gifts). Returns (b0, p_true, label)."""
    order = np.lexsort((np.arange(len(pair)), pair))  # by pair, then time
    code, first = np.unique(pair[order], return_index=True)
    sizes = np.diff(np.append(first, len(order)))
    rank = np.arange(len(order)) - np.repeat(first, sizes)  # position of each watch within its pair
    by_rank = order[np.argsort(rank, kind="stable")]
    pair_ix = np.empty(len(pair), dtype=np.int64)
    pair_ix[order] = np.repeat(np.arange(len(code)), sizes)
    steps = np.split(by_rank, np.cumsum(np.bincount(rank))[:-1])

    def draw(b0: float) -> tuple[np.ndarray, np.ndarray]:
        gifts = np.zeros(len(code))
        prob = np.empty(len(pair))
        label = np.empty(len(pair), dtype=bool)
        for idx in steps:
            q = 1.0 / (1.0 + np.exp(-(logit[idx] + b0 + loyalty * np.log1p(gifts[pair_ix[idx]]))))
            prob[idx] = q
            label[idx] = u[idx] < q
            gifts[pair_ix[idx]] += label[idx]
        return prob, label

    if not len(logit):
        return 0.0, np.empty(0), np.empty(0, dtype=bool)
    b0 = _bisect(lambda b: draw(b)[0].mean(), -30.0 - logit.max() - loyalty * np.log1p(len(pair)),
                 30.0 - logit.min(), rate, 40)
    return (b0, *draw(b0))


def _bisect(mean_at: Callable[[float], float], lo: float, hi: float, rate: float, steps: int) -> float:
    """The intercept b in [lo, hi] with mean_at(b) == rate, for a mean that grows with b."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if mean_at(mid) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _calibrate(logit: np.ndarray, rate: float) -> float:
    """The intercept b0 with mean(sigmoid(logit + b0)) == rate (bisection: the mean is monotone in b0)."""
    if not len(logit):
        return 0.0
    return _bisect(lambda b: np.mean(1.0 / (1.0 + np.exp(-(logit + b)))), -30.0 - logit.max(), 30.0 - logit.min(),
                   rate, 60)


def _events(w: _World, us: _Users, wa: _Watches, gi: _Gifts, seg_ids: np.ndarray,
            rng: np.random.Generator) -> pa.Table:
    n = len(wa.user)
    st = w.seg_streamer[wa.seg]
    inter = us.interest[wa.user, w.st_style[st]]
    aff = us.affinity[wa.user, w.st_group[st]]
    engaged = np.asarray([0.4, 0.0, -0.3])[us.tier[wa.user]]
    p_comment = 1.0 / (1.0 + np.exp(-(-2.4 + 0.8 * inter + 0.3 * aff + engaged)))
    p_like = 1.0 / (1.0 + np.exp(-(-1.6 + 0.8 * inter + 0.4 * aff + engaged)))
    c_idx = np.flatnonzero(rng.random(n) < p_comment)
    l_idx = np.flatnonzero(rng.random(n) < p_like)
    c_off = (1.0 + rng.random(len(c_idx)) * (wa.duration[c_idx] - 2.0)).astype(np.int64)
    l_off = (1.0 + rng.random(len(l_idx)) * (wa.duration[l_idx] - 2.0)).astype(np.int64)
    g_idx = np.flatnonzero(gi.label)
    src = np.concatenate([np.arange(n), c_idx, l_idx, g_idx])
    channel = np.repeat(np.arange(4, dtype=np.int8), [n, len(c_idx), len(l_idx), len(g_idx)])
    t = wa.time[src] + np.concatenate([np.zeros(n, np.int64), c_off, l_off, gi.offset[g_idx]])
    order = np.lexsort((channel, wa.user[src], t))
    src, channel, t = src[order], channel[order], t[order]
    is_watch, is_gift = channel == 0, channel == 3
    nan = np.full(len(src), np.nan)
    label = np.where(is_watch, gi.label[src].astype(np.float64), np.where(is_gift, 1.0, np.nan))
    price = np.where(is_watch | is_gift, gi.price[src], nan)
    duration = np.where(is_watch, wa.duration[src], nan)
    p_true = np.where(is_watch, gi.p_true[src], nan)
    prefix = np.array(["w", "c", "l", "g"], dtype=object)[channel]
    return pa.table({
        "user_id": pa.array(us.ids[wa.user[src]], pa.string()),
        "item_id": pa.array(seg_ids[wa.seg[src]], pa.string()),
        "time": pa.array(t, pa.int64()),
        "channel": pa.array(np.array(["watch", "comment", "like", "gift"], dtype=object)[channel],
                            pa.string()),
        "event_id": pc.binary_join_element_wise(pa.array(prefix, pa.string()),
                                                pc.cast(pa.array(src, pa.int64()), pa.string()), ""),
        "label": pa.array(label, pa.float64(), from_pandas=True),
        "price": pa.array(price, pa.float64(), from_pandas=True),
        "duration": pa.array(duration, pa.float64(), from_pandas=True),
        "p_true": pa.array(p_true, pa.float64(), from_pandas=True),
    })


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


# ---------------------------------------------------------------------------------------------- content
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


# ---------------------------------------------------------------------------------------------- media
_PALETTE = ((255, 94, 58), (255, 200, 40), (60, 200, 255), (140, 90, 255), (60, 230, 120), (255, 80, 180))


def _photo(name: str, cache: dict) -> object:
    from PIL import Image

    if name not in cache:
        with importlib.resources.as_file(importlib.resources.files("skimage.data") / name) as f:
            im = Image.open(f)
            im.load()
        if im.mode == "RGBA":  # horse, logo: put the cut-out on a sky-like background
            bg = Image.new("RGB", im.size, (150, 190, 230))
            bg.paste(im, mask=im.split()[3])
            im = bg
        cache[name] = im
    return cache[name]


def frame_spec(w: _World, streamer: int, scene: int, tier: int, hot: int) -> dict:
    """Everything a frame shows (JSON-able): its file name is the hash of this."""
    style = STYLES[int(w.st_style[streamer])]
    seed = int(w.st_scene_seed[streamer, scene])
    photo = PHOTOS[style][int(w.st_scene_photo[streamer, scene])]
    return {"v": RENDER_VERSION, "style": style, "photo": photo, "seed": seed, "name": f"@a{streamer:04d}",
            "tier": TIERS[tier], "hot": bool(hot),
            "banner": BANNERS[style][seed % len(BANNERS[style])]}


def render_frame(spec: dict, photos: dict | None = None):
    """The 224x224 RGB PIL image of `frame_spec`: photo scene + style overlays + tier look + hot banner."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

    photos = {} if photos is None else photos
    r = np.random.default_rng(spec["seed"])
    base = _photo(spec["photo"], photos)
    wd, ht = base.size
    side = int(min(wd, ht) * r.uniform(0.6, 1.0))
    x0, y0 = int(r.integers(0, wd - side + 1)), int(r.integers(0, ht - side + 1))
    im = base.crop((x0, y0, x0 + side, y0 + side)).resize((FRAME_SIZE, FRAME_SIZE), Image.BILINEAR)
    tint = _PALETTE[int(r.integers(len(_PALETTE)))]
    if base.mode == "L":
        dark = tuple(int(c * 0.15) for c in tint)
        im = ImageOps.colorize(im, black=dark, white=(255, 255, 255), mid=tint)
    else:
        im = Image.blend(im.convert("RGB"), Image.new("RGB", im.size, tint), 0.12)
    if r.random() < 0.5:
        im = ImageOps.mirror(im)
    im = im.convert("RGBA")
    over = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(over)
    small, mid, big = (ImageFont.load_default(size=s) for s in (11, 15, 26))
    _style_overlay(d, spec["style"], r, small, mid)
    d.rounded_rectangle((6, 6, 46, 22), 4, fill=(230, 30, 40, 235))
    d.text((12, 8), "LIVE", font=small, fill=(255, 255, 255, 255))
    d.text((52, 8), spec["name"], font=small, fill=(255, 255, 255, 255), stroke_width=1,
           stroke_fill=(0, 0, 0, 255))
    d.text((6, 26), f"viewers {int(r.integers(2, 99))}.{int(r.integers(10))}k", font=small,
           fill=(255, 255, 255, 230), stroke_width=1, stroke_fill=(0, 0, 0, 255))
    if spec["tier"] == "high":
        for _ in range(14):  # sparkles
            x, y, s = int(r.integers(10, 214)), int(r.integers(40, 200)), int(r.integers(2, 5))
            d.line((x - s, y, x + s, y), fill=(255, 255, 220, 230), width=1)
            d.line((x, y - s, x, y + s), fill=(255, 255, 220, 230), width=1)
        d.rounded_rectangle((186, 6, 218, 22), 4, fill=(20, 120, 255, 235))
        d.text((193, 8), "HD", font=small, fill=(255, 255, 255, 255))
    if spec["hot"]:
        for _ in range(40):  # confetti
            x, y, s = int(r.integers(0, 224)), int(r.integers(0, 224)), int(r.integers(2, 5))
            d.ellipse((x, y, x + s, y + s), fill=(*_PALETTE[int(r.integers(len(_PALETTE)))], 255))
        d.rectangle((0, 84, 224, 128), fill=(200, 20, 40, 215))
        d.rectangle((0, 84, 224, 88), fill=(255, 205, 40, 255))
        d.rectangle((0, 124, 224, 128), fill=(255, 205, 40, 255))
        tw = d.textlength(spec["banner"], font=big)
        d.text(((224 - tw) / 2, 92), spec["banner"], font=big, fill=(255, 240, 120, 255), stroke_width=2,
               stroke_fill=(90, 0, 0, 255))
        d.rectangle((0, 0, 223, 223), outline=(255, 200, 30, 255), width=6)
        d.rounded_rectangle((170, 190, 218, 214), 6, fill=(255, 200, 30, 240))
        d.text((180, 194), "x2", font=mid, fill=(120, 0, 0, 255))
    im = Image.alpha_composite(im, over).convert("RGB")
    if spec["tier"] == "low":  # a poor stream: dark, soft, noisy, and it says 360p
        im = ImageEnhance.Brightness(im).enhance(0.55)
        im = ImageEnhance.Contrast(im).enhance(0.7)
        im = im.filter(ImageFilter.GaussianBlur(2.0))
        noise = r.normal(0.0, 10.0, (FRAME_SIZE, FRAME_SIZE, 1))
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
        ImageDraw.Draw(im).text((186, 8), "360p", font=small, fill=(200, 200, 200))
    elif spec["tier"] == "high":
        im = ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.12)).enhance(1.35)
    return im


def _style_overlay(d, style: str, r: np.random.Generator, small, mid) -> None:
    """The drawings that make a style recognisable on screen."""
    white, black = (255, 255, 255, 255), (0, 0, 0, 255)
    if style == "gaming":
        hp = int(r.integers(30, 100))
        d.rectangle((8, 200, 108, 212), fill=(40, 40, 40, 200))
        d.rectangle((8, 200, 8 + hp, 212), fill=(40, 220, 80, 230))
        d.rectangle((160, 150, 216, 206), fill=(10, 30, 10, 190), outline=(120, 255, 120, 255))
        for _ in range(5):
            x, y = int(r.integers(164, 212)), int(r.integers(154, 202))
            d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 60, 60, 255))
        d.line((112, 104, 112, 120), fill=white, width=2)
        d.line((104, 112, 120, 112), fill=white, width=2)
        d.text((8, 182), f"SCORE {int(r.integers(1000, 99999))}", font=mid, fill=white, stroke_width=1,
               stroke_fill=black)
    elif style == "singing":
        for i in range(3):
            x = 30 + 80 * i
            d.polygon([(x, 0), (x - 30, 224), (x + 30, 224)], fill=(255, 255, 180, 45))
        d.ellipse((100, 150, 124, 174), fill=(60, 60, 60, 255), outline=(200, 200, 200, 255), width=2)
        d.rectangle((108, 174, 116, 214), fill=(40, 40, 40, 255))
        for _ in range(3):
            x, y = int(r.integers(20, 200)), int(r.integers(50, 140))
            d.ellipse((x, y + 10, x + 9, y + 17), fill=(255, 230, 255, 230))
            d.line((x + 8, y, x + 8, y + 14), fill=(255, 230, 255, 230), width=2)
        d.rectangle((0, 196, 224, 224), fill=(120, 20, 120, 180))
        d.text((8, 202), "NOW SINGING", font=mid, fill=white)
    elif style == "chatting":
        for i in range(3):
            y = 120 + 32 * i
            d.rounded_rectangle((120, y, 216, y + 24), 8, fill=(255, 255, 255, 210))
            d.line((128, y + 8, 128 + int(r.integers(30, 80)), y + 8), fill=(90, 90, 90, 255), width=2)
            d.line((128, y + 15, 128 + int(r.integers(20, 70)), y + 15), fill=(150, 150, 150, 255), width=2)
        d.rectangle((8, 150, 90, 214), outline=(255, 255, 255, 220), width=2)
        d.text((8, 46), "JUST CHATTING", font=mid, fill=white, stroke_width=1, stroke_fill=black)
    elif style == "outdoor":
        d.ellipse((170, 30, 214, 74), fill=(0, 0, 0, 120), outline=white, width=2)
        ang = r.uniform(0, 2 * np.pi)
        d.line((192, 52, 192 + 18 * np.cos(ang), 52 + 18 * np.sin(ang)), fill=(255, 60, 60, 255), width=3)
        d.text((188, 32), "N", font=small, fill=white)
        pts = [(int(20 + 30 * i), int(200 - r.integers(0, 40))) for i in range(7)]
        d.line(pts, fill=(255, 160, 40, 230), width=3)
        d.text((8, 182), f"ALT {int(r.integers(200, 3500))} m", font=mid, fill=white, stroke_width=1,
               stroke_fill=black)
    else:  # shopping
        for i in range(2):
            x, y = 12 + 110 * i, 150
            d.rounded_rectangle((x, y, x + 90, y + 26), 5, fill=(255, 230, 60, 235))
            d.text((x + 8, y + 5), f"${int(r.integers(5, 199))}.99", font=mid, fill=(120, 0, 0, 255))
        d.rounded_rectangle((60, 190, 164, 216), 8, fill=(30, 180, 80, 240))
        d.text((80, 195), "BUY NOW", font=mid, fill=white)
        d.rectangle((40, 46, 184, 140), outline=(255, 255, 255, 200), width=2)
        d.text((8, 46), f"IN STOCK {int(r.integers(2, 60))}", font=small, fill=white, stroke_width=1,
               stroke_fill=black)


def _render_frames(w: _World, keys: list[tuple[int, int, int, int]], folder: Path,
                   progress: bool) -> list[str]:
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    photos: dict = {}
    for name in {frame_spec(w, *k)["photo"] for k in keys}:  # loaded once, before the threads share them
        _photo(name, photos)
    paths, todo = [], []
    for key in keys:
        spec = frame_spec(w, *key)
        name = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
        path = folder / f"{name}.png"
        paths.append(str(path.resolve()))
        if not path.exists():
            todo.append((spec, path))

    def draw(item: tuple[dict, Path]) -> None:
        spec, path = item
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.png")
        # fastest zlib level: the same size here (photos compress poorly), a quarter of the time
        render_frame(spec, photos).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)  # a concurrent run sees the whole file or none

    if todo:  # PIL drops the GIL while it draws and encodes
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(tqdm(pool.map(draw, todo), total=len(todo), desc="frames", unit="image",
                      disable=not progress, mininterval=1.0))
    return paths


# espeak-ng voice: pocketsphinx (en-us model) recovers about twice as many words of it as of `-v en`
VOICE = "en-us+f2"

def _synthesise_speech(texts: list[str], folder: Path, progress: bool) -> list[str]:
    """Speak each text once with espeak-ng (-v en-us+f2 -s 160 -g 10), resampled to 16 kHz mono: absolute WAV paths."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    todo = []
    for text in texts:
        name = hashlib.sha1(f"espeak-ng|{VOICE}|160|g10|{SPEECH_RATE}|{text}".encode()).hexdigest()[:20]
        path = folder / f"{name}.wav"
        paths.append(str(path.resolve()))
        if not path.exists():
            todo.append((text, path))
    if todo:
        # espeak-ng and sox are separate processes: two at a time keep both cores busy
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(tqdm(pool.map(lambda tp: speak(*tp), todo), total=len(todo), desc="speech", unit="clip",
                      disable=not progress, mininterval=1.0))
    return paths


def speak(text: str, path: str | os.PathLike) -> Path:
    """Write `text` spoken by espeak-ng as a 16 kHz mono 16-bit WAV at `path` (atomically)."""
    path = Path(path)
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not on PATH (Debian package espeak-ng)")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".speak-") as td:
        raw, out = Path(td) / "raw.wav", Path(td) / "out.wav"
        res = subprocess.run([exe, "-v", VOICE, "-s", "160", "-g", "10", "-w", str(raw), "--", text],
                             capture_output=True,
                             check=False)
        if res.returncode or not raw.exists():
            raise RuntimeError(f"espeak-ng failed on {text!r}: {res.stderr.decode(errors='replace').strip()}")
        sox = shutil.which("sox")
        if sox is not None:
            # -R: sox's dither is seeded the same every run, so a clip is the same bytes in every world and
            # every cache (the speech encoders' caches are keyed by the file's bytes)
            subprocess.run([sox, "-R", str(raw), "-r", str(SPEECH_RATE), "-c", "1", "-b", "16", str(out)],
                           capture_output=True, check=True)
        else:
            _resample_wav(raw, out)
        os.replace(out, path)
    return path


def _resample_wav(src: Path, dst: Path) -> None:
    from math import gcd

    from scipy.signal import resample_poly

    with wave.open(str(src), "rb") as f:
        rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
        if width != 2:
            raise RuntimeError(f"{src}: expected 16-bit PCM from espeak-ng, got {8 * width}-bit")
        x = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64)
    x = x.reshape(-1, channels).mean(axis=1)
    g = gcd(SPEECH_RATE, rate)
    y = np.clip(np.round(resample_poly(x, SPEECH_RATE // g, rate // g)), -32768, 32767).astype("<i2")
    with wave.open(str(dst), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SPEECH_RATE)
        f.writeframes(y.tobytes())


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


__all__ = ["GIFT", "PRESETS", "STYLES", "GiftModel", "cache_key", "cache_root", "clip_text",
           "espeak_available", "frame_spec", "generate", "render_frame", "resolve_params", "speak"]
