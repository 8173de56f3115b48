"""GIE offline part: Swing against a brute-force reference, metapath expansion on hand-made graphs,
cold rows, GraphCL on a planted-community graph, persistence and determinism."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import numpy as np
import pytest
import torch

from modalrec.data.errors import DataError
from modalrec.graph import GIEConfig, GraphExpansion, build_u2a, swing
from modalrec.graph.graphcl import GraphCLParams, pretrain_graphcl
from modalrec.graph.swing import capped_edges

FAST = {"progress": False, "pretrain_epochs": 0}


def brute_swing(users, streamers, alpha, alpha_user, beta):
    """Swing straight from the formula: every streamer pair, every unordered pair of common users."""
    items_of, users_of = defaultdict(set), defaultdict(set)
    for u, a in zip(users.tolist(), streamers.tolist()):
        items_of[u].add(a)
        users_of[a].add(u)
    weight = {u: (len(items) + alpha_user) ** -beta for u, items in items_of.items()}
    sims = {}
    for i, j in itertools.permutations(sorted(users_of), 2):
        common = sorted(users_of[i] & users_of[j])
        s = sum(weight[x] * weight[y] / (alpha + len(items_of[x] & items_of[y]))
                for x, y in itertools.combinations(common, 2))
        if s > 0:
            sims[(i, j)] = s
    return sims


def as_dict(csr):
    out = {}
    for r in range(csr.n_rows):
        cols, vals = csr.row(r)
        out.update({(r, int(c)): float(v) for c, v in zip(cols, vals)})
    return out


def random_graph(seed, n_users=40, n_streamers=12, n_edges=160):
    rng = np.random.default_rng(seed)
    return rng.integers(1, n_users, n_edges), rng.integers(1, n_streamers, n_edges), n_users, n_streamers


@pytest.mark.parametrize("alpha,alpha_user,beta", [(1.0, 5.0, 0.5), (0.0, 0.0, 0.3), (2.5, 1.0, 1.0)])
def test_swing_matches_brute_force(alpha, alpha_user, beta):
    u, a, n_u, n_s = random_graph(0)
    g = build_u2a(u, a, None, n_u, n_s)
    got = as_dict(swing(g, k=n_s, alpha=alpha, alpha_user=alpha_user, beta=beta,
                        max_users_per_item=10_000, max_items_per_user=10_000))
    want = brute_swing(u, a, alpha, alpha_user, beta)
    assert got.keys() == want.keys()
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-12), key
    # Swing is symmetric before the top-k cut
    for (i, j), v in got.items():
        assert got[(j, i)] == pytest.approx(v, rel=1e-12)


def test_swing_with_caps_is_exact_on_the_capped_graph_and_keeps_top_k_in_order():
    u, a, n_u, n_s = random_graph(1, n_users=60, n_streamers=10, n_edges=400)
    g = build_u2a(u, a, None, n_u, n_s)
    cu, ca = capped_edges(g, max_items_per_user=4, max_users_per_item=7, seed=3)
    assert len(cu) < g.n_edges  # the caps bite
    assert np.bincount(cu).max() <= 4 and np.bincount(ca).max() <= 7
    want = brute_swing(cu, ca, 1.0, 5.0, 0.5)
    a2a = swing(g, k=3, max_items_per_user=4, max_users_per_item=7, seed=3)
    for i in range(1, n_s):
        row = sorted(((v, j) for (r, j), v in want.items() if r == i), key=lambda x: (-x[0], x[1]))[:3]
        cols, vals = a2a.row(i)
        assert cols.tolist() == [j for _, j in row]
        np.testing.assert_allclose(vals, [v for v, _ in row], rtol=1e-12)
    # the sample depends on the seed, not on the order the triples arrive in
    perm = np.random.default_rng(0).permutation(len(u))
    again = swing(build_u2a(u[perm], a[perm], None, n_u, n_s), k=3, max_items_per_user=4, max_users_per_item=7,
                  seed=3)
    assert as_dict(again) == as_dict(a2a)


def test_swing_meets_its_speed_budget_at_scale_smoke():
    """Not a timing assertion: a mid-size power-law graph runs and yields a sane graph."""
    rng = np.random.default_rng(0)
    n_u, n_s, n_e = 5_000, 500, 12_000
    ps = 1 / np.arange(1, n_s) ** 0.9
    pu = 1 / np.arange(1, n_u) ** 0.7
    u = rng.choice(n_u - 1, n_e, p=pu / pu.sum()) + 1
    a = rng.choice(n_s - 1, n_e, p=ps / ps.sum()) + 1
    a2a = swing(build_u2a(u, a, None, n_u, n_s), k=10)
    assert a2a.n_rows == n_s and a2a.degrees().max() <= 10 and a2a.degrees()[0] == 0
    rows = a2a.rows_of_entries()
    assert (a2a.indices != rows).all() and (a2a.data > 0).all()


# -------------------------------------------------------------------------------------- expansion
# streamers A=1, B=2, C=3, D=4 (E=5 nobody gifts); users 1..7, user 8 never gifts
A, B, C, D, E = 1, 2, 3, 4, 5
HAND = [(1, A), (2, A), (2, B), (3, A), (3, B), (6, A), (6, B), (4, A), (4, C), (5, A), (5, C), (7, D)]


def hand_fit(**over):
    u, a = np.array([x for x, _ in HAND]), np.array([y for _, y in HAND])
    return GraphExpansion.fit(u, a, None, n_users=9, n_streamers=6,
                              cfg=GIEConfig(**(FAST | {"expansion_length": 3} | over)))


def test_user_who_gifted_a_gets_its_swing_neighbours_in_order():
    g = hand_fit()
    # Swing(A, B): 3 user pairs among {2, 3, 6}; Swing(A, C): 1 pair {4, 5}; every one of them has |I| = 2
    w = (2 + 5.0) ** -0.5
    np.testing.assert_allclose(g.a2a.row(A)[1], [3 * w * w / 3, w * w / 3])
    assert g.a2a.row(A)[0].tolist() == [B, C]
    assert g.user_seq[1].tolist() == [B, C, 0]  # user 1 gifted only A
    np.testing.assert_allclose(g.user_w[1], [0.75, 0.25, 0.0], rtol=1e-6)
    # user 2 gifted A and B (equal weight): 1/2 * P(. | A) + 1/2 * P(. | B), B's only neighbour is A
    assert g.user_seq[2].tolist() == [A, B, C]
    np.testing.assert_allclose(g.user_w[2], [0.5, 0.375, 0.125], rtol=1e-6)


def test_exclude_gifted_drops_the_users_own_streamers():
    g = hand_fit(exclude_gifted=True)
    assert g.user_seq[2].tolist() == [C, 0, 0]
    np.testing.assert_allclose(g.user_w[2], [0.125, 0, 0], rtol=1e-6)
    assert g.user_seq[1].tolist() == [B, C, 0]


def test_streamer_expansion_finds_co_gifted_streamers_in_score_order():
    g = hand_fit()
    # A's audience: users 1..6, each 1/6; 2, 3, 6 put half their weight on B, 4 and 5 half on C
    assert g.streamer_seq[A].tolist() == [B, C, 0]
    np.testing.assert_allclose(g.streamer_w[A], [0.25, 1 / 6, 0], rtol=1e-6)
    assert g.streamer_seq[B].tolist() == [A, 0, 0]
    np.testing.assert_allclose(g.streamer_w[B], [0.5, 0, 0], rtol=1e-6)


def test_streamer_expansion_uses_the_gift_weights():
    # value mode, no log: user 1 spends 9 on S1 and 1 on S2; user 2 spends 1 on S1 and 1 on S3
    u, a, price = np.array([1, 1, 2, 2]), np.array([1, 2, 1, 3]), np.array([9.0, 1.0, 1.0, 1.0])
    g = GraphExpansion.fit(u, a, price, 3, 4, GIEConfig(**FAST, weight_mode="value", log_scale=False))
    assert g.streamer_seq[1, :2].tolist() == [2, 3]
    np.testing.assert_allclose(g.streamer_w[1, :2], [0.9 * 0.1, 0.1 * 0.5], rtol=1e-6)
    # count mode ignores the prices: both users weigh 1/2 and both targets tie (lower index first)
    g = GraphExpansion.fit(u, a, price, 3, 4, GIEConfig(**FAST, log_scale=False))
    np.testing.assert_allclose(g.streamer_w[1, :2], [0.25, 0.25], rtol=1e-6)
    assert g.streamer_seq[1, :2].tolist() == [2, 3]


def test_cold_users_and_streamers_get_padding_rows_and_lookup_shapes():
    g = hand_fit(pretrain_epochs=2, dim=4, batch_size=4)
    for row in (0, 7, 8):  # padding; gifted only D, which has no Swing neighbour; never gifted
        assert (g.user_seq[row] == 0).all() and (g.user_w[row] == 0).all()
    for row in (0, D, E):  # D's only user gifted nothing else; nobody gifted E
        assert (g.streamer_seq[row] == 0).all() and (g.streamer_w[row] == 0).all()
    assert (g.user_emb[[0, 8]] == 0).all() and (g.streamer_emb[[0, E]] == 0).all()
    assert (np.abs(g.user_emb[1:8]).sum(1) > 0).all()
    out = g.lookup(np.array([1, 8, 0]), torch.tensor([A, E, B]))
    assert set(out) == {"gie_user", "gie_user_w", "gie_streamer", "gie_streamer_w"}
    assert out["gie_user"].dtype == torch.long and out["gie_user_w"].dtype == torch.float32
    assert out["gie_user"].shape == (3, 3) and out["gie_streamer"].shape == (3, 3)
    assert out["gie_user"][0].tolist() == [B, C, 0] and out["gie_user"][1].tolist() == [0, 0, 0]
    assert out["gie_streamer"][1].tolist() == [0, 0, 0] and out["gie_streamer"][2].tolist() == [A, 0, 0]
    assert g.lookup(np.array([[1, 2]]), np.array([[A, B]]))["gie_user"].shape == (1, 2, 3)
    with pytest.raises(IndexError, match="user_idx: index 9 out of range 0..8"):
        g.lookup(np.array([9]), np.array([1]))
    with pytest.raises(IndexError, match="streamer_idx: index -1"):
        g.lookup(np.array([1]), np.array([-1]))


def test_bad_triples_are_rejected_with_the_position():
    with pytest.raises(ValueError, match=r"streamers\[1\] = 6: expected an index in 1..5"):
        GraphExpansion.fit(np.array([1, 2]), np.array([1, 6]), None, 3, 6, GIEConfig(**FAST))
    with pytest.raises(ValueError, match=r"users\[0\] = 0"):
        GraphExpansion.fit(np.array([0]), np.array([1]), None, 3, 6, GIEConfig(**FAST))
    with pytest.raises(ValueError, match=r"weights\[1\] = -2.0: expected a finite number >= 0"):
        GraphExpansion.fit(np.array([1, 2]), np.array([1, 2]), np.array([1.0, -2.0]), 3, 6,
                           GIEConfig(**FAST, weight_mode="value"))
    with pytest.raises(ValueError, match="needs weights"):
        GraphExpansion.fit(np.array([1]), np.array([1]), None, 3, 6, GIEConfig(**FAST, weight_mode="value"))


def test_no_gifts_at_all_gives_an_all_padding_expansion():
    g = GraphExpansion.fit(np.zeros(0, np.int64), np.zeros(0, np.int64), None, 4, 3,
                           GIEConfig(progress=False, dim=8))
    assert (g.user_seq == 0).all() and (g.streamer_seq == 0).all()
    assert g.user_emb.shape == (4, 8) and not g.user_emb.any()


# -------------------------------------------------------------------------------------- GraphCL
def planted(seed=0, n_comm=2, users_per=60, streamers_per=8, gifts=3, cross=0.05):
    rng = np.random.default_rng(seed)
    us, ss = [], []
    for c in range(n_comm):
        for k in range(users_per):
            user = 1 + c * users_per + k
            for _ in range(gifts):
                home = c if rng.random() > cross else rng.integers(n_comm)
                us.append(user)
                ss.append(1 + home * streamers_per + rng.integers(streamers_per))
    return np.array(us), np.array(ss), 1 + n_comm * users_per, 1 + n_comm * streamers_per, streamers_per


def community_gap(emb, streamers_per):
    z = emb[1:] / np.linalg.norm(emb[1:], axis=1, keepdims=True)
    cos = z @ z.T
    comm = np.arange(len(z)) // streamers_per
    same = (comm[:, None] == comm[None, :]) & ~np.eye(len(z), dtype=bool)
    return cos[same].mean() - cos[comm[:, None] != comm[None, :]].mean()


def test_graphcl_pulls_co_gifted_streamers_together():
    u, s, n_u, n_s, per = planted()
    g = build_u2a(u, s, None, n_u, n_s)
    a2a = swing(g, k=5)
    params = GraphCLParams(dim=16, epochs=20, batch_size=128, seed=0)
    trained = pretrain_graphcl(g, a2a, params)
    untrained = pretrain_graphcl(g, a2a, GraphCLParams(dim=16, epochs=0, seed=0))
    gap, base = community_gap(trained.streamer_emb, per), community_gap(untrained.streamer_emb, per)
    assert gap > 0.5 and gap > base + 0.2, (gap, base)
    assert trained.history[-1]["bpr"] < trained.history[0]["bpr"]
    # users: the embedding of a user scores their own community's streamers above the other's
    scores = trained.user_emb[1:] @ trained.streamer_emb[1:].T
    own = (np.arange(n_u - 1) // 60)[:, None] == (np.arange(n_s - 1) // per)[None, :]
    assert (scores * own).sum(1).mean() / per > (scores * ~own).sum(1).mean() / per + 0.5


def test_graphcl_on_a_mostly_isolated_node_space():
    # the planted graph spread over 40x as many streamers and 3x as many users (KuaiLive: most streamers never
    # get a gift): training runs on the nodes with an edge, renumbered; the rest stay exactly 0
    u, s, n_u, n_s, per = planted()
    g = build_u2a(3 * u, 40 * s, None, 3 * n_u, 40 * n_s)
    trained = pretrain_graphcl(g, swing(g, k=5), GraphCLParams(dim=16, epochs=20, batch_size=128, seed=0))
    lit_s, lit_u = 40 * np.arange(1, n_s), 3 * np.arange(1, n_u)
    dark_s, dark_u = np.setdiff1d(np.arange(40 * n_s), lit_s), np.setdiff1d(np.arange(3 * n_u), lit_u)
    assert not trained.streamer_emb[dark_s].any() and not trained.user_emb[dark_u].any()
    assert (np.abs(trained.streamer_emb[lit_s]).sum(1) > 0).all()
    gap = community_gap(np.vstack([np.zeros(16, np.float32), trained.streamer_emb[lit_s]]), per)
    assert gap > 0.5, gap


# ---------------------------------------------------------------------------- persistence / seeds
def test_save_load_round_trip(tmp_path):
    u, s, n_u, n_s, _ = planted(users_per=20)
    g = GraphExpansion.fit(u, s, None, n_u, n_s, GIEConfig(progress=False, pretrain_epochs=2, dim=8,
                                                           expansion_length=5))
    g.save(tmp_path / "gie")
    assert sorted(p.name for p in (tmp_path / "gie").iterdir()) == ["gie.json", "gie.safetensors"]
    back = GraphExpansion.load(tmp_path / "gie")
    assert back.cfg == g.cfg and back.stats == json.loads(json.dumps(g.stats))
    for name in ("user_seq", "user_w", "streamer_seq", "streamer_w", "user_emb", "streamer_emb"):
        np.testing.assert_array_equal(getattr(back, name), getattr(g, name))
    np.testing.assert_array_equal(back.a2a.indices, g.a2a.indices)
    np.testing.assert_array_equal(back.a2a.data, g.a2a.data)
    q, ref = back.lookup(np.arange(n_u), np.arange(n_s)), g.lookup(np.arange(n_u), np.arange(n_s))
    assert all(torch.equal(q[k], ref[k]) for k in q)
    assert set(back.graph_init()) == {"user", "streamer"}


def test_load_rejects_foreign_or_inconsistent_files(tmp_path):
    g = hand_fit()
    g.save(tmp_path)
    meta = json.loads((tmp_path / "gie.json").read_text())
    meta["n_users"] = 10
    (tmp_path / "gie.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"gie.safetensors, column 'user_seq': expected shape \(10, 3\)"):
        GraphExpansion.load(tmp_path)
    (tmp_path / "gie.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="column 'format': expected 'modalrec.gie'"):
        GraphExpansion.load(tmp_path)
    (tmp_path / "gie.safetensors").unlink()
    with pytest.raises(DataError, match="gie.safetensors: expected a file written by GraphExpansion.save"):
        GraphExpansion.load(tmp_path)


def test_fit_is_deterministic_for_a_seed():
    u, s, n_u, n_s, _ = planted(users_per=20)
    cfg = GIEConfig(progress=False, pretrain_epochs=3, dim=8, batch_size=32, max_users_per_streamer=6,
                    max_streamers_per_user=2)
    one, two = (GraphExpansion.fit(u, s, None, n_u, n_s, cfg) for _ in range(2))
    for name in ("user_seq", "user_w", "streamer_seq", "streamer_w", "user_emb", "streamer_emb"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
    other = GraphExpansion.fit(u, s, None, n_u, n_s, cfg.model_copy(update={"seed": 1}))
    assert not np.array_equal(other.user_emb, one.user_emb)
    assert not np.array_equal(other.a2a.data, one.a2a.data)  # the Swing caps sample another subgraph


# ------------------------------------------------------------------------------------------ as of time


@pytest.mark.parametrize("mode", ["count", "value"])
def test_as_of_time_expansion_uses_only_earlier_gifts(mode):
    """lookup(..., times=t): a user's U->A->A from their gifts strictly before t, through the fitted Swing graph
    with the full expansion's weighting: equal to recomputing it from scratch for every (user, time)."""
    from modalrec.graph.gie import OnlineExpansion
    from modalrec.graph.swing import CSR

    u, s, n_u, n_s, _ = planted(users_per=15, gifts=4)
    rng = np.random.default_rng(3)
    times = rng.integers(0, 50, len(u)) * 10  # coarse: several gifts of a user share a time
    price = rng.uniform(1, 9, len(u))
    cfg = GIEConfig(progress=False, pretrain_epochs=0, expansion_length=6, weight_mode=mode)
    g = GraphExpansion.fit(u, s, price if mode == "value" else None, n_u, n_s, cfg, times=times)
    empty = CSR(np.zeros(n_u + 1, np.int64), np.zeros(0, np.int64), np.zeros(0), n_s)
    online = OnlineExpansion(g, empty)
    users = np.repeat(np.arange(n_u), 4)
    at = np.tile([-5, 100, 250, 10_000], n_u)
    got = g.lookup(users, np.zeros_like(users), times=at)
    for r, (user, t) in enumerate(zip(users, at)):
        before = (u == user) & (times < t)
        want_seq, want_w = online.expand(int(user), s[before], price[before] if mode == "value" else np.ones(before.sum()))
        np.testing.assert_array_equal(got["gie_user"][r].numpy(), want_seq)
        np.testing.assert_allclose(got["gie_user_w"][r].numpy(), want_w, rtol=1e-6)
    # after every gift: the full expansion, bit for bit; before any: padding
    late = g.lookup(np.arange(n_u), np.zeros(n_u, np.int64), times=np.full(n_u, 10_000))
    np.testing.assert_array_equal(late["gie_user"].numpy(), g.user_seq)
    np.testing.assert_array_equal(late["gie_user_w"].numpy(), g.user_w)
    early = g.lookup(np.arange(n_u), np.zeros(n_u, np.int64), times=np.full(n_u, -1))
    assert (early["gie_user"].numpy() == 0).all()
    # a gift at exactly the sample's time is not "before" it
    user = int(u[0])
    same = g.lookup(np.array([user]), np.array([0]), times=np.array([times[u == user].min()]))
    assert (same["gie_user"].numpy() == 0).all()


@pytest.mark.parametrize("mode", ["count", "value", "binary"])
def test_as_of_time_snapshots_bound_the_rows_and_never_read_a_later_gift(mode):
    """gie.as_of_time_snapshots S: a user with m > S gifts gets S + 1 rows, after gifts ceil(i m / S); a sample
    reads the latest one made strictly before it (recomputed here from scratch); S >= every m is the exact table."""
    from modalrec.graph.gie import OnlineExpansion
    from modalrec.graph.swing import CSR

    u, s, n_u, n_s, _ = planted(users_per=15, gifts=9)
    rng = np.random.default_rng(5)
    times = rng.integers(0, 60, len(u)) * 10
    price = rng.uniform(1, 9, len(u))
    w = price if mode == "value" else None
    base = {"progress": False, "pretrain_epochs": 0, "expansion_length": 6, "weight_mode": mode}
    S = 3
    g = GraphExpansion.fit(u, s, w, n_u, n_s, GIEConfig(**base, as_of_time_snapshots=S), times=times)
    m = np.bincount(u, minlength=n_u)
    assert (m > S).any() and g.stats["as_of_time_rows"] == 1 + int(np.where(m > 0, np.minimum(m, S) + 1, 0).sum())
    online = OnlineExpansion(g, CSR(np.zeros(n_u + 1, np.int64), np.zeros(0, np.int64), np.zeros(0), n_s))
    probes = np.unique(times)
    users = np.repeat(np.arange(1, n_u), len(probes) + 1)
    at = np.tile(np.r_[probes + 5, 10_000], n_u - 1)
    got = g.lookup(users, np.zeros_like(users), times=at)
    for r, (user, t) in enumerate(zip(users, at)):
        mine = np.flatnonzero(u == user)
        mine = mine[np.lexsort((times[mine], np.zeros(len(mine))))]  # time order, as the fit sorts (stable)
        mu = len(mine)
        ends = [-(-i * mu // min(mu, S)) for i in range(1, min(mu, S) + 1)]  # snapshot i holds gifts 1..ends[i-1]
        seen = [e for e in ends if times[mine[e - 1]] < t]
        take = mine[:seen[-1]] if seen else mine[:0]
        assert (times[take] < t).all()  # never a gift at or after the sample
        ww = price[take] if mode == "value" else np.ones(len(take))
        if mode == "binary":
            ww = np.ones(len(np.unique(s[take])))
            want_seq, want_w = online.expand(int(user), np.unique(s[take]), ww)
        else:
            want_seq, want_w = online.expand(int(user), s[take], ww)
        np.testing.assert_array_equal(got["gie_user"][r].numpy(), want_seq)
        np.testing.assert_allclose(got["gie_user_w"][r].numpy(), want_w, rtol=1e-6)
    exact = GraphExpansion.fit(u, s, w, n_u, n_s, GIEConfig(**base), times=times)
    roomy = GraphExpansion.fit(u, s, w, n_u, n_s, GIEConfig(**base, as_of_time_snapshots=int(m.max())), times=times)
    for name in ("prefix_ptr", "prefix_time", "prefix_seq", "prefix_w"):
        np.testing.assert_array_equal(getattr(roomy, name), getattr(exact, name))


def test_as_of_time_tables_survive_save_load(tmp_path):
    u, s, n_u, n_s, _ = planted(users_per=10)
    times = np.arange(len(u)) * 7
    g = GraphExpansion.fit(u, s, None, n_u, n_s, GIEConfig(progress=False, pretrain_epochs=0, expansion_length=4),
                           times=times)
    assert g.prefix_ptr is not None and g.stats["as_of_time_rows"] == len(g.prefix_time)
    back = GraphExpansion.load(g.save(tmp_path / "gie"))
    probe = np.repeat(np.arange(n_u), 3), np.tile([0, len(u) * 3, len(u) * 7], n_u)
    a = g.lookup(probe[0], np.zeros_like(probe[0]), times=probe[1])
    b = back.lookup(probe[0], np.zeros_like(probe[0]), times=probe[1])
    assert all(torch.equal(a[k], b[k]) for k in a)
    off = GraphExpansion.fit(u, s, None, n_u, n_s, GIEConfig(progress=False, pretrain_epochs=0, expansion_length=4,
                                                                as_of_time=False), times=times)
    assert off.prefix_ptr is None  # as_of_time off: every time reads the full row
    full = off.lookup(probe[0], np.zeros_like(probe[0]), times=probe[1])
    assert torch.equal(full["gie_user"], torch.from_numpy(off.user_seq[probe[0]]))


# ------------------------------------------------------------------------------------------ refreshed graphs


@pytest.mark.parametrize("as_of_time", [True, False])
def test_refreshed_graphs_read_only_gifts_before_the_samples_window(as_of_time):
    """task.graph.refresh: a sample in window i reads the A2A and A->U->A graphs of the gifts strictly before the
    window's start and the user's U->A->A of their gifts before the sample (through that A2A): recomputed from
    scratch here for every (user, streamer, time). So no training sample reads a graph holding its own gift, or
    any later one. At or after the period's end: the full graph."""
    from modalrec.graph.gie import OnlineExpansion, RefreshedExpansion
    from modalrec.graph.swing import CSR

    u, s, n_u, n_s, _ = planted(users_per=15, gifts=5)
    rng = np.random.default_rng(5)
    times = rng.integers(0, 100, len(u)) * 10
    cfg = GIEConfig(progress=False, pretrain_epochs=0, expansion_length=6, k_neighbours=4, as_of_time=as_of_time)
    full = GraphExpansion.fit(u, s, None, n_u, n_s, cfg, times=times)
    bounds = np.array([300, 600, 1000])  # windows [-inf, 300), [300, 600), [600, 1000); >= 1000: full
    ref = RefreshedExpansion.fit(u, s, None, times, bounds, full)
    users = np.repeat(np.arange(1, n_u), 6)
    streamers = np.tile(np.arange(1, 7), n_u - 1)
    at = np.tile([0, 299, 300, 450, 999, 1000], n_u - 1)
    got = ref.lookup(users, streamers, at)
    empty = CSR(np.zeros(n_u + 1, np.int64), np.zeros(0, np.int64), np.zeros(0), n_s)
    for start in (300, 600):
        before = times < start
        g = GraphExpansion.fit(u[before], s[before], None, n_u, n_s, cfg)
        online = OnlineExpansion(g, empty)
        for r in np.flatnonzero((at >= start) & (at < start + 300 + 100 * (start == 600))):
            own = (u == users[r]) & (times < (at[r] if as_of_time else start))
            want_seq, want_w = online.expand(int(users[r]), s[own], np.ones(own.sum()))
            np.testing.assert_array_equal(got["gie_user"][r].numpy(), want_seq)
            np.testing.assert_allclose(got["gie_user_w"][r].numpy(), want_w, rtol=1e-6)
            np.testing.assert_array_equal(got["gie_streamer"][r].numpy(), g.streamer_seq[streamers[r]])
            np.testing.assert_array_equal(got["gie_streamer_w"][r].numpy(), g.streamer_w[streamers[r]])
    first = at < 300  # the first window reads no graph: the A2A is empty, so even the user's own gifts expand to nothing
    assert (got["gie_user"][torch.from_numpy(first)] == 0).all()
    assert (got["gie_streamer"][torch.from_numpy(first)] == 0).all()
    last = at >= 1000
    want = full.lookup(users[last], streamers[last], times=at[last])
    for k, v in want.items():
        assert torch.equal(got[k][torch.from_numpy(last)], v)
    # the graphs a window reads are smaller than the full one, and grow window by window
    edges = [w.a2a.nnz for w in ref.windows]
    assert edges[0] == 0 and edges[1] < edges[2] <= full.a2a.nnz
    with pytest.raises(ValueError, match="one shape"):
        ref.lookup(users, streamers[:3], at)
    with pytest.raises(ValueError, match="ascending"):
        RefreshedExpansion.fit(u, s, None, times, np.array([600, 300]), full)


def test_task_refresh_gives_training_samples_the_windows_graphs_and_later_ones_the_full_graph():
    from modalrec.tasks import prepare_task
    from tests.serve.helpers import make_live_data, mmbee_config

    data = make_live_data()
    cfg = mmbee_config("unused").task
    one = prepare_task(data, cfg)
    assert one.pipeline.graph.refreshed is None
    task = prepare_task(data, cfg.model_copy(update={"graph": cfg.graph.model_copy(update={"refresh": 3})}))
    refreshed = task.pipeline.graph.refreshed
    assert len(refreshed.windows) == 3 and refreshed.bounds[-1] == task.pipeline.graph.edges_before
    tr = task.splits["train"]
    win = refreshed.window_of(tr.times)
    assert set(np.unique(win)) == {0, 1, 2}  # equal-count windows of the training samples
    batch = task.collate(tr, train=True)
    assert (batch.graph.user[torch.from_numpy(win == 0)] == 0).all()
    # a later window reads a graph without the gifts at or after its start, unlike the full graph
    late = win == 2
    full = one.collate(tr, train=True)
    assert not all(torch.equal(getattr(batch.graph, k)[torch.from_numpy(late)], getattr(full.graph, k)[torch.from_numpy(late)])
                   for k in ("user", "target"))
    for name in ("valid", "test"):  # evaluated samples: the graph of the whole training period
        a, b = task.collate(task.splits[name], train=False), one.collate(one.splits[name], train=False)
        assert all(torch.equal(getattr(a.graph, k), getattr(b.graph, k)) for k in ("user", "user_w", "target"))


def test_graphcl_step_cap_keeps_small_graphs_and_bounds_large_ones():
    from modalrec.graph.graphcl import _batch_size

    assert _batch_size(20_893, 1024, 64) == 1024  # KuaiLive's gift edges: below the cap, as before
    assert _batch_size(2_300_000, 1024, 64) == 35_938  # 146M's: 64 steps of a larger batch
    assert _batch_size(2_300_000, 1024, None) == 1024
    u, s, n_u, n_s, _per = planted()
    g = build_u2a(u, s, None, n_u, n_s)
    a2a = swing(g, k=5)
    # 360 edges, batch 128: 3 steps, under a cap of 64 the same run as without a cap
    uncapped = pretrain_graphcl(g, a2a, GraphCLParams(dim=16, epochs=3, batch_size=128, max_steps=None, seed=0))
    same = pretrain_graphcl(g, a2a, GraphCLParams(dim=16, epochs=3, batch_size=128, max_steps=64, seed=0))
    np.testing.assert_array_equal(uncapped.streamer_emb, same.streamer_emb)
    # a cap of 1 step per epoch: one batch of every edge, a different (still learning) run
    one = pretrain_graphcl(g, a2a, GraphCLParams(dim=16, epochs=20, batch_size=128, max_steps=1, seed=0))
    assert not np.array_equal(one.streamer_emb, same.streamer_emb)
    assert one.history[-1]["bpr"] < one.history[0]["bpr"]
