"""Evaluation metrics for CTR prediction and top-k recommendation.

Two families live here:

* CTR metrics on pointwise predictions: ``auc``, ``logloss``, ``group_auc`` (gAUC / UAUC) and
  the ``ctr_metrics`` bundle that works from logits.
* Ranking metrics on full-catalogue scores: ``target_ranks`` turns a (B, N) score matrix into the
  0-based rank of every held-out target, ``ranking_metrics`` turns ranks into per-row HR, NDCG,
  Recall, Precision, MAP and MRR, and ``TopKAccumulator`` collects those per-row values across
  evaluation batches.

Why it is written this way:

* Everything is vectorised (sorting, ``np.bincount``, broadcast comparisons) because evaluation
  runs over millions of predictions and tens of thousands of users; a Python loop per user or
  per group would dominate the evaluation time.
* Ranking metrics are stored per row and averaged only at the end, so the reported numbers are
  identical whatever evaluation batch size is used.
* AUC uses the rank-sum (Mann-Whitney) form with tie-averaged ranks, which equals the area under
  the ROC curve with ties interpolated, i.e. what ``sklearn.metrics.roc_auc_score`` reports.
  ``logloss`` clips exactly as the installed scikit-learn does so that numbers are comparable
  with published baselines computed with it.
* Ties in ``target_ranks`` are broken by item index (a lower index wins) instead of randomly:
  results are reproducible, and a model that outputs constant scores cannot look good.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "TopKAccumulator",
    "auc",
    "ctr_metrics",
    "group_auc",
    "logloss",
    "ranking_metrics",
    "target_ranks",
]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 20)

# Upper bound on the number of elements of the (B, T_chunk, N) comparison tensor built by
# ``target_ranks``; keeps peak memory around a few hundred MB whatever the number of targets.
_RANK_CHUNK_ELEMENTS = 1 << 26


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------
# CTR metrics
# --------------------------------------------------------------------------------------------


def _sort_by_group_then_score(scores: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permutation ordering samples by (group key, score), and the sorted keys.

    Two passes (score order, then a stable sort by group key) instead of ``np.lexsort``: torch's
    stable sort of int64 keys is several times faster than numpy's, which matters for the
    1M-prediction evaluations this is used on.
    """
    by_score = np.argsort(scores)
    keys_by_score = torch.from_numpy(np.ascontiguousarray(keys[by_score]))
    keys_sorted, by_group = torch.sort(keys_by_score, stable=True)
    return by_score[by_group.numpy()], keys_sorted.numpy()


def _per_group_auc(
    positive: np.ndarray, scores: np.ndarray, keys: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """AUC of every group via tie-averaged within-group rank sums.

    ``keys`` is an int64 group key per sample (None means a single group). Returns
    ``(auc_per_group, size_per_group)`` over the distinct keys, NaN for single-class groups.
    """
    n = scores.shape[0]
    if n == 0:
        return np.full(1, np.nan), np.zeros(1, dtype=np.int64)
    if keys is None:
        order = np.argsort(scores)
        keys_sorted = np.zeros(n, dtype=np.int64)
    else:
        # Every group becomes a contiguous, score-ascending slice.
        order, keys_sorted = _sort_by_group_then_score(scores, keys)
    s_sorted = scores[order]
    pos_sorted = positive[order]

    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(keys_sorted[1:], keys_sorted[:-1], out=new_group[1:])
    codes_sorted = np.cumsum(new_group) - 1
    n_groups = int(codes_sorted[-1]) + 1
    # A run is a maximal block of equal scores inside one group; all its members share the
    # average of the ranks they span.
    new_run = new_group.copy()
    new_run[1:] |= s_sorted[1:] != s_sorted[:-1]

    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_start, n))
    run_id = np.cumsum(new_run) - 1
    run_group = codes_sorted[run_start]

    group_size = np.bincount(codes_sorted, minlength=n_groups)
    group_start = np.flatnonzero(new_group)

    # 1-based rank inside the group, averaged over the tie run (kept small to avoid precision
    # loss in the sums for large inputs).
    run_avg_rank = (run_start - group_start[run_group]) + (run_len + 1) / 2.0
    pos_per_run = np.bincount(run_id, weights=pos_sorted, minlength=run_start.shape[0])
    rank_sum = np.bincount(run_group, weights=pos_per_run * run_avg_rank, minlength=n_groups)
    n_pos = np.bincount(codes_sorted, weights=pos_sorted, minlength=n_groups)
    n_neg = group_size - n_pos

    ok = (n_pos > 0) & (n_neg > 0)
    out = np.full(n_groups, np.nan)
    out[ok] = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return out, group_size


def _prepare_binary(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _to_numpy(labels).reshape(-1)
    s = _to_numpy(scores).reshape(-1).astype(np.float64, copy=False)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    # ``> 0`` treats {0, 1}, {False, True} and {-1, 1} labels alike.
    return (y > 0).astype(np.float64), s


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC (Mann-Whitney with tie-averaged ranks); NaN when only one class is present."""
    positive, s = _prepare_binary(labels, scores)
    per_group, _ = _per_group_auc(positive, s, None)
    return float(per_group[0])


def logloss(labels: Any, probs: Any) -> float:
    """Mean binary cross-entropy, clipped like ``sklearn.metrics.log_loss``.

    scikit-learn builds the two columns ``[1 - p, p]`` and clips each to ``[eps, 1 - eps]`` with
    ``eps`` the machine epsilon of the probabilities' dtype; clipping ``1 - p`` separately (rather
    than taking ``1 - clip(p)``) is what keeps the result identical to it.
    """
    y = _to_numpy(labels).reshape(-1) > 0
    p = _to_numpy(probs).reshape(-1)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    if y.shape != p.shape:
        raise ValueError(f"labels and probs differ in length: {y.shape[0]} vs {p.shape[0]}")
    if p.shape[0] == 0:
        return float("nan")
    eps = np.finfo(p.dtype).eps
    p_pos = np.clip(p, eps, 1 - eps).astype(np.float64)
    p_neg = np.clip(1 - p, eps, 1 - eps).astype(np.float64)
    return float(-np.mean(np.where(y, np.log(p_pos), np.log(p_neg))))


def group_auc(labels: Any, scores: Any, groups: Any) -> tuple[float, float]:
    """Return ``(gauc, uauc)`` over groups (typically users).

    gAUC weights each group's AUC by its number of samples, UAUC is the plain mean. Groups whose
    samples are all of one class have no AUC and are left out of both.
    """
    positive, s = _prepare_binary(labels, scores)
    g = _to_numpy(groups).reshape(-1)
    if g.shape != s.shape:
        raise ValueError(f"groups and scores differ in length: {g.shape[0]} vs {s.shape[0]}")
    if s.shape[0] == 0:
        return float("nan"), float("nan")
    if g.dtype.kind in "biu":
        keys = g.astype(np.int64, copy=False)
    else:
        # Strings or other objects: dense integer codes first (slower, but only a sort).
        keys = np.unique(g, return_inverse=True)[1].reshape(-1).astype(np.int64, copy=False)
    per_group, size = _per_group_auc(positive, s, keys)
    ok = ~np.isnan(per_group)
    if not ok.any():
        return float("nan"), float("nan")
    gauc = float(np.sum(per_group[ok] * size[ok]) / np.sum(size[ok]))
    uauc = float(np.mean(per_group[ok]))
    return gauc, uauc


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp only ever sees non-positive arguments, so it cannot overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def ctr_metrics(labels: Any, logits: Any, groups: Any = None) -> dict[str, float]:
    """AUC and logloss (plus gAUC/UAUC when ``groups`` is given) from raw logits.

    AUC is computed on the logits themselves: the sigmoid is monotone, but in float64 it
    saturates to exactly 1.0 for logits above ~37 and would create spurious ties there.
    """
    x = _to_numpy(logits).reshape(-1).astype(np.float64)
    out = {"auc": auc(labels, x), "logloss": logloss(labels, _sigmoid(x))}
    if groups is not None:
        out["gauc"], out["uauc"] = group_auc(labels, x, groups)
    return out


# --------------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """0-based rank of each target among the non-excluded items of its row.

    An item ranks ahead of a target when its score is higher, or equal with a lower item index.
    Excluded items (e.g. the user's history) never rank ahead; other targets of the same row do.
    Padded targets (``-1``) get rank ``N`` so that they never count as a hit.
    """
    if scores.dim() != 2 or targets.dim() != 2 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected scores (B, N) and targets (B, T), got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    b, n = scores.shape
    t = targets.shape[1]
    targets = targets.to(device=scores.device, dtype=torch.long)
    padded = targets < 0
    safe_targets = targets.clamp(min=0)
    target_scores = scores.gather(1, safe_targets)

    item_idx = torch.arange(n, device=scores.device)
    s = scores.unsqueeze(1)  # (B, 1, N)
    keep = None if exclude is None else ~exclude.to(device=scores.device, dtype=torch.bool).unsqueeze(1)

    ranks = torch.empty((b, t), dtype=torch.long, device=scores.device)
    # Chunk over the target axis only, so that (B, T_chunk, N) stays within the memory budget.
    chunk = max(1, _RANK_CHUNK_ELEMENTS // max(1, b * n))
    for lo in range(0, t, chunk):
        hi = min(t, lo + chunk)
        st = target_scores[:, lo:hi].unsqueeze(2)  # (B, Tc, 1)
        tt = safe_targets[:, lo:hi].unsqueeze(2)
        ahead = s > st
        ahead |= (s == st) & (item_idx < tt)
        if keep is not None:
            ahead &= keep
        ranks[:, lo:hi] = ahead.sum(dim=2)
    ranks[padded] = n
    return ranks


def _idcg_table(max_len: int) -> np.ndarray:
    """``table[m]`` = ideal DCG with ``m`` relevant items (``table[0] = 0``)."""
    gains = 1.0 / np.log2(np.arange(max_len, dtype=np.float64) + 2.0)
    return np.concatenate([[0.0], np.cumsum(gains)])


def ranking_metrics(ranks: Any, valid: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-row HR, NDCG, Recall, Precision, MAP at every cutoff in ``ks``, and MRR.

    ``ranks`` (B, T) are 0-based ranks of the row's targets, ``valid`` (B, T) marks real (not
    padded) targets. Rows without any valid target get NaN everywhere.
    """
    r = _to_numpy(ranks).astype(np.int64)
    v = _to_numpy(valid).astype(bool)
    if r.ndim == 1:
        r, v = r[:, None], v[:, None]
    if r.shape != v.shape:
        raise ValueError(f"ranks {r.shape} and valid {v.shape} differ in shape")
    b, t = r.shape
    n_valid = v.sum(axis=1)
    empty = n_valid == 0

    # Invalid targets get a rank beyond every cutoff and every real rank.
    sentinel = int(max(ks, default=0)) + (int(r.max()) if r.size else 0) + 1
    r = np.where(v, r, sentinel)
    discount = 1.0 / np.log2(r + 2.0)
    idcg = _idcg_table(max(max(ks, default=1), 1))

    # For MAP: number of valid targets ranked at or before each target. Offsetting each row by
    # its index keeps rows apart in one flat sort, so one searchsorted answers all rows.
    if r.size:
        offset = (np.arange(b, dtype=np.int64) * (sentinel + 1))[:, None]
        keyed = (r + offset).reshape(-1)
        flat_sorted = np.sort(keyed)
        n_at_or_before = (
            np.searchsorted(flat_sorted, keyed, side="right").reshape(b, t)
            - (np.arange(b, dtype=np.int64) * t)[:, None]
        )
    else:
        n_at_or_before = np.zeros_like(r)

    with np.errstate(divide="ignore", invalid="ignore"):
        out: dict[str, np.ndarray] = {}
        for k in ks:
            hit = r < k
            n_hit = hit.sum(axis=1).astype(np.float64)
            denom = np.minimum(k, n_valid)
            out[f"hr@{k}"] = (n_hit > 0).astype(np.float64)
            out[f"ndcg@{k}"] = np.where(hit, discount, 0.0).sum(axis=1) / idcg[denom]
            out[f"recall@{k}"] = n_hit / n_valid
            out[f"precision@{k}"] = n_hit / k
            precision_at_hit = np.where(hit, n_at_or_before / (r + 1.0), 0.0)
            out[f"map@{k}"] = precision_at_hit.sum(axis=1) / denom
        best = r.min(axis=1) if t else np.full(b, sentinel)
        out["mrr"] = 1.0 / (best + 1.0)
    for values in out.values():
        values[empty] = np.nan
    return out


class TopKAccumulator:
    """Collects per-row ranking metrics across evaluation batches.

    Values are kept per row and averaged only in ``result``; batch boundaries therefore have no
    effect on the numbers.
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS) -> None:
        self.ks = tuple(int(k) for k in ks)
        self._values: list[dict[str, np.ndarray]] = []
        self._groups: list[np.ndarray] = []
        self._has_group: list[np.ndarray] = []

    def add(
        self,
        scores: torch.Tensor,
        targets: torch.Tensor,
        exclude: torch.Tensor | None = None,
        groups: Sequence[Any] | np.ndarray | None = None,
    ) -> None:
        ranks = target_ranks(scores, targets, exclude)
        valid = targets >= 0
        self._values.append(ranking_metrics(ranks, valid, self.ks))
        b = ranks.shape[0]
        if groups is None:
            self._groups.append(np.full(b, ""))
            self._has_group.append(np.zeros(b, dtype=bool))
        else:
            labels = _to_numpy(groups).reshape(-1).astype(str)
            if labels.shape[0] != b:
                raise ValueError(f"got {labels.shape[0]} group labels for {b} rows")
            self._groups.append(labels)
            self._has_group.append(np.ones(b, dtype=bool))

    def _stacked(self) -> dict[str, np.ndarray]:
        keys = self._keys()
        if not self._values:
            return {key: np.zeros(0) for key in keys}
        return {key: np.concatenate([v[key] for v in self._values]) for key in keys}

    def _keys(self) -> list[str]:
        keys = [f"{m}@{k}" for k in self.ks for m in ("hr", "ndcg", "recall", "precision", "map")]
        return keys + ["mrr"]

    @staticmethod
    def _summarise(values: dict[str, np.ndarray], codes: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
        """Per-code NaN-ignoring means, plus "n" (rows with at least one valid target)."""
        out: dict[str, np.ndarray] = {}
        for key, val in values.items():
            ok = ~np.isnan(val)
            counts = np.bincount(codes[ok], minlength=n_groups)
            sums = np.bincount(codes[ok], weights=val[ok], minlength=n_groups)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[key] = sums / counts
        # Every metric is NaN on exactly the rows without a valid target, so MRR's count is "n".
        out["n"] = np.bincount(codes[~np.isnan(values["mrr"])], minlength=n_groups).astype(np.float64)
        return out

    def result(self) -> dict[str, float]:
        """Mean of every metric over rows (rows with no valid target are ignored).

        ``n`` is the number of rows that entered the means, i.e. rows with at least one target.
        """
        values = self._stacked()
        rows = next(iter(values.values())).shape[0]
        summary = self._summarise(values, np.zeros(rows, dtype=np.int64), 1)
        return {key: float(val[0]) for key, val in summary.items()}

    def result_by_group(self) -> dict[str, dict[str, float]]:
        """Same as ``result`` for every group label given to ``add`` (keys are ``str(label)``)."""
        if not self._values:
            return {}
        has_group = np.concatenate(self._has_group)
        labels = np.concatenate(self._groups)[has_group]
        if labels.shape[0] == 0:
            return {}
        values = {key: val[has_group] for key, val in self._stacked().items()}
        names, codes = np.unique(labels, return_inverse=True)
        summary = self._summarise(values, codes.reshape(-1), names.shape[0])
        return {
            str(name): {key: float(val[i]) for key, val in summary.items()} for i, name in enumerate(names)
        }

    def reset(self) -> None:
        self._values.clear()
        self._groups.clear()
        self._has_group.clear()
