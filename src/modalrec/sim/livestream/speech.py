"""Rendering of the speech: the streamer's sentences spoken by espeak-ng as 16 kHz mono WAV clips."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .params import SPEECH_RATE, VOICE


def _synthesise_speech(texts: list[str], folder: Path, progress: bool) -> list[str]:
    """Speak each text once with espeak-ng (-v en-us+f2 -s 160 -g 10), resampled to 16 kHz mono: absolute WAV paths."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    todo = []
    for text in texts:
        name = hashlib.sha1(f"espeak-ng|{VOICE}|160|g10|{SPEECH_RATE}|{text}".encode()).hexdigest()[:20]
        path = folder / f"{name}.wav"
        paths.append(str(path.resolve()))
        if not path.exists():
            todo.append((text, path))
    if todo:
        # espeak-ng and sox are separate processes: two at a time keep both cores busy
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(tqdm(pool.map(lambda tp: speak(*tp), todo), total=len(todo), desc="speech", unit="clip",
                      disable=not progress, mininterval=1.0))
    return paths


def speak(text: str, path: str | os.PathLike) -> Path:
    """Write `text` spoken by espeak-ng as a 16 kHz mono 16-bit WAV at `path` (atomically)."""
    path = Path(path)
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not on PATH (Debian package espeak-ng)")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".speak-") as td:
        raw, out = Path(td) / "raw.wav", Path(td) / "out.wav"
        res = subprocess.run([exe, "-v", VOICE, "-s", "160", "-g", "10", "-w", str(raw), "--", text],
                             capture_output=True,
                             check=False)
        if res.returncode or not raw.exists():
            raise RuntimeError(f"espeak-ng failed on {text!r}: {res.stderr.decode(errors='replace').strip()}")
        sox = shutil.which("sox")
        if sox is not None:
            # -R: sox's dither is seeded the same every run, so a clip is the same bytes in every world and
            # every cache (the speech encoders' caches are keyed by the file's bytes)
            subprocess.run([sox, "-R", str(raw), "-r", str(SPEECH_RATE), "-c", "1", "-b", "16", str(out)],
                           capture_output=True, check=True)
        else:
            _resample_wav(raw, out)
        os.replace(out, path)
    return path


def _resample_wav(src: Path, dst: Path) -> None:
    from math import gcd

    from scipy.signal import resample_poly

    with wave.open(str(src), "rb") as f:
        rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
        if width != 2:
            raise RuntimeError(f"{src}: expected 16-bit PCM from espeak-ng, got {8 * width}-bit")
        x = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64)
    x = x.reshape(-1, channels).mean(axis=1)
    g = gcd(SPEECH_RATE, rate)
    y = np.clip(np.round(resample_poly(x, SPEECH_RATE // g, rate // g)), -32768, 32767).astype("<i2")
    with wave.open(str(dst), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SPEECH_RATE)
        f.writeframes(y.tobytes())
