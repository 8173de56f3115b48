"""MFQ: Multi-modal Fusion with learnable Queries (Deng et al., "MMBee: Live Streaming Gift-Sending
Recommendations via Multi-Modal Fusion and Behaviour Expansion", KDD 2024, arXiv:2407.00056, sec. 3.2
"Multi-modal Fusion Module with Learnable Query").

One content vector per stream segment from the token sequences of its modalities (frame embeddings,
speech-utterance embeddings, comment embeddings; a single vector such as MFCC statistics is a 1-token
sequence). The steps follow the paper:
1. per modality m: Linear(D_m -> dim) of every real token, then
2. de-correlation by orthogonal projection: the part of each token explained by the other modalities
   is removed, x <- x - <x, c_m> c_m with c_m the unit direction of the mean pooled representation of
   the segment's other present modalities (the paper derives each modality's component irrelevant to
   the others from their correlation, an orthogonal projection as in MTM, Xi et al. 2023). A
   modality alone in its segment is left as it is;
3. + modality-type embedding + position embedding (token order within the modality);
4. hybrid fusion: `layers` x (cross-attention, where each modality's tokens attend to the tokens of
   the OTHER modalities, then self-attention over all tokens), pre-LayerNorm residual blocks with a
   feed-forward sublayer each;
5. N learnable query tokens, optionally conditioned on the streamer (queries + MLP(streamer
   embedding), so each streamer reads its segments with its own questions), cross-attend to the
   fused tokens -> N content vectors, flattened (`pool="flatten"`, N * dim) or averaged (dim).

Missing content: any modality may be absent for a segment (all-False token mask) and any token slot
may be padding. Only the REAL tokens exist inside MFQ: they are gathered into one packed (N, dim)
table with their segment and slot, every token-wise layer (projections, LayerNorm, feed-forward) runs
on that table, and attention scatters them into a zero-padded (U, S, dim) layout only to read keys
through a boolean mask (masked keys weigh exactly 0; a query with no admissible key returns 0, never
a softmax over nothing, so no NaN). Padded slots are thus never computed and cannot change any
output, whatever they store, and trailing all-padding columns of the batch are dropped before the
attention. On a live-stream batch about a third of the T-padded slots are real, so the packing saves
most of the work. A segment with no content at all gets a learned "no content" vector.

Deviations from the paper:
- the de-correlation projects out ONE direction per modality (the mean of the others' pooled
  vectors) instead of per-pair correlation scores; it is exact, has no parameters and is a switch
  (`decorrelate`);
- the paper extracts the token features with Kuaishou's in-house pre-trained multi-modal model; here
  they come from modalrec's frozen content encoders (image frames, transcribed speech, comments) and
  only the projections onward are learned;
- the output size is fixed by `pool` instead of a further projection (the ranker's MLP follows).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.layers import MLP

Pool = Literal["flatten", "mean"]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allow: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention (U, H, Sq, dh) x (U, H, Sk, dh) with a boolean `allow` (U, 1|H, Sq, Sk).

    A disallowed key gets weight exactly 0; a query with no allowed key returns the zero vector. Such a
    query is let read key 0 inside the kernel (a softmax over nothing would be NaN, also in the backward
    pass) and its output is then replaced by zeros."""
    some = allow.any(-1, keepdim=True)
    first = torch.arange(allow.shape[-1], device=allow.device) == 0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allow | (~some & first))
    return torch.where(some.expand_as(out[..., :1]), out, torch.zeros((), dtype=out.dtype, device=out.device))


def _heads(rows: torch.Tensor, index: torch.Tensor, U: int, S: int, n_heads: int) -> torch.Tensor:
    """Packed rows (N, d) placed at flat positions `index` (N,) of a zero (U, S) layout -> (U, H, S, d / H)."""
    d = rows.shape[-1]
    out = rows.new_zeros(U * S, d).index_copy(0, index, rows)
    return out.view(U, S, n_heads, d // n_heads).transpose(1, 2)


class AttentionBlock(nn.Module):
    """Pre-LayerNorm residual attention block on packed rows: x + Attn(LN(x), LN(kv)), then x + FFN(LN(x)).

    Queries x (Nq, d) sit at flat positions `q_index` of a (U, Sq) layout, keys/values kv (Nk, d) at
    `kv_index` of (U, Sk); `allow` (U, Sq|1, Sk) says which keys each query may read. `kv=None` reads the
    queries' own sequence (self- and cross-modal attention over the same tokens, told apart by `allow`)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, ffn_mult: int = 2, separate_kv: bool = False):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"MFQ dim {dim} is not divisible by the number of heads {n_heads}")
        self.n_heads = n_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim) if separate_kv else None
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, q_index: torch.Tensor, shape_q: tuple[int, int], allow: torch.Tensor,
                kv: torch.Tensor | None = None, kv_index: torch.Tensor | None = None,
                shape_kv: tuple[int, int] | None = None) -> torch.Tensor:
        (U, Sq), H = shape_q, self.n_heads
        h = self.norm_q(x)
        if kv is None:
            kv_index, shape_kv, hkv = q_index, shape_q, h
        else:
            hkv = self.norm_kv(kv)
        Sk = shape_kv[1]
        k, v = self.kv(hkv).chunk(2, dim=-1)
        a = masked_attention(_heads(self.q(h), q_index, U, Sq, H), _heads(k, kv_index, U, Sk, H),
                             _heads(v, kv_index, U, Sk, H), allow.unsqueeze(1))
        a = a.transpose(1, 2).reshape(U * Sq, x.shape[-1]).index_select(0, q_index)
        x = x + self.dropout(self.out(a))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


def decorrelate(x: torch.Tensor, segment: torch.Tensor, kind: torch.Tensor, n_segments: int, n_kinds: int,
                eps: float = 1e-8) -> torch.Tensor:
    """Orthogonal-projection de-correlation across modalities (see the module docstring, step 2).

    Packed real tokens x (N, d) of segment `segment` (N,) and modality `kind` (N,): each token loses its
    component along c = o / sqrt(|o|^2 + eps), o the mean of the pooled (mean) vectors of the OTHER
    modalities present in its segment. With no other modality present o = 0 and the token is unchanged;
    `eps` keeps the normalisation smooth near 0 (no NaN gradient)."""
    key = segment * n_kinds + kind
    sums = x.new_zeros(n_segments * n_kinds, x.shape[-1]).index_add(0, key, x)
    counts = x.new_zeros(n_segments * n_kinds).index_add(0, key, torch.ones_like(x[:, 0]))
    pooled = sums / counts.clamp(min=1.0).unsqueeze(-1)  # 0 for absent (segment, modality) pairs
    present = (counts > 0).to(x.dtype).view(n_segments, n_kinds)
    total = pooled.view(n_segments, n_kinds, -1).sum(1)
    # a token's own modality is present (the token is real), so the others number present - 1
    others = (total[segment] - pooled[key]) / (present.sum(1)[segment] - 1.0).clamp(min=1.0).unsqueeze(-1)
    c = others / torch.sqrt((others * others).sum(-1, keepdim=True) + eps)
    return x - (x * c).sum(-1, keepdim=True) * c


class MFQ(nn.Module):
    """Multi-modal fusion with learnable queries (see the module docstring).

    `token_dims`: modality -> input vector size, in a fixed order; `forward(tokens, masks, streamer)` takes
    for each modality tokens (U, T_m, D_m) with T_m <= `max_tokens` and a mask (U, T_m) bool (True = real
    token), plus the streamer embedding (U, streamer_dim) when `streamer_conditioned`, and returns the
    segment content vectors (U, out_dim)."""

    def __init__(
        self,
        token_dims: dict[str, int],
        dim: int = 32,
        n_queries: int = 4,
        n_heads: int = 2,
        layers: int = 1,
        streamer_conditioned: bool = False,
        dropout: float = 0.0,
        *,
        max_tokens: int = 8,
        streamer_dim: int | None = None,
        decorrelate: bool = True,
        pool: Pool = "flatten",
        init_std: float = 0.02,
    ):
        super().__init__()
        if not token_dims:
            raise ValueError("MFQ needs at least one modality")
        if streamer_conditioned and not streamer_dim:
            raise ValueError("MFQ: streamer-conditioned queries need streamer_dim (the streamer embedding size)")
        self.names = list(token_dims)
        self.project = nn.ModuleDict({name: nn.Linear(d, dim) for name, d in token_dims.items()})
        self.modality = nn.Parameter(torch.randn(len(self.names), dim) * init_std)
        self.position = nn.Parameter(torch.randn(max_tokens, dim) * init_std)
        # per layer: cross-modal attention, then self-attention over all tokens (even / odd blocks)
        self.fusion = nn.ModuleList(AttentionBlock(dim, n_heads, dropout) for _ in range(2 * layers))
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * init_std)
        self.condition = (
            MLP(streamer_dim, [dim], activation="gelu", out_dim=dim) if streamer_conditioned else None
        )
        self.read = AttentionBlock(dim, n_heads, dropout, separate_kv=True)
        self.norm_out = nn.LayerNorm(dim)
        self.pool = pool
        self.do_decorrelate = decorrelate
        self.max_tokens = max_tokens
        self.n_queries = n_queries
        self.out_dim = self.output_dim(dim, n_queries, pool)
        self.no_content = nn.Parameter(torch.randn(self.out_dim) * init_std)

    @staticmethod
    def output_dim(dim: int, n_queries: int, pool: Pool) -> int:
        return dim * n_queries if pool == "flatten" else dim

    def pack(self, tokens: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]):
        """Real tokens of every modality -> (x (N, dim) projected, segment (N,), slot (N,) in the concatenated
        sequence, modality (N,), position (N,) within the modality, widths per modality)."""
        rows, segs, slots, kinds, pos, widths = [], [], [], [], [], []
        offset = 0
        for i, name in enumerate(self.names):
            if name not in tokens or name not in masks:
                raise KeyError(f"MFQ reads modality '{name}' but got tokens for {sorted(tokens)}")
            t, m = tokens[name], masks[name].to(torch.bool)
            if t.dim() != 3 or t.shape[1] > self.max_tokens or m.shape != t.shape[:2]:
                raise ValueError(f"MFQ: '{name}' tokens {tuple(t.shape)} with mask {tuple(m.shape)}; expected "
                                 f"(U, T, D) and (U, T) with T <= {self.max_tokens}")
            cols = m.any(0).nonzero()
            width = int(cols.max()) + 1 if len(cols) else 0  # trailing all-padding columns: dropped
            u, j = m[:, :width].nonzero(as_tuple=True)
            proj = self.project[name]
            rows.append(proj(t[u, j].to(proj.weight.dtype)))
            segs.append(u)
            slots.append(j + offset)
            kinds.append(torch.full_like(u, i))
            pos.append(j)
            widths.append(width)
            offset += width
        return (torch.cat(rows), torch.cat(segs), torch.cat(slots), torch.cat(kinds), torch.cat(pos),
                torch.tensor(widths, device=rows[0].device))

    def forward(
        self,
        tokens: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        streamer: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.condition is not None and streamer is None:
            raise ValueError("MFQ: streamer-conditioned queries need the streamer embedding")
        U = next(iter(masks.values())).shape[0] if masks else 0
        x, seg, slot, kind, pos, widths = self.pack(tokens, masks)
        S = int(widths.sum())
        if S == 0:  # not a single token in the batch
            return self.no_content.unsqueeze(0).expand(U, -1)
        if self.do_decorrelate and len(self.names) > 1:
            x = decorrelate(x, seg, kind, U, len(self.names))
        x = x + self.modality[kind] + self.position[pos]
        flat = seg * S + slot
        valid = torch.zeros(U * S, dtype=torch.bool, device=x.device).index_fill(0, flat, True).view(U, S)
        slot_kind = torch.repeat_interleave(torch.arange(len(self.names), device=x.device), widths)
        other = slot_kind.unsqueeze(1) != slot_kind.unsqueeze(0)  # (S, S): another modality's slot
        cross = other.unsqueeze(0) & valid.unsqueeze(1)
        every = valid.unsqueeze(1)
        for i, block in enumerate(self.fusion):
            x = block(x, flat, (U, S), cross if i % 2 == 0 else every)
        q = self.queries.unsqueeze(0).expand(U, -1, -1)
        if self.condition is not None:
            q = q + self.condition(streamer).unsqueeze(1)
        N = self.n_queries
        q_index = torch.arange(U * N, device=x.device)
        q = self.read(q.reshape(U * N, -1), q_index, (U, N), every, kv=x, kv_index=flat, shape_kv=(U, S))
        q = self.norm_out(q.view(U, N, -1))
        out = q.flatten(1) if self.pool == "flatten" else q.mean(1)
        has_content = valid.any(1, keepdim=True)
        return torch.where(has_content, out, self.no_content.to(out.dtype))
