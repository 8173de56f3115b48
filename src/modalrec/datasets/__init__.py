"""Dataset sources: one explicit table of names, plus saved directories and import specs.

`load_dataset(source, path=None, **params)` accepts
- a registered name (`DATASETS`): loaders that read raw files take `path` (the folder of the
  download); generators (`demo`) take only their parameters;
- a directory holding a `dataset.yaml`: a saved `InteractionData` (`InteractionData.load`);
- a `.yaml` / `.yml` import spec: your own CSV/Parquet files (`modalrec.data.importer`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.importer import import_dataset
from ..data.interaction import InteractionData
from ..sim import demo
from . import movielens

DATASETS: dict[str, Callable[..., InteractionData]] = {
    "movielens": movielens.load,
    "demo": demo.generate,
}


def _takes_path(loader: Callable[..., InteractionData]) -> bool:
    return "path" in inspect.signature(loader).parameters


def load_dataset(source: str | os.PathLike, path: str | os.PathLike | None = None, **params: Any) -> InteractionData:
    name = str(source)
    if name in DATASETS:
        loader = DATASETS[name]
        if _takes_path(loader):
            if path is None:
                raise ValueError(f"dataset '{name}' reads downloaded files: give `path` (the folder that holds "
                                 f"them; see modalrec.datasets.{loader.__module__.rsplit('.', 1)[-1]})")
            return loader(path, **params)
        if path is not None:
            raise ValueError(f"dataset '{name}' is generated and takes no `path` (got {str(path)!r})")
        return loader(**params)
    if path is not None:
        raise ValueError(f"`path` is only for registered datasets ({', '.join(DATASETS)}); the source "
                         f"{name!r} is itself a path")
    p = Path(source)
    if p.is_dir():
        return InteractionData.load(p, **params)
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        if params:  # skip_bad_rows would hand back rejected rows that nobody here would report
            raise ValueError(f"an import spec takes no parameters here (got {sorted(params)}); to skip bad "
                             "rows and list them, use modalrec.data.importer.import_dataset(..., skip_bad_rows=True)")
        return import_dataset(p)
    what = "no such file or directory" if not p.exists() else "neither a dataset directory nor a .yaml import spec"
    raise ValueError(f"unknown dataset source {name!r} ({what}). Choose a registered dataset "
                     f"({', '.join(sorted(DATASETS))}), a directory with a dataset.yaml, or an import spec .yaml")


__all__ = ["DATASETS", "load_dataset"]
