"""Top-K of live rooms: SASRec (and Popularity) on the simulator's rooms view under four evaluation protocols.

configs/livestream/sasrec_rooms.yaml (load_dataset("livestream", preset=demo, items="rooms"): items are rooms with
their live interval, a watch is one visit of a room; leave-last-out per user) trained over 3 seeds for each of

- live rule on (task.live: only the rooms live at the held-out visit's time are ranked) or off (every room),
- exclude_seen false (the rooms the user watched before are ranked too: repeat consumption) or true,

each a full `train_run` (early stopping reads the protocol's own validation NDCG@10). Live on + exclude_seen false
is KuaiLive's protocol. Also reports, per protocol, how many rooms a held-out visit is ranked among and how many
held-out visits return to a room the user had watched (what exclude_seen removes from the candidates, though the
held-out room itself is always ranked).

Writes benchmarks/results/live_rooms.json and prints a Markdown table.
Run: .venv/bin/python benchmarks/live_rooms.py [--seeds 0,1,2] [--preset demo] [--models sasrec,popularity]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from modalrec.config import load_config
from modalrec.datasets import load_dataset
from modalrec.tasks import TopKTask
from modalrec.train.run import train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/livestream/sasrec_rooms.yaml"
PROTOCOLS = {  # name -> (live rule, exclude_seen)
    "live, repeat (KuaiLive)": (True, False),
    "live, exclude seen": (True, True),
    "all rooms, repeat": (False, False),
    "all rooms, exclude seen": (False, True),
}


def fmt(d: dict | None) -> str:
    return "-" if not d or d.get("mean") is None else f"{d['mean']:.4f} ± {d['std']:.4f}"


def protocol_stats(task: TopKTask) -> dict:
    """How many rooms each held-out test visit is ranked among, and how many return to an already watched room."""
    s = task.splits["test"]
    ranked = (~task.exclusion(s).numpy()).sum(1)
    h = task.history
    seen = [int(s.items[r]) in set(h.items[h.ptr[s.users[r]]:h.ptr[s.users[r]] + s.cut[r]].tolist())
            for r in range(len(s))]
    out = {"test_visits": len(s), "ranked_rooms_mean": float(ranked.mean()),
           "ranked_rooms_p10_p50_p90": [float(x) for x in np.percentile(ranked, [10, 50, 90])],
           "test_room_already_watched": float(np.mean(seen))}
    if task.live_summary is not None:
        out["held_out_not_live"] = task.live_summary
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--models", default="sasrec,popularity")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/live_rooms.json"))
    ap.add_argument("--work", default=str(ROOT / "benchmarks/.work/live_rooms"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per run")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = load_config(CONFIG)
    params = {**base.data.params, "preset": args.preset}
    data = load_dataset(base.data.source, **params)
    results: dict = {
        "config": str(CONFIG.relative_to(ROOT)), "data": {"source": base.data.source, "params": params,
                                                          "description": data.spec.description},
        "seeds": seeds, "command": "python benchmarks/live_rooms.py " + " ".join(
            f"--{k} {v}" for k, v in (("seeds", args.seeds), ("preset", args.preset), ("models", args.models))),
        "machine": {"platform": platform.platform(), "torch_threads": args.threads, "torch": torch.__version__},
        "started": datetime.now(UTC).isoformat(), "protocols": {}, "runs": []}
    for name, (live, exclude_seen) in PROTOCOLS.items():
        task_over = [f"task.exclude_seen={str(exclude_seen).lower()}"] + ([] if live else ["task.live=null"])
        cfg = load_config(CONFIG, task_over)
        results["protocols"][name] = {"live": live, "exclude_seen": exclude_seen,
                                      **protocol_stats(TopKTask(data, cfg.task))}
        for model in args.models.split(","):
            over = task_over + [f"name=live-rooms-{model}", f"model.name={model}", f"seeds={json.dumps(seeds)}",
                                f"train.num_threads={args.threads}", f"data.params={json.dumps(params)}"]
            if model != "sasrec":
                over += ["model.params={}", "train.epochs=0"]
            cfg = load_config(CONFIG, over)
            t0 = time.perf_counter()
            slug = name.split(" (")[0].replace(", ", "-").replace(" ", "_")
            m = train_run(cfg, Path(args.work) / f"{model}-{slug}", data=data, report=False)
            run = {"model": model, "protocol": name, "live": live, "exclude_seen": exclude_seen,
                   "test": {k: m["test"][k] for k in ("recall@10", "ndcg@10", "recall@1", "mrr")},
                   "valid": {k: m["valid"][k] for k in ("recall@10", "ndcg@10")}, "best_epoch": m["best_epoch"],
                   "epoch_seconds": m["timing"].get("epoch_seconds"), "wall_seconds": time.perf_counter() - t0}
            results["runs"].append(run)
            print(f"{model:10s} {name:26s} recall@10 {fmt(run['test']['recall@10'])}  "
                  f"ndcg@10 {fmt(run['test']['ndcg@10'])}  ({run['wall_seconds']:.0f} s)", flush=True)
            results["finished"] = datetime.now(UTC).isoformat()
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))  # after every run: a long benchmark keeps what it has
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| protocol | live rule | exclude_seen | rooms ranked (mean) | model | Recall@10 | NDCG@10 | Recall@1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        p = results["protocols"][r["protocol"]]
        lines.append(f"| {r['protocol']} | {'on' if r['live'] else 'off'} | {str(r['exclude_seen']).lower()} | "
                     f"{p['ranked_rooms_mean']:.1f} | {r['model']} | {fmt(r['test']['recall@10'])} | "
                     f"{fmt(r['test']['ndcg@10'])} | {fmt(r['test']['recall@1'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
