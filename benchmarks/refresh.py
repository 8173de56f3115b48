"""Refresh vs stale vs full retrain on the demo live-stream world (issue 23, freshness without a full retrain).

The world of configs/livestream/mmbee.yaml (preset demo: D = 12 days), its raw content encoded once (cached). Per
seed:
- stale: MMBee trained on days 1..D-2 (the data as it was at the start of day D-1: `train.refresh.snapshot`; one
  global time cut, its last `valid` share for early stopping, no test share);
- (a) the stale model scored on day D's watches;
- (b) `refresh_run` of the stale run with --since day D-1 on the data up to the end of day D-1 (`--refresh-epochs`),
  scored on day D;
- (c) a full retrain on days 1..D-1 (same protocol as the stale run), scored on day D.
Every model is scored by `train.refresh.evaluate_window` on the same samples: day D's watches, histories of every
earlier event, segments first seen on day D coded through the model's own maps (as a service registers them),
users first seen after the model's training period unknown. Wall time: (b) is `refresh_run` from RUN to RUN2
(pipeline extension, graph refit, training, evaluation of the valid share), (c) is `train_run` (preparation, graph,
training, evaluation); both from the loaded, encoded data in memory.

Writes benchmarks/results/refresh.json.
Run: .venv/bin/python benchmarks/refresh.py [--seeds 0,1,2] [--epochs 4] [--refresh-epochs 1] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from modalrec.config import load_config
from modalrec.eval.compare import summary as _summary
from modalrec.tasks.base import event_times
from modalrec.train.refresh import evaluate_window, refresh_run, snapshot
from modalrec.train.run import load_data, train_run

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400
KEYS = ("auc", "gauc", "uauc", "logloss")


def fmt(s: dict) -> str:
    return "-" if s.get("mean") is None else f"{s['mean']:.4f} ± {s['std']:.4f}"


def trained(cfg, run: Path, data, reuse: bool) -> float:
    """Trains `run` (or, with `reuse`, keeps a finished one); its wall seconds (train_run, from its manifest)."""
    if not (reuse and (run / "metrics.json").is_file()):
        shutil.rmtree(run, ignore_errors=True)
        train_run(cfg, run, data=data, report=False)
    m = json.loads((run / "manifest.json").read_text())
    return (datetime.fromisoformat(m["finished"]) - datetime.fromisoformat(m["started"])).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "livestream" / "mmbee.yaml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the stale run and the full retrain (early "
                    "stopping, patience 1)")
    ap.add_argument("--refresh-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_refresh"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refresh.json"))
    ap.add_argument("--reuse", action="store_true", help="keep the stale and full runs already in --work (their wall "
                    "time from their manifests); the refreshes always run again")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = load_config(args.config, [f"train.epochs={args.epochs}", "train.progress=false",
                                    f"train.num_threads={args.threads}", "task.split.test=0.0",
                                    "task.graph.gie.progress=false"])
    t0 = time.perf_counter()
    data = load_data(cfg)  # raw frames / speech / comments -> vectors (cached by content)
    load_s = time.perf_counter() - t0
    times = event_times(data.events)
    first = int(times.min()) // DAY * DAY
    n_days = int((int(times.max()) - first) // DAY) + 1
    day = {k: first + (k - 1) * DAY for k in range(1, n_days + 2)}  # day k starts at day[k]
    d = n_days
    stale_data, now_data = snapshot(data, day[d - 1]), snapshot(data, day[d])
    work = Path(args.work)
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    per = {"stale": [], "refresh": [], "full": []}
    wall = {"stale_train": [], "refresh": [], "full": []}
    info = []
    for seed in seeds:
        cfg_s = cfg.model_copy(deep=True)
        cfg_s.seeds = [seed]
        wall["stale_train"].append(trained(cfg_s, work / f"stale_{seed}", stale_data, args.reuse))
        per["stale"].append(evaluate_window(work / f"stale_{seed}", data, day[d]))
        shutil.rmtree(work / f"refresh_{seed}", ignore_errors=True)
        t = time.perf_counter()
        m = refresh_run(work / f"stale_{seed}", day[d - 1], work / f"refresh_{seed}", data=now_data,
                        epochs=args.refresh_epochs)
        wall["refresh"].append(time.perf_counter() - t)
        info.append({"seed": seed, "refresh": m["refresh"], "samples": m["samples"],
                     "valid": {k: m["valid"].get(k, {}).get("mean") for k in KEYS},
                     "valid_warm_start": {k: m["valid_warm_start"].get(k, {}).get("mean") for k in KEYS}})
        per["refresh"].append(evaluate_window(work / f"refresh_{seed}", data, day[d]))
        wall["full"].append(trained(cfg_s, work / f"full_{seed}", now_data, args.reuse))
        per["full"].append(evaluate_window(work / f"full_{seed}", data, day[d]))
        print(f"seed {seed}: " + ", ".join(f"{k} auc {per[k][-1]['test']['auc']['mean']:.4f}" for k in per)
              + f"; refresh {wall['refresh'][-1]:.1f}s, full {wall['full'][-1]:.1f}s", flush=True)
        # written after every seed: a run cut short still leaves the seeds it finished ("seeds_done")
        results = write(args, data, per, wall, info, seeds, n_days, day, load_s)
    print(f"{'':10s} {'AUC day D':>18s} {'gAUC day D':>18s} {'wall s':>16s}")
    for name, key in (("stale", "stale_train"), ("refresh", "refresh"), ("full", "full")):
        r = results[name]["day_d"]
        print(f"{name:10s} {fmt(r['auc']):>18s} {fmt(r['gauc']):>18s} {fmt(_summary(wall[key])):>16s}")
    print(f"wrote {args.out}")


def write(args, data, per, wall, info, seeds, n_days, day, load_s) -> dict:
    """Writes --out from the seeds finished so far; returns its results."""
    d = n_days
    results = {
        name: {"day_d": {k: _summary([r["test"][k]["mean"] for r in runs]) for k in KEYS},
               "samples": runs[0]["samples"], "positives": runs[0]["positives"],
               "items_new_to_the_model": runs[0]["new_items"]}
        for name, runs in per.items()}
    out = {
        "command": "python benchmarks/refresh.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                               vars(args).items() if k not in ("work", "out", "reuse")),
        "created": datetime.now(UTC).isoformat(), "config": args.config, "dataset": data.spec.name,
        "days": n_days, "protocol": {
            "stale": f"trained on days 1..{d - 2} (events before {day[d - 1]}), {args.epochs} epochs",
            "refresh": f"refresh_run --since day {d - 1} ({day[d - 1]}) on days 1..{d - 1}, "
                       f"{args.refresh_epochs} epoch(s)",
            "full": f"full retrain on days 1..{d - 1} (events before {day[d]}), {args.epochs} epochs",
            "evaluated_on": f"day {d}: watches at or after {day[d]}",
            "split": "global time: the last valid share (0.1) of each training period / refresh window held out for "
                     "early stopping; no test share"},
        "seeds": seeds, "seeds_done": seeds[:len(info)], "results": results,
        "wall_seconds": {k: _summary(v) for k, v in wall.items()},
        "refresh_runs": info, "data_load_seconds": load_s,
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
    }
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
