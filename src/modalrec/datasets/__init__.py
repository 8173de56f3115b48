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

from ..data.errors import DataError, Problem
from ..data.importer import import_dataset
from ..data.interaction import InteractionData
from ..sim import demo
from . import insurance, microlens, movielens


def _default_structure() -> Path:
    env = os.environ.get("MODALREC_INSURANCE_STRUCTURE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "insurance-structure"


def insurance_simulated(structure: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                        seed: int = 0, session_informativeness: float = 0.7,
                        conversation_informativeness: float = 0.7, embed: str = "hash",
                        max_events: int | None = None, embedding_dim: int = 768,
                        refresh: bool = False) -> InteractionData:
    """Semi-synthetic insurance data: `modalrec.sim.insurance.simulate` on the real structure folder
    `structure` (default: $MODALREC_INSURANCE_STRUCTURE, else ../shared/data/insurance-structure next
    to the repository), written once into a cache folder keyed by the parameters and the structure
    files (`cache`, default $MODALREC_CACHE or ~/.cache/modalrec, + insurance_sim/<key>), then read
    with `insurance.load`. The folder is written under a temporary name and renamed, so concurrent
    runs never read a half-written simulation."""
    import hashlib
    import json
    import shutil
    import tempfile

    from ..sim import insurance as sim_insurance

    src = Path(structure) if structure is not None else _default_structure()
    files = [src / insurance.USERS_FILE, src / insurance.PURCHASES_FILE]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: the insurance structure file is missing (give data.params.structure, "
                                    "the folder holding data_users.csv and data_purchase_events.csv)")
    params = {"seed": seed, "session_informativeness": session_informativeness,
              "conversation_informativeness": conversation_informativeness, "embed": embed,
              "max_events": max_events, "embedding_dim": embedding_dim}
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    root = Path(cache) if cache is not None else Path(os.environ.get("MODALREC_CACHE", Path.home() / ".cache"
                                                                                    / "modalrec"))
    folder = root / "insurance_sim" / h.hexdigest()[:16]
    if refresh and folder.exists():
        shutil.rmtree(folder)
    if not (folder / insurance.SIMULATION_MARKER).exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            sim_insurance.simulate(src, tmp, **params)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished first: use its folder
                if not (folder / insurance.SIMULATION_MARKER).exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return insurance.load(folder)


DATASETS: dict[str, Callable[..., InteractionData]] = {
    "movielens": movielens.load,
    "movielens_mm": movielens.load_multimodal,
    "microlens": microlens.load_events,
    "demo": demo.generate,
    "insurance": insurance.load,
    "insurance_sim": insurance_simulated,
}


def _takes_path(loader: Callable[..., InteractionData]) -> bool:
    return "path" in inspect.signature(loader).parameters


def load_dataset(source: str | os.PathLike, path: str | os.PathLike | None = None, **params: Any) -> InteractionData:
    name = str(source)
    if name in DATASETS:
        loader = DATASETS[name]
        if _takes_path(loader):
            if path is None:
                raise DataError(Problem(f"dataset '{name}'", None, "data.path", "the folder of the downloaded files "
                                        f"(see modalrec.datasets.{loader.__module__.rsplit('.', 1)[-1]})", "none"))
            return loader(path, **params)
        if path is not None:
            raise DataError(Problem(f"dataset '{name}'", None, "data.path", "no path (it is generated)",
                                    repr(str(path))))
        return loader(**params)
    if path is not None:
        raise DataError(Problem(name, None, "data.source", f"a registered dataset ({', '.join(sorted(DATASETS))}) "
                                "when data.path is given (otherwise data.source is itself the path)", "unknown name"))
    p = Path(source)
    if p.is_dir():
        return InteractionData.load(p, **params)
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        if params:  # skip_bad_rows would hand back rejected rows that nobody here would report
            raise ValueError(f"an import spec takes no parameters here (got {sorted(params)}); to skip bad "
                             "rows and list them, use modalrec.data.importer.import_dataset(..., skip_bad_rows=True)")
        return import_dataset(p)
    what = "no such file or directory" if not p.exists() else "neither a dataset directory nor a .yaml import spec"
    raise DataError(Problem(name, None, "data.source", f"a registered dataset ({', '.join(sorted(DATASETS))}), "
                            "a directory with a dataset.yaml, or an import spec .yaml", what))


__all__ = ["DATASETS", "load_dataset"]
