"""`InteractionData`: the one typed value every dataset source and simulator produces.

Layout on disk (a directory):

    dataset.yaml          the `DatasetSpec` (pydantic), written last so a half-written dir is invalid
    events.parquet        user_id, item_id, time, channel [, label, value, event_id, ...]
    items.parquet         item_id + item side features (optional)
    users.parquet         user_id + user side features (optional)
    content/NAME.parquet  one table per modality: entity_id + one of text | path | vector | tokens

A missing modality is a missing row in its content table (the presence mask is derived from it),
never a zero vector pretending to be data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import DataError, Problem, rows_of

FeatureKind = Literal["categorical", "multi_categorical", "numeric", "text"]
ModalityKind = Literal["text", "image", "audio", "vector", "tokens"]
ENTITY_KEYS = {"item": "item_id", "user": "user_id", "event": "event_id"}
CONTENT_VALUE_COLUMN = {"text": "text", "image": "path", "audio": "path", "vector": "vector", "tokens": "tokens"}


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: FeatureKind


class ModalitySpec(BaseModel):
    """One content modality. `entity` says what it describes: an item, a user or a single event.

    `multi`: the entity carries a LIST of values instead of one (the frames of a live-stream segment, its
    viewer comments, one vector per frame). The value column is then a list type: list<string> for text,
    image and audio (paths), list<list<float>> of equal inner length `dim` for vector. Still one row per
    entity, and a row's list is never empty: an entity without any value has no row (a missing modality).
    Token modalities are already sequences and cannot be multi."""

    model_config = ConfigDict(extra="forbid")
    name: str
    entity: Literal["item", "user", "event"] = "item"
    kind: ModalityKind
    dim: int | None = None  # for kind == "vector"
    multi: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _multi_kind(self) -> ModalitySpec:
        if self.multi and self.kind == "tokens":
            raise ValueError(f"modality '{self.name}': kind 'tokens' is already a sequence per entity and "
                             "cannot be multi (use kind 'vector' with multi: true for several vectors per "
                             "entity)")
        return self


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    semi_synthetic: bool = False
    channels: list[str] = Field(default_factory=lambda: ["default"])
    item_features: list[FeatureSpec] = Field(default_factory=list)
    user_features: list[FeatureSpec] = Field(default_factory=list)
    modalities: list[ModalitySpec] = Field(default_factory=list)
    event_columns: list[str] = Field(default_factory=list, description="extra event columns kept as-is")
    time_range: list[float] | None = Field(
        None, min_length=2, max_length=2, description="[min, max] plausible event times in unix seconds (an import "
        "spec's time_range); None: the default range of modalrec.data.timerange. The service checks incoming "
        "events against the range of the data its bundle was trained on")
    source: str = ""
    citation: str = ""

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"dataset '{self.name}' has no modality '{name}' (has {[m.name for m in self.modalities]})")


def _as_string(table: pa.Table, column: str) -> pa.Table:
    if column in table.column_names and not pa.types.is_string(table.schema.field(column).type):
        col = table[column]
        if pa.types.is_floating(col.type):  # ids read as floats because of NaNs: 12.0 -> "12"
            col = pc.cast(col, pa.int64(), safe=False)
        table = table.set_column(table.column_names.index(column), column, pc.cast(col, pa.string()))
    return table


@dataclass
class InteractionData:
    spec: DatasetSpec
    events: pa.Table
    items: pa.Table | None = None
    users: pa.Table | None = None
    content: dict[str, pa.Table] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = _as_string(_as_string(self.events, "user_id"), "item_id")
        if "event_id" in self.events.column_names:
            self.events = _as_string(self.events, "event_id")
        if "channel" not in self.events.column_names:
            self.events = self.events.append_column(
                "channel", pa.array([self.spec.channels[0]] * self.events.num_rows, pa.string())
            )
        if self.items is not None:
            self.items = _as_string(self.items, "item_id")
        if self.users is not None:
            self.users = _as_string(self.users, "user_id")
        self.content = {k: _as_string(v, "entity_id") for k, v in self.content.items()}

    # ------------------------------------------------------------------ partitions
    # one partition: the events table (`data.partitioned.PartitionedData` has many, read one at a time)
    n_partitions = 1

    def partition(self, i: int = 0, columns: list[str] | None = None) -> pa.Table:
        return self.events if columns is None else self.events.select(columns)

    def partitions(self, columns: list[str] | None = None):
        yield self.partition(0, columns)

    # ------------------------------------------------------------------ summary
    @property
    def num_events(self) -> int:
        return self.events.num_rows

    def presence(self, modality: str, entity_ids: pa.Array | list[str]) -> np.ndarray:
        """Boolean mask: which of `entity_ids` have content for `modality`."""
        table = self.content.get(modality)
        ids = pa.array(entity_ids, pa.string()) if not isinstance(entity_ids, pa.Array) else entity_ids
        if table is None:
            return np.zeros(len(ids), dtype=bool)
        return pc.is_in(ids, value_set=table["entity_id"]).to_numpy(zero_copy_only=False)

    def summary(self) -> dict:
        ev = self.events
        out = {
            "name": self.spec.name,
            "events": ev.num_rows,
            "users": pc.count_distinct(ev["user_id"]).as_py(),
            "items": pc.count_distinct(ev["item_id"]).as_py(),  # items with events
            "channels": {
                str(r["values"]): int(r["counts"]) for r in pc.value_counts(ev["channel"]).to_pylist()
            },
            "modalities": {k: v.num_rows for k, v in self.content.items()},
        }
        # the side tables may list more (items never interacted with, users without events)
        if self.items is not None:
            out["items_in_table"] = self.items.num_rows
        if self.users is not None:
            out["users_in_table"] = self.users.num_rows
        if self.spec.semi_synthetic:
            out["semi_synthetic"] = True
        return out

    def fingerprint(self) -> str:
        """Content hash of the tables (stable across processes): used in run manifests.

        Depends on values and types only, not on chunking, slicing, schema metadata or the name of a
        list's child field (Parquet writes "element", Arrow builds "item"), so a table and
        its save/load copy hash alike: each table is re-cut into fixed-size record batches and streamed
        through the Arrow IPC writer (which writes sliced arrays compactly) into the hash."""
        import hashlib

        h = hashlib.sha256()
        h.update(self.spec.model_dump_json().encode())
        tables = [("events", self.events), ("items", self.items), ("users", self.users)]
        tables += sorted(self.content.items(), key=lambda kv: kv[0])
        for name, t in tables:
            if t is None:
                continue
            h.update(name.encode())
            t = t.replace_schema_metadata(None)
            t = t.cast(pa.schema([f.with_type(_canonical_type(f.type)) for f in t.schema]))
            h.update(str(t.schema).encode())
            h.update(str(t.num_rows).encode())
            data_hash, null_hash = hashlib.sha256(), hashlib.sha256()
            with pa.ipc.new_stream(pa.PythonFile(_HashSink(data_hash), mode="w"), t.schema) as writer:
                for start in range(0, t.num_rows, _HASH_ROWS):
                    part = t.slice(start, _HASH_ROWS).combine_chunks()
                    cols = []
                    for col in part.columns:
                        # the bytes under a null slot are arbitrary: hash the null mask, then fill them
                        arr = col.chunk(0) if col.num_chunks else pa.array([], col.type)
                        if arr.null_count:
                            nulls = pc.is_null(arr).to_numpy(zero_copy_only=False)
                            null_hash.update(np.packbits(nulls).tobytes())
                            arr = _fill_nulls(arr)
                        cols.append(arr)
                    writer.write_batch(pa.record_batch(cols, schema=t.schema))
            h.update(data_hash.digest() + null_hash.digest())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ validation
    def _time_problems(self, ev_file: str) -> list[Problem]:
        """Event times outside the spec's plausible range (the rule of the import and of POST /events)."""
        from .timerange import DEFAULT_TIME_RANGE, TimeRange

        rule = DEFAULT_TIME_RANGE if self.spec.time_range is None else TimeRange(*self.spec.time_range)
        col = self.events["time"]
        if pa.types.is_timestamp(col.type):
            col = pc.divide(pc.cast(pc.cast(col, pa.timestamp("us")), pa.int64()), 1_000_000)
        t = col.to_numpy(zero_copy_only=False)
        bad = rule.check(t) & ~pc.is_null(self.events["time"]).to_numpy(zero_copy_only=False)
        if not bad.any():
            return []
        r = rows_of(bad)[0]
        return [Problem(ev_file, r, "time", rule.expected(), rule.found(t[r - 1])
                        + (f" ({int(bad.sum())} such times, first shown)" if bad.sum() > 1 else ""))]

    def problems(self, origin: str = "", events_file: str = "events.parquet") -> list[Problem]:
        """Every inconsistency between the tables and the spec. Empty list = valid. `events_file`: the events'
        file name in the messages (a partition's, `PartitionedData.problems`)."""
        probs: list[Problem] = []
        pre = f"{origin}/" if origin else ""
        ev_file = f"{pre}{events_file}"
        ev = self.events
        for col in ("user_id", "item_id", "time"):
            if col not in ev.column_names:
                probs.append(Problem(ev_file, None, col, "a column named " + col, "no such column"))
        for col in ("user_id", "item_id"):
            if col in ev.column_names:
                nulls = pc.is_null(ev[col]).to_numpy(zero_copy_only=False)
                if nulls.any():
                    probs.append(Problem(ev_file, rows_of(nulls)[0], col, "a non-empty id",
                                         f"{int(nulls.sum())} empty value(s), first shown"))
        if "time" in ev.column_names:
            t = ev.schema.field("time").type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_timestamp(t)):
                probs.append(Problem(ev_file, None, "time", "integer or timestamp time", str(t)))
            else:
                nulls = pc.is_null(ev["time"]).to_numpy(zero_copy_only=False)
                if nulls.any():
                    probs.append(Problem(ev_file, rows_of(nulls)[0], "time", "a time value",
                                         f"{int(nulls.sum())} empty value(s), first shown"))
                probs += self._time_problems(ev_file)
        for col in ("label", "value"):
            if col in ev.column_names:
                t = ev.schema.field(col).type
                if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                    probs.append(Problem(ev_file, None, col, "a numeric column", str(t)))
        if "channel" in ev.column_names:
            bad = pc.invert(pc.is_in(ev["channel"], value_set=pa.array(self.spec.channels))).to_numpy(
                zero_copy_only=False)
            if bad.any():
                r = rows_of(bad)[0]
                probs.append(Problem(ev_file, r, "channel", f"one of the declared channels {self.spec.channels}",
                                     repr(ev["channel"][r - 1].as_py())))
        for key, table, fname in (("item_id", self.items, "items.parquet"), ("user_id", self.users, "users.parquet")):
            if table is None:
                continue
            fname = pre + fname
            if key not in table.column_names:
                probs.append(Problem(fname, None, key, f"a column named {key}", "no such column"))
                continue
            ids = table[key]
            nulls = pc.is_null(ids).to_numpy(zero_copy_only=False)
            if nulls.any():
                probs.append(Problem(fname, rows_of(nulls)[0], key, "a non-empty id",
                                     f"{int(nulls.sum())} empty value(s), first shown"))
            if pc.count_distinct(ids).as_py() != len(ids) - int(nulls.sum()):
                counts = pc.value_counts(ids)
                dup = [c["values"] for c in counts.to_pylist() if c["counts"] > 1][:3]
                probs.append(Problem(fname, None, key, "unique ids", f"duplicates such as {dup}"))
            if key in ev.column_names:
                unknown = pc.invert(pc.is_in(ev[key], value_set=ids)).to_numpy(zero_copy_only=False)
                if unknown.any():
                    r = rows_of(unknown)[0]
                    probs.append(Problem(ev_file, r, key, f"an id listed in {fname}",
                                         f"unknown id {ev[key][r - 1].as_py()!r} "
                                         f"({int(unknown.sum())} row(s) with unknown ids)"))
        declared = {m.name: m for m in self.spec.modalities}
        for name, table in self.content.items():
            fname = f"{pre}content/{name}.parquet"
            if name not in declared:
                probs.append(Problem(fname, None, None, f"a modality declared in dataset.yaml ({list(declared)})",
                                     f"undeclared modality '{name}'"))
                continue
            m = declared[name]
            value_col = CONTENT_VALUE_COLUMN[m.kind]
            for col in ("entity_id", value_col):
                if col not in table.column_names:
                    probs.append(Problem(fname, None, col, f"a column named {col}", "no such column"))
            if "entity_id" not in table.column_names or value_col not in table.column_names:
                continue
            owner = {"item": self.items, "user": self.users}.get(m.entity)
            key = ENTITY_KEYS[m.entity]
            if owner is not None:
                ref = owner[key] if key in owner.column_names else None
            else:
                ref = ev[key] if key in ev.column_names else None
            if ref is not None:
                unknown = pc.invert(pc.is_in(table["entity_id"], value_set=ref)).to_numpy(zero_copy_only=False)
                if unknown.any():
                    r = rows_of(unknown)[0]
                    probs.append(Problem(fname, r, "entity_id", f"a known {m.entity} id",
                                         repr(table["entity_id"][r - 1].as_py())))
            if pc.count_distinct(table["entity_id"]).as_py() != table.num_rows:
                counts = pc.value_counts(table["entity_id"])
                dup = [c["values"] for c in counts.to_pylist() if c["counts"] > 1][:3]
                probs.append(Problem(fname, None, "entity_id", "one row per entity (a missing modality is a "
                                     "missing row)", f"duplicates such as {dup}"))
            probs.extend(_content_value_problems(fname, m, table))
        for m in self.spec.modalities:
            if m.name not in self.content:
                probs.append(Problem(f"{pre}content/{m.name}.parquet", None, None,
                                     f"the content table of declared modality '{m.name}'", "no such file"))
        return probs

    def validate(self, origin: str = "") -> InteractionData:
        probs = self.problems(origin)
        if probs:
            raise DataError(probs)
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        (path / "content").mkdir(parents=True, exist_ok=True)
        # an older dataset.yaml would make a half-written directory look valid, and tables left from an
        # earlier save (items, users, another modality) would be loaded back with the new ones
        (path / "dataset.yaml").unlink(missing_ok=True)
        for name, table in (("items", self.items), ("users", self.users)):
            if table is None:
                (path / f"{name}.parquet").unlink(missing_ok=True)
        for f in (path / "content").glob("*.parquet"):
            if f.stem not in self.content:
                f.unlink()
        pq.write_table(self.events, path / "events.parquet")
        if self.items is not None:
            pq.write_table(self.items, path / "items.parquet")
        if self.users is not None:
            pq.write_table(self.users, path / "users.parquet")
        for name, table in self.content.items():
            pq.write_table(table, path / "content" / f"{name}.parquet")
        tmp = path / "dataset.yaml.tmp"
        tmp.write_text(yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False))
        os.replace(tmp, path / "dataset.yaml")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, validate: bool = True) -> InteractionData:
        path = Path(path)
        spec_file = path / "dataset.yaml"
        if not spec_file.exists():
            raise DataError(Problem(str(spec_file), None, None, "a dataset.yaml describing the dataset",
                                    "no such file"))
        try:
            spec = DatasetSpec.model_validate(yaml.safe_load(spec_file.read_text()) or {})
        except (yaml.YAMLError, ValueError, TypeError) as e:  # -> one readable problem per field
            raise DataError(_pydantic_problems(str(spec_file), e)) from None
        ev_file = path / "events.parquet"
        if not ev_file.exists():
            raise DataError(Problem(str(ev_file), None, None, "the events table", "no such file"))

        def opt(p: Path) -> pa.Table | None:
            return _read_parquet(p) if p.exists() else None

        content = {}
        for m in spec.modalities:
            f = path / "content" / f"{m.name}.parquet"
            if f.exists():
                # Parquet names a list's child "element" where Arrow builds "item": renamed back so a loaded
                # list column has the type of the one that was saved
                table = _read_parquet(f)
                content[m.name] = table.cast(pa.schema([fl.with_type(_canonical_type(fl.type))
                                                        for fl in table.schema]))
        if (path / "content").exists():
            for f in sorted((path / "content").glob("*.parquet")):
                if f.stem not in content:
                    content[f.stem] = _read_parquet(f)
        data = cls(spec, _read_parquet(ev_file), opt(path / "items.parquet"), opt(path / "users.parquet"), content)
        if validate:
            data.validate(str(path))
        return data


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _content_value_problems(fname: str, m: ModalitySpec, table: pa.Table) -> list[Problem]:
    """The value column of one content table against its `ModalitySpec` (kind, `multi`, `dim`).

    Rows are 1-based rows of the content table. A null value or an empty list is an error, because a
    missing modality is a missing row; a multi-valued table's problems name the row, not the position
    inside its list, since that row is what a user finds and fixes."""
    col = CONTENT_VALUE_COLUMN[m.kind]
    t = table.schema.field(col).type
    values = table[col]
    if m.kind == "tokens":
        return []  # integer lists checked by their producer (the importer); no contract on them here
    if m.multi:
        inner = "a list of vectors of floats" if m.kind == "vector" else "a list of strings"
        if not _is_list(t) or (m.kind == "vector" and not _is_list(t.value_type)) or (
                m.kind != "vector" and not _is_string(t.value_type)):
            return [Problem(fname, None, col, f"{inner} per row (modality '{m.name}' is multi)", str(t))]
        probs = _null_or_empty_rows(fname, col, values, "a non-empty list (drop the row when the entity has "
                                    "no value)")
        if probs:
            return probs
        counts = pc.list_value_length(values).to_numpy(zero_copy_only=False).astype(np.int64)
        row_of = np.repeat(np.arange(len(counts)), counts)  # flattened value -> its table row
        flat = pc.list_flatten(values)
        if m.kind != "vector":
            bad = pc.fill_null(pc.equal(pc.utf8_length(flat), 0), True).to_numpy(zero_copy_only=False)
            if bad.any():
                r = int(row_of[np.flatnonzero(bad)[0]]) + 1
                return [Problem(fname, r, col, "non-empty strings in the list",
                                f"{int(bad.sum())} empty or null value(s), first in this row")]
            return []
        vec_nulls = pc.is_null(flat).to_numpy(zero_copy_only=False)
        if vec_nulls.any():
            r = int(row_of[np.flatnonzero(vec_nulls)[0]]) + 1
            return [Problem(fname, r, col, "a vector at every position of the list", "an empty value")]
        return _vector_problems(fname, m, flat, row_of)
    if m.kind == "vector":
        if not _is_list(t):
            return [Problem(fname, None, col, "a list of floats per row", str(t))]
        if _is_list(t.value_type):
            return [Problem(fname, None, col, "one vector per row (declare 'multi: true' on modality "
                            f"'{m.name}' for several)", str(t))]
        probs = _null_or_empty_rows(fname, col, values, "a vector (drop the row when the modality is "
                                    "missing)", empty=False)
        if probs:
            return probs
        return _vector_problems(fname, m, values, np.arange(len(values)))
    if not _is_string(t):
        hint = f" (declare 'multi: true' on modality '{m.name}' for several)" if _is_list(t) else ""
        return [Problem(fname, None, col, f"one string per row{hint}", str(t))]
    return _null_or_empty_rows(fname, col, values, "a value (drop the row when the modality is missing)",
                               empty=False)


def _null_or_empty_rows(fname: str, col: str, values: pa.ChunkedArray, expected: str,
                        empty: bool = True) -> list[Problem]:
    bad = pc.is_null(values).to_numpy(zero_copy_only=False)
    if empty:
        bad = bad | (pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False) == 0)
    if not bad.any():
        return []
    what = "an empty value" + (" or an empty list" if empty else "")
    return [Problem(fname, rows_of(bad)[0], col, expected, f"{what} ({int(bad.sum())} row(s), first shown)")]


def _vector_problems(fname: str, m: ModalitySpec, vectors: pa.ChunkedArray | pa.Array,
                     row_of: np.ndarray) -> list[Problem]:
    """Equal length (`m.dim`, else the first vector's) and finite values; `row_of[i]` is vector i's table
    row."""
    vt = vectors.type.value_type
    if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
        return [Problem(fname, None, "vector", "vectors of numbers", f"vectors of {vt}")]
    lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False).astype(np.int64)
    if not len(lengths):
        return []
    want = m.dim if m.dim is not None else int(lengths[0])
    bad = lengths != want
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f" (vector {i - int(np.searchsorted(row_of, row_of[i])) + 1} of the row)" if m.multi else ""
        return [Problem(fname, int(row_of[i]) + 1, "vector", f"vectors of length {want}",
                        f"length {int(lengths[i])}{where}")]
    flat = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).astype(np.float64)
    if flat.size and not np.isfinite(flat).all():
        r = int(row_of[np.flatnonzero(~np.isfinite(flat))[0] // want]) + 1
        return [Problem(fname, r, "vector", "finite numbers", "NaN or infinity")]
    return []


_HASH_ROWS = 1 << 16


def _canonical_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        child = pa.field("item", _canonical_type(t.value_type), t.value_field.nullable)
        if pa.types.is_fixed_size_list(t):
            return pa.list_(child, t.list_size)
        return pa.large_list(child) if pa.types.is_large_list(t) else pa.list_(child)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_canonical_type(t.field(i).type)) for i in range(t.num_fields)])
    return t


def _fill_nulls(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        default = pa.scalar([], t)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        default = pa.scalar("", t)
    elif pa.types.is_boolean(t):
        default = pa.scalar(False, t)
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        default = pa.scalar(0, t)
    else:
        return arr
    try:
        return pc.fill_null(arr, default)
    except pa.ArrowNotImplementedError:
        return arr


class _HashSink:
    """A write-only file object that feeds a hash (lets the IPC writer stream without a buffer)."""

    def __init__(self, h):
        self.h = h
        self.closed = False

    def write(self, b) -> int:
        self.h.update(b)
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:  # the IPC writer closes its stream; the hash lives on
        pass


def _read_parquet(p: Path) -> pa.Table:
    try:
        return pq.read_table(p)
    except (OSError, pa.ArrowException) as e:
        raise DataError(Problem(str(p), None, None, "a readable Parquet file", str(e).splitlines()[0])) from None


def _pydantic_problems(file: str, err: Exception) -> list[Problem]:
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return [Problem(file, None, None, "a valid YAML mapping", str(err).splitlines()[0])]
    out = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or None
        if e["type"] == "extra_forbidden":
            out.append(Problem(file, None, key, "only known keys", f"unknown key '{e['loc'][-1]}'"))
        elif e["type"] == "missing":
            out.append(Problem(file, None, key, "this key", "nothing"))
        else:
            msg = e["msg"].removeprefix("Value error, ")  # our own validators: the message says what and why
            out.append(Problem(file, None, key, msg[0].lower() + msg[1:], repr(e.get("input"))[:80]))
    return out
