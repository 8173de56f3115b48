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
from modalrec.pipeline import SideTable
from modalrec.models import MODELS, ModelConfigError, Schema, build_model
from modalrec.nn import CausalTransformerBlock, CrossNetV2, ItemEncoder, TargetAttention, masked_mean

N_USERS, N_ITEMS, L, K, D = 8, 20, 6, 3, 8
N_GENRES, N_TAGS, N_LABELS = 5, 7, 4
ABSENT_TEXT = {2, 5, 7, 11, 13, 17}  # items whose "text" modality is missing


def item_table(seed: int = 0) -> SideTable:
    rng = np.random.default_rng(seed)
    genre = rng.integers(1, N_GENRES, N_ITEMS)
    tags = rng.integers(0, N_TAGS, (N_ITEMS, K))
    tags[:, 0] = rng.integers(1, N_TAGS, N_ITEMS)  # every item has at least one tag
    text = rng.normal(size=(N_ITEMS, D)).astype(np.float32)
    present = np.ones(N_ITEMS, dtype=bool)
    present[list(ABSENT_TEXT)] = False
    present[0] = False
    genre[0], tags[0] = 0, 0
    text[~present] = np.nan  # absent means absent: any leak turns into NaN
    return SideTable(
        categorical={"genre": genre.astype(np.int64)},
        multi={"tags": tags.astype(np.int64)},
        dense={"text": text},
        presence={"text": present},
    )


def make_schema(task: str) -> Schema:
    counts = np.arange(N_ITEMS, dtype=np.int64)[::-1].copy()  # item 1 is the most popular
    counts[0] = 0
    rate = np.linspace(0.05, 0.95, N_ITEMS)
    n_labels = N_LABELS if task == "multilabel" else 0
    if task == "multilabel":
        rate = np.array([0.1, 0.6, 0.3, 0.0])
    return Schema(
        task=task,
        n_users=N_USERS,
        n_items=N_ITEMS,
        max_history=L,
        item_categorical={"genre": N_GENRES},
        item_multi={"tags": N_TAGS},
        item_dense={"text": D},
        item_counts=counts,
        item_positive_rate=rate,
        n_labels=n_labels,
    )


def make_batch(side: SideTable, rng: np.random.Generator, users, items, lengths, hist=None) -> Batch:
    users, items, lengths = (np.asarray(a, dtype=np.int64) for a in (users, items, lengths))
    B = len(users)
    mask = np.arange(L)[None, :] < lengths[:, None]  # left-aligned, padding at the end
    if hist is None:
        hist = rng.integers(1, N_ITEMS, (B, L))
    hist = np.where(mask, hist, 0).astype(np.int64)
    tgt_side, tgt_pres = side.gather(items)
    h_side, h_pres = side.gather(hist)
    return Batch(
        user=torch.from_numpy(users),
        item=torch.from_numpy(items),
        hist=torch.from_numpy(hist),
        hist_mask=torch.from_numpy(mask),
        item_side=tgt_side,
        hist_side=h_side,
        presence=tgt_pres,
        hist_presence=h_pres,
        group=torch.from_numpy(users),
    )


def random_batch(seed: int = 1, B: int = 8) -> Batch:
    rng = np.random.default_rng(seed)
    items = rng.integers(1, N_ITEMS, B)
    items[:3] = [2, 5, 3]  # two targets with absent text, one present
    lengths = rng.integers(0, L + 1, B)
    lengths[:3] = [0, L, 2]  # an empty history, a full one, a short one
    return make_batch(item_table(), rng, rng.integers(1, N_USERS, B), items, lengths)


def auc(y: torch.Tensor, s: torch.Tensor) -> float:
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


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
    from .test_mmbee import CASES as MMBEE_CASES
    from .test_models_ctr_seq import CASES as SEQ_CASES
    from .test_multilabel import PAPER_MODELS

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


def ctr_dataset(n: int = 32, seed: int = 0, additive: bool = False):
    rng = np.random.default_rng(seed)
    pairs = rng.choice((N_USERS - 1) * (N_ITEMS - 1), n, replace=False)  # distinct (user, item)
    users, items = 1 + pairs // (N_ITEMS - 1), 1 + pairs % (N_ITEMS - 1)
    batch = make_batch(item_table(), rng, users, items, rng.integers(0, L + 1, n))
    if additive:  # labels a logistic regression can express: a threshold on w_user + w_item
        wu, wi = rng.normal(size=N_USERS), rng.normal(size=N_ITEMS)
        s = wu[users] + wi[items]
        y = (s > np.median(s)).astype(np.float32)
    else:
        y = rng.permutation(np.arange(n) % 2).astype(np.float32)  # random labels, balanced
    batch.label = torch.from_numpy(y)
    return batch


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


def _scramble_padding(batch: Batch, seed: int = 7) -> Batch:
    """Random ids, features and present content at every padded history position."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(batch)
    pad = ~out.hist_mask
    n = int(pad.sum())
    out.hist[pad] = torch.randint(1, N_ITEMS, (n,), generator=g)
    out.hist_side["genre"][pad] = torch.randint(1, N_GENRES, (n,), generator=g)
    out.hist_side["tags"][pad] = torch.randint(1, N_TAGS, (n, K), generator=g)
    out.hist_side["text"][pad] = torch.randn(n, D, generator=g) * 10
    out.hist_presence["text"][pad] = True
    return out


def _scramble_absent_content(batch: Batch, seed: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(batch)
    absent = ~out.presence["text"]
    assert absent.any()
    out.item_side["text"][absent] = torch.randn(int(absent.sum()), D, generator=g) * 100
    h_absent = ~out.hist_presence["text"]
    out.hist_side["text"][h_absent] = torch.randn(int(h_absent.sum()), D, generator=g) * 100
    return out


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
        torch.testing.assert_close(model(_scramble_padding(batch)), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(_scramble_absent_content(batch)), ref, rtol=0, atol=1e-6)


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
        scrambled = _scramble_padding(batch)
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
