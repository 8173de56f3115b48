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
- modality "text" (item, text): "title. Genres: a, b." for EVERY movie (the title is always there, so
  the modality always is too). The tags users wrote are events (channel "tag", text in `tag`), not item
  content: a task reads them as item text with `task.event_text` (e.g. {modality: user_tags, channel: tag,
  column: tag}), built from the tags of its training period only, so a tag written after a user's test
  time never reaches the model; present only for the movies tagged in that period (a real missing-modality
  pattern).

`min_rating_count` keeps only movies with at least that many ratings (their tags, items rows and
content too). Research use only, no commercial use; cite Harper & Konstan (2015), see `CITATION`.

`load_multichannel` is the view of the `multilabel` task: ratings and tags as two touchpoint channels
before each liked rating, whose labels are the movie's genres.
"""

from __future__ import annotations

import os
import re
from collections import Counter
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

    texts = [title + "." + (" Genres: " + ", ".join(g) + "." if g else "") for title, g in zip(titles, genres)]
    content = {"text": pa.table({"entity_id": item_cols["item_id"], "text": pa.array(texts, pa.string())})}
    spec = DatasetSpec(
        name="movielens-latest-small",
        description="MovieLens latest-small: 5-star ratings and free-text tags"
        + (f"; movies with >= {min_rating_count} ratings" if min_rating_count > 0 else ""),
        semi_synthetic=False,
        channels=["rating", "tag"],
        item_features=[FeatureSpec(name="genres", kind="multi_categorical"), FeatureSpec(name="year", kind="numeric")],
        modalities=[
            ModalitySpec(name="text", entity="item", kind="text", description="title and genres of the movie"),
        ],
        event_columns=["tag"],
        source=SOURCE,
        citation=CITATION,
    )
    return InteractionData(spec, events, items, None, content).validate(str(path))


def load_multimodal(path: str | os.PathLike, cache: str | os.PathLike | None = None, backend: str = "auto",
                    modalities: tuple[str, ...] = ("text",), min_rating_count: int = 0) -> InteractionData:
    """MovieLens with item text embedded by the offline MiniLM encoder (`<modality>_emb`, 384-d).

    The multimodal CTR benchmark of this project: item text = title + genres (the tags users wrote are events,
    read through `task.event_text` from the training period only),
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


LIKED = "liked"
GENRE_PREFIX = "genre:"
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def _words(text: str) -> list[str]:
    """Lower-case words of a tag or a genre name, in order, each once: "Sci-Fi" and the tag "sci-fi"
    become the same token, which is what lets the two channels share one token vocabulary."""
    return list(dict.fromkeys(_WORD.findall(text.lower())))


def _token_lists(lists: list[list[str]]) -> pa.Array:
    return pa.array(lists, pa.list_(pa.string()))


def load_multichannel(path: str | os.PathLike, min_rating_count: int = 0, like_threshold: float = 4.0,
                      sample_share: float = 1.0, seed: int = 0, min_word_count: int = 1,
                      tag_vectors: bool = False, cache: str | os.PathLike | None = None,
                      backend: str = "auto") -> InteractionData:
    """MovieLens as two touchpoint channels for the `multilabel` task (configs/shared_space/movielens_*.yaml).

    - Samples, channel ``liked``: every rating >= `like_threshold`; one row per genre of the rated movie
      (item ``genre:<Genre>``, the rows of one rating sharing an `event_id`), so a sample's labels are
      the movie's genres: 19 genre items flagged `is_product` (movies without genres are no sample).
      The movie is in the event column `movie_id`. `sample_share` < 1 keeps that share of the liked
      ratings, drawn with `seed` (the touchpoints all stay): the one way this view is subsampled, so
      that a benchmark can afford every model while each sample keeps its full history.
    - Touchpoints, channel ``rating``: EVERY rating (those >= the threshold too, as history of later
      samples; the task takes a user's events strictly before a sample's time), with modality
      ``rating_tokens`` (event, tokens): the words of the movie's genres and ``rating:<stars>``.
    - Touchpoints, channel ``tag``: every tag application, with ``tag_tokens`` (event, tokens): the
      words of the tag that at least `min_word_count` tag applications use (a word seen once can be
      learnt from by no model, and it widens every touchpoint's bag; a tag left without words has no
      row: a missing modality) and ``tag_text``
      (event, text); `tag_vectors=True` adds ``tag_text_emb`` (event, 384-d MiniLM vector of the tag
      text, cached under `cache`, default $MODALREC_CACHE or ~/.cache/modalrec, + /text; needs the
      `text` extra). Genre words and tag words share tokens ("sci-fi").
    Items: the movies of `load` (features genres and year) plus the genre items; the item text
    modalities of `load` are left out (they hold every tag, including those written after a sample).
    Event ids: ``r<n>`` (n-th rating), ``t<n>`` (n-th tag), ``l<n>`` (the sample of rating n)."""
    if not 0.0 < sample_share <= 1.0:
        raise ValueError(f"sample_share must be in (0, 1], got {sample_share}")
    base = load(path, min_rating_count=min_rating_count)
    ev = base.events
    channel = ev["channel"].to_numpy(zero_copy_only=False)
    is_r = channel == "rating"
    r_idx, t_idx = np.flatnonzero(is_r), np.flatnonzero(channel == "tag")
    user = ev["user_id"].to_numpy(zero_copy_only=False)
    movie = ev["item_id"].to_numpy(zero_copy_only=False)
    time = ev["time"].to_numpy(zero_copy_only=False)
    value = ev["value"].to_numpy(zero_copy_only=False)
    tag = np.asarray(ev["tag"].to_pylist(), dtype=object)

    items = base.items
    genres_of = dict(zip(items["item_id"].to_pylist(), items["genres"].to_pylist()))
    all_genres = sorted({g for gs in genres_of.values() for g in gs})
    r_ids = np.char.add("r", np.arange(1, len(r_idx) + 1).astype(str)).astype(object)
    t_ids = np.char.add("t", np.arange(1, len(t_idx) + 1).astype(str)).astype(object)

    # samples: liked ratings of movies with genres, one row per genre
    liked = np.flatnonzero((value[r_idx] >= like_threshold)
                           & np.array([bool(genres_of[m]) for m in movie[r_idx]], bool))
    if sample_share < 1.0:
        rng = np.random.default_rng(seed)
        liked = np.sort(rng.choice(liked, size=round(len(liked) * sample_share), replace=False))
    n_gen = np.array([len(genres_of[m]) for m in movie[r_idx[liked]]], np.int64)
    s_rows = np.repeat(r_idx[liked], n_gen)
    s_genre = np.array([GENRE_PREFIX + g for m in movie[r_idx[liked]] for g in genres_of[m]], dtype=object)
    s_ids = np.repeat(np.char.add("l", (liked + 1).astype(str)).astype(object), n_gen)

    n_r, n_t, n_s = len(r_idx), len(t_idx), len(s_rows)
    events = pa.table({
        "user_id": pa.array(np.concatenate([user[r_idx], user[t_idx], user[s_rows]]), pa.string()),
        "item_id": pa.array(np.concatenate([movie[r_idx], movie[t_idx], s_genre]), pa.string()),
        "time": pa.array(np.concatenate([time[r_idx], time[t_idx], time[s_rows]]), pa.int64()),
        "channel": pa.array(["rating"] * n_r + ["tag"] * n_t + [LIKED] * n_s, pa.string()),
        "value": pa.array(np.concatenate([value[r_idx], value[t_idx], value[s_rows]]), pa.float64()),
        "event_id": pa.array(np.concatenate([r_ids, t_ids, s_ids]), pa.string()),
        "tag": pa.array(np.concatenate([np.full(n_r, None, object), tag[t_idx], np.full(n_s, None, object)]),
                        pa.string()),
        "movie_id": pa.array(np.concatenate([np.full(n_r + n_t, None, object), movie[s_rows]]), pa.string()),
    })

    genre_words = {g: _words(g) for g in all_genres}
    rating_tokens = [[w for g in genres_of[m] for w in genre_words[g]] + [f"rating:{v:g}"]
                     for m, v in zip(movie[r_idx], value[r_idx])]
    tag_words = [_words(t) for t in tag[t_idx]]
    if min_word_count > 1:
        counts = Counter(w for ws in tag_words for w in ws)
        tag_words = [[w for w in ws if counts[w] >= min_word_count] for ws in tag_words]
    has_words = np.array([bool(w) for w in tag_words], bool)
    tag_text = [t.strip() for t in tag[t_idx]]
    has_text = np.array([bool(t) for t in tag_text], bool)
    content = {
        "rating_tokens": pa.table({"entity_id": pa.array(r_ids, pa.string()),
                                   "tokens": _token_lists(rating_tokens)}),
        "tag_tokens": pa.table({"entity_id": pa.array(t_ids[has_words], pa.string()),
                                "tokens": _token_lists([w for w, h in zip(tag_words, has_words) if h])}),
        "tag_text": pa.table({"entity_id": pa.array(t_ids[has_text], pa.string()),
                              "text": pa.array([t for t, h in zip(tag_text, has_text) if h], pa.string())}),
    }

    n_g = len(all_genres)
    genre_items = {"item_id": pa.array([GENRE_PREFIX + g for g in all_genres], pa.string()),
                   "title": pa.array(all_genres, pa.string()),
                   "genres": pa.array([[g] for g in all_genres], pa.list_(pa.string()))}
    parts = [items.append_column("is_product", pa.array(np.zeros(items.num_rows, bool)))]
    extra = {name: genre_items.get(name, pa.nulls(n_g, items.schema.field(name).type))
             for name in items.column_names}
    extra["is_product"] = pa.array(np.ones(n_g, bool))
    parts.append(pa.table(extra, schema=parts[0].schema))
    spec = DatasetSpec(
        name="movielens-latest-small-multichannel",
        description=f"MovieLens latest-small as touchpoints (ratings, tags) before liked ratings "
        f"(>= {like_threshold:g} stars, labels = the movie's genres)"
        + (f"; {sample_share:.0%} of the liked ratings (seed {seed})" if sample_share < 1.0 else "")
        + (f"; movies with >= {min_rating_count} ratings" if min_rating_count > 0 else ""),
        channels=["rating", "tag", LIKED],
        item_features=[FeatureSpec(name="genres", kind="multi_categorical"),
                       FeatureSpec(name="year", kind="numeric")],
        modalities=[
            ModalitySpec(name="rating_tokens", entity="event", kind="tokens",
                         description="words of the rated movie's genres and rating:<stars>"),
            ModalitySpec(name="tag_tokens", entity="event", kind="tokens", description="words of the tag"),
            ModalitySpec(name="tag_text", entity="event", kind="text", description="the tag as written"),
        ],
        event_columns=["event_id", "tag", "movie_id"],
        source=SOURCE,
        citation=CITATION,
    )
    data = InteractionData(spec, events, pa.concat_tables(parts), None, content).validate(str(path))
    if tag_vectors:
        from ..encoders.text import TextEncoder, encode_modality

        root = Path(cache) if cache is not None else Path(os.environ.get("MODALREC_CACHE",
                                                                         Path.home() / ".cache" / "modalrec"))
        data = encode_modality(data, "tag_text", TextEncoder(backend=backend, cache_dir=root / "text"))
    return data
