"""SIM: Search-based Interest Model (Pi et al., "Search-based User Interest Modeling with Lifelong
Sequential Behavior Data for Click-Through Rate Prediction", CIKM 2020).

Two cascaded stages read the long history (everything in `batch.hist`):
- General Search Unit (GSU, sec. 3.1) keeps the top-k behaviours relevant to the target:
  `hard` search keeps the behaviours whose category equals the target's (most recent first);
  `soft` search ranks them by the inner product of separately projected target and behaviour
  vectors, r_i = <W_b e_i, W_a e_t>.
- Exact Search Unit (ESU, sec. 3.2): multi-head target attention (masked softmax) over the k
  retrieved behaviours, each represented as z_j = [e_j, t_j] where t_j embeds the bucketised
  log-seconds between the behaviour and the sample (`hist_time`).
Next to it a DIN-style attention (local activation unit, `nn.TargetAttention`) reads the most
recent `short_len` behaviours, and [user, target, long-term, short-term, context features (if any)] -> MLP
-> logit.

Both searches are vectorised over the batch: hard search scores position j as
`match_j * 2L + j` (a matching behaviour always outranks a non-matching one, ties broken by
recency) and takes `topk`; positions that do not match (or are padding) are carried as invalid
slots the ESU masks out, so they can never change the output.

Deviations from the paper:
- the paper trains the soft-search embeddings with an auxiliary CTR loss on the whole sequence.
  The `Model` contract has no auxiliary loss, so here the soft-search relevance r_j of each
  retrieved behaviour is added to its ESU attention logits (`soft_bias`), which lets the main
  loss train W_a / W_b through the (otherwise non-differentiable) top-k;
- with no `hist_time` in the batch (data without a clock) a learned "unknown time" bucket is
  used; `use_time: false` drops the time embedding;
- the hard-search category is an item categorical feature (`category_feature`, default the first
  of `schema.item_categorical`); category 0 (padding/unknown) never matches. Without any
  categorical feature the model falls back to soft search;
- item vectors may include dense content projections (`use_content`), as in every modalrec model.

`MultiHeadTargetAttention`, `log_time_buckets` and `recent_mask` are shared with SDIM and TIN; MMBee
builds on SIM itself (wider item vectors through `item_vectors`, extra MLP inputs next to `interests`).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.batch import Batch
from ..nn.item_encoder import ITEM_INPUTS, HistoryRows, ItemEncoder, user_encoder
from ..nn.layers import MLP, Activation, context_embedding, id_embedding
from ..nn.sequence import TargetAttention
from .base import Model, ModelConfig, Schema


def log_time_buckets(hist_time: torch.Tensor | None, mask: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Seconds between behaviour and sample -> bucket floor(log2(1 + dt)) in [0, n_buckets - 1].

    `hist_time=None` (no clock in the data) gives the extra bucket `n_buckets`, which callers keep
    as a learned "unknown time" embedding. Padded positions get bucket 0 (they are masked anyway)."""
    if hist_time is None:
        return torch.full(mask.shape, n_buckets, dtype=torch.long, device=mask.device)
    dt = hist_time.to(torch.float32)
    dt = torch.where(mask & torch.isfinite(dt), dt.clamp(min=0.0), torch.zeros((), device=dt.device))
    return torch.log2(1.0 + dt).floor().long().clamp(0, n_buckets - 1)


def recent_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    """The last `n` real positions of each left-aligned history (B, L) -> (B, L) bool."""
    length = mask.sum(1, keepdim=True)
    pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return mask & (pos >= length - n)


class MultiHeadTargetAttention(nn.Module):
    """Target attention with `n_heads` scaled dot-product heads and a masked softmax.

    query (B, dq), keys (B, K, dk), mask (B, K) -> (B, dim): the concatenated heads. `key_bias`
    (B, K), if given, is added to every head's logits. Padded keys are selected away before the
    projections and get weight exactly 0; a row with no real key returns the zero vector."""

    def __init__(self, query_dim: int, key_dim: int, dim: int, n_heads: int = 2):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"attention dim {dim} is not divisible by the number of heads {n_heads}")
        self.n_heads = n_heads
        self.q = nn.Linear(query_dim, dim, bias=False)
        self.k = nn.Linear(key_dim, dim, bias=False)
        self.v = nn.Linear(key_dim, dim, bias=False)
        self.out_dim = dim

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        key_bias: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        zero = torch.zeros((), dtype=keys.dtype, device=keys.device)
        keys = torch.where(mask.unsqueeze(-1), keys, zero)
        values = keys if values is None else torch.where(mask.unsqueeze(-1), values, zero)
        return self.attend(query, self.k(keys), self.v(values), mask, key_bias)

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
               key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """The attention on keys and values already projected by `self.k` / `self.v` (B, K, dim): lets a
        caller project each distinct key once and gather (a history shared by every row of a batch)."""
        B, K, _ = k.shape
        H = self.n_heads
        q = self.q(query).view(B, 1, H, -1)
        k = k.reshape(B, K, H, -1)
        v = v.reshape(B, K, H, -1)
        # Products and sums over (B, K, H, d) rather than einsum: with a few short heads einsum becomes B x H
        # tiny matrix products plus permuted copies, about twice the time forward and backward.
        scores = (k * q).sum(-1) / math.sqrt(q.shape[-1])  # (B, K, H)
        if key_bias is not None:
            zb = torch.zeros((), dtype=key_bias.dtype, device=key_bias.device)
            scores = scores + torch.where(mask, key_bias, zb).unsqueeze(-1)
        m = mask.unsqueeze(-1)
        # Finite floor, not -inf: a row without any real key stays NaN-free and is zeroed below.
        w = torch.softmax(scores.masked_fill(~m, torch.finfo(scores.dtype).min), dim=1)
        w = torch.where(m, w, torch.zeros((), dtype=w.dtype, device=w.device))
        return (w.unsqueeze(-1) * v).sum(1).reshape(B, -1)



class SIM(Model):
    name: ClassVar[str] = "sim"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr"})
    inputs: ClassVar[frozenset[str]] = ITEM_INPUTS | frozenset({"user", "user_side", "user_presence", "hist_time",
                                                               "context"})

    class Config(ModelConfig):
        embed_dim: int = Field(32, ge=1)
        search: Literal["hard", "soft"] = "hard"
        category_feature: str | None = None  # hard search: item categorical feature (None: the first)
        top_k: int = Field(20, ge=1)
        soft_dim: int = Field(32, ge=1)  # soft search: projection size of W_a / W_b
        soft_bias: bool = True  # soft search: add r_j to the ESU logits so W_a / W_b are trained
        n_heads: int = Field(2, ge=1)
        time_buckets: int = Field(32, ge=1)  # floor(log2(1 + seconds)); the last bucket holds >= 2^31 s
        use_time: bool = True
        short_len: int = Field(20, ge=0)  # 0 switches the short-term attention off
        attention_hidden: list[int] = Field(default_factory=lambda: [64, 32])
        attention_activation: Activation = "prelu"
        mlp_hidden: list[int] = Field(default_factory=lambda: [200, 80])
        activation: Activation = "prelu"
        dropout: float = Field(0.1, ge=0.0, lt=1.0)
        use_content: bool = True
        use_item_id: bool = Field(True, description="embed the item id (False: items are described by their side "
                                  "features and content only, for items that never recur such as stream segments)")
        use_user_id: bool = Field(
            True, description="embed the user id as an MLP input (False: the user is described by their behaviour "
            "only; the slot holds zeros). A per-user table memorises each training user's rate: across users it "
            "ranks by who gifted in the training period, and users with no positives drift apart by their number "
            "of negatives, which costs AUC across users from the second epoch on")
        user_dropout: float = Field(
            0.0, ge=0.0, lt=1.0, description="training only: each sample's user id embedding is zeroed with this "
            "probability (ID dropout, as DropoutNet does for cold start), so the rest of the ranker must score the "
            "user from their behaviour as it must for a user the table knows nothing about")
        sparse_grad: bool = Field(
            False, description="the id tables (item id, item and user side features, user id; MMBee's streamer "
            "table) take sparse gradients and the Trainer's Adam updates only the rows a batch read (lazy Adam, "
            "`nn.sparse`): at hundreds of thousands of ids (KuaiLive's streamers) the dense update of every row "
            "dominates the step. Rows no batch reads keep their weights instead of drifting on Adam's momentum")

    def __init__(self, schema: Schema, config: ModelConfig | None = None, *, item_extra_dim: int = 0,
                 mlp_extra_dim: int = 0):
        """`item_extra_dim` widens every item vector beyond the `ItemEncoder` output and `mlp_extra_dim`
        adds MLP inputs: for rankers built on SIM (MMBee's content vectors and graph interests), which
        override `item_vectors` / `forward` to supply them."""
        super().__init__(schema, config or self.Config())
        cfg = self.config
        self.items = ItemEncoder(schema, cfg.embed_dim, use_content=cfg.use_content, use_id=cfg.use_item_id)
        self.user = id_embedding(schema.n_users, cfg.embed_dim, counts=schema.user_counts) if cfg.use_user_id else None
        d = self.items.out_dim + item_extra_dim
        self.search = cfg.search
        self.category: str | None = None
        if cfg.search == "hard":
            if cfg.category_feature is not None:
                if cfg.category_feature not in schema.item_categorical:
                    raise ValueError(
                        f"sim: category_feature '{cfg.category_feature}' is not an item categorical feature; "
                        f"the schema has {sorted(schema.item_categorical)}"
                    )
                self.category = cfg.category_feature
            elif schema.item_categorical:
                self.category = next(iter(schema.item_categorical))
            else:
                self.search = "soft"  # no category to search by
        if self.search == "soft":
            self.search_target = nn.Linear(d, cfg.soft_dim, bias=False)  # W_a
            self.search_behaviour = nn.Linear(d, cfg.soft_dim, bias=False)  # W_b
        self.time = nn.Embedding(cfg.time_buckets + 1, d) if cfg.use_time else None  # + "unknown"
        if self.time is not None:
            nn.init.normal_(self.time.weight, std=0.05)
        self.esu = MultiHeadTargetAttention(d, d * (2 if cfg.use_time else 1), d, cfg.n_heads)
        self.short = (
            TargetAttention(d, cfg.attention_hidden, activation=cfg.attention_activation)
            if cfg.short_len > 0 else None
        )
        self.context = context_embedding(schema, cfg.embed_dim)  # None without task.context_features
        in_dim = cfg.embed_dim + d * (3 if self.short is not None else 2) + mlp_extra_dim
        in_dim += self.context.out_dim if self.context else 0
        self.user_features = user_encoder(schema, cfg.embed_dim)  # None without user side features
        in_dim += self.user_features.out_dim if self.user_features else 0
        self.mlp = MLP(in_dim, cfg.mlp_hidden, activation=cfg.activation, dropout=cfg.dropout, out_dim=1)
        self.use_sparse_grad()

    def id_tables(self) -> list[nn.Module]:
        """The embedding tables indexed by ids (`sparse_grad`): item id, item side features, user id, user side
        features."""
        tables = [self.items.id, *self.items.categorical.values(), *self.items.multi.values(), self.user]
        if self.user_features is not None:
            tables += [*self.user_features.categorical.values(), *self.user_features.multi.values()]
        return [t for t in tables if t is not None]

    def use_sparse_grad(self) -> None:
        """With `sparse_grad`, the id tables give their weights sparse gradients (the Trainer turns this off
        where its optimizer cannot take them)."""
        if self.config.sparse_grad:
            for t in self.id_tables():
                t.sparse = True

    def general_search(
        self, batch: Batch, target: torch.Tensor, hist: torch.Tensor | HistoryRows
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """GSU: indices (B, k) of the retrieved positions, their validity (B, k), soft scores (B, k)."""
        mask = batch.hist_mask
        L = mask.shape[1]
        k = min(self.config.top_k, L)
        if self.search == "hard":
            cat_t = batch.item_side[self.category]
            cat_h = batch.hist_side[self.category]
            match = mask & (cat_h == cat_t.unsqueeze(1)) & (cat_t.unsqueeze(1) != 0)
            pos = torch.arange(L, device=mask.device, dtype=torch.float32).unsqueeze(0)
            score = torch.where(mask, match.float() * (2 * L) + pos, torch.full((), -1.0, device=mask.device))
            idx = score.topk(k, dim=1).indices
            return idx, match.gather(1, idx), None
        hist = HistoryRows.of(hist).dense()
        zero = torch.zeros((), dtype=hist.dtype, device=hist.device)
        qa = self.search_target(target)
        kb = self.search_behaviour(torch.where(mask.unsqueeze(-1), hist, zero))
        r = torch.einsum("bd,bld->bl", qa, kb)
        ranked = r.detach().masked_fill(~mask, float("-inf"))
        idx = ranked.topk(k, dim=1).indices
        return idx, mask.gather(1, idx), r.gather(1, idx)

    def forward(self, batch: Batch) -> torch.Tensor:
        target, hist = self.item_vectors(batch)
        return self.mlp(torch.cat(self.interests(batch, target, hist), dim=-1)).squeeze(-1)

    def item_vectors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | HistoryRows]:
        """(target (B, d), history (B, L, d)): the vectors the searches and attentions read; the history as a
        `HistoryRows` where the batch allows (gathered only at the positions the attentions read)."""
        return self.items.encode_rows(batch)

    def user_vector(self, batch: Batch) -> torch.Tensor:
        """(B, embed_dim): the user's id embedding, or zeros with use_user_id: false."""
        if self.user is None:
            return batch.user.new_zeros((batch.size, self.config.embed_dim), dtype=torch.float32)
        vec = self.user(batch.user)
        p = self.config.user_dropout
        if self.training and p > 0.0:  # drawn from torch's seeded generator: seeded runs and --resume stay exact
            vec = vec * (torch.rand(batch.size, 1, device=vec.device) >= p).to(vec.dtype)
        return vec

    def interests(self, batch: Batch, target: torch.Tensor, hist: torch.Tensor | HistoryRows) -> list[torch.Tensor]:
        """The MLP inputs [user, target, long-term (ESU over the GSU's top-k), short-term, context features
        (with task.context_features), the user's side features (where the data has them)]. `hist`: the history's
        item vectors (B, L, d), a tensor or a `HistoryRows`."""
        cfg = self.config
        mask = batch.hist_mask
        hist = HistoryRows.of(hist)
        idx, valid, soft = self.general_search(batch, target, hist)
        bias = soft if (soft is not None and cfg.soft_bias) else None
        shared = batch.shared_history and batch.size > 1
        if shared:
            # one history for every row (a service request): project each position once, then gather
            z = hist.dense()[0]
            if self.time is not None:
                z = torch.cat([z, self.time(log_time_buckets(batch.hist_time[:1], mask[:1], cfg.time_buckets)[0])], -1)
            long_term = self.esu.attend(target, self.esu.k(z)[idx], self.esu.v(z)[idx], valid, key_bias=bias)
        else:
            buckets = (log_time_buckets(batch.hist_time, mask, cfg.time_buckets).gather(1, idx)
                       if self.time is not None else None)
            long_term = self.exact_search(target, hist.at(idx), buckets, valid, bias)
        parts = [self.user_vector(batch), target, long_term]
        if self.short is not None:
            recent = recent_mask(mask, cfg.short_len)
            unit = self.short if isinstance(self.short, TargetAttention) else getattr(self.short, "att", None)
            if shared or not isinstance(unit, TargetAttention):
                parts.append(self.short(target, hist.dense(), recent, shared=batch.shared_history))
            else:  # the real recent positions only, gathered packed: no (B, L, d) history is built
                r, c = recent.nonzero(as_tuple=True)
                parts.append(unit.pool_packed(target, r, c, hist.rows(r, c), recent))
        if self.context is not None:
            parts.append(self.context(batch))
        if self.user_features is not None:
            parts.append(self.user_features(batch))
        return parts

    def exact_search(self, target: torch.Tensor, retrieved: torch.Tensor, buckets: torch.Tensor | None,
                     valid: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """ESU over the retrieved behaviours e_j (B, k, d) with their time buckets (B, k): the multi-head target
        attention over z_j = [e_j, t_j] (`self.esu`), its key and value projections computed as one product of
        e_j and a lookup of the projected time table, W [e, t] = W_e e + (W_t T)[bucket] (T has 33 rows): a
        third of the arithmetic of projecting every z_j twice. Invalid slots hold zero keys and values, as
        `MultiHeadTargetAttention.forward` gives them."""
        zero = torch.zeros((), dtype=retrieved.dtype, device=retrieved.device)
        e = torch.where(valid.unsqueeze(-1), retrieved, zero)
        w = torch.cat([self.esu.k.weight, self.esu.v.weight])  # (2 dim, d [+ d])
        d = e.shape[-1]
        kv = F.linear(e, w[:, :d])
        if self.time is not None:
            times = F.linear(self.time.weight, w[:, d:])  # (buckets + 1, 2 dim)
            times = torch.cat([times, times.new_zeros(1, times.shape[1])])  # + a zero row for invalid slots
            kv = kv + F.embedding(torch.where(valid, buckets, len(times) - 1), times)
        k, v = kv.split(self.esu.out_dim, dim=-1)
        return self.esu.attend(target, k, v, valid, key_bias=bias)
