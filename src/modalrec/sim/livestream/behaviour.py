"""Behaviour in the world: who watches what and how long, the ground-truth gifts (with loyalty and the
calibrated intercept), comments and likes; the events table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .params import GIFT, PRICE_LOG_MEAN, START, TIER_BIAS, VISITS_PER_DAY, WATCH_AFFINITY
from .world import _Users, _World


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
