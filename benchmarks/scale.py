"""The partitioned data path at KuaiLive-M3 scale: write, import, prepare, train (SIM, MMBee), evaluate a planted
live-streaming world of 1M, 10M and 146M interactions, each stage in its own process.

The world is `modalrec.sim.kuailive_scale.write_world` (KuaiLive-M3's shape: 21,938 users, rooms in M3's ratio
of 6.56M per 146M interactions, one 128-d title vector per room; written day by day in bounded memory). For each
size, in order, each stage a child process whose peak RSS (`ru_maxrss` of that child, from `os.wait4`) is its own:

- write: the world's files (events.parquet, rooms.parquet, titles.parquet, spec.yaml);
- import: `modalrec data import spec.yaml --out DATASET --partitions P` (the CLI, streaming), P from
  --partition-rows (at least 4);
- prepare: `prepare_task` of configs/livestream/mmbee_kuailive.yaml's task (click samples, a 50-event history of
  clicks and gifts, global_time split 0.7/0.1/0.2, the title vectors, the GIE graph with GraphCL) out-of-core into
  RUN/data, then `task.save(RUN)` (RUN/pipeline); SIM and MMBee both train on this one preparation (SIM reads
  only its own inputs);
- train_sim / train_mmbee: the prepared task loaded from RUN (memory-mapped), the model of
  configs/livestream/{sim,mmbee}_kuailive.yaml, `Trainer`'s optimiser (lazy Adam for the sparse id tables) and
  its training step, for --train-seconds of wall time (one shuffled epoch's stream, shard by shard); samples/s
  counts every trained sample over the whole time, the first batch included. Then the test split (or a seeded
  sample of --eval-samples of it, stated in the JSON) is scored with `task.evaluate`: its time and AUC.

Recorded per stage: wall seconds, peak RSS, the exit status (a failed stage is a finding: its stderr tail is kept
and the later stages of that size are skipped), `os.getloadavg()` before and after (other jobs share the cores),
and the disk used by what the stage wrote. Writes benchmarks/results/scale.json (rewritten after every stage,
merged with earlier sizes of the same file) and scale.png (time and peak RSS against size, log-log).

Run: .venv/bin/python benchmarks/scale.py --sizes 1M,10M --graphcl-epochs 0 --eval-samples 100000
     [--train-seconds 120] [--work /tmp/modalrec_scale] [--keep: keep each size's files (default: removed)]
     [--stages import,prepare --keep: continue a kept size] [--stage-timeout S] [--rss-limit-gb 14]
     [--without-titles] [--plot-only: redraw scale.png and print the table from scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"sim": ROOT / "configs/livestream/sim_kuailive.yaml", "mmbee": ROOT / "configs/livestream/mmbee_kuailive.yaml"}
STAGES = ["write", "import", "prepare", "train_sim", "train_mmbee"]


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(s[-1:], 1)
    try:
        return int(float(s[:-1] if s[-1:] in "KMG" else s) * mult)
    except ValueError:
        raise SystemExit(f"--sizes: expected sizes such as 1M,10M,146M, found {s!r}") from None


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def config(variant: str, dataset: Path, threads: int, graphcl_epochs: int | None = None, titles: bool = True,
           task_sets: list[str] | None = None):
    from modalrec.config import load_config

    # both variants prepare with MMBee's task (its superset: the title vectors and the GIE graph)
    sets = [f"data.source={json.dumps(str(dataset))}"]
    if graphcl_epochs is not None:
        sets.append(f"task.graph.gie.pretrain_epochs={graphcl_epochs}")
    if not titles:
        sets.append("task.vector_modalities=[]")
    sets += [f"task.{kv}" for kv in task_sets or []]
    task = load_config(CONFIGS["mmbee"], sets).task
    cfg = load_config(CONFIGS[variant], [f"data.source={json.dumps(str(dataset))}", "train.progress=false",
                                         f"train.num_threads={threads}", "seeds=[0]"])
    return cfg.model_copy(update={"task": task})


# ---------------------------------------------------------------------------------------------- the stages (children)

def stage_write(a) -> dict:
    from modalrec.sim.kuailive_scale import write_world

    return {"written": write_world(a.world, a.size, seed=a.seed)}


def stage_prepare(a) -> dict:
    from modalrec.datasets import load_dataset
    from modalrec.tasks import prepare_task
    from modalrec.tasks.base import DATA_DIR

    cfg = config("mmbee", a.dataset, a.threads, a.graphcl_epochs, not a.without_titles, a.task_set)
    data = load_dataset(str(a.dataset))
    run = Path(a.run)
    t = time.perf_counter()
    task = prepare_task(data, cfg.task, out=run / DATA_DIR)
    prep_s = time.perf_counter() - t
    task.pipeline.settings.content = {"encode": None,
                                      "modalities": [m.model_dump(mode="json") for m in data.spec.modalities]}
    t = time.perf_counter()
    task.save(run)
    out = {"prepare_task_s": prep_s, "save_s": time.perf_counter() - t, "partitions": data.n_partitions,
           "samples": {k: len(s) for k, s in task.splits.items()}}
    if task.pipeline.graph is not None:
        stats = task.pipeline.graph.expansion.stats
        out["graph"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, dict))}
    return out


def stage_train(a, variant: str) -> dict:
    import numpy as np
    import torch

    from modalrec.models import build_model
    from modalrec.nn.layers import reinitialise
    from modalrec.nn.sparse import clip_grad_norm_
    from modalrec.tasks import load_task
    from modalrec.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    cfg = config(variant, a.dataset, a.threads, a.graphcl_epochs, not a.without_titles, a.task_set)
    t = time.perf_counter()
    task = load_task(a.run, cfg.task)
    load_s = time.perf_counter() - t
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    reinitialise(model, cfg.model.init.scheme, cfg.model.init.embedding_std)
    task.bind(model.inputs)
    trainer = Trainer(task, model, cfg.train, None, seed=a.seed)  # its optimiser: lazy Adam for sparse id tables
    model.train()
    steps = samples = 0
    loss_sum = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in task.batches("train", cfg.train.batch_size, shuffle=True, seed=a.seed, epoch=1):
        out = model(batch)  # the step of Trainer._train_epoch (CPU, one process)
        loss = task.loss(out, batch)
        reg = model.penalty(batch)
        if reg is not None:
            loss = loss + reg
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.clip_norm:
            clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
        trainer.optimizer.step()
        steps += 1
        samples += batch.size
        loss_sum += float(loss.detach()) * batch.size
        if time.perf_counter() - t0 >= a.train_seconds:
            break
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    test = task.splits["test"]
    n_eval = len(test) if a.eval_samples <= 0 else min(a.eval_samples, len(test))
    if n_eval < len(test):
        idx = np.sort(np.random.default_rng(a.seed).choice(len(test), n_eval, replace=False))
        task.splits["test_sample"] = test.take(idx)
    split = "test_sample" if n_eval < len(test) else "test"
    t, c = time.perf_counter(), time.process_time()
    metrics, _ = task.evaluate(model, split, cfg.train.eval_batch_size)
    eval_s, eval_cpu_s = time.perf_counter() - t, time.process_time() - c
    return {"model": cfg.model.name, "load_task_s": load_s, "train_s": train_s, "steps": steps,
            "train_samples": samples, "train_samples_per_s": samples / train_s,
            "train_cpu_s": train_cpu_s, "train_samples_per_cpu_s": samples / train_cpu_s, "batch_size": cfg.train.batch_size,
            "epoch_fraction": samples / len(task.splits["train"]), "train_loss": loss_sum / max(samples, 1),
            "eval_split": split, "eval_samples": n_eval, "test_samples": len(test), "eval_s": eval_s,
            "eval_samples_per_s": n_eval / eval_s,
            "eval_cpu_s": eval_cpu_s, "test_auc": metrics.get("auc"), "threads": a.threads}


def child(a) -> None:
    a.dataset, a.run, a.world = Path(a.dataset), Path(a.run), Path(a.world)
    fn = {"write": stage_write, "prepare": stage_prepare,
          "train_sim": lambda x: stage_train(x, "sim"), "train_mmbee": lambda x: stage_train(x, "mmbee")}[a.stage]
    print("RESULT " + json.dumps(fn(a), default=float), flush=True)


# ---------------------------------------------------------------------------------------------- the parent

def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):  # gone, or a zombie without memory
        return 0.0


def run_stage(cmd: list[str], log: Path, timeout: float | None = None, rss_limit_mb: float | None = None) -> dict:
    """Runs `cmd` as a child; its wall time, CPU time and peak RSS (rusage of that child alone, from `os.wait4`)
    and its result line. A child still running after `timeout` seconds, or whose RSS passes `rss_limit_mb` (the
    machine is shared: a stage must not take the others' memory), is killed (`timed_out` / `rss_limit_mb`; its
    peak RSS until then is still recorded)."""
    load0 = os.getloadavg()
    t = time.perf_counter()
    timed_out = over = False
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - t > timeout and not (timed_out or over):
                proc.kill()
                timed_out = True
            if rss_limit_mb is not None and not (timed_out or over) and rss_mb(proc.pid) > rss_limit_mb:
                proc.kill()
                over = True
            time.sleep(0.5)
    proc.returncode = status  # reaped here: keep Popen from waiting on it again
    stdout = log.with_suffix(".out").read_text()
    rec = {"wall_s": time.perf_counter() - t, "cpu_s": usage.ru_utime + usage.ru_stime,
           "peak_rss_mb": usage.ru_maxrss / 1024,
           "exit": os.waitstatus_to_exitcode(status), "loadavg_before": load0, "loadavg_after": os.getloadavg()}
    if timed_out:
        rec["timed_out"] = timeout
    if over:
        rec["killed_over_rss_mb"] = rss_limit_mb
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if rec["exit"] == 0 and lines:
        rec |= json.loads(lines[-1][len("RESULT "):])
    else:
        rec["stderr_tail"] = log.read_text()[-3000:]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,146M")
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--eval-samples", type=int, default=500_000, help="a seeded sample of the test split this large "
                    "(0: the whole split)")
    ap.add_argument("--partition-rows", type=int, default=2_000_000, help="about this many events per partition")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graphcl-epochs", type=int, default=None, help="GIE's GraphCL pre-training epochs (default: "
                    "the config's; its cost grows with the gift graph's edges squared, see docs/scale.md)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--stage-timeout", type=float, default=None, help="kill a stage after this many seconds "
                    "(recorded as timed out, with its peak RSS until then)")
    ap.add_argument("--rss-limit-gb", type=float, default=14.0, help="kill a stage whose RSS passes this (recorded "
                    "with its peak RSS; the acceptance is 12 GB)")
    ap.add_argument("--work", default="/tmp/modalrec_scale")
    ap.add_argument("--keep", action="store_true", help="keep each size's files under --work")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/scale.json"))
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    for name in ("dataset", "run", "world"):
        ap.add_argument(f"--{name}", default="", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--without-titles", action="store_true", help="import and prepare without the title vectors "
                    "(MMBee, which reads them, cannot train then)")
    ap.add_argument("--task-set", action="append", default=[], help="KEY=VALUE under the task config (repeatable), "
                    "e.g. graph.gie.as_of_time=false")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot and print the table of --out")
    a = ap.parse_args()
    if a.stage:
        return child(a)
    if a.plot_only:
        results = json.loads(Path(a.out).read_text())
        plot(results, Path(a.out).with_suffix(".png"))
        return print(table(results))

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {"benchmark": "scale", "sizes": {}}
    results |= {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "threads": a.threads},
                "settings": {"train_seconds": a.train_seconds, "eval_samples": a.eval_samples,
                             "partition_rows": a.partition_rows, "seed": a.seed}}
    settings = {"train_seconds": a.train_seconds, "eval_samples": a.eval_samples, "threads": a.threads,
                "graphcl_epochs": a.graphcl_epochs if a.graphcl_epochs is not None else "config (10)",
                "titles": not a.without_titles}
    if a.task_set:
        settings["task_set"] = a.task_set
    stages = [s for s in a.stages.split(",") if s]
    for label in [s for s in a.sizes.split(",") if s]:
        n = parse_size(label)
        base = Path(a.work) / label
        world, dataset, run = base / "world", base / "dataset", base / "run"
        parts = max(4, -(-n // a.partition_rows))
        # a size's record is continued stage by stage (a later invocation with --stages prepare,... --keep adds
        # to it); writing the world starts it afresh
        rec = results["sizes"].get(label) if "write" not in stages else None
        if rec is None or rec.get("settings") != settings:
            rec = {"interactions_target": n, "partitions": parts, "settings": settings, "stages": {}}
        rec["started"] = rec.get("started", datetime.now(UTC).isoformat())
        results["sizes"][label] = rec
        for st in stages:
            common = [sys.executable, __file__, "--stage", st, "--size", str(n), "--world", str(world),
                      "--dataset", str(dataset), "--run", str(run), "--threads", str(a.threads),
                      "--seed", str(a.seed), "--train-seconds", str(a.train_seconds),
                      "--eval-samples", str(a.eval_samples)]
            if a.graphcl_epochs is not None:
                common += ["--graphcl-epochs", str(a.graphcl_epochs)]
            if a.without_titles:
                common += ["--without-titles"]
            for kv in a.task_set:
                common += ["--task-set", kv]
            if st == "import":
                if dataset.exists():
                    shutil.rmtree(dataset)
                spec = world / "spec.yaml"
                if a.without_titles:  # the same spec without its content entry
                    import yaml

                    spec = world / "spec_without_titles.yaml"
                    spec.write_text(yaml.safe_dump({k: v for k, v in yaml.safe_load((world / "spec.yaml").read_text())
                                                    .items() if k != "content"}, sort_keys=False))
                cmd = [sys.executable, "-m", "modalrec.cli", "data", "import", str(spec),
                       "--out", str(dataset), "--partitions", str(parts)]
            else:
                if st == "prepare" and run.exists():
                    shutil.rmtree(run)
                cmd = common
            base.mkdir(parents=True, exist_ok=True)
            print(f"[{datetime.now(UTC):%H:%M:%S}] {label} {st} ...", flush=True)
            r = run_stage(cmd, base / f"{st}.log", a.stage_timeout, a.rss_limit_gb * 1024)
            wrote = {"write": world, "import": dataset, "prepare": run}.get(st)
            r["disk_mb"] = du(wrote) / 2**20 if wrote is not None and wrote.exists() else None
            rec["stages"][st] = r
            if st == "write" and "written" in r:
                rec["written"] = r["written"]
            out.write_text(json.dumps(results, indent=2, default=float))
            print(f"    {st}: exit {r['exit']}, {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mb']:,.0f} MB"
                  + (f", {r['train_samples_per_s']:,.0f} samples/s, eval {r['eval_s']:.0f} s"
                     if "train_samples_per_s" in r else "")
                  + (f", disk {r['disk_mb']:,.0f} MB" if r.get("disk_mb") else "")
                  + (f"\n{r['stderr_tail'][-1500:]}" if r["exit"] else ""), flush=True)
            if r["exit"]:
                rec["failed_stage"] = st
                break
        rec["finished"] = datetime.now(UTC).isoformat()
        if "write" in rec["stages"] and "written" in rec["stages"]["write"]:
            rec["written"] = rec["stages"]["write"]["written"]
        out.write_text(json.dumps(results, indent=2, default=float))
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    plot(results, out.with_suffix(".png"))
    print(table(results))


def table(results: dict) -> str:
    rows = [("| interactions | stage | wall s | CPU s | peak RSS MB | disk MB | train samples/s (per CPU s) "
            "| eval s (samples) | test AUC | load avg |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for label, rec in sorted(results["sizes"].items(), key=lambda kv: kv[1]["interactions_target"]):
        n = rec.get("written", {}).get("interactions", rec["interactions_target"])
        for st, r in rec["stages"].items():
            sps = (f"{r['train_samples_per_s']:,.0f} ({r['train_samples_per_cpu_s']:,.0f})"
                   if "train_samples_per_cpu_s" in r else "")
            ev = f"{r['eval_s']:.0f} ({r['eval_samples']:,})" if "eval_s" in r else ""
            auc = f"{r['test_auc']:.4f}" if r.get("test_auc") is not None else ""
            disk = f"{r['disk_mb']:,.0f}" if r.get("disk_mb") else ""
            state = ("" if r["exit"] == 0 else f" KILLED after {r['timed_out']:.0f} s" if r.get("timed_out")
                     else f" KILLED at RSS > {r['killed_over_rss_mb']:,.0f} MB" if r.get("killed_over_rss_mb")
                     else f" FAILED (exit {r['exit']})")
            cpu = f"{r['cpu_s']:.0f}" if "cpu_s" in r else ""
            rows.append(f"| {n:,} | {st}{state} | {r['wall_s']:.0f} | {cpu} | {r['peak_rss_mb']:,.0f} | {disk} | {sps} "
                        f"| {ev} | {auc} | {r['loadavg_before'][0]:.1f}-{r['loadavg_after'][0]:.1f} |")
    return "\n".join(rows)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results["sizes"].values(), key=lambda r: r["interactions_target"])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for st in STAGES:
        pts = [(r.get("written", {}).get("interactions", r["interactions_target"]), r["stages"][st])
               for r in sizes if st in r["stages"]]
        done = [p for p in pts if p[1]["exit"] == 0]
        if done:  # training runs for fixed seconds: its time is the evaluation's (of a sample of the test split)
            x = [p[0] for p in done]
            key, name = ("eval_s", f"eval after {st}") if st.startswith("train") else ("wall_s", st)
            wall = ax_t.plot(x, [p[1][key] for p in done], "o-", label=name)[0]
            if not st.startswith("train") and all("cpu_s" in p[1] for p in done):
                ax_t.plot(x, [p[1]["cpu_s"] for p in done], "x--", color=wall.get_color(), label=f"{st} CPU s")
            line = ax_m.plot(x, [p[1]["peak_rss_mb"] / 1024 for p in done], "o-", label=st)[0]
        killed = [p for p in pts if p[1]["exit"] != 0]
        if killed:  # a stage stopped (time limit, RSS limit, error): its peak until then, hollow
            ax_m.plot([p[0] for p in killed], [p[1]["peak_rss_mb"] / 1024 for p in killed], "o", mfc="none",
                      color=line.get_color() if done else None, label=f"{st} (stopped)")
    for ax, what in ((ax_t, "seconds per stage (wall; dashed: CPU)"), (ax_m, "peak RSS per stage (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.axhline(12e9 / 2**30, color="red", ls="--", lw=1, label="12 GB")
    ax_t.legend(fontsize=8)
    ax_m.legend(fontsize=8)
    fig.suptitle("benchmarks/scale.py: planted KuaiLive-M3-shaped world, 2 shared cores (wall times depend on the "
                 "load; see the JSON)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
