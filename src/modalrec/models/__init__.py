"""The models of modalrec, in one explicit table, and `build_model` that builds one from a typed config.

Adding a model: write `models/NAME.py` with a `Model` subclass and its `Config`, then add a line to
`MODELS`. No registration decorators or import magic: this table is the whole list.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .base import Model, ModelConfig, Schema
from .dcnv2 import DCNv2
from .din import DIN
from .lr import LogisticRegression
from .mmbee import MMBee
from .multichannel import (
    Conversation,
    GenerativeImputation,
    Keyword,
    KnowledgeDistillation,
    LateFusion,
    LatentFeature,
    NeutralImputation,
    RelativeRepresentation,
    Session,
)
from .popularity import Popularity
from .qin import QIN
from .sasrec import SASRec
from .sdim import SDIM
from .sim import SIM
from .tin import TIN

MODELS: dict[str, type[Model]] = {
    "popularity": Popularity,
    "lr": LogisticRegression,
    "din": DIN,
    "dcnv2": DCNv2,
    "sasrec": SASRec,
    "sim": SIM,
    "sdim": SDIM,
    "tin": TIN,
    "qin": QIN,
    # live-streaming gifts (Deng et al., KDD 2024): SIM + MFQ content fusion + GIE graph expansion
    "mmbee": MMBee,
    # Bruun, Balog, Maistro (SIGIR 2024), multilabel task; "popularity" is their Popular
    "conversation": Conversation,
    "session": Session,
    "late_fusion": LateFusion,
    "kd": KnowledgeDistillation,
    "neutral_imputation": NeutralImputation,
    "generative_imputation": GenerativeImputation,
    "keyword": Keyword,
    "latent_feature": LatentFeature,
    "relative_representation": RelativeRepresentation,
}


class ModelConfigError(ValueError):
    """An unknown model name or parameters its Config does not accept."""


def model_config(name: str, params: dict[str, Any] | None = None) -> ModelConfig:
    """Validate `params` with model `name`'s Config; errors name the model and each bad key."""
    cls = _model_class(name)
    try:
        return cls.Config.model_validate(params or {})
    except ValidationError as e:
        lines = []
        allowed = ", ".join(cls.Config.model_fields) or "none"
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<params>"
            if err["type"] == "extra_forbidden":
                lines.append(f"model '{name}': unknown parameter '{key}' (allowed: {allowed})")
            else:
                lines.append(f"model '{name}': parameter '{key}': {err['msg']} (got {err.get('input')!r})")
        raise ModelConfigError("\n".join(lines)) from None


def build_model(name: str, schema: Schema, params: dict[str, Any] | None = None) -> Model:
    """Build model `name` for `schema` from a plain parameter dict (e.g. the YAML `model.params`)."""
    cls = _model_class(name)
    if getattr(schema, "history_tags", None) and "hist_tag" not in cls.inputs:
        reads = sorted(n for n, c in MODELS.items() if "hist_tag" in c.inputs)
        raise ModelConfigError(f"model '{name}' does not read history action tags (task.history_channel_tags); "
                               f"models that do: {', '.join(reads)}")
    return cls(schema, model_config(name, params))


def required_modalities(name: str, params: dict[str, Any] | None = None) -> list[str]:
    """The content modalities a model's config names as its inputs (a `modalities` list, e.g. MMBee's MFQ
    inputs), so a run can check them against the data before the expensive work (content encoding)."""
    cfg = model_config(name, params)
    return list(getattr(cfg, "modalities", None) or [])


def _model_class(name: str) -> type[Model]:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}") from None


__all__ = [
    "DIN",
    "MODELS",
    "DCNv2",
    "LogisticRegression",
    "Model",
    "ModelConfig",
    "ModelConfigError",
    "Popularity",
    "SASRec",
    "Schema",
    "build_model",
    "model_config",
]
