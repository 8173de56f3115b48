"""A training run: config -> data -> task -> (model, Trainer) per seed -> the run directory.

Run directory contract (DESIGN.md): config.yaml (fully resolved), manifest.json (dataset fingerprint,
code and package versions, seeds, device, start/end, sha256 of every file under pipeline/ and data/),
metrics.json (valid/test metric -> mean, std, runs over seeds; per-group breakdowns; timing; learning
curves; the model's inputs), pipeline/ (the fitted feature pipeline), data/ (the prepared samples and
histories), checkpoints/seed_<s>/ (safetensors + JSON, atomic), report.html + plots/.

Everything after training (evaluate, predict, export) reads the run directory only (`load_run`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import __version__
from ..config import RunConfig, dump_config
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..datasets import load_dataset
from ..eval.compare import summary
from ..models import _model_class, build_model
from ..nn.layers import reinitialise
from ..tasks import PreparedTask, prepare_task
from ..tasks.base import DATA_DIR
from .checkpoint import has_checkpoint, load_checkpoint
from .trainer import DistContext, FitResult, Trainer, init_distributed, peak_rss_mb, resolve_device


def load_data(cfg: RunConfig) -> InteractionData:
    data = load_dataset(cfg.data.source, path=cfg.data.path, **cfg.data.params)
    check_modalities(cfg, data)  # before the content encoders, which can take many minutes
    if cfg.data.encode is not None:  # raw frames / speech / text -> cached vector modalities
        from ..encoders.content import encode_content

        data = encode_content(data, cfg.data.encode, progress=cfg.train.progress)
    return data


def check_modalities(cfg: RunConfig, data: InteractionData) -> None:
    """The content modalities the model's config names exist in the data, or will once the configured content
    encoders ran; else an error saying which are missing and, for audio features, what to install."""
    from ..encoders.content import planned_modalities
    from ..models import required_modalities

    wanted = required_modalities(cfg.model.name, cfg.model.params)
    if not wanted:
        return
    have = [m.name for m in data.spec.modalities]
    if cfg.data.encode is not None:
        have += planned_modalities(data, cfg.data.encode)
    missing = [m for m in wanted if m not in have]
    if not missing:
        return
    audio = [m.name for m in data.spec.modalities if m.kind == "audio"]
    hint = ""
    if any(m.endswith("_mfcc") for m in missing) and not audio:
        hint = ("; the data has no audio modality, so no MFCC statistics can be computed: speech is rendered as audio "
                "only where espeak-ng and sox are installed (Debian: apt-get install espeak-ng sox), otherwise it "
                "stays a transcript (its vectors: <name>_emb)")
    raise DataError(Problem("model.params.modalities", None, None,
                            f"content modalities of dataset '{data.spec.name}' ({', '.join(sorted(set(have)))})",
                            f"{', '.join(missing)}, which {'it does' if len(missing) == 1 else 'they do'} not have"
                            + hint))


def aggregate(per_seed: list[dict]) -> dict:
    keys = sorted({k for d in per_seed for k in d})
    return {k: summary([d.get(k) for d in per_seed]) for k in keys}


def _git_version() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: the version is unknown
        return "unknown"


def _packages() -> dict:
    import importlib.metadata as md

    names = ["torch", "numpy", "pyarrow", "pandas", "pydantic", "safetensors"]
    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    return out


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False, default=str))
    os.replace(tmp, path)


def _finite(obj):
    """JSON has no NaN: undefined metric values (e.g. AUC of a one-class split) become null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def train_run(cfg: RunConfig, out: Path, resume: bool = False, data: InteractionData | None = None,
              report: bool = True, echo=None) -> dict:
    """Trains every seed of `cfg` and writes the run directory `out`. Returns metrics.json's content.

    `resume`: continue each seed from its last checkpoint in `out` (an error when `out` holds none); `echo`
    (a print function) says where each seed resumes."""
    ctx: DistContext = init_distributed(cfg.train.device)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    out = Path(out)
    if resume:
        found = [s for s in cfg.seeds if has_checkpoint(out / "checkpoints" / f"seed_{s}", "last")]
        if not found:
            raise DataError(Problem(str(out / "checkpoints"), None, None, "a run to resume: the last checkpoint of "
                                    f"seed {cfg.seeds[0]} (checkpoints/seed_{cfg.seeds[0]}/last.safetensors)",
                                    "none; train without --resume to start one"))
    started = datetime.now(UTC).isoformat()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
    data = data if data is not None else load_data(cfg)
    task, saved = _prepare(cfg, data, out, ctx)
    valid_runs, test_runs, groups_runs, fits = [], [], [], []
    timing: dict[str, list[float]] = {"train_samples_per_s": [], "epoch_seconds": [], "eval_seconds": [],
                                      "peak_rss_mb": []}
    for seed in cfg.seeds:
        fit, valid, test, groups, eval_s = _fit_seed(cfg, task, out, seed, resume, ctx, echo)
        fits.append(fit)
        valid_runs.append(valid)
        test_runs.append(test)
        groups_runs.append(groups)
        timing["train_samples_per_s"].append(fit.samples_per_s)
        timing["epoch_seconds"].append(fit.epoch_seconds)
        timing["eval_seconds"].append(eval_s)
        timing["peak_rss_mb"].append(peak_rss_mb())
    group_names = sorted({g for gr in groups_runs for g in gr})
    schema = task.schema
    metrics = {
        "name": cfg.name, "model": cfg.model.name, "task": cfg.task.kind, "dataset": data.spec.name,
        "semi_synthetic": data.spec.semi_synthetic,
        "monitor": cfg.train.monitor or task.monitor, "seeds": list(cfg.seeds),
        "valid": aggregate(valid_runs), "test": aggregate(test_runs),
        "groups": {"test": {g: aggregate([gr.get(g, {}) for gr in groups_runs]) for g in group_names}},
        "timing": aggregate([{k: v[i] for k, v in timing.items()} for i in range(len(cfg.seeds))]),
        "history": [f.history for f in fits], "best_epoch": [f.best_epoch for f in fits],
        "samples": {k: len(v) for k, v in task.splits.items()},
        # what the model read: the features the pipeline fitted (sizes) and the batch fields it emits
        "inputs": {"model": sorted(_model_class(cfg.model.name).inputs),
                   "user_features": sorted([*schema.user_categorical, *schema.user_multi, *schema.user_dense]),
                   "item_features": sorted([*schema.item_categorical, *schema.item_multi, *schema.item_dense,
                                            *schema.item_tokens]),
                   "context_features": sorted(schema.context_categorical)},
    }
    metrics = _finite(metrics)
    if ctx.is_main:
        device = resolve_device(cfg.train.device, ctx)
        manifest = {
            "modalrec_version": __version__, "code_version": _git_version(), "packages": _packages(),
            "python": platform.python_version(), "platform": platform.platform(),
            "dataset": {"name": data.spec.name, "fingerprint": data.fingerprint(), "summary": data.summary(),
                        "semi_synthetic": data.spec.semi_synthetic},
            "seeds": list(cfg.seeds), "device": str(device), "world_size": ctx.world,
            "torch_threads": torch.get_num_threads(), "started": started,
            "finished": datetime.now(UTC).isoformat(), "resumed": resume,
            "files": saved,  # sha256 of every file under pipeline/ and data/, verified when they are read
        }
        _write_json(out / "metrics.json", metrics)
        _write_json(out / "manifest.json", manifest)
        if report:
            from ..eval.report import write_report

            write_report([out], out / "report.html")
    return metrics


def _prepare(cfg: RunConfig, data, out: Path, ctx: DistContext) -> tuple[PreparedTask, dict]:
    """The prepared task, saved as RUN/pipeline/ and RUN/data/ (what every later step reads).

    Data in one partition is prepared in memory by every process. Partitioned data is prepared once, by rank 0,
    straight into RUN/data/ (memory-mapped); the other processes wait and read it from there, so under
    torchrun RUN must be on a filesystem every node sees."""
    from ..tasks import load_task

    partitioned = getattr(data, "n_partitions", 1) > 1
    task = None
    if ctx.is_main or not partitioned:
        from ..tasks.engine import engine_from

        engine = engine_from(cfg.data.engine, cfg.data.engine_address, cfg.data.engine_workers) if partitioned else None
        try:
            task = prepare_task(data, cfg.task, out=out / DATA_DIR if partitioned else None, engine=engine)
        finally:
            if engine is not None:
                engine.close()
        task.pipeline.settings.content = {
            "encode": None if cfg.data.encode is None else cfg.data.encode.model_dump(mode="json"),
            "modalities": [m.model_dump(mode="json") for m in data.spec.modalities]}
    saved = task.save(out) if ctx.is_main else {}
    if partitioned and ctx.world > 1:
        dist.barrier()
        if not ctx.is_main:
            task = load_task(out, cfg.task)
    return task, saved


def _fit_seed(cfg: RunConfig, task: PreparedTask, out: Path, seed: int, resume: bool,
              ctx: DistContext, echo=None) -> tuple[FitResult, dict, dict, dict, float]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    if cfg.train.epochs == 0 and model.trainable:
        raise DataError(Problem("train.epochs", None, None, f"at least 1 epoch for model '{cfg.model.name}' (0 "
                                "evaluates an untrained model; only models without trainable parameters, such as "
                                "popularity, take 0)", "0"))
    reinitialise(model, cfg.model.init.scheme, cfg.model.init.embedding_std)
    task.bind(model.inputs)
    ckpt = out / "checkpoints" / f"seed_{seed}"
    trainer = Trainer(task, model, cfg.train, ckpt, seed=seed, ctx=ctx)
    fit = trainer.fit(resume=resume, echo=echo if ctx.is_main else None)
    t0 = time.perf_counter()
    valid, _ = task.evaluate(model, "valid", cfg.train.eval_batch_size, trainer.device)
    test, groups = task.evaluate(model, "test", cfg.train.eval_batch_size, trainer.device)
    eval_s = time.perf_counter() - t0
    return fit, valid, test, groups, eval_s


def best_model(cfg: RunConfig, task: PreparedTask, run_dir: Path, seed: int) -> torch.nn.Module:
    """The model of `run_dir` with the best checkpoint of `seed` loaded (a model without trainable
    parameters, e.g. Popularity, needs none)."""
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    ckpt = run_dir / "checkpoints" / f"seed_{seed}"
    if has_checkpoint(ckpt, "best"):
        load_checkpoint(ckpt, "best", model, restore_rng=False)
    elif model.trainable:
        raise FileNotFoundError(f"{ckpt}/best.safetensors: no trained weights for seed {seed}")
    return model


def read_run(run_dir: Path) -> tuple[RunConfig, dict]:
    """The resolved config and the manifest of a run directory; a clear error for a folder that is not one."""
    import yaml

    run_dir = Path(run_dir)
    for name in ("config.yaml", "manifest.json"):
        if not (run_dir / name).is_file():
            raise DataError(Problem(str(run_dir), None, None, "a run directory written by `modalrec train` "
                                    "(config.yaml, manifest.json, pipeline/, data/, checkpoints/)",
                                    f"no {name}" if run_dir.is_dir() else "no such directory"))
    try:
        cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise DataError(Problem(str(run_dir), None, None, "the config.yaml and manifest.json `modalrec train` wrote",
                                str(e).splitlines()[0])) from None
    return cfg, manifest


def load_run(run_dir: Path) -> tuple[RunConfig, PreparedTask]:
    """A finished run's config and task, from the run directory alone (pipeline/ and data/, their files
    verified against the manifest): no raw data is read and no content encoder runs."""
    from ..tasks import load_task

    cfg, manifest = read_run(run_dir)
    return cfg, load_task(run_dir, cfg.task, manifest.get("files"))


def evaluate_run(run_dir: Path, split: str = "test", drop_modality: str | None = None, rate: float = 0.5,
                 drop_seed: int = 0) -> dict:
    """Re-evaluates the best checkpoint of every seed of a finished run (no training, no raw data).

    `drop_modality`: a touchpoint channel or content modality removed from a share `rate` of the `split`
    samples that have it (the task's `drop_modality`, multilabel tasks), to measure robustness to a
    missing modality; the result then holds `dropped` (what was removed) and the per-group metrics."""
    run_dir = Path(run_dir)
    cfg, task = load_run(run_dir)
    if split not in task.splits:
        raise DataError(Problem("--split", None, None, f"one of {', '.join(task.splits)}", repr(split)))
    dropped = None
    if drop_modality is not None:
        if not hasattr(task, "drop_modality"):
            raise ValueError(f"--drop-modality needs a task with touchpoint channels (multilabel); this run's task "
                             f"is '{cfg.task.kind}'")
        dropped = task.drop_modality(drop_modality, rate, split=split, seed=drop_seed)
    per_seed, per_seed_groups = [], []
    for seed in cfg.seeds:
        model = best_model(cfg, task, run_dir, seed)
        task.bind(model.inputs)
        metrics, groups = task.evaluate(model, split, cfg.train.eval_batch_size)
        per_seed.append(metrics)
        per_seed_groups.append(groups)
    out: dict = {split: aggregate(per_seed)}
    names = sorted({g for gr in per_seed_groups for g in gr})
    if names:
        out["groups"] = {split: {g: aggregate([gr.get(g, {}) for gr in per_seed_groups]) for g in names}}
    if dropped is not None:
        out["dropped"] = dropped
    return _finite(out)
