"""Helpers shared by tests of several packages (plain functions, not tests): the toy interaction data most
tests train on, and a split's samples by raw ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from modalrec.data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec


def make_data(seed: int = 0, n_users: int = 30, n_items: int = 40, n_events: int = 1500,
              n_likes: int = 100) -> InteractionData:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    items = rng.integers(0, n_items, n_events)
    # coarse times so that many events of a user share a timestamp (the leakage guard must handle ties)
    times = rng.integers(0, 60, n_events) * 100
    labels = rng.integers(0, 2, n_events).astype(np.float64)
    events = pa.table({
        "user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items],
        "time": pa.array(times, pa.int64()), "label": labels,
        "channel": ["click"] * (n_events - n_likes) + ["like"] * n_likes,
    })
    items_t = pa.table({
        "item_id": [f"i{i}" for i in range(n_items)],
        "genres": [[f"g{i % 3}", f"g{(i + 1) % 5}"] for i in range(n_items)],
        "brand": [f"b{i % 4}" for i in range(n_items)],
    })
    text = pa.table({"entity_id": [f"i{i}" for i in range(0, n_items, 2)],
                     "text": [f"word{i % 5} shared words here" for i in range(0, n_items, 2)]})
    vec_ids = [f"i{i}" for i in range(0, n_items, 3)]
    vec = pa.table({"entity_id": vec_ids, "vector": [list(rng.normal(size=4).astype(np.float32)) for _ in vec_ids]})
    spec = DatasetSpec(
        name="toy", channels=["click", "like"],
        item_features=[FeatureSpec(name="genres", kind="multi_categorical"),
                       FeatureSpec(name="brand", kind="categorical")],
        modalities=[ModalitySpec(name="text", kind="text"), ModalitySpec(name="emb", kind="vector", dim=4)],
    )
    return InteractionData(spec, events, items_t, None, {"text": text, "emb": vec}).validate()


def split_samples(task, split: str) -> set[tuple]:
    """Every sample of a split by raw ids: (user, item, time, cut, label, context codes)."""
    s = task.splits[split]
    users = task.log_users.take(np.asarray(s.users)).to_pylist()
    items = [task.item_vocab.id_of(int(i)) for i in s.items]
    ctx = [tuple(int(v) for v in row) for row in zip(*[np.asarray(c) for c in s.context.values()])] or [()] * len(s)
    return set(zip(users, items, np.asarray(s.times).tolist(), np.asarray(s.cut).tolist(),
                   np.asarray(s.labels).tolist(), ctx))
