"""Layers that read a behaviour sequence (B, L, d) with its mask (B, L) (True = real position).

The contract of every layer here: a padded position never changes any output that belongs to a
real position, whatever id, features or even NaN it holds. Padded values are selected away with
`torch.where` (never multiplied by 0, since 0 * NaN = NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, Activation


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 of the real positions: (..., L, d), (..., L) -> (..., d); 0 if none is real."""
    m = mask.unsqueeze(-1)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-2)
    count = m.sum(-2).clamp(min=1).to(x.dtype)
    return total / count


class TargetAttention(nn.Module):
    """DIN's local activation unit (Zhou et al., KDD 2018, sec. 4.3 and fig. 2).

    For each history item k and the target q, an MLP over [q, k, q - k, q * k] gives a score; the
    user interest is the score-weighted SUM of the history. As in the paper the scores are not
    softmax-normalised, so the pooled vector keeps the intensity of the interest (`softmax=True`
    switches to normalised weights). The MLP is evaluated on the real positions only: this saves
    work on short histories and keeps Dice / BatchNorm statistics free of padding.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 32),
        activation: Activation = "prelu",
        dropout: float = 0.0,
        softmax: bool = False,
    ):
        super().__init__()
        self.mlp = MLP(4 * dim, hidden, activation=activation, dropout=dropout, out_dim=1)
        self.softmax = softmax

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights (B, L); exactly 0 on padded positions."""
        rows = mask.nonzero()[:, 0]  # row of each of the N real positions, in keys[mask] order
        return self._dense(self._real_scores(query, rows, keys[mask]), mask)

    def pool_table(self, query: torch.Tensor, table: torch.Tensor, index: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
        """`forward(query, table[index], mask)` without building the (B, L, d) history: query (B, d), table (U, d)
        (one row per distinct item of the batch), index (B, L) rows of `table`, mask (B, L) -> (B, d).

        The per-position term of the first layer, (Wk - Wd) k, is computed once per distinct item (a batch of
        1024 x 50 positions holds a few thousand), the real positions are gathered from the table once, and the
        pooling is a scatter-add over them instead of a masked (B, L, d) product: same function, about a
        quarter less work in a DIN training step."""
        rows, cols = mask.nonzero(as_tuple=True)  # the N real positions, row-major as keys[mask]
        at = index[rows, cols]
        k = table[at]  # (N, d)
        return self.pool_packed(query, rows, cols, k, mask, self._real_scores(query, rows, k, table, at))

    def pool_packed(self, query: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, k: torch.Tensor,
                    mask: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """`forward(query, keys, mask)` from the keys of the real positions only: `rows, cols =
        mask.nonzero(as_tuple=True)` and k (N, d) their keys (`keys[mask]`), e.g. gathered from a table without
        building the (B, L, d) history -> (B, d). `real`: their scores when already computed. Same function; the
        pooling is a scatter-add over the N positions instead of a masked (B, L, d) product."""
        if real is None:
            real = self._real_scores(query, rows, k)  # (N,)
        if self.softmax:
            real = self._dense(real, mask)[rows, cols]
        out = torch.zeros(query.shape[0], k.shape[-1], dtype=k.dtype, device=k.device)
        return out.index_add(0, rows, real.unsqueeze(-1) * k)

    def _real_scores(self, query: torch.Tensor, rows: torch.Tensor, k: torch.Tensor,
                     table: torch.Tensor | None = None, at: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised scores (N,) of the N real positions: keys k (N, d) in rows `rows` of the query. With
        `table` and `at` (k = table[at]) the key term is computed once per table row."""
        # The first layer W [q, k, q - k, q * k] + b equals (Wq + Wd) q + (Wk - Wd) k + Wp (q * k) + b:
        # the q term is computed once per row instead of once per position and the 4d-wide input is
        # never built, which halves the work of the layer that dominates DIN's step.
        first, rest = self.mlp.net[0], self.mlp.net[1:]
        wq, wk, wd, wp = first.weight.split(query.shape[-1], dim=1)
        key_term = F.linear(k, wk - wd) if table is None else F.linear(table, wk - wd)[at]
        h1 = F.linear(query, wq + wd, first.bias)[rows] + key_term + F.linear(query[rows] * k, wp)
        return rest(h1).squeeze(-1)

    def _dense(self, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) weights from the real positions' scores: 0 on padding, softmax-normalised with `softmax`."""
        scores = torch.zeros(mask.shape, dtype=real.dtype, device=real.device).masked_scatter(mask, real)
        if not self.softmax:
            return scores
        # The finite floor instead of -inf keeps rows with no real position free of NaN (their
        # softmax is uniform over padding and is then zeroed).
        floor = torch.finfo(scores.dtype).min
        w = torch.softmax(scores.masked_fill(~mask, floor), dim=-1)
        return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        values: torch.Tensor | None = None,
        shared: bool = False,
    ) -> torch.Tensor:
        """query (B, d), keys (B, L, d), mask (B, L) -> pooled (B, d_values). `shared`: every row reads one
        history (`Batch.shared_history`), which the serving transform (`nn.serving`) computes once."""
        values = keys if values is None else values
        w = self.weights(query, keys, mask)
        v = torch.where(mask.unsqueeze(-1), values, torch.zeros((), dtype=values.dtype, device=values.device))
        return torch.einsum("bl,bld->bd", w, v)


class CausalTransformerBlock(nn.Module):
    """One self-attention block of SASRec (Kang & McAuley, ICDM 2018, sec. III-B/C).

    Pre-LayerNorm residual sublayers, g(x) = x + Dropout(g(LayerNorm(x))) as written in the paper,
    with a point-wise two-layer ReLU feed-forward. Position i attends to positions j <= i that are
    real; every position may attend to itself so that a row made only of padding has a defined
    (and afterwards discarded) output instead of NaN. Padded positions leave the block as zeros.
    """

    def __init__(self, dim: int, n_heads: int = 1, dropout: float = 0.0, ffn_dim: int | None = None):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by the number of heads {n_heads}")
        self.n_heads = n_heads
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        ffn_dim = ffn_dim or dim
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    @staticmethod
    def attention_mask(mask: torch.Tensor) -> torch.Tensor:
        """(B, L) real-position mask -> (B, 1, L, L) bool, True where query i may read key j."""
        L = mask.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=mask.device)
        return (causal & (mask[:, None, :] | eye)).unsqueeze(1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, L, D = x.shape
        if attn_mask is None:
            attn_mask = self.attention_mask(mask)
        q, k, v = self.qkv(self.norm_attn(x)).view(B, L, 3, self.n_heads, D // self.n_heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        x = x + self.dropout(self.proj(a.transpose(1, 2).reshape(B, L, D)))
        x = x + self.dropout(self.ffn(self.norm_ffn(x)))
        return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
