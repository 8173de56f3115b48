"""The built-in demo world: deterministic, with missing text and a plausible click rate."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from modalrec.datasets import load_dataset
from modalrec.sim.demo import generate


def impressions(data):
    return data.events.filter(pc.equal(data.events["channel"], "impression"))


def test_deterministic_with_seed():
    a, b = generate(n_users=80, n_items=60, n_events=3000, seed=3), generate(n_users=80, n_items=60,
                                                                             n_events=3000, seed=3)
    assert a.fingerprint() == b.fingerprint()
    assert a.events.equals(b.events) and a.content["text"].equals(b.content["text"])
    c = generate(n_users=80, n_items=60, n_events=3000, seed=4)
    assert c.fingerprint() != a.fingerprint()


def test_shape_missing_text_and_click_rate():
    data = generate()
    assert data.problems() == []
    imp = impressions(data)
    assert imp.num_rows == 40_000
    assert data.summary()["users"] == 600 and data.items.num_rows == 400
    has_text = data.presence("text", data.items["item_id"])
    assert 0 < has_text.sum() < len(has_text)  # some items lack text: a missing modality
    labels = imp["label"].to_numpy()
    assert set(np.unique(labels)) == {0.0, 1.0}
    assert 0.05 <= labels.mean() <= 0.40
    p = imp["p_true"].to_numpy()
    assert ((p > 0) & (p < 1)).all() and abs(p.mean() - labels.mean()) < 0.02
    channels = data.summary()["channels"]
    assert channels["click"] == int(labels.sum()) and 0 < channels["like"] < channels["click"]
    assert {f.name for f in data.spec.item_features} == {"category"}


def test_clicks_follow_recent_clicks():
    """The sequential effect: after clicking a topic, the next impression of that topic is clicked more."""
    data = generate(seed=1)
    imp = impressions(data)
    topic_of = dict(zip(data.items["item_id"].to_pylist(), data.items["topic_true"].to_pylist()))
    users = imp["user_id"].to_numpy(zero_copy_only=False)
    topics = np.array([topic_of[i] for i in imp["item_id"].to_pylist()])
    labels = imp["label"].to_numpy()
    same_user = users[1:] == users[:-1]
    same_topic = topics[1:] == topics[:-1]
    after_click = same_user & same_topic & (labels[:-1] == 1)
    after_skip = same_user & same_topic & (labels[:-1] == 0)
    assert labels[1:][after_click].mean() > labels[1:][after_skip].mean() + 0.1


def test_registered_as_demo():
    data = load_dataset("demo", n_users=30, n_items=20, n_events=500)
    assert data.spec.name == "demo" and impressions(data).num_rows == 500
