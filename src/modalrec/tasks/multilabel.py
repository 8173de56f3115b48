"""`multilabel`: predict the items bought in an event from the touchpoints before it.

The task of Bruun, Balog, Maistro (SIGIR 2024): one sample per purchase event; its input is the
ordered list of touchpoints before it (each a web session or a call-centre conversation, with the
content of that touchpoint), its labels the items bought (multi-hot over the purchasable items); the
items the user could not buy then (the `availability` modality) are removed before ranking.

Samples and touchpoints
-----------------------
Sample-channel rows (`task.sample_channels`, default ``["purchase"]``) make the samples, the other
channels (`task.history_channels`, default: every other channel of the spec) the touchpoints.
- With a ``purchase_event_id`` event column (the insurance release), a sample is one purchase event
  and its touchpoints are the touchpoint rows carrying the same id, in time order, exactly as
  released (a session listed before two purchases is input to both).
- Without it, a sample is one ``event_id`` (else one (user, time)) of the sample channels and its
  touchpoints are the user's touchpoints strictly before the sample's time (`History.cut_before`,
  the leakage guard of every task).
At most the last `task.max_history` touchpoints are kept.

Labels are the items flagged ``is_product`` in the items table (all sample items if there is no such
column); availability is the ``availability`` token modality keyed by the sample's event id (no row:
every item available).

Split (the paper's protocol): samples sorted chronologically (by time, then by their id; purchase
event ids are chronological), the last `split.test` share is test, the rest is train, and the last
`split.valid` share OF THE TRAINING PART is validation; no shuffling (`split.method: chronological`, the
only protocol of this task). Run directories keep the task's stores (`RUN/data/`), so evaluation reads no
raw data.

Batches (built at batch time from compact stores; nothing dense is kept per sample)
---------------------------------------------------------------------------------
`Batch.label` (B, n_labels) float multi-hot; `Batch.group` (B,) the channel presence pattern;
`Batch.touchpoints` (`data.batch.Touchpoints`):
- `channel` (B, T) long: channel index of each touchpoint (1..C as in `Schema.multichannel.channels`,
  0 = padding); `mask` (B, T) bool; touchpoints are left-aligned in time order;
- `tokens[m]` (B, T, V) float multi-hot bag of a touchpoint's tokens over the ONE token vocabulary shared
  by all token modalities (web tags and conversation keywords share ids in the insurance release),
  `vectors[m]` (B, T, D) float vector, `weights[m]` (B, T) weight of a vector in an event-level mean
  (``n_sentences`` when the table has it, else 1), and `presence[m]` (B, T) bool for each; an absent
  modality is all zeros with presence False;
- `available` (B, n_labels) bool.

Model outputs and the loss
--------------------------
A model returns (B, n_labels) logits; in training it may return a dict instead:
``{"logits": (B, n_labels), "weight": (B,) optional, "aux_loss": scalar optional}``. The loss is the
`weight`-weighted mean over samples of the mean BCE-with-logits over labels (all weights 0: no label
term), plus `aux_loss` (e.g. distillation, generator or encoder-classifier terms).

Evaluation: full ranking of the labels with unavailable items excluded (`TopKAccumulator`), HR,
NDCG, MAP, ... at k = 1..5 (and the configured `task.ks` up to n_labels), ``loss`` (validation BCE,
the default early-stopping monitor, as in the paper). Groups: one per channel presence pattern
(``conversation-only``, ``session-only``, ``both`` for two channels) and ``all``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from ..config import TaskConfig
from ..data.batch import Batch, Touchpoints
from ..data.errors import DataError, Problem
from ..data.interaction import InteractionData
from ..eval.metrics import TopKAccumulator
from ..models.base import ChannelSpec, MultiChannelSpec, Schema
from ..pipeline import FeatureMaps, FeaturePipeline, History, PipelineSettings, SideSizes, SideTable, Vocab
from .base import PreparedTask, SampleSet

AVAILABILITY = "availability"
EVENT_KEY = "purchase_event_id"
WEIGHT_COLUMNS = ("n_sentences",)
GROUP_ORDER_LAST = "all"


def unpack_output(output) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(logits, weight, aux_loss) of a model output (a tensor or the training dict)."""
    if isinstance(output, dict):
        return output["logits"], output.get("weight"), output.get("aux_loss")
    return output, None, None


def pattern_name(pattern: int, channels: list[str]) -> str:
    present = [c for i, c in enumerate(channels) if pattern >> i & 1]
    if not present:
        return "no-touchpoints"
    if len(present) == 1:
        return f"{present[0]}-only"
    if len(present) == len(channels):
        return "both" if len(channels) == 2 else "all-channels"
    return "+".join(present)


class MultiLabelTask(PreparedTask):
    kind = "multilabel"
    monitor = "loss"
    higher_is_better = False

    split_methods = ("chronological",)

    def __init__(self, data: InteractionData, cfg: TaskConfig):
        self.cfg = cfg
        self.check_split(cfg)
        spec = data.spec
        ev = data.events
        channels = np.asarray(ev["channel"].to_numpy(zero_copy_only=False), dtype=object)
        sample_ch = cfg.sample_channels or (["purchase"] if "purchase" in spec.channels else None)
        if not sample_ch:
            raise DataError(Problem("task", None, "sample_channels", "the channels whose events are the "
                                    "samples (no channel named 'purchase')", "nothing"))
        hist_ch = cfg.history_channels or [c for c in spec.channels if c not in sample_ch]
        is_s = np.isin(channels, np.asarray(sample_ch, dtype=object))
        is_h = np.isin(channels, np.asarray(hist_ch, dtype=object)) & ~is_s
        if not is_s.any():
            raise DataError(Problem("events", None, "channel", f"events in the sample channels {sample_ch}", "none"))
        present_ch = [c for c in hist_ch if (channels[is_h] == c).any()]
        if not present_ch:
            raise DataError(Problem("events", None, "channel", f"touchpoint events in channels {hist_ch}", "none"))
        self.channel_names = present_ch
        user = np.asarray(ev["user_id"].to_numpy(zero_copy_only=False), dtype=object)
        item = np.asarray(ev["item_id"].to_numpy(zero_copy_only=False), dtype=object)
        time = _times(ev)
        event_id = (np.asarray(ev["event_id"].to_numpy(zero_copy_only=False), dtype=object)
                    if "event_id" in ev.column_names else None)
        self.log_users = Vocab(pd.unique(user).tolist())
        uidx = self.log_users.lookup(user)

        # ----------------------------------------------------------------- labels
        self.labels = self._label_ids(data, item[is_s])
        n_labels = len(self.labels)
        label_vocab = Vocab(self.labels)  # label l <-> item index l + 1

        # ----------------------------------------------------------------- samples
        s_rows = np.flatnonzero(is_s)
        use_key = EVENT_KEY in ev.column_names
        if use_key:
            key_all = ev[EVENT_KEY].to_numpy(zero_copy_only=False)
            if pd.isna(key_all[s_rows]).any():
                r = int(s_rows[pd.isna(key_all[s_rows])][0])
                raise DataError(Problem("events", r + 1, EVENT_KEY, "an id on every sample event", "an empty value"))
            s_key = pd.Series(key_all[s_rows]).to_numpy()
        elif event_id is not None:
            s_key = event_id[s_rows]
        else:
            s_key = np.char.add(np.char.add(user[s_rows].astype(str), "@"), time[s_rows].astype(str))
        codes, uniq_keys = pd.factorize(s_key, sort=False)
        n_s = len(uniq_keys)
        first = np.full(n_s, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, codes, s_rows)  # first row of each sample
        s_time = np.zeros(n_s, np.int64)
        np.maximum.at(s_time, codes, time[s_rows])
        s_user = uidx[first]
        owners = pd.Series(uidx[s_rows]).groupby(codes).nunique().to_numpy()
        if (owners > 1).any():
            k = int(np.flatnonzero(owners > 1)[0])
            raise DataError(Problem("events", int(first[k]) + 1, "user_id", "one user per sample event",
                                    f"several users for sample {uniq_keys[k]!r}"))
        order = np.lexsort((np.asarray(pd.Series(uniq_keys).rank(method="dense").to_numpy()), s_time))
        rank = np.empty(n_s, np.int64)
        rank[order] = np.arange(n_s)  # chronological sample index
        codes = rank[codes]
        first, s_time, s_user = first[order], s_time[order], s_user[order]
        self.sample_keys = np.asarray(uniq_keys)[order]

        lab_idx = label_vocab.lookup(item[s_rows]) - 1
        ok = lab_idx >= 0
        label_mat = np.zeros((n_s, n_labels), dtype=bool)
        label_mat[codes[ok], lab_idx[ok]] = True
        self.label_mat = label_mat
        self.available = self._availability(data, label_vocab, event_id[first] if event_id is not None else None, n_s)

        # ----------------------------------------------------------------- touchpoints
        h_rows = np.flatnonzero(is_h)
        tp_key = event_id[h_rows] if event_id is not None else np.char.add("row", h_rows.astype(str))
        ent_codes, ent_ids = pd.factorize(tp_key, sort=False)
        self.tp_ids = np.asarray(ent_ids, dtype=object)
        n_ent = len(ent_ids)
        ch_of_row = pd.Index(present_ch).get_indexer(channels[h_rows]) + 1
        self.ent_channel = np.zeros(n_ent, np.int64)
        self.ent_channel[ent_codes] = ch_of_row
        if use_key:
            # touchpoint rows of each purchase event, in time order (rows are sorted by time already)
            h_sample = pd.Index(self.sample_keys).get_indexer(pd.Series(key_all[h_rows]).to_numpy())
            keep = h_sample >= 0  # touchpoints of events without any purchase row are not samples
            hs, he, ht = h_sample[keep], ent_codes[keep], time[h_rows][keep]
            o = np.lexsort((np.arange(len(hs)), ht, hs))
            counts = np.bincount(hs, minlength=n_s)
            self.tp_ptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
            self.tp_ent = he[o].astype(np.int64)
        else:
            hist = History.build(uidx[h_rows], ent_codes.astype(np.int64), time[h_rows], len(self.log_users))
            cut = hist.cut_before(s_user, s_time)
            length = np.minimum(cut, cfg.max_history)
            start = hist.ptr[s_user] + cut - length
            self.tp_ptr = np.r_[0, np.cumsum(length)].astype(np.int64)
            pos = np.repeat(start, length) + (np.arange(length.sum()) - np.repeat(self.tp_ptr[:-1], length))
            self.tp_ent = hist.items[pos].astype(np.int64)
        lens = np.diff(self.tp_ptr)
        pattern = np.zeros(n_s, np.int64)
        rows = np.repeat(np.arange(n_s), lens)
        np.bitwise_or.at(pattern, rows, 1 << (self.ent_channel[self.tp_ent] - 1))
        self.pattern = pattern

        # ----------------------------------------------------------------- content stores
        self._build_stores(data, n_ent)

        # ----------------------------------------------------------------- split
        n_test = int(np.floor(n_s * cfg.split.test + 0.5)) if cfg.split.test > 0 else 0
        n_train_all = n_s - n_test
        n_valid = int(np.floor(n_train_all * cfg.split.valid + 0.5)) if cfg.split.valid > 0 else 0
        n_train = n_train_all - n_valid
        if n_train < 1:
            raise DataError(Problem("events", None, "channel", "enough sample events for a training split",
                                    f"{n_s} samples"))
        idx = np.arange(n_s)
        full = SampleSet(s_user, idx, s_time, lens, None, pattern)
        self.splits = {"train": full.take(idx[:n_train]), "valid": full.take(idx[n_train:n_train_all]),
                       "test": full.take(idx[n_train_all:])}
        self.split_bounds = (n_train, n_train_all)

        # ----------------------------------------------------------------- pipeline, schema
        # the vocabularies: the training samples' users and the labels (no model reads a user id here)
        train_users = Vocab([self.log_users.ids[u - 1] for u in pd.unique(s_user[:n_train])])
        self.pipeline = FeaturePipeline(
            PipelineSettings(task="multilabel", max_history=cfg.max_history, sample_channels=list(sample_ch),
                             history_channels=list(hist_ch)),
            train_users, label_vocab, SideTable(), FeatureMaps(), SideSizes())
        self.pipeline.schema_extra = {"n_labels": n_labels}
        self.history = History(np.zeros(len(self.log_users) + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.sample_ids = {name: pa.table({"user_id": pa.array([self.log_users.ids[u - 1] for u in part.users], pa.string()),
                                           "sample": pa.array([str(k) for k in self.sample_keys[part.items]], pa.string()),
                                           "time": pa.array(part.times, pa.int64())})
                           for name, part in self.splits.items()}
        self.restore({}, {})

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """The schema from the stores (the label counts and channel spec of the training samples)."""
        if meta:  # loaded from a run directory
            self.channel_names, self.labels = meta["channel_names"], meta["labels"]
            self.token_vocab = Vocab(meta["token_vocab"])
            self.modality_channels = {k: list(v) for k, v in meta["modality_channels"].items()}
            self.split_bounds = tuple(meta["split_bounds"])
            self.sample_keys = np.asarray(meta["sample_keys"], dtype=object)
            for name in ("label_mat", "available", "tp_ptr", "tp_ent", "ent_channel", "pattern"):
                setattr(self, name, arrays[name])
            self.tokens = {m: (arrays[f"tok.{m}.ptr"], arrays[f"tok.{m}.tok"], arrays[f"tok.{m}.has"])
                           for m in meta["token_modalities"]}
            self.vectors = {m: (arrays[f"vec.{m}.mat"], arrays[f"vec.{m}.row_of"], arrays[f"vec.{m}.weight"])
                            for m in meta["vector_modalities"]}
        self.user_rows = np.r_[0, self.pipeline.users.lookup(self.log_users.array)].astype(np.int64)
        n_train = self.split_bounds[0]
        tr = np.arange(n_train)
        n_labels = len(self.labels)
        counts = self.label_mat[tr].sum(0).astype(np.float64)
        self.schema = Schema(task="multilabel", n_users=len(self.pipeline.users), n_items=n_labels + 1,
                             max_history=self.cfg.max_history, n_labels=n_labels)
        self.schema.item_counts = counts
        self.schema.item_positive_rate = (counts + 0.5) / (len(tr) + 1.0)
        self.schema.multichannel = self._channel_spec(tr)
        self.group_names = {"test": self._group_list()}
        self.dropped: dict[str, np.ndarray] = {}  # drop_modality: name -> per-sample flag
        self.ks = sorted({1, 2, 3, 4, 5} | {k for k in self.cfg.ks if k <= n_labels})

    def meta(self) -> dict:
        return {"channel_names": list(self.channel_names), "labels": [str(x) for x in self.labels],
                "token_vocab": self.token_vocab.ids, "split_bounds": [int(x) for x in self.split_bounds],
                "modality_channels": {k: [int(c) for c in v] for k, v in self.modality_channels.items()},
                "sample_keys": [str(k) for k in self.sample_keys],
                "token_modalities": list(self.tokens), "vector_modalities": list(self.vectors)}

    def extra_arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in ("label_mat", "available", "tp_ptr", "tp_ent", "ent_channel",
                                                      "pattern")}
        for m, (ptr, tok, has) in self.tokens.items():
            out |= {f"tok.{m}.ptr": ptr, f"tok.{m}.tok": tok, f"tok.{m}.has": has}
        for m, (mat, row_of, weight) in self.vectors.items():
            out |= {f"vec.{m}.mat": mat, f"vec.{m}.row_of": row_of, f"vec.{m}.weight": weight}
        return out

    # ------------------------------------------------------------------------------------- robustness
    def drop_modality(self, name: str, rate: float, split: str = "test", seed: int = 0) -> dict:
        """Removes `name` from a share `rate` of the `split` samples that have it, for every later collate.

        `name` is a touchpoint channel (e.g. "conversation": those touchpoints disappear from the sample's
        sequence, which is re-packed so the rest stay left-aligned) or a content modality (e.g.
        "conversation_emb": the touchpoints stay, that content becomes absent). Samples keep their original
        availability group, so a report compares the same events with and without the modality. The choice
        is seeded and drawn among the samples that have the modality: `rate` is the share of those that lose
        it. Returns {"name", "kind", "rate", "eligible", "dropped"}."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"--rate must be in [0, 1], got {rate}")
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}' (have {sorted(self.splits)})")
        if name in self.channel_names:
            kind, c = "channel", self.channel_names.index(name) + 1
            has_ent = self.ent_channel == c
        elif name in self.tokens:
            kind, has_ent = "modality", self.tokens[name][2]
        elif name in self.vectors:
            kind, has_ent = "modality", self.vectors[name][1] >= 0
        else:
            raise KeyError(f"'{name}' is neither a touchpoint channel ({', '.join(self.channel_names)}) nor a "
                           f"content modality ({', '.join(sorted([*self.tokens, *self.vectors]))}) of this task")
        idx = self.splits[split].items
        lens = self.tp_ptr[idx + 1] - self.tp_ptr[idx]
        has = np.zeros(len(idx), bool)
        if len(self.tp_ent):
            owner = np.repeat(np.arange(len(idx)), lens)
            pos = np.repeat(self.tp_ptr[idx], lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
            np.logical_or.at(has, owner, has_ent[self.tp_ent[pos]])
        eligible = idx[has]
        rng = np.random.default_rng(seed)
        chosen = eligible[rng.random(len(eligible)) < rate]
        mask = self.dropped.get(name, np.zeros(len(self.label_mat), bool)).copy()
        mask[chosen] = True
        self.dropped[name] = mask
        return {"name": name, "kind": kind, "rate": rate, "eligible": len(eligible), "dropped": len(chosen)}

    # ------------------------------------------------------------------------------------- building
    @staticmethod
    def _label_ids(data: InteractionData, sample_items: np.ndarray) -> list[str]:
        items = data.items
        if items is not None and "is_product" in items.column_names:
            flag = items["is_product"].to_numpy(zero_copy_only=False)
            ids = [i for i, f in zip(items["item_id"].to_pylist(), flag) if f]
            known = set(ids)
            bad = [i for i in pd.unique(sample_items) if i not in known]
            if bad:
                raise DataError(Problem("items", None, "is_product", "every item of a sample event flagged as a "
                                        "product", f"item {bad[0]!r} is not"))
            return ids
        ids = pd.unique(sample_items).tolist()
        return sorted(ids, key=lambda s: (0, int(s), "") if str(s).lstrip("-").isdigit() else (1, 0, str(s)))

    def _availability(self, data: InteractionData, label_vocab: Vocab, sample_event_ids: np.ndarray | None,
                      n_s: int) -> np.ndarray:
        avail = np.ones((n_s, len(self.labels)), dtype=bool)
        table = data.content.get(AVAILABILITY)
        if table is None or sample_event_ids is None:
            return avail
        row = pd.Index(sample_event_ids).get_indexer(table["entity_id"].to_numpy(zero_copy_only=False))
        lists = table["tokens"]
        flat = pc.cast(pc.list_flatten(lists), pa.string()).to_numpy(zero_copy_only=False)
        parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        has = row >= 0
        avail[row[has]] = False
        lab = label_vocab.lookup(flat) - 1
        ok = (lab >= 0) & has[parent]
        avail[row[parent[ok]], lab[ok]] = True
        return avail

    def _build_stores(self, data: InteractionData, n_ent: int) -> None:
        """Per touchpoint entity: token bags (CSR over the shared vocabulary) and vector rows."""
        ent_index = pd.Index(self.tp_ids)
        tok_tables, self.vectors = {}, {}
        self.modality_channels: dict[str, list[int]] = {}
        for m in data.spec.modalities:
            if m.entity != "event" or m.name == AVAILABILITY or m.name not in data.content:
                continue
            if m.kind not in ("tokens", "vector"):
                continue
            if m.kind == "vector" and self.cfg.vector_modalities is not None and m.name not in self.cfg.vector_modalities:
                continue
            table = data.content[m.name]
            rows = ent_index.get_indexer(table["entity_id"].to_numpy(zero_copy_only=False))
            if not (rows >= 0).any():
                continue
            self.modality_channels[m.name] = sorted(set(self.ent_channel[rows[rows >= 0]].tolist()))
            if m.kind == "tokens":
                tok_tables[m.name] = (table, rows)
            else:
                dim = m.dim or len(table["vector"][0].as_py())
                flat = pc.list_flatten(table["vector"]).to_numpy(zero_copy_only=False).astype(np.float32)
                mat = flat.reshape(-1, dim)
                keep = rows >= 0
                row_of = np.full(n_ent, -1, np.int64)
                row_of[rows[keep]] = np.flatnonzero(keep)
                weight = np.ones(len(mat), np.float32)
                for col in WEIGHT_COLUMNS:
                    if col in table.column_names:
                        weight = table[col].to_numpy(zero_copy_only=False).astype(np.float32)
                        break
                self.vectors[m.name] = (mat, row_of, weight)
        # one token vocabulary shared by every token modality
        flats = {}
        for name, (table, rows) in tok_tables.items():
            lists = table["tokens"]
            flats[name] = (pc.cast(pc.list_flatten(lists), pa.string()).to_numpy(zero_copy_only=False),
                           pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64))
        all_tokens = np.concatenate([f for f, _ in flats.values()]) if flats else np.zeros(0, object)
        self.token_vocab = Vocab(sorted(pd.unique(all_tokens).tolist(),
                                        key=lambda s: (0, int(s), "") if str(s).lstrip("-").isdigit() else (1, 0, s)))
        self.tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        V = len(self.token_vocab)
        for name, (table, rows) in tok_tables.items():
            flat, parent = flats[name]
            ent = rows[parent]
            tok = self.token_vocab.lookup(flat)
            ok = ent >= 0
            key = np.unique(ent[ok] * V + tok[ok])  # one entry per (entity, token): a bag, not counts
            e, t = key // V, key % V
            ptr = np.r_[0, np.cumsum(np.bincount(e, minlength=n_ent))].astype(np.int64)
            has = np.zeros(n_ent, bool)
            has[rows[rows >= 0]] = True  # a present but empty token list is still present
            self.tokens[name] = (ptr, t.astype(np.int64), has)

    def _channel_spec(self, train_idx: np.ndarray) -> MultiChannelSpec:
        V = len(self.token_vocab)
        # training samples are the first ones in chronological order: their touchpoints are one slice
        tr_ent = self.tp_ent[self.tp_ptr[0]:self.tp_ptr[len(train_idx)]]
        pat = self.pattern[train_idx]
        specs = []
        for ci, name in enumerate(self.channel_names, start=1):
            cs = ChannelSpec(name=name, index=ci, share=float(((pat >> (ci - 1)) & 1).mean()) if len(pat) else 0.0)
            ents = tr_ent[self.ent_channel[tr_ent] == ci]
            for m, chans in self.modality_channels.items():
                if ci not in chans:
                    continue
                if m in self.tokens:
                    cs.tokens[m] = V
                    cs.neutral[m] = self._mode_bag(m, ents, V)
                else:
                    mat, row_of, _ = self.vectors[m]
                    cs.vectors[m] = mat.shape[1]
                    r = row_of[ents]
                    r = r[r >= 0]
                    cs.neutral[m] = mat[r].mean(0) if len(r) else np.zeros(mat.shape[1], np.float32)
            specs.append(cs)
        C = len(specs)
        shares = np.bincount(pat, minlength=2 ** C).astype(np.float64) / max(len(pat), 1)
        return MultiChannelSpec(channels=specs, vocab_size=V, pattern_shares=shares,
                                sample_anchors=self.sample_anchors)

    def _mode_bag(self, m: str, ents: np.ndarray, V: int) -> np.ndarray:
        ptr, tok, has = self.tokens[m]
        ents = ents[has[ents]]
        bag = np.zeros(V, np.float32)
        if not len(ents):
            return bag
        uniq, cnt = np.unique(ents, return_counts=True)
        bags = Counter()
        for e, c in zip(uniq.tolist(), cnt.tolist()):
            bags[tuple(tok[ptr[e]:ptr[e + 1]].tolist())] += c
        best = max(bags.items(), key=lambda kv: (kv[1], [-x for x in kv[0]]))[0]
        bag[list(best)] = 1.0
        return bag

    def _group_list(self) -> list[str]:
        C = len(self.channel_names)
        names = [pattern_name(p, self.channel_names) for p in sorted(set(self.pattern.tolist()))]
        order = {pattern_name(1 << i, self.channel_names): i for i in range(C)}
        return sorted(names, key=lambda s: (order.get(s, C + s.count("+")), s)) + [GROUP_ORDER_LAST]

    # ------------------------------------------------------------------------------------- batches
    def sample_anchors(self, n: int, seed: int = 0) -> Batch:
        """About `n` training samples that have every channel, stratified by label (proportionally to
        each label's share among them, at least one per label), as one `Batch`."""
        lo = 0
        hi = self.split_bounds[0]
        full = (1 << len(self.channel_names)) - 1
        cand = np.flatnonzero(self.pattern[lo:hi] == full) + lo
        if not len(cand):
            cand = np.arange(lo, hi)  # no sample has every channel: anchors from all training samples
        rng = np.random.default_rng(seed)
        # stratum of a sample: one of its labels, drawn at random (multi-item events count once)
        lab = self.label_mat[cand]
        strata = np.array([rng.choice(np.flatnonzero(r)) if r.any() else -1 for r in lab])
        chosen = []
        uniq, cnt = np.unique(strata, return_counts=True)
        quota = np.maximum(1, np.round(n * cnt / cnt.sum()).astype(int))
        for s, q in zip(uniq, quota):
            members = cand[strata == s]
            chosen.append(rng.choice(members, size=min(q, len(members)), replace=False))
        idx = np.sort(np.concatenate(chosen))
        s = self.splits["train"]
        return self.collate(s.take(idx - lo), train=False)

    def collate(self, s: SampleSet, train: bool, seed: int = 0, epoch: int = 0) -> Batch:
        idx = s.items
        B = len(idx)
        start, end = self.tp_ptr[idx], self.tp_ptr[idx + 1]
        length = np.minimum(end - start, self.cfg.max_history)
        start = end - length  # the latest touchpoints
        T = max(int(length.max()) if B else 0, 1)
        mask = np.arange(T)[None, :] < length[:, None]
        pos = np.where(mask, start[:, None] + np.arange(T)[None, :], 0)
        ent = np.where(mask, self.tp_ent[np.minimum(pos, max(len(self.tp_ent) - 1, 0))] if len(self.tp_ent) else 0, 0)
        for name, flag in self.dropped.items():
            if name in self.channel_names:  # the touchpoints of that channel go, the rest move up
                gone = mask & flag[idx][:, None] & (self.ent_channel[ent] == self.channel_names.index(name) + 1)
                if gone.any():
                    keep = mask & ~gone
                    order = np.argsort(~keep, axis=1, kind="stable")
                    ent = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(ent, order, 1), 0)
                    mask = np.take_along_axis(keep, order, 1)
        tp = Touchpoints(channel=torch.from_numpy(np.where(mask, self.ent_channel[ent], 0)),
                         mask=torch.from_numpy(mask), available=torch.from_numpy(self.available[idx]))
        b_of, t_of = np.nonzero(mask)
        e_of = ent[b_of, t_of]
        V = len(self.token_vocab)

        def kept(name: str) -> np.ndarray:  # touchpoints whose `name` content survives drop_modality
            flag = self.dropped.get(name)
            return np.ones(len(e_of), bool) if flag is None else ~flag[idx][b_of]

        for name, (ptr, tok, has) in self.tokens.items():
            bag = np.zeros((B, T, V), np.float32)
            n_tok = np.where(kept(name), ptr[e_of + 1] - ptr[e_of], 0)
            rep = np.repeat(np.arange(len(e_of)), n_tok)
            within = np.arange(n_tok.sum()) - np.repeat(np.cumsum(n_tok) - n_tok, n_tok)
            bag[b_of[rep], t_of[rep], tok[ptr[e_of][rep] + within]] = 1.0
            pres = np.zeros((B, T), bool)
            pres[b_of, t_of] = has[e_of] & kept(name)
            tp.tokens[name] = torch.from_numpy(bag)
            tp.presence[name] = torch.from_numpy(pres)
        for name, (mat, row_of, weight) in self.vectors.items():
            r = row_of[e_of]
            ok = (r >= 0) & kept(name)
            vec = np.zeros((B, T, mat.shape[1]), np.float32)
            vec[b_of[ok], t_of[ok]] = mat[r[ok]]
            wt = np.zeros((B, T), np.float32)
            wt[b_of[ok], t_of[ok]] = weight[r[ok]]
            pres = np.zeros((B, T), bool)
            pres[b_of[ok], t_of[ok]] = True
            tp.vectors[name] = torch.from_numpy(vec)
            tp.weights[name] = torch.from_numpy(wt)
            tp.presence[name] = torch.from_numpy(pres)
        # the model's user ids are the pipeline's rows (0: a user no training sample has), as in every task;
        # `s.users` are rows of the event log's users
        users = torch.from_numpy(self.user_rows[s.users].astype(np.int64))
        return Batch(
            user=users, item=torch.zeros(B, dtype=torch.long),
            hist=torch.zeros((B, 0), dtype=torch.long), hist_mask=torch.zeros((B, 0), dtype=torch.bool),
            label=torch.from_numpy(self.label_mat[idx].astype(np.float32)),
            group=torch.from_numpy(self.pattern[idx]), touchpoints=tp,
        )

    # ------------------------------------------------------------------------------------- loss, eval
    def loss(self, output, batch: Batch) -> torch.Tensor:
        logits, weight, aux = unpack_output(output)
        per = F.binary_cross_entropy_with_logits(logits.float(), batch.label, reduction="none").mean(1)
        if weight is None:
            total = per.mean()
        else:
            w = weight.float()
            wsum = w.sum()
            total = torch.where(wsum > 0, (per * w).sum() / wsum.clamp(min=1e-12), (per * w).sum())
        if aux is not None:
            total = total + aux
        return total

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, split: str, batch_size: int, device="cpu") -> np.ndarray:
        """(n, n_labels) logits of a split, in sample order."""
        model.eval()
        outs = [unpack_output(model(b.to(device)))[0].float().cpu() for b in self.batches(split, batch_size)]
        return torch.cat(outs).numpy() if outs else np.zeros((0, len(self.labels)), np.float32)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str, batch_size: int, device="cpu") -> tuple[dict, dict]:
        model.eval()
        s = self.splits[split]
        acc = TopKAccumulator(ks=tuple(self.ks))
        loss_sum, n = 0.0, 0
        bs = max(1, min(batch_size, 1024))
        for start in range(0, len(s), bs):
            part = s.take(np.arange(start, min(start + bs, len(s))))
            batch = self.collate(part, train=False)
            logits = unpack_output(model(batch.to(device)))[0].float().cpu()
            label = batch.label
            loss_sum += float(F.binary_cross_entropy_with_logits(logits, label, reduction="sum")) / label.shape[1]
            n += len(part)
            k = max(int(label.sum(1).max()), 1) if len(part) else 1
            # label indices of the bought items, padded with -1
            order = torch.argsort(label, dim=1, descending=True, stable=True)[:, :k]
            targets = torch.where(label.gather(1, order) > 0, order, torch.full_like(order, -1))
            names = [pattern_name(int(p), self.channel_names) for p in part.groups]
            acc.add(logits, targets, ~batch.touchpoints.available, groups=names)
        res = acc.result()
        overall = dict(res)
        res.pop("n", None)
        res["loss"] = loss_sum / max(n, 1)
        groups = acc.result_by_group()
        groups[GROUP_ORDER_LAST] = overall
        return res, groups


def _times(events: pa.Table) -> np.ndarray:
    t = events["time"]
    if pa.types.is_timestamp(t.type):
        t = pc.cast(pc.cast(t, pa.timestamp("s")), pa.int64())
    return t.to_numpy(zero_copy_only=False).astype(np.int64)
