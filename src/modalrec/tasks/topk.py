"""`topk`: predict the next item; judged by HR, NDCG, MRR, Recall, Precision, MAP @K with full ranking.

Protocol: leave-last-out per user by time. For a user with >= `min_user_events` events the last one is
test, the one before valid, the rest train. Leakage guard: a held-out event's history is the user's
events strictly before its time, and the user's training sequence ends strictly before the valid
event's time, so events sharing a held-out event's timestamp (same-second imports) are neither
history nor training data. Ranking covers every item except padding and the items the user already
met in the visible history (the held-out item itself is never excluded).

Training: each user's training sequence is cut into windows of `max_history`; the model predicts the
next item at every position, by default with a softmax over every item (`train_negatives: 0`), or
against `train_negatives` uniformly sampled items shared by the batch (sampled softmax, target at
candidate index 0) when the catalogue is too large for a full softmax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TaskConfig
from ..data.batch import Batch, Collator, History
from ..data.interaction import InteractionData
from ..eval.metrics import TopKAccumulator
from .base import PreparedTask, SampleSet, build_item_side, channel_mask, encode_events


class TopKTask(PreparedTask):
    kind = "topk"
    monitor = "ndcg@10"

    def __init__(self, data: InteractionData, cfg: TaskConfig):
        self.cfg = cfg
        enc = encode_events(data)
        self.user_vocab, self.item_vocab = enc.user_vocab, enc.item_vocab
        keep = channel_mask(enc.channels, cfg.sample_channels)
        users, items, times = enc.users[keep], enc.items[keep], enc.times[keep]
        n_users = len(self.user_vocab)
        self.history = h = History.build(users, items, times, n_users)
        counts = np.diff(h.ptr)
        held = np.flatnonzero(counts >= cfg.min_user_events)
        last = h.ptr[held + 1] - 1
        test_t, valid_t = h.times[last], h.times[last - 1]
        self.monitor = f"ndcg@{10 if 10 in cfg.ks else max(cfg.ks)}"

        def held_out(u, pos, t):
            cut = h.cut_before(u, t)
            return SampleSet(u, h.items[pos], t, cut)

        test = held_out(held, last, test_t)
        valid = held_out(held, last - 1, valid_t)
        # training prefix: events strictly before the valid event (all events for train-only users)
        n_train = counts.copy()
        n_train[held] = valid.cut
        win_users, win_ends = [], []
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
        side, schema = build_item_side(data, self.item_vocab, cfg)
        tr_mask = np.zeros(len(h.items), dtype=bool)
        starts = h.ptr[:-1]
        idx = np.repeat(starts, n_train) + (np.arange(n_train.sum()) - np.repeat(np.cumsum(n_train) - n_train, n_train))
        tr_mask[idx] = True
        schema.n_users = n_users
        schema.item_counts = np.bincount(h.items[tr_mask], minlength=schema.n_items).astype(np.float64)
        self.schema = schema
        self.collator = Collator(h, side, cfg.max_history)
        self.group_names = {}

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
        """(B, n_items) True where an item must not be ranked: padding and items already met."""
        b = len(s)
        ex = np.zeros((b, self.schema.n_items), dtype=bool)
        ex[:, 0] = True
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
            acc.add(scores, batch.item.view(-1, 1), self.exclusion(part))
        res = acc.result()
        res.pop("n", None)
        return res, {}
