"""Serving transforms of the shared layers: exact faster inference paths for a service request, where
every row of a batch reads one user's history (`Batch.shared_history`).

Models turn them on in `Model.prepare_serving`; the service never names a layer or a model.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch

from .layers import versions
from .sequence import TargetAttention

# arithmetic of the serving fast path's (candidate, history position) products: fp32 (the offline model's, to
# float rounding) or bf16 (2-3x the matrix-product rate on CPUs with AVX512-BF16 or AMX; lossy, see
# SharedHistoryAttention)
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


class SharedHistoryAttention(torch.nn.Module):
    """Serving fast path of DIN's local activation unit (`nn.TargetAttention`) for batches whose rows
    all read the same history: a service request scores C candidates against one user's sequence.

    The unit's first layer W [q, k, q - k, q * k] splits into (Wq + Wd) q + (Wk - Wd) k + Wm (q * k):
    the q and k terms are computed once per candidate and once per history position instead of once
    per (candidate, position) pair, and the product term becomes matrix products over blocks of positions sized to
    stay in cache, so a request does about a quarter of the work at about twice the arithmetic rate. The rest of the MLP and the pooling are the unit's own layers.
    Batches without `Batch.shared_history` (or an MLP of another shape) take the unit's own forward.
    Same function up to float rounding; the parity test holds the service to 1e-5 of offline scores.

    `precision="bf16"` runs those products and the MLP after them in bfloat16 (8-bit mantissa) and keeps the
    scores and everything after them in fp32: on a CPU with native bf16 the unit takes about half the time, and
    since the attention scores are pooled and pass through the rest of the model, final logits move by about
    1e-4 (measured by `benchmarks/serve_load.py --precision bf16`, which records the differences)."""

    def __init__(self, att: torch.nn.Module, block: int | None = None, precision: Precision = "fp32"):
        super().__init__()
        self.att = att
        first = att.mlp.net[0] if hasattr(att, "mlp") and hasattr(att.mlp, "net") and len(att.mlp.net) else None
        self.ok = isinstance(first, torch.nn.Linear) and first.in_features % 4 == 0
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        # bf16: the matrix products run at 2-3x the rate, and fewer, larger blocks measured faster (the whole
        # 200 x 100 request at once: 4.4-4.9 ms against 5.2-6.3 ms in blocks of 1 << 19)
        self.block = block or (1 << 18 if precision == "fp32" else 1 << 21)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # bf16: the layers after the first run on a bf16 copy of their weights (the unit's own stay fp32)
        self.rest_lowp = copy.deepcopy(att.mlp.net[1:]).to(torch.bfloat16) if self.ok and precision == "bf16" else None
        self._first: tuple | None = None  # (version key, the first layer's combined weights), see `first_layer`

    def first_layer(self, lin: torch.nn.Linear, d: int) -> tuple[torch.Tensor, ...]:
        """(Wq + Wd, (Wk - Wd)^T, Wm, b) of the unit's first layer, the first and third in the fast path's dtype:
        computed once, again only after the weights change (in place or replaced)."""
        w, b = lin.weight, lin.bias
        key = versions(w, b)
        if self._first is None or self._first[0] != key:
            wq, wk, wd, wm = w.detach().split(d, dim=1)
            self._first = (key, ((wq + wd).to(self.dtype), (wk - wd).T.contiguous(), wm.to(self.dtype).contiguous(),
                                 b.detach()))
        return self._first[1]

    def forward(self, query, keys, mask, values=None, shared: bool = False):
        att = self.att
        if not self.ok or not shared or torch.is_grad_enabled() or query.dim() != 2 or keys.dim() != 3 or len(query) < 2:
            return att(query, keys, mask, values)
        lin = att.mlp.net[0]
        d = query.shape[-1]
        if lin.in_features != 4 * d:
            return att(query, keys, mask, values)
        # the layers after the first: the unit's own, or their bf16 copy (the pooling below stays fp32)
        rest = att.mlp.net[1:] if self.rest_lowp is None else self.rest_lowp
        w_qd, w_kd, w_m, bias = self.first_layer(lin, d)
        m = mask[0]
        kr = keys[0][m]  # (n, d) real positions
        c, n, h = len(query), len(kr), lin.out_features
        # every (candidate, position) pair by matrix products: pre[c, i] = q_c (Wq + Wd + Wm diag(k_i)) + (Wk - Wd) k_i + b,
        # i.e. q (C, d) @ [(k_i (x) Wm) + (Wq + Wd)]^T (d, n h) with the per-position term as the addmm bias row
        hk = torch.addmm(bias, kr, w_kd).to(self.dtype)  # (n, h)
        kl = kr.to(self.dtype)
        mixed = torch.addcmul(w_qd.unsqueeze(0), kl.unsqueeze(1), w_m.unsqueeze(0))  # (n, h, d)
        # in blocks of P positions whose (C, P h) activations (and the block's (P h, d) weights) stay in the
        # core's L2 cache: the MLP then runs compute-bound instead of streaming C n h floats through memory
        # once per layer (2-2.5x faster for 200 candidates x 100 positions)
        q = query.to(self.dtype)
        real = torch.empty(c, n, dtype=query.dtype, device=query.device)
        step = max(1, self.block // max(1, c * h))
        for p in range(0, n, step):
            pre = torch.addmm(hk[p:p + step].reshape(1, -1), q, mixed[p:p + step].reshape(-1, d).T)
            real[:, p:p + step] = rest(pre.view(-1, h)).view(c, -1)
        scores = att._dense(real.reshape(-1), mask)  # real is (C, n) row-major: mask's real positions in order
        if values is None:
            v0 = torch.where(m.unsqueeze(-1), keys[0], torch.zeros((), dtype=keys.dtype, device=keys.device))
            return scores @ v0
        v = torch.where(mask.unsqueeze(-1), values, torch.zeros((), dtype=values.dtype, device=values.device))
        return torch.einsum("bl,bld->bd", scores, v)


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (oneDNN with AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch build without oneDNN
        return False


def with_serving_fast_paths(model: torch.nn.Module, precision: Precision = "fp32") -> int:
    """Wraps every `TargetAttention` of `model` in `SharedHistoryAttention`; returns how many."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is TargetAttention:
                setattr(parent, name, SharedHistoryAttention(child, precision=precision))
                n += 1
    return n
