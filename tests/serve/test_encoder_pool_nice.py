"""The segment encoder processes' priority (`serve --segment-nice N`: `EncoderPool(nice=N)`, os.nice in each worker
at start) and the reason logged for encodings cancelled when the service stops. A plan without raw modalities: the
workers load no network, so the pool starts in about a second."""

from __future__ import annotations

import logging
import os

import pytest
from typer.testing import CliRunner

from modalrec.serve.content import ContentEncoder
from modalrec.serve.encoder_pool import EncoderPool


def _encoder() -> ContentEncoder:
    return ContentEncoder({"content": {"encode": {}, "modalities": []}})


def test_workers_run_nicer_by_segment_nice():
    base = os.nice(0)
    with EncoderPool(_encoder(), workers=2, warm=False, nice=7) as pool:
        assert set(pool.niceness()) == {min(19, base + 7)}
    with EncoderPool(_encoder(), workers=1, warm=False) as pool:
        assert pool.niceness() == [base]  # default: the service's priority
    with pytest.raises(ValueError, match="nice must be >= 0"):
        EncoderPool(_encoder(), workers=1, warm=False, nice=-1)


def test_serve_passes_segment_nice_down(monkeypatch, tmp_path):
    from modalrec import cli
    from modalrec.serve import app as serve_app

    got = {}
    monkeypatch.setattr(serve_app, "serve", lambda bundle, **kw: got.update(kw))
    r = CliRunner().invoke(cli.app, ["serve", str(tmp_path), "--segment-nice", "10", "--api-key", "k"])
    assert r.exit_code == 0, r.output
    assert got["segment_nice"] == 10
    r = CliRunner().invoke(cli.app, ["serve", str(tmp_path), "--api-key", "k"])
    assert r.exit_code == 0 and got["segment_nice"] == 0


def test_encodings_cancelled_at_shutdown_say_why(caplog):
    errors: dict[str, str] = {}
    pool = EncoderPool(_encoder(), workers=1, warm=False)
    # queued before the worker is up: all but the pool's call queue (workers + 1) are still pending at the close
    for k in range(8):
        pool.submit(f"seg-{k}", {}, lambda *a: None, lambda sid, e: errors.__setitem__(sid, str(e)))
    with caplog.at_level(logging.WARNING, logger="modalrec.serve"):
        pool.close(wait=True, cancel=True)
    cancelled = [m for m in caplog.messages if "not encoded" in m]
    assert cancelled and all(m.endswith("not encoded: cancelled: the service is stopping") for m in cancelled)
    assert len(errors) == len(cancelled) >= 6
    assert set(errors.values()) == {"cancelled: the service is stopping"}
    assert {pool.state(s)["error"] for s in errors} == {"cancelled: the service is stopping"}
