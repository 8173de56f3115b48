"""Trainer and run directory: contract, exact resume after a kill, DDP parity, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from modalrec.config import load_config
from modalrec.train.run import train_run
from tests.train.helpers import CLI, write_config


def test_run_directory_contract(tmp_path, toy_dir):
    cfg = load_config(write_config(tmp_path / "c.yaml", toy_dir), ["seeds=[0,1]", "train.epochs=2"])
    out = tmp_path / "run"
    m = train_run(cfg, out)
    for f in ("config.yaml", "manifest.json", "metrics.json", "report.html"):
        assert (out / f).exists(), f
    for s in (0, 1):
        assert (out / "checkpoints" / f"seed_{s}" / "best.safetensors").exists()
        assert (out / "checkpoints" / f"seed_{s}" / "last.json").exists()
    assert not list(out.rglob("*.tmp"))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"]["auc"]["runs"] == m["test"]["auc"]["runs"] and len(m["test"]["auc"]["runs"]) == 2
    for k in ("auc", "gauc", "uauc", "logloss"):
        assert set(on_disk["test"][k]) == {"mean", "std", "runs"}
    assert on_disk["timing"]["train_samples_per_s"]["mean"] > 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["seeds"] == [0, 1] and len(man["dataset"]["fingerprint"]) == 16
    assert yaml.safe_load((out / "config.yaml").read_text())["seeds"] == [0, 1]


def test_killed_run_resumes_to_identical_metrics(tmp_path, toy_dir):
    cfg_path = write_config(tmp_path / "c.yaml", toy_dir, train={"epochs": 8, "batch_size": 32})
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(CLI + ["train", str(cfg_path), "--out", str(ref)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(CLI + ["train", str(cfg_path), "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoints" / "seed_0" / "last.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["state"]["epoch"] >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-way"
    assert not (killed / "metrics.json").exists()
    subprocess.run(CLI + ["train", str(cfg_path), "--out", str(killed), "--resume"], check=True, env=env,
                   capture_output=True)
    a = json.loads((ref / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert [h["valid"] for h in a["history"][0]] == [h["valid"] for h in b["history"][0]]


def test_torchrun_two_processes_matches_single_process(tmp_path, toy_dir):
    cfg_path = write_config(tmp_path / "c.yaml", toy_dir, train={"epochs": 3, "batch_size": 128})
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(CLI + ["train", str(cfg_path), "--out", str(single)], check=True, env=env, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "modalrec.cli", "train", str(cfg_path), "--out", str(ddp)]
    r = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((ddp / "metrics.json").read_text())
    assert json.loads((ddp / "manifest.json").read_text())["world_size"] == 2
    assert abs(a["valid"]["auc"]["mean"] - b["valid"]["auc"]["mean"]) < 0.005


def test_cli_reports_bad_config_in_one_line(tmp_path, toy_dir):
    cfg_path = write_config(tmp_path / "c.yaml", toy_dir)
    r = subprocess.run(CLI + ["train", str(cfg_path), "--set", "train.epochs=-1", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "train.epochs" in r.stderr and str(cfg_path) in r.stderr
    r = subprocess.run(CLI + ["train", str(cfg_path), "--set", "model.name=nosuch", "--out", str(tmp_path / "y")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nosuch" in r.stderr
