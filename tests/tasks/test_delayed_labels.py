"""Delayed labels (`task.label_from`): a gift joined to its watch within a window, per user, with the windows still
open at the end of the events dropped (held as the split `open`) or labelled with what arrived."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from modalrec.config import TaskConfig, load_config
from modalrec.data.errors import DataError
from modalrec.data.interaction import DatasetSpec, FeatureSpec, InteractionData
from modalrec.tasks import CTRTask

W = 1800  # the window (seconds)

# (user, item, time, channel, expected label of the watch; None for gifts and the open watches)
LOG = [
    ("u1", "A", 1000, "watch", 1),     # gift of A 600 s later: inside
    ("u1", "A", 1600, "gift", None),
    ("u1", "B", 2000, "watch", 0),     # gift of B 1801 s later: just outside
    ("u1", "B", 3801, "gift", None),
    ("u1", "C", 4000, "watch", 1),     # gift of C exactly 1800 s later: the window's closed end
    ("u1", "C", 5800, "gift", None),
    ("u1", "D", 6000, "watch", 0),     # gift of D at the watch's own time: not after it
    ("u1", "D", 6000, "gift", None),
    ("u1", "E", 6100, "watch", 0),     # a gift of another item of the same streamer (F), 100 s later
    ("u1", "F", 6200, "gift", None),
    ("u2", "A", 1200, "watch", 0),     # u1's gift of A (1600) is not u2's
    ("u2", "G", 7000, "watch", 0),     # closes at 8800 <= end: a closed negative
    ("u2", "H", 8500, "watch", "open"),     # window open at the end (10000), no gift yet
    ("u2", "I", 9000, "watch", "open+1"),   # window open, but its gift already came
    ("u2", "I", 9100, "gift", None),
    ("u2", "J", 10000, "like", None),  # the last event: the end of the data
]


def _data() -> InteractionData:
    users, items, times, channels, _ = zip(*LOG)
    events = pa.table({"user_id": list(users), "item_id": list(items), "time": pa.array(times, pa.int64()),
                       "channel": list(channels)})  # no label column at all: label_from does not read it
    names = sorted(set(items))
    streamer = {"E": "s1", "F": "s1"}
    items_t = pa.table({"item_id": names, "streamer_id": [streamer.get(i, f"s_{i}") for i in names]})
    spec = DatasetSpec(name="gifts", channels=["watch", "gift", "like"],
                       item_features=[FeatureSpec(name="streamer_id", kind="categorical")])
    return InteractionData(spec, events, items_t).validate()


def _labels(task) -> dict[tuple, tuple[str, float]]:
    """(user, item, time) -> (split, label) of every sample, open ones included."""
    out = {}
    for name, s in task.splits.items():
        users = task.log_users.take(np.asarray(s.users)).to_pylist()
        for u, i, t, y in zip(users, s.items.tolist(), s.times.tolist(), s.labels.tolist()):
            out[(u, task.item_vocab.id_of(int(i)), t)] = (name, y)
    return out


def _cfg(**label_from) -> TaskConfig:
    return TaskConfig(kind="ctr", sample_channels=["watch"], history_channels=["watch", "gift"],
                      label_from={"channel": "gift", "window_s": W, **label_from},
                      split={"method": "global_time", "valid": 0.0, "test": 0.0})


def test_labels_at_the_window_edges_and_the_open_ones_dropped():
    task = CTRTask(_data(), _cfg())
    got = _labels(task)
    for u, i, t, ch, want in LOG:
        if ch != "watch":
            continue
        split, y = got[(u, i, t)]
        if isinstance(want, str):  # open at the end: not a sample, held apart (with what arrived so far)
            assert split == "open" and y == float(want.endswith("+1")), (u, i, t)
        else:
            assert split == "train" and y == want, (u, i, t, y)
    assert len(task.splits["open"]) == 2
    assert task.label_summary["open"] == 2 and task.label_summary["end"] == 10000
    assert task.label_summary["samples"] == 7 and task.label_summary["positive"] == 2
    # the open samples are predicted, never scored; train/valid/test hold none of them
    assert task.evaluate(None, "open", 16) == ({}, {})


def test_open_windows_as_negatives_and_an_explicit_end():
    got = _labels(CTRTask(_data(), _cfg(open_window="negative")))
    assert got[("u2", "H", 8500)] == ("train", 0.0)  # nothing arrived: a negative
    assert got[("u2", "I", 9000)] == ("train", 1.0)  # its gift came before the end
    assert "open" not in {s for s, _ in got.values()}
    # a refresh's cut-off at 8000: the gift of I (9100) is not known yet, G's window (7000 + 1800) is open
    task = CTRTask(_data(), _cfg(end=8000))
    got = _labels(task)
    assert got[("u2", "G", 7000)][0] == "open" and got[("u2", "I", 9000)] == ("open", 0.0)
    assert task.label_summary["open"] == 3 and task.label_summary["end"] == 8000


def test_match_on_an_item_feature():
    """A gift naming the streamer's other item labels the watch when the match is the streamer."""
    got = _labels(CTRTask(_data(), _cfg(match="streamer_id")))
    assert got[("u1", "E", 6100)] == ("train", 1.0)
    assert got[("u1", "A", 1000)] == ("train", 1.0) and got[("u1", "B", 2000)] == ("train", 0.0)
    with pytest.raises(DataError, match="room_id"):
        CTRTask(_data(), _cfg(match="room_id"))


def test_the_joined_gift_is_history_of_later_samples_only():
    task = CTRTask(_data(), _cfg())
    s = task.splits["train"]
    _, mask, pos = task.history.window(s.users, s.cut, 50)
    users = task.log_users.take(np.asarray(s.users)).to_pylist()
    for r in range(len(s)):
        times = task.history.times[pos[r][mask[r]]]
        assert (times < s.times[r]).all()  # strictly before the sample: never its own (later) gift
    # u1's watch of B (2000) reads the gift of A (1600) that labelled the watch of A (1000); that watch does not
    row = {(u, task.item_vocab.id_of(int(i)), t): r for r, (u, i, t) in enumerate(zip(users, s.items.tolist(),
                                                                                        s.times.tolist()))}
    gift_a = (task.item_vocab.lookup(["A"])[0], 1600)

    def hist(key):
        r = row[key]
        return set(zip(task.history.items[pos[r][mask[r]]].tolist(), task.history.times[pos[r][mask[r]]].tolist()))

    assert gift_a not in hist(("u1", "A", 1000)) and gift_a in hist(("u1", "B", 2000))


def test_config_refuses_what_label_from_cannot_mean():
    with pytest.raises(ValueError, match="only the ctr task"):
        TaskConfig(kind="topk", label_from={"channel": "gift", "window_s": 60})
    with pytest.raises(ValueError, match="history_positive_only"):
        TaskConfig(kind="ctr", history_positive_only=True, label_from={"channel": "gift", "window_s": 60})
    with pytest.raises(ValueError, match="label_threshold"):
        TaskConfig(kind="ctr", label_threshold=1, label_from={"channel": "gift", "window_s": 60})
    with pytest.raises(DataError, match="window_s"):
        load_config(None, ["task.label_from.channel=gift", "task.label_from.window_s=0"])


def test_simulated_world_joined_labels_equal_the_simulator_label():
    """On the simulated platform a gift comes 2 to 15 s after its watch (same segment, one watch per user and
    segment): joined with a generous window the labels are the simulator's own, every one of them."""
    from modalrec.datasets import load_dataset

    data = load_dataset("livestream", preset="tiny")
    cfg = {"kind": "ctr", "sample_channels": ["watch"], "history_channels": ["watch", "gift"],
           "split": {"method": "global_time", "valid": 0.1, "test": 0.2}}
    given = CTRTask(data, TaskConfig(**cfg))
    joined = CTRTask(data, TaskConfig(**cfg, label_from={"channel": "gift", "window_s": W,
                                                          "open_window": "negative"}))
    a, b = _labels(given), _labels(joined)
    assert a.keys() == b.keys() and len(a) > 1000
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, differ[:5]
    assert sum(y for _, y in b.values()) == joined.label_summary["positive"] > 10
    # dropping the open windows: the watches of the last 30 minutes are held apart, the rest unchanged
    dropped = CTRTask(data, TaskConfig(**cfg, label_from={"channel": "gift", "window_s": W}))
    c = _labels(dropped)
    end = dropped.label_summary["end"]
    assert all((split == "open") == (t + W > end) for (_, _, t), (split, _) in c.items())
    assert all(a[k][1] == y for k, (_, y) in c.items())
    assert 0 < len(dropped.splits["open"]) == dropped.label_summary["open"]


@pytest.mark.parametrize("method", ["per_user_time", "global_time"])
def test_partitioned_with_a_partition_whose_every_window_is_open(tmp_path, method):
    """x5 hashes alone into one of two partitions and watches only at the end: that partition has no closed sample;
    the partitioned preparation still equals the in-memory one (labels, splits, open samples, the summary)."""
    from modalrec.data.partitioned import partition_of, write_partitioned
    from tests.helpers import split_samples

    data = _data()
    assert partition_of(pa.array(["u1", "u2", "x5"]), 2).tolist() == [1, 1, 0]
    data.events = pa.concat_tables([data.events, pa.table({
        "user_id": ["x5"], "item_id": ["A"], "time": pa.array([9990], pa.int64()), "channel": ["watch"]})])
    cfg = TaskConfig(kind="ctr", sample_channels=["watch"], history_channels=["watch", "gift"],
                     label_from={"channel": "gift", "window_s": W}, split={"method": method, "valid": 0.1, "test": 0.2})
    mem = CTRTask(data, cfg)
    disk = CTRTask(write_partitioned(data, tmp_path / "parts", 2), cfg, out=tmp_path / "run" / "data")
    assert mem.label_summary == disk.label_summary and disk.label_summary["open"] == 3
    for split in ("train", "valid", "test", "open"):
        assert split_samples(mem, split) == split_samples(disk, split), split
