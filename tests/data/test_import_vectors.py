"""Vector content is held as one (rows, dim) float32 matrix while importing (issue 22: 6.56M 128-d vectors were
one numpy array per row, 4 GB more than the vectors): the same content table as before, in small chunks or large,
with absent rows, skipped bad rows and vectors of another length reported by row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modalrec.data.errors import DataError
from modalrec.data.import_build import vector_column
from modalrec.data.importer import import_dataset

SPEC = """\
name: vec
events:
  - {file: clicks.csv, user: uid, item: sku, time: ts}
content:
  - {name: wide, entity: item, kind: vector, file: wide.csv, id: sku, columns: "e_*"}
  - {name: listed, entity: item, kind: vector, file: listed.parquet, id: sku, column: vec}
"""
N = 60


def _write(root, bad_wide: bool = False, short_list: bool = False):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(N, 3)).astype(np.float32)
    (root / "clicks.csv").write_text("uid,sku,ts\n" + "".join(f"u{i % 4},i{i},{1700000000 + i}\n" for i in range(N)))
    lines = ["sku,e_1,e_2,e_10"]
    for i in range(N):
        if i == 7:
            lines.append(f"i{i},,,")  # an absent row: no vector for i7
        elif bad_wide and i == 23:
            lines.append(f"i{i},{vecs[i, 0]},oops,{vecs[i, 2]}")
        else:
            lines.append(f"i{i}," + ",".join(repr(float(v)) for v in vecs[i]))
    (root / "wide.csv").write_text("\n".join(lines) + "\n")
    listed = [None if i == 11 else ([1.0, 2.0] if short_list and i == 40 else vecs[i].tolist()) for i in range(N)]
    pq.write_table(pa.table({"sku": [f"i{i}" for i in range(N)], "vec": listed}), root / "listed.parquet",
                   row_group_size=7)
    (root / "spec.yaml").write_text(SPEC)
    return vecs


@pytest.mark.parametrize("block", [64, 1 << 20])
def test_vectors_in_chunks_equal_the_files(tmp_path, block):
    vecs = _write(tmp_path)
    data = import_dataset(tmp_path / "spec.yaml", block_size=block)
    for name, absent in (("wide", 7), ("listed", 11)):
        t = data.content[name]
        ids = t["entity_id"].to_pylist()
        want = [f"i{i}" for i in range(N) if i != absent]
        assert ids == want
        got = np.array(t["vector"].to_pylist(), dtype=np.float32)
        np.testing.assert_array_equal(got, vecs[[i for i in range(N) if i != absent]])
        assert t.schema.field("vector").type == pa.list_(pa.float32())
    assert {m.name: m.dim for m in data.spec.modalities} == {"wide": 3, "listed": 3}


def test_bad_cell_is_skipped_and_named(tmp_path):
    vecs = _write(tmp_path, bad_wide=True)
    with pytest.raises(DataError) as err:
        import_dataset(tmp_path / "spec.yaml", block_size=64)
    (p,) = [p for p in err.value.problems if p.column == "e_2"]
    assert p.row == 24 and p.file.endswith("wide.csv")  # 1-based data row of i23
    data, rejected = import_dataset(tmp_path / "spec.yaml", skip_bad_rows=True, block_size=64)
    assert "i23" not in data.content["wide"]["entity_id"].to_pylist()
    assert len(data.content["wide"]) == N - 2
    np.testing.assert_array_equal(np.array(data.content["wide"]["vector"][20].as_py(), np.float32), vecs[21])  # i21: after i7 left out
    assert [r.row for r in rejected if r.file.endswith("wide.csv")] == [24]


def test_a_vector_of_another_length_is_named(tmp_path):
    _write(tmp_path, short_list=True)
    with pytest.raises(DataError) as err:
        import_dataset(tmp_path / "spec.yaml", block_size=64)
    (p,) = [p for p in err.value.problems if p.file.endswith("listed.parquet")]
    assert (p.row, p.expected, p.found) == (41, "a vector of length 3", "length 2")


def test_vector_column_chunks_rows_without_copying():
    mat = np.arange(30, dtype=np.float32).reshape(10, 3)
    col = vector_column(mat, rows_per_chunk=4)
    assert [len(c) for c in col.chunks] == [4, 4, 2]
    assert col.to_pylist() == mat.tolist()
    flat = col.chunks[1].values.to_numpy()
    assert np.shares_memory(flat, mat)
