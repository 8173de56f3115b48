"""One encoder per channel: the uni-modal models `Conversation` and `Session`, and `LateFusion` of them."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...data.batch import Batch
from ..base import ModelConfig, Schema
from .common import _Common, _EncodersConfig, _MultiChannelModel
from .layers import (
    ChannelEncoder,
    EncoderKind,
    Head,
    JointEncoder,
    _bce_rows,
    _masked_mean,
    fuse_probabilities,
    resolve_modalities,
)


class _UniModal(_MultiChannelModel):
    class Config(_Common):
        channel: str
        encoder: EncoderKind

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        cfg = self.config
        self.ch = self.mc.channel(cfg.channel)
        mods = resolve_modalities(self.ch, cfg.modalities, self.name)
        self.enc = ChannelEncoder(self.ch, mods, cfg.encoder, cfg.hidden, cfg.dropout)
        self.head = Head(cfg.hidden, cfg.hidden, schema.n_labels, cfg.dropout)

    def logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, L) with the prior on rows without the channel, presence (B,))."""
        x, n = self.enc.inputs(batch)
        present = n > 0
        out = self.head(self.enc.encode(x, n))
        return torch.where(present.unsqueeze(-1), out, self.prior.expand_as(out)), present

    def forward(self, batch: Batch):
        out, present = self.logits(batch)
        if self.training:
            return {"logits": out, "weight": present.float()}
        return out


class Conversation(_UniModal):
    name: ClassVar[str] = "conversation"

    class Config(_UniModal.Config):
        channel: str = "conversation"
        encoder: EncoderKind = "mean"


class Session(_UniModal):
    name: ClassVar[str] = "session"

    class Config(_UniModal.Config):
        channel: str = "session"
        encoder: EncoderKind = "gru"


class LateFusion(_MultiChannelModel):
    name: ClassVar[str] = "late_fusion"

    Config = _EncodersConfig

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        cfg = self.config
        self.joint = JointEncoder(self.mc, cfg.modalities, cfg.encoders, cfg.hidden, cfg.dropout, self.name)
        self.heads = nn.ModuleDict({name: Head(cfg.hidden, cfg.hidden, schema.n_labels, cfg.dropout)
                                    for name in self.joint.encs})

    def forward(self, batch: Batch):
        logits, present = [], []
        for name, enc in self.joint.encs.items():
            x, n = enc.inputs(batch)
            logits.append(self.heads[name](enc.encode(x, n)))
            present.append(n > 0)
        out = fuse_probabilities(logits, present, self.prior)
        if not self.training:
            return out
        aux = sum(_masked_mean(_bce_rows(lg, batch.label), p) for lg, p in zip(logits, present))
        return {"logits": out, "weight": torch.zeros_like(out[:, 0]), "aux_loss": aux}

