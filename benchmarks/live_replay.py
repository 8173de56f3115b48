"""Issue 23's acceptance benchmark: the simulator's last days replayed through the service as a live platform.

1. The demo live-stream world of `--config` (configs/livestream/mmbee.yaml: MMBee over raw frames, ASR + MFCC speech
   and comments) is loaded (encodings cached); MMBee is trained on days 1..D-2 (`train.refresh.snapshot`, one global
   time cut, the last 10% for early stopping, no test share) and exported. `--reuse` keeps a run / bundle in --work.
2. `redis-server` on a free 127.0.0.1 port (the event stream; the user state too with `--state redis`), `modalrec
   serve BUNDLE --live-only` (one uvicorn process, one fast encoder lane for frames + comments, `--segment-workers`
   speech processes) and `modalrec consume` (consumer group of the stream) start as subprocesses.
3. The last `--days` days (default 2: D-1 and D) are replayed with simulated time compressed by a factor F; stretches
   where no room is live (nights) are skipped. Every room of the world's schedule starts (POST /rooms) and stops at
   its times; each of its segments (the world's 5-minute segments, with their own ids) is posted with its raw content
   (PNG frames, WAV speech, comment texts: POST /segments) when it starts; every watch / comment / like / gift event
   is XADDed to the Redis stream at its time (the consumer stores it). F comes from `--rooms N` (the segment load of
   N rooms posting one segment every 30 s of wall time: F = N * 30-s windows per segment / mean live rooms) or else
   from `--minutes` (the replay's wall length).
4. Throughout, /recommend (live_only, one_per_room, k 10) runs open loop at `--rate` requests/s for random users of
   the window from keep-alive clients on 127.0.0.1; every response is checked against the rooms the replay started
   and stopped. Before a user enters the room they will gift in (the first watch of the visit with the gift), a
   probe /recommend asks for their top 10 live rooms (Recall@K of the room gifted next).
5. At `--kill-at` of the replay the consumer is killed (SIGKILL) just after an XADD burst and restarted under the same
   name; at `--refresh-at`, `refresh_run` updates the model on the events so far (days D-1.. now, in a child
   process at nice 10) and writes a bundle that the service swaps to (POST /admin/bundle). `--no-swap` skips both.
6. After the replay: every event id sent is looked up in the service's state (GET /users/{id}): lost and stored
   twice, by phase (before the kill, between, after the swap); the same probes are scored offline (the bundle
   in-process on the world's own log and offline encodings, the rooms live by the schedule) with the stale and the
   refreshed bundle.

`--find-rooms` first ramps synthetic rooms (`--ramp`, each posting a segment of the world's content every 30 s of
wall time, /recommend at the same rate) and replays at the largest count that held segment p99 <= 2 s and /recommend
p99 <= 20 ms (`--max-minutes` cuts that replay: at N rooms the two days take about 300 / N minutes).

Writes benchmarks/results/live_replay.json (`--out`); progress on stderr.
Run: .venv/bin/python benchmarks/live_replay.py [--reuse] [--minutes 4.5 | --rooms N [--max-minutes M]] [--find-rooms] [--no-swap]
"""

from __future__ import annotations

import argparse
import base64
import bisect
import http.client
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEY = "live-replay-benchmark"
DAY = 86_400
WINDOW_S = 30  # the live window: one segment per room every 30 s
TARGET_SEGMENT_P99_S = 2.0
TARGET_RECOMMEND_P99_MS = 20.0
T_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[live_replay {time.perf_counter() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, scale: float = 1.0) -> dict:
    if not len(xs):
        return {"n": 0}
    a = np.asarray(xs, dtype=np.float64) * scale
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "mean": float(a.mean())}


# ----------------------------------------------------------------------------------------------- HTTP
class Conn:
    """One keep-alive HTTP/1.1 connection to the service (stdlib: the client should cost the shared cores little)."""

    IDLE_S = 3.0  # uvicorn closes a keep-alive connection idle for 5 s: reconnect before that

    def __init__(self, port: int):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.used = time.perf_counter()

    def call(self, method: str, path: str, body=None, key: bool = False) -> tuple[int, bytes]:
        """(status, body); status 0 when the connection failed (the error text as the body)."""
        if time.perf_counter() - self.used > self.IDLE_S:
            self.c.close()
        self.used = time.perf_counter()
        headers = {}
        if body is not None:
            headers["content-type"] = "application/json"
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
        if key:
            headers["x-api-key"] = KEY
        try:
            self.c.request(method, path, body=body, headers=headers)
            r = self.c.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, OSError) as e:
            self.c.close()
            self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return 0, str(e).encode()


@dataclass
class Request:
    kind: str  # recommend, probe, segment, rooms, swap, ...
    sent: float  # perf_counter
    done: float
    status: int
    scheduled: float | None = None


class Ledger:
    """Every request made (thread-safe), for failure counts by time window."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows: list[Request] = []

    def add(self, r: Request) -> None:
        with self.lock:
            self.rows.append(r)

    def failed(self, t0: float, t1: float) -> dict:
        with self.lock:
            rows = [r for r in self.rows if r.done >= t0 and r.sent <= t1]
        bad = [r for r in rows if not 200 <= r.status < 300]
        return {"requests": len(rows), "failed": len(bad),
                "failed_by_kind": dict(Counter(f"{r.kind} {r.status}" for r in bad))}


class RoomBook:
    """When each room was live, as the replay told the service: [start sent, stop acknowledged) intervals."""

    def __init__(self):
        self.lock = threading.Lock()
        self.iv: dict[str, list[list[float]]] = defaultdict(list)

    def start(self, room: str, t: float) -> None:
        with self.lock:
            self.iv[room].append([t, float("inf")])

    def stop(self, room: str, t: float) -> None:
        with self.lock:
            if self.iv[room] and self.iv[room][-1][1] == float("inf"):
                self.iv[room][-1][1] = t

    def live_between(self, room: str | None, t0: float, t1: float) -> bool:
        with self.lock:
            return room is not None and any(a < t1 and b > t0 for a, b in self.iv.get(room, ()))


# ----------------------------------------------------------------------------------------------- processes
def start_redis(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"redis-server did not answer on 127.0.0.1:{port}")


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` on `cpus` (sched_setaffinity of a pid moves its main thread only)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile


def pinning(args) -> tuple[set[int], set[int]] | None:
    """(the service's CPUs, everyone else's) for --pin-service, None without it."""
    if args.pin_service is None:
        return None
    mine = {int(c) for c in args.pin_service.split(",")}
    every = os.sched_getaffinity(0)
    rest = every - mine
    if not mine <= every or not rest:
        raise SystemExit(f"--pin-service {args.pin_service}: CPUs of this machine ({sorted(every)}), leaving at "
                         "least one for the rest")
    return mine, rest


def start_service(bundle: Path, state: str, port: int, args, cpus: set[int] | None = None) -> subprocess.Popen:
    """`modalrec serve` of `bundle`, ready (its encoders warm); `cpus`: run it on those CPUs (taskset)."""
    env = {**os.environ, "MODALREC_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    err = open(Path(args.work) / "serve.log", "w")  # noqa: SIM115 - the subprocess owns it
    pinned = [] if cpus is None else ["taskset", "-c", ",".join(map(str, sorted(cpus)))]
    proc = subprocess.Popen([*pinned, sys.executable, "-m", "modalrec.cli", "serve", str(bundle), "--host",
                             "127.0.0.1", "--port", str(port), "--state", state, "--threads", "1", "--live-only",
                             "--segment-workers", str(args.segment_workers), "--item-sync", "1"],
                            env=env, stdout=err, stderr=err)
    c, deadline = Conn(port), time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited: see {Path(args.work) / 'serve.log'}")
        status, body = c.call("GET", "/healthz")
        if status == 200 and json.loads(body).get("segments") == "ready":
            return proc
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the service was not ready (segments encoders warm) within 300 s")


def start_consumer(redis_url: str, state: str, bundle: Path, work: Path, n: int) -> subprocess.Popen:
    out = open(work / f"consumer-{n}.log", "w")  # noqa: SIM115 - the subprocess owns it
    return subprocess.Popen([sys.executable, "-m", "modalrec.cli", "consume", "--redis", redis_url, "--state", state,
                             "--stream", "events", "--group", "modalrec", "--consumer", "consumer-1", "--batch", "200",
                             "--claim-idle", "10", "--bundle", str(bundle)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=out, stderr=subprocess.STDOUT)


def wait_group(rds, proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    """Until the consumer has created its group on the stream (it loads the bundle first: seconds)."""
    import redis

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the consumer exited: see {log_path}")
        try:
            if any(g["name"].decode() == "modalrec" for g in rds.xinfo_groups("events")):
                return
        except redis.ResponseError:
            pass  # no stream yet
        time.sleep(0.2)
    raise SystemExit(f"the consumer did not create its group within {timeout} s: see {log_path}")


def stop(proc: subprocess.Popen | None, sig=signal.SIGTERM, wait: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------------------------- the world
def load_world(args):
    from modalrec.config import load_config
    from modalrec.tasks.base import event_times
    from modalrec.train.run import load_data

    overrides = [f"train.epochs={args.epochs}", "train.progress=false", "task.split.test=0.0",
                 "task.graph.gie.progress=false", f"train.num_threads={args.threads}"]
    cfg = load_config(args.config, overrides)
    data = load_data(cfg)
    times = event_times(data.events)
    first = int(times.min()) // DAY * DAY
    n_days = int((int(times.max()) - first) // DAY) + 1
    day = {k: first + (k - 1) * DAY for k in range(1, n_days + 2)}
    return cfg, data, day, n_days


def stale_bundle(args, cfg, data, cut: int) -> tuple[Path, Path]:
    """The run trained on the events before `cut` and its bundle (kept with --reuse)."""
    from modalrec.serve.bundle import export_bundle
    from modalrec.train.refresh import snapshot
    from modalrec.train.run import train_run

    work = Path(args.work)
    run, bundle = work / "run", work / "bundle"
    marker = work / "run_cut.json"  # which events the run was trained on: a reused run must match
    same = marker.is_file() and json.loads(marker.read_text()).get("before") == cut
    if not (args.reuse and same and (run / "metrics.json").is_file()):
        log(f"training {cfg.model.name} on the events before {cut} ({args.epochs} epochs) into {run}")
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
        train_run(cfg, run, data=snapshot(data, cut), report=False)
        marker.write_text(json.dumps({"before": cut, "config": args.config, "epochs": args.epochs}))
        same = False
    if not (args.reuse and same and (bundle / "manifest.json").is_file()):
        log(f"exporting {bundle}")
        export_bundle(run, bundle, overwrite=True)
    return run, bundle


@dataclass
class Plan:
    t0: int
    t1: int
    speed: float
    starts: np.ndarray  # active stretches (sim seconds): [starts[i], ends[i])
    ends: np.ndarray
    cum: np.ndarray  # active seconds before each stretch
    rooms: list[tuple[str, str, int, int]]  # (room id, streamer, start, end) clipped to the window
    segments: list[dict]  # {id, streamer, category, start}
    events: list[dict]  # time order
    probes: dict[str, dict]  # event_id of a visit's first watch -> {user, room, gift_time, item}
    mean_live: float

    def wall(self, t: float) -> float:
        """Wall seconds from the replay's start of simulated time t (idle stretches skipped)."""
        i = max(bisect.bisect_right(self.starts.tolist(), t) - 1, 0)
        return (self.cum[i] + min(max(t - self.starts[i], 0), self.ends[i] - self.starts[i])) / self.speed

    @property
    def active_s(self) -> float:
        return float(self.cum[-1] + self.ends[-1] - self.starts[-1])


def make_plan(cfg, data, t0: int, t1: int, args) -> Plan:
    import pyarrow.compute as pc

    from modalrec.datasets.livestream_rooms import room_schedule
    from modalrec.sim.livestream.params import resolve_params

    sched = room_schedule(resolve_params(**cfg.data.params)).to_pylist()
    rooms = sorted((r["room_id"], r["room_id"].split("/")[0], max(r["start_time"], t0), min(r["end_time"], t1))
                   for r in sched if r["end_time"] > t0 and r["start_time"] < t1)
    iv = sorted((s, e) for _, _, s, e in rooms)
    merged: list[list[int]] = []
    for s, e in iv:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    starts = np.array([m[0] for m in merged], np.float64)
    ends = np.array([m[1] for m in merged], np.float64)
    cum = np.concatenate([[0.0], np.cumsum(ends - starts)[:-1]])
    active = float((ends - starts).sum())
    live_s = float(sum(e - s for _, _, s, e in rooms))
    it = data.items.filter(pc.and_(pc.greater_equal(data.items["start_time"], t0),
                                   pc.less(data.items["start_time"], t1)))
    segments = sorted(({"id": r["item_id"], "streamer": r["streamer_id"], "category": r["category"],
                        "room_id": r["room_id"], "start": r["start_time"]} for r in it.to_pylist()),
                      key=lambda s: (s["start"], s["id"]))
    seg_per_active_s = len(segments) / active
    if args.rooms:
        speed = args.rooms / (WINDOW_S * seg_per_active_s)
    else:
        speed = active / (args.minutes * 60)
    times = data.events["time"].to_numpy()
    ev = data.events.filter(pc.and_(pc.greater_equal(data.events["time"], t0), pc.less(data.events["time"], t1)))
    events = sorted(ev.to_pylist(), key=lambda e: (e["time"], e["event_id"]))
    del times
    room_of = dict(zip(data.items["item_id"].to_pylist(), data.items["room_id"].to_pylist()))
    # the visit in which each gift was sent: the user's consecutive watches of the gifted room up to the gift
    watches = defaultdict(list)
    for e in events:
        if e["channel"] == "watch":
            watches[e["user_id"]].append(e)
    probes = {}
    for e in events:
        if e["channel"] != "gift":
            continue
        w = [x for x in watches[e["user_id"]] if x["time"] <= e["time"]]
        j = max((k for k, x in enumerate(w) if x["item_id"] == e["item_id"]), default=None)
        if j is None:
            continue
        while j > 0 and room_of[w[j - 1]["item_id"]] == room_of[e["item_id"]]:
            j -= 1
        probes.setdefault(w[j]["event_id"], {"user": e["user_id"], "room": e["item_id"].split("/")[0],
                                             "gift_time": e["time"], "time": w[j]["time"], "item": e["item_id"]})
    plan = Plan(t0, t1, speed, starts, ends, cum, rooms, segments, events, probes, live_s / active)
    cap = getattr(args, "max_minutes", None)
    if cap and plan.active_s / speed > cap * 60:  # the first `cap` wall minutes of the window, at this speed
        budget = cap * 60 * speed  # simulated seconds with a live room
        k = int(np.searchsorted(cum, budget, side="right")) - 1
        t_cut = int(starts[k] + (budget - cum[k]))
        return make_plan(cfg, data, t0, t_cut, argparse.Namespace(**{**vars(args), "max_minutes": None,
                                                                       "rooms": None, "minutes": cap}))
    return plan


class Content:
    """The raw content of the world's segments, as a platform would post it."""

    def __init__(self, data):
        self.raw = {}
        for m in ("frames", "speech", "comments"):
            t = data.content.get(m)
            if t is None:
                continue
            col = "path" if "path" in t.column_names else "text"
            kind = data.spec.modality(m).kind
            for eid, v in zip(t["entity_id"].to_pylist(), t[col].to_pylist()):
                self.raw.setdefault(eid, {})[m] = (kind, v if isinstance(v, list) else [v])

    def body(self, seg_id: str, new_id: str, categorical: dict) -> bytes:
        raw = {}
        for m, (kind, values) in self.raw.get(seg_id, {}).items():
            raw[m] = values if kind == "text" else [base64.b64encode(Path(p).read_bytes()).decode() for p in values]
        return json.dumps({"id": new_id, "categorical": categorical, "raw": raw}).encode()


# ----------------------------------------------------------------------------------------------- load
def _load_process(port: int, users: list[str], rate: float, clients: int, seed: int, conn) -> None:
    """The /recommend clients of `RecommendLoad`, in a process of their own: a schedule thread puts (scheduled time,
    user) on a queue at `rate` per second from the start, `clients` threads send them; on "stop" the rows go back
    through `conn` (each with the rooms of its items, checked against the RoomBook by the driver)."""
    jobs: queue.Queue = queue.Queue()
    rows: list[dict] = []
    lock = threading.Lock()
    stopping = threading.Event()
    rng = random.Random(seed)

    def schedule() -> None:
        t0, k = time.perf_counter(), 0
        while not stopping.is_set():
            at = t0 + k / rate
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            jobs.put((at, rng.choice(users)))
            k += 1
        for _ in range(clients):
            jobs.put(None)

    def client() -> None:
        c = Conn(port)
        while True:
            job = jobs.get()
            if job is None:
                return
            at, user = job
            sent = time.perf_counter()
            status, body = c.call("POST", "/recommend", {"user": user, "k": 10, "live_only": True,
                                                         "one_per_room": True})
            done = time.perf_counter()
            row = {"at": at, "sent": sent, "done": done, "status": status, "latency": done - at}
            if status == 200:
                items = json.loads(body)["items"]
                row["items"] = len(items)
                row["rooms"] = [x.get("room") for x in items]
            with lock:
                rows.append(row)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    threads.append(threading.Thread(target=schedule, daemon=True))
    for t in threads:
        t.start()
    conn.send("ready")
    conn.recv()  # "stop"
    stopping.set()
    for t in threads:
        t.join(30)
    with lock:
        conn.send(rows)


class RecommendLoad:
    """/recommend (live_only, one_per_room) open loop at `rate` requests/s from `clients` keep-alive connections;
    latency from each request's scheduled start; every response checked against the RoomBook.

    The clients run in their own process (`_load_process`): a client that shares this driver's interpreter lock
    waits for it while the driver base64-encodes a 0.5 MB segment body or parses a response, and that wait was in
    its latencies (the service's own histogram put the p99 at 15 ms where the in-driver clients measured 21 ms).
    Times are `time.perf_counter` (CLOCK_MONOTONIC, one clock for every process of the machine), so the rooms of
    each response are checked against the RoomBook here once the process has returned its rows."""

    def __init__(self, port: int, users: list[str], rate: float, clients: int, book: RoomBook, ledger: Ledger,
                 seed: int = 0):
        self.port, self.users, self.rate, self.clients, self.seed = port, users, rate, clients, seed
        self.book, self.ledger = book, ledger
        self.rows: list[dict] = []
        self.proc = None
        self.conn = None

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # the driver has threads: no fork
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_load_process, args=(self.port, self.users, self.rate, self.clients,
                                                             self.seed, child), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            raise SystemExit("the /recommend load process did not start")

    def stop(self) -> None:
        self.conn.send("stop")
        rows = self.conn.recv() if self.conn.poll(60) else []
        self.proc.join(30)
        for row in rows:
            self.ledger.add(Request("recommend", row["sent"], row["done"], row["status"], row["at"]))
            rooms = row.pop("rooms", None)
            if rooms is not None:
                row["only_live"] = all(self.book.live_between(r, row["sent"], row["done"]) for r in rooms)
        self.rows = rows

    def window(self, t0: float, t1: float) -> dict:
        rows = [r for r in self.rows if t0 <= r["at"] < t1]
        ok = [r for r in rows if r["status"] == 200]
        span = (max(r["done"] for r in ok) - min(r["done"] for r in ok)) if len(ok) > 1 else 0.0
        return {"requests": len(rows), "ok": len(ok), "failed": len(rows) - len(ok),
                "achieved_rate": (len(ok) - 1) / span if span else None,  # responses per second, as completed
                "latency_ms": pct([r["latency"] for r in ok], 1000),
                "responses_only_live": sum(1 for r in ok if r["only_live"]),
                "fraction_only_live": (sum(1 for r in ok if r["only_live"]) / len(ok)) if ok else None,
                "empty_responses": sum(1 for r in ok if r["items"] == 0)}


class SegmentPoster:
    """POST /segments from a queue, in order, and the client-side time to recommendable (GET /segments/{id} polled
    every `poll_s`)."""

    def __init__(self, port: int, content: Content, ledger: Ledger, poll_s: float = 0.02):
        self.port, self.content, self.ledger, self.poll_s = port, content, ledger, poll_s
        self.q: queue.Queue = queue.Queue()
        self.sent: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._post, daemon=True),
                        threading.Thread(target=self._poll, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def post(self, seg_id: str, new_id: str, categorical: dict, tag: str) -> None:
        self.q.put((seg_id, new_id, categorical, tag))

    def _post(self) -> None:
        c = Conn(self.port)
        while True:
            job = self.q.get()
            if job is None:
                return
            seg_id, new_id, categorical, tag = job
            body = self.content.body(seg_id, new_id, categorical)
            sent = time.perf_counter()
            status, text = c.call("POST", "/segments", body, key=True)
            done = time.perf_counter()
            self.ledger.add(Request("segment", sent, done, status))
            with self.lock:
                self.sent[new_id] = {"tag": tag, "sent": sent, "acked": done, "status": status, "bytes": len(body),
                                     "error": None if status == 202 else text[:300].decode(errors="replace")}

    def _poll(self) -> None:
        c = Conn(self.port)
        while not (self.done.is_set() and self.q.empty()):
            with self.lock:
                pending = [k for k, v in self.sent.items() if v["status"] == 202 and "seen" not in v]
            for sid in pending:
                status, body = c.call("GET", f"/segments/{sid}")
                if status == 200 and json.loads(body)["recommendable"]:
                    with self.lock:
                        self.sent[sid]["seen"] = time.perf_counter()
            time.sleep(self.poll_s)

    def stop(self) -> None:
        self.q.put(None)
        self.threads[0].join(120)
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            with self.lock:
                if all("seen" in v for v in self.sent.values() if v["status"] == 202):
                    break
            time.sleep(0.1)
        self.done.set()
        self.threads[1].join(30)

    def server_status(self, port: int, ids: list[str]) -> dict[str, dict]:
        c = Conn(port)
        out = {}
        for sid in ids:
            status, body = c.call("GET", f"/segments/{sid}")
            if status == 200:
                out[sid] = json.loads(body)
        return out

    def summary(self, port: int, tag: str | None = None) -> dict:
        with self.lock:
            rows = {k: dict(v) for k, v in self.sent.items() if tag is None or v["tag"] == tag}
        st = self.server_status(port, list(rows))
        ok = [k for k, v in rows.items() if v["status"] == 202]
        server = [st[k]["seconds_to_recommendable"] for k in ok
                  if k in st and st[k].get("seconds_to_recommendable") is not None]
        complete = [st[k]["seconds_to_complete"] for k in ok if k in st and st[k]["status"] == "registered"
                    and st[k].get("seconds_to_complete") is not None]
        return {"posted": len(rows), "accepted": len(ok), "errors": sorted({v["error"] for v in rows.values()
                                                                           if v["error"]})[:5],
                "statuses": dict(Counter(st[k]["status"] for k in ok if k in st)),
                "recommendable_s_server": pct(server),
                "recommendable_s_client": pct([v["seen"] - v["sent"] for v in rows.values() if "seen" in v]),
                "never_recommendable": sum(1 for k in ok if "seen" not in rows[k]),
                "complete_s_server": pct(complete),
                "post_ms": pct([v["acked"] - v["sent"] for v in rows.values()], 1000),
                "mean_body_kb": float(np.mean([v["bytes"] for v in rows.values()]) / 1024) if rows else None}


def within(buckets: dict[str, float], le: str, route: str = "/recommend") -> float | None:
    """The share of the route's requests the service's own histogram puts at or under `le` seconds."""
    at = [v for k, v in buckets.items() if f'le="{le}"' in k and f'route="{route}"' in k]
    total = [v for k, v in buckets.items() if 'le="+Inf"' in k and f'route="{route}"' in k]
    return at[0] / total[0] if at and total and total[0] else None


def metrics_text(port: int) -> str:
    status, body = Conn(port).call("GET", "/metrics")
    return body.decode() if status == 200 else ""


def metric_values(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        m = re.match(rf"{name}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


# ----------------------------------------------------------------------------------------------- refresh
def _refresh_child(config: str, overrides: list[str], run: str, since: int, until: int, out: str, bundle: str,
                   result: str) -> None:
    """In a child process at nice 10: refresh `run` on the world's events before `until` (those the replay has
    sent), since `since`, and export the bundle."""
    os.nice(10)
    import torch

    from modalrec.config import load_config
    from modalrec.train.refresh import refresh_run, snapshot
    from modalrec.train.run import load_data

    torch.set_num_threads(1)
    t = time.perf_counter()
    data = snapshot(load_data(load_config(config, overrides)), until)
    m = refresh_run(Path(run), since, Path(out), data=data, epochs=1, bundle=Path(bundle))
    Path(result).write_text(json.dumps({"seconds": time.perf_counter() - t, "samples": m["samples"],
                                        "refresh": m["refresh"], "valid": m["valid"],
                                        "valid_warm_start": m["valid_warm_start"]}, default=float))


# ----------------------------------------------------------------------------------------------- offline recall
def offline_probes(bundle_path: Path, cfg, data, plan: Plan, probes: list[dict]) -> list[dict]:
    """The probes scored by the bundle in-process on the world's own log (every event of the window before the
    probe, through a private state store) and offline encodings; candidates: each room live at the probe's time
    by the schedule, its latest segment started by then. Returns per probe the gifted room's rank (1 = top) or
    None when it had no candidate."""
    from modalrec.serve.bundle import load_bundle
    from modalrec.serve.schemas import NewItem
    from modalrec.serve.scoring import Scorer
    from modalrec.serve.state import StoredEvent, open_state

    tmp = Path(tempfile.mkdtemp(prefix="live_replay_offline_"))
    try:
        bundle = load_bundle(bundle_path)
        state = open_state(f"sqlite:///{tmp / 'state.sqlite'}?synchronous=normal")
        state.append_events([StoredEvent(e["user_id"], e["item_id"], e["channel"], int(e["time"]),
                                         e["duration"] if e["channel"] == "watch" else e["price"], e["event_id"])
                             for e in plan.events])
        scorer = Scorer(bundle, state, item_sync_s=None)
        reads = [m for m in cfg.model.params.get("modalities", []) if m in data.content]
        tokens = set(cfg.task.token_modalities or [])
        content = {m: dict(zip(data.content[m]["entity_id"].to_pylist(), data.content[m]["vector"].to_pylist()))
                   for m in reads}
        known = set(bundle.pipeline.items.array.to_pylist())
        items = []
        for s in plan.segments:
            if s["id"] in known:
                continue
            vec, tok = {}, {}
            for m, rows in content.items():
                v = rows.get(s["id"])
                if v is not None and m in tokens:
                    tok[m] = v[:cfg.task.max_tokens]
                elif v is not None:
                    vec[m] = v
            items.append(NewItem(id=s["id"], categorical={"streamer_id": s["streamer"], "category": s["category"]},
                                 vectors=vec, tokens=tok))
        for k in range(0, len(items), 500):
            _, errors = scorer.registry.register(items[k:k + 500])
            if errors:
                raise SystemExit(f"offline registration refused: {errors[:3]}")
        seg_start = [(s["start"], s["id"], s["streamer"]) for s in plan.segments]
        out = []
        for p in probes:
            t = p["time"]
            live = {streamer for _, streamer, s, e in plan.rooms if s <= t < e}
            latest = {}
            for start, sid, streamer in seg_start:
                if start <= t and streamer in live:
                    latest[streamer] = sid
            if p["room"] not in latest:
                out.append({**p, "rank": None, "candidates": len(latest)})
                continue
            names = sorted(latest)
            rows = scorer.item_index([latest[r] for r in names])
            logits = scorer.score(p["user"], scorer.history(p["user"], before=t), t, rows, before=t)
            order = [names[j] for j in np.argsort(-logits, kind="stable")]
            out.append({**p, "rank": order.index(p["room"]) + 1, "candidates": len(names)})
        state.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recall(rows: list[dict]) -> dict:
    ranked = [r for r in rows if r.get("rank") is not None]
    n = len(rows)
    out = {"probes": n, "gifted_room_not_a_candidate": n - len(ranked)}
    if not n:
        return out
    for k in (1, 3, 10):
        out[f"recall@{k}"] = sum(1 for r in ranked if r["rank"] <= k) / n
        out[f"chance@{k}"] = float(np.mean([min(k, r["candidates"]) / r["candidates"] for r in ranked])) \
            if ranked else None
    out["mrr"] = sum(1 / r["rank"] for r in ranked) / n
    out["mean_candidates"] = float(np.mean([r["candidates"] for r in ranked])) if ranked else None
    return out


# ----------------------------------------------------------------------------------------------- ramp
def find_rooms(args, port: int, content: Content, pool: list[str], users: list[str], book: RoomBook,
               ledger: Ledger) -> dict:
    """Synthetic rooms, each posting a segment (the world's content, round robin) every 30 s of wall time, at each
    count of `--ramp` for `--ramp-seconds`, /recommend at `--rate` throughout; stops at the first count that misses
    a target."""
    steps = [int(x) for x in args.ramp.split(",")]
    out, best = [], 0
    c = Conn(port)
    k_seg = 0
    for n in steps:
        poster = SegmentPoster(port, content, ledger)
        load = RecommendLoad(port, users, args.rate, args.clients, book, ledger, seed=n)
        rooms = [f"ramp{n}-{j:03d}" for j in range(n)]
        t = time.perf_counter()
        status, _ = c.call("POST", "/rooms", {"rooms": [{"room": r, "live": True} for r in rooms]}, key=True)
        ledger.add(Request("rooms", t, time.perf_counter(), status))
        for r in rooms:
            book.start(r, t)
        poster.start()
        load.start()
        t0 = time.perf_counter()
        posts = sorted((j * WINDOW_S / n + w * WINDOW_S, r) for j, r in enumerate(rooms)
                       for w in range(int(np.ceil(args.ramp_seconds / WINDOW_S)))
                       if j * WINDOW_S / n + w * WINDOW_S < args.ramp_seconds)
        for w, (at, r) in enumerate(posts):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            seg = pool[k_seg % len(pool)]
            k_seg += 1
            poster.post(seg, f"{r}/s{w}", {"streamer_id": r, "category": "ramp"}, f"ramp{n}")
        delay = t0 + args.ramp_seconds - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        load.stop()
        t1 = time.perf_counter()
        poster.stop()
        t = time.perf_counter()
        c.call("POST", "/rooms", {"rooms": [{"room": r, "live": False} for r in rooms]}, key=True)
        for r in rooms:
            book.stop(r, time.perf_counter())
        seg = poster.summary(port)
        rec = load.window(t0, t1)
        seg_p99 = seg["recommendable_s_server"].get("p99")
        rec_p99 = rec["latency_ms"].get("p99")
        held = (seg_p99 is not None and seg_p99 <= TARGET_SEGMENT_P99_S and seg["never_recommendable"] == 0
                and rec_p99 is not None and rec_p99 <= TARGET_RECOMMEND_P99_MS and rec["failed"] == 0
                and seg["accepted"] == seg["posted"])
        out.append({"rooms": n, "segments_per_s": len(posts) / args.ramp_seconds, "held": held,
                    "segment_recommendable_s": seg["recommendable_s_server"], "segments": seg,
                    "recommend": rec, "load_average": os.getloadavg()})
        log(f"ramp {n} rooms: segment p99 {seg_p99} s, /recommend p99 {rec_p99} ms -> "
            f"{'held' if held else 'missed'}")
        if not held:
            break
        best = n
        time.sleep(3)  # the slow lane's backlog keeps going; let the fast one settle
    return {"steps": out, "largest_held": best, "seconds_per_step": args.ramp_seconds}


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "livestream" / "mmbee.yaml"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training")
    ap.add_argument("--days", type=int, default=2, help="the last days replayed (the model trains on the others)")
    ap.add_argument("--minutes", type=float, default=4.5, help="wall minutes of the replay (sets the speed-up), "
                    "unless --rooms")
    ap.add_argument("--rooms", type=float, default=None, help="the replay's segment load as N rooms posting one "
                    "segment every 30 s of wall time (sets the speed-up; the replay then takes as long as it takes)")
    ap.add_argument("--max-minutes", type=float, default=None, help="with --rooms: replay only the first this many "
                    "wall minutes of the window (at the speed --rooms sets)")
    ap.add_argument("--find-rooms", action="store_true", help="ramp first (--ramp) and replay at the largest count "
                    "that held every target")
    ap.add_argument("--ramp", default="10,20,40,80,120")
    ap.add_argument("--ramp-seconds", type=float, default=45.0)
    ap.add_argument("--rate", type=float, default=50.0, help="/recommend requests per second")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--state", choices=("redis", "sqlite"), default="redis")
    ap.add_argument("--segment-workers", type=int, default=1)
    ap.add_argument("--nice-encoders", type=int, default=10, help="niceness of the service's encoder worker "
                    "processes (10: speech recognition takes what scoring leaves, as an operator would renice them; "
                    "0: as the service)")
    ap.add_argument("--kill-at", type=float, default=0.15, help="share of the replay at which the consumer is killed")
    ap.add_argument("--refresh-at", type=float, default=0.3, help="share of the replay at which the refresh starts")
    ap.add_argument("--no-swap", action="store_true", help="no refresh and no POST /admin/bundle")
    ap.add_argument("--reuse", action="store_true", help="keep the run and bundle already in --work")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "live_replay"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "live_replay.json"))
    ap.add_argument("--pin-service", default=None, metavar="CPUS", help="run the service's request process on "
                    "these CPUs (e.g. 0) and everything else (its encoder workers, redis, the consumer, the refresh, "
                    "this driver) on the others, as an operator would with taskset; default: no pinning")
    ap.add_argument("--quiet-machine", action="store_true", help="record that the machine had no other load "
                    "(\"quiet\": true in the JSON)")
    args = ap.parse_args()
    cpus = pinning(args)  # decided once, before this process moves off the service's CPUs
    if cpus is not None:  # the driver, and so redis, the consumer and the refresh it starts, off the service's cores
        pin(os.getpid(), cpus[1])
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    log(f"loading {args.config} (raw content encoded once, cached)")
    cfg, data, day, d = load_world(args)
    t_replay0, t_replay1 = day[d - args.days + 1], day[d + 1]
    run, bundle = stale_bundle(args, cfg, data, t_replay0)
    content = Content(data)
    plan = make_plan(cfg, data, t_replay0, t_replay1, args)
    users = sorted({e["user_id"] for e in plan.events})
    pool = [s for s in data.items["item_id"].to_pylist() if s in content.raw and len(content.raw[s]) == 3]
    procs: dict[str, subprocess.Popen | None] = {"redis": None, "serve": None, "consumer": None}
    refresh_proc = None
    try:
        rport, sport = free_port(), free_port()
        (work / "redis").mkdir(exist_ok=True)
        procs["redis"] = start_redis(rport, work / "redis")
        import redis as redis_lib

        rds = redis_lib.Redis(port=rport)
        redis_url = f"redis://127.0.0.1:{rport}"
        if args.state == "redis":
            state = f"{redis_url}/1"
        else:
            (work / "state.sqlite").unlink(missing_ok=True)
            state = f"sqlite:///{work / 'state.sqlite'}"
        log(f"starting the service on 127.0.0.1:{sport} (state {state}) and the consumer")
        procs["serve"] = start_service(bundle, state, sport, args, None if cpus is None else cpus[0])
        import psutil

        for p in psutil.Process(procs["serve"].pid).children(recursive=True):
            if args.nice_encoders:
                p.nice(args.nice_encoders)  # the encoder workers: scoring keeps its share of the cores
            if cpus is not None:
                pin(p.pid, cpus[1])  # the encoder workers leave the service's cores to scoring
        procs["consumer"] = start_consumer(redis_url, state, bundle, work, 1)
        wait_group(rds, procs["consumer"], work / "consumer-1.log")
        book, ledger = RoomBook(), Ledger()
        ramp = None
        if args.find_rooms:
            ramp = find_rooms(args, sport, content, pool, users, book, ledger)
            if ramp["largest_held"]:
                args.rooms = ramp["largest_held"]
                plan = make_plan(cfg, data, t_replay0, t_replay1, args)
        log(f"replay of days {d - args.days + 1}..{d}: {len(plan.rooms)} rooms, {len(plan.segments)} segments, "
            f"{len(plan.events)} events, {len(plan.probes)} gift probes; {plan.active_s / 3600:.1f} h with a live "
            f"room of {(t_replay1 - t_replay0) / 3600:.0f} h, speed-up {plan.speed:.0f}x -> "
            f"{plan.active_s / plan.speed / 60:.1f} min; segment load = "
            f"{len(plan.segments) / (plan.active_s / plan.speed) * WINDOW_S:.0f} rooms at one segment / 30 s")

        # the timeline: (sim time, order, action)
        actions = []
        for room_id, streamer, s, e in plan.rooms:
            actions.append((s, 0, "start", streamer, room_id))
            actions.append((e, 3, "stop", streamer, room_id))
        for s in plan.segments:
            actions.append((s["start"], 1, "segment", s, None))
        for e in plan.events:
            actions.append((e["time"], 2, "event", e, None))
        actions.sort(key=lambda a: (a[0], a[1]))
        total_wall = plan.wall(t_replay1)
        kill_wall = args.kill_at * total_wall if args.kill_at > 0 else None
        refresh_wall = None if args.no_swap else args.refresh_at * total_wall

        poster = SegmentPoster(sport, content, ledger)
        load = RecommendLoad(sport, users, args.rate, args.clients, book, ledger)
        c = Conn(sport)
        sent_events: dict[str, dict] = {}
        probe_rows: list[dict] = []
        marks: dict[str, float] = {}
        kill_info: dict = {}
        pipe = rds.pipeline(transaction=False)
        n_pipe = 0
        live_streamers: dict[str, str] = {}
        buckets0 = metric_values(metrics_text(sport), "modalrec_request_duration_seconds_bucket")
        poster.start()
        load.start()
        w0 = time.perf_counter()
        marks["replay_start"] = w0
        consumer_n = 1
        lags: list[float] = []  # how late each action of the timeline ran (the driver shares the cores)
        swap_info: dict = {}
        refresh_result = work / "refresh_result.json"

        def flush() -> None:
            nonlocal n_pipe
            if n_pipe:
                pipe.execute()
                n_pipe = 0

        def phase() -> str:
            if "kill" not in marks:
                return "before_kill"
            if "swap_done" not in marks:
                return "after_kill_before_swap"
            return "after_swap"

        def xadd(e: dict) -> None:
            nonlocal n_pipe
            value = e["duration"] if e["channel"] == "watch" else e["price"] if e["channel"] == "gift" else None
            msg = {"user": e["user_id"], "item": e["item_id"], "channel": e["channel"], "time": int(e["time"]),
                   "event_id": e["event_id"]}
            if value is not None:
                msg["value"] = float(value)
            pipe.xadd("events", {"event": json.dumps(msg)})
            n_pipe += 1
            sent_events[e["event_id"]] = {"user": e["user_id"], "channel": e["channel"], "phase": phase()}

        def send_event(e: dict) -> None:
            """A gift probe first where the event opens a gifting visit, then the event into the stream."""
            probe = plan.probes.get(e["event_id"])
            if probe is not None:
                flush()
                t = time.perf_counter()
                status, body = c.call("POST", "/recommend", {"user": probe["user"], "k": 10, "live_only": True,
                                                             "one_per_room": True})
                done = time.perf_counter()
                ledger.add(Request("probe", t, done, status))
                row = {**probe, "status": status, "phase": phase(), "bundle": "refreshed"
                       if "swap_done" in marks and swap_info.get("status") == 200 else "stale"}
                if status == 200:
                    got = json.loads(body)
                    rooms = [x["room"] for x in got["items"]]
                    row["rank"] = rooms.index(probe["room"]) + 1 if probe["room"] in rooms else None
                    row["candidates"] = got.get("live_rooms")
                    row["only_live"] = all(book.live_between(r, t, done) for r in rooms)
                probe_rows.append(row)
            xadd(e)

        i, burst = 0, set()
        while i < len(actions):
            sim_t, _, kind, obj, room_id = actions[i]
            i += 1
            if i - 1 in burst:
                continue  # sent in the burst before the kill
            at = w0 + plan.wall(sim_t)
            now = time.perf_counter()
            if at > now + 0.002:
                flush()
                time.sleep(at - now)
            lags.append(time.perf_counter() - at)
            elapsed = time.perf_counter() - w0
            if kill_wall is not None and "kill" not in marks and elapsed >= kill_wall:
                # the consumer paused (SIGSTOP) while the next 200 events (and their probes) go into the stream,
                # resumed, and killed as soon as it holds a batch it has read and not acknowledged (the events come
                # a little early; the other actions keep their times: events may precede their segment's post)
                n_before = len(sent_events)
                os.kill(procs["consumer"].pid, signal.SIGSTOP)
                for j in range(i - 1, len(actions)):
                    if len(burst) == 200:
                        break
                    if actions[j][2] == "event":
                        send_event(actions[j][3])
                        burst.add(j)
                flush()
                os.kill(procs["consumer"].pid, signal.SIGCONT)
                spin = time.perf_counter()
                # (Redis hands the first entry to the read the consumer was blocked in while it was stopped; it
                # reads the rest once resumed: at least 2 pending is that batch)
                while rds.xpending("events", "modalrec")["pending"] < 2 and time.perf_counter() - spin < 3:
                    pass  # busy: the batch is in the consumer's hands for milliseconds
                os.kill(procs["consumer"].pid, signal.SIGKILL)
                marks["kill"] = time.perf_counter()
                procs["consumer"].wait()
                pend = rds.xpending("events", "modalrec")
                kill_info = {"wall_s": marks["kill"] - w0, "sim_time": sim_t, "events_sent_before": n_before,
                             "burst": len(burst), "pending_after_kill": int(pend["pending"])}
                consumer_n += 1
                procs["consumer"] = start_consumer(redis_url, state, bundle, work, consumer_n)
                log(f"kill -9 of the consumer at {kill_info['wall_s']:.0f} s ({kill_info['pending_after_kill']} "
                    f"entries pending); restarted")
                if i - 1 in burst:
                    continue
            if refresh_wall is not None and refresh_proc is None and elapsed >= refresh_wall:
                flush()
                shutil.rmtree(work / "refresh_run", ignore_errors=True)
                shutil.rmtree(work / "bundle_refreshed", ignore_errors=True)
                refresh_result.unlink(missing_ok=True)
                ctx = mp.get_context("spawn")
                overrides = [f"train.epochs={args.epochs}", "train.progress=false", "task.split.test=0.0",
                             "task.graph.gie.progress=false"]
                refresh_proc = ctx.Process(target=_refresh_child, args=(
                    args.config, overrides, str(run), t_replay0, int(sim_t), str(work / "refresh_run"),
                    str(work / "bundle_refreshed"), str(refresh_result)))
                refresh_proc.start()
                marks["refresh_start"] = time.perf_counter()
                swap_info["refresh_until_sim"] = int(sim_t)
                swap_info["events_sent_before_refresh"] = len(sent_events)
                log(f"refresh started on the events before sim time {int(sim_t)} ({len(sent_events)} sent)")
            if refresh_proc is not None and "refresh_done" not in marks and not refresh_proc.is_alive():
                marks["refresh_done"] = time.perf_counter()
                if refresh_proc.exitcode != 0 or not refresh_result.is_file():
                    swap_info["error"] = f"refresh failed (exit {refresh_proc.exitcode}): see stderr"
                    marks["swap_done"] = marks["refresh_done"]
                else:
                    flush()
                    t = time.perf_counter()
                    status, body = c.call("POST", "/admin/bundle", {"path": str(work / "bundle_refreshed")}, key=True)
                    marks["swap_sent"], marks["swap_done"] = t, time.perf_counter()
                    ledger.add(Request("swap", t, marks["swap_done"], status))
                    swap_info.update({"status": status, "response": json.loads(body) if status == 200 else
                                      body[:500].decode(errors="replace"), "sim_time": sim_t,
                                      "wall_s": t - w0, "request_s": marks["swap_done"] - t})
                    log(f"POST /admin/bundle -> {status} in {marks['swap_done'] - t:.2f} s")
            if kind == "start":
                t = time.perf_counter()
                book.start(obj, t)
                status, _ = c.call("POST", "/rooms", {"rooms": [{"room": obj, "live": True, "time": int(sim_t)}]},
                                   key=True)
                ledger.add(Request("rooms", t, time.perf_counter(), status))
                live_streamers[obj] = room_id
            elif kind == "stop":
                if live_streamers.get(obj) != room_id:
                    continue  # the streamer's next room started at this very time
                t = time.perf_counter()
                status, _ = c.call("POST", "/rooms", {"rooms": [{"room": obj, "live": False, "time": int(sim_t)}]},
                                   key=True)
                book.stop(obj, time.perf_counter())
                ledger.add(Request("rooms", t, time.perf_counter(), status))
                live_streamers.pop(obj, None)
            elif kind == "segment":
                poster.post(obj["id"], obj["id"], {"streamer_id": obj["streamer"], "category": obj["category"]},
                            "replay")
            else:
                send_event(obj)
        flush()
        marks["replay_end"] = time.perf_counter()
        if refresh_proc is not None and "refresh_done" not in marks:
            log("the replay ended before the refresh: waiting for it, /recommend still running")
            refresh_proc.join()
            marks["refresh_done"] = time.perf_counter()
            if refresh_proc.exitcode == 0 and refresh_result.is_file():
                t = time.perf_counter()
                status, body = c.call("POST", "/admin/bundle", {"path": str(work / "bundle_refreshed")}, key=True)
                marks["swap_sent"], marks["swap_done"] = t, time.perf_counter()
                ledger.add(Request("swap", t, marks["swap_done"], status))
                swap_info.update({"status": status, "response": json.loads(body) if status == 200 else
                                  body[:500].decode(errors="replace"), "after_the_replay": True,
                                  "request_s": marks["swap_done"] - t})
            time.sleep(5)
        load.stop()
        poster.stop()
        log("replay done; waiting for the consumer to drain the stream")
        deadline = time.time() + 120
        while time.time() < deadline:
            g = {x["name"].decode(): x for x in rds.xinfo_groups("events")}.get("modalrec")
            if g and g["pending"] == 0 and (g.get("lag") in (0, None)) and \
                    g["last-delivered-id"] == rds.xinfo_stream("events")["last-generated-id"]:
                break
            time.sleep(0.5)
        stop(procs["consumer"], signal.SIGTERM)
        consumer_out = (work / f"consumer-{consumer_n}.log").read_text().strip().splitlines()
        consumer_stats = next((json.loads(x) for x in reversed(consumer_out) if x.startswith("{")), None)
        dead = rds.xlen("events:dead") if rds.exists("events:dead") else 0

        # every event id sent, looked up in the service's state
        by_user = defaultdict(list)
        for eid, v in sent_events.items():
            by_user[v["user"]].append(eid)
        stored = Counter()
        for user in by_user:
            status, body = c.call("GET", f"/users/{user}?n=10000", key=True)
            if status != 200:
                raise SystemExit(f"GET /users/{user}: {status} {body[:300]!r}")
            for ev in json.loads(body)["events"]:
                stored[ev["event_id"]] += 1
        check = defaultdict(lambda: {"sent": 0, "stored": 0, "lost": 0, "double": 0})
        for eid, v in sent_events.items():
            for key in (v["phase"], "all"):
                row = check[key]
                row["sent"] += 1
                row["stored"] += min(stored[eid], 1)
                row["lost"] += stored[eid] == 0
                row["double"] += stored[eid] > 1
        extra = sum(n for eid, n in stored.items() if eid not in sent_events)

        segments = poster.summary(sport, "replay")
        mt = metrics_text(sport)
        encode_s = metric_values(mt, "modalrec_segment_encode_seconds")
        seg_total = metric_values(mt, "modalrec_segments_total")
        queue_left = metric_values(mt, "modalrec_segment_queue")
        replay_s = marks["replay_end"] - w0
        regs = Counter()
        for st in poster.server_status(sport, [k for k, v in poster.sent.items() if v["tag"] == "replay"]).values():
            for m in st.get("registered", []):
                regs[m] += 1
        encoders = {}
        for lab, sec in encode_s.items():
            m = re.search(r'modality="([^"]+)"', lab)
            if m and sec > 0:
                encoders[m.group(1)] = {"worker_seconds_per_segment": sec, "segments_per_s_per_worker": 1 / sec,
                                        "registered_during_replay": regs.get(m.group(1), 0),
                                        "achieved_segments_per_s": regs.get(m.group(1), 0) / replay_s}
        rec_all = load.window(w0, marks["replay_end"])
        windows = {"replay": rec_all}
        if "refresh_start" in marks:
            windows["before_refresh"] = load.window(w0, marks["refresh_start"])
            windows["during_refresh"] = load.window(marks["refresh_start"], marks.get("refresh_done",
                                                                                      marks["replay_end"]))
            windows["after_refresh"] = load.window(marks.get("refresh_done", marks["replay_end"]), marks["replay_end"])
        if "swap_sent" in marks:
            swap_info["failed_during_swap"] = ledger.failed(marks["swap_sent"] - 1, marks["swap_done"] + 1)
        server_rec = {k: v - buckets0.get(k, 0.0)  # the replay's requests (from its start to the swap's end)
                      for k, v in metric_values(mt, "modalrec_request_duration_seconds_bucket").items()}
        stop(procs["serve"], signal.SIGTERM)

        # recall of the room gifted next: online (probes) vs offline (the same probes, the same bundles)
        log("scoring the probes offline")
        online = {"stale_bundle": recall([r for r in probe_rows if r["bundle"] == "stale"]),
                  "refreshed_bundle": recall([r for r in probe_rows if r["bundle"] == "refreshed"])}
        post = [p for p in probe_rows if p["bundle"] == "refreshed"]
        strip = ("status", "phase", "bundle", "rank", "candidates", "only_live")

        def bare(rows):
            return [{k: v for k, v in r.items() if k not in strip} for r in rows]
        off_stale = offline_probes(bundle, cfg, data, plan, bare(probe_rows))
        offline = {"stale_bundle": recall([o for o, p in zip(off_stale, probe_rows) if p["bundle"] == "stale"]),
                   "stale_bundle_on_the_refreshed_period": recall([o for o, p in zip(off_stale, probe_rows)
                                                                  if p["bundle"] == "refreshed"]),
                   "stale_bundle_whole_replay": recall(off_stale)}
        if post and (work / "bundle_refreshed" / "manifest.json").is_file():
            offline["refreshed_bundle"] = recall(offline_probes(work / "bundle_refreshed", cfg, data, plan,
                                                                bare(post)))
        result = {
            "command": "python benchmarks/live_replay.py " + " ".join(sys.argv[1:]),
            "created": datetime.now(UTC).isoformat(),
            "quiet": bool(args.quiet_machine),
            "quiet_note": "latencies measured while other jobs shared the 2 cores" if not args.quiet_machine else
            "run on a machine without other jobs",
            "config": args.config, "model": cfg.model.name, "dataset": data.spec.name,
            "protocol": {
                "trained_on": f"days 1..{d - args.days} (events before {t_replay0}), {args.epochs} epochs, the last "
                              "10% held out for early stopping",
                "replayed": f"days {d - args.days + 1}..{d} ({t_replay0} to {t_replay1})" + (
                    f", cut at {plan.t1} by --max-minutes" if plan.t1 < t_replay1 else ""),
                "speed_up": plan.speed, "sim_seconds_with_a_live_room": plan.active_s,
                "idle_stretches": "skipped (no room live)",
                "segments": "the world's 5-minute segments, each posted at its start with its raw frames (PNG), "
                            "speech (WAV) and comments",
                "segment_load_rooms_at_30s": len(plan.segments) / (plan.active_s / plan.speed) * WINDOW_S,
                "mean_live_rooms_sim": plan.mean_live,
                "recommend": f"{args.rate}/s open loop, {args.clients} keep-alive clients, live_only, one_per_room, "
                             "k 10, random users of the window",
                "state": args.state, "segment_workers": args.segment_workers, "nice_encoders": args.nice_encoders,
                "pin_service": None if cpus is None else {"service": sorted(cpus[0]), "others": sorted(cpus[1])},
                "refresh": "refresh_run (1 epoch) in a child process at nice 10 on the world's events before the "
                           "refresh point (the ones the replay had sent), since the replay's start",
                "probe": "before the first watch of the visit in which the user gifts: /recommend live_only "
                         "one_per_room k 10; rank of the gifted room (recall@K counts a gifted room without a "
                         "registered segment as a miss)",
                "offline": "the same bundle in-process (serve.scoring.Scorer) on the world's own log (every "
                           "replayed event before the probe) with offline encodings; candidates: rooms live at the "
                           "probe's time by the schedule, each with its latest segment started by then"},
            "replay_wall_s": replay_s, "timeline_lag_s": pct(lags), "rooms": len(plan.rooms), "events_sent": len(sent_events),
            "segments": segments,
            "segment_target_met": (segments["recommendable_s_server"].get("p99") or 1e9) <= TARGET_SEGMENT_P99_S,
            "encoders": encoders, "segments_total": seg_total, "segment_queue_at_end": queue_left,
            "recommend": windows,
            "recommend_target_met": (rec_all["latency_ms"].get("p99") or 1e9) <= TARGET_RECOMMEND_P99_MS,
            "recommend_server_buckets": {k: v for k, v in server_rec.items() if '"/recommend"' in k},
            "recommend_server_within_20ms": within(server_rec, "0.02"),
            "events": {"by_phase": dict(check), "stored_not_sent": extra, "dead_lettered": dead,
                       "kill": kill_info, "consumer_after_restart": consumer_stats},
            "swap": swap_info if not args.no_swap else None,
            "refresh": json.loads(refresh_result.read_text()) if refresh_result.is_file() and not args.no_swap
            else None,
            "failed_requests": ledger.failed(w0, marks["replay_end"]),
            "recall_room_gifted_next": {"online": online, "offline": offline,
                                        "note": "ranks among the live rooms; with at most a handful of rooms live in "
                                                "this world, recall@10 is near 1 by construction: read recall@1 and "
                                                "MRR against chance"},
            "probes": [{k: r.get(k) for k in ("user", "room", "time", "phase", "bundle", "rank", "candidates")}
                       for r in probe_rows],
            "probes_offline_stale": [{k: r.get(k) for k in ("user", "room", "time", "rank", "candidates")}
                                     for r in off_stale],
            "find_rooms": ramp,
            "marks_wall_s": {k: v - w0 for k, v in marks.items()},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average_at_end": os.getloadavg()},
        }
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
        r = windows["replay"]
        log(f"segments: recommendable p50 {segments['recommendable_s_server'].get('p50')} s, p99 "
            f"{segments['recommendable_s_server'].get('p99')} s (server); /recommend p50 "
            f"{r['latency_ms'].get('p50')} ms, p99 {r['latency_ms'].get('p99')} ms at {r['achieved_rate']} /s; "
            f"only live {r['fraction_only_live']}; events {dict(check)['all'] if 'all' in check else check}")
        log(f"wrote {args.out}")
    finally:
        if refresh_proc is not None and refresh_proc.is_alive():
            refresh_proc.kill()
        for name in ("consumer", "serve", "redis"):
            stop(procs.get(name))


if __name__ == "__main__":
    main()
