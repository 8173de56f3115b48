"""The KuaiLive-M3-shaped world written day by day (modalrec.sim.kuailive_scale): counts, order, labels, and
that `modalrec data import` reads what it writes."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from modalrec.data.importer import import_dataset
from modalrec.sim.kuailive_scale import M3_USERS, m3_shape, write_world


def test_m3_shape_keeps_the_release_proportions():
    s = m3_shape(146_000_000)
    assert (s["users"], s["rooms"]) == (M3_USERS, 6_560_000)
    assert m3_shape(1_460_000)["rooms"] == 65_600  # rooms scale with the interactions, users do not


def test_world_files_order_labels_and_import(tmp_path):
    days = 5
    counts = write_world(tmp_path / "w", 20_000, users=400, rooms=300, streamers=40, days=days, dim=8, seed=3)
    ev = pq.read_table(tmp_path / "w/events.parquet").to_pandas()
    rooms = pq.read_table(tmp_path / "w/rooms.parquet").to_pandas()
    titles = pq.read_table(tmp_path / "w/titles.parquet")
    assert len(ev) == counts["interactions"] == counts["clicks"] + counts["gifts"]
    assert abs(counts["interactions"] - 20_000) < 400
    assert 0.01 < counts["gifts"] / counts["clicks"] < 0.08
    # one day at a time: no day holds more than a fair share (plus the day's randomness)
    assert counts["largest_day_rows"] < 1.3 * counts["interactions"] / days
    assert len(rooms) == titles.num_rows == counts["rooms"] == 300
    assert titles.column_names == ["live_id"] + [f"emb_{j}" for j in range(8)]
    assert np.all(np.diff(ev["time"].to_numpy()) >= 0)  # time order across the days
    assert set(ev["live_id"]) <= set(rooms["live_id"]) and ev["user_id"].nunique() <= 400
    # a click happens while its room is live
    r = rooms.set_index("live_id").loc[ev["live_id"]]
    clicks = (ev["channel"] == "click").to_numpy()
    t = ev["time"].to_numpy()
    assert np.all((t[clicks] >= r["start"].to_numpy()[clicks]) & (t[clicks] < r["end"].to_numpy()[clicks]))
    # every gift follows a click of the same user and room within 60 s, and that click is labelled 1
    gifts = ev[~clicks]
    assert (gifts["label"] == 1).all()
    pos = ev[clicks & (ev["label"] == 1).to_numpy()]
    assert len(pos) == len(gifts)
    key = lambda d: sorted(zip(d["user_id"], d["live_id"], strict=True))
    assert key(pos) == key(gifts)
    # the planted signal: gifted clicks' titles differ from the others' (hotness direction) beyond noise
    emb = titles.to_pandas().set_index("live_id").loc[ev["live_id"][clicks]].to_numpy()
    lab = ev["label"].to_numpy()[clicks] == 1
    gap = np.linalg.norm(emb[lab].mean(0) - emb[~lab].mean(0))
    assert gap > 5 * np.sqrt(emb.var(0).sum() / lab.sum())
    data = import_dataset(tmp_path / "w/spec.yaml")
    assert data.events.num_rows == len(ev)
    assert {m.name for m in data.spec.modalities} == {"title_emb"}


def test_world_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="gift_rate"):
        write_world(tmp_path, 1_000, users=10, rooms=30, streamers=5, days=3, gift_rate=1.5)
    with pytest.raises(ValueError, match="rooms must be at least 3"):
        write_world(tmp_path, 1_000, users=10, rooms=2, streamers=5, days=3)
