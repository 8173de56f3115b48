"""Dense building blocks shared by the CTR models: activations (incl. DIN's Dice), MLP, DCNv2 cross net.

Every block here works on the last dimension and accepts any number of leading dimensions, so a
caller never has to reshape (B, L, D) sequences before an MLP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["relu", "prelu", "dice", "gelu", "tanh", "sigmoid", "none"]


class Dice(nn.Module):
    """Data-adaptive activation of DIN (Zhou et al., KDD 2018, eq. 9).

    f(s) = p(s) * s + (1 - p(s)) * alpha * s,  p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps)).
    E and Var are batch statistics in training and running averages at inference, exactly like a
    BatchNorm without affine parameters; eps = 1e-8 as in the paper.
    """

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.1):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, eps=eps, momentum=momentum, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if self.training and flat.shape[0] < 2:
            # A single row has no variance; fall back to the running statistics instead of failing.
            z = F.batch_norm(
                flat, self.norm.running_mean, self.norm.running_var, training=False, eps=self.norm.eps
            )
        else:
            z = self.norm(flat)
        p = torch.sigmoid(z)
        out = p * flat + (1.0 - p) * self.alpha * flat
        return out.reshape(x.shape)


class _ChannelLast(nn.Module):
    """Applies a module that expects (N, C) to any (..., C) tensor (PReLU/BatchNorm read dim 1)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def versions(*tensors: torch.Tensor) -> tuple:
    """A key that changes whenever one of the tensors is changed in place or replaced: for values derived from
    weights and cached for inference (folded maps, encoded item tables)."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def make_activation(name: Activation, dim: int) -> nn.Module:
    """One activation module by name; `dim` sizes the per-channel parameters of PReLU and Dice."""
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return _ChannelLast(nn.PReLU(dim, init=0.25))
    if name == "dice":
        return Dice(dim)
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "none":
        return nn.Identity()
    raise ValueError(
        f"unknown activation '{name}'; choose one of relu, prelu, dice, gelu, tanh, sigmoid, none"
    )


class MLP(nn.Module):
    """Stack of Linear -> [BatchNorm] -> activation -> Dropout, with an optional final Linear.

    `out_dim=None` ends on the last hidden layer (a tower to concatenate elsewhere); an int adds a
    plain Linear head (e.g. 1 for a logit) with no activation after it.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        activation: Activation = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        out_dim: int | None = None,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(_ChannelLast(nn.BatchNorm1d(h)))
            layers.append(make_activation(activation, h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossNetV2(nn.Module):
    """Cross network of DCN-V2 (Wang et al., WWW 2021, eq. 1), full-rank matrix version.

    x_{l+1} = x_0 * (W_l x_l + b_l) + x_l: each layer raises the polynomial degree of the feature
    crosses by one while the residual keeps the lower-degree terms.
    """

    def __init__(self, dim: int, n_layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        for lin in self.layers:
            nn.init.zeros_(lin.bias)
        self.out_dim = dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for lin in self.layers:
            x = x0 * lin(x) + x
        return x


def mba_penalty(embedding: nn.Embedding, ids: torch.Tensor, counts: torch.Tensor, weight: float) -> torch.Tensor:
    """Mini-batch aware L2 of DIN (Zhou et al., KDD 2018, eq. 5): only the embedding rows used by the
    batch are penalised, each scaled by 1 / (its number of training occurrences), so frequent ids
    are shrunk less than rare ones and the cost stays proportional to the batch, not the vocabulary."""
    rows = torch.unique(ids[ids > 0])
    if rows.numel() == 0:
        return embedding.weight.new_zeros(())
    w = embedding.weight[rows]
    return weight * (w.pow(2).sum(-1) / counts[rows].clamp(min=1.0)).sum()


class IdEmbedding(nn.Embedding):
    """An embedding of a vocabulary whose index 0 is padding and unknown values.

    With the training frequency of every index (`counts`, e.g. `Schema.item_counts`) and when index 0 never
    occurred at a real training position, an unknown value (index 0) is, outside training, embedded as the
    frequency-weighted mean of the trained rows: an item, user or feature value the training data never held
    reads as an average known one, instead of the zero vector the network never met in training (a new item
    with only an id, a user first seen after training, a streamer that joined later). Padding positions are
    masked by every layer that reads a sequence, so they may read the mean too. Training is unchanged (index 0
    never occurs there at a real position) and the weights are those of `nn.Embedding` (same state dict)."""

    def __init__(self, n: int, dim: int, counts=None):
        super().__init__(n, dim, padding_idx=0)
        w = None
        if counts is not None:
            c = torch.as_tensor(counts, dtype=torch.float32).reshape(-1)[:n].clone()
            if len(c) == n and float(c[0]) == 0.0 and float(c.sum()) > 0:
                w = c / c.sum()
        self.register_buffer("known_weights", w, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = super().forward(ids)
        w = self.known_weights
        if w is None or self.training:
            return out
        unknown = ids == 0
        if not bool(unknown.any()):
            return out
        mean = w.to(self.weight.dtype) @ self.weight  # (dim,): the average trained row
        return torch.where(unknown.unsqueeze(-1), mean, out)


def id_embedding(n: int, dim: int, std: float = 0.05, counts=None) -> IdEmbedding:
    """Embedding of an id vocabulary whose row 0 (padding / unknown) is and stays the zero vector; with the
    training `counts` of every index, unknown ids read the average trained row outside training (`IdEmbedding`)."""
    emb = IdEmbedding(n, dim, counts)
    nn.init.normal_(emb.weight, std=std)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


def reinitialise(module: nn.Module, scheme: str = "model", embedding_std: float | None = None) -> None:
    """Re-draws the parameters of `module` (see `config.InitConfig`). `scheme="model"` with no
    `embedding_std` changes nothing. Embedding padding rows stay zero."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Embedding) and embedding_std is not None:
                nn.init.normal_(m.weight, std=embedding_std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.Linear) and scheme == "xavier_normal":
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    m.bias.zero_()


class ContextEmbedding(nn.Module):
    """The per-sample categorical context features of a ctr batch (`Schema.context_categorical`,
    `Batch.context[name]` (B,) long): one `id_embedding` of `dim` per feature (code 0, empty or unknown,
    is the zero vector), concatenated in schema order -> (B, dim * n_features).

    Models build it only where the schema has context features (`context_embedding`), so a model without
    any keeps exactly its parameters and initialisation order."""

    def __init__(self, sizes: dict[str, int], dim: int):
        super().__init__()
        if not sizes:
            raise ValueError("ContextEmbedding needs at least one context feature")
        self.tables = nn.ModuleDict({name: id_embedding(n, dim) for name, n in sizes.items()})
        self.out_dim = dim * len(sizes)

    def forward(self, batch) -> torch.Tensor:
        return torch.cat([table(context_codes(batch, name)) for name, table in self.tables.items()], dim=-1)


def context_codes(batch, name: str) -> torch.Tensor:
    """`batch.context[name]`, or an error naming the feature the model was trained with."""
    try:
        return batch.context[name]
    except KeyError:
        have = sorted(batch.context) or "none"
        raise KeyError(f"the model reads the context feature '{name}' (task.context_features) but the batch has "
                       f"{have}; pass the sample's context codes in Batch.context") from None


def context_embedding(schema, dim: int) -> ContextEmbedding | None:
    """A `ContextEmbedding` of `dim` per feature when `schema` has context features, else None."""
    sizes = getattr(schema, "context_categorical", None) or {}
    return ContextEmbedding(sizes, dim) if sizes else None
