"""`modalrec demo` / `make demo`: the main job on built-in data, no downloads, minutes on 2 cores.

The default world is the simulated live-streaming platform (`sim.livestream`, preset `demo` with 2,000
users: ~35k watches, ~700 gifts, 40 streamers): streams
split into segments with real frames (photos + overlays), espeak-ng speech and viewer comments; users
watch, comment, like and sometimes send gifts. The demo
1. simulates it (cached under $MODALREC_CACHE or ~/.cache/modalrec; ~30 s the first time),
2. encodes the raw content with the frozen offline encoders (EfficientNet-Lite0 per frame, MFCC
   statistics per speech clip, MiniLM per comment; cached by content). Speech recognition
   (pocketsphinx) is left out of the demo for time (about 3 s per clip on 2 cores); the benchmark and
   configs/livestream/mmbee.yaml use it;
3. trains the SIM base ranker and MMBee (SIM + MFQ over the watched segment's content + GIE over the
   gifting graphs) on gift-through-rate, and writes runs/demo (MMBee), runs/demo/compare/sim, and
   runs/demo/report.html with both side by side next to the ground-truth ceiling;
4. exports runs/demo/bundle: the serving bundle of the MMBee run, token tables and gifting graphs
   included, so a gift sent to the service changes that user's expansion at the next request
   (`modalrec serve runs/demo/bundle`).

`world="ctr"` runs the earlier click-through demo instead (text items, Popularity/LR/DCNv2/DIN).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from .config import RunConfig
from .eval.report import write_report
from .train.run import train_run

CTR_MODELS = ("popularity", "lr", "dcnv2", "din")
LIVE_ENCODE = {"image": "efficientnet", "audio": ["mfcc"], "text": "minilm"}


DEMO_USERS = 2000  # the demo preset's 40 streamers with 2,000 viewers: ~35k watches, ~700 gifts


def live_config(model: str, epochs: int, preset: str = "demo", n_users: int | None = DEMO_USERS,
                espeak: bool | None = None) -> RunConfig:
    """configs/livestream/{sim,mmbee}.yaml for the demo (speech as MFCC statistics only)."""
    mmbee = model == "mmbee"
    task = {"kind": "ctr", "label_column": "label", "sample_channels": ["watch"],
            "history_channels": ["watch", "gift"], "history_channel_tags": True, "max_history": 50,
            "split": {"method": "global_time", "valid": 0.1, "test": 0.2}, "text_modalities": []}
    if mmbee:
        task |= {"token_modalities": ["frames_emb", "comments_emb"], "max_tokens": 8, "token_scope": "target",
                 "graph": {"enabled": True, "gie": {"pretrain_epochs": 10, "progress": False}}}
        params = {"embed_dim": 32, "use_content": False, "use_item_id": False, "use_user_id": False,
                  "modalities": ["frames_emb", "comments_emb", "speech_mfcc"],
                  "mfq_scope": "target", "top_k": 20, "short_len": 20,
                  "modality_dropout": 0.15, "segment_dropout": 0.1}  # as configs/livestream/mmbee.yaml
    else:
        task |= {"vector_modalities": [], "token_modalities": []}
        params = {"embed_dim": 32, "use_content": False, "use_item_id": False, "top_k": 20, "short_len": 20}
    return RunConfig.model_validate({
        "name": f"demo-live-{model}",
        "data": {"source": "livestream", "params": {"preset": preset} | ({"n_users": n_users} if n_users else {})
                 | ({"espeak": espeak} if espeak is not None else {}),
                 "encode": LIVE_ENCODE},
        "task": task, "model": {"name": model, "params": params},
        "train": {"epochs": epochs, "batch_size": 1024, "lr": 2e-3, "patience": 1},
        "seeds": [0],
    })


def ctr_config(model: str, epochs: int) -> RunConfig:
    return RunConfig.model_validate({
        "name": f"demo-{model}",
        "data": {"source": "demo"},
        "task": {"kind": "ctr", "label_column": "label", "sample_channels": ["impression"],
                 "history_channels": ["impression"], "max_history": 30,
                 "split": {"method": "per_user_time", "valid": 0.1, "test": 0.1}},
        "model": {"name": model},
        "train": {"epochs": epochs, "batch_size": 512, "lr": 2e-3, "patience": 2},
        "seeds": [0],
    })


def _export(run_dir: Path, out: Path) -> None:
    try:  # `modalrec serve runs/demo/bundle`
        from .serve.bundle import export_bundle

        export_bundle(run_dir, out, overwrite=True)
    except ImportError as e:
        warnings.warn(f"serving bundle not written ({e}): install the serving extras, pip install 'modalrec[serve]'")


def run_demo(out: Path = Path("runs/demo"), epochs: int = 3, world: str = "livestream", *, preset: str = "demo",
             n_users: int | None = DEMO_USERS, espeak: bool | None = None) -> Path:
    """The demo job; `preset` / `n_users` size the simulated platform and `espeak` (None: use espeak-ng when
    installed, False: speech as transcripts) chooses the speech modality."""
    out = Path(out)
    if world == "ctr":
        from .sim.demo import generate

        data = generate()
        runs = []
        for model in CTR_MODELS:
            run_dir = out if model == "din" else out / "compare" / model
            train_run(ctr_config(model, epochs), run_dir, data=data, report=False)
            runs.append(run_dir)
        report = write_report(runs, out / "report.html", title="modalrec demo: CTR on the built-in simulated world")
        _export(out, out / "bundle")
        return report
    if world != "livestream":
        raise ValueError(f"unknown demo world '{world}' (livestream or ctr)")
    from .train.run import load_data

    def live(model: str) -> RunConfig:
        return live_config(model, epochs, preset, n_users, espeak)

    # simulate (cached) + encode the content (cached); SIM's config names no content modality to check, MMBee's
    # below follows what the data has (speech as MFCC statistics needs espeak-ng, else it is a transcript)
    data = load_data(live("sim"))
    runs = []
    for model in ("sim", "mmbee"):
        run_dir = out if model == "mmbee" else out / "compare" / model
        cfg = live(model)
        if model == "mmbee":  # without espeak-ng the speech is a transcript: speech_emb instead of speech_mfcc
            have = {m.name for m in data.spec.modalities}
            cfg.model.params["modalities"] = [m for m in ("frames_emb", "comments_emb", "speech_mfcc", "speech_emb")
                                              if m in have]
        train_run(cfg, run_dir, data=data, report=False)
        runs.append(run_dir)
    (out / "ground_truth.json").write_text(json.dumps(_ceiling(data, live("sim")), indent=2))
    report = write_report(runs, out / "report.html",
                          title="modalrec demo: live-stream gift prediction, SIM vs MMBee (simulated platform)")
    _export(out, out / "bundle")
    return report


def _ceiling(data, cfg: RunConfig) -> dict:
    """Test metrics of the simulator's own gift probabilities: what no model can beat in expectation."""
    from .eval.metrics import ctr_metrics
    from .tasks import prepare_task

    task = prepare_task(data, cfg.task)
    s = task.splits["test"]
    p = task.events.take(task.split_rows["test"])["p_true"].to_numpy(zero_copy_only=False).astype(np.float64)
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return {"test_ground_truth": ctr_metrics(s.labels, np.log(p / (1 - p)), s.users)}
