"""MicroLens_1M_x1 reader: the release layout, its validation, the conversion, the submission file."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modalrec.data.errors import DataError
from modalrec.data.interaction import InteractionData
from modalrec.datasets import microlens

N_ITEMS = 12  # real items 1..12; item 0 is the padding row


def _items(n: int = N_ITEMS) -> pa.Table:
    rng = np.random.default_rng(0)
    ids = list(range(n + 1))
    tags = [[0] * 5] + [[(i % 4) + 1, (i % 3) + 5, 0, 0, 0] for i in range(1, n + 1)]
    emb = [[0.0] * 128] + rng.normal(size=(n, 128)).astype(np.float32).tolist()
    return pa.table({"item_id": pa.array(ids, pa.int64()),
                     "item_tags": pa.array(tags, pa.list_(pa.int64())),
                     "item_emb_d128": pa.array(emb, pa.list_(pa.float32()))})


def _split(n: int, seed: int, label: str = "yes") -> pa.Table:
    rng = np.random.default_rng(seed)
    cols = {
        "user_id": pa.array(rng.integers(1, 6, n), pa.int64()),
        "item_seq": pa.array([rng.integers(1, N_ITEMS + 1, rng.integers(0, 4)).tolist() + [0, 0]
                              for _ in range(n)], pa.list_(pa.int64())),  # padded with the 0 item
        "item_id": pa.array(rng.integers(1, N_ITEMS + 1, n), pa.int64()),
        "likes_level": pa.array(rng.integers(0, 11, n), pa.int64()),
        "views_level": pa.array(rng.integers(0, 11, n), pa.int64()),
    }
    if label == "yes":
        cols["label"] = pa.array(rng.integers(0, 2, n), pa.int64())
    elif label == "null":
        cols["label"] = pa.nulls(n, pa.int64())
    return pa.table(cols)


def _write(root, train=None, valid=None, test=None, items=None):
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(train if train is not None else _split(20, 1), root / "train.parquet")
    pq.write_table(valid if valid is not None else _split(6, 2), root / "valid.parquet")
    pq.write_table(test if test is not None else _split(5, 3, label="none"), root / "test.parquet")
    pq.write_table(items if items is not None else _items(), root / "item_info.parquet")
    return root


def _problems(err: DataError) -> list[tuple[str, int | None, str | None]]:
    return [(p.file.rsplit("/", 1)[-1], p.row, p.column) for p in err.problems]


def test_load_and_convert(tmp_path):
    root = _write(tmp_path / "ml")
    ml = microlens.load(root)
    assert (ml.train.num_rows, ml.valid.num_rows, ml.test.num_rows, ml.items.num_rows) == (20, 6, 5, 13)

    data = ml.to_interaction_data()
    assert isinstance(data, InteractionData)
    ev = data.events
    assert ev.num_rows == 31
    assert set(ev["channel"].to_pylist()) == {"impression"}
    assert ev["split"].to_pylist() == ["train"] * 20 + ["valid"] * 6 + ["test"] * 5
    assert ev["time"].to_pylist() == list(range(31))  # synthetic: split order, then row order
    assert ev["row"].to_pylist() == list(range(20)) + list(range(6)) + list(range(5))
    labels = ev["label"].to_pylist()
    assert all(v in (0.0, 1.0) for v in labels[:26]) and labels[26:] == [None] * 5
    assert ev["likes_level"].to_pylist()[:20] == ml.train["likes_level"].to_pylist()
    assert ev["item_id"].to_pylist()[:20] == [str(i) for i in ml.train["item_id"].to_pylist()]

    assert data.items["item_id"].to_pylist() == [str(i) for i in range(1, N_ITEMS + 1)]  # no padding item
    assert data.items["tags"].to_pylist()[0] == ["2", "6"]  # tag 0 is padding
    assert [(f.name, f.kind) for f in data.spec.item_features] == [("tags", "multi_categorical")]
    m = data.spec.modality("mm_emb")
    assert (m.kind, m.dim, m.entity) == ("vector", 128, "item")
    emb = data.content["mm_emb"]
    assert emb.num_rows == N_ITEMS
    want = ml.items["item_emb_d128"].to_pylist()[1]
    np.testing.assert_allclose(emb["vector"].to_pylist()[0], want, rtol=1e-6)
    assert data.spec.channels == ["impression"]
    assert {"likes_level", "views_level", "split"} <= set(data.spec.event_columns)
    assert data.problems() == []

    saved = InteractionData.load(data.save(tmp_path / "converted"))
    assert saved.fingerprint() == data.fingerprint()


def test_split_subset_and_histories(tmp_path):
    ml = microlens.load(_write(tmp_path / "ml", test=_split(5, 3, label="null")))
    data = ml.to_interaction_data(splits=("valid", "test"), item_seq=True)
    assert data.events["time"].to_pylist() == list(range(20, 31))  # time still counts the train rows
    seqs = data.events["item_seq"].to_pylist()
    assert seqs[0] == [str(i) for i in ml.valid["item_seq"].to_pylist()[0] if i != 0]
    with pytest.raises(ValueError, match="splits"):
        ml.to_interaction_data(splits=("dev",))


def test_missing_file_and_column(tmp_path):
    root = _write(tmp_path / "ml")
    (root / "valid.parquet").unlink()
    with pytest.raises(DataError) as e:
        microlens.load(root)
    assert _problems(e.value) == [("valid.parquet", None, None)]
    assert "no such file" in str(e.value)

    root = _write(tmp_path / "ml2", train=_split(20, 1).drop_columns(["views_level"]))
    with pytest.raises(DataError) as e:
        microlens.load(root)
    assert _problems(e.value) == [("train.parquet", None, "views_level")]

    root = _write(tmp_path / "ml3", valid=_split(6, 2, label="none"))  # only test may lack labels
    with pytest.raises(DataError) as e:
        microlens.load(root)
    assert _problems(e.value) == [("valid.parquet", None, "label")]


def test_wrong_list_lengths_name_the_row(tmp_path):
    items = _items()
    tags = items["item_tags"].to_pylist()
    tags[4] = [1, 2, 3]
    emb = items["item_emb_d128"].to_pylist()
    emb[7] = emb[7][:100]
    items = items.set_column(1, "item_tags", pa.array(tags, pa.list_(pa.int64())))
    items = items.set_column(2, "item_emb_d128", pa.array(emb, pa.list_(pa.float32())))
    with pytest.raises(DataError) as e:
        microlens.load(_write(tmp_path / "ml", items=items))
    assert _problems(e.value) == [("item_info.parquet", 5, "item_tags"),
                                  ("item_info.parquet", 8, "item_emb_d128")]
    assert "a list of 5 values" in str(e.value) and "length 3" in str(e.value)


def test_unknown_items_name_file_row_column(tmp_path):
    valid = _split(6, 2)
    ids = valid["item_id"].to_pylist()
    ids[3] = 999
    valid = valid.set_column(2, "item_id", pa.array(ids, pa.int64()))
    train = _split(20, 1)
    seqs = train["item_seq"].to_pylist()
    seqs[9] = [1, 555]
    train = train.set_column(1, "item_seq", pa.array(seqs, pa.list_(pa.int64())))
    with pytest.raises(DataError) as e:
        microlens.load(_write(tmp_path / "ml", train=train, valid=valid))
    assert _problems(e.value) == [("train.parquet", 10, "item_seq"), ("valid.parquet", 4, "item_id")]
    assert "unknown id 999" in str(e.value) and "unknown id 555" in str(e.value)


def test_bad_labels_and_padding_target(tmp_path):
    train = _split(20, 1)
    lab = train["label"].to_pylist()
    lab[2] = 3
    train = train.set_column(5, "label", pa.array(lab, pa.int64()))
    test = _split(5, 3, label="none")
    ids = test["item_id"].to_pylist()
    ids[1] = 0
    test = test.set_column(2, "item_id", pa.array(ids, pa.int64()))
    with pytest.raises(DataError) as e:
        microlens.load(_write(tmp_path / "ml", train=train, test=test))
    assert _problems(e.value) == [("train.parquet", 3, "label"), ("test.parquet", 2, "item_id")]


def test_write_submission(tmp_path):
    out = microlens.write_submission([2, 0, 1], np.array([0.25, 0.1, 1.0], np.float32), tmp_path / "sub.csv",
                                     expected_rows=3)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Task2"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], [0.1, 1.0, 0.25], rtol=1e-7)
    assert not list(tmp_path.glob("*.tmp"))

    bad = [
        ({"ids": [0, 1], "probs": [0.5]}, "as many probabilities"),
        ({"ids": [0, 1], "probs": [0.5, float("nan")]}, "Task2"),
        ({"ids": [0, 1], "probs": [0.5, 1.5]}, "probability in \\[0, 1\\]"),
        ({"ids": [0, 0], "probs": [0.5, 0.5]}, "unique"),
        ({"ids": [0, 1], "probs": [0.5, 0.5], "expected_rows": 3}, "3 rows"),
        ({"ids": [0, 2], "probs": [0.5, 0.5], "expected_rows": 2}, "every row index"),
    ]
    for kwargs, msg in bad:
        with pytest.raises(DataError, match=msg):
            microlens.write_submission(path=tmp_path / "bad.csv", **kwargs)
    assert not (tmp_path / "bad.csv").exists()


def test_qin_config_end_to_end_train_and_submission(tmp_path):
    """configs/qin_microlens.yaml through `modalrec train` (release split: valid scored, test hidden) and
    `modalrec predict --format microlens` (a valid ID,Task2 file with one row per test.parquet row). The config
    reads likes_level / views_level as context features: the checkpoint holds one table per level."""
    from pathlib import Path

    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from modalrec.cli import app
    from modalrec.config import load_config

    config = Path(__file__).resolve().parents[2] / "configs" / "qin_microlens.yaml"
    assert load_config(config).task.context_features == ["likes_level", "views_level"]
    root = _write(tmp_path / "ml", train=_split(60, 1), valid=_split(20, 2), test=_split(9, 3, label="null"))
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(config), "--out", str(run), "--set", f"data.path={root}",
                              "--set", "train.epochs=1", "--set", "train.batch_size=16",
                              "--set", "train.progress=false", "--set", "model.params.embed_dim=8"])
    assert res.exit_code == 0, res.output
    import json

    m = json.loads((run / "metrics.json").read_text())
    assert m["samples"] == {"train": 60, "valid": 20, "test": 9}
    assert 0.0 <= m["valid"]["auc"]["mean"] <= 1.0 and m["test"] == {}
    weights = load_file(str(run / "checkpoints" / "seed_0" / "best.safetensors"))
    levels = sorted(set(_split(60, 1)["likes_level"].to_pylist()))
    assert tuple(weights["model.context.tables.likes_level.weight"].shape) == (len(levels) + 1, 8)
    assert "model.context.tables.views_level.weight" in weights
    sub = tmp_path / "submission.csv"
    res = runner.invoke(app, ["predict", str(run), "--format", "microlens", "--out", str(sub)])
    assert res.exit_code == 0, res.output
    lines = sub.read_text().splitlines()
    assert lines[0] == "ID,Task2" and [int(x.split(",")[0]) for x in lines[1:]] == list(range(9))
    assert all(0.0 <= float(x.split(",")[1]) <= 1.0 for x in lines[1:])
