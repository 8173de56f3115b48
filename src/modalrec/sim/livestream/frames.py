"""Rendering of the frames: a PNG per (streamer, scene, tier, hot), from a bundled photo with style
overlays, the tier's look and the hot banner."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .params import FRAME_SIZE, RENDER_VERSION, STYLES, TIERS
from .pools import BANNERS, PHOTOS
from .world import _World

_PALETTE = ((255, 94, 58), (255, 200, 40), (60, 200, 255), (140, 90, 255), (60, 230, 120), (255, 80, 180))


def _photo(name: str, cache: dict) -> object:
    from PIL import Image

    if name not in cache:
        with importlib.resources.as_file(importlib.resources.files("skimage.data") / name) as f:
            im = Image.open(f)
            im.load()
        if im.mode == "RGBA":  # horse, logo: put the cut-out on a sky-like background
            bg = Image.new("RGB", im.size, (150, 190, 230))
            bg.paste(im, mask=im.split()[3])
            im = bg
        cache[name] = im
    return cache[name]


def frame_spec(w: _World, streamer: int, scene: int, tier: int, hot: int) -> dict:
    """Everything a frame shows (JSON-able): its file name is the hash of this."""
    style = STYLES[int(w.st_style[streamer])]
    seed = int(w.st_scene_seed[streamer, scene])
    photo = PHOTOS[style][int(w.st_scene_photo[streamer, scene])]
    return {"v": RENDER_VERSION, "style": style, "photo": photo, "seed": seed, "name": f"@a{streamer:04d}",
            "tier": TIERS[tier], "hot": bool(hot),
            "banner": BANNERS[style][seed % len(BANNERS[style])]}


def render_frame(spec: dict, photos: dict | None = None):
    """The 224x224 RGB PIL image of `frame_spec`: photo scene + style overlays + tier look + hot banner."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

    photos = {} if photos is None else photos
    r = np.random.default_rng(spec["seed"])
    base = _photo(spec["photo"], photos)
    wd, ht = base.size
    side = int(min(wd, ht) * r.uniform(0.6, 1.0))
    x0, y0 = int(r.integers(0, wd - side + 1)), int(r.integers(0, ht - side + 1))
    im = base.crop((x0, y0, x0 + side, y0 + side)).resize((FRAME_SIZE, FRAME_SIZE), Image.BILINEAR)
    tint = _PALETTE[int(r.integers(len(_PALETTE)))]
    if base.mode == "L":
        dark = tuple(int(c * 0.15) for c in tint)
        im = ImageOps.colorize(im, black=dark, white=(255, 255, 255), mid=tint)
    else:
        im = Image.blend(im.convert("RGB"), Image.new("RGB", im.size, tint), 0.12)
    if r.random() < 0.5:
        im = ImageOps.mirror(im)
    im = im.convert("RGBA")
    over = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(over)
    small, mid, big = (ImageFont.load_default(size=s) for s in (11, 15, 26))
    _style_overlay(d, spec["style"], r, small, mid)
    d.rounded_rectangle((6, 6, 46, 22), 4, fill=(230, 30, 40, 235))
    d.text((12, 8), "LIVE", font=small, fill=(255, 255, 255, 255))
    d.text((52, 8), spec["name"], font=small, fill=(255, 255, 255, 255), stroke_width=1,
           stroke_fill=(0, 0, 0, 255))
    d.text((6, 26), f"viewers {int(r.integers(2, 99))}.{int(r.integers(10))}k", font=small,
           fill=(255, 255, 255, 230), stroke_width=1, stroke_fill=(0, 0, 0, 255))
    if spec["tier"] == "high":
        for _ in range(14):  # sparkles
            x, y, s = int(r.integers(10, 214)), int(r.integers(40, 200)), int(r.integers(2, 5))
            d.line((x - s, y, x + s, y), fill=(255, 255, 220, 230), width=1)
            d.line((x, y - s, x, y + s), fill=(255, 255, 220, 230), width=1)
        d.rounded_rectangle((186, 6, 218, 22), 4, fill=(20, 120, 255, 235))
        d.text((193, 8), "HD", font=small, fill=(255, 255, 255, 255))
    if spec["hot"]:
        for _ in range(40):  # confetti
            x, y, s = int(r.integers(0, 224)), int(r.integers(0, 224)), int(r.integers(2, 5))
            d.ellipse((x, y, x + s, y + s), fill=(*_PALETTE[int(r.integers(len(_PALETTE)))], 255))
        d.rectangle((0, 84, 224, 128), fill=(200, 20, 40, 215))
        d.rectangle((0, 84, 224, 88), fill=(255, 205, 40, 255))
        d.rectangle((0, 124, 224, 128), fill=(255, 205, 40, 255))
        tw = d.textlength(spec["banner"], font=big)
        d.text(((224 - tw) / 2, 92), spec["banner"], font=big, fill=(255, 240, 120, 255), stroke_width=2,
               stroke_fill=(90, 0, 0, 255))
        d.rectangle((0, 0, 223, 223), outline=(255, 200, 30, 255), width=6)
        d.rounded_rectangle((170, 190, 218, 214), 6, fill=(255, 200, 30, 240))
        d.text((180, 194), "x2", font=mid, fill=(120, 0, 0, 255))
    im = Image.alpha_composite(im, over).convert("RGB")
    if spec["tier"] == "low":  # a poor stream: dark, soft, noisy, and it says 360p
        im = ImageEnhance.Brightness(im).enhance(0.55)
        im = ImageEnhance.Contrast(im).enhance(0.7)
        im = im.filter(ImageFilter.GaussianBlur(2.0))
        noise = r.normal(0.0, 10.0, (FRAME_SIZE, FRAME_SIZE, 1))
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
        ImageDraw.Draw(im).text((186, 8), "360p", font=small, fill=(200, 200, 200))
    elif spec["tier"] == "high":
        im = ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.12)).enhance(1.35)
    return im


def _style_overlay(d, style: str, r: np.random.Generator, small, mid) -> None:
    """The drawings that make a style recognisable on screen."""
    white, black = (255, 255, 255, 255), (0, 0, 0, 255)
    if style == "gaming":
        hp = int(r.integers(30, 100))
        d.rectangle((8, 200, 108, 212), fill=(40, 40, 40, 200))
        d.rectangle((8, 200, 8 + hp, 212), fill=(40, 220, 80, 230))
        d.rectangle((160, 150, 216, 206), fill=(10, 30, 10, 190), outline=(120, 255, 120, 255))
        for _ in range(5):
            x, y = int(r.integers(164, 212)), int(r.integers(154, 202))
            d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 60, 60, 255))
        d.line((112, 104, 112, 120), fill=white, width=2)
        d.line((104, 112, 120, 112), fill=white, width=2)
        d.text((8, 182), f"SCORE {int(r.integers(1000, 99999))}", font=mid, fill=white, stroke_width=1,
               stroke_fill=black)
    elif style == "singing":
        for i in range(3):
            x = 30 + 80 * i
            d.polygon([(x, 0), (x - 30, 224), (x + 30, 224)], fill=(255, 255, 180, 45))
        d.ellipse((100, 150, 124, 174), fill=(60, 60, 60, 255), outline=(200, 200, 200, 255), width=2)
        d.rectangle((108, 174, 116, 214), fill=(40, 40, 40, 255))
        for _ in range(3):
            x, y = int(r.integers(20, 200)), int(r.integers(50, 140))
            d.ellipse((x, y + 10, x + 9, y + 17), fill=(255, 230, 255, 230))
            d.line((x + 8, y, x + 8, y + 14), fill=(255, 230, 255, 230), width=2)
        d.rectangle((0, 196, 224, 224), fill=(120, 20, 120, 180))
        d.text((8, 202), "NOW SINGING", font=mid, fill=white)
    elif style == "chatting":
        for i in range(3):
            y = 120 + 32 * i
            d.rounded_rectangle((120, y, 216, y + 24), 8, fill=(255, 255, 255, 210))
            d.line((128, y + 8, 128 + int(r.integers(30, 80)), y + 8), fill=(90, 90, 90, 255), width=2)
            d.line((128, y + 15, 128 + int(r.integers(20, 70)), y + 15), fill=(150, 150, 150, 255), width=2)
        d.rectangle((8, 150, 90, 214), outline=(255, 255, 255, 220), width=2)
        d.text((8, 46), "JUST CHATTING", font=mid, fill=white, stroke_width=1, stroke_fill=black)
    elif style == "outdoor":
        d.ellipse((170, 30, 214, 74), fill=(0, 0, 0, 120), outline=white, width=2)
        ang = r.uniform(0, 2 * np.pi)
        d.line((192, 52, 192 + 18 * np.cos(ang), 52 + 18 * np.sin(ang)), fill=(255, 60, 60, 255), width=3)
        d.text((188, 32), "N", font=small, fill=white)
        pts = [(int(20 + 30 * i), int(200 - r.integers(0, 40))) for i in range(7)]
        d.line(pts, fill=(255, 160, 40, 230), width=3)
        d.text((8, 182), f"ALT {int(r.integers(200, 3500))} m", font=mid, fill=white, stroke_width=1,
               stroke_fill=black)
    else:  # shopping
        for i in range(2):
            x, y = 12 + 110 * i, 150
            d.rounded_rectangle((x, y, x + 90, y + 26), 5, fill=(255, 230, 60, 235))
            d.text((x + 8, y + 5), f"${int(r.integers(5, 199))}.99", font=mid, fill=(120, 0, 0, 255))
        d.rounded_rectangle((60, 190, 164, 216), 8, fill=(30, 180, 80, 240))
        d.text((80, 195), "BUY NOW", font=mid, fill=white)
        d.rectangle((40, 46, 184, 140), outline=(255, 255, 255, 200), width=2)
        d.text((8, 46), f"IN STOCK {int(r.integers(2, 60))}", font=small, fill=white, stroke_width=1,
               stroke_fill=black)


def _render_frames(w: _World, keys: list[tuple[int, int, int, int]], folder: Path,
                   progress: bool) -> list[str]:
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    photos: dict = {}
    for name in {frame_spec(w, *k)["photo"] for k in keys}:  # loaded once, before the threads share them
        _photo(name, photos)
    paths, todo = [], []
    for key in keys:
        spec = frame_spec(w, *key)
        name = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
        path = folder / f"{name}.png"
        paths.append(str(path.resolve()))
        if not path.exists():
            todo.append((spec, path))

    def draw(item: tuple[dict, Path]) -> None:
        spec, path = item
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.png")
        # fastest zlib level: the same size here (photos compress poorly), a quarter of the time
        render_frame(spec, photos).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)  # a concurrent run sees the whole file or none

    if todo:  # PIL drops the GIL while it draws and encodes
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(tqdm(pool.map(draw, todo), total=len(todo), desc="frames", unit="image",
                      disable=not progress, mininterval=1.0))
    return paths
