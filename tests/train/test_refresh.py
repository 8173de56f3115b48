"""`modalrec refresh`: a run refreshed on the events since a time, without a full retrain.

A small live-stream world in two periods. Before T1 streamers a0..a3 stream to users u000..u019 (two gifting
communities: a0/a1 and a2/a3) on iOS and Android. From T1 on two new streamers a4 and a5 go live (a5 in a new
category), eight new users u020..u027 join on the web, and only they gift a4 and a5: the pair is co-gifted only in
the new window. RUN is trained on the data as it was at T1 (`snapshot`); RUN2 refreshes it on everything since T1.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.config import RunConfig
from modalrec.data.interaction import InteractionData
from modalrec.models import build_model
from modalrec.train.refresh import evaluate_window, load_refreshed, snapshot, warm_start
from modalrec.train.run import best_model, evaluate_run, load_run, train_run
from tests.models.mmbee_helpers import SMALL, content_tables, live_spec

pytest.importorskip("faiss")
runner = CliRunner()
T1, T_END = 600_000, 1_000_000
OLD_STREAMERS, NEW_STREAMERS = [0, 1, 2, 3], [4, 5]
OLD_USERS, NEW_USERS = range(20), range(20, 28)
SEG_PER_STREAMER = 6
CATEGORY = {0: "gaming", 1: "gaming", 2: "singing", 3: "chatting", 4: "singing", 5: "dancing"}


def seg_id(i: int) -> str:
    return f"a{i // SEG_PER_STREAMER}/g{i}"


def segs(streamer: int) -> list[int]:
    return list(range(streamer * SEG_PER_STREAMER, (streamer + 1) * SEG_PER_STREAMER))


def make_world(seed: int = 0) -> InteractionData:
    rng = np.random.default_rng(seed)
    rows = []  # (user, segment, time, channel, label, device)

    def period(users, streamers, gifts_to, t0, t1, n_watch, n_gift, device):
        for _ in range(n_watch):
            u, s = int(rng.choice(list(users))), int(rng.choice(streamers))
            gift_to = gifts_to(u)
            rows.append((u, int(rng.choice(segs(s))), int(rng.integers(t0, t1)), "watch",
                         float(rng.random() < (0.5 if s in gift_to else 0.1)), device(u)))
        for _ in range(n_gift):
            u = int(rng.choice(list(users)))
            s = int(rng.choice(gifts_to(u)))
            rows.append((u, int(rng.choice(segs(s))), int(rng.integers(t0, t1)), "gift", 1.0, device(u)))

    def community(u):
        return [4, 5] if u >= 20 else ([0, 1] if u < 10 else [2, 3])

    def old_device(u):
        return "ios" if u % 2 else "android"

    period(OLD_USERS, OLD_STREAMERS, community, 0, T1, 900, 150, old_device)
    period(OLD_USERS, OLD_STREAMERS, community, T1, T_END, 500, 80, old_device)
    period(NEW_USERS, OLD_STREAMERS + NEW_STREAMERS, community, T1, T_END, 400, 80, lambda u: "web")
    rows.sort(key=lambda r: r[2])
    events = pa.table({
        "user_id": [f"u{r[0]:03d}" for r in rows], "item_id": [seg_id(r[1]) for r in rows],
        "time": pa.array([r[2] for r in rows], pa.int64()), "channel": [r[3] for r in rows],
        "label": [r[4] for r in rows], "device": [r[5] for r in rows]})
    n_seg = 6 * SEG_PER_STREAMER
    items = pa.table({"item_id": [seg_id(i) for i in range(n_seg)],
                      "streamer_id": [f"a{i // SEG_PER_STREAMER}" for i in range(n_seg)],
                      "category": [CATEGORY[i // SEG_PER_STREAMER] for i in range(n_seg)]})
    spec = live_spec("tiny_refresh", ["watch", "gift"])
    spec = spec.model_copy(update={"event_columns": [*spec.event_columns, "device"]})
    return InteractionData(spec, events, items, None, content_tables(n_seg, seg_id, ({3}, {4, 9}, {5}))).validate()


def config(source: str) -> RunConfig:
    return RunConfig.model_validate({
        "name": "tiny-refresh", "data": {"source": source},
        "task": {"kind": "ctr", "sample_channels": ["watch"], "history_channels": ["watch", "gift"],
                 "history_channel_tags": True, "max_history": 8, "context_features": ["device"],
                 "split": {"method": "global_time", "valid": 0.1, "test": 0.2},
                 "token_modalities": ["frames_emb", "comments_emb"], "max_tokens": 4, "token_scope": "target",
                 "graph": {"enabled": True, "gie": {"k_neighbours": 3, "expansion_length": 4, "pretrain_epochs": 2,
                                                    "dim": 8, "batch_size": 64, "cl_nodes": 16, "progress": False}}},
        "model": {"name": "mmbee", "params": {**SMALL, "modalities": ["frames_emb", "comments_emb", "speech_mfcc"],
                                             "use_item_id": False, "mfq_scope": "target"}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "progress": False, "num_threads": 1},
        "seeds": [0],
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("refresh")
    world = make_world()
    snapshot(world, T1).save(root / "old")
    world.save(root / "data")
    train_run(config(str(root / "old")), root / "run", report=False)
    res = runner.invoke(app, ["refresh", str(root / "run"), "--since", str(T1), "--data", str(root / "data"),
                              "--out", str(root / "run2"), "--bundle", str(root / "bundle2")])
    assert res.exit_code == 0, res.output
    return root, world, res.output


def _pipelines(root):
    _, old = load_run(root / "run")
    _, new = load_run(root / "run2")
    return old, new


def test_vocabularies_start_with_the_runs_and_grow_by_what_is_new(runs):
    root, _, output = runs
    assert "refreshed" in output and "valid auc" in output
    old, new = _pipelines(root)
    po, pn = old.pipeline, new.pipeline
    for name in ("users", "items"):
        a, b = getattr(po, name), getattr(pn, name)
        assert len(b) > len(a) and b.ids[: len(a.ids)] == a.ids  # old ids keep their rows
    assert {f"u{u:03d}" for u in NEW_USERS} <= set(pn.users.ids) - set(po.users.ids)
    new_segments = {seg_id(i) for s in NEW_STREAMERS for i in segs(s)}
    assert new_segments & set(pn.items.ids) and not new_segments & set(po.items.ids)
    streamers_o, streamers_n = po.item_maps.categorical["streamer_id"], pn.item_maps.categorical["streamer_id"]
    assert streamers_n.ids[: len(streamers_o.ids)] == streamers_o.ids and {"a4", "a5"} <= set(streamers_n.ids)
    assert pn.item_sizes.categorical["streamer_id"] == po.item_sizes.categorical["streamer_id"] + 2
    assert "dancing" in pn.item_maps.categorical["category"].ids and "dancing" not in po.item_maps.categorical["category"].ids
    assert pn.context["device"].ids[: len(po.context["device"].ids)] == po.context["device"].ids
    assert "web" in pn.context["device"].ids and "web" not in po.context["device"].ids
    n = len(po.items)
    for name, arr in po.item_table.categorical.items():  # old rows keep their codes
        np.testing.assert_array_equal(pn.item_table.categorical[name][:n], arr)
    np.testing.assert_array_equal(pn.item_table.tokens["frames_emb"][:n], po.item_table.tokens["frames_emb"])
    # a new segment's row: its streamer's new code and its content
    r = pn.items.lookup([seg_id(segs(5)[0])])[0]
    assert pn.item_table.categorical["streamer_id"][r] == streamers_n.lookup(["a5"])[0]
    assert pn.item_table.token_mask["frames_emb"][r].any()


def test_graph_holds_the_new_gifts(runs):
    root, _, _ = runs
    old, new = _pipelines(root)
    streamers = new.pipeline.item_maps.categorical["streamer_id"]
    a4, a5 = streamers.lookup(["a4", "a5"])
    g = new.pipeline.graph.expansion
    row = g.a2a.indices[g.a2a.indptr[a4]:g.a2a.indptr[a4 + 1]]
    assert a5 in row  # co-gifted only in the new window: linked in Swing A2A
    assert g.n_streamers == new.pipeline.item_sizes.categorical["streamer_id"]
    assert g.n_users == len(new.pipeline.users)
    assert old.pipeline.graph.expansion.n_streamers < g.n_streamers
    assert new.pipeline.graph.edges_before > old.pipeline.graph.edges_before
    assert g.streamer_seq[a4, 0] > 0  # A->U->A of a new streamer
    o = old.pipeline.graph.expansion  # GraphCL warm-started: RUN's vectors kept, new streamers' from the refit
    had = np.abs(o.streamer_emb).sum(1) > 0
    np.testing.assert_array_equal(g.streamer_emb[: o.n_streamers][had], o.streamer_emb[had])
    assert np.abs(g.streamer_emb[[a4, a5]]).sum(1).min() > 0


def test_model_is_warm_started_from_the_run(runs):
    root, _, _ = runs
    cfg, old = load_run(root / "run")
    _, new = load_run(root / "run2")
    before = best_model(cfg, old, root / "run", 0)
    model = build_model(cfg.model.name, new.schema, cfg.model.params)
    grown = warm_start(model, before)
    old_params = dict(before.named_parameters())
    for name, p in model.named_parameters():
        q = old_params[name]
        torch.testing.assert_close(p.detach()[: q.shape[0]] if p.dim() else p.detach(), q.detach())
    key = next(k for k in grown if "streamer_id" in k)  # the streamer code table grew: new rows = weighted mean
    table = dict(model.state_dict())[key]
    torch.testing.assert_close(table[-1], table[-2])
    assert grown[key] == "mean"
    trained = best_model(cfg, new, root / "run2", 0)  # and the refreshed run's weights moved from there
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p.detach()[: old_params[n].shape[0]],
                                                                           old_params[n].detach())]
    assert changed


def test_refreshed_run_stands_alone(runs, tmp_path):
    root, world, _ = runs
    metrics = json.loads((root / "run2" / "metrics.json").read_text())
    manifest = json.loads((root / "run2" / "manifest.json").read_text())
    assert manifest["refresh"]["parent"] == str((root / "run").resolve()) and manifest["refresh"]["since"] == T1
    assert set(metrics["samples"]) == {"train", "valid"}  # no test split: nothing after the window
    auc = metrics["valid"]["auc"]["mean"]
    assert auc is not None and 0.0 <= auc <= 1.0
    print(f"refreshed valid AUC {auc:.4f} (warm start, before training: "
          f"{metrics['valid_warm_start']['auc']['mean']:.4f})")
    stale = evaluate_window(root / "run", world, T1)  # the stale run on the same window, for reference
    assert stale["samples"] > 0 and stale["new_items"] > 0
    moved = tmp_path / "run2"
    shutil.copytree(root / "run2", moved)
    for folder in ("data", "old"):
        shutil.copytree(root / folder, tmp_path / folder)
        shutil.rmtree(root / folder)
    try:
        res = evaluate_run(moved, "valid")
        assert res["valid"]["auc"]["mean"] == pytest.approx(auc, abs=1e-9)
        out = runner.invoke(app, ["export", str(moved), "--out", str(tmp_path / "bundle")])
        assert out.exit_code == 0, out.output
        out = runner.invoke(app, ["evaluate", str(moved)])
        assert out.exit_code == 2 and "valid" in out.output  # the split to ask for
    finally:
        for folder in ("data", "old"):
            shutil.copytree(tmp_path / folder, root / folder)


def test_bundle_extends_the_served_one(runs):
    from modalrec.serve.bundle import export_bundle, load_bundle

    root, _, _ = runs
    export_bundle(root / "run", root / "bundle1", overwrite=True)
    current = load_bundle(root / "bundle1")
    new = load_refreshed(root / "bundle2", current=current)
    assert new.n_items > current.n_items
    with pytest.raises(Exception, match="vocabulary|bundle"):
        load_refreshed(root / "bundle1", current=new)


def test_refresh_errors_are_one_line(runs):
    root, _, _ = runs
    res = runner.invoke(app, ["refresh", str(root / "run"), "--since", "2200-01-01", "--data", str(root / "data"),
                              "--out", str(root / "nothing")])
    assert res.exit_code == 2 and "--since" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["refresh", str(root / "run"), "--since", "yesterday", "--out", str(root / "x")])
    assert res.exit_code == 2 and "ISO date" in res.output
    res = runner.invoke(app, ["refresh", str(root / "run"), "--since", str(T1), "--out", str(root / "run2")])
    assert res.exit_code == 2 and "exists" in res.output


def test_partitioned_events_refresh_alike(runs, tmp_path):
    from modalrec.data.partitioned import write_partitioned
    from modalrec.train.refresh import refresh_run

    root, world, _ = runs
    parts = write_partitioned(world, tmp_path / "parts", 3)
    refresh_run(root / "run", T1, tmp_path / "run3", data=parts)
    _, a = load_run(root / "run2")
    _, b = load_run(tmp_path / "run3")
    for name in ("users", "items"):
        assert getattr(a.pipeline, name) == getattr(b.pipeline, name)
    assert {k: len(v) for k, v in a.splits.items()} == {k: len(v) for k, v in b.splits.items()}
    np.testing.assert_array_equal(a.pipeline.graph.expansion.a2a.indices, b.pipeline.graph.expansion.a2a.indices)
    assert evaluate_run(tmp_path / "run3", "valid")["valid"]["auc"]["mean"] is not None
