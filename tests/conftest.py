"""Test-wide settings: tiny tensors run fastest on one thread (and do not fight parallel jobs)."""

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
