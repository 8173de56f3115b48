"""Train/serve parity of every servable model: trained for one epoch on a tiny world, exported, served, and
scored by the service exactly as the offline model scores the same inputs (to 1e-5):

(a) test samples with their explicit history (`/score` with `history`), against the run's offline predictions;
(b) an item registered through POST /items with the raw features and content of a bundle item, against the
    offline model scoring a batch the pipeline's `Collator` builds over the item table with that item's row
    appended (the model's id tables have no row for it: it reaches the model as id 0);
(c) a known user whose events arrived through POST /events (one of them of the registered item), against the
    offline model scoring the user's run history followed by those events through the same `Collator`.

The model list is `modalrec.models.MODELS`: every model of the ctr or topk task (a multilabel-only model has
nothing to serve). MMBee runs on the live-stream world with its graph features (task.graph) enabled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
from fastapi.testclient import TestClient

from modalrec.config import RunConfig
from modalrec.data.batch import GraphInputs
from modalrec.models import MODELS
from modalrec.pipeline import Collator, History, SideTable
from modalrec.serve.app import create_app
from modalrec.serve.bundle import export_bundle
from modalrec.train.run import best_model, load_run, train_run
from tests.helpers import make_data
from tests.serve.helpers import make_live_data, mmbee_config, raw_item, seg_id

KEY = "test-key"
AUTH = {"X-API-Key": KEY}
TOL = 1e-5
MAX_HISTORY = 8
SERVED = sorted(name for name, cls in MODELS.items() if cls.tasks & {"ctr", "topk"})
# small enough for a second of training each
PARAMS = {
    "din": {"embed_dim": 8}, "dcnv2": {"embed_dim": 8, "cross_layers": 1},
    "sasrec": {"hidden_dim": 8, "n_heads": 1, "n_blocks": 1},
    "sim": {"embed_dim": 8, "top_k": 4, "soft_dim": 8, "n_heads": 1, "short_len": 4},
    "sdim": {"embed_dim": 8, "short_len": 4, "n_heads": 1}, "tin": {"embed_dim": 8},
    "qin": {"embed_dim": 8, "num_layers": 2, "num_rows": 2},
}


def test_every_servable_model_is_checked():
    assert {"din", "sasrec", "mmbee"} <= set(SERVED)
    assert all(MODELS[name].tasks & {"ctr", "topk"} for name in SERVED)
    assert not {name for name, cls in MODELS.items() if cls.tasks & {"ctr", "topk"}} - set(SERVED)


def _train(name: str, root) -> dict:
    """One epoch of `name` on its tiny world, exported; the offline side restored from the run directory."""
    if name == "mmbee":
        data = make_live_data()
        cfg = mmbee_config(str(root / "data"))
        copy_of = seg_id(1)  # a segment with frames, comments and MFCC
    else:
        data = make_data(n_users=30, n_items=40, n_events=1500)
        kind = "ctr" if "ctr" in MODELS[name].tasks else "topk"
        task = ({"kind": "ctr", "sample_channels": ["click"], "max_history": MAX_HISTORY} if kind == "ctr" else
                {"kind": "topk", "max_history": MAX_HISTORY, "train_negatives": 8})
        cfg = RunConfig.model_validate({
            "name": f"parity-{name}", "data": {"source": str(root / "data")}, "task": task,
            "model": {"name": name, "params": PARAMS.get(name, {})},
            "train": {"epochs": 1, "batch_size": 128, "lr": 3e-3, "progress": False, "num_threads": 1},
            "seeds": [0]})
        copy_of = "i0"  # text and vector content
    data.save(root / "data")
    train_run(cfg, root / "run", data=data, report=False)
    export_bundle(root / "run", root / "bundle")
    cfg, task = load_run(root / "run")
    model = best_model(cfg, task, root / "run", 0).eval()
    return {"data": data, "cfg": cfg, "task": task, "model": model, "bundle": root / "bundle", "copy_of": copy_of}


def _channel_names(task) -> dict[int, str]:
    return {code: ch for ch, code in task.pipeline.settings.history_tags.items()}


def _history(task, u: int, cut: int) -> tuple[list[int], list[int], list[int]]:
    """The first `cut` history events of the event log's user `u`: item rows, times, tag codes (0: untagged)."""
    h, lo = task.history, int(task.history.ptr[u])
    tags = h.tags[lo:lo + cut] if h.tags is not None else np.zeros(cut, np.int64)
    return h.items[lo:lo + cut].tolist(), h.times[lo:lo + cut].tolist(), [int(g) for g in tags]


def _as_request(task, items: list[int], times: list[int], tags: list[int]) -> list[dict]:
    names = _channel_names(task)
    return [{"item": task.item_vocab.id_of(i), "time": t} | ({"channel": names[g]} if names else {})
            for i, t, g in zip(items, times, tags)]


def _scores(client, user: str, items: list[str], **extra) -> tuple[np.ndarray, list[bool]]:
    """The service's scores (null, an item the model does not rank, as -inf) and known flags."""
    resp = client.post("/score", json={"user": user, "items": items, **extra})
    assert resp.status_code == 200, resp.text
    body = resp.json()["scores"]
    return np.array([-np.inf if x["score"] is None else x["score"] for x in body]), [x["known"] for x in body]


def _gap(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over the finite scores; inf where one side ranks an item the other does not."""
    want = np.asarray(want, np.float64)
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(got[~finite], want[~finite]):
        return np.inf
    return float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0


def _with_copy(table: SideTable, row: int) -> SideTable:
    """The item table with a copy of `row` appended (the registered item's row, as offline data)."""
    out = SideTable()
    for group in ("categorical", "multi", "dense", "presence", "tokens", "token_mask"):
        for name, arr in getattr(table, group).items():
            arr = np.asarray(arr)
            getattr(out, group)[name] = np.concatenate([arr, arr[[row]]])
    return out


@torch.no_grad()
def _offline(ctx: dict, table: SideTable, uidx: int, items: list[int], times: list[int], tags: list[int], t: int,
             candidates: list[int]) -> np.ndarray:
    """The offline model's scores of `candidates` (item table rows) for the user of vocabulary row `uidx` with
    this chronological sequence at time t, from the batch the pipeline's Collator builds over `table` (rows
    beyond the model's id tables become id 0); a graph task reads the user's fitted expansion."""
    task, model = ctx["task"], ctx["model"]
    p = task.pipeline
    n = len(items)
    h_items, h_times, h_tags = (np.array(x, np.int64) for x in (items, times, tags))
    if n == 0:  # a padding event beyond the cut, as for a user's first sample
        h_items, h_times, h_tags = np.zeros(1, np.int64), np.full(1, t, np.int64), np.zeros(1, np.int64)
    history = History(np.array([0, n]), h_items, h_times, h_tags if p.settings.history_tags else None)
    s = p.settings
    collate = Collator(history, table, s.max_history, user_table=p.user_table, with_time=s.with_time,
                       token_scope=s.token_scope, n_model_items=task.schema.n_items)
    cand = np.array(candidates, np.int64)
    c = len(cand)
    if s.task == "topk":
        batch = collate(np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([n]), np.array([t]),
                        user_rows=np.array([uidx]))
        batch.candidates = torch.from_numpy(np.where(cand < task.schema.n_items, cand, 0)).view(1, -1)
        scores = model(batch).float().reshape(-1).numpy().astype(np.float64)
        return np.where(p.uninformed(cand, table), -np.inf, scores)  # top-K: never ranked
    graph = None
    if p.graph is not None:
        parts = p.graph.expansion.lookup(np.full(c, uidx), table.categorical[p.graph.group_feature][cand])
        graph = GraphInputs(parts["gie_user"], parts["gie_user_w"], parts["gie_streamer"], parts["gie_streamer_w"])
    batch = collate(np.zeros(c, np.int64), cand, np.full(c, n), np.full(c, t), user_rows=np.full(c, uidx),
                    graph=graph)
    scores = model(batch).float().reshape(-1).numpy().astype(np.float64)
    blank = p.uninformed(cand, table)
    if blank.any():  # an item the model knows nothing about: the user's mean score over the probe items
        probes = p.prior_items()
        scores[blank] = p.prior_of(_offline(ctx, table, uidx, items, times, tags, t, list(probes))[None, :])[0]
    return scores


@pytest.mark.parametrize("name", SERVED)
def test_service_scores_as_offline(name, tmp_path):
    ctx = _train(name, tmp_path)
    task, model = ctx["task"], ctx["model"]
    n = task.schema.n_items
    topk = task.kind == "topk"
    s = task.splits["test"]
    all_items = [task.item_vocab.id_of(i) for i in range(1, n)]
    with torch.no_grad():
        offline = None if topk else task.predict(model, "test", 256)
    app = create_app(ctx["bundle"], f"sqlite:///{tmp_path / 'state.sqlite'}", api_key=KEY)
    with TestClient(app) as client:
        # (a) test samples, each request with several candidates, one with a history longer than the model reads
        groups: dict[tuple[int, int, int], list[int]] = {}
        for r in range(len(s)):
            groups.setdefault((int(s.users[r]), int(s.times[r]), int(s.cut[r])), []).append(r)
        keys = sorted(groups, key=lambda k: (-len(groups[k]), k))[:4] + [max(groups, key=lambda k: k[2])]
        assert max(k[2] for k in keys) > MAX_HISTORY
        worst = 0.0
        for u, t, cut in keys:
            rows = groups[(u, t, cut)][:1] if topk else groups[(u, t, cut)]
            history = _as_request(task, *_history(task, u, cut))
            if topk:  # the full ranking over every item
                with torch.no_grad():
                    want = model(task.collate(s.take(np.array(rows)), train=False)).float().numpy()[0, 1:]
                got, _ = _scores(client, task.log_users.id_of(u), all_items, context={"time": t}, history=history)
            else:
                want = offline[rows]
                got, _ = _scores(client, task.log_users.id_of(u), [task.item_vocab.id_of(int(s.items[r]))
                                                                    for r in rows], context={"time": t},
                                 history=history)
            worst = max(worst, _gap(got, want))
        assert worst <= TOL, f"(a) explicit histories: {worst}"

        # (b) an item registered with a bundle item's raw features and content: the model sees id 0 and its row
        x = int(task.item_vocab.lookup([ctx["copy_of"]])[0])
        r = client.post("/items", json={"items": [raw_item(ctx, ctx["copy_of"], "new-item")]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["registered"] == 1, r.text
        table = _with_copy(task.pipeline.item_table, x)
        other = 2 if x != 2 else 3
        names = ["new-item", ctx["copy_of"], task.item_vocab.id_of(other), "never-registered"]
        rows = [n, x, other, 0]
        u, t, cut = keys[0]
        uidx = int(task.user_rows[u])
        h_items, h_times, h_tags = _history(task, u, cut)
        got, known = _scores(client, task.log_users.id_of(u), names, context={"time": t},
                             history=_as_request(task, h_items, h_times, h_tags))
        want = _offline(ctx, table, uidx, h_items, h_times, h_tags, t, rows)
        assert known == [True, True, True, False]
        # the id never registered: no trained id, no feature, no content: the user's prior (ctr: the mean
        # probability over the probe items, so never above every probe; top-K: never ranked)
        if topk:
            assert got[3] == -np.inf
        else:
            probes = [task.item_vocab.id_of(int(i)) for i in task.pipeline.prior_items()]
            probe_scores, _ = _scores(client, task.log_users.id_of(u), probes, context={"time": t},
                                      history=_as_request(task, h_items, h_times, h_tags))
            assert probe_scores.min() <= got[3] <= probe_scores.max()
        if "item_side" in MODELS[name].inputs:  # its features reach the model: not scored as an unknown item
            assert abs(got[0] - got[3]) > 1e-7
        assert _gap(got, want) <= TOL, f"(b) registered item: {got} vs {want}"

        # (c) a known user's events through POST /events, one of them of the registered item
        counts = np.diff(task.history.ptr) * (task.user_rows > 0)
        u = int(np.argmax(counts))
        user, uidx = task.log_users.id_of(u), int(task.user_rows[u])
        seed = _history(task, u, int(counts[u]))
        t0 = int(max(task.history.times.max(), max(int(sp.times.max()) for sp in task.splits.values() if len(sp))))
        channels = task.pipeline.history_channels() or ["click"]
        tag = task.pipeline.settings.history_tags.get(channels[0], 0)
        new = [(x, ctx["copy_of"]), (n, "new-item"), (other, task.item_vocab.id_of(other))]
        events = [{"user": user, "item": item, "channel": channels[0], "time": t0 + 10 + k, "event_id": f"p{k}"}
                  for k, (_, item) in enumerate(new)]
        r = client.post("/events", json={"events": events}, headers=AUTH).json()
        assert r["accepted"] == 3 and r["cold_item_events"] == 0
        t = t0 + 100
        got, _ = _scores(client, user, names if not topk else names[:3] + all_items, context={"time": t})
        cands = rows if not topk else rows[:3] + list(range(1, n))
        want = _offline(ctx, table, uidx, seed[0] + [i for i, _ in new], seed[1] + [t0 + 10 + k for k in range(3)],
                        seed[2] + [tag] * 3, t, cands)
        assert _gap(got, want) <= TOL, f"(c) events: {_gap(got, want)}"
        assert client.post("/recommend", json={"user": user, "k": 3}).json()["history_length"] == min(
            ctx["cfg"].task.max_history, len(seed[0]) + 3)
