"""The context-feature data of the task tests (a plain function, not a test), also served by the serving tests:
the MMBee tests' live-stream world with per-sample context columns (level, mood, a float level, a split column)
whose valid / test rows hold values never seen in training."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from modalrec.data.interaction import InteractionData
from tests.models import mmbee_helpers as mm

N_TRAIN, N_VALID, N_EVENTS = 100, 30, 160


def context_columns(n: int = N_EVENTS) -> dict[str, pa.Array]:
    """Event-order context values: train rows hold levels {2, 3, 10}, moods {calm, wild}; valid/test rows add
    values never seen in training (7, 99, angry) and empty ones."""
    rng = np.random.default_rng(5)
    level = rng.choice([2, 3, 10], n).astype(object)
    level[5] = None  # an empty value in training
    level[N_TRAIN] = 7  # unseen at valid
    level[N_TRAIN + 1] = None
    level[N_TRAIN + N_VALID] = 99  # unseen at test
    mood = rng.choice(["calm", "wild"], n).astype(object)
    mood[N_TRAIN + 2] = "angry"
    mood[7] = None
    level_f = np.array([float(v) if v is not None else np.nan for v in level])
    split = ["train"] * N_TRAIN + ["valid"] * N_VALID + ["test"] * (n - N_TRAIN - N_VALID)
    return {"level": pa.array(level.tolist(), pa.int64()), "mood": pa.array(mood.tolist(), pa.string()),
            "level_f": pa.array(level_f, pa.float64(), from_pandas=True), "split": pa.array(split, pa.string())}


def make_data(**replace: pa.Array) -> InteractionData:
    base = mm.make_data(N_EVENTS)  # events in time order: rows 0..99 train, 100..129 valid, the rest test
    events = base.events
    cols = {**context_columns(), **replace}
    for name, values in cols.items():
        events = events.append_column(name, values)
    spec = base.spec.model_copy(update={"event_columns": [*base.spec.event_columns, *cols]})
    return InteractionData(spec, events, base.items, None, base.content).validate()
