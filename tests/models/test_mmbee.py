"""Token side-tables, MFQ and MMBee: multi-valued vector content becomes padded token tables on the
batch's distinct items; MFQ fuses them exactly ignoring padding and absent modalities; MMBee (SIM + MFQ
+ GIE) trains, masks and ablates.

The data is a hand-built live-stream world (tests/models/mmbee_helpers.py): 12 segments of 4 streamers
with 1..3 frame vectors, 1..5 comment vectors and one MFCC vector each, every modality missing for some
segment and one segment without any content.
"""

from __future__ import annotations

import copy
from unittest.mock import patch

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from modalrec.data.batch import GraphInputs
from modalrec.data.errors import DataError
from modalrec.models import MODELS, build_model
from modalrec.models.mfq import MFQ, decorrelate, masked_attention
from modalrec.models.mmbee import PretrainedEmbedding
from modalrec.tasks import CTRTask
from tests.models.mmbee_helpers import (
    CASES,
    COMMENTS_ABSENT,
    D_COMMENT,
    D_FRAME,
    D_MFCC,
    FRAMES_ABSENT,
    N_SEG,
    NO_CONTENT,
    SMALL,
    add_gie,
    comment_vectors,
    frame_vectors,
    make_data,
    params,
    seg_id,
    task_config,
    train_batch,
)


@pytest.fixture(scope="module")
def task() -> CTRTask:
    return CTRTask(make_data().validate(), task_config(max_tokens=4))


# --- token side tables -------------------------------------------------------------------------


def test_build_item_side_token_tables():
    data = make_data().validate()
    task = CTRTask(data, task_config(max_tokens=2))
    side, schema = task.collator.item_table, task.schema
    assert schema.item_tokens == {"frames_emb": (2, D_FRAME), "comments_emb": (2, D_COMMENT)}
    assert schema.item_dense == {"speech_mfcc": D_MFCC}  # single vectors stay dense content
    assert "frames_emb" not in side.dense and "comments_emb" not in side.dense
    for name, vectors, absent in (("frames_emb", frame_vectors, FRAMES_ABSENT),
                                  ("comments_emb", comment_vectors, COMMENTS_ABSENT)):
        tok, mask = side.tokens[name], side.token_mask[name]
        assert tok.dtype == np.float16 and tok.shape == (N_SEG + 1, 2, schema.item_tokens[name][1])
        assert mask.dtype == np.bool_ and mask.shape == (N_SEG + 1, 2)
        assert not mask[0].any() and not tok[0].any()  # padding row
        for i in range(N_SEG):
            row = int(task.item_vocab.lookup([seg_id(i)])[0])
            if i in absent:
                assert not mask[row].any() and not tok[row].any()
                continue
            v = vectors(i)
            k = min(len(v), 2)  # the first T values are kept, in order
            assert mask[row].tolist() == [True] * k + [False] * (2 - k)
            np.testing.assert_array_equal(tok[row, :k], v[:k].astype(np.float16))
            assert not tok[row, k:].any()


def test_token_modalities_choose_tables_and_the_rest_is_mean_content():
    data = make_data().validate()
    task = CTRTask(data, task_config(token_modalities=["frames_emb"]))
    side, schema = task.collator.item_table, task.schema
    assert schema.item_tokens == {"frames_emb": (3, D_FRAME)}  # 1..3 frames per segment
    assert schema.item_dense == {"comments_emb": D_COMMENT, "speech_mfcc": D_MFCC}
    for i in range(N_SEG):
        row = int(task.item_vocab.lookup([seg_id(i)])[0])
        assert side.presence["comments_emb"][row] == (i not in COMMENTS_ABSENT)
        if i not in COMMENTS_ABSENT:
            np.testing.assert_allclose(side.dense["comments_emb"][row], comment_vectors(i).mean(0), rtol=1e-6)
    with pytest.raises(DataError, match="task.token_modalities.*speech_mfcc.*multi-valued item vector modality"):
        CTRTask(data, task_config(token_modalities=["speech_mfcc"]))
    # the table is as wide as the longest list, up to max_tokens
    assert CTRTask(data, task_config(max_tokens=8)).schema.item_tokens == {"frames_emb": (3, D_FRAME),
                                                                           "comments_emb": (5, D_COMMENT)}
    empty = CTRTask(data, task_config(token_modalities=[], vector_modalities=["speech_mfcc"]))
    assert empty.schema.item_tokens == {} and empty.schema.item_dense == {"speech_mfcc": D_MFCC}


@pytest.mark.parametrize("case,message", [
    ("empty", r"content/frames_emb.parquet, row 2, column 'vector': expected at least one vector"),
    ("length", r"content/frames_emb.parquet, row 3, column 'vector': expected vectors of length 6, found length 5"),
    ("nan", r"content/frames_emb.parquet, row 1, column 'vector': expected finite numbers"),
    ("overflow", r"content/frames_emb.parquet, row 1, column 'vector': expected values within \+-65504"),
])
def test_bad_multi_vectors_are_errors_naming_the_row(case, message):
    rows = [frame_vectors(i).tolist() for i in range(3)]
    if case == "empty":
        rows[1] = []
    elif case == "length":
        rows[2][0] = rows[2][0][:5]
    elif case == "nan":
        rows[0][0][1] = float("nan")
    else:
        rows[0][0][1] = 1e6
    frames = pa.table({"entity_id": [seg_id(i) for i in range(3)],
                       "vector": pa.array(rows, pa.list_(pa.list_(pa.float32())))})
    with pytest.raises(DataError, match=message):
        CTRTask(make_data(frames=frames), task_config())


def test_collator_places_tokens_on_the_distinct_items_and_targets_only(task):
    batch = task.collate(task.splits["train"], train=True)
    side = task.collator.item_table
    uniq = batch.uniq.numpy()
    targets = batch.item.numpy()
    for name, (T, dim) in task.schema.item_tokens.items():
        tok, mask = batch.uniq_side[name], batch.uniq_side[f"{name}:mask"]
        assert tok.dtype == torch.float32 and tok.shape == (len(uniq), T, dim)
        assert mask.dtype == torch.bool and mask.shape == (len(uniq), T)
        np.testing.assert_array_equal(tok.numpy(), side.tokens[name][uniq].astype(np.float32))
        np.testing.assert_array_equal(mask.numpy(), side.token_mask[name][uniq])
        # the targets' own tables (what an mfq_scope 'target' model reads)
        np.testing.assert_array_equal(batch.item_side[name].numpy(), side.tokens[name][targets].astype(np.float32))
        np.testing.assert_array_equal(batch.item_side[f"{name}:mask"].numpy(), side.token_mask[name][targets])
        for where in (batch.hist_side, batch.presence, batch.hist_presence, batch.uniq_presence):
            assert name not in where and f"{name}:mask" not in where
    # token_scope 'target': the history's distinct items carry no token tables at all
    task.collator.token_scope = "target"
    try:
        lean = task.collate(task.splits["train"], train=True)
    finally:
        task.collator.token_scope = "all"
    assert not any(name in lean.uniq_side for name in task.schema.item_tokens)
    assert all(torch.equal(lean.item_side[n], batch.item_side[n]) for n in task.schema.item_tokens)
    # the distinct items cover every target and history position
    assert torch.equal(batch.uniq[batch.item_pos], batch.item)
    assert torch.equal(batch.uniq[batch.hist_pos][batch.hist_mask], batch.hist[batch.hist_mask])


# --- MFQ -------------------------------------------------------------------------------------------


def mfq_inputs(U: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = {"a": torch.randn(U, 4, 5, generator=g), "b": torch.randn(U, 3, 7, generator=g)}
    masks = {"a": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]]),
             "b": torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0]])}
    return tokens, {k: v.bool() for k, v in masks.items()}


def test_mfq_ignores_padding_and_gives_empty_segments_the_no_content_vector():
    torch.manual_seed(0)
    mfq = MFQ({"a": 5, "b": 7}, dim=8, n_queries=3, n_heads=2, layers=2, max_tokens=4).eval()
    tokens, masks = mfq_inputs()
    with torch.no_grad():
        ref = mfq(tokens, masks)
        assert ref.shape == (6, 24) and torch.isfinite(ref).all()
        torch.testing.assert_close(ref[4], mfq.no_content)  # segment 4 has no token at all
        junk = {k: torch.where(masks[k].unsqueeze(-1), v, torch.full_like(v, float("nan"))) for k, v in tokens.items()}
        torch.testing.assert_close(mfq(junk, masks), ref, rtol=0, atol=0)
        # alone in a batch of one a segment has fewer padded slots (trailing ones are dropped): the same output
        for u in range(6):
            alone = mfq({k: v[u : u + 1] for k, v in tokens.items()}, {k: v[u : u + 1] for k, v in masks.items()})
            torch.testing.assert_close(alone[0], ref[u], rtol=0, atol=1e-6)
        # each segment is fused on its own: another segment's content changes nothing
        other = {k: v.clone() for k, v in tokens.items()}
        other["a"][3] += 5.0
        out = mfq(other, masks)
        keep = torch.arange(6) != 3
        torch.testing.assert_close(out[keep], ref[keep], rtol=0, atol=1e-6)
        assert (out[3] - ref[3]).abs().max() > 1e-4
    # gradients stay finite with NaN in padding and with empty segments
    mfq.train()
    mfq(junk, masks).sum().backward()
    for n, p in mfq.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert mfq.no_content.grad.abs().sum() > 0


def test_masked_attention_matches_a_softmax_over_the_allowed_keys():
    torch.manual_seed(0)
    U, H, Sq, Sk, dh = 3, 2, 4, 5, 3
    q, k, v = torch.randn(U, H, Sq, dh), torch.randn(U, H, Sk, dh), torch.randn(U, H, Sk, dh)
    allow = torch.rand(U, 1, Sq, Sk) < 0.5
    allow[0, 0, 1] = False  # a query without any allowed key
    allow[1, 0, 2] = True
    out = masked_attention(q, k, v, allow)
    for u in range(U):
        for h in range(H):
            for i in range(Sq):
                a = allow[u, 0, i]
                if not a.any():
                    assert (out[u, h, i] == 0).all()
                    continue
                w = torch.softmax(q[u, h, i] @ k[u, h, a].T / dh**0.5, dim=-1)
                torch.testing.assert_close(out[u, h, i], w @ v[u, h, a])


def test_decorrelation_removes_the_direction_of_the_other_modalities():
    torch.manual_seed(0)
    U, M, d = 5, 3, 4
    present = torch.ones(U, M, dtype=torch.bool)
    present[0, 2] = False  # segment 0: modality 2 absent
    present[1, 1:] = False  # segment 1: modality 0 alone
    seg, kind = [], []
    for u in range(U):
        for m in range(M):
            n = int(present[u, m]) * (1 + (u + m) % 3)  # 1..3 tokens per present modality
            seg += [u] * n
            kind += [m] * n
    seg, kind = torch.tensor(seg), torch.tensor(kind)
    x = torch.randn(len(seg), d)
    out = decorrelate(x, seg, kind, U, M)
    for u in range(U):
        pooled = {m: x[(seg == u) & (kind == m)].mean(0) for m in range(M) if present[u, m]}
        for m in pooled:
            rows = (seg == u) & (kind == m)
            others = [v for k, v in pooled.items() if k != m]
            if not others:
                torch.testing.assert_close(out[rows], x[rows])  # alone: unchanged
                continue
            c = torch.stack(others).mean(0)
            c = c / c.norm()
            # no component left along c; the orthogonal part is untouched
            torch.testing.assert_close(out[rows] @ c, torch.zeros(int(rows.sum())), atol=1e-5, rtol=0)
            torch.testing.assert_close(out[rows] - x[rows], -(x[rows] @ c)[:, None] * c, atol=1e-5, rtol=1e-4)


def test_mfq_streamer_conditioned_queries_and_mean_pool():
    torch.manual_seed(0)
    mfq = MFQ({"a": 5, "b": 7}, dim=8, n_queries=2, streamer_conditioned=True, max_tokens=4, streamer_dim=3,
              pool="mean").eval()
    tokens, masks = mfq_inputs()
    s = torch.randn(6, 3)
    with torch.no_grad():
        out = mfq(tokens, masks, s)
        assert out.shape == (6, 8)
        assert (mfq(tokens, masks, s + 1.0) - out)[[0, 1, 2, 3, 5]].abs().max() > 1e-5  # queries depend on it
    with pytest.raises(ValueError, match="streamer embedding"):
        mfq(tokens, masks)
    with pytest.raises(ValueError, match="streamer_dim"):
        MFQ({"a": 5}, streamer_conditioned=True)


# --- MMBee ---------------------------------------------------------------------------------------


def test_mmbee_is_registered():
    assert MODELS["mmbee"].name == "mmbee"


@pytest.mark.parametrize("p", [c[1] for c in CASES])
def test_forward_backward_with_missing_modalities(task, p):
    torch.manual_seed(0)
    model = build_model("mmbee", task.schema, p)
    batch = train_batch(task)
    out = model(batch)
    assert out.shape == (batch.size,) and torch.isfinite(out).all()
    out.sum().backward()
    grads = {n: q.grad for n, q in model.named_parameters() if q.grad is not None}
    for n, g in grads.items():
        assert torch.isfinite(g).all(), f"non-finite gradient in {n}"
    if p.get("use_mfq", True):
        names = p.get("modalities") or ["frames_emb", "comments_emb"]
        for name in names:
            assert grads[f"mfq.project.{name}.weight"].abs().sum() > 0
        assert grads["mfq.queries"].abs().sum() > 0
        if p.get("modalities") is None:  # segment NO_CONTENT has none of them: the learned vector is used
            assert task.item_vocab.lookup([seg_id(NO_CONTENT)])[0] in batch.uniq.numpy()
            assert grads["mfq.no_content"].abs().sum() > 0
    else:
        assert not any(n.startswith("mfq.") for n, _ in model.named_parameters())
    if p.get("use_gie", True):
        assert grads["gie_user.k.weight"].abs().sum() > 0 and grads["streamers.weight"].abs().sum() > 0
    else:
        assert not any(n.startswith(("gie_", "streamers")) for n, _ in model.named_parameters())


def _scramble_masked(batch, seed: int = 3):
    """Junk in every stored value nothing should read: padded token slots, absent modalities (all-False
    rows), padded history positions (ids, features, times, positions in `uniq`) and padded GIE slots."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(batch)
    for name in (n for n in ("frames_emb", "comments_emb") if n in out.uniq_side):
        tok, mask = out.uniq_side[name], out.uniq_side[f"{name}:mask"]
        assert (~mask).any() and (~mask.any(1)).any()  # padded slots and absent modalities exist
        tok[~mask] = torch.randn(int((~mask).sum()), tok.shape[-1], generator=g) * 1e3
        tok[~mask.any(1), 0] = float("nan")
    absent = ~out.uniq_presence["speech_mfcc"]
    assert absent.any()
    out.uniq_side["speech_mfcc"][absent] = float("nan")
    pad = ~out.hist_mask
    n = int(pad.sum())
    assert n > 0
    out.hist[pad] = torch.randint(1, N_SEG + 1, (n,), generator=g)
    out.hist_pos[pad] = torch.randint(0, len(out.uniq), (n,), generator=g)
    for v in out.hist_side.values():
        v[pad] = torch.randint(1, 3, (n,), generator=g)
    out.hist_time[pad] = float("nan")
    g = out.graph
    for idx, w in ((g.user, g.user_w), (g.target, g.target_w)):
        w[idx == 0] = float("nan")
    return out


def _wider_gie(batch):
    """The same batch with one more GIE column, all padding (index 0, a large weight)."""
    wide = copy.deepcopy(batch)
    g = wide.graph
    for key in ("user", "target"):
        idx, w = getattr(g, key), getattr(g, f"{key}_w")
        setattr(g, key, torch.cat([idx, torch.zeros_like(idx[:, :1])], dim=1))
        setattr(g, f"{key}_w", torch.cat([w, torch.full_like(w[:, :1], 7.0)], dim=1))
    return wide


@pytest.mark.parametrize("p", [params(), params(search="soft", mfq_layers=2, modalities=["frames_emb", "speech_mfcc"])])
def test_padding_and_absent_modalities_change_nothing(task, p):
    torch.manual_seed(0)
    model = build_model("mmbee", task.schema, p).eval()
    batch = train_batch(task)
    with torch.no_grad():
        ref = model(batch)
        assert torch.equal(ref, model(batch))
        torch.testing.assert_close(model(_scramble_masked(batch)), ref, rtol=0, atol=1e-6)
        # padded GIE slots are not even counted: one more of them gives the same numbers
        torch.testing.assert_close(model(_wider_gie(batch)), ref, rtol=0, atol=1e-6)
        # ... while real content, real history and real expansions do matter
        for change in ("token", "gie"):
            changed = copy.deepcopy(batch)
            if change == "token":
                mask = changed.uniq_side["frames_emb:mask"]
                changed.uniq_side["frames_emb"][mask] += 1.0
            else:
                real = changed.graph.user > 0
                changed.graph.user_w[real] = changed.graph.user_w[real].flip(0)
            assert (model(changed) - ref).abs().max() > 1e-5, change


def test_without_mfq_and_gie_it_is_exactly_sim(task):
    torch.manual_seed(0)
    mmbee = build_model("mmbee", task.schema, params(use_mfq=False, use_gie=False)).eval()
    torch.manual_seed(0)
    sim = build_model("sim", task.schema, {k: v for k, v in SMALL.items() if not k.startswith(("mfq", "gie"))}).eval()
    a, b = mmbee.state_dict(), sim.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # same capacity, same start
    batch = train_batch(task)
    with torch.no_grad():
        torch.testing.assert_close(mmbee(batch), sim(batch), rtol=0, atol=0)


def test_overfits_a_tiny_dataset(task):
    torch.manual_seed(0)
    batch = train_batch(task)
    y = torch.from_numpy(np.random.default_rng(0).permutation(np.arange(batch.size) % 2).astype(np.float32))
    batch.label = y  # random labels: only memorising user x segment x content fits them
    model = build_model("mmbee", task.schema, params(mlp_hidden=[32]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(batch)
    pos, neg = logits[y == 1], logits[y == 0]
    auc = float((pos[:, None] > neg[None, :]).float().mean())
    assert batch.size >= 100 and auc > 0.95 and ((logits > 0).float() == y).float().mean() > 0.9


def test_graph_init_starts_the_streamer_and_user_tables(task):
    schema = copy.deepcopy(task.schema)
    rng = np.random.default_rng(0)
    n_codes = schema.item_categorical["streamer_id"]
    schema.graph_init = {"streamer": rng.normal(size=(n_codes, 8)).astype(np.float32),
                         "user": rng.normal(size=(schema.n_users, 5)).astype(np.float32)}
    model = build_model("mmbee", schema, params())
    assert isinstance(model.streamers, PretrainedEmbedding) and isinstance(model.user, PretrainedEmbedding)
    idx = torch.tensor([0, 1, n_codes - 1])
    with torch.no_grad():  # gie_dim == 8 == the graph width: the projection starts as the identity
        expected = torch.from_numpy(schema.graph_init["streamer"])[idx]
        expected[0] = 0.0
        torch.testing.assert_close(model.streamers(idx), expected)
    assert model.user.proj.weight.shape == (8, 5)  # other width: a learned projection
    assert "streamers.weight" in dict(model.named_parameters())
    frozen = build_model("mmbee", schema, params(graph_trainable=False))
    names = dict(frozen.named_parameters())
    assert "streamers.weight" not in names and "streamers.weight" in frozen.state_dict()
    assert "streamers.proj.weight" in names
    out = frozen(train_batch(task))
    assert torch.isfinite(out).all()
    anon = build_model("mmbee", schema, params(use_user_id=False))  # no user table: the GraphCL user rows unused
    assert anon.user is None and isinstance(anon.streamers, PretrainedEmbedding)
    assert not any(n.startswith("user.") for n in anon.state_dict())
    assert torch.isfinite(anon(train_batch(task))).all()
    schema.graph_init["streamer"] = schema.graph_init["streamer"][:-1]
    with pytest.raises(ValueError, match=r"graph_init\['streamer'\] has shape \(4, 8\); expected \(5, d\)"):
        build_model("mmbee", schema, params())


def test_clear_errors(task):
    model = build_model("mmbee", task.schema, params())
    batch = task.collate(task.splits["train"], train=True)
    with pytest.raises(ValueError, match=r"use_gie needs .*Batch.graph.*task.graph.enabled: true"):
        model(batch)
    bad = add_gie(copy.deepcopy(batch), task)
    bad.graph.target[1, 0] = 99
    with pytest.raises(ValueError, match="streamer index 99"):
        model(bad)
    with pytest.raises(ValueError, match=r"modalities \['nope'\] are neither token modalities"):
        build_model("mmbee", task.schema, params(modalities=["nope"]))
    schema = copy.deepcopy(task.schema)
    schema.item_tokens = {}
    with pytest.raises(ValueError, match="MFQ has no modality to read"):
        build_model("mmbee", schema, params())
    with pytest.raises(ValueError, match="streamer_feature 'author'"):
        build_model("mmbee", task.schema, params(streamer_feature="author"))


def test_modalrec_train_runs_mmbee(tmp_path):
    from modalrec.config import RunConfig
    from modalrec.train.run import train_run

    data = make_data(n_events=200)
    cfg = RunConfig.model_validate({
        "name": "mmbee_tiny",
        "task": {"kind": "ctr", "max_history": 8, "max_tokens": 3},
        "model": {"name": "mmbee", "params": params(use_gie=False)},
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "num_threads": 1},
    })
    metrics = train_run(cfg, tmp_path / "run", data=data, report=False)
    assert metrics["model"] == "mmbee" and metrics["test"]["logloss"]["mean"] is not None


def test_target_scope_fuses_only_the_targets(task):
    """mfq_scope 'target': MFQ reads the targets' own token tables (item_side) and its vector joins the MLP;
    history items stay content-free, so the history's token tables change nothing and need not be built."""
    torch.manual_seed(0)
    tgt = build_model("mmbee", task.schema, params(mfq_scope="target")).eval()
    torch.manual_seed(0)
    sim = build_model("sim", task.schema, {k: v for k, v in SMALL.items() if not k.startswith(("mfq", "gie"))})
    assert tgt.items.out_dim == sim.items.out_dim  # the attention stays as narrow as SIM's
    s = task.splits["train"]
    late = s.take(np.argsort(s.cut)[-4:])  # a few samples with long histories: most positions are not targets
    batch = add_gie(task.collate(late, train=True), task)
    with torch.no_grad():
        ref = tgt(batch)
        fused = tgt.fused_targets(batch)
        assert fused.shape[0] == batch.size
        # the same segments fused with uniq tables: identical content vectors
        rows = batch.item_pos
        same = tgt.mfq({n: batch.uniq_side[n][rows] for n in tgt.token_names},
                       {n: batch.uniq_side[f"{n}:mask"][rows] for n in tgt.token_names}
                       | {n: batch.uniq_presence[n][rows].unsqueeze(1) for n in tgt.dense_names},
                       tgt._streamer({k: v[rows] for k, v in batch.uniq_side.items()}))
        if not tgt.dense_names:
            torch.testing.assert_close(fused, same, rtol=0, atol=1e-6)
        changed = copy.deepcopy(batch)
        not_target = ~torch.isin(torch.arange(len(changed.uniq)), changed.item_pos)
        assert not_target.any()
        changed.uniq_side["frames_emb"][not_target] += 5.0
        torch.testing.assert_close(tgt(changed), ref, rtol=0, atol=1e-6)
        # with task.token_scope 'target' the history's token tables are not even built: same output
        task.collator.token_scope = "target"
        try:
            lean = add_gie(task.collate(late, train=True), task)
        finally:
            task.collator.token_scope = "all"
        assert "frames_emb" not in lean.uniq_side
        torch.testing.assert_close(tgt(lean), ref, rtol=0, atol=1e-6)
        # ... while the targets' own content matters
        moved = copy.deepcopy(lean)
        m = moved.item_side["frames_emb:mask"]
        moved.item_side["frames_emb"][m] += 1.0
        assert (tgt(moved) - ref).abs().max() > 1e-5
    out = tgt.train()(lean)
    out.sum().backward()
    assert tgt.mfq.queries.grad is not None and tgt.mfq.queries.grad.abs().sum() > 0


def test_modality_and_segment_dropout_act_in_training_only(task):
    """modality_dropout / segment_dropout clear token masks of random segments while training (drawn from torch's
    seeded generator), leave evaluation untouched, and at 0 change nothing."""
    batch = train_batch(task)
    torch.manual_seed(0)
    plain = build_model("mmbee", task.schema, params(use_gie=False))
    torch.manual_seed(0)
    drop = build_model("mmbee", task.schema, params(use_gie=False, modality_dropout=0.5, segment_dropout=0.3))
    drop.load_state_dict(plain.state_dict())
    plain.eval(), drop.eval()
    with torch.no_grad():
        torch.testing.assert_close(drop(batch), plain(batch), rtol=0, atol=0)  # evaluation: no dropout
    masks = {n: batch.uniq_side[f"{n}:mask"] for n in drop.token_names}
    drop.train()
    torch.manual_seed(1)
    a = drop._drop(masks)
    torch.manual_seed(1)
    assert all(torch.equal(a[n], b) for n, b in drop._drop(masks).items())  # seeded: reproducible
    for n, m in masks.items():
        assert not (a[n] & ~m).any()  # never turns padding into a token
        kept = a[n].any(1)[m.any(1)].float().mean()
        assert 0.1 < float(kept) < 0.6  # ~ (1 - 0.3) * (1 - 0.5) = 0.35 of the present segments keep it
    # whole segments: some segments lose every modality at once while training
    present = torch.stack([m.any(1) for m in masks.values()], 1).any(1)
    left = torch.stack([m.any(1) for m in a.values()], 1).any(1)
    assert (present & ~left).any()
    plain.train()
    assert plain._drop(masks) is masks  # 0 / 0: identity


def test_content_cache_serves_the_same_vectors(task):
    """cache_content (serving): each target segment is fused once and memoised; eval outputs are unchanged,
    later batches read the memo, and training or autograd always fuse afresh."""
    torch.manual_seed(0)
    model = build_model("mmbee", task.schema, params(mfq_scope="target")).eval()
    batch = train_batch(task)
    with torch.no_grad():
        ref = model(batch)
        model.cache_content(max_items=10_000)
        torch.testing.assert_close(model(batch), ref, rtol=0, atol=1e-6)
        cached = dict(model._content_cache)
        assert set(cached) == set(batch.item.tolist())
        with patch.object(model.mfq, "forward", side_effect=AssertionError("MFQ ran again")):
            torch.testing.assert_close(model(batch), ref, rtol=0, atol=1e-6)  # every segment from the memo
        model.cache_content(max_items=2)  # a bound smaller than one batch: it starts over, still exact
        torch.testing.assert_close(model(batch), ref, rtol=0, atol=1e-6)
    out = model(batch)  # autograd on: fused afresh, gradients reach MFQ
    out.sum().backward()
    assert model.mfq.queries.grad is not None


@pytest.mark.parametrize("name", ["sim", "mmbee"])
def test_without_item_id_items_are_their_features(task, name):
    """use_item_id: false (segments that never recur): no id table; two items with the same side features
    and content get the same vector, and the model still trains."""
    torch.manual_seed(0)
    p = params() if name == "mmbee" else {k: v for k, v in SMALL.items() if not k.startswith(("mfq", "gie"))}
    model = build_model(name, task.schema, p | {"use_item_id": False})
    assert model.items.id is None and not any(n.startswith("items.id") for n, _ in model.named_parameters())
    batch = train_batch(task)
    out = model(batch)
    out.sum().backward()
    assert torch.isfinite(out).all()
    with torch.no_grad():
        side = {k: v[:1].expand(2, *v.shape[1:]) for k, v in batch.item_side.items()}
        pres = {k: v[:1].expand(2) for k, v in batch.presence.items()}
        vec = model.items(torch.tensor([3, 5]), side, pres)
        torch.testing.assert_close(vec[0], vec[1], rtol=0, atol=0)


def test_gie_match_features_are_the_target_score_and_the_overlap(task):
    torch.manual_seed(0)
    model = build_model("mmbee", task.schema, params())
    batch = train_batch(task)
    target = batch.item_side["streamer_id"].long()
    B = batch.size
    other = torch.where(target == 1, torch.full_like(target, 2), torch.ones_like(target))
    u_idx = torch.stack([target, other, torch.zeros_like(target)], 1)
    u_w = torch.tensor([[0.5, 0.3, 9.0]]).expand(B, -1).clone()  # the padding slot's junk weight is ignored
    s_idx = torch.stack([other, torch.zeros_like(target)], 1)
    s_w = torch.tensor([[0.4, 7.0]]).expand(B, -1).clone()
    feats = model._match_features(batch, {"gie_user": (u_idx, u_w, u_idx > 0), "gie_streamer": (s_idx, s_w, s_idx > 0)})
    real = target > 0
    want_in = torch.where(real, torch.tensor(0.5), torch.tensor(0.0))
    torch.testing.assert_close(feats[:, 0], torch.log1p(100 * want_in))
    torch.testing.assert_close(feats[:, 1], (want_in > 0).float())
    torch.testing.assert_close(feats[:, 2], torch.full((B,), float(np.log1p(100 * 0.3 * 0.4))))
    assert (feats[:, 3] == 1).all()
    off = build_model("mmbee", task.schema, params(gie_match=False))
    assert off.mlp.net[0].in_features == model.mlp.net[0].in_features - 4


def test_history_tags_reach_every_mfq_scope():
    """A tagged history (task.history_channel_tags) changes the encoder part of each history vector by its tag's
    embedding with MFQ on every item (mfq_scope 'all') too; the content part and the targets stay as they were."""
    tagged = CTRTask(make_data().validate(), task_config(max_tokens=4, history_channel_tags=True))
    assert tagged.schema.history_tags == {"watch": 1}
    torch.manual_seed(0)
    model = build_model("mmbee", tagged.schema, params(mfq_scope="all")).eval()
    batch = train_batch(tagged)
    with torch.no_grad():
        target, hist = model.item_vectors(batch)
        tag = model.items.tag
        model.items.tag = None
        target0, hist0 = model.item_vectors(batch)
        model.items.tag = tag
    d = model.items.out_dim
    assert torch.equal(target, target0)
    real = batch.hist_mask
    assert real.any()
    assert torch.allclose(hist[..., :d][real], hist0[..., :d][real] + tag.weight[1], atol=1e-6)
    assert torch.equal(hist[..., d:], hist0[..., d:])


def test_gie_dropout_blanks_whole_samples_in_training_only(task):
    """gie_dropout: while training, a dropped sample scores exactly as the same sample without any graph input
    (both expansions all padding, so the match features are 0 too); kept samples are untouched; evaluation and
    p = 0 never drop; the draws come from torch's seeded generator."""
    batch = train_batch(task)
    torch.manual_seed(0)
    model = build_model("mmbee", task.schema, params(gie_dropout=0.5, mfq_dropout=0.0))
    blank = copy.copy(batch)
    g = batch.graph
    blank.graph = GraphInputs(*(torch.zeros_like(t) for t in (g.user, g.user_w, g.target, g.target_w)))
    model.eval()
    with torch.no_grad():
        full, none = model(batch), model(blank)
        assert not torch.allclose(full, none)  # the graph inputs matter for this batch
        model.train()
        # training mode with modality/segment dropout off (params() sets none): the only randomness is GIE's
        torch.manual_seed(3)
        keep = model._gie_keep(batch.size, full.device).squeeze(1)
        torch.manual_seed(3)
        out = model(batch)
    assert 0 < int(keep.sum()) < batch.size
    torch.testing.assert_close(out[keep], full[keep], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[~keep], none[~keep], rtol=0, atol=1e-6)
    plain = build_model("mmbee", task.schema, params()).train()
    assert plain._gie_keep(batch.size, full.device) is None
