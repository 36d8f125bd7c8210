"""``pretrain`` nodes: render the toy world, train the VAE, then the UNet and text encoders.

Not part of ``__default__``: the result is committed (``data/06_models/toy_sdxl``), so a fresh
clone never pretrains. ``kedro run --pipelines pretrain`` rebuilds it (about an hour on 2 CPU
cores, minutes on a GPU); interrupted, it resumes from its last checkpoint.
"""

from __future__ import annotations

import logging

import torch

from ...core.config_utils import from_dict
from ...core.diffusion.miniature import build_miniature_sdxl
from ...core.lora.checkpoints import CheckpointStore
from ...core.toy_world.config import PretrainConfig
from ...core.toy_world.data import render_pool
from ...core.toy_world.pretrain import (encode_images, finetune_decoder, set_scaling_factor, toy_pipeline, train_unet,
                                        train_vae, vae_weights)
from ...kedro_glue.tracking import step_logger

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
    decoder = finetune_decoder(vae, images, cfg.vae, checkpoints, _log_every("pretrain.vae_decoder"))
    logger.info("VAE decoder alone: %d steps in %.0f s, final loss %.4f", len(decoder.losses), decoder.seconds,
                sum(decoder.losses[-50:]) / len(decoder.losses[-50:]))
    return vae_weights(vae), {"losses": result.losses, "seconds": result.seconds, "resumed_from": result.resumed_from,
                              "scaling_factor": factor, "decoder_losses": decoder.losses,
                              "decoder_seconds": decoder.seconds}


def _device(cfg: PretrainConfig) -> torch.device:
    from ...core.diffusion.base_model import resolve_device

    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" \
        else resolve_device(cfg.device)


def encode_pool(pool: dict, vae_weights: dict, pretrain_params: dict) -> dict:
    """Scaled VAE posterior of every pool image: ``{"mean", "std"}``, each (N, 4, h, w)."""
    cfg = _cfg(pretrain_params)
    vae = toy_pipeline(cfg, vae_weights).vae.to(_device(cfg))
    mean, std = encode_images(vae, pool["images"])
    sf = vae.config.scaling_factor
    return {"mean": (mean * sf).contiguous(), "std": (std * sf).contiguous()}


def pretrain_unet(latents: dict, captions: list[str], vae_weights: dict, pretrain_params: dict,
                  checkpoints: CheckpointStore) -> tuple[object, dict]:
    """Train the UNet and both text encoders; returns the whole pipeline (saved as a diffusers folder) and a log."""
    cfg = _cfg(pretrain_params)
    pipe = toy_pipeline(cfg, vae_weights)
    if cfg.unet.continue_from:
        _load_trainables(pipe, cfg.unet.continue_from)
    device = _device(cfg)
    pipe.to(device)
    logger.info("Training the UNet and text encoders on %s", device)
    result = train_unet(pipe, latents["mean"], latents["std"], captions, cfg.unet, cfg.model.sample_size, checkpoints,
                        _log_every("pretrain.unet"))
    pipe.to("cpu")
    logger.info("UNet + text encoders: %d steps in %.0f s, final loss %.4f", len(result.losses), result.seconds,
                sum(result.losses[-50:]) / len(result.losses[-50:]))
    return pipe, {"losses": result.losses, "seconds": result.seconds, "resumed_from": result.resumed_from}


def _load_trainables(pipe, folder: str) -> None:
    """Start from the UNet and text encoders of the diffusers folder ``folder`` (its VAE is not used)."""
    from diffusers import StableDiffusionXLPipeline

    start = StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float32)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).load_state_dict(getattr(start, name).state_dict())
    logger.info("UNet and text encoders start from %s", folder)


def train_toy_judges(pretrain_params: dict) -> tuple[dict, dict]:
    """The toy world's CLIP and DINO: attribute (style, class, contexts) and identity judges, trained on the
    renderer's pictures only, with their held-out accuracies."""
    from ...core.toy_world.judge_training import fit_judges

    judges, report = fit_judges(_cfg(pretrain_params).judges)
    return judges, report


def check_toy_model(toy_sdxl: str, toy_judges: str, pretrain_params: dict) -> tuple[dict, dict]:
    """Judge the pretrained model through ``from_pretrained``: VAE reconstructions (the ceiling) and the base
    model's samples of held-out class × colour × style prompts; returns the report and a sample sheet."""
    from ...core.diffusion.base_model import BaseModelConfig, load_base_pipeline
    from ...core.evaluation.contact_sheet import contact_sheet
    from ...core.toy_world.checks import check_base_model, reconstruction_check
    from ...core.toy_world.data import heldout_prompts
    from ...core.toy_world.judges import ToyAttributeEncoder

    cfg = _cfg(pretrain_params)
    judge = ToyAttributeEncoder(f"{toy_judges}/attributes")
    pipe = load_base_pipeline(BaseModelConfig(pretrained_model_name_or_path=toy_sdxl, miniature_seed=None,
                                              device="cpu", dtype="fp32"), for_inference=True)
    size, c = cfg.model.sample_size, cfg.check
    recon = reconstruction_check(pipe.vae, judge, c.reconstruction_samples, 999, size)
    logger.info("VAE ceiling on %d fresh renders: class %.3f -> %.3f, style %.3f -> %.3f after reconstruction "
                "(PSNR %.1f dB)", c.reconstruction_samples, recon["clean"]["class_accuracy"],
                recon["reconstructed"]["class_accuracy"], recon["clean"]["style_accuracy"],
                recon["reconstructed"]["style_accuracy"], recon["psnr_db"])
    prompts = heldout_prompts(cfg.pool.seed)
    base, images = check_base_model(pipe, judge, prompts, c.seeds_per_prompt, c.num_inference_steps,
                                    c.guidance_scale, size)
    cells = {(p["prompt"], f"seed {k}"): images[i * c.seeds_per_prompt + k]
             for i, p in enumerate(prompts) for k in range(c.seeds_per_prompt)}
    sheet = contact_sheet(cells, [p["prompt"] for p in prompts], [f"seed {k}" for k in range(c.seeds_per_prompt)],
                          80, title="toy SDXL on held-out class x colour x style prompts (never drawn in pretraining)")
    return ({"vae_reconstruction": recon, "base_model_heldout": base, "heldout_prompts": prompts},
            {"heldout_samples": sheet})
