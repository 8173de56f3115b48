"""Per-sample categorical context features (`task.context_features`, e.g. MicroLens' likes_level /
views_level): codes built from the training samples only (unseen and empty -> 0), carried per sample in
`Batch.context`, read by every ctr model that builds an MLP/QNN/linear input, and nothing changes for a
model without them.

The data is the hand-built live-stream world of the MMBee tests (tests/models/mmbee_helpers.py; so MMBee
runs too) with a release-style split column and three context columns: integers with nulls, strings, and
whole numbers stored as floats.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from modalrec.config import TaskConfig
from modalrec.data.errors import DataError
from modalrec.models import build_model
from modalrec.tasks import CTRTask
from tests.models import mmbee_helpers as mm
from tests.models.helpers import make_schema, random_batch, with_time
from tests.tasks.helpers import N_EVENTS, make_data

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ctr_parameters_without_context.json"


def config(features: list[str], **kw) -> TaskConfig:
    return TaskConfig(kind="ctr", max_history=8, max_tokens=4, split={"method": "column", "column": "split"},
                      context_features=features, **kw)


@pytest.fixture(scope="module")
def task() -> CTRTask:
    return CTRTask(make_data(), config(["level", "mood"]))


def raw_values(task: CTRTask, split: str, column: str) -> list:
    """The event column's values of a split's samples, in sample order: each sample found by its raw ids."""
    events = make_data().events
    keys = zip(events["user_id"].to_pylist(), events["item_id"].to_pylist(), events["time"].to_pylist())
    row_of = {k: r for r, k in enumerate(keys)}
    assert len(row_of) == events.num_rows  # (user, item, time) names one event
    ids = task.sample_ids[split]
    rows = [row_of[k] for k in zip(ids["user_id"].to_pylist(), ids["item_id"].to_pylist(), ids["time"].to_pylist())]
    return events[column].take(pa.array(rows, pa.int64())).to_pylist()


# --- codes ---------------------------------------------------------------------------------------


def test_vocabulary_from_train_only_unseen_and_empty_are_zero(task):
    assert task.pipeline.context["level"].ids == ["2", "3", "10"]  # numeric order, no 7 / 99 / empty
    assert task.pipeline.context["mood"].ids == ["calm", "wild"]  # no "angry"
    assert task.schema.context_categorical == {"level": 4, "mood": 3}
    want = {None: 0, 2: 1, 3: 2, 10: 3, 7: 0, 99: 0}
    moods = {None: 0, "calm": 1, "wild": 2, "angry": 0}
    for split in ("train", "valid", "test"):
        s = task.splits[split]
        assert s.context["level"].tolist() == [want[v] for v in raw_values(task, split, "level")]
        assert s.context["mood"].tolist() == [moods[v] for v in raw_values(task, split, "mood")]
    assert 7 in raw_values(task, "valid", "level") and 99 in raw_values(task, "test", "level")
    assert "angry" in raw_values(task, "valid", "mood") and None in raw_values(task, "train", "level")


def test_whole_floats_code_like_integers():
    task = CTRTask(make_data(), config(["level_f", "level"]))
    assert task.pipeline.context["level_f"].ids == ["2", "3", "10"]
    for s in task.splits.values():
        np.testing.assert_array_equal(s.context["level_f"], s.context["level"])


def test_batches_carry_the_codes_of_their_samples(task):
    s = task.splits["valid"]
    idx = np.array([5, 0, 17, 2])
    batch = task.collate(s.take(idx), train=False)
    assert set(batch.context) == {"level", "mood"}
    for name in ("level", "mood"):
        assert batch.context[name].dtype == torch.long and batch.context[name].shape == (4,)
        assert batch.context[name].tolist() == s.context[name][idx].tolist()
    shuffled = list(task.batches("train", 16, shuffle=True, seed=3))
    codes = torch.cat([b.context["level"] for b in shuffled])
    items = torch.cat([b.item for b in shuffled])
    order = np.random.default_rng([3, 0]).permutation(len(task.splits["train"]))
    assert codes.tolist() == task.splits["train"].context["level"][order].tolist()
    assert items.tolist() == task.splits["train"].items[order].tolist()
    moved = batch.to("cpu")
    assert moved.context["level"].tolist() == batch.context["level"].tolist()


def test_no_context_features_no_context():
    task = CTRTask(make_data(), config([]))
    assert task.schema.context_categorical == {} and task.pipeline.context == {}
    assert task.collate(task.splits["train"], train=True).context == {}


# --- errors --------------------------------------------------------------------------------------


def test_unknown_column_names_it_and_the_columns():
    with pytest.raises(DataError) as e:
        CTRTask(make_data(), config(["level", "likes_level", "nope"]))
    assert [(p.file, p.column) for p in e.value.problems] == [("events", "likes_level"), ("events", "nope")]
    assert "task.context_features" in str(e.value) and "'mood'" in str(e.value) and "'level'" in str(e.value)


def test_unusable_column_types_are_errors():
    frac = pa.array(np.linspace(0, 1, N_EVENTS), pa.float64())
    with pytest.raises(DataError, match="column 'level'.*whole numbers"):
        CTRTask(make_data(level=frac), config(["level"]))
    lists = pa.array([[1, 2]] * N_EVENTS, pa.list_(pa.int64()))
    with pytest.raises(DataError, match="column 'level'.*list<item: int64>"):
        CTRTask(make_data(level=lists), config(["level"]))


def test_config_validation():
    for kw, msg in [({"kind": "topk"}, "only the ctr task"), ({"label_column": "level"}, "label column"),
                    ({"context_features": ["a", "a"]}, "more than once"), ({"context_features": ["a.b"]}, "'a.b'")]:
        kw = {"context_features": ["level"], **kw}
        with pytest.raises(ValidationError, match=msg):
            TaskConfig(**kw)
    assert TaskConfig(context_features=["likes_level", "views_level"]).context_features == ["likes_level",
                                                                                             "views_level"]


# --- models --------------------------------------------------------------------------------------

SMALL = {
    "din": {"embed_dim": 8, "attention_hidden": [8], "mlp_hidden": [16]},
    "dcnv2": {"embed_dim": 8, "dnn_hidden": [16]},
    "sim": {"embed_dim": 8, "top_k": 3, "short_len": 2, "mlp_hidden": [16]},
    "sdim": {"embed_dim": 8, "n_hashes": 4, "hash_bits": 2, "short_len": 2, "mlp_hidden": [16]},
    "tin": {"embed_dim": 8, "mlp_hidden": [16]},
    "qin": {"embed_dim": 8, "num_layers": 2},
    "lr": {},
    "mmbee": mm.SMALL,
}
MODEL_CASES = [(name, p) for name, p in SMALL.items()] + [
    ("dcnv2", {**SMALL["dcnv2"], "structure": "stacked", "use_history": False}),
    ("qin", {**SMALL["qin"], "use_user": False}),
    ("mmbee", {**mm.SMALL, "mfq_scope": "target"}),
]


def _batch(task: CTRTask, name: str):
    batch = task.collate(task.splits["train"], train=True)
    return mm.add_gie(batch, task) if name == "mmbee" else batch


@pytest.mark.parametrize("name,params", MODEL_CASES)
def test_models_train_with_context_and_read_it(task, name, params):
    torch.manual_seed(0)
    model = build_model(name, task.schema, params)
    tables = {n: p for n, p in model.named_parameters() if n.startswith("context.")}
    assert len(tables) == 2, sorted(tables)
    batch = _batch(task, name)
    assert (batch.context["level"] > 0).any() and (batch.context["mood"] > 0).any()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
    loss.backward()
    assert torch.isfinite(loss)
    for n, p in tables.items():
        assert p.grad is not None and p.grad[1:].abs().sum() > 0, n
        assert p.grad[0].abs().sum() == 0, n  # code 0 (unknown) is padding: never trained
    opt.step()

    model.eval()
    with torch.no_grad():
        base = model(batch)
        for feature, n_codes in task.schema.context_categorical.items():
            r = int(torch.nonzero(batch.context[feature] > 0)[0])
            old = int(batch.context[feature][r])
            for new in (0, old % (n_codes - 1) + 1):  # unknown, and another known value
                changed = copy.copy(batch)
                changed.context = {k: v.clone() for k, v in batch.context.items()}
                changed.context[feature][r] = new
                out = model(changed)
                assert not torch.equal(out[r], base[r]), (feature, old, new)
                others = torch.arange(batch.size) != r
                torch.testing.assert_close(out[others], base[others])


def test_a_batch_without_the_context_is_an_error_naming_the_feature(task):
    model = build_model("din", task.schema, SMALL["din"]).eval()
    batch = task.collate(task.splits["valid"], train=False)
    batch.context = {"level": batch.context["level"]}
    with pytest.raises(KeyError, match="context feature 'mood'.*task.context_features"):
        model(batch)


def _fixture_schema(kind: str, context: dict[str, int]):
    if kind == "test_models":
        schema = make_schema("ctr")
    else:
        schema = copy.copy(CTRTask(mm.make_data().validate(), mm.task_config(max_tokens=4)).schema)
    schema.context_categorical = context
    return schema


def test_models_without_context_keep_their_parameters():
    """The parameter names, shapes and order recorded before context features existed; with context features
    the same parameters plus one table per feature."""
    cases = json.loads(FIXTURE.read_text())["cases"]
    assert {c["model"] for c in cases} == set(SMALL)
    schemas = {kind: {} for kind in ("test_models", "livestream")}
    for c in cases:
        plain = schemas[c["schema"]].setdefault("plain", _fixture_schema(c["schema"], {}))
        with_ctx = schemas[c["schema"]].setdefault("ctx", _fixture_schema(c["schema"], {"lvl": 5, "mood": 3}))
        model = build_model(c["model"], plain, c["params"])
        got = {n: list(p.shape) for n, p in model.named_parameters()}
        assert list(got.items()) == list(c["parameters"].items()), c["model"]
        assert not any("context" in n for n, _ in model.named_modules())
        wide = build_model(c["model"], with_ctx, c["params"])
        ctx = {n: list(p.shape) for n, p in wide.named_parameters()}
        extra = sorted(set(ctx) - set(got))
        prefix = "context." if c["model"] == "lr" else "context.tables."
        dim = 1 if c["model"] == "lr" else wide.config.embed_dim
        assert extra == [f"{prefix}lvl.weight", f"{prefix}mood.weight"], c["model"]
        assert ctx[f"{prefix}lvl.weight"] == [5, dim]


def test_models_without_context_are_bit_identical_under_a_seed():
    """No context features: building (same seed) and scoring give exactly what a schema that never heard of
    context features gives; a batch's context dict is not read."""
    schema = make_schema("ctr")
    batch = with_time(random_batch())
    for name in ("din", "dcnv2", "sim", "sdim", "tin", "qin", "lr"):
        outs = []
        for ctx in ({}, {"spurious": torch.ones(batch.size, dtype=torch.long)}):
            torch.manual_seed(0)
            model = build_model(name, schema, SMALL[name]).eval()
            b = copy.copy(batch)
            b.context = ctx
            with torch.no_grad():
                outs.append(model(b))
        assert torch.equal(outs[0], outs[1]), name
