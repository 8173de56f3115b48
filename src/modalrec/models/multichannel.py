"""Models of Bruun, Balog, Maistro (SIGIR 2024) for items bought after multi-channel touchpoints.

All read the `multilabel` task's batches (`tasks/multilabel.py`): per sample an ordered list of
touchpoints, each of one channel (web session, call-centre conversation, ...) with the content of its
modalities, and return (B, n_labels) logits (sigmoid outputs trained with BCE, as in the paper).

Uni-modal and fusion baselines (one encoder per channel):
- `conversation`: an MLP over the mean conversation embedding of the event (the mean of all its
  sentences: conversations weighted by their number of sentences);
- `session`: a GRU over the event's web sessions in order, one multi-hot vector of action tags per
  session, then dropout and a dense layer;
  both fall back to the training label rates (Popular) on events without their channel and are
  trained on the events that have it;
- `late_fusion`: one uni-modal model per channel, trained side by side in one run (each on the events
  with its channel, disjoint parameters: the same as two runs, but with one early stop); the prediction
  averages the probabilities of the models whose channel the event has;
- `kd`: knowledge distillation. A joint student (one encoder per channel, concatenated) is trained on
  the events that have every channel, against the true labels and the frozen uni-modal teachers'
  probabilities, the teachers weighted by the share of training events having their channel. Teachers
  are loaded from finished uni-modal runs (`teachers: {channel: run dir}`, best checkpoint of the
  same seed when the run has it). The student answers for events with every channel, the teachers
  (averaged over the channels present) for the others;
- `neutral_imputation`: the joint model on all events; a missing channel gets a neutral input: the
  training mean vector (conversation embedding) or the most frequent bag (one most frequent session);
- `generative_imputation`: the joint model on all events; a missing channel's input is generated
  from the channels present (sessions -> mean conversation embedding; conversation embedding -> one
  session bag). The generators are trained in the same run, on the events with both channels
  (MSE for vectors, BCE for bags); their output enters the joint model detached, so the joint model's
  loss does not move them: the paper's three steps, trained at once.

Shared-space models (any number of channels, all from `Schema.multichannel`): every touchpoint
becomes one vector in one space, plus its channel as one-hot bits, and a GRU (256) reads the one
chronological sequence:
- `keyword`: the multi-hot bag over the shared token vocabulary (web action tags and conversation
  keywords have the same ids);
- `latent_feature`: per-modality linear projections summed into one latent vector (ReLU); the loss
  weights each sample by 1 / (P * share of its channel presence pattern) so that the P patterns
  (conversation-only, session-only, both) weigh alike;
- `relative_representation`: one encoder per channel trained as a classifier of the event's items
  (an auxiliary loss on every touchpoint); about 125 anchor events with every channel, stratified by
  item; a touchpoint is the vector of cosine similarities between its encoding and the anchors'
  encodings of the same channel (the anchors' mean over their touchpoints of that channel). With
  `detach_encoders` (default) only the classifier loss trains the encoders, as when they are trained
  first and frozen.

Training outputs follow the task's contract: a dict with `logits`, optional per-sample `weight` and
`aux_loss`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.batch import Batch, Touchpoints
from .base import ChannelSpec, Model, ModelConfig, MultiChannelSpec, Schema

EncoderKind = Literal["mean", "gru"]
_EPS = 1e-6


# ------------------------------------------------------------------------------------------ helpers
def _mc(schema: Schema, name: str) -> MultiChannelSpec:
    if schema.multichannel is None or not schema.multichannel.channels:
        raise ValueError(f"model '{name}' needs the touchpoint channels of a multilabel task (schema.multichannel)")
    return schema.multichannel


def _prior_logits(schema: Schema) -> torch.Tensor:
    rate = schema.item_positive_rate
    if rate is None or len(rate) != schema.n_labels:
        rate = np.full(schema.n_labels, 0.5)
    return torch.logit(torch.as_tensor(np.asarray(rate, np.float64)).clamp(_EPS, 1 - _EPS)).float()


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


# ------------------------------------------------------------------------------------ uni-modal
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


class _EncodersConfig(_Common):
    encoders: dict[str, EncoderKind] | None = Field(None, description="channel -> mean|gru (default: mean "
                                                                      "for vector inputs, gru for bags)")


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


# ------------------------------------------------------------------------- joint with imputation
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

    from ..config import RunConfig
    from ..train.checkpoint import has_checkpoint, load_checkpoint
    from . import build_model

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


# ------------------------------------------------------------------------------ shared space
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

