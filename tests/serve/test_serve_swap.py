"""Bundle hot swap (POST /admin/bundle): under load, the service moves from one bundle to another without a failed
request or a lost event; registered items carry over (those registered or deleted during the load too); bundles
that cannot serve the same API are refused with 422 naming the file, a second swap meanwhile with 409.

Two bundles of one toy DIN run (seeds 0 and 1: same pipeline, other weights) and a SASRec (top-K) bundle of the
same data (conftest's `toy_dir`).
"""

from __future__ import annotations

import copy
import gc
import shutil
import threading
import time
import weakref

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from modalrec.config import RunConfig
from modalrec.pipeline.pipeline import sha256_of
from modalrec.serve.app import create_app
from modalrec.serve.bundle import export_bundle, load_bundle
from modalrec.serve.state import open_state
from modalrec.serve.swap import incompatible
from modalrec.train.run import best_model, load_run, train_run

KEY = "test-key"
AUTH = {"X-API-Key": KEY}
MAX_HISTORY = 10
T_NOW = 100_000  # later than every toy event (toy times are < 6000)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, toy_dir):
    """Bundles A (seed 0) and B (seed 1) of one DIN run, a SASRec bundle of the same data, and /score requests
    (explicit histories of test samples) with the offline logits of A's and B's models."""
    root = tmp_path_factory.mktemp("swap")
    base = {"data": {"source": str(toy_dir)}, "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3,
                                                        "progress": False, "num_threads": 1}}
    cfg = RunConfig.model_validate({**base, "name": "toy-din", "seeds": [0, 1], "model": {"name": "din", "params": {
        "embed_dim": 8}}, "task": {"kind": "ctr", "sample_channels": ["click"], "max_history": MAX_HISTORY}})
    train_run(cfg, root / "run", report=False)
    for seed, name in ((0, "a"), (1, "b")):
        export_bundle(root / "run", root / name, seed=seed)
    topk = RunConfig.model_validate({**base, "name": "toy-sasrec", "seeds": [0], "task": {
        "kind": "topk", "max_history": MAX_HISTORY, "train_negatives": 8}, "model": {"name": "sasrec", "params": {
            "hidden_dim": 8, "n_heads": 1, "n_blocks": 1}}})
    train_run(topk, root / "topk_run", report=False)
    export_bundle(root / "topk_run", root / "topk")

    _, task = load_run(root / "run")
    offline = {seed: task.predict(best_model(cfg, task, root / "run", seed).eval(), "test", 256) for seed in (0, 1)}
    s = task.splits["test"]
    groups: dict[tuple[int, int, int], list[int]] = {}
    for r in range(len(s)):
        groups.setdefault((int(s.users[r]), int(s.times[r]), int(s.cut[r])), []).append(r)
    requests = []
    for u, t, cut in sorted(groups, key=lambda k: (-len(groups[k]), k))[:6]:
        rows = groups[(u, t, cut)]
        lo = task.history.ptr[u]
        history = [{"item": task.item_vocab.id_of(int(i)), "time": int(h)}
                   for i, h in zip(task.history.items[lo:lo + cut], task.history.times[lo:lo + cut])]
        body = {"user": task.log_users.id_of(u), "items": [task.item_vocab.id_of(int(s.items[r])) for r in rows],
                "context": {"time": t}, "history": history}
        requests.append((body, offline[0][rows], offline[1][rows]))
    users = [task.log_users.id_of(u) for u in range(1, min(11, len(task.log_users)))]  # row 0: padding
    return {"a": root / "a", "b": root / "b", "topk": root / "topk", "requests": requests, "users": users,
            "item": task.item_vocab.id_of(3)}


def _item(i: str, like: str = "i3") -> dict:
    """A registered item with the toy features (brand, genres) of `like`."""
    n = int(like[1:])
    return {"id": i, "categorical": {"brand": f"b{n % 4}"}, "multi": {"genres": [f"g{n % 3}", f"g{(n + 1) % 5}"]}}


def _swap(client, path, headers=AUTH):
    return client.post("/admin/bundle", json={"path": str(path)}, headers=headers)


def test_swap_under_load_fails_no_request_and_loses_no_event(bundles, tmp_path):
    """Threads hammer /recommend, /score, /events and /items while the service swaps from A to B: every response
    is a 200, every /score equals A's or B's offline logits (never a mix) and B's once the swap has answered, every
    acknowledged event is stored once, and every item registered before or during the swap is known after it."""
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    app = create_app(bundles["a"], url, api_key=KEY, item_sync_s=None)  # no periodic sync: the swap's catch-up only
    requests, users = bundles["requests"], bundles["users"]
    failures: list[str] = []
    done = threading.Event()
    swapped = threading.Event()
    acked_events: list[tuple[str, str]] = []
    acked_items: list[str] = []
    served = {"a": 0, "b": 0, "after": 0}
    lock = threading.Lock()

    def run(step) -> None:
        n = 0
        while n < 3000 and not (done.is_set()):
            try:
                step(n)
            except Exception as e:  # noqa: BLE001 - reported by the test
                failures.append(f"{step.__name__}: {type(e).__name__}: {e}")
            n += 1

    def score(n: int) -> None:
        after = swapped.is_set()  # read before the request: a request sent after the swap answered
        body, a, b = requests[n % len(requests)]
        r = client.post("/score", json=body)
        if r.status_code != 200:
            failures.append(f"/score {r.status_code}: {r.text[:200]}")
            return
        got = np.array([x["score"] for x in r.json()["scores"]])
        on_a, on_b = np.abs(got - a).max() <= 1e-5, np.abs(got - b).max() <= 1e-5
        with lock:
            served["a"] += bool(on_a)
            served["b"] += bool(on_b)
            served["after"] += after
        if after and not on_b or not (on_a or on_b):
            failures.append(f"/score (after the swap: {after}): {got} is neither A's {a} nor B's {b}")

    def recommend(n: int) -> None:
        r = client.post("/recommend", json={"user": users[n % len(users)], "k": 5})
        if r.status_code != 200 or len(r.json()["items"]) != 5:
            failures.append(f"/recommend {r.status_code}: {r.text[:200]}")

    def events(n: int) -> None:
        batch = [{"user": users[(n + j) % len(users)], "item": f"i{(n + j) % 60}", "channel": "click",
                  "time": 7000 + n, "event_id": f"e{n}-{j}"} for j in range(3)]
        r = client.post("/events", json={"events": batch}, headers=AUTH)
        if r.status_code != 200 or r.json()["accepted"] != 3:
            failures.append(f"/events {r.status_code}: {r.text[:200]}")
            return
        with lock:
            acked_events.extend((e["user"], e["event_id"]) for e in batch)

    def items(n: int) -> None:
        r = client.post("/items", json={"items": [_item(f"new-{n}")]}, headers=AUTH)
        if r.status_code != 200:
            failures.append(f"/items {r.status_code}: {r.text[:200]}")
            return
        with lock:
            acked_items.append(f"new-{n}")

    with TestClient(app) as client:
        assert client.post("/items", json={"items": [_item("before")]}, headers=AUTH).status_code == 200
        health = client.get("/healthz").json()
        assert health["swaps"] == 0 and health["bundle"] == str(bundles["a"])
        serving, build = app.state.serving, app.state.serving.build

        def slow_build(path, bundle):  # a toy bundle loads in milliseconds: give the load time to overlap requests
            time.sleep(0.5)
            return build(path, bundle)

        serving.build = slow_build
        threads = [threading.Thread(target=run, args=(f,)) for f in (score, score, recommend, events, items)]
        for th in threads:
            th.start()
        time.sleep(1.0)  # the load is on
        r = _swap(client, bundles["b"])
        swapped.set()
        assert r.status_code == 200, r.text
        out = r.json()
        t_end = time.monotonic() + 1.0  # the load goes on after the swap
        while time.monotonic() < t_end and not failures:
            time.sleep(0.05)
        done.set()
        for th in threads:
            th.join(60)
        assert not failures, failures[:5]
        assert served["a"] and served["b"] and served["after"]  # requests on both sides of the swap

        assert out["bundle"] == str(bundles["b"]) and out["model"] == "din" and out["task"] == "ctr"
        assert out["previous"]["bundle"] == str(bundles["a"]) and out["previous"]["seed"] == 0 and out["seed"] == 1
        assert out["load_s"] >= 0.5 and abs(out["swapped_at"] - time.time()) < 120
        assert out["manifest_sha256"] == sha256_of(bundles["b"] / "manifest.json")
        health = client.get("/healthz").json()
        assert health["swaps"] == 1 and health["bundle"] == str(bundles["b"]) and not health["swapping"]
        assert health["manifest_sha256"] == out["manifest_sha256"]
        assert 'seed="1"' in client.get("/metrics").text

        # scores are B's, not A's
        for body, a, b in requests:
            got = np.array([x["score"] for x in client.post("/score", json=body).json()["scores"]])
            assert np.abs(got - b).max() <= 1e-5 and np.abs(got - a).max() > 1e-3
        # every item registered before or during the swap is known to the new registry and recommendable
        registry = app.state.scorer.registry
        assert registry is app.state.serving.current.registry
        missing = [i for i in ["before", *acked_items] if i not in registry.ids.extra]
        assert not missing, missing
        rec = client.post("/recommend", json={"user": users[0], "k": 2, "candidates": ["before", "new-0"]}).json()
        assert {x["item"] for x in rec["items"]} == {"before", "new-0"} and all(x["known"] for x in rec["items"])

    st = open_state(url)  # every acknowledged event is stored, once
    try:
        by_user: dict[str, set[str]] = {}
        for user, event_id in acked_events:
            by_user.setdefault(user, set()).add(event_id)
        for user, ids in by_user.items():
            assert ids <= st.event_ids(user)
        assert st.count() == len(acked_events)
    finally:
        st.close()


def test_items_registered_or_deleted_during_the_load_carry_over(bundles, tmp_path):
    """An item registered and another deleted while the new bundle loads (after its registry replayed the store)
    are as they should be in the new registry, without any periodic sync."""
    app = create_app(bundles["a"], f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY, item_sync_s=None)
    with TestClient(app) as client:
        assert client.post("/items", json={"items": [_item("stays"), _item("goes")]}, headers=AUTH).status_code == 200
        serving = app.state.serving
        build = serving.build

        def build_then_write(path, bundle):
            new = build(path, bundle)  # the new registry has replayed both items
            assert {"stays", "goes"} <= set(new.registry.ids.extra)
            assert client.post("/items", json={"items": [_item("during", "i8")]}, headers=AUTH).status_code == 200
            assert client.delete("/items/goes", headers=AUTH).status_code == 200
            return new

        serving.build = build_then_write
        assert _swap(client, bundles["b"]).status_code == 200
        extra = app.state.scorer.registry.ids.extra
        assert "during" in extra and "stays" in extra and "goes" not in extra
        scores = client.post("/score", json={"user": "u1", "items": ["during", "goes"]}).json()["scores"]
        assert [x["known"] for x in scores] == [True, False]


def test_refusals(bundles, tmp_path):
    """422 naming the file for a path that is not a bundle, a corrupt one and a top-K one (the service answers
    ctr); 409 while another swap runs; 401 / 403 without the right key. The served bundle stays."""
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundles["b"], corrupt)
    with open(corrupt / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    app = create_app(bundles["a"], f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY)
    with TestClient(app) as client:
        r = _swap(client, tmp_path / "nowhere")
        assert r.status_code == 422 and str(tmp_path / "nowhere" / "manifest.json") in r.json()["message"]
        r = _swap(client, corrupt)
        assert r.status_code == 422 and str(corrupt / "model.safetensors") in r.json()["message"]
        r = _swap(client, bundles["topk"])
        assert r.status_code == 422, r.text
        msg = r.json()["message"]
        assert str(bundles["topk"] / "config.yaml") in msg and "'topk'" in msg and "'ctr'" in msg
        r = client.post("/admin/bundle", json={"path": ""}, headers=AUTH)
        assert r.status_code == 422 and "path" in r.json()["message"]
        assert _swap(client, bundles["b"], headers={}).status_code == 401
        assert _swap(client, bundles["b"], headers={"X-API-Key": "wrong"}).status_code == 403

        serving = app.state.serving
        build, release, started = serving.build, threading.Event(), threading.Event()

        def slow_build(path, bundle):
            started.set()
            assert release.wait(60)
            return build(path, bundle)

        serving.build = slow_build
        first: dict = {}
        th = threading.Thread(target=lambda: first.update(r=_swap(client, bundles["b"])))
        th.start()
        assert started.wait(60)
        assert client.get("/healthz").json()["swapping"]
        r = _swap(client, bundles["a"])
        assert r.status_code == 409 and str(bundles["b"]) in r.json()["message"]
        # requests are answered by A meanwhile
        assert client.post("/recommend", json={"user": "u1", "k": 3}).status_code == 200
        release.set()
        th.join(60)
        assert first["r"].status_code == 200
        health = client.get("/healthz").json()
        assert health["swaps"] == 1 and health["bundle"] == str(bundles["b"])
        metrics = client.get("/metrics").text
        assert 'modalrec_bundle_swaps_total{result="refused"} 3.0' in metrics
        assert 'modalrec_bundle_swaps_total{result="busy"} 1.0' in metrics


def test_another_content_encoding_is_refused(bundles):
    """A bundle whose raw content encoding differs from the served one's (the vectors of registered items and the
    segment workers' encoders would not match its model) cannot be swapped to."""
    a, b = load_bundle(bundles["a"]), load_bundle(bundles["b"])
    assert incompatible(a, b, bundles["b"]) is None
    encoded = copy.copy(b)
    encoded.pipeline = copy.copy(b.pipeline)
    encoded.pipeline.settings = copy.copy(b.pipeline.settings)
    encoded.pipeline.settings.content = {"encode": {"image": "efficientnet_lite0"}, "modalities": []}
    reason = incompatible(a, encoded, bundles["b"])
    assert reason is not None and "raw content encoding" in reason and "pipeline.json" in reason
    assert incompatible(encoded, a, bundles["a"]) is not None  # either way


def test_old_generation_is_freed_under_gc_freeze(bundles, tmp_path):
    """`modalrec serve` freezes the collector's generations; the old generation (a reference cycle) is freed after a
    swap all the same: unfrozen, collected, and the new one frozen, once the requests in flight are done."""
    app = create_app(bundles["a"], f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY)
    with TestClient(app) as client:
        old = weakref.ref(app.state.scorer.registry)
        app.state.serving.refreeze_after_s = 0.0
        gc.collect()
        gc.freeze()
        try:
            assert _swap(client, bundles["b"]).status_code == 200
            deadline = time.monotonic() + 30
            while (old() is not None or not gc.get_freeze_count()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert old() is None
            assert gc.get_freeze_count() > 0  # frozen again
        finally:
            gc.unfreeze()
