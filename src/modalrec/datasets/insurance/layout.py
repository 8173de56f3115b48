"""The insurance release layout: its file names, the id and time conventions of the mapping, source and
citation."""

from __future__ import annotations

import re

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
