"""MovieLens multimodal CTR: six behaviour models with and without the MiniLM item-text vectors.

Data (the project's real multimodal CTR benchmark, `movielens_mm`): MovieLens latest-small, label =
rating >= 4, history = the user's earlier movies rated >= 4 in time order (at most 50), per-user
chronological 80/10/10 split (configs/movielens_din.yaml). Item text = title + genres + the tags users
wrote, embedded once by the offline all-MiniLM-L6-v2 encoder (384-d, cached).

Two arms per model, identical except for one input:
- `id+side`: item id, year bucket, genres and the title/tag words as a bag of words;
- `+text`:   the same plus the 384-d MiniLM vector of the item text (a dense modality, projected).
(`task.vector_modalities: []` vs `null`.) DIN, DCNv2, SIM, SDIM, TIN and QIN, each over 3 seeds,
each through `modalrec.train.run.train_run` (the path of `modalrec train`). QIN keeps the paper's
architecture (dropout 0.1, lr 2e-3) with L=3 QNN layers and R=3 rows (chosen on validation AUC over
R=4 (the paper's), L=4 and L=2, lr 1e-3, dropout 0.2 and embedding 64; the authors call R=3 the more
stable choice) and the authors' L2 on the embedding tables (FuxiCTR's embedding_regularizer), its
strength chosen on validation AUC for DIN and QIN alike (2e-4, the authors', 1e-3, 5e-3, 2e-2: 5e-3
for both; DCNv2, SIM, SDIM and TIN take the same value), but the embedding size (32) and batch
size (1024) of the others: the paper's 8192 leaves MovieLens's 80k training samples ten steps an epoch,
and at embedding 128 (item vectors of 5 x 128) one epoch took over 25 minutes on this shared 2-core
machine.

Writes benchmarks/results/movielens_mm.json and prints the README table.
Run: .venv/bin/python benchmarks/movielens_mm.py [--seeds 0,1,2] [--models din,qin] [--threads 1]
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
CONFIG = ROOT / "configs" / "movielens_din.yaml"

# L2 over the embedding tables, chosen on validation AUC for DIN and QIN (the same for the others)
COMMON = {"embed_dim": 32, "embedding_reg": 5e-3}
# model -> (params, train overrides)
MODELS = {
    "din": (COMMON | {"attention_softmax": True}, {}),
    "dcnv2": (COMMON, {}),
    "sim": (COMMON, {}),
    "sdim": (COMMON, {}),
    "tin": (COMMON, {}),
    "qin": (COMMON | {"num_layers": 3, "num_rows": 3, "dropout": 0.1}, {"lr": 0.002}),  # L=3, R=3: validation
}
ARMS = {"id+side": [], "+text": None}


def fmt(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.4f} ± {d['std']:.4f}"


def markdown(results: dict) -> str:
    lines = [("| model | AUC (id+side) | AUC (+text) | Δ AUC | gAUC (id+side) | gAUC (+text) | "
              "logloss (+text) | train samples/s (+text) |"), "|---|---|---|---|---|---|---|---|"]
    for model, arms in results["models"].items():
        a, b = arms.get("id+side"), arms.get("+text")
        if not a or not b:
            continue
        delta = b["test"]["auc"]["mean"] - a["test"]["auc"]["mean"]
        rate = b["timing"]["train_samples_per_s"]
        lines.append(f"| {model} | {fmt(a['test']['auc'])} | {fmt(b['test']['auc'])} | {delta:+.4f} | "
                     f"{fmt(a['test']['gauc'])} | {fmt(b['test']['gauc'])} | {fmt(b['test']['logloss'])} | "
                     f"{rate['mean']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/movielens-latest-small"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arms", default=",".join(ARMS), help="which arms: id+side, +text")
    ap.add_argument("--params", default="{}", help="JSON model params merged over the table's (a sweep)")
    ap.add_argument("--train", default="{}", help="JSON train overrides merged over the table's")
    ap.add_argument("--tag", default="", help="suffix of the result key and work folder (e.g. '[lr=1e-3]')")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/movielens_mm.json"))
    ap.add_argument("--work", default=str(ROOT / "benchmarks/.work/movielens_mm"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [m for m in args.models.split(",") if m]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update({"dataset": "movielens-latest-small + MiniLM item text (movielens_mm)", "seeds": seeds,
                    "config": str(CONFIG.relative_to(ROOT)), "epochs": args.epochs,
                    "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                "torch_threads": args.threads},
                    "started": datetime.now(UTC).isoformat()})
    results.setdefault("models", {})
    t0 = time.perf_counter()
    data = load_dataset("movielens_mm", path=args.data)
    print(f"data + text vectors: {time.perf_counter() - t0:.1f}s", flush=True)
    runs = []
    for model in models:
        params, train = MODELS[model]
        params = params | json.loads(args.params)
        train = train | json.loads(args.train)
        for arm, vectors in ((a, ARMS[a]) for a in args.arms.split(",") if a):
            overrides = [f"name=ml-mm-{model}-{arm}", f"model.name={model}", f"model.params={json.dumps(params)}",
                         f"task.vector_modalities={json.dumps(vectors)}", f"seeds={json.dumps(seeds)}",
                         f"train.epochs={args.epochs}", "train.progress=false", f"train.num_threads={args.threads}"]
            overrides += [f"train.{k}={json.dumps(v)}" for k, v in train.items()]
            cfg = load_config(CONFIG, overrides)
            t1 = time.perf_counter()
            run_dir = Path(args.work) / f"{model}{args.tag}-{arm.replace('+', 'plus-')}"
            m = train_run(cfg, run_dir, data=data, report=False)
            runs.append(run_dir)
            results["models"].setdefault(model + args.tag, {})[arm] = {
                "test": m["test"], "valid": m["valid"], "timing": m["timing"], "best_epoch": m["best_epoch"],
                "wall_seconds": time.perf_counter() - t1, "params": params, "train": train}
            print(f"{model:6s} {arm:8s} auc={fmt(m['test']['auc'])} gauc={fmt(m['test']['gauc'])} "
                  f"({time.perf_counter() - t1:.0f}s)", flush=True)
            results["finished"] = datetime.now(UTC).isoformat()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))  # after every run: a partial table survives a kill
    write_report(runs, Path(args.work) / "report.html", title="MovieLens multimodal CTR: with and without text")
    print(markdown(results))


if __name__ == "__main__":
    main()
