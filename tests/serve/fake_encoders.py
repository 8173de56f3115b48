"""A fake encoder for the segment queue tests, run in the encoder pool's worker processes (`EncoderPool(encode=...)`).

Each raw value is a JSON job description: {"id", "dir", "block"}. The worker writes `dir/<id>-<modality>.ran` when it
starts the job (the proof that it ran) and, with "block", waits for `dir/release` before it returns; it returns no
vectors, so the segment registers with its side features."""

from __future__ import annotations

import json
import time
from pathlib import Path


def encode(raw: dict) -> tuple[dict, dict, dict]:
    spent = {}
    for name, values in raw.items():
        t0 = time.perf_counter()
        for value in values:
            job = json.loads(value)
            folder = Path(job["dir"])
            (folder / f"{job['id']}-{name}.ran").touch()
            deadline = time.monotonic() + 60
            while job.get("block") and not (folder / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        spent[name] = time.perf_counter() - t0
    return {}, {}, spent


def job(segment_id: str, folder: Path, block: bool = False) -> bytes:
    return json.dumps({"id": segment_id, "dir": str(folder), "block": block}).encode()


def ran(folder: Path) -> set[str]:
    """`<id>-<modality>` of every job a worker started."""
    return {p.name[: -len(".ran")] for p in folder.glob("*.ran")}
