"""A run directory is a self-contained artefact: with the raw data deleted, `evaluate`, `predict` (a split, a
new events file, top-K lists) and `export` read RUN/ only, never re-run a content encoder, and the exported
bundle scores as the offline model does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.config import RunConfig
from modalrec.data.errors import DataError
from modalrec.train.run import best_model, evaluate_run, load_run, train_run
from tests.helpers import make_data

runner = CliRunner()


def _cfg(root, kind: str, model: str, **task) -> RunConfig:
    return RunConfig.model_validate({
        "name": f"toy-{model}", "data": {"source": str(root / "data")},
        "task": {"kind": kind, "max_history": 8, **task},
        "model": {"name": model, "params": {"embed_dim": 8} if model != "sasrec" else {"hidden_dim": 16, "n_blocks": 1}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "progress": False, "num_threads": 1},
        "seeds": [0, 1],
    })


@pytest.fixture(scope="module")
def ctr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("selfcontained")
    make_data(n_users=30, n_items=50, n_events=2000).save(root / "data")
    cfg = _cfg(root, "ctr", "din", sample_channels=["click"])
    metrics = train_run(cfg, root / "run", report=False)
    shutil.rmtree(root / "data")  # from here on only the run directory exists
    return root, metrics


def test_run_directory_holds_its_pipeline_and_data_hashed(ctr_run):
    root, _ = ctr_run
    run = root / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    for folder in ("pipeline", "data"):
        files = manifest["files"][folder]
        assert files and all((run / folder / name).is_file() for name in files)
    assert {"pipeline.json", "users.parquet", "items.parquet", "item_table.safetensors"} <= set(manifest["files"]["pipeline"])
    assert not list(run.rglob("*.pkl")) and not list(run.rglob("*.pickle"))
    (run / "pipeline" / "items.parquet").write_bytes((run / "pipeline" / "items.parquet").read_bytes())  # unchanged
    corrupt = root / "corrupt"
    shutil.copytree(run, corrupt)
    with open(corrupt / "data" / "samples" / "test" / "labels.npy", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    with pytest.raises(DataError, match="labels.npy.*sha256"):
        load_run(corrupt)


def test_evaluate_without_the_data_reproduces_the_training_metrics(ctr_run):
    root, metrics = ctr_run
    res = evaluate_run(root / "run")
    assert res["test"]["auc"]["runs"] == pytest.approx(metrics["test"]["auc"]["runs"], abs=1e-12)
    out = runner.invoke(app, ["evaluate", str(root / "run"), "--split", "tset"])
    assert out.exit_code == 2 and "--split" in out.output and "train, valid, test" in out.output
    out = runner.invoke(app, ["evaluate", str(root)])
    assert out.exit_code == 2 and "not a run" not in out.output and "a run directory written by" in out.output


def test_predict_a_split_and_a_new_events_file(ctr_run, tmp_path):
    root, _ = ctr_run
    run = root / "run"
    out = runner.invoke(app, ["predict", str(run), "--out", str(tmp_path / "test.csv")])
    assert out.exit_code == 0, out.output
    pred = pd.read_csv(tmp_path / "test.csv")
    cfg, task = load_run(run)
    assert len(pred) == len(task.splits["test"]) and pred["probability"].between(0, 1).all()
    # a new events file: known users and items, a new user, an unknown item; scored through the saved pipeline
    new = pd.DataFrame({"user_id": ["u1", "u2", "brand-new", "u3"], "item_id": ["i1", "i7", "i2", "never-seen"],
                        "time": [9000, 9001, 9002, 9003], "channel": ["click"] * 4})
    new.to_csv(tmp_path / "new.csv", index=False)
    out = runner.invoke(app, ["predict", str(run), "--events", str(tmp_path / "new.csv"), "--out", str(tmp_path / "new_p.csv")])
    assert out.exit_code == 0, out.output
    got = pd.read_csv(tmp_path / "new_p.csv")
    assert list(got["user_id"]) == list(new["user_id"]) and got["probability"].between(0, 1).all()
    # the same probabilities as the offline model on batches the pipeline builds for those rows
    p = task.pipeline
    users = task.log_users.extended(new["user_id"]).lookup(new["user_id"])
    items = p.items.lookup(new["item_id"])
    times = new["time"].to_numpy()
    cut = task.history.cut_before(np.minimum(users, task.history.n_users - 1), times)
    cut[users >= task.history.n_users] = 0
    logits = []
    for seed in cfg.seeds:
        model = best_model(cfg, task, run, seed).eval()
        coll = p.collator(task.history, None)
        with torch.no_grad():
            rows = []
            for u, i, c, t in zip(users, items, cut, times):
                known = u < task.history.n_users
                # an item the model knows nothing about scores as the user's prior over the probe items
                targets = p.prior_items() if p.uninformed(np.array([i]))[0] else np.array([i])
                n = len(targets)
                batch = coll(np.full(n, u if known else 0), targets, np.full(n, c if known else 0), np.full(n, t),
                             user_rows=np.full(n, p.users.lookup([task.log_users.id_of(int(u)) or ""])[0]))
                out = model(batch).numpy().astype(np.float64)
                rows.append(float(p.prior_of(out[None, :])[0]) if n > 1 else float(out[0]))
        logits.append(rows)
    assert p.uninformed(items).tolist() == [False, False, False, True]  # "never-seen": no id, no feature
    want = 1 / (1 + np.exp(-np.mean(logits, axis=0)))
    np.testing.assert_allclose(got["probability"].to_numpy(), want, atol=1e-6)
    out = runner.invoke(app, ["predict", str(run), "--k", "5", "--out", str(tmp_path / "k.csv")])
    assert out.exit_code == 2 and "--k" in out.output and "ctr" in out.output


def test_export_without_the_data_serves_the_offline_scores(ctr_run, tmp_path):
    from fastapi.testclient import TestClient

    from modalrec.serve.app import create_app

    root, _ = ctr_run
    out = runner.invoke(app, ["export", str(root / "run"), "--out", str(tmp_path / "bundle")])
    assert out.exit_code == 0, out.output
    cfg, task = load_run(root / "run")
    model = best_model(cfg, task, root / "run", cfg.seeds[0]).eval()
    s = task.splits["test"]
    with torch.no_grad():
        offline = torch.cat([model(b) for b in task.batches("test", 64)]).numpy()
    with TestClient(create_app(tmp_path / "bundle", f"sqlite:///{tmp_path / 's.sqlite'}", api_key="k")) as c:
        for r in range(0, len(s), max(1, len(s) // 20)):
            u, cut = int(s.users[r]), int(s.cut[r])
            lo = task.history.ptr[u]
            hist = [{"item": task.item_vocab.id_of(int(i)), "time": int(t)}
                    for i, t in zip(task.history.items[lo:lo + cut], task.history.times[lo:lo + cut])]
            res = c.post("/score", json={"user": task.log_users.id_of(u), "items": [task.item_vocab.id_of(int(s.items[r]))],
                                         "context": {"time": int(s.times[r])}, "history": hist}).json()
            assert res["scores"][0]["score"] == pytest.approx(float(offline[r]), abs=1e-5)


def test_topk_run_writes_top_k_lists(tmp_path):
    make_data(n_users=30, n_items=200, n_events=1500).save(tmp_path / "data")
    cfg = _cfg(tmp_path, "topk", "sasrec", sample_channels=["click"])
    train_run(cfg, tmp_path / "run", report=False)
    shutil.rmtree(tmp_path / "data")
    out = runner.invoke(app, ["predict", str(tmp_path / "run"), "--k", "10", "--out", str(tmp_path / "top.csv")])
    assert out.exit_code == 0, out.output
    top = pd.read_csv(tmp_path / "top.csv")
    _, task = load_run(tmp_path / "run")
    n_users = int((np.diff(task.history.ptr) > 0).sum())
    assert len(top) == 10 * n_users and set(top["rank"]) == set(range(1, 11))  # 200 items: every list is full
    assert (top.groupby("user_id")["score"].apply(lambda x: (np.diff(x.to_numpy()) <= 0).all())).all()
    # exclude_seen (the task's default): no list holds an item its user met
    seen = {task.log_users.id_of(u): {task.item_vocab.id_of(int(i)) for i in
                                      task.history.items[task.history.ptr[u]:task.history.ptr[u + 1]]}
            for u in range(1, task.history.n_users)}
    assert not any(row.item_id in seen[row.user_id] for row in top.itertuples())
    out = runner.invoke(app, ["predict", str(tmp_path / "run"), "--k", "10", "--keep-seen", "--out", str(tmp_path / "k2.csv")])
    assert out.exit_code == 0, out.output
    kept = pd.read_csv(tmp_path / "k2.csv")
    assert any(row.item_id in seen[row.user_id] for row in kept.itertuples())
    out = runner.invoke(app, ["predict", str(tmp_path / "run"), "--out", str(tmp_path / "x.csv")])
    assert out.exit_code == 2 and "--k" in out.output
