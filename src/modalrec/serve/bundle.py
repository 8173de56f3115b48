"""A serving bundle: everything the service needs from a run, in files that load without pickle.

`export_bundle(run_dir, out)` reads the run directory alone (its saved feature pipeline, prepared data and
the chosen seed's best checkpoint; no raw data, no content encoder) and writes:

    manifest.json              format version, provenance, retrieval settings, sha256 + size of every file
    config.yaml                the run's fully resolved config
    model.safetensors          model weights (state_dict)
    pipeline/                  the run's fitted feature pipeline, as saved with the run: vocabularies, item and
                               user side tables with their raw value maps, context codes, the history builder's
                               settings, graph features (the same files, hashed again here)
    history.safetensors        seed state: every user's last max_history history events (CSR: ptr, items,
                               times[, tags]), so known users are not cold at first start
    history_users.parquet      the raw id of each history row
    item_vectors.safetensors   one retrieval vector per item row (row 0 = padding, zero)
    items.faiss                faiss inner-product index over the L2-normalised vectors of rows 1..n-1
                               (faiss' own binary format, written by faiss.write_index; no pickle)

`load_bundle(path)` verifies every hash first and names the file that does not match; then it reads only
safetensors, Parquet, JSON, YAML (safe_load) and the faiss index.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file as load_pt
from safetensors.torch import save_file as save_pt

from .. import __version__
from ..config import RunConfig, dump_config
from ..data.errors import DataError, Problem
from ..models import build_model
from ..models.base import Model, Schema
from ..pipeline import FeaturePipeline, History, Vocab
from ..pipeline.pipeline import sha256_of
from .retrieval import build_index, normalise, popularity_order, retrieval_vectors

FORMAT = "modalrec-bundle"
FORMAT_VERSION = 3
SERVABLE_TASKS = ("ctr", "topk")
REQUIRED = ("config.yaml", "model.safetensors", "pipeline/pipeline.json", "history.safetensors",
            "history_users.parquet")


class BundleError(DataError):
    """A bundle (or the run it is exported from) is missing, corrupt or not servable."""

    def __init__(self, file: str | Path, expected: str, found: str | None = None):
        super().__init__(Problem(str(file), None, None, expected, found))


@dataclass
class Bundle:
    path: Path
    manifest: dict
    config: RunConfig
    pipeline: FeaturePipeline
    schema: Schema
    model: Model
    history: History  # seed histories, one row per history user
    history_users: Vocab  # raw id of each history row
    item_vectors: np.ndarray | None  # (n_items, d) float32, L2-normalised rows, row 0 zero
    index: object | None  # faiss index over rows 1..n-1 (faiss id = item row - 1)
    popular: np.ndarray  # item rows, most popular first (cold-start candidates)

    @property
    def task(self) -> str:
        return self.schema.task

    @property
    def model_name(self) -> str:
        return self.config.model.name

    @property
    def n_items(self) -> int:
        return self.schema.n_items


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False))


def export_bundle(run_dir: Path, out: Path, seed: int | None = None, overwrite: bool = False) -> Path:
    """Writes the serving bundle of `run_dir` (seed `seed`, default the run's first) to `out`, from the run
    directory alone."""
    from ..tasks.base import PIPELINE_DIR
    from ..train.run import best_model, load_run, read_run

    run_dir, out = Path(run_dir), Path(out)
    cfg, run_manifest = read_run(run_dir)
    if cfg.task.kind not in SERVABLE_TASKS:
        raise BundleError(run_dir / "config.yaml", f"a task the service answers ({', '.join(SERVABLE_TASKS)})",
                          f"task.kind '{cfg.task.kind}'")
    seed = cfg.seeds[0] if seed is None else seed
    if seed not in cfg.seeds:
        raise BundleError(run_dir / "config.yaml", f"--seed among the run's seeds {cfg.seeds}", str(seed))
    if out.exists() and not overwrite:
        raise BundleError(out, "a new bundle directory (--overwrite replaces one)", "it already exists")
    _, task = load_run(run_dir)
    try:
        model = best_model(cfg, task, run_dir, seed)
    except FileNotFoundError as e:
        raise BundleError(run_dir / "checkpoints" / f"seed_{seed}", f"the trained weights of seed {seed}",
                          str(e)) from None
    model.eval()
    schema = task.schema
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.yaml").write_text(dump_config(cfg))
        shutil.copytree(run_dir / PIPELINE_DIR, tmp / "pipeline")
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        save_pt(state, str(tmp / "model.safetensors"))
        seed_h = task.history.last(int(cfg.task.max_history))
        save_np({k: np.ascontiguousarray(v) for k, v in seed_h.arrays().items()}, str(tmp / "history.safetensors"))
        pq.write_table(pa.table({"id": task.log_users.array}), tmp / "history_users.parquet")
        vectors, source = retrieval_vectors(model, task.pipeline.item_table, schema.n_items)
        retrieval = {"source": source, "metric": "inner_product", "normalised": True, "index": None, "dim": None}
        if vectors is not None:
            vectors = normalise(vectors)
            vectors[0] = 0.0
            save_np({"vectors": vectors}, str(tmp / "item_vectors.safetensors"))
            import faiss

            index = build_index(vectors)
            faiss.write_index(index, str(tmp / "items.faiss"))
            retrieval.update(index=type(index).__name__, dim=int(vectors.shape[1]))
        mask = os.umask(0)
        os.umask(mask)
        paths = sorted(tmp.rglob("*"))
        for p in paths:  # mkdtemp and safetensors create private files; a bundle is for sharing
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_of(p), "bytes": p.stat().st_size}
                 for p in paths if p.is_file()}
        _write_json(tmp / "manifest.json", {
            "format": FORMAT, "format_version": FORMAT_VERSION, "modalrec_version": __version__,
            "created": datetime.now(UTC).isoformat(), "run_dir": str(run_dir.resolve()),
            "seed": seed, "model": cfg.model.name, "task": cfg.task.kind,
            "dataset": run_manifest.get("dataset", {}).get("name"),
            "dataset_fingerprint": run_manifest.get("dataset", {}).get("fingerprint"),
            "users": len(task.pipeline.users) - 1, "items": len(task.pipeline.items) - 1,
            "retrieval": retrieval, "files": files,
        })
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _inside(name: str) -> bool:
    """A manifest file name that stays inside the bundle: `a.json` or `pipeline/graph/a.json`."""
    p = PurePosixPath(name)
    if not name or "\\" in name or p.is_absolute() or p.as_posix() != name:
        return False
    return not any(part in ("", ".", "..") for part in p.parts)


def verify_bundle(path: Path) -> dict:
    """Checks the manifest and the sha256 of every file it lists; returns the manifest."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise BundleError(mpath, "a bundle written by `modalrec export`", "no such file")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(mpath, "valid JSON", str(e)) from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(mpath, f"format {FORMAT} version {FORMAT_VERSION} (a bundle of an older version: export "
                          "the run again)", f"{manifest.get('format')} version {manifest.get('format_version')}")
    for name, meta in manifest.get("files", {}).items():
        f = path / name
        if not _inside(name):
            raise BundleError(mpath, "relative file names inside the bundle in 'files'", repr(name))
        if not f.exists():
            raise BundleError(f, "a file listed in manifest.json", "no such file")
        digest = sha256_of(f)
        if digest != meta["sha256"]:
            raise BundleError(f, f"sha256 {meta['sha256']} (manifest.json)",
                              f"sha256 {digest}: the file is corrupt or was modified")
    return manifest


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    path = Path(path)
    manifest = verify_bundle(path) if verify else json.loads((path / "manifest.json").read_text())
    files = manifest["files"]
    for needed in REQUIRED:
        if needed not in files:
            raise BundleError(path / "manifest.json", f"'{needed}' among the bundle files", "not listed")
    cfg = RunConfig.model_validate(yaml.safe_load((path / "config.yaml").read_text()))
    pipeline = FeaturePipeline.load(path / "pipeline")
    schema = pipeline.schema()
    model = build_model(cfg.model.name, schema, cfg.model.params)
    try:
        model.load_state_dict(load_pt(str(path / "model.safetensors")), strict=True)
    except RuntimeError as e:
        raise BundleError(path / "model.safetensors", f"weights of model '{cfg.model.name}' for this pipeline",
                          str(e).splitlines()[0]) from None
    model.eval()
    history = History.from_arrays(load_np(str(path / "history.safetensors")))
    history_users = Vocab(pq.read_table(path / "history_users.parquet")["id"])
    if history.n_users != len(history_users) or bool(schema.history_tags) != (history.tags is not None):
        raise BundleError(path / "history.safetensors", f"{len(history_users)} history rows"
                          + (" with action tags" if schema.history_tags else ""),
                          f"{history.n_users} rows" + (" with action tags" if history.tags is not None else ""))
    vectors, index = None, None
    if "item_vectors.safetensors" in files:
        vectors = load_np(str(path / "item_vectors.safetensors"))["vectors"]
        if "items.faiss" in files:
            import faiss

            index = faiss.read_index(str(path / "items.faiss"))
            if index.ntotal != len(vectors) - 1:
                raise BundleError(path / "items.faiss", f"{len(vectors) - 1} vectors", str(index.ntotal))
    return Bundle(path=path, manifest=manifest, config=cfg, pipeline=pipeline, schema=schema, model=model,
                  history=history, history_users=history_users, item_vectors=vectors, index=index,
                  popular=popularity_order(schema))


def item_vector_rows(model: Model, rows: list[dict], table, dim: int, source: str) -> np.ndarray:
    """(k, dim) L2-normalised retrieval vectors of items registered after export (`rows`: their side table rows),
    as the bundle's were computed: the model's item vector with id 0, or the named dense content modality;
    zero rows where there is none (an id embedding has no row for a new item)."""
    if not rows:
        return np.zeros((0, dim), np.float32)
    if source == "item_encoder":
        feats = {name: torch.from_numpy(np.stack([np.asarray(r[group][name]) for r in rows]))
                 for group in ("categorical", "multi", "dense") for name in getattr(table, group)}
        for name in table.dense:
            feats[name] = feats[name].float()
        pres = {name: torch.from_numpy(np.array([r["presence"][name] for r in rows], dtype=bool))
                for name in table.presence}
        with torch.inference_mode():
            vec = model.item_representation(torch.zeros(len(rows), dtype=torch.long), feats, pres).float().numpy()
    elif source.startswith("content:") and source[8:] in table.dense:
        name = source[8:]
        vec = np.stack([r["dense"][name].astype(np.float32) if r["presence"][name] else np.zeros(dim, np.float32)
                        for r in rows])
    else:
        return np.zeros((len(rows), dim), dtype=np.float32)
    return normalise(vec) if vec.shape[1] == dim else np.zeros((len(rows), dim), dtype=np.float32)
