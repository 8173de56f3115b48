"""MovieLens latest-small benchmark: the CTR floor and behaviour models, and next-item ranking.

CTR (label = rating >= 4, history = previous rated movies, per-user chronological 80/10/10):
Popularity, LR, DCNv2, DIN. Top-K (leave-last-out, full ranking): Popularity, SASRec.
Every model runs through `modalrec.train.run.train_run` (the same path as `modalrec train`), over
3 seeds, on the data in ../shared/data/movielens-latest-small (or --data).

Writes benchmarks/results/movielens.json and prints the Markdown table that goes into the README.
Run: .venv/bin/python benchmarks/movielens.py [--seeds 0,1,2] [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from modalrec.config import load_config
from modalrec.datasets import load_dataset
from modalrec.eval.report import write_report
from modalrec.train.run import train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# model -> (model params, train overrides). LR is a convex model with zero-initialised weights: it
# gets a larger step and more epochs so that it is compared at convergence, not under-trained.
CTR_MODELS = {
    "popularity": ({}, {}),
    "lr": ({}, {"lr": 0.01, "epochs": 40, "patience": 3}),
    "dcnv2": ({"embed_dim": 32}, {}),
    "din": ({"embed_dim": 32, "attention_softmax": True}, {}),
}
TOPK_MODELS = {"popularity": ({}, {}), "sasrec": ({}, {})}


def fmt(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.4f} ± {d['std']:.4f}"


def fmt_rate(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:,.0f} ± {d['std']:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/movielens-latest-small"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/movielens.json"))
    ap.add_argument("--work", default=str(ROOT / "benchmarks/.work/movielens"))
    ap.add_argument("--ctr-epochs", type=int, default=10)
    ap.add_argument("--topk-epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per run")
    ap.add_argument("--tasks", default="ctr,topk", help="ctr, topk or both; separate processes can run one each "
                    "and merge: results of a task not run are kept from the existing output file")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    data = load_dataset("movielens", path=args.data)
    results: dict = {"dataset": "movielens-latest-small", "seeds": seeds, "ctr": {}, "topk": {},
                     "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                                 "torch": torch.__version__},
                     "started": datetime.now(UTC).isoformat()}
    runs = {"ctr": [], "topk": []}
    out = Path(args.out)
    kinds = args.tasks.split(",")
    for kind, models, cfg_file, epochs in (("ctr", CTR_MODELS, "movielens_din.yaml", args.ctr_epochs),
                                           ("topk", TOPK_MODELS, "movielens_sasrec.yaml", args.topk_epochs)):
        if kind not in kinds:
            continue
        for model, (params, train) in models.items():
            overrides = [f"name=ml-{kind}-{model}", f"model.name={model}", f"model.params={json.dumps(params)}",
                         f"seeds={json.dumps(seeds)}", f"train.epochs={epochs}", "train.progress=false",
                         f"train.num_threads={args.threads}"]
            overrides += [f"train.{k}={json.dumps(v)}" for k, v in train.items()]
            cfg = load_config(CONFIGS / cfg_file, overrides)
            t0 = time.perf_counter()
            run_dir = work / f"{kind}-{model}"
            m = train_run(cfg, run_dir, data=data, report=False)
            runs[kind].append(run_dir)
            results[kind][model] = {"test": m["test"], "valid": m["valid"], "timing": m["timing"],
                                    "best_epoch": m["best_epoch"], "wall_seconds": time.perf_counter() - t0}
            print(f"{kind:5s} {model:10s} " + "  ".join(f"{k}={fmt(v)}" for k, v in m["test"].items()
                                                         if k in ("auc", "gauc", "logloss", "ndcg@10", "hr@10")),
                  flush=True)
    results["finished"] = datetime.now(UTC).isoformat()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep the other task's results when only one task was run
        old = json.loads(out.read_text())
        for kind in ("ctr", "topk"):
            if kind not in kinds and old.get(kind):
                results[kind] = old[kind]
    out.write_text(json.dumps(results, indent=2))
    for kind in kinds:
        write_report(runs[kind], work / f"report-{kind}.html", title=f"MovieLens latest-small: {kind}")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| task | model | AUC | gAUC | logloss | train samples/s |", "|---|---|---|---|---|---|"]
    for model, r in results["ctr"].items():
        t = r["test"]
        lines.append(f"| ctr | {model} | {fmt(t.get('auc'))} | {fmt(t.get('gauc'))} | {fmt(t.get('logloss'))} | "
                     f"{fmt_rate(r['timing'].get('train_samples_per_s')) if model != 'popularity' else '-'} |")
    lines += ["", "| task | model | HR@10 | NDCG@10 | MRR |", "|---|---|---|---|---|"]
    for model, r in results["topk"].items():
        t = r["test"]
        lines.append(f"| topk | {model} | {fmt(t.get('hr@10'))} | {fmt(t.get('ndcg@10'))} | {fmt(t.get('mrr'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
