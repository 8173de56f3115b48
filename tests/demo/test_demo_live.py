"""`make demo`'s live-streaming job end to end on the tiny world, without espeak-ng: the speech is then a
transcript (text), MMBee reads its MiniLM vectors instead of MFCC statistics, and the MMBee bundle serves."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("efficientnet_lite_pytorch")


def test_demo_runs_without_espeak(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from modalrec.demo import run_demo
    from modalrec.serve.app import create_app

    monkeypatch.setenv("MODALREC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    report = run_demo(out, epochs=1, preset="tiny", n_users=None, espeak=False)
    assert report.exists()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["name"] == "mmbee"
    assert cfg["model"]["params"]["modalities"] == ["frames_emb", "comments_emb", "speech_emb"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auc"]["mean"] <= 1.0
    assert json.loads((out / "ground_truth.json").read_text())["test_ground_truth"]["auc"] > 0.5
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["model"] == "mmbee"
    with TestClient(create_app(out / "bundle", f"sqlite:///{tmp_path / 's.sqlite'}", api_key="k")) as c:
        r = c.post("/recommend", json={"user": "someone-new", "k": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5


@pytest.mark.parametrize("model", ["sim", "mmbee"])
def test_demo_configs_follow_the_shipped_yaml(model):
    """The demo's in-code configs are configs/livestream/{sim,mmbee}.yaml with only what the demo names as
    different (smaller world, speech as MFCC statistics only): every model parameter they share agrees, so a
    change to a shipped config cannot silently leave the demo on the old one."""
    from pathlib import Path

    from modalrec.demo import live_config
    from modalrec.models import MODELS

    shipped = yaml.safe_load((Path(__file__).parents[2] / "configs/livestream" / f"{model}.yaml").read_text())
    full = MODELS[model].Config  # both with the model's defaults filled in
    want = full.model_validate(shipped["model"]["params"]).model_dump(exclude={"modalities"})
    got = full.model_validate(live_config(model, epochs=1).model.params).model_dump(exclude={"modalities"})
    assert got == want  # "modalities": the demo's speech is MFCC statistics only
