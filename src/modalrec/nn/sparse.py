"""Sparse gradients for the id tables: lazy (row-wise) Adam and gradient clipping over sparse gradients.

An embedding table of a few hundred thousand ids (KuaiLive's 452,621 streamers) is read at a few thousand rows
per batch. With dense gradients every training step pays for the whole table several times over: the backward
pass writes a zero-filled (n, d) gradient, clipping takes its norm, and Adam updates all n rows of the weights
and of both moment tables, most of them with a zero gradient. At KuaiLive size that is most of a SIM step.

A model whose id tables take sparse gradients (`nn.Embedding(sparse=True)`; SIM's `sparse_grad`) pays only for
the rows of the batch, with `LazyAdam`: Adam for every dense gradient (bit for bit `torch.optim.Adam`), and for a
sparse one the lazy update of the rows the batch read (what TensorFlow's LazyAdamOptimizer and torch's
SparseAdam do, the usual way of training large id tables). The moments of a row change only when a batch reads
it, and its bias correction uses the table's step count; a row no batch reads keeps its weights, where dense
Adam keeps moving it along its decaying first moment after its last read. `clip_grad_norm_` clips the global
norm of dense and sparse gradients together, the norm of a sparse gradient being that of its summed rows.
"""

from __future__ import annotations

import torch


def sparse_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of `model` set to give their weight a sparse gradient (`sparse=True`)."""
    return [m for m in model.modules() if getattr(m, "sparse", False) is True]


def set_sparse(modules, sparse: bool) -> None:
    for m in modules:
        m.sparse = sparse


class LazyAdam(torch.optim.Adam):
    """`torch.optim.Adam` whose parameters with a sparse gradient get the lazy row-wise update (see the module
    docstring): step count, first and second moments live in the same state as Adam's (`step`, `exp_avg`,
    `exp_avg_sq`), so checkpoints save and restore it as Adam's, and a parameter may take dense and sparse
    gradients in different steps (a penalty over the whole table makes its gradient dense: then the dense update).
    Sparse gradients need `weight_decay` 0, amsgrad and maximize off."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._lazy_step(p, group)
                    held.append((p, p.grad))
                    p.grad = None  # Adam's own step skips it
        try:
            if any(p.grad is not None for g in self.param_groups for p in g["params"]):
                super().step()
        finally:
            for p, g in held:
                p.grad = g
        return loss

    def _lazy_step(self, p: torch.Tensor, group: dict) -> None:
        if group["weight_decay"] or group.get("amsgrad") or group.get("maximize"):
            raise ValueError("LazyAdam: sparse gradients need weight_decay 0, amsgrad and maximize off")
        grad = p.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        if rows.numel() == 0:
            return
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        step = float(state["step"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        m = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)
        v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        exp_avg.index_copy_(0, rows, m)
        exp_avg_sq.index_copy_(0, rows, v)
        bias1 = 1 - beta1 ** step
        bias2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = v.sqrt_().div_(bias2_sqrt).add_(eps)
        p.index_add_(0, rows, m.div_(denom).mul_(-lr / bias1))


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (L2) that also takes sparse gradients (coalesced in place, their norm the
    norm of the summed rows); with dense gradients only, exactly torch's function."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            norms.append(torch.linalg.vector_norm(p.grad.values()))
        else:
            norms.append(torch.linalg.vector_norm(p.grad))
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad.is_sparse:
            p.grad.values().mul_(coef)
        else:
            p.grad.mul_(coef)
    return total
