"""List-valued (`ModalitySpec.multi`) content: validation, save/load, and errors that name file/row/column."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml

from modalrec.data.errors import DataError
from modalrec.data.interaction import DatasetSpec, InteractionData, ModalitySpec

ITEMS = ["i1", "i2", "i3"]


def _data(content: dict[str, pa.Table], modalities: list[ModalitySpec]) -> InteractionData:
    events = pa.table({"user_id": ["u1", "u1", "u2"], "item_id": ITEMS,
                       "time": pa.array([1, 2, 3], pa.int64())})
    items = pa.table({"item_id": ITEMS})
    spec = DatasetSpec(name="multi", modalities=modalities)
    return InteractionData(spec, events, items, None, content)


def _vectors(rows: list[list[list[float]]], inner: pa.DataType | None = None) -> pa.Array:
    return pa.array(rows, pa.list_(inner or pa.list_(pa.float32())))


def _good() -> InteractionData:
    frames = pa.table({"entity_id": ["i1", "i3"], "path": pa.array([["/m/a.png", "/m/b.png"], ["/m/c.png"]],
                                                                    pa.list_(pa.string()))})
    comments = pa.table({"entity_id": ["i2"], "text": pa.array([["nice", "gift rush!", "hello"]],
                                                               pa.list_(pa.string()))})
    emb = pa.table({"entity_id": ["i1", "i2"], "vector": _vectors([[[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]],
                                                                   [[0.5, 0.5, 0.5]]])})
    speech = pa.table({"entity_id": ["i1"], "path": ["/m/s.wav"]})
    mods = [ModalitySpec(name="frames", kind="image", multi=True),
            ModalitySpec(name="comments", kind="text", multi=True),
            ModalitySpec(name="emb", kind="vector", dim=3, multi=True),
            ModalitySpec(name="speech", kind="audio")]
    return _data({"frames": frames, "comments": comments, "emb": emb, "speech": speech}, mods)


def test_multi_modalities_validate_and_round_trip(tmp_path):
    data = _good().validate()
    data.save(tmp_path / "ds")
    back = InteractionData.load(tmp_path / "ds")
    assert [m.multi for m in back.spec.modalities] == [True, True, True, False]
    for name, table in data.content.items():
        assert back.content[name].schema == table.schema, name  # list child names restored after Parquet
        assert back.content[name].to_pylist() == table.to_pylist(), name
    assert back.fingerprint() == data.fingerprint()
    saved = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    assert saved["modalities"][0]["multi"] is True


def test_multi_vector_with_fixed_size_inner_vectors_and_inferred_dim():
    emb = pa.table({"entity_id": ["i1"], "vector": _vectors([[[1.0, 2.0], [3.0, 4.0]]],
                                                            pa.list_(pa.float32(), 2))})
    _data({"emb": emb}, [ModalitySpec(name="emb", kind="vector", multi=True)]).validate()


def test_dataset_yaml_without_multi_still_loads(tmp_path):
    _good().save(tmp_path / "ds")
    spec_file = tmp_path / "ds" / "dataset.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["modalities"] = [m for m in spec["modalities"] if m["name"] == "speech"]
    del spec["modalities"][0]["multi"]
    spec_file.write_text(yaml.safe_dump(spec))
    for name in ("frames", "comments", "emb"):
        (tmp_path / "ds" / "content" / f"{name}.parquet").unlink()
    back = InteractionData.load(tmp_path / "ds")
    assert back.spec.modality("speech").multi is False


def _problems(data: InteractionData) -> list[str]:
    with pytest.raises(DataError) as e:
        data.validate("ds")
    return [str(p) for p in e.value.problems]


@pytest.mark.parametrize("rows, row, found", [
    ([[[0.1, 0.2, 0.3]], [[0.1, 0.2, 0.3], [0.1, 0.2]]], 2, "length 2 (vector 2 of the row)"),  # ragged
    ([[[0.1, 0.2, 0.3, 0.4]], [[0.1, 0.2, 0.3]]], 1, "length 4 (vector 1 of the row)"),  # not dim 3
    ([[[0.1, 0.2, 0.3]], [[0.1, float("nan"), 0.3]]], 2, "NaN or infinity"),
    ([[[0.1, 0.2, 0.3]], []], 2, "an empty list"),
    ([[[0.1, 0.2, 0.3]], None], 2, "an empty value"),
    ([[[0.1, 0.2, 0.3]], [[1.0, 2.0, 3.0], None]], 2, "an empty value"),  # a null vector inside the list
])
def test_malformed_multi_vectors_name_file_row_column(rows, row, found):
    emb = pa.table({"entity_id": ["i1", "i2"], "vector": _vectors(rows)})
    probs = _problems(_data({"emb": emb}, [ModalitySpec(name="emb", kind="vector", dim=3, multi=True)]))
    assert len(probs) == 1
    assert probs[0].startswith(f"ds/content/emb.parquet, row {row}, column 'vector': expected"), probs
    assert found in probs[0]


@pytest.mark.parametrize("values, row, found", [
    ([["a.png"], []], 2, "an empty list"),
    ([["a.png"], None], 2, "an empty value"),
    ([["a.png", ""], ["b.png"]], 1, "empty or null value"),
    ([["a.png"], ["b.png", None]], 2, "empty or null value"),
])
def test_malformed_multi_paths_name_file_row_column(values, row, found):
    frames = pa.table({"entity_id": ["i1", "i2"], "path": pa.array(values, pa.list_(pa.string()))})
    probs = _problems(_data({"frames": frames}, [ModalitySpec(name="frames", kind="image", multi=True)]))
    assert len(probs) == 1
    assert probs[0].startswith(f"ds/content/frames.parquet, row {row}, column 'path': expected"), probs
    assert found in probs[0]


@pytest.mark.parametrize("kind, column, values, multi, expected", [
    ("text", "text", pa.array(["one", "two"]), True, "a list of strings per row"),  # multi, but one string
    ("text", "text", pa.array([[1], [2]], pa.list_(pa.int64())), True, "a list of strings per row"),
    ("image", "path", pa.array([["a"], ["b"]], pa.list_(pa.string())), False, "declare 'multi: true'"),
    ("vector", "vector", pa.array([[0.1, 0.2], [0.3, 0.4]], pa.list_(pa.float32())), True,
     "a list of vectors of floats per row"),
    ("vector", "vector", _vectors([[[0.1, 0.2]], [[0.3, 0.4]]]), False, "declare 'multi: true'"),
    ("vector", "vector", pa.array([[["a"]], [["b"]]], pa.list_(pa.list_(pa.string()))), True,
     "vectors of numbers"),
])
def test_wrong_value_type_is_rejected_with_column(kind, column, values, multi, expected):
    table = pa.table({"entity_id": ["i1", "i2"], column: values})
    probs = _problems(_data({"m": table}, [ModalitySpec(name="m", kind=kind, multi=multi)]))
    assert len(probs) == 1
    assert probs[0].startswith(f"ds/content/m.parquet, column '{column}': expected"), probs
    assert expected in probs[0]


def test_single_valued_null_is_rejected_with_row():
    speech = pa.table({"entity_id": ["i1", "i2"], "path": pa.array(["/m/s.wav", None], pa.string())})
    probs = _problems(_data({"speech": speech}, [ModalitySpec(name="speech", kind="audio")]))
    assert probs == [("ds/content/speech.parquet, row 2, column 'path': expected a value (drop the row when "
                      "the modality is missing), found an empty value (1 row(s), first shown)")]


def test_tokens_cannot_be_multi(tmp_path):
    with pytest.raises(ValueError, match="cannot be multi"):
        ModalitySpec(name="t", kind="tokens", multi=True)
    _good().save(tmp_path / "ds")
    spec_file = tmp_path / "ds" / "dataset.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["modalities"][0].update(kind="tokens")
    spec_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(DataError, match=r"dataset\.yaml, column 'modalities\.0': .*cannot be multi"):
        InteractionData.load(tmp_path / "ds")


def test_malformed_saved_dataset_names_the_file_on_load(tmp_path):
    data = _good()
    data.content["comments"] = pa.table({"entity_id": ["i1", "i2"], "text": pa.array([["ok"], []],
                                                                                      pa.list_(pa.string()))})
    data.save(tmp_path / "ds")  # saving does not validate: loading must catch it
    with pytest.raises(DataError) as e:
        InteractionData.load(tmp_path / "ds")
    assert [str(p) for p in e.value.problems] == [
        (f"{tmp_path / 'ds'}/content/comments.parquet, row 2, column 'text': expected a non-empty list "
         "(drop the row when the entity has no value), found an empty value or an empty list (1 row(s), "
         "first shown)")]
