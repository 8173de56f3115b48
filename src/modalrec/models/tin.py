"""TIN: Temporal Interest Network (Zhou et al., "Temporal Interest Network for User Response
Prediction", WWW 2024 companion; arXiv 2308.08487).

TIN captures the *semantic-temporal* correlation between each behaviour and the target, i.e. the
4-way interaction of (behaviour semantics e_k, target semantics v_t, behaviour time p_k, target
time p_t), with three parts:
- Target-aware Temporal Encoding (TTE): p_k = P[f(X_k, X_t)] embeds the behaviour's position
  *relative to the target* (`temporal: position`: 1 = the most recent behaviour, 2 = the one
  before, ...; `temporal: time`: bucketised log-seconds between behaviour and sample). The target
  gets its own encoding p_t = P[0] from the same table (its offset to itself). Both sides are
  encoded by element-wise addition: ẽ_k = e_k + p_k, ṽ_t = v_t + p_t.
- Target-aware Attention (TA): α_k = act(<ẽ_k, ṽ_t> / sqrt(d)), masked; `act` is a softmax over
  the behaviours (default; the authors' released code) or an element-wise sigmoid. Expanded,
  <ẽ_k, ṽ_t> = <e_k, v_t> + <e_k, p_t> + <p_k, v_t> + <p_k, p_t>: all four correlations.
- Target-aware Representation (TR): u = Σ_k α_k (ẽ_k ⊙ ṽ_t), so the pooled representation also
  carries the 4 products e⊙v, e⊙p_t, p_k⊙v, p_k⊙p_t.
[user, target v_t, u, context features (`task.context_features`, if any)] -> MLP -> logit.

Notes and deviations:
- since ṽ_t does not depend on k, u = (Σ_k α_k ẽ_k) ⊙ ṽ_t; it is computed that way (O(L d)).
- no projection matrices inside the attention, as in the paper's equations;
- item vectors may include dense content projections (`use_content`);
- `temporal: time` needs `batch.hist_time` (the ctr task provides it) and raises otherwise.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ..data.batch import Batch
from ..nn.item_encoder import ITEM_INPUTS, ItemEncoder, user_encoder
from ..nn.layers import MLP, Activation, context_embedding, id_embedding
from .base import Model, ModelConfig, Schema
from .sim import log_time_buckets


class TIN(Model):
    name: ClassVar[str] = "tin"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr"})
    inputs: ClassVar[frozenset[str]] = ITEM_INPUTS | frozenset({"user", "user_side", "user_presence", "hist_time",
                                                               "context"})

    class Config(ModelConfig):
        embed_dim: int = Field(32, ge=1)
        temporal: Literal["position", "time"] = "position"
        time_buckets: int = Field(32, ge=1)  # temporal=time: floor(log2(1 + seconds)) buckets
        attention: Literal["softmax", "sigmoid"] = "softmax"
        mlp_hidden: list[int] = Field(default_factory=lambda: [200, 80])
        activation: Activation = "prelu"
        dropout: float = Field(0.1, ge=0.0, lt=1.0)
        use_content: bool = True

    def __init__(self, schema: Schema, config: ModelConfig | None = None):
        super().__init__(schema, config or self.Config())
        cfg = self.config
        self.items = ItemEncoder(schema, cfg.embed_dim, use_content=cfg.use_content)
        self.user = id_embedding(schema.n_users, cfg.embed_dim, counts=schema.user_counts)
        d = self.items.out_dim
        # Row 0 is the target's own offset; positions 1..max_history, or time buckets 0..n-1 shifted by 1.
        n_codes = 1 + (schema.max_history if cfg.temporal == "position" else cfg.time_buckets)
        self.temporal = nn.Embedding(n_codes, d)
        nn.init.normal_(self.temporal.weight, std=0.05)
        self.scale = math.sqrt(d)
        self.context = context_embedding(schema, cfg.embed_dim)  # None without task.context_features
        ctx_dim = self.context.out_dim if self.context else 0
        self.user_features = user_encoder(schema, cfg.embed_dim)  # None without user side features
        ctx_dim += self.user_features.out_dim if self.user_features else 0
        self.mlp = MLP(cfg.embed_dim + 2 * d + ctx_dim, cfg.mlp_hidden, activation=cfg.activation,
                       dropout=cfg.dropout, out_dim=1)

    def temporal_codes(self, batch: Batch) -> torch.Tensor:
        """(B, L) index into the temporal table of each behaviour, relative to the target (>= 1)."""
        mask = batch.hist_mask
        L = mask.shape[1]
        if self.config.temporal == "position":
            if L > self.schema.max_history:
                raise ValueError(f"tin: history length {L} exceeds schema.max_history={self.schema.max_history}")
            length = mask.sum(1, keepdim=True)
            rel = length - torch.arange(L, device=mask.device).unsqueeze(0)  # 1 = most recent
            return torch.where(mask, rel, torch.ones((), dtype=rel.dtype, device=rel.device))
        if batch.hist_time is None:
            raise ValueError("tin: temporal='time' needs batch.hist_time (seconds before the sample); "
                             "use temporal='position' for data without timestamps")
        return 1 + log_time_buckets(batch.hist_time, mask, self.config.time_buckets)

    def interest(self, target: torch.Tensor, hist: torch.Tensor, batch: Batch) -> torch.Tensor:
        mask = batch.hist_mask
        zero = torch.zeros((), dtype=hist.dtype, device=hist.device)
        e = torch.where(mask.unsqueeze(-1), hist + self.temporal(self.temporal_codes(batch)), zero)  # ẽ_k
        v = target + self.temporal.weight[0]  # ṽ_t
        scores = torch.einsum("bld,bd->bl", e, v) / self.scale
        if self.config.attention == "softmax":
            w = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1)
        else:
            w = torch.sigmoid(scores)
        w = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
        return torch.einsum("bl,bld->bd", w, e) * v  # Σ_k α_k (ẽ_k ⊙ ṽ_t)

    def forward(self, batch: Batch) -> torch.Tensor:
        target, hist = self.items.encode(batch)
        u = self.interest(target, hist, batch)
        parts = [self.user(batch.user), target, u]
        if self.context is not None:
            parts.append(self.context(batch))
        if self.user_features is not None:
            parts.append(self.user_features(batch))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
