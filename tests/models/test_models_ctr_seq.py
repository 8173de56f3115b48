"""SIM, SDIM, TIN and QIN: forward/backward with missing modalities, overfitting, masks, and the
pieces each paper defines (hard/soft search, SimHash sampling, temporal encoding, sparse attention).

The item table of `tests/models/helpers.py` puts NaN in the content of items whose text is absent, so a leak of
an absent modality shows up as a non-finite output or gradient.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalrec.data.batch import Batch
from modalrec.models import MODELS, build_model
from modalrec.models.qin import QuadraticLayer
from modalrec.models.sim import log_time_buckets, recent_mask
from tests.models.helpers import (
    N_ITEMS,
    N_USERS,
    L,
    auc,
    ctr_dataset,
    item_table,
    make_batch,
    make_schema,
    random_batch,
    scramble_absent_content,
    scramble_padding,
    with_time,
)
from tests.models.helpers import SEQ_CASES as CASES
from tests.models.helpers import SEQ_SMALL as SMALL
from tests.models.helpers import seq_params as params


def set_hist_item(batch: Batch, b: int, j: int, item: int) -> Batch:
    """A copy of `batch` whose history position (b, j) holds `item` with all its side data."""
    out = copy.deepcopy(batch)
    side, pres = item_table().gather(np.array([item]))
    out.hist[b, j] = item
    for k, v in side.items():
        out.hist_side[k][b, j] = v[0]
    for k, v in pres.items():
        out.hist_presence[k][b, j] = v[0]
    return out


def test_the_four_are_registered():
    assert {"sim", "sdim", "tin", "qin"} <= set(MODELS)
    assert {c[0] for c in CASES} == {"sim", "sdim", "tin", "qin"}


@pytest.mark.parametrize("name,p", CASES)
def test_forward_backward_with_missing_modalities(name, p):
    torch.manual_seed(0)
    model = build_model(name, make_schema("ctr"), p)
    batch = with_time(random_batch(B=8))
    out = model(batch)
    assert out.shape == (8,) and torch.isfinite(out).all()
    out.sum().backward()
    grads = {n: q.grad for n, q in model.named_parameters() if q.grad is not None}
    for n, g in grads.items():
        assert torch.isfinite(g).all(), f"non-finite gradient in {n}"
    assert any(g.abs().sum() > 0 for g in grads.values())
    if p.get("use_content", True):
        # Targets 2 and 5 have no text: the learned "missing" embedding must be trained.
        assert grads["items.missing.text"].abs().sum() > 0
        assert grads["items.dense.text.weight"].abs().sum() > 0
    # Without a clock in the batch the models still run (SIM: the "unknown time" bucket).
    if p.get("temporal") != "time":
        batch.hist_time = None
        assert torch.isfinite(model(batch)).all()


def test_tin_time_encoding_needs_hist_time():
    model = build_model("tin", make_schema("ctr"), params("tin", temporal="time"))
    with pytest.raises(ValueError, match="hist_time"):
        model(random_batch())


@pytest.mark.parametrize(
    "name,p",
    [
        ("sim", params("sim")),
        ("sim", params("sim", search="soft")),
        ("sdim", params("sdim")),
        ("tin", params("tin")),
        ("qin", params("qin")),
    ],
)
def test_overfit_a_tiny_dataset(name, p):
    torch.manual_seed(0)
    batch = with_time(ctr_dataset())
    model = build_model(name, make_schema("ctr"), p)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(batch)
    assert auc(batch.label, logits) > 0.95
    assert ((logits > 0).float() == batch.label).float().mean() > 0.9


def _scramble_padded_time(batch: Batch) -> Batch:
    out = copy.deepcopy(batch)
    pad = ~out.hist_mask
    out.hist_time[pad] = float("nan")
    out.hist_time[pad & (torch.arange(L) % 2 == 0)] = 1e9
    return out


MASK_CASES = [
    ("sim", params("sim"), True),
    ("sim", params("sim", search="soft"), True),
    ("sdim", params("sdim"), True),
    ("tin", params("tin"), True),
    ("tin", params("tin", temporal="time", attention="sigmoid"), True),
    ("qin", params("qin"), True),
    ("qin", params("qin", dropout=0.0), False),  # train mode: BatchNorm statistics
]


@pytest.mark.parametrize("name,p,eval_mode", MASK_CASES)
def test_padding_and_absent_content_change_nothing(name, p, eval_mode):
    torch.manual_seed(0)
    model = build_model(name, make_schema("ctr"), p)
    model.train(not eval_mode)
    batch = with_time(random_batch(B=16))
    with torch.no_grad():
        ref = model(batch)
        assert torch.equal(ref, model(batch))  # deterministic, so the comparisons mean something
        for changed in (scramble_padding(batch), scramble_absent_content(batch), _scramble_padded_time(batch)):
            torch.testing.assert_close(model(changed), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,p,eval_mode", MASK_CASES)
def test_extra_padding_columns_change_nothing(name, p, eval_mode):
    """Histories of at most 4 events padded to L=6 or to 4 columns: relative positions, top-k and
    short windows are counted from the real events, so the width of the padding does not matter."""
    torch.manual_seed(0)
    model = build_model(name, make_schema("ctr"), p)
    model.train(not eval_mode)
    rng = np.random.default_rng(5)
    B, keep = 12, 4
    batch = with_time(make_batch(item_table(), rng, rng.integers(1, 8, B), rng.integers(1, N_ITEMS, B),
                                 rng.integers(0, keep + 1, B)))
    narrow = copy.deepcopy(batch)
    narrow.hist, narrow.hist_mask, narrow.hist_time = (
        batch.hist[:, :keep], batch.hist_mask[:, :keep], batch.hist_time[:, :keep])
    narrow.hist_side = {k: v[:, :keep] for k, v in batch.hist_side.items()}
    narrow.hist_presence = {k: v[:, :keep] for k, v in batch.hist_presence.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(narrow), model(batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["sim", "sdim", "tin", "qin"])
def test_present_content_is_used_unless_switched_off(name):
    torch.manual_seed(0)
    batch = with_time(random_batch(B=16))
    changed = copy.deepcopy(batch)
    changed.item_side["text"][changed.presence["text"]] += 1.0
    for use_content, should_change in [(True, True), (False, False)]:
        model = build_model(name, make_schema("ctr"), params(name, use_content=use_content)).eval()
        with torch.no_grad():
            diff = (model(changed) - model(batch)).abs().max()
        assert (diff > 1e-6) == should_change


# --- SIM -------------------------------------------------------------------------------------


def _full_history_batch(seed: int = 0, B: int = 6) -> Batch:
    rng = np.random.default_rng(seed)
    return with_time(make_batch(item_table(), rng, 1 + np.arange(B) % (N_USERS - 1), rng.integers(1, N_ITEMS, B),
                                 np.full(B, L)))


def _items_with_genre(genre: int, same: bool) -> list[int]:
    g = item_table().categorical["genre"]
    return [i for i in range(1, N_ITEMS) if (g[i] == genre) == same]


def test_sim_hard_search_ignores_other_categories_outside_the_short_window():
    torch.manual_seed(0)
    model = build_model("sim", make_schema("ctr"), params("sim", top_k=3, short_len=2)).eval()
    batch = _full_history_batch()
    with torch.no_grad():
        ref = model(batch)
        for b in range(batch.size):
            tgt_genre = int(batch.item_side["genre"][b])
            others = _items_with_genre(tgt_genre, same=False)
            same = _items_with_genre(tgt_genre, same=True)
            # Position 0 (the oldest of 6) lies outside the short window of 2.
            base = batch
            for j in range(L):
                base = set_hist_item(base, b, j, others[j % len(others)])
            base_out = model(base)
            for item in others[L: L + 3]:
                torch.testing.assert_close(model(set_hist_item(base, b, 0, item)), base_out, rtol=0, atol=1e-6)
            # Other rows never change; the same position holding an item of the target's category
            # is retrieved and does change this row.
            hit = model(set_hist_item(base, b, 0, same[0]))
            assert (hit[b] - base_out[b]).abs() > 1e-6
            torch.testing.assert_close(hit[torch.arange(batch.size) != b], base_out[torch.arange(batch.size) != b],
                                       rtol=0, atol=0)
            # Inside the short window any behaviour matters.
            assert (model(set_hist_item(base, b, L - 1, others[L]))[b]
                    - model(set_hist_item(base, b, L - 1, others[L + 1]))[b]).abs() > 1e-6
        assert torch.isfinite(ref).all()


def test_sim_hard_search_keeps_the_most_recent_k_matches():
    torch.manual_seed(0)
    model = build_model("sim", make_schema("ctr"), params("sim", top_k=2, short_len=1)).eval()
    genre = item_table().categorical["genre"]
    g = int(np.bincount(genre[1:]).argmax())
    same = _items_with_genre(g, same=True)
    assert len(same) >= 4
    rng = np.random.default_rng(0)
    hist = np.array([[same[i % len(same)] for i in range(L)]])
    batch = with_time(make_batch(item_table(), rng, [1], [same[0]], [L], hist))
    with torch.no_grad():
        idx, valid, _ = model.general_search(batch, model.items.target(batch), model.items.history(batch))
        assert sorted(idx[0].tolist()) == [L - 2, L - 1] and valid.all()
        ref = model(batch)
        # Older matches beyond the top-2 are not retrieved ...
        torch.testing.assert_close(model(set_hist_item(batch, 0, 0, same[3])), ref, rtol=0, atol=1e-6)
        # ... the second most recent is (it is outside the short window of 1).
        assert (model(set_hist_item(batch, 0, L - 2, same[3])) - ref).abs().max() > 1e-6


def test_sim_soft_search_retrieves_top_k_by_inner_product():
    torch.manual_seed(0)
    model = build_model("sim", make_schema("ctr"), params("sim", search="soft", top_k=2)).eval()
    batch = with_time(random_batch(B=8))
    with torch.no_grad():
        target, hist = model.items.target(batch), model.items.history(batch)
        idx, valid, scores = model.general_search(batch, target, hist)
        r = torch.einsum("bd,bld->bl", model.search_target(target), model.search_behaviour(hist))
        for b in range(batch.size):
            n = int(batch.hist_mask[b].sum())
            expected = r[b, :n].argsort(descending=True)[: min(2, n)]
            assert set(idx[b][valid[b]].tolist()) == set(expected.tolist())
            torch.testing.assert_close(scores[b][valid[b]], r[b, idx[b][valid[b]]])
    # The soft relevance reaches the ESU logits, so W_a / W_b learn from the main loss.
    model.train()
    model(batch).sum().backward()
    assert model.search_target.weight.grad.abs().sum() > 0


def test_sim_falls_back_to_soft_search_without_categories():
    schema = make_schema("ctr")
    schema.item_categorical = {}
    assert build_model("sim", schema, {}).search == "soft"
    with pytest.raises(ValueError, match="category_feature 'brand'"):
        build_model("sim", make_schema("ctr"), {"category_feature": "brand"})


def test_sim_without_user_id_reads_behaviour_only():
    """use_user_id: false: no user table, and two users with the same history and target get the same score;
    with it, the user's id changes the score."""
    torch.manual_seed(0)
    plain = build_model("sim", make_schema("ctr"), params("sim")).eval()
    torch.manual_seed(0)
    anon = build_model("sim", make_schema("ctr"), params("sim", use_user_id=False)).eval()
    assert anon.user is None and not any(n.startswith("user.") for n, _ in anon.named_parameters())
    assert plain.mlp.net[0].in_features == anon.mlp.net[0].in_features  # the slot stays (zeros)
    batch = with_time(random_batch(B=8))
    other = copy.deepcopy(batch)
    other.user = (batch.user % (N_USERS - 1)) + 1
    assert not torch.equal(other.user, batch.user)
    with torch.no_grad():
        torch.testing.assert_close(anon(other), anon(batch), rtol=0, atol=0)
        assert not torch.allclose(plain(other), plain(batch))
    anon.train()
    out = anon(batch)
    out.sum().backward()
    assert torch.isfinite(out).all()


def test_sim_user_dropout_zeroes_whole_rows_in_training_only():
    torch.manual_seed(0)
    model = build_model("sim", make_schema("ctr"), params("sim", user_dropout=0.5))
    batch = random_batch(B=64)
    full = model.user(batch.user)
    model.eval()
    torch.testing.assert_close(model.user_vector(batch), full, rtol=0, atol=0)  # evaluation: never dropped
    model.train()
    torch.manual_seed(1)
    vec = model.user_vector(batch)
    zero = (vec == 0).all(1)
    torch.testing.assert_close(vec[~zero], full[~zero], rtol=0, atol=0)  # kept rows untouched, not rescaled
    assert 10 < int(zero.sum()) < 54  # about half of 64
    torch.manual_seed(1)
    torch.testing.assert_close(model.user_vector(batch), vec, rtol=0, atol=0)  # seeded: reproducible


def test_time_buckets_and_recent_mask():
    mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    t = torch.tensor([[1e6, 3.0, 0.0, float("nan")], [5.0, 5.0, 5.0, 5.0]])
    b = log_time_buckets(t, mask, 8)
    assert b[0].tolist() == [7, 2, 0, 0] and (b[1] == 0).all()
    assert (log_time_buckets(None, mask, 8) == 8).all()
    assert recent_mask(mask, 2).tolist() == [[False, True, True, False], [False] * 4]


# --- SDIM ------------------------------------------------------------------------------------


def test_sdim_hashing_is_fixed_seeded_and_deterministic():
    schema = make_schema("ctr")
    a = build_model("sdim", schema, params("sdim", hash_seed=3))
    torch.manual_seed(123)  # other parameters differ; the hyperplanes must not
    b = build_model("sdim", schema, params("sdim", hash_seed=3))
    c = build_model("sdim", schema, params("sdim", hash_seed=4))
    assert torch.equal(a.hyperplanes, b.hyperplanes) and not torch.equal(a.hyperplanes, c.hyperplanes)
    assert "hyperplanes" in a.state_dict()
    assert all(p is not a.hyperplanes for p in a.parameters())
    x = torch.randn(5, a.items.out_dim)
    sig = a.signatures(x)
    assert sig.shape == (5, 8) and sig.min() >= 0 and sig.max() < 4
    assert torch.equal(sig, a.signatures(x)) and torch.equal(sig, b.signatures(x))
    bits = (x @ a.hyperplanes > 0).long().view(5, 8, 2)
    assert torch.equal(sig, bits[..., 0] + 2 * bits[..., 1])
    # Training leaves the hyperplanes alone.
    before = a.hyperplanes.clone()
    opt = torch.optim.Adam(a.parameters(), lr=0.1)
    batch = ctr_dataset()
    F.binary_cross_entropy_with_logits(a(batch), batch.label).backward()
    opt.step()
    assert torch.equal(a.hyperplanes, before)


def test_sdim_long_term_interest_matches_the_definition():
    torch.manual_seed(0)
    model = build_model("sdim", make_schema("ctr"), params("sdim", n_hashes=6, hash_bits=2))
    B, d = 4, model.items.out_dim
    target = torch.randn(B, d)
    hist = torch.randn(B, L, d)
    hist[0, :3] = target[0]  # copies of the target collide in every round
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * L, [True, False, False, False, False, False],
                         [False] * L])
    got = model.long_term(target, hist, mask)
    sig_t, sig_h = model.signatures(target), model.signatures(hist)
    for b in range(B):
        rounds = []
        for j in range(6):
            s = torch.zeros(d)
            for k in range(L):
                if mask[b, k] and sig_h[b, k, j] == sig_t[b, j]:
                    s = s + hist[b, k]
            rounds.append(s / s.norm() if s.norm() > 0 else s)
        torch.testing.assert_close(got[b], torch.stack(rounds).mean(0))
    torch.testing.assert_close(got[0], F.normalize(target[0], dim=0))
    assert (got[3] == 0).all()


# --- TIN -------------------------------------------------------------------------------------


def test_tin_interest_is_the_4_way_target_aware_attention():
    torch.manual_seed(0)
    model = build_model("tin", make_schema("ctr"), params("tin", attention="sigmoid")).eval()
    batch = random_batch(B=6)
    with torch.no_grad():
        target, hist = model.items.target(batch), model.items.history(batch)
        u = model.interest(target, hist, batch)
        P = model.temporal.weight
        for b in range(batch.size):
            n = int(batch.hist_mask[b].sum())
            v = target[b] + P[0]
            expected = torch.zeros_like(v)
            for k in range(n):
                e = hist[b, k] + P[n - k]  # relative position: 1 = most recent
                w = torch.sigmoid(e @ v / model.scale)
                expected += w * (e * v)
            torch.testing.assert_close(u[b], expected, atol=1e-6, rtol=1e-5)


def test_tin_temporal_encoding_is_relative_to_the_target():
    """With sigmoid weights the interest is a sum over behaviours, so adding two older events in
    front of the same recent ones adds exactly their terms: the recent ones keep their encodings
    because positions count back from the target, not forward from the oldest event."""
    torch.manual_seed(0)
    model = build_model("tin", make_schema("ctr"), params("tin", attention="sigmoid")).eval()
    rng = np.random.default_rng(0)
    recent, older, target = [3, 4, 6], [9, 10], 8
    a = make_batch(item_table(), rng, [1], [target], [3], np.array([recent + [0, 0, 0]]))
    b = make_batch(item_table(), rng, [1], [target], [5], np.array([older + recent + [0]]))
    with torch.no_grad():
        ua = model.interest(model.items.target(a), model.items.history(a), a)
        ub = model.interest(model.items.target(b), model.items.history(b), b)
        P = model.temporal.weight
        v = model.items.target(b)[0] + P[0]
        hist_b = model.items.history(b)[0]
        extra = torch.zeros_like(v)
        for k in range(2):  # the older two sit 5 and 4 events before the target
            e = hist_b[k] + P[5 - k]
            extra += torch.sigmoid(e @ v / model.scale) * (e * v)
    torch.testing.assert_close(ub[0], ua[0] + extra, atol=1e-6, rtol=1e-5)


# --- QIN -------------------------------------------------------------------------------------


def test_qin_sparse_attention_zero_weights_change_nothing():
    torch.manual_seed(0)
    model = build_model("qin", make_schema("ctr"), params("qin")).eval()
    batch = _full_history_batch(seed=1, B=8)
    att = model.attention
    with torch.no_grad():
        w = att.weights(model.items.target(batch), model.items.history(batch), batch.hist_mask)
        assert (w >= 0).all() and (w == 0).any() and (w > 0).any()  # sparse, not normalised
        ref = model(batch)
        found = 0
        for b, j in (w == 0).nonzero().tolist():
            for item in range(1, N_ITEMS):
                changed = set_hist_item(batch, b, j, item)
                w2 = att.weights(model.items.target(changed), model.items.history(changed), changed.hist_mask)
                if item != int(batch.hist[b, j]) and w2[b, j] == 0:
                    # A behaviour the ReLU clips to 0, replaced by another clipped one: no effect.
                    torch.testing.assert_close(model(changed), ref, rtol=0, atol=1e-6)
                    found += 1
                    break
            if found >= 3:
                break
        assert found > 0
        random = with_time(random_batch(B=8))
        w = att.weights(model.items.target(random), model.items.history(random), random.hist_mask)
        assert (w[~random.hist_mask] == 0).all()


def test_qin_quadratic_layer_matches_its_definition():
    torch.manual_seed(0)
    layer = QuadraticLayer(5, num_rows=3, dropout=0.0, batch_norm=False).eval()
    x = torch.randn(4, 5)
    W = layer.rows.weight.view(3, 5, 5).sum(0)
    bias = layer.rows.bias.view(3, 5).sum(0)
    expected = x + F.prelu(x * (x @ W.T + bias), layer.activation.weight)
    torch.testing.assert_close(layer(x), expected)
    bn = QuadraticLayer(5, num_rows=3, dropout=0.1, batch_norm=True).train()
    assert torch.isfinite(bn(torch.randn(1, 5))).all()  # a single row in training does not fail


def test_qin_inference_shortcuts_equal_the_training_path():
    """Without grad in eval mode, QIN folds its R rows and BatchNorm into one map (cached, recomputed when the
    weights change) and, for a history shared by every row (`Batch.shared_history`: a served user's), folds the attention's
    projections into two (d, d) maps: both equal the plain path."""
    torch.manual_seed(0)
    model = build_model("qin", make_schema("ctr"), params("qin", num_rows=3)).eval()
    with torch.no_grad():  # BatchNorm statistics and affine terms away from the identity: the fold must hold
        for layer in model.qnn:
            n = layer.norm
            n.running_mean.normal_(0.0, 0.5)
            n.running_var.uniform_(0.5, 2.0)
            n.weight.uniform_(0.5, 1.5)
            n.bias.normal_(0.0, 0.3)
    batch = with_time(random_batch(B=8))
    plain = model(batch).detach()  # grad enabled: every row computed, histories projected per sample
    with torch.no_grad():
        torch.testing.assert_close(model(batch), plain, rtol=0, atol=1e-5)
        layer = model.qnn[0]
        layer.rows.weight.mul_(1.5)  # in place: the summed map must follow
    changed = model(batch).detach()
    assert (changed - plain).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(model(batch), changed, rtol=0, atol=1e-5)
        model.qnn[0].rows.weight = torch.nn.Parameter(torch.randn_like(layer.rows.weight))  # replaced
    replaced = model(batch).detach()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), replaced, rtol=0, atol=1e-5)

    att = model.attention
    B, d = 7, att.q.in_features
    query = torch.randn(B, d)
    keys = torch.randn(1, L, d).expand(B, L, d)
    mask = (torch.arange(L) < L - 2).unsqueeze(0).expand(B, L)
    k, v, shared = att._keys_values(keys, mask, True)
    assert shared and k.shape[0] == 1 and v.shape[0] == 1  # the one history is projected once
    assert not att._keys_values(keys, mask, False)[2] and not att._keys_values(keys[:1], mask[:1], True)[2]
    with torch.no_grad():
        torch.testing.assert_close(att(query, keys, mask, shared=True),
                                   att(query, keys.contiguous(), mask.contiguous()), rtol=0, atol=1e-5)
        torch.testing.assert_close(att.weights(query, keys, mask, shared=True),
                                   att.weights(query, keys.contiguous(), mask.contiguous()), rtol=0, atol=1e-5)


def test_qin_defaults_follow_the_paper_code():
    model = build_model("qin", make_schema("ctr"), {})
    cfg = model.config
    assert (cfg.embed_dim, cfg.num_layers, cfg.num_rows, cfg.dropout) == (128, 4, 4, 0.1)
    assert cfg.embedding_reg == 2e-4  # the authors' embedding_regularizer
    d = model.items.out_dim
    assert model.attention.q.out_features == 2 * d
    assert model.head.in_features == 128 + 2 * d


@pytest.mark.parametrize("name", ["qin", "din", "dcnv2", "sim"])
def test_embedding_reg_is_half_lambda_times_every_table_squared(name):
    """FuxiCTR's embedding_regularizer: whole tables (rows the batch never reads shrink too), only in
    training, and added to the model's own regulariser (DIN's mini-batch aware L2) where it has one."""
    base = SMALL.get(name, {"embed_dim": 8})
    schema, lam = make_schema("ctr"), 1e-2
    torch.manual_seed(0)
    model = build_model(name, schema, {**base, "embedding_reg": lam}).train()
    batch = random_batch(seed=1, B=3)
    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(tables) >= 2
    expected = 0.5 * lam * sum(float(t.detach().pow(2).sum()) for t in tables)
    reg = model.penalty(batch)
    assert reg is not None and abs(float(reg.detach()) - expected) <= 1e-6 * max(expected, 1.0)
    reg.backward()
    read = set(batch.item.tolist()) | set(batch.hist[batch.hist_mask].tolist())
    unread = [i for i in range(1, N_ITEMS) if i not in read]
    assert unread
    w = model.items.id.weight
    torch.testing.assert_close(w.grad[unread], lam * w.detach()[unread])
    assert model.eval().penalty(batch) is None
    plain = build_model(name, schema, base).train()
    assert (plain.penalty(batch) is None) == (name != "qin")  # QIN's default is the authors' 2e-4
    if name == "din":  # with DIN's own regulariser the two add up
        mba = build_model(name, schema, {**base, "mba_reg": 0.5}).train()
        both = build_model(name, schema, {**base, "mba_reg": 0.5, "embedding_reg": lam}).train()
        mba.load_state_dict(model.state_dict())
        both.load_state_dict(model.state_dict())
        torch.testing.assert_close(both.penalty(batch), mba.penalty(batch) + model.train().penalty(batch))


@pytest.mark.parametrize("name", ["sim", "sdim", "tin", "qin"])
def test_models_read_batches_of_the_real_collator(name):
    """Through `Collator`: clock-based `hist_time`, and content read once per distinct item (`uniq`)."""
    from modalrec.pipeline import Collator, History

    rng = np.random.default_rng(0)
    n = 60
    users, items = rng.integers(1, N_USERS, n), rng.integers(1, N_ITEMS, n)
    times = rng.integers(0, 10**7, n)
    history = History.build(users, items, times, N_USERS)
    collate = Collator(history, item_table(), L, with_time=True)
    batch = collate(users, items, history.cut_before(users, times), times, (rng.random(n) < 0.5).astype(np.float32))
    assert batch.hist_time is not None and batch.hist_mask.any()
    torch.manual_seed(0)
    model = build_model(name, make_schema("ctr"), params(name)).eval()
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (n,) and torch.isfinite(out).all()
    if batch.uniq is not None:  # the per-position path gives the same numbers
        plain = copy.deepcopy(batch)
        plain.uniq = None
        plain.hist_side, plain.hist_presence = item_table().gather(batch.hist.numpy())
        with torch.no_grad():
            torch.testing.assert_close(model(plain), out, rtol=1e-5, atol=1e-6)
