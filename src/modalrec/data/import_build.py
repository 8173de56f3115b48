"""Assembling what an import keeps: event tables chunk by chunk, the catalogue, the dataset spec.

`event_table` turns one chunk of one events file (its checked columns, `ev`, and the mask of its good rows) into
the events table's rows: the events with their channel, label, value, event id and `keep` columns, the same
columns for every file of the spec. `catalogue` takes per side file (items, users) `(table, columns)` and per
content entry `(source, (table, ids, values, present))` and keeps the good rows: the item/user features, the
joined item/user text, one content table per modality. `dataset_spec` writes the spec.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .import_spec import ImportSpec
from .interaction import DatasetSpec, FeatureSpec, ModalitySpec


def keep_columns(spec: ImportSpec) -> list[str]:
    out: list[str] = []
    for src in spec.events:
        for c in src.keep:
            if c not in out:
                out.append(c)
    return out


def event_table(spec: ImportSpec, ev: dict, good: np.ndarray) -> pa.Table:
    """The good rows of one chunk (`ev`: ids, channels and kept columns as Arrow strings, numbers as numpy
    arrays). `time` is int64, or float64 when some time of the chunk has a fraction (the writer makes the whole
    column float64 then, as `unify_time` does)."""
    n = int(good.sum())
    keep = pa.array(good)
    time = ev["time"][good]
    cols: dict[str, pa.Array] = {
        "user_id": ev["user_id"].filter(keep),
        "item_id": ev["item_id"].filter(keep),
        "time": pa.array(time, pa.float64() if time.dtype.kind == "f" else pa.int64()),
        "channel": ev["channel"].filter(keep),
    }
    if any(s.label for s in spec.events):
        cols["label"] = pa.array(ev["label"][good] if "label" in ev else np.full(n, np.nan),
                                 pa.float64(), from_pandas=True)
    if any(s.value for s in spec.events):
        cols["value"] = pa.array(ev["value"][good] if "value" in ev else np.full(n, np.nan), pa.float64())
    if any(s.event_id for s in spec.events):
        cols["event_id"] = ev["event_id"].filter(keep) if "event_id" in ev else pa.nulls(n, pa.string())
    for c in keep_columns(spec):
        cols[c] = ev[c].filter(keep) if c in ev else pa.nulls(n, pa.string())
    return pa.table(cols)


def new_channels(channels: list[str], table: pa.Table) -> None:
    """Adds the channels of a chunk's good rows (its event table) to `channels`, in the order they first
    appear."""
    for ch in pc.unique(table["channel"]).to_pylist():
        if ch not in channels:
            channels.append(ch)


def with_float_time(table: pa.Table) -> pa.Table:
    i = table.column_names.index("time")
    return table.set_column(i, "time", table["time"].cast(pa.float64()))


def unify_time(tables: list[pa.Table]) -> list[pa.Table]:
    """All int64 times, or all float64 when some table has float64 ones."""
    if any(t.schema.field("time").type == pa.float64() for t in tables):
        return [with_float_time(t) for t in tables]
    return tables


def catalogue(spec: ImportSpec, entities: dict, contents: list) -> tuple[dict, dict, list, dict]:
    """-> (side tables by entity, features by entity, modalities, content tables) of the good rows."""
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
            if isinstance(values, np.ndarray) and values.ndim == 2:
                dim = values.shape[1] if len(sel) else c.dim
                arr = vector_column(values if len(sel) == len(values) else values[sel])
            else:
                vecs = [values[i] for i in sel]
                dim = len(vecs[0]) if vecs else c.dim
                arr = pa.array(vecs, pa.list_(pa.float32()))
        content[c.name] = pa.table({"entity_id": ent_ids, col: arr})
        modalities.append(ModalitySpec(name=c.name, entity=c.entity, kind=c.kind, dim=dim,
                                       description=c.description))
    return side, features, modalities, content


def vector_column(mat: np.ndarray, rows_per_chunk: int = 1 << 20) -> pa.ChunkedArray:
    """A (rows, dim) float32 matrix as a list<float32> column without copying the values (chunks of rows, so the
    int32 offsets of a list array never overflow)."""
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    dim = mat.shape[1]
    chunks = []
    for a in range(0, len(mat), rows_per_chunk):
        part = mat[a:a + rows_per_chunk]
        offsets = pa.array(np.arange(0, (len(part) + 1) * dim, dim, dtype=np.int32))
        chunks.append(pa.ListArray.from_arrays(offsets, pa.array(part.reshape(-1))))
    return pa.chunked_array(chunks, pa.list_(pa.float32()))


def dataset_spec(spec: ImportSpec, channels: list[str], features: dict, modalities: list) -> DatasetSpec:
    rule = spec.time_range.rule()
    return DatasetSpec(
        name=spec.name, description=spec.description, semi_synthetic=False,
        channels=channels or ["default"], item_features=features["item"], user_features=features["user"],
        modalities=modalities, event_columns=keep_columns(spec), source=spec.source, citation=spec.citation,
        time_range=[float(rule.min_s), float(rule.max_s)],
    )
