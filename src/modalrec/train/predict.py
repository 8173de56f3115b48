"""`modalrec predict`: scores and top-K lists from a run directory alone (its pipeline, data and checkpoints).

- ctr, a split of the run: the click probability of every sample of the split (mean over the run's seeds).
- ctr, a new events file (`--events`): the file's rows are coded through the saved pipeline (unknown users
  and items are index 0, as for a service) and scored, each against the user's history strictly before it:
  the run's recorded events plus the file's own events of the history channels.
- topk (`--k`): each user's top-K items after their whole recorded history (plus the events of `--events`,
  whose users are then the ones listed), the items they met excluded or kept as `task.exclude_seen` says.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch

from ..data.errors import DataError, Problem
from ..pipeline import History, Vocab
from ..tasks.base import PreparedTask, event_times
from .run import best_model, load_run

REQUIRED = ("user_id", "item_id", "time")
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes kept by the "surrogateescape" error handler


def read_events(path: Path) -> pa.Table:
    """A CSV/TSV/Parquet events file with at least user_id, item_id and time (unix seconds or ISO dates). Every
    problem is named by file, row (1-based, the header not counted) and column: a row with another number of
    fields than the header, a byte that is not UTF-8, an empty id or channel, a time that is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(Problem(str(path), None, None, "an events file (.csv, .tsv or .parquet)", "no such file"))
    parquet = path.suffix.lower() == ".parquet"
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    if path.stat().st_size == 0:
        raise DataError(Problem(str(path), None, None, "a header row and at least one event row", "an empty file"))
    try:
        if parquet:
            table = pq.read_table(path)
        else:
            table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=sep),
                                  convert_options=pcsv.ConvertOptions(
                                      column_types={"user_id": pa.string(), "item_id": pa.string()}))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError((None if parquet else _csv_problems(path, sep))
                        or Problem(str(path), None, None, "a readable CSV/TSV (UTF-8, one header row) or Parquet file",
                                   str(e).splitlines()[0])) from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        hint = ""
        if len(table.column_names) == 1 and any(c in table.column_names[0] for c in ";|\t,"):
            hint = ("; the header reads as one column: --events reads comma-separated .csv, tab-separated .tsv or "
                    ".parquet files")
        raise DataError([Problem(str(path), None, c, f"a column named '{c}'", f"columns {table.column_names}{hint}")
                         for c in missing])
    if table.num_rows == 0:
        raise DataError(Problem(str(path), None, None, "at least one event row", "none"))
    problems: list[Problem] = []
    for c, what in (("user_id", "an id on every row"), ("item_id", "an id on every row"),
                    ("channel", "a channel name on every row")):
        if c not in table.column_names:
            continue
        col = table[c].cast(pa.string())
        empty = pc.or_kleene(pc.is_null(col), pc.equal(pc.utf8_trim_whitespace(col), "")).to_numpy(
            zero_copy_only=False)
        problems += [Problem(str(path), int(r) + 1, c, what, "an empty value") for r in np.flatnonzero(empty)]
        table = table.set_column(table.column_names.index(c), c, col)
    t = table["time"]
    if pa.types.is_string(t.type) or pa.types.is_large_string(t.type):
        secs, bad = _parse_times(t.to_pylist())
        problems += [Problem(str(path), int(r) + 1, "time", "unix seconds or an ISO 8601 date-time", found)
                     for r, found in bad]
        table = table.set_column(table.column_names.index("time"), "time", pa.array(secs, pa.int64()))
    elif pa.types.is_integer(t.type) or pa.types.is_timestamp(t.type):
        problems += [Problem(str(path), int(r) + 1, "time", "a time on every row", "an empty value")
                     for r in np.flatnonzero(t.is_null().to_numpy(zero_copy_only=False))]
    else:
        problems.append(Problem(str(path), None, "time", "integer unix seconds or ISO 8601 date-times",
                                f"a column of {t.type}"))
    if problems:
        raise DataError(problems)
    return table


def _parse_times(values: list) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Unix seconds of text cells (integers as they are, ISO 8601 date-times, naive = UTC) and the rows that
    are neither: (seconds, [(0-based row, what was found)])."""
    text = pd.Series(["" if v is None else str(v).strip() for v in values], dtype=object)
    empty = (text == "").to_numpy()
    is_int = text.str.fullmatch(r"[+-]?\d{1,18}").to_numpy(dtype=bool)
    secs = np.zeros(len(text), np.int64)
    secs[is_int] = text[is_int].astype(np.int64).to_numpy()
    other = ~is_int & ~empty
    parsed = pd.to_datetime(text[other], format="ISO8601", errors="coerce", utc=True)
    ok = parsed.notna().to_numpy()
    rows = np.flatnonzero(other)
    secs[rows[ok]] = ((parsed[ok] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    bad = [(int(r), "an empty value") for r in np.flatnonzero(empty)]
    bad += [(int(r), repr(text[r])) for r in rows[~ok]]
    return secs, sorted(bad)


def _csv_problems(path: Path, sep: str) -> list[Problem]:
    """The rows of a CSV file Arrow refused: another number of fields than the header, a byte that is not
    UTF-8 (named by row and column); [] when none is found (the caller then shows Arrow's message)."""
    if path.suffix.lower() not in (".csv", ".tsv", ".txt"):
        return []  # compressed: Arrow's message it is
    out: list[Problem] = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            rows = csv.reader(f, delimiter=sep)
            header = next(rows, [])
            for r, rec in enumerate(rows, 1):
                if rec and len(rec) != len(header):
                    out.append(Problem(str(path), r, None, f"{len(header)} fields as the header", str(len(rec))))
                for name, cell in zip(header, rec):
                    bad = _UNDECODED.search(cell)
                    if bad:
                        out.append(Problem(str(path), r, name, "UTF-8 text",
                                           f"the byte 0x{ord(bad.group()) - 0xDC00:02x} in "
                                           f"{_UNDECODED.sub('?', cell)!r}"))
    except (OSError, csv.Error):
        return []
    return out


def _channels(task: PreparedTask, table: pa.Table) -> np.ndarray:
    if "channel" in table.column_names:
        return np.asarray(table["channel"].to_numpy(zero_copy_only=False), dtype=object)
    s = task.pipeline.settings
    default = (s.sample_channels or list(s.history_tags) or ["default"])[0]
    return np.full(table.num_rows, default, dtype=object)


def _with_events(task: PreparedTask, table: pa.Table, channels: np.ndarray) -> tuple[History, Vocab, np.ndarray]:
    """The run's history extended with the file's history events: (history, log users incl. the file's new
    ones, each row's log user)."""
    p, s = task.pipeline, task.pipeline.settings
    log_users = task.log_users.extended(table["user_id"].to_pylist())
    users = log_users.lookup(table["user_id"])
    items = p.items.lookup(table["item_id"])
    times = event_times(table)
    wanted = p.history_channels()
    is_hist = np.ones(len(users), bool) if wanted is None else np.isin(channels, np.asarray(wanted, dtype=object))
    if s.history_positive_only:
        if s.label_column in table.column_names:
            raw = table[s.label_column].to_numpy(zero_copy_only=False).astype(np.float64)
            is_hist &= np.nan_to_num(p.labels(raw), nan=0).astype(bool)
        else:  # outcomes unknown: the file's events cannot join a history of positive events
            is_hist &= False
    is_hist &= items > 0
    h = task.history
    old_users = np.repeat(np.arange(h.n_users), np.diff(h.ptr))
    tags = None if h.tags is None else np.concatenate([h.tags, p.tag_codes(channels[is_hist])])
    merged = History.build(np.concatenate([old_users, users[is_hist]]), np.concatenate([h.items, items[is_hist]]),
                           np.concatenate([h.times, times[is_hist]]), len(log_users), tags)
    return merged, log_users, users


@torch.no_grad()
def _scores(task: PreparedTask, run_dir: Path, cfg, batches, post=None) -> np.ndarray:
    """Mean over the run's seeds of the model outputs of `batches()` (a callable giving the batches), each seed's
    outputs passed through `post` first when given."""
    outs = []
    for seed in cfg.seeds:
        model = best_model(cfg, task, run_dir, seed)
        model.eval()
        task.bind(model.inputs)
        parts = [model(b).float() for b in batches(task)]
        out = torch.cat(parts).numpy().astype(np.float64) if parts else np.zeros(0)
        outs.append(post(out) if post is not None else out)
    return np.mean(outs, axis=0)


def predict_ctr_events(task: PreparedTask, run_dir: Path, cfg, table: pa.Table, batch_size: int) -> np.ndarray:
    """Click probabilities of every row of a new events file whose channel is a sample channel (others: NaN)."""
    p = task.pipeline
    channels = _channels(task, table)
    history, log_users, users = _with_events(task, table, channels)
    wanted = p.settings.sample_channels
    is_sample = np.ones(len(users), bool) if wanted is None else np.isin(channels, np.asarray(wanted, dtype=object))
    rows = np.flatnonzero(is_sample)
    items = p.items.lookup(table["item_id"])[rows]
    times = event_times(table)[rows]
    u = users[rows]
    cut = history.cut_before(u, times)
    user_rows = np.r_[0, p.users.lookup(log_users.ids)].astype(np.int64)
    missing = [n for n in p.context if n not in table.column_names]
    if missing:
        raise DataError(Problem("--events", None, missing[0], "the context feature columns the model reads "
                                f"({', '.join(p.context)})", f"columns {table.column_names}"))
    context = p.context_codes(table, rows)
    collate = p.collator(history, user_rows, inputs=None)
    group = None if p.graph is None else p.item_table.categorical[p.graph.group_feature]
    # an item the model knows nothing about (an id it never saw, without features) gets the user's prior, as in
    # evaluation and serving: the mean probability of the same sample over the pipeline's probe items
    blank, probes = np.flatnonzero(p.uninformed(items)), p.prior_items()
    if not len(probes):
        blank = blank[:0]
    at = np.concatenate([np.arange(len(rows)), np.repeat(blank, len(probes))])  # each scored sample's row
    targets = np.concatenate([items, np.tile(probes, len(blank))])

    def batches(t):
        collate.inputs = t.collator.inputs
        for lo in range(0, len(at), batch_size):
            r, it = at[lo:lo + batch_size], targets[lo:lo + batch_size]
            graph = None if p.graph is None else p.graph.inputs(user_rows[u[r]], group[it], times[r], False)
            yield collate(u[r], it, cut[r], times[r], context={k: v[r] for k, v in context.items()}, graph=graph)

    def prior(logits: np.ndarray) -> np.ndarray:
        out = logits[:len(rows)].copy()
        if len(blank):
            out[blank] = p.prior_of(logits[len(rows):].reshape(len(blank), len(probes)))
        return out

    out = np.full(table.num_rows, np.nan)
    out[rows] = 1.0 / (1.0 + np.exp(-_scores(task, run_dir, cfg, batches, prior)))
    return out


def predict_topk(task: PreparedTask, run_dir: Path, cfg, k: int, table: pa.Table | None,
                 exclude_seen: bool) -> pd.DataFrame:
    """Each user's top-k items after their whole history: user_id, rank (1..k), item_id, score."""
    p = task.pipeline
    if table is not None:
        history, log_users, users = _with_events(task, table, _channels(task, table))
        who = np.unique(users)
    else:
        history, log_users = task.history, task.log_users
        who = np.flatnonzero(np.diff(history.ptr) > 0)
    user_rows = np.r_[0, p.users.lookup(log_users.ids)].astype(np.int64)
    cut = np.diff(history.ptr)[who]
    end = np.array([history.times[history.ptr[u + 1] - 1] + 1 if cut[j] else 0 for j, u in enumerate(who)], np.int64)
    collate = p.collator(history, user_rows, inputs=None)
    n_items = len(p.items)
    k = min(k, n_items - 1)
    step = max(1, min(512, (1 << 24) // max(n_items, 1)))

    def batches(t):
        collate.inputs = t.collator.inputs
        for lo in range(0, len(who), step):
            yield collate(who[lo:lo + step], np.zeros(len(who[lo:lo + step]), np.int64), cut[lo:lo + step],
                          end[lo:lo + step])

    scores = torch.from_numpy(_scores(task, run_dir, cfg, batches)).view(len(who), n_items)
    scores[:, 0] = float("-inf")
    if exclude_seen:
        for j, u in enumerate(who):
            seen = history.items[history.ptr[u]:history.ptr[u + 1]]
            scores[j, torch.from_numpy(seen)] = float("-inf")
    top = torch.topk(scores, k, dim=1)
    ids = np.asarray(p.items.ids, dtype=object)
    users = np.asarray(log_users.ids, dtype=object)[who - 1]
    out = pd.DataFrame({"user_id": np.repeat(users, k), "rank": np.tile(np.arange(1, k + 1), len(who)),
                        "item_id": ids[top.indices.numpy().ravel() - 1], "score": top.values.numpy().ravel()})
    # a user who met all but a few items gets the items left (fewer than k), never an excluded one
    return out[np.isfinite(out["score"].to_numpy())].reset_index(drop=True)


def predict_run(run_dir: Path, out: Path, split: str = "test", fmt: str = "csv", events: Path | None = None,
                k: int | None = None, exclude_seen: bool | None = None) -> Path:
    """Writes a run's predictions to `out` (CSV, atomically): see the module doc."""
    run_dir, out = Path(run_dir), Path(out)
    if out.is_dir():
        raise DataError(Problem("--out", None, None, "the path of the CSV file to write", f"the directory {out}"))
    if fmt not in ("csv", "microlens"):
        raise DataError(Problem("--format", None, None, "csv or microlens", repr(fmt)))
    cfg, task = load_run(run_dir)
    table = None
    if events is not None:
        table = read_events(events)
        _check_events(task, table, str(events), ctr=cfg.task.kind == "ctr")
    if cfg.task.kind == "topk":
        if k is None:
            raise DataError(Problem("--k", None, None, "the length of each user's top-K list for a topk run "
                                    "(e.g. --k 10)", "none"))
        if k < 1:
            raise DataError(Problem("--k", None, None, "a list length of at least 1", str(k)))
        seen = cfg.task.exclude_seen if exclude_seen is None else exclude_seen
        return _write(predict_topk(task, run_dir, cfg, k, table, seen), out)
    if cfg.task.kind != "ctr":
        raise DataError(Problem(str(run_dir / "config.yaml"), None, "task.kind", "a ctr run (click probabilities) or a "
                                "topk run (top-K lists with --k)", repr(cfg.task.kind)))
    if k is not None:
        raise DataError(Problem("--k", None, None, "top-K lists of a topk run; this run's task is ctr "
                                "(it writes a probability per event)", str(k)))
    if table is not None:
        df = table.to_pandas()
        df["probability"] = predict_ctr_events(task, run_dir, cfg, table, cfg.train.eval_batch_size)
        return _write(df, out)
    if split not in task.splits:
        raise DataError(Problem("--split", None, None, f"one of {', '.join(task.splits)}", repr(split)))
    s = task.splits[split]
    logits = _scores(task, run_dir, cfg, lambda t: t.batches(split, cfg.train.eval_batch_size))
    p = 1.0 / (1.0 + np.exp(-logits)) if len(s) else np.zeros(0)
    ids = task.sample_ids[split]
    if fmt == "microlens":
        from ..datasets.microlens import write_submission

        if "row" not in ids.column_names:
            raise DataError(Problem("--format", None, None, "microlens: the events' `row` column (data.source: "
                                    "microlens)", "no such column"))
        return write_submission(ids["row"].to_numpy(zero_copy_only=False), p, out)
    df = pd.DataFrame({"user_id": ids["user_id"].to_pylist(), "item_id": ids["item_id"].to_pylist(),
                       "time": ids["time"].to_pylist(), "probability": p})
    return _write(df, out)


def _check_events(task: PreparedTask, table: pa.Table, source: str, ctr: bool) -> None:
    """What the run's pipeline needs of an events file: times in the plausible range of the run's data (the rule
    of the import and of the service's POST /events), and the context feature columns the model reads (ctr)."""
    rule = task.pipeline.settings.time_rule()
    times = event_times(table)
    problems = [Problem(source, int(r) + 1, "time", rule.expected(), rule.found(times[r]))
                for r in np.flatnonzero(rule.check(times))]
    names = list(task.pipeline.context) if ctr else []
    problems += [Problem(source, None, n, f"a column named '{n}' (the model reads the context features "
                         f"{', '.join(names)})", f"columns {table.column_names}")
                 for n in names if n not in table.column_names]
    if problems:
        raise DataError(problems)


def _write(df: pd.DataFrame, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out
