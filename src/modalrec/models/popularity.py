"""Popularity: the floor every results table shows ("Popular" in Bruun, Balog & Maistro, SIGIR 2024).

No trainable parameters: every score comes from training statistics the task put in the `Schema`.
- ctr: logit of the item's smoothed training positive rate (`schema.item_positive_rate`).
- topk: log(1 + training interactions) of each item; the padding item 0 scores -inf.
- multilabel: logit of the per-label rate when `item_positive_rate` has one entry per label,
  else log(1 + count) per label from `item_counts`. Same scores for every user.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..data.batch import Batch
from .base import Model, ModelConfig, Schema

_EPS = 1e-6


def _logit_of_rate(rate: np.ndarray) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(rate, dtype=np.float64)).clamp(_EPS, 1 - _EPS)
    return torch.logit(p).float()


class Popularity(Model):
    name: ClassVar[str] = "popularity"
    tasks: ClassVar[frozenset[str]] = frozenset({"ctr", "topk", "multilabel"})
    inputs: ClassVar[frozenset[str]] = frozenset({"item", "candidates"})

    class Config(ModelConfig):
        pass

    def __init__(self, schema: Schema, config: ModelConfig | None = None):
        super().__init__(schema, config or self.Config())
        if schema.task == "ctr":
            if schema.item_positive_rate is None:
                raise ValueError("popularity on a ctr task needs schema.item_positive_rate")
            scores = _logit_of_rate(schema.item_positive_rate)
        elif schema.task == "topk":
            if schema.item_counts is None:
                raise ValueError("popularity on a topk task needs schema.item_counts")
            scores = torch.log1p(torch.as_tensor(np.asarray(schema.item_counts, dtype=np.float64))).float()
            scores[0] = float("-inf")  # padding is never recommended
        else:  # multilabel
            rate, counts = schema.item_positive_rate, schema.item_counts
            if rate is not None and len(rate) == schema.n_labels:
                scores = _logit_of_rate(rate)
            elif counts is not None and len(counts) == schema.n_labels:
                scores = torch.log1p(torch.as_tensor(np.asarray(counts, dtype=np.float64))).float()
            else:
                raise ValueError(
                    f"popularity on a multilabel task needs schema.item_positive_rate or schema.item_counts "
                    f"with one entry per label (n_labels={schema.n_labels})"
                )
        # Derived from the schema, which every run bundle carries: not part of the weights.
        self.register_buffer("scores", scores, persistent=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        task = self.schema.task
        if task == "ctr":
            return self.scores[batch.item]
        if task == "multilabel":
            return self.scores.repeat(batch.size, 1)  # a real copy: callers may mask it in place
        if batch.candidates is not None:
            return self.scores[batch.candidates]  # (B, C) or (B, L, C)
        return self.scores.repeat(batch.size, 1)  # a real copy: callers may mask it in place
