"""`ctr`: a binary label per (user, item) event; judged by AUC, gAUC, UAUC and logloss.

Split protocols (both chronological, both with the leakage guard):
- `per_user_time`: for each user with >= 3 samples, the last `test` share of their samples (by time)
  is test, the share before it valid, the rest train. Ties go to the later split: every event at or
  after the user's first test time is test, so no training sample of a user is at or after any of
  that user's test events.
- `global_time`: one cut-off time for everybody (train < valid < test by time): no training event
  of anyone happens at or after any test event's time.
- `column`: the data's own split (an event column holding train / valid / test), e.g. a challenge's
  release. Test labels may then be hidden (null): the test split is predicted, not scored
  (`modalrec predict`), and its metrics are left out.
A sample's history holds only the user's events strictly before the sample's time (`History.cut_before`).

The training period, on which the feature pipeline is fitted (vocabularies, side tables, context codes,
graphs): each user's events strictly before their first validation or test sample (with `global_time`,
before the global cut-off for everybody).

Context features (`task.context_features`): event columns read as categorical features of the sample
itself (MicroLens' likes_level / views_level: the item's popularity level at impression time). Each is
coded per sample once, here (`SampleSet.context`), and reaches the model as `Batch.context[name]` (B,)
long with its vocabulary size in `Schema.context_categorical`. The vocabulary holds the TRAINING samples'
values only: an empty value, or one first seen at validation/test, is code 0 (unknown), so nothing of the
evaluated samples leaks into the model's tables.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TaskConfig
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..eval.metrics import ctr_metrics
from ..pipeline import FeaturePipeline, GraphFeatures, History, PipelineSettings
from ..pipeline.context import fit_context
from .base import EventLog, PreparedTask, SampleSet, channel_mask, fit_pipeline, sample_ids


def assign_splits(users: np.ndarray, times: np.ndarray, n_users: int, method: str, valid: float,
                  test: float) -> np.ndarray:
    """0 = train, 1 = valid, 2 = test per sample; inputs sorted by (user, time)."""
    if method == "global_time":
        t_test = np.quantile(times, 1 - test) if test > 0 else np.inf
        t_valid = np.quantile(times, 1 - test - valid) if valid > 0 else t_test
        return np.where(times >= t_test, 2, np.where(times >= t_valid, 1, 0)).astype(np.int8)
    counts = np.bincount(users, minlength=n_users)
    start = np.zeros(n_users, dtype=np.int64)
    start[1:] = np.cumsum(counts)[:-1]
    eligible = counts >= 3
    n_test = np.where(eligible, np.maximum(np.floor(counts * test + 0.5), 1 if test > 0 else 0), 0).astype(np.int64)
    n_valid = np.where(eligible, np.maximum(np.floor(counts * valid + 0.5), 1 if valid > 0 else 0), 0)
    n_valid = np.minimum(n_valid, counts - n_test - 1).astype(np.int64)
    big = np.iinfo(np.int64).max

    def boundary(k: np.ndarray) -> np.ndarray:
        idx = np.clip(start + counts - k, 0, max(len(times) - 1, 0))
        return np.where((k > 0) & eligible, times[idx], big)

    t_test = boundary(n_test)
    t_valid = np.minimum(boundary(n_test + n_valid), t_test)
    tt, tv = t_test[users], t_valid[users]
    return np.where(times >= tt, 2, np.where(times >= tv, 1, 0)).astype(np.int8)


class CTRTask(PreparedTask):
    kind = "ctr"
    monitor = "auc"
    split_methods = ("per_user_time", "global_time", "column")

    def __init__(self, data: InteractionData, cfg: TaskConfig):
        self.cfg = cfg
        self.check_split(cfg)
        self.test_labels_hidden = False
        log = EventLog.of(data)
        is_sample = channel_mask(log.channels, cfg.sample_channels)
        is_hist = channel_mask(log.channels, cfg.history_channels or cfg.sample_channels)
        if not is_sample.any():
            raise DataError(Problem("events", None, "channel", f"events in channels {cfg.sample_channels}",
                                    "none"))
        if cfg.label_column not in log.table.column_names:
            raise DataError(Problem("events", None, cfg.label_column, "a label column for the ctr task",
                                    f"columns {log.table.column_names}"))
        raw = log.table[cfg.label_column].to_numpy(zero_copy_only=False).astype(np.float64)[is_sample]
        given = None
        if cfg.split.method == "column":
            given = self._column_split(log, is_sample, cfg.split.column)
            hidden = np.isnan(raw) & (given == 2)  # a challenge's hidden test labels
            raw = np.where(hidden, 0.0, raw)
            self.test_labels_hidden = bool(hidden.any())
            if self.test_labels_hidden and not hidden[given == 2].all():
                raise DataError(Problem("events", None, cfg.label_column, "labels on every test sample or on none",
                                        f"{int(hidden.sum())} of {int((given == 2).sum())} test labels empty"))
        if np.isnan(raw).any():
            r = int(np.flatnonzero(np.isnan(raw))[0])
            raise DataError(Problem("events", None, cfg.label_column, "a label on every sample event",
                                    f"{int(np.isnan(raw).sum())} empty, e.g. sample {r + 1}"))
        hist_ch = cfg.history_channels or cfg.sample_channels or list(data.spec.channels)
        settings = PipelineSettings(
            task="ctr", max_history=cfg.max_history, sample_channels=cfg.sample_channels,
            history_channels=cfg.history_channels, history_positive_only=cfg.history_positive_only,
            history_tags={ch: code for code, ch in enumerate(hist_ch, start=1)} if cfg.history_channel_tags else {},
            label_column=cfg.label_column, label_threshold=cfg.label_threshold, with_time=True,
            token_scope=cfg.token_scope, context_features=list(cfg.context_features))
        labels = FeaturePipeline.label_rule(raw, cfg.label_threshold)
        if cfg.label_threshold is None and not np.isin(labels, (0.0, 1.0)).all():
            raise DataError(Problem("events", None, cfg.label_column, "0/1 labels (or set task.label_threshold)",
                                    f"values such as {sorted(set(labels.tolist()))[:5]}"))
        n_log_users = len(log.user_vocab)
        users, times = log.users[is_sample], log.times[is_sample]
        if given is not None:
            split = given
        else:
            split = assign_splits(users, times, n_log_users, cfg.split.method, cfg.split.valid, cfg.split.test)
        # the training period: each user's events strictly before their first validation or test sample (and,
        # for one global cut-off, before it for everybody): what the vocabularies and side tables are fitted on
        later = split > 0
        train_end = np.full(n_log_users, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(train_end, users[later], times[later])
        if cfg.split.method == "global_time" and later.any():
            train_end = np.minimum(train_end, times[later].min())
        pipeline, user_map, item_map = fit_pipeline(data, cfg, log, log.times < train_end[log.users], settings)
        self.pipeline, self.user_rows = pipeline, user_map
        self.log_users = log.user_vocab
        item_rows = item_map[log.items]
        if cfg.history_positive_only:  # past labels are known at prediction time: keep positives only
            every = log.table[cfg.label_column].to_numpy(zero_copy_only=False).astype(np.float64)
            positive = (every >= cfg.label_threshold) if cfg.label_threshold is not None else (every > 0)
            is_hist = is_hist & np.nan_to_num(positive, nan=0).astype(bool)
        is_hist &= item_rows > 0  # events of items the vocabulary does not hold are left out, as online
        self.history = History.build(log.users[is_hist], item_rows[is_hist], log.times[is_hist], n_log_users,
                                     pipeline.tag_codes(log.channels[is_hist]))
        cut = self.history.cut_before(users, times)
        sample_rows = np.flatnonzero(is_sample)
        context, pipeline.context = fit_context(log.table, cfg.context_features, sample_rows, split == 0)
        full = SampleSet(users, item_rows[is_sample], times, cut, labels, context=context)
        self.splits = {name: full.take(np.flatnonzero(split == code))
                       for code, name in enumerate(("train", "valid", "test"))}
        rows_of = {name: sample_rows[split == code] for code, name in enumerate(("train", "valid", "test"))}
        if cfg.train_recent is not None and len(self.splits["train"]):
            # the ranker learns from the last share of the period; history, graphs and the split stay as they are
            tr = self.splits["train"]
            keep = np.flatnonzero(tr.times >= np.quantile(tr.times, 1.0 - cfg.train_recent, method="higher"))
            self.splits["train"] = tr.take(keep)
            rows_of["train"] = rows_of["train"][keep]
        self.sample_ids = {name: sample_ids(log, rows) for name, rows in rows_of.items()}
        # in memory only (a task restored from a run directory has neither): each split's samples as rows of the
        # sorted event table, for scripts that read other event columns next to them (a simulator's truth)
        self.events, self.split_rows = log.table, rows_of
        tr = self.splits["train"]
        n_items = len(pipeline.items)
        counts = np.bincount(tr.items, minlength=n_items).astype(np.float64)
        pos = np.bincount(tr.items, weights=tr.labels, minlength=n_items)
        prior = float(tr.labels.mean()) if len(tr) else 0.5
        pipeline.stats = {"item_counts": counts, "item_positive_rate": (pos + 20 * prior) / (counts + 20),
                          "user_counts": np.bincount(user_map[tr.users], minlength=len(pipeline.users)).astype(np.float64)}
        pipeline.count_codes(tr.items)
        pipeline.fit_prior(tr.items)
        if cfg.graph.enabled:
            self._fit_graph(log, item_rows, cfg)
        self.restore({"test_labels_hidden": self.test_labels_hidden}, {})

    def _fit_graph(self, log: EventLog, item_rows: np.ndarray, cfg: TaskConfig) -> None:
        """GIE over the training period's gifts: everything strictly before the first valid/test sample."""
        g = cfg.graph
        p = self.pipeline
        if g.streamer_feature not in p.item_table.categorical:
            raise DataError(Problem("items", None, g.streamer_feature, "an item categorical feature naming the "
                                    "streamer (task.graph.streamer_feature)",
                                    f"features {sorted(p.item_table.categorical)}"))
        later = [s.times.min() for name, s in self.splits.items() if name != "train" and len(s)]
        cutoff = min(later) if later else np.iinfo(np.int64).max
        is_gift = (log.channels == g.channel) & (log.times < cutoff)
        if not is_gift.any():
            raise DataError(Problem("events", None, "channel", f"'{g.channel}' events before the first "
                                    "validation/test sample (task.graph.channel)", "none"))
        weights = None
        if g.weight_column is not None:
            if g.weight_column not in log.table.column_names:
                raise DataError(Problem("events", None, g.weight_column, "the edge weight column "
                                        "(task.graph.weight_column)", f"columns {log.table.column_names}"))
            weights = np.nan_to_num(log.table[g.weight_column].to_numpy(zero_copy_only=False)
                                    .astype(np.float64)[is_gift])
        group = p.item_table.categorical[g.streamer_feature]
        p.graph = GraphFeatures.fit(self.user_rows[log.users[is_gift]], group[item_rows[is_gift]], log.times[is_gift],
                                    weights, len(p.users), p.item_sizes.categorical[g.streamer_feature], g,
                                    int(cutoff) if later else None, self.splits["train"].times)

    events = split_rows = None

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        super().restore(meta, arrays)
        self.test_labels_hidden = bool(meta.get("test_labels_hidden", False))
        g = self.pipeline.graph
        self.group_code = None if g is None else self.pipeline.item_table.categorical[g.group_feature]

    def meta(self) -> dict:
        return {"test_labels_hidden": self.test_labels_hidden}

    def collate(self, s, train: bool, seed: int = 0, epoch: int = 0):
        graph = None
        if self.pipeline.graph is not None and self.collator.wants("graph"):
            # as of each sample's time: a training sample never reads an expansion built from its own gift
            # (with task.graph.refresh, from the graph refreshed before the sample's window)
            graph = self.pipeline.graph.inputs(self.user_rows[s.users], self.group_code[s.items], s.times, train)
        return self.collator(s.users, s.items, s.cut, s.times, s.labels, context=s.context, graph=graph)

    test_labels_hidden: bool = False

    @staticmethod
    def _column_split(log: EventLog, is_sample: np.ndarray, column: str) -> np.ndarray:
        """0/1/2 per sample from the event column `column` (train / valid / test)."""
        if column not in log.table.column_names:
            raise DataError(Problem("events", None, column, "a split column (train / valid / test) for "
                                    "task.split.method 'column'", f"columns {log.table.column_names}"))
        values = np.asarray(log.table[column].to_numpy(zero_copy_only=False), dtype=object)[is_sample]
        codes = np.full(len(values), -1, np.int8)
        for code, name in enumerate(("train", "valid", "test")):
            codes[values == name] = code
        if (codes < 0).any():
            r = int(np.flatnonzero(codes < 0)[0])
            raise DataError(Problem("events", None, column, "train, valid or test",
                                    f"{values[r]!r} on sample {r + 1}"))
        return codes

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.float(), batch.label)

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, split: str, batch_size: int, device="cpu") -> np.ndarray:
        """Logits of a split's samples; a target the model knows nothing about gets the user's prior (as served:
        the mean probability of the same sample with each of the pipeline's probe items as its target)."""
        model.eval()
        outs = [model(b.to(device)).float().cpu() for b in self.batches(split, batch_size)]
        logits = torch.cat(outs).numpy().astype(np.float64) if outs else np.zeros(0)
        s = self.splits[split]
        blank = np.flatnonzero(self.pipeline.uninformed(s.items))
        probes = self.pipeline.prior_items()
        if len(blank) and len(probes):
            part = s.take(np.repeat(blank, len(probes)))
            part.items = np.tile(probes, len(blank))
            per = max(1, batch_size // len(probes)) * len(probes)
            out = [model(self.collate(part.take(np.arange(lo, min(lo + per, len(part)))), train=False).to(device))
                   .float().cpu() for lo in range(0, len(part), per)]
            logits[blank] = self.pipeline.prior_of(torch.cat(out).numpy().reshape(len(blank), len(probes)))
        return logits

    def evaluate(self, model: torch.nn.Module, split: str, batch_size: int, device="cpu") -> tuple[dict, dict]:
        if split == "test" and self.test_labels_hidden:
            return {}, {}  # hidden labels (a challenge's test set): predicted, never scored
        s = self.splits[split]
        logits = self.predict(model, split, batch_size, device)
        return ctr_metrics(s.labels, logits, s.users), {}
