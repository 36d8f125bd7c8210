"""Judged checks of the toy world's models: what the base model draws, what each LoRA alone adds.

- base model: prompts of held-out class × colour × style combinations (``data.heldout_prompts``);
  the attribute judge's class and style accuracy (chance: 1/6 each);
- subject LoRA: identity scores of "a sks robot" samples against the base model's "a robot"
  samples (AUROC: can the identity judge tell them apart?);
- style LoRA: "a <class> in zwx style" for classes its one training image never showed; how often
  the style judge names the reference style.
All prompts and seeds here are disjoint from training (seeds from 10_000 on).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


@torch.no_grad()
def sample(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 4.0, size: int = 64,
           batch_size: int = 48) -> list:
    """One image per (prompt, seed) pair, each from its own CPU generator (PIL images)."""
    out = []
    for s in range(0, len(prompts), batch_size):
        gens = [torch.Generator("cpu").manual_seed(seed) for seed in seeds[s:s + batch_size]]
        out += pipe(prompt=prompts[s:s + batch_size], generator=gens, num_inference_steps=steps,
                    guidance_scale=guidance, height=size, width=size, output_type="pil").images
    return out


def auroc(positive: list[float], negative: list[float]) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney U / (n_pos * n_neg))."""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def attribute_accuracy(judge, images: list, answers: list[dict]) -> dict:
    """Accuracy of the attribute judge's class and style calls against ``answers`` ({"class", "style"})."""
    from .render import CLASSES, STYLES

    probs = judge.predict(images)
    cls = [CLASSES[i] for i in probs["class"].argmax(-1).tolist()]
    sty = [STYLES[i] for i in probs["style"].argmax(-1).tolist()]
    return {"class_accuracy": float(np.mean([c == a["class"] for c, a in zip(cls, answers)])),
            "style_accuracy": float(np.mean([s == a["style"] for s, a in zip(sty, answers)])),
            "n": len(images), "chance_class": 1 / len(CLASSES), "chance_style": 1 / len(STYLES)}


def check_base_model(pipe, judge, prompts: list[dict], seeds_per_prompt: int, steps: int, guidance: float,
                     size: int) -> tuple[dict, list]:
    """Held-out class × colour × style prompts, ``seeds_per_prompt`` each: the judge's accuracy, and the images."""
    jobs = [(p, 10_000 + k) for p in prompts for k in range(seeds_per_prompt)]
    images = sample(pipe, [p["prompt"] for p, _ in jobs], [s for _, s in jobs], steps, guidance, size)
    result = attribute_accuracy(judge, images, [p for p, _ in jobs])
    logger.info("Base model on %d held-out class×colour×style samples: class accuracy %.3f, style accuracy %.3f "
                "(chance %.3f / %.3f)", result["n"], result["class_accuracy"], result["style_accuracy"],
                result["chance_class"], result["chance_style"])
    return result, images


def subject_separation(identity, lora_images: list, base_images: list, refs: list) -> dict:
    """AUROC of identity scores: subject-LoRA samples ("a sks robot") vs base samples ("a robot")."""
    pos = identity.subject_scores(lora_images, refs).tolist()
    neg = identity.subject_scores(base_images, refs).tolist()
    return {"auroc": auroc(pos, neg), "lora_mean": float(np.mean(pos)), "base_mean": float(np.mean(neg)),
            "n": len(pos)}


def style_transfer_rate(judge, images: list, style: str, objects: list[str] | None = None) -> dict:
    """How often the style judge names ``style`` for images prompted "a <class> in zwx style".

    With ``objects`` (the class each image was prompted with) also how often the judge names that class
    (``content_rate``) and how often the class it names most (``leaked_class``, e.g. the style image's
    house) instead: a style LoRA that copies its one image's content draws that for every prompt."""
    from .render import CLASSES, STYLES

    probs = judge.predict(images)
    called = [STYLES[i] for i in probs["style"].argmax(-1).tolist()]
    counts = {s: called.count(s) for s in STYLES if called.count(s)}
    out = {"rate": float(np.mean([c == style for c in called])), "n": len(images), "called": counts}
    if objects is not None:
        drawn = [CLASSES[i] for i in probs["class"].argmax(-1).tolist()]
        wrong = [d for d, o in zip(drawn, objects) if d != o]
        out["content_rate"] = float(np.mean([d == o for d, o in zip(drawn, objects)]))
        if wrong:
            top = max(set(wrong), key=wrong.count)
            out["leaked_class"], out["leaked_rate"] = top, wrong.count(top) / len(images)
    return out


def reconstruction_check(vae, judge, n: int, seed: int, size: int) -> dict:
    """The attribute judge on ``n`` fresh renders and on their VAE reconstructions (posterior mean decoded):
    the ceiling of every generated image's judged score. Also the reconstruction PSNR."""
    import random

    from PIL import Image

    from .pretrain import reconstruct
    from .render import random_scene, render

    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    clean = [render(s, size) for s in scenes]
    answers = [{"class": s.instance.cls, "style": s.style} for s in scenes]
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in clean])  # (n, 3, H, W) uint8
    rec = reconstruct(vae, pixels)
    mse = ((pixels.float() - rec.float()) / 127.5).pow(2).mean().item()  # on the [-1, 1] scale
    recon = [Image.fromarray(r.permute(1, 2, 0).numpy()) for r in rec]
    return {"clean": attribute_accuracy(judge, clean, answers), "reconstructed": attribute_accuracy(judge, recon, answers),
            "mse_pm1": mse, "psnr_db": float(10 * np.log10(4 / mse))}
