"""The toy world's pretraining data: a pool of captioned renders, with what pretraining never sees.

Held out of pretraining (so later checks test generalisation, not recall):
- the sample subject's design (``SKS_ROBOT``), and every robot that is red with a yellow head;
- ``HELDOUT_PER_CLASS`` (colour, style) combinations per class: the base model is judged on
  exactly these "held-out class × colour × style" prompts (``heldout_prompts``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .render import BACKGROUNDS, CLASSES, COLOURS, STYLES, Instance, caption, random_scene, render

logger = logging.getLogger(__name__)

HELDOUT_PER_CLASS = 2
# Whole-word tokens of the toy world's tokenizer (CLIP's real BPE keeps such common words whole).
WORDS = tuple(dict.fromkeys(("a", "photo", "of", "in", "style", "wearing", "hat", "next", "to", "on", "background",
                             *CLASSES, *COLOURS, *STYLES, *BACKGROUNDS)))


@dataclass(frozen=True)
class PoolConfig:
    """The pretraining pool: how many renders, at what size, from which seed."""

    size: int = 24000  # images; the UNet sees each ~10 times in 4k steps of 64
    image_size: int = 64
    seed: int = 0
    workers: int = 1  # processes that draw the pool (the same images for any number: scenes are drawn first)


def heldout_triples(seed: int = 0) -> list[tuple[str, str, str]]:
    """(class, colour, style) combinations pretraining never draws: ``HELDOUT_PER_CLASS`` per class,
    every style used about equally (deterministic in ``seed``)."""
    rng = random.Random(seed + 7919)
    styles = list(STYLES) * 4
    rng.shuffle(styles)
    out = []
    for cls in CLASSES:
        colours = rng.sample(list(COLOURS), HELDOUT_PER_CLASS)
        out += [(cls, colour, styles.pop()) for colour in colours]
    return out


def is_sample_subject_like(inst: Instance) -> bool:
    """Robots that would resemble the sample subject (red body, yellow head) or carry its chest panel."""
    return inst.chest or (inst.cls == "robot" and inst.primary == "red" and inst.secondary == "yellow")


def pretraining_scene(rng: random.Random, heldout: set):
    """A random scene that is neither held out nor like the sample subject."""
    while True:
        scene = random_scene(rng)
        inst = scene.instance
        if not is_sample_subject_like(inst) and (inst.cls, inst.primary, scene.style) not in heldout:
            return scene


def render_pool(cfg: PoolConfig) -> tuple[torch.Tensor, list[str]]:
    """``cfg.size`` renders as uint8 (N, 3, H, W) and their captions."""
    rng = random.Random(cfg.seed)
    heldout = set(heldout_triples(cfg.seed))
    scenes = [pretraining_scene(rng, heldout) for _ in range(cfg.size)]  # the only random draws: in order
    captions = [caption(scene) for scene in scenes]
    images = np.empty((cfg.size, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    sizes = [cfg.image_size] * cfg.size
    # render() is a pure function of the scene (4.4 ms each, 24k take ~2 min on one core), so the workers
    # can draw in any order. fork: they only draw with PIL, and unlike spawn/forkserver (the default from
    # Python 3.14) nothing re-imports the caller's __main__ (kedro's CLI, a script).
    with (ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("fork")) if cfg.workers > 1
          else contextlib.nullcontext()) as pool:
        drawn = pool.map(_render_array, scenes, sizes, chunksize=256) if pool else map(_render_array, scenes, sizes)
        for i, img in enumerate(tqdm(drawn, total=cfg.size, desc="render pool", mininterval=5)):
            images[i] = img
    logger.info("Rendered %d toy-world images at %d px (%d held-out combinations excluded)", cfg.size,
                cfg.image_size, len(heldout))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions


def _render_array(scene, size: int) -> np.ndarray:
    return np.asarray(render(scene, size))


def heldout_prompts(seed: int = 0) -> list[dict]:
    """One prompt per held-out (class, colour, style), with the answers a judge should give."""
    out = []
    for cls, colour, style in heldout_triples(seed):
        text = f"a photo of a {colour} {cls}" if style == "photo" else f"a {colour} {cls} in {style} style"
        out.append({"prompt": text, "class": cls, "colour": colour, "style": style})
    return out
