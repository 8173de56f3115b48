"""History action tags (`task.history_channel_tags`): each history event carries its channel's code into the
batch (`Batch.hist_tag`), the item encoder adds a learned embedding of it to the event's vector, and a served
bundle tags its seed history, the stored events and a request's own history the same way."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from modalrec.config import RunConfig, TaskConfig
from modalrec.models import ModelConfigError, build_model
from modalrec.pipeline import Collator, History
from modalrec.tasks.ctr import CTRTask
from tests.helpers import make_data

L = 8
TAGS = {"click": 1, "like": 2}


def _data():
    return make_data(n_users=20, n_items=30, n_events=1200, n_likes=500)


def _task(data=None) -> CTRTask:
    return CTRTask(data or _data(), TaskConfig(kind="ctr", sample_channels=["click"],
                                               history_channels=["click", "like"], history_channel_tags=True,
                                               max_history=L))


def test_each_history_event_carries_its_channel():
    data = _data()
    task = _task(data)
    assert task.schema.history_tags == TAGS
    h = task.history
    assert h.tags is not None and set(np.unique(h.tags).tolist()) == {1, 2}
    # per user, the (item, time, tag) events of the history are exactly the raw (item, time, channel) events
    ev = data.events.to_pydict()
    raw: dict[str, Counter] = {}
    for u, i, t, c in zip(ev["user_id"], ev["item_id"], ev["time"], ev["channel"]):
        raw.setdefault(u, Counter())[(i, t, TAGS[c])] += 1
    assert h.n_users == len(task.log_users)  # history rows are the event log's users
    for u in range(1, len(task.log_users)):
        lo, hi = h.ptr[u], h.ptr[u + 1]
        got = Counter((task.item_vocab.id_of(int(i)), int(t), int(g))
                      for i, t, g in zip(h.items[lo:hi], h.times[lo:hi], h.tags[lo:hi]))
        assert got == raw[task.log_users.id_of(u)]
    # the collate's hist_tag is the window's tags, 0 on padding
    s = task.splits["train"]
    rows = np.arange(min(200, len(s)))
    batch = task.collator(s.users[rows], s.items[rows], s.cut[rows], s.times[rows], s.labels[rows])
    _, mask, pos = h.window(s.users[rows], s.cut[rows], L)
    assert torch.equal(batch.hist_tag, torch.from_numpy(np.where(mask, h.tags[pos], 0)))
    assert (~mask).any() and (batch.hist_tag[torch.from_numpy(~mask)] == 0).all()
    # without the switch, no tags anywhere
    plain = CTRTask(data, TaskConfig(kind="ctr", sample_channels=["click"], history_channels=["click", "like"],
                                     max_history=L))
    assert plain.history.tags is None and plain.schema.history_tags == {}
    assert plain.collator(s.users[rows], s.items[rows], s.cut[rows], s.times[rows]).hist_tag is None


@pytest.mark.parametrize("name", ["din", "sim", "qin"])
def test_tag_embedding_is_added_to_history_vectors_only(name):
    task = _task()
    torch.manual_seed(0)
    model = build_model(name, task.schema, {"embed_dim": 8}).eval()
    s = task.splits["train"]
    rows = np.arange(64)
    batch = task.collator(s.users[rows], s.items[rows], s.cut[rows], s.times[rows])
    enc = model.items
    with torch.no_grad():
        target, hist = enc.encode(batch)
        untagged = enc.tag
        enc.tag = None
        target0, hist0 = enc.encode(batch)
        enc.tag = untagged
        assert torch.equal(target, target0)
        want = hist0 + enc.tag.weight[batch.hist_tag]
        assert torch.allclose(hist, want, atol=1e-6)
        assert not torch.allclose(hist[batch.hist_mask], hist0[batch.hist_mask])
        # one shared history (a service request): flagged, tagged once, still a stride-0 view, the same values
        u, cut, t = s.users[rows[:1]], s.cut[rows[:1]], s.times[rows[:1]]
        shared = task.collator(np.repeat(u, 5), s.items[rows[:5]], np.repeat(cut, 5), np.repeat(t, 5))
        assert shared.shared_history and shared.hist_tag.stride(0) == 0
        _, h_shared = enc.encode(shared)
        assert h_shared.stride(0) == 0
        one = task.collator(u, s.items[rows[:1]], cut, t)
        assert torch.allclose(h_shared[3], enc.encode(one)[1][0], atol=1e-6)
        # a batch without tags is refused, not silently read as untagged
        shared.hist_tag = None
        with pytest.raises(ValueError, match="hist_tag"):
            enc.encode(shared)


def test_tags_are_refused_where_they_cannot_be_read():
    with pytest.raises(ValidationError, match="history_channel_tags"):
        TaskConfig(kind="topk", history_channel_tags=True)
    task = _task()
    with pytest.raises(ModelConfigError, match="does not read history action tags"):
        build_model("lr", task.schema, {})


@pytest.fixture(scope="module")
def tagged_bundle(tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("faiss")
    from tests.serve.helpers import train_and_export

    root = tmp_path_factory.mktemp("tags")
    data = _data()
    cfg = RunConfig.model_validate({
        "name": "toy-sim-tags", "data": {"source": "unused"},
        "task": {"kind": "ctr", "sample_channels": ["click"], "history_channels": ["click", "like"],
                 "history_channel_tags": True, "max_history": L},
        "model": {"name": "sim", "params": {"embed_dim": 8, "top_k": 4, "short_len": 4}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "progress": False, "num_threads": 1},
        "seeds": [0],
    })
    task, model = train_and_export(cfg, data, root)
    return task, model, root / "bundle"


def test_tagged_bundle_serves_like_offline(tagged_bundle, tmp_path):
    """Seed history + stored events of both channels, and a request's own tagged history, give the offline
    model's scores; the same event as a like instead of a click changes them."""
    from fastapi.testclient import TestClient

    from modalrec.serve.app import create_app

    task, model, bundle = tagged_bundle
    h = task.history
    u = int(np.argmax(np.diff(h.ptr)))  # the event log's user (a history row) with the longest history
    user = task.log_users.id_of(u)
    row = int(task.user_rows[u])  # ... and their row in the pipeline's user vocabulary
    assert row > 0 and task.user_vocab.id_of(row) == user
    items = np.arange(1, len(task.item_vocab))
    names = [task.item_vocab.id_of(int(i)) for i in items]
    t_req = 100_000

    def offline(seq_items, seq_times, seq_tags) -> np.ndarray:
        hist = History(np.array([0, len(seq_items)]), np.asarray(seq_items, np.int64),
                       np.asarray(seq_times, np.int64), np.asarray(seq_tags, np.int64))
        col = Collator(hist, task.collator.item_table, L, with_time=True)
        c = len(items)
        with torch.no_grad():
            batch = col(np.zeros(c, np.int64), items, np.full(c, len(seq_items)), np.full(c, t_req))
            batch.user = torch.full((c,), row)
            return model(batch).numpy()

    app = create_app(bundle, f"sqlite:///{tmp_path / 'state.sqlite'}", api_key="k")
    with TestClient(app) as client:
        def served(**body) -> np.ndarray:
            resp = client.post("/score", json={"user": user, "items": names, "context": {"time": t_req}, **body})
            assert resp.status_code == 200, resp.text
            return np.array([x["score"] for x in resp.json()["scores"]])

        lo, hi = h.ptr[u], h.ptr[u + 1]
        seed = (h.items[lo:hi], h.times[lo:hi], h.tags[lo:hi])
        assert np.abs(served() - offline(*seed)).max() <= 1e-5
        new = [(3, 7000, "like"), (4, 7100, "click"), (5, 7200, "like")]
        events = [{"user": user, "item": task.item_vocab.id_of(i), "channel": c, "time": t} for i, t, c in new]
        assert client.post("/events", json={"events": events}, headers={"X-API-Key": "k"}).json()["accepted"] == 3
        ext = [np.concatenate([a, b]) for a, b in zip(seed, ([i for i, _, _ in new], [t for _, t, _ in new],
                                                              [TAGS[c] for _, _, c in new]))]
        want = offline(*ext)
        assert np.abs(served() - want).max() <= 1e-5
        # a request's own history, with and without channels (default: the first history channel, click)
        own = [{"item": task.item_vocab.id_of(i), "time": t, "channel": c} for i, t, c in new]
        assert np.abs(served(history=own) - offline([i for i, _, _ in new], [t for _, t, _ in new],
                                                    [TAGS[c] for _, _, c in new])).max() <= 1e-5
        as_clicks = served(history=[{k: v for k, v in e.items() if k != "channel"} for e in own])
        assert np.abs(as_clicks - offline([i for i, _, _ in new], [t for _, t, _ in new], [1, 1, 1])).max() <= 1e-5
        assert np.abs(as_clicks - served(history=own)).max() > 1e-4
        # a channel the model was not trained to read is a 422 naming the event, not a silent untagged event
        bad = client.post("/score", json={"user": user, "items": names[:2],
                                          "history": [own[0], {**own[1], "channel": "purchase"}]})
        assert bad.status_code == 422
        assert "history[1].channel" in bad.json()["message"] and "purchase" in bad.json()["message"]
