"""User features imported with the data reach the CTR rankers: the pipeline joins the users table (Batch.user_side)
and every ctr ranker reads it next to the user id; the run lists them among the model's inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.config import load_config

runner = CliRunner()


def _write_shop(folder, n_users: int = 40, n_items: int = 30, n_events: int = 1500, seed: int = 0):
    """An ml-100k-like shop: users.csv with age, gender and occupation, where gender drives the clicks."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    gender = rng.choice(["F", "M"], n_users)
    with open(folder / "users.csv", "w") as f:
        f.write("uid,age,gender,occupation\n")
        f.writelines(f"u{u},{rng.integers(18, 70)},{gender[u]},{rng.choice(['artist', 'doctor', 'student'])}\n" for u in range(n_users))
    with open(folder / "items.csv", "w") as f:
        f.write("sku,brand\n")
        f.writelines(f"i{i},b{i % 3}\n" for i in range(n_items))
    with open(folder / "clicks.csv", "w") as f:
        f.write("uid,sku,ts,clicked\n")
        for _ in range(n_events):
            u, i = rng.integers(n_users), rng.integers(n_items)
            p = 0.8 if (gender[u] == "F") == (i % 2 == 0) else 0.1
            f.write(f"u{u},i{i},{1_700_000_000 + int(rng.integers(0, 10**6))},{int(rng.random() < p)}\n")
    (folder / "shop.yaml").write_text(
        "name: shop\n"
        "events:\n  - {file: clicks.csv, user: uid, item: sku, time: ts, label: clicked, channel: click}\n"
        "items: {file: items.csv, id: sku, categorical: [brand]}\n"
        "users: {file: users.csv, id: uid, categorical: [gender, occupation], numeric: [age]}\n")
    return folder / "shop.yaml"


@pytest.mark.parametrize("model", ["din", "dcnv2", "sim", "sdim", "tin", "qin", "lr"])
def test_imported_user_features_are_model_inputs(tmp_path, model):
    spec = _write_shop(tmp_path / "raw")
    res = runner.invoke(app, ["data", "import", str(spec), "--out", str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    (tmp_path / "run.yaml").write_text(
        f"name: shop-{model}\ndata: {{source: {tmp_path / 'data'}}}\n"
        "task: {kind: ctr, sample_channels: [click], max_history: 8}\n"
        f"model: {{name: {model}, params: {{{'embed_dim: 8' if model != 'lr' else ''}}}}}\n"
        "train: {epochs: 1, batch_size: 128, progress: false, num_threads: 1}\n")
    res = runner.invoke(app, ["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["inputs"]["user_features"] == ["age", "gender", "occupation"]
    assert {"user_side"} <= set(metrics["inputs"]["model"])
    # the features change the model's output: the user table is read, not only carried
    from modalrec.train.run import best_model, load_run

    cfg, task = load_run(tmp_path / "run")
    m = best_model(cfg, task, tmp_path / "run", 0).eval()
    task.bind(m.inputs)
    batch = next(task.batches("test", 64))
    assert batch.user_side and set(batch.user_side) == {"age", "gender", "occupation"}
    with torch.no_grad():
        before = m(batch)
        batch.user_side = {k: torch.zeros_like(v) for k, v in batch.user_side.items()}
        after = m(batch)
    assert not torch.allclose(before, after)


def test_user_features_can_be_switched_off(tmp_path):
    spec = _write_shop(tmp_path / "raw")
    assert runner.invoke(app, ["data", "import", str(spec), "--out", str(tmp_path / "data")]).exit_code == 0
    (tmp_path / "run.yaml").write_text(
        f"data: {{source: {tmp_path / 'data'}}}\ntask: {{kind: ctr, user_features: false}}\n"
        "model: {name: din, params: {embed_dim: 8}}\ntrain: {epochs: 1, progress: false}\n")
    cfg = load_config(tmp_path / "run.yaml")
    from modalrec.train.run import train_run

    m = train_run(cfg, tmp_path / "run", report=False)
    assert m["inputs"]["user_features"] == []
