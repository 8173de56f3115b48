"""Content encoding: the raw image, audio and text modalities of a dataset -> cached vector modalities.

MMBee (Deng et al., KDD 2024) encodes each live-stream segment with pre-trained single-modality
encoders: the frames with a vision model, the streamer's speech with ASR + a text model, the viewer
comments with the text model; the vectors of one segment then enter its fusion module (MFQ, Sec. 3.2)
as tokens. `encode_content` is that step for any
`InteractionData`, one switch per raw kind:

    image "efficientnet"     <name>_emb   1280-d  EfficientNet-Lite0, one vector per image (multi kept)
    audio "asr"              <name>_emb    384-d  one vector per recognised utterance (always multi)
    audio "mfcc"             <name>_mfcc  80-d    MFCC statistics per clip (multi kept)
    text  "minilm"           <name>_emb    384-d  all-MiniLM-L6-v2, one vector per text (multi kept)

A text modality named in `transcript_modalities` (default: "speech", which the live-stream simulator
delivers as a transcript when espeak-ng is missing) is split into sentences, one vector each, so its
`<name>_emb` has the shape the ASR path gives an audio `speech`.

Presence is kept: an entity gets a row only when at least one of its values gave a vector. An unusable
value (missing, unreadable or corrupt file) is skipped and reported in one `ContentEncodingWarning`
per modality that names the file, the content row and why, and in the new modality's description; with
`strict=True` every such value is a `DataError` instead. Never a zero vector. Distinct files and texts
are encoded once (a simulator reuses a finite media pool), every encoder caches by content, and the raw
modalities stay in the output. Re-running replaces the vector modalities it made before.

Deviation from the paper, named: the encoders are this project's small offline models (EfficientNet-Lite0,
pocketsphinx, all-MiniLM-L6-v2) instead of the production encoders of the paper's platform, frozen and
run once before training (precomputed, cached features; nothing is tuned with the ranker). See
`encoders.image` and `encoders.audio` for each encoder's own deviations.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..data.errors import DataError, Problem
from ..data.interaction import CONTENT_VALUE_COLUMN, InteractionData, ModalitySpec
from .text import Backend

if TYPE_CHECKING:  # the encoders import torch, pocketsphinx, librosa: loaded only when a modality needs them
    from .audio import AudioEncoder
    from .image import ImageEncoder
    from .text import TextEncoder

RAW_KINDS = ("image", "audio", "text")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class ContentEncodingWarning(UserWarning):
    """Some values of a modality could not be encoded and were skipped (their entities keep the others)."""


class ContentEncodingConfig(BaseModel):
    """Which encoders run on which raw modalities, and where their caches live."""

    model_config = ConfigDict(extra="forbid")
    image: Literal["efficientnet", "off"] = Field("efficientnet", description="image modalities -> <name>_emb")
    audio: list[Literal["asr", "mfcc"]] | Literal["off"] = Field(
        default_factory=lambda: ["asr", "mfcc"],
        description="audio modalities: 'asr' -> <name>_emb (utterance vectors), 'mfcc' -> <name>_mfcc")
    text: Literal["minilm", "off"] = Field("minilm", description="text modalities -> <name>_emb")
    text_backend: Backend = Field("auto", description="runtime of the text model: auto, torch or onnx")
    cache_dir: Path | None = Field(None, description="cache root (default $MODALREC_CACHE or ~/.cache/modalrec)")
    modalities: list[str] | None = Field(None, description="raw modalities to encode (None: every one)")
    transcript_modalities: list[str] = Field(
        default_factory=lambda: ["speech"],
        description="text modalities holding spoken transcripts: split into sentences, one vector each")
    media_root: Path | None = Field(None, description="base of relative image/audio paths (default: cwd)")
    image_batch_size: int = Field(32, ge=1)
    image_normalization: Literal["lite", "imagenet"] = "lite"
    image_crop_fraction: float = Field(0.875, gt=0.0, le=1.0)
    asr_pause_s: float = Field(0.5, gt=0.0, description="a pause at least this long ends an utterance")
    max_words: int = Field(32, ge=1, description="words per utterance or transcript sentence, at most")
    n_mfcc: int = Field(20, ge=1, le=40)
    strict: bool = Field(False, description="raise on an unusable value instead of skipping and reporting it")

    @field_validator("audio")
    @classmethod
    def _audio_views(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one of 'asr', 'mfcc', or 'off'")
            return list(dict.fromkeys(v))
        return v

    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(os.environ.get("MODALREC_CACHE", Path.home() / ".cache" / "modalrec"))


def split_sentences(text: str, max_words: int = 32) -> list[str]:
    """Sentences of a transcript (cut after . ! ? and at line breaks), long ones cut every `max_words` words."""
    out = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        out.extend(" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words))
    return out


class _Encoders:
    """The encoders of one `encode_content` call, built on first use (one shared text encoder)."""

    def __init__(self, cfg: ContentEncodingConfig):
        self.cfg = cfg
        self.root = cfg.cache_root()
        self._text: TextEncoder | None = None
        self._image: ImageEncoder | None = None
        self._audio: AudioEncoder | None = None

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            from .text import TextEncoder

            self._text = TextEncoder(backend=self.cfg.text_backend, cache_dir=self.root / "text")
        return self._text

    @property
    def image(self) -> ImageEncoder:
        if self._image is None:
            from .image import ImageEncoder

            c = self.cfg
            self._image = ImageEncoder(cache_dir=self.root / "image", batch_size=c.image_batch_size,
                                       normalization=c.image_normalization, crop_fraction=c.image_crop_fraction)
        return self._image

    @property
    def audio(self) -> AudioEncoder:
        if self._audio is None:
            from .audio import AudioEncoder

            c = self.cfg
            self._audio = AudioEncoder(cache_dir=self.root / "audio", text_encoder=self.text,
                                       pause_s=c.asr_pause_s, max_words=c.max_words, n_mfcc=c.n_mfcc)
        return self._audio


@dataclass
class _Output:
    """One vector modality to add: its spec, its table, and the values that were skipped."""

    spec: ModalitySpec
    table: pa.Table
    skipped: list[Problem]


def _todo(data: InteractionData, cfg: ContentEncodingConfig) -> list[ModalitySpec]:
    enabled = {"image": cfg.image != "off", "audio": cfg.audio != "off", "text": cfg.text != "off"}
    return [m for m in data.spec.modalities if m.kind in RAW_KINDS and enabled[m.kind]
            and (cfg.modalities is None or m.name in cfg.modalities)]


def planned_modalities(data: InteractionData, cfg: ContentEncodingConfig | None = None) -> list[str]:
    """The vector modalities `encode_content` will add (`<name>_emb`, `<name>_mfcc`), known without encoding."""
    cfg = cfg if cfg is not None else ContentEncodingConfig()
    return [f"{m.name}_{'mfcc' if view == 'mfcc' else 'emb'}" for m in _todo(data, cfg)
            for view in (cfg.audio if m.kind == "audio" else [m.kind])]


def encode_content(data: InteractionData, cfg: ContentEncodingConfig | None = None,
                   progress: bool = False) -> InteractionData:
    """A copy of `data` with its raw image / audio / text modalities also as vector modalities (see the module)."""
    cfg = cfg if cfg is not None else ContentEncodingConfig()
    enabled = {"image": cfg.image != "off", "audio": cfg.audio != "off", "text": cfg.text != "off"}
    declared = {m.name: m for m in data.spec.modalities}
    if cfg.modalities is not None:
        for name in cfg.modalities:
            if name not in declared:
                raise KeyError(f"dataset '{data.spec.name}' has no modality '{name}' (has {list(declared)})")
            kind = declared[name].kind
            if kind not in RAW_KINDS:
                raise ValueError(f"modality '{name}' is of kind '{kind}': only {RAW_KINDS} modalities are encoded")
            if not enabled[kind]:
                raise ValueError(f"modality '{name}' was asked for, but the {kind} encoder is switched off")
    todo = _todo(data, cfg)
    # checked before any encoder runs: a clash found after an hour of transcription helps no one
    planned = planned_modalities(data, cfg)
    for name in planned:
        if name in declared and declared[name].kind != "vector":
            raise ValueError(f"modality '{name}' exists with kind '{declared[name].kind}'; encoding would replace "
                             "it with vectors (rename one of them)")
    encoders = _Encoders(cfg)
    outputs: list[_Output] = []
    for m in todo:
        entity_ids, row_values, first_row = _row_values(data, m, cfg)
        if m.kind == "image":
            outputs.append(_encode_images(m, entity_ids, row_values, first_row, encoders, progress))
        elif m.kind == "audio":
            outputs.extend(_encode_audio(m, entity_ids, row_values, first_row, encoders, cfg, progress))
        else:
            outputs.append(_encode_text(m, entity_ids, row_values, encoders, cfg, progress))
    skipped = [p for o in outputs for p in o.skipped]
    if cfg.strict and skipped:
        raise DataError(skipped)
    for o in outputs:
        if o.skipped:
            shown = "; ".join(str(p) for p in o.skipped[:5])
            more = f"; and {len(o.skipped) - 5} more" if len(o.skipped) > 5 else ""
            warnings.warn(f"{o.spec.name}: {len(o.skipped)} unusable value(s) skipped: {shown}{more}",
                          ContentEncodingWarning, stacklevel=2)
    new_names = {o.spec.name for o in outputs}
    modalities = [m for m in data.spec.modalities if m.name not in new_names] + [o.spec for o in outputs]
    content = {k: v for k, v in data.content.items() if k not in new_names}
    content.update({o.spec.name: o.table for o in outputs})
    return replace(data, spec=data.spec.model_copy(update={"modalities": modalities}), content=content)


# ---------------------------------------------------------------------------------------- reading values
def _row_values(data: InteractionData, m: ModalitySpec, cfg: ContentEncodingConfig
                ) -> tuple[list[str], list[list[str]], dict[str, int]]:
    """Entity ids, the usable values of each row (paths resolved, blanks dropped), and each value's first
    1-based content row (for error messages)."""
    fname = f"content/{m.name}.parquet"
    table = data.content.get(m.name)
    if table is None:
        raise DataError(Problem(fname, None, None, f"the content table of declared modality '{m.name}'",
                                "no such table"))
    col = CONTENT_VALUE_COLUMN[m.kind]
    for c in ("entity_id", col):
        if c not in table.column_names:
            raise DataError(Problem(fname, None, c, f"a column named {c}", "no such column"))
    ids = table["entity_id"].to_pylist()
    raw = table[col].to_pylist()
    rows: list[list[str]] = []
    first_row: dict[str, int] = {}
    base = Path(cfg.media_root) if cfg.media_root is not None else None
    for r, value in enumerate(raw, start=1):
        if value is None:
            values = []
        elif m.multi:
            if not isinstance(value, list):
                raise DataError(Problem(fname, r, col, f"a list of values (modality '{m.name}' is multi)",
                                        type(value).__name__))
            values = value
        else:
            if isinstance(value, list):
                raise DataError(Problem(fname, r, col, f"one value per row (declare 'multi: true' on modality "
                                        f"'{m.name}' for several)", "a list"))
            values = [value]
        kept = []
        for v in values:
            if v is None:
                continue
            if not isinstance(v, str):
                raise DataError(Problem(fname, r, col, "strings", type(v).__name__))
            if m.kind == "text":
                if not v.strip():  # whitespace carries no content: no vector, never the vector of ""
                    continue
            else:
                if not v:
                    continue
                if base is not None and not os.path.isabs(v):
                    v = os.fspath(base / v)
            kept.append(v)
            first_row.setdefault(v, r)
        rows.append(kept)
    return ids, rows, first_row


# ---------------------------------------------------------------------------------------- per kind
def _encode_images(m: ModalitySpec, ids, rows, first_row, encoders: _Encoders, progress: bool) -> _Output:
    enc = encoders.image
    distinct = list(dict.fromkeys(v for vs in rows for v in vs))
    res = enc.encode_usable(distinct, progress=progress)
    per_value = {distinct[i]: res.vectors[j:j + 1] for j, i in enumerate(res.index)}
    skipped = _skipped(m, res.errors, first_row, "a readable image file")
    name = f"{m.name}_emb"
    desc = f"{enc.name} ({enc.version}) of image modality '{m.name}', one vector per image"
    return _Output(*_vector_modality(name, m, ids, rows, per_value, m.multi, enc.dim, desc, skipped), skipped)


def _encode_audio(m: ModalitySpec, ids, rows, first_row, encoders: _Encoders, cfg: ContentEncodingConfig,
                  progress: bool) -> list[_Output]:
    enc = encoders.audio
    distinct = list(dict.fromkeys(v for vs in rows for v in vs))
    out = []
    if "asr" in cfg.audio:
        vecs, errors = enc.encode_speech_usable(distinct, progress=progress)
        per_value = {p: v for p, v in zip(distinct, vecs, strict=True) if v is not None}
        skipped = _skipped(m, errors, first_row, "a readable audio file")
        desc = (f"{enc.text.name} ({enc.text.version}) of the utterances {enc.asr.name} ({enc.asr.version}) "
                f"recognised in audio modality '{m.name}' (pause >= {enc.pause_s:g} s, <= {enc.max_words} words); "
                "one vector per utterance, no row where nothing was recognised")
        out.append(_Output(*_vector_modality(f"{m.name}_emb", m, ids, rows, per_value, True, enc.text.dim, desc,
                                             skipped), skipped))
    if "mfcc" in cfg.audio:
        res = enc.mfcc.encode_usable(distinct, progress=progress)
        per_value = {distinct[i]: res.vectors[j:j + 1] for j, i in enumerate(res.index)}
        skipped = _skipped(m, res.errors, first_row, "a readable audio file")
        desc = (f"{enc.mfcc.name} ({enc.mfcc.version}) of audio modality '{m.name}': mean and std of "
                f"{enc.mfcc.n_mfcc} MFCCs and their deltas (raw, not standardised)")
        out.append(_Output(*_vector_modality(f"{m.name}_mfcc", m, ids, rows, per_value, m.multi, enc.mfcc.dim,
                                             desc, skipped), skipped))
    return out


def _encode_text(m: ModalitySpec, ids, rows, encoders: _Encoders, cfg: ContentEncodingConfig,
                 progress: bool) -> _Output:
    enc = encoders.text
    transcript = m.name in cfg.transcript_modalities
    distinct = list(dict.fromkeys(v for vs in rows for v in vs))
    if transcript:
        pieces = [split_sentences(v, cfg.max_words) for v in distinct]
        flat = list(dict.fromkeys(s for ps in pieces for s in ps))
        vecs = enc.encode(flat, progress=progress) if flat else np.empty((0, enc.dim), np.float32)
        at = {s: i for i, s in enumerate(flat)}
        per_value = {v: vecs[[at[s] for s in ps]] for v, ps in zip(distinct, pieces, strict=True)}
        desc = (f"{enc.name} ({enc.version}) of the sentences (<= {cfg.max_words} words) of transcript modality "
                f"'{m.name}', one vector per sentence")
    else:
        vecs = enc.encode(distinct, progress=progress) if distinct else np.empty((0, enc.dim), np.float32)
        per_value = {v: vecs[i:i + 1] for i, v in enumerate(distinct)}
        desc = f"{enc.name} ({enc.version}) of text modality '{m.name}', one vector per text"
    return _Output(*_vector_modality(f"{m.name}_emb", m, ids, rows, per_value, m.multi or transcript, enc.dim,
                                     desc, []), [])


# ---------------------------------------------------------------------------------------- assembly
def _skipped(m: ModalitySpec, errors: dict[str, str], first_row: dict[str, int], expected: str) -> list[Problem]:
    col = CONTENT_VALUE_COLUMN[m.kind]
    return [Problem(f"content/{m.name}.parquet", first_row.get(p), col, expected, f"{p!r}: {why}")
            for p, why in errors.items()]


def _vector_modality(name: str, source: ModalitySpec, ids: list[str], rows: list[list[str]],
                     per_value: dict[str, np.ndarray], multi: bool, dim: int, description: str,
                     skipped: list[Problem]) -> tuple[ModalitySpec, pa.Table]:
    """The spec and table of vector modality `name`: per entity, the vectors of its values in order.

    An entity none of whose values gave a vector gets no row (a missing modality). A single-valued
    output takes the one vector of the entity's one value."""
    keep_ids: list[str] = []
    blocks: list[np.ndarray] = []
    counts: list[int] = []
    for entity, values in zip(ids, rows, strict=True):
        parts = [per_value[v] for v in values if v in per_value]
        parts = [p for p in parts if len(p)]
        if not parts:
            continue
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if not multi and len(block) != 1:
            raise RuntimeError(f"{name}: entity {entity!r} got {len(block)} vectors for a single-valued modality")
        keep_ids.append(entity)
        blocks.append(block)
        counts.append(len(block))
    flat = np.concatenate(blocks).astype(np.float32, copy=False) if blocks else np.empty((0, dim), np.float32)
    if flat.shape[1:] != (dim,):
        raise RuntimeError(f"{name}: vectors of shape {flat.shape[1:]}, expected ({dim},)")
    values = pa.array(flat.reshape(-1), pa.float32())
    vectors = pa.ListArray.from_arrays(pa.array(np.arange(0, flat.size + 1, dim, dtype=np.int32)), values)
    if multi:
        offsets = np.zeros(len(counts) + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        vectors = pa.ListArray.from_arrays(pa.array(offsets), vectors)
    if skipped:
        description += f"; {len(skipped)} unusable value(s) skipped"
    spec = ModalitySpec(name=name, entity=source.entity, kind="vector", dim=dim, multi=multi,
                        description=description)
    table = pa.table({"entity_id": pa.array(keep_ids, pa.string()), "vector": vectors})
    return spec, table
