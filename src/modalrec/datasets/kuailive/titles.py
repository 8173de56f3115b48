"""The title embeddings (.npy / .npz, one of `TITLE_FILES`): reading, checking, and the ``title_emb``
table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...data.errors import DataError, Problem
from .layout import TITLE_FILES
from .rooms import _Rooms


def _title_file(path: Path) -> Path | None:
    for name in TITLE_FILES:
        if (path / name).is_file():
            return path / name
    return None


def _read_titles(file: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(vectors (n, d) float32, the live_name_id of each row or None when row r is live_name_id r)."""
    try:
        loaded = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(Problem(str(file), None, None, "a NumPy .npy/.npz file of float vectors (no pickle)",
                                str(e).splitlines()[0])) from None
    ids = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
        mats = [k for k, v in arrays.items() if v.ndim == 2 and np.issubdtype(v.dtype, np.floating)]
        vecs = [k for k, v in arrays.items() if v.ndim == 1 and np.issubdtype(v.dtype, np.integer)]
        if len(mats) != 1 or len(arrays) > 2 or (len(arrays) == 2 and len(vecs) != 1):
            shapes = {k: f"{v.dtype}{list(v.shape)}" for k, v in arrays.items()}
            raise DataError(Problem(str(file), None, None, "one 2-D float array (row = live_name_id), optionally "
                                    "with one 1-D integer array of the rows' live_name_id", f"arrays {shapes}"))
        emb = arrays[mats[0]]
        if vecs:
            ids = arrays[vecs[0]].astype(np.int64)
            if len(ids) != len(emb):
                raise DataError(Problem(str(file), None, vecs[0], f"{len(emb)} ids, one per row of '{mats[0]}'",
                                        f"{len(ids)}"))
            if len(np.unique(ids)) != len(ids):
                raise DataError(Problem(str(file), None, vecs[0], "unique live_name_id values", "repeats"))
    else:
        emb = loaded
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise DataError(Problem(str(file), None, None, "a 2-D float array (one row per live_name_id)",
                                f"{emb.dtype} of shape {list(emb.shape)}"))
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        raise DataError(Problem(str(file), r + 1, None, "finite numbers", f"NaN or infinity in row {r} "
                                f"(live_name_id {ids[r] if ids is not None else r})"))
    return emb.astype(np.float32), ids


def _title_content(rooms: _Rooms, file: Path, room_file: Path) -> tuple[pa.Table, int, int]:
    """The title_emb table of the rooms of room.csv, the vector width, and the rooms without a title."""
    emb, ids = _read_titles(file)
    col = rooms.table["live_name_id"]
    has = pc.is_valid(col).to_numpy(zero_copy_only=False)
    name = pc.fill_null(col, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if ids is None:
        row = np.where(has, name, -1)
        bad = has & (name >= len(emb))
    else:
        order = np.argsort(ids)
        pos = np.clip(np.searchsorted(ids[order], name), 0, len(ids) - 1)
        hit = ids[order][pos] == name
        row = np.where(has & hit, order[pos], -1)
        bad = has & ~hit
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(Problem(str(room_file), int(rooms.first_row[r]), "live_name_id",
                                f"a title id with a row in {file.name} ({len(emb)} rows)",
                                f"{name[r]} ({int(bad.sum())} such room(s))"))
    sel = row >= 0
    dim = emb.shape[1]
    vectors = emb[row[sel]]
    table = pa.table({
        "entity_id": rooms.table["item_id"].filter(pa.array(sel)),
        "vector": pa.ListArray.from_arrays(pa.array(np.arange(int(sel.sum()) + 1, dtype=np.int32) * dim),
                                           pa.array(vectors.reshape(-1), pa.float32())),
    })
    return table, dim, int((~sel).sum())

