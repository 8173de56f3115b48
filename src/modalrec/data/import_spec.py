"""The import spec: the YAML mapping of `modalrec.data.importer.import_dataset`, as pydantic models.

The format and its rules are described in `modalrec.data.importer`; `load_import_spec` reads and checks a
spec file, reporting every problem as a `Problem` of that file.
"""

from __future__ import annotations

import codecs
import os
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import DataError, Problem
from .interaction import ModalityKind, _pydantic_problems
from .timerange import TimeRange

EVENT_CORE_COLUMNS = ("user_id", "item_id", "time", "channel", "label", "value", "event_id")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSource(_Strict):
    file: str
    sep: str | None = None
    encoding: str = "utf-8"

    @field_validator("sep")
    @classmethod
    def _one_character(cls, v: str | None) -> str | None:
        v = {"\\t": "\t"}.get(v, v)  # a YAML '\t' (single-quoted) is meant as a tab
        if v is not None and (len(v) != 1 or not v.isascii() or v in "\r\n\""):
            raise ValueError(f"a separator of one character (such as \",\", \";\", \"|\" or a tab), found {v!r}")
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"a known text encoding (Python's names: utf-8, latin-1, cp1252, utf-16, ...), "
                             f"found {v!r}") from None
        return v


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
            raise ValueError("either `channel` (a constant) or `channel_column`, found both")
        clash = set(self.keep) & set(EVENT_CORE_COLUMNS)
        if clash:
            raise ValueError(f"`keep` columns named unlike the core event columns {list(EVENT_CORE_COLUMNS)}, "
                             f"found {sorted(clash)}")
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
                raise ValueError(f"each column in one role (categorical, multi_categorical, numeric or keep), "
                                 f"found '{name}' in two")
            seen.add(name)
        if self.id in seen:
            raise ValueError(f"features other than the id column, found the id column '{self.id}' among them")
        for col, sep in self.multi_categorical.items():
            if not sep:
                raise ValueError(f"a non-empty separator for multi_categorical '{col}', found {sep!r}")
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
            raise ValueError("exactly one of `column` or `columns`, found "
                             + ("both" if self.column is not None else "neither"))
        if self.columns is not None and self.kind != "vector":
            raise ValueError(f"`columns` (several numeric columns) only with kind: vector, found kind: {self.kind}")
        if self.dim is not None and self.kind != "vector":
            raise ValueError(f"`dim` only with kind: vector, found kind: {self.kind}")
        return self


TimeBound = int | float | datetime | date | str  # unix seconds, a YAML date (2024-01-01), or an ISO date(-time) string


class TimeRangeSpec(_Strict):
    """`time_range: {min: ..., max: ...}`: the plausible event times (see `modalrec.data.timerange`)."""

    min: TimeBound | None = None
    max: TimeBound | None = None

    @model_validator(mode="after")
    def _valid(self) -> TimeRangeSpec:
        try:
            self.rule()
        except ValueError as e:  # names the bad bound
            raise ValueError(f"min and max as unix seconds or ISO dates, min not after max; found: {e}") from None
        return self

    def rule(self) -> TimeRange:
        return TimeRange.parse(self.min, self.max)


class ImportSpec(_Strict):
    """The YAML mapping of `import_dataset` (see `modalrec.data.importer` for the format)."""

    name: str
    description: str = ""
    source: str = ""
    citation: str = ""
    events: list[EventSource] = Field(min_length=1)
    items: EntitySource | None = None
    users: EntitySource | None = None
    content: list[ContentSource] = Field(default_factory=list)
    time_range: TimeRangeSpec = Field(default_factory=TimeRangeSpec)
    partitions: int | None = Field(default=None, ge=1)  # events/part-NNNNN.parquet by user; None: events.parquet

    @model_validator(mode="after")
    def _consistent(self) -> ImportSpec:
        names = [c.name for c in self.content]
        if self.items is not None and self.items.text:
            names.append("text")
        if self.users is not None and self.users.text:
            names.append("user_text")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"unique modality names (items.text is 'text', users.text is 'user_text'), "
                             f"found {dup} more than once")
        for c in self.content:
            if c.entity == "event" and not any(e.event_id for e in self.events):
                raise ValueError(f"`event_id` on an events file, as content '{c.name}' describes events; found no "
                                 "events file with one")
        return self


def load_import_spec(path: str | os.PathLike) -> ImportSpec:
    path = Path(path)
    if not path.is_file():
        raise DataError(Problem(str(path), None, None, "an import spec (YAML)",
                                "a directory" if path.is_dir() else "no such file"))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DataError(Problem(str(path), None, None, "valid YAML", f"{getattr(e, 'problem', e)}{where}")) from None
    if not isinstance(raw, dict):
        raise DataError(Problem(str(path), None, None, "a YAML mapping (name:, events:, ...)",
                                "an empty file" if raw is None else type(raw).__name__))
    try:
        return ImportSpec.model_validate(raw)
    except ValidationError as e:
        raise DataError(_spec_problems(str(path), e)) from None


def _spec_problems(file: str, err: ValidationError) -> list[Problem]:
    """One problem per error; the spec's own rules (a ValueError of a validator) say what and why in their
    message, so it is shown as it is, without the "value error" prefix and the whole entry as the value found."""
    out = []
    for e in err.errors():
        if e["type"] != "value_error":
            out.extend(_pydantic_problems(file, ValidationError.from_exception_data(err.title, [e])))
            continue
        key = ".".join(str(x) for x in e["loc"]) or None
        out.append(Problem(file, None, key, e["msg"].removeprefix("Value error, ")))
    return out
