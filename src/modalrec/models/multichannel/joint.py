"""One joint model over the concatenated channel encoders: `NeutralImputation` and `GenerativeImputation`
(a missing channel's input imputed), and `KnowledgeDistillation` (a student distilled from uni-modal
teachers)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...data.batch import Batch
from ..base import Model, ModelConfig, Schema
from .common import _EncodersConfig, _MultiChannelModel
from .layers import Head, JointEncoder, _bce_rows, _masked_mean, fuse_probabilities, modality_dim


class _Joint(_MultiChannelModel):
    Config = _EncodersConfig

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        cfg = self.config
        self.joint = JointEncoder(self.mc, cfg.modalities, cfg.encoders, cfg.hidden, cfg.dropout, self.name)
        self.head = Head(self.joint.out_dim, cfg.hidden, schema.n_labels, cfg.dropout)

    def _out(self, inputs: dict, any_present: torch.Tensor) -> torch.Tensor:
        out = self.head(self.joint.encode(inputs))
        return torch.where(any_present.unsqueeze(-1), out, self.prior.expand_as(out))


class NeutralImputation(_Joint):
    """Joint model; a missing channel gets the training mean vector / the most frequent bag."""

    name: ClassVar[str] = "neutral_imputation"

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        for name, enc in self.joint.encs.items():
            ch = enc.ch
            value = np.concatenate([np.asarray(ch.neutral.get(m, np.zeros(modality_dim(ch, m))), np.float32)
                                    for m in enc.mods])
            self.register_buffer(f"neutral_{name}", torch.from_numpy(value), persistent=False)

    def forward(self, batch: Batch):
        inputs = self.joint.inputs(batch)
        any_present = torch.stack([n > 0 for _, n in inputs.values()]).any(0)
        for name, enc in self.joint.encs.items():
            x, n = inputs[name]
            inputs[name] = enc.impute(x, n, n == 0, getattr(self, f"neutral_{name}"))
        return self._out(inputs, any_present)


class GenerativeImputation(_Joint):
    """Joint model; a missing channel's input is generated from the other channels (see module doc)."""

    name: ClassVar[str] = "generative_imputation"

    class Config(_Joint.Config):
        generator_weight: float = Field(1.0, ge=0.0, description="weight of the generators' losses")

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        cfg = self.config
        if len(self.mc.channels) < 2:
            raise ValueError("generative_imputation needs at least two touchpoint channels")
        gens, heads = {}, {}
        for name, enc in self.joint.encs.items():
            others = [ch for ch in self.mc.channels if ch.name != name]
            kinds = {ch.name: self.joint.encs[ch.name].kind for ch in others}
            gens[name] = JointEncoder(self.mc, cfg.modalities, kinds, cfg.hidden, cfg.dropout, self.name, others)
            heads[name] = nn.Linear(gens[name].out_dim, enc.in_dim)
        self.generators = nn.ModuleDict(gens)
        self.gen_heads = nn.ModuleDict(heads)

    def forward(self, batch: Batch):
        inputs = self.joint.inputs(batch)
        present = {name: n > 0 for name, (_, n) in inputs.items()}
        any_present = torch.stack(list(present.values())).any(0)
        imputed, aux = dict(inputs), None
        for name, enc in self.joint.encs.items():
            gen = self.generators[name]
            raw = self.gen_heads[name](gen.encode({k: inputs[k] for k in gen.encs}))
            sources = torch.stack([present[k] for k in gen.encs]).any(0)
            if self.training:
                target = enc.summary(*inputs[name])
                if enc.is_bag:
                    per = F.binary_cross_entropy_with_logits(raw, target, reduction="none").mean(-1)
                else:
                    per = ((raw - target) ** 2).mean(-1)
                term = _masked_mean(per, present[name] & sources)
                aux = term if aux is None else aux + term
            value = (torch.sigmoid(raw) if enc.is_bag else raw).detach()
            x, n = inputs[name]
            imputed[name] = enc.impute(x, n, ~present[name] & sources, value)
        out = self._out(imputed, any_present)
        if self.training:
            return {"logits": out, "aux_loss": self.config.generator_weight * aux}
        return out


class KnowledgeDistillation(_Joint):
    """Student on events with every channel, distilled from frozen uni-modal teachers (see module doc)."""

    name: ClassVar[str] = "kd"

    class Config(_Joint.Config):
        teachers: dict[str, str] = Field(..., description="channel -> run directory of a trained uni-modal model")
        teacher_seed: int | None = Field(None, description="teacher checkpoint seed (None: this run's seed when "
                                                           "the teacher run has it, else its first seed)")
        alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the true labels; 1 - alpha: teachers")

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__(schema, config)
        cfg = self.config
        teachers = {}
        for channel, run_dir in cfg.teachers.items():
            self.mc.channel(channel)  # a clear error for an unknown channel
            teachers[channel] = _load_teacher(Path(run_dir), schema, cfg.teacher_seed)
        missing = [ch.name for ch in self.mc.channels if ch.name not in teachers]
        if missing:
            raise ValueError(f"kd: no teacher for channel(s) {missing}; give teachers: {{channel: run dir}}")
        self.teachers = nn.ModuleDict(teachers)
        for p in self.teachers.parameters():
            p.requires_grad_(False)
        shares = np.array([self.mc.channel(c).share for c in self.teachers], np.float64)
        shares = shares / shares.sum() if shares.sum() > 0 else np.full(len(shares), 1.0 / len(shares))
        self.register_buffer("teacher_weight", torch.tensor(shares, dtype=torch.float32), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teachers.eval()  # frozen: no dropout
        return self

    def forward(self, batch: Batch):
        inputs = self.joint.inputs(batch)
        present = [inputs[ch.name][1] > 0 for ch in self.mc.channels]
        full = torch.stack(present).all(0)
        student = self._out(inputs, torch.stack(present).any(0))
        with torch.no_grad():
            t_logits = [self.teachers[c](batch) for c in self.teachers]
            t_logits = [t["logits"] if isinstance(t, dict) else t for t in t_logits]
        t_present = [inputs[c][1] > 0 for c in self.teachers]
        fallback = fuse_probabilities(t_logits, t_present, self.prior)
        out = torch.where(full.unsqueeze(-1), student, fallback)
        if not self.training:
            return out
        alpha = self.config.alpha
        per = alpha * _bce_rows(student, batch.label)
        for w, t in zip(self.teacher_weight, t_logits):
            per = per + (1 - alpha) * w * _bce_rows(student, torch.sigmoid(t))
        return {"logits": out, "weight": torch.zeros_like(per), "aux_loss": _masked_mean(per, full)}


def _load_teacher(run_dir: Path, schema: Schema, seed: int | None) -> Model:
    import yaml

    from ...config import RunConfig
    from ...train.checkpoint import has_checkpoint, load_checkpoint
    from .. import build_model

    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(f"kd teacher: {cfg_file} not found (train the uni-modal teacher run first)")
    cfg = RunConfig.model_validate(yaml.safe_load(cfg_file.read_text()))
    if seed is None:
        current = torch.initial_seed()  # run.py seeds torch with the run's seed before building the model
        seed = current if current in cfg.seeds else cfg.seeds[0]
    model = build_model(cfg.model.name, schema, cfg.model.params)
    ckpt = run_dir / "checkpoints" / f"seed_{seed}"
    if not has_checkpoint(ckpt, "best"):
        raise FileNotFoundError(f"kd teacher: no best checkpoint in {ckpt}")
    load_checkpoint(ckpt, "best", model, restore_rng=False)
    return model.eval()

