"""The KuaiLive release layout: file names, columns, channels, title-embedding file names, source and
citation."""

from __future__ import annotations

from typing import Literal

SOURCE = "KuaiLive, https://imgkkk574.github.io/KuaiLive (Zenodo record 16565801)"
CITATION = ("Changle Qu, Sunhao Dai, Ke Guo, Liqin Zhao, Yanan Niu, Xiao Zhang, Jun Xu. 2025. KuaiLive: A "
            "Real-time Interactive Dataset for Live Streaming Recommendation. arXiv:2508.05633")
ROOM_FILE, USER_FILE, STREAMER_FILE = "room.csv", "user.csv", "streamer.csv"
ROOM_COLUMNS = ["p_date", "live_id", "streamer_id", "live_type", "start_timestamp", "end_timestamp",
                "live_content_category", "live_name_id"]
INTERACTION_COLUMNS = ["user_id", "live_id", "streamer_id", "timestamp"]
# file -> (channel, its extra numeric column)
INTERACTION_FILES = {
    "click.csv": ("click", "watch_live_time"),
    "comment.csv": ("comment", None),
    "like.csv": ("like", None),
    "gift.csv": ("gift", "gift_price"),
    "negative.csv": ("impression", None),
}
CHANNELS = ["impression", "click", "comment", "like", "gift"]  # order of events at equal times
TITLE_FILES = ("title_embeddings.npy", "title_embeddings_pca128.npy", "title_embeddings.pca128.npy",
               "title_embeddings.pca128.npz", "title_embeddings_pca128.npz", "title_embeddings.npz")
StreamerMismatch = Literal["error", "room", "drop"]
