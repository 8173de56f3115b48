"""`SampleIds`: a run's sample ids are read from RUN/data/ids/ when a split's are asked for, never kept."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modalrec.tasks.store import SampleIds


def _table(n):
    return pa.table({"user_id": [f"u{i}" for i in range(n)], "item_id": [f"i{i}" for i in range(n)],
                     "time": pa.array(range(n), pa.int64())})


def test_reads_each_split_from_its_file_when_asked(tmp_path):
    pq.write_table(_table(3), tmp_path / "train.parquet")
    pq.write_table(_table(2), tmp_path / "test.parquet")
    ids = SampleIds(tmp_path, ["train", "valid", "test"])  # valid has no file: not a key
    assert list(ids) == ["train", "test"] and len(ids) == 2
    assert "valid" not in ids and "train" in ids
    assert ids["test"].equals(_table(2))
    assert ids._tables == {}  # read, not kept
    with pytest.raises(KeyError):
        ids["valid"]
    pq.write_table(_table(5), tmp_path / "train.parquet")  # the file is the truth at each read
    assert ids["train"].num_rows == 5


def test_tables_set_in_memory_and_pop_without_reading(tmp_path):
    pq.write_table(_table(3), tmp_path / "test.parquet")
    ids = SampleIds(tmp_path, ["test"], {"train": _table(4)})
    assert ids["train"].num_rows == 4 and set(ids) == {"train", "test"}
    (tmp_path / "test.parquet").unlink()  # pop must not read it
    assert ids.pop("test") is None and "test" not in ids
    assert ids.pop("test", "gone") == "gone"
    assert ids.pop("train").num_rows == 4 and len(ids) == 0
    ids["valid"] = _table(1)
    del ids["valid"]
    with pytest.raises(KeyError):
        del ids["valid"]
