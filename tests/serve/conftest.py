"""Fixtures of the serving tests: the toy DIN run and its bundle, the tiny MMBee live-stream run and its bundle
(each built once per test module that asks for it), and a real redis-server on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from modalrec.config import RunConfig
from tests.helpers import make_data
from tests.serve.helpers import MAX_HISTORY, free_port, make_live_data, train_and_export, train_mmbee


@pytest.fixture(scope="module")
def din_served(tmp_path_factory):
    """A trained 1-epoch DIN run on the toy data (saved, so a subprocess can load it too) and its bundle."""
    root = tmp_path_factory.mktemp("serve")
    data = make_data(n_users=40, n_items=60, n_events=3000)
    data.save(root / "data")
    cfg = RunConfig.model_validate({
        "name": "toy-din", "data": {"source": str(root / "data")},
        "task": {"kind": "ctr", "sample_channels": ["click"], "max_history": MAX_HISTORY},
        "model": {"name": "din", "params": {"embed_dim": 8}},
        "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3, "progress": False, "num_threads": 1},
        "seeds": [0],
    })
    task, model = train_and_export(cfg, data, root)
    return {"root": root, "data": data, "cfg": cfg, "task": task, "model": model, "bundle": root / "bundle"}


@pytest.fixture(scope="module")
def mmbee_served(tmp_path_factory):
    """A 1-epoch MMBee run (MFQ on the watched segment, GIE) on the saved toy world, and its bundle."""
    root = tmp_path_factory.mktemp("serve_mmbee")
    data = make_live_data()
    data.save(root / "data")
    return train_mmbee(root, data, "target")


@pytest.fixture
def redis_server(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH: install the Debian package (apt-get install -y redis-server) "
                    "to run the Redis state-store tests")
    pytest.importorskip("redis", reason="the redis Python package is not installed (pip install redis)")
    import redis

    port = free_port()
    (tmp_path / "redis").mkdir()

    def start():
        p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                              "--appendfsync", "always", "--dir", str(tmp_path / "redis"), "--daemonize", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                if client.ping():
                    return p
            except redis.ConnectionError:
                time.sleep(0.05)
        p.kill()
        pytest.fail("redis-server did not start")

    server = {"proc": start(), "url": f"redis://127.0.0.1:{port}/0", "restart": None}

    def restart():
        os.kill(server["proc"].pid, signal.SIGKILL)
        server["proc"].wait(10)
        server["proc"] = start()

    server["restart"] = restart
    yield server
    server["proc"].kill()
    server["proc"].wait(10)
