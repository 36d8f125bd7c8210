"""Procedurally drawn sample data: a toy robot seen from several views and one style image.

No third-party images: everything is drawn with Pillow from a seed, so the sample set is
reproducible and free of licences. ``python scripts/make_sample_data.py`` writes it to
``data/01_raw/subjects/robot/`` and ``data/01_raw/styles/mosaic/``.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)


def draw_robot(view: int, size: int = 256, seed: int = 0) -> Image.Image:
    """A red toy robot on a plain background, turned by ``view`` * 40 degrees."""
    rng = random.Random(seed * 100 + view)
    bg = tuple(rng.randint(200, 240) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    s = size / 256
    turn = math.cos(math.radians(view * 40))  # apparent width of the front as it turns
    cx = size / 2 + rng.uniform(-12, 12) * s
    w = 70 * s * (0.6 + 0.4 * abs(turn))
    d.rectangle([cx - w, 110 * s, cx + w, 200 * s], fill=(200, 40, 40), outline=(60, 10, 10), width=3)
    d.rectangle([cx - 0.7 * w, 50 * s, cx + 0.7 * w, 105 * s], fill=(220, 60, 50), outline=(60, 10, 10), width=3)
    d.line([cx, 50 * s, cx, 30 * s], fill=(60, 60, 60), width=int(4 * s))
    d.ellipse([cx - 7 * s, 22 * s, cx + 7 * s, 36 * s], fill=(250, 200, 0))
    if turn > -0.2:  # eyes visible from the front half
        for side in (-1, 1):
            ex = cx + side * 0.35 * w * turn
            d.ellipse([ex - 8 * s, 68 * s, ex + 8 * s, 84 * s], fill=(30, 200, 255), outline=(0, 0, 0))
    for side in (-1, 1):  # arms and legs
        x0, x1 = sorted((cx + side * w, cx + side * (w + 14 * s)))
        d.rectangle([x0, 120 * s, x1, 180 * s], fill=(90, 90, 100))
        d.rectangle([cx + side * 0.45 * w - 10 * s, 200 * s, cx + side * 0.45 * w + 10 * s, 235 * s], fill=(90, 90, 100))
    return img


def draw_style(size: int = 256, seed: int = 0) -> Image.Image:
    """A 'mosaic' style exemplar: a flower made of bold, dark-outlined tiles on teal."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (20, 110, 120))
    d = ImageDraw.Draw(img)
    tile = size // 16
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            r = math.hypot(x - size / 2, y - size / 2) / size
            base = (240, 180, 40) if r < 0.15 else (220, 70, 120) if r < 0.33 else (20, 110 + rng.randint(-20, 20), 120)
            col = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in base)
            d.rectangle([x + 1, y + 1, x + tile - 2, y + tile - 2], fill=col, outline=(10, 10, 10), width=2)
    return img.filter(ImageFilter.SMOOTH)


def write_sample_data(root: str | Path = "data/01_raw", views: int = 5, size: int = 256, seed: int = 0) -> Path:
    """Write the sample subject (``views`` images) and style (1 image) under ``root``."""
    root = Path(root)
    subject = root / "subjects" / "robot"
    style = root / "styles" / "mosaic"
    subject.mkdir(parents=True, exist_ok=True)
    style.mkdir(parents=True, exist_ok=True)
    for v in range(views):
        draw_robot(v, size, seed).save(subject / f"robot_{v:02d}.png")
    draw_style(size, seed).save(style / "mosaic.png")
    logger.info("Wrote %d subject views to %s and 1 style image to %s", views, subject, style)
    return root
