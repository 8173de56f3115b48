"""Freshness without a full retrain: `modalrec refresh RUN --since TIME --out RUN2` (ctr runs).

`refresh_run` reads RUN (its config, fitted pipeline and best checkpoints) and the events of the data source up to
now, and writes RUN2, a complete run directory (evaluate, predict and export read it alone):

- the pipeline is RUN's, extended (`pipeline.extend`): the user / item vocabularies, side tables, raw value maps
  (a new streamer gets the next `streamer_id` code) and context vocabularies grow by what was first seen since,
  so every old row and code keeps its meaning; new items' rows come from the catalogue and its content;
- the gifting graphs (U2A, Swing A2A, U->A->A, A->U->A, the as-of-time rows) are refitted by the graph's own fit
  on every gift before the new cut-off (the start of the new validation share). GraphCL is retrained from scratch
  (its config's epochs: seconds on the demo world) and warm-started from RUN's: a node RUN had a GraphCL vector
  for keeps it, a new one (or one without gifts before) gets the refit's vector rotated onto RUN's space
  (orthogonal Procrustes over the nodes both have), so every row lives in the space the trained model reads;
- samples: the events at or after `--since` (the window), split by time into train and the last `valid` share
  (the run's task.split.valid) for early stopping and the report; there is no test split. Histories read every
  event before each sample (the leakage guard unchanged), gifts included;
- the model is built on the new schema and warm-started from RUN's best checkpoint of the same seed: every tensor
  is copied into the rows it had; a grown id table's new rows are the frequency-weighted mean of its trained rows
  where the table has training counts (the row RUN read for an unknown id, so before any step the refreshed model
  scores a new streamer as RUN scored it), else the model's init (GraphCL tables: the pipeline's new rows; frozen
  ones are the pipeline's throughout). Training continues RUN's optimizer (Adam's moments and step count from
  RUN's `last` checkpoint, its learning rate; grown rows' moments zero) for `epochs` epochs (default 1) on the
  window's train share; when no trained epoch beats the warm start on the valid share, the warm start is kept
  (`best_epoch` 0: early stopping at epoch 0);
- the statistics the models read (item / user / code counts, positive rates, the prior's probe items) are RUN's
  plus the window's.

The manifest names the parent run and --since (`refresh`). `evaluate_window` scores a run on the samples of a
time window of any data (new items coded through the run's maps, as a service registers them; new users
unknown), so a stale run, a refreshed one and a full retrain are judged on the same samples.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .. import __version__
from ..config import TaskConfig, dump_config
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..data.timerange import show_time, to_unix_seconds
from ..models import build_model
from ..nn.layers import reinitialise
from ..pipeline import FeaturePipeline
from ..pipeline.context import context_strings
from ..pipeline.extend import extend_context, extend_side, new_ids, pad_rows
from ..tasks.base import DATA_DIR
from ..tasks.ctr import CTRTask, global_cutoffs
from ..tasks.ctr_steps import build, ctr_log, events_end, label_join, reduce_builds, task_splits
from ..tasks.store import ShardSink
from .checkpoint import save_checkpoint
from .run import (
    _finite,
    _git_version,
    _packages,
    _write_json,
    aggregate,
    best_model,
    load_data,
    load_run,
    read_run,
)
from .trainer import Trainer, peak_rss_mb


def parse_time(value, option: str = "--since") -> int:
    """Unix seconds from a number or an ISO date / date-time (UTC when naive)."""
    try:
        return int(to_unix_seconds(value))
    except ValueError as e:
        raise DataError(Problem(option, None, None, "unix seconds or an ISO date such as 2024-01-11", str(e))) from None


# ------------------------------------------------------------------------------------------------ events
def _window(c, start: int, until: int | None = None):
    """The partition's log with only the samples at times in [start, until) left samples; every event stays in
    the histories and the graph's edges."""
    t = c.log.times
    ok = (t >= start) & (t < until if until is not None else True)
    rows = np.flatnonzero(c.is_sample)
    keep = ok[rows]
    is_sample = np.zeros_like(c.is_sample)
    is_sample[rows[keep]] = True
    fields = {"is_sample": is_sample, "raw": c.raw[keep], "given": None}
    if getattr(c, "open_rows", None) is not None:  # delayed labels: windows still open stay their own split
        o = ok[c.open_rows]
        fields |= {"open_rows": c.open_rows[o], "open_labels": c.open_labels[o]}
    return dataclasses.replace(c, **fields)


class _Logs:
    """The data's partitions as ctr logs (the label join shared), windowed; one partition is read once."""

    def __init__(self, data, cfg: TaskConfig, start: int, until: int | None = None):
        n = data.n_partitions
        self.n, self.cfg, self.start, self.until = n, cfg, start, until
        self._load = [lambda: data.partition(0)] if n == 1 else data.loaders()
        times = [lambda: data.partition(0, ["time"])] if n == 1 else data.loaders(["time"])
        self.join = label_join(cfg, data.items, lambda: [events_end(f()) for f in times])
        self._cache = None

    def __call__(self, i: int):
        if self.n == 1 and self._cache is not None:
            return self._cache
        c = _window(ctr_log(self._load[i](), self.cfg, self.join), self.start, self.until)
        if self.n == 1:
            self._cache = c
        return c


def _prepare(logs: _Logs, pipeline: FeaturePipeline, cutoffs, sink_dir: Path | None = None
             ) -> tuple[CTRTask, list[dict]]:
    """A ctr task over `pipeline` (fitted already): the window's samples split by `cutoffs`, every event in the
    histories; returns it with each partition's build statistics (counts, edges)."""
    cfg = logs.cfg
    sink = ShardSink(sink_dir, splits=task_splits(cfg))
    built = []
    for i in range(logs.n):
        part, stats = build(logs(i), pipeline, cfg, cutoffs, None)
        sink.add(part)
        stats.pop("rows", None)
        built.append(stats)
    task = CTRTask.__new__(CTRTask)
    task.cfg, task.pipeline, task.data_dir = cfg, pipeline, sink_dir
    task.history, task.splits, task.log_users, task.sample_ids = sink.finish()
    task.shards = sink.bounds
    task.user_rows = np.r_[0, pipeline.users.lookup(task.log_users.array)].astype(np.int64)
    task.test_labels_hidden, task.label_summary = False, None
    return task, built


def _scan(logs: _Logs, before: int) -> tuple[pa.Array, pa.Array, dict[str, list[str]]]:
    """The user and item ids of every event strictly before `before` (the new training period) and the context
    values of the window's samples before it."""
    users, items, context = [], [], {}
    for i in range(logs.n):
        c = logs(i)
        log = c.log
        early = log.times < before
        users.append(log.user_vocab.take(np.unique(log.users[early])) if early.any() else pa.array([], pa.string()))
        items.append(log.item_vocab.take(np.unique(log.items[early])) if early.any() else pa.array([], pa.string()))
        rows = np.flatnonzero(c.is_sample & early)
        for name in logs.cfg.context_features:
            values = context_strings(log.table[name].take(pa.array(rows, pa.int64())), name)
            context.setdefault(name, set()).update(v for v in pc.drop_null(values).to_pylist())
    return (pa.concat_arrays(users), pa.concat_arrays(items), {k: sorted(v) for k, v in context.items()})


def _extended(p: FeaturePipeline, data, cfg: TaskConfig, users: pa.Array, items: pa.Array, context: dict,
              grow: bool = True) -> FeaturePipeline:
    """RUN's pipeline grown by the ids, values and codes first seen (`grow=False`: items only, new values of
    their features unknown: how a service registers new items with a model it cannot change)."""
    cat = data.items["item_id"].combine_chunks() if data.items is not None else None
    item_vocab = p.items.extended(new_ids(p.items, cat, items))
    side = {"text_modalities": cfg.text_modalities, "max_words": cfg.max_words,
            "vector_modalities": cfg.vector_modalities}
    item_table, item_maps, item_sizes = extend_side(
        data, "item", item_vocab, len(p.items), (p.item_table, p.item_maps, p.item_sizes), grow=grow,
        token_modalities=cfg.token_modalities, max_tokens=cfg.max_tokens, **side)
    out = FeaturePipeline(copy.deepcopy(p.settings), p.users, item_vocab, item_table, item_maps, item_sizes,
                          p.user_table, p.user_maps, p.user_sizes, dict(p.context), dict(p.stats), p.graph,
                          copy.deepcopy(p.schema_extra))
    if not grow:
        return out
    ucat = data.users["user_id"].combine_chunks() if data.users is not None else None
    out.users = p.users.extended(new_ids(p.users, ucat, users))
    if p.user_table:
        out.user_table, out.user_maps, out.user_sizes = extend_side(
            data, "user", out.users, len(p.users), (p.user_table, p.user_maps, p.user_sizes), **side)
    out.context = extend_context(p.context, context)
    out.graph, out.stats = None, {}
    return out


def _merged_stats(old: dict, built: list[dict], n_items: int, n_users: int) -> dict:
    """RUN's training statistics plus the window's: counts add up; an item's smoothed positive rate becomes
    (RUN's positives + the window's + 20 RUN priors) / (all its samples + 20) (new items: the window's prior)."""
    new = reduce_builds(built, n_items, n_users)
    pos_new = np.sum([b["positives"] for b in built], axis=0) if built else np.zeros(n_items)
    c_old = pad_rows(old.get("item_counts"), n_items)
    c_old = np.zeros(n_items) if c_old is None else c_old.astype(np.float64)
    u_old = pad_rows(old.get("user_counts"), n_users)
    rate = old.get("item_positive_rate")
    if rate is None:
        base = 20 * new["prior"] * np.ones(n_items)
    else:
        known = np.arange(n_items) < len(rate)
        base = np.where(known, pad_rows(np.asarray(rate, np.float64), n_items) * (c_old + 20), 20 * new["prior"])
    return {"item_counts": c_old + new["item_counts"], "item_positive_rate": (base + pos_new) / (c_old +
            new["item_counts"] + 20), "user_counts": new["user_counts"] + (0 if u_old is None else u_old)}


# ------------------------------------------------------------------------------------------------- graph
def _procrustes(new: np.ndarray, old: np.ndarray) -> tuple[np.ndarray, float | None]:
    """`new` rotated onto `old` (orthogonal Procrustes over the rows both hold with non-zero vectors); returns it
    with the relative residual of the shared rows (None: fewer than 2 shared rows, left as it is)."""
    n = min(len(new), len(old))
    both = np.flatnonzero((np.abs(new[:n]).sum(1) > 0) & (np.abs(old[:n]).sum(1) > 0))
    if len(both) < 2 or new.shape[1] != old.shape[1]:
        return new, None
    a, b = new[both].astype(np.float64), old[both].astype(np.float64)
    u, _, vt = np.linalg.svd(a.T @ b)
    rot = u @ vt
    out = (new.astype(np.float64) @ rot).astype(new.dtype)
    return out, float(np.linalg.norm(a @ rot - b) / max(np.linalg.norm(b), 1e-12))


def _align_graph(graph, old_graph) -> dict:
    """The GraphCL embeddings warm-started from RUN's (module doc): the refit rotated onto RUN's space, then RUN's
    own vector for every node it had one for; returns the rotation's residuals and the rows taken from the refit."""
    e, o = graph.expansion, old_graph.expansion if old_graph is not None else None
    out = {}
    if o is None or e.user_emb is None or o.user_emb is None:
        return out
    for name in ("streamer", "user"):
        new, old = getattr(e, f"{name}_emb"), getattr(o, f"{name}_emb")
        new, out[f"{name}_residual"] = _procrustes(new, old)
        n = min(len(new), len(old))
        kept = np.abs(old[:n]).sum(1) > 0
        new = new.copy()
        new[:n][kept] = old[:n][kept]
        setattr(e, f"{name}_emb", new)
        out[f"{name}_rows_refit"] = int((np.abs(new).sum(1) > 0).sum() - kept.sum())
    return out


# ------------------------------------------------------------------------------------------- warm start
def warm_start(model: torch.nn.Module, old: torch.nn.Module) -> dict[str, str]:
    """Copies `old`'s tensors into `model` (module doc); returns {tensor: how its new rows began} for every table
    that grew ("mean": the frequency-weighted mean of its trained rows, "init": the model's init, "graph": the
    pipeline's warm-started GraphCL rows) and every frozen GraphCL table ("graph": the pipeline's rows throughout,
    which are RUN's for the nodes RUN had)."""
    from ..models.mmbee import PretrainedEmbedding

    new_sd, old_sd = model.state_dict(), old.state_dict()
    old_mods = dict(old.named_modules())
    graph = {f"{name}.weight": isinstance(m.weight, torch.nn.Parameter) for name, m in model.named_modules()
             if isinstance(m, PretrainedEmbedding)}  # GraphCL tables -> trainable
    frozen = {k for k, trainable in graph.items() if not trainable}
    grown = {}
    with torch.no_grad():
        for key, dst in new_sd.items():
            src = old_sd.get(key)
            if src is None:
                continue
            if key in frozen:  # not a learned weight: the pipeline's GraphCL rows (RUN's where it had them)
                grown[key] = "graph"
                continue
            if src.shape == dst.shape:
                dst.copy_(src)
                continue
            if src.dim() != dst.dim() or src.shape[1:] != dst.shape[1:] or src.shape[0] > dst.shape[0]:
                raise ValueError(f"warm start: {key} has shape {tuple(src.shape)} in the run and "
                                 f"{tuple(dst.shape)} on the extended pipeline")
            n = src.shape[0]
            dst[:n] = src
            mod, _, attr = key.rpartition(".")
            w = getattr(old_mods.get(mod), "known_weights", None) if attr == "weight" else None
            if w is not None:
                dst[n:] = (w.to(src.dtype) @ src).expand(dst.shape[0] - n, *src.shape[1:])
            grown[key] = "graph" if key in graph else "mean" if w is not None else "init"
    return grown


def continue_optimizer(optimizer: torch.optim.Optimizer | None, model: torch.nn.Module, old: torch.nn.Module,
                       ckpt_dir: Path) -> bool:
    """Puts the optimizer state of RUN's `last` checkpoint (Adam's moments and step count, its learning rate) into
    `optimizer` of `model`, the rows of grown tables zero (nothing seen yet), so training continues where RUN's
    stopped instead of with a fresh optimizer's first steps (Adam's first step moves every weight by the full
    learning rate). False (the optimizer left fresh) when RUN has no such state or the parameters do not match."""
    import json

    from safetensors.torch import load_file

    from .checkpoint import _from_json, has_checkpoint

    if optimizer is None or not has_checkpoint(ckpt_dir, "last"):
        return False
    meta = _from_json(json.loads((ckpt_dir / "last.json").read_text())).get("optimizer")
    names = [n for n, q in model.named_parameters() if q.requires_grad]
    if not meta or names != [n for n, q in old.named_parameters() if q.requires_grad]:
        return False
    params = dict(model.named_parameters())
    state: dict[int, dict] = {}
    for key, val in load_file(str(ckpt_dir / "last.safetensors")).items():
        if not key.startswith("optim."):
            continue
        _, pid, name = key.split(".", 2)
        target = params[names[int(pid)]]
        if val.dim() and val.shape != target.shape:
            if val.shape[1:] != target.shape[1:] or val.shape[0] > target.shape[0]:
                return False
            val = torch.cat([val, val.new_zeros(target.shape[0] - val.shape[0], *val.shape[1:])])
        state.setdefault(int(pid), {})[name] = val
    for pid, scalars in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(scalars)
    groups = optimizer.state_dict()["param_groups"]
    for group, saved in zip(groups, meta["param_groups"], strict=False):
        group["lr"] = saved["lr"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return True


# --------------------------------------------------------------------------------------------- refresh
def refresh_run(run_dir: Path, since, out: Path, data: InteractionData | None = None, source: str | None = None,
                epochs: int = 1, bundle: Path | None = None, valid: float | None = None, echo=None) -> dict:
    """Refreshes RUN on the events since `since` into the new run directory `out` (module doc); with `bundle`, also
    exports it. `data`: the events (default: `source`, else the run's data config); `valid`: the window's last
    share held out (default the run's task.split.valid). Returns RUN2's metrics.json content."""
    run_dir, out = Path(run_dir), Path(out)
    cfg, parent = read_run(run_dir)
    if cfg.task.kind != "ctr":
        raise DataError(Problem(str(run_dir / "config.yaml"), None, "task.kind", "a ctr run (refresh updates "
                                "click / gift-rate models)", repr(cfg.task.kind)))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(Problem("--out", None, None, "a new run directory", f"{out} exists"))
    if epochs < 1:
        raise DataError(Problem("--epochs", None, None, "at least 1", str(epochs)))
    start = parse_time(since)
    share = valid if valid is not None else (cfg.task.split.valid or 0.1)
    if not 0 < share < 1:
        raise DataError(Problem("valid", None, None, "a share of the window in (0, 1)", str(share)))
    new_cfg = cfg.model_copy(deep=True)
    if source is not None:
        new_cfg.data.source, new_cfg.data.path = source, None
    new_cfg.train.epochs = epochs
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    started, t_all = datetime.now(UTC).isoformat(), time.perf_counter()
    _, old = load_run(run_dir)
    data = data if data is not None else load_data(new_cfg)
    t_prep = time.perf_counter()
    tcfg = new_cfg.task
    logs = _Logs(data, tcfg, start)
    times = np.concatenate([c.log.times[c.is_sample] for c in map(logs, range(logs.n))])
    if len(times) < 2:
        raise DataError(Problem("--since", None, None, f"sample events (channels {tcfg.sample_channels or 'all'}) "
                                f"at or after {show_time(start)}", f"{len(times)}"))
    t_valid, _ = global_cutoffs(times, share, 0.0)
    if not (times < t_valid).any() or not (times >= t_valid).any():
        raise DataError(Problem("--since", None, None, "a window with samples for both training and validation",
                                f"{len(times)} samples at or after {show_time(start)}, all at one time"))
    t_valid = int(np.ceil(t_valid))
    users, items, context = _scan(logs, t_valid)
    p_old = old.pipeline
    pipeline = _extended(p_old, data, tcfg, users, items, context)
    task, built = _prepare(logs, pipeline, (t_valid, float("inf")),
                           out / DATA_DIR if data.n_partitions > 1 else None)
    for name in [s for s in task.splits if s not in ("train", "valid")]:  # no test: nothing after the window
        task.splits.pop(name)
        task.sample_ids.pop(name, None)
        (task.shards or {}).pop(name, None)
        for junk in (out / DATA_DIR / "samples" / name, out / DATA_DIR / "ids" / f"{name}.parquet"):
            shutil.rmtree(junk, ignore_errors=True) if junk.is_dir() else junk.unlink(missing_ok=True)
    pipeline.stats = _merged_stats(p_old.stats, built, len(pipeline.items), len(pipeline.users))
    pipeline.count_codes_from(pipeline.stats["item_counts"])
    pipeline.fit_prior_from(pipeline.stats["item_counts"])
    t_graph, graph_info = time.perf_counter(), {}
    if tcfg.graph.enabled:
        task._fit_graph(np.sort(np.concatenate([b["train_times"] for b in built])), [b["edges"] for b in built],
                        t_valid)
        graph_info = {"alignment": _align_graph(pipeline.graph, p_old.graph),
                      "edges_before": pipeline.graph.edges_before, "stats": {
                          k: v for k, v in pipeline.graph.expansion.stats.items() if k != "graphcl_history"}}
    graph_s = time.perf_counter() - t_graph
    task.restore(task.meta(), {})
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(new_cfg))
    saved = task.save(out)
    prep_s = time.perf_counter() - t_prep
    fits, valid_runs, before_runs, grown, continued = [], [], [], {}, []
    for seed in new_cfg.seeds:
        torch.manual_seed(seed)
        np.random.seed(seed)
        model = build_model(new_cfg.model.name, task.schema, new_cfg.model.params)
        reinitialise(model, new_cfg.model.init.scheme, new_cfg.model.init.embedding_std)
        parent_model = best_model(cfg, old, run_dir, seed)
        grown = warm_start(model, parent_model)
        task.bind(model.inputs)
        ckpt = out / "checkpoints" / f"seed_{seed}"
        before = task.evaluate(model, "valid", new_cfg.train.eval_batch_size)[0]
        start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        trainer = Trainer(task, model, new_cfg.train, ckpt, seed=seed)
        continued.append(continue_optimizer(trainer.optimizer, model, parent_model,
                                            run_dir / "checkpoints" / f"seed_{seed}"))
        fit = trainer.fit(echo=echo)
        if not fit.best_valid or trainer._better(before.get(trainer.monitor), fit.best_valid.get(trainer.monitor)):
            # early stopping at epoch 0: no trained epoch beat the warm start on the window's valid share (also
            # when none could be judged: a valid share without a positive has no AUC, and no best was saved)
            model.load_state_dict(start_state)
            save_checkpoint(ckpt, "best", model)
            fit.best_epoch, fit.best_valid = 0, before
        fits.append(fit)
        before_runs.append(before)
        valid_runs.append(fit.best_valid)  # the valid metrics of the weights kept (fit reloads the best)
    wall = time.perf_counter() - t_all
    new_counts = {"users": len(pipeline.users) - len(p_old.users), "items": len(pipeline.items) - len(p_old.items),
                  "codes": {k: v - p_old.item_sizes.categorical.get(k, v)
                            for k, v in pipeline.item_sizes.categorical.items()},
                  "context": {k: len(v) - len(p_old.context[k]) for k, v in pipeline.context.items()}}
    refresh = {"parent": str(run_dir.resolve()), "parent_finished": parent.get("finished"),
               "parent_code_version": parent.get("code_version"), "since": start, "since_utc": show_time(start),
               "valid_from": t_valid, "valid_from_utc": show_time(t_valid), "valid_share": share,
               "epochs": epochs, "new": new_counts, "warm_start": grown, "optimizer_continued": continued,
               "best_epoch": [f.best_epoch for f in fits], "graph": graph_info,
               "seconds": {"total": wall, "prepare": prep_s, "graph": graph_s,
                           "train": sum(f.train_seconds for f in fits)}}
    metrics = _finite({
        "name": new_cfg.name, "model": new_cfg.model.name, "task": "ctr", "dataset": data.spec.name,
        "semi_synthetic": data.spec.semi_synthetic, "monitor": new_cfg.train.monitor or task.monitor,
        "seeds": list(new_cfg.seeds), "valid": aggregate(valid_runs), "valid_warm_start": aggregate(before_runs),
        "test": {}, "groups": {}, "history": [f.history for f in fits], "best_epoch": [f.best_epoch for f in fits],
        "samples": {k: len(v) for k, v in task.splits.items()},
        "timing": aggregate([{"train_samples_per_s": f.samples_per_s, "epoch_seconds": f.epoch_seconds,
                              "peak_rss_mb": peak_rss_mb()} for f in fits]),
        "refresh": refresh})
    manifest = {
        "modalrec_version": __version__, "code_version": _git_version(), "packages": _packages(),
        "dataset": {"name": data.spec.name, "fingerprint": data.fingerprint(), "summary": data.summary(),
                    "semi_synthetic": data.spec.semi_synthetic},
        "seeds": list(new_cfg.seeds), "device": str(trainer.device), "world_size": 1,
        "torch_threads": torch.get_num_threads(), "started": started, "finished": datetime.now(UTC).isoformat(),
        "resumed": False, "files": saved, "refresh": refresh}
    _write_json(out / "metrics.json", metrics)
    _write_json(out / "manifest.json", manifest)
    if bundle is not None:
        from ..serve.bundle import export_bundle

        export_bundle(out, Path(bundle))
    return metrics


# -------------------------------------------------------------------------------------- window scoring
def evaluate_window(run_dir: Path, data, start, until=None, batch_size: int | None = None) -> dict:
    """Every seed's best model of a ctr run scored on the samples of `data` at times in [start, until) (module
    doc): {"test": aggregated metrics, "samples": n, "new_items": items coded for the evaluation only}."""
    run_dir = Path(run_dir)
    cfg, task0 = load_run(run_dir)
    p = task0.pipeline
    start = parse_time(start)
    until = None if until is None else parse_time(until, "until")
    logs = _Logs(data, cfg.task, start, until)
    items = pa.concat_arrays([logs(i).log.item_vocab.array for i in range(logs.n)])
    ext = _extended(p, data, cfg.task, pa.array([], pa.string()), items, {}, grow=False)
    task, _ = _prepare(logs, ext, (float(start), float(start)))
    task.restore(task.meta(), {})
    task.schema = p.schema()  # the model's own tables; new items reach it as id 0 with their features
    task.collator = ext.collator(task.history, task.user_rows, n_model_items=len(p.items))
    runs = []
    for seed in cfg.seeds:
        model = best_model(cfg, task, run_dir, seed)
        task.bind(model.inputs)
        runs.append(task.evaluate(model, "test", batch_size or cfg.train.eval_batch_size)[0])
    s = task.splits["test"]
    return _finite({"test": aggregate(runs), "samples": len(s), "positives": int(np.sum(s.labels)),
                    "new_items": len(ext.items) - len(p.items)})


def snapshot(data: InteractionData, until) -> InteractionData:
    """The data as it was at `until`: the events before it, the catalogue's items and users with an event before
    it (and the content of those items). For tests and benchmarks of a refresh on simulated data."""
    t = parse_time(until, "until")
    from ..tasks.base import event_times

    ev = data.events.filter(pa.array(event_times(data.events) < t))
    users, items = pc.unique(ev["user_id"]), pc.unique(ev["item_id"])

    def keep(table, key, ids):
        return None if table is None else table.filter(pc.is_in(table[key].cast(pa.string()), value_set=ids))

    content = {}
    for m in data.spec.modalities:
        if m.name in data.content:
            content[m.name] = keep(data.content[m.name], "entity_id", items if m.entity == "item" else users)
    return InteractionData(data.spec, ev, keep(data.items, "item_id", items), keep(data.users, "user_id", users),
                           content)


def load_refreshed(path: Path, current=None):
    """The bundle of a refreshed run, verified and loaded (`serve.bundle.load_bundle`) for a service to swap to;
    with the bundle it serves now (`current`), also checked to extend it: the same task and model, and vocabularies
    that start with the current ones (an id keeps its row, so stored user state and item rows stay valid)."""
    from ..serve.bundle import BundleError, load_bundle

    new = load_bundle(Path(path))
    if current is not None:
        if (new.task, new.model_name) != (current.task, current.model_name):
            raise BundleError(Path(path) / "config.yaml", f"a {current.task} {current.model_name} bundle (the one "
                              "served now)", f"a {new.task} {new.model_name} bundle")
        for name in ("users", "items"):
            old_ids, new_ids_ = getattr(current.pipeline, name).array, getattr(new.pipeline, name).array
            if len(new_ids_) < len(old_ids) or not new_ids_.slice(0, len(old_ids)).equals(old_ids):
                raise BundleError(Path(path) / "pipeline" / f"{name}.parquet", f"the served bundle's {name} first, "
                                  "in their order (a refresh of its run)", "another vocabulary")
    return new
