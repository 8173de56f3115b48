"""SASRec: Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018).

Item id embedding (scaled by sqrt(d), as in the official code) + learned position embedding ->
`n_blocks` causal self-attention blocks (pre-LayerNorm, as in the paper's g(x) formula) -> final
LayerNorm. The hidden state at position t predicts the item at t + 1 by a dot product with the
item embedding table shared between input and output (paper sec. III-D).

Histories are chronological and left-aligned, so position indices count from the oldest event in
the window. Training: `batch.candidates` (B, L, C) with the true next item at index 0 -> (B, L, C)
logits; the task owns the loss (softmax or the paper's binary cross-entropy with sampled
negatives) and masks positions with no target. Inference: (B, n_items) scores from the last real
position, padding column -inf; or (B, C) when candidates of shape (B, C) are given.

Deviation: attention dropout is applied to the attention weights as well as to the sublayer outputs.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from ..data.batch import Batch
from ..nn.sequence import CausalTransformerBlock
from .base import Model, ModelConfig, Schema


class SASRec(Model):
    name: ClassVar[str] = "sasrec"
    tasks: ClassVar[frozenset[str]] = frozenset({"topk"})
    inputs: ClassVar[frozenset[str]] = frozenset({"hist", "hist_mask", "candidates"})

    class Config(ModelConfig):
        hidden_dim: int = Field(64, ge=1)
        n_heads: int = Field(2, ge=1)
        n_blocks: int = Field(2, ge=1)
        dropout: float = Field(0.2, ge=0.0, lt=1.0)

    def __init__(self, schema: Schema, config: ModelConfig | None = None):
        super().__init__(schema, config or self.Config())
        cfg = self.config
        d = cfg.hidden_dim
        self.max_len = schema.max_history
        self.item_emb = nn.Embedding(schema.n_items, d, padding_idx=0)
        self.pos_emb = nn.Embedding(self.max_len, d)
        # std d^-1/2: after the sqrt(d) input scale item inputs are ~N(0, 1) per coordinate, and
        # initial output logits (LayerNorm-ed state . embedding) are ~N(0, 1).
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            CausalTransformerBlock(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_blocks)
        )
        self.final_norm = nn.LayerNorm(d)
        self.scale = math.sqrt(d)

    def encode(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids + mask -> (B, L, d) hidden states; state t summarises items 0..t."""
        L = hist.shape[1]
        if L > self.max_len:
            raise ValueError(f"sasrec: history length {L} exceeds schema.max_history={self.max_len}")
        pos = torch.arange(L, device=hist.device)
        x = self.item_emb(hist) * self.scale + self.pos_emb(pos)
        keep = mask.unsqueeze(-1)
        x = torch.where(keep, self.input_dropout(x), torch.zeros((), dtype=x.dtype, device=x.device))
        attn_mask = CausalTransformerBlock.attention_mask(mask)
        for block in self.blocks:
            x = block(x, mask, attn_mask)
        return self.final_norm(x)

    def forward(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch.hist, batch.hist_mask)
        cand = batch.candidates
        if cand is not None and cand.dim() == 1:  # one candidate set shared by every position
            return h @ self.item_emb(cand).T
        if cand is not None and cand.dim() == 3:
            return torch.einsum("bld,blcd->blc", h, self.item_emb(cand))
        last = (batch.hist_mask.sum(1) - 1).clamp(min=0)  # an empty history reads position 0
        state = h[torch.arange(h.shape[0], device=h.device), last]  # (B, d)
        if cand is not None:  # a slate to rank (a service request): index 0, an item without a row, never ranks
            scores = torch.einsum("bd,bcd->bc", state, self.item_emb(cand))
            return scores.masked_fill(cand == 0, float("-inf"))
        scores = state @ self.item_emb.weight.T
        pad = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        pad[0] = True
        return scores.masked_fill(pad, float("-inf"))
