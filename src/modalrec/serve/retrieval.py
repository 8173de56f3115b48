"""Candidate retrieval: the items a request's ranker scores.

A quarter of the candidates come from the groups of the user's recent items (items sharing the first item
categorical feature: a video's creator, a movie's category; registered items of those groups first,
latest first, then the bundle's most popular ones), then the nearest items to the recent items' weighted mean
vector (the bundle's faiss index and an exact search over the registered items' vectors, merged by
similarity), then popular items. A user without history gets popular items.

Among given rows (`retrieve_among`: the registered items of the live rooms): all of them when they are at most
`n`; else those of the groups of the user's recent items first (latest first), then the nearest to the recent items'
mean vector, then the latest registered.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.base import Model, Schema

# Flat exact search up to this many items (a few ms at 1M x 64 would already be too slow); HNSW above.
FLAT_INDEX_MAX_ITEMS = 200_000


@torch.no_grad()
def retrieval_vectors(model: Model, table, n_items: int, chunk: int = 4096) -> tuple[np.ndarray | None, str]:
    """One retrieval vector per item row, and where it comes from: the model's own item representation where
    it has one (`Model.item_representation`: id, side features and content, so items with similar content sit close),
    else an item id embedding of the model, else the first dense content modality; None when there is nothing
    to retrieve with."""
    model.eval()
    probe, pres = table.gather(np.zeros(1, np.int64))
    if model.item_representation(torch.zeros(1, dtype=torch.long), probe, pres) is not None:
        parts = []
        for start in range(0, n_items, chunk):
            ids = np.arange(start, min(start + chunk, n_items))
            feats, pres = table.gather(ids)
            parts.append(model.item_representation(torch.from_numpy(ids), feats, pres).float().numpy())
        return np.concatenate(parts), "item_encoder"
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding) and m.num_embeddings == n_items and m.embedding_dim >= 8:
            return m.weight.detach().float().numpy().copy(), f"embedding:{name}"
    for name, arr in table.dense.items():
        vec = np.asarray(arr, dtype=np.float32).copy()
        vec[~table.presence.get(name, np.ones(n_items, dtype=bool))] = 0.0
        return vec, f"content:{name}"
    return None, "none"


def normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(vectors.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.where(norm > 0, v / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def build_index(vectors: np.ndarray):
    """Inner-product index over rows 1..n-1 of L2-normalised vectors (cosine similarity)."""
    import faiss

    d = vectors.shape[1]
    body = np.ascontiguousarray(vectors[1:])
    if len(body) <= FLAT_INDEX_MAX_ITEMS:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    index.add(body)
    return index


def popularity_order(schema: Schema) -> np.ndarray:
    counts = schema.item_counts if schema.item_counts is not None else np.zeros(schema.n_items)
    score = np.asarray(counts, dtype=np.float64).copy()
    if schema.item_positive_rate is not None and schema.task == "ctr":
        score = score * np.asarray(schema.item_positive_rate, dtype=np.float64)  # expected positives
    order = np.lexsort((np.arange(len(score)), -score))
    return order[order != 0].astype(np.int64)


class Retriever:
    """Candidates over the bundle's items and the items registered since (`registry`: their tables)."""

    def __init__(self, bundle, registry, history_len: int = 20):
        self.bundle = bundle
        self.registry = registry
        self.history_len = history_len
        self.n_items = bundle.n_items
        self._by_group: dict[int, np.ndarray] | None = None  # group code -> popularity ranks of its bundle rows

    def retrieve(self, query_items: np.ndarray, n: int, exclude: set[int]) -> tuple[np.ndarray, int]:
        """Up to `n` candidates (see the module doc); returns (candidates, how many came from the user's
        history: group + ANN). Called under the registry's read lock. Each step takes the rows it adds with array
        operations (`_fresh`) rather than a Python loop per row."""
        b, reg = self.bundle, self.registry
        parts: list[np.ndarray] = []
        seen = np.union1d(np.fromiter(exclude, np.int64, len(exclude)), [0])  # sorted, for `_fresh`
        n = min(n, self.n_items - 1 + len(reg.ids.extra))
        m = len(reg.ids.extra_ids)  # appended rows, tombstones (deleted items: alive False) included
        live = reg.alive.extra[:m] if m else None
        group = reg.group
        if group is not None and len(query_items):
            codes = set(group[query_items[-self.history_len:]].tolist()) - {0}
            if codes:
                first = max(1, n // 4)
                same = self._popular_of_groups(group, codes, first)
                if m:
                    new = np.flatnonzero(np.isin(group.extra[:m], list(codes)) & live)
                    new = new[np.argsort(-reg.born.extra[:m][new], kind="stable")] + self.n_items  # latest first
                    same = np.concatenate([new, same])
                seen = self._take(parts, seen, same[:first], len(same))
        n_out = sum(len(p) for p in parts)
        n_ann = 0
        vectors = reg.vectors
        if b.index is not None and vectors is not None and len(query_items):
            recent = query_items[-self.history_len:]
            w = 0.9 ** np.arange(len(recent))[::-1]  # the latest items weigh most
            q = (vectors[recent] * w[:, None]).sum(0)
            norm = np.linalg.norm(q)
            if norm > 0:
                want = n - n // 4  # a quarter stays for popular items: exploration beyond the history's neighbours
                q = (q / norm).astype(np.float32)
                k = min(b.index.ntotal, want + len(seen))
                sims, ids = b.index.search(q[None, :], k)
                hit = ids[0] >= 0
                found, found_sim = ids[0][hit].astype(np.int64) + 1, sims[0][hit].astype(np.float64)
                if m and reg.has_vector is not None:
                    similarity = vectors.extra[:m] @ q
                    similarity[~(reg.has_vector.extra[:m] & live)] = -np.inf
                    top = min(m, want + len(seen))
                    best = np.argpartition(-similarity, top - 1)[:top] if top < m else np.arange(m)
                    best = best[np.isfinite(similarity[best])]
                    found = np.concatenate([found, self.n_items + best.astype(np.int64)])
                    found_sim = np.concatenate([found_sim, similarity[best].astype(np.float64)])
                    found = found[np.argsort(-found_sim, kind="stable")]  # stable: the bundle's neighbours first on ties
                # the first new neighbour is taken even when the groups already gave `want` rows (n = 1)
                seen = self._take(parts, seen, found, max(1, want - n_out))
                n_out = n_ann = sum(len(p) for p in parts)
        n_ann = max(n_ann, n_out)
        if n_out < n:
            # the most popular rows not taken yet: among the first (n - n_out) + len(seen) at most len(seen) are taken
            self._take(parts, seen, b.popular[: n - n_out + len(seen)], n - n_out)
        out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return out.astype(np.int64, copy=False), n_ann

    @staticmethod
    def _fresh(rows: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """`rows` (distinct) not in `seen` (sorted), in their order."""
        if not len(rows):
            return rows
        at = np.searchsorted(seen, rows)
        at[at == len(seen)] = 0
        return rows[seen[at] != rows]

    def _take(self, parts: list[np.ndarray], seen: np.ndarray, rows: np.ndarray, limit: int) -> np.ndarray:
        """Appends to `parts` the first `limit` of `rows` not in `seen`; returns `seen` with them."""
        picked = self._fresh(np.asarray(rows, dtype=np.int64), seen)[:max(0, limit)]
        if len(picked):
            parts.append(picked)
            seen = np.sort(np.concatenate([seen, picked]))  # picked rows are distinct and not in seen
        return seen

    def _popular_of_groups(self, group, codes: set[int], first: int) -> np.ndarray:
        """The `first` most popular bundle rows whose group is in `codes`, most popular first. The bundle's rows and
        their groups never change: each group's rows in popularity order are indexed once."""
        if self._by_group is None:
            pop = self.bundle.popular
            g = np.asarray(group[pop])
            order = np.argsort(g, kind="stable")  # by group, popularity order within each
            codes_of, starts = np.unique(g[order], return_index=True)
            ends = np.r_[starts[1:], len(g)]
            self._by_group = {int(c): order[a:z] for c, a, z in zip(codes_of, starts, ends, strict=True)}
        pos = [self._by_group[c][:first] for c in codes if c in self._by_group]
        if not pos:
            return np.zeros(0, np.int64)
        return self.bundle.popular[np.sort(np.concatenate(pos))[:first]]

    def retrieve_among(self, query_items: np.ndarray, n: int, exclude: set[int],
                       rows: np.ndarray) -> tuple[np.ndarray, int]:
        """Up to `n` candidates among registered item `rows` (see the module doc); returns (candidates, how many
        came from the user's history: group + nearest). Called under the registry's read lock."""
        reg = self.registry
        rows = np.asarray(rows, dtype=np.int64)
        if exclude and len(rows):
            rows = rows[~np.isin(rows, np.fromiter(exclude, np.int64, len(exclude)))]
        if len(rows) <= n or not len(rows):
            return rows, 0
        # rows of the bundle among them: registered items it absorbed (`serve.members`), with its vectors
        born = reg.members.order(rows)
        picked: list[np.ndarray] = []
        left = np.ones(len(rows), dtype=bool)
        recent = query_items[-self.history_len:] if len(query_items) else query_items
        if reg.group is not None and len(recent):
            codes = list(set(reg.group[recent].tolist()) - {0})
            same = np.flatnonzero(np.isin(reg.group[rows], codes)) if codes else np.zeros(0, np.int64)
            same = same[np.argsort(-born[same], kind="stable")][: max(1, n // 4)]
            picked.append(same)
            left[same] = False
        n_hist = sum(len(p) for p in picked)
        if reg.vectors is not None and len(recent) and n_hist < n:
            w = 0.9 ** np.arange(len(recent))[::-1]
            q = (reg.vectors[recent] * w[:, None]).sum(0)
            norm = np.linalg.norm(q)
            if norm > 0:
                sim = reg.vectors[rows] @ (q / norm).astype(np.float32)
                sim[~(left & ((rows < self.n_items) | reg.has_vector[rows]))] = -np.inf
                near = np.argsort(-sim, kind="stable")[: n - n // 4 - n_hist]
                near = near[np.isfinite(sim[near])]
                picked.append(near)
                left[near] = False
        n_hist = sum(len(p) for p in picked)
        rest = np.flatnonzero(left)
        picked.append(rest[np.argsort(-born[rest], kind="stable")][: n - n_hist])
        return rows[np.concatenate(picked)], n_hist
