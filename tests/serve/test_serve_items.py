"""Items that appear after export (POST /items): a new live segment, a new product, scoreable at once.

A registered item reaches the model with id index 0 (the model's id tables have only the bundle's rows)
and its own side features and content, mapped through the bundle's feature vocabularies. Both bundles of
the serving tests are used: the toy DIN (categorical, multi-valued, text and dense item features) and the
live-stream MMBee (streamer, token tables of frames and comments, MFQ memoised per segment, GIE).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from modalrec.data.batch import GraphInputs
from modalrec.pipeline import Collator, History, Sequence, SideTable
from modalrec.pipeline.pipeline import sha256_of
from modalrec.serve.app import create_app
from modalrec.serve.bundle import load_bundle
from modalrec.serve.retrieval import normalise
from modalrec.serve.scoring import Scorer
from modalrec.serve.state import open_state
from modalrec.serve.state_sqlite import SQLiteState
from modalrec.serve.tables import AppendableRows, ItemIds
from tests.serve.helpers import N_STREAMERS, raw_item, seg_id, segments_of

KEY = "test-key"
AUTH = {"X-API-Key": KEY}
NOW = 4_000_000_000  # later than every toy event
MAPS_FILE = "pipeline/pipeline.json"  # the pipeline's settings and raw value maps


def _app(bundle, url: str, **kw):
    return TestClient(create_app(bundle, url, api_key=KEY, **kw))


def _register(client, items: list[dict], status: int = 200) -> dict:
    r = client.post("/items", json={"items": items}, headers=AUTH)
    assert r.status_code == status, r.text
    return r.json()


def _scores(client, user: str, items: list[str], **extra) -> np.ndarray:
    resp = client.post("/score", json={"user": user, "items": items, **extra})
    assert resp.status_code == 200, resp.text
    return np.array([x["score"] for x in resp.json()["scores"]])


def _with_copies(side: SideTable, rows: list[int]) -> SideTable:
    """The task's item table with copies of item indices `rows` appended (offline stand-ins for new items)."""
    out = SideTable()
    for group in ("categorical", "multi", "dense", "presence", "tokens", "token_mask"):
        for name, arr in getattr(side, group).items():
            arr = np.asarray(arr)
            getattr(out, group)[name] = np.concatenate([arr, arr[rows]])
    return out


@torch.no_grad()
def _offline(served, side: SideTable, uidx: int, hist: list[int], times: list[int], t: int,
             cands: list[int], tags: list[int] | None = None) -> np.ndarray:
    """The offline model's logits for one user (`uidx`: their row in the model's user vocabulary) with this
    sequence at time t, every item index beyond the model's id tables (the appended copies) given as id 0 while
    its side features are the copied originals'. `tags`: the events' action tag codes, for a task with a tagged
    history. A task with graph features reads the user's offline expansion."""
    task, model = served["task"], served["model"]
    n = task.schema.n_items
    col = task.collator
    h_items, h_times = np.array(hist, np.int64), np.array(times, np.int64)
    h_tags = None if task.history.tags is None else np.array(tags, np.int64)
    if len(hist) == 0:
        h_items, h_times = np.zeros(1, np.int64), np.full(1, t, np.int64)
        h_tags = None if h_tags is None else np.zeros(1, np.int64)
    history = History(np.array([0, len(hist)]), h_items, h_times, h_tags)
    collate = Collator(history, side, col.max_history, user_table=col.user_table, with_time=col.with_time,
                       token_scope=col.token_scope)
    c = len(cands)
    cand = np.array(cands, np.int64)
    batch = collate(np.zeros(c, np.int64), cand, np.full(c, len(hist)), np.full(c, t),
                    user_rows=np.full(c, uidx, np.int64))
    batch.group = torch.full((c,), uidx, dtype=torch.long)
    for name in ("item", "uniq", "hist"):
        v = getattr(batch, name)
        setattr(batch, name, v.masked_fill(v >= n, 0))
    g = task.pipeline.graph
    if g is not None:
        parts = g.expansion.lookup(np.full(c, uidx), side.categorical[g.group_feature][cand])
        batch.graph = GraphInputs(parts["gie_user"], parts["gie_user_w"], parts["gie_streamer"],
                                  parts["gie_streamer_w"])
    out = model(batch).numpy().astype(np.float64)
    blank = task.pipeline.uninformed(cand, side)
    if blank.any():  # an item the model knows nothing about: the user's mean score over the probe items
        probes = task.pipeline.prior_items()
        probe = _offline(served, side, uidx, hist, times, t, list(probes), tags)
        out[blank] = task.pipeline.prior_of(probe[None, :])[0]
    return out


def _user_with_history(task, min_len: int = 3) -> int:
    counts = np.diff(task.history.ptr)
    return int(np.flatnonzero(counts >= min_len)[0])


# -------------------------------------------------------------------------------------------- bundle


def test_bundle_exports_the_item_feature_vocabularies(din_served):
    """The pipeline's raw value maps (pipeline/pipeline.json) are in the manifest with their hash and reproduce
    every item's codes."""
    b, task, data = din_served["bundle"], din_served["task"], din_served["data"]
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["files"][MAPS_FILE]["sha256"] == sha256_of(b / MAPS_FILE)
    fv = load_bundle(b).pipeline.item_maps
    assert set(fv.categorical) == {"brand"} and set(fv.multi) == {"genres", "text_words"}
    assert fv.text == {"text": "text_words"}
    side = task.collator.item_table
    for r in data.items.to_pylist():
        i = int(task.item_vocab.lookup([r["item_id"]])[0])
        assert fv.code("brand", r["brand"]) == side.categorical["brand"][i]
        k = side.multi["genres"].shape[1]
        assert np.array_equal(fv.multi_codes("genres", r["genres"], k), side.multi["genres"][i])
    assert fv.code("brand", "never-seen") == 0 and fv.code("brand", None) == 0


def test_a_feature_without_raw_value_map_takes_content_only(din_served, tmp_path):
    """A bundle whose pipeline cannot code a feature's raw values (no map for it) loads; registering that
    feature is refused naming the field, content is taken."""
    old = tmp_path / "old"
    shutil.copytree(din_served["bundle"], old)
    meta = json.loads((old / MAPS_FILE).read_text())
    del meta["item_maps"]["categorical"]["brand"]
    (old / MAPS_FILE).write_text(json.dumps(meta))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["files"][MAPS_FILE]["sha256"] = sha256_of(old / MAPS_FILE)
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert "brand" not in load_bundle(old).pipeline.item_maps.categorical
    with _app(old, f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        r = _register(c, [{"id": "n1", "categorical": {"brand": "b1"}}], 422)
        assert r["detail"][0]["field"] == "items[0].categorical.brand" and "raw value map" in r["message"]
        assert _register(c, [{"id": "n1", "vectors": {"emb": [0.1, 0.2, 0.3, 0.4]}}])["registered"] == 1


# -------------------------------------------------------------------------------------- (a) parity


def test_new_item_scores_as_its_twin_with_id_0(din_served, tmp_path):
    """A new item with an existing item's raw features and content scores as the offline model scores that
    item with id index 0 and its original side features, as a candidate and inside the history (explicit,
    and from /events); a truly unknown item does not."""
    task = din_served["task"]
    n = task.schema.n_items
    originals = ["i0", "i6", "i1", "i9"]  # text + vector, text + vector, neither, vector only
    idx = [int(i) for i in task.item_vocab.lookup(originals)]
    side = _with_copies(task.collator.item_table, idx)
    with _app(din_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        res = _register(c, [raw_item(din_served, o, f"new-{o}") for o in originals])
        assert res == {"registered": 4, "replaced": 0, "known_to_bundle": 0, "known_ids": [], "items": 4}
        new = [f"new-{o}" for o in originals]
        u = _user_with_history(task)
        user, uidx = task.log_users.id_of(u), int(task.user_rows[u])
        lo = task.history.ptr[u]
        cut = min(5, int(task.history.ptr[u + 1] - lo))
        h_items = [int(i) for i in task.history.items[lo:lo + cut]]
        h_times = [int(t) for t in task.history.times[lo:lo + cut]]
        t = h_times[-1] + 1
        history = [{"item": task.item_vocab.id_of(i), "time": tt} for i, tt in zip(h_items, h_times)]
        known = [task.item_vocab.id_of(i) for i in (2, 3)]
        got = _scores(c, user, new + known + ["never-registered"], context={"time": t}, history=history)
        want = _offline(din_served, side, uidx, h_items, h_times, t, list(range(n, n + 4)) + [2, 3, 0])
        assert np.abs(got - want).max() <= 1e-5
        assert np.abs(got[:4] - got[-1]).max() > 1e-4  # the features count: not a cold start
        resp = c.post("/score", json={"user": user, "items": new[:1] + ["never-registered"]}).json()
        assert [x["known"] for x in resp["scores"]] == [True, False]

        # a new item inside the history (explicit), its id 0 there too
        hist2 = history + [{"item": new[0], "time": t}, {"item": new[3], "time": t + 1}]
        got = _scores(c, user, known, context={"time": t + 2}, history=hist2)
        want = _offline(din_served, side, uidx, h_items + [n, n + 3], h_times + [t, t + 1], t + 2, [2, 3])
        assert np.abs(got - want).max() <= 1e-5

        # ... and from /events of a user the bundle does not know
        events = [{"user": "newcomer", "item": new[1], "channel": "click", "time": 7000},
                  {"user": "newcomer", "item": known[0], "channel": "click", "time": 7001},
                  {"user": "newcomer", "item": new[2], "channel": "click", "time": 7002}]
        r = c.post("/events", json={"events": events}, headers=AUTH).json()
        assert r["cold_item_events"] == 0
        got = _scores(c, "newcomer", known + new, context={"time": 8000})
        want = _offline(din_served, side, 0, [n + 1, 2, n + 2], [7000, 7001, 7002], 8000,
                        [2, 3, n, n + 1, n + 2, n + 3])
        assert np.abs(got - want).max() <= 1e-5
        assert c.get("/healthz").json()["registered_items"] == 4


def test_new_segment_scores_as_its_twin_with_id_0(mmbee_served, tmp_path):
    """MMBee: streamer, frames and comments tokens and the MFCC vector of a new segment reach MFQ (memoised
    per item index) and GIE as the offline batch of the copied segment with id 0; scored twice (memo)."""
    task = mmbee_served["task"]
    n = task.schema.n_items
    originals = [seg_id(i) for i in (1, 7, 12)]  # 7: no frames, comments nor MFCC
    idx = [int(i) for i in task.item_vocab.lookup(originals)]
    side = _with_copies(task.collator.item_table, idx)
    with _app(mmbee_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        assert _register(c, [raw_item(mmbee_served, o, f"live/{o}") for o in originals])["registered"] == 3
        new = [f"live/{o}" for o in originals]
        expanded = task.pipeline.graph.expansion.user_seq[task.user_rows, 0] > 0  # per event log user
        u = int(np.flatnonzero((np.diff(task.history.ptr) >= 3) & expanded)[0])
        user, uidx = task.log_users.id_of(u), int(task.user_rows[u])
        lo = task.history.ptr[u]
        h_items = [int(i) for i in task.history.items[lo:lo + 3]]
        h_times = [int(t) for t in task.history.times[lo:lo + 3]]
        h_tags = [int(g) for g in task.history.tags[lo:lo + 3]]  # the fixture's history is tagged: watch, gift
        channel = {code: name for name, code in task.pipeline.settings.history_tags.items()}
        t = h_times[-1] + 1
        history = [{"item": task.item_vocab.id_of(i), "time": tt, "channel": channel[g]}
                   for i, tt, g in zip(h_items, h_times, h_tags)]
        cands = new + originals
        want = _offline(mmbee_served, side, uidx, h_items, h_times, t, [n, n + 1, n + 2] + idx, h_tags)
        for _ in range(2):  # the second request reads the memoised MFQ vectors
            got = _scores(c, user, cands, context={"time": t}, history=history)
            assert np.abs(got - want).max() <= 1e-5


# ------------------------------------------------------------------------------ (b) content counts


def _hot_segment(served) -> int:
    """The segment with the most watches + gifts, with frames and comments."""
    data = served["data"]
    counts: dict[str, int] = {}
    for item in data.events["item_id"].to_pylist():
        counts[item] = counts.get(item, 0) + 1
    full = [i for i in range(20) if i not in (2, 3, 5, 7, 11)]
    return max(full, key=lambda i: counts.get(seg_id(i), 0))


def test_hot_content_vs_none(mmbee_served, tmp_path):
    hot = _hot_segment(mmbee_served)
    streamer = f"a{hot % N_STREAMERS}"
    with _app(mmbee_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        with_content = raw_item(mmbee_served, seg_id(hot), "seg-hot-copy")
        bare = {"id": "seg-bare", "categorical": {"streamer_id": streamer}}
        assert _register(c, [with_content, bare])["registered"] == 2
        user = mmbee_served["task"].user_vocab.id_of(1)
        s = _scores(c, user, ["seg-hot-copy", "seg-bare", "unknown-seg"], context={"time": NOW})
        assert abs(s[0] - s[1]) > 1e-4 and abs(s[1] - s[2]) > 1e-4  # content and streamer both count
        rec = c.post("/recommend", json={"user": user, "k": 3, "context": {"time": NOW},
                                         "candidates": ["seg-hot-copy", "seg-bare", "unknown-seg"]}).json()
        assert {x["item"]: x["score"] for x in rec["items"]} == pytest.approx(
            dict(zip(["seg-hot-copy", "seg-bare", "unknown-seg"], s)), abs=1e-6)
        # a gift to a registered segment is a gift to its streamer (the graph's online U->A->A expansion)
        scorer = c.app.state.scorer
        c.post("/events", json={"events": [{"user": user, "item": "seg-bare", "channel": "gift", "value": 1.0,
                                            "time": NOW - 10}]}, headers=AUTH)
        online = scorer.pipeline.graph.online
        expand, edges = online.expand, []
        online.expand = lambda u, groups, amounts: (edges.append(groups.tolist()), expand(u, groups, amounts))[1]
        try:
            _scores(c, user, ["seg-bare"], context={"time": NOW})
        finally:
            online.expand = expand
        hot_idx = scorer.item_index([seg_id(hot)])
        assert edges == [scorer.pipeline.item_table.categorical["streamer_id"][hot_idx].tolist()]


# ---------------------------------------------------------------------------------- (c) validation


def test_invalid_items_get_422(mmbee_served, tmp_path):
    with _app(mmbee_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        ok = {"id": "fine", "categorical": {"streamer_id": "a1"}}
        cases = [
            ({"id": "x", "vectors": {"speech_mfcc": [0.1, 0.2]}}, "items[1].vectors.speech_mfcc",
             "expected 3 values"),
            ({"id": "x", "tokens": {"frames_emb": [[0.0] * 6] * 4}}, "items[1].tokens.frames_emb", "at most 3 tokens"),
            ({"id": "x", "tokens": {"comments_emb": [[0.0] * 4, [0.0] * 5]}}, "items[1].tokens.comments_emb[1]",
             "expected 4 values"),
            ({"id": "x", "tokens": {"nope_emb": [[0.0] * 4]}}, "items[1].tokens.nope_emb", "unknown token modality"),
            ({"id": "x", "vectors": {"frames_emb": [0.0] * 6}}, "items[1].vectors.frames_emb", "under 'tokens'"),
            ({"id": "x", "categorical": {"nope": "v"}}, "items[1].categorical.nope", "unknown categorical feature"),
            ({"id": "x", "multi": {"tags": ["a"]}}, "items[1].multi.tags", "unknown multi-valued feature"),
            ({"id": "x", "text": {"title": "hello"}}, "items[1].text.title", "unknown text modality"),
            ({"id": "x", "tokens": {"frames_emb": [[1e6] * 6]}}, "items[1].tokens.frames_emb", "float16"),
            ({"id": "x", "vectors": {"speech_mfcc": [0.1, "a", 0.3]}}, "items[1].vectors.speech_mfcc[1]", ""),
            ({"id": "x", "colour": "red"}, "items[1].colour", ""),
        ]
        for bad, field, msg in cases:
            r = _register(c, [ok, bad], 422)
            assert r["detail"][0]["field"] == field, (bad, r)
            assert msg in r["message"], (bad, r["message"])
        assert _register(c, [], 422)["detail"][0]["field"] == "items"
        assert c.get("/healthz").json()["registered_items"] == 0  # a batch with an invalid item stores nothing
        assert c.post("/items", json={"items": [ok]}).status_code == 401
        assert c.post("/items", json={"items": [ok]}, headers={"X-API-Key": "wrong"}).status_code == 403
        # an id the bundle knows changes nothing
        before = _scores(c, "u001", [seg_id(4)], context={"time": NOW})
        res = _register(c, [{"id": seg_id(4), "categorical": {"streamer_id": "a0"}}, ok])
        assert res == {"registered": 1, "replaced": 0, "known_to_bundle": 1, "known_ids": [seg_id(4)], "items": 1}
        assert np.array_equal(_scores(c, "u001", [seg_id(4)], context={"time": NOW}), before)
        assert "modalrec_items_total" in c.get("/metrics").text
        # an event's payload vector of a modality the model reads: one token's dimension for a token modality
        ev = {"user": "u001", "item": seg_id(4), "channel": "watch"}
        for name, dim in (("frames_emb", 6), ("speech_mfcc", 3)):
            bad = {**ev, "payload": {"vectors": {name: [0.0] * (dim + 1)}}}
            r = c.post("/events", json={"events": [{**ev, "payload": {"vectors": {name: [0.0] * dim}}}, bad]},
                       headers=AUTH)
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == f"events[1].payload.vectors.{name}"
            assert f"expected {dim} values" in r.json()["message"]
        assert c.get("/users/u001", headers=AUTH).json()["events"] == []  # a refused batch stores nothing


# ------------------------------------------------------------------------------------ (d) restarts


def _check_restart(served, url: str) -> None:
    user = served["task"].user_vocab.id_of(1)
    items = ["r1", "r2", "r3"]
    hot = _hot_segment(served)
    with _app(served["bundle"], url) as c:
        _register(c, [raw_item(served, seg_id(hot), "r1"), {"id": "r2", "categorical": {"streamer_id": "a2"}},
                      {"id": "r3", "categorical": {"streamer_id": "a3"}}])
        _register(c, [raw_item(served, seg_id(0), "r3")])  # replaced: the latest wins after a restart too
        before = _scores(c, user, items, context={"time": NOW})
    with _app(served["bundle"], url) as c:
        assert c.get("/healthz").json()["registered_items"] == 3
        after = _scores(c, user, items, context={"time": NOW})
        assert np.abs(after - before).max() <= 1e-6
        assert c.app.state.scorer.registry.replayed == 3


def test_registered_items_survive_a_restart_sqlite(mmbee_served, tmp_path):
    _check_restart(mmbee_served, f"sqlite:///{tmp_path / 's.sqlite'}")


def test_registered_items_survive_a_restart_redis(mmbee_served, redis_server):
    _check_restart(mmbee_served, redis_server["url"])
    redis_server["restart"]()  # kill -9 Redis itself: the AOF (fsync always) keeps the items
    with _app(mmbee_served["bundle"], redis_server["url"]) as c:
        h = c.get("/healthz").json()
        assert h["state"] == "redis" and h["registered_items"] == 3


# ------------------------------------------------------------------------------------- (e) replacing


def test_replacing_changes_the_score(mmbee_served, tmp_path):
    a, b = segments_of(1)[0], segments_of(1)[1]  # two segments of one streamer, both with frames and comments
    user = mmbee_served["task"].user_vocab.id_of(2)
    with _app(mmbee_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        _register(c, [raw_item(mmbee_served, seg_id(a), "seg-x"), raw_item(mmbee_served, seg_id(b), "seg-b")])
        first = _scores(c, user, ["seg-x", "seg-b"], context={"time": NOW})  # MFQ memoises seg-x's content
        assert abs(first[0] - first[1]) > 1e-4
        res = _register(c, [raw_item(mmbee_served, seg_id(b), "seg-x")])
        assert res["registered"] == 0 and res["replaced"] == 1 and res["items"] == 2
        again = _scores(c, user, ["seg-x", "seg-b"], context={"time": NOW})
        assert abs(again[0] - first[0]) > 1e-4 and abs(again[0] - again[1]) <= 1e-6


# ------------------------------------------------------------------------------------------ retrieval


def test_registered_items_are_retrieved(din_served, tmp_path):
    """Group retrieval brings a new item of a recent item's group; the exact search over the registered items'
    vectors (the ItemEncoder's, id 0) finds one like the recent item; /recommend returns them."""
    task = din_served["task"]
    with _app(din_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        _register(c, [raw_item(din_served, "i0", "twin-a"), raw_item(din_served, "i0", "twin-b")])
        scorer = c.app.state.scorer
        reg = scorer.registry
        a, b = (int(i) for i in scorer.item_index(["twin-a", "twin-b"]))
        feats, pres = task.collator.item_table.gather(task.item_vocab.lookup(["i0"]))
        with torch.no_grad():  # the model's item vector (its item encoder's) of i0's features with id 0
            want = normalise(scorer.model.item_representation(torch.zeros(1, dtype=torch.long), feats, pres).numpy())
        assert np.allclose(reg.vectors[np.array([b])], want, atol=1e-6) and reg.has_vector[np.array([b])].all()
        cand, n_hist = scorer.retrieve(np.array([a]), 10, exclude={a})
        assert cand[0] == b and n_hist >= 1  # its group's newest item first
        group, reg.group = reg.group, None
        try:
            cand, _ = scorer.retrieve(np.array([a]), 10, exclude={a})
            assert cand[0] == b  # the nearest vector: an identical one
        finally:
            reg.group = group
        c.post("/events", json={"events": [{"user": "fan", "item": "twin-a", "channel": "click", "time": 100}]},
               headers=AUTH)
        rec = c.post("/recommend", json={"user": "fan", "k": 20, "n_candidates": 20}).json()
        assert "twin-b" in [x["item"] for x in rec["items"]] and rec["history_length"] == 1


# ----------------------------------------------------------------------------------------- internals


def test_appendable_rows_and_ids():
    base = np.arange(12, dtype=np.int64).reshape(6, 2)
    rows = AppendableRows(base)
    rows.reserve(1)
    rows[6] = [100, 101]
    cap = len(rows.extra)
    for k in range(2, 40):  # capacity doubles: few reallocations
        rows.reserve(k)
        rows[5 + k] = [100 * k, 100 * k + 1]
    assert len(rows) == 45 and len(rows.extra) >= 39 and cap == 16
    idx = np.array([[0, 6], [44, 5]])
    assert np.array_equal(rows[idx], np.array([[[0, 1], [100, 101]], [[3900, 3901], [10, 11]]]))
    with pytest.raises(IndexError):
        rows[3] = [0, 0]

    from modalrec.pipeline import Vocab

    ids = ItemIds(Vocab(["a", "b"]))
    assert ids.add("c") == 3 and ids.add("d") == 4
    assert ids.lookup(["b", "c", "zz", "d"]).tolist() == [2, 3, 0, 4]
    assert [ids.id_of(i) for i in range(6)] == [None, "a", "b", "c", "d", None]


@contextmanager
def _repeated_in_threads(step, n: int = 2):
    """Runs `step()` over and over in `n` threads while the block runs; afterwards fails with the first error
    a thread met (an assertion inside `step` included)."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop():
        try:
            while not stop.is_set():
                step()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loop) for _ in range(n)]
    for th in threads:
        th.start()
    try:
        yield
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    assert not errors, errors[0]


def test_registration_while_scoring(din_served, tmp_path):
    """Requests scoring while items are registered and replaced: no error, every score finite."""
    with _app(din_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        scorer = c.app.state.scorer

        def score():
            ids = [f"live-{k}" for k in range(0, 40, 3)] + ["i1"]
            s = scorer.score(None, Sequence.empty(), NOW, scorer.item_index(ids))
            assert np.isfinite(s).all()

        with _repeated_in_threads(score):
            for k in range(40):
                _register(c, [raw_item(din_served, f"i{k % 7}", f"live-{k}"), raw_item(din_served, "i3", "live-0")])
        assert scorer.registry.n_registered == 40


# ----------------------------------------------------------------- (f) several processes on one store


def _check_item_log(st) -> None:
    """The store's item sequence: every write a new number, items_since in sequence order, each id once with
    its latest body, and the current number."""
    assert st.item_seq() == 0 and st.items_since(0) == ([], 0)
    st.put_items([("a", '{"id":"a","v":1}'), ("b", '{"id":"b"}')])
    assert st.item_seq() == 2
    st.put_items([("a", '{"id":"a","v":2}'), ("a", '{"id":"a","v":3}')])  # in list order: the latest wins
    assert st.item_seq() == 4
    assert st.items_since(0) == ([("b", '{"id":"b"}'), ("a", '{"id":"a","v":3}')], 4)
    assert st.items_since(2) == ([("a", '{"id":"a","v":3}')], 4)
    assert st.items_since(4) == ([], 4)
    assert sorted(st.load_items()) == [("a", '{"id":"a","v":3}'), ("b", '{"id":"b"}')]


def test_item_sequence_sqlite(tmp_path):
    st = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")
    _check_item_log(st)
    assert [i for i, _ in st.load_items()] == ["a", "b"]  # first-registration order, as before
    other = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")  # a second process on the file: one sequence
    other.put_items([("c", "{}")])
    assert st.items_since(4) == ([("c", "{}")], 5) and st.item_seq() == 5
    st.close()
    other.close()


def test_item_sequence_redis(redis_server):
    st = open_state(redis_server["url"])
    _check_item_log(st)
    redis_server["restart"]()  # kill -9 Redis: the AOF keeps bodies, counter and log together
    st = open_state(redis_server["url"])
    assert st.items_since(2) == ([("a", '{"id":"a","v":3}')], 4)
    st.close()


def _check_sync(served, url: str) -> None:
    """Two service processes (two apps) on one state store, syncing at every request: an item registered on A
    is scored on B as on A, a replacement on A reaches B, and A does not apply its own writes a second time."""
    hot = _hot_segment(served)
    a_seg, b_seg = segments_of(1)[0], segments_of(1)[1]
    user = served["task"].user_vocab.id_of(2)
    req = {"user": user, "items": ["shared-x", "shared-y", "unknown-seg"], "context": {"time": NOW}}
    rec = {"user": user, "k": 3, "context": {"time": NOW}, "candidates": req["items"]}
    with _app(served["bundle"], url, item_sync_s=0) as a, _app(served["bundle"], url, item_sync_s=0) as b:
        sa, sb = a.app.state.scorer.registry, b.app.state.scorer.registry
        forgotten = {"a": [], "b": []}
        for name, sc in (("a", sa), ("b", sb)):
            forget = sc.model.forget_items
            sc.model.forget_items = lambda items, _f=forget, _n=name: (forgotten[_n].append(list(items)), _f(items))
        assert [x["known"] for x in b.post("/score", json=req).json()["scores"]] == [False, False, False]

        _register(a, [raw_item(served, seg_id(a_seg), "shared-x"),
                      {"id": "shared-y", "categorical": {"streamer_id": f"a{hot % N_STREAMERS}"}}])
        on_a = a.post("/score", json=req).json()["scores"]
        on_b = b.post("/score", json=req).json()["scores"]
        assert [x["known"] for x in on_b] == [True, True, False]
        assert np.abs(np.array([x["score"] for x in on_a]) - [x["score"] for x in on_b]).max() <= 1e-5
        r = b.post("/recommend", json=rec).json()["items"]
        assert {x["item"]: (x["score"], x["known"]) for x in r} == {
            x["item"]: (pytest.approx(x["score"], abs=1e-5), x["known"]) for x in on_a}
        assert sb.items_synced == 2 and sb.n_registered == 2

        # a replacement on A (it drops A's memo of the old content, once) reaches B (B drops its memo too)
        res = _register(a, [raw_item(served, seg_id(b_seg), "shared-x")])
        assert res["replaced"] == 1 and len(forgotten["a"]) == 1
        new_a = _scores(a, user, req["items"], context={"time": NOW})
        new_b = _scores(b, user, req["items"], context={"time": NOW})
        assert abs(new_a[0] - on_a[0]["score"]) > 1e-4  # the content changed the score ...
        assert np.abs(new_a - new_b).max() <= 1e-5  # ... on B as on A
        assert len(forgotten["b"]) == 1 and sb.items_synced == 3 and sb.n_registered == 2
        # A read its own writes back from the store and skipped them: nothing applied twice, no memo dropped
        for _ in range(2):
            a.post("/recommend", json=rec)
        assert sa.items_synced == 0 and len(forgotten["a"]) == 1 and sa.n_registered == 2
        assert sa._item_seq == sb._item_seq == 3  # both read up to the last write

        # B registers, A gets it; a registration on B of an id A registered counts as a replacement on B
        res = _register(b, [{"id": "from-b", "categorical": {"streamer_id": "a0"}}])
        assert res == {"registered": 1, "replaced": 0, "known_to_bundle": 0, "known_ids": [], "items": 3}
        assert _register(a, [{"id": "shared-y", "categorical": {"streamer_id": "a4"}}])["replaced"] == 1
        assert _register(b, [{"id": "another", "categorical": {"streamer_id": "a1"}}])["items"] == 4
        assert sb.n_registered == 4 and sb.items_synced == 4  # shared-y's replacement arrived before /items
        assert np.abs(_scores(a, user, ["shared-y"], context={"time": NOW})
                      - _scores(b, user, ["shared-y"], context={"time": NOW})).max() <= 1e-5
        assert a.get("/healthz").json()["registered_items"] == 4 and sa.items_synced == 2
        metrics = b.get("/metrics").text
        assert 'modalrec_items_synced_total{result="registered"} 2.0' in metrics
        assert 'modalrec_items_synced_total{result="replaced"} 2.0' in metrics


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    """A fresh state store URL of each kind (Redis: the real redis-server fixture, skipped where it is absent)."""
    if request.param == "redis":
        return request.getfixturevalue("redis_server")["url"]
    return f"sqlite:///{tmp_path / 's.sqlite'}"


def test_items_reach_other_processes(mmbee_served, store_url):
    _check_sync(mmbee_served, store_url)


def test_concurrent_syncs_apply_once(mmbee_served, tmp_path):
    """Handler threads syncing at once: every stored item is applied once (the others skip or find nothing)."""
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with _app(mmbee_served["bundle"], url, item_sync_s=0) as a, _app(mmbee_served["bundle"], url, item_sync_s=0) as b:
        sb = b.app.state.scorer.registry
        _register(a, [{"id": f"c{k}", "categorical": {"streamer_id": f"a{k % N_STREAMERS}"}} for k in range(20)])
        got: list[tuple[int, int]] = []
        barrier = threading.Barrier(6)

        def sync():
            barrier.wait()
            got.append(sb.sync_items())

        threads = [threading.Thread(target=sync) for _ in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert sum(r for r, _ in got) + sb.sync_items()[0] == 20 and sum(x for _, x in got) == 0
        assert sb.n_registered == 20 and sb.items_synced == 20


def test_sync_is_throttled(mmbee_served, tmp_path):
    """With item_sync_s = 60, B looks in the store at its first request, then not before 60 s have passed."""
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    req = {"user": "u001", "items": ["late"], "context": {"time": NOW}}
    with _app(mmbee_served["bundle"], url, item_sync_s=60) as a, _app(mmbee_served["bundle"], url, item_sync_s=60) as b:
        sb = b.app.state.scorer.registry
        clock = [1000.0]
        sb.clock = lambda: clock[0]
        assert b.post("/score", json=req).json()["scores"][0]["known"] is False  # synced at t = 1000: nothing
        _register(a, [{"id": "late", "categorical": {"streamer_id": "a3"}}])
        queries = []
        since = sb._items_since  # count the store queries
        sb._items_since = lambda seq: (queries.append(seq), since(seq))[1]
        clock[0] = 1059.0
        for _ in range(3):
            assert b.post("/score", json=req).json()["scores"][0]["known"] is False
        assert queries == []  # within the interval: a clock read per request, no store query
        clock[0] = 1060.0
        assert b.post("/score", json=req).json()["scores"][0]["known"] is True
        assert len(queries) == 1 and sb.items_synced == 1
        b.post("/score", json=req)
        assert len(queries) == 1
        assert sb.sync_items(force=True) == (0, 0) and len(queries) == 2
    with _app(mmbee_served["bundle"], url, item_sync_s=None) as c:  # off: replay only
        sc = c.app.state.scorer.registry
        assert sc.item_sync_s is None and sc.replayed == 1
        with _app(mmbee_served["bundle"], url) as a:
            _register(a, [{"id": "later", "categorical": {"streamer_id": "a1"}}])
        assert c.post("/score", json={**req, "items": ["later"]}).json()["scores"][0]["known"] is False
    with pytest.raises(ValueError, match="item_sync_s"):
        create_app(mmbee_served["bundle"], url, api_key=KEY, item_sync_s=-1)


_OLD_ITEMS_TABLE = "CREATE TABLE items (id TEXT PRIMARY KEY, body TEXT NOT NULL, updated REAL NOT NULL)"


def _old_state_file(path) -> str:
    """A state file as written before the item sequence (no seq column) holding items old-1 and old-2."""
    con = sqlite3.connect(path)
    con.execute(_OLD_ITEMS_TABLE)
    con.executemany("INSERT INTO items VALUES (?, ?, 0)",
                    [("old-1", '{"id":"old-1","categorical":{"streamer_id":"a1"}}'),
                     ("old-2", '{"id":"old-2","categorical":{"streamer_id":"a2"}}')])
    con.commit()
    con.close()
    return f"sqlite:///{path}"


def test_old_sqlite_items_table_is_migrated(mmbee_served, tmp_path):
    """A state file written before the item sequence (items without a seq column) opens: its items are
    replayed, new writes get numbers, and a second process gets those (not the old ones, which it loaded)."""
    path = tmp_path / "old.sqlite"
    url = _old_state_file(path)
    with _app(mmbee_served["bundle"], url, item_sync_s=0) as a, _app(mmbee_served["bundle"], url, item_sync_s=0) as b:
        sa, sb = a.app.state.scorer.registry, b.app.state.scorer.registry
        assert sa.replayed == sb.replayed == 2 and sa._item_seq == 0
        _register(a, [{"id": "new-1", "categorical": {"streamer_id": "a3"}},
                      {"id": "old-1", "categorical": {"streamer_id": "a4"}}])  # an old item replaced
        scores = b.post("/score", json={"user": "u001", "items": ["old-1", "old-2", "new-1"],
                                        "context": {"time": NOW}}).json()["scores"]
        assert [x["known"] for x in scores] == [True, True, True]
        assert sb.items_synced == 2 and sb.n_registered == 3
        assert np.abs(_scores(a, "u001", ["old-1", "new-1"], context={"time": NOW})
                      - [x["score"] for x in (scores[0], scores[2])]).max() <= 1e-5
    st = SQLiteState(path)  # opening a migrated file again changes nothing
    assert [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(items)")] == ["id", "body", "updated", "seq"]
    assert [i for i, _ in st.load_items()] == ["old-1", "old-2", "new-1"]  # first-registration order kept
    assert st.item_seq() == 2 and [i for i, _ in st.items_since(0)[0]] == ["new-1", "old-1"]
    st.close()


class _NoSyncStore:
    """A custom store of the protocol before items_since / item_seq existed."""

    def __init__(self, inner):
        self.inner, self.kind = inner, "custom"

    def __getattr__(self, name):
        if name in ("items_since", "item_seq"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_a_store_without_items_since_disables_syncing(mmbee_served, tmp_path):
    st = SQLiteState(tmp_path / "s.sqlite")
    st.put_items([("kept", '{"id":"kept","categorical":{"streamer_id":"a1"}}')])
    scorer = Scorer(load_bundle(mmbee_served["bundle"]), _NoSyncStore(st), item_sync_s=0)
    assert scorer.registry.item_sync_s is None and scorer.registry.replayed == 1
    st.put_items([("unseen", '{"id":"unseen"}')])
    assert scorer.registry.sync_items(force=True) == (0, 0) and scorer.item_index(["unseen"])[0] == 0
    st.close()


# ------------------------------------------------------------------------------ (g) deletion and expiry


def test_item_ids_tombstones():
    from modalrec.pipeline import Vocab

    ids = ItemIds(Vocab(["a", "b"]))
    assert ids.add("c") == 3 and ids.add("d") == 4
    assert ids.remove("c") == 3 and ids.remove("c") is None and ids.remove("zz") is None
    assert ids.lookup(["c", "d"]).tolist() == [0, 4] and ids.n_base + len(ids.extra) == 4 and len(ids) == 5
    assert ids.index_for("c") == 3 and ids.index_for("e") == 5
    assert ids.add("c") == 3 and ids.lookup(["c"]).tolist() == [3] and not ids.removed  # its row back
    assert ids.add("e") == 5 and len(ids) == 6


def test_item_ids_reuse_old_tombstones():
    """A tombstone reuse_after_s old is taken by a new id (oldest first) instead of appending a row; its own id
    registered later gets another row; a tombstone taken back and deleted again waits its full delay anew."""
    from modalrec.pipeline import Vocab

    now = [0.0]
    ids = ItemIds(Vocab(["a", "b"]), clock=lambda: now[0], reuse_after_s=60.0)
    assert [ids.add(i) for i in ("c", "d", "e")] == [3, 4, 5]
    ids.remove("c")
    now[0] = 10.0
    ids.remove("d")
    assert ids.tombstones == 2 and ids.index_for("f") == 6  # too young: a new row
    now[0] = 60.0
    assert ids.index_for("f") == 3 and ids.add("f") == 3 and ids.reused == 1  # c's row, c forgotten
    assert ids.id_of(3) == "f" and "c" not in ids.removed and ids.lookup(["c", "f"]).tolist() == [0, 3]
    assert ids.index_for("g") == 6  # d's tombstone is 50 s old
    assert ids.add("d") == 4  # d takes its own row back ...
    now[0] = 65.0
    ids.remove("d")  # ... and is deleted again at 65: its old entry (10 s) must not count
    now[0] = 100.0
    assert ids.add("g") == 6 and len(ids) == 7
    now[0] = 125.0
    assert ids.add("c") == 4 and ids.id_of(4) == "c" and ids.reused == 2  # c, back, takes d's tombstone
    assert ids.tombstones == 0 and ids.lookup(["c", "d", "e", "f", "g"]).tolist() == [4, 0, 5, 3, 6]


def test_new_items_take_old_tombstone_rows(mmbee_served, tmp_path):
    """Live segments that come and go (registered, then deleted or expired): once a tombstone is old enough a new
    segment takes its row, so the tables stop growing; the new item scores as it would in a row of its own (every
    table of the row is rewritten, MMBee's memo of the index is dropped) and is retrieved latest first."""
    segs = segments_of(1)
    user = mmbee_served["task"].user_vocab.id_of(2)
    with _app(mmbee_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c, \
            _app(mmbee_served["bundle"], f"sqlite:///{tmp_path / 'fresh.sqlite'}") as fresh:
        scorer = c.app.state.scorer
        reg = scorer.registry
        now = [0.0]
        reg.clock = lambda: now[0]
        forgotten = []
        forget = scorer.model.forget_items
        scorer.model.forget_items = lambda items: (forgotten.append(sorted(int(i) for i in items)), forget(items))
        _register(c, [raw_item(mmbee_served, seg_id(segs[0]), "old-0"), raw_item(mmbee_served, seg_id(segs[1]), "old-1")])
        old = [int(i) for i in scorer.item_index(["old-0", "old-1"])]
        _register(c, [raw_item(mmbee_served, seg_id(segs[3]), "keeper")])  # a row after theirs, registered before
        keeper = int(scorer.item_index(["keeper"])[0])
        _scores(c, user, ["old-0", "old-1"], context={"time": NOW})  # memoises their content under those indices
        rows = len(reg.ids)
        assert c.post("/items/delete", json={"ids": ["old-0", "old-1"]}, headers=AUTH).status_code == 200
        now[0] = reg.ids.reuse_after_s + 1.0
        forgotten.clear()
        _register(c, [raw_item(mmbee_served, seg_id(segs[2]), "new-0"), raw_item(mmbee_served, seg_id(segs[3]), "new-1")])
        new = [int(i) for i in scorer.item_index(["new-0", "new-1"])]
        assert sorted(new) == sorted(old) and len(reg.ids) == rows and reg.ids.reused == 2
        h = c.get("/healthz").json()
        assert (h["registered_items"], h["item_rows"], h["tombstones"]) == (3, 3, 0)
        assert sorted(forgotten[-1]) == sorted(old)
        _register(fresh, [raw_item(mmbee_served, seg_id(segs[2]), "new-0"), raw_item(mmbee_served, seg_id(segs[3]), "new-1")])
        items = ["new-0", "new-1", "old-0"]
        got, want = (_scores(x, user, items, context={"time": NOW}) for x in (c, fresh))
        assert np.abs(got - want).max() <= 1e-5
        assert [x["known"] for x in c.post("/score", json={"user": user, "items": items}).json()["scores"]] == [
            True, True, False]
        n1 = int(scorer.item_index(["new-1"])[0])
        assert n1 < keeper
        cand = scorer.retrieve(np.array([keeper]), 10_000, exclude=set())[0].tolist()
        assert cand.index(n1) < cand.index(keeper)  # the group's registered segments: latest registration first
        _register(c, [{"id": "newest"}])
        assert int(scorer.item_index(["newest"])[0]) == rows  # no old tombstone left: a new row


def _check_item_deletes(st) -> None:
    """delete_items: a tombstone in the item sequence (items_since returns the id with None), gone from
    load_items, ids not stored skipped, the conditional form, and a registration after it."""
    a, b = '{"id":"a"}', '{"id":"b","v":1}'
    st.put_items([("a", a), ("b", b)])
    assert st.delete_items([]) == [] and st.item_seq() == 2
    assert st.delete_items(["a", "zz", "a"]) == ["a"]  # one tombstone: the second "a" is not stored any more
    assert st.item_seq() == 3 and st.items_since(2) == ([("a", None)], 3)
    assert st.load_items() == [("b", b)]
    assert st.delete_items(["b"], if_body=['{"id":"b","v":0}']) == [] and st.item_seq() == 3  # another body: kept
    assert st.delete_items(["b", "a"], if_body=[b, a]) == ["b"] and st.item_seq() == 4
    assert st.items_since(0) == ([("a", None), ("b", None)], 4) and st.load_items() == []
    st.put_items([("a", '{"id":"a","v":2}')])  # registered again: the tombstone is overwritten
    assert st.items_since(4) == ([("a", '{"id":"a","v":2}')], 5) and st.load_items() == [("a", '{"id":"a","v":2}')]
    with pytest.raises(ValueError, match="documents"):
        st.delete_items(["a"], if_body=[])


def test_item_deletes_sqlite(tmp_path):
    st = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")
    _check_item_deletes(st)
    other = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")  # another process: the same sequence
    assert other.delete_items(["a"]) == ["a"] and st.items_since(5) == ([("a", None)], 6)
    st.close()
    other.close()


def test_item_deletes_redis(redis_server):
    st = open_state(redis_server["url"])
    _check_item_deletes(st)
    assert st.delete_items(["a"]) == ["a"]
    redis_server["restart"]()  # kill -9 Redis: the tombstone (body gone, id logged) survives in the AOF
    st = open_state(redis_server["url"])
    assert st.items_since(5) == ([("a", None)], 6) and st.load_items() == []
    st.close()


def test_deleted_item_is_a_cold_start_and_never_retrieved(din_served, tmp_path):
    """After DELETE /items/ID the id scores as an id never registered (known false, the same score), its events
    are cold, and neither group retrieval, the exact search over registered vectors nor the popular fill
    brings it; the other registered item keeps its index. 404 / 409 / 401 / 403 as documented."""
    with _app(din_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        _register(c, [raw_item(din_served, "i0", "twin-a"), raw_item(din_served, "i0", "twin-b"),
                      raw_item(din_served, "i1", "live/seg 1")])
        scorer = c.app.state.scorer
        a, b = (int(i) for i in scorer.item_index(["twin-a", "twin-b"]))
        cand, _ = scorer.retrieve(np.array([a]), 10_000, exclude={a})
        assert b in cand.tolist()
        c.post("/events", json={"events": [{"user": "fan", "item": "twin-a", "channel": "click", "time": 100}]},
               headers=AUTH)
        rec = {"user": "fan", "k": 20, "n_candidates": 20}
        assert "twin-b" in [x["item"] for x in c.post("/recommend", json=rec).json()["items"]]

        assert c.delete("/items/twin-b").status_code == 401
        assert c.delete("/items/twin-b", headers={"X-API-Key": "wrong"}).status_code == 403
        assert c.post("/items/delete", json={"ids": ["twin-b"]}).status_code == 401
        assert c.post("/items/delete", json={"ids": ["twin-b"]}, headers={"Authorization": "Bearer no"}).status_code == 403
        assert scorer.item_index(["twin-b"])[0] == b  # nothing deleted by those

        r = c.delete("/items/twin-b", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"id": "twin-b", "result": "deleted", "items": 2}
        assert c.delete("/items/live/seg 1", headers=AUTH).json()["result"] == "deleted"  # an id with a slash
        req = {"user": "fan", "items": ["twin-b", "never-registered", "twin-a"], "context": {"time": NOW}}
        scores = c.post("/score", json=req).json()["scores"]
        assert [x["known"] for x in scores] == [False, False, True]
        assert scores[0]["score"] == pytest.approx(scores[1]["score"], abs=1e-6)
        assert scorer.item_index(["twin-a"])[0] == a and not scorer.registry.alive[np.array([b])][0]  # a's index
        assert c.get("/healthz").json()["registered_items"] == 1

        for query in (np.array([a]), np.array([a, b])):  # b's own row in the query too
            cand, _ = scorer.retrieve(query, 10_000, exclude=set())
            assert b not in cand.tolist() and a in cand.tolist()
        cand, n_hist = scorer.retrieve(np.zeros(0, np.int64), 10_000, exclude=set())  # popular only
        assert n_hist == 0 and b not in cand.tolist()
        reg = scorer.registry
        group, reg.group = reg.group, None  # the exact vector search alone (b's vector is a's: nearest)
        try:
            assert b not in scorer.retrieve(np.array([a]), 10_000, exclude={a})[0].tolist()
        finally:
            reg.group = group
        assert "twin-b" not in [x["item"] for x in c.post("/recommend", json=rec).json()["items"]]
        ev = c.post("/events", json={"events": [{"user": "fan", "item": "twin-b", "channel": "click"}]},
                    headers=AUTH).json()
        assert ev["cold_item_events"] == 1

        r = c.delete("/items/twin-b", headers=AUTH)  # deleted before
        assert r.status_code == 404 and "'twin-b'" in r.json()["detail"]
        r = c.delete("/items/never-registered", headers=AUTH)
        assert r.status_code == 404 and "'never-registered' is not registered" in r.json()["detail"]
        r = c.delete("/items/i3", headers=AUTH)
        assert r.status_code == 409 and "'i3'" in r.json()["detail"] and "bundle" in r.json()["detail"]
        assert c.delete(f"/items/{'x' * 257}", headers=AUTH).status_code == 422
        assert 'modalrec_items_total{result="deleted"} 2.0' in c.get("/metrics").text

        paths = c.get("/openapi.json").json()["paths"]
        assert {"404", "409"} <= set(paths["/items/{item_id}"]["delete"]["responses"])
        assert paths["/items/delete"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/DeleteItemsResponse"}


def test_batch_delete_reports_each_id(din_served, tmp_path):
    from modalrec.serve.schemas import MAX_NEW_ITEMS

    with _app(din_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        _register(c, [{"id": "x", "vectors": {"emb": [0.1, 0.2, 0.3, 0.4]}},
                      {"id": "y", "vectors": {"emb": [0.4, 0.3, 0.2, 0.1]}}, {"id": "z"}])
        r = c.post("/items/delete", json={"ids": ["x", "nope", "i1", "x", "y"]}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() == {"deleted": 2, "not_registered": 1, "bundle_items": 1, "items": 1, "results": [
            {"id": "x", "result": "deleted"}, {"id": "nope", "result": "not_registered"},
            {"id": "i1", "result": "bundle_item"}, {"id": "y", "result": "deleted"}]}
        r = c.post("/items/delete", json={"ids": ["x", "z"]}, headers=AUTH).json()
        assert (r["deleted"], r["not_registered"], r["items"]) == (1, 1, 0)
        assert c.post("/items/delete", json={"ids": []}, headers=AUTH).status_code == 422
        too_many = {"ids": [f"n{k}" for k in range(MAX_NEW_ITEMS + 1)]}
        assert c.post("/items/delete", json=too_many, headers=AUTH).json()["detail"][0]["field"] == "ids"
        assert c.get("/healthz").json()["registered_items"] == 0


def test_registering_a_deleted_id_again(mmbee_served, tmp_path):
    """A deleted id registered again takes its old row back (the tables do not grow) and scores as a fresh
    registration of the same content, also when a request scored its old index (memoising the old content in
    MMBee's MFQ memo) between the deletion and the registration."""
    a_seg, b_seg = segments_of(1)[0], segments_of(1)[1]
    user = mmbee_served["task"].user_vocab.id_of(2)
    with _app(mmbee_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        scorer = c.app.state.scorer
        forgotten = []
        forget = scorer.model.forget_items
        scorer.model.forget_items = lambda items: (forgotten.append(sorted(int(i) for i in items)), forget(items))
        _register(c, [raw_item(mmbee_served, seg_id(a_seg), "seg-x"), raw_item(mmbee_served, seg_id(b_seg), "fresh")])
        old = int(scorer.item_index(["seg-x"])[0])
        first = _scores(c, user, ["seg-x", "fresh"], context={"time": NOW})
        assert abs(first[0] - first[1]) > 1e-4
        assert c.delete("/items/seg-x", headers=AUTH).status_code == 200
        assert forgotten == [[old]]  # the deleted item's memo is dropped
        # a request that looked seg-x up before its deletion scores the old index now: MFQ memoises a's content
        scorer.score(user, Sequence.empty(), NOW, np.array([old]))
        rows = len(scorer.registry.ids)
        res = _register(c, [raw_item(mmbee_served, seg_id(b_seg), "seg-x")])
        assert res["registered"] == 1 and res["replaced"] == 0 and res["items"] == 2
        assert int(scorer.item_index(["seg-x"])[0]) == old and len(scorer.registry.ids) == rows  # its row, reused
        assert forgotten[-1] == [old]  # the reused index's memo is dropped again
        again = _scores(c, user, ["seg-x", "fresh"], context={"time": NOW})
        assert abs(again[0] - again[1]) <= 1e-5  # as a fresh registration of b's content
        assert c.post("/score", json={"user": user, "items": ["seg-x"]}).json()["scores"][0]["known"] is True


def _check_delete_restart(served, url: str) -> None:
    """A deletion survives a restart (replay does not bring the item back); registering the id again does."""
    user = served["task"].user_vocab.id_of(1)
    with _app(served["bundle"], url) as c:
        _register(c, [{"id": "r1", "categorical": {"streamer_id": "a1"}}, {"id": "r2", "categorical": {"streamer_id": "a2"}}])
        assert c.delete("/items/r1", headers=AUTH).status_code == 200
    with _app(served["bundle"], url) as c:
        assert c.app.state.scorer.registry.replayed == 1 and c.get("/healthz").json()["registered_items"] == 1
        assert [x["known"] for x in c.post("/score", json={"user": user, "items": ["r1", "r2"]}).json()["scores"]] == [
            False, True]
        assert c.delete("/items/r1", headers=AUTH).status_code == 404
        _register(c, [{"id": "r1", "categorical": {"streamer_id": "a3"}}])
    with _app(served["bundle"], url) as c:
        assert c.app.state.scorer.registry.replayed == 2
        assert [x["known"] for x in c.post("/score", json={"user": user, "items": ["r1", "r2"]}).json()["scores"]] == [
            True, True]


def test_deletions_survive_a_restart(mmbee_served, store_url):
    _check_delete_restart(mmbee_served, store_url)


def _check_delete_sync(served, url: str) -> None:
    """A deletion on A reaches B at its next sync (B drops the item and its memo; it is never retrieved there);
    registering the id again on A reaches B too; a process that never synced can delete an item another
    registered (the store decides), and the others follow."""
    user = served["task"].user_vocab.id_of(2)
    a_seg = segments_of(1)[0]
    req = {"user": user, "items": ["sx", "sy", "unknown-seg"], "context": {"time": NOW}}
    with _app(served["bundle"], url, item_sync_s=0) as a, _app(served["bundle"], url, item_sync_s=0) as b, \
            _app(served["bundle"], url, item_sync_s=None) as lone:
        sa, sb = a.app.state.scorer.registry, b.app.state.scorer.registry
        forgotten = []
        forget = sb.model.forget_items
        sb.model.forget_items = lambda items: (forgotten.append(sorted(int(i) for i in items)), forget(items))
        _register(a, [raw_item(served, seg_id(a_seg), "sx"), {"id": "sy", "categorical": {"streamer_id": "a1"}}])
        on_b = b.post("/score", json=req).json()["scores"]
        assert [x["known"] for x in on_b] == [True, True, False]
        sx = int(sb.ids.lookup(["sx"])[0])

        assert a.delete("/items/sx", headers=AUTH).status_code == 200
        on_b = b.post("/score", json=req).json()["scores"]
        assert [x["known"] for x in on_b] == [False, True, False]
        assert on_b[0]["score"] == pytest.approx(on_b[2]["score"], abs=1e-6)
        assert forgotten == [[sx]] and sb.deletions_synced == 1 and sb.n_registered == 1
        assert sx not in b.app.state.scorer.retrieve(np.array([sx]), 10_000, exclude=set())[0].tolist()
        assert 'modalrec_items_synced_total{result="deleted"} 1.0' in b.get("/metrics").text
        assert sa.deletions_synced == 0  # A read its own tombstone back: nothing to do

        _register(a, [raw_item(served, seg_id(a_seg), "sx")])  # again, on A
        assert np.abs(_scores(a, user, req["items"], context={"time": NOW})
                      - _scores(b, user, req["items"], context={"time": NOW})).max() <= 1e-5
        assert int(sb.ids.lookup(["sx"])[0]) == sx and forgotten[-1] == [sx]  # B's tombstone row reused

        # `lone` never syncs: it does not know sy, yet deleting it there deletes it in the store
        r = lone.post("/items/delete", json={"ids": ["sy", "never"]}, headers=AUTH).json()
        assert [x["result"] for x in r["results"]] == ["deleted", "not_registered"]
        for c in (a, b):
            assert [x["known"] for x in c.post("/score", json=req).json()["scores"]] == [True, False, False]
        assert sa._item_seq == sb._item_seq == sa.state.item_seq()


def test_deletions_reach_other_processes(mmbee_served, store_url):
    _check_delete_sync(mmbee_served, store_url)


def _check_ttl(served, url: str) -> None:
    """Expiry on a fake wall clock: an item's own ttl_s, else the service's item_ttl_s (of the process that
    registered it: the expiry time is stored with the item), else never. The process whose sweep comes first
    deletes it in the store, the other drops it at its sync; at most one sweep per second; registering again
    restarts the TTL, and a sweep on stale knowledge does not delete a newer registration; a restart after the
    expiry does not serve the item."""
    wall, mono = [1_000_000.0], [0.0]
    user = served["task"].user_vocab.id_of(2)
    req = {"user": user, "items": ["short", "default", "keep", "unknown-seg"], "context": {"time": NOW}}

    def fake_clocks(client):
        sc = client.app.state.scorer.registry
        sc.clock, sc.wall_clock = (lambda: mono[0]), (lambda: wall[0])
        return sc

    def known(client) -> list[bool]:
        return [x["known"] for x in client.post("/score", json=req).json()["scores"]]

    with _app(served["bundle"], url, item_sync_s=0, item_ttl_s=100) as a, _app(served["bundle"], url, item_sync_s=0) as b:
        sa, sb = fake_clocks(a), fake_clocks(b)
        _register(a, [{"id": "short", "categorical": {"streamer_id": "a1"}, "ttl_s": 10},
                      {"id": "default", "categorical": {"streamer_id": "a2"}}])
        _register(b, [{"id": "keep", "categorical": {"streamer_id": "a3"}}])  # B has no item_ttl_s: never
        assert known(a) == known(b) == [True, True, True, False]
        cold = _scores(b, user, ["unknown-seg"], context={"time": NOW})[0]
        wall[0], mono[0] = 1_000_009.5, 5.0
        assert known(a) == known(b) == [True, True, True, False]  # both swept at mono 5: nothing due
        wall[0] = 1_000_010.0  # short's expiry
        assert known(b) == [True, True, True, False]  # swept less than a second ago: not yet
        mono[0] = 6.0
        assert known(b) == [False, True, True, False]  # B's sweep deletes it (in the store)
        assert _scores(b, user, ["short"], context={"time": NOW})[0] == pytest.approx(cold, abs=1e-6)
        assert known(a) == [False, True, True, False]  # A reads the tombstone
        assert 'modalrec_items_total{result="expired"} 1.0' in b.get("/metrics").text
        assert 'modalrec_items_synced_total{result="deleted"} 1.0' in a.get("/metrics").text
        wall[0], mono[0] = 1_000_100.0, 7.0  # default's expiry (A's item_ttl_s)
        assert known(a) == [False, False, True, False] and known(b) == [False, False, True, False]
        assert [i for i, _ in sa.state.load_items()] == ["keep"]

        # registering again restarts the TTL; B's sweep on its stale copy does not delete A's newer registration
        _register(b, [{"id": "short", "categorical": {"streamer_id": "a1"}, "ttl_s": 10}])  # until 1_000_110
        assert known(a)[0] and known(b)[0]
        wall[0], mono[0] = 1_000_105.0, 8.0
        _register(a, [{"id": "short", "categorical": {"streamer_id": "a1"}, "ttl_s": 10}])  # until 1_000_115
        wall[0], mono[0] = 1_000_110.0, 9.0
        assert sb.expire_items() == (0, 1)  # B had not synced: its copy expires here only, the store keeps A's
        assert sb.ids.lookup(["short"])[0] == 0
        assert known(b)[0] and known(a)[0]  # B's sync brings A's registration
        wall[0], mono[0] = 1_000_115.0, 10.0
        assert not known(a)[0] and not known(b)[0]
        assert len(sa._expiry_heap) <= 2 * len(sa._expiry) + 64

        _register(a, [{"id": "late", "categorical": {"streamer_id": "a4"}, "ttl_s": 5}])  # until 1_000_120
    with _app(served["bundle"], url) as c:  # a restart after the expiry: replayed, swept before the first score
        assert c.app.state.scorer.registry.replayed == 2
        fake_clocks(c)
        wall[0] = 1_000_121.0
        assert [x["known"] for x in c.post("/score", json={**req, "items": ["late", "keep"]}).json()["scores"]] == [
            False, True]
        assert [i for i, _ in c.app.state.scorer.state.load_items()] == ["keep"]


def test_items_expire(mmbee_served, store_url):
    _check_ttl(mmbee_served, store_url)


def test_ttl_validation(mmbee_served, tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with _app(mmbee_served["bundle"], url) as c:
        for ttl in (0, -1, "soon"):
            r = _register(c, [{"id": "x", "ttl_s": ttl}], 422)
            assert r["detail"][0]["field"] == "items[0].ttl_s", r
        schema = c.get("/openapi.json").json()["components"]["schemas"]["NewItem"]["properties"]["ttl_s"]
        assert "expires" in schema["description"]
    for ttl in (0, -5, float("inf")):
        with pytest.raises(ValueError, match="item_ttl_s"):
            create_app(mmbee_served["bundle"], url, api_key=KEY, item_ttl_s=ttl)
    from typer.testing import CliRunner

    from modalrec.cli import app as cli

    assert "--item-ttl" in CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output


def test_deleting_from_an_old_sqlite_database(mmbee_served, tmp_path):
    """A state file from before the item sequence: its items (seq 0) can be deleted, the other process drops
    them at its sync, and a restart does not replay them."""
    path = tmp_path / "old.sqlite"
    url = _old_state_file(path)
    req = {"user": "u001", "items": ["old-1", "old-2"], "context": {"time": NOW}}
    with _app(mmbee_served["bundle"], url, item_sync_s=0) as a, _app(mmbee_served["bundle"], url, item_sync_s=0) as b:
        assert a.app.state.scorer.registry.replayed == b.app.state.scorer.registry.replayed == 2
        assert a.delete("/items/old-1", headers=AUTH).status_code == 200
        assert [x["known"] for x in b.post("/score", json=req).json()["scores"]] == [False, True]
    with _app(mmbee_served["bundle"], url) as c:
        assert c.app.state.scorer.registry.replayed == 1
        assert [x["known"] for x in c.post("/score", json=req).json()["scores"]] == [False, True]
    st = SQLiteState(path)
    assert st.items_since(0) == ([("old-1", None)], 1) and [i for i, _ in st.load_items()] == ["old-2"]
    st.close()


def test_deletion_while_scoring(din_served, tmp_path):
    """Requests scoring and retrieving while items are registered, deleted and registered again: no error,
    every score finite, no deleted item retrieved."""
    with _app(din_served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}") as c:
        scorer = c.app.state.scorer
        _register(c, [raw_item(din_served, "i0", "anchor")])
        anchor = int(scorer.item_index(["anchor"])[0])

        def work():
            ids = [f"live-{k}" for k in range(10)] + ["i1", "anchor"]
            s = scorer.score(None, Sequence.empty(), NOW, scorer.item_index(ids))
            assert np.isfinite(s).all()
            cand, _ = scorer.retrieve(np.array([anchor]), 50, exclude=set())
            assert all(i < scorer.n_items or scorer.registry.alive[np.array([i])][0] for i in cand.tolist())

        with _repeated_in_threads(work):
            for k in range(30):
                _register(c, [raw_item(din_served, f"i{k % 7}", f"live-{k % 10}")])
                if k % 3 == 2:
                    c.post("/items/delete", json={"ids": [f"live-{j}" for j in range(k % 10)]}, headers=AUTH)
        assert len(scorer.registry.ids) <= scorer.n_items + 11  # rows reused: one per distinct id
