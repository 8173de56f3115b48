"""Behaviour histories: every user's events stored once, in time order (CSR), and the leakage rule.

Histories are not materialised per sample: a sample only stores how many of its user's events happened
strictly before it (`History.cut_before`), and the collate windows the last `max_history` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class History:
    """Every user's events in time order, stored once (CSR): items[ptr[u]:ptr[u+1]], with optional action
    tags (the code of each event's channel, 1..n) in the same order. `u` is the user's row in the event log
    (every user of the data, known to the model or not)."""

    ptr: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # (n_events,) int64: the item's row in the item vocabulary
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

    @classmethod
    def of_one(cls, items: np.ndarray, times: np.ndarray, tags: np.ndarray | None) -> History:
        """One user's sequence (row 0), chronological: a service request's history."""
        n = len(items)
        return cls(np.array([0, n], dtype=np.int64), items.astype(np.int64), times.astype(np.int64),
                   None if tags is None else tags.astype(np.int64))

    @property
    def n_users(self) -> int:
        return len(self.ptr) - 1

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

    def last(self, keep: int) -> History:
        """The last `keep` events of every user (what a ranker of that history length can read)."""
        counts = np.diff(self.ptr)
        kept = np.minimum(counts, keep)
        ptr = np.zeros_like(self.ptr)
        np.cumsum(kept, out=ptr[1:])
        starts = self.ptr[1:] - kept
        idx = np.repeat(starts, kept) + (np.arange(kept.sum()) - np.repeat(ptr[:-1], kept))
        return History(ptr, self.items[idx].copy(), self.times[idx].copy(),
                       None if self.tags is None else self.tags[idx].copy())

    def user(self, u: int, before: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One user's (items, times, tags), strictly before `before` when given; empty beyond the log."""
        if not 0 <= u < self.n_users:
            z = np.zeros(0, np.int64)
            return z, z, None if self.tags is None else z
        lo, hi = self.ptr[u], self.ptr[u + 1]
        if before is not None:
            hi = lo + int(np.searchsorted(self.times[lo:hi], before, side="left"))
        return self.items[lo:hi], self.times[lo:hi], None if self.tags is None else self.tags[lo:hi]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"ptr": self.ptr, "items": self.items, "times": self.times}
        if self.tags is not None:
            out["tags"] = self.tags
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> History:
        tags = a.get("tags")
        # copy=False: memory-mapped arrays stay mapped (a copy of 146M's history is 3.5 GB)
        return cls(a["ptr"].astype(np.int64, copy=False), a["items"].astype(np.int64, copy=False),
                   a["times"].astype(np.int64, copy=False), None if tags is None else tags.astype(np.int64, copy=False))
