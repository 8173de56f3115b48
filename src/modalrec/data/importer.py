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
```

Rules:
- `.parquet` / `.pq` files are read as Parquet, anything else as CSV (`sep` defaults to "," and to a
  tab for `.tsv`; `encoding` defaults to utf-8; compression such as `.csv.gz` is inferred).
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

Modules: `import_spec` (the YAML models), `import_files` (reading files), `import_cells` (converting and
checking cells), `import_problems` (problems, rejected rows), `import_build` (assembling the data) and
`timerange` (the plausible event times); this module runs them in order.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pandas as pd

from . import import_cells as cells
from .errors import DataError, Problem
from .import_build import build
from .import_files import PARQUET_SUFFIXES, FileReader
from .import_problems import Rejected, Report, Table, write_rejected
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
from .interaction import InteractionData
from .timerange import DEFAULT_TIME_RANGE, TimeRange

__all__ = [
    "DEFAULT_TIME_RANGE",
    "EVENT_CORE_COLUMNS",
    "PARQUET_SUFFIXES",
    "ContentSource",
    "EntitySource",
    "EventSource",
    "FileSource",
    "ImportSpec",
    "Rejected",
    "TimeRange",
    "TimeRangeSpec",
    "import_dataset",
    "load_import_spec",
    "validate_path",
    "write_rejected",
]

@overload
def import_dataset(spec_path: str | os.PathLike, skip_bad_rows: Literal[False] = False) -> InteractionData: ...
@overload
def import_dataset(
    spec_path: str | os.PathLike, skip_bad_rows: Literal[True]
) -> tuple[InteractionData, list[Rejected]]: ...
def import_dataset(spec_path, skip_bad_rows=False):
    """Load the files an import spec describes. Raises `DataError` listing every problem.

    With `skip_bad_rows=True`, returns `(data, rejected)`: the bad rows are removed from the data and
    listed in `rejected`; only problems that concern no single row raise."""
    spec_path = Path(spec_path)
    spec = load_import_spec(spec_path)
    data, rejected = _Importer(spec, spec_path.resolve().parent, skip_bad_rows).run(str(spec_path))
    return (data, rejected) if skip_bad_rows else data


def validate_path(path: str | os.PathLike) -> list[Problem]:
    """Every problem of a saved `InteractionData` directory or of a YAML import spec (empty = valid)."""
    path = Path(path)
    try:
        if path.is_dir():
            return InteractionData.load(path, validate=False).problems(str(path))
        if path.suffix.lower() in (".yaml", ".yml"):
            import_dataset(path)
            return []
    except DataError as e:
        return list(e.problems)
    return [Problem(str(path), None, None, "a dataset directory (with dataset.yaml) or an import spec (.yaml)",
                    "no such directory" if not path.exists() else "a file of another kind")]


# ---------------------------------------------------------------------------------------------- the run
class _Importer:
    """One import: reads and checks every file of the spec, cross-checks the ids, builds the data."""

    def __init__(self, spec: ImportSpec, base: Path, skip_bad_rows: bool):
        self.spec = spec
        self.skip = skip_bad_rows
        self.report = Report()
        self.files = FileReader(base, self.report)
        self.time_range = spec.time_range.rule()

    # ------------------------------------------------------------------ events
    def _events(self) -> list[tuple[EventSource, Table, dict]]:
        out = []
        for src in self.spec.events:
            cols = [src.user, src.item, src.time]
            cols += [c for c in (src.label, src.value, src.channel_column, src.event_id) if c]
            cols += src.keep
            t = self.files.open_table(src, cols)
            if t is None:
                continue
            if t.n == 0:  # a header-only export: an error now rather than an empty dataset failing at train
                self.report.file_problem(t.file, None, "at least one event row", "none")
                continue
            ev: dict = {"user_id": cells.ids(self.report, t, src.user),
                        "item_id": cells.ids(self.report, t, src.item),
                        "time": cells.times(self.report, t, src.time, src.time_format, self.time_range)}
            if src.channel_column:
                ch = cells.as_text(t.df[src.channel_column])
                self.report.row_problem(t, (ch == "").to_numpy(), src.channel_column, "a channel name",
                                        "an empty value")
                ev["channel"] = ch.to_numpy(dtype=object)
            else:
                ev["channel"] = np.full(t.n, src.channel or "default", dtype=object)
            if src.label:
                ev["label"] = cells.numbers(self.report, t, src.label, required=True, booleans=True)
            if src.value:
                ev["value"] = cells.numbers(self.report, t, src.value, required=False)
            if src.event_id:
                ev["event_id"] = cells.ids(self.report, t, src.event_id)
            for c in src.keep:
                ev[c] = cells.as_text(t.df[c]).to_numpy(dtype=object)
            out.append((src, t, ev))
        return out

    # ------------------------------------------------------------------ items / users
    def _entity(self, src: EntitySource, key: str) -> tuple[Table, dict] | None:
        cols = [src.id, *src.categorical, *src.multi_categorical, *src.numeric, *src.text, *src.keep]
        t = self.files.open_table(src, cols)
        if t is None:
            return None
        ids = cells.ids(self.report, t, src.id)
        cells.duplicates(self.report, t, ids, src.id, "a unique id")
        cols_out: dict = {key: ids}
        for c in src.categorical:
            cols_out[c] = cells.categorical(t, c)
        for c, sep in src.multi_categorical.items():
            cols_out[c] = cells.multi(t, c, sep)
        for c in src.numeric:
            cols_out[c] = cells.numbers(self.report, t, c, required=False)
        for c in src.keep:
            cols_out[c] = cells.categorical(t, c)
        if src.text:
            parts = [cells.as_text(t.df[c]) for c in src.text]
            joined = ["\n".join(p for p in row if p) for row in zip(*(p.to_numpy(dtype=object) for p in parts))]
            cols_out["__text__"] = np.array(joined, dtype=object)
        return t, cols_out

    # ------------------------------------------------------------------ content
    def _content(self, src: ContentSource) -> tuple[Table, np.ndarray, list, np.ndarray] | None:
        """-> (table, ids, values, present mask)."""
        header = self.files.header(src)
        if header is None:
            return None
        if src.columns is not None:
            if isinstance(src.columns, str):
                value_cols = sorted(fnmatch.filter(header, src.columns), key=_natural_key)
                if not value_cols:
                    self.report.file_problem(self.files.path(src), src.columns, f"columns matching '{src.columns}'",
                                             "none")
                    return None
            else:
                value_cols = list(src.columns)
        else:
            value_cols = [src.column]
        t = self.files.read(src, [src.id, *value_cols], header)
        if t is None:
            return None
        ids = cells.ids(self.report, t, src.id)
        if src.kind in ("text", "image", "audio"):
            s = cells.as_text(t.df[src.column])
            present = (s != "").to_numpy()
            values = s.to_numpy(dtype=object)
            if src.kind != "text":
                folder = self.files.path(src).parent
                values = np.array([v if (not v or "://" in v or os.path.isabs(v)) else str(folder / v)
                                   for v in values], dtype=object)
                absent = np.array([bool(v) and "://" not in v and not os.path.exists(v) for v in values])
                self.report.row_problem(t, absent, src.column, f"the path of an existing {src.kind} file",
                                        [repr(v) for v in values[absent]])
            return t, ids, list(values), present
        if src.kind == "tokens":
            vals, present = cells.number_lists(self.report, t, src.column, integers=True)
            return t, ids, vals, present
        if src.columns is not None:
            mat = np.full((t.n, len(value_cols)), np.nan)
            empty_all = np.ones(t.n, dtype=bool)
            empties = []
            for j, c in enumerate(value_cols):
                s = t.df[c]
                numeric = pd.api.types.is_numeric_dtype(s)
                e = s.isna().to_numpy() if numeric else (cells.as_text(s) == "").to_numpy()
                empties.append(e)
                empty_all &= e
            for j, c in enumerate(value_cols):
                sub = Table(t.file, t.df[[c]], np.zeros(t.n, dtype=bool))
                mat[:, j] = cells.numbers(self.report, sub, c, required=False)
                partial = empties[j] & ~empty_all
                self.report.row_problem(sub, partial, c, "a number (only whole rows may be empty)",
                                        "an empty value")
                t.merge(sub)
            present = ~empty_all
            vals = [row.astype(np.float32) for row in mat]
            return t, ids, vals, present
        vals, present = cells.number_lists(self.report, t, src.column, integers=False)
        return t, ids, vals, present

    # ------------------------------------------------------------------ main
    def run(self, origin: str) -> tuple[InteractionData, list[Rejected]]:
        spec = self.spec
        events = self._events()
        entities: dict[str, tuple[Table, dict] | None] = {}
        for name, src, key in (("item", spec.items, "item_id"), ("user", spec.users, "user_id")):
            entities[name] = self._entity(src, key) if src is not None else None
        contents = [(c, self._content(c)) for c in spec.content]
        if self.report.fatal:
            raise DataError(self.report.fatal + self.report.rows)

        # side files first: their rejected rows invalidate the rows that point at them
        known: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
        for name, key in (("item", "item_id"), ("user", "user_id")):
            ent = entities[name]
            if ent is not None:
                t, cols = ent
                known[name] = (cols[key], cols[key][~t.bad], t.file)
        for src, t, ev in events:
            for name, key, col in (("item", "item_id", src.item), ("user", "user_id", src.user)):
                if name in known:
                    cells.check_refs(self.report, t, ev[key], col, name, *known[name])
        # content of an entity without a side file must describe an entity seen in the events
        for name, key in (("item", "item_id"), ("user", "user_id"), ("event", "event_id")):
            if name not in known:
                all_ids = [ev[key] for _, _, ev in events if key in ev]
                ok_ids = [ev[key][~t.bad] for _, t, ev in events if key in ev]
                known[name] = (np.concatenate(all_ids) if all_ids else np.array([], dtype=object),
                               np.concatenate(ok_ids) if ok_ids else np.array([], dtype=object),
                               "the events files")
        for c, got in contents:
            if got is None:
                continue
            t, ids, values, present = got
            cells.check_refs(self.report, t, ids, c.id, c.entity, *known[c.entity])
            cells.duplicates(self.report, t, ids, c.id, "one row per id (a missing modality is a missing row)")
            if c.kind == "vector":
                lengths = np.array([len(v) if p else -1 for v, p in zip(values, present)])
                usable = present & ~t.bad
                want = c.dim if c.dim is not None else (_mode(lengths[usable].tolist()) if usable.any() else 0)
                wrong = present & (lengths != want)
                self.report.row_problem(t, wrong, c.column or str(c.columns), f"a vector of length {want}",
                                        [f"length {k}" for k in lengths[wrong]])

        if self.report.rows and not self.skip:
            raise DataError(self.report.rows)
        n_events = sum(t.n for _, t, _ in events)
        if not sum(int((~t.bad).sum()) for _, t, _ in events):  # skipping every row would leave no data
            files = ", ".join(dict.fromkeys(t.file for _, t, _ in events))
            raise DataError([Problem(files, None, None, "at least one good event row",
                                     f"none (all {n_events} rejected)"), *self.report.rows])

        tables = [t for _, t, _ in events] + [e[0] for e in entities.values() if e is not None]
        tables += [got[0] for _, got in contents if got is not None]
        rejected = [r for t in tables for r in t.rejected()]

        data = build(self.spec, events, entities, contents)
        probs = data.problems(origin)  # a last guard: what the importer produced must be valid data
        if probs:
            raise DataError(probs)
        return data, rejected


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _mode(values: list[int]) -> int:
    vals, counts = np.unique(np.asarray(values), return_counts=True)
    return int(vals[np.argmax(counts)])
