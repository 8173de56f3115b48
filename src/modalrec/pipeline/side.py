"""Side tables of items and users: fitted once, joined at batch time, extended online.

`fit_side` reads an entity's features (the items or users table) and content modalities and learns, in
one pass, both the table of codes (`SideTable`, one row per vocabulary index, row 0 = padding/unknown)
and the maps from raw values to those codes (`FeatureMaps`). Every later step that meets a raw value (a
new events file, an item registered with the service) goes through the same maps, so its codes are the
training codes by construction rather than by a later re-derivation.

Feature kinds and their codes (0 is always empty or unknown):
- categorical: the raw values in first-seen order, code i + 1;
- numeric: quantile buckets (9 inner deciles of the finite values), code searchsorted(edges, v, right) + 1;
- multi_categorical: every value in first-seen order; the first K (<= 16) of a row, K = the longest list;
- text modality: a bag of words (words in >= 2 entities' texts, sorted, code i + 1): the first `max_words`
  distinct known words of the entity's text, as the multi feature `<modality>_words`;
- vector modality: a dense (n, D) float32 table with presence (n,) bool; a multi-valued one either a token
  table (n, T, D) float16 with its mask (n, T) bool (items, `task.token_modalities`) or the mean of its vectors.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..data.errors import DataError, Problem
from .vocab import Vocab

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(["a", "an", "the", "of", "and", "or", "to", "in", "on", "for", "with", "by", "at", "from", "is",
                   "are", "be", "it", "its", "this", "that"])
NUMERIC_CODES = 12  # 10 decile buckets, unknown, and one to spare
MAX_MULTI = 16
GROUPS = ("categorical", "multi", "dense", "presence", "tokens", "token_mask")


def words(text: str | None) -> list[str]:
    """The words of a text as the bag-of-words features read them (lower case, no stop words)."""
    if not text:
        return []
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1]


@dataclass
class SideTable:
    """Side features per entity index, row 0 = padding / unknown, joined at batch time.

    `categorical`: (n,) int64; `multi`: (n, K) int64 padded with 0; `dense`: (n, D) float (may be float16);
    `presence`: (n,) bool per dense modality (False = modality absent); `tokens`: (n, T, dim) float16 per
    multi-valued vector modality, one token per value (the first T), left-aligned, with `token_mask` (n, T)
    bool marking the real tokens; an absent modality is an all-False row. Arrays may be any object that
    numpy-style fancy indexing reads (the service's appendable tables)."""

    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    multi: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    presence: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    token_mask: dict[str, np.ndarray] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(getattr(self, g) for g in GROUPS)

    def gather(self, idx: np.ndarray, dense: bool = True,
               tokens: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Side features of the rows `idx` (any shape). `dense=False` leaves the content vectors out
        (history positions read them through the batch's distinct items instead). `tokens=True` adds the
        token tables as `name` (*idx, T, dim) float32 and `name:mask` (*idx, T) bool."""
        out: dict[str, torch.Tensor] = {}
        for name, arr in self.categorical.items():
            out[name] = torch.from_numpy(arr[idx])
        for name, arr in self.multi.items():
            out[name] = torch.from_numpy(arr[idx])
        pres: dict[str, torch.Tensor] = {}
        if dense:
            for name, arr in self.dense.items():
                out[name] = torch.from_numpy(np.asarray(arr[idx], dtype=np.float32))
            pres = {name: torch.from_numpy(arr[idx]) for name, arr in self.presence.items()}
        if tokens:
            for name, arr in self.tokens.items():
                # numpy gathers the float16 rows, torch widens them: numpy's own float16 -> float32 cast
                # is about 6x slower, and this is the largest copy of a live-stream batch
                out[name] = torch.from_numpy(np.ascontiguousarray(arr[idx])).float()
                out[f"{name}:mask"] = torch.from_numpy(np.ascontiguousarray(self.token_mask[name][idx]))
        return out, pres

    def arrays(self) -> dict[str, np.ndarray]:
        """`group.name` -> array, for safetensors."""
        return {f"{g}.{n}": np.ascontiguousarray(np.asarray(a)) for g in GROUPS for n, a in getattr(self, g).items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], file: str) -> SideTable:
        table = cls()
        for key, arr in arrays.items():
            group, _, name = key.partition(".")
            if group not in GROUPS or not name:
                raise DataError(Problem(file, None, key, f"tensors named GROUP.NAME, GROUP among {', '.join(GROUPS)}",
                                        repr(key)))
            getattr(table, group)[name] = arr
        alone = set(table.tokens) ^ set(table.token_mask)
        if alone:
            raise DataError(Problem(file, None, None, "a tokens.NAME and a token_mask.NAME tensor per token table",
                                    f"{sorted(alone)} alone"))
        return table

    def empty_row(self) -> dict[str, dict]:
        """The row of an entity with no feature and no content: group -> name -> value."""
        row: dict[str, dict] = {g: {} for g in GROUPS}
        for name in self.categorical:
            row["categorical"][name] = 0
        for name, arr in self.multi.items():
            row["multi"][name] = np.zeros(arr.shape[1], dtype=arr.dtype)
        for name, arr in self.dense.items():
            row["dense"][name] = np.zeros(arr.shape[1], dtype=arr.dtype)
            row["presence"][name] = False
        for name, arr in self.tokens.items():
            row["tokens"][name] = np.zeros(arr.shape[1:], dtype=arr.dtype)
            row["token_mask"][name] = np.zeros(arr.shape[1], dtype=bool)
        return row


@dataclass
class FeatureMaps:
    """How raw feature values become the codes of a `SideTable` (fitted with it, see `fit_side`)."""

    categorical: dict[str, Vocab] = field(default_factory=dict)  # str(raw value) -> code
    numeric: dict[str, np.ndarray | None] = field(default_factory=dict)  # quantile bucket edges (None: no values)
    multi: dict[str, Vocab] = field(default_factory=dict)  # str(raw value) or word -> code
    text: dict[str, str] = field(default_factory=dict)  # text modality -> its bag-of-words multi feature

    def code(self, name: str, value) -> int:
        """The code of one raw value of a categorical or numeric feature (0: missing or unseen)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return 0
        if name in self.numeric:
            edges = self.numeric[name]
            try:
                v = float(value)
            except (TypeError, ValueError):
                return 0
            if edges is None or not math.isfinite(v):
                return 0
            return int(np.searchsorted(edges, v, side="right")) + 1
        return int(self.categorical[name].lookup([value])[0])

    def multi_codes(self, name: str, values, k: int, dedupe: bool = False) -> np.ndarray:
        """(k,) codes of a multi-valued feature: unseen values dropped, the first k kept; `dedupe` (bags of
        words) keeps each code's first occurrence."""
        codes = [int(c) for c in self.multi[name].lookup([str(v) for v in values]) if c > 0]
        if dedupe:
            codes = list(dict.fromkeys(codes))
        out = np.zeros(k, dtype=np.int64)
        codes = codes[:k]
        out[: len(codes)] = codes
        return out

    def to_json(self) -> dict:
        return {"categorical": {n: voc.ids for n, voc in self.categorical.items()},
                "numeric": {n: None if e is None else [float(x) for x in e] for n, e in self.numeric.items()},
                "multi": {n: voc.ids for n, voc in self.multi.items()},
                "text": dict(self.text)}

    @classmethod
    def from_json(cls, raw: dict) -> FeatureMaps:
        return cls(categorical={n: Vocab(v) for n, v in raw.get("categorical", {}).items()},
                   numeric={n: None if e is None else np.asarray(e, np.float64) for n, e in raw.get("numeric", {}).items()},
                   multi={n: Vocab(v) for n, v in raw.get("multi", {}).items()},
                   text={str(m): str(f) for m, f in raw.get("text", {}).items()})

    def encode_row(self, table: SideTable, categorical: dict, multi: dict, text: dict, vectors: dict,
                   tokens: dict) -> tuple[dict | None, list[tuple[tuple, str, str]]]:
        """The table row of a new entity from its raw features and precomputed content, or its errors as
        (location, message, kind): unknown names, wrong dimensions, too many tokens, values beyond the
        table's range. What the entity leaves out is unknown / absent."""
        errors: list[tuple[tuple, str, str]] = []

        def bad(loc: tuple, msg: str, kind: str = "value_error") -> None:
            errors.append((loc, msg, kind))

        row = table.empty_row()
        for name, value in categorical.items():
            if name not in table.categorical:
                bad(("categorical", name), f"unknown categorical feature; the model reads {sorted(table.categorical) or 'none'}")
            elif name not in self.categorical and name not in self.numeric:
                bad(("categorical", name), "no raw value map for this feature (it was not fitted from raw values)")
            else:
                row["categorical"][name] = self.code(name, value)
        words_of = {f: m for m, f in self.text.items()}
        for name, values in multi.items():
            if name not in table.multi:
                bad(("multi", name), f"unknown multi-valued feature; the model reads {sorted(table.multi) or 'none'}")
            elif name not in self.multi:
                bad(("multi", name), "no raw value map for this feature (it was not fitted from raw values)")
            elif words_of.get(name) in text:
                bad(("multi", name), f"given twice: as words here and as text '{words_of[name]}'")
            else:
                row["multi"][name] = self.multi_codes(name, values, len(row["multi"][name]), dedupe=name in words_of)
        for modality, value in text.items():
            if modality not in self.text:
                bad(("text", modality), f"unknown text modality; the model reads the words of {sorted(self.text) or 'none'}")
                continue
            name = self.text[modality]
            row["multi"][name] = self.multi_codes(name, words(value), len(row["multi"][name]), dedupe=True)
        for name, vec in vectors.items():
            if name not in table.dense:
                hint = f" (token modalities {sorted(table.tokens)} go under 'tokens')" if table.tokens else ""
                bad(("vectors", name), f"unknown dense content modality; the model reads {sorted(table.dense) or 'none'}{hint}")
                continue
            dim = len(row["dense"][name])
            if len(vec) != dim:
                bad(("vectors", name), f"expected {dim} values for modality '{name}', found {len(vec)}", "vector_dimension")
                continue
            v = np.asarray(vec, dtype=np.float64)
            dtype = row["dense"][name].dtype
            if not np.isfinite(v).all() or (len(v) and np.abs(v).max() > np.finfo(dtype).max):
                bad(("vectors", name), f"finite values within the range of the modality's {dtype} table "
                    f"(+-{float(np.finfo(dtype).max):.4g})")
                continue
            row["dense"][name], row["presence"][name] = v.astype(dtype), True
        for name, toks in tokens.items():
            if name not in table.tokens:
                hint = f" (dense modalities {sorted(table.dense)} go under 'vectors')" if table.dense else ""
                bad(("tokens", name), f"unknown token modality; the model reads {sorted(table.tokens) or 'none'}{hint}")
                continue
            t_max, dim = row["tokens"][name].shape
            if len(toks) > t_max:
                bad(("tokens", name), f"at most {t_max} tokens of modality '{name}' (the model's token table), "
                    f"found {len(toks)}", "too_many_tokens")
                continue
            wrong = [j for j, tok in enumerate(toks) if len(tok) != dim]
            for j in wrong:
                bad(("tokens", name, j), f"expected {dim} values per token of modality '{name}', found "
                    f"{len(toks[j])}", "vector_dimension")
            if wrong or not toks:
                continue
            v = np.asarray(toks, dtype=np.float64)
            dtype = row["tokens"][name].dtype
            if not np.isfinite(v).all() or np.abs(v).max() > np.finfo(dtype).max:
                bad(("tokens", name), f"finite values within the range of the modality's {dtype} token table "
                    f"(+-{float(np.finfo(dtype).max):.4g})")
                continue
            row["tokens"][name][: len(toks)] = v.astype(dtype)
            row["token_mask"][name][: len(toks)] = True
        return (None if errors else row), errors


@dataclass
class SideSizes:
    """What a model sees of a side table: vocabulary sizes and dimensions (`Schema.item_*` / `user_*`)."""

    categorical: dict[str, int] = field(default_factory=dict)
    multi: dict[str, int] = field(default_factory=dict)
    dense: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)


def fit_side(data, entity: str, vocab: Vocab, *, text_modalities: list[str] | None = None, max_words: int = 16,
             vector_modalities: list[str] | None = None, token_modalities: list[str] | None = None,
             max_tokens: int = 8, event_texts: dict[str, tuple[list[str], list[str]]] | None = None,
             ) -> tuple[SideTable, FeatureMaps, SideSizes]:
    """The side table of `entity` ("item" or "user") over `vocab`'s rows, its raw value maps and sizes.
    `event_texts`: text modalities built from events (name -> (entity ids, texts)), read as bags of words."""
    n = len(vocab)
    table, maps, sizes = SideTable(), FeatureMaps(), SideSizes()
    frame = data.items if entity == "item" else data.users
    key = f"{entity}_id"
    specs = data.spec.item_features if entity == "item" else data.spec.user_features
    if entity == "item":
        _check_token_modalities(data, token_modalities)
    else:
        token_modalities = []  # a user's multi-valued vectors are read as their mean
    if frame is not None:
        row_idx = vocab.lookup(frame[key])
        for f in specs:
            if f.name not in frame.column_names:
                continue
            col = frame[f.name].to_pylist()
            if f.kind == "categorical":
                _, uniq = pd.factorize(pd.Series(col, dtype=object), use_na_sentinel=True)
                voc = Vocab(list(dict.fromkeys(str(v) for v in uniq)))
                maps.categorical[f.name] = voc
                arr = np.zeros(n, dtype=np.int64)
                arr[row_idx] = [0 if _missing(v) else c for v, c in zip(col, voc.lookup(col))]
                table.categorical[f.name] = arr
                sizes.categorical[f.name] = len(voc)
            elif f.kind == "numeric":
                vals = pd.to_numeric(pd.Series(col), errors="coerce").to_numpy(dtype=np.float64)
                ok = np.isfinite(vals)
                edges = np.unique(np.quantile(vals[ok], np.linspace(0, 1, 11)[1:-1])) if ok.any() else None
                maps.numeric[f.name] = edges
                arr = np.zeros(n, dtype=np.int64)
                if edges is not None:
                    arr[row_idx[ok]] = np.searchsorted(edges, vals[ok], side="right") + 1
                table.categorical[f.name] = arr
                sizes.categorical[f.name] = NUMERIC_CODES
            elif f.kind == "multi_categorical":
                first: dict[str, int] = {}
                for lst in col:
                    for v in lst or []:
                        first.setdefault(str(v), len(first) + 1)
                voc = Vocab(list(first))
                maps.multi[f.name] = voc
                k = max(1, min(MAX_MULTI, max((len(lst or []) for lst in col), default=1)))
                arr = np.zeros((n, k), dtype=np.int64)
                for r, lst in zip(row_idx, col):
                    arr[r] = maps.multi_codes(f.name, lst or [], k)
                table.multi[f.name] = arr
                sizes.multi[f.name] = len(voc)
    for m in data.spec.modalities:
        if m.entity != entity or m.name not in data.content:
            continue
        if m.kind == "vector" and not m.multi and (vector_modalities is None or m.name in vector_modalities):
            _put_vectors(table, sizes, m.name, n, vocab, _slices(data.content, m.name), m.dim)
            continue
        content = data.content[m.name]
        rows = vocab.lookup(content["entity_id"])
        file = f"content/{m.name}.parquet"
        if m.kind == "text" and (text_modalities is None or m.name in text_modalities):
            texts = content["text"].to_pylist()
            if m.multi:  # several texts per entity (e.g. viewer comments): one bag over all of them
                texts = [" ".join(t for t in (ts or []) if t) for ts in texts]
            _fit_words(table, maps, sizes, m.name, rows, texts, n, max_words)
        elif m.kind == "vector" and m.multi and (token_modalities is None or m.name in token_modalities):
            tokens, mask, dim = _token_table(content, file, m.dim, rows, n, max_tokens)
            table.tokens[m.name], table.token_mask[m.name] = tokens, mask
            sizes.tokens[m.name] = (int(tokens.shape[1]), dim)
        elif m.kind == "vector" and m.multi and (vector_modalities is None or m.name in vector_modalities):
            # not read as tokens: the mean of the entity's vectors is its dense content, so every model can use it
            vectors, counts, dim = vector_lists(content, file, m.dim)
            starts = np.cumsum(counts) - counts
            mean = np.add.reduceat(vectors, starts, axis=0) / counts[:, None] if len(counts) else vectors
            _put_dense(table, sizes, m.name, n, rows, mean)
    for name, (ids, texts) in (event_texts or {}).items():
        _fit_words(table, maps, sizes, name, vocab.lookup(list(ids)), texts, n, max_words)
    return table, maps, sizes


def _fit_words(table: SideTable, maps: FeatureMaps, sizes: SideSizes, modality: str, rows: np.ndarray,
               texts: list[str | None], n: int, max_words: int) -> None:
    """A text modality as a bag of words `<modality>_words`: the words in >= 2 entities' texts (of rows in the
    vocabulary), sorted; each entity's first `max_words` distinct known words."""
    tokenised = [words(t) for t in texts]
    counts = Counter(w for r, ws in zip(rows, tokenised) if r > 0 for w in set(ws))
    name = f"{modality}_words"
    maps.multi[name] = Vocab(sorted(w for w, c in counts.items() if c >= 2))
    maps.text[modality] = name
    arr = np.zeros((n, max_words), dtype=np.int64)
    for r, ws in zip(rows, tokenised):
        if r > 0:
            arr[r] = maps.multi_codes(name, ws, max_words, dedupe=True)
    table.multi[name] = arr
    sizes.multi[name] = len(maps.multi[name])


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _put_dense(table: SideTable, sizes: SideSizes, name: str, n: int, rows: np.ndarray, values: np.ndarray) -> None:
    """One dense content modality: `values[i]` belongs to row `rows[i]` (0 = unknown, skipped); rows without a
    value are absent (presence False), their stored zeros never read as data."""
    arr = np.zeros((n, values.shape[1]), dtype=np.float32)
    pres = np.zeros(n, dtype=bool)
    keep = rows > 0
    arr[rows[keep]] = values[keep]
    pres[rows[keep]] = True
    table.dense[name], table.presence[name] = arr, pres
    sizes.dense[name] = int(values.shape[1])


def _slices(content, name: str):
    """A content table in slices of rows: read one at a time from its file where the dataset reads content on
    demand (`PartitionedData`), else the slices of the table in memory."""
    if hasattr(content, "batches"):
        yield from content.batches(name, ["entity_id", "vector"])
    else:
        t = content[name]
        for b in t.select(["entity_id", "vector"]).to_batches():
            yield pa.Table.from_batches([b])


def _put_vectors(table: SideTable, sizes: SideSizes, name: str, n: int, vocab: Vocab, slices,
                 dim: int | None) -> None:
    """A single-vector modality as `_put_dense` stores it, filled one slice of the content rows at a time: the
    vectors are never held or copied whole besides the table itself (6.56M 128-d vectors are 3.4 GB)."""
    arr = pres = None
    for t in slices:
        if not t.num_rows:
            continue
        vecs = t["vector"].combine_chunks()
        if dim is None:
            dim = len(vecs[0].as_py())
        if arr is None:
            arr, pres = np.zeros((n, dim), dtype=np.float32), np.zeros(n, dtype=bool)
        r = vocab.lookup(t["entity_id"])
        vals = pc.list_flatten(vecs).to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
        keep = r > 0
        arr[r[keep]] = vals[keep]
        pres[r[keep]] = True
    if arr is None:
        dim = dim or 0
        arr, pres = np.zeros((n, dim), dtype=np.float32), np.zeros(n, dtype=bool)
    table.dense[name], table.presence[name] = arr, pres
    sizes.dense[name] = int(dim)


def _check_token_modalities(data, names: list[str] | None) -> None:
    if names is None:
        return
    usable = [m.name for m in data.spec.modalities if m.entity == "item" and m.kind == "vector" and m.multi]
    for name in names:
        if name not in usable:
            raise DataError(Problem(
                "task.token_modalities", None, name,
                f"a multi-valued item vector modality of dataset '{data.spec.name}' ({usable or 'it has none'}; "
                "raw frames, speech and comments become vectors through content encoding)", repr(name)))


def vector_lists(table: pa.Table, file: str, dim: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """A multi-valued vector column (a list of equal-length vectors per row) -> (every vector (N, dim) float32
    in row order, vectors per row (rows,), dim). Rows without any vector, vectors of another length and
    non-finite values are errors naming the row: a missing modality is a missing row, never an empty one."""
    col = table["vector"]
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) or not (
            pa.types.is_list(arr.type.value_type) or pa.types.is_large_list(arr.type.value_type)
            or pa.types.is_fixed_size_list(arr.type.value_type)):
        raise DataError(Problem(file, None, "vector", "a list of vectors per row (multi-valued modality)",
                                str(arr.type)))
    counts = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    empty = (counts == 0) | pc.is_null(arr).to_numpy(zero_copy_only=False)
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise DataError(Problem(file, r + 1, "vector", "at least one vector (an entity without any has no row)",
                                f"an empty list ({int(empty.sum())} such row(s))"))
    inner = pc.list_flatten(arr)
    lengths = pc.fill_null(pc.list_value_length(inner), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    want = dim if dim is not None else int(lengths.max())  # the validation names any shorter one
    row_of = np.repeat(np.arange(len(counts)), counts)
    bad = lengths != want
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        found = "an empty value" if lengths[j] < 0 else f"length {int(lengths[j])}"
        raise DataError(Problem(file, int(row_of[j]) + 1, "vector", f"vectors of length {want}",
                                f"{found} (vector {j - int(np.searchsorted(row_of, row_of[j])) + 1} of the row)"))
    values = pc.list_flatten(inner).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, want)
    finite = np.isfinite(values).all(1)
    if not finite.all():
        r = int(row_of[np.flatnonzero(~finite)[0]])
        raise DataError(Problem(file, r + 1, "vector", "finite numbers", "NaN, infinity or an empty number"))
    return values, counts, want


def _token_table(table: pa.Table, file: str, dim: int | None, rows: np.ndarray, n: int,
                 max_tokens: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Padded token table of a multi-valued vector modality: (n, T, dim) float16 holding the first T vectors
    of each entity in their stored order (frames in time order, comments as they came), the mask (n, T) bool,
    and dim. T = min(max_tokens, the longest list): a column no entity fills would only cost memory here and
    copies in every batch. Entities without a row keep an all-False mask: the modality is absent for them."""
    vectors, counts, dim = vector_lists(table, file, dim)
    keep = rows > 0  # content of entities outside the vocabulary has no row
    kept = np.minimum(counts, max_tokens) * keep
    width = max(1, int(kept.max()) if len(kept) else 1)
    src_row = np.repeat(np.arange(len(counts)), kept)
    slot = np.arange(len(src_row)) - np.repeat(np.cumsum(kept) - kept, kept)
    values = vectors[(np.cumsum(counts) - counts)[src_row] + slot]
    f16 = np.finfo(np.float16).max
    over = np.abs(values).max(1) > f16 if len(values) else np.zeros(0, dtype=bool)
    if over.any():
        r = int(src_row[np.flatnonzero(over)[0]])
        raise DataError(Problem(file, r + 1, "vector", f"values within +-{f16:.0f} (token tables are float16)",
                                f"{float(np.abs(values[over]).max()):.4g}"))
    tokens = np.zeros((n, width, dim), dtype=np.float16)
    mask = np.zeros((n, width), dtype=bool)
    tokens[rows[src_row], slot] = values
    mask[rows[src_row], slot] = True
    return tokens, mask, dim
