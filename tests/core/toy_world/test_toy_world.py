"""The toy world's renderer, pretraining pool and tokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ziplora_pipeline.core.toy_world.data import (WORDS, PoolConfig, heldout_prompts, heldout_triples,
                                                  is_sample_subject_like, render_pool)
from ziplora_pipeline.core.toy_world.render import CLASSES, SKS_ROBOT, STYLES, Scene, caption, random_scene, render


def test_same_seed_same_bytes():
    a = [render(random_scene(random.Random(7))).tobytes() for _ in range(2)]
    b = render(random_scene(random.Random(8))).tobytes()
    assert a[0] == a[1] and a[0] != b


def test_styles_change_the_look_not_the_caption_content():
    scene = Scene(SKS_ROBOT)
    looks = {s: np.asarray(render(Scene(SKS_ROBOT, style=s)), dtype=np.float32) for s in STYLES}
    for s in STYLES[1:]:
        assert np.abs(looks[s] - looks["photo"]).mean() > 5, f"{s} looks like photo"
        assert caption(Scene(SKS_ROBOT, style=s)) == f"a red robot in {s} style"
    assert caption(scene) == "a photo of a red robot"
    assert caption(Scene(SKS_ROBOT, hat=True, tree=True, background="blue", style="neon"), name="sks") == \
        "a sks robot wearing a hat next to a tree on a blue background in neon style"


def test_render_size_and_mode():
    img = render(random_scene(random.Random(0)), size=32)
    assert img.size == (32, 32) and img.mode == "RGB"


def test_pool_never_draws_the_subject_or_heldout_combinations():
    images, captions = render_pool(PoolConfig(size=200, seed=3))
    assert images.shape == (200, 3, 64, 64) and images.dtype.is_floating_point is False
    assert len(captions) == 200 and all(c.startswith("a ") for c in captions)
    heldout = heldout_triples(3)
    assert len(heldout) == 2 * len(CLASSES) and {s for _, _, s in heldout} <= set(STYLES)
    for cls, colour, style in heldout:  # the caption of a held-out combination never occurs
        text = f"a photo of a {colour} {cls}" if style == "photo" else f"a {colour} {cls}"
        assert not any(c.startswith(text) and (style == "photo" or c.endswith(f"in {style} style")) for c in captions)
    assert is_sample_subject_like(SKS_ROBOT)
    assert len(heldout_prompts(3)) == len(heldout)


def test_tokenizer_keeps_world_words_whole_and_rare_tokens_split():
    from ziplora_pipeline.core.diffusion.miniature import miniature_tokenizer

    tok = miniature_tokenizer(WORDS)
    assert [w for w in WORDS if len(w) > 1 and len(tok(w).input_ids) != 3] == []  # bos, one token, eos
    pieces = tok.convert_ids_to_tokens(tok("a sks robot in neon style").input_ids)
    assert pieces[-4:-1] == ["in</w>", "neon</w>", "style</w>"] and "sks</w>" not in pieces
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2
    assert miniature_tokenizer()("robot").input_ids[1:-1] != tok("robot").input_ids[1:-1]  # no words: characters


@pytest.mark.parametrize("style", STYLES)
def test_every_style_renders_every_class(style):
    rng = random.Random(1)
    for cls in CLASSES:
        from ziplora_pipeline.core.toy_world.render import random_instance

        img = render(Scene(random_instance(rng, cls), style=style, hat=True, background="green"))
        assert np.asarray(img).std() > 10


def test_pool_drawn_in_parallel_is_the_same_pool():
    """``pool.workers`` only spreads the drawing: same images and captions as one process, in the same order."""
    from ziplora_pipeline.core.toy_world.data import PoolConfig, render_pool

    one, captions_one = render_pool(PoolConfig(size=96, seed=3, workers=1))
    many, captions_many = render_pool(PoolConfig(size=96, seed=3, workers=3))
    assert captions_many == captions_one
    assert torch.equal(many, one)
