"""QIN: Quadratic Interest Network (Li et al., "Quadratic Interest Network for Multimodal
Click-Through Rate Prediction", WWW 2025 EReL@MIR Multimodal CTR challenge; arXiv 2504.17699).

Item vectors come from the shared `ItemEncoder`: [id embedding | categorical embeddings | tags
(masked mean over the multi-valued features) | projection of each dense multimodal vector, with
a learned "missing" embedding where the modality is absent].

Adaptive Sparse Target Attention (ASTA), single head:
    q = W_q x_t,  k_j = W_k x_j,  v_j = W_v x_j,  a_j = ReLU(<q, k_j> / sqrt(d_a)),
    o = W_o (Σ_j a_j v_j) + x_t
ReLU replaces the softmax: weights are unnormalised and exactly 0 for behaviours with a negative
score, so irrelevant behaviours drop out instead of diluting the others; padded positions get
weight exactly 0 whatever they hold.

Quadratic Neural Network (QNN) on x0 = [user (`use_user`), x_t, o]:
    x <- x + Dropout(PReLU(BN(x ⊙ Σ_{r=1..R} Dropout(W_r x + b_r))))      (L layers)
then a Linear head gives the logit. Each layer multiplies the input with a linear map of itself,
so layer l holds feature crosses up to degree 2^l.

Notes and deviations:
- the R rows sum to ONE linear map at inference (Σ_r W_r x + b_r = W x + b); they differ only in
  training, where each row gets its own dropout mask before the sum, as in the authors' code.
  `num_rows` therefore acts as a regulariser, not as extra capacity;
- the authors' attention dimension is twice the item vector size (`attention_dim: null`);
- per-sample fields (the challenge's likes/views levels, `task.context_features`) join x0 as
  embeddings after o, as in the challenge's baselines; item categorical features reach x0 through x_t and o;
- with `batch_norm` in training mode a batch of one row is normalised with the running
  statistics instead of failing;
- the authors' L2 on the embedding tables (FuxiCTR's `embedding_regularizer` 2e-4, whole tables, every
  batch) is the default `embedding_reg`.

Training defaults of the authors (lr 2e-3, batch 8192, embedding 128, LR halved after every epoch
without improvement) are in `configs/qin_microlens.yaml`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.batch import Batch
from ..nn.item_encoder import ITEM_INPUTS, ItemEncoder, user_encoder
from ..nn.layers import context_embedding, id_embedding, versions
from .base import Model, ModelConfig, Schema


class SparseTargetAttention(nn.Module):
    """ASTA: query (B, d), keys (B, L, d), mask (B, L) -> (B, d) = W_o(ReLU-weighted values) + query."""

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.q = nn.Linear(dim, attention_dim, bias=False)
        self.k = nn.Linear(dim, attention_dim, bias=False)
        self.v = nn.Linear(dim, attention_dim, bias=False)
        self.o = nn.Linear(attention_dim, dim)
        self.scale = math.sqrt(attention_dim)
        self._folded: tuple | None = None  # (weights' key, M, O): `folded`

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, O), (d, d) each: M = W_q^T W_k / sqrt(d_a), so that a score is x_t^T M x_j, and O = W_o W_v, so
        that the output is Σ_j a_j O x_j + b_o. Computed once, again only after the weights change."""
        ws = (self.q.weight, self.k.weight, self.v.weight, self.o.weight)
        key = versions(*ws)
        if self._folded is None or self._folded[0] != key:
            wq, wk, wv, wo = (w.detach() for w in ws)
            self._folded = (key, wq.T @ wk / self.scale, wo @ wv)
        return self._folded[1], self._folded[2]

    def _served(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """forward for one history (L, d) shared by every row, without grad: with the folded maps the work per
        request is four (d x d)-sized products instead of projecting into the attention width and back."""
        m, o = self.folded()
        keys = torch.where(mask.unsqueeze(-1), keys, torch.zeros((), dtype=keys.dtype, device=keys.device))
        scores = query @ (m @ keys.T)  # (B, L)
        w = torch.where(mask, F.relu(scores), torch.zeros((), dtype=scores.dtype, device=scores.device))
        return torch.addmm(self.o.bias, w, keys @ o.T) + query

    def _keys_values(self, keys: torch.Tensor, mask: torch.Tensor,
                     shared: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(K, V, shared) of the masked keys (padding zeroed); with one history for every row (`shared`,
        `Batch.shared_history`), K and V are projected once, (1, L, a)."""
        shared = shared and keys.shape[0] > 1
        if shared:
            keys, mask = keys[:1], mask[:1]
        keys = torch.where(mask.unsqueeze(-1), keys, torch.zeros((), dtype=keys.dtype, device=keys.device))
        return self.k(keys), self.v(keys), shared

    def _weights(self, query: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, shared: bool) -> torch.Tensor:
        q = self.q(query)
        scores = (q @ k[0].T if shared else torch.bmm(k, q.unsqueeze(-1)).squeeze(-1)) / self.scale
        return torch.where(mask, F.relu(scores), torch.zeros((), dtype=scores.dtype, device=scores.device))

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                shared: bool = False) -> torch.Tensor:
        """(B, L) non-negative, unnormalised; exactly 0 on padding and on negative scores."""
        k, _, shared = self._keys_values(keys, mask, shared)
        return self._weights(query, k, mask, shared)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                shared: bool = False) -> torch.Tensor:
        if shared and keys.shape[0] > 1 and not self.training and not torch.is_grad_enabled():
            return self._served(query, keys[0], mask[0])
        k, v, shared = self._keys_values(keys, mask, shared)
        w = self._weights(query, k, mask, shared)
        pooled = w @ v[0] if shared else torch.bmm(w.unsqueeze(1), v).squeeze(1)
        return self.o(pooled) + query


class QuadraticLayer(nn.Module):
    """x + Dropout(PReLU(BN(x ⊙ Σ_r Dropout(W_r x + b_r))))."""

    def __init__(self, dim: int, num_rows: int, dropout: float, batch_norm: bool):
        super().__init__()
        self.rows = nn.Linear(dim, dim * num_rows)
        self.num_rows = num_rows
        self.row_dropout = nn.Dropout(dropout)
        self.norm = nn.BatchNorm1d(dim) if batch_norm else None
        self.activation = nn.PReLU()
        self.dropout = nn.Dropout(dropout)
        self._folded: tuple | None = None  # (weights' key, W, b, shift): `folded`

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The layer in eval mode as x + PReLU(x ⊙ (W x + b) + shift): W, b are the R rows summed (without
        dropout they are one linear map, R times cheaper) and scaled by BatchNorm's running scale, shift is
        BatchNorm's (None without it). Computed once, again only after the weights or statistics change."""
        n, w, b = self.norm, self.rows.weight, self.rows.bias
        ts = [w, b] + ([n.weight, n.bias, n.running_mean, n.running_var] if n is not None else [])
        key = versions(*ts)
        if self._folded is None or self._folded[0] != key:
            d = w.shape[1]
            w_sum, b_sum = w.detach().view(self.num_rows, d, d).sum(0), b.detach().view(self.num_rows, d).sum(0)
            shift = None
            if n is not None:
                scale = n.weight.detach() / torch.sqrt(n.running_var + n.eps)
                w_sum, b_sum = w_sum * scale.unsqueeze(1), b_sum * scale
                shift = n.bias.detach() - n.running_mean * scale
            self._folded = (key, w_sum, b_sum, shift)
        return self._folded[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training and not torch.is_grad_enabled()
                and (self.norm is None or self.norm.running_var is not None)):
            w, b, shift = self.folded()
            h = F.linear(x, w, b)
            y = x * h if shift is None else torch.addcmul(shift, x, h)
            return x + self.activation(y)
        h = self.row_dropout(self.rows(x)).view(*x.shape[:-1], self.num_rows, x.shape[-1]).sum(-2)
        y = x * h
        if self.norm is not None:
            if self.training and y.shape[0] < 2:  # no variance in one row: use the running statistics
                n = self.norm
                y = F.batch_norm(y, n.running_mean, n.running_var, n.weight, n.bias, training=False, eps=n.eps)
            else:
                y = self.norm(y)
        return x + self.dropout(self.activation(y))


class QIN(Model):
    name: ClassVar[str] = "qin"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr"})
    inputs: ClassVar[frozenset[str]] = ITEM_INPUTS | frozenset({"user", "user_side", "user_presence", "context"})

    class Config(ModelConfig):
        embed_dim: int = Field(128, ge=1)
        attention_dim: int | None = Field(None, ge=1)  # None: 2 x the item vector size
        num_layers: int = Field(4, ge=1)
        num_rows: int = Field(4, ge=1)  # the authors report 3 as the more stable choice
        dropout: float = Field(0.1, ge=0.0, lt=1.0)
        batch_norm: bool = True
        use_user: bool = True
        use_content: bool = True
        embedding_reg: float = Field(2e-4, ge=0.0)  # the authors' `embedding_regularizer`

    def __init__(self, schema: Schema, config: ModelConfig | None = None):
        super().__init__(schema, config or self.Config())
        cfg = self.config
        self.items = ItemEncoder(schema, cfg.embed_dim, use_content=cfg.use_content)
        self.user = id_embedding(schema.n_users, cfg.embed_dim, counts=schema.user_counts) if cfg.use_user else None
        d = self.items.out_dim
        self.attention = SparseTargetAttention(d, cfg.attention_dim or 2 * d)
        self.context = context_embedding(schema, cfg.embed_dim)  # None without task.context_features
        self.user_features = user_encoder(schema, cfg.embed_dim)  # None without user side features
        x_dim = 2 * d + (cfg.embed_dim if cfg.use_user else 0) + (self.context.out_dim if self.context else 0)
        x_dim += self.user_features.out_dim if self.user_features else 0
        self.qnn = nn.ModuleList(
            QuadraticLayer(x_dim, cfg.num_rows, cfg.dropout, cfg.batch_norm) for _ in range(cfg.num_layers)
        )
        self.head = nn.Linear(x_dim, 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        target, hist = self.items.encode(batch)
        parts = [target, self.attention(target, hist, batch.hist_mask, shared=batch.shared_history)]
        if self.user is not None:
            parts.insert(0, self.user(batch.user))
        if self.context is not None:
            parts.append(self.context(batch))
        if self.user_features is not None:
            parts.append(self.user_features(batch))
        x = torch.cat(parts, dim=-1)
        for layer in self.qnn:
            x = layer(x)
        return self.head(x).squeeze(-1)
