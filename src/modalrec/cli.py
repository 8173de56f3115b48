"""The `modalrec` command.

Errors in user input (data files, configs) are printed as one line each, naming the file, row and
column, and the command exits with status 2, without a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import re
import sys
from enum import Enum
from pathlib import Path

import click
import typer
from typer.core import TyperCommand, TyperGroup

from .data.errors import DataError
from .models import ModelConfigError


def _usage_error(ctx: click.Context, e: click.UsageError) -> typer.Exit:
    """A command line click cannot parse (a missing argument, an unknown option or command, an option value of the
    wrong type or out of its range) as one `error:` line, exit status 2, like every other bad input."""
    if e.ctx is None:
        e.ctx = ctx
    message = re.sub(r"( Did you mean [^?]*\?)(\1)+", r"\1", e.format_message())  # click and typer both suggest
    typer.echo(f"error: {e.ctx.command_path}: {message} (see {e.ctx.command_path} --help)", err=True)
    return typer.Exit(2)


class _Command(TyperCommand):
    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _usage_error(ctx, e) from None


class _Group(TyperGroup):
    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # no arguments: the help, as no_args_is_help says
                raise
            raise _usage_error(ctx, e) from None

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:  # an unknown command
            raise _usage_error(ctx, e) from None


app = typer.Typer(
    name="modalrec",
    help="Learn recommendations from multi-modal user interactions: import data, train and compare the "
         "models of the field, report, and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
data_app = typer.Typer(help="Check and import datasets.", no_args_is_help=True, cls=_Group)
app.add_typer(data_app, name="data")


def _fail(msg: str, code: int = 2) -> None:
    for line in str(msg).splitlines() or [""]:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DataError as e:
        _fail(str(e))
    except FileNotFoundError as e:
        _fail(str(e))
    except KeyError as e:  # unknown dataset / metric names
        _fail(e.args[0] if e.args else str(e))
    except ModelConfigError as e:  # unknown model or model parameter
        _fail(str(e))
    except ValueError as e:  # an option value the command cannot use (e.g. --rate 2)
        _fail(str(e))
    except ImportError as e:  # an optional part not installed: the message names the extra to install
        _fail(str(e))


@app.command(cls=_Command)
def train(
    config: Path = typer.Argument(..., help="YAML run config (see configs/ for examples)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a config value: key.sub=value (repeatable)."),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2 (mean and std)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
) -> None:
    """Train a model on a task and write the run directory (config, manifest, metrics, checkpoints, report)."""
    from .config import load_config
    from .train.run import train_run

    overrides = list(set_)
    if seeds:
        overrides.append(f"seeds=[{seeds}]")
    cfg = _guard(load_config, config, overrides)
    out = out or Path("runs") / cfg.name
    metrics = _guard(train_run, cfg, out, resume=resume, echo=typer.echo)
    _print_summary(out, metrics)


def _print_summary(out: Path, metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics['name']} ({metrics['model']}, {metrics['dataset']}, seeds {metrics['seeds']})")
    table.add_column("metric")
    table.add_column("valid")
    table.add_column("test")
    for k in sorted(metrics["test"]):
        v, t = metrics["valid"].get(k, {}), metrics["test"][k]

        def fmt(d):
            return "-" if not d or d.get("mean") is None else f"{d['mean']:.4f} ± {d['std']:.4f}"

        table.add_row(k, fmt(v), fmt(t))
    Console(stderr=False).print(table)
    typer.echo(f"run directory: {out}")


@app.command(cls=_Command)
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `modalrec train`."),
    split: str = typer.Option("test", help="train, valid or test."),
    drop_modality: str | None = typer.Option(
        None, "--drop-modality", help="Robustness: a touchpoint channel or content modality to remove from a "
        "share of the evaluated events that have it (multilabel tasks), e.g. conversation."),
    rate: float = typer.Option(0.5, help="With --drop-modality: the share of those events that lose it."),
    seed: int = typer.Option(0, help="With --drop-modality: seed of the choice of events."),
) -> None:
    """Re-evaluate the best checkpoints of a run (from the run directory alone) and print the metrics (and
    per-group metrics) as JSON."""
    import json

    from .train.run import evaluate_run

    res = _guard(evaluate_run, run_dir, split, drop_modality=drop_modality, rate=rate, drop_seed=seed)
    typer.echo(json.dumps(res, indent=2))


@app.command(cls=_Command)
def predict(
    run_dir: Path = typer.Argument(..., help="A run directory written by `modalrec train` (ctr or topk)."),
    out: Path = typer.Option(..., "--out", "-o", help="CSV file to write."),
    split: str = typer.Option("test", help="ctr: the split whose samples to score (train, valid or test)."),
    events: Path | None = typer.Option(None, "--events", help="ctr: score the rows of this new events file "
                                       "(.csv/.tsv/.parquet with user_id, item_id, time[, channel, context "
                                       "columns]) instead of a split; topk: add its events to the histories and "
                                       "list its users only."),
    k: int | None = typer.Option(None, "--k", help="topk: write each user's top-K items (user_id, rank, item_id, "
                                 "score)."),
    keep_seen: bool = typer.Option(False, "--keep-seen", help="topk: rank the items a user already met too "
                                   "(default: the run's task.exclude_seen)."),
    fmt: str = typer.Option("csv", "--format", help="ctr: csv (the rows with a probability column) or microlens "
                            "(the WWW 2025 challenge submission: ID,Task2)."),
) -> None:
    """Write predictions of a run's best checkpoints (mean over its seeds), from the run directory alone:
    click probabilities (ctr) or top-K lists (topk, --k)."""
    from .train.predict import predict_run

    path = _guard(predict_run, run_dir, out, split, fmt, events=events, k=k,
                  exclude_seen=False if keep_seen else None)
    typer.echo(f"predictions: {path}")


@app.command(cls=_Command)
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories."),
    out: Path = typer.Option(..., "--out", "-o", help="HTML file to write (PNG plots go beside it)."),
    title: str | None = typer.Option(None, help="Report title."),
) -> None:
    """Write an HTML report: leaderboard, learning curves and metric plots of several runs side by side."""
    from .eval.report import write_report

    path = _guard(write_report, list(run_dirs), out, title)
    typer.echo(f"report: {path}")


@data_app.command("validate", cls=_Command)
def data_validate(path: Path = typer.Argument(..., help="A dataset directory (dataset.yaml) or an import YAML.")) -> None:
    """Check a dataset; print every problem as file, row, column, expected; exit 1 if any."""
    from .data.importer import validate_path

    problems = _guard(validate_path, path)
    if problems:
        for p in problems:
            typer.echo(f"error: {p}", err=True)
        typer.echo(f"{len(problems)} problem(s) in {path}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {path}")


@data_app.command("import", cls=_Command)
def data_import(
    spec: Path = typer.Argument(..., help="YAML mapping of your CSV/Parquet files (see README)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the InteractionData to."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows",
                                       help="Write the good rows and list the bad ones in OUT/rejected.csv."),
    partitions: int | None = typer.Option(None, "--partitions", min=1,
                                          help="Write the events as OUT/events/part-*.parquet, N partitions by user "
                                               "(data larger than memory; default: the spec's `partitions`, else "
                                               "one events.parquet)."),
) -> None:
    """Import your own files described by a YAML mapping into an InteractionData directory (read in chunks and
    written as it goes: memory does not grow with the events)."""
    from .data.importer import import_to_directory

    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: expected a directory to write the dataset to, found a file")
    if out.is_dir() and any(out.iterdir()) and not (out / "dataset.yaml").is_file():
        _fail(f"--out {out}: expected a new directory or a dataset directory written before (with dataset.yaml), "
              "found a folder of other files; the import would write among them")
    result = _guard(import_to_directory, spec, out, skip_bad_rows=skip_bad_rows, partitions=partitions)
    if result.rejected:
        typer.echo(f"warning: {result.rejected} bad row(s) left out, listed in {out / 'rejected.csv'}", err=True)
    s = result.summary
    users = f"{s['users']} users"
    if s.get("users_in_table", s["users"]) != s["users"]:
        users += f" with events ({s['users_in_table']} in the users table)"
    items = f"{s['items']} items"
    if "items_in_table" in s:
        items += f" with events ({s['items_in_table']} in the items table)"
    parts = f" ({result.partitions} partitions)" if result.partitions else ""
    typer.echo(f"imported {s['events']} events, {users}, {items} into {out}{parts}")


@app.command(cls=_Command)
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Where to write the demo runs."),
    epochs: int = typer.Option(3, help="Epochs per model."),
    world: str = typer.Option("livestream", help="livestream (gift prediction: SIM vs MMBee on a simulated "
                              "platform with frames, speech and comments) or ctr (click prediction on text items)."),
) -> None:
    """Simulate a small built-in world (no downloads), train its models, write a report and a serving bundle."""
    from .demo import run_demo

    path = _guard(run_demo, out, epochs, world)
    typer.echo(f"demo report: {path}")


@app.command(cls=_Command)
def refresh(
    run_dir: Path = typer.Argument(..., help="A ctr run directory written by `modalrec train` (or refresh)."),
    since: str = typer.Option(..., "--since", help="Start of the new window: unix seconds or an ISO date "
                              "(UTC), e.g. 2024-01-11. Its samples train the refreshed model."),
    out: Path = typer.Option(..., "--out", "-o", help="The new run directory to write."),
    data: str | None = typer.Option(None, "--data", help="The events up to now: a dataset name, folder or import "
                                    "YAML (default: the run's data config)."),
    epochs: int = typer.Option(1, "--epochs", min=1, help="Epochs on the new window."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Also export the refreshed run's serving bundle here."),
) -> None:
    """Refresh a run on the events since --since without a full retrain: vocabularies and side tables extended,
    gifting graphs refitted, the model warm-started from the run's best checkpoint; writes a new run directory."""
    from .train.refresh import refresh_run

    metrics = _guard(refresh_run, run_dir, since, out, source=data, epochs=epochs, bundle=bundle, echo=typer.echo)
    r, key = metrics["refresh"], metrics["monitor"]

    def value(split: str) -> str:
        v = metrics[split].get(key, {}).get("mean")
        return "-" if v is None else f"{v:.4f}"

    typer.echo(f"refreshed {run_dir} on {metrics['samples'].get('train', 0)} samples since {r['since_utc']} "
               f"(+{r['new']['users']} users, +{r['new']['items']} items); valid {key} {value('valid')} (warm start "
               f"before training: {value('valid_warm_start')}); run directory: {out}"
               + (f"; bundle: {bundle}" if bundle is not None else ""))


@app.command(cls=_Command)
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `modalrec train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    seed: int | None = typer.Option(None, help="Which seed's best checkpoint (default: the run's first seed)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle at --out."),
) -> None:
    """Write a serving bundle: weights, config, vocabularies, item features, history seed, faiss index, manifest."""
    try:
        from .serve.bundle import export_bundle
    except ImportError as e:  # pragma: no cover
        _fail(f"{e}: install the serving extras (pip install 'modalrec[serve]')")
    path = _guard(export_bundle, run_dir, out, seed=seed, overwrite=overwrite)
    typer.echo(f"bundle: {path}")


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@app.command(cls=_Command)
def serve(
    bundle: Path = typer.Argument(..., help="A bundle directory written by `modalrec export`."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    state: str | None = typer.Option(None, help="User state: sqlite:///PATH (default: BUNDLE-state.sqlite "
                                                   "beside the bundle) or redis://HOST:PORT."),
    api_key: str | None = typer.Option(None, envvar="MODALREC_API_KEY", show_envvar=True,
                                          help="Key the write endpoints require (default: a random key, printed)."),
    threads: int = typer.Option(1, min=1, help="Torch threads per request."),
    rate_limit: float | None = typer.Option(None, min=0.001, help="Requests per second per client address "
                                            "(429 with Retry-After above it; /healthz and /metrics exempt). "
                                            "Default: no limit."),
    rate_burst: float | None = typer.Option(None, min=1, help="Burst size of --rate-limit (default: twice the rate)."),
    item_sync: float = typer.Option(1.0, "--item-sync", help="Seconds between looks in the state store for items "
                                    "registered (POST /items) by other service processes sharing it: they become "
                                    "scoreable here within this time, without a restart. 0: look at every "
                                    "request; a negative value: never (they then arrive at a restart)."),
    item_ttl: float | None = typer.Option(None, "--item-ttl", metavar="SECONDS", help="Registered items (POST "
                                          "/items) without their own ttl_s expire this many seconds after their "
                                          "registration: deleted on every process sharing the state store. "
                                          "Default: never."),
    precision: Precision = typer.Option(Precision.fp32, help="Arithmetic of DIN-style activation units over the "
                                        "history: fp32 (the offline scores to 1e-5) or bf16 (about half their time "
                                        "on CPUs with AVX512-BF16 or AMX; logits move by about 1e-4)."),
    segment_workers: int = typer.Option(1, "--segment-workers", min=0, help="Processes encoding the speech of raw "
                                        "segments (POST /segments); one more encodes their frames and comments. "
                                        "0: no raw segments."),
    segment_nice: int = typer.Option(0, "--segment-nice", min=0, max=19, metavar="N", help="Added to the niceness "
                                     "of the segment encoder processes when they start (os.nice): speech "
                                     "recognition then takes the CPU that scoring leaves. 0: the service's priority."),
    segment_queue: int | None = typer.Option(None, "--segment-queue", min=1, metavar="N", help="At most N raw "
                                             "segments wait for a speech worker: beyond N the oldest waiting one is "
                                             "dropped (its segment stays recommendable without speech; counted in "
                                             "/metrics and GET /segments). Whatever N, a room's newer segment "
                                             "replaces its older one still waiting. Default: no bound."),
    live_only: bool = typer.Option(False, "--live-only", help="/recommend returns only registered items of rooms "
                                   "live now (POST /rooms), unless a request sets live_only false."),
) -> None:
    """Serve a bundle over HTTP: POST /events, /items, /items/delete, /segments, /rooms, /recommend, /score;
    DELETE /items/ID; GET /segments, /segments/ID, /rooms, /users/ID (a user's stored events, ?n= default 100), /healthz,
    /metrics, /docs. Request bodies are capped at 1 MiB, 16 MiB for /segments (413 above)."""
    import secrets

    try:
        from .serve.app import serve as run_service
        from .serve.state import StateURLError
    except ImportError as e:  # pragma: no cover
        _fail(f"{e}: install the serving extras (pip install 'modalrec[serve]')")
    if not api_key:
        api_key = secrets.token_urlsafe(24)
        typer.echo(f"no MODALREC_API_KEY set; write endpoints need this key: X-API-Key: {api_key}", err=True)
    try:
        _guard(run_service, bundle, host=host, port=port, state_url=state, api_key=api_key, threads=threads,
               rate_limit=rate_limit, rate_burst=rate_burst, item_sync_s=None if item_sync < 0 else item_sync,
               item_ttl_s=item_ttl, precision=precision.value, segment_workers=segment_workers,
               live_only=live_only, segment_nice=segment_nice, segment_queue=segment_queue)
    except StateURLError as e:
        _fail(str(e))


@app.command(cls=_Command)
def consume(
    redis_url: str = typer.Option(..., "--redis", help="The Redis holding the event stream: redis://HOST:PORT "
                                  "(/DB optional)."),
    state: str = typer.Option(..., help="The user state the service reads (as `serve --state`): sqlite:///PATH or "
                              "redis://HOST:PORT."),
    stream: str = typer.Option("events", help="Stream to read (created when missing); messages that are not valid "
                               "events go to STREAM:dead with the reason."),
    group: str = typer.Option("modalrec", help="Consumer group (created when missing)."),
    consumer: str | None = typer.Option(None, help="This process's name in the group (default: the host name): "
                                        "unique among running consumers, the same across restarts."),
    batch: int = typer.Option(500, min=1, help="Messages per read, append and acknowledgement."),
    claim_idle: float = typer.Option(60.0, "--claim-idle", min=0.001, metavar="SECONDS", help="Entries another "
                                     "consumer left pending this long (it died) are taken over."),
    start: str = typer.Option("0", help="Where a new group starts: 0 (the whole stream) or $ (new entries only)."),
    exit_idle: float | None = typer.Option(None, "--exit-idle", min=0.0, metavar="SECONDS", help="Exit once nothing "
                                           "came for this long (a backfill). Default: run until SIGTERM/SIGINT."),
    bundle: Path | None = typer.Option(None, "--bundle", help="A bundle whose checks events must pass, as POST "
                                       "/events applies them (time range, payload vector dimensions): a failing "
                                       "event is dead-lettered with the same message. Loading it takes seconds."),
) -> None:
    """Move events from a Redis stream (consumer group) into the state store the service reads, beside POST
    /events: each message's field `event` is a JSON event as in POST /events. At least once, stored once:
    acknowledged after the durable append, and event ids (the message id when none) make a redelivery a duplicate.
    SIGTERM/SIGINT: finish the batch, acknowledge, exit; prints the counters."""
    import json

    try:
        from .serve.state import StateURLError
        from .serve.stream import SourceError, bundle_rule
        from .serve.stream import consume as run_consumer
    except ImportError as e:  # pragma: no cover
        _fail(f"{e}: install the serving extras (pip install 'modalrec[serve]')")
    check = None if bundle is None else _guard(bundle_rule, bundle)
    try:
        stats = _guard(run_consumer, redis_url, state, stream=stream, group=group, consumer=consumer, batch=batch,
                       claim_idle_s=claim_idle, start=start, exit_idle_s=exit_idle, check=check)
    except (StateURLError, SourceError) as e:
        _fail(str(e))
    typer.echo(json.dumps(stats))


@app.command("list", cls=_Command)
def list_() -> None:
    """List the registered models, tasks and datasets."""
    from .datasets import DATASETS
    from .models import MODELS
    from .tasks import TASKS

    typer.echo("models:   " + ", ".join(f"{k} ({'/'.join(sorted(v.tasks))})" for k, v in MODELS.items()))
    typer.echo("tasks:    " + ", ".join(TASKS))
    typer.echo("datasets: " + ", ".join(DATASETS))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
