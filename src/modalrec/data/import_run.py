"""One import, streamed: every file of the spec read in bounded chunks, checked, and written as it goes.

The order: (1) open every file (its header and columns: the problems of a file as a whole); (2) the catalogue
(items, users, content), kept whole; (3) the events, chunk by chunk: each chunk's cells checked, its ids checked
against the catalogue, its good rows handed to the events writer and, with `skip_bad_rows`, its bad rows to the
rejected writer; only the distinct ids of the events are kept (the summary; content of an entity without a side
file); (4) the content's checks across files; (5) the verdict. The problems are reported in the order of the
whole-file import (see `import_problems.Report`); the events are never all in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import import_cells as cells
from .errors import DataError, Problem
from .import_build import catalogue, dataset_spec, event_table, new_channels
from .import_catalogue import content_columns, entity_columns, read_content, read_entity, vector_lengths
from .import_files import DEFAULT_BLOCK_SIZE, FileReader
from .import_problems import CATALOGUE_CELLS, CONTENT_CHECKS, EVENT_CELLS, EVENT_REFS, Rejected, Report, Table
from .import_spec import EventSource, ImportSpec
from .interaction import DatasetSpec

KEEP_PROBLEMS = 10_000  # row problems kept with skip_bad_rows (every bad row goes to the rejected writer)


@dataclass
class Outcome:
    """What an import produced besides the events (which went to the events writer)."""

    spec: DatasetSpec
    items: pa.Table | None
    users: pa.Table | None
    content: dict[str, pa.Table]
    summary: dict
    rejected: int
    channels: list[str] = field(default_factory=list)


def event_source_columns(src: EventSource) -> list[str]:
    cols = [src.user, src.item, src.time]
    cols += [c for c in (src.label, src.value, src.channel_column, src.event_id) if c]
    return cols + src.keep


class Importer:
    """Reads and checks every file of the spec; good events go to `events` (`write(table)`), rejected rows to
    `rejected` (`write(rows)`; with `skip_bad_rows`)."""

    def __init__(self, spec: ImportSpec, base: Path, skip_bad_rows: bool, events, rejected=None,
                 block_size: int = DEFAULT_BLOCK_SIZE):
        self.spec = spec
        self.skip = skip_bad_rows
        self.report = Report(keep=KEEP_PROBLEMS if skip_bad_rows else None)
        self.files = FileReader(base, self.report, block_size)
        self.time_range = spec.time_range.rule()
        self.events = events
        self.rejected = rejected
        self.n_rejected = 0
        self.n_rows = self.n_good = 0
        self.channels: list[str] = []
        self.channel_counts: dict[str, int] = {}
        wanted = {c.entity for c in spec.content} - {n for n, side in (("item", spec.items), ("user", spec.users))
                                                     if side is not None}
        self.seen = {name: (cells.IdCollector(), cells.IdCollector()) for name in wanted}  # (all, good) ids
        self.good_ids = {"user_id": cells.IdCollector(), "item_id": cells.IdCollector()}

    def _open(self, src, columns: list[str], index: int):
        self.report.file_index = index
        header = self.files.header(src)
        if header is None:
            return None
        cols = self.files.columns(src, columns, header)
        return None if cols is None else (cols, header)

    def _reject(self, rows: list[Rejected]) -> None:
        if self.skip and self.rejected is not None and rows:
            self.rejected.write(rows)
        self.n_rejected += len(rows)

    # ------------------------------------------------------------------ the run
    def run(self) -> Outcome:
        spec, report = self.spec, self.report
        n_ev = len(spec.events)
        sides = [("item", "item_id", spec.items), ("user", "user_id", spec.users)]
        opened_events = [self._open(src, event_source_columns(src), i) for i, src in enumerate(spec.events)]
        opened_sides = {name: self._open(src, entity_columns(src), n_ev + k) if src is not None else None
                        for k, (name, _, src) in enumerate(sides)}
        opened_content = []
        for j, c in enumerate(spec.content):
            report.file_index = n_ev + 2 + j
            header = self.files.header(c)
            value_cols = content_columns(self.files, report, c, header) if header is not None else None
            opened = None if value_cols is None else self._open(c, [c.id, *value_cols], n_ev + 2 + j)
            opened_content.append((value_cols, opened))

        entities: dict = {}
        for k, (name, key, src) in enumerate(sides):
            report.stage, report.file_index = (CATALOGUE_CELLS, k), n_ev + k
            entities[name] = read_entity(self.files, report, src, key, opened_sides[name]) if src else None
        contents = []
        for j, (c, (value_cols, opened)) in enumerate(zip(spec.content, opened_content)):
            report.stage, report.file_index = (CATALOGUE_CELLS, 2 + j), n_ev + 2 + j
            contents.append((c, read_content(self.files, report, c, value_cols, opened)))

        # side files first: their rejected rows invalidate the rows that point at them
        known = {}
        for name, key, _ in sides:
            if entities[name] is not None:
                t, cols = entities[name]
                known[name] = (cells.IdSet(cols[key]), cells.IdSet(cols[key][~t.bad]), t.file)
        refs = not report.fatal  # with a file that cannot be read, the ids are not checked across files
        for i, (src, opened) in enumerate(zip(spec.events, opened_events)):
            if opened is not None:
                self._events(i, src, opened, known if refs else {})

        # content of an entity without a side file must describe an entity seen in the events
        for name, (all_ids, ok_ids) in self.seen.items():
            known[name] = (cells.IdSet(cells.objects(all_ids.values())), cells.IdSet(cells.objects(ok_ids.values())),
                           "the events files")
        for j, (c, got) in enumerate(contents):
            report.stage = (CONTENT_CHECKS, j)
            if got is not None and refs:
                self._content_checks(c, got, known)

        return self._verdict(entities, contents)

    # ------------------------------------------------------------------ events
    def _events(self, i: int, src: EventSource, opened, known: dict) -> None:
        report = self.report
        cols, header = opened
        rows = 0
        state: dict = {}
        report.file_index, report.stage = i, (EVENT_CELLS, i)  # the reader's problems (field counts, ...) too
        for t in self.files.chunks(src, cols, header):
            ev = self._event_cells(src, t, state)
            report.stage = (EVENT_REFS, i)
            for name, key, col in (("item", "item_id", src.item), ("user", "user_id", src.user)):
                if name in known:
                    cells.check_refs(report, t, cells.objects(ev[key]), col, name, *known[name])
            report.stage = (EVENT_CELLS, i)
            rows += t.n
            good = ~t.bad
            self.n_rows += t.n
            self.n_good += int(good.sum())
            for name, key in (("user", "user_id"), ("item", "item_id"), ("event", "event_id")):
                if name in self.seen and key in ev:
                    self.seen[name][0].add(ev[key])
                    self.seen[name][1].add(ev[key].filter(pa.array(good)))
            if self.skip or not (report.any_rows or report.fatal):  # else the import fails: nothing to write
                table = event_table(self.spec, ev, good)
                self.events.write(table)
                new_channels(self.channels, table)
                for key in ("user_id", "item_id"):
                    self.good_ids[key].add(table[key])
                for r in pc.value_counts(table["channel"]).to_pylist():
                    self.channel_counts[r["values"]] = self.channel_counts.get(r["values"], 0) + r["counts"]
            self._reject(t.rejected() if self.skip else [])
        if rows == 0 and not any(p.file == str(self.files.path(src)) for p in report.fatal):
            # a header-only export: an error now rather than an empty dataset failing at train
            report.file_index = i
            report.file_problem(self.files.path(src), None, "at least one event row", "none")

    def _event_cells(self, src: EventSource, t: Table, state: dict) -> dict:
        """The columns of a chunk: ids, channels and kept columns as Arrow strings, the rest numpy arrays."""
        report = self.report
        ev: dict = {"user_id": cells.id_array(report, t, src.user),
                    "item_id": cells.id_array(report, t, src.item),
                    "time": cells.times(report, t, src.time, src.time_format, self.time_range, state)}
        if src.channel_column:
            ch = cells.arrow_text(t.df[src.channel_column])
            report.row_problem(t, pc.equal(ch, "").to_numpy(zero_copy_only=False), src.channel_column,
                               "a channel name", "an empty value")
            ev["channel"] = ch
        else:
            ev["channel"] = pa.repeat(pa.scalar(src.channel or "default", pa.string()), t.n)
        if src.label:
            ev["label"] = cells.numbers(report, t, src.label, required=True, booleans=True)
        if src.value:
            ev["value"] = cells.numbers(report, t, src.value, required=False)
        if src.event_id:
            ev["event_id"] = cells.id_array(report, t, src.event_id)
        for c in src.keep:
            ev[c] = cells.arrow_text(t.df[c])
        t.df = None
        return ev

    # ------------------------------------------------------------------ content
    def _content_checks(self, c, got, known: dict) -> None:
        t, ids, values, present = got
        cells.check_refs(self.report, t, ids, c.id, c.entity, *known[c.entity])
        cells.duplicates(self.report, t, ids, c.id, "one row per id (a missing modality is a missing row)")
        if c.kind == "vector":
            lengths = vector_lengths(values, present)
            usable = present & ~t.bad
            want = c.dim if c.dim is not None else (_mode(lengths[usable].tolist()) if usable.any() else 0)
            wrong = present & (lengths != want)
            self.report.row_problem(t, wrong, c.column or str(c.columns), f"a vector of length {want}",
                                    [f"length {k}" for k in lengths[wrong]])

    # ------------------------------------------------------------------ the verdict
    def _verdict(self, entities: dict, contents: list) -> Outcome:
        report = self.report
        if report.fatal:
            raise DataError(report.ordered_fatal() + report.ordered(before=EVENT_REFS))
        if report.any_rows and not self.skip:
            raise DataError(report.ordered())
        if not self.n_good:  # skipping every row would leave no data
            files = ", ".join(dict.fromkeys(str(self.files.path(s)) for s in self.spec.events))
            raise DataError([Problem(files, None, None, "at least one good event row",
                                     f"none (all {self.n_rows} rejected)"), *report.ordered()])
        for ent in entities.values():
            if ent is not None:
                self._reject(ent[0].rejected())
        for _, got in contents:
            if got is not None:
                self._reject(got[0].rejected())
        side, features, modalities, content = catalogue(self.spec, entities, contents)
        ds = dataset_spec(self.spec, self.channels, features, modalities)
        summary = {"name": ds.name, "events": self.n_good, "users": len(self.good_ids["user_id"]),
                   "items": len(self.good_ids["item_id"]),
                   "channels": {str(k): int(v) for k, v in self.channel_counts.items()},
                   "modalities": {k: v.num_rows for k, v in content.items()}}
        if side["item"] is not None:
            summary["items_in_table"] = side["item"].num_rows
        if side["user"] is not None:
            summary["users_in_table"] = side["user"].num_rows
        return Outcome(ds, side["item"], side["user"], content, summary, self.n_rejected, self.channels)


def _mode(values: list[int]) -> int:
    vals, counts = np.unique(np.asarray(values), return_counts=True)
    return int(vals[np.argmax(counts)])
