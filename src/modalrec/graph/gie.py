"""Graph-guided interest expansion (GIE), the offline part: one object that builds, holds and serves it.

MMBee (Deng et al., KDD 2024), section "Graph-guided Interest Expansion": gifting is too sparse for
a user's own gift history to describe them, so the history is expanded along metapaths of the
gifting graphs, computed offline and looked up at serving time:

- U->A->A (per user): the streamers the user gifted, expanded through their A2A Swing neighbours;
  score(u, b) = sum_a P(a | u) * P(b | a), P(a | u) = the user's gift weight on a over their total,
  P(b | a) = a's Swing score to b over its row total (a two-step random walk). `exclude_gifted`
  drops streamers the user already gifted (pure exploration); by default they stay, since a gifted
  streamer that is also similar to the user's other streamers is the strongest evidence there is.
- A->U->A (per streamer): streamers co-gifted by the streamer's gifting audience;
  score(a, b) = sum_u P(u | a) * P(b | u), P(u | a) = u's weight on a over a's total, P(b | u) =
  u's weight on b over u's total; a itself is excluded.

Each row keeps the top K (`expansion_length`) targets by score (ties: lower index first), padded
with index 0 / weight 0; a user or streamer without gifts (cold) gets an all-padding row. Next to the
sequences, GraphCL pre-training (`graphcl.py`) gives user and streamer embeddings the ranker can
start from (`graph_init`). `GraphExpansion.fit` takes gift triples of the TRAINING period only (the
caller's duty: a test-period gift in the graph would leak the label).

Indices are 1-based with 0 = padding, as every modalrec vocabulary: users in the task's user
vocabulary, streamers in the code space of the item categorical feature `streamer_id`; `n_users`
and `n_streamers` count the padding row. Stored as safetensors + JSON (never pickle).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..data.errors import DataError, Problem
from ..train.checkpoint import _atomic_write_bytes
from .graphcl import GraphCLParams, pretrain_graphcl
from .swing import CSR, U2AGraph, build_u2a, gather_rows, swing, topk_rows

FORMAT = "modalrec.gie"
VERSION = 1
TENSORS_FILE = "gie.safetensors"
META_FILE = "gie.json"


class GIEConfig(BaseModel):
    """Every knob of the offline GIE pipeline (graphs, Swing, metapath expansion, GraphCL)."""

    model_config = ConfigDict(extra="forbid")
    # U2A graph
    weight_mode: Literal["count", "value", "binary"] = Field(
        "count", description="U2A edge weight: number of gifts, sum of the given weights (price), or 1")
    log_scale: bool = Field(True, description="log1p of the U2A edge weight")
    # A2A graph (Swing)
    k_neighbours: int = Field(10, ge=1, description="Swing neighbours kept per streamer")
    swing_alpha: float = Field(1.0, ge=0, description="Swing: alpha in 1 / (alpha + |I_u & I_v|)")
    swing_alpha_user: float = Field(5.0, ge=0, description="Swing: user weight (|I_u| + alpha_user) ** -beta")
    swing_beta: float = Field(0.5, ge=0, description="Swing: exponent of the user weight")
    max_users_per_streamer: int = Field(200, ge=2, description="Swing cap: users sampled per streamer")
    max_streamers_per_user: int = Field(100, ge=1, description="Swing cap: streamers sampled per user")
    # metapath expansion
    expansion_length: int = Field(20, ge=1, description="K: targets kept per user / streamer")
    exclude_gifted: bool = Field(False, description="U->A->A: drop streamers the user already gifted")
    as_of_time: bool = Field(
        True, description="U->A->A per sample from the user's gifts strictly BEFORE the sample (given gift times): "
        "a training sample never reads an expansion built from its own gift, which would leak the label into "
        "the features it is trained on. False: every sample reads the whole training period's expansion")
    as_of_time_snapshots: int | None = Field(
        None, ge=1, description="as_of_time: at most this many expansions per user, after evenly spaced gifts of "
        "theirs (the last after their last gift); a sample reads the latest one made strictly before it, so it "
        "never sees its own gift but may miss up to gifts/snapshots of the user's latest. Bounds the work and "
        "memory, which are quadratic in a user's gifts with one expansion per gift (null: one per gift, exact)")
    # GraphCL pre-training
    pretrain_epochs: int = Field(20, ge=0, description="GraphCL epochs; 0 = no embeddings")
    dim: int = Field(32, ge=1)
    layers: int = Field(2, ge=1, description="LightGCN propagation layers")
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(1024, ge=1, description="U2A edges per step")
    max_steps: int | None = Field(64, ge=1, description="GraphCL steps per epoch at most: on a larger graph the "
                                  "batch grows (each step propagates the whole graph, so the epoch stays linear in "
                                  "it); null: edges / batch_size steps")
    tau: float = Field(0.5, gt=0, description="InfoNCE temperature")
    edge_drop: float = Field(0.1, ge=0, lt=1, description="view augmentation: edge drop rate")
    node_mask: float = Field(0.1, ge=0, lt=1, description="view augmentation: node masking rate")
    cl_weight: float = Field(0.05, ge=0, description="weight of the contrastive loss next to BPR")
    cl_nodes: int = Field(1024, ge=2, description="users (and streamers) per step in the contrastive loss")
    l2: float = Field(1e-4, ge=0)
    a2a_weight: float = Field(1.0, ge=0, description="A2A edge weight in the pre-training graph (0: U2A only)")
    seed: int = 0
    progress: bool = True

    def graphcl(self) -> GraphCLParams:
        return GraphCLParams(dim=self.dim, layers=self.layers, epochs=self.pretrain_epochs, lr=self.lr,
                             batch_size=self.batch_size, max_steps=self.max_steps, tau=self.tau, edge_drop=self.edge_drop,
                             node_mask=self.node_mask, cl_weight=self.cl_weight, cl_nodes=self.cl_nodes, l2=self.l2,
                             a2a_weight=self.a2a_weight, seed=self.seed)


def _row_normalised(csr: CSR) -> CSR:
    total = np.bincount(csr.rows_of_entries(), weights=csr.data, minlength=csr.n_rows)
    rows = csr.rows_of_entries()
    return CSR(csr.indptr, csr.indices, csr.data / total[rows], csr.n_cols)


def _padded(csr: CSR, k: int) -> tuple[np.ndarray, np.ndarray]:
    seq = np.zeros((csr.n_rows, k), dtype=np.int64)
    w = np.zeros((csr.n_rows, k), dtype=np.float32)
    rows = csr.rows_of_entries()
    rank = np.arange(csr.nnz, dtype=np.int64) - csr.indptr[rows]
    seq[rows, rank] = csr.indices
    w[rows, rank] = csr.data
    return seq, w


def two_hop(first: CSR, second: CSR, k: int, *, exclude: CSR | None = None, exclude_source: bool = False,
            max_pairs: int = 4_000_000, desc: str = "expand", progress: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k targets of the walk source -first-> middle -second-> target, scored by the product of
    the two steps summed over middles. `exclude` drops (source, target) pairs stored in it;
    `exclude_source` drops target == source (sources and targets in one index space).

    Sources are processed in chunks of about `max_pairs` walk paths, so memory stays bounded.
    Returns (n_sources, k) int64 targets (0 = padding) and float32 scores."""
    n_src, n_tgt = first.n_rows, second.n_cols
    paths = np.bincount(first.rows_of_entries(), weights=second.degrees()[first.indices], minlength=n_src)
    seq = np.zeros((n_src, k), dtype=np.int64)
    w = np.zeros((n_src, k), dtype=np.float32)
    active = np.flatnonzero(paths > 0)
    if not len(active):
        return seq, w
    chunk_id = np.floor_divide(np.cumsum(paths[active]) - 1, max_pairs).astype(np.int64)
    bounds = np.r_[0, np.flatnonzero(np.diff(chunk_id)) + 1, len(active)]
    for c in tqdm(range(len(bounds) - 1), desc=desc, unit="chunk", disable=not progress):
        src = active[bounds[c]:bounds[c + 1]]
        own1, mid, p1 = gather_rows(first, src)
        own2, tgt, p2 = gather_rows(second, mid)
        local = own1[own2]
        score = p1[own2] * p2
        keep = np.ones(len(tgt), dtype=bool)
        if exclude_source:
            keep &= tgt != src[local]
        if exclude is not None:
            e_own, e_col, _ = gather_rows(exclude, src)
            keep &= ~np.isin(local * n_tgt + tgt, e_own * n_tgt + e_col)
        key = local[keep] * n_tgt + tgt[keep]
        uniq, inv = np.unique(key, return_inverse=True)
        total = np.bincount(inv, weights=score[keep], minlength=len(uniq))
        best = topk_rows(uniq // n_tgt, uniq % n_tgt, total, len(src), k, n_tgt)
        s, v = _padded(best, k)
        seq[src], w[src] = s, v
    return seq, w


# one expansion per gift with more (row, gift) entries than this warns (about 2.4 GB of entry arrays)
AS_OF_TIME_WARN_ENTRIES = 100_000_000


def expand_users(u2a: U2AGraph, a2a: CSR, k: int, exclude_gifted: bool = False,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """U->A->A: (n_users, k) streamer indices and scores (see the module doc)."""
    return two_hop(_row_normalised(u2a.by_user), _row_normalised(a2a), k,
                   exclude=u2a.by_user if exclude_gifted else None, desc="U->A->A", progress=progress)


def expand_streamers(u2a: U2AGraph, k: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A->U->A: (n_streamers, k) co-gifted streamer indices and scores (see the module doc)."""
    return two_hop(_row_normalised(u2a.by_streamer), _row_normalised(u2a.by_user), k, exclude_source=True,
                   desc="A->U->A", progress=progress)


@dataclass
class GraphExpansion:
    """The fitted GIE tables; `lookup` gives the batch fields gie_user, gie_user_w, gie_streamer,
    gie_streamer_w, and `graph_init` the pre-trained embeddings for `Schema.graph_init`."""

    cfg: GIEConfig
    user_seq: np.ndarray  # (n_users, K) int64
    user_w: np.ndarray  # (n_users, K) float32
    streamer_seq: np.ndarray  # (n_streamers, K) int64
    streamer_w: np.ndarray  # (n_streamers, K) float32
    user_emb: np.ndarray | None  # (n_users, d) float32; None when pretrain_epochs == 0
    streamer_emb: np.ndarray | None  # (n_streamers, d) float32
    a2a: CSR  # the Swing graph, best neighbour first
    stats: dict[str, Any] = field(default_factory=dict)
    # as-of-time U->A->A (cfg.as_of_time with gift times): per user the expansions after 0, 1, ... m of their
    # gifts in time order, rows prefix_ptr[u] .. prefix_ptr[u + 1] - 1 (row 0: all padding, users without
    # gifts); prefix_time[r] = the time of the gift that made row r (the first row of a user: int64 min)
    prefix_ptr: np.ndarray | None = None  # (n_users + 1,) int64
    prefix_time: np.ndarray | None = None  # (n_rows,) int64
    prefix_seq: np.ndarray | None = None  # (n_rows, K) int64
    prefix_w: np.ndarray | None = None  # (n_rows, K) float32

    @property
    def n_users(self) -> int:
        return len(self.user_seq)

    @property
    def n_streamers(self) -> int:
        return len(self.streamer_seq)

    @property
    def expansion_length(self) -> int:
        return self.user_seq.shape[1]

    # ------------------------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, users: np.ndarray, streamers: np.ndarray, weights: np.ndarray | None, n_users: int,
            n_streamers: int, cfg: GIEConfig | None = None, times: np.ndarray | None = None) -> GraphExpansion:
        """Build U2A, Swing A2A, both expansions and (unless pretrain_epochs == 0) the GraphCL embeddings
        from TRAINING-period gift triples (user index, streamer index, weight). With the gifts' `times` (and
        cfg.as_of_time) also the as-of-time U->A->A rows that `lookup(..., times=...)` reads."""
        cfg = cfg or GIEConfig()
        if n_users < 1 or n_streamers < 1:
            raise ValueError(f"n_users and n_streamers count the padding row, so they are >= 1; got "
                             f"{n_users} and {n_streamers}")
        timing: dict[str, float] = {}
        t = time.perf_counter()
        graph = build_u2a(users, streamers, weights, n_users, n_streamers, cfg.weight_mode, cfg.log_scale)
        timing["u2a_s"] = time.perf_counter() - t
        t = time.perf_counter()
        a2a = swing(graph, k=cfg.k_neighbours, alpha=cfg.swing_alpha, alpha_user=cfg.swing_alpha_user,
                    beta=cfg.swing_beta, max_users_per_item=cfg.max_users_per_streamer,
                    max_items_per_user=cfg.max_streamers_per_user, seed=cfg.seed, progress=cfg.progress)
        timing["swing_s"] = time.perf_counter() - t
        t = time.perf_counter()
        k = cfg.expansion_length
        user_seq, user_w = expand_users(graph, a2a, k, cfg.exclude_gifted, progress=cfg.progress)
        streamer_seq, streamer_w = expand_streamers(graph, k, progress=cfg.progress)
        timing["expansion_s"] = time.perf_counter() - t
        user_emb = streamer_emb = None
        history: list[dict] = []
        if cfg.pretrain_epochs > 0 and graph.n_edges:
            t = time.perf_counter()
            res = pretrain_graphcl(graph, a2a, cfg.graphcl(), progress=cfg.progress)
            user_emb, streamer_emb, history = res.user_emb, res.streamer_emb, res.history
            timing["graphcl_s"] = time.perf_counter() - t
        elif cfg.pretrain_epochs > 0:  # no gifts at all: nothing to learn, every node is cold
            user_emb = np.zeros((n_users, cfg.dim), dtype=np.float32)
            streamer_emb = np.zeros((n_streamers, cfg.dim), dtype=np.float32)
        stats = {
            "u2a_edges": graph.n_edges,
            "users_with_gifts": int((graph.by_user.degrees() > 0).sum()),
            "streamers_with_gifts": int((graph.by_streamer.degrees() > 0).sum()),
            "a2a_edges": a2a.nnz,
            "streamers_with_neighbours": int((a2a.degrees() > 0).sum()),
            "users_expanded": int((user_seq[:, 0] > 0).sum()),
            "streamers_expanded": int((streamer_seq[:, 0] > 0).sum()),
            "graphcl_history": history,
            "timing": timing,
        }
        out = cls(cfg, user_seq, user_w, streamer_seq, streamer_w, user_emb, streamer_emb, a2a, stats)
        if times is not None and cfg.as_of_time:
            t = time.perf_counter()
            out._fit_prefixes(np.asarray(users), np.asarray(streamers), weights, np.asarray(times))
            timing["as_of_time_s"] = time.perf_counter() - t
            stats["as_of_time_rows"] = len(out.prefix_time)
        return out

    def _fit_prefixes(self, users: np.ndarray, streamers: np.ndarray, weights: np.ndarray | None,
                      times: np.ndarray) -> None:
        """The U->A->A rows after prefixes of every user's gifts (time order), through the same U2A weighting and
        two-hop walk as the full expansion, so the last row of a user IS their full row. One row per gift, or
        (`as_of_time_snapshots` S) after gifts ceil(i m / S), i = 1..S, of a user with m > S gifts: row i holds
        the gifts of segments 1..i, each (segment, streamer)'s gifts summed first, so rows x entries stay
        S x (distinct streamers per segment) per user instead of m x m / 2."""
        cfg, k = self.cfg, self.expansion_length
        users = users.astype(np.int64)
        times = times.astype(np.int64)
        if len(times) != len(users):
            raise ValueError(f"times must have one value per gift ({len(users)}), got {len(times)}")
        order = np.lexsort((times, users))
        u_s, s_s, t_s = users[order], streamers.astype(np.int64)[order], times[order]
        if cfg.weight_mode == "value":
            w_s = np.asarray(weights, dtype=np.float64).reshape(-1)[order]
        else:  # "count" (a row's edge weighs its gifts) and "binary" (build_u2a sets 1)
            w_s = np.ones(len(u_s), dtype=np.float64)
        m = np.bincount(u_s, minlength=self.n_users)  # gifts per user
        snaps = m if cfg.as_of_time_snapshots is None else np.minimum(m, cfg.as_of_time_snapshots)
        rows_per_user = np.where(m > 0, snaps + 1, 0)  # "before any gift", then one row per snapshot
        ptr = np.ones(self.n_users + 1, dtype=np.int64)  # global row 0 is the all-padding row
        np.cumsum(rows_per_user, out=ptr[1:])
        ptr[1:] += 1
        n_rows = int(ptr[-1])
        prefix_time = np.full(n_rows, np.iinfo(np.int64).min, dtype=np.int64)
        # gift g (1-based, time order) of user u is first in snapshot seg = floor((g - 1) S_u / m_u) + 1 (with
        # S_u = m_u: g); the snapshot's row (ptr[u] + seg) dates from its segment's last gift
        starts = np.r_[0, np.cumsum(m)[:-1]]
        g = np.arange(len(u_s), dtype=np.int64) - starts[u_s] + 1
        seg = (g - 1) * snaps[u_s] // np.maximum(m[u_s], 1) + 1
        closes = np.r_[(seg[1:] != seg[:-1]) | (u_s[1:] != u_s[:-1]), True] if len(seg) else np.zeros(0, bool)
        prefix_time[ptr[u_s[closes]] + seg[closes]] = t_s[closes]
        if (snaps < m).any():  # several gifts per segment: one entry per (user, segment, streamer)
            key = np.lexsort((s_s, seg, u_s))
            u_s, seg, s_s, w_s = u_s[key], seg[key], s_s[key], w_s[key]
            first = np.r_[True, (u_s[1:] != u_s[:-1]) | (seg[1:] != seg[:-1]) | (s_s[1:] != s_s[:-1])]
            at = np.flatnonzero(first)
            w_s = np.add.reduceat(w_s, at) if len(at) else w_s
            u_s, seg, s_s = u_s[at], seg[at], s_s[at]
        # entries: segment seg's (streamer, weight) belongs to rows seg, seg + 1, ..., S_u of its user
        reps = snaps[u_s] - seg + 1
        if cfg.as_of_time_snapshots is None and int(reps.sum()) > AS_OF_TIME_WARN_ENTRIES:
            warnings.warn(f"gie.as_of_time: {int(reps.sum()):,} (row, gift) entries for {len(u_s):,} gifts (one "
                          f"expansion per gift is quadratic in a user's gifts; up to {int(m.max()):,} here): set "
                          "task.graph.gie.as_of_time_snapshots (e.g. 32) to bound it", stacklevel=3)
        first_row = ptr[u_s] + seg
        e_rows = np.repeat(first_row, reps) + (np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps))
        e_streamers = np.repeat(s_s, reps)
        e_weights = np.repeat(w_s, reps)
        mode = "binary" if cfg.weight_mode == "binary" else "value"  # the summed counts or values, as given
        graph = build_u2a(e_rows, e_streamers, e_weights, n_rows, self.n_streamers, mode, cfg.log_scale)
        seq, w = two_hop(_row_normalised(graph.by_user), _row_normalised(self.a2a), k,
                         exclude=graph.by_user if cfg.exclude_gifted else None, desc="U->A->A as of time")
        self.prefix_ptr, self.prefix_time, self.prefix_seq, self.prefix_w = ptr, prefix_time, seq, w

    def _prefix_keys(self) -> tuple[int, int, np.ndarray]:
        """(t0, span, keys): one sorted composite key owner * span + (time - t0 + 1) per row (a user's first
        row: + 0; row 0: -1), so one searchsorted finds every sample's row. Built once."""
        cached = getattr(self, "_keys", None)
        if cached is None:
            ptr, ptime = self.prefix_ptr, self.prefix_time
            none = np.iinfo(np.int64).min
            owner = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(ptr))
            real = ptime[ptime != none]
            t0 = int(real.min()) if len(real) else 0
            span = (int(real.max()) - t0 + 3) if len(real) else 3
            rel = np.where(ptime == none, 0, ptime - t0 + 1)
            cached = self._keys = (t0, span, np.concatenate([[-1], owner * span + rel[1:]]))
        return cached

    def _prefix_rows(self, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Row of each (user, time): the expansion of the user's gifts strictly before that time."""
        ptr = self.prefix_ptr
        start, end = ptr[u], ptr[u + 1]
        # within a user's rows [start, end) the gift times (rows start+1 ..) are sorted: count those < t
        row = np.zeros(len(u), dtype=np.int64)
        has = end > start
        if has.any():
            t0, span, keys = self._prefix_keys()
            q = u[has] * span + np.clip(t[has] - t0 + 1, 1, span - 1)
            row[has] = np.searchsorted(keys, q, side="left") - 1
        return row

    # --------------------------------------------------------------------------------- lookup
    def lookup(self, user_idx: np.ndarray | torch.Tensor, streamer_idx: np.ndarray | torch.Tensor,
               times: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Batch fields for users `user_idx` and TARGET streamers `streamer_idx` (any equal-or-not
        shapes S1, S2): gie_user (*S1, K) long, gie_user_w (*S1, K) float, gie_streamer (*S2, K)
        long, gie_streamer_w (*S2, K) float. Index 0 (padding / unknown) gives an all-padding row.
        `times` (*S1) (with as-of-time rows fitted): each user's expansion from their gifts strictly before
        that time; a time after the training period gives the full row."""
        u = _indices("user_idx", user_idx, self.n_users)
        s = _indices("streamer_idx", streamer_idx, self.n_streamers)
        if times is not None and self.prefix_ptr is not None:
            t = np.asarray(times, dtype=np.int64)
            if t.shape != u.shape:
                raise ValueError(f"times of shape {t.shape}; expected one per user index {u.shape}")
            rows = self._prefix_rows(u.reshape(-1), t.reshape(-1)).reshape(u.shape)
            user_seq, user_w = self.prefix_seq[rows], self.prefix_w[rows]
        else:
            user_seq, user_w = self.user_seq[u], self.user_w[u]
        return {
            "gie_user": torch.from_numpy(user_seq),
            "gie_user_w": torch.from_numpy(user_w),
            "gie_streamer": torch.from_numpy(self.streamer_seq[s]),
            "gie_streamer_w": torch.from_numpy(self.streamer_w[s]),
        }

    def graph_init(self) -> dict[str, np.ndarray]:
        """The pre-trained embeddings as `Schema.graph_init` carries them ({} without pre-training)."""
        if self.user_emb is None or self.streamer_emb is None:
            return {}
        return {"streamer": self.streamer_emb, "user": self.user_emb}

    # ---------------------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """`gie.safetensors` (tables, embeddings, Swing graph) and `gie.json` (config, sizes, stats),
        each written under a temporary name and renamed, the JSON last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "user_seq": self.user_seq, "user_w": self.user_w,
            "streamer_seq": self.streamer_seq, "streamer_w": self.streamer_w,
            "a2a_indptr": self.a2a.indptr, "a2a_indices": self.a2a.indices,
            "a2a_scores": self.a2a.data.astype(np.float64),
        }
        if self.user_emb is not None and self.streamer_emb is not None:
            tensors["user_emb"], tensors["streamer_emb"] = self.user_emb, self.streamer_emb
        if self.prefix_ptr is not None:
            tensors |= {"prefix_ptr": self.prefix_ptr, "prefix_time": self.prefix_time,
                        "prefix_seq": self.prefix_seq, "prefix_w": self.prefix_w}
        meta = {"format": FORMAT, "version": VERSION, "n_users": self.n_users, "n_streamers": self.n_streamers,
                "config": self.cfg.model_dump(mode="json"), "stats": self.stats}
        _atomic_write_bytes(directory / TENSORS_FILE,
                      lambda p: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(p)))
        _atomic_write_bytes(directory / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=1)))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GraphExpansion:
        directory = Path(directory)
        meta_file, tensor_file = directory / META_FILE, directory / TENSORS_FILE
        for f in (meta_file, tensor_file):
            if not f.is_file():
                raise DataError(Problem(str(f), None, None, "a file written by GraphExpansion.save", "no such file"))
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            raise DataError(Problem(str(meta_file), None, None, "JSON", str(e).splitlines()[0])) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise DataError(Problem(str(meta_file), None, "format", repr(FORMAT), repr(found)))
        if meta.get("version") != VERSION:
            raise DataError(Problem(str(meta_file), None, "version", str(VERSION), repr(meta.get("version"))))
        try:
            cfg = GIEConfig.model_validate(meta.get("config", {}))
        except ValidationError as e:
            raise DataError(Problem(str(meta_file), None, "config", "a valid GIEConfig",
                                    str(e).splitlines()[0])) from None
        try:
            t = load_file(str(tensor_file))
        except (OSError, SafetensorError) as e:
            raise DataError(Problem(str(tensor_file), None, None, "a safetensors file",
                                    str(e).splitlines()[0])) from None
        n_u, n_s, k = int(meta.get("n_users", -1)), int(meta.get("n_streamers", -1)), cfg.expansion_length
        want = {"user_seq": (n_u, k), "user_w": (n_u, k), "streamer_seq": (n_s, k), "streamer_w": (n_s, k),
                "a2a_indptr": (n_s + 1,)}
        if "user_emb" in t or "streamer_emb" in t:
            want |= {"user_emb": (n_u, cfg.dim), "streamer_emb": (n_s, cfg.dim)}
        for name, shape in want.items():
            if name not in t:
                raise DataError(Problem(str(tensor_file), None, name, f"a tensor of shape {shape}", "none"))
            if tuple(t[name].shape) != shape:
                raise DataError(Problem(str(tensor_file), None, name, f"shape {shape} (from {META_FILE})",
                                        f"shape {tuple(t[name].shape)}"))
        a2a = CSR(t["a2a_indptr"].astype(np.int64), t["a2a_indices"].astype(np.int64), t["a2a_scores"], n_s)
        prefix = [t.get(n) for n in ("prefix_ptr", "prefix_time", "prefix_seq", "prefix_w")]
        if any(x is not None for x in prefix):
            ptr, ptime, pseq, pw = prefix
            n_rows = None if ptime is None else len(ptime)
            ok = (all(x is not None for x in prefix) and ptr.shape == (n_u + 1,) and pseq.shape == (n_rows, k)
                  and pw.shape == (n_rows, k) and int(ptr[-1]) == n_rows)
            if not ok:
                raise DataError(Problem(str(tensor_file), None, "prefix_*", "prefix_ptr (n_users + 1), prefix_time "
                                        "(R), prefix_seq and prefix_w (R, K) with prefix_ptr[-1] == R", "other shapes"))
        return cls(cfg, t["user_seq"], t["user_w"], t["streamer_seq"], t["streamer_w"], t.get("user_emb"),
                   t.get("streamer_emb"), a2a, meta.get("stats", {}), *prefix)


@dataclass
class RefreshedExpansion:
    """GIE lookups for TRAINING samples from graphs refreshed over the training period, as a production
    graph is rebuilt every day from the days before: the training samples are cut by time into windows
    (`bounds`), and a sample in window i reads the Swing A2A graph and the A->U->A expansion fitted on the
    gifts strictly before the window's start (window 0: no graph at all), with the user's U->A->A as of the
    sample's own time (their gifts strictly before it) walked through that window's A2A. A sample at or
    after the last bound (validation, test, serving) reads `full`, the graph of the whole training period.

    Why: with one graph of the whole training period, a training sample's own gift is in the A2A graph and
    in the A->U->A expansion it reads (a first gift to a streamer with a small audience makes that streamer
    co-gifted with the user's other streamers), while no evaluated gift is in the graph it reads. The
    graph features then fit the training labels better than they predict test labels."""

    bounds: np.ndarray  # (N,) int64: window starts b_1 .. b_{N-1}, then the end of the training period
    windows: list[GraphExpansion]  # N graphs: window i is fitted on the gifts before bounds[i - 1] (window 0: none)
    full: GraphExpansion

    @classmethod
    def fit(cls, users: np.ndarray, streamers: np.ndarray, weights: np.ndarray | None, times: np.ndarray,
            bounds: np.ndarray, full: GraphExpansion) -> RefreshedExpansion:
        """`bounds`: the N - 1 window starts then the training period's end, ascending; the gift triples and
        `times` of the whole training period (those `full` was fitted on)."""
        bounds = np.asarray(bounds, dtype=np.int64).reshape(-1)
        times = np.asarray(times, dtype=np.int64).reshape(-1)
        if len(bounds) < 1 or (np.diff(bounds) < 0).any():
            raise ValueError(f"bounds must be ascending window starts then the period's end, got {bounds.tolist()}")
        if len(times) != len(users):
            raise ValueError(f"times must have one value per gift ({len(users)}), got {len(times)}")
        users, streamers = np.asarray(users, dtype=np.int64), np.asarray(streamers, dtype=np.int64)
        w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        cfg = full.cfg.model_copy(update={"pretrain_epochs": 0, "progress": False})
        windows = []
        starts = np.r_[np.iinfo(np.int64).min, bounds[:-1]]
        for start, end in tqdm(list(zip(starts, bounds)), desc="GIE graph refreshes", unit="graph",
                               disable=not full.cfg.progress):
            before = times < start
            g = GraphExpansion.fit(users[before], streamers[before], None if w is None else w[before],
                                   full.n_users, full.n_streamers, cfg)
            if cfg.as_of_time:
                upto = times < end
                g._fit_prefixes(users[upto], streamers[upto], None if w is None else w[upto], times[upto])
            windows.append(g)
        return cls(bounds, windows, full)

    def window_of(self, times: np.ndarray) -> np.ndarray:
        """The window of each time: 0 .. N - 1, or N (the full graph) at or after the period's end."""
        return np.searchsorted(self.bounds, np.asarray(times, dtype=np.int64), side="right")

    def lookup(self, user_idx: np.ndarray | torch.Tensor, streamer_idx: np.ndarray | torch.Tensor,
               times: np.ndarray) -> dict[str, torch.Tensor]:
        """`GraphExpansion.lookup` per sample from the graph of its window (one user, streamer and time each)."""
        u = _indices("user_idx", user_idx, self.full.n_users)
        s = _indices("streamer_idx", streamer_idx, self.full.n_streamers)
        t = np.asarray(times, dtype=np.int64)
        if not (u.shape == s.shape == t.shape):
            raise ValueError(f"user_idx {u.shape}, streamer_idx {s.shape} and times {t.shape}: expected one "
                             "shape (one user, streamer and time per sample)")
        win = self.window_of(t)
        graphs = [*self.windows, self.full]
        out = None
        for w in np.unique(win):
            sel = win == w
            part = graphs[w].lookup(u[sel], s[sel], times=t[sel])
            if out is None:
                out = {k: v.new_zeros((*u.shape, *v.shape[1:])) for k, v in part.items()}
            for k, v in part.items():
                out[k][torch.from_numpy(sel)] = v
        if out is None:  # no samples
            return self.full.lookup(u, s, times=t)
        return out


def _indices(name: str, idx: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    a = idx.detach().cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer indices, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    bad = (a < 0) | (a >= n)
    if bad.any():
        raise IndexError(f"{name}: index {int(a[bad].flat[0])} out of range 0..{n - 1} "
                         f"({int(bad.sum())} such value(s)); 0 is padding")
    return a




# ------------------------------------------------------------------------------------ online (serving)


def gift_totals(users: np.ndarray, streamers: np.ndarray, weights: np.ndarray | None, n_users: int,
                n_streamers: int, mode: str) -> CSR:
    """The U2A graph before its weighting: per (user, streamer) pair, the number of gifts (weight modes
    'count' and 'binary') or the sum of their weights ('value'); rows are users. `build_u2a` of these
    totals (as 'value' triples, or 'binary') is the graph `GraphExpansion.fit` builds from the triples,
    and a user's new gifts are added to their row (`OnlineExpansion`)."""
    if mode == "value":
        if weights is None:
            raise ValueError("weight mode 'value' needs weights (e.g. gift prices), got None")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
    else:
        w = np.ones(len(users), dtype=np.float64)
    return CSR.from_coo(users, streamers, w, n_users, n_streamers)


def u2a_of_totals(totals: CSR, mode: str, log_scale: bool) -> U2AGraph:
    """`build_u2a` over per-pair totals (`gift_totals`): the same edges and weights, to the bit, as
    `build_u2a` over the gift triples they sum."""
    return build_u2a(totals.rows_of_entries(), totals.indices, totals.data, totals.n_rows, totals.n_cols,
                     "binary" if mode == "binary" else "value", log_scale)


class OnlineExpansion:
    """U->A->A of one user recomputed at serving time: the user's training-period gift totals (the
    rows of `totals`) plus gifts the service received since, walked through the fitted A2A (Swing)
    graph with exactly `expand_users`' weighting, normalisation and top-K. The A2A graph itself stays
    as fitted (it describes the streamers' audiences, which one user's new gifts barely move).

    A user's row of `two_hop` depends only on that user's entries (in their order), so a user without
    new gifts gets their offline row bit for bit; `matches_offline` checks that for every user."""

    def __init__(self, expansion: GraphExpansion, totals: CSR):
        if totals.n_rows != expansion.n_users or totals.n_cols != expansion.n_streamers:
            raise ValueError(f"gift totals of shape ({totals.n_rows}, {totals.n_cols}); expected "
                             f"({expansion.n_users}, {expansion.n_streamers}) as the expansion")
        self.expansion = expansion
        self.totals = totals
        self.cfg = expansion.cfg
        self._second = _row_normalised(expansion.a2a)

    @property
    def n_streamers(self) -> int:
        return self.expansion.n_streamers

    def offline(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """The fitted (K,) row of a user index (0 or out of range: padding)."""
        e = self.expansion
        if 0 < user < e.n_users:
            return e.user_seq[user], e.user_w[user]
        return np.zeros(e.expansion_length, np.int64), np.zeros(e.expansion_length, np.float32)

    def expand(self, user: int, streamers: np.ndarray, amounts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K,) streamer codes and scores of user index `user` (0: a user unknown to the graph) after new
        gifts to `streamers` (codes; 0 = unknown, ignored) of `amounts` each (1 per gift, or its value
        with weight mode 'value'; negative or non-finite amounts count 0)."""
        t = self.totals
        s0, a0 = t.row(user) if 0 < user < t.n_rows else (np.zeros(0, np.int64), np.zeros(0))
        new_s = np.asarray(streamers, dtype=np.int64).reshape(-1)
        new_a = np.asarray(amounts, dtype=np.float64).reshape(-1)
        new_a = np.where(np.isfinite(new_a) & (new_a > 0), new_a, 0.0)
        ok = (new_s > 0) & (new_s < self.n_streamers)
        s = np.concatenate([s0, new_s[ok]])
        a = np.concatenate([a0.astype(np.float64), new_a[ok]])
        k = self.expansion.expansion_length
        if not len(s):
            return np.zeros(k, np.int64), np.zeros(k, np.float32)
        # a two-row graph: row 0 is the padding user, row 1 this one
        one = CSR.from_coo(np.ones(len(s), np.int64), s, a, 2, self.n_streamers)
        graph = u2a_of_totals(one, self.cfg.weight_mode, self.cfg.log_scale)
        seq, w = two_hop(_row_normalised(graph.by_user), self._second, k,
                         exclude=graph.by_user if self.cfg.exclude_gifted else None)
        return seq[1], w[1]

    def matches_offline(self) -> bool:
        """Whether the totals reproduce the fitted U->A->A table exactly (every user, no new gifts)."""
        graph = u2a_of_totals(self.totals, self.cfg.weight_mode, self.cfg.log_scale)
        seq, w = two_hop(_row_normalised(graph.by_user), self._second, self.expansion.expansion_length,
                         exclude=graph.by_user if self.cfg.exclude_gifted else None)
        return bool(np.array_equal(seq, self.expansion.user_seq) and np.array_equal(w, self.expansion.user_w))
