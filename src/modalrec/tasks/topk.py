"""`topk`: predict the next item; judged by HR, NDCG, MRR, Recall, Precision, MAP @K with full ranking.

Protocol: leave-last-out per user by time. For a user with >= `min_user_events` events the last one is
test, the one before valid, the rest train. Leakage guard: a held-out event's history is the user's
events strictly before its time, and the user's training sequence ends strictly before the valid
event's time, so events sharing a held-out event's timestamp (same-second imports) are neither
history nor training data. Ranking covers every item except padding and, with `task.exclude_seen` (the
default), the items the user already met in the visible history (the held-out item itself is never
excluded); `exclude_seen: false` ranks them too (repeat consumption). The vocabulary is fitted on the
training prefixes (and the items table): a held-out item first met in the held-out period cannot be
ranked and counts as a miss.

Live candidates (`task.live`): where items are live rooms (KuaiLive, the simulator's rooms view), a held-out event
at time t ranks only the items live at t (start <= t < end, two columns of the items table; an item without both
is never live), as KuaiLive's evaluation draws its candidates and as the service's live-only /recommend does. The
held-out item is always ranked; how many held-out items were not live at their own time is counted per split
(`live_summary`, saved in RUN/data/task.json). Combined with `exclude_seen: false` this is KuaiLive's protocol.
Training is unchanged (the softmax covers every item).

Training: each user's training sequence is cut into windows of `max_history`; the model predicts the
next item at every position, by default with a softmax over every item (`train_negatives: 0`), or
against `train_negatives` uniformly sampled items shared by the batch (sampled softmax, target at
candidate index 0) when the catalogue is too large for a full softmax.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from ..config import LiveConfig, TaskConfig
from ..data.batch import Batch
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..eval.metrics import TopKAccumulator
from ..pipeline import History, PipelineSettings
from .base import EventLog, PreparedTask, SampleSet, channel_mask, fit_pipeline

NEVER = np.iinfo(np.int64).max


def live_times(items: pa.Table | None, vocab, live: LiveConfig) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) per item row of `vocab` from the items table's columns `live.start` / `live.end`; padding, an
    item the table lacks and an empty value get start = end = NEVER (never live)."""
    for col in (live.start, live.end):
        if items is None or col not in items.column_names:
            raise DataError(Problem("items", None, col, "an items table column of numbers: when each room is live "
                                    "(task.live)", f"columns {[] if items is None else items.column_names}"))
        if not (pa.types.is_integer(items[col].type) or pa.types.is_floating(items[col].type)):
            raise DataError(Problem("items", None, col, "numbers in the unit of the event times (task.live)",
                                    str(items[col].type)))
    rows = vocab.lookup(items["item_id"])
    out = []
    for col in (live.start, live.end):
        values = items[col].to_numpy(zero_copy_only=False).astype(np.float64)
        arr = np.full(len(vocab), NEVER, np.int64)
        ok = (rows > 0) & np.isfinite(values)
        arr[rows[ok]] = np.ceil(values[ok]).astype(np.int64)  # integer times: start <= t and t < end hold alike
        out.append(arr)
    start, end = out
    never = (start == NEVER) | (end == NEVER)
    start[never], end[never] = NEVER, NEVER
    return start, end


def _ids(log: EventLog, s: SampleSet) -> pa.Table:
    """Raw ids of samples: the user, the held-out (or window's last) item and its time."""
    return pa.table({"user_id": log.user_vocab.take(s.users), "item_row": pa.array(s.items, pa.int64()),
                     "time": pa.array(s.times, pa.int64())})


class TopKTask(PreparedTask):
    kind = "topk"
    monitor = "ndcg@10"
    split_methods = ("leave_last_out",)

    def __init__(self, data: InteractionData, cfg: TaskConfig):
        self.cfg = cfg
        self.check_split(cfg)
        log = EventLog.of(data)
        keep = channel_mask(log.channels, cfg.sample_channels)
        users, times = log.users[keep], log.times[keep]
        n_users = len(log.user_vocab)
        # the held-out events on the raw sequences: per user with enough events, the last is test, the one
        # before valid; the training period is every event strictly before the user's valid event
        raw = History.build(users, log.items[keep], times, n_users)
        counts = np.diff(raw.ptr)
        held = np.flatnonzero(counts >= cfg.min_user_events)
        last = raw.ptr[held + 1] - 1
        test_t, valid_t = raw.times[last], raw.times[last - 1]
        train_end = np.full(n_users, np.iinfo(np.int64).max, dtype=np.int64)
        train_end[held] = valid_t
        settings = PipelineSettings(task="topk", max_history=cfg.max_history, sample_channels=cfg.sample_channels,
                                    history_channels=cfg.sample_channels)
        in_train = keep & (log.times < train_end[log.users])
        pipeline = fit_pipeline(data, cfg, log.user_vocab.take(np.unique(log.users[in_train])),
                                log.item_vocab.take(np.unique(log.items[in_train])), settings)
        user_map = np.r_[0, pipeline.users.lookup(log.user_vocab.array)].astype(np.int64)
        item_map = np.r_[0, pipeline.items.lookup(log.item_vocab.array)].astype(np.int64)
        self.pipeline, self.user_rows, self.log_users = pipeline, user_map, log.user_vocab
        rows = item_map[log.items]
        known = keep & (rows > 0)  # events of items the vocabulary does not hold are left out, as online
        self.history = h = History.build(log.users[known], rows[known], log.times[known], n_users)
        self.monitor = f"ndcg@{10 if 10 in cfg.ks else max(cfg.ks)}"

        def held_out(u, pos, t):  # the held-out item's row (0: unknown, a sure miss) and its history
            return SampleSet(u, item_map[raw.items[pos]], t, h.cut_before(u, t))

        test = held_out(held, last, test_t)
        valid = held_out(held, last - 1, valid_t)
        # training prefix: events strictly before the valid event (all events for train-only users)
        n_train = h.cut_before(np.arange(n_users), train_end)
        L = cfg.max_history
        for_users = np.flatnonzero(n_train >= 2)
        # windows end at n-1, n-1-L, ... >= 1; each predicts the item at every position from the next one
        n_win = (n_train[for_users] - 2) // L + 1
        win_users = np.repeat(for_users, n_win)
        offsets = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)
        win_ends = n_train[win_users] - 1 - offsets * L
        train_pos = h.ptr[win_users] + win_ends
        self.splits = {
            "train": SampleSet(win_users, h.items[train_pos], h.times[train_pos], win_ends),
            "valid": valid,
            "test": test,
        }
        self.sample_ids = {name: _ids(log, s) for name, s in self.splits.items()}
        idx = np.repeat(h.ptr[:-1], n_train) + (np.arange(n_train.sum()) - np.repeat(np.cumsum(n_train) - n_train, n_train))
        pipeline.stats = {"item_counts": np.bincount(h.items[idx], minlength=len(pipeline.items)).astype(np.float64)}
        pipeline.count_codes(h.items[idx])
        arrays, meta = {}, {}
        if cfg.live is not None:
            arrays["live_start"], arrays["live_end"] = live_times(data.items, pipeline.items, cfg.live)
            meta["live"] = {}
            for name in ("valid", "test"):
                s = self.splits[name]
                known = s.items > 0  # an unknown held-out item is a miss anyway
                live = self._live(arrays["live_start"], arrays["live_end"], s.items[known], s.times[known])
                meta["live"][name] = {"held_out": int(known.sum()), "not_live": int((~live).sum())}
        self.restore(meta, arrays)

    live_start = live_end = None  # (n_items,) task.live: each item's live interval [start, end); None: off
    live_summary: dict | None = None

    @staticmethod
    def _live(start: np.ndarray, end: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        return (start[items] <= times) & (times < end[items])

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        super().restore(meta, arrays)
        self.live_start, self.live_end = arrays.get("live_start"), arrays.get("live_end")
        self.live_summary = meta.get("live")

    def meta(self) -> dict:
        return {} if self.live_summary is None else {"live": self.live_summary}

    def extra_arrays(self) -> dict[str, np.ndarray]:
        if self.live_start is None:
            return {}
        return {"live_start": self.live_start, "live_end": self.live_end}

    def live_candidates(self, times: np.ndarray) -> np.ndarray:
        """(B, n_items) True where an item is live at each time (`task.live`)."""
        t = np.asarray(times, dtype=np.int64)[:, None]
        return (self.live_start[None, :] <= t) & (t < self.live_end[None, :])

    def collate(self, s: SampleSet, train: bool, seed: int = 0, epoch: int = 0) -> Batch:
        batch = self.collator(s.users, s.items, s.cut, s.times)
        if train:
            _, mask, pos = self.history.window(s.users, s.cut, self.cfg.max_history)
            nxt = np.where(mask, self.history.items[np.minimum(pos + 1, len(self.history.items) - 1)], 0)
            tgt = torch.from_numpy(nxt)
            batch.targets = tgt
            if self.cfg.train_negatives == 0:  # full softmax: every item is a candidate, shared by all rows
                batch.candidates = torch.arange(self.schema.n_items)
                return batch
            rng = np.random.default_rng([seed, epoch, int(s.users[0]), int(s.cut[0]), len(s)])
            negs = rng.integers(1, self.schema.n_items, size=self.cfg.train_negatives)
            neg = torch.from_numpy(negs).view(1, 1, -1).expand(tgt.shape[0], tgt.shape[1], -1)
            batch.candidates = torch.cat([tgt.unsqueeze(-1), neg], dim=-1)
        return batch

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        valid = batch.targets > 0
        if batch.candidates.dim() == 1:  # full softmax: column i is item i; column 0 is padding
            logits = output[valid].float()
            logits[:, 0] = float("-inf")
            return F.cross_entropy(logits, batch.targets[valid])
        logits = output[valid].float()
        # a sampled negative equal to the target is not a negative
        clash = batch.candidates[valid][:, 1:] == batch.targets[valid].unsqueeze(-1)
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(clash, float("-inf"))], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    def exclusion(self, s: SampleSet) -> torch.Tensor:
        """(B, n_items) True where an item must not be ranked: padding, the items already met in the
        visible history unless `task.exclude_seen` is off (repeat consumption), and with `task.live` the items
        not live at the sample's time (the held-out item itself is never excluded)."""
        b = len(s)
        ex = np.zeros((b, self.schema.n_items), dtype=bool) if self.live_start is None else \
            ~self.live_candidates(s.times)
        ex[:, 0] = True
        if self.cfg.exclude_seen:
            lens = s.cut
            rows = np.repeat(np.arange(b), lens)
            pos = np.repeat(self.history.ptr[s.users], lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
            ex[rows, self.history.items[pos]] = True
        ex[np.arange(b), s.items] = False
        return torch.from_numpy(ex)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str, batch_size: int, device="cpu") -> tuple[dict, dict]:
        model.eval()
        s = self.splits[split]
        acc = TopKAccumulator(ks=tuple(self.cfg.ks))
        bs = max(1, min(batch_size, 512))
        for start in range(0, len(s), bs):
            part = s.take(np.arange(start, min(start + bs, len(s))))
            batch = self.collate(part, train=False)
            scores = model(batch.to(device)).float().cpu()
            # a held-out item the vocabulary does not hold (first met in the held-out period) cannot be ranked:
            # it counts as a miss (its column, padding's, ranks behind every item)
            scores[torch.from_numpy(part.items == 0), 0] = float("-inf")
            acc.add(scores, batch.item.view(-1, 1), self.exclusion(part))
        res = acc.result()
        res.pop("n", None)
        return res, {}
