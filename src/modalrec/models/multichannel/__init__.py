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

The package: ``unimodal`` (`Conversation`, `Session`, `LateFusion`); ``joint`` (`NeutralImputation`,
`GenerativeImputation`, `KnowledgeDistillation`); ``shared_space`` (`Keyword`, `LatentFeature`,
`RelativeRepresentation`); ``common`` (their base class and common config fields); ``layers`` (the encoders,
the `Head` and the tensor helpers they are built from).
"""

from .joint import GenerativeImputation, KnowledgeDistillation, NeutralImputation
from .layers import (
    ChannelEncoder,
    EncoderKind,
    Head,
    JointEncoder,
    channel_bits,
    channel_input,
    compact,
    default_kind,
    fuse_probabilities,
    gru_last,
    modality_dim,
    presence_pattern,
    resolve_modalities,
)
from .shared_space import Keyword, LatentFeature, RelativeRepresentation
from .unimodal import Conversation, LateFusion, Session

__all__ = [
    "ChannelEncoder", "Conversation", "EncoderKind", "GenerativeImputation", "Head", "JointEncoder", "Keyword",
    "KnowledgeDistillation", "LateFusion", "LatentFeature", "NeutralImputation", "RelativeRepresentation", "Session",
    "channel_bits", "channel_input", "compact", "default_kind", "fuse_probabilities", "gru_last", "modality_dim",
    "presence_pattern", "resolve_modalities",
]
