"""MovieLens latest-small loader: a tiny fixture in the GroupLens layout, plus the real data when present."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.compute as pc
import pytest

from modalrec.data.errors import DataError
from modalrec.datasets import DATASETS, load_dataset
from modalrec.datasets.movielens import load

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "movielens-latest-small"


def write_fixture(root: Path) -> Path:
    (root / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        "40697,Babylon 5,Sci-Fi\n"
        "182727,A Christmas Story Live! (2017),(no genres listed)\n"
        "99,Fawlty Towers (1975-1979) ,Comedy\n",
        encoding="utf-8",
    )
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        "1,11,3.5,964981247\n"
        "2,1,5.0,1445714994\n"
        "2,40697,0.5,1445715000\n"
        "3,182727,2.0,1500000000\n"
        "3,1,3.0,1500000100\n"
    )
    (root / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "2,1,pixar,1445714990\n"
        "3,1,Pixar,1500000200\n"
        '3,1,"fun, for kids",1500000300\n'
        "2,11,politics,1445715207\n"
    )
    (root / "links.csv").write_text(
        "movieId,imdbId,tmdbId\n1,0114709,862\n11,0112346,9087\n40697,0105946,\n182727,7424200,483455\n"
        "99,0072500,2207\n"
    )
    return root


def test_fixture_loads(tmp_path):
    data = load(write_fixture(tmp_path))
    ev = data.events
    assert data.summary()["channels"] == {"rating": 6, "tag": 4}
    assert data.spec.channels == ["rating", "tag"] and data.spec.event_columns == ["tag"]
    assert "label" not in ev.column_names
    ratings = ev.filter(pc.equal(ev["channel"], "rating"))
    assert ratings["value"].to_pylist()[:2] == [4.0, 3.5] and ratings["time"][0].as_py() == 964982703
    tags = ev.filter(pc.equal(ev["channel"], "tag"))
    assert all(math.isnan(v) for v in tags["value"].to_pylist())
    assert tags["tag"].to_pylist() == ["pixar", "Pixar", "fun, for kids", "politics"]

    items = {r["item_id"]: r for r in data.items.to_pylist()}
    assert items["11"]["title"] == "American President, The (1995)"
    assert items["11"]["genres"] == ["Comedy", "Drama", "Romance"]
    assert items["182727"]["genres"] == [] and items["182727"]["year"] == 2017
    assert items["40697"]["year"] is None and items["99"]["year"] == 1975
    assert items["99"]["title"] == "Fawlty Towers (1975-1979)"
    assert items["1"]["imdb_id"] == "0114709" and items["40697"]["tmdb_id"] is None
    assert {(f.name, f.kind) for f in data.spec.item_features} == {("genres", "multi_categorical"),
                                                                   ("year", "numeric")}

    text = dict(zip(data.content["text"]["entity_id"].to_pylist(), data.content["text"]["text"].to_pylist()))
    assert set(text) == set(items)  # every movie has a title, so the text modality is always present
    assert text["1"].startswith("Toy Story (1995). Genres: Adventure") and "pixar" not in text["1"].lower()
    assert text["182727"] == "A Christmas Story Live! (2017)."
    # the tags are events, not item content: a task reads them from its training period (task.event_text)
    assert [m.name for m in data.spec.modalities] == ["text"]
    assert "GroupLens" in data.spec.source and "Harper" in data.spec.citation
    assert data.problems() == []


def test_min_rating_count(tmp_path):
    data = load(write_fixture(tmp_path), min_rating_count=2)
    assert data.items["item_id"].to_pylist() == ["1"]
    assert set(data.events["item_id"].to_pylist()) == {"1"}
    assert data.content["text"].num_rows == 1
    assert set(data.events.filter(pc.equal(data.events["channel"], "tag"))["item_id"].to_pylist()) == {"1"}


def test_bad_files_are_reported(tmp_path):
    root = write_fixture(tmp_path)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,good,964982703\n")
    (root / "tags.csv").unlink()
    with pytest.raises(DataError) as err:
        load(root)
    where = {(Path(p.file).name, p.row, p.column) for p in err.value.problems}
    assert where == {("ratings.csv", 1, "rating"), ("tags.csv", None, None)}


def test_registry(tmp_path):
    assert {"movielens", "demo"} <= set(DATASETS)
    data = load_dataset("movielens", path=write_fixture(tmp_path))
    assert data.num_events == 10
    saved = data.save(tmp_path / "saved")
    assert load_dataset(saved).num_events == 10
    with pytest.raises(ValueError, match="path"):
        load_dataset("movielens")
    with pytest.raises(ValueError, match="demo") as err:
        load_dataset("no-such-dataset")
    assert "movielens" in str(err.value)


@pytest.mark.integration
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL}")
def test_real_movielens_latest_small():
    data = load(REAL)
    summary = data.summary()
    assert summary["channels"] == {"rating": 100_836, "tag": 3_683}
    assert summary["users"] == 610
    assert data.items.num_rows == 9_742 and data.content["text"].num_rows == 9_742
    assert set(data.content) == {"text"}
    assert data.problems() == []
