"""Serving: bundles (export/load without pickle), online user state, and the HTTP service.

Modules, each one thing: `bundle` (export and load), `scoring` (sequences, batches through the bundle's feature
pipeline, the model in serving mode), `registry` and `tables` (items registered after export), `retrieval`
(candidates), `state` / `state_redis` (user state stores), `schemas` (the API's types), `ops` (metrics, rate
limit, locks, the API key), `app` (the HTTP routes), `docs` (offline Swagger UI). No module names a model:
models declare how they serve (`Model.prepare_serving`). FastAPI, uvicorn and faiss are imported only by the
functions that need them (`pip install modalrec[serve]`).
"""

from .bundle import Bundle, BundleError, export_bundle, load_bundle, verify_bundle
from .state import SQLiteState, StateStore, StoredEvent, open_state

__all__ = [
    "Bundle",
    "BundleError",
    "SQLiteState",
    "StateStore",
    "StoredEvent",
    "create_app",
    "export_bundle",
    "load_bundle",
    "open_state",
    "serve",
    "verify_bundle",
]


def create_app(*args, **kwargs):
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args, **kwargs):
    from .app import serve as _serve

    return _serve(*args, **kwargs)
