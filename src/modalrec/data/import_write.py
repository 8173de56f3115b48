"""Where an import's rows go as they are read: the events writers and the dataset folder.

`ParquetEvents` writes the good event rows of each chunk as it comes, with `pyarrow.parquet.ParquetWriter`s: one
DATASET/events.parquet (the layout of `InteractionData.save`), or with `partitions: N` DATASET/events/part-NNNNN.
parquet by `partition_of(user_id, N)` (the layout of `modalrec.data.partitioned`; rows in file order within a
partition). Rows are buffered per file (64 Ki rows, 256 Ki in all) and written as row groups. The time column is
int64 until a chunk brings times with a fraction: the files written so far are then rewritten as float64 (once,
one row group at a time).
`MemoryEvents` keeps the tables (`import_dataset`); `NullEvents` drops them (`validate_path`).

`Staging` is the folder the import writes into, next to OUT, moved into place only when the import succeeded:
a failed import leaves OUT as it was (or absent).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .import_build import with_float_time
from .interaction import DatasetSpec
from .partitioned import PART, partition_of

ROW_GROUP = 1 << 20  # rows of a row group of the events files, at most (pyarrow's default)
_FLUSH = 1 << 16  # rows of a file buffered before they are written (a chunk's rows of a partition may be fewer)
_BUFFERED = 1 << 18  # rows held in all buffers together before they are all written


class MemoryEvents:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        self.tables.append(table)

    def close(self) -> None:
        pass


class NullEvents(MemoryEvents):
    def write(self, table: pa.Table) -> None:
        pass


class ParquetEvents:
    """The events of an import written as they come (see the module docstring)."""

    def __init__(self, root: Path, partitions: int | None):
        self.n = partitions
        if partitions is None:
            self.paths = [root / "events.parquet"]
        else:
            (root / "events").mkdir(parents=True, exist_ok=True)
            self.paths = [root / "events" / PART.format(i) for i in range(partitions)]
        self.writers: list[pq.ParquetWriter | None] = [None] * len(self.paths)
        self.buffers: list[list[pa.Table]] = [[] for _ in self.paths]
        self.rows = [0] * len(self.paths)
        self.schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        elif table.schema.field("time").type != self.schema.field("time").type:
            if table.schema.field("time").type == pa.float64():
                self._float_time()
            else:
                table = with_float_time(table)
        if not table.num_rows:
            return
        if self.n is None:
            self._add(0, table)
        else:
            part = partition_of(table["user_id"], self.n)
            order = np.argsort(part, kind="stable")  # rows keep their order within a partition
            table, part = table.take(pa.array(order)), part[order]
            bounds = np.searchsorted(part, np.arange(self.n + 1))
            for i in np.flatnonzero(np.diff(bounds)):
                self._add(int(i), table.slice(bounds[i], bounds[i + 1] - bounds[i]))
        if sum(self.rows) >= _BUFFERED:
            for i in range(len(self.paths)):
                self._flush(i)

    def _add(self, i: int, table: pa.Table) -> None:
        self.buffers[i].append(table)
        self.rows[i] += table.num_rows
        if self.rows[i] >= _FLUSH:
            self._flush(i)

    def _flush(self, i: int) -> None:
        if not self.rows[i]:
            return
        if self.writers[i] is None:
            self.writers[i] = pq.ParquetWriter(self.paths[i], self.schema)
        self.writers[i].write_table(pa.concat_tables(self.buffers[i]), row_group_size=ROW_GROUP)
        self.buffers[i], self.rows[i] = [], 0

    def _float_time(self) -> None:
        """From now on float64 times: the buffers and the files written so far converted."""
        self.schema = self.schema.set(self.schema.get_field_index("time"), pa.field("time", pa.float64()))
        self.buffers = [[with_float_time(t) for t in b] for b in self.buffers]
        for i, w in enumerate(self.writers):
            if w is None:
                continue
            w.close()
            old = self.paths[i].with_suffix(".int.parquet")
            os.replace(self.paths[i], old)
            self.writers[i] = pq.ParquetWriter(self.paths[i], self.schema)
            f = pq.ParquetFile(old)
            for g in range(f.num_row_groups):
                self.writers[i].write_table(with_float_time(f.read_row_group(g)))
            f.close()
            old.unlink()

    def close(self) -> None:
        if self.schema is None:
            return
        for i in range(len(self.paths)):
            self._flush(i)
            if self.writers[i] is None:  # a partition without events: an empty file of the same schema
                self.writers[i] = pq.ParquetWriter(self.paths[i], self.schema)
            self.writers[i].close()

    def abort(self) -> None:
        for w in self.writers:
            if w is not None:
                w.close()


def write_catalogue(root: Path, spec: DatasetSpec, items: pa.Table | None, users: pa.Table | None,
                    content: dict[str, pa.Table]) -> None:
    """The side tables, the content tables and, last, dataset.yaml (as `InteractionData.save` writes them)."""
    (root / "content").mkdir(parents=True, exist_ok=True)
    if items is not None:
        pq.write_table(items, root / "items.parquet")
    if users is not None:
        pq.write_table(users, root / "users.parquet")
    for name, table in content.items():
        pq.write_table(table, root / "content" / f"{name}.parquet")
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


# what an import writes into OUT: these are replaced (or removed, when the new import has none) as a whole
_OUTPUTS = ("events.parquet", "events", "items.parquet", "users.parquet", "content", "rejected.csv")


class Staging:
    """A folder next to `out` to write the import into; `commit` moves it into `out`, `discard` removes it and
    the folders it created."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created = [p for p in (self.out.parent, *self.out.parent.parents) if not p.exists()]
        self.path = self.out.parent / f".{self.out.name}.importing-{os.getpid()}"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def commit(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "dataset.yaml").unlink(missing_ok=True)  # a half-moved folder must not look valid
        for name in _OUTPUTS:
            target = self.out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            if (self.path / name).exists():
                os.replace(self.path / name, target)
        os.replace(self.path / "dataset.yaml", self.out / "dataset.yaml")
        shutil.rmtree(self.path)
        return self.out

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        for p in self.created:  # innermost first
            try:
                p.rmdir()
            except OSError:
                break
