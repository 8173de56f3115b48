"""HTML reports comparing finished runs.

A run directory (``runs/NAME/``) holds the resolved ``config.yaml`` and the ``metrics.json`` written by the
trainer (per-split metric summaries ``{"mean", "std", "runs"}``, per-group test metrics, timing, per-seed
training history and best epochs). :func:`write_report` turns one or more such directories into a single
self-contained HTML page with

* a header describing every run (name, model, dataset, task, seeds, a *semi-synthetic* badge),
* leaderboards of test and validation metrics (mean ± std, best per column in bold, sorted by the monitor
  metric) and a table of timing figures,
* learning curves (train loss and the monitored validation metric per epoch, mean over seeds with a min–max
  band),
* bar charts of the test metrics (with std error bars; small multiples when scales differ),
* a per-group section (rows = runs, columns = group x metric, one bar chart per group) when the runs
  report ``groups.test``.

Plots are PNG files written next to the page (``<stem>_plots/``, or ``RUN_DIR/plots/`` for
``RUN_DIR/report.html``) and referenced by relative path. :func:`load_run` reads one run directory.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import yaml

__all__ = ["load_run", "lower_is_better", "write_report"]

# timing key -> (column header, lower is better, decimals)
TIMING_COLUMNS: dict[str, tuple[str, bool, int]] = {
    "train_samples_per_s": ("train samples/s", False, 0),
    "epoch_seconds": ("epoch s", True, 2),
    "eval_seconds": ("eval s", True, 2),
    "peak_rss_mb": ("peak RSS MB", True, 0),
}

_LOWER_IS_BETTER_EXACT = {"rmse", "mse", "mae"}


def lower_is_better(metric: str) -> bool:
    """True for metrics where smaller is better: ``logloss`` and anything containing "loss" (and rmse/mae)."""
    m = metric.lower()
    return "loss" in m or m in _LOWER_IS_BETTER_EXACT


# ---------------------------------------------------------------------------------------------- loading
def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read ``config.yaml`` and ``metrics.json`` of a run directory.

    Returns ``{"dir": Path, "config": dict, "metrics": dict}``. Raises :class:`FileNotFoundError` naming the
    missing file when the directory or one of the two files does not exist.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    metrics_path = run_dir / "metrics.json"
    config_path = run_dir / "config.yaml"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found: run '{run_dir.name}' has no metrics.json")
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: run '{run_dir.name}' has no config.yaml")
    with metrics_path.open(encoding="utf-8") as f:
        metrics = json.load(f)
    with config_path.open(encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(metrics, dict):
        raise TypeError(f"{metrics_path}: expected a JSON object, got {type(metrics).__name__}")
    if not isinstance(config, dict):
        raise TypeError(f"{config_path}: expected a mapping, got {type(config).__name__}")
    return {"dir": run_dir, "config": config, "metrics": metrics}


def _find_key(obj: Any, key: str, skip: tuple[str, ...] = ("history",)) -> bool:
    """True if a (nested) dict anywhere in ``obj`` maps ``key`` to a truthy value."""
    if isinstance(obj, dict):
        if obj.get(key):
            return True
        return any(_find_key(v, key, skip) for k, v in obj.items() if k not in skip)
    if isinstance(obj, list):
        return any(_find_key(v, key, skip) for v in obj)
    return False


def _describe(run: dict[str, Any]) -> dict[str, Any]:
    """Flatten the bits of config/metrics shown in the header, with fallbacks for missing keys."""
    cfg, met = run["config"], run["metrics"]
    model_cfg = cfg.get("model")
    data_cfg = cfg.get("data")
    task_cfg = cfg.get("task")
    model = met.get("model") or (model_cfg.get("name") if isinstance(model_cfg, dict) else model_cfg)
    dataset = met.get("dataset")
    if not dataset:
        if isinstance(data_cfg, dict):
            dataset = data_cfg.get("name") or data_cfg.get("dataset") or data_cfg.get("path")
        else:
            dataset = data_cfg
    task = met.get("task") or (task_cfg.get("name") if isinstance(task_cfg, dict) else task_cfg)
    seeds = met.get("seeds", cfg.get("seeds"))
    return {
        "name": str(met.get("name") or cfg.get("name") or run["dir"].name),
        "model": "" if model is None else str(model),
        "dataset": "" if dataset is None else str(dataset),
        "task": "" if task is None else str(task),
        "seeds": seeds if isinstance(seeds, list) else ([] if seeds is None else [seeds]),
        "monitor": met.get("monitor") or "",
        "best_epoch": met.get("best_epoch"),
        "semi_synthetic": _find_key(data_cfg, "semi_synthetic") or _find_key(met, "semi_synthetic"),
    }


# ---------------------------------------------------------------------------------------------- numbers
def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _stat(entry: Any) -> tuple[float | None, float | None, int]:
    """(mean, std, number of runs) of a metric summary; accepts ``{"mean","std","runs"}`` or a bare number."""
    if isinstance(entry, dict):
        runs = [v for v in (_num(r) for r in entry.get("runs") or []) if v is not None]
        mean = _num(entry.get("mean"))
        if mean is None and runs:
            mean = float(np.mean(runs))
        std = _num(entry.get("std"))
        if std is None and len(runs) > 1:
            std = float(np.std(runs))
        return mean, std, len(runs) if runs else 1
    if isinstance(entry, list):
        return _stat({"runs": entry})
    return _num(entry), None, 1


def _fmt(mean: float | None, std: float | None, n: int, decimals: int = 4) -> str:
    if mean is None:
        return "—"
    s = f"{mean:,.{decimals}f}" if abs(mean) >= 1000 else f"{mean:.{decimals}f}"
    if std is not None and (n > 1 or std > 0):
        s += f" ± {std:.{decimals}f}" if decimals else f" ± {std:,.0f}"
    return s


def _best_mask(values: list[float | None], lower: bool) -> list[bool]:
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present or len(values) < 2:
        return [False] * len(values)
    best = min(present) if lower else max(present)
    mask = [v is not None and math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12) for v in values]
    return [False] * len(values) if all(mask) else mask  # nothing stands out when every run ties


def _union_keys(dicts: list[dict]) -> list[str]:
    out: list[str] = []
    for d in dicts:
        for k in d if isinstance(d, dict) else ():
            if k not in out:
                out.append(k)
    return out


def _split(run: dict[str, Any], split: str) -> dict[str, Any]:
    d = run["metrics"].get(split)
    return d if isinstance(d, dict) else {}


def _groups(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    g = run["metrics"].get("groups")
    g = g.get("test") if isinstance(g, dict) else None
    if not isinstance(g, dict):
        return {}
    return {str(k): v for k, v in g.items() if isinstance(v, dict) and v}


def _sort_runs(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Runs ordered best-first by the monitor metric on test (falling back to valid)."""
    monitors = [r["info"]["monitor"] for r in runs if r["info"]["monitor"]]
    monitor = max(set(monitors), key=monitors.count) if monitors else ""
    if not monitor:
        return list(runs), ""
    sign = 1.0 if lower_is_better(monitor) else -1.0

    def key(r: dict[str, Any]) -> tuple[int, float]:
        for split in ("test", "valid"):
            mean = _stat(_split(r, split).get(monitor))[0]
            if mean is not None:
                return (0 if split == "test" else 1, sign * mean)
        return (2, 0.0)

    return sorted(runs, key=key), monitor


# ---------------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
  padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.name,th.name{text-align:left}
tbody tr:nth-child(even){background:#fafafa}
.badge{display:inline-block;background:#f0ad4e;color:#fff;border-radius:3px;padding:0 .4em;font-size:.8em;
  margin-left:.4em;vertical-align:middle}
.monitor{color:#06c}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
details pre{background:#f7f7f7;padding:.6em;font-size:.85em;overflow-x:auto}
.note{color:#666;font-size:.85em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cell(mean: float | None, std: float | None, n: int, bold: bool, decimals: int = 4) -> str:
    text = _e(_fmt(mean, std, n, decimals))
    return f"<td><b>{text}</b></td>" if bold else f"<td>{text}</td>"


def _metric_table(runs: list[dict[str, Any]], split: str, monitor: str) -> str:
    per_run = [_split(r, split) for r in runs]
    metrics = _union_keys(per_run)
    if not metrics:
        return f'<p class="note">No {_e(split)} metrics.</p>'
    stats = [[_stat(d.get(m)) if m in d else (None, None, 0) for m in metrics] for d in per_run]
    bold_cols = [
        _best_mask([stats[i][j][0] for i in range(len(runs))], lower_is_better(m))
        for j, m in enumerate(metrics)
    ]
    head = "".join(
        f'<th{" class=monitor" if m == monitor else ""} title="{"lower" if lower_is_better(m) else "higher"} '
        f'is better">{_e(m)} {"↓" if lower_is_better(m) else "↑"}</th>'
        for m in metrics
    )
    rows = []
    for i, r in enumerate(runs):
        cells = "".join(_cell(*stats[i][j], bold_cols[j][i]) for j in range(len(metrics)))
        rows.append(f'<tr><td class="name">{_e(r["info"]["name"])}</td>{cells}</tr>')
    return (
        f'<table class="metrics {_e(split)}"><thead><tr><th class="name">run</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _timing_table(runs: list[dict[str, Any]]) -> str:
    timings = [
        r["metrics"].get("timing") if isinstance(r["metrics"].get("timing"), dict) else {} for r in runs
    ]
    keys = [k for k in TIMING_COLUMNS if any(k in t for t in timings)]
    keys += [k for k in _union_keys(timings) if k not in TIMING_COLUMNS]
    if not keys:
        return '<p class="note">No timing information recorded.</p>'
    head, cols = [], []
    for k in keys:
        label, lower, dec = TIMING_COLUMNS.get(k, (k, lower_is_better(k) or "second" in k, 3))
        head.append(f"<th>{_e(label)} {'↓' if lower else '↑'}</th>")
        stats = [_stat(t.get(k)) if k in t else (None, None, 0) for t in timings]
        cols.append((stats, _best_mask([s[0] for s in stats], lower), dec))
    rows = []
    for i, r in enumerate(runs):
        cells = "".join(_cell(*stats[i], bold[i], dec) for stats, bold, dec in cols)
        rows.append(f'<tr><td class="name">{_e(r["info"]["name"])}</td>{cells}</tr>')
    return (
        f'<table class="timing"><thead><tr><th class="name">run</th>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _group_table(runs: list[dict[str, Any]]) -> tuple[str, list[str]]:
    per_run = [_groups(r) for r in runs]
    group_names = _union_keys(per_run)
    if not group_names:
        return "", []
    columns: list[tuple[str, str]] = []
    for g in group_names:
        for m in _union_keys([d.get(g, {}) for d in per_run]):
            columns.append((g, m))
    top = "".join(
        f'<th colspan="{sum(1 for gg, _ in columns if gg == g)}">{_e(g)}</th>'
        for g in group_names
        if any(gg == g for gg, _ in columns)
    )
    sub = "".join(f"<th>{_e(m)} {'↓' if lower_is_better(m) else '↑'}</th>" for _, m in columns)
    stats = [
        [_stat(d.get(g, {}).get(m)) if m in d.get(g, {}) else (None, None, 0) for g, m in columns]
        for d in per_run
    ]
    bold = [
        _best_mask([stats[i][j][0] for i in range(len(runs))], lower_is_better(m))
        for j, (_, m) in enumerate(columns)
    ]
    rows = []
    for i, r in enumerate(runs):
        cells = "".join(_cell(*stats[i][j], bold[j][i]) for j in range(len(columns)))
        rows.append(f'<tr><td class="name">{_e(r["info"]["name"])}</td>{cells}</tr>')
    table = (
        '<table class="groups"><thead>'
        f'<tr><th class="name" rowspan="2">run</th>{top}</tr><tr>{sub}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return table, group_names


def _run_header(run: dict[str, Any]) -> str:
    info = run["info"]
    badge = '<span class="badge">semi-synthetic</span>' if info["semi_synthetic"] else ""
    seeds = ", ".join(str(s) for s in info["seeds"]) or "—"
    fields = [
        ("model", info["model"]),
        ("dataset", info["dataset"]),
        ("task", info["task"]),
        ("seeds", seeds),
        ("monitor", info["monitor"]),
    ]
    if isinstance(info["best_epoch"], list) and info["best_epoch"]:
        fields.append(("best epoch", ", ".join(str(b) for b in info["best_epoch"])))
    items = " · ".join(f"{_e(k)}: <b>{_e(v or '—')}</b>" for k, v in fields)
    cfg_text = yaml.safe_dump(run["config"], sort_keys=False, default_flow_style=False, allow_unicode=True)
    return (
        f"<li><b>{_e(info['name'])}</b>{badge}<br><span class=meta>{items}</span>"
        f"<details><summary class=meta>config ({_e(run['dir'])})</summary><pre>{_e(cfg_text)}</pre></details></li>"
    )


def _img(path: Path | None, base: Path, alt: str) -> str:
    if path is None:
        return ""
    rel = Path(os.path.relpath(path, base)).as_posix()
    return f'<p><img src="{_e(rel)}" alt="{_e(alt)}"></p>'


# ---------------------------------------------------------------------------------------------- plots
def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _curve(history: Any, getter) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-epoch mean/min/max of ``getter(epoch_record)`` across seeds."""
    if not isinstance(history, list) or not history:
        return None
    seeds = history if all(isinstance(h, list) for h in history) else [history]
    by_epoch: dict[int, list[float]] = {}
    for seed_hist in seeds:
        for pos, rec in enumerate(seed_hist):
            if not isinstance(rec, dict):
                continue
            v = _num(getter(rec))
            if v is None:
                continue
            ep = rec.get("epoch", pos + 1)
            ep = int(ep) if _num(ep) is not None else pos + 1
            by_epoch.setdefault(ep, []).append(v)
    if not by_epoch:
        return None
    eps = np.array(sorted(by_epoch))
    vals = [np.array(by_epoch[e]) for e in eps]
    return (
        eps,
        np.array([v.mean() for v in vals]),
        np.array([v.min() for v in vals]),
        np.array([v.max() for v in vals]),
    )


def _plot_learning_curves(runs: list[dict[str, Any]], colors: list, path: Path) -> Path | None:
    monitors = {r["info"]["monitor"] for r in runs if r["info"]["monitor"]}
    panels = [("train loss", lambda r: lambda rec: rec.get("train_loss"))]
    panels.append(
        (
            f"valid {next(iter(monitors))}" if len(monitors) == 1 else "valid monitor metric",
            lambda r: (
                lambda rec, m=r["info"]["monitor"]: (
                    (rec.get("valid") or {}).get(m) if isinstance(rec.get("valid"), dict) else None
                )
            ),
        )
    )
    curves = [[_curve(r["metrics"].get("history"), make(r)) for r in runs] for _, make in panels]
    if not any(c is not None for panel in curves for c in panel):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (title, _), panel in zip(axes, panels, curves):
        for r, color, c in zip(runs, colors, panel):
            if c is None:
                continue
            eps, mean, lo, hi = c
            label = r["info"]["name"] + (
                f" ({r['info']['monitor']})" if len(monitors) > 1 and ax is axes[1] else ""
            )
            ax.plot(eps, mean, marker="o", ms=3, color=color, label=label)
            if np.any(hi > lo):
                ax.fill_between(eps, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
    fig.suptitle("Learning curves (mean over seeds, band = min–max)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _needs_small_multiples(means: dict[str, list[float]]) -> bool:
    """Different scales (max/min magnitude ratio > 3, or values outside [0, 1]) -> one panel per metric."""
    mags = [max(abs(v) for v in vs) for vs in means.values() if vs]
    if len(mags) <= 1:
        return False
    if any(m > 1.0 for m in mags):
        return True
    positive = [m for m in mags if m > 0]
    return bool(positive) and max(positive) / min(positive) > 3.0


def _plot_bars(
    names: list[str], colors: list, table: list[dict[str, Any]], metrics: list[str], title: str, path: Path
) -> Path | None:
    """``table[i][metric]`` is the metric summary of run i; one bar per run per metric, std error bars."""
    stats = {m: [_stat(t.get(m)) if m in t else (None, None, 0) for t in table] for m in metrics}
    metrics = [m for m in metrics if any(s[0] is not None for s in stats[m])]
    # drop runs with nothing to show (e.g. a run without this group); colours stay those of the run
    keep = [i for i in range(len(names)) if any(stats[m][i][0] is not None for m in metrics)]
    names, colors = [names[i] for i in keep], [colors[i] for i in keep]
    stats = {m: [stats[m][i] for i in keep] for m in metrics}
    if not metrics:
        return None
    means = {m: [s[0] for s in stats[m] if s[0] is not None] for m in metrics}
    n = len(names)
    width = 0.8 / max(n, 1)

    def bars(ax, ms: list[str], label: bool) -> None:
        x = np.arange(len(ms))
        for i, (name, color) in enumerate(zip(names, colors)):
            vals = [stats[m][i][0] for m in ms]
            errs = [stats[m][i][1] or 0.0 for m in ms]
            h = [np.nan if v is None else v for v in vals]
            ax.bar(
                x + (i - (n - 1) / 2) * width,
                h,
                width,
                yerr=errs,
                capsize=3,
                color=color,
                label=name if label else None,
                error_kw={"elinewidth": 1},
            )
        ax.set_xticks(x)
        ax.set_xticklabels(
            [f"{m} {'↓' if lower_is_better(m) else '↑'}" for m in ms],
            rotation=30 if len(ms) > 4 else 0,
            ha="right" if len(ms) > 4 else "center",
        )
        ax.grid(axis="y", alpha=0.3)

    if _needs_small_multiples(means):
        cols = min(4, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.4, 2.8 * rows + 0.8), squeeze=False)
        for k, m in enumerate(metrics):
            ax = axes[k // cols][k % cols]
            bars(ax, [m], label=(k == 0))
            ax.set_xticks([])
            ax.set_title(f"{m} {'↓' if lower_is_better(m) else '↑'}", fontsize=10)
            for container in ax.containers:
                if hasattr(container, "datavalues"):
                    ax.bar_label(container, fmt="%.4g", fontsize=7, padding=2)
            ax.margins(y=0.15)
        for k in range(len(metrics), rows * cols):
            axes[k // cols][k % cols].axis("off")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(n, 5), fontsize=8, frameon=False)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout(rect=(0, 0.06 + 0.02 * ((n - 1) // 5), 1, 1))
    else:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(metrics) * max(n, 2) * 0.6 + 2), 4.2))
        bars(ax, metrics, label=True)
        ax.set_title(title, fontsize=11)
        ax.legend(fontsize=8)
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "group"


# ---------------------------------------------------------------------------------------------- report
def _plots_dir(out: Path, run_dirs: list[Path]) -> Path:
    if out.name == "report.html" and (
        (out.parent / "metrics.json").is_file() or any(out.parent.resolve() == d.resolve() for d in run_dirs)
    ):
        return out.parent / "plots"
    return out.parent / f"{out.stem}_plots"


def write_report(run_dirs: list[Path], out: Path, title: str | None = None) -> Path:
    """Write an HTML report comparing ``run_dirs`` to ``out`` (plots as PNGs beside it); returns ``out``."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("write_report needs at least one run directory")
    out = Path(out)
    runs = [load_run(d) for d in run_dirs]
    for r in runs:
        r["info"] = _describe(r)
    runs, monitor = _sort_runs(runs)
    names = [r["info"]["name"] for r in runs]
    colors = _colors(len(runs))

    out.parent.mkdir(parents=True, exist_ok=True)
    plots = _plots_dir(out, run_dirs)
    plots.mkdir(parents=True, exist_ok=True)
    base = out.parent

    if title is None:
        title = (
            "modalrec report: " + ", ".join(names)
            if len(names) <= 4
            else f"modalrec report: {len(names)} runs"
        )
    now = datetime.now().astimezone().isoformat(timespec="seconds")

    curves_png = _plot_learning_curves(runs, colors, plots / "learning_curves.png")
    test_tables = [_split(r, "test") for r in runs]
    test_metrics = _union_keys(test_tables)
    bars_png = _plot_bars(
        names,
        colors,
        test_tables,
        test_metrics,
        "Test metrics (mean ± std over seeds)",
        plots / "test_metrics.png",
    )
    group_table, group_names = _group_table(runs)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Generated {_e(now)} · {len(runs)} run(s)'
        + (f' · sorted by <span class="monitor">{_e(monitor)}</span>' if monitor else "")
        + "</p>",
        "<h2>Runs</h2><ul>" + "".join(_run_header(r) for r in runs) + "</ul>",
        "<h2>Leaderboard</h2>",
        '<p class="note">mean ± std over seeds; best per column in bold (↑ higher is better, ↓ lower is better).</p>',
        "<h3>Test</h3>",
        _metric_table(runs, "test", monitor),
        "<h3>Validation</h3>",
        _metric_table(runs, "valid", monitor),
        "<h3>Timing</h3>",
        _timing_table(runs),
        "<h2>Learning curves</h2>",
        _img(curves_png, base, "learning curves") or '<p class="note">No training history recorded.</p>',
        "<h2>Test metrics</h2>",
        _img(bars_png, base, "test metrics") or '<p class="note">No test metrics.</p>',
    ]
    if group_names:
        parts += ["<h2>Per-group test metrics</h2>", group_table]
        per_run = [_groups(r) for r in runs]
        for k, g in enumerate(group_names):
            tables = [d.get(g, {}) for d in per_run]
            png = _plot_bars(
                names,
                colors,
                tables,
                _union_keys(tables),
                f"Group: {g}",
                plots / f"group_{k:02d}_{_slug(g)}.png",
            )
            if png is not None:
                parts += [f"<h3>{_e(g)}</h3>", _img(png, base, f"group {g}")]
    parts.append("</body></html>")
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return out
