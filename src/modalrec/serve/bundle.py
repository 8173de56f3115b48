"""A serving bundle: everything the service needs from a run, in files that load without pickle.

`export_bundle(run_dir, out)` rebuilds the run's task from its data (vocabularies, item side table
and behaviour histories are functions of the data and the task config), loads the chosen seed's best
checkpoint and writes:

    manifest.json              format version, provenance, retrieval settings, sha256 + size of every file
    config.yaml                the run's fully resolved config
    schema.json                model Schema (plain fields; item_tokens as [T, dim] lists), collator settings
                               (max_history, with_time, token_scope), history channels, graph settings
    schema.safetensors         Schema arrays (item_counts, item_positive_rate, user_counts, ...) and array
                               dicts as `field.key` (graph_init.streamer, graph_init.user)
    model.safetensors          model weights (state_dict)
    vocab_users.json           raw user ids; the id at position i has index i + 1 (0 = unknown)
    vocab_items.json           raw item ids, same convention
    vocab_context.json         (models with per-sample context features) each feature's raw values, code i + 1
    vocab_item_features.json   (items with side features) how raw item feature values become the codes of
                               item_side: "categorical" feature -> raw values (code i + 1), "numeric" feature
                               -> quantile bucket edges (code searchsorted(edges, v, right) + 1, null: every
                               code 0), "multi" feature -> raw values or words (code i + 1), "text" modality
                               -> its bag-of-words multi feature; what `POST /items` maps new items through
    item_side.safetensors      the ItemSide arrays: categorical.*, multi.*, dense.* (the content
                               vectors), presence.* (True where a modality is present), tokens.* and
                               token_mask.* (the token tables of multi-valued content, dtype kept)
    history.safetensors        seed state: every known user's last max_history history events (CSR:
                               ptr, items, times), so known users are not cold at first start
    item_vectors.safetensors   one retrieval vector per item index (row 0 = padding, zero)
    items.faiss                faiss inner-product index over the L2-normalised vectors of rows 1..n-1
                               (faiss' own binary format, written by faiss.write_index; no pickle)
    graph/gie.safetensors      with task.graph.enabled (MMBee's GIE): the fitted GraphExpansion
    graph/gie.json             (GraphExpansion.save: expansions, Swing A2A graph, embeddings; config)
    graph/gifts.safetensors    the training-period gift totals per (user, streamer) (CSR by user: indptr,
                               streamers, totals), from which the service recomputes a user's U->A->A
                               expansion when new gifts arrive (`graph.gie.OnlineExpansion`)

`load_bundle(path)` verifies every hash first and names the file that does not match; then it reads
only safetensors, JSON, YAML (safe_load) and the faiss index. Format version 2 added the token tables,
item_tokens / graph_init, token_scope and graph/; version-1 bundles (which have none of them) still load.
vocab_item_features.json is optional (bundles exported before it load, and serve everything but the
categorical and multi-valued features of items registered through `POST /items`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file as load_pt
from safetensors.torch import save_file as save_pt

from .. import __version__
from ..config import RunConfig, dump_config
from ..data.batch import History, ItemSide
from ..data.errors import DataError, Problem
from ..graph.gie import GraphExpansion, OnlineExpansion, gift_totals
from ..graph.swing import CSR
from ..models import build_model
from ..models.base import Model, Schema
from ..nn.item_encoder import ItemEncoder
from ..tasks.base import Vocab

log = logging.getLogger("modalrec.serve")
FORMAT = "modalrec-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
GRAPH_DIR = "graph"
GIFTS_FILE = "gifts.safetensors"
ITEM_FEATURES_FILE = "vocab_item_features.json"
SERVABLE_TASKS = ("ctr", "topk")
# Flat exact search up to this many items (a few ms at 1M x 64 would already be too slow); HNSW above.
FLAT_INDEX_MAX_ITEMS = 200_000


class BundleError(DataError):
    """A bundle (or the run it is exported from) is missing, corrupt or not servable."""

    def __init__(self, file: str | Path, expected: str, found: str | None = None):
        super().__init__(Problem(str(file), None, None, expected, found))


@dataclass
class Bundle:
    path: Path
    manifest: dict
    config: RunConfig
    schema: Schema
    model: Model
    user_vocab: Vocab
    item_vocab: Vocab
    item_side: ItemSide
    history: History  # seed histories, indexed by user index
    max_history: int
    with_time: bool
    history_channels: list[str] | None  # channels whose events the ranker reads (None: every channel)
    item_vectors: np.ndarray | None  # (n_items, d) float32, L2-normalised rows, row 0 zero
    index: object | None  # faiss index over rows 1..n-1 (faiss id = item index - 1)
    popular: np.ndarray  # item indices, most popular first (cold-start candidates)
    token_scope: str = "all"  # the Collator's: which items get their token tables joined
    # per-sample context features (task.context_features): raw value (as a string) -> code, per feature
    context_vocab: dict[str, Vocab] = dataclasses.field(default_factory=dict)
    graph: ServingGraph | None = None  # MMBee's GIE (task.graph.enabled), else None
    # raw item feature values -> item_side codes (vocab_item_features.json); None: a bundle exported before it
    item_features: ItemFeatureVocab | None = None

    @property
    def task(self) -> str:
        return self.schema.task

    @property
    def model_name(self) -> str:
        return self.config.model.name


@dataclass
class ServingGraph:
    """What the service needs of the task's graph expansion: the fitted tables (the batch fields gie_*),
    the online U->A->A recomputation, and how gift events map onto the graph."""

    online: OnlineExpansion
    channel: str  # events of this channel are gifts (the U2A edges)
    streamer_feature: str
    streamer_code: np.ndarray  # (n_items,) int64: streamer code of every item index (0 = none)
    gifts_before: int  # the graph holds every gift before this time; later ones are new

    @property
    def expansion(self) -> GraphExpansion:
        return self.online.expansion


@dataclass
class ItemFeatureVocab:
    """How the task turned raw item feature values into the codes of `ItemSide` (`tasks.base.build_item_side`),
    for items that appear after export. Index 0 is unknown everywhere, as offline."""

    categorical: dict[str, Vocab] = dataclasses.field(default_factory=dict)  # str(raw value) -> code
    numeric: dict[str, np.ndarray | None] = dataclasses.field(default_factory=dict)  # quantile bucket edges
    multi: dict[str, Vocab] = dataclasses.field(default_factory=dict)  # str(raw value) or word -> code
    text: dict[str, str] = dataclasses.field(default_factory=dict)  # text modality -> its bag-of-words feature

    def categorical_code(self, name: str, value) -> int:
        """The code of one raw value of a categorical or numeric feature (0: missing or unseen)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return 0
        if name in self.numeric:
            edges = self.numeric[name]
            try:
                v = float(value)
            except (TypeError, ValueError):
                return 0
            if edges is None or not math.isfinite(v):
                return 0
            return int(np.searchsorted(edges, v, side="right")) + 1
        return int(self.categorical[name].lookup([value])[0])

    def multi_codes(self, name: str, values, k: int, dedupe: bool = False) -> np.ndarray:
        """(k,) codes of a multi-valued feature: unseen values dropped (offline they would be 0, an empty slot),
        the first k kept; `dedupe` (bags of words) keeps each code's first occurrence, as offline."""
        codes = [int(c) for c in self.multi[name].lookup([str(v) for v in values]) if c > 0]
        if dedupe:
            codes = list(dict.fromkeys(codes))
        out = np.zeros(k, dtype=np.int64)
        codes = codes[:k]
        out[: len(codes)] = codes
        return out

    def to_json(self) -> dict:
        return {"categorical": {n: [str(v) for v in voc.ids] for n, voc in self.categorical.items()},
                "numeric": {n: None if e is None else [float(x) for x in e] for n, e in self.numeric.items()},
                "multi": {n: [str(v) for v in voc.ids] for n, voc in self.multi.items()},
                "text": dict(self.text)}

    def __bool__(self) -> bool:
        return bool(self.categorical or self.numeric or self.multi)


def _is_na(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def item_feature_vocab(data, items: Vocab, side: ItemSide) -> ItemFeatureVocab:
    """The raw value -> code maps of the item side features, rebuilt from the data as
    `tasks.base.build_item_side` builds the codes (pandas factorize order, quantile edges, first-seen order
    of multi values, the sorted word vocabulary of texts). Each map is checked against the task's own codes
    of every item; a feature whose rebuilt codes differ (e.g. raw values whose string forms collide) is left
    out with a warning, so POST /items refuses it instead of serving wrong codes."""
    from ..tasks.base import _words

    out = ItemFeatureVocab()

    def agrees(name: str, want: np.ndarray, got: np.ndarray) -> bool:
        if np.array_equal(want, got):
            return True
        log.warning("export: the raw values of item feature '%s' do not reproduce the task's codes; it is left out "
                    "of %s (POST /items will refuse it)", name, ITEM_FEATURES_FILE)
        return False

    if data.items is not None:
        row_idx = items.lookup(data.items["item_id"])
        for f in data.spec.item_features:
            if f.name not in data.items.column_names:
                continue
            col = data.items[f.name].to_pylist()
            if f.kind == "categorical" and f.name in side.categorical:
                _, uniq = pd.factorize(pd.Series(col, dtype=object), use_na_sentinel=True)
                voc = Vocab([str(v) for v in uniq])
                got = voc.lookup(col)
                got[np.array([_is_na(v) for v in col], dtype=bool)] = 0
                if agrees(f.name, side.categorical[f.name][row_idx], got):
                    out.categorical[f.name] = voc
            elif f.kind == "numeric" and f.name in side.categorical:
                vals = pd.to_numeric(pd.Series(col), errors="coerce").to_numpy(dtype=np.float64)
                ok = np.isfinite(vals)
                edges = np.unique(np.quantile(vals[ok], np.linspace(0, 1, 11)[1:-1])) if ok.any() else None
                out.numeric[f.name] = edges
                got = np.zeros(len(vals), dtype=np.int64)
                if edges is not None:
                    got[ok] = np.searchsorted(edges, vals[ok], side="right") + 1
                if not agrees(f.name, side.categorical[f.name][row_idx], got):
                    del out.numeric[f.name]
            elif f.kind == "multi_categorical" and f.name in side.multi:
                first: dict[str, int] = {}
                for lst in col:
                    for v in lst or []:
                        first.setdefault(str(v), len(first) + 1)
                voc = Vocab(list(first))
                out.multi[f.name] = voc
                k = side.multi[f.name].shape[1]
                got = np.stack([out.multi_codes(f.name, lst or [], k) for lst in col]) if col else np.zeros((0, k))
                if not agrees(f.name, side.multi[f.name][row_idx], got):
                    del out.multi[f.name]
    for m in data.spec.modalities:
        name = f"{m.name}_words"
        if m.entity != "item" or m.kind != "text" or m.name not in data.content or name not in side.multi:
            continue
        table = data.content[m.name]
        rows = items.lookup(table["entity_id"])
        texts = table["text"].to_pylist()
        if m.multi:
            texts = [" ".join(t for t in (ts or []) if t) for ts in texts]
        tokenised = [_words(t) for t in texts]
        counts: dict[str, int] = {}
        for ws in tokenised:
            for w in set(ws):
                counts[w] = counts.get(w, 0) + 1
        out.multi[name] = Vocab(sorted(w for w, c in counts.items() if c >= 2))
        k = side.multi[name].shape[1]
        keep = rows > 0
        got = np.stack([out.multi_codes(name, ws, k, dedupe=True) for ws in tokenised]) if tokenised else None
        if got is not None and agrees(name, side.multi[name][rows[keep]], got[keep]):
            out.text[m.name] = name
        else:
            out.multi.pop(name, None)
    return out


def _load_item_features(path: Path, schema: Schema) -> ItemFeatureVocab:
    file = path / ITEM_FEATURES_FILE
    try:
        raw = json.loads(file.read_text())
        out = ItemFeatureVocab(
            categorical={n: Vocab([str(v) for v in vs]) for n, vs in raw.get("categorical", {}).items()},
            numeric={n: None if e is None else np.asarray(e, dtype=np.float64) for n, e in raw.get("numeric", {}).items()},
            multi={n: Vocab([str(v) for v in vs]) for n, vs in raw.get("multi", {}).items()},
            text={str(m): str(f) for m, f in raw.get("text", {}).items()})
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise BundleError(file, "categorical, numeric, multi and text maps of item feature values", str(e)) from None
    for group, sizes in (("categorical", schema.item_categorical), ("multi", schema.item_multi)):
        for name, voc in getattr(out, group).items():
            if sizes.get(name) != len(voc):
                raise BundleError(file, f"{(sizes.get(name) or 1) - 1} values of {group} item feature '{name}' "
                                  "(schema.json)", str(len(voc) - 1))
    for name in out.numeric:
        if name not in schema.item_categorical:
            raise BundleError(file, f"numeric item features among {sorted(schema.item_categorical)}", repr(name))
    for modality, feature in out.text.items():
        if feature not in out.multi:
            raise BundleError(file, f"the words of text modality '{modality}' under multi.{feature}", "none")
    return out


# ----------------------------------------------------------------------------------------- helpers


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False))


def _schema_parts(schema: Schema) -> tuple[dict, dict[str, np.ndarray]]:
    """Every Schema field: arrays (-> schema.safetensors) and plain values (-> schema.json). Generic over
    the dataclass, so a field added to Schema travels without a change here."""
    plain: dict = {}
    arrays: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(schema):
        value = getattr(schema, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = np.ascontiguousarray(value)
        elif value is None or isinstance(value, (str, int, float, bool, np.generic)):
            plain[f.name] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, dict) and all(isinstance(v, (int, float, str, np.generic)) for v in value.values()):
            plain[f.name] = {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in value.items()}
        elif isinstance(value, dict) and all(isinstance(v, (tuple, list)) and all(isinstance(x, (int, float, np.generic))
                                                                                  for x in v) for v in value.values()):
            # item_tokens: name -> (T, dim); JSON has no tuples, `_schema_from` turns the lists back
            plain[f.name] = {str(k): [x.item() if isinstance(x, np.generic) else x for x in v] for k, v in value.items()}
        elif isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values()):
            for k, v in value.items():  # graph_init: name -> array, as `field.name` tensors
                arrays[f"{f.name}.{k}"] = np.ascontiguousarray(v)
        else:
            raise BundleError("schema", f"Schema.{f.name} as an array or plain value",
                              f"{type(value).__name__}: this task's schema cannot be served")
    return plain, arrays


def _schema_from(plain: dict, arrays: dict[str, np.ndarray]) -> Schema:
    known = {f.name for f in dataclasses.fields(Schema)}
    values: dict = {}
    for k, v in plain.items():
        if isinstance(v, dict):
            v = {name: tuple(x) if isinstance(x, list) else x for name, x in v.items()}
        values[k] = v
    for key, arr in arrays.items():
        name, dot, sub = key.partition(".")
        if dot:
            values.setdefault(name, {})[sub] = arr
        else:
            values[key] = arr
    return Schema(**{k: v for k, v in values.items() if k in known})


SIDE_GROUPS = ("categorical", "multi", "dense", "presence", "tokens", "token_mask")


def _side_arrays(side: ItemSide) -> dict[str, np.ndarray]:
    out = {}
    for group in SIDE_GROUPS:
        for name, arr in getattr(side, group).items():
            out[f"{group}.{name}"] = np.ascontiguousarray(np.asarray(arr))  # a float16 memmap becomes memory
    return out


def _side_from(arrays: dict[str, np.ndarray], file: Path) -> ItemSide:
    side = ItemSide()
    for key, arr in arrays.items():
        group, _, name = key.partition(".")
        if group not in SIDE_GROUPS or not name:
            raise BundleError(file, f"tensors named GROUP.NAME with GROUP among {', '.join(SIDE_GROUPS)}", repr(key))
        getattr(side, group)[name] = arr
    missing = set(side.tokens) ^ set(side.token_mask)
    if missing:
        raise BundleError(file, "a tokens.NAME and a token_mask.NAME tensor per token table", f"{sorted(missing)} alone")
    return side


def seed_history(history: History, keep: int) -> History:
    """The last `keep` events of every user (what the ranker can read), in the same CSR layout."""
    counts = np.diff(history.ptr)
    kept = np.minimum(counts, keep)
    ptr = np.zeros_like(history.ptr)
    np.cumsum(kept, out=ptr[1:])
    starts = history.ptr[1:] - kept
    idx = np.repeat(starts, kept) + (np.arange(kept.sum()) - np.repeat(ptr[:-1], kept))
    return History(ptr, history.items[idx].copy(), history.times[idx].copy(),
                   None if history.tags is None else history.tags[idx].copy())


def _item_encoder(model: torch.nn.Module) -> ItemEncoder | None:
    for m in model.modules():
        if isinstance(m, ItemEncoder):
            return m
    return None


@torch.no_grad()
def item_vectors(model: Model, side: ItemSide, n_items: int, chunk: int = 4096) -> tuple[np.ndarray | None, str]:
    """One retrieval vector per item index, and where it comes from.

    The model's own item representation where it has one (the ItemEncoder output: id, side features
    and content, so items with similar content sit close), else an item id embedding of the model,
    else the first dense content modality; None when there is nothing to retrieve with."""
    model.eval()
    enc = _item_encoder(model)
    if enc is not None:
        parts = []
        for start in range(0, n_items, chunk):
            ids = np.arange(start, min(start + chunk, n_items))
            feats, pres = side.gather(ids)
            parts.append(enc(torch.from_numpy(ids), feats, pres).float().numpy())
        return np.concatenate(parts), "item_encoder"
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding) and m.num_embeddings == n_items and m.embedding_dim >= 8:
            return m.weight.detach().float().numpy().copy(), f"embedding:{name}"
    for name, arr in side.dense.items():
        vec = np.asarray(arr, dtype=np.float32).copy()
        vec[~side.presence.get(name, np.ones(n_items, dtype=bool))] = 0.0
        return vec, f"content:{name}"
    return None, "none"


def normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(vectors.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.where(norm > 0, v / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def build_index(vectors: np.ndarray):
    """Inner-product index over rows 1..n-1 of L2-normalised vectors (cosine similarity)."""
    import faiss

    d = vectors.shape[1]
    body = np.ascontiguousarray(vectors[1:])
    if len(body) <= FLAT_INDEX_MAX_ITEMS:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    index.add(body)
    return index


def popularity_order(schema: Schema) -> np.ndarray:
    counts = schema.item_counts if schema.item_counts is not None else np.zeros(schema.n_items)
    score = np.asarray(counts, dtype=np.float64).copy()
    if schema.item_positive_rate is not None and schema.task == "ctr":
        score = score * np.asarray(schema.item_positive_rate, dtype=np.float64)  # expected positives
    order = np.lexsort((np.arange(len(score)), -score))
    return order[order != 0].astype(np.int64)


# ------------------------------------------------------------------------------------------ export


def _training_gifts(task, data, cfg: RunConfig) -> tuple[CSR, int]:
    """The gift totals per (user, streamer) of the graph `task.gie` was fitted on, and the time before
    which the graph holds every gift (later gifts are new to it).

    The task keeps its fitted tables but not the gift triples, so they are selected again here as
    `CTRTask._build_graph` selects them (channel, training period, weight column); the export then
    checks that these totals reproduce the task's U->A->A table exactly, so a drift between the two
    selections fails loudly instead of serving another graph."""
    from ..tasks.base import encode_events

    g = cfg.task.graph
    enc = encode_events(data)
    cutoff = task.graph_cutoff if task.graph_cutoff is not None else np.iinfo(np.int64).max
    is_gift = (enc.channels == g.channel) & (enc.times < cutoff)
    weights = None
    if g.weight_column is not None:
        weights = np.nan_to_num(enc.table[g.weight_column].to_numpy(zero_copy_only=False)
                                .astype(np.float64)[is_gift])
    gie = task.gie
    totals = gift_totals(enc.users[is_gift], task.streamer_code[enc.items[is_gift]], weights, gie.n_users,
                         gie.n_streamers, gie.cfg.weight_mode)
    if task.graph_cutoff is not None:
        before = int(task.graph_cutoff)
    else:  # no later split: every gift of the data is in the graph
        before = int(enc.times[is_gift].max()) + 1 if is_gift.any() else int(np.iinfo(np.int64).min)
    return totals, before


def _write_graph(task, data, cfg: RunConfig, folder: Path) -> dict:
    """graph/: the fitted GraphExpansion and the gift totals; returns the schema.json settings."""
    totals, before = _training_gifts(task, data, cfg)
    online = OnlineExpansion(task.gie, totals)
    if not online.matches_offline():
        raise BundleError(folder.name, "gift totals that reproduce the task's U->A->A expansion exactly "
                          "(the export selects the training gifts as CTRTask._build_graph does)",
                          "another expansion: the two selections of gift events disagree")
    task.gie.save(folder)
    save_np({"indptr": totals.indptr, "streamers": totals.indices, "totals": totals.data.astype(np.float64)},
            str(folder / GIFTS_FILE))
    g = cfg.task.graph
    return {"dir": GRAPH_DIR, "channel": g.channel, "streamer_feature": g.streamer_feature, "gifts_before": before}


def _read_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.yaml"
    if not path.exists():
        raise BundleError(path, "a run directory written by `modalrec train` (config.yaml)", "no such file")
    return RunConfig.model_validate(yaml.safe_load(path.read_text()))


def _history_channels(cfg: RunConfig) -> list[str] | None:
    """The channels whose events form the behaviour sequence, as the task built it offline."""
    if cfg.task.kind == "ctr":
        return cfg.task.history_channels or cfg.task.sample_channels
    return cfg.task.sample_channels  # topk: the history is the sample sequence


def export_bundle(run_dir: Path, out: Path, seed: int | None = None, data=None, overwrite: bool = False) -> Path:
    """Writes the serving bundle of `run_dir` (seed `seed`, default the run's first) to `out`."""
    from ..tasks import prepare_task
    from ..train.checkpoint import has_checkpoint, load_checkpoint
    from ..train.run import load_data

    run_dir, out = Path(run_dir), Path(out)
    cfg = _read_run_config(run_dir)
    if cfg.task.kind not in SERVABLE_TASKS:
        raise BundleError(run_dir / "config.yaml", f"a task the service answers ({', '.join(SERVABLE_TASKS)})",
                          f"task.kind '{cfg.task.kind}'")
    seed = cfg.seeds[0] if seed is None else seed
    if seed not in cfg.seeds:
        raise BundleError(run_dir / "config.yaml", f"--seed among the run's seeds {cfg.seeds}", str(seed))
    if out.exists() and not overwrite:
        raise BundleError(out, "a new bundle directory (--overwrite replaces one)", "it already exists")
    data = data if data is not None else load_data(cfg)
    run_manifest = run_dir / "manifest.json"
    fingerprint = data.fingerprint()
    if run_manifest.exists():
        trained_on = json.loads(run_manifest.read_text()).get("dataset", {}).get("fingerprint")
        if trained_on and trained_on != fingerprint:
            raise BundleError(run_manifest, f"the data the run was trained on (fingerprint {trained_on[:12]}...)",
                              f"data with fingerprint {fingerprint[:12]}...: vocabularies would not match")
    task = prepare_task(data, cfg.task)
    model = build_model(cfg.model.name, task.schema, cfg.model.params)
    ckpt = run_dir / "checkpoints" / f"seed_{seed}"
    if has_checkpoint(ckpt, "best"):
        load_checkpoint(ckpt, "best", model, restore_rng=False)
    elif model.trainable:
        raise BundleError(ckpt / "best.safetensors", f"the trained weights of seed {seed}", "no such file")
    model.eval()
    collator = task.collator
    schema = task.schema

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.yaml").write_text(dump_config(cfg))
        plain, arrays = _schema_parts(schema)
        graph = None
        if getattr(task, "gie", None) is not None:
            graph = _write_graph(task, data, cfg, tmp / GRAPH_DIR)
        _write_json(tmp / "schema.json", {
            "schema": plain,
            "collator": {"max_history": int(collator.max_history), "with_time": bool(collator.with_time),
                         "token_scope": str(collator.token_scope)},
            "history_channels": _history_channels(cfg),
            "graph": graph,
        })
        save_np(arrays, str(tmp / "schema.safetensors"))
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        save_pt(state, str(tmp / "model.safetensors"))
        _write_json(tmp / "vocab_users.json", [str(v) for v in task.user_vocab.ids])
        _write_json(tmp / "vocab_items.json", [str(v) for v in task.item_vocab.ids])
        context_vocab = getattr(task, "context_vocab", None) or {}
        if context_vocab:
            _write_json(tmp / "vocab_context.json", {n: [str(v) for v in voc.ids] for n, voc in context_vocab.items()})
        save_np(_side_arrays(collator.item_side), str(tmp / "item_side.safetensors"))
        feature_vocab = item_feature_vocab(data, task.item_vocab, collator.item_side)
        if feature_vocab:
            _write_json(tmp / ITEM_FEATURES_FILE, feature_vocab.to_json())
        seed_h = seed_history(collator.history, int(collator.max_history))
        seed_arrays = {"ptr": seed_h.ptr, "items": seed_h.items, "times": seed_h.times}
        if seed_h.tags is not None:
            seed_arrays["tags"] = seed_h.tags
        save_np(seed_arrays, str(tmp / "history.safetensors"))
        vectors, source = item_vectors(model, collator.item_side, schema.n_items)
        retrieval = {"source": source, "metric": "inner_product", "normalised": True, "index": None, "dim": None}
        if vectors is not None:
            vectors = normalise(vectors)
            vectors[0] = 0.0
            save_np({"vectors": vectors}, str(tmp / "item_vectors.safetensors"))
            import faiss

            index = build_index(vectors)
            faiss.write_index(index, str(tmp / "items.faiss"))
            retrieval.update(index=type(index).__name__, dim=int(vectors.shape[1]))
        mask = os.umask(0)
        os.umask(mask)
        paths = sorted(tmp.rglob("*"))
        for p in paths:  # mkdtemp and safetensors create private files; a bundle is for sharing
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_of(p), "bytes": p.stat().st_size}
                 for p in paths if p.is_file()}
        _write_json(tmp / "manifest.json", {
            "format": FORMAT, "format_version": FORMAT_VERSION, "modalrec_version": __version__,
            "created": datetime.now(UTC).isoformat(), "run_dir": str(run_dir.resolve()),
            "seed": seed, "model": cfg.model.name, "task": cfg.task.kind, "dataset": data.spec.name,
            "dataset_fingerprint": fingerprint, "users": len(task.user_vocab) - 1,
            "items": len(task.item_vocab) - 1, "retrieval": retrieval, "files": files,
        })
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# -------------------------------------------------------------------------------------------- load


def _inside(name: str, nested: bool) -> bool:
    """A manifest file name that stays inside the bundle: `a.json`, or (version 2) `graph/a.json`."""
    p = PurePosixPath(name)
    if not name or "\\" in name or p.is_absolute() or p.as_posix() != name:
        return False
    if any(part in ("", ".", "..") for part in p.parts):
        return False
    return nested or len(p.parts) == 1


def verify_bundle(path: Path) -> dict:
    """Checks the manifest and the sha256 of every file it lists; returns the manifest."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise BundleError(mpath, "a bundle written by `modalrec export`", "no such file")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(mpath, "valid JSON", str(e)) from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(mpath, f"format {FORMAT} version {' or '.join(map(str, READABLE_VERSIONS))}",
                          f"{manifest.get('format')} version {manifest.get('format_version')}")
    for name, meta in manifest.get("files", {}).items():
        f = path / name
        if not _inside(name, nested=manifest["format_version"] >= 2):
            raise BundleError(mpath, "relative file names inside the bundle in 'files'", repr(name))
        if not f.exists():
            raise BundleError(f, "a file listed in manifest.json", "no such file")
        digest = sha256_of(f)
        if digest != meta["sha256"]:
            raise BundleError(f, f"sha256 {meta['sha256']} (manifest.json)",
                              f"sha256 {digest}: the file is corrupt or was modified")
    return manifest


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    path = Path(path)
    manifest = verify_bundle(path) if verify else json.loads((path / "manifest.json").read_text())
    files = manifest["files"]
    for needed in ("config.yaml", "schema.json", "schema.safetensors", "model.safetensors", "vocab_users.json",
                   "vocab_items.json", "item_side.safetensors", "history.safetensors"):
        if needed not in files:
            raise BundleError(path / "manifest.json", f"'{needed}' among the bundle files", "not listed")
    cfg = RunConfig.model_validate(yaml.safe_load((path / "config.yaml").read_text()))
    meta = json.loads((path / "schema.json").read_text())
    schema = _schema_from(meta["schema"], load_np(str(path / "schema.safetensors")))
    model = build_model(cfg.model.name, schema, cfg.model.params)
    weights = load_pt(str(path / "model.safetensors"))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise BundleError(path / "model.safetensors", f"weights of model '{cfg.model.name}' for this schema",
                          str(e).splitlines()[0]) from None
    model.eval()
    users = Vocab(json.loads((path / "vocab_users.json").read_text()))
    items = Vocab(json.loads((path / "vocab_items.json").read_text()))
    if len(items) != schema.n_items or len(users) != schema.n_users:
        raise BundleError(path / "schema.json", f"{len(users)} users and {len(items)} items as in the vocabularies",
                          f"{schema.n_users} and {schema.n_items}")
    side = _side_from(load_np(str(path / "item_side.safetensors")), path / "item_side.safetensors")
    for name, (t, dim) in schema.item_tokens.items():
        tokens, tmask = side.tokens.get(name), side.token_mask.get(name)
        if tokens is None or tokens.shape[1:] != (t, dim) or tmask.shape != tokens.shape[:2]:
            raise BundleError(path / "item_side.safetensors", f"token table '{name}' of shape (n, {t}, {dim}) with "
                              "its mask (schema.json item_tokens)",
                              "none" if tokens is None else f"{tokens.shape} and {tmask.shape}")
    h = load_np(str(path / "history.safetensors"))
    tags = h["tags"].astype(np.int64) if "tags" in h else None
    if bool(schema.history_tags) != (tags is not None) or (tags is not None and len(tags) != len(h["items"])):
        raise BundleError(path / "history.safetensors", "an action tag per history event (schema.json history_tags)"
                          if schema.history_tags else "no action tags (schema.json has no history_tags)",
                          "none" if tags is None else f"{len(tags)} tags for {len(h['items'])} events")
    history = History(h["ptr"].astype(np.int64), h["items"].astype(np.int64), h["times"].astype(np.int64), tags)
    vectors, index = None, None
    if "item_vectors.safetensors" in files:
        vectors = load_np(str(path / "item_vectors.safetensors"))["vectors"]
        if "items.faiss" in files:
            import faiss

            index = faiss.read_index(str(path / "items.faiss"))
            if index.ntotal != len(vectors) - 1:
                raise BundleError(path / "items.faiss", f"{len(vectors) - 1} vectors", str(index.ntotal))
    context_vocab = {}
    if schema.context_categorical:
        if "vocab_context.json" not in files:
            raise BundleError(path / "manifest.json", "'vocab_context.json' (the model reads context features "
                              f"{sorted(schema.context_categorical)})", "not listed")
        raw = json.loads((path / "vocab_context.json").read_text())
        for name, size in schema.context_categorical.items():
            if name not in raw or len(raw[name]) + 1 != size:
                raise BundleError(path / "vocab_context.json", f"{size - 1} values of context feature '{name}'",
                                  "none" if name not in raw else str(len(raw[name])))
            context_vocab[name] = Vocab([str(v) for v in raw[name]])
    item_features = _load_item_features(path, schema) if ITEM_FEATURES_FILE in files else None
    col = meta["collator"]
    graph = _load_graph(path, meta.get("graph"), files, side, schema) if meta.get("graph") else None
    return Bundle(
        path=path, manifest=manifest, config=cfg, schema=schema, model=model, user_vocab=users,
        item_vocab=items, item_side=side, history=history, max_history=int(col["max_history"]),
        with_time=bool(col["with_time"]), history_channels=meta.get("history_channels"),
        item_vectors=vectors, index=index, popular=popularity_order(schema),
        token_scope=str(col.get("token_scope", "all")), graph=graph, context_vocab=context_vocab,
        item_features=item_features,
    )


def _load_graph(path: Path, settings: dict, files: dict, side: ItemSide, schema: Schema) -> ServingGraph:
    folder = path / settings["dir"]
    for name in ("gie.safetensors", "gie.json", GIFTS_FILE):
        rel = f"{settings['dir']}/{name}"
        if rel not in files:
            raise BundleError(path / "manifest.json", f"'{rel}' among the bundle files (schema.json has a graph)",
                              "not listed")
    try:
        expansion = GraphExpansion.load(folder)
    except DataError as e:
        raise BundleError(folder, "the graph expansion written by `modalrec export`", str(e)) from None
    feature = settings["streamer_feature"]
    code = side.categorical.get(feature)
    if code is None or schema.item_categorical.get(feature) != expansion.n_streamers:
        raise BundleError(folder / "gie.json", f"{expansion.n_streamers} streamers, the codes of item feature "
                          f"'{feature}'", f"item features {sorted(side.categorical)}")
    if expansion.n_users != schema.n_users:
        raise BundleError(folder / "gie.json", f"{schema.n_users} users as the vocabulary", str(expansion.n_users))
    t = load_np(str(folder / GIFTS_FILE))
    try:
        totals = CSR(t["indptr"].astype(np.int64), t["streamers"].astype(np.int64), t["totals"].astype(np.float64),
                     expansion.n_streamers)
        online = OnlineExpansion(expansion, totals)
    except (KeyError, ValueError) as e:
        raise BundleError(folder / GIFTS_FILE, "indptr, streamers and totals of the gift graph", str(e)) from None
    return ServingGraph(online=online, channel=settings["channel"], streamer_feature=feature,
                        streamer_code=np.asarray(code, dtype=np.int64), gifts_before=int(settings["gifts_before"]))
