"""Per-sample context features (`task.context_features`): event columns read as categorical features of the
sample itself (MicroLens' likes_level / views_level: an item's popularity level at impression time).

The vocabulary holds the TRAINING samples' values only: an empty value, or one first seen at validation,
test or serving, is code 0 (unknown), so nothing of the evaluated samples leaks into the model's tables.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data.errors import DataError, Problem
from .vocab import Vocab


def context_strings(col: pa.ChunkedArray | pa.Array, name: str) -> pa.Array:
    """An event column as the strings its categorical codes are looked up by (nulls stay null): integers
    as their decimal digits, floats only when every value is a whole number (an integer column that a
    null turned into floats), booleans as true / false."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    typ = arr.type
    if pa.types.is_dictionary(typ):
        arr = arr.cast(typ.value_type)
        typ = arr.type
    if pa.types.is_null(typ):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_floating(typ):
        vals = arr.to_numpy(zero_copy_only=False).astype(np.float64)
        real = vals[~np.isnan(vals)] if len(vals) else vals
        bad = ~np.isfinite(real) | (real != np.round(real))
        if bad.any():
            raise DataError(Problem("events", None, name, "a categorical context feature: strings or whole "
                                    "numbers (task.context_features)", f"the number {real[bad][0]!r}"))
        return pc.cast(pc.cast(arr, pa.int64()), pa.string())
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return pc.cast(arr, pa.string())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return pc.cast(arr, pa.string())
    raise DataError(Problem("events", None, name, "a categorical context feature: strings, integers or "
                            "booleans (task.context_features)", str(typ)))


def fit_context(table: pa.Table, names: list[str], rows: np.ndarray,
                train: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Vocab]]:
    """Per-sample codes of the context features `names`: (name -> (len(rows),) int64, name -> Vocab).

    `rows`: the samples' rows of `table`; `train`: (len(rows),) bool, the training samples. The vocabulary
    holds the values of the training samples only (integers in numeric order, other values sorted as
    strings); an empty value or one the training samples never hold is 0."""
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError([Problem("events", None, n, "an event column for task.context_features",
                                 f"no such column; the events have {table.column_names}") for n in missing])
    codes: dict[str, np.ndarray] = {}
    vocabs: dict[str, Vocab] = {}
    take = pa.array(rows, pa.int64())
    for name in names:
        col = table[name]
        numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
        values = context_strings(col.take(take), name)
        seen = pc.unique(pc.drop_null(values.filter(pa.array(train, pa.bool_())))).to_pylist()
        seen = sorted(seen, key=int) if numeric else sorted(seen)
        vocab = Vocab(seen)
        codes[name] = vocab.lookup(values)
        vocabs[name] = vocab
    return codes, vocabs
