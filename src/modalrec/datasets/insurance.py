"""Insurance multi-channel dataset (Bruun, Balog, Maistro, SIGIR 2024) -> `InteractionData`.

Reads the public release folder (GitHub simonebbruun/RS_multi_modal_user_interactions)::

    data_users.csv                user_id, purchase_event_id, event_number, conversation_id, session_id
    data_purchase_events.csv      purchase_event_id, item_id                (one row per bought item)
    data_post_filter.csv          purchase_event_id, item_id                (optional: items buyable then)
    data_sessions.csv             session_id, action_number, action_tags    ("12,40,77": tag ids)
    data_conversations_keyword.csv  conversation_id, sentence_number, sentence_speaker, keywords
    data_conversations_embedding/data_conversations_embedding_{1..N}.csv
                                  conversation_id, sentence_number, sentence_speaker, embedding_1..D

The task of the paper is multi-label: for each purchase event, given the user's ordered
conversations and web sessions before it, rank the items bought, among the items available.

Mapping onto `InteractionData`
------------------------------
events (one table, sorted by `time`), channels ``conversation``, ``session``, ``purchase``:

- one row per row of data_users.csv (a touchpoint *as seen before one purchase event*; a session
  that precedes two purchase events of a user appears twice, once per purchase event, exactly as in
  the release): channel ``conversation`` or ``session``, ``event_id`` = ``"c<conversation_id>"`` or
  ``"s<session_id>"``, ``item_id`` = ``NO_ITEM`` (``"none"``: a touchpoint has no item; the items
  table lists it, flagged ``is_product = False``, so the tables validate), ``event_number`` as given;
- one row per row of data_purchase_events.csv: channel ``purchase``, ``event_id`` =
  ``"p<purchase_event_id>"``, ``item_id`` = the bought item, ``event_number`` null;
- every row carries ``purchase_event_id`` (int64), so a purchase event's history is the rows with
  its id; ``user_id`` comes from data_users.csv;
- ``time = purchase_event_id * TIME_STRIDE + event_number`` for touchpoints and
  ``purchase_event_id * TIME_STRIDE + TIME_STRIDE - 1`` for purchases: purchase event ids are
  chronological, so sorting by time gives each purchase event's touchpoints in order, then its items.

items: the item ids seen in purchases or the post-filter (``"1"`` .. ``"24"``, numeric order), then
``NO_ITEM``; columns ``item_id``, ``name`` (null in the real release, which has no names; product
names in semi-synthetic data), ``is_product``. users: none (no user side data is released).

content (all ``entity="event"``, keyed by ``event_id``; a touchpoint without content in a file has no
row there: the modality is missing, not empty):

- ``session_tags`` (kind tokens): ``tokens`` = every action's tag ids (int64) in action order,
  ``action_sizes`` = number of tags of each action (so the action structure is kept:
  ``tokens`` split by ``action_sizes`` gives the list of actions);
- ``conversation_keywords`` (kind tokens): ``tokens`` = keyword ids of all sentences in order,
  ``sentence_sizes`` = keywords per sentence, ``speakers`` = ``user``/``agent`` per sentence;
- ``conversation_embedding`` (kind vector, dim D = 768 in the release): ``vector`` = mean of the
  conversation's sentence embeddings (float32), ``n_sentences``; the paper's conversation input is
  the mean over all sentences of a purchase event's conversations, which is recovered exactly as the
  ``n_sentences``-weighted mean of these vectors. With ``sentence_embeddings=True`` the table also
  holds ``sentence_vectors`` (list of D-vectors, sentence order) and ``sentence_speakers``; the full
  release is about 200 GB of CSV, so by default sentences are only streamed to compute the means,
  and `iter_sentence_embeddings` gives bounded-memory access to the sentence level;
- ``availability`` (kind tokens, entity ``"p<purchase_event_id>"``): ``tokens`` = the item ids
  (strings, as in ``events.item_id``) listed for that purchase event in data_post_filter.csv; a
  purchase event without a row (or a release without the file) has no mask: every item counts as
  available;
- ``conversation_text`` (kind text): only in semi-synthetic folders, which also ship the generated
  sentence text (``simulation/conversation_text.csv``): one ``"speaker: sentence"`` line per sentence.

Sessions and conversations that no row of data_users.csv references cannot be attached to an event;
they are not loaded, and their number is stated in ``spec.description``.

A folder written by `modalrec.sim.insurance.simulate` holds a ``simulation.json`` marker; the loader
then sets ``spec.semi_synthetic = True`` and takes the item names from it.

Every problem in the input (missing file or column, a malformed row, a non-integer id, a speaker
other than user/agent, an embedding row of the wrong width, NaN in an embedding, duplicate rows,
ids that do not match across files) raises `DataError` naming the file, the 1-based data row and the
column; no row is dropped silently.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..data.errors import DataError, Problem
from ..data.interaction import DatasetSpec, InteractionData, ModalitySpec

USERS_FILE = "data_users.csv"
PURCHASES_FILE = "data_purchase_events.csv"
POST_FILTER_FILE = "data_post_filter.csv"
SESSIONS_FILE = "data_sessions.csv"
KEYWORDS_FILE = "data_conversations_keyword.csv"
EMBEDDING_DIR = "data_conversations_embedding"
EMBEDDING_FILE = re.compile(r"^data_conversations_embedding_(\d+)\.csv$")
SIMULATION_MARKER = "simulation.json"
SIMULATION_TEXT = "simulation/conversation_text.csv"

NO_ITEM = "none"
TIME_STRIDE = 1_000_000
SPEAKERS = ("user", "agent")
CHANNELS = ["conversation", "session", "purchase"]
RELEASE_SOURCE = "public release: GitHub simonebbruun/RS_multi_modal_user_interactions"
SIMULATED_SOURCE = "modalrec.sim.insurance: simulated content on the real structure of the public release"
CITATION = (
    "Simone Borg Bruun, Krisztian Balog, Maria Maistro. Dataset and Models for Item Recommendation "
    "Using Multi-Modal User Interactions. SIGIR 2024. doi:10.1145/3626772.3657881"
)

_INT = r"^[+-]?\d{1,18}(\.0*)?$"  # "3596.0" is how pandas writes an integer column with gaps


# ---------------------------------------------------------------------------------------- structure
@dataclass
class InsuranceStructure:
    """The event structure: who had which conversations/sessions before which purchase, and what was bought.

    users: user_id, purchase_event_id, event_number (int64), conversation_id, session_id (nullable
    Int64; exactly one set per row), sorted by (purchase_event_id, event_number).
    purchases: purchase_event_id, item_id (int64), sorted the same way.
    """

    users: pd.DataFrame
    purchases: pd.DataFrame

    @property
    def purchase_event_ids(self) -> np.ndarray:
        return np.unique(self.purchases["purchase_event_id"].to_numpy())

    def event_users(self) -> pd.Series:
        """user_id of each purchase event (index: purchase_event_id)."""
        return self.users.drop_duplicates("purchase_event_id").set_index("purchase_event_id")["user_id"]


def load_structure(path: str | Path) -> InsuranceStructure:
    """Read and check data_users.csv and data_purchase_events.csv (all the simulator needs)."""
    path = Path(path)
    ufile, pfile = path / USERS_FILE, path / PURCHASES_FILE
    ut = _read_csv(ufile, ["user_id", "purchase_event_id", "event_number", "conversation_id", "session_id"])
    pt = _read_csv(pfile, ["purchase_event_id", "item_id"])
    probs: list[Problem] = []
    uf, pf = str(ufile), str(pfile)
    user, _ = _ints(ut, "user_id", uf, probs)
    pid, _ = _ints(ut, "purchase_event_id", uf, probs)
    num, _ = _ints(ut, "event_number", uf, probs)
    conv, has_conv = _ints(ut, "conversation_id", uf, probs, optional=True)
    sess, has_sess = _ints(ut, "session_id", uf, probs, optional=True)
    p_pid, _ = _ints(pt, "purchase_event_id", pf, probs)
    p_item, _ = _ints(pt, "item_id", pf, probs)
    _raise(probs)

    _first(probs, has_conv & has_sess, uf, "session_id", "exactly one of conversation_id and session_id",
           lambda r: "both set")
    _first(probs, ~has_conv & ~has_sess, uf, "conversation_id", "exactly one of conversation_id and "
           "session_id", lambda r: "both empty")
    _first(probs, (num < 1) | (num >= TIME_STRIDE - 1), uf, "event_number",
           f"an event number between 1 and {TIME_STRIDE - 2}", lambda r: str(num[r]))
    _duplicates(probs, uf, ("purchase_event_id", "event_number"), pid, num)
    order = np.lexsort((num, pid))
    if len(order):  # one user per purchase event
        sp, su = pid[order], user[order]
        start = np.r_[True, sp[1:] != sp[:-1]]
        owner = su[np.maximum.accumulate(np.where(start, np.arange(len(sp)), 0))]
        bad = np.zeros(len(pid), dtype=bool)
        bad[order] = su != owner
        _first(probs, bad, uf, "user_id", "one user per purchase event",
               lambda r: f"user {user[r]} for purchase event {pid[r]}, which belongs to another user")
    _duplicates(probs, pf, ("purchase_event_id", "item_id"), p_pid, p_item)
    known = np.unique(pid)
    _first(probs, ~np.isin(p_pid, known), pf, "purchase_event_id", f"a purchase event listed in {USERS_FILE}",
           lambda r: str(p_pid[r]))
    _first(probs, ~np.isin(pid, p_pid), uf, "purchase_event_id",
           f"a purchase event with at least one item in {PURCHASES_FILE}", lambda r: str(pid[r]))
    _raise(probs)

    users = pd.DataFrame({
        "user_id": user[order], "purchase_event_id": pid[order], "event_number": num[order],
        "conversation_id": pd.arrays.IntegerArray(conv[order], ~has_conv[order]),
        "session_id": pd.arrays.IntegerArray(sess[order], ~has_sess[order]),
    })
    porder = np.lexsort((p_item, p_pid))
    purchases = pd.DataFrame({"purchase_event_id": p_pid[porder], "item_id": p_item[porder]})
    return InsuranceStructure(users.reset_index(drop=True), purchases)


# ---------------------------------------------------------------------------------------- full load
def load(path: str | Path, embedding_dim: int | None = None, *, sentence_embeddings: bool = False) -> InteractionData:
    """Read the full release (or a semi-synthetic folder in the same layout); see the module doc.

    `embedding_dim`: the width the embedding files must have (768 in the release); None infers it from
    the first file's header (embedding_1..embedding_D). `sentence_embeddings`: also keep every
    sentence vector (memory: n_sentences * D * 4 bytes)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(Problem(str(path), None, None, "a folder with the insurance dataset files", "no such folder"))
    st = load_structure(path)
    sim = _simulation_info(path)
    users = st.users
    is_conv = users["conversation_id"].notna().to_numpy()
    conv_ids = np.unique(users["conversation_id"].dropna().to_numpy(dtype=np.int64))
    sess_ids = np.unique(users["session_id"].dropna().to_numpy(dtype=np.int64))
    notes: list[str] = []

    availability, avail_items = _read_post_filter(path, st)
    session_tags = _read_sessions(path / SESSIONS_FILE, sess_ids, notes)
    keywords = _read_keywords(path / KEYWORDS_FILE, conv_ids, notes)
    embedding, dim = _read_embeddings(path, conv_ids, embedding_dim, sentence_embeddings, notes)
    content = {"session_tags": session_tags, "conversation_keywords": keywords, "conversation_embedding": embedding}
    if availability is not None:
        content["availability"] = availability
    text_file = path / SIMULATION_TEXT
    if sim is not None and text_file.exists():
        content["conversation_text"] = _read_text(text_file, conv_ids)

    events = _events(st, is_conv)
    items = _items(st, avail_items, sim)
    modalities = [
        ModalitySpec(name="session_tags", entity="event", kind="tokens",
                     description="tag ids of every action of the web session, in order; action_sizes "
                                 "splits them into actions"),
        ModalitySpec(name="conversation_keywords", entity="event", kind="tokens",
                     description="keyword ids of every sentence, in order; sentence_sizes splits them "
                                 "into sentences, speakers gives user/agent per sentence"),
        ModalitySpec(name="conversation_embedding", entity="event", kind="vector", dim=dim,
                     description="mean sentence embedding of the conversation; n_sentences sentences"
                                 + ("; sentence_vectors holds each one" if sentence_embeddings else "")),
    ]
    if availability is not None:
        modalities.append(ModalitySpec(name="availability", entity="event", kind="tokens",
                                       description="item ids the user could buy at this purchase event "
                                                   "(post-filter); no row = no mask"))
    if "conversation_text" in content:
        modalities.append(ModalitySpec(name="conversation_text", entity="event", kind="text",
                                       description="generated sentence text, one 'speaker: sentence' line each"))
    n_conv_rows, n_sess_rows = int(is_conv.sum()), int((~is_conv).sum())
    desc = (f"{st.purchases['purchase_event_id'].nunique()} purchase events of "
            f"{users['user_id'].nunique()} users; {len(conv_ids)} conversations ({n_conv_rows} event rows), "
            f"{len(sess_ids)} web sessions ({n_sess_rows} event rows); "
            f"{len(conv_ids) - keywords.num_rows} conversations without keywords, "
            f"{len(conv_ids) - embedding.num_rows} without embeddings, "
            f"{len(sess_ids) - session_tags.num_rows} sessions without actions")
    desc += "".join(f"; {n}" for n in notes)
    if sim is not None:
        desc = ("SEMI-SYNTHETIC: real event structure, simulated content "
                f"({json.dumps(sim.get('parameters', {}), sort_keys=True)}). ") + desc
    spec = DatasetSpec(
        name="insurance-semi-synthetic" if sim is not None else "insurance",
        description=desc, semi_synthetic=sim is not None, channels=list(CHANNELS),
        modalities=modalities, event_columns=["event_id", "purchase_event_id", "event_number"],
        source=SIMULATED_SOURCE if sim is not None else RELEASE_SOURCE, citation=CITATION,
    )
    return InteractionData(spec, events, items, None, content).validate(str(path))


# ------------------------------------------------------------------------------------- embeddings
@dataclass
class SentenceEmbeddings:
    """The validated rows of one embedding file."""

    file: str
    conversation_id: np.ndarray  # int64
    sentence_number: np.ndarray  # int64
    speaker: np.ndarray  # str (object)
    vectors: np.ndarray  # float32 (n, dim)


def embedding_files(path: str | Path) -> list[Path]:
    """The embedding files of a release folder, in numeric order (gaps are allowed but warned about)."""
    folder = Path(path) / EMBEDDING_DIR
    if not folder.is_dir():
        raise DataError(Problem(str(folder), None, None, "a folder of data_conversations_embedding_{k}.csv "
                                "files", "no such folder"))
    found = sorted((int(m.group(1)), f) for f in folder.iterdir() if (m := EMBEDDING_FILE.match(f.name)))
    if not found:
        raise DataError(Problem(str(folder), None, None, "at least one data_conversations_embedding_{k}.csv",
                                "no such file"))
    numbers = [k for k, _ in found]
    missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
    if missing:
        warnings.warn(f"{folder}: embedding files {missing[:10]} are missing (reading the {len(found)} present)",
                      stacklevel=2)
    return [f for _, f in found]


def iter_sentence_embeddings(path: str | Path, embedding_dim: int | None = None) -> Iterator[SentenceEmbeddings]:
    """Stream the sentence embeddings file by file (bounded memory), each file fully validated."""
    dim = embedding_dim
    for f in embedding_files(path):
        header = _header(f)
        if dim is None:
            nums = sorted(int(m.group(1)) for c in header if (m := re.fullmatch(r"embedding_(\d+)", c)))
            dim = len(nums)
            if dim == 0:
                raise DataError(Problem(str(f), None, "embedding_1", "columns embedding_1 .. embedding_D",
                                        "no such column"))
        emb_cols = [f"embedding_{j}" for j in range(1, dim + 1)]
        extra = [c for c in header if re.fullmatch(r"embedding_\d+", c) and c not in set(emb_cols)]
        if extra:
            raise DataError(Problem(str(f), None, extra[0], f"exactly {dim} embedding columns (embedding_1 .. "
                                    f"embedding_{dim})", "an extra column"))
        t = _read_csv(f, ["conversation_id", "sentence_number", "sentence_speaker"], emb_cols, header=header)
        probs: list[Problem] = []
        conv, _ = _ints(t, "conversation_id", str(f), probs)
        num, _ = _ints(t, "sentence_number", str(f), probs)
        speaker = _speakers(t, str(f), probs)
        _raise(probs)
        _duplicates(probs, str(f), ("conversation_id", "sentence_number"), conv, num)
        vectors = np.empty((t.num_rows, dim), dtype=np.float32)
        for j, c in enumerate(emb_cols):
            col = t[c]
            if col.null_count:
                r = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
                probs.append(Problem(str(f), r + 1, c, "a number", f"an empty cell ({col.null_count} in this column)"))
                break
            vectors[:, j] = col.to_numpy()
        if not probs:
            bad = ~np.isfinite(vectors)
            if bad.any():
                r, j = np.argwhere(bad)[0]
                probs.append(Problem(str(f), int(r) + 1, emb_cols[j], "a finite number", str(vectors[r, j])))
        _raise(probs)
        yield SentenceEmbeddings(str(f), conv, num, speaker, vectors)


def _read_embeddings(path: Path, referenced: np.ndarray, embedding_dim: int | None, keep_sentences: bool,
                     notes: list[str]) -> tuple[pa.Table, int]:
    ids_parts, sums_parts, counts_parts, kept = [], [], [], []
    dim = embedding_dim
    unreferenced: set[int] = set()
    for part in iter_sentence_embeddings(path, embedding_dim):
        dim = part.vectors.shape[1]
        if part.conversation_id.size == 0:
            continue
        order = np.argsort(part.conversation_id, kind="stable")
        uniq, starts, counts = np.unique(part.conversation_id[order], return_index=True, return_counts=True)
        ids_parts.append(uniq)
        sums_parts.append(np.add.reduceat(part.vectors[order], starts, axis=0, dtype=np.float64))
        counts_parts.append(counts)
        unreferenced.update(uniq[~np.isin(uniq, referenced)].tolist())
        if keep_sentences:
            keep = np.isin(part.conversation_id, referenced)
            kept.append((part.conversation_id[keep], part.sentence_number[keep], part.speaker[keep],
                         part.vectors[keep]))
    if unreferenced:
        notes.append(f"{len(unreferenced)} conversations in {EMBEDDING_DIR}/ that no purchase event references "
                     "(not loaded)")
    dim = int(dim or 0)
    if ids_parts:
        ids = np.concatenate(ids_parts)
        sums = np.concatenate(sums_parts)
        counts = np.concatenate(counts_parts)
        order = np.argsort(ids, kind="stable")
        uniq, starts = np.unique(ids[order], return_index=True)
        sums = np.add.reduceat(sums[order], starts, axis=0)
        counts = np.add.reduceat(counts[order], starts)
    else:
        uniq, sums, counts = np.zeros(0, np.int64), np.zeros((0, dim)), np.zeros(0, np.int64)
    keep = np.isin(uniq, referenced)
    uniq, sums, counts = uniq[keep], sums[keep], counts[keep]
    means = (sums / counts[:, None]).astype(np.float32)
    cols = {
        "entity_id": _prefixed("c", uniq),
        "vector": pa.ListArray.from_arrays(pa.array(np.arange(len(uniq) + 1, dtype=np.int32) * dim),
                                           pa.array(means.reshape(-1))),
        "n_sentences": pa.array(counts.astype(np.int32)),
    }
    if keep_sentences:
        conv = np.concatenate([k[0] for k in kept]) if kept else np.zeros(0, np.int64)
        num = np.concatenate([k[1] for k in kept]) if kept else np.zeros(0, np.int64)
        spk = np.concatenate([k[2] for k in kept]) if kept else np.zeros(0, object)
        vec = np.concatenate([k[3] for k in kept]) if kept else np.zeros((0, dim), np.float32)
        order = np.lexsort((num, conv))
        conv, spk, vec = conv[order], spk[order], vec[order]
        dup = np.flatnonzero((conv[1:] == conv[:-1]) & (num[order][1:] == num[order][:-1]))
        if dup.size:
            c, n = conv[dup[0]], num[order][dup[0]]
            raise DataError(Problem(str(path / EMBEDDING_DIR), None, "sentence_number",
                                    "each (conversation_id, sentence_number) in one row of one file",
                                    f"conversation {c}, sentence {n} more than once (in two files)"))
        offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
        sent = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), dim)
        cols["sentence_vectors"] = pa.ListArray.from_arrays(offsets, sent)
        cols["sentence_speakers"] = pa.ListArray.from_arrays(offsets, pa.array(spk.astype(str), pa.string()))
    return pa.table(cols), dim


# ------------------------------------------------------------------------------ sessions/keywords
def _read_sessions(file: Path, referenced: np.ndarray, notes: list[str]) -> pa.Table:
    t = _read_csv(file, ["session_id", "action_number", "action_tags"])
    probs: list[Problem] = []
    sid, _ = _ints(t, "session_id", str(file), probs)
    num, _ = _ints(t, "action_number", str(file), probs)
    offsets, tags = _token_lists(t, "action_tags", str(file), probs)
    _raise(probs)
    _duplicates(probs, str(file), ("session_id", "action_number"), sid, num)
    _raise(probs)
    g = _group(sid, num, offsets, tags)
    keep = np.isin(g.ids, referenced)
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} sessions in {SESSIONS_FILE} that no purchase event references (not loaded)")
    table = pa.table({
        "entity_id": _prefixed("s", g.ids),
        "tokens": pa.ListArray.from_arrays(pa.array(g.token_offsets), pa.array(g.tokens, pa.int64())),
        "action_sizes": pa.ListArray.from_arrays(pa.array(g.row_offsets), pa.array(g.sizes, pa.int32())),
    })
    return table.filter(pa.array(keep))


def _read_keywords(file: Path, referenced: np.ndarray, notes: list[str]) -> pa.Table:
    t = _read_csv(file, ["conversation_id", "sentence_number", "sentence_speaker", "keywords"])
    probs: list[Problem] = []
    cid, _ = _ints(t, "conversation_id", str(file), probs)
    num, _ = _ints(t, "sentence_number", str(file), probs)
    speaker = _speakers(t, str(file), probs)
    offsets, kws = _token_lists(t, "keywords", str(file), probs)
    _raise(probs)
    _duplicates(probs, str(file), ("conversation_id", "sentence_number"), cid, num)
    _raise(probs)
    g = _group(cid, num, offsets, kws)
    keep = np.isin(g.ids, referenced)
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} conversations in {KEYWORDS_FILE} that no purchase event references "
                     "(not loaded)")
    table = pa.table({
        "entity_id": _prefixed("c", g.ids),
        "tokens": pa.ListArray.from_arrays(pa.array(g.token_offsets), pa.array(g.tokens, pa.int64())),
        "sentence_sizes": pa.ListArray.from_arrays(pa.array(g.row_offsets), pa.array(g.sizes, pa.int32())),
        "speakers": pa.ListArray.from_arrays(pa.array(g.row_offsets), pa.array(speaker[g.order].astype(str),
                                                                              pa.string())),
    })
    return table.filter(pa.array(keep))


def _read_post_filter(path: Path, st: InsuranceStructure) -> tuple[pa.Table | None, np.ndarray]:
    file = path / POST_FILTER_FILE
    if not file.exists():
        return None, np.zeros(0, np.int64)
    t = _read_csv(file, ["purchase_event_id", "item_id"])
    probs: list[Problem] = []
    pid, _ = _ints(t, "purchase_event_id", str(file), probs)
    item, _ = _ints(t, "item_id", str(file), probs)
    _raise(probs)
    _duplicates(probs, str(file), ("purchase_event_id", "item_id"), pid, item)
    _first(probs, ~np.isin(pid, st.purchase_event_ids), str(file), "purchase_event_id",
           f"a purchase event listed in {PURCHASES_FILE}", lambda r: str(pid[r]))
    _raise(probs)
    order = np.lexsort((item, pid))
    pid, item = pid[order], item[order]
    uniq, starts = np.unique(pid, return_index=True)
    offsets = np.r_[starts, len(pid)].astype(np.int32)
    table = pa.table({
        "entity_id": _prefixed("p", uniq),
        "tokens": pa.ListArray.from_arrays(pa.array(offsets), pc.cast(pa.array(item), pa.string())),
    })
    return table, np.unique(item)


def _read_text(file: Path, referenced: np.ndarray) -> pa.Table:
    t = _read_csv(file, ["conversation_id", "sentence_number", "sentence_speaker", "text"])
    probs: list[Problem] = []
    cid, _ = _ints(t, "conversation_id", str(file), probs)
    num, _ = _ints(t, "sentence_number", str(file), probs)
    speaker = _speakers(t, str(file), probs)
    _raise(probs)
    df = pd.DataFrame({"c": cid, "n": num, "line": speaker.astype(object) + ": " + t["text"].to_numpy(
        zero_copy_only=False).astype(object)})
    df = df[np.isin(cid, referenced)].sort_values(["c", "n"], kind="stable")
    joined = df.groupby("c", sort=True)["line"].agg("\n".join)
    return pa.table({"entity_id": _prefixed("c", joined.index.to_numpy(np.int64)),
                     "text": pa.array(joined.to_numpy(dtype=object), pa.string())})


@dataclass
class _Grouped:
    ids: np.ndarray  # entity ids (sorted, unique)
    order: np.ndarray  # file rows in (entity, number) order
    row_offsets: np.ndarray  # int32, per entity into the ordered rows
    sizes: np.ndarray  # tokens per ordered row
    token_offsets: np.ndarray  # int32, per entity into tokens
    tokens: np.ndarray  # int64, in (entity, number) order


def _group(ids: np.ndarray, numbers: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> _Grouped:
    """Rows (entity, number, token list) -> one entry per entity with its rows in `number` order."""
    order = np.lexsort((numbers, ids))
    sizes = np.diff(offsets)[order]
    # token positions of the rows in the new order
    starts = offsets[:-1][order]
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    tokens = values[np.repeat(starts, sizes) + within]
    uniq, first = np.unique(ids[order], return_index=True)
    row_offsets = np.r_[first, len(order)]
    token_offsets = np.r_[0, np.cumsum(sizes)][row_offsets]
    return _Grouped(uniq, order, row_offsets.astype(np.int32), sizes, token_offsets.astype(np.int32), tokens)


# --------------------------------------------------------------------------------- events and items
def _events(st: InsuranceStructure, is_conv: np.ndarray) -> pa.Table:
    u, p = st.users, st.purchases
    pid = u["purchase_event_id"].to_numpy(np.int64)
    conv = u["conversation_id"].fillna(0).to_numpy(np.int64)
    sess = u["session_id"].fillna(0).to_numpy(np.int64)
    touch_id = np.where(is_conv, np.char.add("c", conv.astype(str)), np.char.add("s", sess.astype(str)))
    owner = st.event_users()
    p_pid = p["purchase_event_id"].to_numpy(np.int64)
    n_t, n_p = len(u), len(p)
    frame = pd.DataFrame({
        "user_id": np.r_[u["user_id"].to_numpy(np.int64), owner.loc[p_pid].to_numpy(np.int64)].astype(str),
        "item_id": np.r_[np.full(n_t, NO_ITEM, dtype=object), p["item_id"].to_numpy(np.int64).astype(str)],
        "time": np.r_[pid * TIME_STRIDE + u["event_number"].to_numpy(np.int64),
                      p_pid * TIME_STRIDE + TIME_STRIDE - 1],
        "channel": np.r_[np.where(is_conv, "conversation", "session"), np.full(n_p, "purchase")],
        "event_id": np.r_[touch_id.astype(object), np.char.add("p", p_pid.astype(str)).astype(object)],
        "purchase_event_id": np.r_[pid, p_pid],
        "event_number": pd.arrays.IntegerArray(np.r_[u["event_number"].to_numpy(np.int64), np.zeros(n_p, np.int64)],
                                               np.r_[np.zeros(n_t, bool), np.ones(n_p, bool)]),
    })
    tiebreak = np.r_[np.zeros(n_t, np.int64), p["item_id"].to_numpy(np.int64)]
    frame = frame.iloc[np.lexsort((tiebreak, frame["time"].to_numpy()))]
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("time", pa.int64()),
                        ("channel", pa.string()), ("event_id", pa.string()), ("purchase_event_id", pa.int64()),
                        ("event_number", pa.int64())])
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def _items(st: InsuranceStructure, avail_items: np.ndarray, sim: dict | None) -> pa.Table:
    ids = set(st.purchases["item_id"].tolist()) | set(avail_items.tolist())
    names: dict[str, str] = {}
    if sim is not None:
        for k, v in (sim.get("items") or {}).items():
            names[str(k)] = v.get("name") if isinstance(v, dict) else str(v)
            if str(k).lstrip("-").isdigit():
                ids.add(int(k))
    item_ids = [str(i) for i in sorted(ids)]
    return pa.table({
        "item_id": pa.array(item_ids + [NO_ITEM], pa.string()),
        "name": pa.array([names.get(i) for i in item_ids] + [None], pa.string()),
        "is_product": pa.array([True] * len(item_ids) + [False], pa.bool_()),
    })


def _simulation_info(path: Path) -> dict | None:
    marker = path / SIMULATION_MARKER
    if not marker.exists():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        raise DataError(Problem(str(marker), None, None, "the JSON written by modalrec.sim.insurance",
                                str(e).splitlines()[0])) from None
    if not isinstance(info, dict) or not info.get("semi_synthetic"):
        raise DataError(Problem(str(marker), None, "semi_synthetic", "true (this file marks simulated data)",
                                repr(info.get("semi_synthetic") if isinstance(info, dict) else info)))
    return info


# ------------------------------------------------------------------------------------ CSV parsing
def _header(file: Path) -> list[str]:
    if not file.is_file():
        raise DataError(Problem(str(file), None, None, "a CSV file", "no such file"))
    with open(file, newline="", encoding="utf-8-sig") as fh:
        row = next(csv.reader(fh), None)
    if not row:
        raise DataError(Problem(str(file), None, None, "a header row", "an empty file"))
    return [c.strip() for c in row]


def _read_csv(file: Path, columns: list[str], float_columns: list[str] = (), header: list[str] | None = None
              ) -> pa.Table:
    """Read `columns` as strings and `float_columns` as float32; every malformed row is a Problem."""
    header = header if header is not None else _header(file)
    wanted = list(columns) + list(float_columns)
    missing = [c for c in wanted if c not in header]
    if missing:
        shown = header if len(header) <= 8 else header[:8] + ["..."]
        raise DataError([Problem(str(file), None, c, f"a column named '{c}'", f"no such column (has {shown})")
                         for c in missing])
    types = {c: pa.string() for c in columns} | {c: pa.float32() for c in float_columns}
    # only an empty cell is missing: "nan" in an embedding column is read as NaN and reported as such
    convert = pacsv.ConvertOptions(column_types=types, include_columns=wanted, null_values=[""],
                                   strings_can_be_null=False, quoted_strings_can_be_null=False)
    bad_rows: list = []
    read = pacsv.ReadOptions(column_names=header, skip_rows=1)
    try:
        table = pacsv.read_csv(file, read_options=read, convert_options=convert,
                               parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad_rows.append(r)
                                                                or "skip"))
        if not bad_rows:
            return table
        error = f"{len(bad_rows)} malformed row(s)"
    except pa.ArrowInvalid as e:  # a value that is not a number
        error = str(e).splitlines()[0]
    raise DataError(_diagnose(file, header, columns, float_columns)
                    or [Problem(str(file), None, None, "a readable CSV file", error)])


def _diagnose(file: Path, header: list[str], columns: list[str], float_columns: list[str]) -> list[Problem]:
    """Where a fast read failed: rows with the wrong number of fields, else cells that are not numbers.

    Reads everything as text on one thread, the only way the CSV reader reports line numbers."""
    wanted = list(columns) + list(float_columns)
    bad_rows: list = []
    try:
        table = pacsv.read_csv(
            file, read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted}, include_columns=wanted),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda r: bad_rows.append(r) or "skip"))
    except pa.ArrowInvalid as e:
        return [Problem(str(file), None, None, "a readable CSV file", str(e).splitlines()[0])]
    probs = []
    for r in bad_rows[:20]:
        col = header[r.actual_columns] if r.actual_columns < len(header) else None
        probs.append(Problem(str(file), r.number - 1 if r.number else None, col,
                             f"{r.expected_columns} fields as in the header",
                             f"{r.actual_columns} field(s): {r.text[:60]!r}"))
    if probs:
        return probs
    for c in float_columns:
        try:
            pc.cast(table[c], pa.float32())
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        for i, v in enumerate(table[c].to_pylist()):
            try:
                float(v)
            except (TypeError, ValueError):
                return [Problem(str(file), i + 1, c, "a number", repr(v))]
    return []


def _ints(table: pa.Table, column: str, file: str, probs: list[Problem], *, optional: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids from a string column ("12", "12.0"); empty cells allowed only when `optional`."""
    col = pc.utf8_trim_whitespace(table[column].combine_chunks() if table.num_rows else pa.array([], pa.string()))
    empty = pc.equal(col, "").to_numpy(zero_copy_only=False).astype(bool)
    ok = pc.match_substring_regex(col, _INT).to_numpy(zero_copy_only=False).astype(bool)
    bad = ~ok & ~(empty & optional)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        what = "an integer" + (" or an empty cell" if optional else "")
        more = f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else ""
        probs.append(Problem(file, r + 1, column, what, repr(col[r].as_py()) + more))
        return np.zeros(len(col), np.int64), ~empty
    clean = pc.if_else(pa.array(ok), pc.replace_substring_regex(col, r"\.0*$", ""), pa.scalar("0"))
    return pc.cast(clean, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64), ~empty


def _speakers(table: pa.Table, file: str, probs: list[Problem]) -> np.ndarray:
    raw = table["sentence_speaker"].to_numpy(zero_copy_only=False).astype(str)
    norm = np.char.lower(np.char.strip(raw))
    bad = ~np.isin(norm, SPEAKERS)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        more = f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else ""
        probs.append(Problem(file, r + 1, "sentence_speaker", "'user' or 'agent'", repr(str(raw[r])) + more))
    return norm.astype(object)


def _token_lists(table: pa.Table, column: str, file: str, probs: list[Problem]) -> tuple[np.ndarray, np.ndarray]:
    """'12,40,77' (also '[12, 40, 77]' or blank-separated; empty = no ids) -> (row offsets, int64 ids)."""
    n = table.num_rows
    col = table[column].combine_chunks() if n else pa.array([], pa.string())
    stripped = pc.utf8_trim_whitespace(pc.replace_substring_regex(col, r"[\[\]\"']", ""))
    parts = pc.split_pattern_regex(stripped, r"[,;\s]+")
    flat = pc.list_flatten(parts)
    parent = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False).astype(bool)
    flat, parent = flat.filter(pa.array(keep)), parent[keep]
    ok = pc.match_substring_regex(flat, _INT).to_numpy(zero_copy_only=False).astype(bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        probs.append(Problem(file, int(parent[i]) + 1, column, "a comma-separated list of integer ids",
                             repr(col[int(parent[i])].as_py())))
        return np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
    values = pc.cast(pc.replace_substring_regex(flat, r"\.0*$", ""), pa.int64()).to_numpy(zero_copy_only=False)
    counts = np.bincount(parent, minlength=n)
    return np.r_[0, np.cumsum(counts)].astype(np.int64), values.astype(np.int64)


def _first(probs: list[Problem], mask: np.ndarray, file: str, column: str, expected: str, found) -> None:
    """One Problem for the first True row of `mask` (with the count of such rows)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        r = int(np.flatnonzero(mask)[0])
        more = f" ({int(mask.sum())} such rows)" if mask.sum() > 1 else ""
        probs.append(Problem(file, r + 1, column, expected, found(r) + more))


def _duplicates(probs: list[Problem], file: str, columns: tuple[str, str], a: np.ndarray, b: np.ndarray) -> None:
    order = np.lexsort((b, a))
    same = (a[order][1:] == a[order][:-1]) & (b[order][1:] == b[order][:-1])
    dup = np.zeros(len(a), dtype=bool)
    dup[order[1:][same]] = True
    _first(probs, dup, file, columns[1], f"one row per ({columns[0]}, {columns[1]})",
           lambda r: f"a repeat of ({a[r]}, {b[r]})")


def _raise(probs: list[Problem]) -> None:
    if probs:
        raise DataError(probs)


def _prefixed(prefix: str, ids: np.ndarray) -> pa.Array:
    return pa.array(np.char.add(prefix, np.asarray(ids, dtype=np.int64).astype(str)).astype(object), pa.string())
