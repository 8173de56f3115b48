"""The multilabel task (Bruun, Balog, Maistro, SIGIR 2024 protocol) and the ten multi-channel models.

Data: a tiny structure in the released layout (users with purchase events, each preceded by web
sessions and/or conversations), with content simulated by `modalrec.sim.insurance` (hashed
embeddings, 8 dimensions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from modalrec.config import RunConfig, TaskConfig, TrainConfig
from modalrec.data.interaction import InteractionData
from modalrec.datasets import insurance as ds
from modalrec.datasets import load_dataset
from modalrec.models import MODELS, build_model
from modalrec.sim import insurance as sim
from modalrec.tasks import prepare_task
from modalrec.tasks.multilabel import MultiLabelTask, pattern_name, unpack_output
from modalrec.train.run import train_run
from modalrec.train.trainer import Trainer
from tests.models.helpers import PAPER_MODELS

DIM = 8
SMALL = {"hidden": 32, "dropout": 0.2}
PARAMS = {
    "popularity": {}, "conversation": SMALL, "session": SMALL, "late_fusion": SMALL,
    "neutral_imputation": SMALL, "generative_imputation": SMALL, "keyword": SMALL,
    "latent_feature": dict(SMALL, latent_dim=32),
    "relative_representation": dict(SMALL, n_anchors=20, encoding_dim=16),
}


def write_structure(folder, n_users: int = 70, seed: int = 0):
    """data_users.csv / data_purchase_events.csv in the released layout (ids as the release writes them)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, buys = [], []
    pid, sid, cid = 100, 5000, 9000
    popular = np.r_[np.full(6, 4), np.full(4, 7), np.full(3, 18), np.arange(1, 25)]
    for user in range(1, n_users + 1):
        prev_session = None
        for _ in range(rng.integers(1, 3)):
            pid += int(rng.integers(1, 4))
            kind = rng.choice(["conversation", "session", "both"], p=[0.25, 0.5, 0.25])
            n_tp = int(rng.integers(1, 4))
            channels = ([kind] * n_tp if kind != "both" else ["conversation", "session"] + ["session"] * (n_tp - 1))
            rng.shuffle(channels)
            for k, ch in enumerate(channels, start=1):
                if ch == "conversation":
                    cid += 1
                    rows.append((user, pid, k, f"{cid}.0", ""))
                else:
                    if prev_session is not None and rng.random() < 0.2:
                        s = prev_session  # a session listed before two purchase events of the user
                    else:
                        sid += 1
                        s = sid
                    prev_session = s
                    rows.append((user, pid, k, "", f"{s}.0"))
            # no repeated session inside one event
            items = sorted(set(rng.choice(popular, size=int(rng.integers(1, 3))).tolist()))
            buys += [(pid, i) for i in items]
    users = pd.DataFrame(rows, columns=["user_id", "purchase_event_id", "event_number", "conversation_id",
                                        "session_id"])
    dup = users[users["session_id"] != ""].duplicated(["purchase_event_id", "session_id"])
    users = users.drop(index=dup[dup].index)
    users["event_number"] = users.groupby("purchase_event_id").cumcount() + 1
    users.sample(frac=1.0, random_state=seed).to_csv(folder / ds.USERS_FILE, index=False)  # row order is not time
    pd.DataFrame(buys, columns=["purchase_event_id", "item_id"]).to_csv(folder / ds.PURCHASES_FILE, index=False)
    return folder


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("insurance")
    structure = write_structure(root / "structure")
    return sim.simulate(structure, root / "sim", seed=1, session_informativeness=1.0,
                        conversation_informativeness=1.0, embedding_dim=DIM)


@pytest.fixture(scope="module")
def data(sim_dir) -> InteractionData:
    return ds.load(sim_dir)


@pytest.fixture(scope="module")
def task(data) -> MultiLabelTask:
    return prepare_task(data, TaskConfig(kind="multilabel"))


def _users(sim_dir) -> pd.DataFrame:
    return pd.read_csv(sim_dir / ds.USERS_FILE)


def _drop_content(data: InteractionData, modality: str, keep_every: int = 2) -> InteractionData:
    t = data.content[modality]
    content = dict(data.content)
    content[modality] = t.filter(pa.array(np.arange(t.num_rows) % keep_every == 0))
    return InteractionData(data.spec, data.events, data.items, data.users, content)


# ------------------------------------------------------------------------------------------ task
def test_split_is_chronological_by_purchase_event(task, sim_dir):
    ids = np.sort(pd.read_csv(sim_dir / ds.PURCHASES_FILE)["purchase_event_id"].unique())
    n = len(ids)
    n_test = int(np.floor(n * 0.1 + 0.5))
    n_valid = int(np.floor((n - n_test) * 0.1 + 0.5))
    keys = {k: task.sample_keys[s.items] for k, s in task.splits.items()}
    assert len(keys["test"]) == n_test and len(keys["valid"]) == n_valid
    np.testing.assert_array_equal(np.concatenate([keys["train"], keys["valid"], keys["test"]]), ids)
    assert keys["train"].max() < keys["valid"].min() and keys["valid"].max() < keys["test"].min()
    # batches keep that order (no shuffling outside training)
    labels = np.concatenate([b.label.numpy() for b in task.batches("valid", 4)])
    np.testing.assert_array_equal(labels, task.label_mat[task.splits["valid"].items].astype(np.float32))


def test_batch_holds_touchpoints_in_order_with_their_content(task, data, sim_dir):
    users = _users(sim_dir)
    sessions = {r["entity_id"]: r for r in data.content["session_tags"].to_pylist()}
    emb = {r["entity_id"]: np.asarray(r["vector"], np.float32) for r in data.content["conversation_embedding"].to_pylist()}
    s = task.splits["train"]
    batch = task.collate(s.take(np.arange(min(len(s), 40))), train=True)
    ex = batch.touchpoints.flat()
    mc = task.schema.multichannel
    conv, sess = mc.channel("conversation"), mc.channel("session")
    for b, key in enumerate(task.sample_keys[s.items[:40]]):
        rows = users[users["purchase_event_id"] == key].sort_values("event_number")
        # the sample's user, as a row of the pipeline's user vocabulary (the model's user ids)
        assert task.pipeline.users.id_of(int(batch.user[b])) == str(rows["user_id"].iloc[0])
        assert int(ex["tp_mask"][b].sum()) == len(rows)
        for t, (_, r) in enumerate(rows.iterrows()):
            if pd.notna(r["conversation_id"]):
                assert int(ex["tp_channel"][b, t]) == conv.index
                np.testing.assert_allclose(ex["vec:conversation_embedding"][b, t].numpy(),
                                           emb[f"c{int(r['conversation_id'])}"], rtol=1e-6)
                assert not bool(ex["has:session_tags"][b, t])
            else:
                assert int(ex["tp_channel"][b, t]) == sess.index
                tags = sessions[f"s{int(r['session_id'])}"]["tokens"]
                got = np.flatnonzero(ex["tok:session_tags"][b, t].numpy())
                assert sorted(task.token_vocab.id_of(int(i)) for i in got) == sorted({str(x) for x in tags})
                assert float(ex["vec:conversation_embedding"][b, t].abs().sum()) == 0.0
        assert not bool(ex["tp_mask"][b, len(rows):].any())
        assert int(ex["tp_channel"][b, len(rows):].abs().sum()) == 0
    bought = pd.read_csv(sim_dir / ds.PURCHASES_FILE)
    key = task.sample_keys[s.items[0]]
    want = sorted(str(i) for i in bought.loc[bought["purchase_event_id"] == key, "item_id"])
    assert sorted(task.labels[i] for i in np.flatnonzero(batch.label[0].numpy())) == want


def test_batch_user_is_the_pipelines_user_row(task):
    """`Batch.user` is the model's user id: the row in the pipeline's user vocabulary (the training samples'
    users), 0 for a user first met after the training period; never a row of the event log's users."""
    train_users = {task.log_users.id_of(int(u)) for u in task.splits["train"].users}
    assert set(task.pipeline.users.ids) == train_users
    unseen = 0
    for s in task.splits.values():
        got = task.collate(s, train=False).user.numpy()
        want = [task.pipeline.users.lookup([task.log_users.id_of(int(u))])[0] for u in s.users]
        np.testing.assert_array_equal(got, want)
        assert (got < len(task.pipeline.users)).all()
        unseen += int((got == 0).sum())
    assert unseen > 0, "the fixture should hold users first met after the training period"


def test_groups_follow_channel_presence(task, sim_dir):
    users = _users(sim_dir)
    g = users.groupby("purchase_event_id").agg(c=("conversation_id", "count"), s=("session_id", "count"))
    want = np.where((g.c > 0) & (g.s > 0), "both", np.where(g.c > 0, "conversation-only", "session-only"))
    want = dict(zip(g.index, want))
    names = ["conversation", "session"]
    got = {k: pattern_name(int(p), names) for k, p in zip(task.sample_keys, task.pattern)}
    assert got == want
    assert task.group_names["test"][-1] == "all"
    assert set(task.group_names["test"][:-1]) <= {"conversation-only", "session-only", "both"}


def test_availability_is_read_and_unavailable_items_are_never_ranked(task, sim_dir):
    post = pd.read_csv(sim_dir / ds.POST_FILTER_FILE)
    for i, key in enumerate(task.sample_keys[:30]):
        allowed = {str(x) for x in post.loc[post["purchase_event_id"] == key, "item_id"]}
        assert {task.labels[j] for j in np.flatnonzero(task.available[i])} == allowed
    assert (~task.available).any(), "the fixture should hold unavailable items"

    class Fixed(torch.nn.Module):
        def __init__(self, boost: bool):
            super().__init__()
            self.boost = boost

        def forward(self, batch):
            scores = torch.linspace(0, 1, batch.label.shape[1]).repeat(batch.size, 1)
            if self.boost:  # unavailable items on top: they must not push the bought ones down
                scores = scores + 100.0 * (~batch.touchpoints.available).float()
            return scores

    plain, plain_groups = task.evaluate(Fixed(False), "train", 64)
    boosted, boosted_groups = task.evaluate(Fixed(True), "train", 64)
    for k in ("hr@1", "hr@3", "map@3", "ndcg@3"):
        assert boosted[k] == pytest.approx(plain[k])
    assert boosted_groups == plain_groups
    assert set(boosted_groups) >= {"all"} and boosted_groups["all"]["n"] == len(task.splits["train"])


def test_missing_availability_means_everything_available(data):
    content = {k: v for k, v in data.content.items() if k != "availability"}
    spec = data.spec.model_copy(update={"modalities": [m for m in data.spec.modalities if m.name != "availability"]})
    t = prepare_task(InteractionData(spec, data.events, data.items, None, content), TaskConfig(kind="multilabel"))
    assert t.available.all()


# ------------------------------------------------------------------------------------------ models
def test_every_paper_model_is_registered():
    assert all(m in MODELS for m in PAPER_MODELS)


@pytest.fixture(scope="module")
def gappy_task(data) -> MultiLabelTask:
    """Half the conversations without an embedding, half the sessions without tags."""
    d = _drop_content(_drop_content(data, "conversation_embedding"), "session_tags")
    return prepare_task(d, TaskConfig(kind="multilabel"))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for name in ("conversation", "session"):
        cfg = RunConfig(name=name, task=TaskConfig(kind="multilabel"),
                        model={"name": name, "params": SMALL},
                        train=TrainConfig(epochs=25, batch_size=16, lr=3e-3, patience=25, lr_patience=100,
                                          progress=False), seeds=[0])
        train_run(cfg, root / name, data=data, report=False)
        out[name] = str(root / name)
    return out


def _params(name: str, teachers: dict | None = None) -> dict:
    if name == "kd":
        return dict(SMALL, teachers=teachers)
    return PARAMS[name]


@pytest.mark.parametrize("name", [m for m in PAPER_MODELS if m != "popularity"])
def test_forward_backward_with_missing_modalities(name, gappy_task, data, teachers, tmp_path):
    task = gappy_task
    if name == "kd":  # teachers were trained on the full data (same labels and vocabulary)
        task = prepare_task(data, TaskConfig(kind="multilabel"))
    torch.manual_seed(0)
    model = build_model(name, task.schema, _params(name, teachers))
    s = task.splits["train"]
    groups = {pattern_name(int(p), task.channel_names) for p in s.groups}
    assert groups == {"conversation-only", "session-only", "both"}
    batch = task.collate(s, train=True)
    ex = batch.touchpoints.flat()
    sel = ex["tp_mask"] & (ex["tp_channel"] > 0)
    if name != "kd":
        assert (sel & ~ex["has:conversation_embedding"] & (ex["tp_channel"] == 1)).any()
    model.train()
    out = model(batch)
    logits, _, _ = unpack_output(out)
    assert logits.shape == (len(s), task.schema.n_labels)
    loss = task.loss(out, batch)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        full = unpack_output(model(batch))[0]
        # padding changes nothing: each sample alone (shorter T) scores as in the padded batch
        for i in range(0, len(s), max(1, len(s) // 6)):
            alone = unpack_output(model(task.collate(s.take(np.array([i])), train=False)))[0]
            torch.testing.assert_close(alone[0], full[i], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_short_fit_beats_chance_on_train(name, task, teachers, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, task.schema, _params(name, teachers))
    cfg = TrainConfig(epochs=25 if name != "popularity" else 1, batch_size=16, lr=3e-3, patience=25,
                      monitor="map@3", lr_patience=100, progress=False)
    task.splits["valid_backup"] = task.splits["valid"]
    task.splits["valid"] = task.splits["train"]  # fit and select on the training events
    try:
        Trainer(task, model, cfg, tmp_path / "ckpt", seed=0).fit()
        metrics, groups = task.evaluate(model, "train", 256)
    finally:
        task.splits["valid"] = task.splits.pop("valid_backup")
    n_bought = task.label_mat[task.splits["train"].items].sum(1)
    n_avail = task.available[task.splits["train"].items].sum(1)
    chance_hr3 = float(np.mean(1 - np.prod([(n_avail - n_bought - j) / (n_avail - j) for j in range(3)], axis=0)))
    assert metrics["hr@3"] > chance_hr3 + 0.1, (metrics["hr@3"], chance_hr3)
    assert {"conversation-only", "session-only", "both", "all"} <= set(groups)
    if name in ("keyword", "latent_feature", "relative_representation", "neutral_imputation"):
        pop = build_model("popularity", task.schema, {})
        assert metrics["map@3"] > task.evaluate(pop, "train", 256)[0]["map@3"]


def test_shared_space_models_take_any_number_of_channels(data):
    """A third channel ("chat") made of a copy of the conversations: the shared-space models read it."""
    ev = data.events
    conv = pc.equal(ev["channel"], "conversation")
    chat_rows = ev.filter(conv)
    chat_rows = chat_rows.set_column(chat_rows.column_names.index("channel"), "channel",
                                     pa.array(["chat"] * chat_rows.num_rows))
    chat_rows = chat_rows.set_column(chat_rows.column_names.index("event_id"), "event_id",
                                     pc.binary_join_element_wise("x", chat_rows["event_id"], ""))
    chat_rows = chat_rows.set_column(chat_rows.column_names.index("time"), "time",
                                     pc.add(chat_rows["time"], 20))
    events = pa.concat_tables([ev, chat_rows]).sort_by("time")
    content = dict(data.content)
    kw = data.content["conversation_keywords"]
    content["chat_keywords"] = pa.table({"entity_id": pc.binary_join_element_wise("x", kw["entity_id"], ""),
                                         "tokens": kw["tokens"]})
    spec = data.spec.model_copy(update={
        "channels": data.spec.channels + ["chat"],
        "modalities": data.spec.modalities + [data.spec.modality("conversation_keywords").model_copy(
            update={"name": "chat_keywords"})]})
    d3 = InteractionData(spec, events, data.items, None, content).validate()
    t3 = prepare_task(d3, TaskConfig(kind="multilabel", history_channels=["conversation", "session", "chat"]))
    assert [c.name for c in t3.schema.multichannel.channels] == ["conversation", "session", "chat"]
    assert "both" not in t3.group_names["test"]
    batch = t3.collate(t3.splits["train"], train=True)
    assert int(batch.touchpoints.channel.max()) == 3
    for name in ("keyword", "latent_feature", "relative_representation"):
        model = build_model(name, t3.schema, PARAMS[name])
        model.train()
        loss = t3.loss(model(batch), batch)
        loss.backward()
        assert torch.isfinite(loss)
        assert model.n_channels == 3


def test_insurance_sources_are_registered(sim_dir, tmp_path):
    d = load_dataset("insurance", path=sim_dir)
    assert d.spec.semi_synthetic
    structure = sim_dir  # the structure files are copied into every simulated folder
    a = load_dataset("insurance_sim", structure=str(structure), cache=str(tmp_path), embedding_dim=DIM, seed=3,
                     conversation_informativeness=0.0)
    b = load_dataset("insurance_sim", structure=str(structure), cache=str(tmp_path), embedding_dim=DIM, seed=3,
                     conversation_informativeness=0.0)
    assert a.fingerprint() == b.fingerprint()
    assert len(list((tmp_path / "insurance_sim").iterdir())) == 1


def test_run_directory_holds_group_metrics(teachers):
    import json
    from pathlib import Path

    m = json.loads((Path(teachers["session"]) / "metrics.json").read_text())
    assert m["task"] == "multilabel" and m["monitor"] == "loss"
    groups = m["groups"]["test"]
    assert set(groups) <= {"conversation-only", "session-only", "both", "all"} and "all" in groups
    for k in ("hr@3", "map@1", "map@3", "map@5", "ndcg@3"):
        assert k in groups["all"] and {"mean", "std", "runs"} <= set(groups["all"][k])
        assert k in m["test"]


def test_without_purchase_event_ids_history_is_the_users_earlier_touchpoints(data):
    """The generic path: samples keyed by event_id, history = the user's touchpoints strictly before."""
    ev = data.events.drop_columns(["purchase_event_id"])
    t = prepare_task(InteractionData(data.spec, ev, data.items, None, data.content),
                     TaskConfig(kind="multilabel", max_history=4))
    df = ev.to_pandas()
    touch = df[df["channel"] != "purchase"]
    first = df[df["channel"] == "purchase"].groupby("event_id").agg(user=("user_id", "first"), time=("time", "min"))
    for i, key in enumerate(t.sample_keys):
        user, time = first.loc[key, "user"], first.loc[key, "time"]
        before = touch[(touch["user_id"] == user) & (touch["time"] < time)].sort_values("time")
        got = t.tp_ids[t.tp_ent[t.tp_ptr[i]:t.tp_ptr[i + 1]]]
        assert list(got) == list(before["event_id"].iloc[-4:])


def test_drop_channel_removes_its_touchpoints_and_repacks(data):
    t = prepare_task(data, TaskConfig(kind="multilabel"))
    test = t.splits["test"]
    conv = t.channel_names.index("conversation") + 1
    before = t.collate(test, train=False)
    info = t.drop_modality("conversation", 1.0, seed=3)
    assert info["kind"] == "channel" and info["dropped"] == info["eligible"] > 0
    after = t.collate(test, train=False)
    ch, mask = after.touchpoints.channel, after.touchpoints.mask
    assert not (ch == conv).any()  # every conversation of every test sample is gone
    # the remaining touchpoints stay left-aligned and in their order
    assert torch.equal(mask, torch.sort(mask.int(), dim=1, descending=True, stable=True).values.bool())
    old = before.touchpoints.channel
    for b in range(len(test)):
        assert old[b][(old[b] != 0) & (old[b] != conv)].tolist() == ch[b][mask[b]].tolist()
    assert torch.equal(after.group, before.group)  # samples keep their original availability group
    # valid samples are untouched
    v = t.splits["valid"]
    t2 = prepare_task(data, TaskConfig(kind="multilabel"))
    assert torch.equal(t.collate(v, train=False).touchpoints.channel, t2.collate(v, train=False).touchpoints.channel)


def test_drop_content_modality_at_a_rate(data):
    t = prepare_task(data, TaskConfig(kind="multilabel"))
    test = t.splits["test"]
    name = "conversation_embedding"
    base = t.collate(test, train=False).touchpoints.presence[name].any(1)
    info = t.drop_modality(name, 0.5, seed=0)
    assert info["kind"] == "modality" and info["eligible"] == int(base.sum())
    after = t.collate(test, train=False)
    lost = base & ~after.touchpoints.presence[name].any(1)
    assert int(lost.sum()) == info["dropped"] and 0 < info["dropped"] < info["eligible"]
    assert torch.count_nonzero(after.touchpoints.vectors[name][lost]) == 0
    assert torch.equal(after.touchpoints.channel, t.collate(test, train=False).touchpoints.channel)
    with pytest.raises(KeyError, match="neither a touchpoint channel"):
        t.drop_modality("smell", 0.5)
    with pytest.raises(ValueError, match="rate"):
        t.drop_modality(name, 1.5)


def test_cli_evaluate_drop_modality(teachers):
    """`modalrec evaluate RUN --drop-modality conversation --rate 1`: conversation-only test events lose all
    their evidence, so the Conversation model's metrics there fall; the other groups do not move."""
    from modalrec.train import run as run_mod

    full = run_mod.evaluate_run(teachers["conversation"])
    dropped = run_mod.evaluate_run(teachers["conversation"], drop_modality="conversation", rate=1.0)
    assert dropped["dropped"]["dropped"] > 0
    g0, g1 = full["groups"]["test"], dropped["groups"]["test"]
    assert g1["conversation-only"]["map@3"]["mean"] < g0["conversation-only"]["map@3"]["mean"]
    if "session-only" in g0:
        assert g1["session-only"]["map@3"]["mean"] == pytest.approx(g0["session-only"]["map@3"]["mean"])


@pytest.mark.parametrize("name", ["late_fusion", "relative_representation"])
def test_evaluate_run_reads_the_run_directory_alone(name, sim_dir, tmp_path):
    """A run trained from a raw data folder, that folder then deleted: `evaluate_run` (with and without
    `drop_modality`) restores the task from RUN/pipeline/ and RUN/data/ and reproduces, exactly, the metrics
    the training wrote for every seed and every group."""
    import json
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(sim_dir, raw)
    params = dict(PARAMS[name], hidden=16)
    cfg = RunConfig(name=name, data={"source": "insurance", "path": str(raw)}, task=TaskConfig(kind="multilabel"),
                    model={"name": name, "params": params},
                    train=TrainConfig(epochs=2, batch_size=32, progress=False), seeds=[0, 1])
    run = tmp_path / "run"
    train_run(cfg, run, report=False)
    shutil.rmtree(raw)  # no raw data from here on
    assert (run / "data" / "task.json").is_file() and (run / "pipeline").is_dir()
    written = json.loads((run / "metrics.json").read_text())
    assert len(written["test"]["map@3"]["runs"]) == 2 and "conversation-only" in written["groups"]["test"]

    def same(got: dict, split: str) -> None:
        assert got[split] == written[split]  # every metric, per seed (runs), mean and std: exactly
        if split == "test":
            assert got["groups"]["test"] == written["groups"]["test"]

    from modalrec.train import run as run_mod

    same(run_mod.evaluate_run(run), "test")
    same(run_mod.evaluate_run(run, "valid"), "valid")
    # the drop path on the restored task: rate 0 removes nothing and reproduces the training's metrics
    none = run_mod.evaluate_run(run, drop_modality="conversation", rate=0.0)
    assert none["dropped"]["eligible"] > 0 and none["dropped"]["dropped"] == 0
    same(none, "test")
    # while rate 1 removes every conversation of the test events: the conversation-only events move, the
    # session-only ones (no conversation to drop) do not
    gone = run_mod.evaluate_run(run, drop_modality="conversation", rate=1.0, drop_seed=3)
    assert gone["dropped"]["dropped"] == gone["dropped"]["eligible"] > 0
    g0, g1 = written["groups"]["test"], gone["groups"]["test"]
    assert g1["conversation-only"] != g0["conversation-only"]
    if "session-only" in g0:
        assert g1["session-only"] == g0["session-only"]
