"""SDIM: Sampling-based Deep Interest Modeling (Cao et al., "Sampling Is All You Need on Modeling
Long-Term User Behaviors for CTR Prediction", WSDM 2022).

Long-term interest without attention: every item vector (target and behaviours, from the shared
`ItemEncoder`) is hashed by multi-round SimHash (sec. 3.2): `n_hashes` (m) rounds of `hash_bits`
(tau) random-hyperplane sign bits each, i.e. m signatures of tau bits. In round j the behaviours
whose signature equals the target's are gathered, summed and the sum is L2-normalised; the m
round vectors are averaged into the long-term interest. A behaviour then contributes with its
collision probability (1 - angle(q, s)/pi)^tau, which is the attention-like kernel the paper
derives, at a cost linear in the sequence length and with no per-target attention over it.

The hyperplanes are a fixed buffer (never trained) drawn from a generator seeded by `hash_seed`,
so two models built with the same seed hash identically and checkpoints carry the buffer. Hashing
has no gradient; the embeddings still learn through the gathered sums.

Short-term interest: multi-head target attention (masked softmax) over the most recent
`short_len` behaviours; [user, target, long-term, short-term, context features (if any)] -> MLP -> logit.

Deviations from the paper:
- the paper precomputes behaviour hashes in a separate server (BSE) and looks the target's buckets
  up at serving time; here both are hashed in the forward pass, which gives the same result;
- item vectors may include dense content projections (`use_content`);
- a round in which no behaviour collides contributes the zero vector (the average still runs over
  all m rounds), so a user whose history shares no signature with the target has a zero interest.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from ..data.batch import Batch
from ..nn.item_encoder import ITEM_INPUTS, ItemEncoder, user_encoder
from ..nn.layers import MLP, Activation, context_embedding, id_embedding
from .base import Model, ModelConfig, Schema
from .sim import MultiHeadTargetAttention, recent_mask


class SDIM(Model):
    name: ClassVar[str] = "sdim"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr"})
    inputs: ClassVar[frozenset[str]] = ITEM_INPUTS | frozenset({"user", "user_side", "user_presence", "context"})

    class Config(ModelConfig):
        embed_dim: int = Field(32, ge=1)
        n_hashes: int = Field(48, ge=1)  # m: hashing rounds
        hash_bits: int = Field(3, ge=1, le=30)  # tau: bits per signature
        hash_seed: int = 0
        short_len: int = Field(20, ge=0)  # 0 switches the short-term attention off
        n_heads: int = Field(2, ge=1)
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
        g = torch.Generator().manual_seed(cfg.hash_seed)
        self.register_buffer("hyperplanes", torch.randn(d, cfg.n_hashes * cfg.hash_bits, generator=g))
        self.register_buffer("bit_weights", 2 ** torch.arange(cfg.hash_bits), persistent=False)
        self.short = MultiHeadTargetAttention(d, d, d, cfg.n_heads) if cfg.short_len > 0 else None
        self.context = context_embedding(schema, cfg.embed_dim)  # None without task.context_features
        in_dim = cfg.embed_dim + d * (3 if self.short is not None else 2)
        in_dim += self.context.out_dim if self.context else 0
        self.user_features = user_encoder(schema, cfg.embed_dim)  # None without user side features
        in_dim += self.user_features.out_dim if self.user_features else 0
        self.mlp = MLP(in_dim, cfg.mlp_hidden, activation=cfg.activation, dropout=cfg.dropout, out_dim=1)

    @torch.no_grad()
    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) vectors -> (..., m) integer signatures of tau sign bits each.

        Always computed in float32 (autocast off), so mixed-precision training and full-precision
        serving put a vector in the same buckets."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            bits = (x.float() @ self.hyperplanes.float()) > 0
        bits = bits.view(*x.shape[:-1], self.config.n_hashes, self.config.hash_bits)
        return (bits.long() * self.bit_weights).sum(-1)

    def long_term(self, target: torch.Tensor, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, d), (B, L, d), (B, L) -> (B, d): mean over rounds of the L2-normalised colliding sums."""
        hist = torch.where(mask.unsqueeze(-1), hist, torch.zeros((), dtype=hist.dtype, device=hist.device))
        collide = (self.signatures(hist) == self.signatures(target).unsqueeze(1)) & mask.unsqueeze(-1)
        sums = torch.einsum("blm,bld->bmd", collide.to(hist.dtype), hist)  # (B, m, d)
        return F.normalize(sums, dim=-1).mean(1)

    def forward(self, batch: Batch) -> torch.Tensor:
        mask = batch.hist_mask
        target, hist = self.items.encode(batch)
        parts = [self.user(batch.user), target, self.long_term(target, hist, mask)]
        if self.short is not None:
            parts.append(self.short(target, hist, recent_mask(mask, self.config.short_len)))
        if self.context is not None:
            parts.append(self.context(batch))
        if self.user_features is not None:
            parts.append(self.user_features(batch))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
