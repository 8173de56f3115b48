"""MicroLens_1M_x1: the data of the WWW 2025 multimodal CTR prediction challenge (EReL@MIR, Track 2).

The release is a folder of four Parquet files:

    train.parquet, valid.parquet, test.parquet
        user_id, item_seq (list of the user's previous item ids), item_id, likes_level, views_level,
        label (0/1; in test.parquet absent or null: the challenge hides it)
    item_info.parquet
        item_id, item_tags (list of 5 tag ids, 0 = no tag), item_emb_d128 (list of 128 floats);
        row 0 is the padding item (item_id 0), which is never a real item

`load(path)` reads and validates the folder into a `MicroLensData`; `to_interaction_data()` turns it
into the library's `InteractionData`; `write_submission` writes the challenge's `ID,Task2` CSV, where
ID is the row index in test.parquet.

The release carries no timestamps. The `time` column of the converted events is synthetic: the
global row number when train, valid and test are read one after the other, so time order is split
order first, then row order within a split. It orders events; it is not a clock.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..data.errors import DataError, Problem, rows_of
from ..data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec

SPLITS = ("train", "valid", "test")
SPLIT_COLUMNS = ("user_id", "item_seq", "item_id", "likes_level", "views_level", "label")
ITEM_COLUMNS = ("item_id", "item_tags", "item_emb_d128")
N_TAGS = 5
EMB_DIM = 128
PADDING_ITEM = 0
CHANNEL = "impression"
_SEQ_SLICE = 1 << 18
SOURCE = "https://huggingface.co/datasets/reczoo/MicroLens_1M_x1"
CITATION = ("Ni et al., A Content-Driven Micro-Video Recommendation Dataset at Scale (MicroLens), 2023; "
            "WWW 2025 EReL@MIR Multimodal CTR Prediction Challenge")


@dataclass
class MicroLensData:
    """The four tables of a MicroLens_1M_x1 folder, as read (validated by `load`)."""

    path: Path
    train: pa.Table
    valid: pa.Table
    test: pa.Table
    items: pa.Table

    @property
    def splits(self) -> dict[str, pa.Table]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def to_interaction_data(self, splits: tuple[str, ...] = SPLITS,
                            item_seq: bool = False) -> InteractionData:
        """Events of `splits` (channel "impression"; label, likes_level, views_level, split, and `row`,
        the 0-based row in its split file, which is the submission ID for test rows), items with their
        tags (multi_categorical, tag 0 dropped as padding), and the 128-d multimodal item embedding as
        vector modality "mm_emb". The padding item is left out. Test labels are null.

        `item_seq=True` keeps each row's given history as a list<string> event column (padding ids
        dropped); by default histories are left to be rebuilt from the events."""
        unknown = [s for s in splits if s not in SPLITS]
        if unknown or not splits:
            raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits}")
        parts = []
        offset = 0
        for name in SPLITS:  # time runs over the splits in release order, whatever subset is kept
            t = self.splits[name]
            n = t.num_rows
            if name in splits:
                label = t["label"] if "label" in t.column_names else pa.nulls(n, pa.float32())
                cols = {
                    "user_id": pc.cast(t["user_id"], pa.string()),
                    "item_id": pc.cast(t["item_id"], pa.string()),
                    "time": pa.array(np.arange(offset, offset + n, dtype=np.int64)),
                    "channel": pa.array(np.full(n, CHANNEL, dtype=object), pa.string()),
                    "label": pc.cast(label, pa.float32()),
                    "likes_level": pc.cast(t["likes_level"], pa.int64()),
                    "views_level": pc.cast(t["views_level"], pa.int64()),
                    "split": pa.array(np.full(n, name, dtype=object), pa.string()),
                    "row": pa.array(np.arange(n, dtype=np.int64)),
                }
                if item_seq:
                    cols["item_seq"] = _id_lists(t["item_seq"])
                parts.append(pa.table(cols))
            offset += n
        events = pa.concat_tables(parts).combine_chunks()

        it = self.items
        real = pc.not_equal(pc.cast(it["item_id"], pa.string()), str(PADDING_ITEM))
        it = it.filter(real)
        item_ids = pc.cast(it["item_id"], pa.string())
        items = pa.table({"item_id": item_ids, "tags": _id_lists(it["item_tags"])})
        emb = pc.cast(it["item_emb_d128"], pa.list_(pa.float32()))
        content = {"mm_emb": pa.table({"entity_id": item_ids, "vector": emb})}
        extra = ["likes_level", "views_level", "split", "row"] + (["item_seq"] if item_seq else [])
        spec = DatasetSpec(
            name="MicroLens_1M_x1",
            description="WWW 2025 multimodal CTR challenge: micro-video impressions with click labels; "
                        "time is synthetic (split order, then row order)",
            channels=[CHANNEL],
            item_features=[FeatureSpec(name="tags", kind="multi_categorical")],
            modalities=[ModalitySpec(
                name="mm_emb", entity="item", kind="vector", dim=EMB_DIM,
                description="128-d multimodal item embedding released with the challenge")],
            event_columns=extra,
            source=SOURCE,
            citation=CITATION,
        )
        return InteractionData(spec, events, items, None, content).validate(str(self.path))


def _id_lists(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """list<int> -> list<string> without the padding id 0 (a null list becomes an empty one)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    col = pc.cast(col, pa.list_(pa.int64()))
    col = pc.fill_null(col, pa.scalar([], pa.list_(pa.int64())))
    flat = pc.list_flatten(col)
    parent = pc.list_parent_indices(col)
    keep = pc.not_equal(flat, PADDING_ITEM)
    flat, parent = flat.filter(keep), parent.filter(keep)
    counts = np.bincount(parent.to_numpy(zero_copy_only=False), minlength=len(col))
    offsets = np.zeros(len(col) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pc.cast(flat, pa.string()))


# ---------------------------------------------------------------------------------------- loading
def load(path: str | os.PathLike) -> MicroLensData:
    """Read and validate a MicroLens_1M_x1 folder. Raises `DataError` listing every problem found."""
    path = Path(path)
    probs: list[Problem] = []
    tables: dict[str, pa.Table] = {}
    for name in (*SPLITS, "item_info"):
        f = path / f"{name}.parquet"
        if not f.exists():
            probs.append(Problem(str(f), None, None, f"the {name} table of MicroLens_1M_x1", "no such file"))
            continue
        try:
            tables[name] = pq.read_table(f)
        except (OSError, pa.ArrowException) as e:
            probs.append(Problem(str(f), None, None, "a readable Parquet file", str(e).splitlines()[0]))
    if probs:
        raise DataError(probs)

    items = tables["item_info"]
    item_file = str(path / "item_info.parquet")
    probs += _item_problems(items, item_file)
    known = items["item_id"] if not probs and "item_id" in items.column_names else None
    for name in SPLITS:
        probs += _split_problems(tables[name], str(path / f"{name}.parquet"), name, known)
    if probs:
        raise DataError(probs)
    return MicroLensData(path, tables["train"], tables["valid"], tables["test"], items)


def _missing_columns(t: pa.Table, file: str, wanted) -> list[Problem]:
    return [Problem(file, None, c, f"a column named {c}", f"no such column (has {t.column_names})")
            for c in wanted if c not in t.column_names]


def _is_id_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _first_null(t: pa.Table, file: str, col: str, expected: str) -> list[Problem]:
    nulls = pc.is_null(t[col]).to_numpy(zero_copy_only=False)
    if nulls.any():
        return [Problem(file, rows_of(nulls)[0], col, expected,
                        f"{int(nulls.sum())} empty value(s), first shown")]
    return []


def _list_length_problem(t: pa.Table, file: str, col: str, want: int) -> list[Problem]:
    lengths = pc.fill_null(pc.list_value_length(t[col]), -1).to_numpy(zero_copy_only=False)
    bad = lengths != want
    if bad.any():
        r = rows_of(bad)[0]
        found = "an empty value" if lengths[r - 1] < 0 else f"length {int(lengths[r - 1])}"
        return [Problem(file, r, col, f"a list of {want} values", f"{found} ({int(bad.sum())} bad row(s))")]
    return []


def _item_problems(t: pa.Table, file: str) -> list[Problem]:
    probs = _missing_columns(t, file, ITEM_COLUMNS)
    if probs:
        return probs
    if not pa.types.is_integer(t.schema.field("item_id").type):
        probs.append(Problem(file, None, "item_id", "integer item ids", str(t.schema.field("item_id").type)))
    probs += _first_null(t, file, "item_id", "an item id")
    ids = t["item_id"]
    if pc.count_distinct(ids).as_py() != t.num_rows:
        dup = [c["values"] for c in pc.value_counts(ids).to_pylist() if c["counts"] > 1][:3]
        probs.append(Problem(file, None, "item_id", "unique item ids", f"duplicates such as {dup}"))
    for col, want, kind in (("item_tags", N_TAGS, "integer"), ("item_emb_d128", EMB_DIM, "number")):
        typ = t.schema.field(col).type
        if not _is_list(typ):
            probs.append(Problem(file, None, col, f"a list of {want} {kind}s per row", str(typ)))
            continue
        vt = typ.value_type
        ok = pa.types.is_integer(vt) or (kind == "number" and pa.types.is_floating(vt))
        if not ok:
            probs.append(Problem(file, None, col, f"a list of {kind}s", str(typ)))
            continue
        probs += _list_length_problem(t, file, col, want)
    if not any(p.column == "item_emb_d128" for p in probs):
        emb = t["item_emb_d128"].combine_chunks()
        flat = pc.list_flatten(emb).to_numpy(zero_copy_only=False).astype(np.float64)
        if flat.size and not np.isfinite(flat).all():
            r = int(np.flatnonzero(~np.isfinite(flat))[0]) // EMB_DIM + 1
            probs.append(Problem(file, r, "item_emb_d128", "finite numbers", "NaN or infinity"))
    return probs


def _split_problems(t: pa.Table, file: str, split: str, known: pa.ChunkedArray | None) -> list[Problem]:
    wanted = [c for c in SPLIT_COLUMNS if c != "label" or split != "test"]
    probs = _missing_columns(t, file, wanted)
    if probs:
        return probs
    for col, ok, want in (("user_id", _is_id_type, "integer or string ids"),
                          ("item_id", pa.types.is_integer, "integer item ids")):
        typ = t.schema.field(col).type
        if not ok(typ):
            probs.append(Problem(file, None, col, want, str(typ)))
        else:
            probs += _first_null(t, file, col, "an id")
    for col in ("likes_level", "views_level"):
        typ = t.schema.field(col).type
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            probs.append(Problem(file, None, col, "a numeric level", str(typ)))
        else:
            probs += _first_null(t, file, col, "a level")
    seq_type = t.schema.field("item_seq").type
    if not (_is_list(seq_type) and pa.types.is_integer(seq_type.value_type)):
        probs.append(Problem(file, None, "item_seq", "a list of integer item ids per row", str(seq_type)))
    if "label" in t.column_names:
        typ = t.schema.field("label").type
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
                or pa.types.is_null(typ)):
            probs.append(Problem(file, None, "label", "0/1 labels", str(typ)))
        elif split != "test":
            probs += _first_null(t, file, "label", "a 0/1 label")
            lab = pc.cast(t["label"], pa.float64()).to_numpy(zero_copy_only=False)
            bad = ~np.isnan(lab) & (lab != 0) & (lab != 1)
            if bad.any():
                r = rows_of(bad)[0]
                probs.append(Problem(file, r, "label", "a 0/1 label", repr(lab[r - 1])))
    if probs or known is None:
        return probs
    target = t["item_id"]
    known_ids = pc.cast(known, target.type)
    pad = pc.equal(target, pc.cast(pa.scalar(PADDING_ITEM), target.type)).to_numpy(zero_copy_only=False)
    if pad.any():
        probs.append(Problem(file, rows_of(pad)[0], "item_id", "a real item id (0 is the padding item)",
                             f"0 ({int(pad.sum())} row(s))"))
    unknown = pc.invert(pc.is_in(target, value_set=known_ids)).to_numpy(zero_copy_only=False)
    if unknown.any():
        r = rows_of(unknown)[0]
        probs.append(Problem(file, r, "item_id", "an item id listed in item_info.parquet",
                             f"unknown id {target[r - 1].as_py()!r} ({int(unknown.sum())} row(s))"))
    # in slices: the histories of the full release hold a few hundred million ids
    first: tuple[int, object] | None = None
    n_bad_rows = 0
    for start in range(0, t.num_rows, _SEQ_SLICE):
        seq = t["item_seq"].slice(start, _SEQ_SLICE).combine_chunks()
        flat = pc.list_flatten(seq)
        if not len(flat):
            continue
        bad = pc.invert(pc.is_in(flat, value_set=pc.cast(known, flat.type))).to_numpy(zero_copy_only=False)
        bad &= ~pc.is_null(flat).to_numpy(zero_copy_only=False)
        if bad.any():
            parent = pc.list_parent_indices(seq).to_numpy(zero_copy_only=False)
            n_bad_rows += len(np.unique(parent[bad]))
            if first is None:
                i = int(np.flatnonzero(bad)[0])
                first = (start + int(parent[i]) + 1, flat[i].as_py())
    if first is not None:
        probs.append(Problem(file, first[0], "item_seq", "item ids listed in item_info.parquet",
                             f"unknown id {first[1]!r} ({n_bad_rows} row(s))"))
    return probs


# ---------------------------------------------------------------------------------------- submission
def load_events(path: str | os.PathLike, splits: tuple[str, ...] | list[str] = SPLITS) -> InteractionData:
    """The registered dataset `microlens`: `load(path).to_interaction_data(splits)`. Train with
    `task.split: {method: column, column: split}` to keep the release's own train/valid/test; the test
    labels are hidden, so test is predicted (`modalrec predict --format microlens`), not scored."""
    return load(path).to_interaction_data(tuple(splits))


def write_submission(ids, probs, path: str | os.PathLike, expected_rows: int | None = None) -> Path:
    """Write the challenge's submission CSV: header `ID,Task2`, one row per test row, ID ascending.

    `ids` are row indices in test.parquet and `probs` the predicted click probabilities. With
    `expected_rows` (the number of rows of test.parquet) the IDs must be exactly 0..expected_rows-1.
    Written atomically (temp file + rename)."""
    path = Path(path)
    ids = np.asarray(ids)
    p = np.asarray(probs, dtype=np.float64)
    out = str(path)
    problems: list[Problem] = []
    if ids.ndim != 1 or p.ndim != 1:
        raise DataError(Problem(out, None, None, "one-dimensional ids and probabilities",
                                f"shapes {ids.shape} and {p.shape}"))
    if len(ids) != len(p):
        raise DataError(Problem(out, None, None, "as many probabilities as ids",
                                f"{len(p)} for {len(ids)} ids"))
    if len(ids) and not np.issubdtype(ids.dtype, np.integer):
        as_float = ids.astype(np.float64) if np.issubdtype(ids.dtype, np.number) else None
        if as_float is None or not np.all(as_float == np.round(as_float)):
            raise DataError(Problem(out, None, "ID", "integer row indices of test.parquet", str(ids.dtype)))
        ids = as_float.astype(np.int64)
    ids = ids.astype(np.int64, copy=False)
    order = np.argsort(ids, kind="stable")
    ids, p = ids[order], p[order]
    if len(ids) and ids[0] < 0:
        problems.append(Problem(out, None, "ID", "non-negative row indices", str(int(ids[0]))))
    dup = np.flatnonzero(np.diff(ids) == 0)
    if len(dup):
        problems.append(Problem(out, None, "ID", "unique ids", f"{int(ids[dup[0]])} given more than once"))
    if expected_rows is not None:
        if len(ids) != expected_rows:
            problems.append(Problem(out, None, "ID", f"{expected_rows} rows (one per test row)",
                                    f"{len(ids)}"))
        elif len(ids) and not np.array_equal(ids, np.arange(expected_rows)):
            problems.append(Problem(out, None, "ID", f"every row index 0..{expected_rows - 1}",
                                    "gaps or values outside that range"))
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        problems.append(Problem(out, i + 1, "Task2", "a probability in [0, 1]",
                                f"{p[i]!r} for ID {int(ids[i])} ({int(bad.sum())} bad value(s))"))
    if problems:
        raise DataError(problems)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            f.write("ID,Task2\n")
            # repr: the shortest text that reads back as the same float, so no two predictions tie
            f.writelines(f"{i},{v!r}\n" for i, v in zip(ids.tolist(), p.tolist(), strict=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
