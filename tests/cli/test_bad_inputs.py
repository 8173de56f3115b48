"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case a file, config, command line or HTTP payload
a new user gets wrong, and the answer modalrec owes them: one `error:` line per problem naming the file, row,
column and what was expected (exit 2; 1 for `data validate`), or a 4xx whose JSON `message` names the field;
never a traceback, never a 500; with `--skip-bad-rows` exactly the listed rows rejected and every other row kept.

One tiny trained ctr run (a tagged DIN with token modalities and a context feature, 1 epoch), an untrained topk
run (popularity) and one bundle serve every case; all of them and everything the cases write live in tmp dirs.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modalrec.cli import app as cli_app
from modalrec.config import RunConfig
from modalrec.data.interaction import InteractionData
from modalrec.serve.app import create_app
from modalrec.serve.bundle import export_bundle
from modalrec.train.run import train_run
from tests.serve.helpers import make_live_data

CORPUS = Path(__file__).parents[1] / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())["cases"]
KEY = "k"
WRITE_ROUTES = ("/events", "/items", "/users")
# stderr lines besides the `error:` lines: the count after `data validate`'s problems, a skip's summary
TRAILERS = re.compile(r"^(\d+ problem\(s\) in |warning: \d+ bad row\(s\) left out)")


def _snapshot() -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(CORPUS)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(CORPUS.rglob("*"))}


CORPUS_BEFORE = _snapshot()


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The saved toy live-stream world (with a context column `level`), a 1-epoch ctr run on it, its bundle, and
    an untrained topk run (popularity)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    base = make_live_data(n_watches=300, n_gifts=60)
    level = pa.array(np.random.default_rng(0).choice(["lo", "hi"], base.events.num_rows))
    spec = base.spec.model_copy(update={"event_columns": [*base.spec.event_columns, "level"]})
    data = InteractionData(spec, base.events.append_column("level", level), base.items, base.users,
                           base.content).validate()
    data.save(root / "data")
    ctr = RunConfig.model_validate({
        "name": "bad-inputs-din", "data": {"source": str(root / "data")},
        "task": {"kind": "ctr", "sample_channels": ["watch"], "history_channels": ["watch", "gift"],
                 "history_channel_tags": True, "max_history": 8, "context_features": ["level"],
                 "split": {"method": "global_time", "valid": 0.1, "test": 0.2},
                 "token_modalities": ["frames_emb", "comments_emb"], "max_tokens": 3},
        "model": {"name": "din", "params": {"embed_dim": 8}},
        "train": {"epochs": 1, "batch_size": 64, "progress": False, "num_threads": 1}, "seeds": [0]})
    train_run(ctr, root / "run", data=data, report=False)
    export_bundle(root / "run", root / "bundle")
    topk = RunConfig.model_validate({
        "name": "bad-inputs-popularity", "data": {"source": str(root / "data")},
        "task": {"kind": "topk", "max_history": 8}, "model": {"name": "popularity"},
        "train": {"epochs": 0, "progress": False}, "seeds": [0]})
    train_run(topk, root / "topk", data=data, report=False)
    return {"root": root, "data": root / "data", "run": root / "run", "topk_run": root / "topk",
            "bundle": root / "bundle"}


@pytest.fixture(scope="module")
def client(world):
    app = create_app(world["bundle"], f"sqlite:///{world['root'] / 'state.sqlite'}", api_key=KEY)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# ------------------------------------------------------------------------------------------------ the cases
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case, world, tmp_path, request):
    if case.get("xfail"):
        request.applymarker(pytest.mark.xfail(reason=" ".join(case["xfail"].split()), strict=True))
    if case["kind"] == "http":
        _http_case(case, request.getfixturevalue("client"), world)
    else:
        _cli_case(case, world, tmp_path)


def test_the_corpus_is_left_as_it_was():
    """Nothing a case ran wrote into tests/bad_inputs (every output goes to a tmp dir)."""
    assert _snapshot() == CORPUS_BEFORE


def test_manifest_is_well_formed():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    kinds = {"import", "validate", "config", "cli", "predict", "http"}
    for c in CASES:
        assert c["kind"] in kinds, c
        assert ("status" if c["kind"] == "http" else "exit") in c, c
        bad = c.get("status", 400) >= 400 and c.get("exit", 2) != 0
        assert bool(c.get("expect")) == bad or c.get("stdout"), c  # an error case names what it must say
        for key in ("spec", "path", "config", "events"):
            if key in c and c["kind"] != "http" and not re.search(r"does_not_exist|nothing_here", c[key]):
                assert (CORPUS / c[key]).exists(), (c["id"], c[key])


# ------------------------------------------------------------------------------------------------ command lines
def _args(case: dict, world: dict, tmp: Path) -> list[str]:
    config = None
    if "config" in case:  # a copy with the test's paths in it, under the same file name
        src = CORPUS / case["config"]
        config = tmp / src.name
        config.write_text(src.read_text().replace("@DATA@", str(world["data"])).replace("@BAD@", str(CORPUS)))
    kind = case["kind"]
    extra = [str(a) for a in case.get("args", [])]
    if kind == "import":
        return ["data", "import", str(CORPUS / case["spec"]), "--out", str(tmp / "out"),
                *(["--skip-bad-rows"] if case.get("skip_bad_rows") else [])]
    if kind == "validate":
        return ["data", "validate", str(CORPUS / case["path"])]
    if kind == "config":
        return ["train", str(config), "--out", str(tmp / "run"), *extra]
    if kind == "predict":
        run = world["topk_run" if case.get("run") == "topk" else "run"]
        return ["predict", str(run), "--out", str(tmp / "p.csv"), "--events", str(CORPUS / case["events"]), *extra]
    names = {k: str(v) for k, v in world.items()} | {"tmp": str(tmp), "bad": str(CORPUS), "config": str(config)}
    return [a.format(**names) for a in extra]


def _cli_case(case: dict, world: dict, tmp: Path) -> None:
    args = _args(case, world, tmp)
    res = CliRunner().invoke(cli_app, args)
    shown = f"modalrec {' '.join(args)}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"{shown}\nraised {res.exception!r}") from res.exception
    assert "Traceback" not in res.output, shown
    assert res.exit_code == case["exit"], shown
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if case["exit"] != 0:
        assert all(line in errors or TRAILERS.match(line) for line in lines), shown  # nothing but the problems
        assert len(errors) == case.get("problems", 1), shown
        want = case["expect"]
        assert any(all(w in e for w in want) for e in errors), f"no error line holds all of {want}\n{shown}"
        if case["kind"] == "import":
            assert not (tmp / "out").exists(), "a failed import wrote its output"
    else:
        assert not errors, shown
        if "stdout" in case:
            assert case["stdout"] in res.stdout, shown
    if "rejected" in case:
        _check_rejected(case, tmp / "out", res.stderr)


# ------------------------------------------------------------------------------------------------ skip-bad-rows
def _check_rejected(case: dict, out: Path, stderr: str) -> None:
    """rejected.csv lists exactly the case's rows, and every other row of every input file was imported, in order."""
    want = {name: sorted(rows) for name, rows in case["rejected"].items()}
    got: dict[str, list[int]] = {}
    for r in csv.DictReader(io.StringIO((out / "rejected.csv").read_text())):
        got.setdefault(Path(r["file"]).name, []).append(int(r["row"]))
    assert {k: sorted(v) for k, v in got.items()} == want
    assert f"warning: {sum(len(v) for v in want.values())} bad row(s) left out" in stderr
    spec_path = CORPUS / case["spec"]
    spec = yaml.safe_load(spec_path.read_text())

    def kept(src: dict, key: str) -> list[str]:
        rows = _rows(spec_path.parent / src["file"], src.get("sep"), src.get("encoding", "utf-8"))
        drop = set(want.get(Path(src["file"]).name, []))
        return [str(r.get(src[key], "")).strip() for i, r in enumerate(rows, 1) if i not in drop]

    events = pq.read_table(out / "events.parquet")
    for key, column in (("user", "user_id"), ("item", "item_id")):
        assert events[column].to_pylist() == [v for src in spec["events"] for v in kept(src, key)], column
    for name, key in (("items", "item_id"), ("users", "user_id")):
        if spec.get(name):
            assert pq.read_table(out / f"{name}.parquet")[key].to_pylist() == kept(spec[name], "id"), name
    for c in spec.get("content", []):
        assert pq.read_table(out / "content" / f"{c['name']}.parquet")["entity_id"].to_pylist() == kept(c, "id")


def _rows(path: Path, sep: str | None, encoding: str) -> list[dict]:
    """The data rows of an input file as the importer numbers them (a blank line is a row)."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.suffix == ".gz" else open
    sep = sep or ("\t" if ".tsv" in path.suffixes else ",")
    enc = "utf-8-sig" if encoding.replace("_", "-").lower() == "utf-8" else encoding
    with opener(path, "rt", encoding=enc, errors="surrogateescape", newline="") as f:
        records = list(csv.reader(f, delimiter=sep))
    return [dict(zip(records[0], r)) for r in records[1:]]


# ------------------------------------------------------------------------------------------------ HTTP
def _expand(x):
    """The manifest's JSON helpers: {$repeat: N, of: X}, {$floats: N}, {$text: N}."""
    if isinstance(x, dict):
        if "$repeat" in x:
            return [_expand(x["of"]) for _ in range(x["$repeat"])]
        if "$floats" in x:
            return [0.0] * x["$floats"]
        if "$text" in x:
            return "x" * x["$text"]
        return {k: _expand(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_expand(v) for v in x]
    return x


def _send(client, req: dict):
    auth = req.get("auth", "key")
    headers = {"key": {"X-API-Key": KEY}, "none": {}, "wrong": {"X-API-Key": "not-the-key"},
               "bearer_wrong": {"Authorization": "Bearer not-the-key"}}[auth]
    kw: dict = {"headers": headers}
    if "json" in req:
        kw["content"] = json.dumps(_expand(req["json"]))
        headers["content-type"] = "application/json"
    elif "content" in req:
        kw["content"] = req["content"]
        headers["content-type"] = "application/json"
    return client.request(req.get("method", "POST"), req["path"], **kw)


def _http_case(case: dict, client, world: dict) -> None:
    if "app" in case:  # its own service (e.g. a rate limit)
        app = create_app(world["bundle"], f"sqlite:///{world['root'] / (case['id'] + '.sqlite')}", api_key=KEY,
                         **case["app"])
        with TestClient(app, raise_server_exceptions=False) as own:
            return _check_http(case, [_send(own, case) for _ in range(case.get("send", 1))][-1], client)
    responses = [_send(client, case) for _ in range(case.get("send", 1))]
    return _check_http(case, responses[-1], client)


def _check_http(case: dict, r, client) -> None:
    shown = f"{case.get('method', 'POST')} {case['path']} -> {r.status_code} {r.text[:2000]}"
    assert r.status_code < 500, shown
    assert "Traceback" not in r.text, shown
    assert r.status_code == case["status"], shown
    body = r.json()
    message = body.get("message") or body.get("detail")
    assert isinstance(message, str) and message, shown
    if r.status_code == 422:
        detail = body["detail"]
        assert all(d.get("field") and d.get("msg") for d in detail), shown
        assert len(detail) == case.get("problems", 1), shown
    for w in case["expect"]:
        assert w in message, f"{w!r} not in the message\n{shown}"
    for follow in case.get("then", []):
        f = _send(client, follow)
        assert f.status_code == follow["status"], f"then {follow}: {f.status_code} {f.text}"
