"""`model.init`: FuxiCTR-style re-initialisation (Xavier-normal Linear layers, N(0, std) embeddings)."""

import torch

from modalrec.config import RunConfig
from modalrec.models import build_model
from modalrec.models.base import Schema
from modalrec.nn.layers import reinitialise


def _din():
    torch.manual_seed(0)
    schema = Schema(task="ctr", n_users=50, n_items=400, max_history=10, item_categorical={"genre": 9})
    return build_model("din", schema, {"embed_dim": 16})


def test_model_scheme_changes_nothing():
    model = _din()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinitialise(model, "model", None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_xavier_and_embedding_std():
    model = _din()
    reinitialise(model, "xavier_normal", 1e-4)
    emb = model.items.id.weight
    assert torch.count_nonzero(emb[0]) == 0  # padding row stays zero
    assert 0.5e-4 < emb[1:].std().item() < 2e-4
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.bias is None or torch.count_nonzero(m.bias) == 0 for m in linears)
    big = max(linears, key=lambda m: m.weight.numel())
    fan_out, fan_in = big.weight.shape
    expected = (2.0 / (fan_in + fan_out)) ** 0.5
    assert abs(big.weight.std().item() - expected) / expected < 0.1


def test_run_config_accepts_init():
    cfg = RunConfig.model_validate({"model": {"name": "din", "init": {"scheme": "xavier_normal",
                                                                      "embedding_std": 1e-4}}})
    assert cfg.model.init.scheme == "xavier_normal" and cfg.model.init.embedding_std == 1e-4
