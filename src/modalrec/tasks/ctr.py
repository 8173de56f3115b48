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

Delayed labels (`task.label_from`, e.g. a gift minutes after the watch): a sample's label is 1 when the same user
has an event of the label channel matching it (same item, or same room / streamer) within (t, t + window_s], else
0, joined per partition (`ctr_steps.join_labels`). A window still open at the end of the events (the latest event
time, or `label_from.end`) is not a sample (`open_window: drop`, the default: held as the split `open`, counted in
metrics.json's samples, never trained on or scored) or is labelled with what arrived (`negative`). The joined event
is never in its own sample's history (histories are strictly before the sample's time), only in later samples'.

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

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TaskConfig
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..eval.metrics import ctr_metrics
from ..pipeline import GraphFeatures, PipelineSettings, Vocab
from .base import PreparedTask, event_texts, fit_pipeline
from .ctr_steps import (
    OPEN,
    BuildTotals,
    build,
    ctr_log,
    events_end,
    label_join,
    reduce_scans,
    sample_times,
    scan,
    task_splits,
)
from .store import ShardSink


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


def global_cutoffs(times: np.ndarray, valid: float, test: float) -> tuple[float, float]:
    """`global_time`: (valid cut-off, test cut-off) over every sample time (a sample at or after a cut-off is in
    its split)."""
    t_test = np.quantile(times, 1 - test) if test > 0 and len(times) else np.inf
    t_valid = np.quantile(times, 1 - test - valid) if valid > 0 and len(times) else t_test
    return float(t_valid), float(t_test)


class CTRTask(PreparedTask):
    kind = "ctr"
    monitor = "auc"
    split_methods = ("per_user_time", "global_time", "column")

    def __init__(self, data: InteractionData, cfg: TaskConfig, out=None, engine=None):
        """`data`: an InteractionData (one partition) or a PartitionedData (read one partition at a time);
        `out`: the folder for the prepared arrays (RUN/data: memory-mapped there; None: in memory); `engine`: how
        the per-partition steps are mapped (`tasks.engine`; None: in this process)."""
        from .engine import local_engine

        self.cfg = cfg
        self.check_split(cfg)
        n = data.n_partitions
        one = n == 1 and out is None  # small data: one partition, kept in memory, read once
        # (in this process whatever the engine: its cached events are read again after the steps)
        engine = local_engine() if engine is None or one else engine
        loaders = [lambda: data.partition(0)] if n == 1 else data.loaders()
        cache: dict = {}
        # delayed labels: the end of the events (one time for every partition) and the match keys
        times_of = [lambda: data.partition(0, ["time"])] if n == 1 else data.loaders(["time"])
        join = label_join(cfg, data.items, lambda: engine.map(lambda i: events_end(times_of[i]()), range(n)))

        def load(i: int):
            if one and i in cache:
                return cache[i]
            log = ctr_log(loaders[i](), cfg, join)
            if one:
                cache[i] = log
            return log

        cutoffs = None
        if cfg.split.method == "global_time":  # one cut-off for everybody: every partition's sample times first
            times = np.concatenate(engine.map(lambda i: sample_times(load(i), cfg), range(n)))
            cutoffs = global_cutoffs(times, cfg.split.valid, cfg.split.test)
        scans = engine.map(lambda i: scan(load(i), cfg, cutoffs), range(n))
        hist_ch = cfg.history_channels or cfg.sample_channels or list(data.spec.channels)
        settings = PipelineSettings(
            task="ctr", max_history=cfg.max_history, sample_channels=cfg.sample_channels,
            history_channels=cfg.history_channels, history_positive_only=cfg.history_positive_only,
            history_tags={ch: code for code, ch in enumerate(hist_ch, start=1)} if cfg.history_channel_tags else {},
            label_column=cfg.label_column, label_threshold=cfg.label_threshold, with_time=True,
            token_scope=cfg.token_scope, context_features=list(cfg.context_features))
        reduced = reduce_scans(scans)
        self.test_labels_hidden = reduced["hidden"]
        self.label_summary = None if join is None else {
            **cfg.label_from.model_dump(mode="json"), "end": join.end, **reduced["labels"]}
        pipeline = fit_pipeline(data, cfg, reduced["users"], reduced["items"], settings,
                                event_texts(reduced["texts"], cfg))
        pipeline.context = {name: Vocab(v) for name, v in reduced["context"].items()}
        recent = None
        if cfg.train_recent is not None and len(reduced["train_times"]):
            recent = float(np.quantile(reduced["train_times"], 1.0 - cfg.train_recent, method="higher"))
        sink = ShardSink(None if out is None else Path(out), splits=task_splits(cfg))
        self.data_dir = None if out is None else Path(out)
        built = []  # each partition's statistics; its arrays go to the sink as they come (one partition in memory)
        totals = BuildTotals(len(pipeline.items), len(pipeline.users))  # the per-item counts, summed as they come
        for part, stats in engine.imap(lambda i: build(load(i), pipeline, cfg, cutoffs, recent), range(n)):
            sink.add(part)
            if not one:
                stats.pop("rows")
            totals.add(stats)
            built.append((None, stats))
            del part
        self.history, self.splits, self.log_users, self.sample_ids = sink.finish()
        self.shards = sink.bounds
        self.user_rows = np.r_[0, pipeline.users.lookup(self.log_users.array)].astype(np.int64)
        self.pipeline = pipeline
        stats = totals.result()
        prior = stats.pop("prior")
        pipeline.stats = stats
        pipeline.count_codes_from(stats["item_counts"])
        pipeline.fit_prior_from(stats["item_counts"])
        if one:  # in memory only: each split's samples as rows of the sorted event table (for scripts)
            log = cache[0]
            self.events, self.split_rows = log.log.table, built[0][1]["rows"]
        if cfg.graph.enabled:
            times = np.concatenate([b.pop("train_times") for _, b in built]) if built else np.zeros(0)
            times.sort()  # in place: 100M training times at 146M interactions are 0.8 GB
            self._fit_graph(times, [b["edges"] for _, b in built], reduced["later_min"])
        del prior
        self.restore(self.meta(), {})

    def _fit_graph(self, train_times: np.ndarray, edges: list, later_min) -> None:
        """GIE over the training period's edges: every gift strictly before the first valid/test sample."""
        g = self.cfg.graph
        p = self.pipeline
        if g.streamer_feature not in p.item_table.categorical:
            raise DataError(Problem("items", None, g.streamer_feature, "an item categorical feature naming the "
                                    "streamer (task.graph.streamer_feature)",
                                    f"features {sorted(p.item_table.categorical)}"))
        users, items, times, weights = (np.concatenate([e[k] for e in edges]) for k in range(4))
        keep = times < (later_min if later_min is not None else np.iinfo(np.int64).max)
        if not keep.any():
            raise DataError(Problem("events", None, "channel", f"'{g.channel}' events before the first "
                                    "validation/test sample (task.graph.channel)", "none"))
        group = p.item_table.categorical[g.streamer_feature]
        # a canonical order (user, streamer, time): the graph does not depend on how the events were partitioned
        u, a, t, w = users[keep], group[items[keep]], times[keep], weights[keep]
        order = np.lexsort((t, a, u))
        p.graph = GraphFeatures.fit(u[order], a[order], t[order], None if g.weight_column is None else w[order],
                                    len(p.users), p.item_sizes.categorical[g.streamer_feature], g,
                                    int(later_min) if later_min is not None else None, _sorted(train_times))

    events = split_rows = None

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        super().restore(meta, arrays)
        self.test_labels_hidden = bool(meta.get("test_labels_hidden", False))
        self.label_summary = meta.get("labels")
        g = self.pipeline.graph
        self.group_code = None if g is None else self.pipeline.item_table.categorical[g.group_feature]

    def meta(self) -> dict:
        out = {"test_labels_hidden": self.test_labels_hidden}
        if self.label_summary is not None:  # label_from: the join and how many samples it labelled / left open
            out["labels"] = self.label_summary
        return out

    label_summary: dict | None = None

    def collate(self, s, train: bool, seed: int = 0, epoch: int = 0):
        graph = None
        if self.pipeline.graph is not None and self.collator.wants("graph"):
            # as of each sample's time: a training sample never reads an expansion built from its own gift
            # (with task.graph.refresh, from the graph refreshed before the sample's window)
            graph = self.pipeline.graph.inputs(self.user_rows[s.users], self.group_code[s.items], s.times, train)
        return self.collator(s.users, s.items, s.cut, s.times, s.labels, context=s.context, graph=graph)

    test_labels_hidden: bool = False

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
        if (split == "test" and self.test_labels_hidden) or split == OPEN:
            return {}, {}  # hidden labels (a challenge's test set) or windows still open: predicted, never scored
        s = self.splits[split]
        logits = self.predict(model, split, batch_size, device)
        return ctr_metrics(s.labels, logits, s.users), {}


def _sorted(times: np.ndarray) -> np.ndarray:
    """`times` itself when already in order (the callers sort their fresh arrays in place), else a sorted copy."""
    return times if len(times) < 2 or bool((times[1:] >= times[:-1]).all()) else np.sort(times)
