"""A refresh whose validation share holds no positive (no AUC: no trained epoch can be judged) keeps the warm start
as its best weights, so the refreshed run exports; before, no best checkpoint was written and `refresh --bundle`
failed with 'no trained weights for seed 0' (met by benchmarks/live_replay.py refreshing on the first hours of a
day whose last watches had no gift)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from modalrec.serve.bundle import load_bundle
from modalrec.train.refresh import refresh_run, snapshot
from modalrec.train.run import train_run
from tests.train.test_refresh import T1, config, make_world

pytest.importorskip("faiss")


def test_a_valid_share_without_positives_keeps_the_warm_start(tmp_path):
    world = make_world()
    ev = world.events
    times = ev["time"].to_numpy()
    watch = np.asarray(ev["channel"].to_pylist()) == "watch"
    cut = np.quantile(times[watch & (times >= T1)], 0.8)  # well before the window's last 10% (its valid share)
    labels = np.where(watch & (times >= cut), 0.0, ev["label"].to_numpy())
    world.events = ev.set_column(ev.schema.get_field_index("label"), "label", pa.array(labels))
    snapshot(world, T1).save(tmp_path / "old")
    train_run(config(str(tmp_path / "old")), tmp_path / "run", report=False)
    m = refresh_run(tmp_path / "run", T1, tmp_path / "run2", data=world, bundle=tmp_path / "bundle2")
    assert m["valid_warm_start"]["auc"]["mean"] is None  # nothing to judge an epoch by
    assert m["best_epoch"] == [0] and m["refresh"]["best_epoch"] == [0]
    assert (tmp_path / "run2" / "checkpoints" / "seed_0" / "best.safetensors").is_file()
    assert load_bundle(tmp_path / "bundle2").model_name == "mmbee"
