"""A batch whose rows share one sequence (a service request: one user's history against C candidates) is
collated once and expanded (stride-0 rows); every model reads the same values as from B separate copies,
and the serving attention fast path gives the activation unit's own numbers."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from modalrec.config import TaskConfig
from modalrec.models import build_model
from modalrec.nn.serving import SharedHistoryAttention, with_serving_fast_paths
from modalrec.tasks import prepare_task
from tests.helpers import make_data


@pytest.fixture(scope="module")
def task():
    return prepare_task(make_data(n_users=20, n_items=50, n_events=2000),
                        TaskConfig(kind="ctr", sample_channels=["click"], max_history=12))


def _shared_batch(task, c: int = 9):
    h = task.history
    u = int(np.argmax(np.diff(h.ptr)))
    cut = int(np.diff(h.ptr)[u]) - 1
    items = np.arange(1, c + 1, dtype=np.int64)
    args = (np.full(c, u), items, np.full(c, cut), np.full(c, 7_000))
    return task.collator(*args), args


def test_shared_rows_are_one_collated_row_expanded(task):
    batch, (users, items, cut, times) = _shared_batch(task)
    assert batch.hist.stride(0) == 0 and batch.hist_pos.stride(0) == 0 and batch.hist_mask.stride(0) == 0
    assert batch.hist_mask[0].sum() == 12  # a full window of real events
    for r in range(len(items)):  # one row at a time: nothing shared, the reference values
        one = task.collator(users[r:r + 1], items[r:r + 1], cut[r:r + 1], times[r:r + 1])
        assert torch.equal(batch.hist[r], one.hist[0]) and torch.equal(batch.hist_mask[r], one.hist_mask[0])
        assert torch.equal(batch.hist_time[r], one.hist_time[0])
        for k in one.hist_side:
            assert torch.equal(batch.hist_side[k][r], one.hist_side[k][0])
        assert torch.equal(batch.uniq[batch.hist_pos[r]], one.uniq[one.hist_pos[0]])
        assert torch.equal(batch.uniq[batch.item_pos[r]], one.uniq[one.item_pos[0]])
    # rows that differ in user, cut or time are collated row by row as before
    mixed = task.collator(users, items, cut - np.arange(len(items)) % 2, times)
    assert mixed.hist.stride(0) != 0


@pytest.mark.parametrize("name", ["din", "dcnv2", "sim", "tin", "sdim", "qin"])
def test_models_score_shared_batches_like_separate_rows(task, name):
    torch.manual_seed(0)
    model = build_model(name, task.schema, {"embed_dim": 8}).eval()
    batch, (users, items, cut, times) = _shared_batch(task)
    with torch.no_grad():
        got = model(batch)
        want = torch.cat([model(task.collator(users[r:r + 1], items[r:r + 1], cut[r:r + 1], times[r:r + 1]))
                          for r in range(len(items))])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_serving_fast_path_equals_the_activation_unit(task):
    torch.manual_seed(0)
    model = build_model("din", task.schema, {"embed_dim": 8}).eval()
    batch, _ = _shared_batch(task, c=30)
    with torch.no_grad():
        ref = model(batch)
        assert with_serving_fast_paths(model) == 1 and isinstance(model.attention, SharedHistoryAttention)
        torch.testing.assert_close(model(batch), ref, rtol=0, atol=1e-5)
        # cache blocks of 1, 5 and all positions (12 real ones; the last block of 5 is partial): same scores
        for block in (1, 5 * 30 * 64, 1 << 30):
            model.attention.block = block
            torch.testing.assert_close(model(batch), ref, rtol=0, atol=1e-5)
        # a batch whose rows hold different histories takes the unit's own forward: same numbers as before
        users, items = np.arange(1, 11), np.arange(1, 11)
        rows = task.collator(users, items, np.full(10, 3), np.full(10, 7_000))
        assert rows.hist.stride(0) != 0
        target, hist = model.items.encode(rows)
        torch.testing.assert_close(model.attention(target, hist, rows.hist_mask),
                                   model.attention.att(target, hist, rows.hist_mask), rtol=0, atol=0)


def test_fast_path_follows_weight_changes_and_leaves_training_alone(task):
    torch.manual_seed(0)
    model = build_model("din", task.schema, {"embed_dim": 8}).eval()
    batch, _ = _shared_batch(task, c=30)
    with_serving_fast_paths(model)
    with torch.no_grad():
        model(batch)  # caches the first layer's combined weights
        first = model.attention.att.mlp.net[0]
        first.weight.mul_(1.5)  # in place: the cache must notice
        first.bias.add_(0.25)
        fast = model(batch)
        model.attention.ok = False  # the unit's own forward for the reference
        ref = model(batch)
        model.attention.ok = True
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    # with gradients on (training, gradient checks) the wrapper is the unit itself, bit for bit and with a graph
    out = model(batch)
    assert out.requires_grad
    model.attention.ok = False
    torch.testing.assert_close(out, model(batch), rtol=0, atol=0)


def test_bf16_fast_path_is_close_to_fp32_and_keeps_the_weights(task):
    torch.manual_seed(0)
    model = build_model("din", task.schema, {"embed_dim": 8}).eval()
    batch, _ = _shared_batch(task, c=30)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(batch)
        assert with_serving_fast_paths(model, precision="bf16") == 1
        low = model(batch)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    diff = (low - ref).abs().max().item()
    assert 0 < diff < 2e-2  # bf16 was used (not bitwise fp32), and it stays close
    # the unit's own weights are untouched fp32; the bf16 copy is the wrapper's
    after = {k.replace("attention.att.", "attention."): v for k, v in model.state_dict().items()
             if not k.startswith("attention.rest_lowp.")}
    assert after.keys() == before.keys()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert all(p.dtype == torch.bfloat16 for p in model.attention.rest_lowp.parameters())
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        SharedHistoryAttention(model.attention.att, precision="fp16")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_tuning_takes():
    from modalrec.serve.app import keep_freed_memory

    assert keep_freed_memory() is True  # glibc accepted both settings (the service logs a warning otherwise)
