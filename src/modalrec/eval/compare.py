"""Comparisons of runs: metrics per bucket of samples, summaries over seeds, and gains of one variant over another
paired seed by seed (the same seed: the same initial values of the shared modules and the same batches), and the
between-user AUC (how well a model ranks users against each other, the part of AUC that GAUC and UAUC leave out).

    per_seed = {variant: {seed: {bucket: {"gauc": ..., ...}}}}
    gains(per_seed, {"GIE (with - without)": ("mmbee", "mmbee-no-gie")})  -> {name: {"seeds": [...], bucket: summary}}
    overall_gains(runs, pairs)  -> the same on each run's whole test split (metrics.json's per-seed test metrics)
"""

from __future__ import annotations

import numpy as np

from .metrics import auc, ctr_metrics

KEYS = ("auc", "uauc", "gauc", "logloss")


def summary(values: list[float | None]) -> dict:
    """{mean, std (ddof 1; 0 for one value), runs} of a metric over seeds; None/NaN runs are left out of the mean."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    return {"mean": float(ok.mean()) if len(ok) else None,
            "std": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0,
            "runs": [None if not np.isfinite(v) else float(v) for v in arr]}


def over_seeds(by_seed: dict[int, dict[str, float]]) -> dict:
    """seed -> bucket -> value  ->  bucket -> {mean, std, runs}, for the buckets every seed has (a bucket without
    positives in one run is left out, not averaged over fewer seeds)."""
    rows = list(by_seed.values())
    return {b: summary([r[b] for r in rows]) for b in (rows[0] if rows else {}) if all(b in r for r in rows)}


def gains(per_seed: dict, pairs: dict[str, tuple[str, str]], metric: str = "gauc") -> dict:
    """Per-bucket `metric` gain of `with_` over `without` for each pair name -> (with_, without), seed by seed over
    the seeds both ran: mean, std and runs. `per_seed`: variant -> seed -> bucket -> metrics."""
    out = {}
    for name, (with_, without) in pairs.items():
        if with_ not in per_seed or without not in per_seed:
            continue
        w, wo = per_seed[with_], per_seed[without]
        seeds = sorted(set(w) & set(wo))
        by_bucket = over_seeds({x: {b: r[metric] - wo[x][b][metric] for b, r in w[x].items() if b in wo[x]}
                                for x in seeds})
        if by_bucket:
            out[name] = {"seeds": seeds} | by_bucket
    return out


def overall_gains(runs: dict, pairs: dict[str, tuple[str, str]], keys=KEYS) -> dict:
    """Gains of `with_` over `without` on the whole test split for each metric of `keys`, seed by seed over the
    seeds both ran (from each run's `seeds` and per-seed test metrics `test[k]["runs"]`): mean, std and runs."""
    out = {}
    for name, (with_, without) in pairs.items():
        if with_ not in runs or without not in runs:
            continue
        w, wo = runs[with_], runs[without]
        seeds = sorted(set(w["seeds"]) & set(wo["seeds"]))
        per = {x: {k: w["test"][k]["runs"][w["seeds"].index(x)] - wo["test"][k]["runs"][wo["seeds"].index(x)]
                   for k in keys} for x in seeds}
        if per:
            out[name] = {"seeds": seeds} | over_seeds(per)
    return out


def between_user_auc(labels: np.ndarray, logits: np.ndarray, users: np.ndarray) -> float:
    """AUC of each sample scored by its user's mean logit: how well a model ranks the users against each other
    (which users convert at all), the part of AUC that GAUC and UAUC leave out."""
    n = np.bincount(users)
    mean = (np.bincount(users, weights=logits) / np.maximum(n, 1))[users]
    return float(auc(labels, mean))


def bucket_metrics(labels: np.ndarray, logits: np.ndarray, users: np.ndarray, masks: dict[str, np.ndarray],
                   keys=KEYS) -> dict:
    """ctr metrics of each bucket of samples (`masks`: name -> boolean mask) that has positives and negatives,
    with its size and positives."""
    out = {}
    for name, m in masks.items():
        if m.sum() and 0 < labels[m].sum() < m.sum():
            r = ctr_metrics(labels[m], logits[m], users[m])
            out[name] = {k: r[k] for k in keys} | {"n": int(m.sum()), "positives": int(labels[m].sum())}
    return out
