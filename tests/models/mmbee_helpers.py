"""The tiny live-stream world of the MMBee tests (plain functions, not tests), also read by the context-feature,
refresh and serving tests: 12 segments of 4 streamers with 1..3 frame vectors, 1..5 comment vectors and one MFCC
vector each, every modality missing for some segment and one segment without any content; MMBee's small
parameters, its cases and synthetic GIE expansions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from modalrec.config import TaskConfig
from modalrec.data.batch import GraphInputs
from modalrec.data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec
from modalrec.tasks import CTRTask

N_SEG, N_STREAMERS, N_USERS = 12, 4, 6
FRAMES_ABSENT, COMMENTS_ABSENT, MFCC_ABSENT = {2, 7}, {3, 7, 9}, {5, 7}
NO_CONTENT = 7  # absent in every modality
D_FRAME, D_COMMENT, D_MFCC = 6, 4, 3


def seg_id(i: int) -> str:
    return f"a{i % N_STREAMERS:04d}/r0/g{i}"


def frame_vectors(i: int) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    return rng.normal(size=(1 + i % 3, D_FRAME)).astype(np.float32)  # 1..3 frames


def comment_vectors(i: int) -> np.ndarray:
    rng = np.random.default_rng(200 + i)
    return rng.normal(size=(1 + i % 5, D_COMMENT)).astype(np.float32)  # 1..5 comments


def make_data(n_events: int = 160, seed: int = 0, frames: pa.Table | None = None) -> InteractionData:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, n_events)
    segs = rng.integers(0, N_SEG, n_events)
    events = pa.table({
        "user_id": [f"u{u:05d}" for u in users], "item_id": [seg_id(s) for s in segs],
        "time": pa.array(np.sort(rng.integers(0, 10**6, n_events)), pa.int64()),
        "channel": ["watch"] * n_events, "label": (rng.random(n_events) < 0.4).astype(np.float64),
    })
    items = pa.table({
        "item_id": [seg_id(i) for i in range(N_SEG)],
        "streamer_id": [f"a{i % N_STREAMERS:04d}" for i in range(N_SEG)],
        "category": [["gaming", "singing", "chatting"][i % 3] for i in range(N_SEG)],
        "room_id": ["r0"] * N_SEG, "start_time": pa.array(np.arange(N_SEG) * 60, pa.int64()),
    })
    return InteractionData(live_spec("tiny_livestream", ["watch"]), events, items, None,
                           content_tables(N_SEG, seg_id, (FRAMES_ABSENT, COMMENTS_ABSENT, MFCC_ABSENT), frames))


def content_tables(n_seg: int, name_of, absent: tuple[set, set, set], frames: pa.Table | None = None
                   ) -> dict[str, pa.Table]:
    """frames_emb / comments_emb (lists of vectors) and speech_mfcc of segments 0..n_seg-1 named by `name_of`,
    leaving out the segments in `absent` (frames, comments, mfcc); `frames` replaces the frame table."""
    vec, vec_list = pa.list_(pa.float32()), pa.list_(pa.list_(pa.float32()))

    def table(skip: set, vector, kind: pa.DataType) -> pa.Table:
        keep = [i for i in range(n_seg) if i not in skip]
        return pa.table({"entity_id": [name_of(i) for i in keep], "vector": pa.array([vector(i) for i in keep], kind)})

    frames_absent, comments_absent, mfcc_absent = absent
    if frames is None:
        frames = table(frames_absent, lambda i: frame_vectors(i).tolist(), vec_list)
    return {"frames_emb": frames,
            "comments_emb": table(comments_absent, lambda i: comment_vectors(i).tolist(), vec_list),
            "speech_mfcc": table(mfcc_absent, lambda i: list(np.full(D_MFCC, i / 10, np.float32)), vec)}


def live_spec(name: str, channels: list[str]) -> DatasetSpec:
    """The tiny live-stream spec: streamer and category features, frames / comments (token lists), MFCC."""
    return DatasetSpec(
        name=name, channels=channels,
        item_features=[FeatureSpec(name="streamer_id", kind="categorical"),
                       FeatureSpec(name="category", kind="categorical")],
        modalities=[ModalitySpec(name="frames_emb", kind="vector", dim=D_FRAME, multi=True),
                    ModalitySpec(name="comments_emb", kind="vector", dim=D_COMMENT, multi=True),
                    ModalitySpec(name="speech_mfcc", kind="vector", dim=D_MFCC)],
        event_columns=["label"],
    )


def task_config(**kw) -> TaskConfig:
    return TaskConfig(kind="ctr", max_history=8, split={"valid": 0.0, "test": 0.0}, **kw)


SMALL = {"embed_dim": 8, "top_k": 3, "short_len": 2, "attention_hidden": [8], "mlp_hidden": [16],
         "mfq_dim": 8, "mfq_queries": 2, "gie_dim": 8, "dropout": 0.0}
K_GIE = 3


def params(**kw) -> dict:
    return {**SMALL, **kw}


def add_gie(batch, task: CTRTask, seed: int = 0):
    """Synthetic graph expansions: K streamers per sample, some slots padding (index 0, junk weight)."""
    rng = np.random.default_rng(seed)
    n_codes = task.schema.item_categorical["streamer_id"]
    B = batch.size
    parts = {}
    for key in ("user", "target"):  # the user's U->A->A expansion, the target streamer's A->U->A one
        idx = rng.integers(1, n_codes, (B, K_GIE))
        idx[rng.random((B, K_GIE)) < 0.3] = 0
        idx[0] = 0  # a sample with no expansion at all
        w = rng.random((B, K_GIE)).astype(np.float32) + 0.05
        w[idx == 0] = 0.0
        parts[key] = torch.from_numpy(idx)
        parts[f"{key}_w"] = torch.from_numpy(w)
    batch.graph = GraphInputs(**parts)
    return batch


def train_batch(task: CTRTask, seed: int = 0):
    s = task.splits["train"]
    return add_gie(task.collate(s, train=True), task, seed)


CASES = [
    ("mmbee", params()),
    ("mmbee", params(use_gie=False)),  # MFQ only
    ("mmbee", params(use_mfq=False)),  # GIE only
    ("mmbee", params(use_mfq=False, use_gie=False)),  # SIM
    ("mmbee", params(modalities=["frames_emb"])),  # one modality at a time
    ("mmbee", params(modalities=["speech_mfcc"], use_gie=False)),  # a dense vector as a 1-token sequence
    ("mmbee", params(streamer_conditioned=False, decorrelate=False, mfq_pool="mean", search="soft",
                     gie_query_user=False, mfq_layers=2)),
]
