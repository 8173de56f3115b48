"""What every model sees of the data (`Schema`) and the small contract every model follows.

A model is a plain `torch.nn.Module` built as `Model(schema, config)`; `forward(batch) -> logits`.
It knows nothing about the training loop; the task owns the loss. Models list the task kinds they
support in `tasks` and the `Batch` fields they read in `inputs`.

Output conventions (the task's loss and evaluator rely on them):
- ctr: (B,) logits.
- topk: with `batch.candidates` of shape (B, L, C): (B, L, C) logits (training, target at index 0);
  without candidates: (B, n_items) scores of every item for the next position after the history.
- multilabel: (B, n_labels) logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict


@dataclass
class Schema:
    task: str  # "ctr" | "topk" | "multilabel"
    n_users: int  # vocabulary size including padding index 0
    n_items: int  # vocabulary size including padding index 0
    max_history: int
    item_categorical: dict[str, int] = field(default_factory=dict)  # feature -> vocab size (incl. 0)
    item_multi: dict[str, int] = field(default_factory=dict)  # multi-valued feature -> vocab size
    item_dense: dict[str, int] = field(default_factory=dict)  # dense content vector -> dim
    item_counts: np.ndarray | None = None  # training interactions per item index
    item_positive_rate: np.ndarray | None = None  # ctr: smoothed training positive rate per item
    n_labels: int = 0


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Model(torch.nn.Module):
    name: ClassVar[str] = ""
    tasks: ClassVar[frozenset[str]] = frozenset()
    inputs: ClassVar[frozenset[str]] = frozenset()
    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__()
        if schema.task not in self.tasks:
            raise ValueError(f"model '{self.name}' supports tasks {sorted(self.tasks)}, not '{schema.task}'")
        self.schema = schema
        self.config = config

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())
