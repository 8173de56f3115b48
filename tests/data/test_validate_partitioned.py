"""`modalrec data validate` on a partitioned dataset (events/part-*.parquet, written by `data import
--partitions N`): every partition checked with the catalogue, problems named by their partition file and row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.data.importer import validate_path
from modalrec.data.partitioned import PartitionedData, write_partitioned

from ..helpers import make_data


def test_a_good_partitioned_folder_validates(tmp_path):
    data = make_data(n_users=30, n_items=20, n_events=600)
    write_partitioned(data, tmp_path / "parts", 3)
    assert validate_path(tmp_path / "parts") == []
    r = CliRunner().invoke(app, ["data", "validate", str(tmp_path / "parts")])
    assert r.exit_code == 0, r.output
    assert "ok:" in r.output


def test_problems_name_the_partition_file_and_row(tmp_path):
    data = make_data(n_users=30, n_items=20, n_events=600)
    parts = write_partitioned(data, tmp_path / "parts", 3)
    bad = parts.parts[1]
    t = pq.read_table(bad)
    channels = t["channel"].to_pylist()
    channels[4] = "purchase"  # not a declared channel
    pq.write_table(t.set_column(t.column_names.index("channel"), "channel", pa.array(channels)), bad)
    problems = PartitionedData.load(tmp_path / "parts").problems(str(tmp_path / "parts"))
    assert len(problems) == 1
    p = problems[0]
    assert p.file.endswith(f"events/{bad.name}") and p.row == 5 and p.column == "channel"
    assert "purchase" in str(p.found)
    r = CliRunner().invoke(app, ["data", "validate", str(tmp_path / "parts")])
    assert r.exit_code == 1
    assert bad.name in r.output and "row 5" in r.output


def test_a_task_that_cannot_read_partitions_says_so(tmp_path):
    data = make_data(n_users=30, n_items=20, n_events=600)
    write_partitioned(data, tmp_path / "parts", 3)
    cfg = tmp_path / "topk.yaml"
    cfg.write_text(f"name: t\ndata: {{source: {tmp_path / 'parts'}}}\ntask: {{kind: topk}}\n"
                   "model: {name: popularity}\ntrain: {epochs: 1, progress: false}\n")
    r = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output  # the CLI's status for an input it cannot use (docs/cli.md)
    assert "only the ctr task reads partitions" in r.output and "Traceback" not in r.output
