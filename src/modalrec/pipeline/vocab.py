"""`Vocab`: raw id (string) <-> index, index 0 reserved for padding and unknown ids.

The ids are held as one Arrow string array (a vocabulary of millions of ids costs tens of MB, not a Python object
per id); Arrow arrays are looked up with a hash join in C (`pyarrow.compute.index_in`). A dict over the ids is
built only when Python values are looked up (a service's requests), once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Vocab:
    """Raw values (strings) <-> index 1..n; index 0 is padding and every value the vocabulary does not hold."""

    def __init__(self, ids):
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        arr = ids.cast(pa.string()) if isinstance(ids, pa.Array) else pa.array([str(v) for v in ids], pa.string())
        if arr.null_count:
            raise ValueError("vocabulary holds a null id")
        if len(arr) and pc.count_distinct(arr).as_py() != len(arr):
            counts = pc.value_counts(arr)
            dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
            raise ValueError(f"vocabulary holds {dup!r} twice")
        self._arr = arr
        self._index: dict[str, int] | None = None
        self._ids: list[str] | None = None

    @property
    def ids(self) -> list[str]:
        """The ids as a Python list (index i + 1 <-> ids[i])."""
        if self._ids is None:
            self._ids = self._arr.to_pylist()
        return self._ids

    @property
    def array(self) -> pa.Array:
        """The ids as an Arrow string array."""
        return self._arr

    def __len__(self) -> int:
        return len(self._arr) + 1

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self._arr.equals(other._arr)

    def __repr__(self) -> str:
        return f"Vocab({len(self._arr)} ids)"

    def lookup(self, values) -> np.ndarray:
        """(n,) int64 index of each value (0: unknown or null)."""
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            codes = pc.index_in(pc.cast(values, pa.string()), value_set=self._arr)
            return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        if self._index is None:
            self._index = {v: i + 1 for i, v in enumerate(self.ids)}
        index = self._index
        return np.array([index.get(str(v), 0) if v is not None else 0 for v in values], dtype=np.int64)

    def id_of(self, index: int) -> str | None:
        return self._arr[index - 1].as_py() if 0 < index <= len(self._arr) else None

    def take(self, indices) -> pa.Array:
        """The ids of vocabulary indices (>= 1) as an Arrow array."""
        return self._arr.take(pa.array(np.asarray(indices, dtype=np.int64) - 1))

    def extended(self, values) -> Vocab:
        """This vocabulary followed by the values it does not hold yet (first-seen order): indices never move."""
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array([str(v) for v in values],
                                                                                          pa.string())
        arr = pc.unique(pc.cast(arr, pa.string()))
        new = arr.filter(pc.invert(pc.is_in(arr, value_set=self._arr)))
        return Vocab(pa.concat_arrays([self._arr, new])) if len(new) else self
