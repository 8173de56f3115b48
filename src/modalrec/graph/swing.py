"""The two graphs of GIE: the user->streamer gifting graph (U2A) and the streamer graph (A2A) by Swing.

MMBee (Deng et al., KDD 2024), section "Graph-guided Interest Expansion": the U2A graph links a
user to every streamer they sent gifts to; the A2A graph links streamers whose gifting audiences
overlap, scored by Swing (Yang et al., "Large Scale Product Graph Construction for Recommendation
in E-commerce", 2020)::

    sim(i, j) = sum over unordered user pairs {u, v}, u != v, both linked to i and to j, of
                w_u * w_v / (alpha + |I_u & I_v|),      w_u = (|I_u| + alpha_user) ** -beta

where I_u is the set of streamers user u gifted. beta = 0.5 is the square root of the paper's
formula; production implementations tune it, so it is a parameter. Swing reads the links only, not their weights: a pair of
users counts once whatever they spent, which is what makes it robust to a single big spender.

Cost and the production caps (documented deviations from the exact formula on the full graph):
the sum over user pairs is quadratic in a streamer's audience, so like production Swing the graph is
capped before scoring: each user keeps at most `max_items_per_user` streamers and then each streamer
at most `max_users_per_item` users. Both caps keep a deterministic pseudo-random sample (a keyed
64-bit hash of (user, streamer, seed), independent of the input order), so the result depends on the
graph and the seed only. Swing is then computed EXACTLY on the capped graph (the tests check it
against a brute-force reference): for streamer i with users U_i, B is the 0/1 matrix of those users
against the streamers at least two of them gifted (a streamer only one of them gifted adds nothing),
M = B B^T gives |I_u & I_v|, K = w w^T / (alpha + M) with a zero diagonal, and
sim(i, .) = 0.5 * colsum(B * (K B)). The cost is |U_i|^2 * (co-gifted streamers) per streamer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

WeightMode = Literal["count", "value", "binary"]


@dataclass(frozen=True)
class CSR:
    """A sparse matrix in compressed rows (numpy only): row r is indices/data[indptr[r]:indptr[r+1]].

    Column indices are sorted within a row unless a producer says otherwise (`topk_rows` orders by
    score)."""

    indptr: np.ndarray  # int64 (n_rows + 1,)
    indices: np.ndarray  # int64 (nnz,)
    data: np.ndarray  # float64 or float32 (nnz,)
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def degrees(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[r], self.indptr[r + 1]
        return self.indices[a:b], self.data[a:b]

    def rows_of_entries(self) -> np.ndarray:
        """The row of every stored entry (the COO row array)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.degrees())

    def transpose(self) -> CSR:
        return CSR.from_coo(self.indices, self.rows_of_entries(), self.data, self.n_cols, self.n_rows)

    @classmethod
    def from_coo(cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int) -> CSR:
        """Entries sorted by (row, col); duplicates summed."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        vals = np.asarray(vals)
        key = rows * n_cols + cols
        uniq, inv = np.unique(key, return_inverse=True)
        summed = np.bincount(inv, weights=vals, minlength=len(uniq)).astype(vals.dtype if vals.size else np.float64)
        r, c = np.divmod(uniq, n_cols)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
        return cls(indptr, c.astype(np.int64), summed, n_cols)


def gather_rows(csr: CSR, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of `rows` (in that order) as (position of the row in `rows`, column, value)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = csr.indptr[rows]
    lens = csr.indptr[rows + 1] - starts
    total = int(lens.sum())
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lens)
    first = np.cumsum(lens) - lens  # where each row's entries begin in the output
    pos = starts[owner] + (np.arange(total, dtype=np.int64) - first[owner])
    return owner, csr.indices[pos], csr.data[pos]


def topk_rows(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, k: int,
              n_cols: int) -> CSR:
    """Keep the k largest positive values of every row; ties go to the lower column index.

    Entries must be unique per (row, col). Rows come out ordered by score (best first)."""
    keep = vals > 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n_rows)
    start = np.cumsum(counts) - counts
    rank = np.arange(len(rows), dtype=np.int64) - start[rows]
    sel = rank < k
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.minimum(counts, k), out=indptr[1:])
    return CSR(indptr, cols[sel], vals[sel], n_cols)


def mix_hash(*parts: np.ndarray) -> np.ndarray:
    """A keyed 64-bit hash (splitmix64 finaliser) of integer arrays: the deterministic 'random' order
    used for sampling, independent of the order the input arrives in."""
    h = np.zeros(np.broadcast_shapes(*(np.shape(p) for p in parts)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for p in parts:
            h = h ^ np.asarray(p).astype(np.uint64)
            h = h + np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return h


def cap_groups(group: np.ndarray, priority: np.ndarray, cap: int) -> np.ndarray:
    """Boolean mask keeping, in every group, the `cap` entries of lowest priority."""
    order = np.lexsort((priority, group))
    g = group[order]
    new_group = np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, dtype=bool)
    first = np.maximum.accumulate(np.where(new_group, np.arange(len(g)), 0))  # start of each entry's group
    keep = np.zeros(len(group), dtype=bool)
    keep[order] = (np.arange(len(g)) - first) < cap
    return keep


@dataclass(frozen=True)
class U2AGraph:
    """Users x streamers gifting graph, 1-based indices (row/column 0 is padding and stays empty).

    `by_user` rows are users, `by_streamer` rows are streamers; `data` holds the edge weight after
    aggregation over the input triples (`mode`) and optional log1p scaling."""

    by_user: CSR
    by_streamer: CSR
    mode: WeightMode
    log_scale: bool

    @property
    def n_users(self) -> int:
        return self.by_user.n_rows

    @property
    def n_streamers(self) -> int:
        return self.by_streamer.n_rows

    @property
    def n_edges(self) -> int:
        return self.by_user.nnz

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, streamer, weight) of every edge, sorted by (user, streamer)."""
        return self.by_user.rows_of_entries(), self.by_user.indices, self.by_user.data


def build_u2a(users: np.ndarray, streamers: np.ndarray, weights: np.ndarray | None, n_users: int,
              n_streamers: int, mode: WeightMode = "count", log_scale: bool = True) -> U2AGraph:
    """The U2A graph from gift triples (one per gift or per (user, streamer) aggregate).

    mode "count": an edge weighs the number of triples of the pair (weights ignored; may be None);
    "value": the sum of their weights (e.g. gift price; pairs summing to 0 get no edge);
    "binary": 1 per pair. `log_scale` then applies log1p, so a whale's thousandth gift does not
    drown every other signal. Indices are 1-based (0 = padding); `n_*` count the padding row."""
    users = _index_array("users", users, n_users)
    streamers = _index_array("streamers", streamers, n_streamers)
    if len(users) != len(streamers):
        raise ValueError(f"users and streamers must have the same length, got {len(users)} and {len(streamers)}")
    if mode == "value":
        if weights is None:
            raise ValueError("weight mode 'value' needs weights (e.g. gift prices), got None")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(w) != len(users):
            raise ValueError(f"weights must have one value per triple ({len(users)}), got {len(w)}")
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"weights[{i}] = {float(w[i])!r}: expected a finite number >= 0 "
                             f"({int(bad.sum())} such value(s))")
    elif mode in ("count", "binary"):
        w = np.ones(len(users), dtype=np.float64)
    else:
        raise ValueError(f"weight mode must be 'count', 'value' or 'binary', got {mode!r}")
    g = CSR.from_coo(users, streamers, w, n_users, n_streamers)
    data = g.data
    if mode == "binary":
        data = np.ones_like(data)
    keep = data > 0
    if not keep.all():
        rows = g.rows_of_entries()[keep]
        g = CSR.from_coo(rows, g.indices[keep], data[keep], n_users, n_streamers)
        data = g.data
    if log_scale:
        data = np.log1p(data)
    by_user = CSR(g.indptr, g.indices, data, n_streamers)
    return U2AGraph(by_user, by_user.transpose(), mode, log_scale)


def _index_array(name: str, values: np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of indices, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got dtype {a.dtype}")
    a = a.astype(np.int64)
    bad = (a < 1) | (a >= n)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {int(a[i])}: expected an index in 1..{n - 1} (0 is padding; "
                         f"the vocabulary size {n} counts it), {int(bad.sum())} such value(s)")
    return a


def capped_edges(graph: U2AGraph, max_items_per_user: int, max_users_per_item: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (user, streamer) links Swing scores: the graph after the per-user, then the per-streamer
    cap, each keeping a hash-ordered sample (see the module doc)."""
    u, a, _ = graph.edges()
    prio = mix_hash(u, a, np.int64(seed))
    keep = cap_groups(u, prio, max_items_per_user)
    u, a, prio = u[keep], a[keep], prio[keep]
    keep = cap_groups(a, prio, max_users_per_item)
    return u[keep], a[keep]


def swing(graph: U2AGraph, k: int = 10, alpha: float = 1.0, alpha_user: float = 5.0, beta: float = 0.5,
          max_users_per_item: int = 200, max_items_per_user: int = 100, seed: int = 0,
          progress: bool = False) -> CSR:
    """The A2A graph: each streamer's top-k Swing neighbours (itself excluded), best first.

    Returns a (n_streamers x n_streamers) CSR whose data are the Swing scores (float64); streamers
    with fewer than two capped gifting users, or no co-gifted streamer, have empty rows."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if alpha < 0 or alpha_user < 0 or beta < 0:
        raise ValueError(f"alpha, alpha_user and beta must be >= 0, got {alpha}, {alpha_user}, {beta}")
    n_u, n_s = graph.n_users, graph.n_streamers
    u, a = capped_edges(graph, max_items_per_user, max_users_per_item, seed)
    ones = np.ones(len(u), dtype=np.float64)
    by_user = CSR.from_coo(u, a, ones, n_u, n_s)
    by_item = by_user.transpose()
    deg_u = by_user.degrees().astype(np.float64)
    with np.errstate(divide="ignore"):
        w_user = np.where(deg_u > 0, (deg_u + alpha_user) ** -beta, 0.0)
    out_rows: list[np.ndarray] = []
    out_cols: list[np.ndarray] = []
    out_vals: list[np.ndarray] = []
    items = np.flatnonzero(by_item.degrees() >= 2)
    for i in tqdm(items, desc="swing", unit="streamer", disable=not progress, mininterval=1.0):
        users_i = by_item.row(int(i))[0]
        owner, cols, _ = gather_rows(by_user, users_i)
        uniq, inv = np.unique(cols, return_inverse=True)
        shared = np.bincount(inv, minlength=len(uniq)) >= 2  # a streamer only one of them gifted adds nothing
        if shared.sum() < 2:  # only i itself is shared
            continue
        remap = np.cumsum(shared) - 1
        sel = shared[inv]
        b = np.zeros((len(users_i), int(shared.sum())), dtype=np.float64)
        b[owner[sel], remap[inv[sel]]] = 1.0
        wu = w_user[users_i]
        kern = np.outer(wu, wu) / (alpha + b @ b.T)  # finite for alpha = 0: u and v share at least i
        np.fill_diagonal(kern, 0.0)
        score = 0.5 * np.einsum("uj,uj->j", b, kern @ b)
        cand = uniq[shared]
        not_self = cand != i
        out_rows.append(np.full(int(not_self.sum()), i, dtype=np.int64))
        out_cols.append(cand[not_self])
        out_vals.append(score[not_self])
    if not out_rows:
        return CSR(np.zeros(n_s + 1, dtype=np.int64), np.zeros(0, np.int64), np.zeros(0), n_s)
    return topk_rows(np.concatenate(out_rows), np.concatenate(out_cols), np.concatenate(out_vals), n_s, k, n_s)
