"""Do the user's side features help? The live-stream rankers (SIM, MMBee) on the demo world with and without the
users table's features (`task.user_features`), same seeds, same data.

The simulated users carry one observable feature, their activity tier (heavy / regular / light / new), which the
world's gift probability depends on (heavy +1.6, light -1.3 on the logit: see modalrec.sim.livestream). No real
dataset under ../shared/data has user features (MovieLens latest-small, Last.fm, the Taobao sample and the
insurance structure have none), so the world is the test bed; whatever it shows is reported.

Run: .venv/bin/python benchmarks/user_features.py [--seeds 0,1,2] [--models sim,mmbee] [--threads 2] [--set K=V]
Writes benchmarks/results/user_features.json and .md.
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
from modalrec.train.run import load_data, train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"sim": ROOT / "configs/livestream/sim.yaml", "mmbee": ROOT / "configs/livestream/mmbee.yaml"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="sim,mmbee")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, e.g. train.patience=4 (repeatable)")
    ap.add_argument("--work", default=str(ROOT / "benchmarks/.work/user_features"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/user_features.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"benchmark": "user_features", "started": datetime.now(UTC).isoformat(),
                     "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                 "threads": args.threads}, "seeds": seeds, "overrides": args.set, "runs": {}}
    data = None
    for model in args.models.split(","):
        for with_users in (True, False):
            name = f"{model}{'' if with_users else '-no-user-features'}"
            cfg = load_config(CONFIGS[model], [f"task.user_features={str(with_users).lower()}",
                                               f"seeds={json.dumps(seeds)}", "train.progress=false",
                                               f"train.num_threads={args.threads}", *args.set])
            data = data if data is not None else load_data(cfg)  # the same world and encodings for every run
            t = time.perf_counter()
            m = train_run(cfg, Path(args.work) / name, data=data, report=False)
            results["runs"][name] = {"test": {k: m["test"][k] for k in ("auc", "gauc", "uauc", "logloss")},
                                     "best_epoch": m["best_epoch"],
                                     "valid_auc_per_epoch": [[e["valid"]["auc"] for e in h] for h in m["history"]],
                                     "user_features": m["inputs"]["user_features"],
                                     "seconds": time.perf_counter() - t}
            print(name, {k: round(v["mean"], 4) for k, v in results["runs"][name]["test"].items()}, flush=True)
    results["finished"] = datetime.now(UTC).isoformat()
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=1))
    rows = ["| model | user features | test AUC | test GAUC | test UAUC | logloss |", "|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        t = r["test"]
        rows.append(f"| {name} | {', '.join(r['user_features']) or 'none'} | "
                    + " | ".join(f"{t[k]['mean']:.4f} ± {t[k]['std']:.4f}" for k in ("auc", "gauc", "uauc", "logloss"))
                    + " |")
    out.with_suffix(".md").write_text(f"Demo live-stream world, seeds {seeds}, {args.threads} threads, overrides "
                                      f"{args.set or 'none'}.\n\n"
                                      + "\n".join(rows) + "\n")
    gains = []
    for model in args.models.split(","):  # paired by seed: with - without
        a, b = results["runs"].get(model), results["runs"].get(f"{model}-no-user-features")
        if a and b:
            d = {k: [x - y for x, y in zip(a["test"][k]["runs"], b["test"][k]["runs"])] for k in ("auc", "gauc")}
            results.setdefault("paired_gain", {})[model] = d
            gains.append(f"- {model}: user features change test AUC by "
                         + ", ".join(f"{x:+.4f}" for x in d["auc"]) + " (seed by seed), GAUC by "
                         + ", ".join(f"{x:+.4f}" for x in d["gauc"]))
    out.write_text(json.dumps(results, indent=1))
    md = out.with_suffix(".md")
    md.write_text(md.read_text() + ("\n" + "\n".join(gains) + "\n" if gains else ""))
    print("\n".join(rows + gains))


if __name__ == "__main__":
    main()
