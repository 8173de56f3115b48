"""Paired comparisons over seeds (modalrec.eval.compare): the gains benchmarks/livestream.py reports for GIE and MFQ."""

import numpy as np
import pytest

from modalrec.eval.compare import KEYS, between_user_auc, gains, overall_gains

GIE_PAIRS = {"GIE in MMBee (mmbee - mmbee-no-gie)": ("mmbee", "mmbee-no-gie"),
             "GIE on SIM (mmbee-no-mfq - sim-no-user-id)": ("mmbee-no-mfq", "sim-no-user-id")}


def _row(gauc):
    return {"gauc": gauc}


def test_gains_pair_seed_by_seed_over_the_common_seeds():
    per_seed = {
        "mmbee": {0: {"cold": _row(0.70), "sparse": _row(0.75)}, 1: {"cold": _row(0.72), "sparse": _row(0.71)},
                  2: {"cold": _row(0.60), "sparse": _row(0.60)}},
        "mmbee-no-gie": {0: {"cold": _row(0.65), "sparse": _row(0.70)}, 1: {"cold": _row(0.70), "sparse": _row(0.70)}},
        # a bucket one run lacks (no positives there) is left out rather than compared over fewer seeds
        "sim-no-user-id": {0: {"cold": _row(0.5)}, 1: {"cold": _row(0.5), "sparse": _row(0.5)}},
        "mmbee-no-mfq": {0: {"cold": _row(0.6), "sparse": _row(0.6)}, 1: {"cold": _row(0.52), "sparse": _row(0.6)}},
    }
    out = gains(per_seed, GIE_PAIRS)
    mm = out["GIE in MMBee (mmbee - mmbee-no-gie)"]
    assert mm["seeds"] == [0, 1]  # seed 2 ran without its pair: not used
    np.testing.assert_allclose(mm["cold"]["runs"], [0.05, 0.02])
    np.testing.assert_allclose(mm["sparse"]["runs"], [0.05, 0.01])
    assert mm["cold"]["mean"] == pytest.approx(0.035)
    assert mm["sparse"]["std"] == pytest.approx(np.std([0.05, 0.01], ddof=1))
    on_sim = out["GIE on SIM (mmbee-no-mfq - sim-no-user-id)"]
    assert set(on_sim) == {"seeds", "cold"}
    np.testing.assert_allclose(on_sim["cold"]["runs"], [0.1, 0.02])
    # a missing variant gives no row; one seed has no spread
    assert gains({"mmbee": per_seed["mmbee"]}, GIE_PAIRS) == {}
    one = gains({"mmbee": {3: {"cold": _row(0.7)}}, "mmbee-no-gie": {3: {"cold": _row(0.6)}}}, GIE_PAIRS)
    assert one["GIE in MMBee (mmbee - mmbee-no-gie)"]["cold"]["std"] == 0.0


def test_overall_gains_pair_the_runs_seed_by_seed():
    def run(seeds, auc):
        return {"seeds": seeds, "test": {k: {"runs": [a + (0.1 if k == "logloss" else 0.0) for a in auc]}
                                         for k in KEYS}}

    runs = {"mmbee": run([0, 1, 2], [0.80, 0.81, 0.79]), "mmbee-no-gie": run([2, 0], [0.70, 0.75])}
    out = overall_gains(runs, GIE_PAIRS)
    assert list(out) == ["GIE in MMBee (mmbee - mmbee-no-gie)"]  # the SIM pair has no runs here
    g = out["GIE in MMBee (mmbee - mmbee-no-gie)"]
    assert g["seeds"] == [0, 2]  # seed 0 of mmbee against seed 0 of the ablation, wherever it sits in the list
    np.testing.assert_allclose(g["auc"]["runs"], [0.80 - 0.75, 0.79 - 0.70])
    np.testing.assert_allclose(g["logloss"]["runs"], [0.05, 0.09])


def test_between_user_auc_ranks_users_not_samples():
    users = np.array([1, 1, 2, 2, 3, 3])
    labels = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # within each user the order is wrong, across users it is right: users 1 and 2 (one gift each) above user 3
    logits = np.array([1.0, 2.0, 1.0, 2.0, -5.0, -4.0])
    assert between_user_auc(labels, logits, users) == pytest.approx(0.75)  # 2 users tie at the top
    flat = np.array([1.0, 2.0, -5.0, -4.0, 3.0, 0.0])  # user 3 (no gift) now on top: worse across users
    assert between_user_auc(labels, flat, users) < 0.5
