"""Bring your own data: a short YAML file maps CSV / Parquet files onto `InteractionData`.

Full example (every key that is not marked "required" may be left out):

```yaml
name: my-shop                          # required
description: clicks and purchases of my shop, 2024
source: internal export of 2024-06-01
events:                                # required: one or more files, concatenated in this order
  - file: clicks.csv                   # required; paths are relative to this YAML file's folder
    user: uid                          # required: column names in that file
    item: sku                          # required
    time: ts                           # required: unix seconds (integers kept as they are), or a
                                       #   date-time string (ISO 8601, naive = UTC), stored as unix
                                       #   seconds; `time_format: "%d/%m/%Y %H:%M"` for others
    label: clicked                     # a number or true/false/yes/no, on every row
    value: price                       # a number; may be empty (NaN)
    channel: click                     # a constant channel name for the whole file ...
    sep: ";"                           # CSV separator (default "," and a tab for .tsv)
    encoding: latin-1                  # the file's text encoding (default utf-8)
    keep: [device]                     # extra columns copied as strings (spec.event_columns)
  - file: purchases.parquet
    user: uid
    item: sku
    time: ts
    channel_column: kind               # ... or a column naming the channel of each row
    event_id: order_id                 # needed only by content with `entity: event`
items:
  file: items.csv
  id: sku                              # required
  categorical: [brand]
  multi_categorical: {genres: "|"}     # column -> separator (list<string>; empty = no values)
  numeric: [weight]
  text: [title, subtitle]              # joined into ONE content modality "text"
  keep: [title]                        # copied as strings (display), not used as features
users: {file: users.csv, id: uid, categorical: [age_group]}   # `text` here -> modality "user_text"
content:                               # extra per-entity content files, one modality each
  - {name: description, entity: item, kind: text, file: desc.csv, id: sku, column: text}
  - {name: poster, entity: item, kind: image, file: posters.csv, id: sku, column: path}
  - {name: clip_emb, entity: item, kind: vector, file: emb.parquet, id: sku, column: vec}
  - {name: stats_emb, entity: item, kind: vector, file: stats.csv, id: sku, columns: "emb_*", dim: 16}
time_range: {min: 2015-01-01, max: 2030-01-01}   # plausible event times (unix seconds or ISO dates);
                                       #   default 1970-01-01 .. 2200-01-01, either side may be left out
partitions: 16                         # write DATASET/events/part-NNNNN.parquet by user (data larger than
                                       #   memory, `modalrec.data.partitioned`); default: one events.parquet
```

Rules:
- `.parquet` / `.pq` files are read as Parquet, anything else as CSV (`sep`, one character, defaults to ","
  and to a tab for `.tsv`; `encoding` defaults to utf-8; compression such as `.csv.gz` is inferred).
  Every file is read in bounded chunks (Arrow's streaming CSV reader, `ParquetFile.iter_batches`; about
  `block_size` bytes each, 16 MiB by default) and the events are written as they are read, so memory does not
  grow with the events (the catalogue, the items, users and content files, is kept whole). Rows are numbered
  across chunks; the chunks change nothing in the result or the problems (a file of several chunks lists
  its problems chunk by chunk; a file of one chunk, in the order of the checks, as before).
  CSV cells are read as strings and converted afterwards, so every conversion error names the file,
  the 1-based data row (header not counted), the column, and the offending value. A row with more or
  fewer fields than the header is a bad row; so is a cell with a byte that is not text in the file's
  `encoding` (the problem names its row and column). A header that reads as one column which another
  common separator (, tab ; |) would split gets a hint to set `sep`.
- Every events file has at least one event row, and at least one event row must be good.
- Event times must lie in `time_range` (`modalrec.data.timerange`, the rule the service's POST /events
  applies too); a time outside it is a bad row whose problem shows the range and the time as a date.
- Ids are strings with surrounding blanks removed; an empty id is an error. Every event's item (user)
  must be listed in the items (users) file when there is one; so must every content id.
- `channel` and `channel_column` are exclusive; with neither, the channel is "default".
  Events of a file that maps no `label` (`value`, `keep` column) get null (NaN, null) there.
- Item/user `text` columns: the non-empty cells of a row are joined, one per line, into one text
  modality ("text" for items, "user_text" for users), because encoders embed one text per entity;
  declare a `content` entry per column instead to keep them apart. An entity whose text cells are
  all empty gets no row: a missing modality, not an error. Categorical cells may be empty (null).
- `content`: `entity` is item (default), user or event; `kind` is text, image, audio (a path:
  relative paths are taken from the content file's folder and made absolute; a path that does not
  exist is an error), vector (a Parquet list column, a string "0.1 0.2" or "[0.1, 0.2]", or several
  numeric `columns`: a list or a glob such as "emb_*", in natural order) or tokens (integers, same
  forms). An empty cell means the modality is missing for that entity (no row). A vector's length
  must equal `dim` (default: the most common length); NaN or infinity is an error.

Nothing is dropped silently: `import_dataset` collects every problem and raises one `DataError`.
With `skip_bad_rows=True` it removes the bad rows instead and returns them as `Rejected(file, row,
reason)` next to the data (an event whose item row was rejected goes with it); problems that are not
about one row (a missing file or column, bad YAML) still raise. `write_rejected` writes them to CSV.

`import_dataset` returns the data in memory; `import_to_directory` (`modalrec data import`) writes it to a
dataset folder as it reads, the bad rows to OUT/rejected.csv as they are found, and never holds the events:
one events.parquet, or with `partitions` (the spec's key or the argument) the partitioned layout. Both run the
same reading and checks (`import_run.Importer`), with another destination for the rows.

Modules: `import_spec` (the YAML models), `import_files` and `import_csv` (reading files in chunks),
`import_cells` (converting and checking cells), `import_catalogue` (the items, users and content files),
`import_problems` (problems, rejected rows), `import_build` (assembling tables), `import_write` (the events
writers, the dataset folder), `import_run` (one import) and `timerange` (the plausible event times).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import pyarrow as pa

from .errors import DataError, Problem
from .import_build import unify_time
from .import_files import DEFAULT_BLOCK_SIZE, PARQUET_SUFFIXES
from .import_problems import Rejected, RejectedCSV, RejectedList, write_rejected
from .import_run import Importer
from .import_spec import (
    EVENT_CORE_COLUMNS,
    ContentSource,
    EntitySource,
    EventSource,
    FileSource,
    ImportSpec,
    TimeRangeSpec,
    load_import_spec,
)
from .import_write import MemoryEvents, NullEvents, ParquetEvents, Staging, write_catalogue
from .interaction import DatasetSpec, InteractionData
from .timerange import DEFAULT_TIME_RANGE, TimeRange

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_TIME_RANGE",
    "EVENT_CORE_COLUMNS",
    "PARQUET_SUFFIXES",
    "ContentSource",
    "EntitySource",
    "EventSource",
    "FileSource",
    "ImportSpec",
    "Imported",
    "Rejected",
    "TimeRange",
    "TimeRangeSpec",
    "import_dataset",
    "import_to_directory",
    "load_import_spec",
    "validate_path",
    "write_rejected",
]


@overload
def import_dataset(spec_path: str | os.PathLike, skip_bad_rows: Literal[False] = False,
                   block_size: int = DEFAULT_BLOCK_SIZE) -> InteractionData: ...
@overload
def import_dataset(
    spec_path: str | os.PathLike, skip_bad_rows: Literal[True], block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[InteractionData, list[Rejected]]: ...
def import_dataset(spec_path, skip_bad_rows=False, block_size=DEFAULT_BLOCK_SIZE):
    """Load the files an import spec describes. Raises `DataError` listing every problem.

    With `skip_bad_rows=True`, returns `(data, rejected)`: the bad rows are removed from the data and
    listed in `rejected`; only problems that concern no single row raise. The files are read in chunks of
    about `block_size` bytes; the data is held in memory (`import_to_directory` writes it as it reads)."""
    spec_path = Path(spec_path)
    spec = load_import_spec(spec_path)
    events, rejected = MemoryEvents(), RejectedList()
    out = Importer(spec, spec_path.resolve().parent, skip_bad_rows, events, rejected, block_size).run()
    data = InteractionData(out.spec, pa.concat_tables(unify_time(events.tables)).combine_chunks(), out.items, out.users,
                           out.content)
    probs = data.problems(str(spec_path))  # a last guard: what the importer produced must be valid data
    if probs:
        raise DataError(probs)
    return (data, list(rejected)) if skip_bad_rows else data


@dataclass
class Imported:
    """What `import_to_directory` wrote: the folder, its dataset spec, the summary (as `InteractionData.summary`
    gives it) and the number of rejected rows (listed in OUT/rejected.csv)."""

    path: Path
    spec: DatasetSpec
    summary: dict
    rejected: int
    partitions: int | None


def import_to_directory(spec_path: str | os.PathLike, out: str | os.PathLike, skip_bad_rows: bool = False,
                        partitions: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE) -> Imported:
    """Import the files of a spec into the dataset folder `out`, writing as it reads (memory does not grow with
    the events). `partitions` (else the spec's `partitions`): events/part-NNNNN.parquet by user, loadable by
    `PartitionedData.load`; none: one events.parquet, as `InteractionData.save` writes. With `skip_bad_rows`,
    the bad rows go to OUT/rejected.csv as they are found. On any problem nothing is written: `out` stays as it
    was (a folder written before is replaced only by a complete import)."""
    spec_path, out = Path(spec_path), Path(out)
    spec = load_import_spec(spec_path)
    n = partitions if partitions is not None else spec.partitions
    if n is not None and n < 1:
        raise DataError(Problem(str(spec_path), None, "partitions", "a number of partitions of at least 1", str(n)))
    staging = Staging(out)
    events = ParquetEvents(staging.path, n)
    rejected = RejectedCSV(staging.path / "rejected.csv")
    try:
        try:
            got = Importer(spec, spec_path.resolve().parent, skip_bad_rows, events, rejected, block_size).run()
        finally:
            rejected.close()
        events.close()
        write_catalogue(staging.path, got.spec, got.items, got.users, got.content)
        staging.commit()
    except BaseException:
        events.abort()
        staging.discard()
        raise
    summary = dict(got.summary, partitions=n) if n is not None else got.summary
    return Imported(out, got.spec, summary, got.rejected, n)


def validate_path(path: str | os.PathLike) -> list[Problem]:
    """Every problem of a saved `InteractionData` directory or of a YAML import spec (empty = valid)."""
    path = Path(path)
    try:
        if path.is_dir():
            if (path / "events").is_dir() and not (path / "events.parquet").exists():  # partitioned (--partitions)
                from .partitioned import PartitionedData

                return PartitionedData.load(path).problems(str(path))
            return InteractionData.load(path, validate=False).problems(str(path))
        if path.suffix.lower() in (".yaml", ".yml"):
            spec = load_import_spec(path)
            Importer(spec, path.resolve().parent, False, NullEvents()).run()  # the events are not kept
            return []
    except DataError as e:
        return list(e.problems)
    return [Problem(str(path), None, None, "a dataset directory (with dataset.yaml) or an import spec (.yaml)",
                    "no such directory" if not path.exists() else "a file of another kind")]
