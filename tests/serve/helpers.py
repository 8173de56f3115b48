"""Helpers of the serving tests (plain functions, not tests), also used by the graph, task and bad-input tests:
training a run and exporting its bundle, a free port, the tiny MMBee live-stream world (20 segments of 5
streamers, 24 users in two gifting communities) and its config, and a new item described by raw values."""

from __future__ import annotations

import socket

import numpy as np
import pyarrow as pa

from modalrec.config import RunConfig
from modalrec.data.interaction import InteractionData
from modalrec.models import build_model
from modalrec.serve.bundle import export_bundle
from modalrec.tasks import prepare_task
from modalrec.train.checkpoint import load_checkpoint
from modalrec.train.run import train_run
from tests.models.mmbee_helpers import SMALL, content_tables, live_spec

MAX_HISTORY = 10


def train_and_export(cfg: RunConfig, data, root):
    """Trains `cfg` for its epochs, exports the bundle to root/bundle; returns (task, the best model in eval)."""
    train_run(cfg, root / "run", data=data, report=False)
    export_bundle(root / "run", root / "bundle")
    task = prepare_task(data, cfg.task)
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    load_checkpoint(root / "run" / "checkpoints" / "seed_0", "best", model, restore_rng=False)
    return task, model.eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the tiny MMBee live-stream world (test_serve_mmbee) ----------------------------------------------------

N_SEG, N_STREAMERS, N_USERS = 20, 5, 24
COMMUNITY = {0: [0, 1, 2], 1: [2, 3, 4]}  # streamers each half of the users gifts
FRAMES_ABSENT, COMMENTS_ABSENT, MFCC_ABSENT = {2, 7}, {3, 7, 11}, {5, 7}
T_END = 10**6  # every event of the data is earlier


def seg_id(i: int) -> str:
    return f"a{i % N_STREAMERS}/g{i}"


def user_id(u: int) -> str:
    return f"u{u:03d}"


def segments_of(streamer: int) -> list[int]:
    return [i for i in range(N_SEG) if i % N_STREAMERS == streamer]


def make_live_data(seed: int = 0, n_watches: int = 700, n_gifts: int = 160) -> InteractionData:
    rng = np.random.default_rng(seed)
    w_users = rng.integers(0, N_USERS, n_watches)
    w_segs = rng.integers(0, N_SEG, n_watches)
    g_users = rng.integers(0, N_USERS, n_gifts)
    g_streamers = np.array([rng.choice(COMMUNITY[int(u >= N_USERS // 2)]) for u in g_users])
    g_segs = np.array([rng.choice(segments_of(int(s))) for s in g_streamers])
    users = np.concatenate([w_users, g_users])
    segs = np.concatenate([w_segs, g_segs])
    times = rng.integers(0, T_END, len(users))
    channel = ["watch"] * n_watches + ["gift"] * n_gifts
    label = np.concatenate([(rng.random(n_watches) < 0.3).astype(np.float64), np.ones(n_gifts)])
    order = np.argsort(times, kind="stable")
    events = pa.table({
        "user_id": [user_id(int(u)) for u in users[order]], "item_id": [seg_id(int(s)) for s in segs[order]],
        "time": pa.array(times[order], pa.int64()), "channel": [channel[i] for i in order], "label": label[order],
    })
    items = pa.table({
        "item_id": [seg_id(i) for i in range(N_SEG)],
        "streamer_id": [f"a{i % N_STREAMERS}" for i in range(N_SEG)],
        "category": [["gaming", "singing", "chatting"][i % 3] for i in range(N_SEG)],
    })
    return InteractionData(live_spec("tiny_live_gifts", ["watch", "gift"]), events, items, None,
                           content_tables(N_SEG, seg_id, (FRAMES_ABSENT, COMMENTS_ABSENT, MFCC_ABSENT))).validate()


def mmbee_config(source: str, scope: str = "target") -> RunConfig:
    return RunConfig.model_validate({
        "name": f"tiny-mmbee-{scope}", "data": {"source": source},
        # the configs' history: watches and gifts, tagged with their channel
        "task": {"kind": "ctr", "sample_channels": ["watch"], "history_channels": ["watch", "gift"],
                 "history_channel_tags": True, "max_history": 8,
                 "split": {"method": "global_time", "valid": 0.1, "test": 0.2},
                 "token_modalities": ["frames_emb", "comments_emb"], "max_tokens": 4, "token_scope": scope,
                 "graph": {"enabled": True, "gie": {"k_neighbours": 3, "expansion_length": 4, "pretrain_epochs": 2,
                                                    "dim": 8, "batch_size": 64, "cl_nodes": 16,
                                                    "progress": False}}},
        "model": {"name": "mmbee", "params": {**SMALL, "modalities": ["frames_emb", "comments_emb", "speech_mfcc"],
                                             "mfq_scope": scope}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "progress": False, "num_threads": 1},
        "seeds": [0],
    })


def train_mmbee(root, data, scope: str) -> dict:
    cfg = mmbee_config(str(root / "data"), scope)
    run = root / f"run-{scope}"
    train_run(cfg, run, data=data, report=False)
    export_bundle(run, root / f"bundle-{scope}")
    task = prepare_task(data, cfg.task)
    model = build_model("mmbee", task.schema, cfg.model.params)
    load_checkpoint(run / "checkpoints" / "seed_0", "best", model, restore_rng=False)
    model.eval()
    return {"root": root, "data": data, "cfg": cfg, "task": task, "model": model, "run": run,
            "bundle": root / f"bundle-{scope}"}


def raw_item(served, item_id: str, new_id: str, drop: tuple[str, ...] = ()) -> dict:
    """The request item describing `item_id` of the training data as raw values (what a producer would send
    for a new item with the same features and content), for the modalities the bundle's model reads."""
    data, schema = served["data"], served["task"].schema
    row = next(r for r in data.items.to_pylist() if r["item_id"] == item_id)
    out: dict = {"id": new_id, "categorical": {}, "multi": {}, "text": {}, "vectors": {}, "tokens": {}}
    for f in data.spec.item_features:
        if f.name in row and f.name not in drop:
            out["multi" if f.kind == "multi_categorical" else "categorical"][f.name] = row[f.name]
    for m in data.spec.modalities:
        if m.name in drop or m.name not in data.content:
            continue
        t = data.content[m.name]
        match = [r for r in t.to_pylist() if r["entity_id"] == item_id]
        if not match:
            continue
        if m.kind == "text" and f"{m.name}_words" in schema.item_multi:
            out["text"][m.name] = match[0]["text"]
        elif m.kind == "vector" and m.name in schema.item_tokens:
            t_max = schema.item_tokens[m.name][0]
            out["tokens"][m.name] = [list(map(float, v)) for v in match[0]["vector"]][:t_max]
        elif m.kind == "vector" and m.name in schema.item_dense:
            out["vectors"][m.name] = list(map(float, match[0]["vector"]))
    return {k: v for k, v in out.items() if v or k == "id"}
