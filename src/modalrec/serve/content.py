"""Raw content of items that appear after export (a live segment's frames, speech, comments) -> the vectors the
model reads, encoded online exactly as the run encoded its training data.

The run records how its raw content became vectors (`PipelineSettings.content`: the content encoding config and
every modality of the data, the encoded ones naming encoder and version). `ContentEncoder.from_pipeline` rebuilds
that plan, and refuses a run without content encoding or an installed encoder whose name or version differs from
the recorded one. `encode` writes each image / audio value to a temporary file and runs the per-kind functions
`encode_content` runs offline (same decoding, preprocessing, utterance and sentence cuts, value order), then lays
the vectors out as `NewItem.vectors` / `NewItem.tokens` take them: a token modality's first T vectors, a dense
one's vector (a multi-valued one's mean, as `pipeline.side` takes it). Any modality may be missing; a value that
cannot be decoded is a `ContentError` naming the modality and the value's index.

No vector cache by default (live content rarely repeats, and a cache written segment by segment grows without
bound); `cache_dir` turns the offline caches on. `EncoderPool` (`serve.encoder_pool`, importable from here too)
runs the encoders in worker processes that build them once, so no request waits for a network: `submit` returns at
once, `on_done` runs here when the vectors exist.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, NamedTuple

import numpy as np
from pydantic import Field, StringConstraints

from ..data.interaction import ModalitySpec
from ..encoders import content as offline
from ..encoders.audio import AudioEncoder
from ..encoders.image import ImageEncoder
from ..encoders.text import TextEncoder
from .encoder_pool import EncoderPool, exit_with_parent  # noqa: F401 - re-exported (it imports this module lazily)
from .schemas import Id, Name, NewItem, _Strict

log = logging.getLogger("modalrec.serve")

RawSegment = Mapping[str, Sequence[bytes | str]]  # raw modality -> its values: bytes (image, audio) or texts
MAX_RAW_BYTES = 2 << 20  # one image or audio value, decoded
MAX_RAW_TEXT = 20_000  # characters of one text value
MAX_RAW_VALUES = 64  # values of one modality
_RECORDED = re.compile(r"(\S+) \(([^()]*)\)")  # "name (version)" in a recorded modality description


class ContentError(ValueError):
    """Raw content that cannot be encoded: names the modality and, for one value, its index (`loc`)."""

    def __init__(self, modality: str, index: int | None, message: str):
        self.modality, self.index, self.message = modality, index, message
        super().__init__(f"raw modality '{modality}'{'' if index is None else f' value {index}'}: {message}")

    def __reduce__(self):  # raised in a worker process, re-raised here
        return type(self), (self.modality, self.index, self.message)

    @property
    def loc(self) -> tuple:
        return ("raw", self.modality) if self.index is None else ("raw", self.modality, self.index)


class ContentSettingsError(RuntimeError):
    """The run's content encoding cannot be reproduced here (none recorded, or other encoders installed)."""


class _Target(NamedTuple):
    """A vector modality the run made from a raw one, and where a `NewItem` takes it."""

    name: str
    view: str  # image, asr, mfcc, text
    layout: str | None  # "tokens", "vector", or None: the model does not read it
    max_tokens: int


class _Uncached(offline._Encoders):
    """The encoders `encode_content` builds, with its settings, without vector caches (each built on first use)."""

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            self._text = TextEncoder(backend=self.cfg.text_backend)
        return self._text

    @property
    def image(self) -> ImageEncoder:
        if self._image is None:
            c = self.cfg
            self._image = ImageEncoder(batch_size=c.image_batch_size, normalization=c.image_normalization,
                                       crop_fraction=c.image_crop_fraction)
        return self._image

    @property
    def audio(self) -> AudioEncoder:
        if self._audio is None:
            c = self.cfg
            self._audio = AudioEncoder(text_encoder=self.text, pause_s=c.asr_pause_s, max_words=c.max_words,
                                       n_mfcc=c.n_mfcc)
        return self._audio


class ContentEncoder:
    """Encodes the raw content of one item as the run encoded its training data (see the module).

    `plan`: {"content": PipelineSettings.content, "tokens": {modality: (T, dim)}, "dense": {modality: dim},
    "words": [text modalities read as bags of words]}: plain JSON, so worker processes rebuild it."""

    def __init__(self, plan: dict, cache_dir: str | Path | None = None):
        self.plan, self.cache_dir = plan, cache_dir
        content = plan.get("content") or {}
        if content.get("encode") is None:
            raise ContentSettingsError(
                "the run encoded no raw content (no data.encode in its config, or it was trained before runs "
                "recorded their content encoding): register items with precomputed vectors (POST /items)")
        cfg = offline.ContentEncodingConfig.model_validate(content["encode"])
        self.cfg = cfg.model_copy(update={"cache_dir": cache_dir, "media_root": None})
        self.encoders = offline._Encoders(self.cfg) if cache_dir is not None else _Uncached(self.cfg)
        recorded = {m["name"]: ModalitySpec.model_validate(m) for m in content.get("modalities") or []}
        self.raw = {n: m for n, m in recorded.items() if m.kind in offline.RAW_KINDS and m.entity == "item"}
        self.word_modalities = [w for w in plan.get("words") or [] if w in self.raw]
        tokens, dense = plan.get("tokens") or {}, plan.get("dense") or {}
        on = {"image": cfg.image != "off", "audio": cfg.audio != "off", "text": cfg.text != "off"}
        self.sources: dict[str, tuple[ModalitySpec, list[_Target]]] = {}  # raw modality -> its vector modalities
        for m in self.raw.values():
            if not on[m.kind] or (cfg.modalities is not None and m.name not in cfg.modalities):
                continue
            targets = []
            for view in (cfg.audio if m.kind == "audio" else [m.kind]):
                name = f"{m.name}_{'mfcc' if view == 'mfcc' else 'emb'}"
                rec = recorded.get(name)
                if rec is None or rec.kind != "vector":
                    raise ContentSettingsError(f"the run's record has no vector modality '{name}' (encoded from "
                                               f"'{m.name}'): it is incomplete; export the bundle of a newer run")
                self._check_versions(rec, view)
                layout = "tokens" if name in tokens else "vector" if name in dense else None
                width = tokens[name][1] if layout == "tokens" else dense.get(name, rec.dim)
                if rec.dim is not None and width != rec.dim:
                    raise ContentSettingsError(f"modality '{name}': the model reads {width}-d vectors, the "
                                               f"encoder made {rec.dim}-d ones")
                targets.append(_Target(name, view, layout, tokens[name][0] if layout == "tokens" else 0))
            self.sources[m.name] = (m, targets)
        self.seconds: dict[str, float] = defaultdict(float)  # raw modality -> encoding seconds, all calls
        self.last_seconds: dict[str, float] = {}  # of the latest call

    @classmethod
    def from_pipeline(cls, pipeline, cache_dir: str | Path | None = None) -> ContentEncoder:
        """The encoder of a run's (or bundle's) `FeaturePipeline`: its recorded content encoding and item layout."""
        sizes = pipeline.item_sizes
        return cls({"content": pipeline.settings.content,
                    "tokens": {n: [int(t), int(d)] for n, (t, d) in sizes.tokens.items()},
                    "dense": {n: int(d) for n, d in sizes.dense.items()},
                    "words": sorted(pipeline.item_maps.text)}, cache_dir)

    def _check_versions(self, rec: ModalitySpec, view: str) -> None:
        enc, found = self.encoders, _RECORDED.findall(rec.description)
        try:
            used = {"image": lambda: [enc.image], "text": lambda: [enc.text], "mfcc": lambda: [enc.audio.mfcc],
                    "asr": lambda: [enc.audio.text, enc.audio.asr]}[view]()
        except ImportError as e:  # the encoder's package is missing
            was = ", ".join(f"{n} ({v})" for n, v in found) or "?"
            raise ContentSettingsError(f"modality '{rec.name}' was encoded with {was}; here: {e}") from None
        for e in used:
            if f"{e.name} ({e.version})" not in rec.description:
                was = [f"{n} ({v})" for n, v in found if n == e.name] or [f"{n} ({v})" for n, v in found] or ["?"]
                raise ContentSettingsError(f"modality '{rec.name}' was encoded with {was[0]}; installed here: "
                                           f"{e.name} ({e.version}). Install the recorded version, or retrain")

    # ------------------------------------------------------------------------------------------ values
    def check(self, raw: RawSegment) -> dict[str, list]:
        """The non-empty raw modalities, checked (names, counts, types, sizes; image and audio headers must
        open): cheap enough for the request path. Raises `ContentError`."""
        out = {}
        for name, values in raw.items():
            m = self.raw.get(name)
            if m is None:
                raise ContentError(name, None, f"not a raw item modality of the run's data ({sorted(self.raw)})")
            if name not in self.sources and name not in self.word_modalities:
                raise ContentError(name, None, "the run neither encoded this modality nor read its words")
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ContentError(name, None, "expected a list of values")
            if len(values) > (MAX_RAW_VALUES if m.multi else 1):
                raise ContentError(name, None, f"{len(values)} values, at most {MAX_RAW_VALUES if m.multi else 1}")
            for i, v in enumerate(values):
                if m.kind == "text":
                    if not isinstance(v, str) or len(v) > MAX_RAW_TEXT:
                        raise ContentError(name, i, f"expected a text of at most {MAX_RAW_TEXT} characters")
                elif not isinstance(v, (bytes, bytearray, memoryview)) or not 0 < len(v) <= MAX_RAW_BYTES:
                    raise ContentError(name, i, f"expected the {m.kind} file's bytes (1 to {MAX_RAW_BYTES})")
                else:
                    _sniff(name, i, m.kind, bytes(v))
            if values:
                out[name] = list(values)
        return out

    def decode_request(self, raw: Mapping[str, Sequence[str]]) -> dict[str, list]:
        """`RawSegmentRequest.raw` -> a `RawSegment`: base64 image and audio values decoded, texts as given."""
        out = {}
        for name, values in raw.items():
            kind = self.raw[name].kind if name in self.raw else "text"
            out[name] = list(values) if kind == "text" else [_b64(name, i, kind, v) for i, v in enumerate(values)]
        return out

    def words(self, raw: RawSegment) -> dict[str, str]:
        """`NewItem.text` of the raw text modalities the model reads as bags of words (a multi one's texts joined)."""
        return {n: " ".join(t for t in raw[n] if t) for n in self.word_modalities if raw.get(n)}

    # ------------------------------------------------------------------------------------------ encoding
    def encode_arrays(self, raw: RawSegment) -> dict[str, np.ndarray]:
        """Every vector modality the run made from the given raw ones: (n, dim) float32 with the vectors in value
        order, as `encode_content` stores them; a modality without any vector is left out."""
        values = self.check(raw)
        out: dict[str, np.ndarray] = {}
        self.last_seconds = {}
        enc, cfg = self.encoders, self.cfg
        with tempfile.TemporaryDirectory(prefix="modalrec-content-") as tmp:
            for name, vals in values.items():
                if name not in self.sources:
                    continue
                t0 = time.perf_counter()
                m = self.sources[name][0]
                if m.kind == "text":  # a blank text gives no vector, as offline
                    index, row = {}, [v for v in vals if v.strip()]
                else:
                    index = {str(Path(tmp) / f"{name}-{i}"): i for i in range(len(vals))}
                    for p, i in index.items():
                        Path(p).write_bytes(bytes(vals[i]))
                    row = list(index)
                first = dict.fromkeys(row, 1)
                made = ([offline._encode_images(m, ["item"], [row], first, enc, False)] if m.kind == "image" else
                        offline._encode_audio(m, ["item"], [row], first, enc, cfg, False) if m.kind == "audio" else
                        [offline._encode_text(m, ["item"], [row], enc, cfg, False)])
                for o in made:
                    for p in o.skipped:  # found: "'<path>': why"
                        at = [(path, i) for path, i in index.items() if str(p.found).startswith(repr(path))]
                        why = str(p.found)[len(repr(at[0][0])) + 2:] if at else str(p.found)
                        raise ContentError(name, at[0][1] if at else None, why)
                    if o.table.num_rows:
                        col = o.table["vector"].combine_chunks().flatten()
                        col = col.flatten() if o.spec.multi else col
                        out[o.spec.name] = col.to_numpy().astype(np.float32).reshape(-1, o.spec.dim)
                self.last_seconds[name] = time.perf_counter() - t0
                self.seconds[name] += self.last_seconds[name]
        return out

    def encode(self, raw: RawSegment) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
        """(vectors, tokens) as `NewItem.vectors` / `NewItem.tokens` take them: the model's token modalities
        their first T vectors, its dense ones a vector (a multi-valued one's mean); the rest is left out."""
        arrays = self.encode_arrays(raw)
        vectors, tokens = {}, {}
        for t in (t for _, targets in self.sources.values() for t in targets):
            a = arrays.get(t.name)
            if a is None or t.layout is None:
                continue
            if t.layout == "tokens":
                tokens[t.name] = a[:t.max_tokens].tolist()
            else:  # the mean `pipeline.side` takes of a multi-valued modality read as dense (one vector: itself)
                mean = np.add.reduceat(a, [0], axis=0) / np.array([[len(a)]])
                vectors[t.name] = mean[0].astype(np.float32).tolist()
        return vectors, tokens

    def views(self, names=None) -> set[str]:
        """The encoder views (image, text, asr, mfcc) the raw modalities `names` (None: all) are encoded with."""
        return {t.view for n, (_, ts) in self.sources.items() if names is None or n in names for t in ts}

    def warm_up(self, views=None) -> None:
        """Loads every network the plan uses (of `views` only, when given), so that the first segment pays no
        loading time."""
        enc, views = self.encoders, self.views() if views is None else set(views)
        noise = np.random.default_rng(0).normal(0, 0.01, 16000).astype(np.float32)
        if "image" in views:
            enc.image.features(np.zeros((1, 224, 224, 3), np.uint8))
        if views & {"text", "asr"}:
            enc.text.compute(["warm up"])
        if "asr" in views:
            enc.audio.asr.decode(noise)
        if "mfcc" in views:
            enc.audio.mfcc.stats(noise)


def _sniff(name: str, i: int, kind: str, data: bytes) -> None:
    """Raises `ContentError` when `data` does not open as an image / audio file (headers only: cheap)."""
    try:
        if kind == "image":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        else:
            import soundfile

            soundfile.info(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - every decoder error means the same to the client
        raise ContentError(name, i, f"not a readable {kind} file ({type(e).__name__}: {e})"[:300]) from None


def _b64(name: str, i: int, kind: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ContentError(name, i, f"expected the base64 of the {kind} file's bytes") from None


# ---------------------------------------------------------------------------------------------- the route
RawValue = Annotated[str, StringConstraints(min_length=1, max_length=4 * (MAX_RAW_BYTES // 3 + 1))]


class RawSegmentRequest(_Strict):
    """A new item with raw content (POST /segments), encoded off the request path, then registered as by POST /items
    (`categorical`, `multi`, `ttl_s` as there). `raw`: raw modality of the training data -> its values in order
    (frames in time order): the base64 of an image / audio file, or a text. A modality left out is missing."""

    id: Id
    categorical: dict[Name, str | int | float | None] = Field(default_factory=dict, max_length=256)
    multi: dict[Name, Annotated[list[str | int], Field(max_length=1024)]] = Field(default_factory=dict,
                                                                                 max_length=256)
    raw: dict[Name, Annotated[list[RawValue], Field(max_length=MAX_RAW_VALUES)]] = Field(
        default_factory=dict, max_length=16, description=f"modality -> values: base64 file bytes (at most "
        f"{MAX_RAW_BYTES} bytes decoded) or texts (at most {MAX_RAW_TEXT} characters)")
    ttl_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


def to_new_item(request: RawSegmentRequest, vectors: dict[str, list[float]], tokens: dict[str, list[list[float]]],
                text: dict[str, str] | None = None) -> NewItem:
    """The `NewItem` to register once a segment's vectors exist (`text`: `ContentEncoder.words`)."""
    return NewItem(id=request.id, categorical=request.categorical, multi=request.multi, text=text or {},
                   vectors=vectors, tokens=tokens, ttl_s=request.ttl_s)

