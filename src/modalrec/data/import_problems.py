"""What the importer found wrong: problems per file and per row, and the rows it left out.

A `Table` is one chunk of an input file (a frame of raw cells, its bad-row mask, and `offset`, the 0-based row of
its first row in the file): the importer reads every file in bounded chunks, so a row's number is its chunk's
offset plus its place in the chunk. `Report.row_problem` marks rows bad and records a `Problem(file, row, column,
expected, found)` per row (rows are 1-based data rows, the header not counted). Problems that concern no single
row (a missing file or column, an unreadable file) are `fatal`: they always raise. With `skip_bad_rows` the bad
rows become `Rejected(file, row, reason)` entries, which `write_rejected` (or a `RejectedCSV` as they come) writes
to CSV (OUT/rejected.csv of `modalrec data import --skip-bad-rows`).

The report keeps its problems in the order of the import of a whole file at once: each problem is filed under a
`stage` (the events' cells, the catalogue's cells, the events' references, the content's cross checks; then the
file's place in the spec), and `Report.ordered` sorts them stably by it, so a chunked read lists the problems
of a file of one chunk exactly as before (those of a larger file come chunk by chunk).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import Problem

# stages of a problem: its place in the order of the report (then the file's place in the spec)
EVENT_CELLS, CATALOGUE_CELLS, EVENT_REFS, CONTENT_CHECKS = 0, 1, 2, 3


class Rejected(NamedTuple):
    """One input row left out by `import_dataset(..., skip_bad_rows=True)`."""

    file: str
    row: int
    reason: str


class RejectedList(list):
    """Rejected rows kept in a list (`import_dataset`); `write` as `RejectedCSV` has it."""

    def write(self, rows: Iterable[Rejected]) -> None:
        self.extend(rows)


class RejectedCSV:
    """Writes rejected rows to a CSV file as they come (file,row,reason; the file is created by the first row)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._f = None
        self._w = None

    def write(self, rows: Iterable[Rejected]) -> None:
        for r in rows:
            if self._w is None:
                self._f = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
                self._w = csv.writer(self._f, lineterminator="\n")
                self._w.writerow(Rejected._fields)
            self._w.writerow(r)
            self.count += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = self._w = None


def write_rejected(rejected: Iterable[Rejected], path: str | os.PathLike) -> Path:
    out = RejectedCSV(path)
    out.write(rejected)
    if out.count == 0:  # the header alone
        out.path.write_text(",".join(Rejected._fields) + "\n", encoding="utf-8")
    out.close()
    return out.path


@dataclass
class Table:
    """One chunk of an input file: its raw cells, its bad-row mask and the reasons per bad row."""

    file: str
    df: object  # a pandas DataFrame of the chunk's cells (None once its columns are converted and merged)
    bad: np.ndarray
    reasons: dict[int, list[str]] = field(default_factory=dict)  # 0-based row in the chunk -> reasons
    offset: int = 0  # 0-based row of the chunk's first row in the file

    @property
    def n(self) -> int:
        return len(self.bad)

    def merge(self, part: Table) -> None:
        """Takes over the bad rows and reasons of `part` (a view of some of this table's columns)."""
        self.bad |= part.bad
        for r, reasons in part.reasons.items():
            self.reasons.setdefault(r, []).extend(reasons)

    def rejected(self) -> list[Rejected]:
        return [Rejected(self.file, self.offset + r + 1, "; ".join(self.reasons[r])) for r in sorted(self.reasons)]

    @classmethod
    def concat(cls, file: str, parts: list[Table]) -> Table:
        """The chunks of one file as one table (rows numbered from the file's first row)."""
        bad = np.concatenate([p.bad for p in parts]) if parts else np.zeros(0, dtype=bool)
        reasons: dict[int, list[str]] = {}
        start = 0
        for p in parts:
            for r, rs in p.reasons.items():
                reasons[start + r] = rs
            start += p.n
        return cls(file, None, bad, reasons)


class Report:
    """Every problem of one import: `fatal` ones (about no single row) and `rows` ones (about a row).

    `stage` (set by the importer) files each problem under (stage, file's place in the spec); `ordered` and
    `ordered_fatal` sort by it. `keep`: at most this many row problems are kept (the rest only counted in
    `dropped`): with `skip_bad_rows` every bad row is written out as it is found, and memory must not grow
    with the number of bad rows."""

    def __init__(self, keep: int | None = None) -> None:
        self.fatal: list[Problem] = []
        self.rows: list[Problem] = []
        self._fatal_keys: list[int] = []
        self._row_keys: list[tuple[int, int]] = []
        self.stage: tuple[int, int] = (EVENT_CELLS, 0)
        self.file_index = 0  # the place of the file being read (for its fatal problems)
        self.keep = keep
        self.dropped = 0
        self.dropped_file = ""

    def file_problem(self, file: str, column: str | None, expected: str, found: str | None) -> None:
        self.add_fatal(Problem(str(file), None, column, expected, found))

    def add_fatal(self, problem: Problem) -> None:
        self.fatal.append(problem)
        self._fatal_keys.append(self.file_index)

    def row_problem(self, t: Table, mask: np.ndarray, column: str | None, expected: str,
                    found: Iterable[str] | str) -> None:
        """Marks the rows of `t` where `mask` is True bad; `found` is one string for all, or one per bad row."""
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        found_list = [found] * len(rows) if isinstance(found, str) else list(found)
        for r, f in zip(rows.tolist(), found_list):
            if self.keep is None or len(self.rows) < self.keep:
                self.rows.append(Problem(t.file, t.offset + r + 1, column, expected, f))
                self._row_keys.append(self.stage)
            else:
                self.dropped += 1
                self.dropped_file = t.file
            reason = (f"column '{column}': " if column else "") + f"expected {expected}, found {f}"
            t.reasons.setdefault(r, []).append(reason)
        t.bad[rows] = True

    @property
    def any_rows(self) -> bool:
        return bool(self.rows) or self.dropped > 0

    def drop_file(self, file: str) -> None:
        """Forgets the row problems of `file` (it turned out unreadable: its fatal problem says why)."""
        keep = [i for i, p in enumerate(self.rows) if p.file != file]
        self.rows = [self.rows[i] for i in keep]
        self._row_keys = [self._row_keys[i] for i in keep]

    def ordered(self, before: int | None = None) -> list[Problem]:
        """The row problems in the order of a whole-file import (only stages < `before` when given)."""
        order = sorted(range(len(self.rows)), key=lambda i: self._row_keys[i])
        out = [self.rows[i] for i in order if before is None or self._row_keys[i][0] < before]
        if self.dropped and before is None:
            out.append(Problem(self.dropped_file, None, None, f"at most {self.keep} bad rows listed here",
                               f"{self.dropped} more"))
        return out

    def ordered_fatal(self) -> list[Problem]:
        order = sorted(range(len(self.fatal)), key=lambda i: self._fatal_keys[i])
        return [self.fatal[i] for i in order]
