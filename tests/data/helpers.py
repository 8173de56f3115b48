"""Helpers of the data tests (plain values and functions, not tests): an import spec over every kind of file (CSV,
Parquet, a users table, text and vector content) and its files, rows made comparable, and KuaiLive-like events
of any size (the streaming-import benchmark of docs/scale.md writes its files with it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

SPEC = """\
name: shop
description: a tiny shop
events:
  - file: clicks.csv
    user: uid
    item: sku
    time: ts
    label: clicked
    value: price
    channel: click
    keep: [device]
  - file: purchases.parquet
    user: uid
    item: sku
    time: ts
    channel_column: kind
items:
  file: items.csv
  id: sku
  categorical: [brand]
  multi_categorical: {genres: "|"}
  numeric: [weight]
  text: [title, subtitle]
  keep: [title]
users: {file: users.csv, id: uid, categorical: [age_group]}
content:
  - {name: description, entity: item, kind: text, file: desc.csv, id: sku, column: text}
  - {name: emb, entity: item, kind: vector, file: emb.parquet, id: sku, column: vec}
  - {name: stats, entity: item, kind: vector, file: stats.csv, id: sku, columns: "s_*"}
"""

CLICKS = """\
uid,sku,ts,clicked,price,device
u1,a,1700000000,1,9.5,web
u1,b,1700000100,0,,app
u2,a,1700000200,true,3,web
u2,c,1700000300,no,4.25,
"""

ITEMS = """\
sku,brand,genres,weight,title,subtitle
a,acme,rock|pop,1.5,"Guitar, acoustic",six strings
b,bolt,,2,Drum kit,
c,,jazz,,,
"""


def write_fixture(root: Path, spec: str = SPEC, clicks: str = CLICKS, items: str = ITEMS) -> Path:
    (root / "spec.yaml").write_text(spec)
    (root / "clicks.csv").write_text(clicks)
    pq.write_table(pa.table({
        "uid": ["u1", "u3"],
        "sku": ["c", "b"],
        "ts": pa.array([1700000400, 1700000500], pa.int64()),
        "kind": ["purchase", "cart"],
    }), root / "purchases.parquet")
    (root / "items.csv").write_text(items)
    (root / "users.csv").write_text("uid,age_group\nu1,18-25\nu2,\nu3,40+\n")
    (root / "desc.csv").write_text('sku,text\na,"A guitar.\nWith strings."\nb,\nc,Smooth jazz record\n')
    pq.write_table(pa.table({
        "sku": ["a", "c"],
        "vec": pa.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]], pa.list_(pa.float64())),
    }), root / "emb.parquet")
    (root / "stats.csv").write_text("sku,s_10,s_2,s_1\na,10,2,1\nb,,,\nc,0.5,0.25,0.125\n")
    return root / "spec.yaml"


def rows(table: pa.Table) -> list[dict]:
    """Rows with NaN made comparable (NaN != NaN would fail an equality check)."""
    def fix(v):
        if isinstance(v, float) and math.isnan(v):
            return "NaN"
        return [fix(x) for x in v] if isinstance(v, list) else v
    return [{k: fix(v) for k, v in r.items()} for r in table.to_pylist()]


def kuailive_like_csv(folder: Path, n: int, rooms: int = 11_000_000, seed: int = 0) -> Path:
    """n events with KuaiLive's columns (user_id, item_id: a live room, time, channel, label, value: the price of a
    gift, empty otherwise), 24,000 users, written in blocks of 1M rows; -> the import spec next to it. The
    benchmark of docs/scale.md ("Streaming import") imports these files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    channels = np.array(["click", "like", "comment", "gift"], dtype=object)
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("time", pa.int64()),
                        ("channel", pa.string()), ("label", pa.int64()), ("value", pa.string())])
    with pacsv.CSVWriter(folder / "events.csv", schema,
                         write_options=pacsv.WriteOptions(quoting_style="none", quoting_header="none")) as w:
        for start in range(0, n, 1_000_000):
            k = min(1_000_000, n - start)
            users = rng.integers(0, 24_000, k)
            items = rng.integers(0, rooms, k)
            times = 1_746_000_000 + np.sort(rng.integers(0, 30 * 86400, k))
            ch = rng.choice(4, k, p=[0.7, 0.15, 0.1, 0.05])
            value = np.where(ch == 3, np.char.mod("%.1f", rng.gamma(2.0, 5.0, k)), "")
            w.write_table(pa.table({
                "user_id": pa.array(np.char.add("u", users.astype(str)).astype(object)),
                "item_id": pa.array(items.astype(str).astype(object)), "time": pa.array(times),
                "channel": pa.array(channels[ch]), "label": pa.array((ch != 0).astype(np.int64)),
                "value": pa.array(value.astype(object))}, schema=schema))
    (folder / "spec.yaml").write_text(yaml.safe_dump({"name": "kuailive-like", "events": [
        {"file": "events.csv", "user": "user_id", "item": "item_id", "time": "time", "channel_column": "channel",
         "label": "label", "value": "value"}]}, sort_keys=False))
    return folder / "spec.yaml"
