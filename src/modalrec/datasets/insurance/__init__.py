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

The package: `load` (here, with the ``simulation.json`` check); ``layout`` (file names and constants);
``structure`` (`InsuranceStructure`, `load_structure`); ``embeddings`` (`iter_sentence_embeddings`, the
conversation means); ``content`` (session tags, keywords, post-filter, sentence text); ``tables`` (the
events and items tables); ``csvio`` (CSV reading and the checks that raise `DataError`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...data.errors import DataError, Problem
from ...data.interaction import DatasetSpec, InteractionData, ModalitySpec
from .content import _read_keywords, _read_post_filter, _read_sessions, _read_text
from .embeddings import SentenceEmbeddings, _read_embeddings, embedding_files, iter_sentence_embeddings
from .layout import (
    CHANNELS,
    CITATION,
    EMBEDDING_DIR,
    EMBEDDING_FILE,
    KEYWORDS_FILE,
    NO_ITEM,
    POST_FILTER_FILE,
    PURCHASES_FILE,
    RELEASE_SOURCE,
    SESSIONS_FILE,
    SIMULATED_SOURCE,
    SIMULATION_MARKER,
    SIMULATION_TEXT,
    SPEAKERS,
    TIME_STRIDE,
    USERS_FILE,
)
from .structure import InsuranceStructure, load_structure
from .tables import _events, _items

__all__ = [
    "CHANNELS", "CITATION", "EMBEDDING_DIR", "EMBEDDING_FILE", "KEYWORDS_FILE", "NO_ITEM", "POST_FILTER_FILE",
    "PURCHASES_FILE", "RELEASE_SOURCE", "SESSIONS_FILE", "SIMULATED_SOURCE", "SIMULATION_MARKER", "SIMULATION_TEXT",
    "SPEAKERS", "TIME_STRIDE", "USERS_FILE", "InsuranceStructure", "SentenceEmbeddings", "embedding_files",
    "iter_sentence_embeddings", "load", "load_structure",
]


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
        # times are an order (purchase event id * TIME_STRIDE + position), not unix seconds: any non-negative one
        time_range=[0, float(np.iinfo(np.int64).max)],
    )
    return InteractionData(spec, events, items, None, content).validate(str(path))


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

