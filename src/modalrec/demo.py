"""`modalrec demo` / `make demo`: the main job on built-in data, no downloads, a few minutes on 2 cores.

Simulates a small world of users and items with text content (`sim.demo`), trains the CTR floor
(Popularity, LR) and two behaviour models (DCNv2, DIN) through the same Trainer, and writes:
runs/demo/ (the DIN run: the full run-directory contract), runs/demo/compare/<model>/ (the others),
runs/demo/report.html with all of them side by side, and runs/demo/bundle (the DIN run's serving bundle).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .config import RunConfig
from .eval.report import write_report
from .sim.demo import generate
from .train.run import train_run

DEMO_MODELS = ("popularity", "lr", "dcnv2", "din")


def demo_config(model: str, epochs: int) -> RunConfig:
    return RunConfig.model_validate({
        "name": f"demo-{model}",
        "data": {"source": "demo"},
        "task": {"kind": "ctr", "label_column": "label", "sample_channels": ["impression"],
                 "history_channels": ["impression"], "max_history": 30,
                 "split": {"method": "per_user_time", "valid": 0.1, "test": 0.1}},
        "model": {"name": model},
        "train": {"epochs": epochs, "batch_size": 512, "lr": 2e-3, "patience": 2},
        "seeds": [0],
    })


def run_demo(out: Path = Path("runs/demo"), epochs: int = 4) -> Path:
    out = Path(out)
    data = generate()
    runs = []
    for model in DEMO_MODELS:
        run_dir = out if model == "din" else out / "compare" / model
        train_run(demo_config(model, epochs), run_dir, data=data, report=False)
        runs.append(run_dir)
    report = write_report(runs, out / "report.html", title="modalrec demo: CTR on the built-in simulated world")
    try:  # the serving bundle of the DIN run: `modalrec serve runs/demo/bundle`
        from .serve.bundle import export_bundle

        export_bundle(out, out / "bundle", data=data, overwrite=True)
    except ImportError as e:
        warnings.warn(f"serving bundle not written ({e}): install the serving extras, pip install 'modalrec[serve]'")
    return report
