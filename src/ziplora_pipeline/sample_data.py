"""Sample data from the toy world's renderer: the sample robot from several views, one style image.

No third-party images: everything is drawn by ``core.toy_world.render`` from a seed, so the
sample set is reproducible and free of licences. ``python scripts/make_sample_data.py`` writes
``data/01_raw/subjects/robot/`` (``SKS_ROBOT``, a design the toy-world base model never saw, in
the plain photo style) and ``data/01_raw/styles/sketch/`` (one house in the sketch style). The same
functions draw any other instance or style, e.g. for a grid of subjects × styles.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from PIL import Image

from .core.toy_world.render import SKS_ROBOT, Instance, Scene, random_instance, random_pose, render

logger = logging.getLogger(__name__)


def subject_views(instance: Instance = SKS_ROBOT, views: int = 5, size: int = 64, seed: int = 0) -> list[Image.Image]:
    """``views`` photos of one instance: new position, scale, mirror and tilt each, plain background."""
    rng = random.Random(seed)
    return [render(random_pose(rng, Scene(instance)), size) for _ in range(views)]


def style_image(style: str = "sketch", cls: str = "house", size: int = 64, seed: int = 0) -> Image.Image:
    """One exemplar of ``style``: a random ``cls`` instance, plain background (the style's one training image)."""
    rng = random.Random(seed + 1000)
    return render(random_pose(rng, Scene(random_instance(rng, cls), style=style)), size)


def write_sample_data(root: str | Path = "data/01_raw", views: int = 5, size: int = 64, seed: int = 0,
                      style: str = "sketch", style_noun: str = "house") -> Path:
    """Write the sample subject (``views`` images) and style (1 image) under ``root``."""
    return write_grid_sample_data(root, views, size, seed, subjects={"robot": SKS_ROBOT}, styles={style: style_noun})


# The grid's sample library (conf/grid): three subject designs and three styles. The cup and the car are single
# designs the subject LoRA learns from their views; unlike the robot, pretraining may have drawn look-alikes
# (it excludes only the robot's), so they test recontextualisation more than novelty.
GRID_SUBJECTS = {"robot": SKS_ROBOT, "cup": Instance("cup", "blue", "orange", variant=2, detail=2),
                 "car": Instance("car", "green", "purple", variant=0, detail=1)}
GRID_STYLES = {"sketch": "house", "mosaic": "tree", "dots": "cat"}  # style -> what its one image shows


def write_grid_sample_data(root: str | Path = "data/01_raw", views: int = 5, size: int = 64, seed: int = 0,
                           subjects: dict | None = None, styles: dict | None = None) -> Path:
    """Write sample subjects (``views`` images each) and styles (1 image each) under ``root``; by default the grid's."""
    root = Path(root)
    subjects = GRID_SUBJECTS if subjects is None else subjects
    styles = GRID_STYLES if styles is None else styles
    for name, instance in subjects.items():
        folder = root / "subjects" / name
        folder.mkdir(parents=True, exist_ok=True)
        for v, img in enumerate(subject_views(instance, views, size, seed)):
            img.save(folder / f"{name}_{v:02d}.png")
    for style, noun in styles.items():
        folder = root / "styles" / style
        folder.mkdir(parents=True, exist_ok=True)
        style_image(style, noun, size, seed).save(folder / f"{style}.png")
    logger.info("Wrote %d views of each subject %s and 1 image of each style %s under %s", views, list(subjects),
                list(styles), root)
    return root
