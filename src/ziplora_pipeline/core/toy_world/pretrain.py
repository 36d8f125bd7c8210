"""Pretraining the miniature SDXL on the toy world: the VAE first, then the UNet and both text encoders.

The model keeps SDXL's architecture and conditioning (two CLIP text encoders, penultimate
hidden states concatenated, pooled projection + 6 ``time_ids`` in ``text_time``, the SDXL
scheduler), so every later stage runs real SDXL's code path. Texts go through
``pipe.encode_prompt`` itself; the unconditional branch is all zeros, as SDXL's
``force_zeros_for_empty_prompt`` makes it at sampling time.

Both loops are resumable: a checkpoint (weights, optimizer, EMA, the CPU generator's state,
losses) every ``checkpoint_every`` steps, keyed by everything that determines the result, so an
interrupted run continues and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config_utils import require
from ..lora.checkpoints import CheckpointStore, run_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaeTrainingConfig:
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6  # per latent element summed, as SD's VAE; small so colours survive
    edge_weight: float = 0.5  # L1 on image gradients: keeps outlines, stripes and dots sharp
    colour_weight: float = 1.0  # L1 on 4x4-pooled images: keeps flat colours exact
    initial_logvar: float = -6.0  # posterior log-variance at init (diffusers' init: 0, i.e. std 1; see below)
    decoder_steps: int = 2000  # then the decoder alone (encoder frozen: latents, hence the UNet's data, unchanged)
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self):
        require(self.steps > 0 and self.batch_size > 0, "pretrain.vae.steps and batch_size must be > 0.")


@dataclass(frozen=True)
class UnetTrainingConfig:
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    text_learning_rate: float = 5e-4  # both text encoders train too (their vocabulary starts random)
    warmup_steps: int = 200
    caption_dropout: float = 0.1  # zero conditioning, for classifier-free guidance
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    seed: int = 0
    # A diffusers folder whose UNet and text encoders this run starts from (e.g. data/06_models/toy_sdxl,
    # to train the committed model further); null trains from the spec's random init.
    continue_from: str | None = None

    def __post_init__(self):
        require(self.steps > 0 and self.batch_size > 0, "pretrain.unet.steps and batch_size must be > 0.")
        require(0 <= self.caption_dropout < 1, "pretrain.unet.caption_dropout must be in [0, 1).")


@dataclass
class PretrainResult:
    losses: list[float]
    seconds: float
    resumed_from: int


def _lr(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) in [-1, 1]."""
    return images.float() / 127.5 - 1


def _edges(x: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical differences (B, 3, H, W) -> (B, 6, H-1, W-1)."""
    return torch.cat([x[..., 1:, 1:] - x[..., :-1, 1:], x[..., 1:, 1:] - x[..., 1:, :-1]], dim=1)


def init_posterior(vae, logvar: float) -> None:
    """Start the VAE's posterior narrow: ``quant_conv`` outputs (mean, logvar) per latent channel, and
    with diffusers' init logvar ≈ 0, so every decoder input carries unit noise and only coarse
    shape gets through. Measured here: after 500 steps objects still came back colourless (PSNR
    17 dB), with or without a colour loss. A bias of -6 (std 0.05) lets colour through from the start;
    the KL term still regularises it."""
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.bias[c:] = logvar


def vae_loss(vae, x: torch.Tensor, cfg: VaeTrainingConfig, generator: torch.Generator) -> torch.Tensor:
    """L1 + edge L1 + pooled-colour L1 on the reconstruction of a posterior sample, + KL (per image,
    summed over latents)."""
    posterior = vae.encode(x).latent_dist
    rec = vae.decode(posterior.sample(generator=generator)).sample
    return (F.l1_loss(rec, x) + cfg.edge_weight * F.l1_loss(_edges(rec), _edges(x))
            + cfg.colour_weight * F.l1_loss(F.avg_pool2d(rec, 4), F.avg_pool2d(x, 4))
            + cfg.kl_weight * posterior.kl().mean())


def _config(module) -> dict:
    """A diffusers model's config without private keys (``_use_default_values`` is a set: unordered
    across processes, which would change the checkpoint key and defeat resuming)."""
    return {k: v for k, v in module.config.items() if not k.startswith("_")}


def _resume(store: CheckpointStore | None, key: str, modules: dict, optimizer, generator, ema=None):
    state = store.latest(key) if store else None
    if state is None:
        return 0, []
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    if ema is not None:
        ema.update_from(state["ema"])
    logger.info("Resuming pretraining (%s) from checkpoint step %d", ", ".join(modules), state["step"])
    return state["step"], list(state["losses"])


def _checkpoint(store, key, step, modules, optimizer, generator, losses, ema=None):
    state = {"step": step, "modules": {n: {k: v.detach().clone() for k, v in m.state_dict().items()}
                                       for n, m in modules.items()},
             "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "losses": list(losses)}
    if ema is not None:
        state["ema"] = ema.state()
    store.save(key, step, state)


def train_vae(vae, images: torch.Tensor, cfg: VaeTrainingConfig, store: CheckpointStore | None = None,
              on_step: Callable[[int, float], None] | None = None) -> PretrainResult:
    """Train ``vae`` in place on uint8 images (N, 3, H, W); random horizontal flips."""
    torch.manual_seed(cfg.seed)
    init_posterior(vae, cfg.initial_logvar)
    return _vae_loop(vae, images, cfg, store, on_step, "vae", list(vae.parameters()))


def _vae_loop(vae, images, cfg: VaeTrainingConfig, store, on_step, name: str, params: list) -> PretrainResult:
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    key = run_key(name, dataclasses.asdict(cfg), images[:64], images.shape, _config(vae))
    start, losses = _resume(store, key, {"vae": vae}, optimizer, generator)
    vae.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"pretrain {name}", mininterval=2)
    for step in bar:
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=generator)
        flip = torch.rand(cfg.batch_size, generator=generator) < 0.5
        x = to_pixels(images[idx])
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate * _lr(step, cfg.steps, 100)
        loss = vae_loss(vae, x, cfg, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step:
            on_step(step + 1, losses[-1])
        if store and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _checkpoint(store, key, step + 1, {"vae": vae}, optimizer, generator, losses)
    vae.eval()
    if store:
        store.clear(key)
    return PretrainResult(losses, time.perf_counter() - t0, start)


def finetune_decoder(vae, images: torch.Tensor, cfg: VaeTrainingConfig, store: CheckpointStore | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> PretrainResult:
    """More steps for the decoder only. The encoder (and ``quant_conv``) stay frozen, so the latents the
    UNet learns from do not change: this phase can run before the UNet or beside it, same result."""
    frozen = [vae.encoder, vae.quant_conv]
    for m in frozen:
        m.requires_grad_(False)
    decoder_cfg = dataclasses.replace(cfg, steps=cfg.decoder_steps, seed=cfg.seed + 1, learning_rate=cfg.learning_rate / 2)
    try:
        return _vae_loop(vae, images, decoder_cfg, store, on_step, "vae_decoder",
                         [p for p in vae.parameters() if p.requires_grad])
    finally:
        for m in frozen:
            m.requires_grad_(True)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled posterior (mean, std) of uint8 images, each (N, 4, h, w)."""
    means, stds = [], []
    for s in tqdm(range(0, images.shape[0], batch_size), desc="encode pool", mininterval=5):
        dist = vae.encode(to_pixels(images[s:s + batch_size]).to(vae.device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


def set_scaling_factor(vae, latent_mean: torch.Tensor) -> float:
    """Give the VAE SDXL's convention of unit-variance scaled latents: scaling_factor = 1 / std."""
    factor = float(1.0 / latent_mean.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    """uint8 in, uint8 out (posterior mean decoded): what every generated image can at best be."""
    dist = vae.encode(to_pixels(images)).latent_dist
    rec = vae.decode(dist.mean).sample
    return ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Ema:
    """Exponential moving average of parameters (sampling uses the averaged weights)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self, step: int):
        d = min(self.decay, (1 + step) / (10 + step))  # short memory early on
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach(), 1 - d)

    def state(self) -> dict:
        return {k: v.clone() for k, v in self.shadow.items()}

    def update_from(self, state: dict):
        self.shadow = {k: v.clone() for k, v in state.items()}

    @torch.no_grad()
    def copy_to_params(self):
        for k, p in self.params.items():
            p.copy_(self.shadow[k])


def _conditioning(pipe, captions: list[str], drop: torch.Tensor, size: int):
    """Text conditioning through ``pipe.encode_prompt`` (with gradients); dropped captions -> zeros."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, device=pipe.unet.device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    keep = (~drop).to(embeds.device, embeds.dtype)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=embeds.dtype,
                            device=embeds.device).expand(len(captions), -1)
    return embeds * keep[:, None, None], pooled * keep[:, None], time_ids


def unet_loss(pipe, scheduler, latents: torch.Tensor, captions: list[str], drop: torch.Tensor, size: int,
              generator: torch.Generator) -> torch.Tensor:
    """ε-prediction MSE on a batch of (scaled) latents (B, 4, h, w)."""
    # Random draws on the CPU generator (the same numbers on any device), then moved to the latents' device.
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
    embeds, pooled, time_ids = _conditioning(pipe, captions, drop, size)
    pred = pipe.unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=embeds, return_dict=False,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})[0]
    return F.mse_loss(pred, noise)


def _trainables(pipe) -> dict[str, torch.nn.Module]:
    return {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}


def train_unet(pipe, latent_mean: torch.Tensor, latent_std: torch.Tensor, captions: list[str],
               cfg: UnetTrainingConfig, image_size: int, store: CheckpointStore | None = None,
               on_step: Callable[[int, float], None] | None = None) -> PretrainResult:
    """Train the UNet and both text encoders in place on scaled latents (N, 4, h, w); EMA weights at the end.

    Runs on ``pipe.unet``'s device (move the pipeline to a GPU first: minutes instead of an hour); the
    latents stay on the CPU and each batch is moved, and every random draw comes from one CPU generator,
    so a resumed run draws the same batches on any device.
    """
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    modules = _trainables(pipe)
    generator = torch.Generator().manual_seed(cfg.seed)
    unet_params = list(pipe.unet.parameters())
    text_params = [p for n in ("text_encoder", "text_encoder_2") for p in modules[n].parameters()]
    for p in unet_params + text_params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([{"params": unet_params, "lr": cfg.learning_rate},
                                   {"params": text_params, "lr": cfg.text_learning_rate}], weight_decay=1e-4)
    ema = Ema({f"{m}.{k}": p for m, mod in modules.items() for k, p in mod.named_parameters()}, cfg.ema_decay)
    key = run_key("unet", dataclasses.asdict(cfg), latent_mean[:64], latent_mean.shape, captions[:64],
                  _config(pipe.unet), image_size)
    start, losses = _resume(store, key, modules, optimizer, generator, ema)
    for m in modules.values():
        m.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain UNet", mininterval=2)
    for step in bar:
        idx = torch.randint(0, latent_mean.shape[0], (cfg.batch_size,), generator=generator)
        latents = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        latents = latents.to(pipe.unet.device)
        drop = torch.rand(cfg.batch_size, generator=generator) < cfg.caption_dropout
        scale = _lr(step, cfg.steps, cfg.warmup_steps)
        optimizer.param_groups[0]["lr"] = cfg.learning_rate * scale
        optimizer.param_groups[1]["lr"] = cfg.text_learning_rate * scale
        loss = unet_loss(pipe, scheduler, latents, [captions[i] for i in idx.tolist()], drop, image_size, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet_params + text_params, 1.0)
        optimizer.step()
        ema.update(step)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step:
            on_step(step + 1, losses[-1])
        if store and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _checkpoint(store, key, step + 1, modules, optimizer, generator, losses, ema)
    ema.copy_to_params()
    for m in modules.values():
        m.eval()
        m.requires_grad_(False)
    if store:
        store.clear(key)
    return PretrainResult(losses, time.perf_counter() - t0, start)


def vae_weights(vae) -> dict:
    """The VAE's state dict plus its fitted ``scaling_factor`` (one safetensors file)."""
    weights = {k: v.contiguous() for k, v in vae.state_dict().items()}
    weights["scaling_factor"] = torch.tensor(vae.config.scaling_factor)
    return weights


def toy_pipeline(cfg, vae_weights: dict):
    """A miniature SDXL of ``cfg.model``'s spec (``PretrainConfig``) with the trained VAE (``vae_weights``) in it."""
    from ..diffusion.miniature import build_miniature_sdxl

    pipe = build_miniature_sdxl(cfg.model.miniature_spec())
    weights = dict(vae_weights)
    factor = float(weights.pop("scaling_factor"))
    pipe.vae.load_state_dict(weights)
    pipe.vae.register_to_config(scaling_factor=factor)
    return pipe
