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

from .test_tasks import make_data

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
    # under DDP every rank takes its contiguous share of the same global batches, whatever the world size
    for world in (2, 3):
        ranks = [list(batch_indices(150, 16, True, 5, 1, rank=r, world=world, bounds=bounds)) for r in range(world)]
        assert len({len(r) for r in ranks}) == 1
        for k, whole in enumerate(batches):
            assert np.array_equal(np.concatenate([r[k] for r in ranks]), whole)
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
