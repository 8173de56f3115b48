"""Per-request CPU work of POST /recommend, in process: a profile that a loaded machine does not distort much.

Loads BUNDLE into the service app (a fresh SQLite state in a temporary folder, `synchronous=normal`: writes are not
measured here), preloads `--users` users with `--history` events each of the bundle's history channel (as
benchmarks/serve_load.py does), then calls the /recommend handler itself (no HTTP, no JSON) `--requests` times,
round robin over the users, with `--candidates` retrieved candidates. It reports, per request, the CPU time
(`time.process_time`, without the profiler) and, with `--profile`, cProfile's cumulative milliseconds of the
heaviest functions. Wall-clock timings of a shared machine drift with its load; CPU time and call counts do
much less, so this is the figure to compare before and after a change on the same machine.

Run: .venv/bin/python benchmarks/serve_profile.py --bundle BUNDLE --requests 500 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "demo" / "bundle")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--history", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--http", action="store_true", help="send HTTP requests through the ASGI app (in this thread) "
                    "instead of calling the handler")
    ap.add_argument("--profile", action="store_true", help="also run the requests under cProfile")
    ap.add_argument("--top", type=int, default=40, help="functions listed from the profile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import torch

    from modalrec.serve.app import create_app
    from modalrec.serve.schemas import RecommendRequest
    from modalrec.serve.state import StoredEvent

    torch.set_num_threads(args.threads)
    settings = json.loads((args.bundle / "pipeline" / "pipeline.json").read_text())["settings"]
    items = [str(i) for i in pq.read_table(args.bundle / "pipeline" / "items.parquet", columns=["id"])["id"]
             .to_pylist()]
    channel = (settings.get("history_channels") or settings.get("sample_channels") or ["click"])[0]
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(args.bundle, f"sqlite:///{tmp}/state.sqlite?synchronous=normal", "key", threads=args.threads,
                         segment_workers=0)
        store = app.state.serving.current.scorer.state
        rng = random.Random(args.seed)
        users = [f"bench-{args.seed}-{i}" for i in range(args.users)]
        now = int(time.time())
        store.append_events([StoredEvent(user=u, item=rng.choice(items), channel=channel, time=now - 86_400 + 60 * j,
                                         event_id=f"pre-{u}-{j}") for u in users for j in range(args.history)])
        endpoint = next(r.endpoint for r in app.routes if getattr(r, "path", None) == "/recommend")
        reqs = [RecommendRequest(user=users[i % len(users)], n_candidates=args.candidates)
                for i in range(args.requests)]

        def call_handler(rs) -> list[int]:
            out = []
            for r in rs:
                coro = endpoint(r)  # the handler awaits nothing: one send runs it to the end
                try:
                    coro.send(None)
                except StopIteration as stop:
                    out.append(len(stop.value.items))
                else:  # pragma: no cover
                    raise RuntimeError("the /recommend handler awaited something")
            return out

        run = call_handler
        if args.http:  # the whole HTTP request (middleware, validation, JSON) on one event loop in this thread
            import asyncio

            import httpx

            loop = asyncio.new_event_loop()
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://profile")
            body_of = {id(r): r.model_dump(exclude_defaults=True) for r in reqs}

            async def post_all(bs):
                out = []
                for b in bs:
                    resp = await client.post("/recommend", json=b)
                    if resp.status_code != 200:
                        raise RuntimeError(f"/recommend answered {resp.status_code}: {resp.text[:300]}")
                    out.append(len(resp.json()["items"]))
                return out

            def run(rs) -> list[int]:
                return loop.run_until_complete(post_all([body_of[id(r)] for r in rs]))

        run(reqs[: min(20, len(reqs))])  # warm-up: first-call allocations, lazy caches
        c0, w0 = time.process_time(), time.perf_counter()
        run(reqs)
        cpu_ms = (time.process_time() - c0) / len(reqs) * 1e3
        wall_ms = (time.perf_counter() - w0) / len(reqs) * 1e3
        result = {"bundle": str(args.bundle), "requests": len(reqs), "candidates": args.candidates,
                  "history": args.history, "cpu_ms_per_request": round(cpu_ms, 3),
                  "wall_ms_per_request": round(wall_ms, 3)}
        print(f"{len(reqs)} /recommend requests of {args.candidates} candidates: CPU {cpu_ms:.2f} ms per request "
              f"(wall {wall_ms:.2f} ms; a loaded machine's wall time is not comparable)")
        metrics_ep = next(r.endpoint for r in app.routes if getattr(r, "path", None) == "/metrics")
        text = metrics_ep()
        text = text.body.decode() if hasattr(text, "body") else str(text)
        sums, counts = {}, {}
        for line in text.splitlines():
            if line.startswith("modalrec_stage_duration_seconds_sum{"):
                sums[line.split('stage="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
            if line.startswith("modalrec_stage_duration_seconds_count{"):
                counts[line.split('stage="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        print("stage means (ms, wall, warm-up and timed requests):",
              {k: round(sums[k] / counts[k] * 1e3, 3) for k in sums if counts.get(k)})
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run(reqs)
            prof.disable()
            stats = pstats.Stats(prof, stream=sys.stdout)
            stats.sort_stats("cumulative")
            rows = []
            for (file, line, name), (cc, nc, tt, ct, _) in stats.stats.items():
                rows.append((ct, tt, nc, f"{Path(file).name}:{line}({name})"))
            rows.sort(reverse=True)
            print(f"\ncProfile, per request (ms; cumulative / own; calls per request), top {args.top}:")
            for ct, tt, nc, where in rows[: args.top]:
                print(f"{ct / len(reqs) * 1e3:9.3f} {tt / len(reqs) * 1e3:9.3f} {nc / len(reqs):8.1f}  {where}")
            result["profile_ms_per_request"] = {where: round(ct / len(reqs) * 1e3, 3) for ct, _, _, where in
                                                rows[: args.top]}
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
