"""What every model sees of the data (`Schema`) and the small contract every model follows.

A model is a plain `torch.nn.Module` built as `Model(schema, config)`; `forward(batch) -> logits`.
It knows nothing about the training loop; the task owns the loss. Models list the task kinds they
support in `tasks` and the `Batch` fields they read in `inputs` (the pipeline emits only those).

Serving protocol (what the service calls, for any model; `serve/` names none): `prepare_serving` turns on
the model's exact faster inference paths for requests whose rows share one history (the shared layers'
transforms in `nn.serving`, the item encoder's table of the bundle's items, a model's own memo),
`forget_items` drops what the model memoised about items whose content changed, `item_representation`
gives the item vectors retrieval searches, and `serve_target_tokens` says whether request batches must
carry the targets' token tables.

Output conventions (the task's loss and evaluator rely on them):
- ctr: (B,) logits.
- topk: with `batch.candidates` of shape (B, L, C): (B, L, C) logits (training, target at index 0);
  without candidates: (B, n_items) scores of every item for the next position after the history.
- multilabel: (B, n_labels) logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field


@dataclass
class ChannelSpec:
    """multilabel: one touchpoint channel (e.g. web sessions, call-centre conversations) as models see it.

    A touchpoint of this channel carries `Batch.touchpoints.channel == index`. Its content comes as
    `tokens[modality]` (B, T, V) multi-hot bags over the shared token vocabulary and `vectors[modality]`
    (B, T, D) vectors, each with a `presence[modality]` (B, T) mask (see `tasks/multilabel.py`)."""

    name: str
    index: int  # 1..C; 0 is padding
    tokens: dict[str, int] = field(default_factory=dict)  # token modality -> size of the shared vocabulary
    vectors: dict[str, int] = field(default_factory=dict)  # vector modality -> dim
    share: float = 0.0  # share of training samples with at least one touchpoint of this channel
    # modality -> neutral input for imputation: the training mean vector, or the most frequent bag (multi-hot)
    neutral: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class MultiChannelSpec:
    """multilabel: the touchpoint channels of the task, in `Schema.multichannel`.

    `pattern_shares[p]`: share of training samples whose channel presence pattern is p, where bit
    (c.index - 1) of p is set when the sample has a touchpoint of channel c. `sample_anchors(n, seed)`
    returns a `Batch` of about n training samples having every channel, stratified by label (anchors of
    the Relative Representation model)."""

    channels: list[ChannelSpec] = field(default_factory=list)
    vocab_size: int = 1  # shared token vocabulary, incl. padding 0
    pattern_shares: np.ndarray | None = None  # (2 ** C,)
    sample_anchors: Callable[[int, int], Any] | None = None

    def channel(self, name: str) -> ChannelSpec:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(f"no touchpoint channel '{name}' (has {[c.name for c in self.channels]})")


@dataclass
class Schema:
    task: str  # "ctr" | "topk" | "multilabel"
    n_users: int  # vocabulary size including padding index 0
    n_items: int  # vocabulary size including padding index 0
    max_history: int
    item_categorical: dict[str, int] = field(default_factory=dict)  # feature -> vocab size (incl. 0)
    item_multi: dict[str, int] = field(default_factory=dict)  # multi-valued feature -> vocab size
    item_dense: dict[str, int] = field(default_factory=dict)  # dense content vector -> dim
    # multi-valued vector modality -> (T, dim): a padded token table per item, in the batch as
    # uniq_side[name] (U, T, dim) and uniq_side[name + ":mask"] (U, T) on the distinct items only
    item_tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    # the user's own side features (the users table, `task.user_features`), in the batch as Batch.user_side
    user_categorical: dict[str, int] = field(default_factory=dict)  # feature -> vocab size (incl. 0)
    user_multi: dict[str, int] = field(default_factory=dict)  # multi-valued feature -> vocab size
    user_dense: dict[str, int] = field(default_factory=dict)  # dense content vector -> dim
    item_counts: np.ndarray | None = None  # training interactions per item index
    # what an unknown item reads outside training (`nn.item_encoder.Unknowns`, `nn.layers.IdEmbedding`): the
    # training samples' count of every code of each item categorical feature and of every value of each multi-valued
    # one (index 0: samples whose list is empty), and each dense modality's training mean vector where the
    # training samples always had it (absent: not listed)
    item_code_counts: dict[str, np.ndarray] = field(default_factory=dict)
    item_dense_mean: dict[str, np.ndarray] = field(default_factory=dict)
    item_positive_rate: np.ndarray | None = None  # ctr: smoothed training positive rate per item
    user_counts: np.ndarray | None = None  # training samples per user index
    n_labels: int = 0
    multichannel: MultiChannelSpec | None = None  # multilabel: touchpoint channels
    # pre-trained graph embeddings (GraphCL): "streamer" (n_streamer_codes, d), rows in the index space of the
    # item categorical feature `streamer_id`; "user" (n_users, d), rows aligned with the user index
    graph_init: dict[str, np.ndarray] = field(default_factory=dict)
    # ctr: per-sample categorical context features (`task.context_features`) -> vocab size incl. 0 = unknown,
    # in `Batch.context[name]` (B,) long; read by the models through `nn.layers.ContextEmbedding`
    context_categorical: dict[str, int] = field(default_factory=dict)
    # ctr with `task.history_channel_tags`: history channel -> its action tag code (1..n) in `Batch.hist_tag`;
    # empty: the history is untagged
    history_tags: dict[str, int] = field(default_factory=dict)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # FuxiCTR's `embedding_regularizer`: (lambda / 2) * ||E||^2 over every embedding table of the model,
    # whole tables, added to the loss of every training batch (0: off)
    embedding_reg: float = Field(0.0, ge=0.0, description="L2 over all embedding tables, per batch")


class Model(torch.nn.Module):
    name: ClassVar[str] = ""
    tasks: ClassVar[frozenset[str]] = frozenset()
    inputs: ClassVar[frozenset[str]] = frozenset()
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    # serving: request batches carry the targets' token tables (False: the model loads them itself, see
    # `prepare_serving`)
    serve_target_tokens: ClassVar[bool] = True

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__()
        if schema.task not in self.tasks:
            raise ValueError(f"model '{self.name}' supports tasks {sorted(self.tasks)}, not '{schema.task}'")
        self.schema = schema
        self.config = config

    def penalty(self, batch) -> torch.Tensor | None:
        """Optional regularisation term the Trainer adds to the task loss (None: nothing). The base
        term is `embedding_reg`; models with a regulariser of their own add it to this one."""
        return self.embedding_penalty()

    def embedding_penalty(self) -> torch.Tensor | None:
        """(embedding_reg / 2) * sum of squares of every trainable `nn.Embedding` table, whole tables
        as in FuxiCTR (`embedding_regularizer`), so rows absent from the batch shrink too."""
        weight = getattr(self.config, "embedding_reg", 0.0)
        if not weight or not self.training:
            return None
        tables = [m.weight for m in self.modules() if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad]
        if not tables:
            return None
        return 0.5 * weight * torch.stack([t.pow(2).sum() for t in tables]).sum()

    @staticmethod
    def sum_terms(*terms: torch.Tensor | None) -> torch.Tensor | None:
        """The sum of the regularisation terms that are not None (None if all are)."""
        present = [t for t in terms if t is not None]
        return sum(present) if present else None

    def register_id_counts(self) -> None:
        """Training counts of item and user ids as (non-persistent) buffers, for frequency-scaled
        regularisers such as DIN's mini-batch aware L2."""
        for name, counts, n in (("item_counts", self.schema.item_counts, self.schema.n_items),
                                ("user_counts", self.schema.user_counts, self.schema.n_users)):
            t = torch.ones(n) if counts is None else torch.as_tensor(counts, dtype=torch.float32)
            self.register_buffer(name, t, persistent=False)

    def id_mba_penalty(self, batch, item_embedding: torch.nn.Embedding, user_embedding: torch.nn.Embedding,
                       weight: float) -> torch.Tensor | None:
        """DIN's mini-batch aware L2 over the item ids (targets and history) and user ids of `batch`."""
        from ..nn.layers import mba_penalty

        if weight == 0.0 or not self.training:
            return None
        items = batch.uniq if batch.uniq is not None else torch.cat([batch.item, batch.hist.flatten()])
        return (mba_penalty(item_embedding, items, self.item_counts, weight)
                + mba_penalty(user_embedding, batch.user, self.user_counts, weight))

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    # ------------------------------------------------------------------------------------------ serving
    def prepare_serving(self, items, n_items: int, precision: str = "fp32") -> int:
        """Serving mode (eval, no autograd): every DIN-style activation unit gets its shared-history fast
        path (`nn.serving`), and every item encoder encodes the `n_items` items of the bundle's table `items`
        (`pipeline.SideTable`, the live table the service extends) once. Returns the fast paths installed.
        Models with a memo of their own extend this."""
        from ..nn.item_encoder import ItemEncoder
        from ..nn.serving import with_serving_fast_paths

        self.eval()
        n = with_serving_fast_paths(self, precision)
        for m in self.modules():
            if isinstance(m, ItemEncoder):
                m.cache_items(items, n_items)
        return n

    def forget_items(self, rows) -> None:
        """Serving: the content of these item table rows changed; drop anything memoised about them."""

    @torch.no_grad()
    def item_representation(self, ids: torch.Tensor, side: dict, presence: dict) -> torch.Tensor | None:
        """The model's vector of each item (its item encoder's output: id, side features and content), what
        retrieval searches; None for a model without an item encoder."""
        from ..nn.item_encoder import ItemEncoder

        enc = next((m for m in self.modules() if isinstance(m, ItemEncoder)), None)
        return None if enc is None else enc(ids, side, presence)
