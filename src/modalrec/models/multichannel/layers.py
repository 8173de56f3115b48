"""Building blocks of the multi-channel models: reading a channel's touchpoints from a batch, packing
and GRU helpers, probability fusion, the output `Head` and the per-channel / joint encoders."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...data.batch import Batch
from ..base import ChannelSpec, MultiChannelSpec

EncoderKind = Literal["mean", "gru"]
_EPS = 1e-6


def resolve_modalities(ch: ChannelSpec, wanted: list[str] | None, model: str, tokens_only: bool = False) -> list[str]:
    """The modalities a model reads for channel `ch`: `wanted` (those the channel has), else its
    vectors if it has any, else its token bags."""
    if tokens_only:
        mods = [m for m in ch.tokens if wanted is None or m in wanted]
    elif wanted is None:
        mods = list(ch.vectors) or list(ch.tokens)
    else:
        mods = [m for m in wanted if m in ch.vectors or m in ch.tokens]
    if not mods:
        what = "token modality" if tokens_only else "modality"
        raise ValueError(f"model '{model}': channel '{ch.name}' has no {what} to read (has tokens "
                         f"{list(ch.tokens)}, vectors {list(ch.vectors)}; asked for {wanted})")
    return mods


def modality_dim(ch: ChannelSpec, m: str) -> int:
    return ch.tokens[m] if m in ch.tokens else ch.vectors[m]


def channel_input(batch: Batch, ch: ChannelSpec, mods: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x (B, T, F), sel (B, T), weight (B, T)): the concatenated modalities of the channel's
    touchpoints that have content; `weight` is the vector weight (n_sentences) or 1."""
    ex = batch.touchpoints.flat()
    sel = (ex["tp_channel"] == ch.index) & ex["tp_mask"]
    present = torch.zeros_like(sel)
    parts, weight = [], None
    for m in mods:
        if m in ch.tokens:
            parts.append(ex[f"tok:{m}"])
        else:
            parts.append(ex[f"vec:{m}"])
            if weight is None and f"wt:{m}" in ex:
                weight = ex[f"wt:{m}"]
        present = present | ex[f"has:{m}"]
    sel = sel & present
    x = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    x = torch.where(sel.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if weight is None:
        weight = torch.ones(sel.shape, dtype=x.dtype, device=x.device)
    weight = torch.where(sel, weight.clamp(min=_EPS), torch.zeros((), dtype=x.dtype, device=x.device))
    return x, sel, weight


def compact(x: torch.Tensor, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-align the selected positions of each row, keeping their order: (B, T', F), lengths (B,)."""
    lengths = sel.sum(1)
    t = max(int(lengths.max()) if lengths.numel() else 0, 1)
    order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :t]
    out = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    keep = torch.arange(t, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    return torch.where(keep.unsqueeze(-1), out, torch.zeros((), dtype=x.dtype, device=x.device)), lengths


def gru_last(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Hidden state after the last real step of left-aligned sequences (zeros for empty ones).

    Packed, so padding is never computed (most events have 1 to 3 touchpoints, the longest 10: packing
    is what makes the GRU models affordable on CPU) and cannot change a real step."""
    nz = lengths > 0
    h = torch.zeros(x.shape[0], gru.hidden_size, dtype=x.dtype, device=x.device)
    if not bool(nz.any()):
        return h
    rows = nz.nonzero().squeeze(1)
    packed = nn.utils.rnn.pack_padded_sequence(x[rows], lengths[rows].cpu(), batch_first=True, enforce_sorted=False)
    _, last = gru(packed)
    return h.index_put((rows,), last[-1])


def channel_bits(batch: Batch, n_channels: int) -> torch.Tensor:
    """(B, T, C) one-hot channel of each touchpoint (all zero on padding)."""
    ch = batch.touchpoints.channel.clamp(min=0)
    return F.one_hot(ch, n_channels + 1)[..., 1:].float()


def presence_pattern(batch: Batch, n_channels: int) -> torch.Tensor:
    """(B,) bit c-1 set when the sample has a touchpoint of channel c."""
    ch, mask = batch.touchpoints.channel, batch.touchpoints.mask
    pat = torch.zeros(ch.shape[0], dtype=torch.long, device=ch.device)
    for c in range(1, n_channels + 1):
        pat |= ((ch == c) & mask).any(1).long() << (c - 1)
    return pat


def fuse_probabilities(logits: list[torch.Tensor], present: list[torch.Tensor], prior: torch.Tensor) -> torch.Tensor:
    """Logit of the mean probability over the members present; the prior where none is."""
    p = torch.stack([torch.sigmoid(lg) for lg in logits])  # (M, B, L)
    w = torch.stack(present).float().unsqueeze(-1)  # (M, B, 1)
    n = w.sum(0)
    mean = (p * w).sum(0) / n.clamp(min=1)
    fused = torch.logit(mean.clamp(_EPS, 1 - _EPS))
    return torch.where(n > 0, fused, prior.expand_as(fused))


def _bce_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").mean(-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return (values * m).sum() / m.sum().clamp(min=1)


class Head(nn.Sequential):
    """Dropout, a dense ReLU layer and the n_labels output logits."""

    def __init__(self, in_dim: int, hidden: int, n_labels: int, dropout: float):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_labels))


class ChannelEncoder(nn.Module):
    """One channel's touchpoints -> (B, hidden).

    kind ``mean``: the weighted mean of the touchpoints' inputs, then a 2-layer MLP (the paper's
    conversation model); kind ``gru``: a GRU over the touchpoints in order (its session model).
    `inputs` and `encode` are separate steps so that imputation can replace a missing channel's input."""

    def __init__(self, ch: ChannelSpec, mods: list[str], kind: EncoderKind, hidden: int, dropout: float):
        super().__init__()
        self.ch, self.mods, self.kind = ch, mods, kind
        self.in_dim = sum(modality_dim(ch, m) for m in mods)
        self.is_bag = all(m in ch.tokens for m in mods)
        if kind == "mean":
            self.net = nn.Sequential(nn.Linear(self.in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, hidden), nn.ReLU())
        else:
            self.gru = nn.GRU(self.in_dim, hidden, batch_first=True)

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """mean: (pooled (B, F), n touchpoints (B,)); gru: (sequence (B, T', F), lengths (B,))."""
        x, sel, w = channel_input(batch, self.ch, self.mods)
        if self.kind == "mean":
            tot = w.sum(1, keepdim=True)
            pooled = (x * w.unsqueeze(-1)).sum(1) / tot.clamp(min=_EPS)
            return pooled, sel.sum(1)
        return compact(x, sel)

    def summary(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, F): the pooled input (mean) or the mean bag of the sequence (gru): what a generator predicts."""
        if self.kind == "mean":
            return x
        keep = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        return (x * keep.unsqueeze(-1)).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(x.dtype)

    def impute(self, x: torch.Tensor, lengths: torch.Tensor, missing: torch.Tensor, value: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the input of the `missing` rows by `value` (B, F) or (F,): the pooled input, or a
        sequence of one touchpoint."""
        value = value.to(x.dtype).expand(x.shape[0], -1)
        if self.kind == "mean":
            return torch.where(missing.unsqueeze(-1), value, x), torch.where(missing, torch.ones_like(lengths), lengths)
        first = torch.where(missing.unsqueeze(-1), value, x[:, 0])
        x = torch.cat([first.unsqueeze(1), x[:, 1:]], dim=1)
        return x, torch.where(missing, torch.ones_like(lengths), lengths)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return self.net(x)
        return gru_last(self.gru, x, lengths)


def default_kind(ch: ChannelSpec, mods: list[str]) -> EncoderKind:
    return "mean" if all(m in ch.vectors for m in mods) else "gru"


class JointEncoder(nn.Module):
    """One `ChannelEncoder` per channel; `encode` concatenates their outputs (C * hidden)."""

    def __init__(self, mc: MultiChannelSpec, wanted: list[str] | None, kinds: dict[str, EncoderKind] | None,
                 hidden: int, dropout: float, model: str, channels: list[ChannelSpec] | None = None):
        super().__init__()
        self.channels = list(channels if channels is not None else mc.channels)
        encs = {}
        for ch in self.channels:
            mods = resolve_modalities(ch, wanted, model)
            encs[ch.name] = ChannelEncoder(ch, mods, (kinds or {}).get(ch.name) or default_kind(ch, mods),
                                           hidden, dropout)
        self.encs = nn.ModuleDict(encs)
        self.out_dim = hidden * len(self.channels)

    def inputs(self, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: enc.inputs(batch) for name, enc in self.encs.items()}

    def encode(self, inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([enc.encode(*inputs[name]) for name, enc in self.encs.items()], dim=-1)
