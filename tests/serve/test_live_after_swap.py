"""Live rooms across a bundle swap: items registered online that the swapped-in bundle knows (a refreshed bundle
trained on data that had them) stay registered members of their rooms (`serve.members`: absorbed), scored with the
new bundle's trained rows; deletion and expiry still end their membership, on every process sharing the store.

Bundle A: a 1-epoch DIN run on toy data with items i0..i49; bundle B: the same config on toy data with i0..i59, so
B knows i50..i59, which A's service registers online."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from modalrec.config import RunConfig
from modalrec.serve.app import create_app
from modalrec.serve.bundle import export_bundle
from modalrec.serve.content import ContentEncoder, RawSegmentRequest
from modalrec.serve.segments import SegmentService
from modalrec.train.run import train_run
from tests.helpers import make_data

KEY = "test-key"
AUTH = {"X-API-Key": KEY}
T = 100_000  # after every toy event
USER = "u1"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("live_swap")
    for name, n_items in (("a", 50), ("b", 60)):
        data = make_data(n_users=40, n_items=n_items, n_events=3000)
        data.save(root / f"data-{name}")
        cfg = RunConfig.model_validate({
            "name": f"toy-din-{name}", "data": {"source": str(root / f"data-{name}")},
            "task": {"kind": "ctr", "sample_channels": ["click"], "max_history": 10},
            "model": {"name": "din", "params": {"embed_dim": 8}},
            "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "progress": False, "num_threads": 1},
            "seeds": [0]})
        train_run(cfg, root / f"run-{name}", data=data, report=False)
        export_bundle(root / f"run-{name}", root / name)
    return {"a": root / "a", "b": root / "b"}


def _item(i: str, brand: str, ttl_s: float | None = None) -> dict:
    out = {"id": i, "categorical": {"brand": brand}, "multi": {"genres": ["g1", "g2"]}}
    return out if ttl_s is None else {**out, "ttl_s": ttl_s}


def _live(client, one_per_room: bool = True) -> dict[str, tuple[str, float]]:
    """item -> (room, score) of /recommend live_only for USER at time T."""
    r = client.post("/recommend", json={"user": USER, "k": 20, "live_only": True, "one_per_room": one_per_room,
                                        "context": {"time": T}})
    assert r.status_code == 200, r.text
    return {x["item"]: (x["room"], x["score"]) for x in r.json()["items"]}


def _scores(client, items: list[str]) -> np.ndarray:
    r = client.post("/score", json={"user": USER, "items": items, "context": {"time": T}})
    assert r.status_code == 200, r.text
    assert all(x["known"] for x in r.json()["scores"])
    return np.array([x["score"] for x in r.json()["scores"]])


def test_registered_items_the_new_bundle_knows_stay_in_their_rooms(bundles, tmp_path):
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    with TestClient(create_app(bundles["b"], f"sqlite:///{tmp_path / 'b-only.sqlite'}", api_key=KEY)) as c:
        offline_b = _scores(c, ["i50", "i51"])  # B's trained rows, nothing registered

    app = create_app(bundles["a"], url, api_key=KEY, item_sync_s=0)
    with TestClient(app) as c:
        # room b2: x1, then i50 (its latest); room b3: i51 (expires in 600 s); room b1: x2 (unknown to both)
        for item in (_item("x1", "b2"), _item("i50", "b2"), _item("i51", "b3", ttl_s=600), _item("x2", "b1")):
            r = c.post("/items", json={"items": [item]}, headers=AUTH)
            assert r.status_code == 200 and r.json()["registered"] == 1, r.text
        # a segment (room b0) registered by the segment service (no raw content: registered at once, no workers)
        segments = SegmentService(ContentEncoder({"content": {"encode": {}, "modalities": []}}),
                                  app.state.serving.registry, workers=0)
        segments.submit(RawSegmentRequest(id="i52", categorical={"brand": "b0"}), {})
        assert segments.status("i52")["status"] == "registered"
        before = _live(c)
        assert {i: room for i, (room, _) in before.items()} == {"i50": "b2", "i51": "b3", "x2": "b1", "i52": "b0"}
        registered_copy = _scores(c, ["i50", "i51"])  # A scores its registered copies (id unknown to its model)

        r = c.post("/admin/bundle", json={"path": str(bundles["b"])}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["registered_items"] == 5
        reg = app.state.serving.current.registry
        assert set(reg.members.absorbed) == {"i50", "i51", "i52"} and reg.n_registered == 5
        assert segments.status("i52")["status"] == "registered"  # GET /segments/{id}: not 'deleted'
        assert reg.registered_body("i50") is not None

        # the rooms whose latest items B absorbed are still live, their items scored with B's trained rows
        after = _live(c)
        assert {i: room for i, (room, _) in after.items()} == {"i50": "b2", "i51": "b3", "x2": "b1", "i52": "b0"}
        got = np.array([after["i50"][1], after["i51"][1]])
        assert np.abs(got - offline_b).max() <= 1e-5, (got, offline_b)
        assert np.abs(_scores(c, ["i50", "i51"]) - offline_b).max() <= 1e-5
        assert np.abs(registered_copy - offline_b).max() > 1e-4  # B's rows, not the registered copies
        assert set(_live(c, one_per_room=False)) == {"x1", "i50", "i51", "x2", "i52"}
        rooms = {s["room"]: s for s in c.get("/rooms").json()["rooms"]}
        assert rooms["b2"]["items"] == 2 and rooms["b3"]["items"] == 1

        # another process on B sharing the store: the same rooms (its replay absorbs them too)
        other = create_app(bundles["b"], url, api_key=KEY, item_sync_s=0)
        with TestClient(other) as c2:
            assert {i: room for i, (room, _) in _live(c2).items()} == {"i50": "b2", "i51": "b3", "x2": "b1", "i52": "b0"}

            # DELETE removes an absorbed item from its room (here and there); its bundle row stays scoreable
            r = c.delete("/items/i50", headers=AUTH)
            assert r.status_code == 200 and r.json()["items"] == 4, r.text
            assert reg.registered_body("i50") is None
            assert {i: room for i, (room, _) in _live(c).items()} == {"x1": "b2", "i51": "b3", "x2": "b1", "i52": "b0"}
            assert {i: room for i, (room, _) in _live(c2).items()} == {"x1": "b2", "i51": "b3", "x2": "b1", "i52": "b0"}
            assert c.delete("/items/i50", headers=AUTH).status_code == 409  # now only the bundle's item
            assert np.abs(_scores(c, ["i50"]) - offline_b[:1]).max() <= 1e-5

            # expiry ends the membership of an absorbed item: room b3 has no item left, so it is no longer live
            reg.wall_clock = lambda: time.time() + 601
            reg.clock = lambda: time.monotonic() + 10  # past the sweep's throttle
            assert {i: room for i, (room, _) in _live(c).items()} == {"x1": "b2", "x2": "b1", "i52": "b0"}
            assert "b3" not in {s["room"] for s in c.get("/rooms").json()["rooms"]}
            assert {i: room for i, (room, _) in _live(c2).items()} == {"x1": "b2", "x2": "b1", "i52": "b0"}
            r = c.post("/items/delete", json={"ids": ["i51"]}, headers=AUTH)
            assert r.json()["results"] == [{"id": "i51", "result": "bundle_item"}]
            r = c.post("/items/delete", json={"ids": ["i52"]}, headers=AUTH)
            assert r.json()["results"] == [{"id": "i52", "result": "deleted"}]
            assert segments.status("i52")["status"] == "deleted"
            assert {i: room for i, (room, _) in _live(c2).items()} == {"x1": "b2", "x2": "b1"}
