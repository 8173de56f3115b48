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
    time: ts                           # required: unix seconds or any sortable integer (kept as is),
                                       #   or a date-time string (ISO 8601, naive = UTC), stored as
                                       #   unix seconds; `time_format: "%d/%m/%Y %H:%M"` for others
    label: clicked                     # a number or true/false/yes/no, on every row
    value: price                       # a number; may be empty (NaN)
    channel: click                     # a constant channel name for the whole file ...
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
```

Rules:
- `.parquet` / `.pq` files are read as Parquet, anything else as CSV (`sep` defaults to "," and to a
  tab for `.tsv`; `encoding` defaults to utf-8; compression such as `.csv.gz` is inferred).
  CSV cells are read as strings and converted afterwards, so every conversion error names the file,
  the 1-based data row (header not counted), the column, and the offending value.
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
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, overload

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import DataError, Problem
from .interaction import (
    DatasetSpec,
    FeatureSpec,
    InteractionData,
    ModalityKind,
    ModalitySpec,
    _pydantic_problems,
)

__all__ = [
    "ImportSpec",
    "Rejected",
    "import_dataset",
    "load_import_spec",
    "validate_path",
    "write_rejected",
]

EVENT_CORE_COLUMNS = ("user_id", "item_id", "time", "channel", "label", "value", "event_id")
PARQUET_SUFFIXES = (".parquet", ".pq")


# ---------------------------------------------------------------------------------------------- spec
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSource(_Strict):
    file: str
    sep: str | None = None
    encoding: str = "utf-8"


class EventSource(FileSource):
    user: str
    item: str
    time: str
    time_format: str | None = None
    label: str | None = None
    value: str | None = None
    channel: str | None = None
    channel_column: str | None = None
    event_id: str | None = None
    keep: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_channel(self) -> EventSource:
        if self.channel is not None and self.channel_column is not None:
            raise ValueError("give either `channel` (a constant) or `channel_column`, not both")
        clash = set(self.keep) & set(EVENT_CORE_COLUMNS)
        if clash:
            raise ValueError(f"`keep` columns may not be named like the core event columns: {sorted(clash)}")
        return self


class EntitySource(FileSource):
    id: str
    categorical: list[str] = Field(default_factory=list)
    multi_categorical: dict[str, str] = Field(default_factory=dict)
    numeric: list[str] = Field(default_factory=list)
    text: list[str] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_roles(self) -> EntitySource:
        outputs = [*self.categorical, *self.multi_categorical, *self.numeric, *self.keep]
        seen: set[str] = set()
        for name in outputs:
            if name in seen:
                raise ValueError(f"column '{name}' is given two roles (categorical/multi_categorical/numeric/keep)")
            seen.add(name)
        if self.id in seen:
            raise ValueError(f"the id column '{self.id}' cannot also be a feature")
        for col, sep in self.multi_categorical.items():
            if not sep:
                raise ValueError(f"multi_categorical '{col}' needs a non-empty separator")
        return self


class ContentSource(FileSource):
    name: str
    entity: Literal["item", "user", "event"] = "item"
    kind: ModalityKind
    id: str
    column: str | None = None
    columns: list[str] | str | None = None
    dim: int | None = Field(default=None, gt=0)
    description: str = ""

    @model_validator(mode="after")
    def _one_value_source(self) -> ContentSource:
        if (self.column is None) == (self.columns is None):
            raise ValueError("give exactly one of `column` or `columns`")
        if self.columns is not None and self.kind != "vector":
            raise ValueError("`columns` (several numeric columns) is only for kind: vector")
        if self.dim is not None and self.kind != "vector":
            raise ValueError("`dim` is only for kind: vector")
        return self


class ImportSpec(_Strict):
    """The YAML mapping of `import_dataset` (see the module docstring for the format)."""

    name: str
    description: str = ""
    source: str = ""
    citation: str = ""
    events: list[EventSource] = Field(min_length=1)
    items: EntitySource | None = None
    users: EntitySource | None = None
    content: list[ContentSource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ImportSpec:
        names = [c.name for c in self.content]
        if self.items is not None and self.items.text:
            names.append("text")
        if self.users is not None and self.users.text:
            names.append("user_text")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"modality names must be unique (items.text is 'text', users.text is "
                             f"'user_text'): {dup}")
        for c in self.content:
            if c.entity == "event" and not any(e.event_id for e in self.events):
                raise ValueError(f"content '{c.name}' describes events, so an events file needs `event_id`")
        return self


def load_import_spec(path: str | os.PathLike) -> ImportSpec:
    path = Path(path)
    if not path.exists():
        raise DataError(Problem(str(path), None, None, "an import spec (YAML)", "no such file"))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DataError(Problem(str(path), None, None, "valid YAML", f"{getattr(e, 'problem', e)}{where}")) from None
    if not isinstance(raw, dict):
        raise DataError(Problem(str(path), None, None, "a YAML mapping (name:, events:, ...)", type(raw).__name__))
    try:
        return ImportSpec.model_validate(raw)
    except ValueError as e:  # pydantic ValidationError
        raise DataError(_pydantic_problems(str(path), e)) from None


# ---------------------------------------------------------------------------------------------- result
class Rejected(NamedTuple):
    """One input row left out by `import_dataset(..., skip_bad_rows=True)`."""

    file: str
    row: int
    reason: str


def write_rejected(rejected: Iterable[Rejected], path: str | os.PathLike) -> Path:
    path = Path(path)
    pd.DataFrame(list(rejected), columns=list(Rejected._fields)).to_csv(path, index=False)
    return path


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


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class _Table:
    """One input file read as a frame, with its bad-row mask and the reasons per bad row."""

    file: str
    df: pd.DataFrame
    bad: np.ndarray
    reasons: dict[int, list[str]] = field(default_factory=dict)  # 0-based row -> reasons

    @property
    def n(self) -> int:
        return len(self.df)


_INT_RE = r"[+-]?\d{1,18}"


class _Importer:
    def __init__(self, spec: ImportSpec, base: Path, skip_bad_rows: bool):
        self.spec = spec
        self.base = base
        self.skip = skip_bad_rows
        self.fatal: list[Problem] = []  # not about one row: always raised
        self.row_problems: list[Problem] = []

    # ------------------------------------------------------------------ problems
    def _row_problem(self, t: _Table, mask: np.ndarray, column: str | None, expected: str,
                     found: Iterable[str] | str) -> None:
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        found_list = [found] * len(rows) if isinstance(found, str) else list(found)
        for r, f in zip(rows.tolist(), found_list):
            p = Problem(t.file, r + 1, column, expected, f)
            self.row_problems.append(p)
            reason = (f"column '{column}': " if column else "") + f"expected {expected}, found {f}"
            t.reasons.setdefault(r, []).append(reason)
        t.bad[rows] = True

    # ------------------------------------------------------------------ files
    def _path(self, src: FileSource) -> Path:
        return self.base / src.file

    def _is_parquet(self, path: Path) -> bool:
        return path.name.lower().endswith(PARQUET_SUFFIXES)

    def _sep(self, src: FileSource, path: Path) -> str:
        if src.sep is not None:
            return src.sep
        return "\t" if ".tsv" in path.suffixes else ","

    def _header(self, src: FileSource) -> list[str] | None:
        path = self._path(src)
        if not path.is_file():
            self.fatal.append(Problem(str(path), None, None, "a data file", "no such file"))
            return None
        try:
            if self._is_parquet(path):
                return list(pq.read_schema(path).names)
            return [str(c) for c in pd.read_csv(path, sep=self._sep(src, path), nrows=0,
                                                encoding=src.encoding).columns]
        except (OSError, ValueError, pa.ArrowException) as e:  # wrong format, encoding, empty file
            kind = "Parquet" if self._is_parquet(path) else "CSV"
            self.fatal.append(Problem(str(path), None, None, f"a readable {kind} file",
                                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            return None

    def _read(self, src: FileSource, columns: list[str], header: list[str]) -> _Table | None:
        path = self._path(src)
        missing = [c for c in dict.fromkeys(columns) if c not in header]
        for c in missing:
            shown = ", ".join(header[:15]) + (", ..." if len(header) > 15 else "")
            self.fatal.append(Problem(str(path), None, c, f"a column named '{c}'", f"only columns [{shown}]"))
        if missing:
            return None
        cols = list(dict.fromkeys(columns))
        try:
            if self._is_parquet(path):
                df = pq.read_table(path, columns=cols).to_pandas()
            else:
                df = pd.read_csv(path, sep=self._sep(src, path), dtype=str, keep_default_na=False,
                                 na_filter=False, skip_blank_lines=False, usecols=cols, encoding=src.encoding)
        except (OSError, ValueError, pa.ArrowException) as e:
            kind = "Parquet" if self._is_parquet(path) else "CSV"
            self.fatal.append(Problem(str(path), None, None, f"a readable {kind} file",
                                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            return None
        return _Table(str(path), df.reset_index(drop=True), np.zeros(len(df), dtype=bool))

    def _open(self, src: FileSource, columns: list[str]) -> _Table | None:
        header = self._header(src)
        return None if header is None else self._read(src, columns, header)

    # ------------------------------------------------------------------ conversions
    def _ids(self, t: _Table, col: str) -> np.ndarray:
        s = _as_text(t.df[col])
        empty = (s == "").to_numpy()
        self._row_problem(t, empty, col, "a non-empty id", "an empty value")
        return s.to_numpy(dtype=object)

    def _numbers(self, t: _Table, col: str, required: bool, booleans: bool = False) -> np.ndarray:
        s = t.df[col]
        if pd.api.types.is_bool_dtype(s):
            return s.astype(float).to_numpy()
        if pd.api.types.is_numeric_dtype(s):
            out = s.astype(float).to_numpy()
            missing = np.isnan(out)
            if required:
                self._row_problem(t, missing, col, "a number", "an empty value")
            bad = np.isinf(out)
            self._row_problem(t, bad, col, "a finite number", [repr(v) for v in out[bad]])
            return out
        arr = _arrow_text(s)
        empty = pc.equal(arr, "").to_numpy(zero_copy_only=False)
        if booleans:
            low = pc.utf8_lower(arr)
            arr = pc.if_else(pc.is_in(low, pa.array(["true", "yes"])), "1",
                             pc.if_else(pc.is_in(low, pa.array(["false", "no"])), "0", arr))
        out = _strict_cast(arr, empty, pa.float64())
        if out is None:  # some cell is not a number: find them all (slower)
            text = pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)
            out = pd.to_numeric(text.mask(empty, None), errors="coerce").astype(float).to_numpy()
        bad = ~empty & ~np.isfinite(out)
        what = "a number or true/false" if booleans else "a number"
        self._row_problem(t, bad, col, what, [repr(v) for v in s.to_numpy()[bad]])
        if required:
            self._row_problem(t, empty, col, what, "an empty value")
        return out

    def _times(self, t: _Table, col: str, fmt: str | None) -> np.ndarray:
        s = t.df[col]
        if pd.api.types.is_datetime64_any_dtype(s):
            return self._datetimes_to_seconds(t, col, s, s.isna().to_numpy(), fmt)
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            missing = s.isna().to_numpy()
            self._row_problem(t, missing, col, "a time", "an empty value")
            if pd.api.types.is_integer_dtype(s):
                return s.fillna(0).astype(np.int64).to_numpy()
            out = s.astype(float).to_numpy()
            return _int_if_integral(out, ~missing)
        arr = _arrow_text(s)
        empty = pc.equal(arr, "").to_numpy(zero_copy_only=False)
        self._row_problem(t, empty, col, "a time", "an empty value")
        if fmt is None:
            ints = _strict_cast(arr, empty, pa.int64())
            if ints is not None:  # the common case: unix times, all integers
                return ints.astype(np.int64)
        text = pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)
        is_int = text.str.fullmatch(_INT_RE).to_numpy(dtype=bool)
        num = pd.to_numeric(text.mask(empty, None), errors="coerce").astype(float).to_numpy()
        numeric = np.isfinite(num)
        if fmt is None and numeric.sum() * 2 >= (~empty).sum() and (~empty).any():
            bad = ~empty & ~numeric
            self._row_problem(t, bad, col, "a time (a number, as in most rows of this column)",
                              [repr(v) for v in text.to_numpy()[bad]])
            if is_int[~empty & ~bad].all():
                out = np.zeros(t.n, dtype=np.int64)
                out[is_int] = text[is_int].astype(np.int64).to_numpy()
                return out
            return _int_if_integral(num, ~empty & ~bad)
        parsed = pd.to_datetime(text.mask(empty, None), format=fmt or "ISO8601", errors="coerce", utc=True)
        return self._datetimes_to_seconds(t, col, parsed, empty, fmt, raw=text)

    def _datetimes_to_seconds(self, t: _Table, col: str, dt: pd.Series, empty: np.ndarray, fmt: str | None,
                              raw: pd.Series | None = None) -> np.ndarray:
        if dt.dt.tz is None:
            dt = dt.dt.tz_localize("UTC")
        nat = dt.isna().to_numpy()
        bad = nat & ~empty
        if raw is not None:
            what = f"a date-time in the format {fmt!r}" if fmt else "a unix time or an ISO 8601 date-time"
            self._row_problem(t, bad, col, what, [repr(v) for v in raw.to_numpy()[bad]])
        elif empty.any():
            self._row_problem(t, empty, col, "a time", "an empty value")
        secs = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        return secs.fillna(0).astype(np.int64).to_numpy()

    def _categorical(self, t: _Table, col: str) -> pa.Array:
        s = _as_text(t.df[col])
        return pa.array(s.mask(s == "", None).to_numpy(dtype=object), pa.string(), from_pandas=True)

    def _multi(self, t: _Table, col: str, sep: str) -> pa.Array:
        s = t.df[col]
        non_null = s.dropna()
        if len(non_null) and isinstance(non_null.iloc[0], (list, tuple, np.ndarray)):
            lists = [[str(x).strip() for x in v if x is not None and str(x).strip()]
                     if isinstance(v, (list, tuple, np.ndarray)) else [] for v in s.to_numpy(dtype=object)]
        else:
            lists = [[x.strip() for x in v.split(sep) if x.strip()] for v in _as_text(s).to_numpy(dtype=object)]
        return pa.array(lists, pa.list_(pa.string()))

    # ------------------------------------------------------------------ events
    def _events(self) -> list[tuple[EventSource, _Table, dict]]:
        out = []
        for src in self.spec.events:
            cols = [src.user, src.item, src.time]
            cols += [c for c in (src.label, src.value, src.channel_column, src.event_id) if c]
            cols += src.keep
            t = self._open(src, cols)
            if t is None:
                continue
            ev: dict = {"user_id": self._ids(t, src.user), "item_id": self._ids(t, src.item),
                        "time": self._times(t, src.time, src.time_format)}
            if src.channel_column:
                ch = _as_text(t.df[src.channel_column])
                self._row_problem(t, (ch == "").to_numpy(), src.channel_column, "a channel name", "an empty value")
                ev["channel"] = ch.to_numpy(dtype=object)
            else:
                ev["channel"] = np.full(t.n, src.channel or "default", dtype=object)
            if src.label:
                ev["label"] = self._numbers(t, src.label, required=True, booleans=True)
            if src.value:
                ev["value"] = self._numbers(t, src.value, required=False)
            if src.event_id:
                ev["event_id"] = self._ids(t, src.event_id)
            for c in src.keep:
                ev[c] = _as_text(t.df[c]).to_numpy(dtype=object)
            out.append((src, t, ev))
        return out

    # ------------------------------------------------------------------ items / users
    def _entity(self, src: EntitySource, key: str) -> tuple[_Table, dict] | None:
        cols = [src.id, *src.categorical, *src.multi_categorical, *src.numeric, *src.text, *src.keep]
        t = self._open(src, cols)
        if t is None:
            return None
        ids = self._ids(t, src.id)
        self._duplicates(t, ids, src.id, "a unique id")
        cols_out: dict = {key: ids}
        for c in src.categorical:
            cols_out[c] = self._categorical(t, c)
        for c, sep in src.multi_categorical.items():
            cols_out[c] = self._multi(t, c, sep)
        for c in src.numeric:
            cols_out[c] = self._numbers(t, c, required=False)
        for c in src.keep:
            cols_out[c] = self._categorical(t, c)
        if src.text:
            parts = [_as_text(t.df[c]) for c in src.text]
            joined = [ "\n".join(p for p in row if p) for row in zip(*(p.to_numpy(dtype=object) for p in parts))]
            cols_out["__text__"] = np.array(joined, dtype=object)
        return t, cols_out

    # ------------------------------------------------------------------ content
    def _content(self, src: ContentSource) -> tuple[_Table, np.ndarray, list, np.ndarray] | None:
        """-> (table, ids, values, present mask)."""
        header = self._header(src)
        if header is None:
            return None
        if src.columns is not None:
            if isinstance(src.columns, str):
                value_cols = sorted(fnmatch.filter(header, src.columns), key=_natural_key)
                if not value_cols:
                    self.fatal.append(Problem(str(self._path(src)), None, src.columns,
                                              f"columns matching '{src.columns}'", "none"))
                    return None
            else:
                value_cols = list(src.columns)
        else:
            value_cols = [src.column]
        t = self._read(src, [src.id, *value_cols], header)
        if t is None:
            return None
        ids = self._ids(t, src.id)
        if src.kind in ("text", "image", "audio"):
            s = _as_text(t.df[src.column])
            present = (s != "").to_numpy()
            values = s.to_numpy(dtype=object)
            if src.kind != "text":
                folder = self._path(src).parent
                values = np.array([v if (not v or "://" in v or os.path.isabs(v)) else str(folder / v)
                                   for v in values], dtype=object)
                absent = np.array([bool(v) and "://" not in v and not os.path.exists(v) for v in values])
                self._row_problem(t, absent, src.column, f"the path of an existing {src.kind} file",
                                  [repr(v) for v in values[absent]])
            return t, ids, list(values), present
        if src.kind == "tokens":
            vals, present = self._number_lists(t, src.column, integers=True)
            return t, ids, vals, present
        if src.columns is not None:
            mat = np.full((t.n, len(value_cols)), np.nan)
            empty_all = np.ones(t.n, dtype=bool)
            empties = []
            for j, c in enumerate(value_cols):
                s = t.df[c]
                e = (_as_text(s) == "").to_numpy() if not pd.api.types.is_numeric_dtype(s) else s.isna().to_numpy()
                empties.append(e)
                empty_all &= e
            for j, c in enumerate(value_cols):
                sub = _Table(t.file, t.df[[c]], np.zeros(t.n, dtype=bool))
                mat[:, j] = self._numbers(sub, c, required=False)
                partial = empties[j] & ~empty_all
                self._row_problem(sub, partial, c, "a number (only whole rows may be empty)", "an empty value")
                self._merge(t, sub)
            present = ~empty_all
            vals = [row.astype(np.float32) for row in mat]
            return t, ids, vals, present
        vals, present = self._number_lists(t, src.column, integers=False)
        return t, ids, vals, present

    def _merge(self, into: _Table, part: _Table) -> None:
        into.bad |= part.bad
        for r, reasons in part.reasons.items():
            into.reasons.setdefault(r, []).extend(reasons)

    def _number_lists(self, t: _Table, col: str, integers: bool) -> tuple[list, np.ndarray]:
        s = t.df[col]
        vals: list = []
        present = np.zeros(t.n, dtype=bool)
        bad_rows, found = [], []
        dtype = np.int64 if integers else np.float32
        for r, v in enumerate(s.to_numpy(dtype=object)):
            if v is None or (isinstance(v, float) and np.isnan(v)):
                vals.append(None)
                continue
            if isinstance(v, str):
                body = v.strip().strip("[]()").strip()
                if not body:
                    vals.append(None)
                    continue
                tokens = [x for x in re.split(r"[,\s;]+", body) if x]
            else:
                tokens = list(v)
            try:
                arr = np.array([float(x) for x in tokens], dtype=np.float64)
                if integers and not np.all(arr == np.round(arr)):
                    raise ValueError
                if not np.isfinite(arr).all():
                    raise ValueError
            except (TypeError, ValueError):
                bad_rows.append(r)
                shown = v if isinstance(v, str) else str(list(v))
                found.append(repr(shown[:60] + ("..." if len(shown) > 60 else "")))
                vals.append(None)
                continue
            vals.append(arr.astype(dtype))
            present[r] = True
        mask = np.zeros(t.n, dtype=bool)
        mask[bad_rows] = True
        what = "a list of integers" if integers else "a list of finite numbers"
        self._row_problem(t, mask, col, what, found)
        return vals, present

    def _duplicates(self, t: _Table, ids: np.ndarray, column: str, expected: str) -> None:
        s = pd.Series(ids, dtype=object)
        dup = (s.duplicated() & (s != "")).to_numpy()
        if dup.any():
            first = pd.Series(np.arange(len(s)), index=s.to_numpy())[~s.duplicated().to_numpy()]
            self._row_problem(t, dup, column, expected,
                              [f"{v!r} again (first at row {first[v] + 1})" for v in ids[dup]])

    # ------------------------------------------------------------------ cross references
    def _check_refs(self, t: _Table, ids: np.ndarray, column: str, kind: str, known_all: np.ndarray,
                    known_ok: np.ndarray, ref_file: str) -> None:
        s = pd.Series(ids, dtype=object)
        candidates = (~s.isin(known_ok) & (s != "")).to_numpy()
        if not candidates.any():
            return
        unknown = candidates & ~s.isin(known_all).to_numpy()
        self._row_problem(t, unknown, column, f"{_an(kind)} id listed in {ref_file}",
                          [f"unknown {kind} {v!r}" for v in ids[unknown]])
        rejected = candidates & ~unknown  # listed, but its row in the side file was rejected
        self._row_problem(t, rejected, column, f"{_an(kind)} whose row in {ref_file} is valid",
                          [f"{v!r}, whose row there was rejected" for v in ids[rejected]])

    # ------------------------------------------------------------------ main
    def run(self, origin: str) -> tuple[InteractionData, list[Rejected]]:
        spec = self.spec
        events = self._events()
        entities: dict[str, tuple[_Table, dict] | None] = {}
        for name, src, key in (("item", spec.items, "item_id"), ("user", spec.users, "user_id")):
            entities[name] = self._entity(src, key) if src is not None else None
        contents = [(c, self._content(c)) for c in spec.content]
        if self.fatal:
            raise DataError(self.fatal + self.row_problems)

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
                    self._check_refs(t, ev[key], col, name, *known[name])
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
            self._check_refs(t, ids, c.id, c.entity, *known[c.entity])
            self._duplicates(t, ids, c.id, "one row per id (a missing modality is a missing row)")
            if c.kind == "vector":
                lengths = np.array([len(v) if p else -1 for v, p in zip(values, present)])
                usable = present & ~t.bad
                want = c.dim if c.dim is not None else (_mode(lengths[usable].tolist()) if usable.any() else 0)
                wrong = present & (lengths != want)
                self._row_problem(t, wrong, c.column or str(c.columns), f"a vector of length {want}",
                                  [f"length {k}" for k in lengths[wrong]])

        if self.row_problems and not self.skip:
            raise DataError(self.row_problems)

        rejected: list[Rejected] = []
        tables = [t for _, t, _ in events] + [e[0] for e in entities.values() if e is not None]
        tables += [got[0] for _, got in contents if got is not None]
        for t in tables:
            for r in sorted(t.reasons):
                rejected.append(Rejected(t.file, r + 1, "; ".join(t.reasons[r])))

        data = self._build(events, entities, contents)
        probs = data.problems(origin)  # a last guard: what the importer produced must be valid data
        if probs:
            raise DataError(probs)
        return data, rejected

    # ------------------------------------------------------------------ assembly
    def _build(self, events, entities, contents) -> InteractionData:
        spec = self.spec
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
        )
        return InteractionData(ds, ev_table, side["item"], side["user"], content)


def _arrow_text(s: pd.Series) -> pa.Array:
    """Any column as stripped Arrow strings ("" for missing); integral floats lose their ".0" (ids in
    Parquet). Arrow's kernels keep a million-row column well under a second."""
    if pd.api.types.is_float_dtype(s):
        vals = s.to_numpy(dtype=float)
        out = np.empty(len(vals), dtype=object)
        for i, v in enumerate(vals):
            out[i] = "" if np.isnan(v) else (str(int(v)) if v.is_integer() else repr(v))
        return pa.array(out, pa.string())
    try:
        arr = pa.array(s, from_pandas=True)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if not pa.types.is_string(arr.type):
            arr = pc.cast(arr, pa.string())
    except (pa.ArrowException, TypeError, ValueError):  # mixed Python objects
        arr = pa.array(s.astype(object).where(s.notna(), "").astype(str).to_numpy(dtype=object), pa.string())
    return pc.fill_null(pc.utf8_trim_whitespace(arr), "")


def _as_text(s: pd.Series) -> pd.Series:
    return pd.Series(_arrow_text(s).to_numpy(zero_copy_only=False), index=s.index, dtype=object)


def _strict_cast(arr: pa.Array, empty: np.ndarray, to: pa.DataType) -> np.ndarray | None:
    """Arrow's cast of every non-empty cell (empty -> NaN / 0), or None when some cell does not parse."""
    try:
        cast = pc.cast(pc.if_else(pa.array(empty), pa.scalar(None, pa.string()), arr), to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if pa.types.is_integer(to):
        return pc.fill_null(cast, 0).to_numpy(zero_copy_only=False)
    return cast.to_numpy(zero_copy_only=False).astype(np.float64)


def _int_if_integral(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    v = values[valid]
    if np.all(v == np.floor(v)) and (not len(v) or np.abs(v).max() < 2**62):
        out = np.zeros(len(values), dtype=np.int64)
        out[valid] = v.astype(np.int64)
        return out
    return np.where(valid, values, 0.0)


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _mode(values: list[int]) -> int:
    vals, counts = np.unique(np.asarray(values), return_counts=True)
    return int(vals[np.argmax(counts)])


def _an(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word
