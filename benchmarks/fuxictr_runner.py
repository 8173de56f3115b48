"""Trains one FuxiCTR model on the data that `ctr_vs_fuxictr.py` exported; runs INSIDE the FuxiCTR venv.

Usage (the benchmark calls it; not meant to be run by hand):
    benchmarks/.venvs/fuxictr/bin/python benchmarks/fuxictr_runner.py SPEC.json

SPEC.json (written by ctr_vs_fuxictr.py) holds the data folder, the model name and its parameters,
epochs, batch size, seed, torch threads, DataLoader workers and the output folder.

The models are the DIN and DCNv2 that the `fuxictr==2.3.10` wheel ships (`model_zoo/LongCTR`), fed
through the wheel's own `LongCTRDataLoader`: sample rows (user_index, item_index, seq_len, user_id,
label), one full item sequence per user (`user_info.parquet`, row = user_index) and one feature row
per item (`item_info.parquet`, row = item_index, row 0 = padding). The loader cuts each user's
sequence at `seq_len` and keeps the last `max_len` items, exactly the history modalrec builds. The
flow is the one of the wheel's `model_zoo/LongCTR/run_expid.py` (FeatureProcessor + build_dataset
with `rebuild_dataset: False` because the files are already integer-encoded, FeatureMap,
RankDataLoader with `data_loader = LongCTRDataLoader`, `model.fit`), without its os.chdir and logs.

What is measured, and how:
- train samples/s: training samples / wall seconds of the training loop only. `BaseModel.fit` runs
  `train_epoch` per epoch, and `train_epoch` calls `eval_step` (validation + checkpoint + early
  stopping) at the end of each epoch from inside its loop. We wrap the instance's `train_epoch`
  and `eval_step` with timers: train seconds = sum(train_epoch) - sum(eval_step). So the batches'
  loading/collation (in the DataLoader workers or in-process) is counted, validation is not, the
  same split as modalrec's Trainer, which times its epoch loop and evaluates outside it.
  Samples are counted per `train_step` call (labels in the batch).
- eval seconds: `model.predict` over the test loader (best weights restored by `fit`), data loading
  included; the predictions are written to `pred_test.npy` and scored by the caller.
- train samples per CPU second: the same samples over the user+system CPU seconds of the same
  span (this process + its finished DataLoader workers): less sensitive to a busy machine than
  wall time.
- peak RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end (this process), plus
  RUSAGE_CHILDREN (the largest DataLoader worker) reported separately.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path


def _rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children (DataLoader workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _feature_cols(spec: dict) -> list[dict]:
    """FuxiCTR feature specs for the exported, already integer-encoded files."""
    d = spec["data"]
    cols = [
        {"name": ["user_index", "item_index", "seq_len"], "active": True, "dtype": "int", "type": "meta",
         "remap": False},
        {"name": "user_id", "active": True, "dtype": "int", "type": "categorical", "source": "user",
         "vocab_size": d["n_users"] + 1},
        {"name": "item_id", "active": True, "dtype": "int", "type": "categorical", "source": "item",
         "vocab_size": d["n_items"] + 1},
    ]
    for name, size in d["item_categorical"].items():
        cols.append({"name": name, "active": True, "dtype": "int", "type": "categorical", "source": "item",
                     "vocab_size": size + 1})
    for name, (size, width) in d["item_multi"].items():
        # a multi-valued item feature: embedded then mean-pooled over its non-padding values
        cols.append({"name": name, "active": True, "dtype": "str", "type": "sequence", "source": "item",
                     "vocab_size": size + 1, "max_len": width,
                     "feature_encoder": "layers.MaskedAveragePooling()"})
    for name, dim in d.get("item_pretrained", {}).items():
        # a frozen content vector per item, looked up by item index and projected to embedding_dim
        cols.append({"name": name, "active": True, "dtype": "int", "type": "categorical", "source": "item",
                     "vocab_size": d["n_items"] + 1, "pretrained_emb": d["pretrained_files"][name],
                     "pretrain_dim": dim, "freeze_emb": True, "pretrain_usage": "init"})
    return cols


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    from fuxictr import __version__ as fuxictr_version
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything
    from model_zoo.LongCTR import DIN, DCNv2
    from model_zoo.LongCTR.longctr_dataloader import LongCTRDataLoader

    rss_import = _rss_mb()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    models = {"din": DIN, "dcnv2": DCNv2}
    data_dir = spec["data"]["dir"]
    params = {
        # Base section of the LongCTR configs
        "model_root": str(out / "checkpoints"), "num_workers": spec["workers"], "verbose": 0,
        "early_stop_patience": spec["patience"], "pickle_feature_encoder": True, "save_best_only": True,
        "eval_steps": None, "debug_mode": False, "group_id": None, "use_features": None, "feature_specs": None,
        # dataset section
        "dataset_id": spec["dataset_id"], "data_root": str(Path(data_dir).parent), "data_format": "parquet",
        "train_data": f"{data_dir}/train.parquet", "valid_data": f"{data_dir}/valid.parquet",
        "test_data": f"{data_dir}/test.parquet", "user_info": f"{data_dir}/user_info.parquet",
        "item_info": f"{data_dir}/item_info.parquet", "rebuild_dataset": False,
        "feature_cols": _feature_cols(spec), "label_col": {"name": "label", "dtype": "float"},
        # experiment section
        "model": spec["fuxictr_model"], "loss": "binary_crossentropy", "metrics": ["AUC", "logloss"],
        "task": "binary_classification", "optimizer": "adam", "learning_rate": spec["lr"],
        "embedding_regularizer": 0, "net_regularizer": 0, "batch_size": spec["batch_size"],
        "epochs": spec["epochs"], "shuffle": True, "seed": spec["seed"], "monitor": "AUC", "monitor_mode": "max",
        "max_len": spec["max_len"], "padding": "pre", "accumulation_steps": 1, "gpu": -1,
        **spec["params"],
    }
    seed_everything(seed=params["seed"])
    feature_encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(feature_encoder, **params)
    feature_map = FeatureMap(params["dataset_id"], feature_encoder.data_dir)
    feature_map.load(os.path.join(feature_encoder.data_dir, "feature_map.json"), params)
    model = models[spec["model"]](feature_map, **params)
    os.makedirs(model.model_dir, exist_ok=True)  # run_expid leaves this to FuxiCTR's set_logger
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    params["data_loader"] = LongCTRDataLoader
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)

    clock = {"epoch": 0.0, "eval": 0.0, "epoch_cpu": 0.0, "eval_cpu": 0.0, "samples": 0, "epochs": 0}
    train_epoch, eval_step, train_step = model.train_epoch, model.eval_step, model.train_step

    def timed_train_epoch(gen):
        t0, c0 = time.perf_counter(), _cpu_s()
        try:
            return train_epoch(gen)
        finally:
            clock["epoch"] += time.perf_counter() - t0
            clock["epoch_cpu"] += _cpu_s() - c0
            clock["epochs"] += 1

    def timed_eval_step():
        t0, c0 = time.perf_counter(), _cpu_s()
        try:
            return eval_step()
        finally:
            clock["eval"] += time.perf_counter() - t0
            clock["eval_cpu"] += _cpu_s() - c0

    def counted_train_step(batch):
        clock["samples"] += int(batch[0]["label"].shape[0])
        return train_step(batch)

    model.train_epoch, model.eval_step, model.train_step = timed_train_epoch, timed_eval_step, counted_train_step
    model.fit(train_gen, validation_data=valid_gen, **params)
    train_s = clock["epoch"] - clock["eval"]
    train_cpu = clock["epoch_cpu"] - clock["eval_cpu"]

    test_gen = RankDataLoader(feature_map, stage="test", **params)
    t0 = time.perf_counter()
    pred = model.predict(test_gen)
    eval_s = time.perf_counter() - t0
    np.save(out / "pred_test.npy", np.asarray(pred, dtype=np.float64))

    # The first test batch as the model sees it, for the caller's row-by-row feature check.
    batch_dict, item_dict, mask = next(iter(RankDataLoader(feature_map, stage="test", **{**params, "num_workers": 0})))
    b = mask.shape[0]
    np.savez(out / "first_test_batch.npz", user_id=batch_dict["user_id"].numpy(),
             label=batch_dict["label"].numpy(), mask=mask.numpy(),
             **{f"item:{k}": v.numpy().reshape(b, mask.shape[1] + 1, *v.shape[1:]) for k, v in item_dict.items()})

    result = {
        "library": "fuxictr", "version": fuxictr_version, "torch": torch.__version__,
        "model": spec["model"], "model_class": f"model_zoo.LongCTR.{spec['fuxictr_model']}",
        "trainable_params": n_params, "torch_threads": torch.get_num_threads(), "loader_workers": spec["workers"],
        "train_samples": clock["samples"], "train_seconds": train_s, "epochs_trained": clock["epochs"],
        "validation_seconds": clock["eval"], "train_cpu_seconds": train_cpu,
        "train_samples_per_cpu_s": clock["samples"] / train_cpu if train_cpu > 0 else None,
        "train_samples_per_s": clock["samples"] / train_s if train_s > 0 else None,
        "eval_seconds": eval_s, "test_rows": len(pred),
        "rss_after_import_mb": rss_import, "peak_rss_mb": _rss_mb(),
        "peak_rss_children_mb": _rss_mb(resource.RUSAGE_CHILDREN),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    main(sys.argv[1])
