"""The ctr task's per-partition steps: scan (what the pipeline is fitted on) and build (histories and samples).

Both are pure functions of one partition of users (and, for build, the fitted pipeline): the embedded engine maps
them over the partitions in this process, a distributed one on its workers (`tasks.engine`). Their outputs are
small (sets of ids, counts) or written as shards (`tasks.store.ShardSink`).

Delayed labels (`task.label_from`) are joined here too, per partition (a user's events are all in one): a sample's
label is 1 when the user has an event of the label channel matching it within (t, t + window_s]. The time up to
which the events are known (`LabelJoin.end`) is one number for the whole data, so every partition decides alike
which windows are still open; an open sample is dropped before the split (kept as the split `open`, never trained
on or scored) or labelled with what arrived (`open_window: negative`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import TaskConfig
from ..data.errors import DataError, Problem
from ..pipeline import FeaturePipeline, History
from ..pipeline.context import context_strings
from .base import EventLog, SampleSet, channel_mask, event_times, sample_ids
from .store import Partial

SPLITS = ("train", "valid", "test")
OPEN = "open"  # label_from with open_window drop: the samples whose window was still open (never trained or scored)


def task_splits(cfg: TaskConfig) -> tuple[str, ...]:
    lf = cfg.label_from
    return SPLITS + (OPEN,) if lf is not None and lf.open_window == "drop" else SPLITS


@dataclass
class LabelJoin:
    """What every partition's delayed-label join shares: the time up to which events are known and, for `match`
    on an item feature, the items table's (item_id, feature) columns."""

    end: int
    keys: pa.Table | None


def events_end(table: pa.Table) -> int:
    """The latest event time of one partition (the data's end is the latest over partitions)."""
    return int(event_times(table).max()) if table.num_rows else np.iinfo(np.int64).min


def label_join(cfg: TaskConfig, items: pa.Table | None, ends) -> LabelJoin | None:
    """The join's shared part; `ends`: a callable giving each partition's latest event time (read only when
    `label_from.end` is not set)."""
    lf = cfg.label_from
    if lf is None:
        return None
    keys = None
    if lf.match != "item":
        if items is None or lf.match not in items.column_names:
            raise DataError(Problem("items", None, lf.match, "an items table column naming what a label event "
                                    "must share with its sample (task.label_from.match; or 'item')",
                                    f"columns {[] if items is None else items.column_names}"))
        keys = pa.table({"item_id": items["item_id"].cast(pa.string()),
                         "key": items[lf.match].cast(pa.string())})
    end = lf.end if lf.end is not None else max(ends())
    return LabelJoin(int(end), keys)


@dataclass
class CtrLog:
    """One partition's events as the ctr task reads them."""

    log: EventLog
    is_sample: np.ndarray
    is_hist: np.ndarray
    raw: np.ndarray  # the label column of the samples (float, NaN where empty)
    given: np.ndarray | None  # the data's own split (method column), 0/1/2 per sample
    # label_from: the rows of the samples whose window was open at the end and their labels so far (dropped:
    # split `open`; with open_window negative they stay samples and only their number is kept)
    open_rows: np.ndarray | None = None
    open_labels: np.ndarray | None = None
    n_open: int = 0
    n_positive: int = 0


def ctr_log(table: pa.Table, cfg: TaskConfig, join: LabelJoin | None = None) -> CtrLog:
    log = EventLog.of_table(table)
    is_sample = channel_mask(log.channels, cfg.sample_channels)
    is_hist = channel_mask(log.channels, cfg.history_channels or cfg.sample_channels)
    if not is_sample.any():
        raise DataError(Problem("events", None, "channel", f"events in channels {cfg.sample_channels}", "none"))
    if cfg.label_from is not None:
        return _joined_log(log, is_sample, is_hist, cfg, join)
    if cfg.label_column not in log.table.column_names:
        raise DataError(Problem("events", None, cfg.label_column, "a label column for the ctr task",
                                f"columns {log.table.column_names}"))
    raw = log.table[cfg.label_column].to_numpy(zero_copy_only=False).astype(np.float64)[is_sample]
    given = column_split(log, is_sample, cfg.split.column) if cfg.split.method == "column" else None
    return CtrLog(log, is_sample, is_hist, raw, given)


def join_labels(log: EventLog, is_sample: np.ndarray, cfg: TaskConfig, join: LabelJoin
                ) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 label per event, True on the samples whose window is open at `join.end`), from one partition's log.

    A sample at time t is 1 when the same user has an event of the label channel, at or before the end, with the
    same match key in (t, t + window_s]; every sample whose window holds such an event is 1 (a gift labels each of
    the user's matching samples that started within the window before it)."""
    lf = cfg.label_from
    if join.keys is None:
        key = log.items.astype(np.int64)
    else:  # the item feature's value per event (-1: an item the items table lacks, or no value: never matched)
        at = pc.index_in(log.item_vocab.array, value_set=join.keys["item_id"].combine_chunks())
        codes = pc.dictionary_encode(join.keys["key"].combine_chunks().take(pc.fill_null(at, 0)))
        per_item = np.where(at.is_null().to_numpy(zero_copy_only=False), -1,
                            codes.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64))
        key = np.r_[-1, per_item][log.items]  # log item codes are 1..n
    times = log.times
    label_ev = (log.channels == lf.channel) & (times <= join.end) & (key >= 0)
    rows = np.flatnonzero(is_sample & (key >= 0))
    n_keys = int(key.max()) + 1 if len(key) else 1
    pair_ev = log.users[label_ev].astype(np.int64) * n_keys + key[label_ev]
    pair_s = log.users[rows].astype(np.int64) * n_keys + key[rows]
    _, code = np.unique(np.concatenate([pair_ev, pair_s]), return_inverse=True)
    t0 = int(times.min())
    span = int(times.max()) - t0 + lf.window_s + 2  # one block of time per (user, key): a window never leaves it
    comp_ev = np.sort(code[:len(pair_ev)] * span + (times[label_ev] - t0))
    comp_s = code[len(pair_ev):] * span + (times[rows] - t0)
    hit = np.searchsorted(comp_ev, comp_s + lf.window_s, "right") > np.searchsorted(comp_ev, comp_s, "right")
    labels = np.zeros(len(times), np.float64)
    labels[rows] = hit
    is_open = is_sample & (times + lf.window_s > join.end)
    return labels, is_open


def _joined_log(log: EventLog, is_sample: np.ndarray, is_hist: np.ndarray, cfg: TaskConfig, join: LabelJoin
                ) -> CtrLog:
    if join is None:
        raise ValueError("task.label_from needs a LabelJoin (ctr_steps.label_join)")
    labels, is_open = join_labels(log, is_sample, cfg, join)
    open_rows = open_labels = None
    if cfg.label_from.open_window == "drop":  # not a sample: its label is not known yet
        open_rows = np.flatnonzero(is_open)
        open_labels = labels[open_rows].astype(np.float32)
        is_sample = is_sample & ~is_open
    given = column_split(log, is_sample, cfg.split.column) if cfg.split.method == "column" else None
    raw = labels[is_sample]
    return CtrLog(log, is_sample, is_hist, raw, given, open_rows, open_labels, int(is_open.sum()),
                  int(raw.sum()))


def column_split(log: EventLog, is_sample: np.ndarray, column: str) -> np.ndarray:
    """0/1/2 per sample from the event column `column` (train / valid / test)."""
    if column not in log.table.column_names:
        raise DataError(Problem("events", None, column, "a split column (train / valid / test) for "
                                "task.split.method 'column'", f"columns {log.table.column_names}"))
    values = np.asarray(log.table[column].to_numpy(zero_copy_only=False), dtype=object)[is_sample]
    codes = np.full(len(values), -1, np.int8)
    for code, name in enumerate(SPLITS):
        codes[values == name] = code
    if (codes < 0).any():
        r = int(np.flatnonzero(codes < 0)[0])
        raise DataError(Problem("events", None, column, "train, valid or test", f"{values[r]!r} on sample {r + 1}"))
    return codes


def sample_times(c: CtrLog, cfg: TaskConfig) -> np.ndarray:
    return c.log.times[c.is_sample]


def _labels(c: CtrLog, cfg: TaskConfig, split: np.ndarray) -> tuple[np.ndarray, bool]:
    """The samples' 0/1 labels and whether the test labels are hidden (a challenge's test set)."""
    raw = c.raw
    hidden = False
    if c.given is not None:
        h = np.isnan(raw) & (split == 2)
        hidden = bool(h.any())
        if hidden and not h[split == 2].all():
            raise DataError(Problem("events", None, cfg.label_column, "labels on every test sample or on none",
                                    f"{int(h.sum())} of {int((split == 2).sum())} test labels empty"))
        raw = np.where(h, 0.0, raw)
    if np.isnan(raw).any():
        r = int(np.flatnonzero(np.isnan(raw))[0])
        raise DataError(Problem("events", None, cfg.label_column, "a label on every sample event",
                                f"{int(np.isnan(raw).sum())} empty, e.g. sample {r + 1}"))
    labels = FeaturePipeline.label_rule(raw, cfg.label_threshold)
    if cfg.label_threshold is None and not np.isin(labels, (0.0, 1.0)).all():
        raise DataError(Problem("events", None, cfg.label_column, "0/1 labels (or set task.label_threshold)",
                                f"values such as {sorted(set(labels.tolist()))[:5]}"))
    return labels, hidden


def split_of(c: CtrLog, cfg: TaskConfig, cutoffs: tuple[float, float] | None) -> np.ndarray:
    """0 = train, 1 = valid, 2 = test per sample of the partition."""
    from .ctr import assign_splits

    if c.given is not None:
        return c.given
    if not c.is_sample.any():  # every sample of the partition waits for its label (label_from, open windows)
        return np.zeros(0, np.int8)
    users, times = c.log.users[c.is_sample], c.log.times[c.is_sample]
    if cutoffs is not None:
        t_valid, t_test = cutoffs
        return np.where(times >= t_test, 2, np.where(times >= t_valid, 1, 0)).astype(np.int8)
    return assign_splits(users, times, len(c.log.user_vocab), cfg.split.method, cfg.split.valid, cfg.split.test)


def _train_events(c: CtrLog, split: np.ndarray, cutoffs) -> np.ndarray:
    """Each user's events strictly before their first validation or test sample (with one global cut-off:
    before it for everybody): the training period."""
    users, times = c.log.users[c.is_sample], c.log.times[c.is_sample]
    later = split > 0
    end = np.full(len(c.log.user_vocab), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(end, users[later], times[later])
    if cutoffs is not None and later.any():
        end = np.minimum(end, times[later].min())
    return c.log.times < end[c.log.users]


def scan(c: CtrLog, cfg: TaskConfig, cutoffs) -> dict:
    """What the pipeline is fitted on, from one partition: the training period's user and item ids, the training
    samples' context values, the event texts, and the first validation / test time."""
    split = split_of(c, cfg, cutoffs)
    _, hidden = _labels(c, cfg, split)
    train = _train_events(c, split, cutoffs)
    log = c.log
    out = {"users": log.user_vocab.take(np.unique(log.users[train])),
           "items": log.item_vocab.take(np.unique(log.items[train])), "hidden": hidden,
           "has_test": bool((split == 2).any()), "context": {}, "texts": []}
    rows = np.flatnonzero(c.is_sample)
    for name in cfg.context_features:
        if name not in log.table.column_names:
            raise DataError([Problem("events", None, n, "an event column for task.context_features",
                                     f"no such column; the events have {log.table.column_names}")
                             for n in cfg.context_features if n not in log.table.column_names])
        col = log.table[name]
        values = context_strings(col.take(pa.array(rows[split == 0], pa.int64())), name)
        out["context"][name] = (pc.unique(pc.drop_null(values)), pa.types.is_integer(col.type)
                                or pa.types.is_floating(col.type))
    for spec in cfg.event_text:
        if spec.column not in log.table.column_names:
            raise DataError(Problem("events", None, spec.column, f"an event column holding the text of "
                                    f"task.event_text '{spec.modality}'", f"columns {log.table.column_names}"))
        text = np.asarray(log.table[spec.column].to_numpy(zero_copy_only=False), dtype=object)
        keep = np.flatnonzero(train & (log.channels == spec.channel)
                              & np.array([isinstance(t, str) and t.strip() != "" for t in text]))
        out["texts"].append((spec.modality, log.item_vocab.take(log.items[keep]), log.times[keep], text[keep]))
    later = log.times[c.is_sample][split > 0]
    out["later_min"] = int(later.min()) if len(later) else None
    out["labels"] = {"samples": int(c.is_sample.sum()), "positive": c.n_positive, "open": c.n_open}
    out["train_times"] = log.times[c.is_sample][split == 0] if cfg.train_recent is not None else np.zeros(0, np.int64)
    return out


def reduce_scans(scans: list[dict]) -> dict:
    def unique(arrays):
        return pc.unique(pa.concat_arrays([a for a in arrays if len(a)] or [pa.array([], pa.string())]))

    hidden = [s["hidden"] for s in scans if s["has_test"]]
    if hidden and any(hidden) != all(hidden):
        raise DataError(Problem("events", None, "label", "labels on every test sample or on none",
                                "some partitions' test labels empty, others' not"))
    context = {}
    for name in (scans[0]["context"] if scans else {}):
        values = unique([s["context"][name][0] for s in scans]).to_pylist()
        numeric = scans[0]["context"][name][1]
        context[name] = sorted(values, key=int) if numeric else sorted(values)
    later = [s["later_min"] for s in scans if s["later_min"] is not None]
    return {"users": unique([s["users"] for s in scans]), "items": unique([s["items"] for s in scans]),
            "hidden": bool(hidden) and all(hidden), "context": context,
            "texts": [t for s in scans for t in s["texts"]], "later_min": min(later) if later else None,
            "labels": {k: sum(s["labels"][k] for s in scans) for k in ("samples", "positive", "open")},
            "train_times": np.concatenate([s["train_times"] for s in scans]) if scans else np.zeros(0)}


def build(c: CtrLog, pipeline: FeaturePipeline, cfg: TaskConfig, cutoffs, recent: float | None
          ) -> tuple[Partial, dict]:
    """One partition's history and samples (users as the partition's rows) with the statistics the pipeline
    reduces: training counts per item and user, the label sum, the training times and the graph's edges."""
    log = c.log
    split = split_of(c, cfg, cutoffs)
    labels, _ = _labels(c, cfg, split)
    user_map = np.r_[0, pipeline.users.lookup(log.user_vocab.array)].astype(np.int64)
    item_map = np.r_[0, pipeline.items.lookup(log.item_vocab.array)].astype(np.int64)
    item_rows = item_map[log.items]
    is_hist = c.is_hist.copy()
    if cfg.history_positive_only:  # past labels are known at prediction time: keep positives only
        every = log.table[cfg.label_column].to_numpy(zero_copy_only=False).astype(np.float64)
        positive = (every >= cfg.label_threshold) if cfg.label_threshold is not None else (every > 0)
        is_hist &= np.nan_to_num(positive, nan=0).astype(bool)
    is_hist &= item_rows > 0  # events of items the vocabulary does not hold are left out, as online
    n_users = len(log.user_vocab)
    history = History.build(log.users[is_hist], item_rows[is_hist], log.times[is_hist], n_users,
                            pipeline.tag_codes(log.channels[is_hist]))
    rows = np.flatnonzero(c.is_sample)
    names = task_splits(cfg)
    if OPEN in names:  # the samples whose label window is still open: their own split, in the log's order
        order = np.argsort(np.concatenate([rows, c.open_rows]), kind="stable")
        rows = np.concatenate([rows, c.open_rows])[order]
        split = np.concatenate([split, np.full(len(c.open_rows), names.index(OPEN), np.int8)])[order]
        labels = np.concatenate([labels, c.open_labels])[order]
    users, times = log.users[rows], log.times[rows]
    cut = history.cut_before(users, times)
    context = {name: vocab.lookup(context_strings(log.table[name].take(pa.array(rows, pa.int64())), name))
               for name, vocab in pipeline.context.items()}
    full = SampleSet(users, item_rows[rows], times, cut, labels, context=context)
    samples = {name: full.take(np.flatnonzero(split == code)) for code, name in enumerate(names)}
    rows_of = {name: rows[split == code] for code, name in enumerate(names)}
    if recent is not None and len(samples["train"]):
        # the ranker learns from the last share of the period; history, graphs and the split stay as they are
        keep = np.flatnonzero(samples["train"].times >= recent)
        samples["train"] = samples["train"].take(keep)
        rows_of["train"] = rows_of["train"][keep]
    tr = samples["train"]
    n_items = len(pipeline.items)
    stats = {"item_counts": np.bincount(tr.items, minlength=n_items).astype(np.float64),
             "positives": np.bincount(tr.items, weights=tr.labels, minlength=n_items),
             "user_counts": np.bincount(user_map[tr.users], minlength=len(pipeline.users)).astype(np.float64),
             "label_sum": float(tr.labels.sum()), "n_train": len(tr), "train_times": tr.times, "rows": rows_of}
    g = cfg.graph
    if g.enabled:
        is_edge = log.channels == g.channel
        weights = np.zeros(int(is_edge.sum()))
        if g.weight_column is not None:
            if g.weight_column not in log.table.column_names:
                raise DataError(Problem("events", None, g.weight_column, "the edge weight column "
                                        "(task.graph.weight_column)", f"columns {log.table.column_names}"))
            weights = np.nan_to_num(log.table[g.weight_column].to_numpy(zero_copy_only=False)
                                    .astype(np.float64)[is_edge])
        stats["edges"] = (user_map[log.users[is_edge]], item_rows[is_edge], log.times[is_edge], weights)
    ids = {name: sample_ids(log, r) for name, r in rows_of.items()}
    return Partial(log.user_vocab.array, history, samples, ids), stats


class BuildTotals:
    """The pipeline's training statistics summed partition by partition as the builds come (`add` takes a build's
    per-item arrays out of its statistics): at 6.56M rooms each partition's counts are 105 MB, 7.7 GB over 73
    partitions if they were kept to the end."""

    def __init__(self, n_items: int, n_users: int):
        self.counts, self.pos = np.zeros(n_items), np.zeros(n_items)
        self.users = np.zeros(n_users)
        self.n, self.label_sum = 0, 0.0

    def add(self, stats: dict) -> None:
        self.counts += stats.pop("item_counts")
        self.pos += stats.pop("positives")
        self.users += stats.pop("user_counts")
        self.n += stats["n_train"]
        self.label_sum += stats["label_sum"]

    def result(self) -> dict:
        prior = self.label_sum / self.n if self.n else 0.5
        return {"item_counts": self.counts, "item_positive_rate": (self.pos + 20 * prior) / (self.counts + 20),
                "user_counts": self.users, "prior": prior}


def reduce_builds(stats: list[dict], n_items: int, n_users: int) -> dict:
    """The pipeline's training statistics over every partition (what `Schema` carries)."""
    totals = BuildTotals(n_items, n_users)
    for s in stats:
        totals.add(dict(s))
    return totals.result()
