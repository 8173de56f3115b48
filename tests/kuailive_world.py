"""A small KuaiLive release written from a planted world, for training tests on the release layout.

tests/fixtures/kuailive holds a few dozen hand-checked rows: enough to test the loader, too few to train on.
`write(folder)` writes the same files (same headers, Unix-millisecond times, one room row per day) for a few
hundred users and dozens of streamers over several days, with a signal a ranker can learn: streamers belong
to categories, each room's title vector is its category's centroid plus noise, and a user gifts a clicked
room with a probability that grows with their affinity to its category and with their earlier gifts to its
streamer (loyal fans), so gifting circles show in gift.csv (what GIE reads) and in the titles (what MFQ reads).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "kuailive"
DAY_MS = 86_400_000
T0 = 1746374400000  # 2025-05-05 00:00 +08:00, the fixture's origin
CATEGORIES = ["chat", "game", "shop", "music", "outdoor", "dance"]


def _header(name: str) -> list[str]:
    with open(FIXTURE / name, newline="") as f:
        return next(csv.reader(f))


def _write(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write(folder: str | Path, n_users: int = 300, n_streamers: int = 36, days: int = 8, seed: int = 0,
          dim: int = 16) -> dict:
    """Write the release files into `folder`; returns counts of what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_cat = len(CATEGORIES)
    st_cat = np.arange(n_streamers) % n_cat
    st_bias = rng.normal(0, 0.5, n_streamers)
    affinity = rng.dirichlet(np.full(n_cat, 0.3), n_users)
    activity = rng.choice([2, 4, 10], n_users, p=[0.5, 0.35, 0.15])  # rooms clicked per day
    centroids = rng.normal(0, 1, (n_cat, dim))
    rooms, titles = [], []
    for d in range(days):
        for s in range(n_streamers):
            if rng.random() < 0.8:
                start = T0 + d * DAY_MS + int(rng.integers(8, 20)) * 3_600_000
                rooms.append((len(rooms), s, d, start, start + int(rng.integers(1, 4)) * 3_600_000))
                titles.append(centroids[st_cat[s]] + rng.normal(0, 0.5, dim))
    room_st = np.array([r[1] for r in rooms])
    room_day = np.array([r[2] for r in rooms])
    room_start = np.array([r[3] for r in rooms])
    gifted = np.zeros((n_users, n_streamers))
    clicks, gifts, comments, likes, negatives = [], [], [], [], []
    for d in range(days):
        today = np.flatnonzero(room_day == d)
        events = []
        for u in range(n_users):
            w = np.exp(2.0 * affinity[u, st_cat[room_st[today]]])
            k = min(int(activity[u]), len(today))
            for r in rng.choice(today, k, replace=False, p=w / w.sum()):
                events.append((int(room_start[r] + rng.integers(0, 3_000_000)), u, int(r)))
        for t, u, r in sorted(events):
            s = room_st[r]
            clicks.append((u, r, s, t, int(rng.integers(5_000, 1_800_000))))
            logit = -5.0 + 5.0 * affinity[u, st_cat[s]] + st_bias[s] + 1.5 * np.log1p(gifted[u, s])
            if rng.random() < 1 / (1 + np.exp(-logit)):
                gifts.append((u, r, s, t + int(rng.integers(1_000, 60_000)), int(rng.choice([1, 5, 10, 50]))))
                gifted[u, s] += 1
            if rng.random() < 0.1:
                comments.append((u, r, s, t + 500))
            if rng.random() < 0.2:
                likes.append((u, r, s, t + 700))
            if rng.random() < 0.3:
                negatives.append((u, int(rng.choice(len(rooms))), t - 1))
    uid, sid, lid = (lambda u: 100_000 + u), (lambda s: 900_000 + s), (lambda r: 7_000_000 + r)
    _write(folder / "room.csv", _header("room.csv"),
           [(20250505 + rm[2], lid(rm[0]), sid(rm[1]), 1, rm[3], rm[4], CATEGORIES[st_cat[rm[1]]], rm[0])
            for rm in rooms])
    _write(folder / "click.csv", _header("click.csv"), [(uid(u), lid(r), sid(s), t, w) for u, r, s, t, w in clicks])
    _write(folder / "gift.csv", _header("gift.csv"), [(uid(u), lid(r), sid(s), t, p) for u, r, s, t, p in gifts])
    for name, rows in (("comment.csv", comments), ("like.csv", likes)):
        _write(folder / name, _header(name), [(uid(u), lid(r), sid(s), t) for u, r, s, t in rows])
    _write(folder / "negative.csv", _header("negative.csv"),
           [(uid(u), lid(r), sid(room_st[r]), t) for u, r, t in negatives])
    uh, sh = _header("user.csv"), _header("streamer.csv")
    _write(folder / "user.csv", uh, [[uid(u)] + ["0"] * (len(uh) - 1) for u in range(n_users)])
    _write(folder / "streamer.csv", sh, [[sid(s)] + ["0"] * (len(sh) - 1) for s in range(n_streamers)])
    np.save(folder / "title_embeddings.npy", np.asarray(titles, np.float32))
    return {"rooms": len(rooms), "clicks": len(clicks), "gifts": len(gifts), "users": n_users,
            "streamers": n_streamers}
