"""CSV reading and checking for the insurance loader: typed reads, integer ids, speakers, token lists.

Every helper reports a problem as a `Problem` naming the file, the 1-based data row and the column
(collected in a list and raised together by `_raise`), so that no row is dropped silently."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ...data.errors import DataError, Problem
from .layout import SPEAKERS

_INT = r"^[+-]?\d{1,18}(\.0*)?$"  # "3596.0" is how pandas writes an integer column with gaps


def _header(file: Path) -> list[str]:
    if not file.is_file():
        raise DataError(Problem(str(file), None, None, "a CSV file", "no such file"))
    with open(file, newline="", encoding="utf-8-sig") as fh:
        row = next(csv.reader(fh), None)
    if not row:
        raise DataError(Problem(str(file), None, None, "a header row", "an empty file"))
    return [c.strip() for c in row]


def _read_csv(file: Path, columns: list[str], float_columns: list[str] = (), header: list[str] | None = None
              ) -> pa.Table:
    """Read `columns` as strings and `float_columns` as float32; every malformed row is a Problem."""
    header = header if header is not None else _header(file)
    wanted = list(columns) + list(float_columns)
    missing = [c for c in wanted if c not in header]
    if missing:
        shown = header if len(header) <= 8 else header[:8] + ["..."]
        raise DataError([Problem(str(file), None, c, f"a column named '{c}'", f"no such column (has {shown})")
                         for c in missing])
    types = {c: pa.string() for c in columns} | {c: pa.float32() for c in float_columns}
    # only an empty cell is missing: "nan" in an embedding column is read as NaN and reported as such
    convert = pacsv.ConvertOptions(column_types=types, include_columns=wanted, null_values=[""],
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    bad_rows: list = []
    read = pacsv.ReadOptions(column_names=header, skip_rows=1)
    try:
        table = pacsv.read_csv(file, read_options=read, convert_options=convert,
                               parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad_rows.append(r)
                                                                or "skip"))
        if not bad_rows:
            return table
        error = f"{len(bad_rows)} malformed row(s)"
    except pa.ArrowInvalid as e:  # a value that is not a number
        error = str(e).splitlines()[0]
    raise DataError(_diagnose(file, header, columns, float_columns)
                    or [Problem(str(file), None, None, "a readable CSV file", error)])


def _diagnose(file: Path, header: list[str], columns: list[str], float_columns: list[str]) -> list[Problem]:
    """Where a fast read failed: rows with the wrong number of fields, else cells that are not numbers.

    Reads everything as text on one thread, the only way the CSV reader reports line numbers."""
    wanted = list(columns) + list(float_columns)
    bad_rows: list = []
    try:
        table = pacsv.read_csv(
            file, read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted}, include_columns=wanted),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad_rows.append(r) or "skip"))
    except pa.ArrowInvalid as e:
        return [Problem(str(file), None, None, "a readable CSV file", str(e).splitlines()[0])]
    probs = []
    for r in bad_rows[:20]:
        col = header[r.actual_columns] if r.actual_columns < len(header) else None
        probs.append(Problem(str(file), r.number - 1 if r.number else None, col,
                             f"{r.expected_columns} fields as in the header",
                             f"{r.actual_columns} field(s): {r.text[:60]!r}"))
    if probs:
        return probs
    for c in float_columns:
        try:
            pc.cast(table[c], pa.float32())
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        for i, v in enumerate(table[c].to_pylist()):
            try:
                float(v)
            except (TypeError, ValueError):
                return [Problem(str(file), i + 1, c, "a number", repr(v))]
    return []


def _ints(table: pa.Table, column: str, file: str, probs: list[Problem], *, optional: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids from a string column ("12", "12.0"); empty cells allowed only when `optional`."""
    col = pc.utf8_trim_whitespace(table[column].combine_chunks() if table.num_rows else pa.array([], pa.string()))
    empty = pc.equal(col, "").to_numpy(zero_copy_only=False).astype(bool)
    ok = pc.match_substring_regex(col, _INT).to_numpy(zero_copy_only=False).astype(bool)
    bad = ~ok & ~(empty & optional)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        what = "an integer" + (" or an empty cell" if optional else "")
        more = f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else ""
        probs.append(Problem(file, r + 1, column, what, repr(col[r].as_py()) + more))
        return np.zeros(len(col), np.int64), ~empty
    clean = pc.if_else(pa.array(ok), pc.replace_substring_regex(col, r"\.0*$", ""), pa.scalar("0"))
    return pc.cast(clean, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64), ~empty


def _speakers(table: pa.Table, file: str, probs: list[Problem]) -> np.ndarray:
    raw = table["sentence_speaker"].to_numpy(zero_copy_only=False).astype(str)
    norm = np.char.lower(np.char.strip(raw))
    bad = ~np.isin(norm, SPEAKERS)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        more = f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else ""
        probs.append(Problem(file, r + 1, "sentence_speaker", "'user' or 'agent'", repr(str(raw[r])) + more))
    return norm.astype(object)


def _token_lists(table: pa.Table, column: str, file: str, probs: list[Problem]) -> tuple[np.ndarray, np.ndarray]:
    """'12,40,77' (also '[12, 40, 77]' or blank-separated; empty = no ids) -> (row offsets, int64 ids)."""
    n = table.num_rows
    col = table[column].combine_chunks() if n else pa.array([], pa.string())
    stripped = pc.utf8_trim_whitespace(pc.replace_substring_regex(col, r"[\[\]\"']", ""))
    parts = pc.split_pattern_regex(stripped, r"[,;\s]+")
    flat = pc.list_flatten(parts)
    parent = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False).astype(bool)
    flat, parent = flat.filter(pa.array(keep)), parent[keep]
    ok = pc.match_substring_regex(flat, _INT).to_numpy(zero_copy_only=False).astype(bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        probs.append(Problem(file, int(parent[i]) + 1, column, "a comma-separated list of integer ids",
                             repr(col[int(parent[i])].as_py())))
        return np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
    values = pc.cast(pc.replace_substring_regex(flat, r"\.0*$", ""), pa.int64()).to_numpy(zero_copy_only=False)
    counts = np.bincount(parent, minlength=n)
    return np.r_[0, np.cumsum(counts)].astype(np.int64), values.astype(np.int64)


def _first(probs: list[Problem], mask: np.ndarray, file: str, column: str, expected: str, found) -> None:
    """One Problem for the first True row of `mask` (with the count of such rows)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        r = int(np.flatnonzero(mask)[0])
        more = f" ({int(mask.sum())} such rows)" if mask.sum() > 1 else ""
        probs.append(Problem(file, r + 1, column, expected, found(r) + more))


def _duplicates(probs: list[Problem], file: str, columns: tuple[str, str], a: np.ndarray, b: np.ndarray) -> None:
    order = np.lexsort((b, a))
    same = (a[order][1:] == a[order][:-1]) & (b[order][1:] == b[order][:-1])
    dup = np.zeros(len(a), dtype=bool)
    dup[order[1:][same]] = True
    _first(probs, dup, file, columns[1], f"one row per ({columns[0]}, {columns[1]})",
           lambda r: f"a repeat of ({a[r]}, {b[r]})")


def _raise(probs: list[Problem]) -> None:
    if probs:
        raise DataError(probs)


def _prefixed(prefix: str, ids: np.ndarray) -> pa.Array:
    return pa.array(np.char.add(prefix, np.asarray(ids, dtype=np.int64).astype(str)).astype(object), pa.string())
