"""Serving: bundles (export/load without pickle), online user state, and the HTTP service.

Modules, each one thing: `bundle` (export and load), `scoring` (sequences, batches through the bundle's feature
pipeline, the model in serving mode), `registry` and `tables` (items registered after export), `retrieval`
(candidates), `state` / `state_redis` (user state stores), `schemas` (the API's types), `ops` (metrics, rate
limit, locks, the API key), `content` and `segments` (raw segment content encoded as training did, registered
progressively), `rooms` (live rooms), `stream` (events from a Redis stream), `app` (the HTTP routes), `docs`
(offline Swagger UI). No module names a model: models declare how they serve (`Model.prepare_serving`). FastAPI,
uvicorn and faiss are imported only by the functions that need them (`pip install modalrec[serve]`).

The package imports its modules on first use (`modalrec.serve.load_bundle` loads torch then), so a light module
(`serve.stream`, `serve.state`) starts without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Bundle": "bundle", "BundleError": "bundle", "export_bundle": "bundle", "load_bundle": "bundle",
    "verify_bundle": "bundle", "SQLiteState": "state_sqlite", "StateStore": "state", "StoredEvent": "state",
    "open_state": "state",
}

__all__ = [  # noqa: RUF022 - grouped by module
    "Bundle", "BundleError", "export_bundle", "load_bundle", "verify_bundle", "SQLiteState", "StateStore", "StoredEvent",
    "open_state", "create_app", "serve",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def create_app(*args, **kwargs):
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args, **kwargs):
    from .app import serve as _serve

    return _serve(*args, **kwargs)
