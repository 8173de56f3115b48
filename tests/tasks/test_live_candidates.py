"""The live-candidate rule of the topk task (`task.live`): a held-out event ranks only the rooms live at its time
(start <= t < end), the held-out room always; and the rooms view of the simulated world it is meant for."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from modalrec.config import TaskConfig
from modalrec.data.errors import DataError
from modalrec.data.interaction import DatasetSpec, InteractionData
from modalrec.models import build_model
from modalrec.tasks import TopKTask

# item -> [start, end): i6 has no times (never live)
LIVE = {"i1": (0, 1000), "i2": (0, 5000), "i3": (2000, 3000), "i4": (2500, 6000), "i5": (4000, 6000), "i6": None}
EVENTS = [("u1", "i1", 100), ("u1", "i2", 500), ("u1", "i3", 2100), ("u1", "i4", 2600), ("u1", "i5", 4100),
          ("u2", "i2", 100), ("u2", "i1", 200), ("u2", "i6", 300), ("u2", "i3", 2200),
          ("u2", "i1", 2700)]  # u2's test room i1 stopped at 1000: not live at its own time, ranked all the same


def _data() -> InteractionData:
    users, items, times = zip(*EVENTS)
    events = pa.table({"user_id": list(users), "item_id": list(items), "time": pa.array(times, pa.int64()),
                       "channel": ["watch"] * len(EVENTS)})
    names = list(LIVE)
    items_t = pa.table({"item_id": names,
                        "start_time": pa.array([None if LIVE[i] is None else LIVE[i][0] for i in names], pa.int64()),
                        "end_time": pa.array([None if LIVE[i] is None else LIVE[i][1] for i in names], pa.float64())})
    return InteractionData(DatasetSpec(name="rooms", channels=["watch"]), events, items_t).validate()


def _cfg(**kw) -> TaskConfig:
    return TaskConfig(kind="topk", sample_channels=["watch"], live={"start": "start_time", "end": "end_time"}, **kw)


def _candidates(task, split: str) -> dict[str, set[str]]:
    """user -> the rooms ranked for the user's held-out event of `split`."""
    s = task.splits[split]
    ex = task.exclusion(s).numpy()
    users = task.log_users.take(np.asarray(s.users)).to_pylist()
    return {u: {task.item_vocab.id_of(i) for i in np.flatnonzero(~ex[r])} for r, u in enumerate(users)}


def test_only_live_rooms_are_ranked_the_held_out_one_always():
    task = TopKTask(_data(), _cfg(exclude_seen=False))
    assert _candidates(task, "test") == {"u1": {"i2", "i4", "i5"}, "u2": {"i2", "i3", "i4", "i1"}}
    assert _candidates(task, "valid") == {"u1": {"i2", "i3", "i4"}, "u2": {"i2", "i3"}}
    assert task.live_summary == {"valid": {"held_out": 2, "not_live": 0}, "test": {"held_out": 2, "not_live": 1}}
    # with exclude_seen the rooms met before go too (the held-out one stays)
    seen = TopKTask(_data(), _cfg(exclude_seen=True))
    assert _candidates(seen, "test") == {"u1": {"i5"}, "u2": {"i4", "i1"}}
    # without the rule every room is ranked (but padding)
    plain = TopKTask(_data(), TaskConfig(kind="topk", sample_channels=["watch"], exclude_seen=False))
    assert _candidates(plain, "test")["u1"] == set(LIVE) and plain.live_summary is None


def test_live_rule_survives_the_run_directory(tmp_path):
    task = TopKTask(_data(), _cfg(exclude_seen=False))
    task.save(tmp_path)
    back = TopKTask.load(tmp_path, _cfg(exclude_seen=False))
    assert np.array_equal(back.live_start, task.live_start) and np.array_equal(back.live_end, task.live_end)
    assert back.live_summary == task.live_summary
    assert _candidates(back, "test") == _candidates(task, "test")


def test_live_rule_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="only the topk task"):
        TaskConfig(kind="ctr", live={})
    with pytest.raises(DataError, match="opened_at"):
        TopKTask(_data(), TaskConfig(kind="topk", live={"start": "opened_at"}))
    data = _data()
    data.items = data.items.set_column(1, "start_time", pa.array(["a"] * len(LIVE)))
    with pytest.raises(DataError, match="numbers"):
        TopKTask(data, _cfg())


def test_rooms_view_of_the_simulated_world():
    """Items are rooms with their schedule, events name the room; every held-out room is live at its own time, and
    ranking only the live rooms can only raise a fixed scorer's recall."""
    from modalrec.datasets import load_dataset

    seg = load_dataset("livestream", preset="tiny")
    rooms = load_dataset("livestream", preset="tiny", items="rooms")
    assert {"start_time", "end_time", "streamer_id", "category"} <= set(rooms.items.column_names)
    assert set(rooms.items["item_id"].to_pylist()) == set(seg.items["room_id"].to_pylist())
    ev = rooms.events.to_pandas()
    watch = ev[ev.channel == "watch"]
    assert watch.segments.sum() == (seg.events["channel"].to_numpy(zero_copy_only=False) == "watch").sum()
    it = rooms.items.to_pandas().set_index("item_id")
    start, end = it.loc[ev.item_id, "start_time"].to_numpy(), it.loc[ev.item_id, "end_time"].to_numpy()
    assert ((start <= ev.time.to_numpy()) & (ev.time.to_numpy() < end)).all()  # every event inside its room
    assert (ev.groupby("channel").size()[["gift", "comment", "like"]]
            == seg.events.to_pandas().groupby("channel").size()[["gift", "comment", "like"]]).all()

    recall = {}
    for live in (None, {}):
        task = TopKTask(rooms, TaskConfig(kind="topk", sample_channels=["watch"], exclude_seen=False, live=live))
        if live is not None:
            assert task.live_summary["test"]["not_live"] == 0 and task.live_summary["test"]["held_out"] > 100
            ex = task.exclusion(task.splits["test"]).numpy()
            assert 1 < (~ex).sum(1).mean() < len(task.item_vocab) - 1  # a few live rooms, not all of them
        recall[live is not None] = task.evaluate(build_model("popularity", task.schema), "test", 256)[0]
    assert recall[True]["recall@10"] >= recall[False]["recall@10"]
    assert recall[True]["ndcg@10"] >= recall[False]["ndcg@10"]
    with pytest.raises(ValueError, match="segments"):
        load_dataset("livestream", preset="tiny", items="room")
