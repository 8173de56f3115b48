"""Every model: forward/backward with missing modalities, overfitting a tiny set, and mask checks.

The item side table puts NaN in the dense rows of items whose text modality is absent, so any
model that lets an absent modality leak into its output or gradients fails loudly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from modalrec.data.batch import Batch
from modalrec.models import MODELS, ModelConfigError, build_model
from modalrec.nn import CausalTransformerBlock, CrossNetV2, ItemEncoder, TargetAttention, masked_mean
from tests.models.helpers import (
    N_ITEMS,
    N_LABELS,
    D,
    L,
    auc,
    ctr_dataset,
    item_table,
    make_batch,
    make_schema,
    random_batch,
    scramble_absent_content,
    scramble_padding,
)

CASES = [
    ("popularity", "ctr", {}),
    ("popularity", "topk", {}),
    ("popularity", "multilabel", {}),
    ("lr", "ctr", {}),
    ("din", "ctr", {}),
    ("din", "ctr", {"activation": "dice", "attention_activation": "dice", "attention_softmax": True}),
    ("din", "ctr", {"use_content": False, "use_product": False}),
    ("dcnv2", "ctr", {}),
    ("dcnv2", "ctr", {"structure": "stacked", "batch_norm": True, "use_content": False}),
    ("sasrec", "topk", {}),
]


def test_every_model_is_covered():
    """Every registered model has the three habit tests somewhere (here or in a sibling file)."""
    from tests.models.helpers import PAPER_MODELS, SEQ_CASES
    from tests.models.mmbee_helpers import CASES as MMBEE_CASES

    covered = {c[0] for c in CASES} | {c[0] for c in SEQ_CASES} | set(PAPER_MODELS) | {c[0] for c in MMBEE_CASES}
    assert covered == set(MODELS)


@pytest.mark.parametrize("name,task,params", CASES)
def test_forward_backward_with_missing_modalities(name, task, params):
    torch.manual_seed(0)
    model = build_model(name, make_schema(task), params)
    batch = random_batch()
    B = batch.size
    outs = {}
    if task == "topk":
        rng = np.random.default_rng(3)
        batch.candidates = torch.from_numpy(rng.integers(1, N_ITEMS, (B, L, 5)))
        outs["train"] = (model(batch), (B, L, 5))
        batch.candidates = torch.from_numpy(rng.integers(1, N_ITEMS, (B, 5)))
        outs["cand"] = (model(batch), (B, 5))
        batch.candidates = None
        full = model(batch)
        assert full.shape == (B, N_ITEMS)
        assert torch.isneginf(full[:, 0]).all(), "padding item must never be recommended"
        outs["full"] = (full[:, 1:], (B, N_ITEMS - 1))
    else:
        expected = (B, N_LABELS) if task == "multilabel" else (B,)
        outs["out"] = (model(batch), expected)
    for key, (out, shape) in outs.items():
        assert out.shape == shape, key
        assert torch.isfinite(out).all(), key
    if name == "popularity":
        assert not model.trainable and not list(model.parameters())
        return
    assert model.trainable
    sum(out.sum() for out, _ in outs.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads, "no parameter received a gradient"
    for n, g in grads.items():
        assert torch.isfinite(g).all(), f"non-finite gradient in {n}"
    assert any(g.abs().sum() > 0 for g in grads.values())
    if params.get("use_content", True) and name in ("din", "dcnv2"):
        # Targets 2 and 5 have no text: the learned "missing" embedding must be trained.
        assert grads["items.missing.text"].abs().sum() > 0
        assert grads["items.dense.text.weight"].abs().sum() > 0


@pytest.mark.parametrize(
    "name,params,additive",
    [
        ("lr", {}, True),
        ("din", {}, False),
        ("dcnv2", {}, False),
        ("dcnv2", {"structure": "stacked"}, False),
    ],
)
def test_ctr_models_overfit_a_tiny_dataset(name, params, additive):
    torch.manual_seed(0)
    batch = ctr_dataset(additive=additive)
    model = build_model(name, make_schema("ctr"), params)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn(model(batch), batch.label)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(batch)
    assert auc(batch.label, logits) > 0.95
    assert ((logits > 0).float() == batch.label).float().mean() > 0.9


SEQUENCES = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]])


def test_sasrec_overfits_fixed_sequences():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    side = item_table()
    n = len(SEQUENCES)
    # Training: inputs seq[:-1], targets seq[1:]; candidates = every item, the target first.
    batch = make_batch(side, rng, np.arange(1, n + 1), SEQUENCES[:, -1], np.full(n, L - 1), SEQUENCES)
    targets = torch.zeros(n, L, dtype=torch.long)
    targets[:, : L - 1] = torch.from_numpy(SEQUENCES[:, 1:])
    all_items = torch.arange(1, N_ITEMS)
    cands = torch.zeros(n, L, N_ITEMS - 1, dtype=torch.long)
    for b in range(n):
        for t in range(L):
            tgt = int(targets[b, t]) or 1
            cands[b, t] = torch.cat([torch.tensor([tgt]), all_items[all_items != tgt]])
    batch.candidates = cands
    model = build_model("sasrec", make_schema("topk"), {})
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    real = targets != 0
    for _ in range(200):
        opt.zero_grad()
        logits = model(batch)[real]
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
        loss.backward()
        opt.step()
    model.eval()
    # Full ranking after every prefix: the top-1 item must be the true next one.
    hits = []
    for seq in SEQUENCES:
        for t in range(1, L):
            b = make_batch(side, rng, [1], [seq[t]], [t], seq[None, :])
            with torch.no_grad():
                hits.append(int(model(b).argmax(1)) == seq[t])
    assert np.mean(hits) > 0.9


MASK_CASES = [
    ("lr", {}, True),
    ("din", {}, True),
    # train mode with Dice everywhere: batch statistics must not see padding either
    ("din", {"activation": "dice", "attention_activation": "dice", "dropout": 0.0}, False),
    ("din", {"attention_softmax": True}, True),
    ("dcnv2", {}, True),
]


@pytest.mark.parametrize("name,params,eval_mode", MASK_CASES)
def test_ctr_padding_and_absent_content_change_nothing(name, params, eval_mode):
    torch.manual_seed(0)
    model = build_model(name, make_schema("ctr"), params)
    model.train(not eval_mode)
    batch = random_batch(B=16)
    with torch.no_grad():
        ref = model(batch)
        assert torch.equal(ref, model(batch))  # the comparison below is meaningful
        torch.testing.assert_close(model(scramble_padding(batch)), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(scramble_absent_content(batch)), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["din", "dcnv2"])
def test_present_content_is_used_unless_switched_off(name):
    torch.manual_seed(0)
    batch = random_batch(B=16)
    changed = copy.deepcopy(batch)
    present = changed.presence["text"]
    changed.item_side["text"][present] += 1.0
    for use_content, should_change in [(True, True), (False, False)]:
        model = build_model(name, make_schema("ctr"), {"use_content": use_content}).eval()
        with torch.no_grad():
            diff = (model(changed) - model(batch)).abs().max()
        assert (diff > 1e-6) == should_change


def test_sasrec_masks_and_causality():
    torch.manual_seed(0)
    model = build_model("sasrec", make_schema("topk"), {}).eval()
    batch = random_batch(B=8)
    rng = np.random.default_rng(0)
    batch.candidates = torch.from_numpy(rng.integers(1, N_ITEMS, (batch.size, L, 4)))
    with torch.no_grad():
        ref_train = model(batch)
        scrambled = scramble_padding(batch)
        torch.testing.assert_close(model(scrambled), ref_train, rtol=0, atol=1e-6)
        batch.candidates = scrambled.candidates = None
        ref_full = model(batch)
        torch.testing.assert_close(model(scrambled), ref_full, rtol=0, atol=1e-6)

        # Causality: on full histories, changing item t leaves positions < t untouched.
        full = make_batch(item_table(), rng, np.arange(1, 5), np.arange(1, 5), np.full(4, L))
        full.candidates = torch.from_numpy(rng.integers(1, N_ITEMS, (4, L, 4)))
        before = model(full)
        t = 3
        future = copy.deepcopy(full)
        future.hist[:, t] = (future.hist[:, t] % (N_ITEMS - 1)) + 1
        after = model(future)
        torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
        assert (after[:, t:] - before[:, t:]).abs().max() > 1e-4


def test_popularity_ranks_by_count_and_rate():
    schema = make_schema("topk")
    model = build_model("popularity", schema, {})
    assert model.trainable is False
    batch = random_batch(B=4)
    scores = model(batch)
    assert torch.isneginf(scores[:, 0]).all()
    order = scores[0, 1:].argsort(descending=True) + 1
    expected = torch.from_numpy(np.argsort(-schema.item_counts[1:], kind="stable") + 1)
    assert torch.equal(order, expected)
    batch.candidates = torch.tensor([[3, 1, 2]] * 4)
    assert torch.equal(model(batch).argsort(1, descending=True)[0], torch.tensor([1, 2, 0]))
    batch.candidates = batch.candidates[:, None, :].expand(4, 2, 3)
    assert model(batch).shape == (4, 2, 3)

    ctr = build_model("popularity", make_schema("ctr"), {})
    rate = make_schema("ctr").item_positive_rate
    torch.testing.assert_close(
        torch.sigmoid(ctr(batch)), torch.tensor(rate[batch.item.numpy()], dtype=torch.float32)
    )

    ml = build_model("popularity", make_schema("multilabel"), {})
    out = ml(batch)
    assert out.shape == (4, N_LABELS) and torch.isfinite(out).all()  # rate 0.0 is clamped
    assert torch.equal(out[0].argsort(descending=True), torch.tensor([1, 2, 0, 3]))


def test_build_model_validates_names_and_params():
    schema = make_schema("ctr")
    with pytest.raises(ModelConfigError, match=r"available: .*dcnv2, din, .*lr, .*popularity, .*sasrec"):
        build_model("dien", schema, {})
    with pytest.raises(ModelConfigError, match="model 'din': unknown parameter 'hidden'"):
        build_model("din", schema, {"hidden": [1]})
    with pytest.raises(ModelConfigError, match="model 'dcnv2': parameter 'structure'"):
        build_model("dcnv2", schema, {"structure": "diagonal"})
    with pytest.raises(ValueError, match="supports tasks"):
        build_model("sasrec", schema, {})
    din = build_model("din", schema, None)
    assert din.config.embed_dim == 32 and din.config.mlp_hidden == [200, 80]
    assert build_model("din", schema, {"embed_dim": 8}).config.embed_dim == 8


def test_item_encoder_pools_tags_and_uses_missing_embedding():
    schema = make_schema("ctr")
    enc = ItemEncoder(schema, embed_dim=4)
    assert enc.out_dim == 4 * 4
    ids = torch.tensor([1, 1, 1, 1])
    side = {
        "genre": torch.tensor([2, 2, 2, 2]),
        "tags": torch.tensor([[3, 0, 0], [3, 3, 0], [3, 0, 0], [3, 0, 0]]),
        "text": torch.tensor([[float("nan")] * D, [5.0] * D, [1.0] * D, [2.0] * D]),
    }
    presence = {"text": torch.tensor([False, False, True, True])}
    out = enc(ids, side, presence)
    tags, text = out[:, 8:12], out[:, 12:16]
    torch.testing.assert_close(tags[0], tags[1])  # mean over real tags: [3] == [3, 3]
    torch.testing.assert_close(text[0], text[1])  # both absent: the learned "missing" vector
    torch.testing.assert_close(text[0], enc.missing["text"].detach())
    assert not torch.allclose(text[2], text[3])  # present content is projected
    assert ItemEncoder(schema, 4, use_content=False).out_dim == 3 * 4


@pytest.mark.parametrize("softmax", [False, True])
def test_target_attention_over_the_distinct_item_table_equals_the_unit(softmax):
    """pool_table(q, table, index, mask) is forward(q, table[index], mask), values and gradients, padding and
    a row without any real position included (DIN's training path)."""
    torch.manual_seed(0)
    att = TargetAttention(6, hidden=(8, 4), activation="dice", softmax=softmax).train()
    table, q = torch.randn(9, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    index = torch.randint(0, 9, (4, 5))
    mask = torch.rand(4, 5) > 0.3
    mask[2] = False
    mask[3] = True
    ref_att = copy.deepcopy(att)  # the Dice statistics are updated by each call: two identical units
    got = att.pool_table(q, table, index, mask)
    want = ref_att(q, table[index], mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got[2] == 0).all()
    g1 = torch.autograd.grad(got.square().sum(), [q, table, *att.parameters()])
    g2 = torch.autograd.grad(want.square().sum(), [q, table, *ref_att.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_layers_match_their_definitions():
    torch.manual_seed(0)
    cross = CrossNetV2(5, n_layers=1)
    x = torch.randn(3, 5)
    lin = cross.layers[0]
    torch.testing.assert_close(cross(x), x * (x @ lin.weight.T + lin.bias) + x)

    att = TargetAttention(4, hidden=(8,))
    q, k = torch.randn(2, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    w = att.weights(q, k, mask)
    assert (w[~mask] == 0).all()
    pooled = att(q, k, mask)
    torch.testing.assert_close(pooled[0], w[0, 0] * k[0, 0] + w[0, 1] * k[0, 1])
    assert (pooled[1] == 0).all()
    att.softmax = True
    ws = att.weights(q, k, mask)
    torch.testing.assert_close(ws[0].sum(), torch.tensor(1.0))
    assert (ws[1] == 0).all()

    torch.testing.assert_close(masked_mean(k, mask)[0], k[0, :2].mean(0))

    block = CausalTransformerBlock(8, n_heads=2).eval()
    h = torch.randn(2, 4, 8, requires_grad=True)
    m = torch.tensor([[True, True, True, False], [False, False, False, False]])
    out = block(h, m)
    assert torch.isfinite(out).all() and (out[~m] == 0).all()
    out.sum().backward()
    assert torch.isfinite(h.grad).all()


# --- declared inputs ------------------------------------------------------------------------------
# Each model declares the Batch fields it reads (`Model.inputs`) and the pipeline's collate emits only those.
# A field a model reads but does not declare would be missing from every training, evaluation and served
# batch: scored with a batch collated for its declared inputs, every model must give exactly what it gives
# with a batch holding every field. The toy task has everything a field can carry: side features and content
# of items and users, per-sample context, history times and action tags, and (ctr) graph expansions.

INPUT_PARAMS = {
    "din": {"embed_dim": 8, "attention_hidden": [8], "mlp_hidden": [16]},
    "dcnv2": {"embed_dim": 8, "dnn_hidden": [16]},
    "sasrec": {"hidden_dim": 8, "n_heads": 1, "n_blocks": 1},
    "sim": {"embed_dim": 8, "top_k": 3, "short_len": 2, "mlp_hidden": [16]},
    "sdim": {"embed_dim": 8, "n_hashes": 4, "hash_bits": 2, "short_len": 2, "mlp_hidden": [16]},
    "tin": {"embed_dim": 8, "mlp_hidden": [16]},
    "qin": {"embed_dim": 8, "num_layers": 2},
    # the toy items' streamer is their brand (the like events are the graph's edges), MFQ reads the dense vector
    "mmbee": {"embed_dim": 8, "top_k": 3, "short_len": 2, "attention_hidden": [8], "mlp_hidden": [16],
              "mfq_dim": 8, "mfq_queries": 2, "gie_dim": 8, "streamer_feature": "brand", "modalities": ["emb"]},
}
# every ctr / topk model of the table (a model added later is covered with its default parameters), and the
# variants that read other fields
INPUT_CASES = [pytest.param(name, kind, INPUT_PARAMS.get(name, {}), id=f"{name}-{kind}")
               for name, cls in MODELS.items() for kind in ("ctr", "topk") if kind in cls.tasks]
INPUT_CASES += [
    pytest.param("mmbee", "ctr", {**INPUT_PARAMS["mmbee"], "mfq_scope": "target"}, id="mmbee-ctr-target_scope"),
    pytest.param("sim", "ctr", {**INPUT_PARAMS["sim"], "search": "soft"}, id="sim-ctr-soft_search"),
    pytest.param("tin", "ctr", {**INPUT_PARAMS["tin"], "temporal": "time"}, id="tin-ctr-time"),
]


def _full_data():
    """The toy data (tests/helpers.py) with a users table (categorical, multi-valued and a vector modality) and a
    per-sample context column."""
    import pyarrow as pa

    from modalrec.data.interaction import FeatureSpec, InteractionData, ModalitySpec
    from tests.helpers import make_data

    base = make_data()
    rng = np.random.default_rng(11)
    user_ids = sorted(set(base.events["user_id"].to_pylist()))
    users = pa.table({"user_id": user_ids, "region": [f"r{i % 3}" for i in range(len(user_ids))],
                      "hobbies": [[f"h{i % 4}", f"h{(i + 1) % 6}"][: 1 + i % 2] for i in range(len(user_ids))]})
    with_vec = user_ids[::2]  # the others lack the modality
    uvec = pa.table({"entity_id": with_vec,
                     "vector": [list(rng.normal(size=3).astype(np.float32)) for _ in with_vec]})
    events = base.events.append_column("level", pa.array(rng.integers(0, 4, base.events.num_rows), pa.int64()))
    spec = base.spec.model_copy(update={
        "user_features": [FeatureSpec(name="region", kind="categorical"),
                          FeatureSpec(name="hobbies", kind="multi_categorical")],
        "modalities": [*base.spec.modalities, ModalitySpec(name="uvec", entity="user", kind="vector", dim=3)],
        "event_columns": [*base.spec.event_columns, "level"]})
    return InteractionData(spec, events, base.items, users, {**base.content, "uvec": uvec}).validate()


@pytest.fixture(scope="module")
def full_tasks():
    from modalrec.config import TaskConfig
    from modalrec.tasks import CTRTask, TopKTask

    data = _full_data()
    ctr = {"kind": "ctr", "sample_channels": ["click"], "history_channels": ["click", "like"], "max_history": 6,
           "split": {"method": "global_time", "valid": 0.1, "test": 0.2}, "context_features": ["level"],
           "graph": {"enabled": True, "channel": "like", "streamer_feature": "brand",
                     "gie": {"pretrain_epochs": 0, "expansion_length": 4}}}
    return {"ctr": CTRTask(data, TaskConfig(**ctr)),
            "ctr_tags": CTRTask(data, TaskConfig(**ctr, history_channel_tags=True)),
            "topk": TopKTask(data, TaskConfig(kind="topk", sample_channels=["click"], max_history=6,
                                              train_negatives=5))}


def test_the_full_toy_tasks_carry_every_field(full_tasks):
    """The fixture of the declared-inputs test fills what it must: a field absent here could not be caught."""
    task = full_tasks["ctr_tags"]
    s = task.schema
    assert s.user_categorical and s.user_multi and s.user_dense == {"uvec": 3}
    assert s.context_categorical == {"level": 5} and s.history_tags == {"click": 1, "like": 2}
    batch = task.collate(task.splits["valid"], train=False)
    assert batch.graph is not None and bool((batch.graph.user > 0).any()) and bool((batch.graph.target > 0).any())
    assert batch.hist_time is not None and batch.hist_tag is not None and batch.uniq is not None
    assert set(batch.user_side) == {"region", "hobbies", "uvec"} and bool(batch.user_presence["uvec"].any())
    assert bool((batch.context["level"] > 0).any()) and bool(batch.hist_mask.any())
    assert full_tasks["topk"].schema.user_dense == {"uvec": 3}


# not model inputs: what the task's loss and metrics read (label, group, targets) and the batch's flag
NOT_INPUTS = {"label", "group", "targets", "shared_history"}


def only_declared(batch: Batch, declared: frozenset[str], schema, seed: int = 5) -> Batch:
    """The batch with every model-input field outside `declared` blanked (None, {}), and the four a Batch cannot
    be without (user, item, hist, hist_mask) scrambled: what a collate emitting only the declared fields gives,
    whatever the collate itself leaves out today."""
    from dataclasses import fields

    g = torch.Generator().manual_seed(seed)
    out = copy.copy(batch)
    for f in fields(Batch):
        if f.name in declared or f.name in NOT_INPUTS:
            continue
        value = getattr(batch, f.name)
        if f.name in ("user", "item", "hist"):
            high = schema.n_users if f.name == "user" else schema.n_items
            setattr(out, f.name, torch.randint(1, high, value.shape, generator=g))
        elif f.name == "hist_mask":
            setattr(out, f.name, torch.rand(value.shape, generator=g) < 0.5)
        else:
            setattr(out, f.name, {} if isinstance(value, dict) else None)
    return out


@pytest.mark.parametrize("name,kind,params", INPUT_CASES)
def test_declared_inputs_are_everything_the_model_reads(full_tasks, name, kind, params):
    cls = MODELS[name]
    task = full_tasks[f"{kind}_tags" if kind == "ctr" and "hist_tag" in cls.inputs else kind]
    torch.manual_seed(0)
    model = build_model(name, task.schema, params).eval()
    declared = frozenset(model.inputs)
    assert declared, f"{name} declares no inputs"
    collator = task.collator
    valid = task.splits["valid"].take(np.arange(min(48, len(task.splits["valid"]))))
    # one user's history against 8 targets (a service request): shared_history
    request = valid.take(np.full(8, int(np.argmax(valid.cut)), dtype=np.int64))
    request.items = valid.items[:8].copy()
    cases = {"train": (task.splits["train"].take(np.arange(min(48, len(task.splits["train"])))), True),
             "valid": (valid, False), "request": (request, False)}
    for split, (part, train) in cases.items():
        try:
            collator.inputs = declared
            lean = task.collate(part, train=train)
            collator.inputs = None
            full = task.collate(part, train=train)
        finally:
            collator.inputs = None
        # the collate leaves out what the model does not read
        for field, value in (("hist_side", lean.hist_side), ("hist_time", lean.hist_time), ("uniq", lean.uniq),
                             ("user_side", lean.user_side)):
            if field not in declared:
                assert value is None or value == {}, (name, field)
        assert full.shared_history == (split == "request") == lean.shared_history and bool(full.hist_mask.any())
        with torch.no_grad():
            want = model(full)
            got = model(lean)
            strict = model(only_declared(lean, declared, task.schema))
        # ctr: every logit; topk: every item but padding (never ranked, -inf), also as a training candidate
        if kind == "ctr":
            real = want
        elif full.candidates is None:
            real = want[:, 1:]
        else:
            real = want[torch.broadcast_to(full.candidates, want.shape) > 0]
        assert bool(torch.isfinite(real).all()), (name, split)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"{name}: the collated {split} batch")
        torch.testing.assert_close(strict, want, rtol=0, atol=0,
                                   msg=f"{name}: the {split} batch without the fields it does not declare")
