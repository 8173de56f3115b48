"""MovieLens "latest-small" (GroupLens): ratings and free-text tags of 610 users on 9,742 movies.

Reads the four CSVs of the release as GroupLens ships them (download ml-latest-small.zip from
https://grouplens.org/datasets/movielens/latest/ and unzip it; pass the folder):

    ratings.csv  userId,movieId,rating,timestamp
    tags.csv     userId,movieId,tag,timestamp
    movies.csv   movieId,title,genres        ("|"-separated; "(no genres listed)" = none)
    links.csv    movieId,imdbId,tmdbId       (optional here)

What comes out:
- events: channel "rating" (value = the rating, 0.5..5) and channel "tag" (one event per tag
  application, value NaN, the tag text in the extra event column `tag`). There is no `label`
  column: the task derives labels (e.g. rating >= 4) itself.
- items: item_id, title, genres (list<string>), year (from the title, null when absent), imdb_id,
  tmdb_id (strings, when links.csv is there). Features: genres (multi_categorical), year (numeric).
- modality "text" (item, text): "title. Genres: a, b. Tags: x, y." for EVERY movie, with the tags of
  all users (the title is always there, so the modality always is too);
  modality "user_tags" (item, text): the tags alone, present ONLY for the ~1,500 movies somebody
  tagged: a real missing-modality pattern. Both use every tag in the file, including tags written
  after a task's split time: models that must not see future content should not read them.

`min_rating_count` keeps only movies with at least that many ratings (their tags, items rows and
content too). Research use only, no commercial use; cite Harper & Konstan (2015), see `CITATION`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..data.errors import DataError, Problem
from ..data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec

SOURCE = "GroupLens MovieLens latest-small, https://grouplens.org/datasets/movielens/latest/"
CITATION = ("F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context. "
            "ACM Transactions on Interactive Intelligent Systems (TiiS) 5, 4: 19:1-19:19. "
            "https://doi.org/10.1145/2827872")
NO_GENRES = "(no genres listed)"
_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")

LAYOUT = {
    "ratings.csv": (["userId", "movieId", "rating", "timestamp"], {"rating", "timestamp"}),
    "tags.csv": (["userId", "movieId", "tag", "timestamp"], {"timestamp"}),
    "movies.csv": (["movieId", "title", "genres"], set()),
    "links.csv": (["movieId", "imdbId", "tmdbId"], set()),
}


def _read(path: Path, problems: list[Problem]) -> pd.DataFrame | None:
    """A GroupLens CSV as strings, numeric columns converted; every bad cell becomes a Problem."""
    columns, numeric = LAYOUT[path.name]
    if not path.is_file():
        problems.append(Problem(str(path), None, None, "a file of the MovieLens release", "no such file"))
        return None
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except (OSError, ValueError) as e:
        problems.append(Problem(str(path), None, None, "a readable UTF-8 CSV file", str(e).splitlines()[0]))
        return None
    missing = [c for c in columns if c not in df.columns]
    for c in missing:
        problems.append(Problem(str(path), None, c, f"a column named '{c}'", f"columns {list(df.columns)}"))
    if missing:
        return None
    df = df[columns]
    for c in ("userId", "movieId"):
        if c in df.columns:
            empty = (df[c].str.strip() == "").to_numpy()
            for r in np.flatnonzero(empty)[:20]:
                problems.append(Problem(str(path), int(r) + 1, c, "a non-empty id", "an empty value"))
    for c in numeric:
        conv = pd.to_numeric(df[c], errors="coerce")
        bad = conv.isna().to_numpy()
        for r in np.flatnonzero(bad)[:20]:
            problems.append(Problem(str(path), int(r) + 1, c, "a number", repr(df[c].iat[r])))
        df[c] = conv.astype("int64" if c == "timestamp" and not bad.any() else float)
    return df


def _unique_tags(tags: pd.Series) -> str:
    seen: dict[str, str] = {}
    for t in tags:
        key = t.strip().lower()
        if key and key not in seen:
            seen[key] = t.strip()
    return ", ".join(seen.values())


def load(path: str | os.PathLike, min_rating_count: int = 0) -> InteractionData:
    path = Path(path)
    if not path.is_dir():
        raise DataError(Problem(str(path), None, None, "the folder of the unzipped MovieLens release",
                                "no such directory"))
    problems: list[Problem] = []
    ratings = _read(path / "ratings.csv", problems)
    tags = _read(path / "tags.csv", problems)
    movies = _read(path / "movies.csv", problems)
    links = _read(path / "links.csv", problems) if (path / "links.csv").exists() else None
    if problems:
        raise DataError(problems)
    assert ratings is not None and tags is not None and movies is not None

    if min_rating_count > 0:
        counts = ratings["movieId"].value_counts()
        keep = set(counts.index[counts >= min_rating_count])
        ratings = ratings[ratings["movieId"].isin(keep)]
        tags = tags[tags["movieId"].isin(keep)]
        movies = movies[movies["movieId"].isin(keep)]

    n_r, n_t = len(ratings), len(tags)
    events = pa.table({
        "user_id": pa.array(np.concatenate([ratings["userId"].to_numpy(object), tags["userId"].to_numpy(object)]),
                            pa.string()),
        "item_id": pa.array(np.concatenate([ratings["movieId"].to_numpy(object),
                                            tags["movieId"].to_numpy(object)]), pa.string()),
        "time": pa.array(np.concatenate([ratings["timestamp"].to_numpy(np.int64),
                                         tags["timestamp"].to_numpy(np.int64)]), pa.int64()),
        "channel": pa.array(["rating"] * n_r + ["tag"] * n_t, pa.string()),
        "value": pa.array(np.concatenate([ratings["rating"].to_numpy(float), np.full(n_t, np.nan)]), pa.float64()),
        "tag": pa.array([None] * n_r + tags["tag"].tolist(), pa.string()),
    })

    titles = movies["title"].str.strip()
    genres = [[] if g.strip() in ("", NO_GENRES) else [x for x in g.split("|") if x] for g in movies["genres"]]
    years = titles.str.extract(_YEAR, expand=False)
    item_cols = {
        "item_id": pa.array(movies["movieId"].to_numpy(object), pa.string()),
        "title": pa.array(titles.to_numpy(object), pa.string()),
        "genres": pa.array(genres, pa.list_(pa.string())),
        "year": pa.array(pd.to_numeric(years).astype("Int64"), pa.int64(), from_pandas=True),
    }
    if links is not None:
        link = movies[["movieId"]].merge(links, on="movieId", how="left")
        for src, dst in (("imdbId", "imdb_id"), ("tmdbId", "tmdb_id")):
            vals = link[src].fillna("").str.strip()
            item_cols[dst] = pa.array(vals.mask(vals == "", None).to_numpy(object), pa.string(), from_pandas=True)
    items = pa.table(item_cols)

    by_movie = tags.sort_values("timestamp", kind="stable").groupby("movieId", sort=False)["tag"]
    movie_tags = by_movie.agg(_unique_tags)
    movie_tags = movie_tags[movie_tags != ""]
    texts = []
    for mid, title, g in zip(movies["movieId"], titles, genres):
        text = title + "."
        if g:
            text += " Genres: " + ", ".join(g) + "."
        t = movie_tags.get(mid)
        if t:
            text += " Tags: " + t + "."
        texts.append(text)
    content = {
        "text": pa.table({"entity_id": item_cols["item_id"], "text": pa.array(texts, pa.string())}),
        "user_tags": pa.table({"entity_id": pa.array(movie_tags.index.to_numpy(object), pa.string()),
                               "text": pa.array(movie_tags.to_numpy(object), pa.string())}),
    }
    spec = DatasetSpec(
        name="movielens-latest-small",
        description="MovieLens latest-small: 5-star ratings and free-text tags"
        + (f"; movies with >= {min_rating_count} ratings" if min_rating_count > 0 else ""),
        semi_synthetic=False,
        channels=["rating", "tag"],
        item_features=[FeatureSpec(name="genres", kind="multi_categorical"), FeatureSpec(name="year", kind="numeric")],
        modalities=[
            ModalitySpec(name="text", entity="item", kind="text",
                         description="title, genres and every user's tags for the movie"),
            ModalitySpec(name="user_tags", entity="item", kind="text",
                         description="the tags users wrote; only movies that were tagged"),
        ],
        event_columns=["tag"],
        source=SOURCE,
        citation=CITATION,
    )
    return InteractionData(spec, events, items, None, content).validate(str(path))


def load_multimodal(path: str | os.PathLike, cache: str | os.PathLike | None = None, backend: str = "auto",
                    modalities: tuple[str, ...] = ("text",), min_rating_count: int = 0) -> InteractionData:
    """MovieLens with item text embedded by the offline MiniLM encoder (`<modality>_emb`, 384-d).

    The multimodal CTR benchmark of this project: item text = title + genres + the tags users wrote,
    embedded once and cached by content (`cache`, default $MODALREC_CACHE or ~/.cache/modalrec, +
    /text), so later runs read the vectors instead of recomputing them. Needs the `text` extra."""
    from ..encoders.text import TextEncoder, encode_modality

    root = Path(cache) if cache is not None else Path(os.environ.get("MODALREC_CACHE",
                                                                     Path.home() / ".cache" / "modalrec"))
    data = load(path, min_rating_count=min_rating_count)
    encoder = TextEncoder(backend=backend, cache_dir=root / "text")
    for name in modalities:
        data = encode_modality(data, name, encoder)
    return data
