"""Tests for modalrec.eval.metrics: CTR metrics against scikit-learn, ranking metrics against
numbers worked out by hand from their definitions, and batch-size invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from modalrec.eval.metrics import (
    TopKAccumulator,
    auc,
    ctr_metrics,
    group_auc,
    logloss,
    ranking_metrics,
    target_ranks,
)

# --------------------------------------------------------------------------------------------
# auc / logloss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    labels = rng.integers(0, 2, n)
    continuous = rng.normal(size=n) + labels * 0.5
    rounded = np.round(continuous, 1)  # many ties
    integer = rng.integers(0, 5, n)  # integer-valued scores, heavy ties
    for scores in (continuous, rounded, integer):
        assert abs(auc(labels, scores) - roc_auc_score(labels, scores)) < 1e-9


def test_auc_edge_cases():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc(torch.tensor([1, 0]), torch.tensor([0.1, 0.9])) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_logloss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    labels = rng.integers(0, 2, n)
    probs = rng.random(n)
    # Exact 0 / 1 probabilities exercise the clipping on both sides.
    probs[:20] = 0.0
    probs[20:40] = 1.0
    probs[40:60] = 1e-20
    probs[60:80] = 1 - 1e-17
    assert abs(logloss(labels, probs) - log_loss(labels, probs)) < 1e-9


def test_ctr_metrics_from_logits():
    rng = np.random.default_rng(7)
    n = 1000
    labels = rng.integers(0, 2, n)
    logits = rng.normal(scale=3.0, size=n)
    logits[:5] = [-800.0, 800.0, 50.0, -50.0, 0.0]  # would overflow a naive sigmoid
    groups = rng.integers(0, 30, n)
    with np.errstate(over="raise"):
        out = ctr_metrics(labels, logits, groups)
    probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -700, 700)))
    assert abs(out["auc"] - roc_auc_score(labels, logits)) < 1e-9
    assert abs(out["logloss"] - log_loss(labels, probs)) < 1e-9
    gauc, uauc = group_auc(labels, logits, groups)
    assert out["gauc"] == gauc and out["uauc"] == uauc
    assert set(ctr_metrics(labels, logits)) == {"auc", "logloss"}


# --------------------------------------------------------------------------------------------
# group_auc
# --------------------------------------------------------------------------------------------


def _reference_group_auc(labels, scores, groups):
    aucs, sizes = [], []
    for g in np.unique(groups):
        m = groups == g
        if labels[m].min() == labels[m].max():
            continue
        aucs.append(roc_auc_score(labels[m], scores[m]))
        sizes.append(m.sum())
    aucs, sizes = np.array(aucs), np.array(sizes)
    return float((aucs * sizes).sum() / sizes.sum()), float(aucs.mean())


@pytest.mark.parametrize("seed", range(4))
def test_group_auc_matches_per_group_reference(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    groups = rng.integers(0, 120, n)
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(size=n) + 0.3 * labels, 1)  # ties inside and across groups
    gauc, uauc = group_auc(labels, scores, groups)
    ref_gauc, ref_uauc = _reference_group_auc(labels, scores, groups)
    assert abs(gauc - ref_gauc) < 1e-9
    assert abs(uauc - ref_uauc) < 1e-9
    # String group labels give the same answer.
    gauc_s, uauc_s = group_auc(labels, scores, groups.astype(str))
    assert abs(gauc_s - gauc) < 1e-12 and abs(uauc_s - uauc) < 1e-12


def test_group_auc_hand_computed_and_single_class_skipped():
    # Group "a" (4 rows): positives 0.9, 0.4; negatives 0.5, 0.1 -> pairs won: (0.9>0.5),
    # (0.9>0.1), (0.4>0.1), lost (0.4<0.5) -> AUC 3/4.
    # Group "b" (2 rows): positive 0.3 ties negative 0.3 -> AUC 1/2.
    # Group "c" (3 rows, all negative) and "d" (1 row, positive) have no AUC and are skipped.
    labels = [1, 0, 1, 0, 1, 0, 0, 0, 0, 1]
    scores = [0.9, 0.5, 0.4, 0.1, 0.3, 0.3, 0.2, 0.8, 0.7, 0.6]
    groups = ["a", "a", "a", "a", "b", "b", "c", "c", "c", "d"]
    gauc, uauc = group_auc(labels, scores, groups)
    assert gauc == pytest.approx((4 * 0.75 + 2 * 0.5) / 6, abs=1e-12)
    assert uauc == pytest.approx((0.75 + 0.5) / 2, abs=1e-12)


def test_group_auc_all_groups_single_class_is_nan():
    gauc, uauc = group_auc([1, 1, 0], [0.1, 0.2, 0.3], [0, 0, 1])
    assert math.isnan(gauc) and math.isnan(uauc)


# --------------------------------------------------------------------------------------------
# target_ranks
# --------------------------------------------------------------------------------------------


def test_target_ranks_basic_and_padding():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    targets = torch.tensor([[2, 1], [3, -1]])
    ranks = target_ranks(scores, targets)
    # Row 0: item 2 (0.5) is behind 1 and 3 -> rank 2; item 1 is first -> 0.
    # Row 1: item 3 is last -> 3; the padded target gets N = 4.
    assert ranks.tolist() == [[2, 0], [3, 4]]
    assert ranks.dtype == torch.long


def test_target_ranks_ties_broken_by_item_index():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.9]])
    targets = torch.tensor([[0, 2, 3]])
    # Item 4 beats everyone; among the tied items a lower index ranks ahead.
    assert target_ranks(scores, targets).tolist() == [[1, 3, 4]]
    # Constant scores: the rank is the item index, so a constant model cannot look good.
    const = torch.zeros(1, 6)
    assert target_ranks(const, torch.tensor([[5, 0]])).tolist() == [[5, 0]]


def test_target_ranks_exclusion():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    targets = torch.tensor([[3, 2]])
    exclude = torch.tensor([[True, False, False, False, False]])
    # Target 3: ahead are items 1 and 2 (item 0 excluded) -> 2; target 2: ahead is item 1 -> 1.
    # The other target (item 2) still ranks ahead of target 3.
    assert target_ranks(scores, targets, exclude).tolist() == [[2, 1]]
    # An excluded item with an equal score and lower index must not rank ahead either,
    # even at -inf.
    scores = torch.tensor([[-math.inf, -math.inf, 0.3]])
    exclude = torch.tensor([[True, False, False]])
    assert target_ranks(scores, torch.tensor([[1]]), exclude).tolist() == [[1]]
    assert target_ranks(scores, torch.tensor([[1]])).tolist() == [[2]]


def test_target_ranks_chunking_matches_direct(monkeypatch):
    from modalrec.eval import metrics

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (6, 40), generator=g).float()
    targets = torch.randint(0, 40, (6, 9), generator=g)
    targets[0, 4:] = -1
    exclude = torch.rand(6, 40, generator=g) < 0.2
    exclude.scatter_(1, targets.clamp(min=0), False)
    full = target_ranks(scores, targets, exclude)
    monkeypatch.setattr(metrics, "_RANK_CHUNK_ELEMENTS", 1)  # one target column per chunk
    assert torch.equal(target_ranks(scores, targets, exclude), full)
    # Brute-force definition.
    for b in range(6):
        for j in range(9):
            t = int(targets[b, j])
            if t < 0:
                assert full[b, j] == 40
                continue
            ahead = [
                i
                for i in range(40)
                if not exclude[b, i]
                and (scores[b, i] > scores[b, t] or (scores[b, i] == scores[b, t] and i < t))
            ]
            assert full[b, j] == len(ahead)


# --------------------------------------------------------------------------------------------
# ranking_metrics
# --------------------------------------------------------------------------------------------


def test_ranking_metrics_hand_computed_two_targets():
    # One row, targets at ranks 0 and 2, plus a padded slot.
    ranks = np.array([[0, 2, 99]])
    valid = np.array([[True, True, False]])
    m = ranking_metrics(ranks, valid, ks=(1, 2, 3, 5))
    d0, d2 = 1 / math.log2(2), 1 / math.log2(4)
    expected = {
        "hr@1": 1.0,
        "hr@2": 1.0,
        "hr@3": 1.0,
        "hr@5": 1.0,
        "precision@1": 1.0,
        "precision@2": 0.5,
        "precision@3": 2 / 3,
        "precision@5": 2 / 5,
        "recall@1": 0.5,
        "recall@2": 0.5,
        "recall@3": 1.0,
        "recall@5": 1.0,
        "ndcg@1": d0 / 1.0,
        "ndcg@2": d0 / (1 + 1 / math.log2(3)),
        "ndcg@3": (d0 + d2) / (1 + 1 / math.log2(3)),
        "ndcg@5": (d0 + d2) / (1 + 1 / math.log2(3)),  # IDCG capped at min(k, #valid) = 2
        "map@1": 1.0 / 1,
        "map@2": 1.0 / 2,
        "map@3": (1 / 1 + 2 / 3) / 2,
        "map@5": (1 / 1 + 2 / 3) / 2,
        "mrr": 1.0,
    }
    for key, value in expected.items():
        assert m[key].shape == (1,)
        assert m[key][0] == pytest.approx(value, abs=1e-12), key


def test_ranking_metrics_single_target_and_empty_rows():
    ranks = torch.tensor([[4], [0], [7], [3]])
    valid = torch.tensor([[True], [True], [True], [False]])
    m = ranking_metrics(ranks, valid, ks=(1, 5))
    np.testing.assert_allclose(m["hr@5"][:3], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(m["hr@1"][:3], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(m["ndcg@5"][:3], [1 / math.log2(6), 1.0, 0.0])
    np.testing.assert_allclose(m["mrr"][:3], [1 / 5, 1.0, 1 / 8])  # MRR has no cutoff
    np.testing.assert_allclose(m["map@5"][:3], [1 / 5, 1.0, 0.0])
    np.testing.assert_allclose(m["precision@5"][:3], [0.2, 0.2, 0.0])
    np.testing.assert_allclose(m["recall@5"][:3], [1.0, 1.0, 0.0])
    for key, values in m.items():
        assert values.dtype == np.float64
        assert math.isnan(values[3]), key


def test_ranking_metrics_map_three_targets():
    # Ranks 1, 4, 6 with k = 5: hits at 1 and 4 -> (1/2 + 2/5) / min(5, 3).
    m = ranking_metrics(np.array([[6, 1, 4]]), np.ones((1, 3), dtype=bool), ks=(5, 10))
    assert m["map@5"][0] == pytest.approx((1 / 2 + 2 / 5) / 3, abs=1e-12)
    assert m["map@10"][0] == pytest.approx((1 / 2 + 2 / 5 + 3 / 7) / 3, abs=1e-12)
    assert m["mrr"][0] == pytest.approx(1 / 2)


@pytest.mark.parametrize("n_targets", [1, 3])
def test_ndcg_matches_sklearn_without_ties(n_targets):
    rng = np.random.default_rng(n_targets)
    b, n = 50, 30
    scores = rng.permutation(b * n).reshape(b, n).astype(np.float64)  # distinct scores
    targets = np.stack([rng.choice(n, n_targets, replace=False) for _ in range(b)])
    ranks = target_ranks(torch.from_numpy(scores), torch.from_numpy(targets))
    relevance = np.zeros((b, n))
    np.put_along_axis(relevance, targets, 1.0, axis=1)
    m = ranking_metrics(ranks, np.ones_like(targets, dtype=bool), ks=(1, 5, 10))
    for k in (1, 5, 10):
        per_row = [ndcg_score(relevance[i : i + 1], scores[i : i + 1], k=k) for i in range(b)]
        np.testing.assert_allclose(m[f"ndcg@{k}"], per_row, atol=1e-12)


# --------------------------------------------------------------------------------------------
# TopKAccumulator
# --------------------------------------------------------------------------------------------


def _random_eval(seed=0, rows=23, items=50, max_targets=4):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 20, (rows, items), generator=g).float()  # ties on purpose
    targets = torch.randint(0, items, (rows, max_targets), generator=g)
    n_real = torch.randint(0, max_targets + 1, (rows,), generator=g)  # some rows have none
    targets[torch.arange(max_targets) >= n_real[:, None]] = -1
    exclude = torch.rand(rows, items, generator=g) < 0.3
    # Targets are never excluded (the caller's guarantee); padded slots clear item 0, harmlessly.
    exclude.scatter_(1, targets.clamp(min=0), False)
    groups = np.array(["cold", "warm", 3])[torch.randint(0, 3, (rows,), generator=g).numpy()]
    return scores, targets, exclude, groups


def _accumulate(batch_size, data, ks=(1, 3, 5, 10, 20)):
    scores, targets, exclude, groups = data
    acc = TopKAccumulator(ks)
    for lo in range(0, scores.shape[0], batch_size):
        hi = lo + batch_size
        acc.add(scores[lo:hi], targets[lo:hi], exclude[lo:hi], groups=groups[lo:hi])
    return acc


def test_accumulator_batch_size_invariant():
    data = _random_eval()
    results = [_accumulate(bs, data) for bs in (1, 7, data[0].shape[0])]
    overall = [acc.result() for acc in results]
    by_group = [acc.result_by_group() for acc in results]
    for other in overall[1:]:
        assert other == overall[0]
    for other in by_group[1:]:
        assert other == by_group[0]
    assert set(by_group[0]) == {"cold", "warm", "3"}
    n_with_targets = int((data[1] >= 0).any(dim=1).sum())
    assert overall[0]["n"] == n_with_targets
    assert sum(g["n"] for g in by_group[0].values()) == n_with_targets
    expected_keys = {
        f"{m}@{k}" for m in ("hr", "ndcg", "recall", "precision", "map") for k in (1, 3, 5, 10, 20)
    } | {"mrr", "n"}
    assert set(overall[0]) == expected_keys


def test_accumulator_mean_matches_ranking_metrics():
    scores, targets, exclude, _ = _random_eval(seed=3)
    acc = TopKAccumulator(ks=(5,))
    acc.add(scores, targets, exclude)
    per_row = ranking_metrics(target_ranks(scores, targets, exclude), targets >= 0, ks=(5,))
    res = acc.result()
    for key, values in per_row.items():
        assert res[key] == pytest.approx(np.nanmean(values), abs=1e-12)
    assert acc.result_by_group() == {}


def test_accumulator_empty():
    res = TopKAccumulator(ks=(1,)).result()
    assert res["n"] == 0 and math.isnan(res["hr@1"])
