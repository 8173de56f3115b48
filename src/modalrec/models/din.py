"""DIN: Deep Interest Network (Zhou et al., "Deep Interest Network for Click-Through Rate
Prediction", KDD 2018).

The target item and every history item go through the same `ItemEncoder` (shared embeddings, as
in the paper). A local activation unit scores each history item against the target and the user
interest is the score-weighted sum of the history (no softmax, as in the paper). The MLP reads
[user, target, interest, target * interest] (and one embedding per `task.context_features` column, and
the user's side features where the data has them) and outputs the click logit.

Deviations from the paper, each a switch:
- item vectors may include dense content (text/image/audio projections with a learned "missing"
  embedding) next to id and categorical embeddings (`use_content`);
- the explicit target * interest product is an extra input (`use_product`), common in later DIN
  implementations; set it False for the paper's input;
- PReLU is the default activation (the paper's baseline); Dice is `activation: dice`. The
  mini-batch aware regulariser is not reproduced: use weight decay in the optimizer instead.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ..data.batch import Batch
from ..nn.item_encoder import ITEM_INPUTS, ItemEncoder, user_encoder
from ..nn.layers import MLP, Activation, context_embedding, id_embedding
from ..nn.sequence import TargetAttention
from .base import Model, ModelConfig, Schema


class DIN(Model):
    name: ClassVar[str] = "din"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr"})
    inputs: ClassVar[frozenset[str]] = ITEM_INPUTS | frozenset({"user", "user_side", "user_presence", "context"})

    class Config(ModelConfig):
        embed_dim: int = Field(32, ge=1)
        attention_hidden: list[int] = Field(default_factory=lambda: [64, 32])
        attention_activation: Activation = "prelu"
        attention_softmax: bool = False
        mlp_hidden: list[int] = Field(default_factory=lambda: [200, 80])
        activation: Activation = "prelu"
        dropout: float = Field(0.1, ge=0.0, lt=1.0)
        use_product: bool = True
        use_content: bool = True
        mba_reg: float = Field(0.0, ge=0.0, description="mini-batch aware L2 on user/item id embeddings (DIN eq. 5)")

    def __init__(self, schema: Schema, config: ModelConfig | None = None):
        super().__init__(schema, config or self.Config())
        cfg = self.config
        self.items = ItemEncoder(schema, cfg.embed_dim, use_content=cfg.use_content)
        self.register_id_counts()
        self.user = id_embedding(schema.n_users, cfg.embed_dim, counts=schema.user_counts)
        d = self.items.out_dim
        self.attention = TargetAttention(
            d, cfg.attention_hidden, activation=cfg.attention_activation, softmax=cfg.attention_softmax
        )
        self.context = context_embedding(schema, cfg.embed_dim)  # None without task.context_features
        self.user_features = user_encoder(schema, cfg.embed_dim)  # None without user side features
        in_dim = cfg.embed_dim + d * (3 if cfg.use_product else 2) + (self.context.out_dim if self.context else 0)
        in_dim += self.user_features.out_dim if self.user_features else 0
        self.mlp = MLP(in_dim, cfg.mlp_hidden, activation=cfg.activation, dropout=cfg.dropout, out_dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        pos = batch.hist_pos
        if batch.uniq is not None and isinstance(self.attention, TargetAttention) and not batch.shared_history:
            # training and offline batches: the unit reads the distinct-item table, never a (B, L, d) history
            table = self.items(batch.uniq, batch.uniq_side, batch.uniq_presence, "uniq_side")
            target = table[batch.item_pos]
            interest = self.attention.pool_table(target, table, pos, batch.hist_mask)
        else:  # no distinct-item table, or one history shared by every row (the service's fast path)
            target, hist = self.items.encode(batch)
            interest = self.attention(target, hist, batch.hist_mask, shared=batch.shared_history)
        parts = [self.user(batch.user), target, interest]
        if self.config.use_product:
            parts.append(target * interest)
        if self.context is not None:
            parts.append(self.context(batch))
        if self.user_features is not None:
            parts.append(self.user_features(batch))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)

    def penalty(self, batch: Batch) -> torch.Tensor | None:
        return self.sum_terms(super().penalty(batch),
                              self.id_mba_penalty(batch, self.items.id, self.user, self.config.mba_reg))
