"""The event structure of the insurance release: data_users.csv and data_purchase_events.csv, read and
checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...data.errors import Problem
from .csvio import _duplicates, _first, _ints, _raise, _read_csv
from .layout import PURCHASES_FILE, TIME_STRIDE, USERS_FILE


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

