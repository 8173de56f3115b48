"""`Batch`: one typed dataclass of named tensors, what every model reads.

Batches are built by the feature pipeline (`modalrec.pipeline.Collator`): for training samples, for
evaluation, for `modalrec predict` on new events and for every service request alike. The item and user
side tables are joined at batch time, for the target AND every history position, so no sample row ever
repeats item content.

History layout: chronological, left-aligned, padded with item 0 at the end; `hist_mask` is True on
real positions. Index 0 is the padding / unknown id of every vocabulary.

`shared_history`: every row reads the same history (a service request scores C candidates against one
user's sequence). The pipeline then builds the history once and every (B, L, ...) history tensor is an
expanded view of that one row; models and layers read the flag to do the per-history work once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

Tensor = torch.Tensor


@dataclass
class GraphInputs:
    """Graph-expanded ids of a sample (MMBee's GIE): K ids in the code space of the item group feature (a
    streamer) expanded from the user (U->A->A metapaths) and K expanded from the target's group (A->U->A),
    each with its score; 0 is padding. With `Batch.shared_history` the user's rows are one row expanded."""

    user: Tensor  # (B, K) long
    user_w: Tensor  # (B, K) float
    target: Tensor  # (B, K) long
    target_w: Tensor  # (B, K) float

    def to(self, device) -> GraphInputs:
        return GraphInputs(*(t.to(device, non_blocking=True) for t in (self.user, self.user_w, self.target,
                                                                        self.target_w)))


@dataclass
class Touchpoints:
    """multilabel: the touchpoints (web sessions, conversations) before each sample, left-aligned in time order.

    `channel` (B, T) long: channel index 1..C (`Schema.multichannel`), 0 = padding; `mask` (B, T) bool;
    `tokens[m]` (B, T, V) float multi-hot bag over the shared token vocabulary; `vectors[m]` (B, T, D) float;
    `weights[m]` (B, T) the weight of a vector in an event-level mean; `presence[m]` (B, T) bool for every
    token and vector modality (an absent modality is all zeros with presence False); `available` (B, n_labels)
    bool: the items the sample's user could buy."""

    channel: Tensor
    mask: Tensor
    available: Tensor
    tokens: dict[str, Tensor] = field(default_factory=dict)
    vectors: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, Tensor] = field(default_factory=dict)
    presence: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device) -> Touchpoints:
        return Touchpoints(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def flat(self) -> dict[str, Tensor]:
        """One dict: tp_channel, tp_mask, available, tok:<m>, vec:<m>, wt:<m>, has:<m> (what the multi-channel
        models index by name)."""
        out = {"tp_channel": self.channel, "tp_mask": self.mask, "available": self.available}
        for prefix, group in (("tok", self.tokens), ("vec", self.vectors), ("wt", self.weights), ("has", self.presence)):
            out |= {f"{prefix}:{m}": t for m, t in group.items()}
        return out

    @classmethod
    def from_flat(cls, d: dict[str, Tensor]) -> Touchpoints:
        groups: dict[str, dict[str, Tensor]] = {"tok": {}, "vec": {}, "wt": {}, "has": {}}
        for key, t in d.items():
            prefix, _, m = key.partition(":")
            if m and prefix in groups:
                groups[prefix][m] = t
        mask = d["tp_mask"]
        available = d.get("available", torch.ones(mask.shape[0], 0, dtype=torch.bool, device=mask.device))
        return cls(d["tp_channel"], mask, available, groups["tok"], groups["vec"], groups["wt"], groups["has"])


@dataclass
class Batch:
    user: Tensor  # (B,) long: the user's row in the user vocabulary (0 = unknown)
    item: Tensor  # (B,) long: target item (ctr) or held-out next item (topk eval)
    hist: Tensor  # (B, L) long, 0 = padding
    hist_mask: Tensor  # (B, L) bool
    item_side: dict[str, Tensor] = field(default_factory=dict)  # target features: (B,), (B,K) or (B,D)
    hist_side: dict[str, Tensor] = field(default_factory=dict)  # history features: (B,L), (B,L,K), (B,L,D)
    presence: dict[str, Tensor] = field(default_factory=dict)  # modality -> (B,) bool for the target
    hist_presence: dict[str, Tensor] = field(default_factory=dict)  # modality -> (B,L) bool
    # the user's own side features (the users table: categorical (B,), multi-valued (B, K), dense vectors
    # (B, D)) and the presence (B,) of each dense modality: `Schema.user_*`
    user_side: dict[str, Tensor] = field(default_factory=dict)
    user_presence: dict[str, Tensor] = field(default_factory=dict)
    hist_time: Tensor | None = None  # (B, L) seconds between the history event and the sample
    # (B, L) long: the action tag of each history event, its channel's code (`Schema.history_tags`: a watch, a
    # gift, a like), 0 = padding; None when the history is untagged
    hist_tag: Tensor | None = None
    label: Tensor | None = None  # (B,) float for ctr; (B, n_labels) for multilabel
    group: Tensor | None = None  # (B,) long: the user, for gAUC/UAUC; multilabel: the channel pattern
    targets: Tensor | None = None  # (B, L) next-item ids for sequence training (topk), 0 = none
    candidates: Tensor | None = None  # (B, L, C) or (B, C) or (C,) item ids to score; None = all items
    # The distinct items of the batch (targets and history) with their side features, once each;
    # item_pos / hist_pos index into them. Encoders compute one vector per distinct item and gather,
    # instead of re-encoding the same item at every history position it occupies.
    uniq: Tensor | None = None  # (U,) long
    # also holds the token tables of multi-valued content: name -> (U, T, dim) float32 and
    # name + ":mask" -> (U, T) bool (they exist only here and on the targets, never per history position)
    uniq_side: dict[str, Tensor] = field(default_factory=dict)
    uniq_presence: dict[str, Tensor] = field(default_factory=dict)
    item_pos: Tensor | None = None  # (B,) long: row of each target in `uniq`
    hist_pos: Tensor | None = None  # (B, L) long: row of each history position in `uniq`
    # ctr: categorical features of the sample itself (`task.context_features`, e.g. an item's popularity
    # level at impression time): name -> (B,) long codes, 0 = empty or unknown (`Schema.context_categorical`)
    context: dict[str, Tensor] = field(default_factory=dict)
    graph: GraphInputs | None = None  # GIE's expansions (task.graph.enabled)
    touchpoints: Touchpoints | None = None  # multilabel
    # every row reads one history (a service request): the history tensors are one row expanded
    shared_history: bool = False
    # (B,) long: the targets' rows in the item table where they differ from `item`: items registered with the
    # service after export have rows beyond the model's id tables and reach the model as id 0 (unknown) with
    # their own features; caches keyed per item (a model's memoised content) read these. None: rows == ids
    target_rows: Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.user.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _move(v, device):
    if isinstance(v, Tensor):
        return v.to(device, non_blocking=True)
    if isinstance(v, dict):
        return {k: _move(x, device) for k, x in v.items()}
    if isinstance(v, (GraphInputs, Touchpoints)):
        return v.to(device)
    return v
