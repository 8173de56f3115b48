"""CSV reading and checking for the KuaiLive loader: typed reads whose every malformed row or cell becomes a
`Problem` naming the file, the 1-based data row and the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ...data.errors import DataError, Problem


def _header(file: Path) -> list[str]:
    if not file.is_file():
        raise DataError(Problem(str(file), None, None, "a file of the KuaiLive release", "no such file"))
    with open(file, encoding="utf-8-sig") as fh:
        line = fh.readline()
    cols = [c.strip().strip('"') for c in line.rstrip("\r\n").split(",")] if line.strip() else []
    if not cols:
        raise DataError(Problem(str(file), None, None, "a header row", "an empty file"))
    return cols


def _read_csv(file: Path, required: list[str], ints: list[str], floats: list[str] = (),
              all_columns: bool = False) -> pa.Table:
    """`required` columns (and every column when `all_columns`): `ints` as int64, `floats` as float64,
    the rest as text. Every malformed row or cell becomes a Problem with its 1-based data row."""
    header = _header(file)
    missing = [c for c in required if c not in header]
    if missing:
        shown = header if len(header) <= 10 else header[:10] + ["..."]
        raise DataError([Problem(str(file), None, c, f"a column named '{c}'", f"no such column (has {shown})")
                         for c in missing])
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise DataError(Problem(str(file), None, dup[0], "each column name once in the header", "a repeat"))
    wanted = header if all_columns else list(required)
    types = {c: pa.string() for c in wanted} | {c: pa.int64() for c in ints} | {c: pa.float64() for c in floats}
    convert = pacsv.ConvertOptions(column_types=types, include_columns=wanted, null_values=[""],
                                   strings_can_be_null=True)
    bad_rows: list = []
    try:
        table = pacsv.read_csv(file, read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
                               convert_options=convert,
                               parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad_rows.append(r)
                                                                or "skip"))
    except pa.ArrowInvalid as e:
        raise DataError(_diagnose(file, header, wanted, ints, floats)
                        or [Problem(str(file), None, None, "a readable CSV file", str(e).splitlines()[0])]) from None
    if bad_rows:
        raise DataError(_diagnose(file, header, wanted, ints, floats)
                        or [Problem(str(file), None, None, "a readable CSV file",
                                    f"{len(bad_rows)} malformed row(s)")])
    probs = []
    for c in list(ints) + list(floats):
        col = table[c]
        if col.null_count:
            r = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0]) + 1
            probs.append(Problem(str(file), r, c, "an integer" if c in ints else "a number",
                                 f"an empty cell ({col.null_count} in this column)"))
    if probs:
        raise DataError(probs)
    return table


def _diagnose(file: Path, header: list[str], wanted: list[str], ints: list[str], floats: list[str]) -> list[Problem]:
    """Why a typed read failed: rows with the wrong number of fields, else the first cell of each
    numeric column that is not a number. Reads everything as text on one thread (line numbers)."""
    bad_rows: list = []
    try:
        table = pacsv.read_csv(
            file, read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted},
                                                 include_columns=wanted),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad_rows.append(r) or "skip"))
    except pa.ArrowInvalid as e:
        return [Problem(str(file), None, None, "a readable CSV file", str(e).splitlines()[0])]
    if bad_rows:
        return [Problem(str(file), r.number - 1 if r.number else None, None,
                        f"{r.expected_columns} fields as in the header",
                        f"{r.actual_columns} field(s): {r.text[:60]!r}") for r in bad_rows[:20]]
    probs = []
    for c in list(ints) + list(floats):
        text = pc.utf8_trim_whitespace(table[c].combine_chunks())
        pattern = r"^[+-]?\d{1,18}$" if c in ints else r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
        ok = pc.fill_null(pc.match_substring_regex(text, pattern), True).to_numpy(zero_copy_only=False)
        if not ok.all():
            r = int(np.flatnonzero(~ok)[0])
            more = f" ({int((~ok).sum())} such rows)" if (~ok).sum() > 1 else ""
            probs.append(Problem(str(file), r + 1, c, "an integer" if c in ints else "a number",
                                 repr(table[c][r].as_py()) + more))
    return probs


def _first_bad(probs: list[Problem], mask: np.ndarray, file: Path, column: str, expected: str, found) -> None:
    if mask.any():
        r = int(np.flatnonzero(mask)[0])
        more = f" ({int(mask.sum())} such rows)" if mask.sum() > 1 else ""
        probs.append(Problem(str(file), r + 1, column, expected, found(r) + more))


def _np(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False) if isinstance(col, pa.Array) else col.combine_chunks().to_numpy(
        zero_copy_only=False)

