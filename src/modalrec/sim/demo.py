"""The built-in demo world: impressions, clicks and likes with item text, and a known ground truth.

No downloads; ~0.5 s for the default size; the same seed gives the same data.

Ground truth:
- 8 latent topics, each with a small vocabulary ("guitar concert live acoustic ..."); every item has
  one topic, a quality q ~ N(0, 0.6) and a popularity (Zipf-like, for exposure only). The item
  feature `category` is the coarse group of two topics (arts, sports, lifestyle, tech), so only the
  text tells football from basketball. `topic_true` is stored in the items table for analysis; it
  is NOT a declared feature.
- Item text (modality "text"): a short description drawn from its topic's words (with an
  occasional off-topic word); 20% of the items have no text: a missing modality, not empty text.
- Users: topic preferences θ ~ Dirichlet(0.3) that drift linearly towards a second Dirichlet draw
  over the user's timeline (by `drift`, default half-way).
- Exposure: each impression shows an item of a topic drawn from the user's current θ (60%) or an
  item drawn by popularity (40%).
- Click: P = sigmoid(b + log(8 θ_t[topic]) (clipped) + q + 1.5 min(r[topic], 2)), where r is the
  user's exponentially decayed (x0.8 per impression) count of recent clicks per topic: users keep
  clicking the topic they just clicked, which only a model that reads the click history can see.
  `p_true` holds this probability on every impression.

Events (time = unix seconds from 2024-01-01, each user's impressions at least a minute apart):
channel "impression" (`label` = click 0/1, `p_true`), "click" (one per clicked impression, 5 s after
it: use it as the history channel of a ctr task), "like" (for some clicks, 10-60 s after the click;
more likely for good items). `label` and `p_true` are null outside impressions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..data.interaction import DatasetSpec, FeatureSpec, InteractionData, ModalitySpec

TOPICS: list[tuple[str, str, list[str]]] = [
    ("music", "arts", ["guitar", "concert", "live", "acoustic", "band", "song", "album", "drums"]),
    ("cinema", "arts", ["movie", "trailer", "director", "actor", "premiere", "thriller", "sequel", "oscar"]),
    ("football", "sports", ["football", "match", "goal", "league", "striker", "stadium", "penalty", "derby"]),
    ("basketball", "sports", ["basketball", "dunk", "court", "playoffs", "rebound", "arena", "point", "guard"]),
    ("cooking", "lifestyle", ["recipe", "pasta", "kitchen", "chef", "baking", "spicy", "dinner", "dessert"]),
    ("travel", "lifestyle", ["travel", "beach", "hiking", "island", "flight", "hotel", "mountain", "roadtrip"]),
    ("gaming", "tech", ["gaming", "console", "speedrun", "boss", "level", "multiplayer", "controller", "quest"]),
    ("gadgets", "tech", ["smartphone", "laptop", "review", "battery", "camera", "unboxing", "wireless", "chip"]),
]
FILLERS = ["new", "best", "weekly", "top", "daily", "fresh", "epic", "classic", "amazing", "quick"]
AGE_GROUPS = ["18-24", "25-34", "35-49", "50+"]
START = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY = 86_400


def _describe(rng: np.random.Generator, topic: int) -> str:
    words = list(rng.choice(TOPICS[topic][2], size=4, replace=False))
    if rng.random() < 0.15:  # an off-topic word now and then: text is informative, not a label
        other = int(rng.integers(len(TOPICS)))
        words[int(rng.integers(4))] = str(rng.choice(TOPICS[other][2]))
    filler = str(rng.choice(FILLERS))
    form = int(rng.integers(3))
    if form == 0:
        return f"{filler.capitalize()} {words[0]} {words[1]} with {words[2]} and {words[3]}"
    if form == 1:
        return f"{words[0].capitalize()} and {words[1]}: {filler} {words[2]}, {words[3]}"
    return f"{words[0].capitalize()} {words[1]} {words[2]} ({filler} {words[3]})"


def generate(n_users: int = 600, n_items: int = 400, n_events: int = 40000, seed: int = 0,
             text_missing: float = 0.2, drift: float = 0.5) -> InteractionData:
    """`n_events` impressions (plus their click and like events) of `n_users` on `n_items`."""
    if n_users < 1 or n_items < len(TOPICS) or n_events < n_users:
        raise ValueError(f"need n_users >= 1, n_items >= {len(TOPICS)} and n_events >= n_users "
                         f"(got {n_users}, {n_items}, {n_events})")
    rng = np.random.default_rng(seed)
    k = len(TOPICS)

    # ---- items
    item_topic = np.concatenate([np.arange(k), rng.integers(k, size=n_items - k)])  # every topic present
    rng.shuffle(item_topic)
    quality = rng.normal(0.0, 0.6, n_items)
    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.8
    popularity /= popularity.sum()
    has_text = rng.random(n_items) >= text_missing
    texts = [_describe(rng, int(t)) for t in item_topic]
    item_ids = np.array([f"i{j:04d}" for j in range(n_items)], dtype=object)
    titles = [f"{TOPICS[t][2][0].capitalize()} #{j}" for j, t in enumerate(item_topic)]

    # ---- users: preferences drift from theta0 towards theta1 over each user's timeline
    theta0 = rng.dirichlet(np.full(k, 0.3), n_users)
    theta1 = rng.dirichlet(np.full(k, 0.3), n_users)
    activity = rng.lognormal(0.0, 0.7, n_users)
    counts = 1 + rng.multinomial(n_events - n_users, activity / activity.sum())
    user_of = np.repeat(np.arange(n_users), counts)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    pos = np.arange(n_events) - ptr[user_of]
    frac = pos / np.maximum(counts[user_of] - 1, 1)
    theta = (1 - drift * frac)[:, None] * theta0[user_of] + (drift * frac)[:, None] * theta1[user_of]

    # ---- exposure (independent of clicks, so drawn for all impressions at once)
    cum = np.cumsum(theta, axis=1)
    shown_topic = np.minimum((cum < rng.random(n_events)[:, None] * cum[:, -1:]).sum(axis=1), k - 1)
    items = rng.choice(n_items, size=n_events, p=popularity)
    by_topic = rng.random(n_events) < 0.6
    for t in range(k):
        members = np.flatnonzero(item_topic == t)
        sel = np.flatnonzero(by_topic & (shown_topic == t))
        p = popularity[members] / popularity[members].sum()
        items[sel] = rng.choice(members, size=len(sel), p=p)
    topic = item_topic[items]

    # ---- times: per user, sorted, at least a minute apart, spread over ~60 days
    gaps = 60 + rng.exponential(60 * DAY / np.maximum(counts[user_of], 1)).astype(np.int64)
    first = ptr[:-1]
    gaps[first] = rng.integers(0, 7 * DAY, n_users)
    times = START + np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], counts)

    # ---- clicks: sequential, one step = the j-th impression of every user still active
    affinity = np.clip(np.log(k * theta[np.arange(n_events), topic] + 1e-9), -3.0, 2.0)
    base = -2.9 + affinity + quality[items]
    recent = np.zeros((n_users, k))
    p_true = np.zeros(n_events)
    clicked = np.zeros(n_events, dtype=bool)
    u_draw = rng.random(n_events)
    for j in range(int(counts.max())):
        users = np.flatnonzero(counts > j)
        e = ptr[users] + j
        logit = base[e] + 1.5 * np.minimum(recent[users, topic[e]], 2.0)
        p = 1.0 / (1.0 + np.exp(-logit))
        c = u_draw[e] < p
        p_true[e], clicked[e] = p, c
        recent[users] *= 0.8
        recent[users[c], topic[e[c]]] += 1.0

    # ---- likes: some clicks, more often on good items
    click_idx = np.flatnonzero(clicked)
    p_like = 1.0 / (1.0 + np.exp(-(1.5 * quality[items[click_idx]] - 1.0)))
    like_idx = click_idx[rng.random(len(click_idx)) < p_like]
    like_delay = 5 + rng.integers(10, 60, len(like_idx))

    n_c, n_l = len(click_idx), len(like_idx)
    uid = np.array([f"u{u:04d}" for u in range(n_users)], dtype=object)
    ev_idx = np.concatenate([np.arange(n_events), click_idx, like_idx])
    events = pa.table({
        "user_id": pa.array(uid[user_of[ev_idx]], pa.string()),
        "item_id": pa.array(item_ids[items[ev_idx]], pa.string()),
        "time": pa.array(np.concatenate([times, times[click_idx] + 5, times[like_idx] + like_delay]), pa.int64()),
        "channel": pa.array(["impression"] * n_events + ["click"] * n_c + ["like"] * n_l, pa.string()),
        "label": pa.array(np.concatenate([clicked.astype(np.float64), np.full(n_c + n_l, np.nan)]),
                          pa.float64(), from_pandas=True),
        "p_true": pa.array(np.concatenate([p_true, np.full(n_c + n_l, np.nan)]), pa.float64(), from_pandas=True),
    })
    order = np.lexsort((np.asarray(events["time"]), np.asarray(user_of[ev_idx])))
    events = events.take(pa.array(order))

    dominant = theta0.argmax(axis=1)
    group_of_topic = {g: i for i, g in enumerate(dict.fromkeys(t[1] for t in TOPICS))}
    user_group = np.array([group_of_topic[TOPICS[t][1]] for t in dominant])
    age = np.where(rng.random(n_users) < 0.6, user_group, rng.integers(len(AGE_GROUPS), size=n_users))
    items_table = pa.table({
        "item_id": pa.array(item_ids, pa.string()),
        "title": pa.array(titles, pa.string()),
        "category": pa.array([TOPICS[t][1] for t in item_topic], pa.string()),
        "topic_true": pa.array([TOPICS[t][0] for t in item_topic], pa.string()),
        "quality_true": pa.array(quality, pa.float64()),
    })
    users_table = pa.table({
        "user_id": pa.array(uid, pa.string()),
        "age_group": pa.array([AGE_GROUPS[a] for a in age], pa.string()),
    })
    text = pa.table({
        "entity_id": pa.array(item_ids[has_text], pa.string()),
        "text": pa.array([t for t, h in zip(texts, has_text) if h], pa.string()),
    })
    spec = DatasetSpec(
        name="demo",
        description=f"modalrec built-in simulated world (seed {seed}): {n_users} users, {n_items} items, "
        f"{n_events} impressions; item text from 8 latent topics, {text_missing:.0%} of items without text",
        semi_synthetic=False,
        channels=["impression", "click", "like"],
        item_features=[FeatureSpec(name="category", kind="categorical")],
        user_features=[FeatureSpec(name="age_group", kind="categorical")],
        modalities=[ModalitySpec(name="text", entity="item", kind="text",
                                 description="short generated description from the item's topic words")],
        event_columns=["p_true"],
        source="modalrec.sim.demo.generate (synthetic, no external data)",
    )
    return InteractionData(spec, events, items_table, users_table, {"text": text})
