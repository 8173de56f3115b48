"""How much gift signal the gifting graph carries on a simulated live-streaming world, before any model.

MMBee's GIE module (graph-guided interest expansion) reads, for each (user, target streamer) sample, the
user's U->A->A expansion (streamers gifted by the users who gift the streamers this user gifted, scored by
Swing) as of the sample's time. This script scores every test watch of the world `benchmarks/livestream.py`
trains on with single features and reports how well each ranks the gifts (AUC over all samples, GAUC within
users), overall and per gifter bucket (gifts in the training period: cold 0, sparse 1-2, heavy >= 3):

- `true_affinity`: the simulator's own affinity of the user to the target streamer's community (the 0.8-weight
  term of the ground-truth gift logit; recomputed from the seed, never visible to a model): how much there is
  to find;
- `gifted_target_before`: the user gifted this very streamer before the sample (one hop: what the ranker's own
  behaviour sequence already holds);
- `in_user_expansion`: the target's score in the user's as-of-time GIE expansion (`task.graph`, the same code
  path as training), and the same restricted to targets the user never gifted (what only the graph adds);
- `gifts_in_history_window`: the number of gift events among the last `task.max_history` events of the user's
  tagged watch + gift history (what the configs' rankers read since they tag their history);
- `gifted_target_in_last_L`: a gift to the target's streamer among the last L events of that history, for
  L = `task.max_history` and each of `--windows`: how much of `gifted_target_before` a ranker reading L events
  can see (SIM's hard search by streamer retrieves exactly these);
- `expansion_on_own_community`: the share of the expansion's score mass on streamers of the community the user
  has the highest affinity to (the expansion's precision about what matters).

Coverage (share of test samples whose user has any expansion, whose target is in it) comes with it.

Writes benchmarks/results/gie_signal.json and prints a table.
Run: .venv/bin/python benchmarks/gie_signal.py --users 6500 --world '{"watch_affinity": 0, "gift_rate": 0.03, "days": 28}'
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from livestream import buckets  # benchmarks/livestream.py, beside this script: the same gifter buckets

from modalrec.config import load_config
from modalrec.eval.metrics import ctr_metrics
from modalrec.sim import livestream as sim
from modalrec.tasks import prepare_task
from modalrec.train.run import load_data

ROOT = Path(__file__).resolve().parents[1]


def true_affinity(params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(user id -> row, affinity (n_users, n_groups)) of the world `params` describe, from its seed: the users'
    stream is the third of generate()'s seven."""
    p = sim.resolve_params(**{k: v for k, v in params.items() if k != "preset"}, preset=params.get("preset"))
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(7)]
    world = sim._world(p, rngs[0], rngs[1])
    users = sim._users(p, world, rngs[2])
    return users.ids, users.affinity


def scores_table(labels: np.ndarray, users: np.ndarray, feats: dict[str, np.ndarray],
                 masks: dict[str, np.ndarray]) -> dict:
    out = {}
    for bucket, m in masks.items():
        if not m.any() or not 0 < labels[m].sum() < m.sum():
            continue
        row = {"n": int(m.sum()), "positives": int(labels[m].sum())}
        for name, f in feats.items():
            r = ctr_metrics(labels[m], f[m], users[m])
            row[name] = {"auc": round(float(r["auc"]), 4), "gauc": round(float(r["gauc"]), 4)}
        out[bucket] = row
    return out


def world_parser(description: str) -> argparse.ArgumentParser:
    """The simulated world's arguments (--preset, --users, --world), shared with benchmarks/gie_leak.py."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--users", type=int, default=0)
    ap.add_argument("--world", default="{}", help="JSON of further simulator parameters")
    return ap


def world_task(args, overrides: list[str] = ()):
    """(config, data, prepared task) of configs/livestream/mmbee.yaml with GIE on, on the world `args` name."""
    params = {"preset": args.preset} | ({"n_users": args.users} if args.users else {}) | json.loads(args.world)
    cfg = load_config(ROOT / "configs/livestream/mmbee.yaml",
                      [f"data.params={json.dumps(params)}", "task.graph.enabled=true", *overrides])
    data = load_data(cfg)
    return cfg, data, prepare_task(data, cfg.task)


def main() -> None:
    ap = world_parser(__doc__.splitlines()[0])
    ap.add_argument("--windows", default="200,1000", type=lambda v: [int(x) for x in v.split(",") if x],
                    help="history lengths L at which `gifted_target_in_last_L` is scored (with task.max_history)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gie_signal.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    cfg, data, task = world_task(args)
    s = task.splits["test"]
    labels = s.labels.astype(np.float64)
    users = s.users
    target = task.group_code[s.items]  # streamer code of each sample's segment
    ex = task.pipeline.graph.expansion.lookup(task.user_rows[users], target, times=s.times)
    u_idx, u_w = ex["gie_user"].numpy(), ex["gie_user_w"].numpy().astype(np.float64)
    u_w = np.where(u_idx > 0, u_w, 0.0)
    in_exp = (u_w * (u_idx == target[:, None])).sum(1)

    # the user's gifts before each sample (one hop), from the events
    ev = data.events
    ch = np.asarray(ev["channel"].to_numpy(zero_copy_only=False), dtype=object)
    t_ev = ev["time"].to_numpy(zero_copy_only=False).astype(np.int64)
    g = ch == "gift"
    g_user = task.log_users.lookup(ev["user_id"].filter(g))  # event log rows, as the samples' users
    g_item = task.item_vocab.lookup(ev["item_id"].filter(g))
    g_streamer, g_time = task.group_code[g_item], t_ev[g]
    first_gift: dict[tuple[int, int], int] = {}
    for u, a, t in zip(g_user.tolist(), g_streamer.tolist(), g_time.tolist()):
        first_gift[(u, a)] = min(t, first_gift.get((u, a), t))
    gifted_before = np.array([first_gift.get((u, a), 1 << 62) < t
                              for u, a, t in zip(users.tolist(), target.tolist(), s.times.tolist())], dtype=np.float64)

    # the simulator's affinity of the user to the target's community (ground truth, for scale)
    ids, aff = true_affinity(cfg.data.params)
    row_of = {u: i for i, u in enumerate(ids.tolist())}
    user_ids = [task.log_users.id_of(int(u)) for u in users]
    urow = np.array([row_of[u] for u in user_ids])
    items = data.items
    community_of_item = dict(zip(items["item_id"].to_pylist(), items["gt_community"].to_pylist()))
    seg_ids = [task.item_vocab.id_of(int(i)) for i in s.items]
    comm = np.array([community_of_item[i] for i in seg_ids])
    t_aff = aff[urow, comm]

    # the expansion's mass on the user's top community: streamer code -> community
    code_comm = np.full(int(task.group_code.max()) + 1, -1)
    item_rows = task.item_vocab.lookup(items["item_id"])
    code_comm[task.group_code[item_rows]] = np.asarray(items["gt_community"].to_pylist())
    top = aff.argmax(1)[urow]
    mass = u_w.sum(1)
    on_top = (u_w * (code_comm[u_idx] == top[:, None])).sum(1)
    has_exp = mass > 0

    cutoff = int(task.splits["valid"].times.min())
    before = g_time < cutoff
    # does raw co-gifting follow the communities? pairs of distinct streamers gifted by one user (training period)
    pairs_same, pairs = 0, 0
    by_user: dict[int, set[int]] = {}
    for u, a in zip(g_user[before].tolist(), g_streamer[before].tolist()):
        by_user.setdefault(u, set()).add(a)
    for streamers in by_user.values():
        c = code_comm[np.fromiter(streamers, np.int64)]
        c = c[c >= 0]
        pairs += len(c) * (len(c) - 1) // 2
        pairs_same += int(sum(k * (k - 1) // 2 for k in np.bincount(c))) if len(c) else 0
    sizes = np.bincount(code_comm[code_comm >= 0])
    chance_pair = float((sizes * (sizes - 1)).sum() / max(sizes.sum() * (sizes.sum() - 1), 1))
    masks = {"all": np.ones(len(labels), bool)} | buckets(data, task) | {
             "user has an expansion": has_exp,
             "has an expansion, target never gifted before": has_exp & (gifted_before == 0)}
    feats = {"true_affinity": t_aff, "gifted_target_before": gifted_before, "in_user_expansion": in_exp}
    if task.history.tags is not None and "gift" in task.pipeline.settings.history_tags:
        # how many gifts the ranker's tagged history window holds: across users it marks the generous ones, but
        # within a user a gift watch's window holds fewer of the user's OTHER gifts than a plain watch's does
        _, wmask, wpos = task.history.window(users, s.cut, cfg.task.max_history)
        gift_tags = np.where(wmask, task.history.tags[wpos], 0) == task.pipeline.settings.history_tags["gift"]
        feats["gifts_in_history_window"] = gift_tags.sum(1).astype(np.float64)
        # the one-hop signal a SIM ranker can read: a gift to the target's streamer among the last L history
        # events (its hard search by streamer finds it there), next to `gifted_target_before` (any earlier gift)
        for L in sorted({cfg.task.max_history, *args.windows}):
            items, wmask, wpos = task.history.window(users, s.cut, L)
            gift = wmask & (np.where(wmask, task.history.tags[wpos], 0) == task.pipeline.settings.history_tags["gift"])
            same = task.group_code[items] == target[:, None]
            feats[f"gifted_target_in_last_{L}"] = (gift & same).any(1).astype(np.float64)
    table = scores_table(labels, users, feats, masks)
    n_groups = aff.shape[1]
    coverage = {
        "test_samples": len(labels), "gift_rate": float(labels.mean()),
        "user_has_expansion": float(has_exp.mean()), "target_in_expansion": float((in_exp > 0).mean()),
        "target_gifted_before": float(gifted_before.mean()),
        "expansion_mass_on_top_community": float(on_top[has_exp].sum() / max(mass[has_exp].sum(), 1e-12)),
        "chance_mass_on_one_community": 1.0 / n_groups,
        "co_gifted_pairs": pairs, "co_gifted_pairs_same_community": pairs_same / max(pairs, 1),
        "chance_pair_same_community": chance_pair,
        "users_with_2plus_gifted_streamers": sum(len(v) >= 2 for v in by_user.values()),
        "gifters_in_training": len(by_user),
        "communities": int(n_groups),
    }
    result = {"benchmark": "gie_signal", "date": datetime.now(UTC).isoformat(),
              "machine": {"platform": platform.platform()}, "world": cfg.data.params,
              "seconds": round(time.perf_counter() - t0, 1), "coverage": coverage, "scores": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(coverage, indent=2))
    names = list(feats)
    print("| samples | n | gifts | " + " | ".join(f"{n} AUC / GAUC" for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for bucket, row in table.items():
        cells = " | ".join(f"{row[n]['auc']:.4f} / {row[n]['gauc']:.4f}" for n in names)
        print(f"| {bucket} | {row['n']:,} | {row['positives']:,} | {cells} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
