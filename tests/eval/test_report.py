"""Tests for modalrec.eval.report: HTML run reports with leaderboards and PNG plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from modalrec.eval.report import load_run, lower_is_better, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stat(runs: list[float]) -> dict:
    mean = sum(runs) / len(runs)
    std = (sum((r - mean) ** 2 for r in runs) / len(runs)) ** 0.5
    return {"mean": mean, "std": std, "runs": runs}


def _history(n_seeds: int, n_epochs: int, monitor: str, start: float) -> list[list[dict]]:
    return [
        [
            {
                "epoch": e + 1,
                "train_loss": 0.7 - 0.05 * e - 0.01 * s,
                "lr": 0.001,
                "seconds": 3.2,
                "valid": {monitor: start + 0.02 * e + 0.003 * s, "logloss": 0.6 - 0.01 * e},
            }
            for e in range(n_epochs - (s % 2))  # seeds stop at different epochs (early stopping)
        ]
        for s in range(n_seeds)
    ]


def _make_run(root: Path, name: str, metrics: dict, config: dict | None = None) -> Path:
    d = root / "runs" / name
    d.mkdir(parents=True)
    cfg = config or {
        "data": {"name": metrics["dataset"]},
        "task": {"name": metrics["task"]},
        "model": {"name": metrics["model"], "params": {"embed_dim": 16}},
        "train": {"epochs": 5, "lr": 0.001},
        "seeds": metrics["seeds"],
        "name": name,
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (d / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return d


def _ctr_metrics(name: str, model: str, auc: list[float], logloss: list[float]) -> dict:
    return {
        "name": name,
        "model": model,
        "task": "ctr",
        "dataset": "movielens-latest-small",
        "monitor": "auc",
        "seeds": [0, 1, 2],
        "valid": {"auc": _stat([a - 0.01 for a in auc]), "logloss": _stat(logloss)},
        "test": {
            "auc": _stat(auc),
            "gauc": _stat([a - 0.05 for a in auc]),
            "uauc": _stat([a - 0.06 for a in auc]),
            "logloss": _stat(logloss),
        },
        "timing": {
            "train_samples_per_s": _stat([12000.0, 12500.0, 11800.0]),
            "epoch_seconds": _stat([3.1, 3.0, 3.3]),
            "eval_seconds": _stat([0.4, 0.5, 0.4]),
            "peak_rss_mb": _stat([812.0, 815.0, 810.0]),
        },
        "history": _history(3, 5, "auc", 0.7),
        "best_epoch": [3, 4, 3],
    }


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    # CTR run: wins on auc, loses on logloss
    ctr = _make_run(
        tmp_path, "din-ml", _ctr_metrics("din-ml", "din", [0.81, 0.812, 0.808], [0.52, 0.53, 0.51])
    )
    # second CTR-like run with <&> in its name (escaping), groups, semi-synthetic flag, best logloss
    other = _ctr_metrics("deepfm <ml> & co", "deepfm", [0.79, 0.80, 0.795], [0.40, 0.41, 0.405])
    other["semi_synthetic"] = True
    other["groups"] = {
        "test": {
            "conversation-only": {"hr@3": _stat([0.31, 0.33]), "ndcg@3": _stat([0.21, 0.22])},
            "both": {"hr@3": _stat([0.45, 0.47]), "ndcg@3": _stat([0.35, 0.36])},
        }
    }
    grouped = _make_run(tmp_path, "deepfm-ml", other)
    return [ctr, grouped]


def _referenced_pngs(html_text: str, base: Path) -> list[Path]:
    srcs = re.findall(r'<img src="([^"]+)"', html_text)
    return [base / s for s in srcs]


def test_write_report_contents(runs: list[Path], tmp_path: Path) -> None:
    out = write_report(runs, tmp_path / "reports" / "compare.html", title="CTR <comparison>")
    assert out.is_file()
    text = out.read_text(encoding="utf-8")

    # header, escaping, both runs, badge
    assert "CTR &lt;comparison&gt;" in text and "CTR <comparison>" not in text
    assert "din-ml" in text
    assert "deepfm &lt;ml&gt; &amp; co" in text and "deepfm <ml>" not in text
    assert "semi-synthetic" in text
    assert "movielens-latest-small" in text

    # bolded best values: auc from din-ml, logloss (lower is better) from deepfm
    assert "<b>0.8100 ± 0.0016</b>" in text
    assert "<b>0.4050 ± 0.0041</b>" in text
    assert "<b>0.5200 ± 0.0082</b>" not in text  # worse logloss is not bold
    # sorted by monitor (auc, higher is better): din-ml row comes first in the test table
    test_table = text[text.index('<table class="metrics test">') :]
    assert test_table.index("din-ml") < test_table.index("deepfm &lt;ml&gt;")
    # timing table
    assert "train samples/s" in text and "peak RSS MB" in text

    # group table: group names and group x metric headers
    assert '<table class="groups">' in text
    group_table = text[
        text.index('<table class="groups">') : text.index("</table>", text.index('class="groups"'))
    ]
    for header in ("conversation-only", "both", "hr@3", "ndcg@3"):
        assert header in group_table
    assert "—" in group_table  # din-ml has no groups

    # every referenced PNG exists and is a PNG; plots live in <stem>_plots/
    pngs = _referenced_pngs(text, out.parent)
    assert len(pngs) == 4  # learning curves, test metrics, one per group
    for p in pngs:
        assert p.is_file(), p
        assert p.read_bytes()[:8] == PNG_MAGIC
        assert p.parent == tmp_path / "reports" / "compare_plots"


def test_report_inside_run_dir_and_sparse_metrics(tmp_path: Path) -> None:
    # single seed, no timing, no history, no groups, topk metrics of mixed scale
    metrics = {
        "name": "sasrec-topk",
        "model": "sasrec",
        "task": "topk",
        "dataset": "toy",
        "monitor": "ndcg@10",
        "seeds": [0],
        "valid": {"ndcg@10": {"mean": 0.2, "std": 0.0, "runs": [0.2]}},
        "test": {
            "hr@10": {"mean": 0.4, "std": 0.0, "runs": [0.4]},
            "mrr": {"mean": 0.05, "std": 0.0, "runs": [0.05]},
        },
    }
    run = _make_run(tmp_path, "sasrec-topk", metrics)
    out = write_report([run], run / "report.html")
    text = out.read_text(encoding="utf-8")
    assert "sasrec-topk" in text and "0.4000" in text
    assert "No timing information recorded." in text
    pngs = _referenced_pngs(text, run)
    assert pngs and all(p.parent == run / "plots" and p.read_bytes()[:8] == PNG_MAGIC for p in pngs)


def test_missing_metrics_raises(tmp_path: Path) -> None:
    d = tmp_path / "runs" / "broken"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("name: broken\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        load_run(d)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_report([d], tmp_path / "r.html")


def test_load_run_and_direction(runs: list[Path]) -> None:
    run = load_run(runs[0])
    assert run["config"]["model"]["name"] == "din"
    assert run["metrics"]["monitor"] == "auc"
    assert lower_is_better("logloss") and lower_is_better("train_loss")
    assert not lower_is_better("auc") and not lower_is_better("ndcg@10")
