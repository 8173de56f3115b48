"""The partitioned data path: events split by a stable hash of the user, prepared one partition at a time into
memory-mapped arrays, give exactly the samples, histories and pipeline of the in-memory path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from modalrec.config import TaskConfig
from modalrec.data.partitioned import PartitionedData, partition_of, write_partitioned
from modalrec.tasks import CTRTask
from tests.helpers import make_data, split_samples


def _histories(task) -> dict[str, list[tuple]]:
    h = task.history
    out = {}
    for u in range(1, h.n_users):
        lo, hi = int(h.ptr[u]), int(h.ptr[u + 1])
        tags = [0] * (hi - lo) if h.tags is None else np.asarray(h.tags[lo:hi]).tolist()
        out[task.log_users.id_of(u)] = list(zip([task.item_vocab.id_of(int(i)) for i in h.items[lo:hi]],
                                                np.asarray(h.times[lo:hi]).tolist(), tags))
    return out


def test_partition_of_is_stable_and_spreads_users():
    ids = pa.array([f"u{i}" for i in range(1000)])
    a, b = partition_of(ids, 8), partition_of(ids.slice(500), 8)
    assert np.array_equal(a[500:], b)  # a user's partition does not depend on the others
    assert np.bincount(a, minlength=8).min() > 60  # about 125 each
    assert (partition_of(ids, 1) == 0).all()


# delayed labels: a like of an item of the same brand within 300 s labels a click; the clicks of the last 300 s of
# the data (one end for every partition) are held apart as the split `open`
LABEL_FROM = {"channel": "like", "window_s": 300, "match": "brand"}


@pytest.mark.parametrize("method,label_from", [("per_user_time", None), ("global_time", None),
                                               ("per_user_time", LABEL_FROM), ("global_time", LABEL_FROM)])
def test_partitioned_preparation_equals_in_memory(tmp_path, method, label_from):
    data = make_data(n_users=50, n_items=60, n_events=4000, n_likes=800 if label_from else 100)
    data.events = data.events.append_column("level", pa.array([str(i % 5) for i in range(data.events.num_rows)]))
    parts = write_partitioned(data, tmp_path / "parts", 4)
    assert isinstance(parts, PartitionedData) and parts.n_partitions == 4 and parts.num_events == 4000
    cfg = {"kind": "ctr", "sample_channels": ["click"], "history_channels": ["click", "like"], "max_history": 6,
               "history_channel_tags": True, "context_features": ["level"],
               "split": {"method": method, "valid": 0.1, "test": 0.2}, "label_from": label_from}
    mem = CTRTask(data, TaskConfig(**cfg))
    disk = CTRTask(parts, TaskConfig(**cfg), out=tmp_path / "run" / "data")
    assert mem.item_vocab == disk.item_vocab and mem.user_vocab == disk.user_vocab
    for group in ("categorical", "multi", "dense", "presence"):
        for name, arr in getattr(mem.pipeline.item_table, group).items():
            assert np.array_equal(arr, getattr(disk.pipeline.item_table, group)[name])
    for name, v in mem.pipeline.context.items():
        assert v == disk.pipeline.context[name]
    assert np.array_equal(mem.pipeline.stats["item_counts"], disk.pipeline.stats["item_counts"])
    assert np.array_equal(mem.pipeline.prior_items(), disk.pipeline.prior_items())
    assert list(mem.splits) == list(disk.splits) == ["train", "valid", "test"] + (["open"] if label_from else [])
    if label_from:
        assert mem.label_summary == disk.label_summary and mem.label_summary["open"] == len(disk.splits["open"]) > 0
        assert 0 < mem.label_summary["positive"] < mem.label_summary["samples"]
    for split in mem.splits:
        assert split_samples(mem, split) == split_samples(disk, split), split
        assert isinstance(disk.splits[split].items, np.memmap)  # read from RUN/data, not held in memory
        bounds = disk.shard_bounds(split)
        assert len(bounds) == 5 and bounds[-1] == len(disk.splits[split])
    assert _histories(mem) == _histories(disk)
    # the batches read the same tensors: a sample collated from either task
    s_mem, s_disk = mem.splits["test"], disk.splits["test"]
    keys = list(zip(mem.log_users.take(s_mem.users).to_pylist(), s_mem.items.tolist(), s_mem.times.tolist()))
    once = {k for k in keys if keys.count(k) == 1}  # a user may meet an item twice in one (coarse) second
    key = {k: r for r, k in enumerate(keys) if k in once}
    checked = 0
    for r in range(len(s_disk)):
        k = (disk.log_users.id_of(int(s_disk.users[r])), int(s_disk.items[r]), int(s_disk.times[r]))
        if k not in key or r % 7:
            continue
        m = key[k]
        checked += 1
        a = mem.collate(s_mem.take(np.array([m])), train=False)
        b = disk.collate(s_disk.take(np.array([r])), train=False)
        assert a.hist.tolist() == b.hist.tolist() and a.hist_tag.tolist() == b.hist_tag.tolist()
        assert a.user.tolist() == b.user.tolist() and a.context["level"].tolist() == b.context["level"].tolist()
    assert checked > 20
