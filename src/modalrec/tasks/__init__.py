"""Tasks: what is predicted and how it is judged. One explicit table."""

from ..config import TaskConfig
from ..data.interaction import InteractionData
from .base import PreparedTask, SampleSet, Vocab
from .ctr import CTRTask
from .multilabel import MultiLabelTask
from .topk import TopKTask

TASKS: dict[str, type[PreparedTask]] = {"ctr": CTRTask, "topk": TopKTask, "multilabel": MultiLabelTask}


def prepare_task(data: InteractionData, cfg: TaskConfig) -> PreparedTask:
    return TASKS[cfg.kind](data, cfg)


__all__ = ["TASKS", "CTRTask", "MultiLabelTask", "PreparedTask", "SampleSet", "TopKTask", "Vocab", "prepare_task"]
