"""Checkpoints without pickle: tensors in safetensors, everything else in JSON; written atomically.

A checkpoint is `NAME.safetensors` (model weights under `model.`, optimizer tensors under
`optim.<param>.<key>`, RNG state under `rng.torch`) plus `NAME.json` (epoch, history, early-stopping
and scheduler state, optimizer hyper-parameters). Each file is written to a temporary name and
renamed, and the JSON (which names the epoch) is renamed last, so a reader never sees a torn pair.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return {"__float__": repr(x)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.item()
    return x


def _from_json(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__float__"}:
            return float(x["__float__"])
        return {k: _from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    return x


def save_checkpoint(directory: Path, name: str, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, state: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"state": state or {}}
    if optimizer is not None:
        osd = optimizer.state_dict()
        scalars: dict[str, dict] = {}
        for pid, pstate in osd["state"].items():
            for key, val in pstate.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[key] = val
        meta["optimizer"] = {"param_groups": osd["param_groups"], "scalars": scalars}
    tensors["rng.torch"] = torch.get_rng_state()
    st = directory / f"{name}.safetensors"
    _atomic_write_bytes(st, lambda p: save_file(tensors, str(p)))
    js = directory / f"{name}.json"
    _atomic_write_bytes(js, lambda p: p.write_text(json.dumps(_jsonable(meta), indent=1)))
    return js


def load_checkpoint(directory: Path, name: str, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> dict:
    tensors = load_file(str(directory / f"{name}.safetensors"))
    meta = _from_json(json.loads((directory / f"{name}.json").read_text()))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None and "optimizer" in meta:
        state: dict[int, dict] = {}
        for key, val in tensors.items():
            if key.startswith("optim."):
                _, pid, k = key.split(".", 2)
                state.setdefault(int(pid), {})[k] = val
        for pid, sc in meta["optimizer"]["scalars"].items():
            state.setdefault(int(pid), {}).update(sc)
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    if restore_rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return meta["state"]


def has_checkpoint(directory: Path, name: str) -> bool:
    return (directory / f"{name}.json").exists() and (directory / f"{name}.safetensors").exists()
