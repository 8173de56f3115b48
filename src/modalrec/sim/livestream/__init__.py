"""A live-streaming platform with known ground truth: gift prediction from watches and raw content.

Built for issue 5 (MMBee, Deng et al., "MMBee: Live Streaming Gift-Sending Recommendations via
Multi-Modal Fusion and Behaviour Expansion", KDD 2024). The paper's task (its problem formulation) is
gift-through rate (GTR): given that a user watches a live segment, will they send a gift? Its signal
comes from the segment's multi-modal content (frames, speech, comments: the MFQ module, multi-modal
fusion with learnable queries) and from the user-streamer gifting graph (the GIE module, graph-guided
interest expansion). This world makes both kinds of signal real, hidden and measurable.

The world (all draws from `seed`; each stage has its own random stream, so `content_signal` changes the
gift probabilities, labels and prices and nothing else):

- Streamers (`a0000`, ...) have a content style (gaming, singing, chatting, outdoor, shopping; the
  visible `category`), a popularity, a gift bias, a latent COMMUNITY (the co-gifting structure) and a
  schedule: on each day they go live with a streamer-specific probability, one room (session) a day
  starting around their preferred hour, 30 min to 2 h long, split into `segment_minutes` segments.
  Cold streamers (`cold_streamers`, default 10%) debut only in the last 20% of the days.
- Segments (the items, `a0042/r3/g5`) have two HIDDEN variables: `hot` (a PK battle, gift rush or
  lucky draw; a two-state Markov chain along the room, stay probability 0.4, stationary rate
  `hot_rate`) and `quality` (standard normal: 0.6 room mood + 0.8 segment noise). Both are visible
  only in the content; they are kept in the items table as `gt_hot` and `gt_quality` (with the
  streamer's community as `gt_community`) for analysis and are NOT declared item features, so no
  model reads them. Segments nobody watched are left out of the data (they carry no sample).
- Users (`u00017`) have interests over styles (Dirichlet(0.6)), a sparse membership over the
  streamer communities (Dirichlet(0.3)) and an activity tier: heavy (8%, about 2.5 visits a day),
  regular (37%, 1 a day) or light (55%, 0.35 a day). Cold users (`cold_users`, default 10%) join in
  the last 20% of the days and show the observable tier "new"; every user's true tier and join time
  stay in the users table columns `gt_tier` and `gt_join_time` (not declared features).
- Watching: a user opens the app at a time drawn in proportion to how many rooms are live, picks a
  live streamer with probability ~ popularity * exp(1.0 interest + 0.5 community affinity) (0.5 is
  `watch_affinity`; at 0 what a user watches says nothing about their gifting community) and stays
  for a geometric number of segments (continuing with probability sigmoid(0.2 + 0.9 interest),
  clipped to [0.2, 0.85]; never past the room's end). Every watched segment is a `watch` event
  (the GTR sample) with the seconds watched; one watch per user and segment.
- Gifting (the ground truth, `p_true` on every watch):
      logit p = b0 + tier bias (heavy +1.6, regular 0, light -1.3) + 0.6 interest(user, style)
                + 0.8 affinity(user, streamer community) + streamer bias (N(0, 0.4))
                + content_signal * (2.5 hot + 0.9 quality)
                + gift_loyalty * log(1 + the user's gifts to this streamer at earlier watches)
  where interest = clip(log(5 theta), -2.5, 1.2) and affinity = clip(log(G pi), -2.5, 1.5) (0.8 is
  `gift_affinity`; the number of communities G is `communities`, default n_streamers // 6 within [2, 40];
  `gift_loyalty` defaults to 0: loyal fans, who come back to gift the streamers they gifted, are an option);
  b0 is solved so that the mean gift probability over the watches is `gift_rate` (default 2%), whatever
  `content_signal` is. The label is a Bernoulli draw of p; a gifted watch also emits a `gift` event a
  few seconds later with a lognormal price (by true tier, higher in hot segments). `content_signal=0`
  makes p a function of (user, streamer) (and of earlier gifts, with loyalty) only: the ablation in which
  content carries no gift signal.
- Watches emit `comment` and `like` events (more likely for liked styles and communities, never
  dependent on the hidden segment variables or the label), at times inside the watch. A comment
  event says who commented; the texts of the `comments` modality are the segment's whole chat.

Content (per segment; each modality may be missing: no row, at rates `missing`):
- `frames` (image, multi): 1 to 3 PNG frames, 224x224, rendered from a FINITE pool: per streamer 2
  scenes (a real photo bundled with scikit-image, chosen per style, cropped, flipped and tinted per
  scene, with style overlays: a game HUD, stage lights, chat bubbles, a compass, price tags) x 3
  quality tiers (low: dark, blurred, "360p"; high: vivid, sparkles, "HD") x {normal, hot (banner such
  as "PK BATTLE", gold frame, confetti)}.
- `speech` (audio): one clip from a pool of 5 styles x 3 tiers x {normal, hot} x 4 variants (120
  clips: a style opener, a tier sentence and, when hot, a call for gifts), spoken once each by
  espeak-ng (`-v en-us+f2 -s 160 -g 10`: the US voice with word gaps, which
  pocketsphinx's US model recognises about twice as well as `-v en`) and resampled to 16 kHz mono 16-bit WAV. Without espeak-ng (or with
  `espeak=False`) the modality is the transcript instead (kind "text"), and its description says so.
- `comments` (text, multi): 1 to 8 viewer comments (more in hot and good segments), each about the
  segment's state with probability 0.55 (gift calls when hot; complaints, small talk or praise by
  tier), otherwise unrelated chatter. Texts come from a fixed pool, so encoder caches stay bounded.
- Every modality shows the TRUE state only partly: with probability 0.8 (frames), 0.7 (speech) and
  0.6 (comments) it reflects the segment's hot state, independently again for its quality tier;
  otherwise it shows an unrelated state (hot on a normal segment with probability 0.03, a uniformly
  drawn tier). Rendered content never depends on `content_signal`.

Media file names are hashes of what they show, so a file present in `media_dir` is reused.

Deviations from the paper's data (Kuaishou logs, not public): the streams here are short rooms with
5-minute segments rather than hours of streams; the graph is a planted community structure; audio is
synthetic speech without music; gift prices are lognormal rather than a platform's gift catalogue.

Time is unix seconds from 2024-01-01; an event lies inside its segment. With a chronological split
that holds out the last ~20% of the time, cold streamers and users appear only in the test period.

Headroom, measured on the demo preset (seed 0, 18k watches): AUC of p_true 0.906; of p_true without
the content term 0.823 (what a model blind to content can reach at best); of the no-content logit plus
the Bayes-optimal estimate of the content term from the states the present modalities show 0.882
(what a perfect content reader can reach). The bench preset gives 0.906 / 0.826.
"""

from __future__ import annotations

# The package is laid out by what each module does: params (constants, presets, the gift model, the
# cache key), pools (photos, sentences, comments), world (streamers, rooms, segments, users), behaviour
# (watches, gifts, comments, likes), content (what each segment shows), frames and speech (rendering),
# assemble (generate / simulate: the InteractionData and its spec). Every public name of the former
# single module is importable from here, as are the private ones imported elsewhere (_calibrate by
# sim.kuailive_release, _world and _users by benchmarks/gie_signal.py).
import shutil  # noqa: F401  (the former module's namespace had it: tests patch livestream.shutil.which)

from .assemble import generate as generate
from .assemble import simulate as simulate
from .behaviour import _calibrate as _calibrate
from .content import clip_text as clip_text
from .frames import frame_spec as frame_spec
from .frames import render_frame as render_frame
from .params import ACTIVITY as ACTIVITY
from .params import ACTIVITY_SHARE as ACTIVITY_SHARE
from .params import DAY as DAY
from .params import DEFAULT_MISSING as DEFAULT_MISSING
from .params import FALSE_HOT as FALSE_HOT
from .params import FRAME_SIZE as FRAME_SIZE
from .params import GIFT as GIFT
from .params import MODALITIES as MODALITIES
from .params import N_SCENES as N_SCENES
from .params import PRESETS as PRESETS
from .params import PRICE_LOG_MEAN as PRICE_LOG_MEAN
from .params import RENDER_VERSION as RENDER_VERSION
from .params import SIM_VERSION as SIM_VERSION
from .params import SPEECH_RATE as SPEECH_RATE
from .params import SPEECH_VARIANTS as SPEECH_VARIANTS
from .params import START as START
from .params import STYLE_SHARE as STYLE_SHARE
from .params import STYLES as STYLES
from .params import TIER_BIAS as TIER_BIAS
from .params import TIERS as TIERS
from .params import VISIBILITY as VISIBILITY
from .params import VISITS_PER_DAY as VISITS_PER_DAY
from .params import VOICE as VOICE
from .params import WATCH_AFFINITY as WATCH_AFFINITY
from .params import GiftModel as GiftModel
from .params import cache_key as cache_key
from .params import cache_root as cache_root
from .params import espeak_available as espeak_available
from .params import resolve_params as resolve_params
from .pools import BANNERS as BANNERS
from .pools import COMMENTS_HOT_GENERIC as COMMENTS_HOT_GENERIC
from .pools import COMMENTS_HOT_STYLE as COMMENTS_HOT_STYLE
from .pools import COMMENTS_NOISE_GENERIC as COMMENTS_NOISE_GENERIC
from .pools import COMMENTS_NOISE_STYLE as COMMENTS_NOISE_STYLE
from .pools import COMMENTS_TIER as COMMENTS_TIER
from .pools import PHOTOS as PHOTOS
from .pools import SPEECH_HOT as SPEECH_HOT
from .pools import SPEECH_OPENERS as SPEECH_OPENERS
from .pools import SPEECH_TIER as SPEECH_TIER
from .speech import speak as speak
from .world import _users as _users
from .world import _world as _world

__all__ = ["GIFT", "PRESETS", "STYLES", "GiftModel", "cache_key", "cache_root", "clip_text",
           "espeak_available", "frame_spec", "generate", "render_frame", "resolve_params", "speak"]
