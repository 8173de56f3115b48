"""Helpers of the training tests (plain values and functions, not tests): the `modalrec` command as a
subprocess runs it, and a toy DIN run config written to a file."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

CLI = [sys.executable, "-m", "modalrec.cli"]


def write_config(path: Path, data_dir: Path, **over) -> Path:
    cfg = {
        "name": "toy-din",
        "data": {"source": str(data_dir)},
        "task": {"kind": "ctr", "sample_channels": ["click"], "max_history": 10},
        "model": {"name": "din", "params": {"embed_dim": 8}},
        "train": {"epochs": 4, "batch_size": 64, "lr": 3e-3, "patience": 10, "progress": False,
                  "num_threads": 1},
        "seeds": [0],
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    path.write_text(yaml.safe_dump(cfg))
    return path
