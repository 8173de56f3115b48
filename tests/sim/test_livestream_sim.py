"""The live-streaming simulator: determinism, ground truth, content that carries the hidden state, media."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from modalrec.data.interaction import InteractionData
from modalrec.datasets import DATASETS, load_dataset
from modalrec.sim import livestream as ls

HAS_ESPEAK = ls.espeak_available()
TINY = {"preset": "tiny", "seed": 3}
SMALL = {"n_users": 60, "n_streamers": 6, "days": 2, "seed": 1}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def world(media) -> InteractionData:
    return ls.generate(**TINY, media_dir=media)


@pytest.fixture(scope="module")
def text_world(media) -> InteractionData:
    return ls.generate(**TINY, media_dir=media, espeak=False)


def _watches(data: InteractionData) -> dict[str, np.ndarray]:
    w = data.events.filter(pc.equal(data.events["channel"], "watch"))
    return {c: w[c].to_numpy(zero_copy_only=False) for c in w.column_names}


def _item_column(data: InteractionData, ids: np.ndarray, column: str) -> np.ndarray:
    items = data.items
    pos = {k: i for i, k in enumerate(items["item_id"].to_pylist())}
    return items[column].to_numpy(zero_copy_only=False)[[pos[i] for i in ids]]


def _lists(data: InteractionData, name: str) -> dict[str, list]:
    t = data.content[name]
    col = "path" if "path" in t.column_names else "text"
    return dict(zip(t["entity_id"].to_pylist(), t[col].to_pylist()))


def test_spec_tables_and_validation(world, tmp_path):
    data = world.validate()
    spec = data.spec
    assert spec.name == "livestream" and not spec.semi_synthetic and "simulated" in spec.description
    assert spec.channels == ["watch", "comment", "like", "gift"]
    assert spec.event_columns == ["label", "price", "duration", "p_true"]
    assert [(f.name, f.kind) for f in spec.item_features] == [("streamer_id", "categorical"),
                                                              ("category", "categorical")]
    assert [(f.name, f.kind) for f in spec.user_features] == [("activity", "categorical")]
    kinds = {m.name: (m.kind, m.multi) for m in spec.modalities}
    assert kinds == {"frames": ("image", True), "speech": ("audio" if HAS_ESPEAK else "text", False),
                     "comments": ("text", True)}
    # the hidden variables are there for analysis but no model may read them
    assert {"gt_hot", "gt_quality"} <= set(data.items.column_names)
    assert not {f.name for f in spec.item_features} & {"gt_hot", "gt_quality", "gt_community"}
    items = data.items.to_pylist()
    for it in items:
        m = re.fullmatch(r"(a\d{4})/r(\d+)/g(\d+)", it["item_id"])
        assert m and m.group(1) == it["streamer_id"] and it["room_id"] == f"{m.group(1)}/r{m.group(2)}"
        assert it["category"] in ls.STYLES
    cats = {}
    for it in items:  # a streamer keeps one style
        assert cats.setdefault(it["streamer_id"], it["category"]) == it["category"]
    assert set(data.users["activity"].to_pylist()) == {"heavy", "regular", "light", "new"}
    back = InteractionData.load(data.save(tmp_path / "ds"))
    assert back.fingerprint() == data.fingerprint()


def test_events_are_chronological_and_inside_their_segment(world):
    ev = world.events
    t = ev["time"].to_numpy()
    assert (np.diff(t) >= 0).all()
    assert pc.count_distinct(ev["event_id"]).as_py() == ev.num_rows
    start = _item_column(world, ev["item_id"].to_numpy(zero_copy_only=False), "start_time")
    assert ((t >= start) & (t < start + 300)).all()
    ch = ev["channel"].to_numpy(zero_copy_only=False)
    for c in ("comment", "like"):
        sel = ev.filter(pc.equal(ev["channel"], c))
        assert sel.num_rows > 0
        assert sel["label"].null_count == sel["p_true"].null_count == sel["price"].null_count == sel.num_rows
    w = _watches(world)
    assert set(np.unique(w["label"])) == {0.0, 1.0}
    assert ((w["price"] > 0) == (w["label"] == 1)).all()
    assert ((w["duration"] >= 20) & (w["duration"] <= 300)).all()
    assert ((w["p_true"] > 0) & (w["p_true"] < 1)).all()
    assert len(set(zip(w["user_id"], w["item_id"]))) == len(w["user_id"])  # one watch per (user, segment)
    # one gift event per gifted watch: same user and segment, a few seconds later, same price
    g = ev.filter(pc.equal(ev["channel"], "gift"))
    gifted = {(u, i): (tt, p) for u, i, tt, p, lab in zip(w["user_id"], w["item_id"], w["time"], w["price"],
                                                         w["label"]) if lab == 1}
    assert g.num_rows == len(gifted) == int((ch == "gift").sum())
    columns = ("user_id", "item_id", "time", "price", "label")
    for u, i, tt, p, lab in zip(*(g[c].to_pylist() for c in columns)):
        wt, wp = gifted[(u, i)]
        assert 2 <= tt - wt <= 15 and p == wp and lab == 1.0


def test_deterministic_with_a_seed(world, media):
    again = ls.generate(**TINY, media_dir=media)  # media reused: the files are named by what they show
    assert again.fingerprint() == world.fingerprint()
    one = ls.generate(**SMALL, media_dir=media, espeak=False)
    other = ls.generate(**{**SMALL, "seed": 2}, media_dir=media, espeak=False)
    assert one.fingerprint() != other.fingerprint()


@pytest.mark.skipif(not ls.espeak_available(), reason="espeak-ng is not installed")
def test_speech_is_the_same_bytes_every_time(tmp_path):
    """A clip spoken twice is byte-identical (espeak-ng is deterministic, sox's dither is seeded): worlds drawn
    apart share their speech encoders' caches, which are keyed by the file's bytes."""
    a = ls.speak("gift rush now, send a rocket", tmp_path / "a.wav").read_bytes()
    b = ls.speak("gift rush now, send a rocket", tmp_path / "b.wav").read_bytes()
    assert a[:4] == b"RIFF" and len(a) > 10_000 and a == b


def test_gift_rate_and_calibration(world):
    w = _watches(world)
    rate, mean_p = w["label"].mean(), w["p_true"].mean()
    assert 0.01 <= rate <= 0.03
    assert mean_p == pytest.approx(0.02, abs=1e-6)  # the intercept is solved for the requested rate
    assert abs(rate - mean_p) < 4 * np.sqrt(mean_p * (1 - mean_p) / len(w["label"]))
    # heavy gifters gift more than light ones (activity is observable and informative)
    tier = dict(zip(world.users["user_id"].to_pylist(), world.users["activity"].to_pylist()))
    by = {t: w["p_true"][[tier[u] == t for u in w["user_id"]]].mean() for t in ("heavy", "light")}
    assert by["heavy"] > 3 * by["light"]


def test_cold_streamers_and_users_appear_late(world):
    ev = world.events
    t = ev["time"].to_numpy()
    late = t.min() + 0.75 * (t.max() - t.min())
    first_seen = {}
    for a, tt in zip(_item_column(world, ev["item_id"].to_numpy(zero_copy_only=False), "streamer_id"), t):
        first_seen.setdefault(a, tt)
    assert any(v >= late for v in first_seen.values())
    new = set(world.users.filter(pc.equal(world.users["activity"], "new"))["user_id"].to_pylist())
    users = ev["user_id"].to_numpy(zero_copy_only=False)
    assert new and all(t[users == u].min() >= late - 86_400 for u in new if (users == u).any())


def test_content_signal_zero_removes_the_hidden_state_from_p_true(world, media):
    flat = ls.generate(**TINY, media_dir=media, content_signal=0.0)
    w1, w0 = _watches(world), _watches(flat)
    for c in ("user_id", "item_id", "time", "duration"):
        assert (w1[c] == w0[c]).all(), c  # the same world: only the gift model changed
    hot = _item_column(world, w1["item_id"], "gt_hot").astype(float)
    q = _item_column(world, w1["item_id"], "gt_quality")
    streamer = _item_column(world, w1["item_id"], "streamer_id")

    def logit(p):
        return np.log(p / (1 - p))

    # with content_signal 1 the hidden state adds exactly 2.5 hot + 0.9 quality (up to the intercept)
    diff = logit(w1["p_true"]) - logit(w0["p_true"]) - (ls.GIFT.hot * hot + ls.GIFT.quality * q)
    assert np.ptp(diff) < 1e-6
    # with content_signal 0, p_true is a function of (user, streamer) only
    pair = np.char.add(w0["user_id"].astype(str), streamer.astype(str))
    _, inv, counts = np.unique(pair, return_inverse=True, return_counts=True)
    for p, name in ((w0["p_true"], "flat"), (w1["p_true"], "signal")):
        lo = np.full(counts.size, np.inf)
        hi = np.full(counts.size, -np.inf)
        np.minimum.at(lo, inv, p)
        np.maximum.at(hi, inv, p)
        spread = (hi - lo)[counts > 1].max()
        assert (spread < 1e-12) if name == "flat" else (spread > 0.01), name
    # and the content itself does not change with it
    assert flat.content["comments"].equals(world.content["comments"])


def _banner_shown(path: str) -> bool:
    """The hot banner: a red band across the middle of the frame (rows 84-128), in every tier's look. Measured
    against a band of the same height below it, so a photo tinted red all over does not count."""
    px = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)

    def red_share(rows: np.ndarray) -> float:
        r, g, b = rows[..., 0], rows[..., 1], rows[..., 2]
        return float(((r > 1.8 * g) & (r > 1.5 * b) & (r > 60)).mean())

    return red_share(px[92:120, 8:216]) - red_share(px[140:168, 8:216]) > 0.35


def test_frames_speech_and_comments_carry_the_hot_state(world, text_world):
    hot = dict(zip(world.items["item_id"].to_pylist(), world.items["gt_hot"].to_pylist()))
    frames = _lists(world, "frames")
    shown = {i: _banner_shown(paths[0]) for i, paths in frames.items()}  # the first frame shows a hot moment
    on_hot = np.mean([shown[i] for i in shown if hot[i]])
    on_normal = np.mean([shown[i] for i in shown if not hot[i]])
    assert on_hot > 0.6 and on_normal < 0.15, (on_hot, on_normal)

    hot_sentences = {s for v in ls.SPEECH_HOT.values() for s in v}
    speech = dict(zip(text_world.content["speech"]["entity_id"].to_pylist(),
                      text_world.content["speech"]["text"].to_pylist()))
    said = {i: any(s in t for s in hot_sentences) for i, t in speech.items()}
    assert np.mean([said[i] for i in said if hot[i]]) > 0.5
    assert np.mean([said[i] for i in said if not hot[i]]) < 0.1

    hot_comments = set(ls.COMMENTS_HOT_GENERIC) | {c for v in ls.COMMENTS_HOT_STYLE.values() for c in v}
    comments = _lists(world, "comments")
    share = {i: np.mean([c in hot_comments for c in cs]) for i, cs in comments.items()}
    assert np.mean([share[i] for i in share if hot[i]]) > 5 * np.mean([share[i] for i in share if not hot[i]])
    assert all(1 <= len(cs) <= 8 for cs in comments.values())
    assert all(1 <= len(ps) <= 3 for ps in frames.values())


def test_quality_shows_in_speech_and_comments(text_world):
    q = dict(zip(text_world.items["item_id"].to_pylist(), text_world.items["gt_quality"].to_pylist()))
    low, high = set(ls.COMMENTS_TIER["low"]), set(ls.COMMENTS_TIER["high"])
    comments = _lists(text_world, "comments")
    score = {i: sum((c in high) - (c in low) for c in cs) for i, cs in comments.items()}
    ids = list(score)
    assert np.corrcoef([q[i] for i in ids], [score[i] for i in ids])[0, 1] > 0.2
    speech = dict(zip(text_world.content["speech"]["entity_id"].to_pylist(),
                      text_world.content["speech"]["text"].to_pylist()))
    good = {i: any(s in t for s in ls.SPEECH_TIER["high"]) for i, t in speech.items()}
    assert np.mean([q[i] for i in good if good[i]]) > np.mean([q[i] for i in good if not good[i]]) + 0.5


def test_missing_rates(world, media):
    n = world.items.num_rows
    for name, rate in ls.DEFAULT_MISSING.items():
        got = 1 - world.content[name].num_rows / n
        assert abs(got - rate) < 4 * np.sqrt(rate * (1 - rate) / n) + 1e-9, (name, got, rate)
    data = ls.generate(**SMALL, media_dir=media, espeak=False, missing={"frames": 0.0, "comments": 1.0})
    data.validate()
    assert data.content["frames"].num_rows == data.items.num_rows
    assert data.content["comments"].num_rows == 0
    assert data.presence("comments", data.items["item_id"]).sum() == 0


def test_media_files_are_valid_and_a_finite_pool(world):
    paths = {p for ps in _lists(world, "frames").values() for p in ps}
    assert len(paths) <= 20 * ls.N_SCENES * 3 * 2  # per streamer: scenes x tiers x {normal, hot}
    for p in sorted(paths)[:25]:
        assert Path(p).is_absolute()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (224, 224) and im.mode == "RGB"
    if not HAS_ESPEAK:
        pytest.skip("espeak-ng not installed: speech is text")
    clips = set(world.content["speech"]["path"].to_pylist())
    assert len(clips) <= len(ls.STYLES) * 3 * 2 * ls.SPEECH_VARIANTS
    for p in sorted(clips)[:10]:
        with wave.open(p, "rb") as f:
            assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16_000, 1, 2)
            assert f.getnframes() > 16_000  # more than a second of speech
            x = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
            assert np.abs(x).max() > 1000  # not silence


def test_espeak_false_emits_the_transcript_as_text(world, text_world):
    m = text_world.spec.modality("speech")
    assert m.kind == "text" and m.description.startswith("transcript:")
    text_world.validate()
    assert text_world.content["speech"]["entity_id"].equals(world.content["speech"]["entity_id"])
    texts = text_world.content["speech"]["text"].to_pylist()
    assert all(t.endswith(("!", "?", ".")) and len(t.split()) >= 8 for t in texts)


def test_without_espeak_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(ls.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="espeak-ng"):
        ls.generate(**SMALL, media_dir=tmp_path, espeak=True)
    data = ls.generate(**SMALL, media_dir=tmp_path)
    m = data.spec.modality("speech")
    assert m.kind == "text" and m.description.startswith("transcript: espeak-ng not installed")


def test_registered_dataset_is_cached(tmp_path):
    assert "livestream" in DATASETS
    params = {**SMALL, "espeak": False, "cache": tmp_path}
    data = load_dataset("livestream", **params)
    folders = list((tmp_path / "livestream").iterdir())
    assert len(folders) == 1 and (folders[0] / "data" / "dataset.yaml").exists()
    assert not [p for p in folders[0].iterdir() if p.name.startswith("data.")]  # no temporary left behind
    again = load_dataset("livestream", **params)
    assert again.fingerprint() == data.fingerprint()
    # media cleared: drawn again at the same paths
    frames = folders[0] / "media" / "frames"
    for f in frames.iterdir():
        f.unlink()
    third = load_dataset("livestream", **params)
    assert third.fingerprint() == data.fingerprint()
    assert all(Path(p).exists() for ps in third.content["frames"]["path"].to_pylist() for p in ps)


@pytest.mark.parametrize("kwargs, match", [
    ({"preset": "huge"}, "unknown livestream preset"),
    ({"missing": {"video": 0.1}}, "missing rates are for"),
    ({"missing": {"frames": 1.5}}, r"missing\['frames'\]"),
    ({"hot_rate": 0.9}, "hot_rate"),
    ({"n_users": 3}, "n_users"),
    ({"segment_minutes": 7}, "segment_minutes"),
])
def test_bad_parameters(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        ls.generate(**{**SMALL, **kwargs}, media_dir=tmp_path)


@pytest.mark.slow
def test_bench_preset_size(tmp_path):
    data = ls.generate(preset="bench", media_dir=tmp_path, espeak=False)
    w = _watches(data)
    assert len(w["label"]) >= 250_000 and 0.01 <= w["label"].mean() <= 0.03


def test_watch_affinity_hides_the_gifting_community_from_watching(world, media):
    """watch_affinity 0: what users watch no longer depends on their community, their gifts still do; the
    default keeps the cache key it always had."""
    assert "watch_affinity" not in ls.resolve_params(**TINY)
    assert ls.cache_key(ls.resolve_params(**TINY)) != ls.cache_key(ls.resolve_params(**TINY, watch_affinity=0.0))
    blind = ls.generate(**TINY, media_dir=media, watch_affinity=0.0)

    def same_community_share(data):
        """Share of watches whose streamer is in the community the user gifts most to (users with >= 2 gifts)."""
        w = _watches(data)
        comm = _item_column(data, w["item_id"], "gt_community")
        gifted = w["label"] > 0
        share, n = 0.0, 0
        for u in np.unique(w["user_id"][gifted]):
            mine = w["user_id"] == u
            if (mine & gifted).sum() < 2:
                continue
            top = np.bincount(comm[mine & gifted]).argmax()
            share += (comm[mine & ~gifted] == top).mean() if (mine & ~gifted).any() else 0.0
            n += 1
        return share / max(n, 1)

    assert same_community_share(blind) < same_community_share(world)


def test_gifting_circles_show_in_who_gifts_whom(world, media):
    """`communities` and `gift_affinity` plant gifting circles: fewer, larger communities and a larger weight
    make two streamers gifted by one user share a community more often; the defaults keep their cache key."""
    base = ls.resolve_params(**TINY)
    assert "communities" not in base and "gift_affinity" not in base
    assert ls.cache_key(base) != ls.cache_key(ls.resolve_params(**TINY, communities=3))
    circles = ls.generate(**TINY, media_dir=media, communities=3, gift_affinity=2.5)
    assert set(_item_column(circles, _watches(circles)["item_id"], "gt_community")) <= {0, 1, 2}

    def co_gift_same_community(data) -> float:
        w = _watches(data)
        comm = _item_column(data, w["item_id"], "gt_community")
        same = pairs = 0
        for u in np.unique(w["user_id"][w["label"] > 0]):
            c = np.bincount(comm[(w["user_id"] == u) & (w["label"] > 0)])
            pairs += c.sum() * (c.sum() - 1) // 2
            same += (c * (c - 1) // 2).sum()
        return same / max(pairs, 1)

    n_default = len(np.unique(_item_column(world, _watches(world)["item_id"], "gt_community")))
    # against the share two random streamers of each world would have (1 / communities)
    assert co_gift_same_community(circles) - 1 / 3 > co_gift_same_community(world) - 1 / n_default


def test_loyal_fans_gift_again_by_the_stated_logit(media):
    """`gift_loyalty` adds loyalty * log(1 + the user's earlier gifts to the streamer) to the gift logit: against
    the same world without it (every other draw shared), logit(p_true) moves by exactly that term plus one
    intercept shift, the mean gift probability stays `gift_rate`, and more gifts go to streamers gifted before."""
    plain = ls.generate(**TINY, media_dir=media, espeak=False)
    loyal = ls.generate(**TINY, media_dir=media, espeak=False, gift_loyalty=1.5)
    assert "gift_loyalty" not in ls.resolve_params(**TINY)
    w0, w1 = _watches(plain), _watches(loyal)
    assert (w0["item_id"] == w1["item_id"]).all() and (w0["user_id"] == w1["user_id"]).all()
    assert w1["p_true"].mean() == pytest.approx(0.02, abs=1e-4)
    streamer = _item_column(loyal, w1["item_id"], "streamer_id")
    order = np.lexsort((w1["time"], streamer, w1["user_id"]))
    before = np.zeros(len(order))
    seen: dict[tuple, int] = {}
    for i in order:  # the user's gifts to this streamer at earlier watches (watches of a pair never share a time)
        key = (w1["user_id"][i], streamer[i])
        before[i] = seen.get(key, 0)
        seen[key] = before[i] + (w1["label"][i] > 0)
    assert before.max() >= 2

    def logit(q):
        return np.log(q) - np.log1p(-q)

    shift = logit(w1["p_true"]) - logit(w0["p_true"]) - 1.5 * np.log1p(before)
    assert np.ptp(shift) < 1e-6 and shift[0] < 0  # one intercept, lower: loyalty adds gifts at the same rate

    def repeat_share(w, st) -> float:
        gifts = np.flatnonzero(w["label"] > 0)
        gifts = gifts[np.argsort(w["time"][gifts], kind="stable")]
        done, repeats = set(), 0
        for i in gifts:
            repeats += (w["user_id"][i], st[i]) in done
            done.add((w["user_id"][i], st[i]))
        return repeats / len(gifts)

    assert repeat_share(w1, streamer) > repeat_share(w0, streamer) + 0.05


@pytest.mark.parametrize("kwargs, match", [
    ({"gift_loyalty": -0.5}, "gift_loyalty"),
    ({"communities": 1}, "communities must be an integer"),
    ({"communities": 7}, "communities must be an integer"),  # more than the 6 streamers
    ({"gift_affinity": -1.0}, "gift_affinity"),
])
def test_bad_circle_parameters(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        ls.generate(**{**SMALL, **kwargs}, media_dir=tmp_path)
