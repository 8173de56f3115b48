"""Graph features of the pipeline (MMBee's GIE): fitted on the training period's edge events, looked up
for every sample offline, recomputed for a user with new edge events online.

The edges are user -> group events of one channel (gifts to streamers: `task.graph.channel`, the group
being the item categorical feature `task.graph.streamer_feature`), optionally weighted by an event
column. Offline a sample reads the user's U->A->A expansion as of its own time and its target group's
A->U->A expansion (training samples: from the graph refreshed before the sample's window with
`task.graph.refresh`). Online the training-period edge totals plus the user's stored edge events since
the graph's end give the user's expansion (`graph.gie.OnlineExpansion`), so a new gift changes the next
request; a user without new ones reads the offline row bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..data.batch import GraphInputs
from ..data.errors import DataError, Problem
from ..graph.gie import GIEConfig, GraphExpansion, OnlineExpansion, RefreshedExpansion, gift_totals
from ..graph.swing import CSR

TOTALS_FILE = "totals.safetensors"
SETTINGS_FILE = "graph.json"
MAX_ONLINE_EDGES = 10_000  # the latest edge events a user's online expansion reads


def _inputs(parts: dict[str, torch.Tensor]) -> GraphInputs:
    return GraphInputs(parts["gie_user"], parts["gie_user_w"], parts["gie_streamer"], parts["gie_streamer_w"])


@dataclass
class GraphFeatures:
    channel: str  # events of this channel are the edges
    group_feature: str  # the item categorical feature naming an edge's target (the streamer)
    weight_column: str | None
    expansion: GraphExpansion  # fitted on every edge of the training period
    totals: CSR  # training-period edge totals per (user, group): the online recomputation's start
    edges_before: int  # the graph holds every edge event before this time; later ones are new to it
    refreshed: RefreshedExpansion | None = None  # training samples' graphs (task.graph.refresh); not saved

    def __post_init__(self) -> None:
        self.online = OnlineExpansion(self.expansion, self.totals)

    @classmethod
    def fit(cls, users: np.ndarray, groups: np.ndarray, times: np.ndarray, weights: np.ndarray | None,
            n_users: int, n_groups: int, cfg, cutoff: int | None, train_times: np.ndarray) -> GraphFeatures:
        """`users` (user vocabulary rows), `groups` (codes of `cfg.streamer_feature`), `times` and `weights` of
        the training period's edge events (every edge strictly before `cutoff`, the first validation or test
        sample; None: no later split); `train_times`: the training samples' times (for `cfg.refresh`)."""
        g: GIEConfig = cfg.gie
        expansion = GraphExpansion.fit(users, groups, weights, n_users, n_groups, g, times=times)
        totals = gift_totals(users, groups, weights, n_users, n_groups, g.weight_mode)
        if cutoff is not None:
            before = int(cutoff)
        else:  # no later split: every edge of the data is in the graph
            before = int(times.max()) + 1 if len(times) else int(np.iinfo(np.int64).min)
        refreshed = None
        if cfg.refresh > 1 and len(train_times):
            starts = np.unique(np.quantile(train_times, np.arange(1, cfg.refresh) / cfg.refresh,
                                           method="higher").astype(np.int64))
            end = int(cutoff) if cutoff is not None else int(max(train_times.max(), times.max())) + 1
            refreshed = RefreshedExpansion.fit(users, groups, weights, times, np.r_[starts[starts < end], end], expansion)
        return cls(cfg.channel, cfg.streamer_feature, cfg.weight_column, expansion, totals, before, refreshed)

    # ------------------------------------------------------------------------------------------- offline
    def inputs(self, users: np.ndarray, groups: np.ndarray, times: np.ndarray, train: bool) -> GraphInputs:
        """Per sample (user rows, target group codes, times): as of each sample's time; training samples read
        the graph refreshed before their window (with task.graph.refresh), so none reads its own edge."""
        if train and self.refreshed is not None:
            return _inputs(self.refreshed.lookup(users, groups, times=times))
        return _inputs(self.expansion.lookup(users, groups, times=times))

    def graph_init(self) -> dict[str, np.ndarray]:
        return self.expansion.graph_init()

    # -------------------------------------------------------------------------------------------- online
    def request(self, user: int, groups: np.ndarray, new_groups: np.ndarray | None,
                new_amounts: np.ndarray | None) -> GraphInputs:
        """A service request: one user (row; 0 = unknown) against candidates of target groups `groups` (C,),
        the user's edge events since the graph's end as group codes and amounts (None: none)."""
        if new_groups is None or not len(new_groups):
            seq, w = self.online.offline(user)
        else:
            seq, w = self.online.expand(user, new_groups, new_amounts)
        c = len(groups)
        parts = self.expansion.lookup(np.zeros(c, np.int64), groups)
        # the user's expansion is the same for every candidate: one row expanded (Batch.shared_history)
        parts["gie_user"] = torch.from_numpy(np.ascontiguousarray(seq)).unsqueeze(0).expand(c, -1)
        parts["gie_user_w"] = torch.from_numpy(np.ascontiguousarray(w)).unsqueeze(0).expand(c, -1)
        return _inputs(parts)

    def amounts(self, values: list[float | None]) -> np.ndarray:
        """What each online edge event adds to its pair: 1, or its value with weight mode 'value'."""
        if self.online.cfg.weight_mode == "value":
            return np.array([v if v is not None else 0.0 for v in values], dtype=np.float64)
        return np.ones(len(values), dtype=np.float64)

    # ----------------------------------------------------------------------------------------- persistence
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.expansion.save(folder)
        t = self.totals
        save_file({"indptr": t.indptr, "groups": t.indices, "totals": t.data.astype(np.float64)}, str(folder / TOTALS_FILE))
        (folder / SETTINGS_FILE).write_text(json.dumps({
            "channel": self.channel, "group_feature": self.group_feature, "weight_column": self.weight_column,
            "edges_before": self.edges_before}, indent=1))

    @classmethod
    def load(cls, folder: Path) -> GraphFeatures:
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
            t = load_file(str(folder / TOTALS_FILE))
        except (OSError, ValueError) as e:
            raise DataError(Problem(str(folder), None, None, "the graph features written with the pipeline",
                                    str(e).splitlines()[0])) from None
        expansion = GraphExpansion.load(folder)
        totals = CSR(t["indptr"].astype(np.int64), t["groups"].astype(np.int64), t["totals"].astype(np.float64),
                     expansion.n_streamers)
        if totals.n_rows != expansion.n_users:
            raise DataError(Problem(str(folder / TOTALS_FILE), None, "indptr", f"{expansion.n_users} user rows",
                                    str(totals.n_rows)))
        return cls(settings["channel"], settings["group_feature"], settings.get("weight_column"), expansion, totals,
                   int(settings["edges_before"]))
