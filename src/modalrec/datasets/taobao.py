"""Taobao UserBehavior (Alibaba Tianchi): page views, add-to-cart, favourites and purchases.

The release is one CSV without a header row (`UserBehavior.csv`, 100,150,807 rows in the full set):

    user_id, item_id, category_id, behavior, timestamp
    1,2268318,2520377,pv,1511544070

ids are integers, `behavior` is one of pv (page view), cart, fav (favourite), buy, and `timestamp`
is unix seconds. `load(path)` takes that file or the folder holding it.

What comes out (`level="item"`, the default):
- events: one per row, channel = the behaviour (pv, cart, fav, buy), `event_id` = the 1-based row
  number in the file (so any event can be looked up in the CSV), time = the timestamp;
- items: item_id + `category_id` (categorical feature); an item has one category, and a row that
  gives an item another category than its first row did is a bad row;
- modality `behaviour_tokens` (entity event, kind tokens): per event the tokens
  ``category:<category_id>`` and ``behaviour:<behavior>``, the content of a touchpoint in the
  `multilabel` task (the shared token vocabulary of the shared-space models).

`level="category"`: the item of every event is its CATEGORY (items table = the categories, the
Taobao item id kept in the event column `taobao_item_id`). This is the view of the shared-space
protocol (configs/shared_space/taobao_*.yaml): samples = buy events, label = the category bought,
touchpoints = the user's earlier pv/cart/fav events. The multilabel task predicts the items of its
sample events, so the category view is what makes the label a category. Why categories: in the
4,321-row sample the 77 purchases are of 75 distinct items, so an item label is seen once and never
again, while a category (61 among the purchases, 567 in all) also appears in the touchpoints: 78% of
the purchases are of a category the buyer viewed, carted or favoured before. Even so, 12 of the 15 test
purchases of the protocol are of a category no training purchase had (the sample is tiny), so no model
can rank those by what it learnt; the full release (100M rows, 9,439 categories) has many purchases
per category.

Bad rows (wrong number of fields, a non-integer id or timestamp, an unknown behaviour, an item's
second category) raise one `DataError` naming the file, the row and the field. With
`skip_bad_rows=True` they are left out and returned next to the data as `Rejected(file, row,
reason)`, as `modalrec.data.importer.import_dataset` does; give `rejected_file` as well to write them
to a CSV instead (that form returns the data alone, so it also works from a config's `data.params`).
Blank lines are skipped (they still count in the row numbers). Research use only; cite Zhu et al.
(2018), see `CITATION`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..data.errors import DataError, Problem
from ..data.importer import Rejected, write_rejected
from ..data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec

FILE = "UserBehavior.csv"
COLUMNS = ("user_id", "item_id", "category_id", "behavior", "timestamp")
BEHAVIOURS = ("pv", "cart", "fav", "buy")
MODALITY = "behaviour_tokens"
ITEM_COLUMN = "taobao_item_id"
SOURCE = "Alibaba Tianchi, User Behavior Data from Taobao for Recommendation, https://tianchi.aliyun.com/dataset/649"
CITATION = ("Han Zhu, Xiang Li, Pengye Zhang, Guozheng Li, Jie He, Han Li, Kun Gai. 2018. Learning "
            "Tree-based Deep Model for Recommender Systems. KDD 2018. https://doi.org/10.1145/3219819.3219826")
_TOKEN_CHUNK = 1 << 24
_INT = r"^\d+$"
_TIME = r"^-?\d+$"


def _column(i: int) -> str:
    """The header-less file's field, named for a reader: position and meaning."""
    return f"{i + 1} ({COLUMNS[i]})"


def _file_of(path: Path) -> Path:
    f = path / FILE if path.is_dir() else path
    if not f.is_file():
        what = "no such directory or file" if not path.exists() else f"no {FILE} in this folder"
        raise DataError(Problem(str(path), None, None, f"the Taobao UserBehavior CSV ({FILE}) or its folder",
                                what))
    return f


class _Rows:
    """Every row problem of the file, by 1-based physical row (a row may have several)."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self.reasons: dict[int, list[str]] = {}

    def add(self, row: int, column: str | None, expected: str, found: str) -> None:
        self.problems.append(Problem(self.file, row, column, expected, found))
        where = f"column '{column}': " if column else ""
        self.reasons.setdefault(row, []).append(f"{where}expected {expected}, found {found}")

    def rejected(self) -> list[Rejected]:
        return [Rejected(self.file, r, "; ".join(self.reasons[r])) for r in sorted(self.reasons)]


def _read(f: Path, rows: _Rows) -> tuple[pa.Table, np.ndarray]:
    """The file as five string columns and the physical row number of each table row.

    Single-threaded, because only then does pyarrow know the row number of a malformed line; rows with
    another number of fields are reported (and left out of the table) as they are met."""

    def invalid(row) -> str:
        found = f"{row.actual_columns} field(s): {row.text[:80]!r}"
        rows.add(int(row.number), None, f"{len(COLUMNS)} comma-separated fields", found)
        return "skip"

    try:
        table = pacsv.read_csv(
            f,
            read_options=pacsv.ReadOptions(column_names=list(COLUMNS), use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=invalid, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(Problem(str(f), None, None, "a readable UTF-8 CSV file",
                                str(e).splitlines()[0])) from None
    skipped = np.array(sorted(rows.reasons), np.int64)
    physical = np.setdiff1d(np.arange(1, table.num_rows + len(skipped) + 1), skipped, assume_unique=True)
    return table, physical


def _check(table: pa.Table, physical: np.ndarray, rows: _Rows) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Trimmed columns, and the mask of rows to keep (not blank); every bad cell goes to `rows`."""
    cols = {c: pc.utf8_trim_whitespace(table[c]).combine_chunks() for c in COLUMNS}
    empty = np.ones(table.num_rows, bool)
    for c in COLUMNS:
        empty &= pc.equal(pc.utf8_length(cols[c]), 0).to_numpy(zero_copy_only=False)
    checks = [(0, _INT, "an integer id"), (1, _INT, "an integer id"), (2, _INT, "an integer id"),
              (4, _TIME, "unix seconds (an integer)")]
    bad = np.zeros(table.num_rows, bool)
    for i, pattern, expected in checks:
        wrong = ~pc.match_substring_regex(cols[COLUMNS[i]], pattern).to_numpy(zero_copy_only=False) & ~empty
        bad |= wrong
        for r in np.flatnonzero(wrong).tolist():
            value = cols[COLUMNS[i]][r].as_py()
            found = repr(value) if value else "an empty value"
            if physical[r] == 1 and value == COLUMNS[i]:
                found += " (a header row? the release has none)"
            rows.add(int(physical[r]), _column(i), expected, found)
    known = pc.is_in(cols["behavior"], value_set=pa.array(BEHAVIOURS)).to_numpy(zero_copy_only=False)
    wrong = ~known & ~empty
    bad |= wrong
    for r in np.flatnonzero(wrong).tolist():
        value = cols["behavior"][r].as_py()
        rows.add(int(physical[r]), _column(3), f"one of {', '.join(BEHAVIOURS)}",
                 repr(value) if value else "an empty value")
    keep = ~empty & ~bad
    # one category per item: rows that contradict the item's first (otherwise valid) row
    idx = np.flatnonzero(keep)
    item_code, first = _codes(cols["item_id"].take(pa.array(idx)))
    cat_code, _ = _codes(cols["category_id"].take(pa.array(idx)))
    clash = np.flatnonzero(cat_code[first[item_code]] != cat_code)
    for k in clash.tolist():
        r0 = int(physical[idx[first[item_code[k]]]])
        expected = f"category {cols['category_id'][idx[first[item_code[k]]]].as_py()}, as on row {r0}"
        rows.add(int(physical[idx[k]]), _column(2), expected + " (an item has one category)",
                 repr(cols["category_id"][idx[k]].as_py()))
    keep[idx[clash]] = False
    return cols, keep


def _codes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(code of each value, position of each distinct value's first occurrence), in order of appearance.

    Arrow's dictionary encoding and a numpy sort: no Python object per row, which matters for the
    100M rows of the full release."""
    enc = pc.dictionary_encode(values)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    _, first = np.unique(codes, return_index=True)
    return codes, first


def _tokens(category: pa.Array, behaviour: pa.Array) -> pa.ChunkedArray:
    """Per event [category:<id>, behaviour:<type>], interleaved by Arrow (no Python object per row), in
    chunks of `_TOKEN_CHUNK` events so that no string array of the full release passes 2 GB."""
    chunks = []
    for lo in range(0, len(category), _TOKEN_CHUNK):
        cat, beh = category[lo:lo + _TOKEN_CHUNK], behaviour[lo:lo + _TOKEN_CHUNK]
        m = len(cat)
        both = pa.concat_arrays([pc.binary_join_element_wise("category:", cat, ""),
                                 pc.binary_join_element_wise("behaviour:", beh, "")])
        order = np.empty(2 * m, np.int64)
        order[0::2], order[1::2] = np.arange(m), np.arange(m, 2 * m)
        offsets = pa.array(np.arange(0, 2 * m + 1, 2, dtype=np.int32), pa.int32())
        chunks.append(pa.ListArray.from_arrays(offsets, both.take(pa.array(order))))
    return pa.chunked_array(chunks, pa.list_(pa.string()))


@overload
def load(path: str | os.PathLike, level: Literal["item", "category"] = "item",
         skip_bad_rows: Literal[False] = False, rejected_file: None = None) -> InteractionData: ...
@overload
def load(path: str | os.PathLike, level: Literal["item", "category"] = "item", *,
         skip_bad_rows: Literal[True],
         rejected_file: None = None) -> tuple[InteractionData, list[Rejected]]: ...
@overload
def load(path: str | os.PathLike, level: Literal["item", "category"] = "item", *,
         skip_bad_rows: Literal[True], rejected_file: str | os.PathLike) -> InteractionData: ...
def load(path, level="item", skip_bad_rows=False, rejected_file=None):
    """Taobao UserBehavior -> `InteractionData` (see the module doc for `level` and bad rows)."""
    if level not in ("item", "category"):
        raise ValueError(f"level must be 'item' or 'category', got {level!r}")
    if rejected_file is not None and not skip_bad_rows:
        raise ValueError("rejected_file lists the rows that skip_bad_rows=True leaves out; set skip_bad_rows "
                         "too")
    f = _file_of(Path(path))
    rows = _Rows(str(f))
    table, physical = _read(f, rows)
    cols, keep = _check(table, physical, rows)
    if rows.problems and not skip_bad_rows:
        raise DataError(rows.problems)
    rejected = rows.rejected()
    take = pa.array(np.flatnonzero(keep))
    c = {k: v.take(take) for k, v in cols.items()}
    event_id = pc.cast(pa.array(physical[keep]), pa.string())
    category = c["category_id"]
    item = category if level == "category" else c["item_id"]
    ev = {"user_id": c["user_id"], "item_id": item, "time": pc.cast(c["timestamp"], pa.int64()),
          "channel": c["behavior"], "event_id": event_id}
    if level == "category":
        ev[ITEM_COLUMN] = c["item_id"]
    events = pa.table(ev)

    _, first = _codes(item)
    firsts = pa.array(first)
    items = pa.table({"item_id": item.take(firsts)})
    if level == "item":
        items = items.append_column("category_id", category.take(firsts))
    content = {MODALITY: pa.table({"entity_id": event_id, "tokens": _tokens(category, c["behavior"])})}
    spec = DatasetSpec(
        name="taobao-userbehavior" + ("-category" if level == "category" else ""),
        description="Taobao UserBehavior: page views, carts, favourites and purchases"
        + ("; the item of every event is its category" if level == "category" else ""),
        channels=list(BEHAVIOURS),
        item_features=[FeatureSpec(name="category_id", kind="categorical")] if level == "item" else [],
        modalities=[ModalitySpec(name=MODALITY, entity="event", kind="tokens",
                                 description="category:<category id> and behaviour:<pv|cart|fav|buy> of the "
                                             "event")],
        event_columns=["event_id"] + ([ITEM_COLUMN] if level == "category" else []),
        source=SOURCE,
        citation=CITATION,
    )
    data = InteractionData(spec, events, items, None, content).validate(str(f))
    if not skip_bad_rows:
        return data
    if rejected_file is not None:
        write_rejected(rejected, rejected_file)
        return data
    return data, rejected
