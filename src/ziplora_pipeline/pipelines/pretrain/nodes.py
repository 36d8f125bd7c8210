"""``pretrain`` nodes: render the toy world, train the VAE, then the UNet and text encoders.

Not part of ``__default__``: the result is committed (``data/06_models/toy_sdxl``), so a fresh
clone never pretrains. ``kedro run --pipelines pretrain`` rebuilds it (about an hour on 2 CPU
cores, minutes on a GPU); interrupted, it resumes from its last checkpoint.
"""

from __future__ import annotations

import logging

import torch

from ...core.checkpoints import CheckpointStore
from ...core.config_utils import from_dict
from ...core.miniature import build_miniature_sdxl
from ...core.toy_world.config import PretrainConfig
from ...core.toy_world.data import render_pool
from ...core.toy_world.pretrain import encode_images, set_scaling_factor, train_unet, train_vae
from ...tracking import step_logger

logger = logging.getLogger(__name__)


def _cfg(params: dict) -> PretrainConfig:
    return from_dict(PretrainConfig, params, "pretrain")


def _log_every(prefix: str, every: int = 25):
    log = step_logger(prefix)
    return lambda step, loss: log(step, loss=loss) if step % every == 0 else None


def make_pool(pretrain_params: dict) -> tuple[dict, list[str]]:
    """Render the pretraining pool: ``{"images": uint8 (N, 3, H, W)}`` and the captions."""
    images, captions = render_pool(_cfg(pretrain_params).pool)
    return {"images": images}, captions


def pretrain_vae(pool: dict, pretrain_params: dict, checkpoints: CheckpointStore) -> tuple[dict, dict]:
    """Train the toy SDXL's VAE; returns its weights (with the fitted ``scaling_factor``) and a log."""
    cfg = _cfg(pretrain_params)
    vae = build_miniature_sdxl(cfg.model.miniature_spec()).vae
    images = pool["images"]
    result = train_vae(vae, images, cfg.vae, checkpoints, _log_every("pretrain.vae"))
    mean, _ = encode_images(vae, images[:4096])
    factor = set_scaling_factor(vae, mean)
    logger.info("VAE: %d steps in %.0f s, final loss %.4f, scaling_factor %.4f", len(result.losses), result.seconds,
                sum(result.losses[-50:]) / len(result.losses[-50:]), factor)
    weights = {k: v.contiguous() for k, v in vae.state_dict().items()}
    weights["scaling_factor"] = torch.tensor(factor)
    return weights, {"losses": result.losses, "seconds": result.seconds, "resumed_from": result.resumed_from,
                     "scaling_factor": factor}


def _toy_pipeline(cfg: PretrainConfig, vae_weights: dict):
    pipe = build_miniature_sdxl(cfg.model.miniature_spec())
    weights = dict(vae_weights)
    factor = float(weights.pop("scaling_factor"))
    pipe.vae.load_state_dict(weights)
    pipe.vae.register_to_config(scaling_factor=factor)
    return pipe


def encode_pool(pool: dict, vae_weights: dict, pretrain_params: dict) -> dict:
    """Scaled VAE posterior of every pool image: ``{"mean", "std"}``, each (N, 4, h, w)."""
    cfg = _cfg(pretrain_params)
    vae = _toy_pipeline(cfg, vae_weights).vae
    mean, std = encode_images(vae, pool["images"])
    sf = vae.config.scaling_factor
    return {"mean": (mean * sf).contiguous(), "std": (std * sf).contiguous()}


def pretrain_unet(latents: dict, captions: list[str], vae_weights: dict, pretrain_params: dict,
                  checkpoints: CheckpointStore) -> tuple[object, dict]:
    """Train the UNet and both text encoders; returns the whole pipeline (saved as a diffusers folder) and a log."""
    cfg = _cfg(pretrain_params)
    pipe = _toy_pipeline(cfg, vae_weights)
    result = train_unet(pipe, latents["mean"], latents["std"], captions, cfg.unet, cfg.model.sample_size, checkpoints,
                        _log_every("pretrain.unet"))
    logger.info("UNet + text encoders: %d steps in %.0f s, final loss %.4f", len(result.losses), result.seconds,
                sum(result.losses[-50:]) / len(result.losses[-50:]))
    return pipe, {"losses": result.losses, "seconds": result.seconds, "resumed_from": result.resumed_from}
