"""The `modalrec` command as a user runs it: the README's import example, errors, help."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my-shop"
CLI = [sys.executable, "-m", "modalrec.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "report", "data", "demo"):
        assert cmd in r.stdout


def test_readme_import_example_then_validate(tmp_path):
    out = tmp_path / "my-shop"
    r = run("data", "import", str(EXAMPLE / "my-shop.yaml"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "imported 10 events, 3 users, 4 items" in r.stdout
    r = run("data", "validate", str(out))
    assert r.returncode == 0 and r.stdout.startswith("ok")


def test_malformed_file_one_line_per_problem_and_nothing_silently_lost(tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(EXAMPLE, bad)
    clicks = bad / "clicks.csv"
    lines = clicks.read_text().splitlines()
    lines[3] = lines[3].replace("2024-05-02T09:00:00", "yesterday")  # data row 3
    lines[7] = lines[7].replace("u3,D,", "u3,ZZ,")  # data row 7: unknown item
    clicks.write_text("\n".join(lines) + "\n")
    r = run("data", "import", str(bad / "my-shop.yaml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errs = r.stderr.strip().splitlines()
    assert any("clicks.csv, row 3, column 'ts'" in e and "'yesterday'" in e for e in errs)
    assert any("clicks.csv, row 7, column 'sku'" in e and "'ZZ'" in e for e in errs)
    assert not (tmp_path / "o").exists()
    # the explicit opt-in keeps every good row and lists the bad ones
    r = run("data", "import", str(bad / "my-shop.yaml"), "--out", str(tmp_path / "o"), "--skip-bad-rows")
    assert r.returncode == 0 and "2 bad row(s)" in r.stderr
    assert "imported 8 events" in r.stdout
    assert len((tmp_path / "o" / "rejected.csv").read_text().strip().splitlines()) == 3
    # a missing column is named with the file
    clicks.write_text(clicks.read_text().replace("uid,sku,ts,", "uid,sku,tstamp,", 1))
    r = run("data", "import", str(bad / "my-shop.yaml"), "--out", str(tmp_path / "p"))
    assert r.returncode == 2 and "clicks.csv, column 'ts'" in r.stderr and "Traceback" not in r.stderr


def test_validate_reports_broken_saved_dataset(tmp_path):
    out = tmp_path / "ds"
    assert run("data", "import", str(EXAMPLE / "my-shop.yaml"), "--out", str(out)).returncode == 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    ev = pq.read_table(out / "events.parquet")
    ids = ev["item_id"].to_pylist()
    ids[4] = "NOPE"
    pq.write_table(ev.set_column(ev.column_names.index("item_id"), "item_id", pa.array(ids)), out / "events.parquet")
    r = run("data", "validate", str(out))
    assert r.returncode == 1
    assert "events.parquet, row 5, column 'item_id'" in r.stderr and "NOPE" in r.stderr
