"""Dataset sources: one explicit table of names, plus saved directories and import specs.

`load_dataset(source, path=None, **params)` accepts
- a registered name (`DATASETS`): loaders that read raw files take `path` (the folder of the
  download); generators (`demo`, `livestream`) take only their parameters;
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
from . import insurance, kuailive, microlens, movielens, taobao


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


def livestream(n_users: int | None = None, n_streamers: int | None = None, days: int | None = None,
               seed: int = 0, preset: str | None = None, missing: dict[str, float] | None = None,
               content_signal: float = 1.0, hot_rate: float = 0.08, espeak: bool | None = None,
               gift_rate: float = 0.02, segment_minutes: int = 5, cold_streamers: float = 0.1,
               cold_users: float = 0.1, watch_affinity: float | None = None, communities: int | None = None,
               gift_affinity: float | None = None, gift_loyalty: float = 0.0, cache: str | os.PathLike | None = None,
               refresh: bool = False, progress: bool = False, items: str = "segments") -> InteractionData:
    """The simulated live-streaming world (`modalrec.sim.livestream.generate`, parameters as there), written
    once into a cache folder keyed by the resolved parameters (`cache`, default $MODALREC_CACHE or
    ~/.cache/modalrec, + livestream/<key>/data, its media next to it in livestream/<key>/media), then read
    with `InteractionData.load`. The data folder is written under a temporary name and renamed, so
    concurrent runs never read a half-written world; media files are content-addressed and each written
    atomically, so a run that finds its media deleted simply draws them again. `items`: "segments" (the
    simulator's items) or "rooms" (`datasets.livestream_rooms`: items are live rooms, events name the room)."""
    import shutil
    import tempfile

    from ..sim import livestream as sim_live

    params = sim_live.resolve_params(n_users, n_streamers, days, seed, preset, missing, content_signal,
                                     hot_rate, gift_rate, segment_minutes, cold_streamers, cold_users, espeak,
                                     sim_live.WATCH_AFFINITY if watch_affinity is None else watch_affinity,
                                     communities, sim_live.GIFT.affinity if gift_affinity is None else gift_affinity,
                                     gift_loyalty)
    if items not in ("segments", "rooms"):
        raise ValueError(f"livestream: items is 'segments' or 'rooms', got {items!r}")
    if items == "rooms":  # the same world, viewed as rooms (the segments world is cached as usual)
        from .livestream_rooms import rooms_view

        return rooms_view(livestream(
            n_users=n_users, n_streamers=n_streamers, days=days, seed=seed, preset=preset, missing=missing,
            content_signal=content_signal, hot_rate=hot_rate, espeak=espeak, gift_rate=gift_rate,
            segment_minutes=segment_minutes, cold_streamers=cold_streamers, cold_users=cold_users,
            watch_affinity=watch_affinity, communities=communities, gift_affinity=gift_affinity,
            gift_loyalty=gift_loyalty, cache=cache, refresh=refresh, progress=progress), params)
    root = Path(cache) if cache is not None else sim_live.cache_root()
    base = root / "livestream" / sim_live.cache_key(params)
    folder = base / "data"
    if refresh and folder.exists():
        shutil.rmtree(folder)
    if (folder / "dataset.yaml").exists():
        data = InteractionData.load(folder)
        if not _missing_media(data):
            return data
        # the media cache was cleared: the same parameters draw the same files at the same paths
        return sim_live.simulate(params, base / "media", progress)
    data = sim_live.simulate(params, base / "media", progress)
    tmp = Path(tempfile.mkdtemp(prefix="data.", dir=base))
    try:
        data.save(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: its folder holds the same data
            if not (folder / "dataset.yaml").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return data


def _missing_media(data: InteractionData) -> bool:
    import pyarrow.compute as pc

    for m in data.spec.modalities:
        if m.kind not in ("image", "audio") or m.name not in data.content:
            continue
        paths = data.content[m.name]["path"]
        if m.multi:
            paths = pc.list_flatten(paths)
        if any(not os.path.exists(p) for p in pc.unique(paths).to_pylist()):
            return True
    return False


DATASETS: dict[str, Callable[..., InteractionData]] = {
    "movielens": movielens.load,
    "movielens_mm": movielens.load_multimodal,
    "microlens": microlens.load_events,
    "kuailive": kuailive.load,
    "taobao": taobao.load,
    "movielens_multichannel": movielens.load_multichannel,
    "demo": demo.generate,
    "insurance": insurance.load,
    "insurance_sim": insurance_simulated,
    "livestream": livestream,
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
            out = loader(path, **params)
            if not isinstance(out, InteractionData):  # e.g. skip_bad_rows without rejected_file
                raise DataError(Problem(f"dataset '{name}'", None, "data.params", "parameters under which the "
                                        "loader returns the data alone (with skip_bad_rows, give rejected_file)",
                                        type(out).__name__))
            return out
        if path is not None:
            raise DataError(Problem(f"dataset '{name}'", None, "data.path", "no path (it is generated)",
                                    repr(str(path))))
        return loader(**params)
    if path is not None:
        raise DataError(Problem(name, None, "data.source", f"a registered dataset ({', '.join(sorted(DATASETS))}) "
                                "when data.path is given (otherwise data.source is itself the path)", "unknown name"))
    p = Path(source)
    if p.is_dir() and (p / "events").is_dir() and not (p / "events.parquet").exists():
        from ..data.partitioned import PartitionedData  # events/part-*.parquet: read one partition at a time

        if params:
            raise DataError(Problem(name, None, "data.params", "no parameters for a partitioned dataset",
                                    ", ".join(sorted(params))))
        return PartitionedData.load(p)
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
