"""The one batch builder: samples (or a service request) -> `Batch`.

Training, evaluation, `modalrec predict` and every service request build their batches here. The
collate windows each sample's history, joins the item side table for the targets and the batch's
DISTINCT items (history positions index into those), the user side table, the per-sample context codes
and the graph expansions, and emits only the fields the model declares it reads (`Model.inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.batch import Batch, GraphInputs
from .history import History
from .side import SideTable

# the Batch fields a collate can fill; a model declares the ones it reads (Model.inputs)
HIST_FIELDS = frozenset({"hist", "hist_mask", "hist_side", "hist_presence", "hist_time", "hist_tag", "uniq",
                         "uniq_side", "uniq_presence", "item_pos", "hist_pos"})


@dataclass
class Collator:
    """Builds a `Batch` from sample arrays: joins the history and the side tables at batch time.

    `users` are rows of `history` (the event log's users); `user_rows` maps them to the user vocabulary
    (the model's ids and the user side table; 0 = unknown). `inputs`: the model's declared inputs (None:
    every field). `token_scope`: "all" joins the token tables of multi-valued content on every distinct
    item, "target" on the targets only; `target_tokens=False` leaves the targets' tables out too (a serving
    model that memoises each item's fused content loads them itself)."""

    history: History
    item_table: SideTable
    max_history: int
    user_rows: np.ndarray | None = None
    user_table: SideTable | None = None
    with_time: bool = False
    token_scope: str = "all"
    target_tokens: bool = True
    inputs: frozenset[str] | None = None
    # rows of the item table beyond the model's id tables (items registered with the service) reach the
    # model as id 0; None: every row is a model id
    n_model_items: int | None = None

    def wants(self, name: str) -> bool:
        return self.inputs is None or name in self.inputs

    def __call__(self, users: np.ndarray, items: np.ndarray, cut: np.ndarray, times: np.ndarray | None = None,
                 labels: np.ndarray | None = None, user_rows: np.ndarray | None = None,
                 context: dict[str, np.ndarray] | None = None, graph: GraphInputs | None = None) -> Batch:
        b = len(items)
        rows_u = user_rows if user_rows is not None else (self.user_rows[users] if self.user_rows is not None
                                                          else users)
        # One history for every row (a service request: one user's history against C candidates at one time):
        # windowed, gathered and deduplicated ONCE; every (B, L, ...) history tensor is that row expanded
        shared = (b > 1 and bool((users == users[0]).all()) and bool((cut == cut[0]).all())
                  and (times is None or bool((times == times[0]).all())))
        rows = 1 if shared else b
        hist, mask, pos = self.history.window(users[:rows], cut[:rows], self.max_history)
        tgt_side, tgt_pres = self.item_table.gather(items, tokens=self.target_tokens)

        def rows_of(t: torch.Tensor) -> torch.Tensor:
            return t.expand(b, *t.shape[1:]) if shared else t

        batch = Batch(
            user=torch.from_numpy(np.asarray(rows_u, dtype=np.int64)),
            item=torch.from_numpy(items.astype(np.int64)),
            hist=rows_of(torch.from_numpy(hist)), hist_mask=rows_of(torch.from_numpy(mask)),
            item_side=tgt_side, presence=tgt_pres,
            label=None if labels is None else torch.from_numpy(labels.astype(np.float32)),
            shared_history=shared,
        )
        batch.group = torch.from_numpy(users.astype(np.int64))  # the event log's user: unknown users stay apart
        if self.wants("hist_side") or self.wants("hist_presence"):
            # ids and small categorical features per position; content vectors only per distinct item (a
            # (B, L, D) float copy would dominate memory and time for text embeddings)
            h_side, _ = self.item_table.gather(hist, dense=False)
            batch.hist_side = {k: rows_of(v) for k, v in h_side.items()}
            batch.hist_presence = {name: rows_of(torch.from_numpy(arr[hist]))
                                   for name, arr in self.item_table.presence.items()}
        if self.wants("uniq"):
            uniq, inv = np.unique(np.concatenate([items, hist.ravel()]), return_inverse=True)
            batch.uniq = torch.from_numpy(uniq.astype(np.int64))
            batch.uniq_side, batch.uniq_presence = self.item_table.gather(uniq, tokens=self.token_scope == "all")
            batch.item_pos = torch.from_numpy(inv[:b].astype(np.int64))
            batch.hist_pos = rows_of(torch.from_numpy(inv[b:].reshape(hist.shape).astype(np.int64)))
        if self.with_time and times is not None and self.wants("hist_time"):
            dt = times[:rows, None] - self.history.times[pos]
            batch.hist_time = rows_of(torch.from_numpy(np.where(mask, dt, 0).astype(np.float32)))
        if self.history.tags is not None and self.wants("hist_tag"):
            tags = self.history.tags[pos] if len(self.history.tags) else 0
            batch.hist_tag = rows_of(torch.from_numpy(np.where(mask, tags, 0)))
        if self.user_table and self.wants("user_side"):
            batch.user_side, batch.user_presence = self.user_table.gather(np.asarray(rows_u, dtype=np.int64))
        if context and self.wants("context"):
            batch.context = {name: torch.from_numpy(np.asarray(codes, dtype=np.int64)) for name, codes in context.items()}
        batch.graph = graph if self.wants("graph") else None
        if self.n_model_items is not None:
            self._to_model_ids(batch)
        return batch

    def _to_model_ids(self, batch: Batch) -> None:
        """Rows beyond the model's id tables (items registered after export) become id 0, unknown; their side
        features and content, gathered by row, stay theirs, and `target_rows` keeps the targets' rows."""
        n = self.n_model_items
        if bool((batch.item >= n).any()):
            batch.target_rows = batch.item
            batch.item = batch.item.masked_fill(batch.item >= n, 0)
        h = batch.hist
        if bool((h >= n).any()):
            batch.hist = h[:1].masked_fill(h[:1] >= n, 0).expand_as(h) if batch.shared_history else h.masked_fill(h >= n, 0)
        if batch.uniq is not None and bool((batch.uniq >= n).any()):
            batch.uniq = batch.uniq.masked_fill(batch.uniq >= n, 0)
