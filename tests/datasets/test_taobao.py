"""Taobao UserBehavior loader: fixtures in the release layout (no header; user, item, category, behaviour,
unix time), bad rows, and the shared-space multilabel protocol of configs/shared_space/taobao_*.yaml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modalrec.config import SplitConfig, load_config
from modalrec.data.errors import DataError
from modalrec.data.importer import Rejected
from modalrec.datasets import taobao
from modalrec.models import build_model
from modalrec.tasks import prepare_task
from modalrec.tasks.multilabel import MultiLabelTask

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "shared_space"

# (user, item, category, behaviour, time); rows are 1-based in the file
ROWS = [
    (1, 100, 10, "pv", 1000),
    (1, 101, 11, "pv", 1010),
    (1, 100, 10, "cart", 1020),
    (2, 200, 20, "pv", 1030),
    (1, 100, 10, "buy", 1040),
    (2, 201, 21, "fav", 1050),
    (2, 200, 20, "buy", 1060),
    (1, 102, 11, "pv", 1070),
    (3, 300, 30, "pv", 1080),
    (1, 101, 11, "buy", 1090),
    (3, 301, 30, "cart", 1100),
    (3, 300, 30, "buy", 1110),
    (2, 202, 21, "pv", 1120),
    (2, 201, 21, "buy", 1130),
    (3, 302, 10, "pv", 1140),
    (3, 302, 10, "buy", 1150),
]


def write(folder: Path, rows=ROWS, extra: dict[int, str] | None = None) -> Path:
    """UserBehavior.csv with `rows`; `extra` puts raw lines at 1-based line numbers (malformed rows)."""
    lines = [",".join(str(v) for v in r) for r in rows]
    for at, line in sorted((extra or {}).items()):
        lines.insert(at - 1, line)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / taobao.FILE).write_text("\n".join(lines) + "\n")
    return folder


def test_item_level(tmp_path):
    data = taobao.load(write(tmp_path))
    ev = data.events
    assert data.spec.channels == ["pv", "cart", "fav", "buy"]
    assert data.summary()["channels"] == {"pv": 7, "cart": 2, "fav": 1, "buy": 6}
    # event_id is the row number in the file, so an event can be found in the CSV
    assert ev["event_id"].to_pylist() == [str(i) for i in range(1, len(ROWS) + 1)]
    assert ev["item_id"].to_pylist()[:3] == ["100", "101", "100"]
    assert ev["time"].to_pylist() == [r[4] for r in ROWS]
    items = dict(zip(data.items["item_id"].to_pylist(), data.items["category_id"].to_pylist()))
    assert items == {str(r[1]): str(r[2]) for r in ROWS}
    assert [f.name for f in data.spec.item_features] == ["category_id"]
    m = data.spec.modality(taobao.MODALITY)
    assert (m.entity, m.kind) == ("event", "tokens")
    tok = data.content[taobao.MODALITY]
    assert tok["entity_id"].to_pylist() == ev["event_id"].to_pylist()
    assert tok["tokens"][2].as_py() == ["category:10", "behaviour:cart"]
    assert data.problems() == []


def test_category_level_makes_the_category_the_item(tmp_path):
    data = taobao.load(write(tmp_path) / taobao.FILE, level="category")  # the file itself works as well
    ev = data.events
    assert ev["item_id"].to_pylist() == [str(r[2]) for r in ROWS]
    assert ev[taobao.ITEM_COLUMN].to_pylist() == [str(r[1]) for r in ROWS]
    assert sorted(data.items["item_id"].to_pylist()) == ["10", "11", "20", "21", "30"]
    assert data.items.column_names == ["item_id"]
    with pytest.raises(ValueError, match="level"):
        taobao.load(tmp_path, level="brand")


def test_bad_rows_name_file_row_and_field(tmp_path):
    extra = {3: "1,103,12,pv", 6: "x1,104,12,pv,1200", 8: "1,105,12,click,1210", 10: "1,106,12,pv,soon",
             12: "1,100,99,pv,1220", 14: "1,107,12,pv,1230,extra"}
    folder = write(tmp_path, extra=extra)
    with pytest.raises(DataError) as err:
        taobao.load(folder)
    msg = str(err.value)
    f = str(folder / taobao.FILE)
    assert f"{f}, row 3: expected 5 comma-separated fields, found 4 field(s)" in msg
    assert f"{f}, row 6, column '1 (user_id)': expected an integer id, found 'x1'" in msg
    assert f"{f}, row 8, column '4 (behavior)': expected one of pv, cart, fav, buy, found 'click'" in msg
    assert f"{f}, row 10, column '5 (timestamp)': expected unix seconds (an integer), found 'soon'" in msg
    # item 100 has category 10 on row 1: a second category is a bad row, not a silent overwrite
    assert f"{f}, row 12, column '3 (category_id)': expected category 10, as on row 1" in msg
    assert f"{f}, row 14: expected 5 comma-separated fields, found 6 field(s)" in msg
    assert len(err.value.problems) == 6


def test_skip_bad_rows_keeps_every_good_row_and_lists_the_rest(tmp_path):
    extra = {3: "1,103,12,pv", 6: ",104,12,pv,1200", 8: "1,105,12,click,1210"}
    folder = write(tmp_path, extra=extra)
    data, rejected = taobao.load(folder, skip_bad_rows=True)
    assert data.num_events == len(ROWS)
    assert [r.row for r in rejected] == [3, 6, 8]
    assert all(isinstance(r, Rejected) and r.file == str(folder / taobao.FILE) for r in rejected)
    assert "column '1 (user_id)': expected an integer id, found an empty value" in rejected[1].reason
    # the good rows keep their own line numbers as event ids (rows 3, 6, 8 are missing)
    ids = data.events["event_id"].to_pylist()
    assert "3" not in ids and "6" not in ids and ids[:4] == ["1", "2", "4", "5"]
    assert data.events["item_id"][2].as_py() == "100"  # the row on line 4 is ROWS[2]
    # the form for configs: rejected rows go to a CSV, the data comes back alone
    out = tmp_path / "rejected.csv"
    only = taobao.load(folder, skip_bad_rows=True, rejected_file=out)
    assert only.num_events == len(ROWS)
    assert pd.read_csv(out)["row"].tolist() == [3, 6, 8]
    with pytest.raises(ValueError, match="skip_bad_rows"):
        taobao.load(folder, rejected_file=out)


def test_header_row_and_blank_lines(tmp_path):
    folder = write(tmp_path, extra={1: "user_id,item_id,category_id,behavior,timestamp"})
    with pytest.raises(DataError, match="row 1, column '1 \\(user_id\\)'.*a header row"):
        taobao.load(folder)
    # a blank line carries nothing: skipped, yet counted, so later rows keep their line numbers
    folder = write(tmp_path / "blank", extra={2: ""})
    data = taobao.load(folder)
    assert data.num_events == len(ROWS)
    assert data.events["event_id"].to_pylist()[:3] == ["1", "3", "4"]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no UserBehavior.csv in this folder"):
        taobao.load(tmp_path)
    with pytest.raises(DataError, match="no such directory or file"):
        taobao.load(tmp_path / "nope")


def _task(folder: Path, config: str = "taobao_keyword.yaml", **task_over) -> tuple[MultiLabelTask, object]:
    cfg = load_config(CONFIGS / config)
    data = taobao.load(folder, **cfg.data.params)
    task_cfg = cfg.task.model_copy(update=task_over)
    return prepare_task(data, task_cfg), cfg


def test_config_protocol_buy_events_predict_the_category(tmp_path):
    """configs/shared_space/taobao_*.yaml on a fixture: samples = buy events, labels = their categories,
    touchpoints = the buyer's EARLIER pv/cart/fav events, content = category and behaviour tokens."""
    folder = write(tmp_path)
    task, cfg = _task(folder, split=SplitConfig(valid=0.0, test=0.0))
    assert cfg.data.source == "taobao" and cfg.data.params == {"level": "category"}
    assert isinstance(task, MultiLabelTask)
    assert task.labels == ["10", "11", "20", "21", "30"]
    assert task.channel_names == ["pv", "cart", "fav"]
    # sample keys are the buy rows' line numbers, in time order
    assert list(task.sample_keys) == ["5", "7", "10", "12", "14", "16"]
    tps = {k: list(task.tp_ids[task.tp_ent[task.tp_ptr[i]:task.tp_ptr[i + 1]]])
           for i, k in enumerate(task.sample_keys)}
    assert tps["5"] == ["1", "2", "3"]  # user 1 before t=1040: pv, pv, cart; not the buy itself
    assert tps["10"] == ["1", "2", "3", "8"]  # the earlier buy (row 5) is no touchpoint
    assert tps["16"] == ["9", "11", "15"]
    lab = {k: [task.labels[j] for j in np.flatnonzero(task.label_mat[i])]
           for i, k in enumerate(task.sample_keys)}
    assert lab["5"] == ["10"] and lab["16"] == ["10"]  # item 302 is in category 10
    batch = task.collate(task.splits["train"], train=True)
    bags = batch.touchpoints.tokens[taobao.MODALITY]
    assert bags.shape[-1] == len(task.token_vocab)  # one vocabulary (index 0: padding)
    i = list(task.sample_keys).index("5")
    tokens = [{task.token_vocab.id_of(j) for j in torch.nonzero(bags[i, t]).flatten().tolist()}
              for t in range(3)]
    assert tokens == [{"category:10", "behaviour:pv"}, {"category:11", "behaviour:pv"},
                      {"category:10", "behaviour:cart"}]
    assert batch.touchpoints.channel[i].tolist()[:4] == [1, 1, 2, 0]


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("taobao_*.yaml")))
def test_every_taobao_config_builds_and_trains_a_step(tmp_path, config):
    """Each config's data params are the loader's and its model runs forward/backward on the protocol."""
    folder = write(tmp_path, rows=ROWS * 2)  # two copies: enough buy events for the 20% / 20% split
    task, cfg = _task(folder, config)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 8, "valid": 2, "test": 2}
    params = dict(cfg.model.params)
    if "hidden" in params:
        params.update(hidden=16)
    if cfg.model.name == "relative_representation":
        params.update(n_anchors=4, encoding_dim=8)
    if cfg.model.name == "latent_feature":
        params.update(latent_dim=8)
    model = build_model(cfg.model.name, task.schema, params)
    batch = task.collate(task.splits["train"], train=True)
    out = model(batch)
    loss = task.loss(out, batch)
    assert torch.isfinite(loss)
    if any(p.requires_grad for p in model.parameters()):
        loss.backward()
        assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.parameters())


def test_tokens_change_the_shared_space_prediction(tmp_path):
    """The behaviour tokens reach the Keyword model: other categories in the touchpoints, other scores."""
    torch.manual_seed(0)
    task, _ = _task(write(tmp_path), split=SplitConfig(valid=0.0, test=0.0))
    model = build_model("keyword", task.schema, {"hidden": 16, "dropout": 0.0}).eval()
    batch = task.collate(task.splits["train"], train=False)
    before = model(batch)
    tokens = batch.touchpoints.tokens
    tokens[taobao.MODALITY] = torch.roll(tokens[taobao.MODALITY], shifts=1, dims=-1)
    assert not torch.allclose(before, model(batch))
