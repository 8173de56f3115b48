"""Training over shards: the batch order of a partitioned task (seeded shard order, each shard permuted on its
own), and exact resume from a checkpoint written mid-epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalrec.config import TaskConfig, TrainConfig
from modalrec.data.partitioned import write_partitioned
from modalrec.models import build_model
from modalrec.tasks import CTRTask
from modalrec.tasks.base import batch_indices
from modalrec.train.trainer import Trainer
from tests.helpers import make_data

CFG = {"kind": "ctr", "sample_channels": ["click"], "max_history": 6}


def test_single_shard_order_is_one_permutation():
    got = np.concatenate(list(batch_indices(103, 10, True, 3, 2)))
    assert np.array_equal(got, np.random.default_rng([3, 2]).permutation(103))
    assert np.array_equal(np.concatenate(list(batch_indices(103, 10, False, 3, 2))), np.arange(103))


def test_sharded_order_covers_each_sample_once_shard_by_shard():
    bounds = [0, 40, 41, 97, 150]
    batches = list(batch_indices(150, 16, True, 5, 1, bounds=bounds))
    flat = np.concatenate(batches)
    assert np.array_equal(np.sort(flat), np.arange(150))
    assert [len(b) for b in batches] == [16] * 9 + [6]
    shard = np.searchsorted(bounds, flat, side="right") - 1
    assert (np.diff(shard) != 0).sum() == 3  # each shard's samples come together
    assert not np.array_equal(flat, np.concatenate(list(batch_indices(150, 16, True, 5, 2, bounds=bounds))))
    # under DDP each rank streams its own range of the epoch's order (disjoint shards but at the cuts), in as
    # many steps as one process
    for world in (2, 3):
        ranks = [list(batch_indices(150, 16, True, 5, 1, rank=r, world=world, bounds=bounds)) for r in range(world)]
        assert [len(r) for r in ranks] == [10] * world
        every = np.concatenate([np.concatenate(r) for r in ranks])
        assert np.array_equal(every, flat)  # rank after rank: the epoch's order cut in `world` pieces
        for r in range(world):  # each step takes about batch_size / world samples on every rank
            assert all(abs(len(b) - 150 / world / 10) <= 1 for b in ranks[r])
        resumed = list(batch_indices(150, 16, True, 5, 1, rank=1, world=world, bounds=bounds, start=3))
        assert all(np.array_equal(a, b) for a, b in zip(resumed, ranks[1][3:])) and len(resumed) == 7
    # a resumed epoch skips the done batches and goes on with the same ones
    assert all(np.array_equal(a, b) for a, b in zip(batches[4:], batch_indices(150, 16, True, 5, 1, bounds=bounds,
                                                                                 start=4)))
    assert len(list(batch_indices(150, 16, True, 5, 1, bounds=bounds, start=4))) == 6


@pytest.fixture(scope="module")
def sharded_task(tmp_path_factory):
    data = make_data(n_users=40, n_items=50, n_events=3000)
    parts = write_partitioned(data, tmp_path_factory.mktemp("parts"), 3)
    task = CTRTask(parts, TaskConfig(**CFG), out=tmp_path_factory.mktemp("run") / "data")
    assert len(task.shard_bounds("train")) == 4
    return task


class Crash(RuntimeError):
    pass


def _fit(task, ckpt, crash_at: int | None = None, resume: bool = False):
    torch.manual_seed(0)
    model = build_model("din", task.schema, {"embed_dim": 8, "dropout": 0.2})
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, patience=10, progress=False, checkpoint_every=5,
                      device="cpu")
    trainer = Trainer(task, model, cfg, ckpt, seed=0)
    if crash_at is not None:
        loss, calls = task.loss, [0]

        def crashing(out, batch):
            calls[0] += 1
            if calls[0] > crash_at:
                raise Crash
            return loss(out, batch)

        trainer.task = type("T", (), {"__getattr__": lambda s, k: getattr(task, k), "loss": staticmethod(crashing)})()
    res = trainer.fit(resume=resume)
    return model, res


def test_resume_mid_epoch_gives_the_uninterrupted_weights(sharded_task, tmp_path):
    ref, ref_res = _fit(sharded_task, tmp_path / "ref")
    steps = -(-sharded_task.train_size() // 32)
    assert steps > 12
    with pytest.raises(Crash):
        _fit(sharded_task, tmp_path / "cut", crash_at=steps + 12)  # in epoch 2, after its 10-step checkpoint
    import json

    state = json.loads((tmp_path / "cut" / "last.json").read_text())["state"]
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2 and state["partial"]["step"] == 10
    torch.manual_seed(123)  # whatever the process did before, the checkpoint's RNG state rules
    got, res = _fit(sharded_task, tmp_path / "cut", resume=True)
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref_res.history]
    assert res.train_samples == ref_res.train_samples


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_partitioned_dataset_trains_on_two_nodes_like_one_process(tmp_path, toy_dir):
    """A dataset folder with events/part-*.parquet trains through the CLI; torchrun with two nodes (two launches
    on 127.0.0.1, one process each, RUN on the filesystem both see) matches one process; the run evaluates from
    RUN alone."""
    import json
    import os
    import subprocess
    import sys

    from modalrec.data.interaction import InteractionData
    from tests.train.helpers import CLI, write_config

    parts = tmp_path / "parts"
    write_partitioned(InteractionData.load(toy_dir), parts, 3)
    cfg_path = write_config(tmp_path / "c.yaml", parts, train={"epochs": 3, "batch_size": 128,
                                                                "checkpoint_every": 7})
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(CLI + ["train", str(cfg_path), "--out", str(single)], check=True, env=env, capture_output=True)
    assert len(json.loads((single / "data" / "task.json").read_text())["shards"]["train"]) == 4
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                               str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                               str(port), "-m", "modalrec.cli", "train", str(cfg_path), "--out", str(ddp)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((ddp / "metrics.json").read_text())
    assert json.loads((ddp / "manifest.json").read_text())["world_size"] == 2
    assert a["samples"] == b["samples"]
    assert abs(a["valid"]["auc"]["mean"] - b["valid"]["auc"]["mean"]) < 0.005
    r = subprocess.run(CLI + ["evaluate", str(single)], check=True, env=env, capture_output=True, text=True)
    assert json.loads(r.stdout)["test"]["auc"]["mean"] == a["test"]["auc"]["mean"]
