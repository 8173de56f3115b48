"""`import_dataset`: a YAML mapping of CSV/Parquet files -> InteractionData, with exact error locations."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modalrec.data.errors import DataError
from modalrec.data.importer import Rejected, import_dataset, load_import_spec, validate_path, write_rejected
from modalrec.data.interaction import InteractionData
from tests.data.helpers import CLICKS, ITEMS, SPEC, rows, write_fixture


def problems_of(spec_path: Path):
    with pytest.raises(DataError) as err:
        import_dataset(spec_path)
    return err.value.problems


def test_complete_example(tmp_path):
    data = import_dataset(write_fixture(tmp_path))
    ev = data.events
    assert ev.num_rows == 6
    assert ev["user_id"].to_pylist() == ["u1", "u1", "u2", "u2", "u1", "u3"]
    assert ev["channel"].to_pylist() == ["click"] * 4 + ["purchase", "cart"]
    assert data.spec.channels == ["click", "purchase", "cart"]
    assert ev.schema.field("time").type == pa.int64()
    assert ev["time"].to_pylist()[0] == 1700000000
    labels = ev["label"].to_pylist()
    assert labels[:4] == [1.0, 0.0, 1.0, 0.0] and labels[4:] == [None, None]
    value = ev["value"].to_pylist()
    assert value[0] == 9.5 and math.isnan(value[1])
    assert ev["device"].to_pylist()[:4] == ["web", "app", "web", ""]
    assert data.spec.event_columns == ["device"]

    items = data.items
    assert items["item_id"].to_pylist() == ["a", "b", "c"]
    assert items["genres"].to_pylist() == [["rock", "pop"], [], ["jazz"]]
    assert items["brand"].to_pylist() == ["acme", "bolt", None]
    assert items["weight"].to_pylist()[:2] == [1.5, 2.0] and math.isnan(items["weight"][2].as_py())
    assert items["title"].to_pylist()[0] == "Guitar, acoustic"
    kinds = {f.name: f.kind for f in data.spec.item_features}
    assert kinds == {"brand": "categorical", "genres": "multi_categorical", "weight": "numeric"}
    assert data.users["age_group"].to_pylist() == ["18-25", None, "40+"]

    # item text columns -> one "text" modality; an item without any text has no row (missing modality)
    text = dict(zip(data.content["text"]["entity_id"].to_pylist(), data.content["text"]["text"].to_pylist()))
    assert text == {"a": "Guitar, acoustic\nsix strings", "b": "Drum kit"}
    desc = data.content["description"]
    assert desc["entity_id"].to_pylist() == ["a", "c"]  # b's empty cell = missing modality
    assert desc["text"][0].as_py() == "A guitar.\nWith strings."  # quoted newline inside a cell
    emb = data.content["emb"]
    assert data.spec.modality("emb").dim == 3 and emb["entity_id"].to_pylist() == ["a", "c"]
    np.testing.assert_allclose(emb["vector"][0].as_py(), [0.1, 0.2, 0.3], rtol=1e-6)
    stats = data.content["stats"]  # columns in natural order: s_1, s_2, s_10
    assert stats["entity_id"].to_pylist() == ["a", "c"]
    assert stats["vector"][0].as_py() == [1.0, 2.0, 10.0]
    assert data.presence("stats", ["a", "b", "c"]).tolist() == [True, False, True]
    assert data.problems() == []


def test_iso_times_and_string_vectors(tmp_path):
    spec = write_fixture(tmp_path)
    (tmp_path / "clicks.csv").write_text(
        "uid,sku,ts,clicked,price,device\nu1,a,2024-01-01T00:00:00Z,1,1,web\nu2,b,2024-01-01 00:00:10,0,1,web\n")
    (tmp_path / "emb.csv").write_text('sku,vec\na,"[1, 2]"\nb,3 4\n')
    spec.write_text(SPEC.replace("file: emb.parquet", "file: emb.csv"))
    data = import_dataset(spec)
    assert data.events["time"].to_pylist()[:2] == [1704067200, 1704067210]
    assert data.content["emb"]["vector"].to_pylist() == [[1.0, 2.0], [3.0, 4.0]]


def test_missing_file_and_column_are_named(tmp_path):
    spec = write_fixture(tmp_path)
    (tmp_path / "users.csv").unlink()
    (tmp_path / "clicks.csv").write_text(CLICKS.replace("clicked", "click_flag"))
    probs = problems_of(spec)
    missing_file = [p for p in probs if p.file.endswith("users.csv")]
    assert missing_file and missing_file[0].found == "no such file"
    col = [p for p in probs if p.file.endswith("clicks.csv")]
    assert len(col) == 1 and col[0].column == "clicked" and col[0].row is None
    assert "clicks.csv" in str(DataError(probs)) and "'clicked'" in str(DataError(probs))


def test_bad_time_names_row_column_and_value(tmp_path):
    spec = write_fixture(tmp_path, clicks=CLICKS.replace("1700000100", "yesterday"))
    probs = problems_of(spec)
    assert len(probs) == 1
    p = probs[0]
    assert p.file.endswith("clicks.csv") and p.row == 2 and p.column == "ts"
    assert "'yesterday'" in p.found
    assert "row 2" in str(p) and "column 'ts'" in str(p)


def test_every_bad_value_is_reported(tmp_path):
    clicks = CLICKS.replace("9.5", "cheap").replace(",0,,app", ",maybe,,app").replace("u2,c", ",c")
    probs = problems_of(write_fixture(tmp_path, clicks=clicks))
    where = sorted((p.row, p.column) for p in probs)
    assert where == [(1, "price"), (2, "clicked"), (4, "uid")]
    assert any(p.found == "'cheap'" for p in probs)


def test_event_with_unknown_item(tmp_path):
    spec = write_fixture(tmp_path, clicks=CLICKS.replace("u2,a,", "u2,zzz,"))
    probs = problems_of(spec)
    assert len(probs) == 1
    p = probs[0]
    assert p.file.endswith("clicks.csv") and p.row == 3 and p.column == "sku" and "'zzz'" in p.found
    assert "items.csv" in p.expected


def test_vector_of_wrong_length_and_duplicate_ids(tmp_path):
    spec = write_fixture(tmp_path, items=ITEMS + "a,dup,,,,\n")
    pq.write_table(pa.table({"sku": ["a", "b", "c"], "vec": [[0.1, 0.2], [0.3], [0.5, 0.6]]}),
                   tmp_path / "emb.parquet")
    probs = problems_of(spec)
    by_file = {(Path(p.file).name, p.row, p.column) for p in probs}
    assert by_file == {("items.csv", 4, "sku"), ("emb.parquet", 2, "vec")}
    assert any(p.expected == "a vector of length 2" and p.found == "length 1" for p in probs)


def test_skip_bad_rows_keeps_good_rows_and_reports_bad_ones(tmp_path, capsys):
    clicks = CLICKS.replace("1700000100", "soon").replace("u2,c,", "u2,nope,")
    items = ITEMS.replace("c,,jazz,,,", "c,,jazz,heavy,,")  # item c rejected -> the purchase of c goes too
    spec = write_fixture(tmp_path, clicks=clicks, items=items)
    with pytest.raises(DataError):
        import_dataset(spec)
    data, rejected = import_dataset(spec, skip_bad_rows=True)
    assert all(isinstance(r, Rejected) for r in rejected)
    got = {(Path(r.file).name, r.row) for r in rejected}
    assert got == {("clicks.csv", 2), ("clicks.csv", 4), ("items.csv", 3), ("purchases.parquet", 1),
                   ("desc.csv", 3), ("emb.parquet", 2), ("stats.csv", 3)}
    assert data.events.num_rows == 6 - 3
    assert data.events["time"].to_pylist() == [1700000000, 1700000200, 1700000500]
    assert data.items["item_id"].to_pylist() == ["a", "b"]
    assert "c" not in data.content["emb"]["entity_id"].to_pylist()
    reasons = {(Path(r.file).name, r.row): r.reason for r in rejected}
    assert "'soon'" in reasons[("clicks.csv", 2)] and "column 'ts'" in reasons[("clicks.csv", 2)]
    assert "rejected" in reasons[("purchases.parquet", 1)]
    out = write_rejected(rejected, tmp_path / "rejected.csv")
    assert out.read_text().splitlines()[0] == "file,row,reason" and len(out.read_text().splitlines()) == 8
    assert data.problems() == []


def test_skip_bad_rows_still_raises_on_missing_column(tmp_path):
    spec = write_fixture(tmp_path, clicks=CLICKS.replace("price", "cost"))
    with pytest.raises(DataError, match="price"):
        import_dataset(spec, skip_bad_rows=True)


def test_round_trip_save_load(tmp_path):
    data = import_dataset(write_fixture(tmp_path))
    out = data.save(tmp_path / "saved")
    back = InteractionData.load(out)
    assert back.spec == data.spec
    for a, b in [(back.events, data.events), (back.items, data.items), (back.users, data.users)]:
        assert a.schema.names == b.schema.names and rows(a) == rows(b)
    assert back.events.schema.field("time").type == pa.int64()
    assert set(back.content) == set(data.content)
    for name, table in data.content.items():
        assert rows(back.content[name]) == rows(table)
    assert back.fingerprint() == data.fingerprint()
    assert validate_path(out) == []


def test_validate_path_on_broken_saved_dir(tmp_path):
    data = import_dataset(write_fixture(tmp_path))
    out = data.save(tmp_path / "saved")
    events = pq.read_table(out / "events.parquet")
    events = events.set_column(events.column_names.index("item_id"), "item_id",
                               pa.array(["a", "ghost", "a", "c", "c", "b"]))
    pq.write_table(events, out / "events.parquet")
    (out / "content" / "emb.parquet").unlink()
    (out / "content" / "stats.parquet").write_bytes(b"not parquet")
    probs = validate_path(out)
    assert any(p.file.endswith("stats.parquet") and "Parquet" in p.expected for p in probs)
    (out / "content" / "stats.parquet").unlink()
    probs = validate_path(out)
    text = "\n".join(map(str, probs))
    assert "'ghost'" in text and "events.parquet" in text
    assert any(p.file.endswith("content/emb.parquet") and p.found == "no such file" for p in probs)
    assert any(p.file.endswith("content/stats.parquet") for p in probs)


def test_validate_path_on_import_spec(tmp_path):
    spec = write_fixture(tmp_path)
    assert validate_path(spec) == []
    (tmp_path / "clicks.csv").write_text(CLICKS.replace("1700000000", "x"))
    assert [(p.row, p.column) for p in validate_path(spec)] == [(1, "ts")]
    assert validate_path(tmp_path / "nothing_here")[0].found == "no such directory"


def test_spec_errors_are_readable(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        name: x
        events:
          - {file: a.csv, user: u, item: i, time: t, channel: c, channel_column: k, colour: red}
        """))
    with pytest.raises(DataError) as err:
        load_import_spec(bad)
    msg = str(err.value)
    assert "bad.yaml" in msg and "unknown key 'colour'" in msg
    bad.write_text(bad.read_text().replace(", colour: red", ""))
    with pytest.raises(DataError, match="channel_column"):
        load_import_spec(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(DataError, match="valid YAML"):
        load_import_spec(bad)
