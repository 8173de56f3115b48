"""`Vocab`: raw id (string) <-> index, index 0 reserved for padding and unknown ids."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Vocab:
    """Raw values (strings) <-> index 1..n; index 0 is padding and every value the vocabulary does not hold."""

    ids: list[str]
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.ids = [str(v) for v in self.ids]
        self._index = {v: i + 1 for i, v in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            seen: set[str] = set()
            dup = next(v for v in self.ids if v in seen or seen.add(v))
            raise ValueError(f"vocabulary holds {dup!r} twice")

    def __len__(self) -> int:
        return len(self.ids) + 1

    def lookup(self, values) -> np.ndarray:
        """(n,) int64 index of each value (0: unknown or null)."""
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            codes = pc.index_in(pc.cast(values, pa.string()), value_set=pa.array(self.ids, pa.string()))
            return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        return np.array([self._index.get(str(v), 0) if v is not None else 0 for v in values], dtype=np.int64)

    def id_of(self, index: int) -> str | None:
        return self.ids[index - 1] if 0 < index <= len(self.ids) else None

    def extended(self, values) -> Vocab:
        """This vocabulary followed by the values it does not hold yet (first-seen order): indices never move."""
        new = [str(v) for v in dict.fromkeys(str(v) for v in values) if str(v) not in self._index]
        return Vocab(self.ids + new) if new else self
