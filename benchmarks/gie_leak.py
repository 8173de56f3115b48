"""Does a GIE input know the training labels? Each graph input's power to rank gifts on the TRAINING samples next to
the validation and test samples, before any model.

An input built from gifts that include the sample's own gift ranks training gifts far better than test gifts, and a
ranker fitted on it learns to trust it more than the test data deserve. Scored per split (AUC across samples,
GAUC within users) with the graphs each split reads in training and evaluation (`task.graph`, the code path of
`configs/livestream/mmbee.yaml`; `--set task.graph.refresh=14` scores the refreshed training graphs):

- `in_user_expansion`: the target streamer's score in the user's U->A->A expansion (as of the sample's time), with
  the share of samples where it is > 0 and the gift rate there;
- `expansion_overlap`: the score mass the user's expansion shares with the target streamer's A->U->A expansion;
- `graphcl_dot`: the dot product of the user's and the target streamer's GraphCL embeddings (`graph_init`, pre-trained
  once on the whole training period's gifts);
- `graphcl_expansion_dot`: the target streamer's GraphCL embedding against the score-weighted mean of the user's
  expansion's embeddings (what GIE's attention can read without the user's own row), scored among users with an
  expansion.

Writes benchmarks/results/gie_leak.json (or --out) and prints one line per split.
Run: .venv/bin/python benchmarks/gie_leak.py --users 6500 --world '{"watch_affinity": 0, "communities": 10,
"gift_affinity": 1.6, "gift_loyalty": 1.5}' --out benchmarks/results/gie_leak_loyal.json
"""

from __future__ import annotations

import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from gie_signal import world_parser, world_task  # benchmarks/gie_signal.py, beside this script

from modalrec.eval.metrics import ctr_metrics

ROOT = Path(__file__).resolve().parents[1]


def scored(labels: np.ndarray, feature: np.ndarray, users: np.ndarray) -> dict:
    on = feature > 0
    m = ctr_metrics(labels, feature, users)
    return {"auc": round(float(m["auc"]), 4), "gauc": round(float(m["gauc"]), 4),
            "share_nonzero": round(float(on.mean()), 4),
            "gift_rate_nonzero": round(float(labels[on].mean()), 4) if on.any() else None,
            "gift_rate_zero": round(float(labels[~on].mean()), 4) if (~on).any() else None}


def split_inputs(task, split: str) -> dict:
    s = task.splits[split]
    g = task.pipeline.graph
    gie = g.refreshed if (split == "train" and g.refreshed is not None) else g.expansion
    target = task.group_code[s.items]
    ex = gie.lookup(task.user_rows[s.users], target, times=s.times)
    ui, uw = ex["gie_user"].numpy(), ex["gie_user_w"].numpy().astype(np.float64)
    si, sw = ex["gie_streamer"].numpy(), ex["gie_streamer_w"].numpy().astype(np.float64)
    uw, sw = np.where(ui > 0, uw, 0.0), np.where(si > 0, sw, 0.0)
    y, users = s.labels.astype(np.float64), s.users
    same = (ui[:, :, None] == si[:, None, :]) & (ui[:, :, None] > 0)
    out = {"samples": len(y), "gift_rate": round(float(y.mean()), 4),
           "in_user_expansion": scored(y, (uw * (ui == target[:, None])).sum(1), users),
           "expansion_overlap": scored(y, (uw[:, :, None] * sw[:, None, :] * same).sum((1, 2)), users)}
    init = g.graph_init()
    ue, se = init.get("user"), init.get("streamer")
    if ue is not None and se is not None:
        dot = (ue[task.user_rows[users]] * se[target]).sum(1)
        m = ctr_metrics(y, dot, users)
        out["graphcl_dot"] = {"auc": round(float(m["auc"]), 4), "gauc": round(float(m["gauc"]), 4)}
        has = uw.sum(1) > 0
        pooled = (se[ui] * uw[:, :, None]).sum(1)
        m = ctr_metrics(y[has], (pooled * se[target]).sum(1)[has], users[has])
        out["graphcl_expansion_dot"] = {"auc": round(float(m["auc"]), 4), "gauc": round(float(m["gauc"]), 4),
                                        "samples": int(has.sum())}
    return out


def main() -> None:
    ap = world_parser(__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="task config override")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gie_leak.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    cfg, _, task = world_task(args, args.set)
    splits = {}
    for split in ("train", "valid", "test"):
        splits[split] = split_inputs(task, split)
        print(split, json.dumps(splits[split]), flush=True)
    result = {"benchmark": "gie_leak", "date": datetime.now(UTC).isoformat(),
              "machine": {"platform": platform.platform()}, "world": cfg.data.params, "overrides": args.set,
              "seconds": round(time.perf_counter() - t0, 1), "splits": splits}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
