"""Load test of the HTTP service: latency percentiles, throughput, errors and lost events.

Starts `modalrec serve BUNDLE` on loopback (a subprocess, one uvicorn process), preloads every
benchmark user with `--history` events, then drives it open-loop at `--rate` requests/s for
`--duration` seconds from `--clients` concurrent keep-alive connections (bounded in count and time),
mixing POST /events (share `--events-share`, 1-5 events each, every event with a unique id) and
POST /recommend (`--candidates` retrieved candidates ranked by the model). Afterwards it stops the
service and opens the state store itself to check that every acknowledged event is there.

Latency is measured by the client from the request's scheduled start (so time a request waits for a
free connection counts: no coordinated omission) to the end of the response. The clients run on the
same machine as the service and share its cores.

Bundles: `--bundle PATH` (default runs/demo/bundle, from `make demo`: the live-streaming world's MMBee
ranker, 50 history events), or `--build MODEL` to train MODEL on the click-through demo world
(`modalrec demo --world ctr`'s data) with `--max-history` (default 100) for `--epochs` and export it
under benchmarks/.work/serve_load/ first.

`--repeat N` runs N load windows of `--duration` back to back on the same service and records each window's
percentiles and the GEMM rate around it (this shared VM's speed drifts by tens of percent within minutes).

Writes benchmarks/results/serve_load.json and prints p50/p99/throughput.
Run: .venv/bin/python benchmarks/serve_load.py --build din --rate 50 --duration 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "serve_load"
KEY = "serve-load-benchmark"


def build_bundle(model: str, max_history: int, epochs: int) -> Path:
    from modalrec.demo import ctr_config
    from modalrec.serve.bundle import export_bundle
    from modalrec.sim.demo import generate
    from modalrec.train.run import train_run

    run = WORK / f"run-{model}-h{max_history}"
    bundle = WORK / f"bundle-{model}-h{max_history}"
    cfg = ctr_config(model, epochs).model_copy(deep=True)
    cfg.task.max_history = max_history
    cfg.train.progress = False
    cfg.train.num_threads = 1
    data = generate()
    t0 = time.time()
    train_run(cfg, run, data=data, report=False)
    print(f"trained {model} (max_history {max_history}, {epochs} epoch(s)) in {time.time() - t0:.0f} s")
    export_bundle(run, bundle, overwrite=True)
    return bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """One keep-alive HTTP/1.1 connection (stdlib: the client should cost the shared cores little)."""

    def __init__(self, port: int):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path: str, body: dict, key: bool = False) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if key:
            headers["x-api-key"] = KEY
        try:
            self.c.request("POST", path, body=data, headers=headers)
            r = self.c.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, OSError):
            self.c.close()
            self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            raise

    def get(self, path: str) -> tuple[int, bytes]:
        self.c.request("GET", path)
        r = self.c.getresponse()
        return r.status, r.read()


def start_service(bundle: Path, state: str, port: int, threads: int, precision: str) -> subprocess.Popen:
    env = {**os.environ, "MODALREC_API_KEY": KEY, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "modalrec.cli", "serve", str(bundle), "--host", "127.0.0.1",
                             "--port", str(port), "--state", state, "--threads", str(threads),
                             "--precision", precision],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited: {proc.stderr.read().decode()[-3000:]}")
        try:
            if Conn(port).get("/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the service did not start within 120 s")


def gemm_gflops(seconds: float = 0.5) -> float:
    """Single-thread float32 matrix-product rate of this machine right now: on a shared virtual machine the
    same code runs 10-20 % slower at some hours, and the latency figures move with it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    rate = 2 * 256**3 * n / (time.perf_counter() - t0) / 1e9
    torch.set_num_threads(threads)
    return round(rate, 1)


def precision_parity(bundle: Path, store, users: list[str], n_candidates: int, precision: str) -> dict:
    """The service's scores at `precision` against fp32 for the users' requests as the load left them (their
    history in the store, their retrieved candidates), in-process on one thread: logit differences, agreement of
    the top 10, and the median time of a score call at each precision."""
    import torch

    from modalrec.serve.bundle import load_bundle
    from modalrec.serve.scoring import Scorer

    torch.set_num_threads(1)
    scorers = {p: Scorer(load_bundle(bundle), store, precision=p, item_sync_s=None) for p in ("fp32", precision)}
    ref = scorers["fp32"]
    diffs, same_set, same_order, spearman = [], [], [], []
    times = {p: [] for p in scorers}
    for u in users:
        seq = ref.history(u)
        t = int(seq.times[-1]) + 1 if len(seq.times) else int(time.time())
        cand, _ = ref.retrieve(ref.retrieval_query(u), n_candidates, set())
        out = {}
        for p, sc in scorers.items():
            sc.score(u, seq, t, cand)  # warm
            t0 = time.perf_counter()
            out[p] = sc.score(u, seq, t, cand)
            times[p].append(time.perf_counter() - t0)
        a, b = out["fp32"], out[precision]
        diffs.append(np.abs(a - b))
        ta, tb = np.argsort(-a, kind="stable")[:10], np.argsort(-b, kind="stable")[:10]
        same_set.append(set(ta) == set(tb))
        same_order.append(bool(np.array_equal(ta, tb)))
        spearman.append(float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]))
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    return {"requests": len(users), "candidates": n_candidates,
            "max_abs_logit_diff": float(d.max(initial=0.0)), "mean_abs_logit_diff": float(d.mean()) if d.size else 0.0,
            "p99_abs_logit_diff": float(np.percentile(d, 99)) if d.size else 0.0,
            "same_top10_set": float(np.mean(same_set)), "same_top10_order": float(np.mean(same_order)),
            "spearman_min": min(spearman, default=1.0),
            "score_ms_median": {p: round(float(np.median(v)) * 1e3, 2) for p, v in times.items()}}


def cpu_times() -> tuple[float, float]:
    """(steal, total) CPU seconds of the machine from /proc/stat: time the hypervisor gave this VM's virtual
    CPUs to someone else while they had work. (0, 0) where /proc/stat is not there."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (fields[7] if len(fields) > 7 else 0.0) / hz, sum(fields[:8]) / hz


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2),
            "mean_ms": round(float(a.mean()), 2)}


def stage_means(metrics_text: str) -> dict:
    sums, counts = {}, {}
    for line in metrics_text.splitlines():
        for kind, store in (("_sum", sums), ("_count", counts)):
            prefix = f"modalrec_stage_duration_seconds{kind}{{stage=\""
            if line.startswith(prefix):
                stage = line[len(prefix):].split('"')[0]
                store[stage] = float(line.rsplit(" ", 1)[1])
    return {s: round(1000 * sums[s] / counts[s], 2) for s in sums if counts.get(s)}


def route_buckets(metrics_text: str, route: str = "/recommend") -> dict[float, float]:
    """The service's own cumulative request-duration histogram of `route` (le seconds -> requests)."""
    prefix = f'modalrec_request_duration_seconds_bucket{{route="{route}",le="'
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            le = line[len(prefix):].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def server_side(before: dict[float, float], after: dict[float, float]) -> dict:
    """Percentile bounds of the requests served between two histogram reads, as the service timed them (from
    request start to the end of its response; without the clients' own delays): the bucket bound each falls
    under, and the share within 20 ms."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    n = counts[-1] if counts else 0.0
    if not n:
        return {"n": 0}

    def bound(q: float) -> float:
        return next(le for le, c in zip(les, counts) if c >= q * n)

    return {"n": int(n), "p50_le_ms": 1000 * bound(0.5), "p99_le_ms": 1000 * bound(0.99),
            "share_within_20ms": round((after.get(0.02, 0.0) - before.get(0.02, 0.0)) / n, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "demo" / "bundle")
    ap.add_argument("--build", metavar="MODEL", help="train MODEL on the demo world and serve its bundle")
    ap.add_argument("--max-history", type=int, default=100, help="with --build: the model's history length")
    ap.add_argument("--epochs", type=int, default=1, help="with --build")
    ap.add_argument("--state", default=None, help="state URL (default: a fresh SQLite file under benchmarks/.work)")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--history", type=int, default=100, help="events preloaded per user")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0, help="requests/s offered (open loop)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load (at most 600)")
    ap.add_argument("--repeat", type=int, default=1, help="load windows of --duration, one after the other on the "
                    "same service: each window's percentiles are recorded, so a stretch of host noise shows as one "
                    "window out of line instead of moving the only figure")
    ap.add_argument("--clients", type=int, default=8, help="concurrent connections (at most 64)")
    ap.add_argument("--events-share", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the service")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="the service's --precision; with bf16 the run also compares its scores with fp32's")
    ap.add_argument("--parity-users", type=int, default=100,
                    help="with --precision bf16: users whose /recommend scores are compared with fp32's after the load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = ap.parse_args()
    duration = min(max(args.duration, 1.0), 600.0)
    clients = min(max(args.clients, 1), 64)

    bundle = build_bundle(args.build, args.max_history, args.epochs) if args.build else args.bundle
    if not (bundle / "manifest.json").exists():
        raise SystemExit(f"{bundle}: no bundle (run `make demo`, or pass --bundle PATH or --build din)")
    manifest = json.loads((bundle / "manifest.json").read_text())
    # the bundle's saved feature pipeline: its settings and the items it knows (bundle format 2+)
    import pyarrow.parquet as pq

    settings = json.loads((bundle / "pipeline" / "pipeline.json").read_text())["settings"]
    items = [str(i) for i in pq.read_table(bundle / "pipeline" / "items.parquet", columns=["id"])["id"]
             .to_pylist()]
    channel = (settings.get("history_channels") or settings.get("sample_channels") or ["click"])[0]
    model_history = settings["max_history"]
    if model_history < args.history:
        print(f"note: the model reads the last {model_history} events of each history (--build MODEL "
              f"--max-history {args.history} for a model that reads {args.history})")

    WORK.mkdir(parents=True, exist_ok=True)
    state_path = None
    if args.state is None:
        state_path = WORK / f"state-{os.getpid()}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{state_path}{suffix}").unlink(missing_ok=True)
        state = f"sqlite:///{state_path}"
    else:
        state = args.state
    port = free_port()
    rng = random.Random(args.seed)
    users = [f"bench-{args.seed}-{i}" for i in range(args.users)]
    acked: dict[str, set[str]] = {u: set() for u in users}
    lock = threading.Lock()

    proc = start_service(bundle, state, port, args.threads, args.precision)
    try:
        # preload: every user gets `history` events in the past (one POST of at most 1000 events at a time)
        c = Conn(port)
        now = int(time.time())
        batch: list[dict] = []
        t0 = time.time()
        for u in users:
            for j in range(args.history):
                eid = f"pre-{u}-{j}"
                batch.append({"user": u, "item": rng.choice(items), "channel": channel,
                              "time": now - 86_400 + 60 * j, "event_id": eid})
                if len(batch) == 1000:
                    status, body = c.post("/events", {"events": batch}, key=True)
                    if status != 200:
                        raise SystemExit(f"preload failed: {status} {body[:300]!r}")
                    for e in batch:
                        acked[e["user"]].add(e["event_id"])
                    batch = []
        if batch:
            status, body = c.post("/events", {"events": batch}, key=True)
            if status != 200:
                raise SystemExit(f"preload failed: {status} {body[:300]!r}")
            for e in batch:
                acked[e["user"]].add(e["event_id"])
        preload_s = time.time() - t0
        for u in users[:clients]:  # warm-up (first-call allocations), not measured
            c.post("/recommend", {"user": u, "n_candidates": args.candidates})

        windows: list[dict] = []
        lat = {"events": [], "recommend": []}
        errors: list[str] = []
        history_seen: list[int] = []
        counter = {"ev": 0}
        wall = 0.0

        def worker(w: int, jobs: queue.Queue) -> None:
            conn = Conn(port)
            wrng = random.Random((args.seed * 1000 + w) * 1000 + len(windows))
            while True:
                job = jobs.get()
                if job is None:
                    return
                kind, sched = job
                delay = sched - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                user = wrng.choice(users)
                try:
                    if kind == "events":
                        with lock:
                            base = counter["ev"]
                            counter["ev"] += 5
                        evs = [{"user": user, "item": wrng.choice(items), "channel": channel,
                                "event_id": f"load-{base + j}"} for j in range(wrng.randint(1, 5))]
                        status, body = conn.post("/events", {"events": evs}, key=True)
                        done = time.perf_counter()
                        if status == 200:
                            with lock:
                                acked[user].update(e["event_id"] for e in evs)
                    else:
                        status, body = conn.post("/recommend", {"user": user, "k": 10, "n_candidates": args.candidates})
                        done = time.perf_counter()
                        if status == 200:
                            with lock:
                                history_seen.append(json.loads(body)["history_length"])
                    with lock:
                        lat[kind].append(done - sched)
                        if status != 200:
                            errors.append(f"{kind}: HTTP {status} {body[:200]!r}")
                except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the run
                    with lock:
                        errors.append(f"{kind}: {type(e).__name__}: {e}")


        for window in range(args.repeat):
            # load: open-loop schedule handed to a bounded pool of connections
            n_req = int(args.rate * duration)
            jobs: queue.Queue = queue.Queue()
            seen = {k: len(v) for k, v in lat.items()}
            pool = [threading.Thread(target=worker, args=(w, jobs), daemon=True) for w in range(clients)]
            for t in pool:
                t.start()
            gflops_before = gemm_gflops()
            hist0 = route_buckets(Conn(port).get("/metrics")[1].decode())
            steal0, total0 = cpu_times()
            start = time.perf_counter() + 0.2
            load_before = os.getloadavg()
            for i in range(n_req):
                kind = "events" if rng.random() < args.events_share else "recommend"
                jobs.put((kind, start + i / args.rate))
            for _ in pool:
                jobs.put(None)
            for t in pool:
                t.join(duration + 120)
            wall += time.perf_counter() - start
            steal1, total1 = cpu_times()
            hist1 = route_buckets(Conn(port).get("/metrics")[1].decode())
            load_after = os.getloadavg()
            gflops_after = gemm_gflops()
            windows.append({"recommend": percentiles(lat["recommend"][seen["recommend"]:]),
                            "recommend_in_service": server_side(hist0, hist1),
                            "events": percentiles(lat["events"][seen["events"]:]),
                            "gemm_gflops_1_thread_before_after": [gflops_before, gflops_after],
                            "cpu_steal_share": round((steal1 - steal0) / max(total1 - total0, 1e-9), 4),
                            "loadavg_before": [round(x, 2) for x in load_before],
                            "loadavg_after": [round(x, 2) for x in load_after]})
            if args.repeat > 1:
                w = windows[-1]
                srv = w["recommend_in_service"]
                print(f"window {window + 1}/{args.repeat}: /recommend p50 {w['recommend'].get('p50_ms')} ms  p99 "
                      f"{w['recommend'].get('p99_ms')} ms (in the service: p99 <= {srv.get('p99_le_ms')} ms, "
                      f"{srv.get('share_within_20ms', 0):.2%} within 20 ms); GEMM {gflops_before}/{gflops_after} "
                      f"GFLOP/s, CPU steal {w['cpu_steal_share']:.1%}", flush=True)
        metrics_text = Conn(port).get("/metrics")[1].decode()
    finally:
        proc.send_signal(signal.SIGINT)  # graceful stop; then check the store on its own
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    from modalrec.serve.state import open_state

    store = open_state(state)
    lost = {u: sorted(ids - store.event_ids(u)) for u, ids in acked.items()}
    n_lost = sum(len(v) for v in lost.values())
    n_acked = sum(len(v) for v in acked.values())
    parity = None if args.precision == "fp32" else precision_parity(bundle, store, users[: args.parity_users],
                                                                    args.candidates, args.precision)
    store.close()

    done = len(lat["events"]) + len(lat["recommend"])
    p99s = [w["recommend"]["p99_ms"] for w in windows if "p99_ms" in w["recommend"]]
    result = {
        "benchmark": "serve_load", "date": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_before": windows[0]["loadavg_before"], "loadavg_after": windows[-1]["loadavg_after"],
                    "gemm_gflops_1_thread_before_after": [windows[0]["gemm_gflops_1_thread_before_after"][0],
                                                          windows[-1]["gemm_gflops_1_thread_before_after"][1]],
                    "note": "clients run on the same cores as the service; other jobs may share the machine"},
        "bundle": str(bundle), "model": manifest["model"], "task": manifest["task"],
        "model_history": model_history, "state": state.split("?")[0].split("://")[0],
        "config": {"users": args.users, "history_preloaded": args.history, "candidates": args.candidates,
                   "rate_offered": args.rate, "duration_s": duration, "clients": clients,
                   "events_share": args.events_share, "service_threads": args.threads, "repeat": args.repeat},
        "preload_s": round(preload_s, 2),
        "throughput_rps": round(done / wall, 2), "requests": done, "wall_s": round(wall, 2),
        "latency": {"recommend": percentiles(lat["recommend"]), "events": percentiles(lat["events"]),
                    "all": percentiles(lat["recommend"] + lat["events"])},
        "windows": windows,
        "recommend_p99_ms_of_windows": {"median": float(np.median(p99s)), "min": min(p99s), "max": max(p99s)}
        if p99s else None,
        "server_stage_mean_ms": stage_means(metrics_text),
        "precision": args.precision, "precision_vs_fp32": parity,
        "history_length_read": {"min": min(history_seen, default=0), "max": max(history_seen, default=0)},
        "errors": len(errors), "error_examples": errors[:5],
        "events_acknowledged": n_acked, "events_lost": n_lost,
        "lost_examples": [(u, v[:3]) for u, v in lost.items() if v][:5],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if state_path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{state_path}{suffix}").unlink(missing_ok=True)
    r, e = result["latency"]["recommend"], result["latency"]["events"]
    print(f"{result['model']} ({model_history}-event window), {args.candidates} candidates, offered {args.rate:g} req/s "
          f"for {duration:g} s from {clients} clients, state {result['state']}")
    print(f"/recommend p50 {r.get('p50_ms')} ms  p99 {r.get('p99_ms')} ms  (n={r['n']})")
    if args.repeat > 1 and p99s:
        print(f"/recommend p99 per window: {p99s} (median {np.median(p99s):.2f} ms)")
    print(f"/events    p50 {e.get('p50_ms')} ms  p99 {e.get('p99_ms')} ms  (n={e['n']})")
    print(f"throughput {result['throughput_rps']} req/s; errors {len(errors)}; events acknowledged {n_acked}, "
          f"lost {n_lost}; server stage means (ms) {result['server_stage_mean_ms']}")
    if parity:
        print(f"{args.precision} vs fp32 over {parity['requests']} users' requests: max |logit diff| "
              f"{parity['max_abs_logit_diff']:.2e}, same top-10 set in {parity['same_top10_set']:.1%}, score "
              f"{parity['score_ms_median'][args.precision]} vs {parity['score_ms_median']['fp32']} ms (median, in-process)")
    print(f"load average before/after: {result['machine']['loadavg_before']} / {result['machine']['loadavg_after']}")
    print(f"wrote {args.out}")
    if errors or n_lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
