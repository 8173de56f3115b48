"""The Ray engine runs the preparation's per-partition steps as Ray tasks and writes exactly what the local engine
writes: the same RUN/data and RUN/pipeline files, byte for byte, and the same pipeline (a local Ray of 2 workers
on a partitioned toy dataset; both chronological splits, with and without the gift graph)."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pyarrow as pa
import pytest

from modalrec.config import TaskConfig
from modalrec.data.errors import DataError
from modalrec.data.partitioned import write_partitioned
from modalrec.pipeline import hash_tree
from modalrec.tasks import CTRTask
from modalrec.tasks.engine import LocalEngine, RayEngine, engine_from
from tests.helpers import make_data

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (the cluster extra: pip install 'modalrec[cluster]')")

GRAPH = {"enabled": True, "channel": "like", "streamer_feature": "brand",
         "gie": {"pretrain_epochs": 0, "expansion_length": 4, "progress": False}}
GIE_JSON = "graph/gie.json"  # holds the fit's wall-clock timings: compared without them


@pytest.fixture(scope="module")
def engine():
    eng = RayEngine(num_workers=2)
    yield eng
    eng.close()  # shuts down the Ray this module started


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    data = make_data(n_users=50, n_items=60, n_events=4000)
    data.events = data.events.append_column("level", pa.array([str(i % 5) for i in range(data.events.num_rows)]))
    return write_partitioned(data, tmp_path_factory.mktemp("parts"), 4)


def _config(method: str, graph: bool) -> TaskConfig:
    cfg = {"kind": "ctr", "sample_channels": ["click"], "history_channels": ["click", "like"], "max_history": 6,
           "history_channel_tags": True, "context_features": ["level"],
           "split": {"method": method, "valid": 0.1, "test": 0.2}}
    return TaskConfig(**cfg, **({"graph": GRAPH} if graph else {}))


def _without_timing(path) -> dict:
    meta = json.loads(path.read_text())
    meta.get("stats", {}).pop("timing", None)
    return meta


@needs_ray
@pytest.mark.parametrize("method,graph", [("per_user_time", False), ("global_time", False),
                                          ("per_user_time", True), ("global_time", True)])
def test_ray_engine_writes_what_the_local_engine_writes(engine, parts, tmp_path, method, graph):
    cfg = _config(method, graph)
    local = CTRTask(parts, cfg, out=tmp_path / "A" / "data", engine=LocalEngine())
    ray = CTRTask(parts, cfg, out=tmp_path / "B" / "data", engine=engine)
    a, b = local.save(tmp_path / "A"), ray.save(tmp_path / "B")
    assert a["data"] == b["data"] == hash_tree(tmp_path / "B" / "data")
    assert len(a["data"]) > 20  # history, samples of each split, ids, task.json
    assert a["pipeline"].keys() == b["pipeline"].keys()
    for name in a["pipeline"]:
        if name == GIE_JSON:
            assert _without_timing(tmp_path / "A" / "pipeline" / name) == \
                _without_timing(tmp_path / "B" / "pipeline" / name)
        else:
            assert a["pipeline"][name] == b["pipeline"][name], name
    assert (GIE_JSON in a["pipeline"]) == graph
    p, q = local.pipeline, ray.pipeline
    assert p.users == q.users and p.items == q.items
    for group in ("categorical", "multi", "dense", "presence"):
        mine, theirs = getattr(p.item_table, group), getattr(q.item_table, group)
        assert mine.keys() == theirs.keys()
        for name, arr in mine.items():
            assert np.array_equal(arr, theirs[name]), (group, name)
    assert p.context.keys() == q.context.keys() == {"level"}
    assert all(p.context[k] == q.context[k] for k in p.context)
    assert p.stats.keys() == q.stats.keys()
    for name, v in p.stats.items():
        assert np.array_equal(v, q.stats[name]), name
    if graph:
        assert q.graph is not None and q.graph.edges_before == p.graph.edges_before
    for split in ("train", "valid", "test"):
        assert local.shard_bounds(split) == ray.shard_bounds(split)


@needs_ray
def test_a_step_error_reaches_the_caller_as_itself(engine, parts, tmp_path):
    cfg = _config("per_user_time", False).model_copy(update={"context_features": ["no_such_column"]})
    with pytest.raises(DataError, match="no_such_column") as e:
        CTRTask(parts, cfg, out=tmp_path / "data", engine=engine)
    assert type(e.value) is DataError  # not Ray's wrapper: the CLI reports it as a data problem


@needs_ray
def test_imap_keeps_a_bounded_window_and_the_order(engine):
    assert isinstance(engine_from("ray", workers=2), RayEngine)  # connects on its first step, not here
    eng = RayEngine(max_in_flight=2)  # the Ray the module started: used as it is, not shut down by this engine
    eng._connect()

    class Counting:
        def __init__(self, remote):
            self.inner, self.submitted = remote, 0

        def remote(self, *args):
            self.submitted += 1
            return self.inner.remote(*args)

    eng._remote = counter = Counting(eng._remote)
    out = []
    for r in eng.imap(lambda i: i * i, range(7)):
        out.append(r)
        assert counter.submitted == min(7, 2 + len(out))  # never more than 2 submitted and not yet taken
    assert out == [i * i for i in range(7)]
    assert eng.map(lambda i: -i, range(5)) == [0, -1, -2, -3, -4]
    eng.close()
    assert __import__("ray").is_initialized()  # not this engine's to shut down


def test_engine_from_names_the_engines_and_the_missing_extra(monkeypatch):
    with engine_from("local") as eng:
        assert isinstance(eng, LocalEngine) and eng.map(lambda i: i + 1, range(3)) == [1, 2, 3]
    with pytest.raises(ValueError, match="one of local, ray"):
        engine_from("spark")
    with pytest.raises(ValueError, match="needs engine 'ray'"):
        engine_from("local", address="auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(ImportError, match=r"pip install 'modalrec\[cluster\]'"):
        engine_from("ray", address="auto")
