"""Extending a fitted pipeline with what appeared since it was fitted (`modalrec refresh`), rows never moving.

A refresh keeps every index of the fitted pipeline and appends: the user and item vocabularies grow by the ids
first seen since (`Vocab.extended`), the side tables by one row per new entity, and every raw value map by the
values first seen (a new streamer gets the next `streamer_id` code), so an old row, an old code and an old
context value keep their meaning and a model trained on the old pipeline reads them as before.

A new entity's row is coded as `fit_side` would code it, then translated into the old code space:
- categorical: through the old value map, extended with the new values (`grow=False`: unseen values are code 0,
  unknown, as a service codes an item registered after training);
- numeric: the old quantile edges (bucket codes never move; no new code);
- multi-valued and bags of words: the old value or word vocabulary, extended with the new entities' values
  (words: those in >= 2 new entities' texts, `fit_side`'s rule), at most the old number of values per row;
- dense content and token tables: the entity's own vectors (at most the old number of tokens);
- item texts built from events (`task.event_text`) are not rebuilt: new items have none (old rows keep theirs).
Old rows are copied as they were, even where the catalogue has changed since.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .side import FeatureMaps, SideSizes, SideTable, fit_side
from .vocab import Vocab


def new_ids(vocab: Vocab, catalogue: pa.Array | None, seen: pa.Array) -> pa.Array:
    """The ids `vocab` does not hold, in the order `fit_pipeline` gives them: the catalogue's first (in its order),
    then the other ids seen in events, sorted."""
    known = vocab.array
    parts = []
    if catalogue is not None and len(catalogue):
        cat = pc.unique(catalogue.cast(pa.string()))
        parts.append(cat.filter(pc.invert(pc.is_in(cat, value_set=known))))
        known = pa.concat_arrays([known, parts[0]])
    rest = pc.unique(seen.cast(pa.string())) if len(seen) else pa.array([], pa.string())
    rest = rest.filter(pc.invert(pc.is_in(rest, value_set=known)))
    parts.append(pc.take(rest, pc.sort_indices(rest)))
    return pa.concat_arrays(parts)


def _codes_to_values(voc: Vocab, codes: np.ndarray) -> np.ndarray:
    """Raw values (object array, None for code 0) of codes of a value map."""
    ids = np.asarray([None, *voc.ids], dtype=object)
    return ids[np.asarray(codes, dtype=np.int64)]


def _recode(old: Vocab, fresh: Vocab, codes: np.ndarray, grow: bool) -> tuple[Vocab, np.ndarray]:
    """Codes of the fresh map -> codes of the old map (extended with the values it lacks when `grow`)."""
    values = _codes_to_values(fresh, codes)
    flat = values.reshape(-1)
    present = [str(v) for v in flat if v is not None]
    ext = old.extended(present) if grow and present else old
    out = np.zeros(len(flat), dtype=np.int64)
    mask = np.array([v is not None for v in flat], dtype=bool)
    if mask.any():
        out[mask] = ext.lookup([str(v) for v in flat[mask]])
    return ext, out.reshape(np.shape(codes))


def _fit_width(rows: np.ndarray, width: int) -> np.ndarray:
    """Rows (n, k, ...) cut or zero-padded to k = width along axis 1."""
    if rows.shape[1] >= width:
        return rows[:, :width]
    pad = np.zeros((rows.shape[0], width - rows.shape[1], *rows.shape[2:]), dtype=rows.dtype)
    return np.concatenate([rows, pad], axis=1)


def _numeric_codes(data, entity: str, vocab: Vocab, name: str, edges: np.ndarray | None, start: int) -> np.ndarray:
    """Bucket codes of a numeric feature for rows start.. of `vocab`, with the old quantile edges."""
    n = len(vocab) - start
    out = np.zeros(n, dtype=np.int64)
    frame = data.items if entity == "item" else data.users
    if frame is None or name not in frame.column_names or edges is None or n <= 0:
        return out
    rows = vocab.lookup(frame[f"{entity}_id"]) - start
    vals = pd.to_numeric(pd.Series(frame[name].to_pylist()), errors="coerce").to_numpy(dtype=np.float64)
    ok = (rows >= 0) & np.isfinite(vals)
    out[rows[ok]] = np.searchsorted(edges, vals[ok], side="right") + 1
    return out


def extend_side(data, entity: str, vocab: Vocab, n_old: int, old: tuple[SideTable, FeatureMaps, SideSizes],
                grow: bool = True, **fit_kwargs) -> tuple[SideTable, FeatureMaps, SideSizes]:
    """The side table of `entity` over `vocab` (the old vocabulary, `n_old` rows, followed by new ids): rows
    < n_old copied, the others coded from the catalogue (`data`) into the old code space (module doc).
    `fit_kwargs`: `fit_side`'s settings (the run's task config)."""
    table, maps, sizes = old
    n = len(vocab)
    new_maps, new_sizes = copy.deepcopy(maps), copy.deepcopy(sizes)
    out = SideTable()
    if n <= n_old:
        return (SideTable(**{g: dict(getattr(table, g)) for g in ("categorical", "multi", "dense", "presence",
                                                                 "tokens", "token_mask")}), new_maps, new_sizes)
    fresh, fmaps, _ = fit_side(data, entity, vocab, **fit_kwargs)
    new = slice(n_old, n)

    def grown(arr, rows: np.ndarray) -> np.ndarray:
        head = np.asarray(arr[:n_old])
        return np.concatenate([head, rows.astype(head.dtype, copy=False)], axis=0)

    for name, arr in table.categorical.items():
        if name in maps.numeric:
            rows = _numeric_codes(data, entity, vocab, name, maps.numeric[name], n_old)
        elif name in maps.categorical and name in fresh.categorical and name in fmaps.categorical:
            ext, rows = _recode(maps.categorical[name], fmaps.categorical[name], fresh.categorical[name][new], grow)
            new_maps.categorical[name] = ext
            new_sizes.categorical[name] = len(ext)
        else:  # a feature the catalogue no longer has: unknown for the new rows
            rows = np.zeros(n - n_old, dtype=np.int64)
        out.categorical[name] = grown(arr, rows)
    for name, arr in table.multi.items():
        width = arr.shape[1]
        if name in maps.multi and name in fresh.multi and name in fmaps.multi:
            ext, rows = _recode(maps.multi[name], fmaps.multi[name], fresh.multi[name][new], grow)
            # a recoded row may hold gaps where a value did not survive (grow=False): keep the known ones in order
            rows = np.array([np.r_[r[r > 0], np.zeros((r == 0).sum(), np.int64)] for r in rows]).reshape(rows.shape)
            new_maps.multi[name] = ext
            new_sizes.multi[name] = len(ext)
            rows = _fit_width(rows, width)
        else:
            rows = np.zeros((n - n_old, width), dtype=np.int64)
        out.multi[name] = grown(arr, rows)
    for name, arr in table.dense.items():
        if name in fresh.dense and fresh.dense[name].shape[1] == arr.shape[1]:
            rows, pres = fresh.dense[name][new], fresh.presence[name][new]
        else:
            rows, pres = np.zeros((n - n_old, arr.shape[1]), np.float32), np.zeros(n - n_old, bool)
        out.dense[name] = grown(arr, rows)
        out.presence[name] = grown(table.presence[name], pres)
    for name, arr in table.tokens.items():
        if name in fresh.tokens and fresh.tokens[name].shape[2] == arr.shape[2]:
            rows, mask = _fit_width(fresh.tokens[name][new], arr.shape[1]), _fit_width(fresh.token_mask[name][new],
                                                                                         arr.shape[1])
        else:
            rows = np.zeros((n - n_old, *arr.shape[1:]), arr.dtype)
            mask = np.zeros((n - n_old, arr.shape[1]), bool)
        out.tokens[name] = grown(arr, rows)
        out.token_mask[name] = grown(table.token_mask[name], mask)
    return out, new_maps, new_sizes


def extend_context(context: dict[str, Vocab], values: dict[str, list[str]]) -> dict[str, Vocab]:
    """Context vocabularies with the values first seen appended (sorted as `reduce_scans` sorts them: numerically
    for numeric columns, otherwise as strings); codes never move."""
    out = {}
    for name, vocab in context.items():
        known = set(vocab.ids)
        new = [v for v in values.get(name, []) if v not in known]
        numeric = all(_is_int(v) for v in [*vocab.ids, *new]) and (vocab.ids or new)
        new = sorted(set(new), key=int) if numeric else sorted(set(new))
        out[name] = vocab.extended(new) if new else vocab
    return out


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True


def pad_rows(arr: np.ndarray | None, n: int) -> np.ndarray | None:
    """A per-row statistic (n_old, ...) zero-padded to n rows (new rows: never seen in training)."""
    if arr is None:
        return None
    arr = np.asarray(arr)
    if len(arr) >= n:
        return arr[:n]
    return np.concatenate([arr, np.zeros((n - len(arr), *arr.shape[1:]), dtype=arr.dtype)])
