"""Cells to values: the conversions and checks of an import, one column at a time.

Every function takes the `Report` that collects problems and the `Table` (one input file) the column is in;
a cell that does not convert marks its row bad with a `Problem` naming the row, the column, what was
expected and the offending value. Ids are stripped strings (empty = error); numbers may be empty unless
required; times are unix seconds (integers kept as they are) or date-times stored as unix seconds, and must
lie in the spec's `TimeRange`; vectors and token lists come as Parquet lists or as "0.1 0.2" / "[1, 2]".
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .import_problems import Report, Table
from .timerange import TimeRange

_INT_RE = r"[+-]?\d{1,18}"


# ---------------------------------------------------------------------------------------------- text
def arrow_text(s: pd.Series) -> pa.Array:
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


def as_text(s: pd.Series) -> pd.Series:
    return pd.Series(arrow_text(s).to_numpy(zero_copy_only=False), index=s.index, dtype=object)


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


def an(word: str) -> str:
    """The word with its article by sound: "an item", "an event", "a user"."""
    return ("an " if word[:1] in "aeio" else "a ") + word


# ---------------------------------------------------------------------------------------------- columns
def ids(report: Report, t: Table, col: str) -> np.ndarray:
    return objects(id_array(report, t, col))


def id_array(report: Report, t: Table, col: str) -> pa.Array:
    """The ids of a column as Arrow strings (stripped; an empty one is a bad row)."""
    arr = arrow_text(t.df[col])
    report.row_problem(t, pc.equal(arr, "").to_numpy(zero_copy_only=False), col, "a non-empty id", "an empty value")
    return arr


def objects(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow strings as a numpy array of Python strings."""
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)


def numbers(report: Report, t: Table, col: str, required: bool, booleans: bool = False) -> np.ndarray:
    s = t.df[col]
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float).to_numpy()
    if pd.api.types.is_numeric_dtype(s):
        out = s.astype(float).to_numpy()
        missing = np.isnan(out)
        if required:
            report.row_problem(t, missing, col, "a number", "an empty value")
        bad = np.isinf(out)
        report.row_problem(t, bad, col, "a finite number", [repr(v) for v in out[bad]])
        return out
    arr = arrow_text(s)
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
    report.row_problem(t, bad, col, what, [repr(v) for v in s.to_numpy()[bad]])
    if required:
        report.row_problem(t, empty, col, what, "an empty value")
    return out


def times(report: Report, t: Table, col: str, fmt: str | None, time_range: TimeRange,
          state: dict | None = None) -> np.ndarray:
    """Unix seconds (int64, or float64 when some time has a fraction); each parsed time must lie in
    `time_range` (the message names the range and shows the time as a date). `state` (one per file) keeps what
    the first chunk with times decided, numbers or date-times, for the file's later chunks."""
    values, parsed = _times(report, t, col, fmt, {} if state is None else state)
    out = parsed & time_range.check(values)
    report.row_problem(t, out, col, time_range.expected("`time_range:` in the spec sets another range"),
                       [time_range.found(v) for v in values[out]])
    return values


def _times(report: Report, t: Table, col: str, fmt: str | None, state: dict) -> tuple[np.ndarray, np.ndarray]:
    """-> (values, mask of the rows with a parsed time; the others hold 0 and are already bad rows)."""
    s = t.df[col]
    if pd.api.types.is_datetime64_any_dtype(s):
        return _datetimes_to_seconds(report, t, col, s, s.isna().to_numpy(), fmt)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        missing = s.isna().to_numpy()
        report.row_problem(t, missing, col, "a time", "an empty value")
        if pd.api.types.is_integer_dtype(s):
            return s.fillna(0).astype(np.int64).to_numpy(), ~missing
        out = s.astype(float).to_numpy()
        return _int_if_integral(out, ~missing), ~missing
    arr = arrow_text(s)
    empty = pc.equal(arr, "").to_numpy(zero_copy_only=False)
    report.row_problem(t, empty, col, "a time", "an empty value")
    if fmt is None and state.get("numbers", True):
        ints = _strict_cast(arr, empty, pa.int64())
        if ints is not None:  # the common case: unix times, all integers
            if (~empty).any():
                state.setdefault("numbers", True)
            return ints.astype(np.int64), ~empty
    text = pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)
    is_int = text.str.fullmatch(_INT_RE).to_numpy(dtype=bool)
    num = pd.to_numeric(text.mask(empty, None), errors="coerce").astype(float).to_numpy()
    numeric = np.isfinite(num)
    if fmt is None and (~empty).any():  # numbers or date-times: as most rows of the file's first chunk say
        state.setdefault("numbers", bool(numeric.sum() * 2 >= (~empty).sum()))
    if fmt is None and state.get("numbers") and (~empty).any():
        bad = ~empty & ~numeric
        report.row_problem(t, bad, col, "a time (a number, as in most rows of this column)",
                           [repr(v) for v in text.to_numpy()[bad]])
        if is_int[~empty & ~bad].all():
            out = np.zeros(t.n, dtype=np.int64)
            out[is_int] = text[is_int].astype(np.int64).to_numpy()
            return out, ~empty & ~bad
        return _int_if_integral(num, ~empty & ~bad), ~empty & ~bad
    parsed = pd.to_datetime(text.mask(empty, None), format=fmt or "ISO8601", errors="coerce", utc=True)
    return _datetimes_to_seconds(report, t, col, parsed, empty, fmt, raw=text)


def _datetimes_to_seconds(report: Report, t: Table, col: str, dt: pd.Series, empty: np.ndarray,
                          fmt: str | None, raw: pd.Series | None = None) -> tuple[np.ndarray, np.ndarray]:
    if dt.dt.tz is None:
        dt = dt.dt.tz_localize("UTC")
    nat = dt.isna().to_numpy()
    bad = nat & ~empty
    if raw is not None:
        what = f"a date-time in the format {fmt!r}" if fmt else "a unix time or an ISO 8601 date-time"
        report.row_problem(t, bad, col, what, [repr(v) for v in raw.to_numpy()[bad]])
    elif empty.any():
        report.row_problem(t, empty, col, "a time", "an empty value")
    secs = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return secs.fillna(0).astype(np.int64).to_numpy(), ~nat


def categorical(t: Table, col: str) -> pa.Array:
    s = as_text(t.df[col])
    return pa.array(s.mask(s == "", None).to_numpy(dtype=object), pa.string(), from_pandas=True)


def multi(t: Table, col: str, sep: str) -> pa.Array:
    s = t.df[col]
    non_null = s.dropna()
    if len(non_null) and isinstance(non_null.iloc[0], (list, tuple, np.ndarray)):
        lists = [[str(x).strip() for x in v if x is not None and str(x).strip()]
                 if isinstance(v, (list, tuple, np.ndarray)) else [] for v in s.to_numpy(dtype=object)]
    else:
        lists = [[x.strip() for x in v.split(sep) if x.strip()] for v in as_text(s).to_numpy(dtype=object)]
    return pa.array(lists, pa.list_(pa.string()))


def number_lists(report: Report, t: Table, col: str, integers: bool) -> tuple[list, np.ndarray]:
    """A list of numbers per cell -> (one array or None per row, mask of the rows with a list)."""
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
    report.row_problem(t, mask, col, what, found)
    return vals, present


# ---------------------------------------------------------------------------------------------- across rows
def duplicates(report: Report, t: Table, ids: np.ndarray, column: str, expected: str) -> None:
    s = pd.Series(ids, dtype=object)
    dup = (s.duplicated() & (s != "")).to_numpy()
    if dup.any():
        first = pd.Series(np.arange(len(s)), index=s.to_numpy())[~s.duplicated().to_numpy()]
        report.row_problem(t, dup, column, expected,
                           [f"{v!r} again (first at row {first[v] + 1})" for v in ids[dup]])


class IdSet:
    """A set of ids for membership tests of many chunks (the hash table is built once)."""

    def __init__(self, ids) -> None:
        self.index = pd.Index(pd.unique(np.asarray(ids, dtype=object)) if len(ids) else np.array([], dtype=object))

    def __len__(self) -> int:
        return len(self.index)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        if not len(self.index) or not len(ids):
            return np.zeros(len(ids), dtype=bool)
        return self.index.get_indexer(np.asarray(ids, dtype=object)) >= 0


class IdCollector:
    """The distinct ids of a stream of chunks, in bounded memory (the distinct ids, and a few chunks' ids)."""

    def __init__(self) -> None:
        self._done = pa.array([], pa.string())
        self._pending: list[pa.Array | pa.ChunkedArray] = []
        self._pending_n = 0

    def add(self, ids) -> None:
        arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids, pa.string())
        self._pending.append(arr)
        self._pending_n += len(arr)
        if self._pending_n > max(len(self._done), 1 << 18):
            self._compact()

    def _compact(self) -> None:
        if self._pending:
            parts = [c for a in self._pending for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
            self._done = pc.unique(pa.chunked_array([self._done, *parts], pa.string()))
            if isinstance(self._done, pa.ChunkedArray):
                self._done = self._done.combine_chunks()
            self._pending, self._pending_n = [], 0

    def values(self) -> pa.Array:
        self._compact()
        return self._done

    def __len__(self) -> int:
        return len(self.values())


def check_refs(report: Report, t: Table, ids: np.ndarray, column: str, kind: str, known_all: IdSet,
               known_ok: IdSet, ref_file: str) -> None:
    """Each id must be listed in `ref_file` (`known_all`) on a row that was not rejected (`known_ok`)."""
    s = pd.Series(ids, dtype=object)
    candidates = ~known_ok.contains(ids) & (s != "").to_numpy()
    if not candidates.any():
        return
    unknown = candidates & ~known_all.contains(ids)
    report.row_problem(t, unknown, column, f"{an(kind)} id listed in {ref_file}",
                       [f"unknown {kind} {v!r}" for v in ids[unknown]])
    rejected = candidates & ~unknown  # listed, but its row in the side file was rejected
    report.row_problem(t, rejected, column, f"{an(kind)} whose row in {ref_file} is valid",
                       [f"{v!r}, whose row there was rejected" for v in ids[rejected]])
