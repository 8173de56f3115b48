"""Problems found in user data, reported as file / row / column / what was expected.

A `Problem` is one finding; a `DataError` carries all of them so the CLI can print each on one
line and exit non-zero without a traceback. Rows are 1-based data rows (the header is not counted),
so "row 3" is the third record a user sees when opening the file in a spreadsheet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    row: int | None
    column: str | None
    expected: str
    found: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column '{self.column}'"
        msg = f"{where}: expected {self.expected}"
        if self.found is not None:
            msg += f", found {self.found}"
        return msg


class DataError(ValueError):
    """Raised when input data does not satisfy its spec. Holds every problem found."""

    def __init__(self, problems: list[Problem] | Problem, limit: int = 20):
        if isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        self.limit = limit
        shown = [str(p) for p in self.problems[:limit]]
        more = len(self.problems) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more problem(s)")
        super().__init__("\n".join(shown))

    def __reduce__(self):  # raised in a worker process (Ray, a DataLoader worker), re-raised here with its problems
        return type(self), (self.problems, self.limit)


def rows_of(mask, limit: int = 5) -> list[int]:
    """1-based row numbers where a boolean numpy mask is True (first `limit`)."""
    import numpy as np

    idx = np.flatnonzero(np.asarray(mask))[:limit]
    return [int(i) + 1 for i in idx]
