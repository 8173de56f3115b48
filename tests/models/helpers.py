"""Helpers of the model tests (plain functions and case lists, not tests): a random side table, schema and batch
with absent text content and padded histories, a tiny CTR dataset, junk at the positions a model must not
read; the SIM / SDIM / TIN / QIN cases; the multilabel paper's model names."""

from __future__ import annotations

import copy

import numpy as np
import torch

from modalrec.data.batch import Batch
from modalrec.models import Schema
from modalrec.pipeline import SideTable

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


def scramble_padding(batch: Batch, seed: int = 7) -> Batch:
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


def scramble_absent_content(batch: Batch, seed: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(batch)
    absent = ~out.presence["text"]
    assert absent.any()
    out.item_side["text"][absent] = torch.randn(int(absent.sum()), D, generator=g) * 100
    h_absent = ~out.hist_presence["text"]
    out.hist_side["text"][h_absent] = torch.randn(int(h_absent.sum()), D, generator=g) * 100
    return out


# --- SIM, SDIM, TIN and QIN (test_models_ctr_seq) ----------------------------------------------------------

SEQ_SMALL = {"sim": {"embed_dim": 8, "top_k": 3, "short_len": 2},
             "sdim": {"embed_dim": 8, "n_hashes": 8, "hash_bits": 2, "short_len": 2},
             "tin": {"embed_dim": 8},
             "qin": {"embed_dim": 8}}


def seq_params(name: str, **extra) -> dict:
    return {**SEQ_SMALL[name], **extra}


def with_time(batch: Batch, seed: int = 0) -> Batch:
    """Seconds before the sample, decreasing with position (older events further away)."""
    rng = np.random.default_rng(seed)
    B = batch.size
    gaps = rng.integers(1, 10**6, (B, L)).astype(np.float32)
    t = np.flip(np.cumsum(np.flip(gaps, 1), 1), 1).copy()
    batch.hist_time = torch.where(batch.hist_mask, torch.from_numpy(t), torch.zeros(()))
    return batch


SEQ_CASES = [
    ("sim", seq_params("sim")),
    ("sim", seq_params("sim", search="soft")),
    ("sim", seq_params("sim", use_time=False, short_len=0, use_content=False)),
    ("sdim", seq_params("sdim")),
    ("sdim", seq_params("sdim", short_len=0, use_content=False)),
    ("tin", seq_params("tin")),
    ("tin", seq_params("tin", attention="sigmoid", temporal="time")),
    ("qin", {}),  # the paper's defaults (embed_dim 128)
    ("qin", seq_params("qin", use_user=False, batch_norm=False, num_rows=2)),
]


# --- the multilabel paper's models (test_multilabel) ------------------------------------------------------

PAPER_MODELS = ["popularity", "conversation", "session", "late_fusion", "kd", "neutral_imputation",
                "generative_imputation", "keyword", "latent_feature", "relative_representation"]
