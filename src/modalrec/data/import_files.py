"""Reading the input files of an import: CSV / TSV / Parquet into a `Table` of raw cells.

`.parquet` / `.pq` files are read as Parquet, anything else as CSV with every cell a string (`sep`: "," or a
tab for `.tsv`; `encoding`: utf-8 unless the spec says otherwise; compression inferred from the name).
What can go wrong with the file as a whole is a fatal problem of the file (no such file, unreadable, a
missing column: with a hint when the header reads as one column that another separator would split);
what concerns one row is a row problem: a row with more or fewer fields than the header, or a cell with a
byte that is not text in the file's encoding (named by row and column, with the `encoding:` option).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import lzma
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import Problem
from .import_problems import Report, Table
from .import_spec import FileSource

PARQUET_SUFFIXES = (".parquet", ".pq")
COMMON_SEPARATORS = (",", "\t", ";", "|")
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes kept by the "surrogateescape" error handler
_UNCLOSED_QUOTE = re.compile(r"EOF inside string starting at row (\d+)")  # pandas' row: the data row, 1-based


def _unreadable(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _escaped(text: str) -> str:
    """`text` with each undecodable byte shown as \\xNN."""
    return _UNDECODED.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def _encoding_expected(encoding: str) -> str:
    return (f"text in the encoding {encoding} (the spec's `encoding:` option of this file says how it is "
            "written, e.g. `encoding: latin-1` or `encoding: cp1252`)")


def _undecoded_found(cell: str, encoding: str, where: str = "") -> str:
    byte = ord(_UNDECODED.search(cell).group()) - 0xDC00
    if where:
        return f"the byte 0x{byte:02x} {where}, which is not {encoding}"
    shown = _escaped(cell)
    shown = shown[:60] + ("..." if len(shown) > 60 else "")
    return f"the byte 0x{byte:02x}, which is not {encoding}, in '{shown}'"


def separator_hint(header: list[str], sep: str) -> str:
    """For a header that reads as one column: which common separator would split it, and how to set it."""
    if len(header) != 1:
        return ""
    splits = {c: len(header[0].split(c)) for c in COMMON_SEPARATORS if c != sep and c in header[0]}
    if not splits:
        return ""
    best = max(splits, key=splits.get)
    return (f"; the header splits into {splits[best]} columns with sep {best!r}: "
            f"set `sep: {json.dumps(best)}` for this file")


class FileReader:
    """Reads the files of an import spec whose paths are relative to `base`; problems go to `report`."""

    def __init__(self, base: Path, report: Report):
        self.base = base
        self.report = report

    def path(self, src: FileSource) -> Path:
        return self.base / src.file

    @staticmethod
    def is_parquet(path: Path) -> bool:
        return path.name.lower().endswith(PARQUET_SUFFIXES)

    @staticmethod
    def sep(src: FileSource, path: Path) -> str:
        if src.sep is not None:
            return src.sep
        return "\t" if ".tsv" in path.suffixes else ","

    def header(self, src: FileSource) -> list[str] | None:
        path = self.path(src)
        if not path.is_file():
            self.report.file_problem(path, None, "a data file", "no such file")
            return None
        try:
            if self.is_parquet(path):
                return list(pq.read_schema(path).names)
            try:  # undecodable bytes kept as surrogates: found by row and column in `read`
                names = [str(c) for c in pd.read_csv(path, sep=self.sep(src, path), nrows=0, encoding=src.encoding,
                                                     encoding_errors="surrogateescape").columns]
            except UnicodeEncodeError:  # ... which pandas' string columns refuse in the header: name them
                names = _raw_header(path, self.sep(src, path), src.encoding)
        except (OSError, ValueError, pa.ArrowException) as e:  # wrong format, encoding, empty file
            kind = "Parquet" if self.is_parquet(path) else "CSV"
            self.report.file_problem(path, None, f"a readable {kind} file", _unreadable(e))
            return None
        undecoded = [n for n in names if _UNDECODED.search(n)]
        for n in undecoded:
            self.report.file_problem(path, _escaped(n), _encoding_expected(src.encoding),
                                     _undecoded_found(n, src.encoding, "in the header"))
        return None if undecoded else names

    def read(self, src: FileSource, columns: list[str], header: list[str]) -> Table | None:
        path = self.path(src)
        missing = [c for c in dict.fromkeys(columns) if c not in header]
        hint = "" if self.is_parquet(path) else separator_hint(header, self.sep(src, path))
        for c in missing:
            shown = (", ".join(header[:15]) + (", ..." if len(header) > 15 else "")).replace("\t", "\\t")
            self.report.file_problem(path, c, f"a column named '{c}'", f"only columns [{shown}]{hint}")
        if missing:
            return None
        cols = list(dict.fromkeys(columns))
        if self.is_parquet(path):
            try:
                df = pq.read_table(path, columns=cols).to_pandas()
            except (OSError, ValueError, pa.ArrowException) as e:
                self.report.file_problem(path, None, "a readable Parquet file", _unreadable(e))
                return None
            return Table(str(path), df.reset_index(drop=True), np.zeros(len(df), dtype=bool))
        return self._read_csv(src, path, cols)

    def open_table(self, src: FileSource, columns: list[str]) -> Table | None:
        header = self.header(src)
        return None if header is None else self.read(src, columns, header)

    # ------------------------------------------------------------------ CSV
    def _read_csv(self, src: FileSource, path: Path, cols: list[str]) -> Table | None:
        sep = self.sep(src, path)
        kwargs = {"sep": sep, "keep_default_na": False, "na_filter": False, "skip_blank_lines": False,
                  "usecols": cols, "encoding": src.encoding}
        undecodable = False
        try:
            try:
                df = pd.read_csv(path, dtype=str, **kwargs)
            except UnicodeDecodeError:  # find the cells: keep the bad bytes as surrogates, then look
                df = pd.read_csv(path, dtype=object, encoding_errors="surrogateescape", **kwargs)
                undecodable = True
        except (OSError, ValueError, pa.ArrowException) as e:
            quote = _UNCLOSED_QUOTE.search(str(e))
            if quote:  # the rest of the file became one field: a problem of the file, named by the quote's row
                self.report.fatal.append(Problem(str(path), int(quote.group(1)), None,
                                                 "every quote (\") closed within its field",
                                                 "a quote that opens on this row and never closes ("
                                                 + _unreadable(e) + ")"))
            else:
                self.report.file_problem(path, None, "a readable CSV file", _unreadable(e))
            return None
        t = Table(str(path), df.reset_index(drop=True), np.zeros(len(df), dtype=bool))
        if undecodable:
            self._undecodable_cells(t, cols, src.encoding)
        self._field_counts(t, path, sep, src.encoding, decodable=not undecodable)
        return t

    def _undecodable_cells(self, t: Table, cols: list[str], encoding: str) -> None:
        for c in cols:
            s = t.df[c]
            hit = s.str.contains(_UNDECODED, regex=True).to_numpy(dtype=bool)
            self.report.row_problem(t, hit, c, _encoding_expected(encoding),
                                    [_undecoded_found(v, encoding) for v in s[hit]])
            if hit.any():
                s = s.where(~hit, s.str.replace(_UNDECODED, "\ufffd", regex=True))
            t.df[c] = s.astype(str)

    def _field_counts(self, t: Table, path: Path, sep: str, encoding: str, decodable: bool) -> None:
        """Rows with more or fewer fields than the header (pandas pads short rows with empty cells and drops
        the extra fields of long ones, as it reads only the columns named in the spec)."""
        counts = _wrong_field_counts(path, sep, encoding) if decodable else _wrong_field_counts_slow(path, sep,
                                                                                                      encoding)
        if counts is None:
            return
        expected, wrong = counts
        rows = np.array(sorted(r for r in wrong if r < t.n), dtype=np.int64)
        mask = np.zeros(t.n, dtype=bool)
        mask[rows] = True
        self.report.row_problem(t, mask, None, f"{expected} fields as the header", [str(wrong[r]) for r in rows])


def _wrong_field_counts(path: Path, sep: str, encoding: str) -> tuple[int, dict[int, int]] | None:
    """(fields of the header, {0-based data row: its number of fields} for every row with another number),
    rows counted as pandas counts them (a quoted newline stays inside its row, a blank line is a row of
    empty cells); None when the file cannot be scanned (pandas' own reading then reports it). Arrow's
    parser, on one thread so that it numbers the rows; the file must decode in `encoding`."""
    if len(sep) != 1:
        return None  # a regular-expression separator: pandas' python engine, no field structure to check
    utf8 = codecs.lookup(encoding).name in ("utf-8", "ascii")
    try:
        stream = _binary_stream(path)
    except (OSError, ValueError, zipfile.BadZipFile, pa.ArrowException):
        return None
    if stream is None:
        return None
    wrong: dict[int, int] = {}
    header_fields: list[int] = []

    def invalid(row) -> str:
        if row.number is None:
            raise ValueError("row number unknown")
        wrong[row.number - 2] = row.actual_columns  # number: 1-based, the header is row 1
        header_fields.append(row.expected_columns)
        return "skip"

    try:
        with stream:
            pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, autogenerate_column_names=True,
                                               encoding="utf8" if utf8 else encoding),
                parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True, ignore_empty_lines=False,
                                                 invalid_row_handler=invalid),
                convert_options=pacsv.ConvertOptions(include_columns=["f0"], column_types={"f0": pa.binary()}),
            )
        return (header_fields[0] if header_fields else 0), wrong
    except (OSError, ValueError, pa.ArrowException):
        pass
    return _wrong_field_counts_slow(path, sep, encoding)


def _wrong_field_counts_slow(path: Path, sep: str, encoding: str) -> tuple[int, dict[int, int]] | None:
    """The same with Python's csv module (undecodable bytes, rows longer than Arrow's block size, ...)."""
    if len(sep) != 1:
        return None
    try:
        stream = _binary_stream(path)
        if stream is None:
            return None
        with stream, io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="") as text:
            rows = csv.reader(text, delimiter=sep)
            n_header = len(next(rows, []))
            wrong = {i: len(r) for i, r in enumerate(rows) if r and len(r) != n_header}
        return n_header, wrong
    except (OSError, ValueError, csv.Error, zipfile.BadZipFile, pa.ArrowException):
        return None


def _raw_header(path: Path, sep: str, encoding: str) -> list[str]:
    """The header's fields with undecodable bytes kept as surrogates (Python's csv module)."""
    stream = _binary_stream(path)
    if stream is None:
        raise ValueError("cannot read the header")
    with stream, io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="") as text:
        return next(csv.reader(text, delimiter=sep), [])


def _binary_stream(path: Path):
    """The file's bytes, decompressed as pandas infers from the name (None for a tar archive)."""
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return None
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    if name.endswith(".zip"):
        zf = zipfile.ZipFile(path)
        members = [n for n in zf.namelist() if not n.endswith("/")]
        return zf.open(members[0]) if len(members) == 1 else None
    return pa.input_stream(str(path), compression="detect")
