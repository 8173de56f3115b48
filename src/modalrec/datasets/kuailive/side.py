"""The side files user.csv and streamer.csv: one row per id, every column as text, and their features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...data.errors import DataError, Problem
from ...data.interaction import FeatureSpec
from .csvio import _np, _read_csv


def _read_side(file: Path, key: str) -> pa.Table:
    t = _read_csv(file, [key], ints=[key], all_columns=True)
    ids = _np(t[key])
    order = np.argsort(ids, kind="stable")
    dup = np.zeros(len(ids), dtype=bool)
    dup[order[1:]] = ids[order][1:] == ids[order][:-1]
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        raise DataError(Problem(str(file), r + 1, key, f"one row per {key}", f"a repeat of {ids[r]} "
                                f"({int(dup.sum())} repeated row(s))"))
    cols = {key: pc.cast(t[key], pa.string())}
    for c in t.column_names:
        if c != key:
            cols[c] = pc.cast(t[c], pa.string())
    return pa.table(cols)


def _side_features(table: pa.Table, key: str, prefix: str = "") -> list[FeatureSpec]:
    """Side columns as categorical features; dates (`*_timestamp`) stay columns only."""
    return [FeatureSpec(name=prefix + c, kind="categorical") for c in table.column_names
            if c != key and not c.endswith("_timestamp")]

