"""The KuaiLive path at the release's size: time and memory of loading, preparing (GIE graph + GraphCL) and
training SIM and MMBee on a planted release with KuaiLive's user and streamer counts.

The real release cannot be obtained on our machine, so nothing here is a KuaiLive result. What this measures
is whether configs/livestream/*_kuailive.yaml hold at KuaiLive's entity counts (23,772 users, 452,621
streamers, 21 days: the published figures) on a laptop-class machine, before a user spends a day on it.
The number of clicks and rooms of the real release are not known to us; they are arguments here
(defaults: 2 clicks per user and day, about 1.5 rooms per streamer, titles of 128-d as the release's PCA).

The release is written by `modalrec.sim.kuailive_release.write_release` into --folder (kept for reuse).
Each variant then runs in its own process (so its peak RSS is its own): load the release, prepare the task
(for MMBee the U2A / Swing A2A / expansions / GraphCL build, timed by the graph itself), train --epochs with
`modalrec.train.run.train_run` (the path of `modalrec train`), evaluate valid and test.

Writes benchmarks/results/kuailive_scale.json and .md.
Run: .venv/bin/python benchmarks/kuailive_scale.py [--users 23772] [--streamers 452621] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"sim": ROOT / "configs/livestream/sim_kuailive.yaml", "mmbee": ROOT / "configs/livestream/mmbee_kuailive.yaml"}


def child(args) -> None:
    """One variant in this process: prints one JSON line of stage timings and peak RSS."""
    import torch

    from modalrec.config import load_config
    from modalrec.tasks import prepare_task
    from modalrec.train.run import load_data, train_run
    from modalrec.train.trainer import peak_rss_mb

    torch.set_num_threads(args.threads)
    cfg = load_config(CONFIGS[args.child], [
        f"data.path={json.dumps(str(Path(args.folder).resolve()))}", f"train.epochs={args.epochs}",
        "train.progress=false", f"train.num_threads={args.threads}", "seeds=[0]"])
    out: dict = {"variant": args.child}
    t = time.perf_counter()
    data = load_data(cfg)
    out["load_s"], out["rss_after_load_mb"] = time.perf_counter() - t, peak_rss_mb()
    out["data"] = data.summary()
    t = time.perf_counter()
    task = prepare_task(data, cfg.task)
    out["prepare_s"], out["rss_after_prepare_mb"] = time.perf_counter() - t, peak_rss_mb()
    out["samples"] = {k: len(s) for k, s in task.splits.items()}
    if task.pipeline.graph is not None:
        stats = task.pipeline.graph.expansion.stats
        out["graph"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, dict))}
    del task  # train_run prepares its own (the path of `modalrec train`); this one only timed the build
    t = time.perf_counter()
    m = train_run(cfg, Path(args.work) / args.child, data=data, report=False)
    out["train_run_s"] = time.perf_counter() - t
    out["timing"], out["test"], out["valid"] = m["timing"], m["test"], m["valid"]
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=23_772)
    ap.add_argument("--streamers", type=int, default=452_621)
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument("--clicks-per-user-day", type=float, default=2.0)
    ap.add_argument("--rooms-per-streamer", type=float, default=1.5)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="sim,mmbee")
    ap.add_argument("--folder", default=str(ROOT / "benchmarks/.work/kuailive_scale/release"))
    ap.add_argument("--work", default=str(ROOT / "benchmarks/.work/kuailive_scale/runs"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/kuailive_scale.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from modalrec.sim.kuailive_release import write_release

    params = {"n_users": args.users, "n_streamers": args.streamers, "days": args.days,
              "clicks_per_user_day": args.clicks_per_user_day, "rooms_per_streamer": args.rooms_per_streamer,
              "dim": args.dim}
    results: dict = {"benchmark": "kuailive_scale", "started": datetime.now(UTC).isoformat(),
                     "machine": {"platform": platform.platform(), "threads": args.threads},
                     "release_params": params, "epochs": args.epochs, "runs": {}}
    folder = Path(args.folder)
    stamp = folder / "written.json"
    t = time.perf_counter()
    if stamp.exists() and json.loads(stamp.read_text())["params"] == params:
        written = json.loads(stamp.read_text())["written"]
    else:
        written = write_release(folder, **params)
        stamp.write_text(json.dumps({"params": params, "written": written}))
        results["write_s"] = time.perf_counter() - t
    results["written"] = written
    results["release_mb"] = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"release: {written} ({results['release_mb']:.0f} MB)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for v in [v for v in args.variants.split(",") if v]:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", v, "--folder", str(folder), "--work", args.work,
                               "--epochs", str(args.epochs), "--threads", str(args.threads)],
                              check=False, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            results["runs"][v] = {"failed": proc.returncode, "stderr_tail": proc.stderr[-3000:],
                                  "wall_s": time.perf_counter() - t}
        else:
            results["runs"][v] = json.loads(lines[-1][len("RESULT "):]) | {"wall_s": time.perf_counter() - t}
        r = results["runs"][v]
        print(f"{v}: " + (f"failed ({r['failed']}): {r['stderr_tail'][-500:]}" if "failed" in r else
                          f"load {r['load_s']:.0f}s, prepare {r['prepare_s']:.0f}s, train_run {r['train_run_s']:.0f}s, "
                          f"peak RSS {r['peak_rss_mb']:,.0f} MB, test AUC {r['test']['auc']['mean']:.4f}"), flush=True)
        out.write_text(json.dumps(results, indent=2))
    results["finished"] = datetime.now(UTC).isoformat()
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    w = results["written"]
    head = (f"Planted release: {w['users']:,} users, {w['streamers']:,} streamers, {w['rooms']:,} rooms, "
            f"{w['clicks']:,} clicks, {w['gifts']:,} gifts ({results['release_mb']:.0f} MB of files); "
            f"{results['epochs']} epoch(s), {results['machine']['threads']} threads.")
    legend = ("prepare: samples, histories, side tables and (MMBee) the GIE graph with GraphCL; train_run: the "
              "path of `modalrec train` (its own prepare, the epochs, valid + test evaluation, checkpoints).")
    columns = ("| variant | load s | prepare s | GraphCL s | train_run s | epoch s | train samples/s | peak RSS MB "
               "| test AUC | test GAUC |")
    lines = [head, "", legend, "", columns, "|---|---|---|---|---|---|---|---|---|---|"]
    for v, r in results["runs"].items():
        if "failed" in r:
            lines.append(f"| {v} | failed (exit {r['failed']}) | | | | | | | | |")
            continue
        graphcl = r.get("graph", {}).get("timing", {}).get("graphcl_s")
        lines.append(f"| {v} | {r['load_s']:.0f} | {r['prepare_s']:.0f} | "
                     f"{'-' if graphcl is None else f'{graphcl:.0f}'} | {r['train_run_s']:.0f} | "
                     f"{r['timing']['epoch_seconds']['mean']:.0f} | {r['timing']['train_samples_per_s']['mean']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['test']['auc']['mean']:.4f} | {r['test']['gauc']['mean']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
