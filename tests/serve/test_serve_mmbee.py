"""Serving MMBee: the bundle's pipeline carries the token tables, item_tokens / graph_init and the fitted
graph features; the service builds the offline batch (target token tables, graph inputs) and recomputes a
user's U->A->A expansion when new gifts arrive.

The data is a hand-built live-stream world (tests/serve/helpers.py, on the content helpers of
tests/models/mmbee_helpers.py): 20 segments of 5 streamers, 24 users in two gifting communities (users 0-11
gift streamers 0-2, users 12-23 streamers 2-4), so the Swing graph links the streamers of a community.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from modalrec.graph import build_u2a, expand_users
from modalrec.serve.app import create_app
from modalrec.serve.bundle import BundleError, load_bundle
from tests.serve.helpers import (
    N_SEG,
    seg_id,
    segments_of,
    train_mmbee,
)

KEY = "test-key"
AUTH = {"X-API-Key": KEY}
NOW = {"time": 4_000_000_000}  # requests "now": later than the gifts the tests post (at the wall-clock time)


GRAPH_FILES = {"pipeline/graph/gie.safetensors", "pipeline/graph/gie.json", "pipeline/graph/totals.safetensors",
               "pipeline/graph/graph.json"}


def _tags(task) -> dict[int, str]:
    """Action tag code -> channel of the task's tagged history."""
    return {code: name for name, code in task.pipeline.settings.history_tags.items()}


@pytest.fixture(scope="module")
def served(mmbee_served):
    """The tiny MMBee run and its bundle (mmbee_served, tests/serve/conftest.py)."""
    return mmbee_served


@pytest.fixture
def client(served, tmp_path):
    app = create_app(served["bundle"], f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY)
    with TestClient(app) as c:
        yield c


def _hist_events(task, u: int, cut: int) -> list[dict]:
    """The user's first `cut` history events as a request's own history, each with its channel."""
    h, lo = task.history, task.history.ptr[u]
    channel = _tags(task)
    return [{"item": task.item_vocab.id_of(int(i)), "time": int(t), "channel": channel[int(g)]}
            for i, t, g in zip(h.items[lo:lo + cut], h.times[lo:lo + cut], h.tags[lo:lo + cut])]


def _gifts(user: str, streamer: int, n: int, t0: int | None = None) -> list[dict]:
    segs = segments_of(streamer)
    return [{"user": user, "item": seg_id(segs[j % len(segs)]), "channel": "gift", "value": 1.0}
            | ({} if t0 is None else {"time": t0 + j}) for j in range(n)]


# ------------------------------------------------------------------------------------------- bundle


def test_export_round_trips_tokens_graph_init_and_graph(served):
    b, task = served["bundle"], served["task"]
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["model"] == "mmbee"
    assert GRAPH_FILES <= set(manifest["files"])
    on_disk = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    assert on_disk == set(manifest["files"]) | {"manifest.json"}

    bundle = load_bundle(b)
    schema, want = bundle.schema, task.schema
    assert schema.item_tokens == want.item_tokens and schema.item_tokens  # {name: (T, dim)} tuples again
    assert all(isinstance(v, tuple) for v in schema.item_tokens.values())
    assert set(schema.graph_init) == set(want.graph_init) == {"streamer", "user"}
    for k, v in want.graph_init.items():
        got = schema.graph_init[k]
        assert got.dtype == v.dtype and np.array_equal(got, v)
    for name in ("item_counts", "item_positive_rate", "user_counts"):
        assert np.array_equal(getattr(schema, name), getattr(want, name))
    side, want_side = bundle.pipeline.item_table, task.collator.item_table
    for group in ("categorical", "multi", "dense", "presence", "tokens", "token_mask"):
        w, g = getattr(want_side, group), getattr(side, group)
        assert set(w) == set(g), group
        for k in w:
            assert g[k].dtype == np.asarray(w[k]).dtype and np.array_equal(g[k], np.asarray(w[k])), (group, k)
    absent = int(task.item_vocab.lookup([seg_id(7)])[0])  # a segment without frames: an all-False mask row
    assert side.tokens["frames_emb"].dtype == np.float16 and not side.token_mask["frames_emb"][absent].any()
    assert bundle.pipeline.settings.token_scope == "target"

    graph, want_graph = bundle.pipeline.graph, task.pipeline.graph
    e, want_e = graph.expansion, want_graph.expansion
    for name in ("user_seq", "user_w", "streamer_seq", "streamer_w", "user_emb", "streamer_emb"):
        assert np.array_equal(getattr(e, name), getattr(want_e, name)), name
        assert getattr(e, name).dtype == getattr(want_e, name).dtype
    for name in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(e.a2a, name), getattr(want_e.a2a, name))
        assert np.array_equal(getattr(graph.totals, name), getattr(want_graph.totals, name))
    assert e.cfg == want_e.cfg
    # the graph holds every gift before the first validation / test sample, and no later one
    cutoff = min(int(s.times.min()) for name, s in task.splits.items() if name != "train" and len(s))
    assert graph.edges_before == want_graph.edges_before == cutoff
    assert (graph.channel, graph.group_feature) == ("gift", "streamer_id")
    assert np.array_equal(side.categorical[graph.group_feature], want_side.categorical["streamer_id"])
    # the model restored from the bundle is the run's model
    got_w, want_w = bundle.model.state_dict(), served["model"].state_dict()
    assert set(got_w) == set(want_w) and all(torch.equal(got_w[k], want_w[k]) for k in want_w)


def test_cli_export_and_the_gift_totals_reproduce_the_offline_expansion(served, tmp_path):
    from typer.testing import CliRunner

    from modalrec.cli import app

    res = CliRunner().invoke(app, ["export", str(served["run"]), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    bundle = load_bundle(tmp_path / "b")
    online = bundle.pipeline.graph.online
    assert online.matches_offline()
    e = online.expansion
    for u in range(e.n_users):  # no new gifts: every user's recomputation is the offline row, bit for bit
        seq, w = online.expand(u, np.zeros(0, np.int64), np.zeros(0))
        assert np.array_equal(seq, e.user_seq[u]) and np.array_equal(w, e.user_w[u]), u


def test_tampered_or_missing_graph_files_are_named(served, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(served["bundle"], bad)
    f = bad / "pipeline" / "graph" / "gie.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"pipeline/graph/gie\.safetensors.*sha256"):
        load_bundle(bad)
    shutil.copy(served["bundle"] / "pipeline" / "graph" / "gie.safetensors", f)
    load_bundle(bad)
    (bad / "pipeline" / "graph" / "totals.safetensors").unlink()
    with pytest.raises(BundleError, match=r"pipeline/graph/totals\.safetensors.*no such file"):
        load_bundle(bad)
    # a manifest naming a file outside the bundle is refused before anything is read
    manifest = json.loads((served["bundle"] / "manifest.json").read_text())
    manifest["files"]["../escape.json"] = manifest["files"].pop("pipeline/graph/totals.safetensors")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"escape\.json"):
        load_bundle(bad)


# ------------------------------------------------------------------------------------------ parity


def _parity(served, client) -> float:
    """Worst |service - offline| logit over requests of several candidates each, offline = task.predict."""
    task, model = served["task"], served["model"]
    offline = task.predict(model, "test", 256)
    s = task.splits["test"]
    groups: dict[tuple[int, int, int], list[int]] = {}
    for r in range(len(s)):
        groups.setdefault((int(s.users[r]), int(s.times[r]), int(s.cut[r])), []).append(r)
    keys = sorted(groups, key=lambda k: (-len(groups[k]), k))[:10]
    keys.append(max(groups, key=lambda k: k[2]))
    assert max(k[2] for k in keys) > served["cfg"].task.max_history  # a history longer than the model reads
    users_with_gie = 0
    gifts_read = 0
    worst = 0.0
    user_seq = task.pipeline.graph.expansion.user_seq  # rows: the model's user vocabulary
    for u, t, cut in keys:
        rows = groups[(u, t, cut)]
        users_with_gie += int(user_seq[task.user_rows[u], 0] > 0)
        history = _hist_events(task, u, cut)
        gifts_read += sum(e["channel"] == "gift" for e in history[-served["cfg"].task.max_history:])
        resp = client.post("/score", json={
            "user": task.log_users.id_of(u), "items": [task.item_vocab.id_of(int(s.items[r])) for r in rows],
            "context": {"time": t}, "history": history})
        assert resp.status_code == 200, resp.text
        got = np.array([x["score"] for x in resp.json()["scores"]])
        worst = max(worst, float(np.abs(got - offline[rows]).max()))
        p = np.array([x["probability"] for x in resp.json()["scores"]])
        assert np.allclose(p, 1 / (1 + np.exp(-offline[rows])), atol=1e-5)
    assert users_with_gie > 0  # the requests do read expansions
    assert gifts_read > 0  # and gift-tagged history events
    return worst


def test_parity_with_offline_predict(served, client):
    assert _parity(served, client) <= 1e-5


def test_the_service_builds_the_offline_batch(served, client):
    """Beyond the scores: the ranker's batch holds the offline tensors (target token tables, graph inputs)."""
    task = served["task"]
    scorer = client.app.state.scorer
    seen = []
    model = scorer.model
    scorer.model = lambda batch: seen.append(batch) or model(batch)
    try:
        s = task.splits["test"]
        expanded = task.pipeline.graph.expansion.user_seq[task.user_rows[s.users], 0] > 0
        u = int(s.users[np.argmax(expanded)])  # a user with an expansion
        rows = np.flatnonzero(s.users == u)[:4]
        rows = rows[s.times[rows] == s.times[rows[0]]]
        t, cut = int(s.times[rows[0]]), int(s.cut[rows[0]])
        _scores(client, task.log_users.id_of(u), [task.item_vocab.id_of(int(i)) for i in s.items[rows]],
                context={"time": t}, history=_hist_events(task, u, cut))
    finally:
        scorer.model = model
    got, want = seen[-1], task.collate(s.take(rows), train=False)
    assert got.graph is not None and want.graph is not None
    for k in ("user", "user_w", "target", "target_w"):
        g, w = getattr(got.graph, k), getattr(want.graph, k)
        assert g.dtype == w.dtype and torch.equal(g, w), k
    assert got.graph.user.gt(0).any() and got.graph.target.gt(0).any()
    tokens = {"frames_emb", "frames_emb:mask", "comments_emb", "comments_emb:mask"}
    # the served batch comes without the targets' token tables: MMBee loads them (through the scorer's source)
    # only for the segments it has not fused yet; they are the offline rows
    assert tokens <= set(want.item_side) and not tokens & set(got.item_side)
    side, _ = model._content_source(got.item.numpy())
    assert all(torch.equal(side[k], want.item_side[k]) for k in tokens)
    for field in ("item_side", "presence"):
        w, g = getattr(want, field), getattr(got, field)
        w = {k: v for k, v in w.items() if k not in tokens}
        assert set(w) == set(g) and all(torch.equal(w[k], g[k]) for k in w), field
    for field in ("user", "item", "hist", "hist_mask", "hist_time", "hist_tag"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert not got.uniq_side.keys() & {"frames_emb", "comments_emb"}  # token_scope target: targets only


def test_parity_when_mfq_reads_every_item(served, tmp_path):
    """mfq_scope / token_scope 'all': the token tables of every distinct item (history too) reach MFQ."""
    root = tmp_path / "all"
    root.mkdir()
    shutil.copytree(served["root"] / "data", root / "data")
    other = train_mmbee(root, served["data"], "all")
    assert load_bundle(other["bundle"]).pipeline.settings.token_scope == "all"
    app = create_app(other["bundle"], f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY)
    with TestClient(app) as c:
        assert _parity(other, c) <= 1e-5


# ----------------------------------------------------------------------------------- online graph


def _scores(client, user: str, items: list[str], **extra) -> np.ndarray:
    resp = client.post("/score", json={"user": user, "items": items, **extra})
    assert resp.status_code == 200, resp.text
    return np.array([x["score"] for x in resp.json()["scores"]])


def _expansion(client, user: str) -> tuple[np.ndarray, np.ndarray]:
    """The user's U->A->A expansion (K,) ids and scores as the service's requests read it now."""
    scorer = client.app.state.scorer
    p = scorer.pipeline
    group = p.item_table.categorical[p.graph.group_feature]
    graph = p.graph_request(scorer.user_index(user), scorer.fetch(user), scorer.item_index, group,
                            np.ones(1, np.int64), None)
    return graph.user[0].numpy(), graph.user_w[0].numpy()


def _check_new_gifts_change_only_the_gifter(served, client):
    task = served["task"]
    online = client.app.state.scorer.pipeline.graph.online
    e = online.expansion
    # a user of community 0 with an offline expansion, another one as the control
    gifters = [u for u in range(1, e.n_users) if e.user_seq[u, 0] > 0 and int(task.user_vocab.id_of(u)[1:]) < 12]
    a, b = gifters[0], gifters[1]
    ua, ub = task.user_vocab.id_of(a), task.user_vocab.id_of(b)
    items = [seg_id(i) for i in range(N_SEG)]
    before_a, before_b = _scores(client, ua, items, context=NOW), _scores(client, ub, items, context=NOW)
    assert np.array_equal(_expansion(client, ua)[0], e.user_seq[a])
    rec_before = client.post("/recommend", json={"user": ua, "k": 5, "context": NOW}).json()

    # replayed training-period gifts are already in the graph: nothing changes
    old = _gifts(ua, 4, 3, t0=10)
    assert client.post("/events", json={"events": old}, headers=AUTH).json()["accepted"] == 3
    seq, w = _expansion(client, ua)
    assert np.array_equal(seq, e.user_seq[a]) and np.array_equal(w, e.user_w[a])

    # new gifts (now) to the other community's streamers 3 and 4
    new = _gifts(ua, 3, 2) + _gifts(ua, 4, 3)
    assert client.post("/events", json={"events": new}, headers=AUTH).json()["accepted"] == 5
    seq, w = _expansion(client, ua)
    assert not (np.array_equal(seq, e.user_seq[a]) and np.array_equal(w, e.user_w[a]))
    # the same scoring as a refit of the whole U->A->A table with these gifts in the graph
    stream_code = task.group_code
    gift_items = task.item_vocab.lookup([g["item"] for g in new])
    totals = online.totals
    rows = np.concatenate([totals.rows_of_entries(), np.full(len(new), a)])
    cols = np.concatenate([totals.indices, stream_code[gift_items]])
    vals = np.concatenate([totals.data, np.ones(len(new))])
    graph = build_u2a(rows, cols, vals, e.n_users, e.n_streamers, "value", e.cfg.log_scale)
    ref_seq, ref_w = expand_users(graph, e.a2a, e.expansion_length, e.cfg.exclude_gifted)
    assert np.array_equal(seq, ref_seq[a]) and np.allclose(w, ref_w[a], rtol=1e-6)

    after_a, after_b = _scores(client, ua, items, context=NOW), _scores(client, ub, items, context=NOW)
    assert not np.array_equal(after_a, before_a)  # the gifter's scores move (little: a 1-epoch model)
    assert np.array_equal(after_b, before_b)  # nobody else's
    assert np.array_equal(_expansion(client, ub)[0], e.user_seq[b])
    rec_after = client.post("/recommend", json={"user": ua, "k": 5, "context": NOW}).json()
    assert [(x["item"], x["score"]) for x in rec_after["items"]] != [(x["item"], x["score"])
                                                                     for x in rec_before["items"]]
    # a replay at a time before the new gifts reads the graph as it was
    t = int(task.splits["test"].times[0])
    assert np.array_equal(_scores(client, ua, items, context={"time": t}), _scores_offline_like(client, ua, items, t))
    # a user unknown to the bundle who gifts gets an expansion from those gifts alone
    assert not _expansion(client, "newcomer")[0].any()
    client.post("/events", json={"events": _gifts("newcomer", 0, 2)}, headers=AUTH)
    assert _expansion(client, "newcomer")[0].any()


def _scores_offline_like(client, user: str, items: list[str], t: int) -> np.ndarray:
    """The scores at time t of the user's sequence as of t, with the graph's offline expansion of the user
    (Scorer.score reading no stored gift)."""
    scorer = client.app.state.scorer
    seq = scorer.history(user, t)
    fetch = scorer.fetch
    scorer.fetch = lambda u: (lambda *a, **k: [])
    try:
        return scorer.score(user, seq, t, scorer.item_index(items), before=t)
    finally:
        scorer.fetch = fetch


def test_new_gifts_change_the_gifters_expansion_only(served, client):
    _check_new_gifts_change_only_the_gifter(served, client)


def test_new_gifts_on_redis(served, redis_server):
    app = create_app(served["bundle"], redis_server["url"], api_key=KEY)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["state"] == "redis"
        _check_new_gifts_change_only_the_gifter(served, c)


def test_training_samples_read_expansions_as_of_their_time(served):
    """The ctr task hands every sample the U->A->A expansion of the user's gifts strictly before it: a training
    sample before a user's later gifts sees fewer (never its own gift), evaluation samples see the whole
    training period's expansion (what the bundle serves)."""
    task = served["task"]
    g = task.pipeline.graph.expansion
    assert g.prefix_ptr is not None
    tr, te = task.splits["train"], task.splits["test"]
    b_tr = task.collate(tr, train=False)
    want = g.lookup(task.user_rows[tr.users], task.group_code[tr.items], times=tr.times)
    assert torch.equal(b_tr.graph.user, want["gie_user"])
    full = torch.from_numpy(g.user_seq[task.user_rows[tr.users]])
    assert not torch.equal(b_tr.graph.user, full)  # early training samples see less than the full row
    b_te = task.collate(te, train=False)
    assert torch.equal(b_te.graph.user, torch.from_numpy(g.user_seq[task.user_rows[te.users]]))
    assert torch.equal(b_te.graph.user_w, torch.from_numpy(g.user_w[task.user_rows[te.users]]))
