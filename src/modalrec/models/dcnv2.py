"""DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
Learning to Rank Systems", WWW 2021), full-rank cross layers.

x0 = [user embedding, target item vector, mean of the history item vectors, context feature embeddings
(`task.context_features`, if any)] feeds
- `parallel` (the paper's fig. 1b): a cross network and a DNN side by side, their outputs
  concatenated -> Linear -> logit;
- `stacked` (fig. 1a): cross network -> DNN -> Linear -> logit.

Deviations: the paper's inputs are the sparse/dense features of one row; here the "row" is built
from the user id, the target item (id + side features + dense content via `ItemEncoder`) and a
masked mean of the history item vectors, so DCNv2 sees the same information as DIN without
attention. The low-rank / mixture-of-experts cross layer is not implemented.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ..data.batch import Batch
from ..nn.item_encoder import ITEM_INPUTS, ItemEncoder, user_encoder
from ..nn.layers import MLP, Activation, CrossNetV2, context_embedding, id_embedding
from ..nn.sequence import masked_mean
from .base import Model, ModelConfig, Schema


class DCNv2(Model):
    name: ClassVar[str] = "dcnv2"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr"})
    inputs: ClassVar[frozenset[str]] = ITEM_INPUTS | frozenset({"user", "user_side", "user_presence", "context"})

    class Config(ModelConfig):
        embed_dim: int = Field(16, ge=1)
        cross_layers: int = Field(3, ge=1)
        dnn_hidden: list[int] = Field(default_factory=lambda: [256, 128])
        activation: Activation = "relu"
        dropout: float = Field(0.1, ge=0.0, lt=1.0)
        batch_norm: bool = False
        structure: Literal["parallel", "stacked"] = "parallel"
        use_history: bool = True
        use_content: bool = True
        mba_reg: float = Field(0.0, ge=0.0, description="mini-batch aware L2 on user/item id embeddings (DIN eq. 5)")

    def __init__(self, schema: Schema, config: ModelConfig | None = None):
        super().__init__(schema, config or self.Config())
        cfg = self.config
        self.items = ItemEncoder(schema, cfg.embed_dim, use_content=cfg.use_content)
        self.register_id_counts()
        self.user = id_embedding(schema.n_users, cfg.embed_dim, counts=schema.user_counts)
        self.context = context_embedding(schema, cfg.embed_dim)  # None without task.context_features
        x0_dim = cfg.embed_dim + self.items.out_dim * (2 if cfg.use_history else 1)
        x0_dim += self.context.out_dim if self.context else 0
        self.user_features = user_encoder(schema, cfg.embed_dim)  # None without user side features
        x0_dim += self.user_features.out_dim if self.user_features else 0
        self.cross = CrossNetV2(x0_dim, cfg.cross_layers)
        self.dnn = MLP(x0_dim, cfg.dnn_hidden, cfg.activation, cfg.dropout, cfg.batch_norm)
        head_in = self.dnn.out_dim + (x0_dim if cfg.structure == "parallel" else 0)
        self.head = nn.Linear(head_in, 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.config.use_history:
            target, hist = self.items.encode(batch)
            parts = [self.user(batch.user), target, masked_mean(hist, batch.hist_mask)]
        else:
            parts = [self.user(batch.user), self.items.target(batch)]
        if self.context is not None:
            parts.append(self.context(batch))
        if self.user_features is not None:
            parts.append(self.user_features(batch))
        x0 = torch.cat(parts, dim=-1)
        if self.config.structure == "parallel":
            out = torch.cat([self.cross(x0), self.dnn(x0)], dim=-1)
        else:
            out = self.dnn(self.cross(x0))
        return self.head(out).squeeze(-1)

    def penalty(self, batch: Batch) -> torch.Tensor | None:
        return self.sum_terms(super().penalty(batch),
                              self.id_mba_penalty(batch, self.items.id, self.user, self.config.mba_reg))
