"""The catalogue of an import: the items and users files and the content files, read chunk by chunk.

The catalogue is kept whole (it is written as items.parquet, users.parquet and content/*.parquet, and every
event is checked against its ids), so each chunk's cells are converted as they come and the chunks then joined
into one table per file, on which the checks across rows run as before: duplicate ids, and for content the
references and the vector lengths (`modalrec.data.import_run`). The events are never held like this.
"""

from __future__ import annotations

import fnmatch
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import import_cells as cells
from .import_files import FileReader
from .import_problems import Report, Table
from .import_spec import ContentSource, EntitySource


def entity_columns(src: EntitySource) -> list[str]:
    return [src.id, *src.categorical, *src.multi_categorical, *src.numeric, *src.text, *src.keep]


def read_entity(files: FileReader, report: Report, src: EntitySource, key: str, opened) -> tuple[Table, dict] | None:
    """-> (the file as one table, its columns: `key` the ids, the features, "__text__" the joined text)."""
    if opened is None:
        return None
    cols, header = opened
    parts: list[Table] = []
    chunks: list[dict] = []
    for t in files.chunks(src, cols, header):
        out: dict = {key: cells.ids(report, t, src.id)}
        for c in src.categorical:
            out[c] = cells.categorical(t, c)
        for c, sep in src.multi_categorical.items():
            out[c] = cells.multi(t, c, sep)
        for c in src.numeric:
            out[c] = cells.numbers(report, t, c, required=False)
        for c in src.keep:
            out[c] = cells.categorical(t, c)
        if src.text:
            parts_ = [cells.as_text(t.df[c]) for c in src.text]
            joined = ["\n".join(p for p in row if p) for row in zip(*(p.to_numpy(dtype=object) for p in parts_))]
            out["__text__"] = np.array(joined, dtype=object)
        t.df = None
        parts.append(t)
        chunks.append(out)
    t = Table.concat(str(files.path(src)), parts)
    joined_cols = _concat(chunks, [key, *src.categorical, *src.multi_categorical, *src.numeric, *src.keep]
                          + (["__text__"] if src.text else []), t.n)
    cells.duplicates(report, t, joined_cols[key], src.id, "a unique id")
    return t, joined_cols


def _concat(chunks: list[dict], names: list[str], n: int) -> dict:
    out: dict = {}
    for name in dict.fromkeys(names):
        vals = [c[name] for c in chunks]
        if not vals:  # a header-only file
            out[name] = np.array([], dtype=object)
        elif isinstance(vals[0], pa.Array):
            out[name] = pa.concat_arrays(vals)
        else:
            out[name] = np.concatenate(vals)
    return out


def content_columns(files: FileReader, report: Report, src: ContentSource, header: list[str]) -> list[str] | None:
    """The value columns of a content entry (`columns` may be a glob over the header)."""
    if src.columns is None:
        return [src.column]
    if not isinstance(src.columns, str):
        return list(src.columns)
    value_cols = sorted(fnmatch.filter(header, src.columns), key=_natural_key)
    if not value_cols:
        report.file_problem(files.path(src), src.columns, f"columns matching '{src.columns}'", "none")
        return None
    return value_cols


def read_content(files: FileReader, report: Report, src: ContentSource, value_cols: list[str],
                 opened) -> tuple[Table, np.ndarray, list | np.ndarray, np.ndarray] | None:
    """-> (the file as one table, ids, values, present mask). The values of a vector file whose vectors all have
    one length are one (rows, dim) float32 matrix (absent rows are zeros): 6.56M 128-d vectors are 3.4 GB so, not
    the 4 GB more that one numpy array per row costs; otherwise one value (or None) per row."""
    if opened is None:
        return None
    cols, header = opened
    parts: list[Table] = []
    ids, values, present = [], [], []
    rows = _parquet_rows(files, src) if src.kind == "vector" else None
    matrix, at = None, 0  # a Parquet file's vectors go straight into one matrix of its rows (no copy at the end)
    for t in files.chunks(src, cols, header):
        ids.append(cells.ids(report, t, src.id))
        v, p = _content_values(files, report, src, value_cols, t)
        v = _as_matrix(v, p) if src.kind == "vector" else v
        if rows is not None and isinstance(v, np.ndarray) and not values and at + len(v) <= rows and (
                matrix is None or matrix.shape[1] == v.shape[1]):
            if matrix is None:
                matrix = np.empty((rows, v.shape[1]), dtype=np.float32)
            matrix[at:at + len(v)] = v
            at += len(v)
        else:
            if matrix is not None:  # chunks of other lengths: kept as they come
                values.append(matrix[:at])
                matrix = None
            values.append(v)
        present.append(p)
        t.df = None
        parts.append(t)
        pa.default_memory_pool().release_unused()  # Arrow's pool would keep every chunk's pages
    if matrix is not None:
        values.append(matrix[:at])
    t = Table.concat(str(files.path(src)), parts)
    return (t, np.concatenate(ids) if ids else np.array([], dtype=object), _join_values(values),
            np.concatenate(present) if present else np.zeros(0, dtype=bool))


def _parquet_rows(files: FileReader, src: ContentSource) -> int | None:
    path = files.path(src)
    if not files.is_parquet(path):
        return None
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError, pa.ArrowException):
        return None  # the chunks name the problem


def _as_matrix(values: list | np.ndarray, present: np.ndarray) -> list | np.ndarray:
    """One chunk's vectors as a (rows, dim) float32 matrix when every present one has the same length (absent
    rows zeros), else as they are (the length check names the odd ones)."""
    if isinstance(values, np.ndarray):
        return values
    lengths = {len(v) for v, p in zip(values, present) if p}
    if len(lengths) > 1:
        return values
    dim = lengths.pop() if lengths else 0
    mat = np.zeros((len(values), dim), dtype=np.float32)
    for r in np.flatnonzero(present):
        mat[r] = values[r]
    return mat


def _join_values(chunks: list) -> list | np.ndarray:
    if chunks and all(isinstance(c, np.ndarray) and c.ndim == 2 for c in chunks) \
            and len({c.shape[1] for c in chunks if len(c)} or {0}) == 1:
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    out: list = []
    for c in chunks:
        out.extend(c)
    return out


def vector_lengths(values: list | np.ndarray, present: np.ndarray) -> np.ndarray:
    """(rows,) int64 length of each present vector, -1 for an absent one."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return np.where(present, values.shape[1], -1).astype(np.int64)
    return np.array([len(v) if p else -1 for v, p in zip(values, present)], dtype=np.int64)


def _content_values(files: FileReader, report: Report, src: ContentSource, value_cols: list[str],
                    t: Table) -> tuple[list | np.ndarray, np.ndarray]:
    if src.kind in ("text", "image", "audio"):
        s = cells.as_text(t.df[src.column])
        present = (s != "").to_numpy()
        values = s.to_numpy(dtype=object)
        if src.kind != "text":
            folder = files.path(src).parent
            values = np.array([v if (not v or "://" in v or os.path.isabs(v)) else str(folder / v)
                               for v in values], dtype=object)
            absent = np.array([bool(v) and "://" not in v and not os.path.exists(v) for v in values], dtype=bool)
            report.row_problem(t, absent, src.column, f"the path of an existing {src.kind} file",
                               [repr(v) for v in values[absent]])
        return list(values), present
    if src.kind == "tokens":
        return cells.number_lists(report, t, src.column, integers=True)
    if src.columns is not None:
        mat = np.full((t.n, len(value_cols)), np.nan)
        empty_all = np.ones(t.n, dtype=bool)
        empties = []
        for c in value_cols:
            s = t.df[c]
            numeric = pd.api.types.is_numeric_dtype(s)
            e = s.isna().to_numpy() if numeric else (cells.as_text(s) == "").to_numpy()
            empties.append(e)
            empty_all &= e
        for j, c in enumerate(value_cols):
            sub = Table(t.file, t.df[[c]], np.zeros(t.n, dtype=bool), offset=t.offset)
            mat[:, j] = cells.numbers(report, sub, c, required=False)
            partial = empties[j] & ~empty_all
            report.row_problem(sub, partial, c, "a number (only whole rows may be empty)", "an empty value")
            t.merge(sub)
        return mat.astype(np.float32), ~empty_all
    return cells.number_lists(report, t, src.column, integers=False)


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
