"""The import rules a new user tripped over: an events file without rows, rows with more or fewer fields than
the header, implausible event times, the summary's item count, a wrong separator and a wrong encoding.
Each problem names the file, the 1-based data row (header not counted) and the column."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modalrec.data.errors import DataError
from modalrec.data.importer import import_dataset, load_import_spec, write_rejected

SPEC = """\
name: rules
events:
  - file: clicks.csv
    user: uid
    item: sku
    time: ts
    channel: click
    keep: [device]
items: {file: items.csv, id: sku, categorical: [brand]}
"""

CLICKS = """\
uid,sku,ts,device
u1,a,1700000000,web
u1,b,1700000100,app
u2,a,1700000200,web
u3,b,1700000300,web
"""

ITEMS = "sku,brand\na,acme\nb,bolt\nc,acme\nd,\n"  # c and d have no events


def write(root: Path, spec: str = SPEC, clicks: str | bytes = CLICKS, items: str = ITEMS,
          clicks_name: str = "clicks.csv") -> Path:
    (root / "spec.yaml").write_text(spec.replace("clicks.csv", clicks_name))
    path = root / clicks_name
    path.write_bytes(clicks if isinstance(clicks, bytes) else clicks.encode())
    (root / "items.csv").write_text(items)
    return root / "spec.yaml"


def problems_of(spec_path: Path):
    with pytest.raises(DataError) as err:
        import_dataset(spec_path)
    return err.value.problems


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modalrec.cli", *args], capture_output=True, text=True)


# ------------------------------------------------------------------------------------- a. no event row
def test_header_only_events_file_is_an_error_naming_the_file(tmp_path):
    spec = write(tmp_path, clicks="uid,sku,ts,device\n")
    probs = problems_of(spec)
    assert len(probs) == 1
    p = probs[0]
    assert p.file.endswith("clicks.csv") and p.row is None
    assert str(p).endswith("expected at least one event row, found none")
    r = cli("data", "import", str(spec), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "clicks.csv" in r.stderr and "expected at least one event row, found none" in r.stderr
    assert not (tmp_path / "out").exists()


def test_every_event_row_rejected_is_an_error_even_when_skipping(tmp_path):
    spec = write(tmp_path, clicks=CLICKS.replace(",a,", ",zz,").replace(",b,", ",yy,"))
    with pytest.raises(DataError) as err:
        import_dataset(spec, skip_bad_rows=True)
    text = str(err.value)
    assert "at least one good event row" in text and "4 rejected" in text
    assert "'zz'" in text  # the reasons come with it: nothing to look up elsewhere


# ------------------------------------------------------------------------------------- b. field counts
FIELDS = """\
uid,sku,ts,device
u1,a,1700000000,web
u1,b,1700000100,app,EXTRA
u2,a,"1700000200",web
u3,b,1700000300
u3,a,1700000400,"two
lines",x
u4,a,1700000500,web
"""


def test_rows_with_more_or_fewer_fields_than_the_header_are_bad_rows(tmp_path):
    spec = write(tmp_path, clicks=FIELDS)
    probs = problems_of(spec)
    got = sorted((p.row, p.column, p.expected, p.found) for p in probs)
    assert got == [(2, None, "4 fields as the header", "5"), (4, None, "4 fields as the header", "3"),
                   (5, None, "4 fields as the header", "5")]  # a quoted newline stays inside its row
    assert "clicks.csv, row 2: expected 4 fields as the header, found 5" in str(DataError(probs))

    data, rejected = import_dataset(spec, skip_bad_rows=True)
    assert sorted(r.row for r in rejected) == [2, 4, 5]
    assert all(Path(r.file).name == "clicks.csv" for r in rejected)
    assert "expected 4 fields as the header, found 5" in {r.row: r.reason for r in rejected}[2]
    assert data.events["time"].to_pylist() == [1700000000, 1700000200, 1700000500]  # every good row kept
    out = write_rejected(rejected, tmp_path / "rejected.csv")
    assert len(out.read_text().splitlines()) == 1 + 3


def test_field_counts_of_side_files_are_checked_too(tmp_path):
    spec = write(tmp_path, items=ITEMS.replace("c,acme", "c,acme,surplus"))
    probs = problems_of(spec)
    assert [(Path(p.file).name, p.row, p.found) for p in probs] == [("items.csv", 3, "3")]


def test_field_counts_in_a_gzipped_file(tmp_path):
    import gzip

    spec = write(tmp_path, clicks=gzip.compress(FIELDS.encode()), clicks_name="clicks.csv.gz")
    assert sorted(p.row for p in problems_of(spec)) == [2, 4, 5]


# ------------------------------------------------------------------------------------- c. time range
def test_time_range_rule():
    from modalrec.data.timerange import DEFAULT_TIME_RANGE, TimeRange

    tr = TimeRange()
    assert (tr.min_s, tr.max_s) == (0, 7258118400) and DEFAULT_TIME_RANGE == tr
    bad = tr.check(np.array([-5, 0, 1_700_000_000, 7258118400, 7258118401, 99999999999999]))
    assert bad.tolist() == [True, False, False, False, True, True]
    assert tr.check([1.5, np.nan]).tolist() == [False, True]
    msg = tr.message(-5)
    assert "1970-01-01" in msg and "2200-01-01" in msg and "1969-12-31 23:59:55" in msg
    assert "99999999999999" in tr.message(99999999999999) and "year" in tr.message(99999999999999)
    assert "milliseconds" in tr.message(1_700_000_000_000)
    assert tr.message(1_700_000_000) is None
    custom = TimeRange.parse("2020-01-01", 1893456000)
    assert custom.min_s == 1577836800 and custom.max_s == 1893456000
    assert TimeRange.parse(None, "2030-01-01T00:00:00Z").min_s == 0
    with pytest.raises(ValueError, match="after"):
        TimeRange.parse("2030-01-01", "2020-01-01")
    with pytest.raises(ValueError):
        TimeRange.parse("next week", None)


def test_implausible_times_are_bad_rows_naming_the_range_and_the_date(tmp_path):
    clicks = CLICKS.replace("1700000100", "-5").replace("1700000300", "99999999999999")
    spec = write(tmp_path, clicks=clicks)
    probs = problems_of(spec)
    assert [(p.row, p.column) for p in probs] == [(2, "ts"), (4, "ts")]
    text = str(DataError(probs))
    assert "1970-01-01" in text and "2200-01-01" in text
    assert "-5 (1969-12-31 23:59:55 UTC)" in text and "99999999999999 (year" in text
    data, rejected = import_dataset(spec, skip_bad_rows=True)
    assert data.events["time"].to_pylist() == [1700000000, 1700000200]
    assert [r.row for r in rejected] == [2, 4]


def test_iso_times_are_checked_after_conversion(tmp_path):
    clicks = CLICKS.replace("1700000000", "2024-01-01T00:00:00").replace("1700000100", "2250-06-01T00:00:00")
    spec = write(tmp_path, clicks=clicks.replace("1700000200", "2024-01-02").replace("1700000300", "2024-01-03"))
    probs = problems_of(spec)
    assert [(p.row, p.column) for p in probs] == [(2, "ts")]
    assert "2250-06-01" in probs[0].found


def test_time_range_is_set_in_the_spec(tmp_path):
    spec_text = SPEC + "time_range: {min: 2023-11-14, max: \"2023-11-15T00:00:00Z\"}\n"
    clicks = CLICKS.replace("1700000300", "1600000000")  # 2020-09-13: before the spec's min
    spec = write(tmp_path, spec=spec_text, clicks=clicks)
    from modalrec.data.timerange import TimeRange

    assert load_import_spec(spec).time_range.rule() == TimeRange(1699920000, 1700006400)
    probs = problems_of(spec)
    assert [(p.row, p.column) for p in probs] == [(4, "ts")] and "2023-11-14" in probs[0].expected
    spec.write_text(SPEC + "time_range: {min: -100}\n")  # only one side given: the other is the default
    (tmp_path / "clicks.csv").write_text(CLICKS.replace("1700000100", "-5"))
    assert import_dataset(spec).events["time"].to_pylist()[1] == -5
    spec.write_text(SPEC + "time_range: {min: 2030-01-01, max: 2020-01-01}\n")
    with pytest.raises(DataError, match="time_range"):
        load_import_spec(spec)


# ------------------------------------------------------------------------------------- d. summary
def test_summary_and_cli_line_count_items_with_events_and_in_the_table(tmp_path):
    spec = write(tmp_path)
    s = import_dataset(spec).summary()
    assert s["items"] == 2 and s["items_in_table"] == 4
    r = cli("data", "import", str(spec), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "imported 4 events, 3 users, 2 items with events (4 in the items table)" in r.stdout


# ------------------------------------------------------------------------------------- e. separator
def test_commas_in_a_tsv_suggest_the_separator(tmp_path):
    spec = write(tmp_path, clicks_name="clicks.tsv")
    probs = problems_of(spec)
    assert probs and all(Path(p.file).name == "clicks.tsv" for p in probs)
    text = str(DataError(probs))
    assert "the header splits into 4 columns with sep ','" in text and 'set `sep: ","`' in text


def test_a_wrong_sep_suggests_the_right_one(tmp_path):
    spec = write(tmp_path, spec=SPEC.replace("channel: click", "channel: click\n    sep: \";\""),
                 clicks=CLICKS.replace(",", "\t"))
    text = str(DataError(problems_of(spec)))
    assert "splits into 4 columns with sep '\\t'" in text and 'set `sep: "\\t"`' in text


# ------------------------------------------------------------------------------------- f. encoding
def test_a_byte_of_another_encoding_names_row_column_and_the_encoding_option(tmp_path):
    clicks = CLICKS.replace("u2,a,1700000200,web", "u2,a,1700000200,caf\xe9").encode("latin-1")
    spec = write(tmp_path, clicks=clicks)
    probs = problems_of(spec)
    assert [(Path(p.file).name, p.row, p.column) for p in probs] == [("clicks.csv", 3, "device")]
    text = str(probs[0])
    assert "0xe9" in text and "encoding:" in text and "utf-8" in text
    data, rejected = import_dataset(spec, skip_bad_rows=True)
    assert [r.row for r in rejected] == [3] and data.events.num_rows == 3
    spec.write_text(SPEC.replace("channel: click", "channel: click\n    encoding: latin-1"))
    assert import_dataset(spec).events["device"].to_pylist()[2] == "café"


def test_a_bad_byte_in_the_header_is_named(tmp_path):
    spec = write(tmp_path, clicks=CLICKS.replace("device", "d\xe9vice", 1).encode("latin-1"))
    text = str(DataError(problems_of(spec)))
    assert "clicks.csv" in text and "header" in text and "0xe9" in text and "encoding:" in text


def test_an_unknown_encoding_is_a_spec_error(tmp_path):
    spec = write(tmp_path, spec=SPEC.replace("channel: click", "channel: click\n    encoding: klingon"))
    with pytest.raises(DataError, match="klingon"):
        load_import_spec(spec)
