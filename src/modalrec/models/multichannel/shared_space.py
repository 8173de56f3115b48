"""Shared-space models: every touchpoint one vector (plus channel bits) in one chronological sequence read by
a GRU: `Keyword`, `LatentFeature`, `RelativeRepresentation`."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...data.batch import Batch, Touchpoints
from ..base import ChannelSpec, ModelConfig, Schema
from .common import _Common, _MultiChannelModel
from .layers import (
    Head,
    _bce_rows,
    _masked_mean,
    channel_bits,
    channel_input,
    gru_last,
    modality_dim,
    presence_pattern,
    resolve_modalities,
)


class _Sequence(_MultiChannelModel):
    """A GRU over one chronological sequence of touchpoint vectors (+ channel bits), then the head."""

    def _build_sequence(self, in_dim: int) -> None:
        cfg = self.config
        self.n_channels = len(self.mc.channels)
        self.gru = nn.GRU(in_dim + self.n_channels, cfg.hidden, batch_first=True)
        self.head = Head(cfg.hidden, cfg.hidden, self.schema.n_labels, cfg.dropout)

    def _sequence_logits(self, batch: Batch, x: torch.Tensor) -> torch.Tensor:
        mask = batch.touchpoints.mask
        x = torch.cat([x, channel_bits(batch, self.n_channels)], dim=-1)
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        lengths = mask.sum(1)
        out = self.head(gru_last(self.gru, x, lengths))
        return torch.where((lengths > 0).unsqueeze(-1), out, self.prior.expand_as(out))


class Keyword(_Sequence):
    name: ClassVar[str] = "keyword"

    class Config(_Common):
        pass

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        mods = set()
        for ch in self.mc.channels:
            mods.update(resolve_modalities(ch, self.config.modalities, self.name, tokens_only=True))
        self.mods = sorted(mods)
        self._build_sequence(self.mc.vocab_size)

    def forward(self, batch: Batch) -> torch.Tensor:
        bag = batch.touchpoints.tokens[self.mods[0]]
        for m in self.mods[1:]:
            bag = torch.maximum(bag, batch.touchpoints.tokens[m])
        return self._sequence_logits(batch, bag)


class LatentFeature(_Sequence):
    name: ClassVar[str] = "latent_feature"

    class Config(_Common):
        latent_dim: int = Field(256, ge=1)
        sample_weights: bool = Field(True, description="weight samples by 1 / (P * share of their channel pattern)")

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        cfg = self.config
        self.uses: list[tuple[ChannelSpec, list[str]]] = []
        dims: dict[str, int] = {}
        for ch in self.mc.channels:
            mods = resolve_modalities(ch, cfg.modalities, self.name)
            self.uses.append((ch, mods))
            for m in mods:
                dims[m] = modality_dim(ch, m)
        self.proj = nn.ModuleDict({m.replace(".", "_"): nn.Linear(d, cfg.latent_dim) for m, d in dims.items()})
        self._build_sequence(cfg.latent_dim)
        shares = self.mc.pattern_shares if self.mc.pattern_shares is not None else np.ones(2 ** len(self.mc.channels))
        shares = np.asarray(shares, np.float64)
        n_pat = max(int((shares > 0).sum()), 1)
        w = np.where(shares > 0, 1.0 / (n_pat * np.maximum(shares, 1e-12)), 0.0)
        self.register_buffer("pattern_weight", torch.tensor(w, dtype=torch.float32), persistent=False)

    def forward(self, batch: Batch):
        ex = batch.touchpoints.flat()
        z = None
        for ch, mods in self.uses:
            sel = (ex["tp_channel"] == ch.index) & ex["tp_mask"]
            for m in mods:
                x = ex[f"tok:{m}"] if m in ch.tokens else ex[f"vec:{m}"]
                p = self.proj[m.replace(".", "_")](x)
                keep = (sel & ex[f"has:{m}"]).unsqueeze(-1)
                p = torch.where(keep, p, torch.zeros((), dtype=p.dtype, device=p.device))
                z = p if z is None else z + p
        out = self._sequence_logits(batch, torch.relu(z))
        if self.training and self.config.sample_weights:
            return {"logits": out, "weight": self.pattern_weight[presence_pattern(batch, self.n_channels)]}
        return out


class RelativeRepresentation(_Sequence):
    name: ClassVar[str] = "relative_representation"

    class Config(_Common):
        n_anchors: int = Field(125, ge=1)
        anchor_seed: int = 0
        encoding_dim: int = Field(128, ge=1, description="output of each channel's encoder")
        detach_encoders: bool = Field(True, description="only the classifier loss trains the encoders")
        classifier_weight: float = Field(1.0, ge=0.0)
        center: bool = Field(True, description="subtract the anchors' mean encoding before the cosines: raw "
                                               "encodings share a common direction, so that every cosine is "
                                               "about 0.7 and the similarities barely vary")

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        cfg = self.config
        if self.mc.sample_anchors is None:
            raise ValueError("relative_representation needs the task's anchor sampler (schema.multichannel)")
        self.uses = [(ch, resolve_modalities(ch, cfg.modalities, self.name)) for ch in self.mc.channels]
        enc, cls = {}, {}
        for ch, mods in self.uses:
            d = sum(modality_dim(ch, m) for m in mods)
            enc[ch.name] = nn.Sequential(nn.Linear(d, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.encoding_dim))
            cls[ch.name] = nn.Linear(cfg.encoding_dim, schema.n_labels)
        self.encoders = nn.ModuleDict(enc)
        self.classifiers = nn.ModuleDict(cls)
        anchors: Batch = self.mc.sample_anchors(cfg.n_anchors, cfg.anchor_seed)
        anchor_inputs = anchors.touchpoints.flat()
        self.anchor_keys = ["tp_channel", "tp_mask"] + [f"{p}:{m}" for ch, mods in self.uses for m in mods
                                                        for p in ("tok", "vec", "wt", "has")
                                                        if f"{p}:{m}" in anchor_inputs]
        for k in self.anchor_keys:  # persistent: a checkpoint carries its anchors
            self.register_buffer(_buffer_name(k), anchor_inputs[k].clone())
        self.n_anchor_events = anchors.size
        self._build_sequence(self.n_anchor_events)

    def _anchor_batch(self) -> Batch:
        extra = {k: getattr(self, _buffer_name(k)) for k in self.anchor_keys}
        n = extra["tp_mask"].shape[0]
        z = torch.zeros(n, dtype=torch.long, device=extra["tp_mask"].device)
        return Batch(user=z, item=z, hist=z.new_zeros((n, 0)), hist_mask=extra["tp_mask"][:, :0],
                     touchpoints=Touchpoints.from_flat(extra))

    def forward(self, batch: Batch):
        cfg = self.config
        anchors = self._anchor_batch()
        B, T = batch.touchpoints.mask.shape
        rel = torch.zeros(B, T, self.n_anchor_events, device=batch.touchpoints.mask.device)
        aux = None
        for ch, mods in self.uses:
            enc = self.encoders[ch.name]
            x, sel, _ = channel_input(batch, ch, mods)
            e = enc(x)  # (B, T, E)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.detach_encoders):
                ax, asel, _ = channel_input(anchors, ch, mods)
                ae = enc(ax)  # (K, Ta, E)
                a = (ae * asel.unsqueeze(-1)).sum(1) / asel.sum(1, keepdim=True).clamp(min=1)
                q = e.detach() if cfg.detach_encoders else e
                if cfg.center:
                    center = a.mean(0)
                    q, a = q - center, a - center
                sim = F.normalize(q, dim=-1) @ F.normalize(a, dim=-1).T  # (B, T, K)
            rel = torch.where(sel.unsqueeze(-1), sim, rel)
            if self.training:
                per = _bce_rows(self.classifiers[ch.name](e), batch.label.unsqueeze(1).expand(-1, T, -1))
                term = _masked_mean(per, sel)
                aux = term if aux is None else aux + term
        out = self._sequence_logits(batch, rel)
        if self.training:
            return {"logits": out, "aux_loss": cfg.classifier_weight * aux}
        return out


def _buffer_name(key: str) -> str:
    return "anchor_" + key.replace(":", "__").replace(".", "_")
