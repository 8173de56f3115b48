"""Reading the input files of an import: CSV / TSV / Parquet in chunks, each a `Table` of raw cells.

`.parquet` / `.pq` files are read as Parquet (`ParquetFile.iter_batches`), anything else as CSV with every cell a
string (`sep`: "," or a tab for `.tsv`; `encoding`: utf-8 unless the spec says otherwise; compression inferred
from the name; Arrow's streaming reader, `modalrec.data.import_csv`). A chunk is about `block_size` bytes of the
file and knows the row it starts at. What can go wrong with the file as a whole is a fatal problem of the file
(no such file, unreadable, a missing column: with a hint when the header reads as one column that another
separator would split); what concerns one row is a row problem: a row with more or fewer fields than the
header, or a cell with a byte that is not text in the file's encoding (named by row and column, with the
`encoding:` option).
"""

from __future__ import annotations

import csv
import io
import json
import lzma
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .import_csv import csv_chunks
from .import_problems import Report, Table
from .import_spec import FileSource

PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_BLOCK_SIZE = 16 << 20  # bytes of a file read at a time (a chunk of rows)
COMMON_SEPARATORS = (",", "\t", ";", "|")
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes kept by the "surrogateescape" error handler


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

    def __init__(self, base: Path, report: Report, block_size: int = DEFAULT_BLOCK_SIZE):
        self.base = base
        self.report = report
        self.block_size = block_size

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
            try:  # undecodable bytes kept as surrogates: found by row and column in `chunks`
                names = [str(c) for c in pd.read_csv(path, sep=self.sep(src, path), nrows=0, encoding=src.encoding,
                                                     encoding_errors="surrogateescape").columns]
            except UnicodeEncodeError:  # ... which pandas' string columns refuse in the header: name them
                names = _raw_header(path, self.sep(src, path), src.encoding)
        except (OSError, ValueError, EOFError, lzma.LZMAError, zipfile.BadZipFile, pa.ArrowException) as e:
            # wrong format, encoding, empty file, a broken archive
            kind = "Parquet" if self.is_parquet(path) else "CSV"
            self.report.file_problem(path, None, f"a readable {kind} file", _unreadable(e))
            return None
        undecoded = [n for n in names if _UNDECODED.search(n)]
        for n in undecoded:
            self.report.file_problem(path, _escaped(n), _encoding_expected(src.encoding),
                                     _undecoded_found(n, src.encoding, "in the header"))
        return None if undecoded else names

    def columns(self, src: FileSource, columns: list[str], header: list[str]) -> list[str] | None:
        """The distinct `columns`, or None when one is not in the file's header (a problem of the file, with a
        hint when another separator would split the header)."""
        path = self.path(src)
        missing = [c for c in dict.fromkeys(columns) if c not in header]
        hint = "" if self.is_parquet(path) else separator_hint(header, self.sep(src, path))
        for c in missing:
            shown = (", ".join(header[:15]) + (", ..." if len(header) > 15 else "")).replace("\t", "\\t")
            self.report.file_problem(path, c, f"a column named '{c}'", f"only columns [{shown}]{hint}")
        return None if missing else list(dict.fromkeys(columns))

    def chunks(self, src: FileSource, cols: list[str], header: list[str]) -> Iterator[Table]:
        """The file's cells of `cols` in chunks of about `block_size` bytes (a problem of the file ends them); a
        file without rows is one empty chunk."""
        path = self.path(src)
        fatal = len(self.report.fatal)
        n = 0
        for t in self._chunks(src, path, cols, header):
            n += 1
            yield t
        if n == 0 and len(self.report.fatal) == fatal:
            df = (pq.read_schema(path).empty_table().select(cols).to_pandas() if self.is_parquet(path)
                  else pd.DataFrame({c: pd.Series([], dtype=str) for c in cols}))
            yield Table(str(path), df, np.zeros(0, dtype=bool))

    def _chunks(self, src: FileSource, path: Path, cols: list[str], header: list[str]) -> Iterator[Table]:
        if self.is_parquet(path):
            yield from self._parquet_chunks(path, cols)
            return
        try:
            raw = _binary_stream(path)
        except (OSError, ValueError, zipfile.BadZipFile, pa.ArrowException) as e:
            self.report.file_problem(path, None, "a readable CSV file", _unreadable(e))
            return
        if raw is None:
            self.report.file_problem(path, None, "a readable CSV file", "an archive of several files")
            return
        yield from csv_chunks(self.report, path, raw, self.sep(src, path), src.encoding, header, cols,
                              self.block_size)

    def _parquet_chunks(self, path: Path, cols: list[str]) -> Iterator[Table]:
        offset = 0
        try:
            # pre_buffer (Arrow's default) keeps the read ranges of every row group read so far: reading a 4.9 GB
            # file of 6.56M vectors in batches grew to 2 GB per 2M rows; without it a batch's memory is all it takes
            pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
            for batch in pf.iter_batches(batch_size=_batch_rows(pf.metadata, cols, self.block_size), columns=cols):
                df = batch.to_pandas().reset_index(drop=True)
                yield Table(str(path), df, np.zeros(len(df), dtype=bool), offset=offset)
                offset += len(df)
        except (OSError, ValueError, pa.ArrowException) as e:
            self.report.drop_file(str(path))
            self.report.file_problem(path, None, "a readable Parquet file", _unreadable(e))


def undecodable_cells(report: Report, t: Table, cols: list[str], encoding: str) -> None:
    """The cells of `cols` holding a byte that is not text in `encoding` (kept as surrogates): bad rows named by
    row and column; the bytes become U+FFFD."""
    for c in cols:
        s = t.df[c]
        hit = s.str.contains(_UNDECODED, regex=True).to_numpy(dtype=bool)
        report.row_problem(t, hit, c, _encoding_expected(encoding),
                           [_undecoded_found(v, encoding) for v in s[hit]])
        if hit.any():
            s = s.where(~hit, s.str.replace(_UNDECODED, "\ufffd", regex=True))
        t.df[c] = s.astype(str)


def _batch_rows(meta, cols: list[str], block_size: int) -> int:
    """Rows per Parquet batch: about `block_size` bytes of the columns read (uncompressed)."""
    if not meta.num_rows:
        return 1
    size = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if col.path_in_schema.split(".")[0] in cols:
                size += col.total_uncompressed_size
    return max(1, int(block_size // max(1.0, size / meta.num_rows)))


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
