"""A training run: config -> data -> task -> (model, Trainer) per seed -> the run directory.

Run directory contract (DESIGN.md): config.yaml (fully resolved), manifest.json (dataset fingerprint,
code and package versions, seeds, device, start/end), metrics.json (valid/test metric -> mean, std,
runs over seeds; per-group breakdowns; timing; learning curves), checkpoints/seed_<s>/ (safetensors +
JSON, atomic), report.html + plots/.
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

from .. import __version__
from ..config import RunConfig, dump_config
from ..data.interaction import InteractionData
from ..datasets import load_dataset
from ..models import build_model
from ..nn.layers import reinitialise
from ..tasks import PreparedTask, prepare_task
from .checkpoint import has_checkpoint, load_checkpoint
from .trainer import DistContext, FitResult, Trainer, init_distributed, peak_rss_mb, resolve_device


def load_data(cfg: RunConfig) -> InteractionData:
    data = load_dataset(cfg.data.source, path=cfg.data.path, **cfg.data.params)
    if cfg.data.encode is not None:  # raw frames / speech / text -> cached vector modalities
        from ..encoders.content import encode_content

        data = encode_content(data, cfg.data.encode, progress=cfg.train.progress)
    return data


def _summary(values: list[float]) -> dict:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    return {
        "mean": float(ok.mean()) if len(ok) else None,
        "std": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0,
        "runs": [None if not np.isfinite(v) else float(v) for v in arr],
    }


def aggregate(per_seed: list[dict]) -> dict:
    keys = sorted({k for d in per_seed for k in d})
    return {k: _summary([d.get(k) for d in per_seed]) for k in keys}


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
              report: bool = True) -> dict:
    """Trains every seed of `cfg` and writes the run directory `out`. Returns metrics.json's content."""
    ctx: DistContext = init_distributed(cfg.train.device)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    out = Path(out)
    started = datetime.now(UTC).isoformat()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
    data = data if data is not None else load_data(cfg)
    task = prepare_task(data, cfg.task)
    valid_runs, test_runs, groups_runs, fits = [], [], [], []
    timing: dict[str, list[float]] = {"train_samples_per_s": [], "epoch_seconds": [], "eval_seconds": [],
                                      "peak_rss_mb": []}
    for seed in cfg.seeds:
        fit, valid, test, groups, eval_s = _fit_seed(cfg, task, out, seed, resume, ctx)
        fits.append(fit)
        valid_runs.append(valid)
        test_runs.append(test)
        groups_runs.append(groups)
        timing["train_samples_per_s"].append(fit.samples_per_s)
        timing["epoch_seconds"].append(fit.epoch_seconds)
        timing["eval_seconds"].append(eval_s)
        timing["peak_rss_mb"].append(peak_rss_mb())
    group_names = sorted({g for gr in groups_runs for g in gr})
    metrics = {
        "name": cfg.name, "model": cfg.model.name, "task": cfg.task.kind, "dataset": data.spec.name,
        "semi_synthetic": data.spec.semi_synthetic,
        "monitor": cfg.train.monitor or task.monitor, "seeds": list(cfg.seeds),
        "valid": aggregate(valid_runs), "test": aggregate(test_runs),
        "groups": {"test": {g: aggregate([gr.get(g, {}) for gr in groups_runs]) for g in group_names}},
        "timing": aggregate([{k: v[i] for k, v in timing.items()} for i in range(len(cfg.seeds))]),
        "history": [f.history for f in fits], "best_epoch": [f.best_epoch for f in fits],
        "samples": {k: len(v) for k, v in task.splits.items()},
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
        }
        _write_json(out / "metrics.json", metrics)
        _write_json(out / "manifest.json", manifest)
        if report:
            from ..eval.report import write_report

            write_report([out], out / "report.html")
    return metrics


def _fit_seed(cfg: RunConfig, task: PreparedTask, out: Path, seed: int, resume: bool,
              ctx: DistContext) -> tuple[FitResult, dict, dict, dict, float]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    reinitialise(model, cfg.model.init.scheme, cfg.model.init.embedding_std)
    ckpt = out / "checkpoints" / f"seed_{seed}"
    trainer = Trainer(task, model, cfg.train, ckpt, seed=seed, ctx=ctx)
    fit = trainer.fit(resume=resume)
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


def evaluate_run(run_dir: Path, split: str = "test", data: InteractionData | None = None,
                 drop_modality: str | None = None, rate: float = 0.5, drop_seed: int = 0) -> dict:
    """Re-evaluates the best checkpoint of every seed of a finished run (no training).

    `drop_modality`: a touchpoint channel or content modality removed from a share `rate` of the `split`
    samples that have it (the task's `drop_modality`, multilabel tasks), to measure robustness to a
    missing modality; the result then holds `dropped` (what was removed) and the per-group metrics."""
    import yaml

    from ..config import RunConfig as _RC

    run_dir = Path(run_dir)
    cfg = _RC.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    data = data if data is not None else load_data(cfg)
    task = prepare_task(data, cfg.task)
    dropped = None
    if drop_modality is not None:
        if not hasattr(task, "drop_modality"):
            raise ValueError(f"--drop-modality needs a task with touchpoint channels (multilabel); this run's task "
                             f"is '{cfg.task.kind}'")
        dropped = task.drop_modality(drop_modality, rate, split=split, seed=drop_seed)
    per_seed, per_seed_groups = [], []
    for seed in cfg.seeds:
        model = best_model(cfg, task, run_dir, seed)
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


def predict_run(run_dir: Path, out: Path, split: str = "test", fmt: str = "csv",
                data: InteractionData | None = None) -> Path:
    """Click probabilities of a ctr run's best checkpoints on `split`, averaged over the run's seeds.

    `fmt="csv"`: user_id, item_id, time, probability per sample (in the task's sample order);
    `fmt="microlens"`: the WWW 2025 challenge submission (`ID,Task2`, ID = the row in test.parquet, read
    from the events' `row` column). Written atomically."""
    import yaml

    from ..config import RunConfig as _RC

    run_dir, out = Path(run_dir), Path(out)
    cfg = _RC.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if cfg.task.kind != "ctr":
        raise ValueError(f"modalrec predict writes click probabilities of ctr runs; this run's task is "
                         f"'{cfg.task.kind}'")
    if fmt not in ("csv", "microlens"):
        raise ValueError(f"--format must be csv or microlens, got {fmt!r}")
    data = data if data is not None else load_data(cfg)
    task = prepare_task(data, cfg.task)
    if split not in task.splits:
        raise ValueError(f"unknown split '{split}' (have {sorted(task.splits)})")
    probs = []
    for seed in cfg.seeds:
        model = best_model(cfg, task, run_dir, seed)
        logits = task.predict(model, split, cfg.train.eval_batch_size)
        probs.append(1.0 / (1.0 + np.exp(-logits)))
    p = np.mean(probs, axis=0) if probs else np.zeros(0)
    rows = task.events.take(task.split_rows[split])
    if fmt == "microlens":
        from ..datasets.microlens import write_submission

        if "row" not in rows.column_names:
            raise ValueError("--format microlens needs the events' `row` column (data.source: microlens)")
        return write_submission(rows["row"].to_numpy(zero_copy_only=False), p, out)
    import pandas as pd

    df = pd.DataFrame({"user_id": rows["user_id"].to_pylist(), "item_id": rows["item_id"].to_pylist(),
                       "time": rows["time"].to_pylist(), "probability": p})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out
