"""MMBee (Deng et al., "MMBee: Live Streaming Gift-Sending Recommendations via Multi-Modal Fusion and
Behaviour Expansion", KDD 2024, arXiv:2407.00056): a SIM ranker (models/sim.py) whose item vectors carry
the real-time content of each stream segment (MFQ, sec. 3.2, see models/mfq.py) and whose MLP also reads
the user's interests expanded on the gifting graphs (GIE, sec. 3.3 "Graph-guided Interest Expansion").

- Item vector (target and every history position) = [ItemEncoder(id, streamer, category, dense
  content), MFQ(segment tokens)]. MFQ runs once per DISTINCT item of the batch (`batch.uniq`, whose
  token tables the Collator joins) and is gathered to the targets and history positions
  (`item_pos` / `hist_pos`), so a segment watched by many users is fused once per batch.
- GIE: the batch carries, per sample, K streamers expanded from the user through U->A->A metapaths
  (`Batch.graph.user`, scores `user_w`) and K expanded from the target segment's streamer through
  A->U->A (`graph.target`, `target_w`); indices live in the code space of the item categorical
  feature `streamer_feature` (0 = padding). A streamer table embeds them; a multi-head target
  attention (query = target item vector [+ user]) pools each sequence, with log(score) added to the
  attention logits, and both pooled vectors join the MLP input. The streamer table (and the user
  embedding, when the model has one: `use_user_id`) start from the GraphCL embeddings in
  `schema.graph_init` when present: the pre-trained rows, frozen or trainable (`graph_trainable`),
  then a learned projection to the model's width (identity at the start when the widths agree).
  configs/livestream/mmbee.yaml runs without a user table (`use_user_id: false`): with one, the
  ranker memorises each training user's gift rate, which costs AUC across users in the later epochs
  GIE needs (README, "Without the user-id table").
- `use_mfq: false, use_gie: false` builds exactly the `sim` ranker (same modules, same parameters,
  same initial values under the same seed).

Deviations from the paper:
- the ranker is modalrec's SIM (hard/soft GSU + multi-head ESU + DIN short-term attention) rather
  than Kuaishou's production base model;
- the expansion scores enter as an additive log-bias on the attention logits instead of the paper's
  weighting of the expanded behaviours; score 0 is taken as 1e-12, i.e. nearly ignored;
- GraphCL pre-training itself lives in `modalrec.graph`; here the embeddings are only consumed.

Ablation switches: `use_mfq`, `use_gie`, `modalities` (which token modalities MFQ reads; a dense
vector modality named here is read as a 1-token sequence) and `use_content` (ItemEncoder's plain dense
content projections). Regularisers studied on the loyal-fans world: `gie_dropout` (a sample's graph
inputs blanked in training), SIM's `use_user_id` / `user_dropout`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.batch import Batch
from ..nn.item_encoder import HistoryRows
from ..nn.layers import id_embedding
from .base import ModelConfig, Schema
from .mfq import MFQ, Pool
from .sim import SIM, MultiHeadTargetAttention

GIE_KEYS = ("gie_user", "gie_streamer")
GIE_MATCH = ("target_in_user_expansion", "target_in_user_expansion_flag", "user_target_overlap",
             "user_target_overlap_flag")


class PretrainedEmbedding(nn.Module):
    """Rows of a pre-trained table (n, d_src) -> Linear(d_src -> dim) (B, ..., dim).

    Frozen rows are a buffer, so neither the optimizer nor `reinitialise` touches them; trainable rows
    are a parameter. Row 0 (padding / unknown) is zero and gets no gradient. The projection starts as
    the identity when d_src == dim, so the model starts from exactly the pre-trained embedding."""

    def __init__(self, table: np.ndarray, dim: int, trainable: bool):
        super().__init__()
        self.sparse = False  # trainable rows: sparse gradients (the model's `sparse_grad`), as nn.Embedding's flag
        weight = torch.as_tensor(np.asarray(table, dtype=np.float32)).clone()
        weight[0] = 0.0
        if trainable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)
        self.proj = nn.Linear(weight.shape[1], dim, bias=False)
        if weight.shape[1] == dim:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(F.embedding(ids, self.weight, padding_idx=0, sparse=self.sparse and self.training))


class MMBee(SIM):
    name: ClassVar[str] = "mmbee"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr"})
    inputs: ClassVar[frozenset[str]] = SIM.inputs | frozenset({"uniq", "uniq_side", "uniq_presence", "graph",
                                                               "target_rows"})

    class Config(SIM.Config):
        use_mfq: bool = True
        use_gie: bool = True
        modalities: list[str] | None = Field(
            None, description="MFQ inputs: token modalities, or dense vectors read as 1 token (None: every token "
            "modality of the schema)")
        streamer_feature: str = Field("streamer_id", description="item categorical feature naming the streamer")
        mfq_dim: int = Field(32, ge=1)
        mfq_queries: int = Field(4, ge=1)
        mfq_heads: int = Field(2, ge=1)
        mfq_layers: int = Field(1, ge=0)
        mfq_pool: Pool = "flatten"
        mfq_dropout: float = Field(0.0, ge=0.0, lt=1.0)
        modality_dropout: float = Field(
            0.0, ge=0.0, lt=1.0, description="training only: each content modality of each fused segment is made "
            "absent with this probability (its token mask cleared), so the model learns to score segments that lack "
            "it instead of meeting that situation first at serving time")
        segment_dropout: float = Field(
            0.0, ge=0.0, lt=1.0, description="training only: every content modality of a fused segment is made absent "
            "at once with this probability (it gets MFQ's learned 'no content' vector)")
        decorrelate: bool = True
        streamer_conditioned: bool = True  # MFQ queries + MLP(streamer embedding)
        mfq_scope: Literal["all", "target"] = Field(
            "all", description="all: MFQ on every distinct item of the batch, its vector joins the item vector of the "
            "target and every history position. target: MFQ on the watched segment only (as the paper fuses the "
            "live segment); its vector joins the MLP input and the GIE query, history items stay content-free, "
            "so a batch costs B fusions instead of U (~10x more) and the attention stays as narrow as SIM's "
            "(use task.token_scope: target)")
        gie_dim: int = Field(32, ge=1)
        gie_heads: int = Field(2, ge=1)
        gie_query_user: bool = True  # GIE attention query = [target, user] instead of the target alone
        gie_match: bool = Field(
            True, description="also give the MLP how the target streamer relates to the expansions directly: its "
            "score in the user's U->A->A expansion and the overlap of that expansion with the target's A->U->A one "
            "(log1p-scaled, with presence flags; 4 inputs). The attention alone must learn to align two embedding "
            "tables of the same streamers from the gift signal")
        graph_trainable: bool = True  # fine-tune the pre-trained graph embeddings (False: frozen)
        gie_dropout: float = Field(
            0.0, ge=0.0, lt=1.0, description="training only: each sample's GIE inputs (both expansions and the "
            "match features) are blanked with this probability, as for a user and streamer without gifts, so the "
            "rest of the ranker must still explain repeat gifts instead of leaving them to GIE (which costs "
            "ranking across users, cold ones most)")

    def __init__(self, schema: Schema, config: ModelConfig | None = None):
        cfg = config or self.Config()
        token_names, dense_names = self._mfq_modalities(schema, cfg) if cfg.use_mfq else ([], [])
        content_dim = MFQ.output_dim(cfg.mfq_dim, cfg.mfq_queries, cfg.mfq_pool) if cfg.use_mfq else 0
        gie_dim = (2 * cfg.gie_dim + (len(GIE_MATCH) if cfg.gie_match else 0)) if cfg.use_gie else 0
        target_scope = cfg.use_mfq and cfg.mfq_scope == "target"
        super().__init__(schema, cfg, item_extra_dim=0 if target_scope else content_dim,
                         mlp_extra_dim=gie_dim + (content_dim if target_scope else 0))
        needs_streamer = cfg.use_gie or (cfg.use_mfq and cfg.streamer_conditioned)
        if needs_streamer and cfg.streamer_feature not in schema.item_categorical:
            raise ValueError(
                f"mmbee: streamer_feature '{cfg.streamer_feature}' is not an item categorical feature (schema has "
                f"{sorted(schema.item_categorical)}); GIE and streamer-conditioned queries need it "
                "(or set use_gie: false, streamer_conditioned: false)")
        self.token_names, self.dense_names = token_names, dense_names
        self._content_cache: dict[int, torch.Tensor] | None = None  # see cache_content (serving)
        self._content_source = None
        self._content_cache_max = 0
        self.mfq: MFQ | None = None
        if cfg.use_mfq:
            dims = {n: schema.item_tokens[n][1] for n in token_names} | {n: schema.item_dense[n] for n in dense_names}
            max_t = max([schema.item_tokens[n][0] for n in token_names] + [1])
            self.mfq = MFQ(dims, cfg.mfq_dim, cfg.mfq_queries, cfg.mfq_heads, cfg.mfq_layers,
                           cfg.streamer_conditioned, cfg.mfq_dropout, max_tokens=max_t,
                           streamer_dim=cfg.embed_dim, decorrelate=cfg.decorrelate, pool=cfg.mfq_pool)
        self.streamers: nn.Module | None = None
        if cfg.use_gie:
            n_codes = schema.item_categorical[cfg.streamer_feature]
            init = schema.graph_init
            self.streamers = self._graph_table(init.get("streamer"), "streamer", n_codes, cfg)
            if init.get("user") is not None and cfg.use_user_id:
                self.user = self._graph_table(init["user"], "user", schema.n_users, cfg, dim=cfg.embed_dim)
            d = self.items.out_dim + content_dim
            query = d + (cfg.embed_dim if cfg.gie_query_user else 0)
            self.gie_user = MultiHeadTargetAttention(query, cfg.gie_dim, cfg.gie_dim, cfg.gie_heads)
            self.gie_streamer = MultiHeadTargetAttention(query, cfg.gie_dim, cfg.gie_dim, cfg.gie_heads)
        self.use_sparse_grad()  # again: the streamer table, and the user table GraphCL may have replaced

    def id_tables(self) -> list[nn.Module]:
        streamers = getattr(self, "streamers", None)  # None while SIM's constructor asks
        tables = super().id_tables() + ([streamers] if streamers is not None else [])
        return [t for t in tables if not isinstance(t, PretrainedEmbedding) or isinstance(t.weight, nn.Parameter)]

    @staticmethod
    def _mfq_modalities(schema: Schema, cfg) -> tuple[list[str], list[str]]:
        names = list(schema.item_tokens) if cfg.modalities is None else list(cfg.modalities)
        unknown = [n for n in names if n not in schema.item_tokens and n not in schema.item_dense]
        if unknown:
            raise ValueError(
                f"mmbee: modalities {unknown} are neither token modalities {sorted(schema.item_tokens)} nor dense "
                f"vectors {sorted(schema.item_dense)} of this task")
        if not names:
            raise ValueError(
                "mmbee: MFQ has no modality to read: the task has no token modalities (multi-valued item vector "
                "content, e.g. frames_emb after content encoding; see task.token_modalities). Name dense ones in "
                "`modalities` or set use_mfq: false")
        return [n for n in names if n in schema.item_tokens], [n for n in names if n not in schema.item_tokens]

    @staticmethod
    def _graph_table(table: np.ndarray | None, key: str, n: int, cfg, dim: int | None = None) -> nn.Module:
        dim = dim or cfg.gie_dim
        if table is None:
            return id_embedding(n, dim)
        table = np.asarray(table)
        if table.ndim != 2 or table.shape[0] != n or not np.isfinite(table).all():
            raise ValueError(
                f"mmbee: schema.graph_init['{key}'] has shape {table.shape}; expected ({n}, d) finite values, one row "
                f"per {'streamer code' if key == 'streamer' else 'user index'} (row 0 = padding)")
        return PretrainedEmbedding(table, dim, cfg.graph_trainable)

    # ------------------------------------------------------------------------------------ forward
    def item_vectors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | HistoryRows]:
        """(target (B, d), history (B, L, d)) item vectors; with mfq_scope 'all' they carry MFQ's content (a
        tensor), else the history is SIM's (a `HistoryRows` where the batch allows)."""
        if self.mfq is None or self.config.mfq_scope == "target":
            return self.items.encode_rows(batch)
        if batch.uniq is None:
            raise ValueError("mmbee: MFQ reads the token tables of the batch's distinct items (batch.uniq, "
                             "uniq_side); build batches with the task's Collator")
        side = batch.uniq_side
        table = self.items(batch.uniq, side, batch.uniq_presence, "uniq_side")
        tokens, masks = self._mfq_inputs(side, batch.uniq_presence, "uniq_side")
        content = self.mfq(tokens, masks, self._streamer(side))
        # history positions: the encoder's part with the history's action tags (if any), then the content
        hist = torch.cat([self.items.gather_history(table, batch.hist_pos, batch), content[batch.hist_pos]], dim=-1)
        return torch.cat([table[batch.item_pos], content[batch.item_pos]], dim=-1), hist

    def fused_targets(self, batch: Batch) -> torch.Tensor:
        """mfq_scope 'target': MFQ over each sample's target segment (B, content_dim); the collate always
        joins the targets' token tables in `item_side`. With `cache_content()` (serving) each distinct
        segment is fused once and its vector memoised."""
        if self._content_cache is None or self.training or torch.is_grad_enabled():
            return self._fuse(batch.item_side, batch.presence)
        cache = self._content_cache
        # keyed by item table row: items registered with the service share id 0 but have rows of their own
        items = (batch.target_rows if batch.target_rows is not None else batch.item).tolist()
        first: dict[int, int] = {}
        for row, i in enumerate(items):
            if i not in cache and i not in first:
                first[i] = row
        if first:
            if self._content_source is not None and not any(n in batch.item_side for n in self.token_names):
                # the batch was collated without the targets' token tables: load those of the new segments only
                side, presence = self._content_source(np.fromiter(first, dtype=np.int64, count=len(first)))
            else:
                rows = torch.tensor(list(first.values()), dtype=torch.long, device=batch.item.device)
                side = {k: v[rows] for k, v in batch.item_side.items()}
                presence = {k: v[rows] for k, v in batch.presence.items()}
            fused = self._fuse(side, presence)
            if len(cache) + len(first) > self._content_cache_max:
                cache.clear()
            cache.update(zip(first, fused))
        return torch.stack([cache[i] for i in items])

    def _fuse(self, side: dict, presence: dict) -> torch.Tensor:
        tokens, masks = self._mfq_inputs(side, presence, "item_side")
        return self.mfq(tokens, masks, self._streamer(side))

    serve_target_tokens: ClassVar[bool] = False  # prepare_serving: segments' token tables are read once, for the memo

    def prepare_serving(self, items, n_items: int, precision: str = "fp32") -> int:
        """Besides SIM's fast paths: each target segment's MFQ vector is memoised, its token tables read from
        the live item table only the first time it is scored."""
        n = super().prepare_serving(items, n_items, precision)
        self.cache_content(source=lambda rows: items.gather(rows, tokens=True))
        return n

    def forget_items(self, rows) -> None:
        self.forget(rows)

    def cache_content(self, max_items: int = 200_000, source=None) -> None:
        """Serving: memoise MFQ's vector of every target segment it fuses (at most `max_items`, then start
        over). A segment's vector depends only on its own content and streamer, which a served model never
        changes, so a request pays MFQ only for segments it is the first to score. Used only in eval mode
        without autograd; training and gradients always fuse afresh.

        `source(items) -> (side, presence)`: the item table rows (token tables included) of these target item
        indices; with it, batches may come without the targets' token tables (`Collator.target_tokens=False`),
        which then are read only for the segments not memoised yet instead of for every candidate."""
        self._content_cache = {}
        self._content_cache_max = int(max_items)
        self._content_source = source

    def forget(self, items) -> None:
        """Serving: drops the memoised MFQ vectors (`cache_content`) of these target item indices, whose content
        the service replaced (an item re-registered through POST /items); their next request fuses them afresh."""
        if self._content_cache is not None:
            for i in items:
                self._content_cache.pop(int(i), None)

    def _streamer(self, side: dict) -> torch.Tensor | None:
        if self.mfq.condition is None:
            return None
        return self.items.categorical[self.config.streamer_feature](side[self.config.streamer_feature])

    def _mfq_inputs(self, side: dict, presence: dict, where: str) -> tuple[dict, dict]:
        tokens, masks = {}, {}
        needed = [k for n in self.token_names for k in (n, f"{n}:mask")] + self.dense_names
        missing = [k for k in needed if k not in side]
        if missing:
            raise KeyError(f"mmbee: batch.{where} lacks {missing} that MFQ reads (it has {sorted(side)}); are they "
                           "in task.token_modalities / task.vector_modalities (and task.token_scope 'all' for "
                           "mfq_scope 'all')?")
        for name in self.token_names:
            tokens[name], masks[name] = side[name], side[f"{name}:mask"]
        for name in self.dense_names:
            x = side[name]
            present = presence.get(name)
            present = torch.isfinite(x).all(-1) if present is None else present.to(torch.bool)
            tokens[name], masks[name] = x.unsqueeze(1), present.unsqueeze(1)
        return tokens, self._drop(masks)

    def _drop(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training-time modality / segment dropout (`modality_dropout`, `segment_dropout`): clears token masks of
        randomly chosen segments, drawn from torch's generator (so seeded runs and --resume stay exact)."""
        p_mod, p_seg = self.config.modality_dropout, self.config.segment_dropout
        if not self.training or not masks or (p_mod == 0.0 and p_seg == 0.0):
            return masks
        first = next(iter(masks.values()))
        n, device = first.shape[0], first.device
        keep_segment = torch.rand(n, 1, device=device) >= p_seg
        out = {}
        for name, m in masks.items():
            keep = keep_segment & (torch.rand(n, 1, device=device) >= p_mod) if p_mod > 0.0 else keep_segment
            out[name] = m & keep
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        target, hist = self.item_vectors(batch)
        parts = self.interests(batch, target, hist)
        if self.mfq is not None and self.config.mfq_scope == "target":
            fused = self.fused_targets(batch)
            parts.append(fused)
            target = torch.cat([target, fused], dim=-1)  # the GIE query sees the segment's content too
        if self.streamers is not None:
            # parts[0] is the user vector (`SIM.interests` lists [user, target, long-term, short-term])
            query = torch.cat([target, parts[0]], dim=-1) if self.config.gie_query_user else target
            expansions = {}
            keep = self._gie_keep(batch.size, query.device)
            for key, attention in (("gie_user", self.gie_user), ("gie_streamer", self.gie_streamer)):
                idx, w, bias, mask = self._expansion(batch, key)
                if keep is not None:
                    mask = mask & keep
                expansions[key] = (idx, w, mask)
                if key == "gie_user" and batch.shared_history and idx.shape[0] > 1:  # one served user's expansion
                    keys = self.streamers(idx[:1])
                    k, v = attention.k(keys).expand(idx.shape[0], -1, -1), attention.v(keys).expand(idx.shape[0], -1, -1)
                    parts.append(attention.attend(query, k, v, mask, key_bias=bias))
                else:
                    parts.append(attention(query, self.streamers(idx), mask, key_bias=bias))
            if self.config.gie_match:
                parts.append(self._match_features(batch, expansions))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)

    def _gie_keep(self, n: int, device) -> torch.Tensor | None:
        """Training-time GIE dropout (`gie_dropout`): (n, 1) True for the samples that keep their graph inputs,
        drawn from torch's generator (seeded runs and --resume stay exact); None when nothing is dropped."""
        p = self.config.gie_dropout
        if not self.training or p == 0.0:
            return None
        return (torch.rand(n, 1, device=device) >= p)

    def _match_features(self, batch: Batch, expansions: dict) -> torch.Tensor:
        """(B, 4): the target streamer's score in the user's expansion, and the score mass the user's expansion
        shares with the target streamer's co-gifting expansion, each as log1p(100 x) and as a 0/1 flag."""
        u_idx, u_w, u_mask = expansions["gie_user"]
        s_idx, s_w, s_mask = expansions["gie_streamer"]
        zero = torch.zeros((), dtype=torch.float32, device=u_idx.device)
        uw = torch.where(u_mask, u_w.to(torch.float32), zero)
        sw = torch.where(s_mask, s_w.to(torch.float32), zero)
        target = batch.item_side[self.config.streamer_feature].long()
        in_user = (uw * (u_idx == target.unsqueeze(1))).sum(1)
        same = (u_idx.unsqueeze(2) == s_idx.unsqueeze(1)) & u_mask.unsqueeze(2) & s_mask.unsqueeze(1)
        overlap = (uw.unsqueeze(2) * sw.unsqueeze(1) * same).sum((1, 2))
        feats = [torch.log1p(100.0 * in_user), (in_user > 0).float(), torch.log1p(100.0 * overlap),
                 (overlap > 0).float()]
        return torch.stack(feats, dim=-1)

    def _expansion(self, batch: Batch, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Streamer indices (B, K), scores (B, K), log-score bias (B, K) and mask (B, K) of one expanded sequence
        (`gie_user`: the user's, `gie_streamer`: the target streamer's)."""
        if batch.graph is None:
            raise ValueError(
                "mmbee: use_gie needs the graph-expanded streamers (Batch.graph), which this batch does not have; "
                "enable the task's graph expansion (task.graph.enabled: true) or set model.params.use_gie: false")
        g = batch.graph
        idx, w = (g.user, g.user_w) if key == "gie_user" else (g.target, g.target_w)
        B = batch.size
        if idx.dim() != 2 or idx.shape[0] != B or w.shape != idx.shape:
            raise ValueError(f"mmbee: batch.graph's {key} ids {tuple(idx.shape)} and scores {tuple(w.shape)}; "
                             f"expected both (B={B}, K)")
        idx = idx.long()
        n_codes = self.schema.item_categorical[self.config.streamer_feature]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_codes):
            raise ValueError(f"mmbee: batch.graph's {key} holds streamer index {int(idx.max())} or "
                             f"{int(idx.min())}; expected 0 (padding) .. {n_codes - 1}, the codes of item feature "
                             f"'{self.config.streamer_feature}'")
        mask = idx > 0
        if not bool(torch.isfinite(w[mask]).all()):
            raise ValueError(f"mmbee: batch.graph's {key} scores hold NaN or infinite values at real (non-padding) slots")
        one = torch.ones((), dtype=w.dtype, device=w.device)
        # Padded slots carry arbitrary weights (0, NaN): they are replaced before the log, so nothing leaks.
        bias = torch.log(torch.where(mask, w, one).clamp(min=1e-12)).to(torch.float32)
        return idx, w, bias, mask
