"""`Batch`: one dataclass of named tensors, and the collate that builds it.

The collate joins the item side table at batch time, for the target AND every history position,
so no sample row ever repeats item content: memory grows with the number of items, not samples.
Histories are not materialised per sample either: each user's events are kept once, in time order
(`History`, a CSR layout), and a sample only stores how many of them happened strictly before it.

History layout: chronological, left-aligned, padded with item 0 at the end; `hist_mask` is True on
real positions. Index 0 is the padding / unknown id of every vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass
class Batch:
    user: Tensor  # (B,) long
    item: Tensor  # (B,) long: target item (ctr) or held-out next item (topk eval)
    hist: Tensor  # (B, L) long, 0 = padding
    hist_mask: Tensor  # (B, L) bool
    item_side: dict[str, Tensor] = field(default_factory=dict)  # target features: (B,), (B,K) or (B,D)
    hist_side: dict[str, Tensor] = field(default_factory=dict)  # history features: (B,L), (B,L,K), (B,L,D)
    presence: dict[str, Tensor] = field(default_factory=dict)  # modality -> (B,) bool for the target
    hist_presence: dict[str, Tensor] = field(default_factory=dict)  # modality -> (B,L) bool
    hist_time: Tensor | None = None  # (B, L) seconds between the history event and the sample
    # (B, L) long: the action tag of each history event, its channel's code (`Schema.history_tags`: a watch, a
    # gift, a like), 0 = padding; None when the task does not tag its history (`task.history_channel_tags`)
    hist_tag: Tensor | None = None
    label: Tensor | None = None  # (B,) float for ctr; (B, n_labels) for multilabel
    group: Tensor | None = None  # (B,) long: the user, for gAUC/UAUC
    targets: Tensor | None = None  # (B, L) next-item ids for sequence training (topk), 0 = none
    candidates: Tensor | None = None  # (B, L, C) or (B, C) item ids to score; None = all items
    # The distinct items of the batch (targets and history) with their side features, once each;
    # item_pos / hist_pos index into them. Encoders compute one vector per distinct item and gather,
    # instead of re-encoding the same item at every history position it occupies.
    uniq: Tensor | None = None  # (U,) long
    # also holds the token tables of multi-valued content: name -> (U, T, dim) float32 and
    # name + ":mask" -> (U, T) bool (they exist only here, never per target or history position)
    uniq_side: dict[str, Tensor] = field(default_factory=dict)
    uniq_presence: dict[str, Tensor] = field(default_factory=dict)
    item_pos: Tensor | None = None  # (B,) long: row of each target in `uniq`
    hist_pos: Tensor | None = None  # (B, L) long: row of each history position in `uniq`
    extra: dict[str, Tensor] = field(default_factory=dict)
    # ctr: categorical features of the sample itself (`task.context_features`, e.g. an item's popularity
    # level at impression time): name -> (B,) long codes, 0 = empty or unknown (`Schema.context_categorical`)
    context: dict[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.user.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        def mv(v):
            if isinstance(v, Tensor):
                return v.to(device, non_blocking=True)
            if isinstance(v, dict):
                return {k: mv(x) for k, x in v.items()}
            return v

        return Batch(**{f.name: mv(getattr(self, f.name)) for f in fields(self)})


@dataclass
class ItemSide:
    """Item side table, one row per item index (row 0 = padding), joined at batch time.

    `categorical`: (n,) int64; `multi`: (n, K) int64 padded with 0; `dense`: (n, D) float (may be a
    float16 memmap); `presence`: (n,) bool per dense modality (False = modality absent).
    `tokens`: (n, T, dim) float16 per multi-valued vector modality, one token per value (the first T),
    left-aligned, with `token_mask` (n, T) bool marking the real tokens; an absent modality is an
    all-False row."""

    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    multi: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    presence: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    token_mask: dict[str, np.ndarray] = field(default_factory=dict)

    def gather(self, idx: np.ndarray, dense: bool = True,
               tokens: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Side features of the items `idx` (any shape). `dense=False` leaves the content vectors out
        (history positions read them through the batch's distinct items instead). `tokens=True` adds the
        token tables as `name` (*idx, T, dim) float32 and `name:mask` (*idx, T) bool: the collate asks for
        them on the distinct items only, where one copy per item is all a model needs."""
        out: dict[str, Tensor] = {}
        for name, arr in self.categorical.items():
            out[name] = torch.from_numpy(arr[idx])
        for name, arr in self.multi.items():
            out[name] = torch.from_numpy(arr[idx])
        pres: dict[str, Tensor] = {}
        if dense:
            for name, arr in self.dense.items():
                out[name] = torch.from_numpy(np.asarray(arr[idx], dtype=np.float32))
            pres = {name: torch.from_numpy(arr[idx]) for name, arr in self.presence.items()}
        if tokens:
            for name, arr in self.tokens.items():
                # numpy gathers the float16 rows, torch widens them: numpy's own float16 -> float32 cast
                # is about 6x slower, and this is the largest copy of a live-stream batch
                out[name] = torch.from_numpy(np.ascontiguousarray(arr[idx])).float()
                out[f"{name}:mask"] = torch.from_numpy(np.ascontiguousarray(self.token_mask[name][idx]))
        return out, pres


@dataclass
class History:
    """Every user's events in time order, stored once (CSR): items[ptr[u]:ptr[u+1]], with optional action
    tags (the code of each event's channel, 1..n) in the same order."""

    ptr: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # (n_events,) int64
    times: np.ndarray  # (n_events,) int64
    tags: np.ndarray | None = None  # (n_events,) int64, >= 1; None: untagged

    @classmethod
    def build(cls, users: np.ndarray, items: np.ndarray, times: np.ndarray, n_users: int,
              tags: np.ndarray | None = None) -> History:
        order = np.lexsort((times, users))  # stable: events of one user at one second keep their given order
        counts = np.bincount(users, minlength=n_users)
        ptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        return cls(ptr, items[order].astype(np.int64), times[order].astype(np.int64),
                   None if tags is None else tags[order].astype(np.int64))

    def cut_before(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """For each (user, time): how many of the user's events happened strictly before `time`.

        The leakage guard of every task: a sample's history never holds an event at or after the
        sample's own time (ties included), so same-second batch imports cannot leak."""
        out = np.empty(len(users), dtype=np.int64)
        order = np.argsort(users, kind="stable")
        u_sorted = users[order]
        bounds = np.searchsorted(u_sorted, np.arange(len(self.ptr)), side="left")
        for u in np.flatnonzero(np.diff(bounds)):  # loop over distinct users, searchsorted is vectorised
            sel = order[bounds[u] : bounds[u + 1]]
            lo, hi = self.ptr[u], self.ptr[u + 1]
            out[sel] = np.searchsorted(self.times[lo:hi], times[sel], side="left")
        return out

    def window(self, users: np.ndarray, cut: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last `max_len` events before each cut: (items (B,L), mask (B,L), event positions (B,L))."""
        length = np.minimum(cut, max_len)
        start = self.ptr[users] + cut - length
        pos = start[:, None] + np.arange(max_len)[None, :]
        mask = np.arange(max_len)[None, :] < length[:, None]
        pos = np.where(mask, pos, 0)
        items = np.where(mask, self.items[pos] if len(self.items) else 0, 0)
        return items, mask, pos


@dataclass
class Collator:
    """Builds a `Batch` from sample indices: joins history and item side tables at batch time."""

    history: History
    item_side: ItemSide
    max_history: int
    with_time: bool = False
    # token tables of multi-valued content: the targets always get theirs (`item_side[name]`, (B, T, dim));
    # "all" also joins them on every distinct item (`uniq_side`), "target" leaves the history without them
    # (a model that fuses only the watched segment's content then never pays for U x T x dim copies)
    token_scope: str = "all"
    # False leaves the targets' token tables out too: for a serving model that memoises each segment's fused
    # content and loads the tables itself for the few segments it has not fused yet (MMBee.cache_content)
    target_tokens: bool = True

    def __call__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        cut: np.ndarray,
        times: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> Batch:
        b = len(items)
        # One shared sequence (a service request: one user's history against C candidates at one time):
        # the history is windowed, gathered and deduplicated ONCE and every (B, L, ...) history tensor is a
        # stride-0 view of that row (`torch.expand`), identical in value to B copies. ItemEncoder.encode and
        # the serving attention fast path see the zero stride and do the per-history work once.
        shared = (b > 1 and bool((users == users[0]).all()) and bool((cut == cut[0]).all())
                  and (times is None or bool((times == times[0]).all())))
        rows = 1 if shared else b
        hist, mask, pos = self.history.window(users[:rows], cut[:rows], self.max_history)
        tgt_side, tgt_pres = self.item_side.gather(items, tokens=self.target_tokens)
        # history: ids and small categorical features per position; content vectors only per
        # distinct item (a (B, L, D) float copy would dominate memory and time for text embeddings)
        h_side, _ = self.item_side.gather(hist, dense=False)
        uniq, inv = np.unique(np.concatenate([items, hist.ravel()]), return_inverse=True)
        u_side, u_pres = self.item_side.gather(uniq, tokens=self.token_scope == "all")
        h_pres = {name: torch.from_numpy(arr[hist]) for name, arr in self.item_side.presence.items()}
        hist_time = None
        if self.with_time and times is not None:
            dt = times[:rows, None] - self.history.times[pos]
            hist_time = torch.from_numpy(np.where(mask, dt, 0).astype(np.float32))
        hist_tag = None
        if self.history.tags is not None:
            hist_tag = torch.from_numpy(np.where(mask, self.history.tags[pos] if len(self.history.tags) else 0, 0))

        def rows_of(t: Tensor) -> Tensor:
            return t.expand(b, *t.shape[1:]) if shared else t

        u = torch.from_numpy(users.astype(np.int64))
        return Batch(
            user=u,
            item=torch.from_numpy(items.astype(np.int64)),
            hist=rows_of(torch.from_numpy(hist)),
            hist_mask=rows_of(torch.from_numpy(mask)),
            item_side=tgt_side,
            hist_side={k: rows_of(v) for k, v in h_side.items()},
            presence=tgt_pres,
            hist_presence={k: rows_of(v) for k, v in h_pres.items()},
            hist_time=None if hist_time is None else rows_of(hist_time),
            hist_tag=None if hist_tag is None else rows_of(hist_tag),
            label=None if labels is None else torch.from_numpy(labels.astype(np.float32)),
            group=u,
            uniq=torch.from_numpy(uniq.astype(np.int64)),
            uniq_side=u_side,
            uniq_presence=u_pres,
            item_pos=torch.from_numpy(inv[:b].astype(np.int64)),
            hist_pos=rows_of(torch.from_numpy(inv[b:].reshape(hist.shape).astype(np.int64))),
        )
