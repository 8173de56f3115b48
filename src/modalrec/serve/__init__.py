"""Serving: bundles (export/load without pickle), online user state, and the HTTP service.

`export_bundle` / `load_bundle` live in `serve.bundle`, the state stores in `serve.state`, the FastAPI
app (`create_app`) and `serve` in `serve.service`. FastAPI, uvicorn and faiss are imported only by
the functions that need them (`pip install modalrec[serve]`).
"""

from .bundle import Bundle, BundleError, export_bundle, load_bundle, verify_bundle
from .state import RedisState, SQLiteState, StateStore, StoredEvent, open_state

__all__ = [
    "Bundle",
    "BundleError",
    "RedisState",
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
    from .service import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args, **kwargs):
    from .service import serve as _serve

    return _serve(*args, **kwargs)
