"""The events and items tables of the insurance mapping (see the package doc), built from the structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from .layout import NO_ITEM, TIME_STRIDE
from .structure import InsuranceStructure


def _events(st: InsuranceStructure, is_conv: np.ndarray) -> pa.Table:
    u, p = st.users, st.purchases
    pid = u["purchase_event_id"].to_numpy(np.int64)
    conv = u["conversation_id"].fillna(0).to_numpy(np.int64)
    sess = u["session_id"].fillna(0).to_numpy(np.int64)
    touch_id = np.where(is_conv, np.char.add("c", conv.astype(str)), np.char.add("s", sess.astype(str)))
    owner = st.event_users()
    p_pid = p["purchase_event_id"].to_numpy(np.int64)
    n_t, n_p = len(u), len(p)
    frame = pd.DataFrame({
        "user_id": np.r_[u["user_id"].to_numpy(np.int64), owner.loc[p_pid].to_numpy(np.int64)].astype(str),
        "item_id": np.r_[np.full(n_t, NO_ITEM, dtype=object), p["item_id"].to_numpy(np.int64).astype(str)],
        "time": np.r_[pid * TIME_STRIDE + u["event_number"].to_numpy(np.int64),
                      p_pid * TIME_STRIDE + TIME_STRIDE - 1],
        "channel": np.r_[np.where(is_conv, "conversation", "session"), np.full(n_p, "purchase")],
        "event_id": np.r_[touch_id.astype(object), np.char.add("p", p_pid.astype(str)).astype(object)],
        "purchase_event_id": np.r_[pid, p_pid],
        "event_number": pd.arrays.IntegerArray(np.r_[u["event_number"].to_numpy(np.int64), np.zeros(n_p, np.int64)],
                                               np.r_[np.zeros(n_t, bool), np.ones(n_p, bool)]),
    })
    tiebreak = np.r_[np.zeros(n_t, np.int64), p["item_id"].to_numpy(np.int64)]
    frame = frame.iloc[np.lexsort((tiebreak, frame["time"].to_numpy()))]
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("time", pa.int64()),
                        ("channel", pa.string()), ("event_id", pa.string()), ("purchase_event_id", pa.int64()),
                        ("event_number", pa.int64())])
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def _items(st: InsuranceStructure, avail_items: np.ndarray, sim: dict | None) -> pa.Table:
    ids = set(st.purchases["item_id"].tolist()) | set(avail_items.tolist())
    names: dict[str, str] = {}
    if sim is not None:
        for k, v in (sim.get("items") or {}).items():
            names[str(k)] = v.get("name") if isinstance(v, dict) else str(v)
            if str(k).lstrip("-").isdigit():
                ids.add(int(k))
    item_ids = [str(i) for i in sorted(ids)]
    return pa.table({
        "item_id": pa.array(item_ids + [NO_ITEM], pa.string()),
        "name": pa.array([names.get(i) for i in item_ids] + [None], pa.string()),
        "is_product": pa.array([True] * len(item_ids) + [False], pa.bool_()),
    })

