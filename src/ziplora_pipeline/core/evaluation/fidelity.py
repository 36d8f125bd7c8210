"""Output fidelity: how much of each LoRA's effect a method keeps, in the quantity ZipLoRA optimises.

For concept c (subject or style) with fixed inputs x_c (noisy latents of its reference images at
sampled timesteps, its prompt p_c), as in paper Eq. 3:

    F_c(method) = 1 − ‖ε_method(x_c, p_c) − ε_{L_c}(x_c, p_c)‖ / ‖ε_base(x_c, p_c) − ε_{L_c}(x_c, p_c)‖

1 = the method predicts exactly what the concept's own LoRA predicts; 0 = no closer than the base
model; negative = further away than the base. Nothing is clipped. The norms are taken over the
whole sample set at once (a pooled ratio, i.e. of root-mean-square errors), not as a mean of
per-sample ratios: samples where the LoRA barely moves the output (large t) would dominate the
latter. Needs no image encoder, so it is meaningful on the miniature model too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.sdxl import ConceptInputs, encode_concept, noisy_batch, predict_in_chunks, training_scheduler
from ..merging.method import MergeMethod, MethodAssets, lora_applied

CONCEPTS = ("subject", "style")


@dataclass
class Probe:
    """Fixed inputs of one concept: noisy latents (P, C, h, w), timesteps (P,), and its encoded prompt."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    inputs: ConceptInputs


def output_fidelity(pred: torch.Tensor, lora_pred: torch.Tensor, base_pred: torch.Tensor) -> float:
    """F = 1 − ‖pred − lora_pred‖ / ‖base_pred − lora_pred‖ (pooled over all samples)."""
    effect = (base_pred.double() - lora_pred.double()).norm()
    if effect == 0:
        raise ValueError("The LoRA does not change the base model's output on these inputs (‖ε_base − ε_L‖ = 0): "
                         "output fidelity is undefined. Was the LoRA trained (lora.steps > 0)?")
    return 1.0 - ((pred.double() - lora_pred.double()).norm() / effect).item()


def make_probe(pipe, images: list, prompt: str, samples: int, seed: int,
               timestep_range: tuple[int, int] = (0, 1000)) -> Probe:
    """Draw ``samples`` (image, noise, t) triples from a fixed seed: the same for every method."""
    g = torch.Generator().manual_seed(seed)
    inputs = encode_concept(pipe, images, prompt)
    idx = torch.randint(0, inputs.latent_mean.shape[0], (samples,), generator=g)
    noisy, _, t = noisy_batch(training_scheduler(pipe), inputs.sample_latents(idx, g), g, timestep_range)
    return Probe(noisy, t, inputs)


@torch.no_grad()
def predict(unet, probe: Probe, batch_size: int = 8) -> torch.Tensor:
    """The UNet's noise predictions on the probe -> (P, C, h, w), in float32 on the CPU."""
    return predict_in_chunks(unet, probe.noisy, probe.timesteps, probe.inputs, batch_size).float().cpu()


def fidelity_table(pipe, specs: dict[str, MergeMethod], assets: MethodAssets, probes: dict[str, Probe],
                   batch_size: int = 8) -> dict[str, dict[str, float]]:
    """{method: {"subject_fidelity": F_c, "style_fidelity": F_s}} for every method in ``specs``.

    The references L_c, L_s are ``assets.subject`` and ``assets.style``; ``probes`` holds the
    fixed subject and style inputs, the same for every method.
    """
    base = {c: predict(pipe.unet, p, batch_size) for c, p in probes.items()}
    refs = {}
    for c, lora in (("subject", assets.subject), ("style", assets.style)):
        with lora_applied(pipe, f"{c}_reference", lora):
            refs[c] = predict(pipe.unet, probes[c], batch_size)
    table = {}
    for name, spec in specs.items():
        with spec.applied(pipe, assets):
            preds = {c: predict(pipe.unet, p, batch_size) for c, p in probes.items()}
        table[name] = {f"{c}_fidelity": output_fidelity(preds[c], refs[c], base[c]) for c in CONCEPTS}
    return table
