"""Tasks: what is predicted and how it is judged. One explicit table."""

from pathlib import Path

from ..config import TaskConfig
from ..data.interaction import InteractionData
from .base import PreparedTask, SampleSet
from .ctr import CTRTask
from .multilabel import MultiLabelTask
from .topk import TopKTask

TASKS: dict[str, type[PreparedTask]] = {"ctr": CTRTask, "topk": TopKTask, "multilabel": MultiLabelTask}


def prepare_task(data: InteractionData, cfg: TaskConfig, out: str | Path | None = None, engine=None) -> PreparedTask:
    """Splits the data, fits the feature pipeline on the training period and builds the samples; `out` (RUN/data):
    write the prepared arrays there, memory-mapped (data of many partitions); `engine`: how per-partition steps
    are mapped (`tasks.engine`)."""
    check_channels(data, cfg)
    if cfg.kind == "ctr":
        return CTRTask(data, cfg, out=out, engine=engine)
    if getattr(data, "n_partitions", 1) > 1:
        # a clean error (the CLI prints it as one line): only the ctr task prepares partition by partition
        raise ValueError(f"task.kind '{cfg.kind}': prepared from one events table, but this dataset is "
                         f"partitioned ({data.n_partitions} partitions under events/); only the ctr task reads "
                         "partitions. Import it without --partitions (or partitions: 1) for this task")
    return TASKS[cfg.kind](data, cfg)


def check_channels(data: InteractionData, cfg: TaskConfig) -> None:
    """Every channel the task names is one the dataset declares (a typo would otherwise read as no events)."""
    from ..data.errors import DataError, Problem

    declared = list(data.spec.channels)
    named = {"task.sample_channels": cfg.sample_channels or [], "task.history_channels": cfg.history_channels or []}
    if cfg.graph.enabled:
        named["task.graph.channel"] = [cfg.graph.channel]
    named["task.event_text"] = [t.channel for t in cfg.event_text]
    problems = [Problem(key, None, None, f"channels of dataset '{data.spec.name}' ({', '.join(declared)})",
                        f"'{ch}', which it does not declare")
                for key, chans in named.items() for ch in chans if ch not in declared]
    if problems:
        raise DataError(problems)


def load_task(run_dir: str | Path, cfg: TaskConfig, hashes: dict | None = None) -> PreparedTask:
    """The prepared task of a run directory, from RUN/pipeline/ and RUN/data/ only (no raw data)."""
    return TASKS[cfg.kind].load(run_dir, cfg, hashes)


__all__ = ["TASKS", "CTRTask", "MultiLabelTask", "PreparedTask", "SampleSet", "TopKTask", "load_task",
           "prepare_task"]
