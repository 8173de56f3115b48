"""modalrec vs FuxiCTR: DIN and DCNv2 on the same MovieLens CTR data, same features and settings.

Run (from the repository root, with the project's virtualenv):
    .venv/bin/python benchmarks/ctr_vs_fuxictr.py [--epochs 3] [--batch-size 1024] [--models din,dcnv2]
        [--threads 2] [--fuxictr-workers 1] [--seeds 0,1,2] [--text] [--skip-install] [--data PATH]

What it does (idempotent; the FuxiCTR virtualenv is reused when it is already right):
1. Installs `fuxictr==2.3.10` (+ `polars<2`, torch pinned to 2.13.0, installed first so pip never
   pulls a CUDA build) into benchmarks/.venvs/fuxictr. FuxiCTR is only installed and called,
   never copied into this project.
2. Builds the CTR data ONCE with modalrec's CTRTask (MovieLens latest-small, label = rating >= 4,
   history = the user's previous rated movies, at most 50, per-user chronological 80/10/10) and
   exports it, integer-encoded with modalrec's own indices, in the format of the DIN and DCNv2
   that the fuxictr wheel ships (`model_zoo/LongCTR`, fed by the wheel's `LongCTRDataLoader`):
   train/valid/test.parquet (user_index, item_index, seq_len = modalrec's history cut, user_id,
   label), user_info.parquet (each user's full rated-item sequence in modalrec's History order)
   and item_info.parquet (per item: item_id, year bucket, genres). The loader cuts a user's
   sequence at seq_len and keeps the last 50 items: the same history modalrec builds.
3. Features, identical on both sides: user id; target item = [item id, year bucket (modalrec's
   10-quantile bucketing of the release year), genres (multi-valued, mean of the genre
   embeddings)]; history = the same three per history item (shared embeddings with the target).
   modalrec reads them with `task.text_modalities: []` (no title/tag words). With `--text`, both
   also get the 384-d MiniLM item text vector (`load_multimodal`): a dense modality in modalrec,
   a frozen `pretrained_emb` item field projected to the embedding size in FuxiCTR. The default
   comparison is the one without it.
   After the FuxiCTR run, the first test batch as FuxiCTR's loader built it (user, target,
   history items with their year/genres, label) is compared row by row with modalrec's samples.
4. Trains each model in its own child process (so peak RSS is per process): modalrec through
   `train_run` (the code path of `modalrec train`), FuxiCTR through benchmarks/fuxictr_runner.py
   in the FuxiCTR venv. Both: the same embedding size, layers, batch size, epochs, Adam lr,
   seed, gradient clipping at norm 10, early stopping on validation AUC with patience 2, LR x0.1
   on a validation plateau (FuxiCTR's behaviour), best weights restored before the test, torch
   threads = --threads. Initialisation: by default (`--init fuxictr`) modalrec starts from
   FuxiCTR's scheme (`model.init`: embeddings N(0, 1e-4), Xavier-normal Linear weights, zero
   biases), so the two sides differ in code, not in the starting point; `--init own` keeps
   modalrec's own (embeddings N(0, 0.05), PyTorch's Linear default).
5. Measures, the same way on both sides:
   - train samples/s = training samples / wall seconds of the training loop only (batch building
     included, validation excluded): modalrec's Trainer times its epoch loop; for FuxiCTR the
     runner times `train_epoch` minus the `eval_step` it calls (see fuxictr_runner.py);
   - eval seconds = predicting the test split with the best weights (batch size = --batch-size
     on both sides), data loading included;
   - AUC and logloss of those test predictions, computed here with scikit-learn for both;
   - train samples per CPU second (user + system, DataLoader workers included) over the same
     span: a secondary figure that a busy machine distorts less than wall time;
   - peak RSS = ru_maxrss of the child process (FuxiCTR's DataLoader workers reported apart).
6. Writes benchmarks/results/ctr_vs_fuxictr.json and prints a Markdown table.

Acceptance (issue): at equal AUC (|gap| <= 0.002), modalrec's DIN trains at >= 2x FuxiCTR's samples/s.
Timings are only meaningful on a quiet machine: the JSON records the load average before and after.
On a busy 2-core machine use --threads 1: two torch threads on cores that other jobs occupy
wait on each other (OpenMP spin barriers) and both libraries slow down about 5x, which says
nothing about either.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks/.venvs/fuxictr"
WORK = ROOT / "benchmarks/.work/ctr_vs_fuxictr"
RUNNER = ROOT / "benchmarks/fuxictr_runner.py"
OUT = ROOT / "benchmarks/results/ctr_vs_fuxictr.json"
FUXICTR_VERSION = "2.3.10"
TORCH_VERSION = "2.13.0"
DATASET_ID = "movielens_small_ctr"

EMBED_DIM = 32
MAX_HISTORY = 50
LR = 1e-3
PATIENCE = 2
AUC_TOLERANCE = 0.002
TARGET_SPEEDUP = 2.0

# One setting per model, written once for each library. DIN: attention MLP [64, 32] with Dice over
# [q, k, q - k, q * k], unnormalised weights (paper); DNN [200, 80] ReLU over [user, target,
# interest]. DCNv2: parallel, 3 full-rank cross layers, DNN [256, 128] ReLU. No dropout, no batch norm.
MODELS = {
    "din": {
        "modalrec": {"embed_dim": EMBED_DIM, "attention_hidden": [64, 32], "attention_activation": "dice",
                     "attention_softmax": False, "mlp_hidden": [200, 80], "activation": "relu", "dropout": 0.0,
                     "use_product": False},
        "fuxictr_model": "DIN",
        "fuxictr": {"embedding_dim": EMBED_DIM, "attention_hidden_units": [64, 32],
                    "attention_hidden_activations": "Dice", "attention_output_activation": None,
                    "attention_dropout": 0, "din_use_softmax": False, "dnn_hidden_units": [200, 80],
                    "dnn_activations": "relu", "net_dropout": 0, "batch_norm": False},
    },
    "dcnv2": {
        "modalrec": {"embed_dim": EMBED_DIM, "cross_layers": 3, "dnn_hidden": [256, 128], "activation": "relu",
                     "dropout": 0.0, "batch_norm": False, "structure": "parallel", "use_history": True},
        "fuxictr_model": "DCNv2",
        "fuxictr": {"embedding_dim": EMBED_DIM, "model_structure": "parallel", "use_low_rank_mixture": False,
                    "num_cross_layers": 3, "parallel_dnn_hidden_units": [256, 128], "dnn_activations": "relu",
                    "net_dropout": 0, "batch_norm": False},
    },
}


# ------------------------------------------------------------------------------------------ setup
def ensure_venv(skip_install: bool) -> Path:
    """The FuxiCTR virtualenv's python; created/installed unless it already has the pinned versions."""
    py = VENV / "bin/python"
    if skip_install:
        if not py.exists():
            sys.exit(f"--skip-install: {py} does not exist; run once without --skip-install")
        return py
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = ("import importlib.metadata as m\nfor n in ('torch', 'fuxictr', 'polars'):\n"
             "    try: print(n, m.version(n))\n    except m.PackageNotFoundError: print(n, '-')")
    have = dict(line.split() for line in subprocess.run([str(py), "-c", probe], check=True, capture_output=True,
                                                        text=True).stdout.splitlines())
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if not have["torch"].startswith(TORCH_VERSION):  # first, so fuxictr's torch requirement is already met
        subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    polars_ok = have["polars"] != "-" and int(have["polars"].split(".")[0]) < 2
    if have["fuxictr"] != FUXICTR_VERSION or not polars_ok:
        subprocess.run([*pip, f"fuxictr=={FUXICTR_VERSION}", "polars<2", f"torch=={TORCH_VERSION}"], check=True)
    return py


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "load_avg_start": list(os.getloadavg())}


# ------------------------------------------------------------------------------------------ data
def task_config(text: bool):
    from modalrec.config import TaskConfig

    return TaskConfig(kind="ctr", label_column="value", label_threshold=4.0, sample_channels=["rating"],
                      history_channels=["rating"], max_history=MAX_HISTORY,
                      split={"method": "per_user_time", "valid": 0.1, "test": 0.1},
                      text_modalities=[], vector_modalities=["text_emb"] if text else [])


def load_data(path: str, text: bool):
    from modalrec.datasets import movielens

    return movielens.load_multimodal(path) if text else movielens.load(path)


def build_data(args, data_dir: Path):
    """CTRTask once -> the FuxiCTR LongCTR files + the split arrays modalrec's child must reproduce."""
    import numpy as np
    import pandas as pd

    from modalrec.tasks import prepare_task

    data = load_data(args.data, args.text)
    task = prepare_task(data, task_config(args.text))
    side, schema, hist = task.collator.item_table, task.schema, task.history
    data_dir.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, s in task.splits.items():
        pd.DataFrame({
            "user_index": s.users.astype(np.int64), "item_index": s.items.astype(np.int64),
            "seq_len": s.cut.astype(np.int64), "user_id": task.user_rows[s.users].astype(np.int64),
            "label": s.labels.astype(np.int64),  # int keeps the loader's stacked array integer
        }).to_parquet(data_dir / f"{split}.parquet", index=False)
        expected.update({f"{split}:users": s.users, f"{split}:items": s.items, f"{split}:cut": s.cut,
                         f"{split}:labels": s.labels})
    np.savez(data_dir / "expected_splits.npz", **expected)
    # histories are rows of the event log's users (`user_index`); `user_id` is the model's user vocabulary row
    seqs = [hist.items[hist.ptr[u]:hist.ptr[u + 1]].astype(np.int64) for u in range(hist.n_users)]
    pd.DataFrame({"user_index": np.arange(hist.n_users), "full_item_seq": seqs}).to_parquet(
        data_dir / "user_info.parquet", index=False)
    items = {"item_index": np.arange(schema.n_items), "item_id": np.arange(schema.n_items)}
    for name, arr in side.categorical.items():
        items[name] = arr.astype(np.int64)
    for name, arr in side.multi.items():
        items[name] = list(arr.astype(np.int64))
    pretrained, files = {}, {}
    for name, arr in side.dense.items():  # --text only: the item text vector, keyed by item index
        keys = np.flatnonzero(side.presence[name])
        items[name] = np.where(side.presence[name], np.arange(schema.n_items), 0)  # 0: padding / absent
        files[name] = str(data_dir / f"{name}.npz")
        np.savez(files[name], key=keys.astype(np.int64), value=np.asarray(arr[keys], dtype=np.float32))
        pretrained[name] = int(arr.shape[1])
    pd.DataFrame(items).to_parquet(data_dir / "item_info.parquet", index=False)
    meta = {
        "dir": str(data_dir), "n_users": schema.n_users, "n_items": schema.n_items,
        "item_categorical": dict(schema.item_categorical),
        "item_multi": {k: [v, int(side.multi[k].shape[1])] for k, v in schema.item_multi.items()},
        "item_pretrained": pretrained, "pretrained_files": files,
        "samples": {k: len(v) for k, v in task.splits.items()},
        "positive_rate": {k: float(v.labels.mean()) for k, v in task.splits.items()},
    }
    return task, meta


def check_fuxictr_batch(task, batch_file: Path) -> str:
    """The first test batch as FuxiCTR's loader built it == modalrec's first test samples, row by row."""
    import numpy as np

    z = np.load(batch_file)
    side, test = task.collator.item_table, task.splits["test"]
    b = len(z["user_id"])
    fmask = z["mask"].astype(bool)
    ids = z["item:item_id"]
    mr_hist, mmask, _ = task.history.window(test.users[:b], test.cut[:b], MAX_HISTORY)
    problems = []

    def same(what, a, e):
        if a.shape != e.shape or not np.array_equal(a, e):
            problems.append(what)

    same("user", z["user_id"].astype(np.int64), task.user_rows[test.users[:b]])
    same("label", z["label"].astype(np.float32), test.labels[:b])
    same("target item", ids[:, -1], test.items[:b])
    same("history length", fmask.sum(1), mmask.sum(1))
    # both keep each row's history in time order (FuxiCTR pads in front, modalrec behind)
    same("history items", ids[:, :-1][fmask], mr_hist[mmask])
    for name, arr in {**side.categorical, **side.multi}.items():
        f = z[f"item:{name}"]
        same(f"target {name}", f[:, -1], arr[test.items[:b]])
        same(f"history {name}", f[:, :-1][fmask], arr[mr_hist[mmask]])
    if problems:
        raise SystemExit(f"FuxiCTR's first test batch differs from modalrec's samples in: {', '.join(problems)}")
    return f"ok: first test batch ({b} rows) identical in user, label, target and history items and item features"


# ------------------------------------------------------------------------------------------ runs
def run_child(cmd: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); last lines of {log}:\n{tail}")


def common_spec(args, model: str, out: Path) -> dict:
    return {"model": model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": LR, "seed": args.seed,
            "threads": args.threads, "patience": PATIENCE, "max_len": MAX_HISTORY, "out": str(out)}


def run_fuxictr(py: Path, args, model: str, meta: dict) -> dict:
    out = WORK / "runs" / f"fuxictr-{model}"
    spec = {**common_spec(args, model, out), "data": meta, "dataset_id": DATASET_ID,
            "fuxictr_model": MODELS[model]["fuxictr_model"], "params": MODELS[model]["fuxictr"],
            "workers": args.fuxictr_workers}
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    run_child([str(py), str(RUNNER), str(out / "spec.json")], out / "log.txt", args.threads)
    return json.loads((out / "result.json").read_text())


def run_modalrec(args, model: str, meta: dict) -> dict:
    out = WORK / "runs" / f"modalrec-{model}"
    spec = {**common_spec(args, model, out), "data_path": args.data, "text": args.text,
            "params": MODELS[model]["modalrec"],
            "init": ({"scheme": "xavier_normal", "embedding_std": 1e-4} if args.init == "fuxictr"
                     else {"scheme": "model", "embedding_std": None}),
            "expected": str(Path(meta["dir"]) / "expected_splits.npz")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    run_child([sys.executable, str(Path(__file__).resolve()), "--child-modalrec", str(out / "spec.json")],
              out / "log.txt", args.threads)
    return json.loads((out / "result.json").read_text())


def child_modalrec(spec_path: str) -> None:
    """Runs in a child process of the project venv: train_run, then timed test prediction."""
    import resource

    import numpy as np
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    import modalrec
    from modalrec.config import RunConfig
    from modalrec.models import build_model
    from modalrec.tasks import prepare_task
    from modalrec.train.checkpoint import load_checkpoint
    from modalrec.train.run import train_run

    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = Path(spec["out"])

    # CPU seconds of the training loop, measured around the Trainer's own epoch loop (wall time is
    # the Trainer's): a wrapper for measuring only, the loop itself is unchanged.
    from modalrec.train.trainer import Trainer

    def cpu_s() -> float:
        return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    cpu = {"seconds": 0.0, "samples": 0}
    train_epoch = Trainer._train_epoch

    def counted_train_epoch(self, epoch, *args, **kwargs):  # the Trainer's own arguments, passed through
        c0 = cpu_s()
        loss, n, secs = train_epoch(self, epoch, *args, **kwargs)
        cpu["seconds"] += cpu_s() - c0
        cpu["samples"] += n
        return loss, n, secs

    Trainer._train_epoch = counted_train_epoch
    cfg = RunConfig.model_validate({
        "name": f"ctr-vs-fuxictr-{spec['model']}",
        "data": {"source": "movielens", "path": spec["data_path"]},
        "task": task_config(spec["text"]).model_dump(),
        "model": {"name": spec["model"], "params": spec["params"], "init": spec["init"]},
        "train": {"epochs": spec["epochs"], "batch_size": spec["batch_size"], "eval_batch_size": spec["batch_size"],
                  "lr": spec["lr"], "optimizer": "adam", "weight_decay": 0.0, "patience": spec["patience"],
                  "monitor": "auc", "lr_factor": 0.1, "lr_patience": 0, "clip_norm": 10.0,
                  "num_threads": spec["threads"], "device": "cpu", "progress": False},
        "seeds": [spec["seed"]],
    })
    data = load_data(spec["data_path"], spec["text"])
    metrics = train_run(cfg, out / "run", data=data, report=False)

    task = prepare_task(data, cfg.task)
    expected = np.load(spec["expected"])
    for split, s in task.splits.items():
        for field in ("users", "items", "cut", "labels"):
            if not np.array_equal(getattr(s, field), expected[f"{split}:{field}"]):
                raise SystemExit(f"modalrec's {split} {field} differ from the exported FuxiCTR data")
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    load_checkpoint(out / "run" / "checkpoints" / f"seed_{spec['seed']}", "best", model, restore_rng=False)
    t0 = time.perf_counter()
    logits = task.predict(model, "test", spec["batch_size"])
    eval_s = time.perf_counter() - t0
    np.save(out / "pred_test.npy", 1.0 / (1.0 + np.exp(-logits)))

    timing = metrics["timing"]
    result = {
        "library": "modalrec", "version": modalrec.__version__, "torch": torch.__version__,
        "model": spec["model"], "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "torch_threads": torch.get_num_threads(),
        "train_samples_per_s": timing["train_samples_per_s"]["mean"],
        "train_cpu_seconds": cpu["seconds"],
        "train_samples_per_cpu_s": cpu["samples"] / cpu["seconds"] if cpu["seconds"] > 0 else None,
        "epochs_trained": len(metrics["history"][0]), "best_epoch": metrics["best_epoch"][0],
        "epoch_seconds": timing["epoch_seconds"]["mean"],
        "train_run_eval_seconds": timing["eval_seconds"]["mean"],  # valid + test incl. all metrics
        "eval_seconds": eval_s, "test_rows": len(logits),
        "train_run_test_auc": metrics["test"]["auc"]["mean"],
        "rss_after_import_mb": rss_import,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------ report
def score(pred_file: Path, labels) -> dict:
    import numpy as np
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.load(pred_file)
    if len(p) != len(labels):
        raise SystemExit(f"{pred_file}: {len(p)} predictions for {len(labels)} test rows")
    return {"auc": float(roc_auc_score(labels, p)), "logloss": float(log_loss(labels, p))}


def over_seeds(runs: list[dict]) -> dict:
    """One library's runs of one model over seeds: the means of every number (the keys of one run, so the
    table and the acceptance read means), AUC's standard deviation and per-seed values, and the runs."""
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed":
            out[k] = float(np.mean([r[k] for r in runs]))
    out.pop("seed", None)
    out["seeds"] = [r["seed"] for r in runs]
    out["auc_runs"] = [r["auc"] for r in runs]
    out["auc_std"] = float(np.std(out["auc_runs"]))
    out["runs"] = runs
    return out


def markdown(res: dict) -> str:
    lines = ["| model | library | AUC | logloss | train samples/s | train samples/CPU-s | eval s (test) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for model in res["settings"]["models"]:
        for lib in ("modalrec", "fuxictr"):
            r = res["results"][lib][model]
            auc = f"{r['auc']:.4f}" + (f" ± {r['auc_std']:.4f}" if len(r.get("auc_runs", [])) > 1 else "")
            lines.append(f"| {model} | {lib} | {auc} | {r['logloss']:.4f} | "
                         f"{r['train_samples_per_s']:,.0f} | {r['train_samples_per_cpu_s']:,.0f} | {r['eval_seconds']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines.append("")
    for model in res["settings"]["models"]:
        lines.append(f"- {model}: modalrec/FuxiCTR train samples/s = {res['speedup'][model]:.2f}x "
                     f"(per CPU second {res['speedup_per_cpu_s'][model]:.2f}x), "
                     f"AUC gap (modalrec - FuxiCTR) = {res['auc_gap'][model]:+.4f}")
    acc = res.get("acceptance")
    if acc:
        lines.append(f"- acceptance (DIN: |AUC gap| <= {AUC_TOLERANCE} and speedup >= {TARGET_SPEEDUP}x): "
                     f"{'PASS' if acc['pass'] else 'FAIL'}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child-modalrec":
        child_modalrec(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/movielens-latest-small"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--models", default="din,dcnv2")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in both libraries' processes")
    ap.add_argument("--fuxictr-workers", type=int, default=1,
                    help="DataLoader workers of FuxiCTR's LongCTRDataLoader (its default: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (overrides --seed): every library and "
                    "model runs once per seed; the table and the acceptance read the means over seeds")
    ap.add_argument("--text", action="store_true", help="add the MiniLM item text vector on both sides")
    ap.add_argument("--init", choices=["fuxictr", "own"], default="fuxictr",
                    help="modalrec's initialisation: FuxiCTR's scheme (default) or modalrec's own")
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    args.data = str(Path(args.data).resolve())

    started = datetime.now(UTC).isoformat()
    mach = machine()
    py = ensure_venv(args.skip_install)
    t0 = time.perf_counter()
    task, meta = build_data(args, WORK / "data" / DATASET_ID)
    print(f"data: {meta['samples']} samples, {meta['n_users'] - 1} users, {meta['n_items'] - 1} items "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)
    labels = task.splits["test"].labels.astype("float64")

    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    results: dict = {"modalrec": {}, "fuxictr": {}}
    check = None
    for model in models:
        runs: dict[str, list[dict]] = {"fuxictr": [], "modalrec": []}
        for seed in seeds:
            args.seed = seed
            for lib in ("fuxictr", "modalrec"):
                t0 = time.perf_counter()
                r = run_fuxictr(py, args, model, meta) if lib == "fuxictr" else run_modalrec(args, model, meta)
                r.update(score(WORK / "runs" / f"{lib}-{model}" / "pred_test.npy", labels))
                r["wall_seconds"] = time.perf_counter() - t0
                r["seed"] = seed
                runs[lib].append(r)
                if lib == "fuxictr" and check is None:
                    check = check_fuxictr_batch(task, WORK / "runs" / f"fuxictr-{model}" / "first_test_batch.npz")
                print(f"{lib:8s} {model:6s} seed {seed} auc={r['auc']:.4f} logloss={r['logloss']:.4f} "
                      f"train={r['train_samples_per_s']:,.0f}/s eval={r['eval_seconds']:.2f}s "
                      f"rss={r['peak_rss_mb']:.0f}MB", flush=True)
        for lib, rs in runs.items():
            results[lib][model] = over_seeds(rs)

    mach["load_avg_end"] = list(os.getloadavg())
    speedup = {m: results["modalrec"][m]["train_samples_per_s"] / results["fuxictr"][m]["train_samples_per_s"]
               for m in models}
    speedup_cpu = {m: results["modalrec"][m]["train_samples_per_cpu_s"]
                   / results["fuxictr"][m]["train_samples_per_cpu_s"] for m in models}
    gap = {m: results["modalrec"][m]["auc"] - results["fuxictr"][m]["auc"] for m in models}
    gap_runs = {m: [a - b for a, b in zip(results["modalrec"][m]["auc_runs"], results["fuxictr"][m]["auc_runs"])]
                for m in models}
    res = {
        "benchmark": "ctr_vs_fuxictr", "started": started, "finished": datetime.now(UTC).isoformat(),
        "machine": mach,
        "settings": {
            "dataset": "movielens-latest-small", "data_path": args.data, "label": "rating >= 4",
            "split": "per_user_time 80/10/10", "max_history": MAX_HISTORY, "models": models,
            "features": ["user_id", "item: item_id + year bucket + genres (mean-pooled)",
                         "history: the same item features per position (shared embeddings)"]
                        + (["item text: 384-d MiniLM vector, frozen, projected"] if args.text else []),
            "embedding_dim": EMBED_DIM, "epochs": args.epochs, "batch_size": args.batch_size, "lr": LR,
            "optimizer": "adam", "seeds": seeds, "torch_threads": args.threads,
            "fuxictr_loader_workers": args.fuxictr_workers, "early_stop_patience": PATIENCE,
            "lr_on_plateau": 0.1, "clip_grad_norm": 10.0, "text": args.text, "modalrec_init": args.init,
            "model_params": {m: {"modalrec": MODELS[m]["modalrec"], "fuxictr": MODELS[m]["fuxictr"]} for m in models},
            "fuxictr": {"version": FUXICTR_VERSION, "models": "model_zoo.LongCTR (DIN, DCNv2) + LongCTRDataLoader"},
        },
        "data": {k: meta[k] for k in ("n_users", "n_items", "samples", "positive_rate", "item_categorical",
                                      "item_multi")},
        "feature_check": check,
        "results": results, "speedup": speedup, "speedup_per_cpu_s": speedup_cpu, "auc_gap": gap,
        "auc_gap_per_seed": gap_runs,
    }
    if "din" in models:
        ok_auc = abs(gap["din"]) <= AUC_TOLERANCE
        res["acceptance"] = {"auc_within_tolerance": ok_auc, "speedup_at_least_target": speedup["din"] >= TARGET_SPEEDUP,
                             "auc_tolerance": AUC_TOLERANCE, "target_speedup": TARGET_SPEEDUP,
                             "pass": ok_auc and speedup["din"] >= TARGET_SPEEDUP}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(markdown(res))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
