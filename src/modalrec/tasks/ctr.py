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

Context features (`task.context_features`): event columns read as categorical features of the sample
itself (MicroLens' likes_level / views_level: the item's popularity level at impression time). Each is
coded per sample once, here (`SampleSet.context`), and reaches the model as `Batch.context[name]` (B,)
long with its vocabulary size in `Schema.context_categorical`. The vocabulary holds the TRAINING samples'
values only: an empty value, or one first seen at validation/test, is code 0 (unknown), so nothing of the
evaluated samples leaks into the model's tables.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from ..config import TaskConfig
from ..data.batch import Collator, History
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..eval.metrics import ctr_metrics
from .base import PreparedTask, SampleSet, Vocab, build_item_side, channel_codes, channel_mask, encode_events


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


def _context_strings(col: pa.ChunkedArray | pa.Array, name: str) -> pa.Array:
    """An event column as the strings its categorical codes are looked up by (nulls stay null): integers
    as their decimal digits, floats only when every value is a whole number (an integer column that a
    null turned into floats), booleans as true / false."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    typ = arr.type
    if pa.types.is_dictionary(typ):
        arr = arr.cast(typ.value_type)
        typ = arr.type
    if pa.types.is_null(typ):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_floating(typ):
        vals = arr.to_numpy(zero_copy_only=False).astype(np.float64)
        real = vals[~np.isnan(vals)] if len(vals) else vals
        bad = ~np.isfinite(real) | (real != np.round(real))
        if bad.any():
            raise DataError(Problem("events", None, name, "a categorical context feature: strings or whole "
                                    "numbers (task.context_features)", f"the number {real[bad][0]!r}"))
        return pc.cast(pc.cast(arr, pa.int64()), pa.string())
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return pc.cast(arr, pa.string())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return pc.cast(arr, pa.string())
    raise DataError(Problem("events", None, name, "a categorical context feature: strings, integers or "
                            "booleans (task.context_features)", str(typ)))


def context_codes(table: pa.Table, names: list[str], rows: np.ndarray,
                  train: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Vocab]]:
    """Per-sample codes of the context features `names`: (name -> (len(rows),) int64, name -> Vocab).

    `rows`: the samples' rows of `table`; `train`: (len(rows),) bool, the training samples. The vocabulary
    holds the values of the training samples only (integers in numeric order, other values sorted as
    strings); an empty value or one the training samples never hold is 0."""
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError([Problem("events", None, n, "an event column for task.context_features",
                                 f"no such column; the events have {table.column_names}") for n in missing])
    codes: dict[str, np.ndarray] = {}
    vocabs: dict[str, Vocab] = {}
    take = pa.array(rows, pa.int64())
    for name in names:
        col = table[name]
        numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
        values = _context_strings(col.take(take), name)
        seen = pc.unique(pc.drop_null(values.filter(pa.array(train, pa.bool_())))).to_pylist()
        seen = sorted(seen, key=int) if numeric else sorted(seen)
        vocab = Vocab(seen)
        codes[name] = vocab.lookup(values)
        vocabs[name] = vocab
    return codes, vocabs


class CTRTask(PreparedTask):
    kind = "ctr"
    monitor = "auc"

    def __init__(self, data: InteractionData, cfg: TaskConfig):
        self.cfg = cfg
        enc = encode_events(data)
        self.user_vocab, self.item_vocab = enc.user_vocab, enc.item_vocab
        is_sample = channel_mask(enc.channels, cfg.sample_channels)
        is_hist = channel_mask(enc.channels, cfg.history_channels or cfg.sample_channels)
        if not is_sample.any():
            raise DataError(Problem("events", None, "channel", f"events in channels {cfg.sample_channels}",
                                    "none"))
        if cfg.label_column not in enc.table.column_names:
            raise DataError(Problem("events", None, cfg.label_column, "a label column for the ctr task",
                                    f"columns {enc.table.column_names}"))
        raw = enc.table[cfg.label_column].to_numpy(zero_copy_only=False).astype(np.float64)[is_sample]
        given = None
        if cfg.split.method == "column":
            given = self._column_split(enc, is_sample, cfg.split.column)
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
        labels = (raw >= cfg.label_threshold) if cfg.label_threshold is not None else raw
        labels = labels.astype(np.float32)
        if cfg.label_threshold is None and not np.isin(labels, (0.0, 1.0)).all():
            raise DataError(Problem("events", None, cfg.label_column, "0/1 labels (or set task.label_threshold)",
                                    f"values such as {sorted(set(labels.tolist()))[:5]}"))
        n_users = len(self.user_vocab)
        if cfg.history_positive_only:  # past labels are known at prediction time: keep positives only
            every = enc.table[cfg.label_column].to_numpy(zero_copy_only=False).astype(np.float64)
            positive = (every >= cfg.label_threshold) if cfg.label_threshold is not None else (every > 0)
            is_hist = is_hist & np.nan_to_num(positive, nan=0).astype(bool)
        tags, self.history_tags = None, {}
        if cfg.history_channel_tags:
            hist_ch = cfg.history_channels or cfg.sample_channels or list(data.spec.channels)
            self.history_tags = {ch: code for code, ch in enumerate(hist_ch, start=1)}
            tags = channel_codes(enc.channels[is_hist], self.history_tags)
        self.history = History.build(enc.users[is_hist], enc.items[is_hist], enc.times[is_hist], n_users, tags)
        users, items, times = enc.users[is_sample], enc.items[is_sample], enc.times[is_sample]
        if given is not None:
            split = given
        else:
            split = assign_splits(users, times, n_users, cfg.split.method, cfg.split.valid, cfg.split.test)
        cut = self.history.cut_before(users, times)
        sample_rows = np.flatnonzero(is_sample)
        context, self.context_vocab = context_codes(enc.table, cfg.context_features, sample_rows, split == 0)
        full = SampleSet(users, items, times, cut, labels, context=context)
        self.splits = {name: full.take(np.flatnonzero(split == code))
                       for code, name in enumerate(("train", "valid", "test"))}
        # each split's samples as rows of `events` (the sorted event table): `modalrec predict` writes
        # predictions next to the samples' own columns (ids, time, a challenge's row id)
        self.events = enc.table
        self.split_rows = {name: sample_rows[split == code] for code, name in enumerate(("train", "valid", "test"))}
        if cfg.train_recent is not None and len(self.splits["train"]):
            # the ranker learns from the last share of the period; history, graphs and the split stay as they are
            tr = self.splits["train"]
            keep = np.flatnonzero(tr.times >= np.quantile(tr.times, 1.0 - cfg.train_recent, method="higher"))
            self.splits["train"] = tr.take(keep)
            self.split_rows["train"] = self.split_rows["train"][keep]
        side, schema = build_item_side(data, self.item_vocab, cfg)
        tr = self.splits["train"]
        n_items = schema.n_items
        counts = np.bincount(tr.items, minlength=n_items).astype(np.float64)
        pos = np.bincount(tr.items, weights=tr.labels, minlength=n_items)
        prior = float(tr.labels.mean()) if len(tr) else 0.5
        schema.n_users = n_users
        schema.item_counts = counts
        schema.user_counts = np.bincount(tr.users, minlength=n_users).astype(np.float64)
        schema.item_positive_rate = (pos + 20 * prior) / (counts + 20)
        schema.context_categorical = {name: len(v) for name, v in self.context_vocab.items()}
        schema.history_tags = dict(self.history_tags)
        self.schema = schema
        self.collator = Collator(self.history, side, cfg.max_history, with_time=True, token_scope=cfg.token_scope)
        self.group_names = {}
        self.gie = self.gie_train = None
        if cfg.graph.enabled:
            self._build_graph(enc, side, schema, cfg)

    def _build_graph(self, enc, side, schema, cfg: TaskConfig) -> None:
        """GIE over the training period's gifts: everything strictly before the first valid/test sample."""
        from ..graph.gie import GraphExpansion

        g = cfg.graph
        if g.streamer_feature not in side.categorical:
            raise DataError(Problem("items", None, g.streamer_feature, "an item categorical feature naming the "
                                    "streamer (task.graph.streamer_feature)", f"features {sorted(side.categorical)}"))
        later = [s.times.min() for name, s in self.splits.items() if name != "train" and len(s)]
        cutoff = min(later) if later else np.iinfo(np.int64).max
        is_gift = (enc.channels == g.channel) & (enc.times < cutoff)
        if not is_gift.any():
            raise DataError(Problem("events", None, "channel", f"'{g.channel}' events before the first "
                                    "validation/test sample (task.graph.channel)", "none"))
        weights = None
        if g.weight_column is not None:
            if g.weight_column not in enc.table.column_names:
                raise DataError(Problem("events", None, g.weight_column, "the edge weight column "
                                        "(task.graph.weight_column)", f"columns {enc.table.column_names}"))
            weights = np.nan_to_num(enc.table[g.weight_column].to_numpy(zero_copy_only=False)
                                    .astype(np.float64)[is_gift])
        self.streamer_code = side.categorical[g.streamer_feature]
        self.gie = GraphExpansion.fit(enc.users[is_gift], self.streamer_code[enc.items[is_gift]], weights,
                                      len(self.user_vocab), schema.item_categorical[g.streamer_feature], g.gie,
                                      times=enc.times[is_gift])
        schema.graph_init = self.gie.graph_init()
        self.graph_cutoff = int(cutoff) if later else None
        self.gie_train = None
        if g.refresh > 1:
            from ..graph.gie import RefreshedExpansion

            tr = self.splits["train"].times
            starts = np.unique(np.quantile(tr, np.arange(1, g.refresh) / g.refresh, method="higher").astype(np.int64))
            end = int(cutoff) if later else int(max(tr.max(), enc.times[is_gift].max())) + 1
            self.gie_train = RefreshedExpansion.fit(
                enc.users[is_gift], self.streamer_code[enc.items[is_gift]], weights, enc.times[is_gift],
                np.r_[starts[starts < end], end], self.gie)

    def collate(self, s, train: bool, seed: int = 0, epoch: int = 0):
        batch = self.collator(s.users, s.items, s.cut, s.times, s.labels)
        batch.context = {name: torch.from_numpy(codes) for name, codes in s.context.items()}
        if self.gie is not None:
            # as of each sample's time: a training sample never reads an expansion built from its own gift
            # (with task.graph.refresh, from the graph refreshed before the sample's window)
            gie = self.gie_train if self.gie_train is not None else self.gie
            batch.extra.update(gie.lookup(s.users, self.streamer_code[s.items], times=s.times))
        return batch

    test_labels_hidden: bool = False

    @staticmethod
    def _column_split(enc, is_sample: np.ndarray, column: str) -> np.ndarray:
        """0/1/2 per sample from the event column `column` (train / valid / test)."""
        if column not in enc.table.column_names:
            raise DataError(Problem("events", None, column, "a split column (train / valid / test) for "
                                    "task.split.method 'column'", f"columns {enc.table.column_names}"))
        values = np.asarray(enc.table[column].to_numpy(zero_copy_only=False), dtype=object)[is_sample]
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
        model.eval()
        outs = [model(b.to(device)).float().cpu() for b in self.batches(split, batch_size)]
        return torch.cat(outs).numpy().astype(np.float64) if outs else np.zeros(0)

    def evaluate(self, model: torch.nn.Module, split: str, batch_size: int, device="cpu") -> tuple[dict, dict]:
        if split == "test" and self.test_labels_hidden:
            return {}, {}  # hidden labels (a challenge's test set): predicted, never scored
        s = self.splits[split]
        logits = self.predict(model, split, batch_size, device)
        return ctr_metrics(s.labels, logits, s.users), {}
