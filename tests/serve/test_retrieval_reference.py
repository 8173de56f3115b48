"""`Retriever.retrieve` takes its rows with array operations; it must give exactly the candidates, in the same
order, of the rule written one row at a time (the reference below, the service's earlier code), with registered
items, deleted ones (tombstones) and items without a vector; `ItemIds.ids_of` names rows as `id_of` does."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from modalrec.serve.bundle import load_bundle
from modalrec.serve.schemas import NewItem
from modalrec.serve.scoring import Scorer
from modalrec.serve.state import open_state
from tests.serve.helpers import raw_item


def reference_retrieve(r, query_items: np.ndarray, n: int, exclude: set[int]) -> tuple[np.ndarray, int]:
    """The retrieval rule one row at a time (see serve/retrieval.py's module doc)."""
    b, reg = r.bundle, r.registry
    out: list[int] = []
    seen = set(exclude) | {0}
    n = min(n, r.n_items - 1 + len(reg.ids.extra))
    m = len(reg.ids.extra_ids)
    live = reg.alive.extra[:m] if m else None
    group = reg.group
    if group is not None and len(query_items):
        codes = set(group[query_items[-r.history_len:]].tolist()) - {0}
        if codes:
            same = b.popular[np.isin(group[b.popular], list(codes))]
            if m:
                new = np.flatnonzero(np.isin(group.extra[:m], list(codes)) & live)
                same = np.concatenate([new[np.argsort(-reg.born.extra[:m][new], kind="stable")] + r.n_items, same])
            for item in same[: max(1, n // 4)].tolist():
                if item not in seen:
                    out.append(int(item))
                    seen.add(int(item))
    n_ann = 0
    vectors = reg.vectors
    if b.index is not None and vectors is not None and len(query_items):
        recent = query_items[-r.history_len:]
        q = (vectors[recent] * (0.9 ** np.arange(len(recent))[::-1])[:, None]).sum(0)
        norm = np.linalg.norm(q)
        if norm > 0:
            want = n - n // 4
            q = (q / norm).astype(np.float32)
            sims, ids = b.index.search(q[None, :], min(b.index.ntotal, want + len(seen)))
            found = [(float(s), int(i) + 1) for s, i in zip(sims[0], ids[0], strict=True) if i >= 0]
            if m and reg.has_vector is not None:
                similarity = vectors.extra[:m] @ q
                similarity[~(reg.has_vector.extra[:m] & live)] = -np.inf
                top = min(m, want + len(seen))
                best = np.argpartition(-similarity, top - 1)[:top] if top < m else np.arange(m)
                found += [(float(similarity[j]), r.n_items + int(j)) for j in best if np.isfinite(similarity[j])]
                found.sort(key=lambda x: -x[0])
            for _, item in found:
                if item not in seen:
                    out.append(item)
                    seen.add(item)
                    if len(out) >= want:
                        break
            n_ann = len(out)
    n_ann = max(n_ann, len(out))
    for item in b.popular:
        if len(out) >= n:
            break
        if int(item) not in seen:
            out.append(int(item))
            seen.add(int(item))
    return np.array(out, dtype=np.int64), n_ann


def test_retrieve_equals_the_row_by_row_rule(din_served, tmp_path):
    bundle = load_bundle(din_served["bundle"])
    scorer = Scorer(bundle, open_state(f"sqlite:///{tmp_path / 's.sqlite'}"), item_sync_s=None)
    reg, r = scorer.registry, scorer.retriever
    rng = np.random.default_rng(0)
    known = [f"i{j}" for j in range(0, 60, 3)]
    items = []
    for j in range(60):  # copies of bundle items (their groups and vectors), every fourth without its content
        raw = raw_item(din_served, known[j % len(known)], f"new-{j}")
        if j % 4 == 0:
            raw = {k: v for k, v in raw.items() if k in ("id", "categorical")}
        items.append(NewItem(**raw))
    counts, errors = reg.register(items)
    assert not errors and counts["registered"] == 60
    assert set(reg.delete([f"new-{j}" for j in range(0, 60, 7)]).values()) == {"deleted"}
    n_rows = len(reg.ids)
    alive = np.flatnonzero(np.asarray(reg.alive[np.arange(n_rows)], dtype=bool))
    checked = 0
    for _ in range(400):
        query = rng.choice(alive[alive > 0], int(rng.integers(0, 25)))
        n = int(rng.choice([1, 2, 3, 7, 20, 50, 200]))
        exclude = set(rng.integers(0, n_rows, int(rng.integers(0, 12))).tolist())
        if len(query) and rng.random() < 0.5:
            exclude |= set(query[-3:].tolist())
        want, want_ann = reference_retrieve(r, query, n, set(exclude))
        got, got_ann = r.retrieve(query, n, set(exclude))
        assert got.dtype == np.int64 and got.tolist() == want.tolist() and got_ann == want_ann, (n, query, exclude)
        checked += len(want) > 0
    assert checked > 300
    rows = np.r_[0, np.arange(1, n_rows), n_rows, n_rows + 5]
    ids = reg.ids
    assert ids.ids_of(rows) == [bundle.pipeline.items.id_of(int(i)) if i < ids.n_base else ids.extra_ids[i - ids.n_base]
                                if i < n_rows else None for i in rows]
    assert [ids.id_of(int(i)) for i in rows] == ids.ids_of(rows)
    assert reg.ids.ids_of(rows)[:2] == [None, bundle.pipeline.items.ids[0]] and reg.ids.ids_of([n_rows]) == [None]
