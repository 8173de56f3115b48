"""Live-streaming gift prediction: SIM vs MMBee (MFQ + GIE) and its ablations on the simulator.

Data: `modalrec.sim.livestream` (preset `bench` by default: ~341k watch events, 9.6k users, 400+
streamers), raw content encoded once by the frozen encoders of configs/livestream/mmbee.yaml
(`data.encode`, cached). Task: GTR of each watch (label = a gift during the watch), one global
time cut 70/10/20, histories of the user's earlier watches and gifts, each tagged with its channel (at most 50).

Runs, each through `modalrec.train.run.train_run` (the path of `modalrec train`):
- `sim` and `mmbee` over `--seeds` (default 0,1,2);
- ablations over `--ablation-seeds` (default 0): `mmbee-no-mfq`, `mmbee-no-gie`; MMBee with one content
  modality at a time (`mmbee-frames`, `mmbee-speech`, `mmbee-comments`) over `--modality-seeds` (default 0).
- `--variants` picks a subset; processes given disjoint subsets and one `--work` folder can train in
  parallel, and a last one with `--reuse` and every variant collects them and runs the analyses.

Analyses on the test split (the best checkpoint of every seed, logits averaged over seeds):
- AUC, UAUC, GAUC, logloss of every run, and of the simulator's ground-truth probabilities
  `p_true` on the same samples (the ceiling no model can pass in expectation);
- per user-activity bucket by gifts in the training period: cold (0 gifts), sparse (1-2), heavy (>= 3), on the
  seed-averaged logits and seed by seed (`buckets_per_seed`), with GIE's GAUC gain per bucket paired seed by seed
  (`gie_gain_per_seed`: MMBee minus SIM + MFQ, SIM + GIE minus SIM), so a difference between buckets can be held
  against its spread;
- missing content: MMBee (seed 0) with every content modality removed from a growing share of the
  test segments (their token masks cleared: the model sees an absent modality, never a zero vector);
- top-K streamers: for up to `--topk-users` test users who gifted in the test period, every streamer
  live in the test period is scored at its first test segment (history cut at the test start);
  Recall@10, Precision@10, NDCG@10 against the streamers each user gifted.

With `--kuailive FOLDER` the same runs and analyses read the KuaiLive release instead
(configs/livestream/*_kuailive.yaml: GTR of each click, the room's title vector as MMBee's one content token),
without the ground-truth rows and the one-modality variants.

Writes benchmarks/results/livestream.json, livestream.md and plots, plus an HTML report of the runs.
Run: .venv/bin/python benchmarks/livestream.py [--preset bench] [--seeds 0,1,2] [--epochs 4]
     .venv/bin/python benchmarks/livestream.py --kuailive /path/to/KuaiLive --out benchmarks/results/livestream_kuailive.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from modalrec.config import load_config
from modalrec.eval.compare import KEYS, between_user_auc, bucket_metrics, gains, over_seeds, overall_gains
from modalrec.eval.metrics import ctr_metrics
from modalrec.eval.report import write_report
from modalrec.models import build_model
from modalrec.tasks import prepare_task
from modalrec.tasks.base import SampleSet
from modalrec.train.checkpoint import load_checkpoint
from modalrec.train.run import load_data, train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "livestream"
TOKENS = ["frames_emb", "speech_emb", "comments_emb"]
VARIANTS = {  # name -> (config file, model params overrides, graph enabled)
    "sim": ("sim.yaml", {}, False),
    # MMBee's base ranker: SIM without the user-id embedding, as configs/livestream/mmbee.yaml; the partner of the
    # ablations' "X on SIM" gains (the shipped SIM keeps its user-id table: its best setting, the baseline)
    "sim-no-user-id": ("sim.yaml", {"use_user_id": False}, False),
    "mmbee": ("mmbee.yaml", {}, True),
    "mmbee-no-mfq": ("mmbee.yaml", {"use_mfq": False}, True),
    "mmbee-no-gie": ("mmbee.yaml", {"use_gie": False}, False),
    "mmbee-frames": ("mmbee.yaml", {"modalities": ["frames_emb"]}, True),
    "mmbee-speech": ("mmbee.yaml", {"modalities": ["speech_emb", "speech_mfcc"]}, True),
    "mmbee-comments": ("mmbee.yaml", {"modalities": ["comments_emb"]}, True),
}
ONE_MODALITY = ("mmbee-frames", "mmbee-speech", "mmbee-comments")  # the simulator's content only
MAIN = ("sim", "mmbee")
ABLATIONS = ("mmbee-no-mfq", "mmbee-no-gie", "sim-no-user-id")


def fmt(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.4f} ± {d['std']:.4f}" if d.get("std") else f"{d['mean']:.4f}"


def config_for(variant: str, args, seeds: list[int]):
    file, params, graph = VARIANTS[variant]
    if args.kuailive:  # the release's own configs: clicks as samples, one title vector per room
        file = file.replace(".yaml", "_kuailive.yaml")
        data = [f"data.path={json.dumps(str(Path(args.kuailive).resolve()))}"]
    else:
        data = [f"data.params={json.dumps(data_params(args))}"]
    cfg = load_config(CONFIGS / file, [
        f"name=live-{variant}", f"seeds={json.dumps(seeds)}", f"train.epochs={args.epochs}",
        "train.progress=false", f"train.num_threads={args.threads}", *data,
        f"task.graph.enabled={json.dumps(graph)}"]
        + [o for o in args.set if not variant.startswith("sim") or not o.startswith("model.")])
    cfg.model.params.update(params)
    return cfg


def data_params(args) -> dict:
    if args.kuailive:
        return {"kuailive": str(args.kuailive)}
    p = {"preset": args.preset}
    if args.users:
        p["n_users"] = args.users
    return p | json.loads(args.world)


def seed_logits(cfg, task, run_dir: Path) -> dict[int, np.ndarray]:
    """Test logits of the best checkpoint of each of the run's seeds."""
    out = {}
    for seed in cfg.seeds:
        model = build_model(cfg.model.name, task.schema, cfg.model.params)
        load_checkpoint(run_dir / "checkpoints" / f"seed_{seed}", "best", model, restore_rng=False)
        out[seed] = task.predict(model.eval(), "test", 4096)
    return out


def model_of(cfg, task, run_dir: Path, seed: int):
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    load_checkpoint(run_dir / "checkpoints" / f"seed_{seed}", "best", model, restore_rng=False)
    return model.eval()


def buckets(data, task) -> dict[str, np.ndarray]:
    """Test-sample masks by the user's gifts in the training period (before the first valid sample)."""
    ev = data.events
    ch = np.asarray(ev["channel"].to_numpy(zero_copy_only=False), dtype=object)
    t = ev["time"].to_numpy(zero_copy_only=False).astype(np.int64)
    cutoff = int(task.splits["valid"].times.min())
    gifts = ev.filter(pa.array((ch == "gift") & (t < cutoff)))
    uidx = task.log_users.lookup(gifts["user_id"])  # event log rows, as the samples' users
    n_gifts = np.bincount(uidx, minlength=len(task.log_users))[task.splits["test"].users]
    return {"cold (0 gifts)": n_gifts == 0, "sparse (1-2 gifts)": (n_gifts >= 1) & (n_gifts <= 2),
            "heavy (>=3 gifts)": n_gifts >= 3}


GIE_PAIRS = {"GIE in MMBee (mmbee - mmbee-no-gie)": ("mmbee", "mmbee-no-gie"),
             "GIE on SIM (mmbee-no-mfq - sim-no-user-id)": ("mmbee-no-mfq", "sim-no-user-id")}
MFQ_PAIRS = {"MFQ in MMBee (mmbee - mmbee-no-mfq)": ("mmbee", "mmbee-no-mfq"),
             "MFQ on SIM (mmbee-no-gie - sim-no-user-id)": ("mmbee-no-gie", "sim-no-user-id")}


@torch.no_grad()
def missing_content_curve(cfg, task, run_dir: Path, shares=(0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0) -> list:
    """MMBee's test metrics with every content modality absent on a share of the test segments."""
    model = model_of(cfg, task, run_dir, cfg.seeds[0])
    side = task.collator.item_table
    s = task.splits["test"]
    items = np.unique(s.items)
    rng = np.random.default_rng(seed)
    order = rng.permutation(items)
    saved = {n: side.token_mask[n].copy() for n in side.token_mask}
    saved_p = {n: side.presence[n].copy() for n in side.presence}
    out = []
    try:
        for share in shares:
            gone = order[: round(share * len(order))]
            for n in side.token_mask:
                side.token_mask[n][:] = saved[n]
                side.token_mask[n][gone] = False
            for n in side.presence:
                side.presence[n][:] = saved_p[n]
                side.presence[n][gone] = False
            logits = task.predict(model, "test", 4096)
            r = ctr_metrics(s.labels, logits, s.users)
            out.append({"share_without_content": share} | {k: r[k] for k in KEYS})
    finally:
        for n in side.token_mask:
            side.token_mask[n][:] = saved[n]
        for n in side.presence:
            side.presence[n][:] = saved_p[n]
    return out


@torch.no_grad()
def topk_streamers(data, models: dict, n_users: int, k: int = 10, seed: int = 0, chunk: int = 4096) -> dict:
    """Recall/Precision/NDCG@k of ranking every streamer live in the test period for test gifters.
    `models`: name -> (model, its task); the tasks share vocabularies and splits (same data and split)."""
    task = next(iter(models.values()))[1]
    t0 = int(task.splits["test"].times.min())
    streamer = task.collator.item_table.categorical["streamer_id"]
    items = data.items
    seg_idx = task.item_vocab.lookup(items["item_id"])
    start = items["start_time"].to_numpy(zero_copy_only=False).astype(np.int64)
    live = (seg_idx > 0) & (start >= t0)
    # each streamer's first segment of the test period
    cand_items = {}
    for i in np.argsort(start[live], kind="stable"):
        it = int(seg_idx[live][i])
        cand_items.setdefault(int(streamer[it]), it)
    codes = np.array(sorted(cand_items), dtype=np.int64)
    cands = np.array([cand_items[c] for c in codes], dtype=np.int64)
    ev = data.events
    ch = np.asarray(ev["channel"].to_numpy(zero_copy_only=False), dtype=object)
    t = ev["time"].to_numpy(zero_copy_only=False).astype(np.int64)
    g = ev.filter(pa.array((ch == "gift") & (t >= t0)))
    gu = task.log_users.lookup(g["user_id"])  # event log rows: the History's
    gs = streamer[task.item_vocab.lookup(g["item_id"])]
    relevant: dict[int, set] = {}
    for u, a in zip(gu.tolist(), gs.tolist(), strict=True):
        if u > 0 and a in cand_items:
            relevant.setdefault(u, set()).add(a)
    users = np.array(sorted(relevant), dtype=np.int64)
    rng = np.random.default_rng(seed)
    if len(users) > n_users:
        users = np.sort(rng.choice(users, n_users, replace=False))
    cut = task.history.cut_before(users, np.full(len(users), t0, np.int64))
    res = {}
    for name, (model, mtask) in models.items():
        hits = {"recall": [], "precision": [], "ndcg": []}
        for u, c in zip(users, cut, strict=True):
            n = len(cands)
            s = SampleSet(np.full(n, u), cands, np.full(n, t0, np.int64), np.full(n, c), np.zeros(n, np.float32))
            # in chunks: KuaiLive has tens of thousands of streamers live in a test period
            scores = np.concatenate([model(mtask.collate(s.take(np.arange(i, min(i + chunk, n))), train=False)).numpy()
                                     for i in range(0, n, chunk)])
            top = codes[np.argsort(-scores, kind="stable")[:k]]
            rel = relevant[int(u)]
            gain = np.array([1.0 if a in rel else 0.0 for a in top])
            ideal = np.sum(1.0 / np.log2(np.arange(2, min(len(rel), k) + 2)))
            hits["recall"].append(gain.sum() / len(rel))
            hits["precision"].append(gain.sum() / k)
            hits["ndcg"].append(float(np.sum(gain / np.log2(np.arange(2, k + 2)))) / ideal)
        res[name] = {f"{m}@{k}": float(np.mean(v)) for m, v in hits.items()}
    res["setting"] = {"users": len(users), "candidate_streamers": len(cands), "k": k}
    return res


def plots(results: dict, out: Path) -> list[str]:
    """PNGs beside the results file, named after it (livestream.json -> livestream_buckets.png, ...), so the
    results of another world or setting keep their own plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    curve = results.get("missing_content")
    if curve:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        x = [c["share_without_content"] for c in curve]
        for key in ("auc", "gauc"):
            ax.plot(x, [c[key] for c in curve], marker="o", label=f"MMBee {key.upper()}")
        if "sim" in results["runs"]:
            sim = results["runs"]["sim"]["test"]
            ax.axhline(sim["auc"]["mean"], ls="--", c="gray", label="SIM AUC (no content)")
        ax.set_xlabel("share of test segments without content")
        ax.set_ylabel("test metric")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(f"{out.stem}_missing_content.png")
        fig.savefig(out.parent / files[-1], dpi=120)
    b = results.get("buckets")
    if b:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = [n for n in ("sim", "sim-no-user-id", "mmbee-no-gie", "mmbee-no-mfq", "mmbee") if n in b]
        groups = list(next(iter(b.values())))
        w = 0.8 / max(len(names), 1)
        for i, n in enumerate(names):
            ax.bar(np.arange(len(groups)) + i * w, [b[n].get(gp, {}).get("gauc", np.nan) for gp in groups], w,
                   label=n)
        ax.set_xticks(np.arange(len(groups)) + w * (len(names) - 1) / 2, groups, fontsize=8)
        ax.set_ylabel("test GAUC")
        lo = np.nanmin([b[n][gp]["gauc"] for n in names for gp in groups if gp in b[n]])
        ax.set_ylim(max(0.0, lo - 0.05), None)
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(f"{out.stem}_buckets.png")
        fig.savefig(out.parent / files[-1], dpi=120)
    return files


def markdown(results: dict) -> str:
    lines = ["| model | seeds | AUC | UAUC | GAUC | logloss | train samples/s |", "|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        t = r["test"]
        lines.append(f"| {name} | {len(r['seeds'])} | {fmt(t.get('auc'))} | {fmt(t.get('uauc'))} | "
                     f"{fmt(t.get('gauc'))} | {fmt(t.get('logloss'))} | "
                     f"{r['timing']['train_samples_per_s']['mean']:,.0f} |")
    gt = results.get("ground_truth")
    if gt:
        lines.append(f"| ground truth p_true (ceiling) | - | {gt['auc']:.4f} | {gt['uauc']:.4f} | {gt['gauc']:.4f} | "
                     f"{gt['logloss']:.4f} | - |")
    b = results.get("buckets")
    if b:
        groups = list(next(iter(b.values())))
        lines += ["", "| model | " + " | ".join(f"GAUC {g}" for g in groups) + " |",
                  "|---|" + "---|" * len(groups)]
        for name, r in b.items():
            lines.append(f"| {name} | " + " | ".join(f"{r[g]['gauc']:.4f}" if g in r else "-" for g in groups) + " |")
    gg = results.get("gie_gain_per_seed")
    if gg:
        groups = [g for g in next(iter(gg.values())) if g != "seeds"]
        lines += ["", "GAUC gain per bucket, seed by seed (mean ± std over the seeds both variants ran):", "",
                  "| gain | seeds | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
        for name, r in gg.items():
            lines.append(f"| {name} | {len(r['seeds'])} | " + " | ".join(
                f"{r[g]['mean']:+.4f} ± {r[g]['std']:.4f}" if g in r else "-" for g in groups) + " |")
    og = results.get("overall_gain_per_seed")
    if og:
        lines += ["", "Gain on the whole test split, seed by seed (mean ± std over the seeds both variants ran):", "",
                  "| gain | seeds | AUC | UAUC | GAUC | logloss |", "|---|---|---|---|---|---|"]
        for name, r in og.items():
            lines.append(f"| {name} | {len(r['seeds'])} | " + " | ".join(
                f"{r[k]['mean']:+.4f} ± {r[k]['std']:.4f}" for k in KEYS) + " |")
    bu = results.get("between_users")
    if bu:
        lines += ["", "| model | between-user AUC (samples scored by their user's mean logit) |", "|---|---|"]
        lines += [f"| {v} | {fmt(r.get('between-user AUC'))} |" for v, r in bu.items()]
    c = results.get("missing_content")
    if c:
        lines += ["", "| share of test segments without content | AUC | GAUC | logloss |", "|---|---|---|---|"]
        lines += [f"| {x['share_without_content']:.2f} | {x['auc']:.4f} | {x['gauc']:.4f} | {x['logloss']:.4f} |"
                  for x in c]
    k = results.get("topk")
    if k:
        s = k["setting"]
        lines += ["", f"Top-{s['k']} streamers ({s['users']} test gifters, {s['candidate_streamers']} live streamers):",
                  "", "| model | Recall@10 | Precision@10 | NDCG@10 |", "|---|---|---|---|"]
        for name, r in k.items():
            if name != "setting":
                lines.append(f"| {name} | {r['recall@10']:.4f} | {r['precision@10']:.4f} | {r['ndcg@10']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--users", type=int, default=0, help="override the preset's number of users")
    ap.add_argument("--world", default="{}", help='JSON of further simulator parameters, e.g. \'{"watch_affinity": 0}\'')
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ablation-seeds", default="0", help="seeds of mmbee-no-mfq and mmbee-no-gie")
    ap.add_argument("--modality-seeds", default="0", help="seeds of the one-modality variants")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated, of {', '.join(VARIANTS)} (default: all; with --kuailive all but the "
                    "one-modality ones)")
    ap.add_argument("--kuailive", default=None, metavar="FOLDER",
                    help="run on the KuaiLive release in FOLDER (configs/livestream/*_kuailive.yaml) instead of the "
                    "simulator: no ground truth, the title vector as MMBee's only content")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--topk-users", type=int, default=300)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every variant (model.* ones skip the SIM variants), e.g. "
                    "--set model.params.modality_dropout=0.1")
    ap.add_argument("--reuse", action="store_true", help="keep runs of the work folder that finished with the same seeds")
    ap.add_argument("--work", default=str(ROOT / "benchmarks/.work/livestream"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/livestream.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds, ablation_seeds, modality_seeds = (
        [int(s) for s in v.split(",") if s.strip()] for v in (args.seeds, args.ablation_seeds, args.modality_seeds))
    work, out = Path(args.work), Path(args.out)
    variants = ([v for v in args.variants.split(",") if v] if args.variants is not None
                else [v for v in VARIANTS if not (args.kuailive and v in ONE_MODALITY)])
    unknown = [v for v in variants if v not in VARIANTS or (args.kuailive and v in ONE_MODALITY)]
    if unknown:
        ap.error(f"unknown variants {unknown}" + (" (KuaiLive has one content modality)" if args.kuailive else ""))
    results: dict = {"benchmark": "livestream", "started": datetime.now(UTC).isoformat(),
                     "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                 "torch_threads": args.threads},
                     "data_params": data_params(args), "epochs": args.epochs, "runs": {}}
    t0 = time.perf_counter()
    base = config_for("mmbee", args, seeds)
    data = load_data(base)
    results["data"] = data.summary()
    results["data_seconds"] = time.perf_counter() - t0
    print(f"data + content: {results['data']} ({results['data_seconds']:.0f}s)", flush=True)

    tasks, cfgs, run_dirs, logits = {}, {}, [], {}
    for v in variants:
        cfg = config_for(v, args, seeds if v in MAIN else ablation_seeds if v in ABLATIONS else modality_seeds)
        t1 = time.perf_counter()
        done = work / v / "metrics.json"
        if args.reuse and done.exists() and json.loads(done.read_text()).get("seeds") == cfg.seeds:
            m = json.loads(done.read_text())  # a finished run of an earlier invocation (--reuse)
        else:
            m = train_run(cfg, work / v, data=data, report=False)
        run_dirs.append(work / v)
        cfgs[v] = cfg
        results["runs"][v] = {"seeds": cfg.seeds, "test": m["test"], "valid": m["valid"], "timing": m["timing"],
                              "best_epoch": m["best_epoch"], "wall_seconds": time.perf_counter() - t1}
        print(f"{v:15s} " + "  ".join(f"{k}={fmt(m['test'].get(k))}" for k in KEYS)
              + f"  ({time.perf_counter() - t1:.0f}s)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))

    # ---- analyses on the test split
    def task_of(v: str):  # one prepared task per distinct task config (variants share most of them)
        key = cfgs[v].task.model_dump_json()
        if key not in tasks:
            tasks[key] = prepare_task(data, cfgs[v].task)
        return tasks[key]

    any_task = task_of(variants[0])
    s = any_task.splits["test"]
    rows = any_task.events.take(any_task.split_rows["test"])
    masks = buckets(data, any_task)
    results["bucket_sizes"] = {k: int(m.sum()) for k, m in masks.items()}
    results["buckets"] = {}
    if "p_true" in rows.column_names:  # the simulator's ground truth; real data has none
        p_true = np.clip(rows["p_true"].to_numpy(zero_copy_only=False).astype(np.float64), 1e-9, 1 - 1e-9)
        gt = ctr_metrics(s.labels, np.log(p_true / (1 - p_true)), s.users)
        results["ground_truth"] = {k: gt[k] for k in KEYS}
        results["buckets"]["ground truth"] = bucket_metrics(s.labels, np.log(p_true / (1 - p_true)), s.users, masks)
    between: dict = {}  # variant -> seed -> {"between-user AUC": value}
    per_seed: dict = {}  # variant -> seed -> bucket -> metrics: each seed's own logits, for spreads and paired gains
    for v in variants:
        by_seed = seed_logits(cfgs[v], task_of(v), work / v)
        logits[v] = np.mean(list(by_seed.values()), axis=0)
        results["buckets"][v] = bucket_metrics(s.labels, logits[v], s.users, masks)
        per_seed[v] = {x: bucket_metrics(s.labels, lg, s.users, masks) for x, lg in by_seed.items()}
        between[v] = {x: {"between-user AUC": between_user_auc(s.labels, lg, s.users)} for x, lg in by_seed.items()}
    results["between_users"] = {v: over_seeds(between[v]) for v in variants}
    results["overall_gain_per_seed"] = overall_gains(results["runs"], GIE_PAIRS | MFQ_PAIRS)
    results["buckets_per_seed"] = {v: over_seeds({x: {b: r["gauc"] for b, r in rows.items()} for x, rows in per_seed[v].items()})
                                   for v in variants}
    results["gie_gain_per_seed"] = gains(per_seed, GIE_PAIRS)
    if "mmbee" in variants:
        results["missing_content"] = missing_content_curve(cfgs["mmbee"], task_of("mmbee"), work / "mmbee")
    if args.topk_users > 0 and all(v in variants for v in MAIN):
        # both models score the same (user, streamer) pairs; each reads its own task's side tables
        results["topk"] = topk_streamers(data, {v: (model_of(cfgs[v], task_of(v), work / v, cfgs[v].seeds[0]),
                                                    task_of(v)) for v in MAIN}, args.topk_users)
    results["finished"] = datetime.now(UTC).isoformat()
    results["plots"] = plots(results, out)
    out.write_text(json.dumps(results, indent=2))
    md = markdown(results)
    out.with_suffix(".md").write_text(md + "\n")
    write_report(run_dirs, work / "report.html", title="Live-streaming gift prediction: SIM vs MMBee")
    print(md)


if __name__ == "__main__":
    main()
