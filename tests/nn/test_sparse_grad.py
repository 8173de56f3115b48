"""The long-sequence rankers' fast training path: sparse id-table gradients with the lazy Adam (`nn.sparse`),
gradient clipping over sparse gradients, and SIM's history gathered only where its attentions read it
(`nn.item_encoder.HistoryRows`, `SIM.exact_search`): the same function as the dense path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalrec.config import TaskConfig
from modalrec.data.interaction import InteractionData
from modalrec.models import build_model
from modalrec.nn.item_encoder import HistoryRows
from modalrec.nn.sparse import LazyAdam, clip_grad_norm_, sparse_modules
from modalrec.tasks import CTRTask


def _dense_adam_reference(p0, grads, rows_read, lr=0.01, betas=(0.9, 0.999), eps=1e-8):
    """Lazy Adam written out: a row's moments and weights change only in the steps whose gradient reads it."""
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, (g, rows) in enumerate(zip(grads, rows_read), start=1):
        for r in rows:
            m[r] = betas[0] * m[r] + (1 - betas[0]) * g[r]
            v[r] = betas[1] * v[r] + (1 - betas[1]) * g[r] ** 2
            p[r] -= lr / (1 - betas[0] ** t) * m[r] / ((v[r] / (1 - betas[1] ** t)).sqrt() + eps)
    return p


def test_lazy_adam_updates_only_the_rows_read_and_matches_the_formula():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    w0 = emb.weight.detach().clone()
    opt = LazyAdam(emb.parameters(), lr=0.01)
    batches = [torch.tensor([1, 2, 2]), torch.tensor([2, 5]), torch.tensor([7])]
    grads = []
    for ids in batches:
        opt.zero_grad()
        (emb(ids) ** 2).sum().backward()
        assert emb.weight.grad.is_sparse
        grads.append(emb.weight.grad.to_dense().clone())
        opt.step()
    want = _dense_adam_reference(w0, grads, [sorted(set(b.tolist())) for b in batches])
    assert torch.allclose(emb.weight.detach(), want, atol=1e-6)
    untouched = [0, 3, 4, 6, 8, 9]
    assert torch.equal(emb.weight.detach()[untouched], w0[untouched])
    assert int(opt.state[emb.weight]["step"]) == 3


def test_lazy_adam_is_adam_on_dense_gradients():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    oa, ob = torch.optim.Adam(a.parameters(), lr=0.05), LazyAdam(b.parameters(), lr=0.05)
    x = torch.randn(8, 4)
    for _ in range(4):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # its state is Adam's, so a checkpoint of one loads into the other
    oa.load_state_dict(ob.state_dict())


def test_clip_grad_norm_takes_sparse_and_dense_gradients_together():
    torch.manual_seed(1)
    emb, lin = torch.nn.Embedding(6, 3, sparse=True), torch.nn.Linear(3, 1)
    emb_d, lin_d = torch.nn.Embedding(6, 3), torch.nn.Linear(3, 1)
    emb_d.load_state_dict(emb.state_dict())
    lin_d.load_state_dict(lin.state_dict())
    ids = torch.tensor([0, 3, 3, 5])
    lin(emb(ids)).sum().mul(10).backward()
    lin_d(emb_d(ids)).sum().mul(10).backward()
    norm = clip_grad_norm_([emb.weight, *lin.parameters()], 0.5)
    norm_d = torch.nn.utils.clip_grad_norm_([emb_d.weight, *lin_d.parameters()], 0.5)
    assert torch.allclose(norm, norm_d)
    assert torch.allclose(emb.weight.grad.to_dense(), emb_d.weight.grad, atol=1e-6)
    assert torch.allclose(lin.weight.grad, lin_d.weight.grad, atol=1e-6)


@pytest.fixture(scope="module")
def task(toy_dir):
    return CTRTask(InteractionData.load(toy_dir), TaskConfig(kind="ctr", sample_channels=["click"], max_history=12))


def _sim(task, **params):
    torch.manual_seed(0)
    model = build_model("sim", task.schema, {"embed_dim": 8, "top_k": 4, "short_len": 3, **params})
    task.bind(model.inputs)
    return model


@pytest.mark.parametrize("search", ["soft", "hard"])
def test_sim_reads_the_history_where_it_attends_with_the_dense_paths_function(task, search):
    """The gathered history (HistoryRows) and the folded ESU projection give the dense path's outputs and
    gradients (the dense path: the (B, L, d) history tensor and `esu` over [e_j, t_j])."""
    model = _sim(task, search=search)
    batch = task.collate(task.splits["train"].take(np.arange(64)), True)
    model.eval()
    assert isinstance(model.items.encode_rows(batch)[1], HistoryRows)  # the gathered path is the one measured

    def reference_search(target, retrieved, buckets, valid, bias):
        z = retrieved if buckets is None else torch.cat([retrieved, model.time(buckets)], dim=-1)
        return model.esu(target, z, valid, key_bias=bias)

    out = model(batch)
    loss = out.sum()
    loss.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.items.encode_rows = model.items.encode  # the dense (B, L, d) history
    model.exact_search = reference_search
    ref = model(batch)
    ref.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(fast[n], p.grad, atol=1e-5), n


def test_history_rows_equal_the_dense_history():
    torch.manual_seed(2)
    table, tag = torch.randn(7, 4), torch.nn.Embedding(3, 4)
    index, tags = torch.randint(0, 7, (2, 5)), torch.randint(0, 3, (2, 5))
    rows = HistoryRows(table, index, tags, tag)
    dense = table[index] + tag(tags)
    assert torch.allclose(rows.dense(), dense)
    idx = torch.tensor([[4, 0], [1, 1]])
    assert torch.allclose(rows.at(idx), dense.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)))
    r, c = torch.tensor([0, 1]), torch.tensor([3, 2])
    assert torch.allclose(rows.rows(r, c), dense[r, c])
    wrapped = HistoryRows.of(dense)  # around a (B, L, d) tensor: the same reads
    assert wrapped.dense() is dense and torch.allclose(wrapped.at(idx), rows.at(idx))
    assert torch.allclose(wrapped.rows(r, c), rows.rows(r, c))


def test_sparse_grad_trains_with_lazy_adam_and_moves_only_rows_read(task):
    from modalrec.config import TrainConfig
    from modalrec.train.trainer import Trainer

    model = _sim(task, sparse_grad=True)
    tables = sparse_modules(model)
    assert tables and all(t.sparse for t in tables)
    before = model.user.weight.detach().clone()
    trainer = Trainer(task, model, TrainConfig(epochs=1, batch_size=64, progress=False, clip_norm=1.0), None)
    assert isinstance(trainer.optimizer, LazyAdam)
    trainer.fit()
    read = np.unique(task.splits["train"].users)
    moved = (model.user.weight.detach() != before).any(1).numpy()
    assert moved[read].all() and not moved[np.setdiff1d(np.arange(len(moved)), read)].any()
    # an optimizer that cannot take sparse gradients gets dense ones (the plain update)
    model2 = _sim(task, sparse_grad=True)
    Trainer(task, model2, TrainConfig(epochs=1, batch_size=64, progress=False, optimizer="adamw"), None)
    assert not any(t.sparse for t in sparse_modules(model2) + [model2.user])
