"""What the importer found wrong: problems per file and per row, and the rows it left out.

A `Table` is one input file read as a frame with its bad-row mask; `Report.row_problem` marks rows bad and
records a `Problem(file, row, column, expected, found)` per row (rows are 1-based data rows, the header not
counted). Problems that concern no single row (a missing file or column, an unreadable file) are `fatal`:
they always raise. With `skip_bad_rows` the bad rows become `Rejected(file, row, reason)` entries, which
`write_rejected` writes to CSV (OUT/rejected.csv of `modalrec data import --skip-bad-rows`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .errors import Problem


class Rejected(NamedTuple):
    """One input row left out by `import_dataset(..., skip_bad_rows=True)`."""

    file: str
    row: int
    reason: str


def write_rejected(rejected: Iterable[Rejected], path: str | os.PathLike) -> Path:
    path = Path(path)
    pd.DataFrame(list(rejected), columns=list(Rejected._fields)).to_csv(path, index=False)
    return path


@dataclass
class Table:
    """One input file read as a frame, with its bad-row mask and the reasons per bad row."""

    file: str
    df: pd.DataFrame
    bad: np.ndarray
    reasons: dict[int, list[str]] = field(default_factory=dict)  # 0-based row -> reasons

    @property
    def n(self) -> int:
        return len(self.df)

    def merge(self, part: Table) -> None:
        """Takes over the bad rows and reasons of `part` (a view of some of this table's columns)."""
        self.bad |= part.bad
        for r, reasons in part.reasons.items():
            self.reasons.setdefault(r, []).extend(reasons)

    def rejected(self) -> list[Rejected]:
        return [Rejected(self.file, r + 1, "; ".join(self.reasons[r])) for r in sorted(self.reasons)]


class Report:
    """Every problem of one import: `fatal` ones (about no single row) and `rows` ones (about a row)."""

    def __init__(self) -> None:
        self.fatal: list[Problem] = []
        self.rows: list[Problem] = []

    def file_problem(self, file: str, column: str | None, expected: str, found: str | None) -> None:
        self.fatal.append(Problem(str(file), None, column, expected, found))

    def row_problem(self, t: Table, mask: np.ndarray, column: str | None, expected: str,
                    found: Iterable[str] | str) -> None:
        """Marks the rows of `t` where `mask` is True bad; `found` is one string for all, or one per bad row."""
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        found_list = [found] * len(rows) if isinstance(found, str) else list(found)
        for r, f in zip(rows.tolist(), found_list):
            self.rows.append(Problem(t.file, r + 1, column, expected, f))
            reason = (f"column '{column}': " if column else "") + f"expected {expected}, found {f}"
            t.reasons.setdefault(r, []).append(reason)
        t.bad[rows] = True
