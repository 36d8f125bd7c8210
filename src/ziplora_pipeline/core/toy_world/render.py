"""The toy world's renderer: captioned pictures of 6 object classes in 6 rendering styles.

Everything is drawn with Pillow from a seed (no third-party images), at ``2 * size`` pixels and
downscaled with a Lanczos filter so that edges are anti-aliased. A scene is

    instance (class, primary/secondary colour, shape variant, detail) + pose (position, scale,
    mirror, tilt) + contexts (hat, a tree beside it, a coloured background) + style,

and its caption says what is drawn: "a red robot wearing a hat on a blue background in neon style"
("a photo of a red robot" for the plain photo style). Styles change the look, never the content:
each style is a function of the same two drawings of the scene, the filled one and the line art.

The sample subject (``SKS_ROBOT``) is a robot of one design that pretraining never draws: a
yellow round head on a red body, two antennas and a cyan chest panel (no other instance has a
chest panel, and no pretraining robot is red with a yellow head). The subject LoRA must learn it
from its views.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("robot", "cat", "house", "tree", "car", "cup")
COLOURS = {"red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 210, 40), "green": (50, 170, 60),
           "blue": (40, 90, 220), "purple": (140, 60, 190)}
BACKGROUNDS = {"plain": (236, 234, 228), "blue": (90, 140, 235), "green": (120, 200, 110),
               "pink": (240, 150, 190), "orange": (245, 180, 110)}
STYLES = ("photo", "mosaic", "stripes", "dots", "sketch", "neon")
VARIANTS, DETAILS = 3, 3  # shape variants and small details per class (see the draw_* functions)
GREY, DARK, GLASS = (95, 95, 105), (35, 30, 30), (170, 215, 245)


@dataclass(frozen=True)
class Instance:
    """One object design: its identity, whatever the pose, style or context."""

    cls: str
    primary: str  # colour name (COLOURS): body; the caption's colour word
    secondary: str  # colour name: accent part (robot head, roof, cabin, saucer, ...)
    variant: int = 0  # shape variant 0..2
    detail: int = 0  # small detail 0..2
    chest: bool = False  # the sample robot's chest panel (no other instance has one)


@dataclass(frozen=True)
class Scene:
    instance: Instance
    style: str = "photo"
    hat: bool = False
    tree: bool = False  # "next to a tree"
    background: str = "plain"
    x: float = 0.0  # centre offset, fraction of half the canvas
    y: float = 0.0
    scale: float = 0.75  # object half-size, fraction of half the canvas
    mirror: bool = False
    tilt: float = 0.0  # degrees
    mention_colour: bool = True


SKS_ROBOT = Instance("robot", "red", "yellow", variant=1, detail=1, chest=True)


def caption(scene: Scene, name: str | None = None) -> str:
    """What the scene shows, in the prompt style used everywhere ("a sks robot" when ``name`` is given)."""
    inst = scene.instance
    noun = f"{name} {inst.cls}" if name else (f"{inst.primary} {inst.cls}" if scene.mention_colour else inst.cls)
    parts = [noun]
    if scene.hat:
        parts.append("wearing a hat")
    if scene.tree:
        parts.append("next to a tree")
    if scene.background != "plain":
        parts.append(f"on a {scene.background} background")
    text = " ".join(parts)
    return f"a photo of a {text}" if scene.style == "photo" else f"a {text} in {scene.style} style"


# ---------------------------------------------------------------- drawing primitives
class Painter:
    """Draws parts in object coordinates ([-1, 1]² around the centre) in one of two modes.

    ``fill``: parts filled with their colour and outlined in a darker shade (the photo look);
    ``line``: outlines only, in the part's own colour (the line art that sketch/neon use).
    """

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, unit: float, mode: str):
        self.d, self.cx, self.cy, self.u, self.mode = draw, cx, cy, unit, mode
        self.w = max(2, round(unit / 16))

    def _xy(self, pts):
        return [(self.cx + x * self.u, self.cy + y * self.u) for x, y in pts]

    def _style(self, colour):
        if self.mode == "fill":
            return {"fill": colour, "outline": _shade(colour, 0.45), "width": self.w}
        return {"fill": None, "outline": colour, "width": self.w}

    def rect(self, x0, y0, x1, y1, colour):
        self.d.rectangle(self._xy([(x0, y0), (x1, y1)]), **self._style(colour))

    def ellipse(self, x0, y0, x1, y1, colour):
        self.d.ellipse(self._xy([(x0, y0), (x1, y1)]), **self._style(colour))

    def circle(self, x, y, r, colour):
        self.ellipse(x - r, y - r, x + r, y + r, colour)

    def poly(self, pts, colour):
        self.d.polygon(self._xy(pts), **self._style(colour))

    def line(self, pts, colour, width: float = 1.0):
        self.d.line(self._xy(pts), fill=colour if self.mode == "line" else _shade(colour, 0.6),
                    width=max(1, round(self.w * width)))


def _shade(colour, f: float):
    return tuple(int(c * f) for c in colour)


def _mix(a, b, t: float):
    return tuple(int(x * (1 - t) + y * t) for x, y in zip(a, b))


def _neon(colour):
    h, s, _ = colorsys.rgb_to_hsv(*(c / 255 for c in colour))
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, 1.0))


# ---------------------------------------------------------------- the six classes
# Each draws one instance and returns the hat's anchor (x, y of the top centre, half-width).
def draw_robot(p: Painter, i: Instance, a, b):
    for x in (-0.62, 0.45):
        p.rect(x, -0.05, x + 0.17, 0.4, GREY)  # arms
    for x in (-0.3, 0.1):
        p.rect(x, 0.6, x + 0.2, 0.95, GREY)  # legs
    p.rect(-0.45, -0.12, 0.45, 0.62, a)  # body
    if i.chest:
        p.rect(-0.25, 0.05, 0.25, 0.4, (40, 210, 230))
    top = {0: -0.62, 1: -0.66, 2: -0.6}[i.variant]
    if i.variant == 0:
        p.rect(-0.32, -0.62, 0.32, -0.12, b)
    elif i.variant == 1:
        p.ellipse(-0.36, -0.66, 0.36, -0.08, b)
    else:
        p.poly([(-0.4, -0.12), (-0.3, -0.5), (0, -0.6), (0.3, -0.5), (0.4, -0.12)], b)
    for x in (-0.14, 0.14):
        p.circle(x, -0.38, 0.07, (250, 250, 250))
    tips = {0: [0.0], 1: [-0.18, 0.18], 2: []}[i.detail]
    for x in tips:
        p.line([(x, top + 0.02), (x, -0.88)], GREY)
        p.circle(x, -0.9, 0.07, b)
    return 0.0, (-0.9 if tips else top), 0.35


def draw_cat(p: Painter, i: Instance, a, b):
    tail = {0: [(-0.5, 0.35), (-0.8, 0.0), (-0.75, -0.35)], 1: [(-0.5, 0.45), (-0.85, 0.6), (-0.95, 0.4)],
            2: [(-0.5, 0.3), (-0.85, 0.1), (-0.7, -0.15), (-0.55, -0.05)]}[i.variant]
    p.line(tail, a, width=2.5)
    p.ellipse(-0.6, -0.05, 0.45, 0.7, a)  # body
    for x in (-0.45, 0.2):
        p.rect(x, 0.55, x + 0.15, 0.9, a)  # legs
    if i.detail == 0:
        for x in (-0.35, -0.1, 0.15):
            p.line([(x, 0.0), (x + 0.05, 0.3)], b, width=1.5)  # stripes
    elif i.detail == 1:
        p.ellipse(-0.3, 0.25, 0.2, 0.6, b)  # belly patch
    p.poly([(0.2, -0.35), (0.25, -0.8), (0.45, -0.5)], a)  # ears
    p.poly([(0.55, -0.5), (0.75, -0.8), (0.8, -0.35)], a)
    p.circle(0.5, -0.25, 0.33, a)  # head
    for x in (0.38, 0.62):
        p.circle(x, -0.3, 0.06, (90, 200, 90))
    return 0.5, -0.6, 0.3


def draw_house(p: Painter, i: Instance, a, b):
    top = {0: -0.75, 1: -0.35, 2: -0.95}[i.variant]
    if i.detail == 0:
        p.rect(0.3, -0.75, 0.45, -0.3, GREY)  # chimney
    p.rect(-0.6, -0.1, 0.6, 0.85, a)  # walls
    if i.variant == 1:
        p.rect(-0.7, -0.35, 0.7, -0.1, b)
    else:
        p.poly([(-0.75, -0.1), (0, top), (0.75, -0.1)], b)
    p.rect(-0.12, 0.35, 0.12, 0.85, DARK)  # door
    windows = [(-0.45, 0.1), (0.25, 0.1)] if i.detail == 1 else [(-0.45, 0.1)]
    for x, y in windows:
        p.rect(x, y, x + 0.2, y + 0.2, GLASS)
    if i.detail == 2:
        p.circle(0.35, 0.2, 0.12, GLASS)
    return 0.0, top, 0.3


def draw_tree(p: Painter, i: Instance, a, b):
    p.rect(-0.1, 0.3, 0.1, 0.95, (120, 75, 40))  # trunk
    if i.variant == 0:
        p.circle(0, -0.2, 0.55, a)
    elif i.variant == 1:
        p.poly([(-0.6, 0.4), (0, -0.85), (0.6, 0.4)], a)
    else:
        for x, y, r in ((-0.3, 0.0, 0.35), (0.3, 0.0, 0.35), (0.0, -0.4, 0.4)):
            p.circle(x, y, r, a)
    if i.detail == 0:
        for x, y in ((-0.25, -0.2), (0.2, 0.05), (0.05, -0.45)):
            p.circle(x, y, 0.09, b)  # fruit
    elif i.detail == 1:
        p.circle(0.0, 0.1, 0.12, b)  # a bird's nest
    return 0.0, -0.8, 0.3


def draw_car(p: Painter, i: Instance, a, b):
    cabin = {0: [(-0.5, 0.1), (-0.3, -0.3), (0.35, -0.3), (0.55, 0.1)],
             1: [(-0.75, 0.1), (-0.75, -0.4), (0.4, -0.4), (0.6, 0.1)],
             2: [(-0.35, 0.1), (-0.15, -0.15), (0.25, -0.15), (0.45, 0.1)]}[i.variant]
    p.poly(cabin, b)
    p.rect(-0.85, 0.1, 0.85, 0.5, a)  # body
    if i.detail == 0:
        p.rect(-0.85, 0.25, 0.85, 0.33, b)  # racing stripe
    elif i.detail == 1:
        p.rect(-0.05, min(y for _, y in cabin) - 0.12, 0.1, min(y for _, y in cabin), b)  # roof light
    for x in (-0.5, 0.5):
        p.circle(x, 0.5, 0.2, DARK)
    return 0.0, min(y for _, y in cabin), 0.3


def draw_cup(p: Painter, i: Instance, a, b):
    p.ellipse(-0.75, 0.65, 0.75, 0.9, b)  # saucer
    body = {0: (-0.45, -0.25, 0.35, 0.75), 1: (-0.3, -0.6, 0.25, 0.75), 2: (-0.6, 0.1, 0.5, 0.75)}[i.variant]
    x0, y0, x1, y1 = body
    p.line([(x1, y0 + 0.15), (x1 + 0.3, y0 + 0.25), (x1 + 0.3, y0 + 0.5), (x1, y0 + 0.6)], a, width=2)  # handle
    p.rect(*body, a)
    if i.detail == 0:
        for x in (-0.2, 0.1):
            p.line([(x, y0 - 0.1), (x + 0.08, y0 - 0.3), (x, y0 - 0.5)], GREY)  # steam
    elif i.detail == 1:
        p.rect(x0, y0 + 0.2, x1, y0 + 0.35, b)  # band
    return (x0 + x1) / 2, y0, 0.3


DRAW = {"robot": draw_robot, "cat": draw_cat, "house": draw_house, "tree": draw_tree, "car": draw_car,
        "cup": draw_cup}


def _draw_hat(p: Painter, x, y, half):
    p.rect(x - half, y - 0.08, x + half, y, (30, 30, 30))  # brim
    p.rect(x - 0.6 * half, y - 0.45, x + 0.6 * half, y - 0.08, (30, 30, 30))
    p.rect(x - 0.6 * half, y - 0.2, x + 0.6 * half, y - 0.12, (230, 40, 60))  # band


def _object_layer(scene: Scene, n: int, mode: str) -> Image.Image:
    """The instance (with its hat) on a transparent n×n layer, posed."""
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    inst = scene.instance
    p = Painter(ImageDraw.Draw(layer), n / 2, n / 2, scene.scale * n / 2, mode)
    hx, hy, half = DRAW[inst.cls](p, inst, COLOURS[inst.primary], COLOURS[inst.secondary])
    if scene.hat:
        _draw_hat(p, hx, hy, half)
    if scene.mirror:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if scene.tilt:
        layer = layer.rotate(scene.tilt, resample=Image.Resampling.BICUBIC)
    return layer


def _tree_layer(scene: Scene, n: int, mode: str) -> Image.Image:
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    side = -1 if scene.x > 0 else 1
    p = Painter(ImageDraw.Draw(layer), n / 2 + side * 0.62 * n / 2, n / 2 + 0.35 * n / 2, 0.38 * n / 2, mode)
    draw_tree(p, Instance("tree", "green", "green", 0, 2), COLOURS["green"], COLOURS["green"])
    return layer


def _scene_layers(scene: Scene, n: int, mode: str) -> Image.Image:
    """Objects (tree context, then the posed instance) composited on a transparent layer."""
    out = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    if scene.tree:
        out.alpha_composite(_tree_layer(scene, n, mode))
    obj = _object_layer(scene, n, mode)
    out.alpha_composite(obj, (round(scene.x * n / 2), round(scene.y * n / 2)))
    return out


# ---------------------------------------------------------------- the six styles
def _paper(bg, n, tint: float):
    return Image.new("RGB", (n, n), _mix((250, 248, 240), bg, tint))


def style_photo(fill, line, bg, n):
    grad = np.linspace(1.12, 0.88, n)[:, None, None] * np.array(bg, dtype=np.float32)  # lit from above
    img = Image.fromarray(np.clip(grad.repeat(n, 1), 0, 255).astype(np.uint8))
    img.paste(fill, (0, 0), fill)
    return img


def style_mosaic(fill, line, bg, n):
    tiles = 21  # about 3 px tiles at 64 px, each the mean colour under it, with dark grout between
    small = style_photo(fill, line, bg, n).resize((tiles, tiles), Image.Resampling.BOX)
    img = small.resize((n, n), Image.Resampling.NEAREST)
    d = ImageDraw.Draw(img)
    for k in range(tiles):
        e = round(k * n / tiles)
        d.line([(e, 0), (e, n)], fill=(55, 50, 45), width=1)
        d.line([(0, e), (n, e)], fill=(55, 50, 45), width=1)
    return img


def style_stripes(fill, line, bg, n):
    img = Image.new("RGB", (n, n), bg)
    arr = np.array(fill).astype(np.float32)
    yy, xx = np.mgrid[0:n, 0:n]
    light = ((xx + yy) // max(2, n // 16)) % 2 == 1  # diagonal bands, period n/8
    arr[..., :3][light] = arr[..., :3][light] * 0.3 + 255 * 0.7
    striped = Image.fromarray(arr.astype(np.uint8), "RGBA")
    img.paste(striped, (0, 0), striped)
    return img


def style_dots(fill, line, bg, n):
    base = np.array(style_photo(fill, line, bg, n))
    img = _paper(bg, n, 0.1)
    d = ImageDraw.Draw(img)
    step = n / 13
    r = step * 0.42
    for gy in range(13):
        for gx in range(13):
            x, y = (gx + 0.5 + 0.5 * (gy % 2)) * step, (gy + 0.5) * step
            c = tuple(int(v) for v in base[min(n - 1, int(y)), min(n - 1, int(x))])
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    return img


def style_sketch(fill, line, bg, n):
    img = _paper(bg, n, 0.25)
    dark = np.array(line).astype(np.float32)
    dark[..., :3] *= 0.55  # coloured pencil: the part's colour, darkened
    layer = Image.fromarray(dark.astype(np.uint8), "RGBA")
    img.paste(layer, (0, 0), layer)
    return img


def style_neon(fill, line, bg, n):
    img = Image.new("RGB", (n, n), _shade(bg, 0.12))
    arr = np.array(line)
    rgb = arr[..., :3].reshape(-1, 3)
    lut = {tuple(c): _neon(tuple(c)) for c in np.unique(rgb[arr[..., 3].reshape(-1) > 0], axis=0)}
    bright = np.array([lut.get(tuple(c), (0, 0, 0)) for c in rgb], dtype=np.uint8).reshape(arr[..., :3].shape)
    glow_src = Image.fromarray(np.dstack([bright, arr[..., 3]]), "RGBA")
    glow = glow_src.filter(ImageFilter.GaussianBlur(n / 40))
    img.paste(glow, (0, 0), glow)
    img.paste(glow_src, (0, 0), glow_src)
    return img


STYLE_FNS = {"photo": style_photo, "mosaic": style_mosaic, "stripes": style_stripes, "dots": style_dots,
             "sketch": style_sketch, "neon": style_neon}


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a ``size``×``size`` RGB image (drawn at 2× and Lanczos-downscaled)."""
    n = 2 * size
    bg = BACKGROUNDS[scene.background]
    fill = _scene_layers(scene, n, "fill")
    line = _scene_layers(scene, n, "line") if scene.style in ("sketch", "neon") else None
    img = STYLE_FNS[scene.style](fill, line, bg, n)
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- random scenes
def random_instance(rng: random.Random, cls: str | None = None) -> Instance:
    cls = cls or rng.choice(CLASSES)
    primary = rng.choice(list(COLOURS))
    secondary = rng.choice([c for c in COLOURS if c != primary])
    return Instance(cls, primary, secondary, rng.randrange(VARIANTS), rng.randrange(DETAILS))


def random_pose(rng: random.Random, scene: Scene) -> Scene:
    """New position, scale, mirror and tilt; a scene with a tree beside it keeps to the other side."""
    x = rng.uniform(0.1, 0.3) * rng.choice((-1, 1)) if scene.tree else rng.uniform(-0.15, 0.15)
    return replace(scene, x=x, y=rng.uniform(-0.1, 0.1), scale=rng.uniform(0.55, 0.8) * (0.85 if scene.tree else 1),
                   mirror=rng.random() < 0.5, tilt=rng.uniform(-12, 12))


def random_scene(rng: random.Random, instance: Instance | None = None, style: str | None = None,
                 p_hat: float = 0.25, p_tree: float = 0.25, p_background: float = 0.35,
                 p_colour: float = 0.7) -> Scene:
    inst = instance or random_instance(rng)
    scene = Scene(inst, style=style or rng.choice(STYLES), hat=rng.random() < p_hat,
                  tree=inst.cls != "tree" and rng.random() < p_tree,
                  background=rng.choice(list(BACKGROUNDS)[1:]) if rng.random() < p_background else "plain",
                  mention_colour=rng.random() < p_colour)
    return random_pose(rng, scene)
