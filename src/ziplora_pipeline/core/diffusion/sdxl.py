"""SDXL conditioning and the diffusion objective, as small testable functions.

Shapes below use N images, B batch, C=4 latent channels, h=w=resolution/8, L=77 tokens,
D = cross_attention_dim (2048 on SDXL, 768 on SD 1.5), P = pooled projection dim (1280 on SDXL).
SD 1.x/2.x pipelines have one text encoder and no micro-conditioning: their ``ConceptInputs``
carry ``pooled_prompt_embeds = time_ids = None`` and every UNet call below then omits
``added_cond_kwargs``; everything else is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..images import images_to_tensor


@dataclass
class ConceptInputs:
    """Everything the UNet needs about one concept's reference images, encoded once.

    Caching these (instead of running the VAE and both text encoders every step) is what
    makes a LoRA step cost one UNet forward/backward; see benchmarks/train_step.py.
    """

    latent_mean: torch.Tensor  # (N, C, h, w), already multiplied by the VAE scaling factor
    latent_std: torch.Tensor  # (N, C, h, w)
    prompt_embeds: torch.Tensor  # (1, L, D)
    pooled_prompt_embeds: torch.Tensor | None  # (1, P); None on SD 1.x/2.x
    time_ids: torch.Tensor | None  # (1, 6); None on SD 1.x/2.x

    def sample_latents(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw VAE latents z ~ N(mean, std) for images ``idx`` -> (B, C, h, w)."""
        mean, std = self.latent_mean[idx], self.latent_std[idx]
        eps = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device, mean.dtype)
        return mean + std * eps


@torch.no_grad()
def encode_prompt(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both SDXL text encoders -> (prompt_embeds (1, L, D), pooled (1, P)); SD 1.x: (embeds, None)."""
    out = pipe.encode_prompt(prompt=prompt, device=pipe.unet.device, num_images_per_prompt=1,
                             do_classifier_free_guidance=False)
    if getattr(pipe, "text_encoder_2", None) is None:  # StableDiffusionPipeline: (embeds, negative)
        return out[0], None
    return out[0], out[2]


def time_ids(size: tuple[int, int], crop: tuple[int, int] = (0, 0), target: tuple[int, int] | None = None,
             device=None, dtype=torch.float32) -> torch.Tensor:
    """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w) -> (1, 6)."""
    target = target or size
    return torch.tensor([[*size, *crop, *target]], device=device, dtype=dtype)


@torch.no_grad()
def encode_latent_distribution(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior of ``pixels`` (N, 3, H, W) in [-1, 1] -> scaled (mean, std), each (N, C, h, w).

    The SDXL VAE overflows in fp16, so it runs in fp32 when its config asks to (``force_upcast``).
    """
    dtype = torch.float32 if getattr(vae.config, "force_upcast", False) else vae.dtype
    original = vae.dtype
    vae.to(dtype)
    try:
        dist = vae.encode(pixels.to(vae.device, dtype)).latent_dist
    finally:
        vae.to(original)  # as the pipeline's own upcast does: no lasting change to the caller's VAE
    sf = vae.config.scaling_factor
    return dist.mean * sf, dist.std * sf


def encode_concept(pipe, images, prompt: str) -> ConceptInputs:
    """Encode a concept's images (list of PIL, all the same size) and prompt once."""
    pixels = images_to_tensor(images)  # (N, 3, H, W)
    mean, std = encode_latent_distribution(pipe.vae, pixels)
    embeds, pooled = encode_prompt(pipe, prompt)
    h, w = pixels.shape[-2:]
    dtype = pipe.unet.dtype
    if pooled is None:
        return ConceptInputs(mean.to(dtype), std.to(dtype), embeds.to(dtype), None, None)
    return ConceptInputs(mean.to(dtype), std.to(dtype), embeds.to(dtype), pooled.to(dtype),
                         time_ids((h, w), device=pipe.unet.device, dtype=dtype))


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict, honouring the scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Unsupported prediction_type {kind!r} in the scheduler config (epsilon or v_prediction).")


def unet_call(unet, noisy: torch.Tensor, timesteps: torch.Tensor, embeds: torch.Tensor,
              pooled: torch.Tensor | None = None, tids: torch.Tensor | None = None) -> torch.Tensor:
    """UNet noise prediction (B, C, h, w); SDXL's ``added_cond_kwargs`` only when ``pooled`` is given."""
    extra = {} if pooled is None else {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": tids}}
    return unet(noisy, timesteps, encoder_hidden_states=embeds, return_dict=False, **extra)[0]


def batch_conditioning(inputs: ConceptInputs, b: int) -> tuple:
    """(embeds (b, L, D), pooled (b, P) | None, time ids (b, 6) | None) for a batch of one concept."""
    if inputs.pooled_prompt_embeds is None:
        return inputs.prompt_embeds.expand(b, -1, -1), None, None
    return (inputs.prompt_embeds.expand(b, -1, -1), inputs.pooled_prompt_embeds.expand(b, -1),
            inputs.time_ids.expand(b, -1))


def unet_predict(unet, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: ConceptInputs) -> torch.Tensor:
    """One UNet call on a batch of one concept: (B, C, h, w) -> (B, C, h, w)."""
    return unet_call(unet, noisy, timesteps, *batch_conditioning(inputs, noisy.shape[0]))


@torch.no_grad()
def predict_in_chunks(unet, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: ConceptInputs,
                      batch_size: int) -> torch.Tensor:
    """No-grad predictions for many samples of one concept, ``batch_size`` at a time -> (P, C, h, w)."""
    return torch.cat([unet_predict(unet, noisy[s:s + batch_size], timesteps[s:s + batch_size], inputs)
                      for s in range(0, noisy.shape[0], batch_size)])


def training_scheduler(pipe):
    """The DDPM noise schedule matching the pipeline's inference scheduler (as diffusers' scripts do)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def noisy_batch(scheduler, latents: torch.Tensor, generator: torch.Generator,
                t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward diffusion q(x_t | x_0): returns (noisy latents, noise, timesteps (B,)).

    Randomness comes from a CPU ``generator`` so a resumed run draws the same numbers.
    """
    lo, hi = t_range or (0, scheduler.config.num_train_timesteps)
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    t = torch.randint(lo, hi, (b,), generator=generator).to(latents.device)
    return scheduler.add_noise(latents, noise, t), noise, t
