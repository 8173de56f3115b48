"""KuaiLive loader on a fixture in the release layout (tests/fixtures/kuailive: a few dozen rows)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from modalrec.data.errors import DataError
from modalrec.datasets import kuailive

FIXTURE = Path(__file__).parents[1] / "fixtures" / "kuailive"
T0 = 1746374400000  # the fixture's time origin, in ms


@pytest.fixture(scope="module")
def data():
    return kuailive.load(FIXTURE)


@pytest.fixture
def copy(tmp_path):
    dst = tmp_path / "KuaiLive"
    shutil.copytree(FIXTURE, dst)
    return dst


def edit(folder: Path, name: str, old: str, new: str) -> None:
    f = folder / name
    text = f.read_text()
    assert old in text, (name, old)
    f.write_text(text.replace(old, new, 1))


def events_by_id(data) -> dict[str, dict]:
    return {r["event_id"]: r for r in data.events.to_pylist()}


def test_loads_and_validates_with_channels_counts_and_spec(data):
    assert data.problems() == []
    assert data.spec.channels == ["impression", "click", "comment", "like", "gift"]
    counts = dict(zip(*np.unique(data.events["channel"].to_numpy(zero_copy_only=False), return_counts=True)))
    assert counts == {"click": 12, "comment": 4, "like": 5, "gift": 7, "impression": 6}
    assert [f.name for f in data.spec.item_features] == ["streamer_id", "category", "live_type"]
    assert "age" in [f.name for f in data.spec.user_features]
    assert "reg_timestamp" not in [f.name for f in data.spec.user_features]  # dates are not categories
    (m,) = data.spec.modalities
    assert (m.name, m.kind, m.entity, m.dim) == ("title_emb", "vector", "item", 8)
    assert data.spec.event_columns == ["event_id", "time_ms", "label", "price", "duration", "clicked"]
    ids = data.events["event_id"].to_pylist()
    assert len(set(ids)) == len(ids) == 34
    ms = data.events["time_ms"].to_numpy()
    assert (np.diff(ms) >= 0).all()
    np.testing.assert_array_equal(data.events["time"].to_numpy(), ms // 1000)


def test_click_labels_come_from_the_gifts_that_follow_them(data):
    ev = events_by_id(data)
    gifted = {"click:1": 10.0, "click:3": 8.0, "click:5": 1.0, "click:8": 20.0}
    for i in range(1, 13):
        row = ev[f"click:{i}"]
        assert row["label"] == (1.0 if f"click:{i}" in gifted else 0.0), i
        assert row["price"] == gifted.get(f"click:{i}", 0.0), i
        assert row["clicked"] == 1.0
    assert ev["click:3"]["duration"] == 120.0  # watch_live_time 120000 ms
    assert ev["gift:1"]["label"] == 1.0 and ev["gift:1"]["price"] == 10.0 and ev["gift:1"]["clicked"] is None
    assert ev["negative:1"]["clicked"] == 0.0 and ev["negative:1"]["label"] is None
    assert ev["like:1"]["label"] is None and ev["comment:1"]["price"] is None
    assert "2 gift(s) without an earlier click" in data.spec.description


def test_attribution_rules():
    # clicks: user 1 room 10 at t=100 and t=200; user 1 room 11 at t=50; user 2 room 10 at t=100
    cu, cl, ct = np.array([1, 1, 1, 2]), np.array([10, 10, 11, 10]), np.array([100, 200, 50, 100])
    gu = np.array([1, 1, 1, 1, 2, 3])
    gl = np.array([10, 10, 10, 11, 10, 10])
    gt = np.array([150, 200, 99, 60, 100, 500])
    got = kuailive.attribute_gifts(cu, cl, ct, gu, gl, gt)
    # 150 -> the click at 100; 200 -> the click at the same ms; 99 -> before any click of that room;
    # room 11 -> its own click; user 2 at the click's ms; user 3 never clicked
    assert got.tolist() == [0, 1, -1, 2, 3, -1]
    assert kuailive.attribute_gifts(cu, cl, ct, gu[:0], gl[:0], gt[:0]).tolist() == []
    assert kuailive.attribute_gifts(cu[:0], cl[:0], ct[:0], gu, gl, gt).tolist() == [-1] * 6


def test_rooms_users_and_titles(data):
    items = {r["item_id"]: r for r in data.items.to_pylist()}
    assert set(items) == {"7001", "7002", "7003", "7004", "7005", "7006"}
    r = items["7001"]  # live across midnight: two rows of room.csv merged
    assert (r["start_time"], r["end_time"]) == ((T0 - 3_600_000) // 1000, (T0 + 90_000_000) // 1000)
    assert (r["streamer_id"], r["category"], r["p_date"], r["live_name_id"]) == ("9001", "chat", 20250505, 0)
    assert items["7006"]["in_room_file"] is False and items["7006"]["streamer_id"] == "9003"
    assert items["7006"]["category"] is None
    users = {u["user_id"]: u for u in data.users.to_pylist()}
    assert users["107"]["age"] is None and users["101"]["age"] == "18-23"
    emb = np.load(FIXTURE / "title_embeddings.npy")
    t = data.content["title_emb"]
    vec = dict(zip(t["entity_id"].to_pylist(), t["vector"].to_pylist()))
    assert set(vec) == {"7001", "7002", "7003", "7004"}  # 7005 has no title id, 7006 no room row
    np.testing.assert_allclose(vec["7004"], emb[0])
    np.testing.assert_allclose(vec["7003"], emb[2])
    assert "1 room(s) without a title embedding" in data.spec.description
    assert "1 user(s) absent from user.csv" in data.spec.description


def test_options_impressions_titles_streamer_side(copy):
    (copy / "negative.csv").unlink()
    (copy / "title_embeddings.npy").unlink()
    with pytest.raises(DataError) as e:
        kuailive.load(copy)
    msg = str(e.value)
    assert "negative.csv: expected a file of the KuaiLive release, found no such file" in msg
    assert "title_embeddings.npy: expected the title embeddings, one of title_embeddings.npy" in msg
    d = kuailive.load(copy, impressions=False, titles=False, streamer_side=True)
    assert "impression" not in d.spec.channels and d.spec.modalities == [] and d.content == {}
    items = {r["item_id"]: r for r in d.items.to_pylist()}
    assert items["7002"]["streamer_live_operation_tag"] == "Shopping"
    assert items["7006"]["streamer_live_operation_tag"] == "Gaming"  # joined through the click's streamer
    assert "streamer_live_operation_tag" in [f.name for f in d.spec.item_features]
    assert "streamer_reg_timestamp" not in [f.name for f in d.spec.item_features]
    assert d.items["item_id"].to_pylist()[:5] == ["7001", "7002", "7003", "7004", "7005"]


def test_npz_title_file_with_ids(copy):
    emb = np.load(copy / "title_embeddings.npy")
    (copy / "title_embeddings.npy").unlink()
    np.savez(copy / "title_embeddings.pca128.npz", vectors=emb[::-1].copy(), ids=np.array([2, 1, 0]))
    d = kuailive.load(copy)
    t = d.content["title_emb"]
    vec = dict(zip(t["entity_id"].to_pylist(), t["vector"].to_pylist()))
    np.testing.assert_allclose(vec["7003"], emb[2])
    np.testing.assert_allclose(vec["7001"], emb[0])
    np.savez(copy / "title_embeddings.pca128.npz", a=emb, b=emb)
    with pytest.raises(DataError, match="one 2-D float array"):
        kuailive.load(copy)


@pytest.mark.parametrize("name,old,new,message", [
    ("gift.csv", "streamer_id,timestamp,gift_price", "streamer_id,timestamp,price",
     "gift.csv, column 'gift_price': expected a column named 'gift_price', found no such column (has "),
    ("click.csv", "\n102,7002,9002,", "\nabc,7002,9002,",
     "click.csv, row 2, column 'user_id': expected an integer, found 'abc'"),
    ("click.csv", "1746374401000,60000", "1746374401000,-5",
     "click.csv, row 1, column 'watch_live_time': expected a watch time in milliseconds >= 0, found -5.0"),
    ("gift.csv", "1746375000000,5", "1746375000000,",
     "gift.csv, row 2, column 'gift_price': expected a number, found an empty cell"),
    ("like.csv", "103,7003,9003,1746375101000", "103,7003,1746375101000",
     "like.csv, row 3: expected 4 fields as in the header, found 3 field(s)"),
    ("comment.csv", "104,7002,9002,1746375201000", "104,7002,9002,0",
     "comment.csv, row 2, column 'timestamp': expected a positive Unix time in milliseconds, found 0"),
    ("room.csv", "20250506,7001,9001,", "20250506,7001,9003,",
     "room.csv, row 5, column 'streamer_id': expected one streamer per live_id"),
    ("room.csv", "shop,1", "shop,7",
     ("room.csv, row 2, column 'live_name_id': expected a title id with a row in title_embeddings.npy (3 rows), "
     "found 7")),
    ("room.csv", "game,2", "game,two",
     "room.csv, row 3, column 'live_name_id': expected an integer (or an empty cell: no title), found 'two'"),
    ("user.csv", "\n102,", "\n101,", ("user.csv, row 2, column 'user_id': expected one row per user_id, "
     "found a repeat of 101")),
])
def test_malformed_files_are_rejected_with_file_row_column(copy, name, old, new, message):
    edit(copy, name, old, new)
    with pytest.raises(DataError) as e:
        kuailive.load(copy)
    assert message in str(e.value)
    assert str(copy / name) in str(e.value)


def test_interaction_streamer_must_match_its_room(copy):
    edit(copy, "click.csv", "\n102,7001,9001,", "\n102,7001,9002,")  # click row 7
    with pytest.raises(DataError) as e:
        kuailive.load(copy)
    assert ("click.csv, row 7, column 'streamer_id': expected the streamer of live_id 7001 in room.csv "
            "(9001, row 1)") in str(e.value)
    dropped = kuailive.load(copy, streamer_mismatch="drop")
    assert "click:7" not in set(dropped.events["event_id"].to_pylist())
    assert "1 click.csv rows dropped" in dropped.spec.description
    kept = kuailive.load(copy, streamer_mismatch="room")
    assert "click:7" in set(kept.events["event_id"].to_pylist())
    assert kept.num_events == 34 and dropped.num_events == 33
    assert pc.sum(kept.events["label"]).as_py() == pc.sum(dropped.events["label"]).as_py() == 11  # 4 clicks, 7 gifts


def test_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="expected the folder of the unzipped KuaiLive release"):
        kuailive.load(tmp_path / "nope")
