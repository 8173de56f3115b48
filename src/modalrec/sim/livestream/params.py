"""The live-stream world's parameters: constants, presets, the gift model's weights, `resolve_params` and
the cache key of a parameter set."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

# espeak-ng voice: pocketsphinx (en-us model) recovers about twice as many words of it as of `-v en`
VOICE = "en-us+f2"

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
