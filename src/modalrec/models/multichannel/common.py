"""What every multi-channel model shares: the base class (multilabel task, channels, prior logits) and the
common config fields."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from ..base import Model, ModelConfig, MultiChannelSpec, Schema
from .layers import _EPS, EncoderKind


def _mc(schema: Schema, name: str) -> MultiChannelSpec:
    if schema.multichannel is None or not schema.multichannel.channels:
        raise ValueError(f"model '{name}' needs the touchpoint channels of a multilabel task (schema.multichannel)")
    return schema.multichannel


def _prior_logits(schema: Schema) -> torch.Tensor:
    rate = schema.item_positive_rate
    if rate is None or len(rate) != schema.n_labels:
        rate = np.full(schema.n_labels, 0.5)
    return torch.logit(torch.as_tensor(np.asarray(rate, np.float64)).clamp(_EPS, 1 - _EPS)).float()


class _Common(ModelConfig):
    hidden: int = Field(256, ge=1, description="GRU / dense units (256 in the paper)")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="0.2 to 0.4 in the paper")
    modalities: list[str] | None = Field(None, description="modalities to read (None: per channel its vectors, "
                                                           "else its token bags)")


class _MultiChannelModel(Model):
    tasks: ClassVar[frozenset[str]] = frozenset({"multilabel"})
    inputs: ClassVar[frozenset[str]] = frozenset({"touchpoints", "label"})

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        self.mc = _mc(schema, self.name)
        self.register_buffer("prior", _prior_logits(schema), persistent=False)


class _EncodersConfig(_Common):
    encoders: dict[str, EncoderKind] | None = Field(None, description="channel -> mean|gru (default: mean "
                                                                      "for vector inputs, gru for bags)")

