"""Test-wide settings: tiny tensors run fastest on one thread (and do not fight parallel jobs); shared fixtures."""

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


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """The toy data with a label the item decides (80% clicks on even items, 20% on odd ones): a model converges
    to the same AUC from any start, so runs that differ only in float rounding (DDP) agree."""
    import numpy as np
    import pyarrow as pa

    from tests.helpers import make_data

    d = tmp_path_factory.mktemp("toy") / "data"
    data = make_data(n_users=60, n_items=80, n_events=6000)
    item = np.array([int(i[1:]) for i in data.events["item_id"].to_pylist()])
    rng = np.random.default_rng(1)
    label = (rng.random(len(item)) < np.where(item % 2 == 0, 0.8, 0.2)).astype(np.float64)
    data.events = data.events.set_column(data.events.column_names.index("label"), "label", pa.array(label))
    data.save(d)
    return d
