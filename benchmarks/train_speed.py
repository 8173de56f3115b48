"""Training speed of one config on one data folder: samples/s of the training step, where the time goes, and
(`--auc`) the test AUC of full training runs over several seeds.

Speed mode (default): prepares the task once, builds the model as `modalrec train` does (seed 0: torch /
numpy seeded, `build_model`, `reinitialise`, `task.bind`, the `Trainer`'s optimizer), then runs the
Trainer's step on the epoch's shuffled training batches: `--warmup` steps untimed, then `--steps` steps
timed, each split into its phases:

  batch   building the batch (`task.batches`: history windows, side-table joins, graph expansions)
  to      `batch.to(device)`
  forward the model's forward pass
  loss    the task loss plus the model's penalty
  backward  zero_grad + backward
  clip    gradient-norm clipping (train.clip_norm)
  step    `optimizer.step()`

samples/s = samples of the timed steps / their wall time (all phases). `--repeats` runs the timed window
several times (after one warm-up) and reports each and the median. `--profile` adds a torch.profiler table of
the operators over `--profile-steps` more steps (self CPU time, top 30) and a cProfile of the batch building
(top 25 by cumulative time).

AUC mode (`--auc`): `modalrec.train.run.train_run` of the config with `train.epochs=--epochs` and the seeds
`--seeds` (the path of `modalrec train`), reporting test AUC / GAUC per seed and mean +- std, and the
trainer's own samples/s of each full epoch.

It imports only `modalrec`, so it measures whichever code tree is on PYTHONPATH:
  PYTHONPATH=/tmp/speed_base/src .venv/bin/python benchmarks/train_speed.py --config sim --tag base
  .venv/bin/python benchmarks/train_speed.py --config mmbee --profile --tag new
Writes benchmarks/results/train_speed_<config>_<tag>.json (speed) or train_speed_auc_<config>_<tag>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"sim": ROOT / "configs/livestream/sim_kuailive.yaml", "mmbee": ROOT / "configs/livestream/mmbee_kuailive.yaml"}
PHASES = ("batch", "to", "forward", "loss", "backward", "clip", "step")


def cfg_path(args) -> Path:
    """sim / mmbee: the KuaiLive config of the code tree measured (its configs/ next to its src/, so each tree
    trains its own config), else the path given."""
    import modalrec

    if args.config not in CONFIGS:
        return Path(args.config)
    own = Path(modalrec.__file__).resolve().parents[2] / "configs/livestream" / CONFIGS[args.config].name
    return own if own.exists() else CONFIGS[args.config]


def load(args, extra: list[str]):
    import torch

    from modalrec.config import load_config

    torch.set_num_threads(args.threads)
    return load_config(cfg_path(args), [f"data.path={json.dumps(str(Path(args.data).resolve()))}",
                                        "train.progress=false", f"train.num_threads={args.threads}", *extra,
                                        *args.set])


def speed(args) -> dict:
    import numpy as np
    import torch

    import modalrec
    from modalrec.models import build_model
    from modalrec.nn.layers import reinitialise
    from modalrec.tasks import prepare_task
    from modalrec.train.run import load_data
    from modalrec.train.trainer import Trainer, peak_rss_mb

    cfg = load(args, [])
    out: dict = {"benchmark": "train_speed", "mode": "speed", "config": args.config, "tag": args.tag,
                 "config_file": str(cfg_path(args)), "model_params": cfg.model.params,
                 "modalrec": str(Path(modalrec.__file__).resolve().parent), "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "platform": platform.platform(), "started": datetime.now(UTC).isoformat(),
                 "batch_size": cfg.train.batch_size, "max_history": cfg.task.max_history, "warmup": args.warmup,
                 "steps": args.steps, "repeats": args.repeats}
    t = time.perf_counter()
    cache = Path(args.cache) / Path(args.config).stem if args.cache else None
    if cache is not None and (cache / "data").exists():
        from modalrec.tasks import load_task

        task = load_task(cache, cfg.task)  # the prepared task saved by an earlier run (either code tree)
        out["prepared_from"] = str(cache)
    else:
        task = prepare_task(load_data(cfg), cfg.task)
        if cache is not None:
            task.save(cache)
    out["prepare_s"] = time.perf_counter() - t
    out["train_samples"] = len(task.splits["train"])
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    reinitialise(model, cfg.model.init.scheme, cfg.model.init.embedding_std)
    task.bind(model.inputs)
    trainer = Trainer(task, model, cfg.train, None, seed=0)
    out["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["optimizer"] = type(trainer.optimizer).__name__
    out["sparse_tables"] = sum(1 for m in model.modules() if getattr(m, "sparse", False) is True)
    try:  # the Trainer's clipping: torch's, or (newer code) one that also takes sparse gradients
        from modalrec.nn.sparse import clip_grad_norm_
    except ImportError:
        clip_grad_norm_ = torch.nn.utils.clip_grad_norm_
    bs, device, clip = cfg.train.batch_size, trainer.device, cfg.train.clip_norm
    net, opt = trainer.net, trainer.optimizer
    net.train()
    batches = task.batches("train", bs, shuffle=True, seed=0, epoch=1)

    def run(n: int, times: dict | None = None) -> int:
        samples = 0
        for _ in range(n):
            marks = [time.perf_counter()]
            batch = next(batches)
            marks.append(time.perf_counter())
            batch = batch.to(device)
            marks.append(time.perf_counter())
            o = net(batch)
            marks.append(time.perf_counter())
            loss = task.loss(o, batch)
            reg = model.penalty(batch)
            if reg is not None:
                loss = loss + reg
            marks.append(time.perf_counter())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            marks.append(time.perf_counter())
            if clip:
                clip_grad_norm_(model.parameters(), clip)
            marks.append(time.perf_counter())
            opt.step()
            float(loss.detach())
            marks.append(time.perf_counter())
            samples += batch.size
            if times is not None:
                for name, a, b in zip(PHASES, marks, marks[1:]):
                    times[name] += b - a
        return samples

    run(args.warmup)
    windows = []
    for _ in range(args.repeats):
        times = dict.fromkeys(PHASES, 0.0)
        t = time.perf_counter()
        n = run(args.steps, times)
        wall = time.perf_counter() - t
        windows.append({"samples": n, "seconds": wall, "samples_per_s": n / wall,
                        "phase_ms_per_step": {k: 1000 * v / args.steps for k, v in times.items()},
                        "phase_share": {k: v / wall for k, v in times.items()}})
    out["windows"] = windows
    out["samples_per_s"] = statistics.median(w["samples_per_s"] for w in windows)
    out["phase_ms_per_step"] = {k: statistics.median(w["phase_ms_per_step"][k] for w in windows) for k in PHASES}
    out["ms_per_step"] = sum(out["phase_ms_per_step"].values())
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
            run(args.profile_steps)
        rows = []
        for e in prof.key_averages(group_by_input_shape=args.shapes):
            rows.append({"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000,
                         "cpu_ms": e.cpu_time_total / 1000}
                        | ({"shapes": str(e.input_shapes)[:200]} if args.shapes else {}))
        rows.sort(key=lambda r: -r["self_cpu_ms"])
        total = sum(r["self_cpu_ms"] for r in rows)
        for r in rows:
            r["self_share"] = r["self_cpu_ms"] / total if total else 0.0
            r["self_ms_per_step"] = r["self_cpu_ms"] / args.profile_steps
        out["torch_profile"] = {"steps": args.profile_steps, "self_cpu_ms_total": total, "top": rows[:30]}
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.profile_steps):
            next(batches)
        pr.disable()
        s = io.StringIO()
        st = pstats.Stats(pr, stream=s)
        funcs = []
        for (file, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():
            funcs.append({"function": f"{Path(file).name}:{line}({name})", "calls": nc,
                          "tottime_ms_per_batch": 1000 * tt / args.profile_steps,
                          "cumtime_ms_per_batch": 1000 * ct / args.profile_steps})
        funcs.sort(key=lambda r: -r["cumtime_ms_per_batch"])
        out["batch_cprofile"] = {"batches": args.profile_steps, "top": funcs[:25]}
    out["peak_rss_mb"] = peak_rss_mb()
    out["finished"] = datetime.now(UTC).isoformat()
    return out


def auc(args) -> dict:
    import torch

    import modalrec
    from modalrec.train.run import train_run

    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = load(args, [f"train.epochs={args.epochs}", f"seeds={json.dumps(seeds)}"])
    out: dict = {"benchmark": "train_speed", "mode": "auc", "config": args.config, "tag": args.tag,
                 "config_file": str(cfg_path(args)), "model_params": cfg.model.params,
                 "modalrec": str(Path(modalrec.__file__).resolve().parent), "threads": torch.get_num_threads(),
                 "epochs": args.epochs, "seeds": seeds, "started": datetime.now(UTC).isoformat()}
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        t = time.perf_counter()
        m = train_run(cfg, Path(work) / "run", report=False)
        out["train_run_s"] = time.perf_counter() - t
    out["test"] = m["test"]
    out["valid"] = m["valid"]
    out["timing"] = m["timing"]
    out["test_auc"] = {"runs": m["test"]["auc"].get("runs"), "mean": m["test"]["auc"]["mean"],
                       "std": m["test"]["auc"].get("std")}
    out["finished"] = datetime.now(UTC).isoformat()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="sim", help="sim | mmbee (the KuaiLive configs) or a config path")
    ap.add_argument("--data", default=str(ROOT / "benchmarks/.work/kuailive_scale/release"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--profile-steps", type=int, default=30)
    ap.add_argument("--shapes", action="store_true", help="--profile: group the operators by input shapes")
    ap.add_argument("--cache", default=None, help="speed mode: keep the prepared task under CACHE/<config> and "
                    "read it from there next time (skips the preparation, e.g. MMBee's GraphCL)")
    ap.add_argument("--auc", action="store_true")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--work", default=str(ROOT / "benchmarks/.work"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    res = auc(args) if args.auc else speed(args)
    name = Path(args.config).stem if args.config not in CONFIGS else args.config
    out = Path(args.out) if args.out else ROOT / "benchmarks/results" / (
        f"train_speed_{'auc_' if args.auc else ''}{name}_{args.tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    if args.auc:
        a = res["test_auc"]
        print(f"{name} [{args.tag}] test AUC {a['mean']:.4f} +- {a['std'] or 0:.4f} {a['runs']}; "
              f"samples/s {res['timing']['train_samples_per_s']['mean']:,.0f} -> {out}")
    else:
        ph = ", ".join(f"{k} {v:.1f}" for k, v in res["phase_ms_per_step"].items())
        print(f"{name} [{args.tag}] {res['samples_per_s']:,.0f} samples/s "
              f"({[round(w['samples_per_s']) for w in res['windows']]}); ms/step: {ph} -> {out}")
        if "torch_profile" in res:
            for r in res["torch_profile"]["top"][:15]:
                print(f"  {r['op']:<45} {r['self_ms_per_step']:8.2f} ms/step {100 * r['self_share']:5.1f}% "
                      f"{r.get('shapes', '')}")
            for r in res["batch_cprofile"]["top"][:12]:
                print(f"  {r['function']:<60} {r['cumtime_ms_per_batch']:8.2f} ms/batch (cum)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
