"""Typed run configuration (pydantic models of the YAML files).

Each section belongs to the concept that reads it: `data` to the dataset source, `task` to the
task (split protocol, history length, label), `model` to the model table, `train` to the Trainer.
Configs are data: no eval() of strings, no global dict. `--set a.b=value` overrides are applied to
the raw mapping before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .data.errors import DataError, Problem
from .encoders.content import ContentEncodingConfig
from .graph.gie import GIEConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    source: str = Field("demo", description="registered dataset name, a saved InteractionData dir or an import YAML")
    path: str | None = Field(None, description="where the source reads its raw files")
    params: dict[str, Any] = Field(default_factory=dict)
    encode: ContentEncodingConfig | None = Field(
        None, description="frozen content encoders run on the raw modalities after loading (image -> EfficientNet-"
        "Lite0, audio -> ASR text vectors + MFCC statistics, text -> MiniLM), cached by content")
    engine: Literal["local", "ray"] = Field(
        "local", description="how a partitioned dataset's preparation runs its per-partition steps: 'local' (this "
        "process, one partition at a time) or 'ray' (Ray tasks; pip install 'modalrec[cluster]')")
    engine_address: str | None = Field(
        None, description="engine 'ray': the cluster ('auto': the one this machine belongs to, started with `ray "
        "start`; 'ray://<head>:10001': through Ray Client); None: a Ray started for the run on this machine")
    engine_workers: int | None = Field(
        None, ge=1, description="engine 'ray' without an address: the CPUs of the Ray started here (None: all)")

    @model_validator(mode="before")
    @classmethod
    def _path_needs_source(cls, raw):
        if isinstance(raw, dict) and raw.get("path") is not None and "source" not in raw:
            raise ValueError("data.source next to data.path (the dataset the path holds: a registered name such as "
                             "movielens, a saved InteractionData folder or an import YAML); without a source the "
                             "built-in demo world is generated and the path is ignored")
        return raw


SPLIT_METHODS = {"ctr": ("per_user_time", "global_time", "column"), "topk": ("leave_last_out",),
                 "multilabel": ("chronological",)}


class SplitConfig(_Strict):
    method: Literal["per_user_time", "global_time", "leave_last_out", "column", "chronological"] | None = Field(
        None, description="the split protocol; None: the task's own (ctr: per_user_time, topk: leave_last_out, "
        "multilabel: chronological). A task refuses a protocol it does not implement")
    column: str = Field("split", description="method 'column': the event column naming each sample's split "
                        "(train / valid / test), e.g. a challenge's own release split")
    valid: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)


class GraphTaskConfig(_Strict):
    """ctr: graph-guided interest expansion (MMBee's GIE). Built from the TRAINING period's gift events
    (events of `channel` strictly before the first validation or test sample), so no evaluated gift is
    in the graph; the expansions and GraphCL embeddings reach the model as `Batch.graph` (GraphInputs) and
    `schema.graph_init`."""

    enabled: bool = False
    channel: str = Field("gift", description="the channel whose events are the user->streamer edges")
    streamer_feature: str = Field("streamer_id", description="item categorical feature naming the streamer")
    weight_column: str | None = Field(None, description="event column summed as edge weight with "
                                      "gie.weight_mode 'value' (e.g. price); None: every gift counts 1")
    refresh: int = Field(
        1, ge=1, description="training samples read graphs refreshed this many times over the training period, "
        "as a production graph rebuilt daily: the samples are cut by time into this many equal windows, and a "
        "sample reads the Swing A2A graph and the A->U->A expansion fitted on the gifts before its window "
        "(the first window: no graph), with the user's own U->A->A as of the sample's time. 1: every training "
        "sample reads the graph of the whole training period, which holds the sample's own gift. Validation, "
        "test and serving always read the graph of the whole training period")
    gie: GIEConfig = Field(default_factory=GIEConfig)


class EventTextConfig(_Strict):
    """An item text modality built from events of the TRAINING period: the texts of `column` on the item's
    events of `channel` (e.g. the tags users wrote on a movie), first occurrences in time order, joined; read as
    a bag of words `<modality>_words`. Content written after a user's training period never reaches the model."""

    modality: str = Field(..., description="name of the text modality to build (its words: <modality>_words)")
    channel: str = Field(..., description="the events whose column holds the text, e.g. tag")
    column: str = Field(..., description="the event column holding the text, e.g. tag")


class LabelFromConfig(_Strict):
    """ctr: delayed labels joined from a later event (a gift minutes after the watch starts). A sample's label is 1
    when the same user has an event of `channel` matching it (`match`) within (sample time, sample time +
    `window_s`], else 0; `task.label_column` is then not read. A sample whose window is still open at `end` (the
    time up to which the events are known) is handled by `open_window`."""

    channel: str = Field(..., description="the channel of the label events, e.g. gift")
    window_s: int = Field(..., gt=0, description="seconds after the sample's time within which an event of "
                          "`channel` labels it 1 (the window is (t, t + window_s])")
    match: str = Field("item", description="what the label event must share with the sample besides the user: "
                       "'item' (the same item), or an item feature (a column of the items table, e.g. room_id or "
                       "streamer_id) when the label event names the room or streamer rather than the segment")
    open_window: Literal["drop", "negative"] = Field(
        "drop", description="a sample whose window is still open at `end` (t + window_s > end): 'drop' keeps it "
        "out of training and evaluation (it is held as the split 'open', counted in metrics.json's samples, "
        "predictable with `modalrec predict --split open`, never scored); 'negative' labels it with what "
        "arrived by `end` (1 if the event already came, else 0), as a trainer that cannot wait would")
    end: int | None = Field(None, description="the time (unix seconds) up to which the events are known, e.g. a "
                            "refresh's cut-off (label events after it are not read); None: the latest event "
                            "time of the data")


class LiveConfig(_Strict):
    """topk: the live-candidate rule (KuaiLive's evaluation, the service's live-only candidates): an item (a live
    room) is a candidate for a sample at time t when start <= t < end, the columns named here of the items table
    (numbers in the unit of the event times, unix seconds); an item without both is never live."""

    start: str = Field("start_time", description="items table column: when the room went live")
    end: str = Field("end_time", description="items table column: when it stopped (exclusive)")


class TaskConfig(_Strict):
    kind: Literal["ctr", "topk", "multilabel"] = "ctr"
    label_column: str = Field("label", description="event column holding the label or the value to threshold")
    label_threshold: float | None = Field(None, description="label = column >= threshold (e.g. rating >= 4)")
    label_from: LabelFromConfig | None = Field(
        None, description="ctr: delayed labels, joined from later events of a channel within a window (e.g. a gift "
        "after the watch) instead of read from label_column: see LabelFromConfig")
    sample_channels: list[str] | None = Field(None, description="channels whose events are samples (None: all)")
    history_channels: list[str] | None = Field(None, description="channels that form the history (None: samples')")
    max_history: int = Field(50, ge=1)
    history_positive_only: bool = Field(
        False, description="ctr: the history holds only the user's positive events (e.g. ratings >= 4)")
    history_channel_tags: bool = Field(
        False, description="ctr: tag each history event with its channel (an action tag: watch, gift, like...), "
        "learned as an embedding added to the event's item vector, so a gift in the history reads differently from "
        "a watch of the same item; needs the models that encode items with the shared item encoder")
    split: SplitConfig = Field(default_factory=SplitConfig)
    text_modalities: list[str] | None = Field(
        None, description="item text modalities turned into bag-of-words features (None: all text modalities)")
    max_words: int = Field(16, ge=1, description="words kept per item text")
    event_text: list[EventTextConfig] = Field(
        default_factory=list, description="item text modalities built from the training period's events (e.g. "
        "MovieLens tags): see EventTextConfig")
    vector_modalities: list[str] | None = Field(None, description="item vector modalities joined as dense content")
    token_modalities: list[str] | None = Field(
        None, description="multi-valued item vector modalities joined as padded token tables, one token per value "
        "(None: all of them); a multi-valued one left out is joined as dense content (the mean of its vectors)")
    max_tokens: int = Field(8, ge=1, description="tokens kept per item and token modality (the first ones); a "
                            "token table is as wide as its longest list, up to this")
    token_scope: Literal["all", "target"] = Field(
        "all", description="token tables joined for every distinct item of a batch (all) or for the targets only "
        "(target: for models that fuse only the watched item's content, e.g. mmbee with mfq_scope target)")
    graph: GraphTaskConfig = Field(default_factory=GraphTaskConfig)
    user_features: bool = Field(
        True, description="join the users table's features and user content modalities (Batch.user_side): the "
        "ctr rankers read them next to the user id; False: the user is their id and behaviour only")
    context_features: list[str] = Field(
        default_factory=list, description="ctr: event columns read as categorical features of the SAMPLE (not of "
        "the item or the history), e.g. MicroLens' likes_level / views_level (an item's popularity level at "
        "impression time). Strings or integers; the vocabulary comes from the training samples only: an empty "
        "value or one first seen at validation/test is code 0 (unknown)")
    train_recent: float | None = Field(
        None, gt=0.0, le=1.0, description="ctr: train on the most recent share of the training period's samples "
        "only (by time; e.g. 0.3 = the last 30%), while histories, item statistics from the history and the "
        "GIE graphs still read the whole period: a production ranker retrained on recent days whose features "
        "come from a longer window. None = every training sample")
    ks: list[int] = Field(default_factory=lambda: [1, 3, 5, 10, 20])
    train_negatives: int = Field(
        0, ge=0, description="topk: 0 = full softmax over every item; N = N uniformly sampled negatives per batch")
    min_user_events: int = Field(3, ge=1, description="topk: users with fewer events are train-only")
    exclude_seen: bool = Field(
        True, description="topk: the items of the user's visible history are not ranked (the usual next-item "
        "protocol); False keeps them (repeat consumption, as RecBole's sequential protocol and live streaming, "
        "where fans return to the rooms they watched)")
    live: LiveConfig | None = Field(
        None, description="topk: evaluation ranks only the items live at the sample's time (start <= t < end, "
        "columns of the items table); the held-out item is always ranked. With exclude_seen false: KuaiLive's "
        "protocol. None: every item is a candidate")

    @model_validator(mode="after")
    def _check_context_features(self) -> TaskConfig:
        methods = SPLIT_METHODS[self.kind]
        if self.split.method is None:
            self.split.method = methods[0]
        elif self.split.method not in methods:
            raise ValueError(f"split.method of the {self.kind} task: {' or '.join(methods)}; found "
                             f"'{self.split.method}'")
        names = self.context_features
        if names and self.kind != "ctr":
            raise ValueError(f"context_features {names}: only the ctr task reads per-sample context features, "
                             f"not '{self.kind}'")
        if self.train_recent is not None and self.kind != "ctr":
            raise ValueError(f"train_recent {self.train_recent}: only the ctr task reads it, not '{self.kind}'")
        if self.label_from is not None:
            if self.kind != "ctr":
                raise ValueError(f"label_from: only the ctr task joins delayed labels, not '{self.kind}'")
            if self.label_threshold is not None:
                raise ValueError("label_threshold with label_from: the joined label is already 0/1 (label_column "
                                 "is not read)")
            if self.history_positive_only:
                raise ValueError("history_positive_only with label_from: a past sample's joined label is known only "
                                 "once its window closes, possibly after the sample that reads it; put the label "
                                 f"channel '{self.label_from.channel}' in history_channels instead (its events join "
                                 "the history at their own times)")
        if self.live is not None and self.kind != "topk":
            raise ValueError(f"live: only the topk task ranks live candidates, not '{self.kind}'")
        if self.history_channel_tags and self.kind != "ctr":
            raise ValueError(f"history_channel_tags: only the ctr task tags its history, not '{self.kind}'")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"context_features lists {dup} more than once")
        for n in names:
            if not n or "." in n:
                raise ValueError(f"context_features: {n!r} is not usable as a feature name (empty or with '.')")
            if n == self.label_column:
                raise ValueError(f"context_features: '{n}' is the label column (task.label_column); "
                                 "a feature must not be the label")
        return self


class InitConfig(_Strict):
    """How parameters are initialised before training. `model` keeps each model's own choice;
    `xavier_normal` is FuxiCTR's scheme (Xavier-normal Linear weights, zero biases) so that a comparison with
    FuxiCTR differs in the code, not in the starting point. `embedding_std` re-draws every embedding table
    from N(0, std) (FuxiCTR: 1e-4), keeping padding rows at zero."""

    scheme: Literal["model", "xavier_normal"] = "model"
    embedding_std: float | None = Field(None, gt=0)


class ModelSection(_Strict):
    name: str = "din"
    params: dict[str, Any] = Field(default_factory=dict)
    init: InitConfig = Field(default_factory=InitConfig)


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(1024, ge=1)
    eval_batch_size: int = Field(4096, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    patience: int = Field(3, ge=1, description="early stopping: epochs without improvement of `monitor`")
    monitor: str | None = Field(None, description="validation metric for early stopping (task default if None)")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="LR multiplied by this on plateau")
    lr_patience: int = Field(1, ge=0)
    clip_norm: float | None = Field(10.0, description="gradient norm clipping (None: off)")
    num_threads: int | None = None
    device: str = "auto"
    amp: bool = Field(False, description="mixed precision (bf16) on GPU")
    progress: bool = True
    checkpoint_every: int = Field(0, ge=0, description="global steps between mid-epoch `last` checkpoints "
                                  "(0: at the end of each epoch only); --resume continues from the step")


class RunConfig(_Strict):
    name: str = "run"
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seeds: list[int] = Field(default_factory=lambda: [0])


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` -> raw["a"]["b"]["c"] = yaml.safe_load(value)."""
    for item in overrides:
        if "=" not in item:
            raise DataError(Problem("--set", None, item, "key=value", repr(item)))
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise DataError(Problem("--set", None, key, f"'{p}' to be a section", type(node).__name__))
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    raw: dict = dict(base or {})
    origin = "config"
    if path is not None:
        origin = str(path)
        p = Path(path)
        if not p.is_file():
            raise DataError(Problem(origin, None, None, "a YAML config file",
                                    "a directory" if p.is_dir() else "no such file"))
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise DataError(Problem(origin, None, None, "valid YAML",
                                    f"{where}{getattr(e, 'problem', None) or str(e).splitlines()[0]}")) from None
        if loaded is None:  # not "every default": that trains on the built-in demo world, which nobody meant
            raise DataError(Problem(origin, None, None, "a YAML mapping (name, data, task, model, train, seeds)",
                                    "an empty file"))
        if not isinstance(loaded, dict):
            raise DataError(Problem(origin, None, None, "a YAML mapping", type(loaded).__name__))
        raw.update(loaded)
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"])
            key = f"key '{where}': " if where else ""
            if err["type"] == "value_error":  # our own validators: the message says what and why
                problems.append(Problem(origin, None, None, key + err["msg"].removeprefix("Value error, ")))
            elif err["type"] == "extra_forbidden":  # a typo: name the keys that section knows
                known = _known_keys(err["loc"][:-1])
                section = ".".join(str(x) for x in err["loc"][:-1] if not isinstance(x, int)) or "the config"
                problems.append(Problem(origin, None, None, f"only the keys of {section}"
                                        + (f" ({', '.join(known)})" if known else ""), f"unknown key '{where}'"))
            else:
                msg = err["msg"]
                problems.append(Problem(origin, None, None, key + msg[:1].lower() + msg[1:],
                                        repr(err.get("input"))[:80]))
        raise DataError(problems) from None


def _known_keys(loc: tuple) -> list[str]:
    """The keys the config section at `loc` (a pydantic error location) accepts; [] when it is not a section."""
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
        args = [a for a in getattr(model, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = args[0] if args else model  # X | None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return list(model.model_fields)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
