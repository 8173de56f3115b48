"""The one Trainer: fits any model on any prepared task.

Early stopping on a validation metric, LR on plateau, gradient clipping, an atomic checkpoint every
epoch or every `train.checkpoint_every` steps (`last`) plus the best weights (`best`), exact resume
(mid-epoch too: the epoch's batch order is a function of (seed, epoch), so the done batches are skipped), DDP under `torchrun` (gloo on CPU, nccl
on GPU), bf16 autocast on GPU, progress bars. The model knows nothing about this loop; the task
supplies batches, the loss and the evaluation.

Exact resume works because everything random is either derived from (seed, epoch) (shuffling,
negative sampling) or restored from the checkpoint (torch RNG for dropout, optimizer, scheduler).
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..nn.sparse import LazyAdam, clip_grad_norm_, set_sparse, sparse_modules
from ..tasks.base import PreparedTask
from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint

LOWER_IS_BETTER = ("loss",)


def lower_is_better(metric: str) -> bool:
    return any(k in metric for k in LOWER_IS_BETTER)


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistContext:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and ctx.world > 1:
        name = f"cuda:{ctx.local_rank}"
    return torch.device(name)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    train_samples: int = 0
    epoch_seconds: float = 0.0
    stopped_early: bool = False

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else float("nan")


class Trainer:
    def __init__(self, task: PreparedTask, model: torch.nn.Module, cfg: TrainConfig, ckpt_dir: Path | None,
                 seed: int = 0, ctx: DistContext | None = None):
        self.task, self.model, self.cfg, self.seed = task, model, cfg, seed
        self.ckpt_dir = ckpt_dir
        self.ctx = ctx or DistContext()
        self.device = resolve_device(cfg.device, self.ctx)
        self.monitor = cfg.monitor or task.monitor
        self.minimise = lower_is_better(self.monitor)
        self.model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = None
        if params:
            opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[cfg.optimizer]
            # id tables with sparse gradients (a model's `sparse_grad`): the lazy row-wise Adam (`nn.sparse`) on one
            # process; with another optimizer, weight decay or DDP they take dense gradients and the update is the
            # plain one
            sparse = sparse_modules(model)
            if sparse and cfg.optimizer == "adam" and not cfg.weight_decay and self.ctx.world == 1:
                opt = LazyAdam
            else:
                set_sparse(sparse, False)
            self.optimizer = opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min" if self.minimise else "max", factor=cfg.lr_factor,
                patience=cfg.lr_patience)
        self.net = model
        if self.ctx.world > 1 and params:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _better(self, value: float, best: float | None) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if best is None:
            return True
        return value < best if self.minimise else value > best

    def evaluate(self, split: str) -> dict:
        metrics, _ = self.task.evaluate(self.model, split, self.cfg.eval_batch_size, self.device)
        return metrics

    def _train_epoch(self, epoch: int, res: FitResult, fit_state: dict, partial: dict | None = None
                     ) -> tuple[float, int, float]:
        """One epoch (from `partial`, a mid-epoch checkpoint's position and running sums, when resuming);
        with `train.checkpoint_every` = k, the `last` checkpoint is rewritten every k global steps."""
        self.net.train()
        partial = partial or {}
        step = int(partial.get("step", 0))
        total, n = float(partial.get("loss_sum", 0.0)), int(partial.get("samples", 0))
        before = float(partial.get("seconds", 0.0))
        t0 = time.perf_counter()
        n_batches = math.ceil(self.task.train_size() / self.cfg.batch_size)
        amp = self.cfg.amp and self.device.type == "cuda"
        every = self.cfg.checkpoint_every
        bar = tqdm(self.task.batches("train", self.cfg.batch_size, shuffle=True, seed=self.seed, epoch=epoch,
                                     rank=self.ctx.rank, world=self.ctx.world, start=step),
                   total=n_batches, initial=step, desc=f"seed {self.seed} epoch {epoch}", leave=False,
                   mininterval=1.0, disable=not (self.cfg.progress and self.ctx.is_main))
        for batch in bar:
            batch = batch.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                out = self.net(batch)
            loss = self.task.loss(out, batch)
            reg = self.model.penalty(batch)
            if reg is not None:
                loss = loss + reg
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.clip_norm:
                clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)  # torch's, or with sparse gradients
            self.optimizer.step()
            total += float(loss.detach()) * batch.size
            n += batch.size
            step += 1
            bar.set_postfix(loss=f"{total / max(n, 1):.4f}", refresh=False)
            if every and step % every == 0 and step < n_batches:
                self._save_last(res, fit_state, epoch - 1, {
                    "epoch": epoch, "step": step, "loss_sum": total, "samples": n,
                    "seconds": before + time.perf_counter() - t0})
        return total / max(n, 1), n * self.ctx.world, before + time.perf_counter() - t0

    def _save_last(self, res: FitResult, fit_state: dict, epoch: int, partial: dict | None = None) -> None:
        """The `last` checkpoint: after `epoch` completed epochs, plus the position in the next one (`partial`)."""
        if self.ckpt_dir is not None and self.ctx.is_main:
            save_checkpoint(self.ckpt_dir, "last", self.model, self.optimizer, {
                "epoch": epoch, "history": res.history, "best": fit_state["best"], "bad_epochs": fit_state["bad"],
                "best_epoch": res.best_epoch, "best_valid": res.best_valid, "done": fit_state["done"],
                "scheduler": self.scheduler.state_dict(), "train_seconds": res.train_seconds,
                "train_samples": res.train_samples, "seed": self.seed, "partial": partial,
            })
        if self.ctx.world > 1:
            dist.barrier()

    def fit(self, resume: bool = False, echo=None) -> FitResult:
        """Trains up to `cfg.epochs` epochs; `resume` continues from the `last` checkpoint when there is one
        (`echo`, a print function, says so), mid-epoch when it was written mid-epoch."""
        res = FitResult()
        if self.optimizer is None:  # nothing to learn (e.g. Popularity): one evaluation, no epochs
            res.best_valid = self.evaluate("valid")
            res.history = [{"epoch": 0, "train_loss": None, "lr": None, "seconds": 0.0, "valid": res.best_valid}]
            return res
        state = {"best": None, "bad": 0, "done": False}
        start, partial = 1, None
        if resume and self.ckpt_dir is not None and has_checkpoint(self.ckpt_dir, "last"):
            st = load_checkpoint(self.ckpt_dir, "last", self.model, self.optimizer)
            self.scheduler.load_state_dict(st["scheduler"])
            res.history, state = st["history"], {"best": st["best"], "bad": st["bad_epochs"], "done": st["done"]}
            res.best_epoch, res.best_valid = st["best_epoch"], st["best_valid"]
            res.train_seconds, res.train_samples = st["train_seconds"], st["train_samples"]
            start, partial = st["epoch"] + 1, st.get("partial")
            if echo is not None:
                where = (f"at step {partial['step']} of epoch {partial['epoch']}" if partial
                         else f"after epoch {st['epoch']}")
                echo(f"seed {self.seed}: resuming {where} of {self.cfg.epochs}"
                     + (" (already finished)" if state["done"] or st["epoch"] >= self.cfg.epochs else ""))
        elif resume and echo is not None:
            echo(f"seed {self.seed}: no checkpoint to resume, training from the start")
        for epoch in range(start, self.cfg.epochs + 1):
            if state["done"]:
                break
            loss, n, secs = self._train_epoch(epoch, res, state, partial)
            partial = None
            res.train_seconds += secs
            res.train_samples += n
            valid = self.evaluate("valid")
            value = valid.get(self.monitor)
            if value is None:
                raise KeyError(f"monitor metric '{self.monitor}' is not among the validation metrics {sorted(valid)}")
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step(value)
            res.history.append({"epoch": epoch, "train_loss": loss, "lr": lr, "seconds": secs, "valid": valid})
            if self._better(value, state["best"]):
                state["best"], state["bad"], res.best_epoch, res.best_valid = value, 0, epoch, valid
                if self.ckpt_dir is not None and self.ctx.is_main:
                    save_checkpoint(self.ckpt_dir, "best", self.model)
            else:
                state["bad"] += 1
            state["done"] = state["bad"] >= self.cfg.patience
            self._save_last(res, state, epoch)
            res.stopped_early = state["done"]
        trained = [h for h in res.history if h.get("seconds")]
        res.epoch_seconds = sum(h["seconds"] for h in trained) / max(len(trained), 1)
        if self.ckpt_dir is not None and has_checkpoint(self.ckpt_dir, "best"):
            load_checkpoint(self.ckpt_dir, "best", self.model, restore_rng=False)
        return res
