"""SDXL conditioning and the diffusion objective, as small testable functions.

Shapes below use N images, B batch, C=4 latent channels, h=w=resolution/8, L=77 tokens,
D = cross_attention_dim (2048 on SDXL), P = pooled projection dim (1280 on SDXL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .images import images_to_tensor


@dataclass
class ConceptInputs:
    """Everything the UNet needs about one concept's reference images, encoded once.

    Caching these (instead of running the VAE and both text encoders every step) is what
    makes a LoRA step cost one UNet forward/backward; see benchmarks/train_step.py.
    """

    latent_mean: torch.Tensor  # (N, C, h, w), already multiplied by the VAE scaling factor
    latent_std: torch.Tensor  # (N, C, h, w)
    prompt_embeds: torch.Tensor  # (1, L, D)
    pooled_prompt_embeds: torch.Tensor  # (1, P)
    time_ids: torch.Tensor  # (1, 6)

    def sample_latents(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw VAE latents z ~ N(mean, std) for images ``idx`` -> (B, C, h, w)."""
        mean, std = self.latent_mean[idx], self.latent_std[idx]
        eps = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device, mean.dtype)
        return mean + std * eps


@torch.no_grad()
def encode_prompt(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both SDXL text encoders -> (prompt_embeds (1, L, D), pooled (1, P))."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=prompt, device=pipe.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return embeds, pooled


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
    vae_in = vae.to(dtype) if dtype != vae.dtype else vae
    dist = vae_in.encode(pixels.to(vae.device, dtype)).latent_dist
    sf = vae.config.scaling_factor
    return dist.mean * sf, dist.std * sf


def encode_concept(pipe, images, prompt: str) -> ConceptInputs:
    """Encode a concept's images (list of PIL, all the same size) and prompt once."""
    pixels = images_to_tensor(images)  # (N, 3, H, W)
    mean, std = encode_latent_distribution(pipe.vae, pixels)
    embeds, pooled = encode_prompt(pipe, prompt)
    h, w = pixels.shape[-2:]
    dtype = pipe.unet.dtype
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


def unet_predict(unet, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: ConceptInputs) -> torch.Tensor:
    """One SDXL UNet call on a batch of one concept: (B, C, h, w) -> (B, C, h, w)."""
    b = noisy.shape[0]
    cond = {"text_embeds": inputs.pooled_prompt_embeds.expand(b, -1), "time_ids": inputs.time_ids.expand(b, -1)}
    return unet(noisy, timesteps, encoder_hidden_states=inputs.prompt_embeds.expand(b, -1, -1),
                added_cond_kwargs=cond, return_dict=False)[0]


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
