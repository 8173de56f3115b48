"""Streaming import (issue 22): every file read in bounded chunks, the events written as they come (one
events.parquet, or events/part-*.parquet by user with `partitions`), the error contract unchanged: the chunks
change nothing in the data, the problems, their rows or their order, and memory does not grow with the events."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.data.errors import DataError
from modalrec.data.import_files import FileReader
from modalrec.data.import_problems import Report
from modalrec.data.import_spec import load_import_spec
from modalrec.data.importer import import_dataset, import_to_directory
from modalrec.data.partitioned import PartitionedData, write_partitioned
from tests.data.helpers import CLICKS, ITEMS, kuailive_like_csv, rows, write_fixture
from tests.helpers import make_data

SPEC = """\
name: stream
events:
  - {file: clicks.csv, user: uid, item: sku, time: ts, label: clicked, keep: [note]}
items: {file: items.csv, id: sku, categorical: [brand]}
"""
ITEMS_CSV = "sku,brand\n" + "".join(f"i{i},b{i % 3}\n" for i in range(10))
BLOCK = 64  # bytes: a chunk holds a row or two


def clicks(n: int = 40) -> str:
    """n rows of about 30 bytes; row 9 has a quoted newline in its note, row 17 a field too many."""
    rows = []
    for r in range(1, n + 1):
        note = '"two\nlines"' if r == 9 else f"n{r}"
        extra = ",EXTRA" if r == 17 else ""
        rows.append(f"u{r % 7},i{r % 10},{1700000000 + r},{r % 2},{note}{extra}\n")
    return "uid,sku,ts,clicked,note\n" + "".join(rows)


def write(root: Path, text: str, spec: str = SPEC) -> Path:
    (root / "clicks.csv").write_text(text)
    (root / "items.csv").write_text(ITEMS_CSV)
    (root / "spec.yaml").write_text(spec)
    return root / "spec.yaml"


def problems(spec: Path, **kw) -> list:
    with pytest.raises(DataError) as err:
        import_dataset(spec, **kw)
    return err.value.problems


def chunk_offsets(spec_path: Path, block: int) -> list[int]:
    spec = load_import_spec(spec_path)
    src = spec.events[0]
    files = FileReader(spec_path.parent, Report(), block)
    header = files.header(src)
    return [t.offset for t in files.chunks(src, files.columns(src, [src.user, src.time], header), header)]


# ------------------------------------------------------------------------------------------------ row numbers
def test_rows_are_numbered_across_chunk_boundaries(tmp_path):
    text = clicks()
    spec = write(tmp_path, text)
    offsets = chunk_offsets(spec, BLOCK)
    assert len(offsets) >= 10 and offsets == sorted(offsets) and offsets[0] == 0
    # a bad time in the third chunk (same length: the chunks stay where they were)
    row = offsets[2] + 1 + (offsets[3] - offsets[2]) // 2  # 1-based
    assert offsets[2] < row <= offsets[3]
    ts = str(1700000000 + row)
    bad = text.replace(f",{ts},", f",{ts[:-2]}x{ts[-1]},")
    assert len(bad) == len(text)
    write(tmp_path, bad)
    assert chunk_offsets(spec, BLOCK) == offsets
    got = [(p.row, p.column, p.found) for p in problems(spec, block_size=BLOCK)]
    want = sorted([(17, None, "6"), (row, "ts", repr(f"{ts[:-2]}x{ts[-1]}"))], key=lambda x: x[0])
    assert got == want  # chunk by chunk: in row order
    one_chunk = [(p.row, p.column, p.found) for p in problems(spec)]
    assert one_chunk == [want[1], want[0]]  # one chunk: the field counts first, then the cells (as before)

    data, rejected = import_dataset(spec, skip_bad_rows=True, block_size=BLOCK)
    assert [r.row for r in rejected] == sorted([17, row])
    kept = [r for r in range(1, 41) if r not in (17, row)]
    assert data.events["time"].to_pylist() == [1700000000 + r for r in kept]  # the good rows around it, in order
    assert data.events["note"].to_pylist()[kept.index(9)] == "two\nlines"
    ref, ref_rejected = import_dataset(spec, skip_bad_rows=True)
    assert data.fingerprint() == ref.fingerprint() and rejected == ref_rejected


def test_an_unclosed_quote_is_found_in_the_last_chunk(tmp_path):
    text = clicks(20).replace(",n18\n", ',"n18\n')
    spec = write(tmp_path, text)
    for block in (BLOCK * 8, 1 << 20):
        (p,) = problems(spec, block_size=block)
        assert (p.row, p.column) == (18, None) and "never closes" in p.found


# ------------------------------------------------------------------------------------------------ equality
@pytest.mark.parametrize("block", [BLOCK * 2, 300])
def test_the_fixtures_import_the_same_in_any_chunk_size(tmp_path, block):
    spec = write_fixture(tmp_path)
    ref, data = import_dataset(spec), import_dataset(spec, block_size=block)
    assert data.spec == ref.spec and data.fingerprint() == ref.fingerprint()
    bad = write_fixture(tmp_path, clicks=CLICKS.replace("1700000100", "soon").replace("u2,c,", "u2,nope,"),
                        items=ITEMS.replace("c,,jazz,,,", "c,,jazz,heavy,,"))
    assert [str(p) for p in problems(bad, block_size=block)] == [str(p) for p in problems(bad)]
    (a, ra), (b, rb) = import_dataset(bad, skip_bad_rows=True), import_dataset(bad, skip_bad_rows=True,
                                                                              block_size=block)
    assert a.fingerprint() == b.fingerprint() and ra == rb


CORPUS = Path(__file__).parents[1] / "bad_inputs" / "import"


@pytest.mark.parametrize("name", ["extra_field", "missing_field", "gz_extra_field", "blank_line", "non_utf8",
                                  "latin1_declared", "bom", "crlf", "item_row_rejected", "time_negative",
                                  "parquet_bad_time", "parquet_null_user", "vector_wrong_length",
                                  "content_duplicate_id", "duplicate_item_ids", "bad_quoting"])
def test_bad_inputs_read_in_small_chunks_give_the_same_answer(tmp_path, name):
    def outcome(skip: bool, block: int | None):
        out = tmp_path / f"out-{skip}-{block}"
        kw = {} if block is None else {"block_size": block}
        try:
            got = import_to_directory(CORPUS / f"{name}.yaml", out, skip_bad_rows=skip, **kw)
        except DataError as e:
            assert not out.exists()
            return [str(p) for p in e.problems]
        files = {str(p.relative_to(out)): (rows(pq.read_table(p)) if p.suffix == ".parquet" else p.read_text())
                 for p in sorted(out.rglob("*.*"))}
        return got.summary, got.rejected, files

    for skip in (False, True):
        assert outcome(skip, 256) == outcome(skip, None)


# ------------------------------------------------------------------------------------------------ partitions
def _events_csv(root: Path, data) -> Path:
    ev = data.events.select(["user_id", "item_id", "time", "channel", "label"])
    pacsv.write_csv(ev, root / "events.csv")
    pacsv.write_csv(data.items.select(["item_id", "brand"]), root / "items.csv")
    (root / "spec.yaml").write_text(textwrap.dedent("""\
        name: toy
        events:
          - {file: events.csv, user: user_id, item: item_id, time: time, channel_column: channel, label: label}
        items: {file: items.csv, id: item_id, categorical: [brand]}
        """))
    return root / "spec.yaml"


def test_partitions_hold_exactly_the_rows_write_partitioned_gives(tmp_path):
    spec = _events_csv(tmp_path, make_data(n_users=50, n_items=60, n_events=4000))
    ref = write_partitioned(import_dataset(spec), tmp_path / "ref", 4)
    got = import_to_directory(spec, tmp_path / "parts", partitions=4, block_size=4096)  # about 40 chunks
    assert got.partitions == 4 and not (tmp_path / "parts" / "events.parquet").exists()
    parts = PartitionedData.load(tmp_path / "parts")
    assert parts.n_partitions == 4 and parts.num_events == 4000
    for mine, theirs in zip(parts.parts, ref.parts):
        a, b = pq.read_table(mine), pq.read_table(theirs)
        assert a.schema.remove_metadata() == b.schema.remove_metadata()
        assert a.to_pylist() == b.to_pylist()  # the same rows, in the same order
    assert parts.spec == ref.spec and parts.items.equals(ref.items)
    assert got.summary == {k: v for k, v in parts.summary().items()}

    from modalrec.datasets import load_dataset

    assert isinstance(load_dataset(str(tmp_path / "parts")), PartitionedData)


def test_the_partitions_key_and_option(tmp_path):
    spec = _events_csv(tmp_path, make_data(n_users=20, n_events=500))
    spec.write_text(spec.read_text() + "partitions: 3\n")
    runner = CliRunner()
    r = runner.invoke(app, ["data", "import", str(spec), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "imported 500 events" in r.stdout and "(3 partitions)" in r.stdout
    assert len(list((tmp_path / "a" / "events").glob("part-*.parquet"))) == 3
    r = runner.invoke(app, ["data", "import", str(spec), "--out", str(tmp_path / "a"), "--partitions", "2"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "a" / "events").iterdir()) == ["part-00000.parquet",
                                                                            "part-00001.parquet"]
    r = runner.invoke(app, ["data", "import", str(spec), "--out", str(tmp_path / "a"), "--partitions", "0"])
    assert r.exit_code == 2 and "--partitions" in r.stderr
    spec.write_text(spec.read_text().replace("partitions: 3", "partitions: 0"))
    r = runner.invoke(app, ["data", "import", str(spec), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "partitions" in r.stderr and not (tmp_path / "b").exists()


def test_the_default_layout_is_one_events_file(tmp_path):
    spec = _events_csv(tmp_path, make_data(n_users=20, n_events=500))
    r = CliRunner().invoke(app, ["data", "import", str(spec), "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "events.parquet").exists() and not (tmp_path / "d" / "events").exists()
    from modalrec.data.interaction import InteractionData

    assert InteractionData.load(tmp_path / "d").fingerprint() == import_dataset(spec).fingerprint()


def test_a_fraction_late_in_the_file_makes_every_time_float(tmp_path):
    text = clicks(30).replace(",1700000025,", ",1700000025.5,")
    spec = write(tmp_path, text)
    ref = import_dataset(spec, skip_bad_rows=True)[0]
    assert ref.events.schema.field("time").type == pa.float64()
    for n in (None, 3):
        out = tmp_path / f"out{n}"
        import_to_directory(spec, out, skip_bad_rows=True, partitions=n, block_size=BLOCK)
        files = [out / "events.parquet"] if n is None else sorted((out / "events").glob("part-*.parquet"))
        tables = [pq.read_table(f) for f in files]
        assert all(t.schema.field("time").type == pa.float64() for t in tables)
        times = sorted(v for t in tables for v in t["time"].to_pylist())
        assert times == sorted(ref.events["time"].to_pylist())
        assert not list(out.rglob("*.int.parquet"))


def test_a_failed_import_leaves_the_folder_as_it_was(tmp_path):
    spec = write(tmp_path, clicks(20).replace(",n17,EXTRA", ",n17"))
    out = tmp_path / "out"
    import_to_directory(spec, out, partitions=2)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write(tmp_path, clicks(20))  # row 17 has a field too many
    with pytest.raises(DataError, match="row 17"):
        import_to_directory(spec, out, block_size=BLOCK)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if "importing" in p.name] == []
    got = import_to_directory(spec, out, skip_bad_rows=True)  # the default layout replaces the partitions
    assert got.rejected == 1 and (out / "rejected.csv").exists()
    assert (out / "events.parquet").exists() and not (out / "events").exists()
    write(tmp_path, clicks(20).replace(",n17,EXTRA", ",n17"))
    import_to_directory(spec, out)
    assert not (out / "rejected.csv").exists()  # the rejected rows of an earlier import are gone with it
    with pytest.raises(DataError):
        import_to_directory(tmp_path / "nope.yaml", tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()


def test_an_imported_partitioned_folder_trains(tmp_path):
    from modalrec.config import RunConfig
    from modalrec.train.run import train_run

    spec = _events_csv(tmp_path, make_data(n_users=40, n_items=50, n_events=3000))
    import_to_directory(spec, tmp_path / "parts", partitions=3, block_size=8192)
    cfg = RunConfig.model_validate({
        "name": "stream-din", "data": {"source": str(tmp_path / "parts")},
        "task": {"kind": "ctr", "sample_channels": ["click"], "max_history": 8},
        "model": {"name": "din", "params": {"embed_dim": 8}},
        "train": {"epochs": 1, "batch_size": 128, "progress": False, "num_threads": 1}, "seeds": [0]})
    m = train_run(cfg, tmp_path / "run", report=False)
    assert 0.0 <= m["test"]["auc"]["mean"] <= 1.0


# ------------------------------------------------------------------------------------------------ memory
# the child's own peak: ru_maxrss keeps the high-water mark of the process it was forked from (pytest, with
# everything it imported) across exec, so it is read from /proc where there is one (VmHWM is the exec'd image's)
_MEASURE = """\
import resource, sys
from modalrec.data.importer import import_to_directory
got = import_to_directory(sys.argv[1], sys.argv[2], partitions=4, block_size=1 << 20)
try:
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) // 1024
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(got.summary["events"], peak)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_events(tmp_path):
    """A 1.2M-row import peaks (ru_maxrss) within 25% + 50 MB of a 300k-row one: both are hundreds of 1 MiB
    chunks, and only a chunk, the writers' buffers and the distinct ids are held."""
    peak = {}
    for n in (300_000, 1_200_000):
        spec = kuailive_like_csv(tmp_path / str(n), n, rooms=200_000, seed=n)
        r = subprocess.run([sys.executable, "-c", _MEASURE, str(spec), str(spec.parent / "out")],
                           capture_output=True, text=True, check=True)
        events, peak[n] = map(int, r.stdout.split())
        assert events == n
    assert peak[1_200_000] <= 1.25 * peak[300_000] + 50, peak
