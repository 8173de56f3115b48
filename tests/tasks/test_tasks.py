"""Tasks: split protocols, the leakage guard, and the collate that joins side tables at batch time."""

from __future__ import annotations

import numpy as np
import pytest

from modalrec.config import TaskConfig
from modalrec.tasks import CTRTask, TopKTask
from tests.helpers import make_data


def _hist_times(task, split):
    s = task.splits[split]
    _, mask, pos = task.history.window(s.users, s.cut, task.cfg.max_history)
    return s, mask, task.history.times[pos]


@pytest.mark.parametrize("method", ["per_user_time", "global_time"])
def test_ctr_leakage_guard(method):
    data = make_data()
    task = CTRTask(data, TaskConfig(kind="ctr", sample_channels=["click"], max_history=20,
                                    split={"method": method, "valid": 0.1, "test": 0.2}))
    tr, va, te = (task.splits[k] for k in ("train", "valid", "test"))
    assert len(tr) + len(va) + len(te) == 1400 and len(te) > 0 and len(va) > 0
    for split in ("train", "valid", "test"):
        s, mask, ht = _hist_times(task, split)
        # no history event at or after the sample's own time, ties included
        assert (ht[mask] < np.repeat(s.times, mask.sum(1))).all()
    if method == "global_time":
        assert tr.times.max() < te.times.min() and va.times.max() < te.times.min()
    else:
        for u in np.unique(te.users):
            first_test = te.times[te.users == u].min()
            assert (tr.times[tr.users == u] < first_test).all()
            assert (va.times[va.users == u] < first_test).all()


def test_ctr_history_is_most_recent_and_chronological():
    data = make_data()
    task = CTRTask(data, TaskConfig(kind="ctr", sample_channels=["click"], max_history=5))
    s, mask, ht = _hist_times(task, "test")
    for r in range(len(s)):
        t = ht[r][mask[r]]
        assert (np.diff(t) >= 0).all()
        # exactly the events strictly before, capped at max_history
        u = s.users[r]
        before = (task.history.times[task.history.ptr[u]:task.history.ptr[u + 1]] < s.times[r]).sum()
        assert mask[r].sum() == min(before, 5)


def test_ctr_train_recent_trains_on_the_latest_share_only():
    data = make_data()
    split = {"method": "global_time", "valid": 0.1, "test": 0.2}
    full = CTRTask(data, TaskConfig(kind="ctr", sample_channels=["click"], max_history=20, split=split))
    recent = CTRTask(data, TaskConfig(kind="ctr", sample_channels=["click"], max_history=20, split=split,
                                      train_recent=0.3))
    tr, kept = full.splits["train"], recent.splits["train"]
    assert abs(len(kept) - 0.3 * len(tr)) <= 0.02 * len(tr)
    # exactly the latest samples of the period: none dropped is later than one kept
    assert kept.times.min() >= np.sort(tr.times)[len(tr) - len(kept) - 1]
    ids = recent.sample_ids["train"].to_pandas()  # the kept samples' raw ids, a subset of the full period's
    full_ids = set(map(tuple, full.sample_ids["train"].to_pandas().to_numpy().tolist()))
    assert len(ids) == len(kept) and all(tuple(r) in full_ids for r in ids.to_numpy().tolist())
    for name in ("valid", "test"):  # evaluation and the history the samples read are unchanged
        assert np.array_equal(recent.splits[name].items, full.splits[name].items)
        assert np.array_equal(recent.splits[name].cut, full.splits[name].cut)
    assert np.array_equal(recent.history.items, full.history.items)
    with pytest.raises(ValueError, match="train_recent"):
        TaskConfig(kind="topk", train_recent=0.5)


def test_collate_joins_side_tables_for_target_and_history():
    data = make_data()
    task = CTRTask(data, TaskConfig(kind="ctr", sample_channels=["click"], max_history=8))
    batch = next(task.batches("test", 16))
    side = task.collator.item_table
    assert batch.item_side["genres"].shape == (16, side.multi["genres"].shape[1])
    assert batch.hist_side["genres"].shape[:2] == batch.hist.shape
    # content vectors travel once per distinct item; positions index into that table
    assert batch.uniq_side["emb"].shape == (len(batch.uniq), 4) and "emb" not in batch.hist_side
    assert len(batch.uniq) == len(set(batch.uniq.tolist()))
    assert (batch.uniq[batch.hist_pos] == batch.hist).all() and (batch.uniq[batch.item_pos] == batch.item).all()
    assert (batch.hist_presence["emb"] == batch.uniq_presence["emb"][batch.hist_pos]).all()
    # presence mask follows the content table: vectors exist for every third item only
    ids = [task.item_vocab.id_of(int(i)) for i in batch.item]
    want = np.array([int(i[1:]) % 3 == 0 for i in ids])
    assert (batch.presence["emb"].numpy() == want).all()
    # padded history positions carry item 0 and are masked out
    assert (batch.hist[~batch.hist_mask] == 0).all()
    assert "text_words" in batch.item_side
    assert task.schema.item_dense == {"emb": 4}


def test_ctr_label_threshold_and_errors():
    data = make_data()
    from modalrec.data.errors import DataError

    with pytest.raises(DataError, match="label"):
        CTRTask(data, TaskConfig(kind="ctr", label_column="nope"))
    task = CTRTask(data, TaskConfig(kind="ctr", label_column="label", label_threshold=1.0))
    assert set(np.unique(task.splits["train"].labels)) <= {0.0, 1.0}


def test_topk_leave_last_out_guard_and_exclusion():
    data = make_data()
    task = TopKTask(data, TaskConfig(kind="topk", sample_channels=["click"], max_history=6, train_negatives=8))
    h = task.history
    te, va, tr = task.splits["test"], task.splits["valid"], task.splits["train"]
    assert len(te) == len(va) > 0
    for split in ("valid", "test"):
        s, mask, ht = _hist_times(task, split)
        assert (ht[mask] < np.repeat(s.times, mask.sum(1))).all()
    # every training target is strictly before that user's valid event
    batch = task.collate(tr, train=True)
    _, mask, pos = h.window(tr.users, tr.cut, 6)
    tgt_pos = pos + 1
    valid_time = dict(zip(va.users.tolist(), va.times.tolist()))
    for r in range(len(tr)):
        u = tr.users[r]
        if u in valid_time:
            assert (h.times[tgt_pos[r][mask[r]]] < valid_time[u]).all()
    assert batch.candidates.shape == (len(tr), 6, 9)
    assert (batch.candidates[..., 0] == batch.targets).all()
    # exclusion: items seen before the cut are excluded; the held-out item never is; padding always
    ex = task.exclusion(te)
    assert ex[:, 0].all()
    assert not ex[np.arange(len(te)), te.items].any()
    r = 0
    seen = set(h.items[h.ptr[te.users[r]]:h.ptr[te.users[r]] + te.cut[r]].tolist()) - {int(te.items[r])}
    assert set(np.flatnonzero(ex[r].numpy()).tolist()) - {0} == seen


def test_topk_full_softmax_training_batch():
    import torch

    from modalrec.models import build_model

    data = make_data()
    task = TopKTask(data, TaskConfig(kind="topk", sample_channels=["click"], max_history=6, train_negatives=0))
    batch = next(task.batches("train", 16, shuffle=True))
    assert batch.candidates.dim() == 1 and len(batch.candidates) == task.schema.n_items
    model = build_model("sasrec", task.schema, {"hidden_dim": 8, "n_heads": 1, "n_blocks": 1})
    out = model(batch)
    assert out.shape == (*batch.hist.shape, task.schema.n_items)
    loss = task.loss(out, batch)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()


def test_din_mini_batch_aware_penalty_touches_only_batch_rows():
    import torch

    from modalrec.models import build_model

    data = make_data()
    task = CTRTask(data, TaskConfig(kind="ctr", sample_channels=["click"], max_history=8))
    batch = next(task.batches("train", 8))
    model = build_model("din", task.schema, {"embed_dim": 4, "mba_reg": 0.1})
    model.train()
    pen = model.penalty(batch)
    assert pen is not None and pen.item() > 0
    pen.backward()
    grad = model.items.id.weight.grad
    used = set(batch.uniq.tolist()) - {0}
    touched = set(torch.nonzero(grad.abs().sum(1)).flatten().tolist())
    assert touched == used
    model.eval()
    assert model.penalty(batch) is None
    assert build_model("din", task.schema, {"embed_dim": 4}).penalty(batch) is None
