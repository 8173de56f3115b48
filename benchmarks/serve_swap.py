"""Bundle hot swap under load: a real uvicorn on 127.0.0.1 serves bundle FROM, client threads send /score (and
/recommend) and /events without pause, POST /admin/bundle swaps to bundle TO; reports the swap's load time, every
non-200 answer, each phase's request latency (before, during, after the swap) and that every acknowledged event
was stored once.

    python benchmarks/serve_swap.py FROM TO [--seconds 5] [--clients 2] [--out benchmarks/results/serve_swap.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from modalrec.serve.app import create_app
from modalrec.serve.state import open_state

KEY = "bench"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--seconds", type=float, default=5.0, help="of load before and after the swap")
    ap.add_argument("--clients", type=int, default=2, help="threads sending /score and /recommend")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    state_url = f"sqlite:///{tempfile.mkdtemp(prefix='swap-bench-')}/state.sqlite"
    app = create_app(args.src, state_url, api_key=KEY, threads=1, segment_workers=0)
    pipeline = app.state.scorer.pipeline
    users = [pipeline.users.id_of(i) for i in range(1, min(200, len(pipeline.users)))]
    items = [pipeline.items.id_of(i) for i in range(1, min(51, len(pipeline.items)))]
    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)

    phase = {"name": "before"}
    lat: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    errors: list[str] = []
    acked: list[tuple[str, str]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def reader(k: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            n = 0
            while not stop.is_set():
                user = users[(n * 7 + k) % len(users)]
                name = phase["name"]
                t0 = time.perf_counter()
                r = (c.post("/score", json={"user": user, "items": items}) if n % 2 == 0
                     else c.post("/recommend", json={"user": user, "k": 10}))
                dt = time.perf_counter() - t0
                with lock:
                    lat[name].append(dt)
                    if r.status_code != 200:
                        errors.append(f"{r.request.url.path} {r.status_code}: {r.text[:200]}")
                n += 1

    def writer() -> None:
        with httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": KEY}) as c:
            n = 0
            while not stop.is_set():
                batch = [{"user": users[(n + j) % len(users)], "item": items[(n + j) % len(items)],
                          "channel": "watch", "event_id": f"e{n}-{j}"} for j in range(5)]
                r = c.post("/events", json={"events": batch})
                if r.status_code == 200 and r.json()["accepted"] == len(batch):
                    with lock:
                        acked.extend((e["user"], e["event_id"]) for e in batch)
                else:
                    with lock:
                        errors.append(f"/events {r.status_code}: {r.text[:200]}")
                n += 1

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(args.clients)]
    threads.append(threading.Thread(target=writer))
    for th in threads:
        th.start()
    time.sleep(args.seconds)
    phase["name"] = "during"
    with httpx.Client(base_url=base, timeout=600, headers={"X-API-Key": KEY}) as c:
        t0 = time.perf_counter()
        swap = c.post("/admin/bundle", json={"path": str(args.dst)})
        swap_wall = time.perf_counter() - t0
    phase["name"] = "after"
    time.sleep(args.seconds)
    stop.set()
    for th in threads:
        th.join(60)
    health = httpx.get(f"{base}/healthz").json()
    server.should_exit = True

    st = open_state(state_url)
    stored = sum(len({i for u, i in acked if u == user} & st.event_ids(user)) for user in {u for u, _ in acked})
    total = st.count()
    st.close()

    def pct(xs: list[float]) -> dict:
        ms = np.array(xs) * 1000
        return {"n": len(xs), "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
                "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
                "max_ms": round(float(ms.max()), 1) if len(ms) else None}

    out = {"from": str(args.src), "to": str(args.dst), "swap_status": swap.status_code,
           "swap": swap.json() if swap.status_code == 200 else swap.text, "swap_wall_s": round(swap_wall, 3),
           "failed_requests": len(errors), "first_errors": errors[:5],
           "latency": {k: pct(v) for k, v in lat.items()},
           "events_acknowledged": len(acked), "events_stored_of_those": stored, "events_in_store": total,
           "healthz": {k: health.get(k) for k in ("bundle", "swaps", "model", "registered_items")}}
    print(json.dumps(out, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
