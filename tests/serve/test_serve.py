"""Serving: bundle export/load (hashes, no pickle), state stores, the HTTP API, train/serve parity,
durability of acknowledged events across a killed process, and the Redis store on a real server."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from modalrec.config import RunConfig
from modalrec.models import build_model
from modalrec.pipeline import Collator, History
from modalrec.serve.app import create_app
from modalrec.serve.bundle import BundleError, export_bundle, load_bundle
from modalrec.serve.state import StoredEvent, open_state
from modalrec.tasks import prepare_task
from modalrec.train.checkpoint import load_checkpoint
from modalrec.train.run import train_run
from tests.serve.helpers import MAX_HISTORY, free_port, train_and_export

KEY = "test-key"
AUTH = {"X-API-Key": KEY}
T_FUTURE = 100_000  # later than every toy event (toy times are < 6000)


@pytest.fixture(scope="module")
def served(din_served):
    """The toy DIN run and its bundle (din_served, tests/serve/conftest.py)."""
    return din_served


@pytest.fixture
def client(served, tmp_path):
    app = create_app(served["bundle"], f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY)
    with TestClient(app) as c:
        yield c


def _hist_events(task, u: int, cut: int) -> list[dict]:
    """The first `cut` history events of the event log's user `u` as a request's own history."""
    lo = task.history.ptr[u]
    return [{"item": task.item_vocab.id_of(int(i)), "time": int(t)}
            for i, t in zip(task.history.items[lo:lo + cut], task.history.times[lo:lo + cut])]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly `labels` in a Prometheus exposition (None: no such sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


# ------------------------------------------------------------------------------------------- bundle


BUNDLE_FILES = {"config.yaml", "model.safetensors", "history.safetensors", "history_users.parquet",
                "item_vectors.safetensors", "items.faiss", "pipeline/pipeline.json", "pipeline/users.parquet",
                "pipeline/items.parquet", "pipeline/item_table.safetensors", "pipeline/stats.safetensors"}


def test_bundle_layout_hashes_and_no_pickle(served, monkeypatch, tmp_path):
    b = served["bundle"]
    manifest = json.loads((b / "manifest.json").read_text())
    assert set(manifest["files"]) == BUNDLE_FILES
    assert {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()} == BUNDLE_FILES | {"manifest.json"}
    assert manifest["model"] == "din" and manifest["retrieval"]["source"] == "item_encoder"
    # the bundle's pipeline is the run's, file for file
    run_files = json.loads((served["root"] / "run" / "manifest.json").read_text())["files"]["pipeline"]
    assert {f"pipeline/{name}": digest for name, digest in run_files.items()} == {
        name: meta["sha256"] for name, meta in manifest["files"].items() if name.startswith("pipeline/")}

    def boom(*a, **k):
        raise AssertionError("a bundle must load without unpickling anything")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    bundle = load_bundle(b)
    task = served["task"]
    assert bundle.pipeline.items.ids == task.item_vocab.ids and bundle.pipeline.users.ids == task.user_vocab.ids
    table = bundle.pipeline.item_table
    for group in ("categorical", "multi", "dense", "presence"):
        want, got = getattr(task.collator.item_table, group), getattr(table, group)
        assert set(want) == set(got) and all(np.array_equal(want[k], got[k]) for k in want)
    assert table.presence and not table.presence["emb"].all()  # missing modality kept
    assert bundle.index.ntotal == len(task.item_vocab) - 1
    # the seed history is each user's last max_history events, rows named by history_users
    assert bundle.history_users.ids == task.log_users.ids
    u = int(np.argmax(np.diff(task.history.ptr)))
    lo, hi = task.history.ptr[u], task.history.ptr[u + 1]
    assert hi - lo > MAX_HISTORY
    assert np.array_equal(bundle.history.items[bundle.history.ptr[u]:bundle.history.ptr[u + 1]],
                          task.history.items[hi - MAX_HISTORY:hi])

    bad = tmp_path / "bad"
    shutil.copytree(b, bad)
    vocab = bad / "pipeline" / "items.parquet"
    raw = bytearray(vocab.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    vocab.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"pipeline/items\.parquet.*sha256"):
        load_bundle(bad)
    (bad / "items.faiss").unlink()
    with pytest.raises(BundleError, match="items.faiss"):
        load_bundle(bad)
    # a bundle of an older format is refused with what to do
    old = tmp_path / "old"
    shutil.copytree(b, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 2
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="export the run again"):
        load_bundle(old)


def test_cli_export(served, tmp_path):
    from typer.testing import CliRunner

    from modalrec.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["export", str(served["root"] / "run"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "manifest.json").exists()
    res = runner.invoke(app, ["export", str(served["root"] / "run"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "error:" in res.output and "--overwrite" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "config.yaml" in res.output


# ------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_parity_with_offline_predict(served, tmp_path, precision, tol):
    """The service's score of (user, item, history, time) equals the offline task.predict logit (fp32), or
    stays close to it with the activation unit in bf16 (`serve --precision bf16`)."""
    app = create_app(served["bundle"], f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY, precision=precision)
    with TestClient(app) as client:
        assert client.get("/healthz").json()["precision"] == precision
        _check_parity(served, client, tol)


def _check_parity(served, client, tol: float) -> None:
    task, model = served["task"], served["model"]
    offline = task.predict(model, "test", 256)
    s = task.splits["test"]
    groups: dict[tuple[int, int, int], list[int]] = {}
    for r in range(len(s)):
        groups.setdefault((int(s.users[r]), int(s.times[r]), int(s.cut[r])), []).append(r)
    keys = sorted(groups, key=lambda k: (-len(groups[k]), k))[:12]  # several candidates per request
    long = max(groups, key=lambda k: k[2])
    keys.append(long)
    assert long[2] > MAX_HISTORY  # a history longer than the model reads
    assert any(len(groups[k]) > 1 for k in keys)
    worst = 0.0
    for u, t, cut in keys:
        rows = groups[(u, t, cut)]
        resp = client.post("/score", json={
            "user": task.log_users.id_of(u), "items": [task.item_vocab.id_of(int(s.items[r])) for r in rows],
            "context": {"time": t}, "history": _hist_events(task, u, cut)})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["history_length"] == min(cut, MAX_HISTORY) and not body["cold_start"]
        got = np.array([x["score"] for x in body["scores"]])
        worst = max(worst, float(np.abs(got - offline[rows]).max()))
        p = np.array([x["probability"] for x in body["scores"]])
        assert np.allclose(p, 1 / (1 + np.exp(-offline[rows])), atol=tol)
    assert worst <= tol, worst


def test_parity_of_stored_state(served, client):
    """Seed history + online events, as the service keeps them, give the offline model's scores."""
    task, model = served["task"], served["model"]
    h = task.history
    counts = np.diff(h.ptr)
    u = int(np.argmax(counts))  # the event log's user (a History row)
    user = task.log_users.id_of(u)
    uidx = int(task.user_rows[u])  # their row in the model's user vocabulary
    assert uidx > 0
    items = np.arange(1, len(task.item_vocab))

    def offline(history: History, n: int) -> np.ndarray:
        col = Collator(history, task.collator.item_table, MAX_HISTORY, with_time=True)
        c = len(items)
        with torch.no_grad():
            return model(col(np.full(c, u), items, np.full(c, n), np.full(c, T_FUTURE),
                             user_rows=np.full(c, uidx))).numpy()

    def served_scores() -> np.ndarray:
        resp = client.post("/score", json={"user": user, "items": [task.item_vocab.id_of(int(i)) for i in items],
                                           "context": {"time": T_FUTURE}})
        assert resp.status_code == 200, resp.text
        return np.array([x["score"] for x in resp.json()["scores"]])

    assert np.abs(served_scores() - offline(h, int(counts[u]))).max() <= 1e-5
    # online events (one of a channel the model does not read as history, one of an unknown item)
    new = [(5, 6000), (7, 6100), (9, 6100)]
    events = [{"user": user, "item": task.item_vocab.id_of(i), "channel": "click", "time": t} for i, t in new]
    events += [{"user": user, "item": "i3", "channel": "like", "time": 6200},
               {"user": user, "item": "brand-new", "channel": "click", "time": 6300}]
    assert client.post("/events", json={"events": events}, headers=AUTH).json()["accepted"] == 5
    lo, hi = h.ptr[u], h.ptr[u + 1]
    ext_items = np.concatenate([h.items[lo:hi], [i for i, _ in new]])
    ext_times = np.concatenate([h.times[lo:hi], [t for _, t in new]])
    ext = History(np.array([0, len(ext_items)]), ext_items.astype(np.int64), ext_times.astype(np.int64))
    col = Collator(ext, task.collator.item_table, MAX_HISTORY, with_time=True)
    c = len(items)
    with torch.no_grad():  # row 0 of this one-user History holds user u's sequence; the model reads user u
        batch = col(np.zeros(c, np.int64), items, np.full(c, len(ext_items)), np.full(c, T_FUTURE))
        batch.user = torch.full((c,), uidx)
        want = model(batch).numpy()
    assert np.abs(served_scores() - want).max() <= 1e-5


def test_concurrent_requests_score_their_own_sequences(client):
    """Requests scored at once in several threads each get the scores of their own sequence (the batch builder
    is not shared between them)."""
    from modalrec.pipeline import Sequence

    scorer = client.app.state.scorer
    cand = np.arange(1, scorer.n_items)
    seqs = [Sequence(np.array([1, 2, 3]), np.array([10, 20, 30]), np.zeros(3, np.int64)),
            Sequence(np.array([7, 8, 9, 11, 12]), np.array([10, 20, 30, 40, 50]), np.zeros(5, np.int64))]
    want = [scorer.score(None, seq, 100, cand) for seq in seqs]
    wrong = []

    def run(k: int) -> None:
        for _ in range(300):
            if not np.allclose(scorer.score(None, seqs[k], 100, cand), want[k], atol=1e-6):
                wrong.append(k)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=run, args=(k % 2,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not wrong, f"{len(wrong)} requests scored another request's sequence"


def test_item_encoder_cache_equals_encoding(served):
    """The serving cache of the bundle's item vectors (`ItemEncoder.cache_items`): the same vectors as encoding
    them; id 0 (padding, registered items) encoded from the features given; dropped when a weight changes."""
    import copy

    from modalrec.nn.item_encoder import ItemEncoder

    model = copy.deepcopy(served["model"]).eval()
    enc = next(m for m in model.modules() if isinstance(m, ItemEncoder))
    table = served["task"].collator.item_table
    n = len(served["task"].item_vocab)
    ids = np.array([[3, 0, 7], [n - 1, 1, 0]])
    side, presence = table.gather(np.array([[3, 5, 7], [n - 1, 1, 9]]))  # id 0 rows with another item's features
    ids_t = torch.from_numpy(ids)
    with torch.no_grad():
        want = enc(ids_t, side, presence)
        assert not enc.cache_items(table, n, max_bytes=16)  # too large for the budget: no table
        assert enc.cache_items(table, n)
        torch.testing.assert_close(enc(ids_t, side, presence), want, rtol=0, atol=1e-6)
        assert not torch.equal(want[0, 1], want[0, 0])  # the id-0 row was encoded from its own features
        next(enc.parameters()).mul_(2.0)  # in place: the table must not be used any more
        changed = enc(ids_t, side, presence)
    assert not torch.allclose(changed, want)
    torch.testing.assert_close(changed, enc(ids_t, side, presence).detach(), rtol=0, atol=1e-6)  # grad path


def test_qin_bundle_parity(served, tmp_path, monkeypatch):
    """QIN served (its shared-history attention and summed QNN rows): /score equals the offline logits."""
    from modalrec.models.qin import SparseTargetAttention

    shared = []
    served_path = SparseTargetAttention._served

    def spy(self, query, keys, mask):
        shared.append(query.shape[0])
        return served_path(self, query, keys, mask)

    monkeypatch.setattr(SparseTargetAttention, "_served", spy)
    data = served["data"]
    cfg = RunConfig.model_validate({
        "name": "toy-qin", "data": {"source": str(served["root"] / "data")},
        "task": {"kind": "ctr", "sample_channels": ["click"], "max_history": MAX_HISTORY},
        "model": {"name": "qin", "params": {"embed_dim": 8, "num_layers": 2, "num_rows": 3}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "progress": False, "num_threads": 1}, "seeds": [0],
    })
    task, model = train_and_export(cfg, data, tmp_path)
    app = create_app(tmp_path / "bundle", f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY)
    with TestClient(app) as c:
        shared.clear()
        _check_parity({"task": task, "model": model}, c, 1e-5)
    assert max(shared) > 1  # requests with several candidates took the shared-history path


def test_topk_bundle_parity(served, tmp_path):
    """A next-item model (SASRec) served: /score equals the offline full-ranking scores of those items."""
    data = served["data"]
    cfg = RunConfig.model_validate({
        "name": "toy-sasrec", "data": {"source": str(served["root"] / "data")},
        "task": {"kind": "topk", "max_history": MAX_HISTORY, "train_negatives": 16},
        "model": {"name": "sasrec", "params": {"hidden_dim": 8, "n_heads": 1, "n_blocks": 1}},
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "num_threads": 1}, "seeds": [0],
    })
    task, model = train_and_export(cfg, data, tmp_path)
    s = task.splits["test"]
    rows = np.arange(min(6, len(s)))
    with torch.no_grad():
        offline = model(task.collate(s.take(rows), train=False)).numpy()
    app = create_app(tmp_path / "bundle", f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY)
    items = [task.item_vocab.id_of(i) for i in range(1, len(task.item_vocab))]
    with TestClient(app) as c:
        for r in rows:
            u, t, cut = int(s.users[r]), int(s.times[r]), int(s.cut[r])
            resp = c.post("/score", json={"user": task.log_users.id_of(u), "items": items, "context": {"time": t},
                                          "history": _hist_events(task, u, cut)})
            got = np.array([x["score"] for x in resp.json()["scores"]])
            assert np.abs(got - offline[r, 1:]).max() <= 1e-5
            assert resp.json()["scores"][0]["probability"] is None  # ranking scores, not probabilities
        rec = c.post("/recommend", json={"user": task.log_users.id_of(int(s.users[0])), "k": 5}).json()
        assert len(rec["items"]) == 5 and rec["model"] == "sasrec"


# --------------------------------------------------------------------------------------------- API


def test_recommend_changes_after_events_and_cold_start(client):
    r0 = client.post("/recommend", json={"user": "newcomer", "k": 5})
    assert r0.status_code == 200, r0.text
    b0 = r0.json()
    assert b0["cold_start"] and b0["history_length"] == 0 and len(b0["items"]) == 5
    assert b0["retrieved"]["ann"] == 0  # nothing to retrieve with yet: popular items
    events = [{"user": "newcomer", "item": f"i{i}", "channel": "click", "event_id": f"n{i}"} for i in (4, 8, 15)]
    r = client.post("/events", json={"events": events}, headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {"accepted": 3, "duplicates": 0, "cold_user_events": 3, "cold_item_events": 0}
    b1 = client.post("/recommend", json={"user": "newcomer", "k": 5}).json()
    assert b1["history_length"] == 3 and b1["retrieved"]["ann"] > 0
    assert [(x["item"], x["score"]) for x in b1["items"]] != [(x["item"], x["score"]) for x in b0["items"]]
    # exclusions and given candidates
    b2 = client.post("/recommend", json={"user": "newcomer", "k": 50, "exclude_seen": True,
                                         "context": {"exclude": ["i1"]}}).json()
    names = {x["item"] for x in b2["items"]}
    assert not names & {"i4", "i8", "i15", "i1"}
    b3 = client.post("/recommend", json={"user": "u3", "k": 2, "candidates": ["i2", "i5", "zzz"]}).json()
    assert b3["retrieved"]["given"] == 3 and len(b3["items"]) == 2 and b3["shortfall"] is None
    b4 = client.post("/recommend", json={"user": "u3", "k": 5, "candidates": ["i2", "i5", "zzz"]}).json()
    assert len(b4["items"]) == 3 and "3 of the 5" in b4["shortfall"] and "were given" in b4["shortfall"]
    assert client.post("/recommend", json={"user": "newcomer", "k": 10}).json()["shortfall"] is None
    # unknown user and unknown item: cold starts, not errors
    r = client.post("/score", json={"user": "stranger", "items": ["i2", "never-seen"]})
    assert r.status_code == 200
    body = r.json()
    assert body["cold_start"] and [x["known"] for x in body["scores"]] == [True, False]
    assert all(0 < x["probability"] < 1 for x in body["scores"])


def test_items_without_a_score_are_null_and_never_recommended(client, monkeypatch):
    """A model may give no score to a candidate (-inf: a ranking model never ranks an item it has no row for):
    /score answers null for it (JSON has no infinity), /recommend leaves it out and says why in shortfall."""
    scorer = client.app.state.scorer
    model = scorer.model

    def unranked_first(batch):
        out = model(batch).clone()
        out[0] = float("-inf")
        return out

    monkeypatch.setattr(scorer, "model", unranked_first)
    body = client.post("/score", json={"user": "u3", "items": ["i2", "i5"]}).json()["scores"]
    assert [x["score"] is None for x in body] == [True, False] and body[0]["probability"] is None
    assert 0 < body[1]["probability"] < 1
    rec = client.post("/recommend", json={"user": "u3", "k": 2, "candidates": ["i2", "i5"]}).json()
    assert [x["item"] for x in rec["items"]] == ["i5"] and "1 of them without a score" in rec["shortfall"]


def test_events_idempotent_and_user_state(client):
    ev = {"user": "idem", "item": "i2", "channel": "gift", "value": 5.0, "event_id": "g-1",
          "payload": {"text": "for you", "vectors": {"emb": [0.1, 0.2, 0.3, 0.4]}}}
    assert client.post("/events", json={"events": [ev, ev]}, headers=AUTH).json()["duplicates"] == 1
    assert client.post("/events", json={"events": [ev]}, headers=AUTH).json() == {
        "accepted": 0, "duplicates": 1, "cold_user_events": 1, "cold_item_events": 0}
    conv = {"user": "idem", "channel": "conversation", "time": "2024-05-01T12:00:00Z",
            "payload": {"text": "I want a quote"}}
    assert client.post("/events", json={"events": [conv]}, headers=AUTH).json()["accepted"] == 1
    st = client.get("/users/idem", headers=AUTH).json()
    assert [e["channel"] for e in st["events"]] == ["conversation", "gift"]  # time order: 2024, then now
    assert st["events"][0]["time"] == 1714564800 and st["events"][0]["payload"]["text"] == "I want a quote"
    assert st["events"][1]["payload"]["vectors"]["emb"] == [0.1, 0.2, 0.3, 0.4]
    assert st["counters"]["gift"] == {"n": 1, "value": 5.0, "last_time": st["events"][1]["time"]}


def test_api_key_on_writes(client):
    ev = {"events": [{"user": "x", "item": "i1", "channel": "click"}]}
    r = client.post("/events", json=ev)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert client.post("/events", json=ev, headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.post("/events", json=ev, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/users/x").status_code == 401
    assert client.post("/recommend", json={"user": "x"}).status_code == 200  # reads are open


def test_writes_disabled_without_key(served, tmp_path, monkeypatch):
    monkeypatch.delenv("MODALREC_API_KEY", raising=False)
    app = create_app(served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}")
    with TestClient(app) as c:
        r = c.post("/events", json={"events": [{"user": "x", "item": "i1", "channel": "click"}]},
                   headers={"X-API-Key": "anything"})
        assert r.status_code == 403 and "MODALREC_API_KEY" in r.json()["detail"]


@pytest.mark.parametrize("body, field", [
    ({"events": [{"item": "i1", "channel": "click"}]}, "events[0].user"),
    ({"events": [{"user": "u", "item": "i1", "channel": "bad channel!"}]}, "events[0].channel"),
    ({"events": [{"user": "u", "item": "i1", "channel": "click", "time": "yesterday"}]}, "events[0].time"),
    ({"events": [{"user": "u", "item": "i1", "channel": "click", "colour": "red"}]}, "events[0].colour"),
    ({"events": [{"user": "u", "channel": "click", "payload": {"vectors": {"emb": [1.0, 2.0]}}}]},
     "events[0].payload.vectors.emb"),
    ({"events": []}, "events"),
    ({"events": [{"user": "u", "item": "i1", "channel": "click", "value": "a lot"}]}, "events[0].value"),
])
def test_malformed_events_get_422_naming_the_field(client, body, field):
    r = client.post("/events", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    j = r.json()
    assert field in [d["field"] for d in j["detail"]], j
    assert f"{field}:" in j["message"], j["message"]


def test_malformed_reads_and_json(client):
    r = client.post("/recommend", json={"user": "u", "k": 0})
    assert r.status_code == 422 and "k:" in r.json()["message"]
    r = client.post("/score", json={"user": "u", "items": []})
    assert r.status_code == 422 and "items" in r.json()["message"]
    r = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_request_size_limit(served, tmp_path):
    app = create_app(served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}", api_key=KEY, max_body_bytes=2000)
    with TestClient(app) as c:
        big = {"events": [{"user": "u", "item": "i1", "channel": "click", "payload": {"text": "x" * 5000}}]}
        r = c.post("/events", json=big, headers=AUTH)
        assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]
        small = {"events": [{"user": "u", "item": "i1", "channel": "click"}]}
        assert c.post("/events", json=small, headers=AUTH).status_code == 200


def test_healthz_metrics_openapi(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["model"] == "din" and h["state"] == "sqlite"
    client.post("/recommend", json={"user": "u1"})
    client.post("/events", json={"events": [{"user": "u1", "item": "i1", "channel": "watch", "value": 12}]},
                headers=AUTH)
    text = client.get("/metrics").text
    assert metric(text, "modalrec_requests_total", route="/recommend", method="POST", status="200") == 1.0
    assert metric(text, "modalrec_request_duration_seconds_bucket", route="/recommend", le="+Inf") == 1.0
    assert 'modalrec_events_total{result="accepted"} 1.0' in text
    assert "# TYPE modalrec_request_duration_seconds histogram" in text
    assert 'modalrec_stage_duration_seconds_count{stage="rank"}' in text
    spec = client.get("/openapi.json").json()
    assert {"/events", "/recommend", "/score", "/healthz", "/metrics"} <= set(spec["paths"])
    assert "Event" in spec["components"]["schemas"] and spec["paths"]["/events"]["post"].get("security")


# ------------------------------------------------------------------------------------------- state


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_sqlite_state_semantics(tmp_path, synchronous):
    st = open_state(f"sqlite:///{tmp_path / 'x.sqlite'}?synchronous={synchronous}")
    _check_store(st)
    st.close()
    with pytest.raises(ValueError, match="unknown option"):
        open_state(f"sqlite:///{tmp_path / 'y.sqlite'}?sync=off")
    with pytest.raises(ValueError, match="expected sqlite"):
        open_state("postgres://x")


def _check_store(st) -> None:
    evs = [StoredEvent("a", "i1", "click", 100, None, "e1"), StoredEvent("a", "i2", "like", 50, 2.0, "e2"),
           StoredEvent("a", "i3", "click", 100, None, None), StoredEvent("b", "i1", "click", 10),
           StoredEvent("a", "i4", "click", 100, None, "e1")]  # duplicate id in the same batch
    res = st.append_events(evs)
    assert (res.accepted, res.duplicates) == (4, 1)
    assert st.append_events([StoredEvent("a", "i9", "click", 1, None, "e2")]).duplicates == 1
    assert st.append_events([StoredEvent("b", "i9", "click", 1, None, "e2")]).accepted == 1  # ids are per user
    got = st.recent("a", 10)
    assert [(e.item, e.time) for e in got] == [("i2", 50), ("i1", 100), ("i3", 100)]  # time, then arrival
    assert [e.item for e in st.recent("a", 2)] == ["i1", "i3"]
    assert [e.item for e in st.recent("a", 10, channels=["like"])] == ["i2"]
    assert [e.item for e in st.recent("a", 10, before=100)] == ["i2"]
    assert st.recent("nobody", 5) == []
    c = st.counters("a")
    assert c["click"]["n"] == 2 and c["like"] == {"n": 1, "value": 2.0, "last_time": 50}
    assert st.event_ids("a") == {"e1", "e2"} and st.count("a") == 3 and st.count() == 5


# ---------------------------------------------------------------------------------- kill / restart


def _start_service(bundle: Path, state: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MODALREC_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "modalrec.cli", "serve", str(bundle), "--port", str(port),
                             "--state", state, "--threads", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("service did not start in 90 s")


def test_kill_9_loses_no_acknowledged_event(served, tmp_path):
    state = f"sqlite:///{tmp_path / 'state.sqlite'}"
    port = free_port()
    proc = _start_service(served["bundle"], state, port)
    acked: list[list[str]] = [[], [], []]  # per writer (user k0, k1, k2)
    stop = threading.Event()

    def writer(w: int) -> None:
        n = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=5) as c:
            while not stop.is_set():
                ids = [f"w{w}-{n + j}" for j in range(5)]
                n += 5
                body = {"events": [{"user": f"k{w}", "item": f"i{j % 50}", "channel": "click", "event_id": i}
                                   for j, i in enumerate(ids)]}
                try:
                    r = c.post("/events", json=body)
                except httpx.HTTPError:
                    return  # the service died mid-request: not acknowledged
                if r.status_code == 200:
                    acked[w].extend(ids)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.time() + 30
        # every writer past a full history, and enough in all (the threads start and get the GIL unevenly)
        while (sum(map(len, acked)) < 60 or min(map(len, acked)) < 2 * MAX_HISTORY) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 while the writers are mid-flight
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
        n_acked = [len(a) for a in acked]
        assert sum(n_acked) >= 60 and min(n_acked) >= 2 * MAX_HISTORY, n_acked
        port = free_port()
        proc = _start_service(served["bundle"], state, port)
        stored: list[set[str]] = []
        for w in range(3):
            r = httpx.get(f"http://127.0.0.1:{port}/users/k{w}", params={"n": 10000}, headers=AUTH, timeout=10)
            stored.append({e["event_id"] for e in r.json()["events"]})
        missing = set().union(*acked) - set().union(*stored)
        print(f"kill -9 after {sum(n_acked)} acknowledged events; {sum(n_acked) - len(missing)} found after restart")
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
        # and the restarted service reads them: each user's history is there (every acknowledged event of a
        # known item and a history channel, plus any the service stored but could not acknowledge before it died)
        for w in range(3):
            r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user": f"k{w}"}, timeout=10).json()
            assert len(stored[w]) >= len(acked[w]) and r["history_length"] == min(MAX_HISTORY, len(stored[w]))
            assert r["history_length"] == MAX_HISTORY
    finally:
        stop.set()
        proc.kill()
        proc.wait(10)


# -------------------------------------------------------------------------------------------- Redis


def test_redis_state_semantics_and_durability(redis_server):
    st = open_state(redis_server["url"])
    assert st.kind == "redis"
    _check_store(st)
    st.close()
    redis_server["restart"]()  # kill -9 Redis itself: the AOF (fsync always) keeps every acknowledged event
    st = open_state(redis_server["url"])
    assert st.count() == 5 and [e.item for e in st.recent("a", 10)] == ["i2", "i1", "i3"]
    st.close()


def test_service_on_redis(served, redis_server):
    app = create_app(served["bundle"], redis_server["url"], api_key=KEY)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["state"] == "redis"
        before = c.post("/recommend", json={"user": "rnew", "k": 5}).json()
        r = c.post("/events", json={"events": [{"user": "rnew", "item": f"i{i}", "channel": "click"}
                                               for i in (3, 6, 9)]}, headers=AUTH)
        assert r.json()["accepted"] == 3
        after = c.post("/recommend", json={"user": "rnew", "k": 5}).json()
        assert after["history_length"] == 3 and after["items"] != before["items"]


def test_retrieval_brings_the_groups_of_recent_items_first(served, tmp_path):
    """Group retrieval: items sharing the first item categorical feature with the user's recent items (the
    streamer of a watched segment, say) come first, most popular first, then ANN and popular items."""
    from modalrec.serve.scoring import Scorer

    bundle = load_bundle(served["bundle"])
    scorer = Scorer(bundle, open_state(f"sqlite:///{tmp_path / 's.sqlite'}"))
    group = scorer.registry.group
    assert group is not None
    item = int(np.flatnonzero(group > 0)[0])
    cand, n_hist = scorer.retrieve(np.array([item]), 12, exclude={item})
    same = [int(i) for i in bundle.popular if group[i] == group[item] and i != item]
    head = cand[: len(same[:3])].tolist()
    assert head == same[: len(head)] and len(head) > 0  # the group's most popular members lead
    assert item not in cand.tolist() and n_hist >= len(head) and len(cand) == 12
    # no history: popular items only
    cold, n0 = scorer.retrieve(np.zeros(0, np.int64), 5, exclude=set())
    assert n0 == 0 and cold.tolist() == [int(i) for i in bundle.popular[:5]]


def test_rate_limiter_moving_window(monkeypatch):
    """`burst` requests per client in any window of ceil(burst / rate) seconds (limits' moving window); the
    wait of a refused request is the time until its window frees a slot; idle clients are forgotten."""
    import types

    import limits.storage.memory

    from modalrec.serve import ops
    from modalrec.serve.ops import RateLimiter

    now = [1000.0]
    fake = types.SimpleNamespace(time=lambda: now[0])
    monkeypatch.setattr(limits.storage.memory, "time", fake)
    monkeypatch.setattr(ops, "time", fake)
    lim = RateLimiter(rate=2.0, burst=3)  # 3 requests per 2 s
    assert [lim.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert lim.take("a") == pytest.approx(2.0)  # full: the window's oldest request leaves in 2 s
    assert lim.take("b") == 0.0  # other clients have their own window
    now[0] += 1.0
    assert lim.take("a") == pytest.approx(1.0)
    now[0] += 1.001
    assert [lim.take("a") for _ in range(3)] == [0.0, 0.0, 0.0] and lim.take("a") > 0.0  # the window moved on
    now[0] += 10.0
    lim.take("c")
    lim.take("d")  # a and b were idle for a whole window: forgotten, the state stays bounded
    assert set(lim.clients) == {"c", "d"}
    assert not any(key.split("/")[1] in ("a", "b") for key in lim.limiter.storage.events)
    assert [lim.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # a forgotten client starts with its full burst
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(0)


def test_rate_limit_answers_429_with_retry_after(served, tmp_path):
    app = create_app(served["bundle"], f"sqlite:///{tmp_path / 's.sqlite'}", api_key=KEY, rate_limit=0.5,
                     rate_burst=2)
    with TestClient(app) as c:
        codes = [c.post("/recommend", json={"user": "u1", "k": 3}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.post("/events", json={"events": [{"user": "u1", "item": "i1", "channel": "click"}]}, headers=AUTH)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "0.5 requests/s" in r.json()["message"]
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200  # probes exempt
        assert metric(c.get("/metrics").text, "modalrec_requests_total", route="rate limited", method="POST",
                      status="429") == 2.0
        assert c.get("/users/u1?n=5", headers=AUTH).status_code == 429
    st = open_state(f"sqlite:///{tmp_path / 's.sqlite'}")
    try:
        assert st.recent("u1", 10) == []  # the refused write stored nothing
    finally:
        st.close()


def test_user_ids_with_slashes(client):
    ev = {"user": "tenant/a b/42", "item": "i1", "channel": "click", "time": 5000}
    assert client.post("/events", json={"events": [ev]}, headers=AUTH).json()["accepted"] == 1
    st = client.get("/users/tenant/a%20b/42", headers=AUTH).json()
    assert st["user"] == "tenant/a b/42" and [e["item"] for e in st["events"]] == ["i1"]


def test_context_features_served_like_offline(tmp_path):
    """A model reading per-sample context features (task.context_features): the bundle keeps their vocabularies,
    /score takes them per request or per candidate, and equals the offline logits; unknown names get 422."""
    from tests.tasks.helpers import make_data as context_data

    data = context_data()
    data.save(tmp_path / "data")
    cfg = RunConfig.model_validate({
        "name": "ctx-din", "data": {"source": str(tmp_path / "data")},
        "task": {"kind": "ctr", "max_history": 8, "split": {"method": "column", "column": "split"},
                 "context_features": ["level", "mood"]},
        "model": {"name": "din", "params": {"embed_dim": 8}},
        "train": {"epochs": 1, "batch_size": 32, "progress": False, "num_threads": 1}, "seeds": [0]})
    train_run(cfg, tmp_path / "run", data=data, report=False)
    export_bundle(tmp_path / "run", tmp_path / "bundle")
    assert json.loads((tmp_path / "bundle" / "pipeline" / "pipeline.json").read_text())["context"] == {
        "level": ["2", "3", "10"], "mood": ["calm", "wild"]}
    task = prepare_task(data, cfg.task)
    model = build_model("din", task.schema, cfg.model.params)
    load_checkpoint(tmp_path / "run" / "checkpoints" / "seed_0", "best", model, restore_rng=False)
    offline = task.predict(model.eval(), "test", 64)
    s = task.splits["test"]
    rows = task.events.take(task.split_rows["test"])
    level, mood = rows["level"].to_pylist(), rows["mood"].to_pylist()
    app = create_app(tmp_path / "bundle", f"sqlite:///{tmp_path / 's.sqlite'}", api_key=KEY)
    worst, varied = 0.0, set()
    with TestClient(app) as c:
        for r in range(len(s)):
            u, item = task.log_users.id_of(int(s.users[r])), task.item_vocab.id_of(int(s.items[r]))
            feats = {k: v for k, v in (("level", level[r]), ("mood", mood[r])) if v is not None}
            body = {"user": u, "items": [item], "history": _hist_events(task, int(s.users[r]), int(s.cut[r])),
                    "context": {"time": int(s.times[r])}}
            # alternate the two ways of passing them: per request, per candidate
            body["context"]["features" if r % 2 else "item_features"] = feats if r % 2 else {item: feats}
            resp = c.post("/score", json=body)
            assert resp.status_code == 200, resp.text
            worst = max(worst, abs(resp.json()["scores"][0]["score"] - offline[r]))
            varied.add(tuple(sorted(feats.items())))
        assert worst <= 1e-5 and len(varied) > 3
        bad = c.post("/score", json={"user": "u", "items": ["x"], "context": {"features": {"weather": "rain"}}})
        assert bad.status_code == 422 and "context.features.weather" in bad.json()["message"]
        assert "level" in bad.json()["message"]
