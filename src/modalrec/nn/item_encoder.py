"""`ItemEncoder`: one vector per item from its id, side features and dense content.

The vector is the concatenation, in schema order, of
  - the id embedding (index 0 = padding/unknown -> zero vector),
  - one embedding per categorical feature (`schema.item_categorical`),
  - one masked mean-pooled embedding per multi-valued feature (`schema.item_multi`, 0 = empty slot),
  - per dense content modality (`schema.item_dense`) a Linear(D -> embed_dim) projection where the
    modality is present, and a learned "missing" embedding where it is absent.
History positions of a tagged history (`schema.history_tags`, `batch.hist_tag`: each event's channel, such
as watch or gift) add a learned (out_dim) embedding of their tag, as BERT adds segment embeddings; the
target, and the item table of retrieval, are untagged.

An absent modality is never a zero vector pretending to be data: its stored values (zeros, stale
numbers, NaN) are selected away before the projection, so they can neither change the output nor
poison gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..data.batch import Batch
from .layers import IdEmbedding, versions

if TYPE_CHECKING:  # models import this module; a runtime import back would be circular
    from ..models.base import Schema


def _feature(side: dict[str, torch.Tensor], name: str, where: str) -> torch.Tensor:
    try:
        return side[name]
    except KeyError:
        raise KeyError(
            f"batch.{where} has no feature '{name}' that the schema declares; it has {sorted(side)}"
        ) from None


# the Batch fields an item encoder reads (targets, history, the batch's distinct items): models that encode
# items with it declare them in `Model.inputs`
ITEM_INPUTS = frozenset({"item", "item_side", "presence", "hist", "hist_mask", "hist_side", "hist_presence", "hist_tag",
                         "uniq", "uniq_side", "uniq_presence", "item_pos", "hist_pos"})


class Unknowns(nn.Module):
    """What an item the training data never described reads, outside training: an all-empty multi-valued
    feature the frequency-weighted mean of its trained value rows, an absent dense modality the projection of its
    training mean vector, each only where the training samples never had the feature empty or absent (then the
    model learned what empty means: nothing changes). Together with `IdEmbedding` for ids and categorical codes,
    an unknown item (a new item with only an id, an unknown id) is encoded as an average known item instead of
    from inputs no training batch held. Buffers only (derived from the schema): the state dict is unchanged."""

    def __init__(self, schema: Schema):
        super().__init__()
        counts = getattr(schema, "item_code_counts", None) or {}
        self.multi = [name for name in schema.item_multi if name in counts and counts[name][0] == 0
                      and counts[name][1:].sum() > 0]
        for name in self.multi:
            c = torch.as_tensor(np.asarray(counts[name], dtype=np.float32))
            self.register_buffer(f"multi_{_buffer(name)}", c / c.sum(), persistent=False)
        means = getattr(schema, "item_dense_mean", None) or {}
        self.dense = [name for name in schema.item_dense if name in means]
        for name in self.dense:
            self.register_buffer(f"dense_{_buffer(name)}", torch.as_tensor(np.asarray(means[name], np.float32)),
                                 persistent=False)

    def multi_weights(self, name: str) -> torch.Tensor | None:
        return getattr(self, f"multi_{_buffer(name)}") if name in self.multi and not self.training else None

    def dense_mean(self, name: str) -> torch.Tensor | None:
        return getattr(self, f"dense_{_buffer(name)}") if name in self.dense and not self.training else None


def _buffer(name: str) -> str:
    return name.replace(".", "_").replace(":", "_")


def encode_features(categorical: nn.ModuleDict, multi: nn.ModuleDict, dense: nn.ModuleDict,
                    missing: nn.ParameterDict, side: dict, presence: dict, where: str,
                    unknowns: Unknowns | None = None) -> list[torch.Tensor]:
    """The feature part of an entity vector, in schema order: one embedding per categorical feature, a masked
    mean of embeddings per multi-valued one (0 = empty slot), and per dense modality its projection where present
    or the learned `missing` vector where absent (absent values are selected away before the projection, so
    they can neither change the output nor poison gradients). `unknowns`: what never-empty features read
    when empty and never-absent modalities when absent (see `Unknowns`)."""
    parts = []
    for name, emb in categorical.items():
        parts.append(emb(_feature(side, name, where)))
    for name, emb in multi.items():
        tags = _feature(side, name, where)
        filled = (tags != 0).unsqueeze(-1)
        n = filled.sum(-2)
        # padding_idx 0 embeds to zero, so the sum only counts real tags; divide by their number.
        part = emb(tags).sum(-2) / n.clamp(min=1).to(emb.weight.dtype)
        w = unknowns.multi_weights(name) if unknowns is not None else None
        if w is not None and bool((n == 0).any()):
            part = torch.where(n > 0, part, w.to(emb.weight.dtype) @ emb.weight)
        parts.append(part)
    for name, proj in dense.items():
        x = _feature(side, name, where).to(proj.weight.dtype)
        present = presence.get(name)
        if present is None:
            # No presence mask given: a row is present when all its values are finite.
            present = torch.isfinite(x).all(-1)
        present = present.to(torch.bool).unsqueeze(-1)
        x = torch.where(present, x, torch.zeros((), dtype=x.dtype, device=x.device))
        mean = unknowns.dense_mean(name) if unknowns is not None else None
        absent = missing[name] if mean is None else proj(mean.to(proj.weight.dtype))
        parts.append(torch.where(present, proj(x), absent))
    return parts


class UserEncoder(nn.Module):
    """The user's side features (`Batch.user_side`, `Schema.user_*`) as one vector (B, out_dim), encoded as an
    item's features are (`encode_features`). Models build it only when the schema has user features
    (`user_encoder`), so a model without any keeps exactly its parameters and initialisation order."""

    def __init__(self, schema: Schema, embed_dim: int, init_std: float = 0.05):
        super().__init__()
        self.categorical = nn.ModuleDict({n: nn.Embedding(v, embed_dim, padding_idx=0)
                                          for n, v in schema.user_categorical.items()})
        self.multi = nn.ModuleDict({n: nn.Embedding(v, embed_dim, padding_idx=0) for n, v in schema.user_multi.items()})
        self.dense = nn.ModuleDict({n: nn.Linear(d, embed_dim) for n, d in schema.user_dense.items()})
        self.missing = nn.ParameterDict({n: nn.Parameter(torch.empty(embed_dim)) for n in schema.user_dense})
        for emb in [*self.categorical.values(), *self.multi.values()]:
            nn.init.normal_(emb.weight, std=init_std)
            with torch.no_grad():
                emb.weight[0].zero_()
        for p in self.missing.values():
            nn.init.normal_(p, std=init_std)
        self.out_dim = embed_dim * (len(self.categorical) + len(self.multi) + len(self.dense))

    def forward(self, batch: Batch) -> torch.Tensor:
        return torch.cat(encode_features(self.categorical, self.multi, self.dense, self.missing, batch.user_side,
                                         batch.user_presence, "user_side"), dim=-1)


def user_encoder(schema: Schema, embed_dim: int) -> UserEncoder | None:
    """A `UserEncoder` when the schema has user side features, else None."""
    has = schema.user_categorical or schema.user_multi or schema.user_dense
    return UserEncoder(schema, embed_dim) if has else None


class ItemEncoder(nn.Module):
    """Encodes items of a `Batch`: `target(batch) -> (B, out_dim)`, `history(batch) -> (B, L, out_dim)`.

    `use_content=False` leaves the dense modalities out entirely (for with/without-content ablations).
    `use_id=False` leaves the id embedding out: for items that never come back, such as the 5-minute
    segments of a live stream (every test segment is new, so its id row would be untrained noise while the
    training rows memorise labels); the side features (streamer, category, content) then carry the item.
    """

    def __init__(self, schema: Schema, embed_dim: int, use_content: bool = True, init_std: float = 0.05,
                 use_id: bool = True):
        super().__init__()
        self.embed_dim = embed_dim
        self.use_content = use_content
        # unknown ids and codes (0) read the average trained row outside training (`IdEmbedding`): a new item with
        # only an id scores as an average item rather than from the zero vector no training batch held
        self.id = IdEmbedding(schema.n_items, embed_dim, schema.item_counts) if use_id else None
        self.categorical = nn.ModuleDict(
            {name: IdEmbedding(n, embed_dim, (schema.item_code_counts or {}).get(name))
             for name, n in schema.item_categorical.items()}
        )
        self.multi = nn.ModuleDict(
            {name: nn.Embedding(n, embed_dim, padding_idx=0) for name, n in schema.item_multi.items()}
        )
        dense = schema.item_dense if use_content else {}
        self.dense = nn.ModuleDict({name: nn.Linear(dim, embed_dim) for name, dim in dense.items()})
        self.missing = nn.ParameterDict({name: nn.Parameter(torch.empty(embed_dim)) for name in dense})
        for emb in [*([self.id] if self.id is not None else []), *self.categorical.values(), *self.multi.values()]:
            nn.init.normal_(emb.weight, std=init_std)
            with torch.no_grad():
                emb.weight[0].zero_()
        for p in self.missing.values():
            nn.init.normal_(p, std=init_std)
        n_parts = (self.id is not None) + len(self.categorical) + len(self.multi) + len(self.dense)
        if n_parts == 0:
            raise ValueError("ItemEncoder: use_id=False needs at least one item side feature or content modality "
                             "(the schema has none): nothing would describe an item")
        self.out_dim = embed_dim * n_parts
        tags = getattr(schema, "history_tags", None) or {}
        self.tag = nn.Embedding(max(tags.values()) + 1, self.out_dim, padding_idx=0) if tags else None
        if self.tag is not None:
            nn.init.normal_(self.tag.weight, std=init_std)
            with torch.no_grad():
                self.tag.weight[0].zero_()
        self.unknowns = Unknowns(schema)
        self._table: tuple | None = None  # (weights' key, (n, out_dim) vectors of ids 1..n-1): `cache_items`

    def _weights_key(self) -> tuple:
        return versions(*self.parameters())

    @torch.no_grad()
    def cache_items(self, side_table, n_items: int, max_bytes: int = 256 << 20, chunk: int = 4096) -> bool:
        """Serving: encodes the items 1..n_items-1 once, with their features in `side_table` (the collate's item
        table, `pipeline.SideTable`, whose rows of those items never change), and from then on reads their
        vectors from that table when the encoder runs without grad in eval mode; id 0 (padding, and items the
        model has no row for) is encoded as before. The table is dropped when any weight changes (in place or
        replaced). Skipped (False) when it would take more than `max_bytes`."""
        if n_items * self.out_dim * 4 > max_bytes:
            return False
        parts = [torch.zeros(1, self.out_dim)]  # the encoder has no dropout or normalisation: no mode to set
        for lo in range(1, n_items, chunk):
            idx = np.arange(lo, min(lo + chunk, n_items))
            side, presence = side_table.gather(idx)
            parts.append(self._encode(torch.from_numpy(idx), side, presence).float())
        self._table = (self._weights_key(), torch.cat(parts))
        return True

    def forward(
        self,
        ids: torch.Tensor,
        side: dict[str, torch.Tensor],
        presence: dict[str, torch.Tensor],
        where: str = "item_side",
    ) -> torch.Tensor:
        """ids (*S) with side features (*S), (*S, K) or (*S, D) and presence (*S) -> (*S, out_dim)."""
        cached = self._table
        if cached is None or self.training or torch.is_grad_enabled() or cached[0] != self._weights_key():
            return self._encode(ids, side, presence, where)
        table = cached[1]
        known = (ids > 0) & (ids < len(table))
        if bool(known.all()):
            return table[ids]
        out = table[torch.where(known, ids, torch.zeros((), dtype=ids.dtype))]
        other = ~known
        if bool(other.any()):
            out[other] = self._encode(ids[other], {k: v[other] for k, v in side.items()},
                                      {k: v[other] for k, v in presence.items()}, where).to(out.dtype)
        return out

    def _encode(self, ids: torch.Tensor, side: dict, presence: dict, where: str = "item_side") -> torch.Tensor:
        """forward without the cached table."""
        parts = [self.id(ids)] if self.id is not None else []
        parts += encode_features(self.categorical, self.multi, self.dense, self.missing, side, presence, where,
                                 self.unknowns)
        return torch.cat(parts, dim=-1)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(target (B, out_dim), history (B, L, out_dim)) in one pass.

        With the collate's distinct-item table (`batch.uniq`) each distinct item is encoded once and
        gathered to its positions: a batch of 1024 x 50 history positions typically holds a few
        thousand distinct items, so the embedding-bag and projection work shrinks by that factor."""
        if batch.uniq is None:
            return self.target(batch), self.history(batch)
        table = self(batch.uniq, batch.uniq_side, batch.uniq_presence, "uniq_side")
        return table[batch.item_pos], self.gather_history(table, batch.hist_pos, batch)

    def encode_rows(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | HistoryRows]:
        """`encode` whose history is a `HistoryRows` (gathered only where a layer reads it) when the batch has
        the distinct-item table and its own history per row; otherwise `encode`'s (B, L, out_dim) tensor."""
        if batch.uniq is None or batch.shared_history:
            return self.encode(batch)
        table = self(batch.uniq, batch.uniq_side, batch.uniq_presence, "uniq_side")
        tags = self._tags(batch)
        return table[batch.item_pos], HistoryRows(table, batch.hist_pos, None if self.tag is None else tags,
                                                  None if self.tag is None else self.tag)

    def gather_history(self, table: torch.Tensor, index: torch.Tensor, batch: Batch) -> torch.Tensor:
        """table[index] (B, L, out_dim) plus the history's tag embeddings; a shared history
        (`Batch.shared_history`) is gathered and tagged once and expanded."""
        tags = self._tags(batch)
        shared = batch.shared_history and index.dim() == 2 and index.shape[0] > 1
        rows = index[:1] if shared else index
        out = table[rows]
        if self.tag is not None:
            out = out + self.tag(tags[:1] if shared else tags)
        return out.expand(index.shape[0], -1, -1) if shared else out

    def target(self, batch: Batch) -> torch.Tensor:
        """(B, out_dim) for the target items `batch.item` (their side features are always in the batch,
        so this never encodes the history's distinct items)."""
        return self(batch.item, batch.item_side, batch.presence, "item_side")

    def history(self, batch: Batch) -> torch.Tensor:
        """(B, L, out_dim) for every history position; padded positions hold arbitrary values."""
        if batch.uniq is not None:
            return self.gather_history(self(batch.uniq, batch.uniq_side, batch.uniq_presence, "uniq_side"),
                                        batch.hist_pos, batch)
        hist = self(batch.hist, batch.hist_side, batch.hist_presence, "hist_side")
        return hist if self.tag is None else hist + self.tag(self._tags(batch))

    def _tags(self, batch: Batch) -> torch.Tensor | None:
        if self.tag is not None and batch.hist_tag is None:
            raise ValueError("ItemEncoder: the model reads a tagged history (schema.history_tags: "
                             f"{self.tag.num_embeddings - 1} channels) but the batch has no hist_tag")
        return batch.hist_tag


class HistoryRows:
    """The history's item vectors (B, L, d) of a batch without building them: `table[index]` (one row per distinct
    item of the batch, `Batch.hist_pos`) plus the embedding of each position's tag, gathered only at the positions
    a layer reads. A (B, L, d) tensor of 1024 x 50 positions costs more to build, mask and back-propagate through
    than the attention that reads 20 of its positions; gathering only those is the same function.

    `at(idx)` (B, k) positions -> (B, k, d); `rows(r, c)` packed positions (N,) -> (N, d); `dense()` the whole
    (B, L, d) tensor. Built by `ItemEncoder.encode_rows`, or around a (B, L, d) tensor (`of`)."""

    def __init__(self, table: torch.Tensor | None, index: torch.Tensor | None, tags: torch.Tensor | None = None,
                 tag: nn.Module | None = None, full: torch.Tensor | None = None):
        self.table, self.index, self.tags, self.tag, self.full = table, index, tags, tag, full

    @classmethod
    def of(cls, hist: torch.Tensor | HistoryRows) -> HistoryRows:
        return hist if isinstance(hist, HistoryRows) else cls(None, None, full=hist)

    @property
    def dim(self) -> int:
        return (self.full if self.full is not None else self.table).shape[-1]

    def _lookup(self, at: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
        # index_select + view: its backward is one index_add into the (U, d) table gradient
        out = self.table.index_select(0, at.reshape(-1)).view(*at.shape, self.table.shape[-1])
        return out if tags is None else out + self.tag(tags)

    def at(self, idx: torch.Tensor) -> torch.Tensor:
        if self.full is not None:
            return self.full.gather(1, idx.unsqueeze(-1).expand(-1, -1, self.full.shape[-1]))
        return self._lookup(self.index.gather(1, idx), None if self.tags is None else self.tags.gather(1, idx))

    def rows(self, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.full is not None:
            return self.full[r, c]
        return self._lookup(self.index[r, c], None if self.tags is None else self.tags[r, c])

    def dense(self) -> torch.Tensor:
        if self.full is not None:
            return self.full
        return self._lookup(self.index, self.tags)
