"""GET /docs renders the Swagger UI with the API's operations in a real browser without network access: its
JavaScript and CSS come from the service itself (src/modalrec/serve/docs.py), not from a CDN.

The service runs as a user starts it (`modalrec serve BUNDLE --port P --api-key k`) and headless Chromium opens
/docs with every host name but 127.0.0.1 made unresolvable, so a page that needed anything from outside would stay
blank. Skipped where Chromium is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
httpx = pytest.importorskip("httpx")

from tests.serve.helpers import free_port

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p and os.path.exists(p)), None)
OPERATIONS = ("/events", "/items", "/recommend", "/score", "/healthz")


@pytest.fixture(scope="module")
def served(din_served):
    """The toy DIN run and its bundle (din_served, tests/serve/conftest.py)."""
    return din_served


@pytest.fixture
def service(served, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "modalrec.cli", "serve", str(served["bundle"]), "--port", str(port),
                             "--api-key", "k", "--state", f"sqlite:///{tmp_path / 'state.sqlite'}"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("service did not start in 90 s")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium) to render /docs")
def test_docs_render_offline_in_a_browser(service, tmp_path):
    page = httpx.get(f"{service}/docs").text
    assert "//" not in "".join(line for line in page.splitlines() if "src=" in line or "href=" in line), page
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom", f"{service}/docs"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish rendering /docs in 120 s")
    dom = run.stdout
    assert run.returncode == 0 and "<html" in dom, run.stderr[-2000:]
    assert 'class="swagger-ui"' in dom, dom[:2000]  # the bundle's JavaScript ran: it builds this node
    assert "Unable to render this definition" not in dom, dom[-3000:]  # Swagger UI 5 reads OpenAPI 3.1
    assert "opblock" in dom, dom[-3000:]  # the operations, rendered from /openapi.json
    for path in OPERATIONS:
        assert path in dom, path
