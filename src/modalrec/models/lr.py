"""Logistic regression over one-hot ids: the floor for CTR (as in the CTR benchmarks of the field).

logit = bias + w_user + w_item + sum over categorical target features of w_value
        + sum over multi-valued target features of the weights of every tag present
        + sum over the sample's context features (`task.context_features`) of w_value.
A multi-valued feature is a multi-hot vector, so its tags are summed (not averaged): that is what a
linear model over the one-hot encoding computes. No history, no dense content, no interactions.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..data.batch import Batch
from ..nn.layers import IdEmbedding, context_codes
from .base import Model, ModelConfig, Schema


def _weights(n: int, counts=None) -> nn.Embedding:
    # Zero start: the loss is convex, and index 0 (padding/unknown) stays at 0 since padding_idx
    # rows get no gradient; with training `counts`, an unknown id reads the average trained weight outside
    # training (`IdEmbedding`)
    emb = IdEmbedding(n, 1, counts)
    nn.init.zeros_(emb.weight)
    return emb


class LogisticRegression(Model):
    name: ClassVar[str] = "lr"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr"})
    inputs: ClassVar[frozenset[str]] = frozenset({"user", "item", "item_side", "user_side", "context"})

    class Config(ModelConfig):
        pass

    def __init__(self, schema: Schema, config: ModelConfig | None = None):
        super().__init__(schema, config or self.Config())
        self.user = _weights(schema.n_users, schema.user_counts)
        self.item = _weights(schema.n_items, schema.item_counts)
        self.categorical = nn.ModuleDict({k: _weights(n, (schema.item_code_counts or {}).get(k))
                                          for k, n in schema.item_categorical.items()})
        self.multi = nn.ModuleDict({k: _weights(n) for k, n in schema.item_multi.items()})
        # only with context features: a model without them keeps exactly its parameters
        self.context = (nn.ModuleDict({k: _weights(n) for k, n in schema.context_categorical.items()})
                        if schema.context_categorical else None)
        # only with user side features (categorical and multi-valued ones; a linear model reads no vectors)
        user = {**schema.user_categorical, **schema.user_multi}
        self.user_features = nn.ModuleDict({k: _weights(n) for k, n in user.items()}) if user else None
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch) -> torch.Tensor:
        logit = self.bias + self.user(batch.user).squeeze(-1) + self.item(batch.item).squeeze(-1)
        for name, w in self.categorical.items():
            logit = logit + w(batch.item_side[name]).squeeze(-1)
        for name, w in self.multi.items():
            logit = logit + w(batch.item_side[name]).squeeze(-1).sum(-1)
        if self.context is not None:
            for name, w in self.context.items():
                logit = logit + w(context_codes(batch, name)).squeeze(-1)
        if self.user_features is not None:
            for name, w in self.user_features.items():
                x = w(batch.user_side[name]).squeeze(-1)
                logit = logit + (x.sum(-1) if x.dim() > 1 else x)
        return logit
