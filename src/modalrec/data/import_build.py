"""Assembling the `InteractionData` of an import from its checked columns, bad rows left out.

`build` takes what `modalrec.data.importer` read and converted: per events file `(source, table, columns)`,
per side file (items, users) `(table, columns)` and per content entry `(source, (table, ids, values,
present))`, and keeps the rows that are not bad: the events with their channel, label, value, event id and
`keep` columns; the item/user features; the joined item/user text; one content table per modality.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from .import_spec import ImportSpec
from .interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec


def build(spec: ImportSpec, events: list, entities: dict, contents: list) -> InteractionData:
    """The `InteractionData` of the good rows (see the module docstring for the arguments)."""
    frames = []
    keep_cols: list[str] = []
    for src in spec.events:
        for c in src.keep:
            if c not in keep_cols:
                keep_cols.append(c)
    has_label = any(s.label for s in spec.events)
    has_value = any(s.value for s in spec.events)
    has_eid = any(s.event_id for s in spec.events)
    time_float = any(ev["time"].dtype.kind == "f" for _, _, ev in events)
    channels: list[str] = []
    for _, t, ev in events:
        good = ~t.bad
        n = int(good.sum())
        cols: dict[str, pa.Array] = {
            "user_id": pa.array(ev["user_id"][good], pa.string()),
            "item_id": pa.array(ev["item_id"][good], pa.string()),
            "time": pa.array(ev["time"][good], pa.float64() if time_float else pa.int64()),
            "channel": pa.array(ev["channel"][good], pa.string()),
        }
        if has_label:
            cols["label"] = pa.array(ev["label"][good] if "label" in ev else np.full(n, np.nan),
                                     pa.float64(), from_pandas=True)
        if has_value:
            cols["value"] = pa.array(ev["value"][good] if "value" in ev else np.full(n, np.nan), pa.float64())
        if has_eid:
            cols["event_id"] = pa.array(ev["event_id"][good] if "event_id" in ev else [None] * n, pa.string())
        for c in keep_cols:
            cols[c] = pa.array(ev[c][good] if c in ev else [None] * n, pa.string())
        for ch in pd.unique(ev["channel"][good]):
            if ch not in channels:
                channels.append(ch)
        frames.append(pa.table(cols))
    ev_table = pa.concat_tables(frames)

    side: dict[str, pa.Table | None] = {}
    features: dict[str, list[FeatureSpec]] = {"item": [], "user": []}
    modalities: list[ModalitySpec] = []
    content: dict[str, pa.Table] = {}
    for name, key, src in (("item", "item_id", spec.items), ("user", "user_id", spec.users)):
        ent = entities[name]
        if ent is None:
            side[name] = None
            continue
        t, cols = ent
        good = ~t.bad
        idx = pa.array(np.flatnonzero(good))
        out = {}
        for col, values in cols.items():
            if col == "__text__":
                continue
            arr = values if isinstance(values, pa.Array) else pa.array(
                values, pa.string() if values.dtype == object else pa.float64())
            out[col] = arr.take(idx)
        side[name] = pa.table(out)
        features[name] = ([FeatureSpec(name=c, kind="categorical") for c in src.categorical]
                          + [FeatureSpec(name=c, kind="multi_categorical") for c in src.multi_categorical]
                          + [FeatureSpec(name=c, kind="numeric") for c in src.numeric])
        if "__text__" in cols:
            mname = "text" if name == "item" else "user_text"
            text = cols["__text__"]
            sel = good & (text != "")
            content[mname] = pa.table({"entity_id": pa.array(cols[key][sel], pa.string()),
                                       "text": pa.array(text[sel], pa.string())})
            modalities.append(ModalitySpec(name=mname, entity=name, kind="text",
                                           description="joined from columns " + ", ".join(src.text)))

    for c, got in contents:
        t, ids, values, present = got
        sel = np.flatnonzero(~t.bad & present)
        ent_ids = pa.array(ids[sel], pa.string())
        dim = None
        if c.kind in ("text", "image", "audio"):
            col = "text" if c.kind == "text" else "path"
            arr = pa.array([values[i] for i in sel], pa.string())
        elif c.kind == "tokens":
            col = "tokens"
            arr = pa.array([values[i] for i in sel], pa.list_(pa.int64()))
        else:
            col = "vector"
            vecs = [values[i] for i in sel]
            dim = len(vecs[0]) if vecs else c.dim
            arr = pa.array(vecs, pa.list_(pa.float32()))
        content[c.name] = pa.table({"entity_id": ent_ids, col: arr})
        modalities.append(ModalitySpec(name=c.name, entity=c.entity, kind=c.kind, dim=dim,
                                       description=c.description))

    ds = DatasetSpec(
        name=spec.name, description=spec.description, semi_synthetic=False,
        channels=channels or ["default"], item_features=features["item"], user_features=features["user"],
        modalities=modalities, event_columns=keep_cols, source=spec.source, citation=spec.citation,
        time_range=[float(spec.time_range.rule().min_s), float(spec.time_range.rule().max_s)],
    )
    return InteractionData(ds, ev_table, side["item"], side["user"], content)
