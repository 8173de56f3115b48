"""A dataset whose events are partitioned by user: the layout of data larger than memory.

    DATASET/dataset.yaml
    DATASET/events/part-00000.parquet ... part-<P-1>.parquet    a user's events are all in one file
    DATASET/items.parquet, users.parquet, content/<modality>.parquet    the catalogue, as in InteractionData

`partition_of(user_ids, n)` is the partition of a user (a stable hash: the same on every machine and process),
so every per-user computation (splits, histories, samples) runs on one partition at a time. `PartitionedData`
has the fields of `InteractionData` but its events, read one partition at a time (`partitions()`); an
`InteractionData` is one partition (its `partitions()` yields its events table).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from .errors import DataError, Problem
from .interaction import DatasetSpec, InteractionData, _as_string

PART = "part-{:05d}.parquet"


def partition_of(user_ids: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """(len,) int64 partition of each user id: a stable 64-bit hash of the id (pandas' SipHash with its fixed key:
    the same on every machine and in every process), modulo n."""
    if n <= 1:
        return np.zeros(len(user_ids), dtype=np.int64)
    ids = np.asarray(pc.cast(user_ids, pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    return (pd.util.hash_array(ids, categorize=True) % np.uint64(n)).astype(np.int64)


class ContentFiles(Mapping):
    """The content tables of a partitioned dataset, read from their files when asked for and not kept: a 146M-event
    catalogue's 6.56M 128-d vectors are 3.4 GB, needed once (fitting the side tables), not through the whole
    preparation. `name in content`, `content[name]` (a fresh pa.Table each time), `len`, iteration by name."""

    def __init__(self, files: dict[str, Path]):
        self.files = dict(files)

    def __getitem__(self, name: str) -> pa.Table:
        return _as_string(pq.read_table(self.files[name]), "entity_id")

    def __contains__(self, name: object) -> bool:  # Mapping's would read the table
        return name in self.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def num_rows(self, name: str) -> int:
        return pq.ParquetFile(self.files[name]).metadata.num_rows

    def batches(self, name: str, columns: list[str], rows: int = 1 << 20) -> Iterator[pa.Table]:
        """The table in slices of about `rows` rows, read one at a time (entity ids as strings)."""
        with pq.ParquetFile(self.files[name], pre_buffer=False, buffer_size=1 << 20) as f:  # see import_files
            for b in f.iter_batches(batch_size=rows, columns=columns):
                yield _as_string(pa.Table.from_batches([b]), "entity_id")


@dataclass
class PartitionedData:
    spec: DatasetSpec
    parts: list[Path]  # one Parquet file of events per partition
    items: pa.Table | None = None
    users: pa.Table | None = None
    content: Mapping[str, pa.Table] = field(default_factory=dict)  # a dict of tables, or ContentFiles (`load`)

    def __post_init__(self) -> None:
        if self.items is not None:
            self.items = _as_string(self.items, "item_id")
        if self.users is not None:
            self.users = _as_string(self.users, "user_id")
        if not isinstance(self.content, ContentFiles):
            self.content = {k: _as_string(v, "entity_id") for k, v in self.content.items()}

    @property
    def n_partitions(self) -> int:
        return len(self.parts)

    def partition(self, i: int, columns: list[str] | None = None) -> pa.Table:
        """The events of partition i (in file order), with `columns` only when given."""
        t = pq.read_table(self.parts[i], columns=columns)
        t = _as_string(_as_string(t, "user_id"), "item_id") if columns is None or "user_id" in columns else t
        if "channel" not in t.column_names and (columns is None or "channel" in columns):
            t = t.append_column("channel", pa.array([self.spec.channels[0]] * t.num_rows, pa.string()))
        return t

    def partitions(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for i in range(len(self.parts)):
            yield self.partition(i, columns)

    def loaders(self, columns: list[str] | None = None) -> list[Callable[[], pa.Table]]:
        """One zero-argument loader per partition (what an engine ships to its workers: the spec and the files,
        not the catalogue)."""
        events = PartitionedData(self.spec, self.parts)
        return [lambda i=i: events.partition(i, columns) for i in range(len(self.parts))]

    @property
    def num_events(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts)

    def summary(self) -> dict:
        users, items, channels, n = set(), set(), {}, 0
        for t in self.partitions(["user_id", "item_id", "channel"]):
            n += t.num_rows
            users.update(pc.unique(t["user_id"]).to_pylist())
            items.update(pc.unique(t["item_id"]).to_pylist())
            for r in pc.value_counts(t["channel"]).to_pylist():
                channels[str(r["values"])] = channels.get(str(r["values"]), 0) + int(r["counts"])
        out = {"name": self.spec.name, "events": n, "users": len(users), "items": len(items),
               "channels": channels, "modalities": {k: self._content_rows(k) for k in self.content},
               "partitions": len(self.parts)}
        if self.items is not None:
            out["items_in_table"] = self.items.num_rows
        if self.users is not None:
            out["users_in_table"] = self.users.num_rows
        return out

    def _content_rows(self, name: str) -> int:
        c = self.content
        return c.num_rows(name) if isinstance(c, ContentFiles) else c[name].num_rows

    def fingerprint(self) -> str:
        """Content hash: the partition files' bytes, the catalogue tables and the spec."""
        h = hashlib.sha256(self.spec.model_dump_json().encode())
        for p in self.parts:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        for t in (self.items, self.users, *(self.content[k] for k in sorted(self.content))):
            if t is not None:
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, t.schema) as w:
                    w.write_table(t)
                h.update(sink.getvalue().to_pybytes())
        return h.hexdigest()[:16]

    def problems(self, origin: str = "") -> list[Problem]:
        """Every problem of the dataset, partition by partition (`InteractionData.problems` on each partition's
        events with the catalogue; a row number is the row in its partition file), the catalogue's and the content
        tables' own problems once. Holds one partition's events at a time."""
        out: list[Problem] = []
        seen: set = set()
        user_ids = []  # content of users without a users table refers to the events' users: every partition's
        for part in self.parts:
            one = InteractionData(self.spec, pq.read_table(part), self.items, self.users, {})
            for p in one.problems(origin, events_file=f"events/{part.name}"):
                if "content/" not in p.file and p not in seen:  # content: checked once below  # the catalogue's problems come back with every partition
                    seen.add(p)
                    out.append(p)
            if self.users is None and "user_id" in one.events.column_names:
                user_ids.append(pc.unique(one.events["user_id"]).cast(pa.string()))
        users = pc.unique(pa.chunked_array(user_ids, pa.string())) if user_ids else pa.array([], pa.string())
        n = len(users)  # the content tables are checked once, against the catalogue or every partition's users
        events = pa.table({"user_id": users, "item_id": pa.array([""] * n, pa.string()),
                           "time": pa.array([0] * n, pa.int64())})
        content = InteractionData(self.spec, events, self.items, self.users, self.content)
        for p in content.problems(origin):
            if p.file.endswith(".parquet") and "/content/" in f"/{p.file}" and p not in seen:
                seen.add(p)
                out.append(p)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> PartitionedData:
        path = Path(path).resolve()  # workers on other machines open the partition files by this path
        spec_file = path / "dataset.yaml"
        if not spec_file.exists():
            raise DataError(Problem(str(spec_file), None, None, "a dataset.yaml describing the dataset",
                                    "no such file"))
        spec = DatasetSpec.model_validate(yaml.safe_load(spec_file.read_text()) or {})
        parts = sorted((path / "events").glob("part-*.parquet"))
        if not parts:
            raise DataError(Problem(str(path / "events"), None, None, "event partitions part-*.parquet",
                                    "none"))

        def opt(p: Path) -> pa.Table | None:
            return pq.read_table(p) if p.exists() else None

        content = ContentFiles({m.name: path / "content" / f"{m.name}.parquet" for m in spec.modalities
                                if (path / "content" / f"{m.name}.parquet").exists()})
        return cls(spec, parts, opt(path / "items.parquet"), opt(path / "users.parquet"), content)


def write_partitioned(data: InteractionData, path: str | os.PathLike, n: int) -> PartitionedData:
    """`data` saved in the partitioned layout with `n` partitions (rows keep their file order in each)."""
    path = Path(path)
    data.save(path)
    (path / "events.parquet").unlink()
    (path / "events").mkdir(exist_ok=True)
    part = partition_of(data.events["user_id"], n)
    for i in range(n):
        pq.write_table(data.events.filter(pa.array(part == i)), path / "events" / PART.format(i))
    return PartitionedData.load(path)
