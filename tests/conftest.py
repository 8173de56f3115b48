"""Test-wide settings: tiny tensors run fastest on one thread (and do not fight parallel jobs); shared fixtures."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test module starts on one intra-op thread (a test that trains with train.num_threads or serves with
    threads=N changes the process-wide count) and leaves the count as it found it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bench():
    """benchmarks/livestream.py as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "livestream.py"
    spec = importlib.util.spec_from_file_location("livestream_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
