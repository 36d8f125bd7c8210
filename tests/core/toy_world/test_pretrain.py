"""Toy-world pretraining: an interrupted VAE or UNet run resumes from its checkpoint and ends bit-identical."""

from __future__ import annotations

import pytest
import torch

from ziplora_pipeline.core.diffusion.miniature import build_miniature_sdxl
from ziplora_pipeline.core.lora.checkpoints import CheckpointStore
from ziplora_pipeline.core.toy_world.config import ToyModelSpec
from ziplora_pipeline.core.toy_world.data import PoolConfig, render_pool
from ziplora_pipeline.core.toy_world.pretrain import (UnetTrainingConfig, VaeTrainingConfig, encode_images,
                                                      set_scaling_factor, train_unet, train_vae)

SPEC = ToyModelSpec(vae_channels=(8, 8, 16, 16), unet_channels=(16, 32), text_hidden=16, projection_dim=16)


class Interrupt(Exception):
    pass


def _stop_at(step):
    def on_step(s, loss):
        if s == step:
            raise Interrupt
    return on_step


@pytest.fixture(scope="module")
def pool():
    return render_pool(PoolConfig(size=16, seed=5))


def _pipe():
    return build_miniature_sdxl(SPEC.miniature_spec())


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_vae_resume_is_bit_exact(pool, tmp_path):
    images, _ = pool
    cfg = VaeTrainingConfig(steps=4, batch_size=4, checkpoint_every=2)
    straight = _pipe().vae
    train_vae(straight, images, cfg)
    store = CheckpointStore(tmp_path)
    with pytest.raises(Interrupt):
        train_vae(_pipe().vae, images, cfg, store, on_step=_stop_at(3))
    resumed = _pipe().vae
    result = train_vae(resumed, images, cfg, store)
    assert result.resumed_from == 2 and len(result.losses) == 4
    assert _same(_state(straight), _state(resumed))
    assert store.steps(next(iter(p.name for p in tmp_path.iterdir()), "")) == []  # finished: checkpoints cleared


def test_unet_resume_is_bit_exact(pool, tmp_path):
    images, captions = pool
    vae = _pipe().vae
    mean, std = encode_images(vae, images)
    sf = set_scaling_factor(vae, mean)
    cfg = UnetTrainingConfig(steps=4, batch_size=4, checkpoint_every=2, warmup_steps=1)
    straight = _pipe()
    train_unet(straight, mean * sf, std * sf, captions, cfg, 64)
    store = CheckpointStore(tmp_path)
    with pytest.raises(Interrupt):
        train_unet(_pipe(), mean * sf, std * sf, captions, cfg, 64, store, on_step=_stop_at(3))
    resumed = _pipe()
    result = train_unet(resumed, mean * sf, std * sf, captions, cfg, 64, store)
    assert result.resumed_from == 2
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert _same(_state(getattr(straight, name)), _state(getattr(resumed, name))), name


def test_decoder_finetune_leaves_the_encoder_and_latents_unchanged(pool):
    from ziplora_pipeline.core.toy_world.pretrain import finetune_decoder

    images, _ = pool
    vae = _pipe().vae
    train_vae(vae, images, VaeTrainingConfig(steps=2, batch_size=4, checkpoint_every=0))
    encoder, before = _state(vae.encoder), encode_images(vae, images)[0]
    decoder = _state(vae.decoder)
    result = finetune_decoder(vae, images, VaeTrainingConfig(batch_size=4, checkpoint_every=0, decoder_steps=3))
    assert len(result.losses) == 3
    assert _same(encoder, _state(vae.encoder)) and torch.equal(before, encode_images(vae, images)[0])
    assert not _same(decoder, _state(vae.decoder))
    assert all(p.requires_grad for p in vae.encoder.parameters())  # unfrozen again afterwards
