"""Images for every method × prompt × seed, on one protocol (ZipLoRA §5 prompts, fixed seeds).

Prompts come in the paper's four groups: the subject alone ("a sks robot"), the style alone
("a [object] in zwx style"), the merge ("a sks robot in zwx style") and recontextualisations
("a sks robot riding a bicycle in zwx style"). Each image's initial noise comes from its own
CPU generator seeded with the image's seed, so every method starts from the same noise and a
rerun is bit-identical on the same machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..config_utils import require

logger = logging.getLogger(__name__)

GROUPS = ("subject", "style", "merge", "recontext")  # the paper's prompt groups


@dataclass(frozen=True)
class PromptGroups:
    """Prompts per group; the defaults use data_prep's tokens (sks robot, zwx style)."""

    subject: tuple[str, ...] = ("a sks robot",)
    style: tuple[str, ...] = ("a cat in zwx style",)  # paper: "a [object] in [S] style"
    merge: tuple[str, ...] = ("a sks robot in zwx style",)
    recontext: tuple[str, ...] = ("a sks robot riding a bicycle in zwx style", "a sks robot wearing a hat in zwx style")

    def __post_init__(self):
        for group in GROUPS:
            prompts = getattr(self, group)
            require(isinstance(prompts, tuple) and all(isinstance(p, str) and p.strip() for p in prompts),
                    f"generation.prompts.{group} must be a list of non-empty prompts, got {prompts!r}.")
            require(len(prompts) > 0, f"generation.prompts.{group} is empty: give at least one prompt. The comparison "
                                      f"needs all four groups {list(GROUPS)} (ZipLoRA §5).")


@dataclass(frozen=True)
class PromptItem:
    group: str
    index: int
    prompt: str

    @property
    def key(self) -> str:  # e.g. "recontext1"
        return f"{self.group}{self.index}"


@dataclass(frozen=True)
class GenerationConfig:
    """Generation stage (the methods are ``merge.methods``). Defaults keep the miniature job small; conf/sdxl has the paper's (50 steps, 1024 px)."""

    prompts: PromptGroups = field(default_factory=PromptGroups)
    seeds: tuple[int, ...] = (0, 1)  # the same seeds for every method
    num_inference_steps: int = 4  # paper: 50
    guidance_scale: float = 5.0  # SDXL's default classifier-free guidance
    resolution: int = 64  # height = width in pixels (SDXL: 1024)
    batch_size: int = 8  # images per pipeline call
    sheet_cell: int = 96  # contact-sheet thumbnail size in pixels

    def __post_init__(self):
        require(len(self.seeds) > 0, "generation.seeds must list at least one seed.")
        require(self.num_inference_steps > 0, "generation.num_inference_steps must be > 0.")
        require(self.resolution >= 8 and self.resolution % 8 == 0, "generation.resolution must be a multiple of 8.")
        require(self.batch_size > 0 and self.sheet_cell >= 16, "generation.batch_size > 0 and sheet_cell >= 16.")

    def prompt_items(self) -> list[PromptItem]:
        return [PromptItem(g, i, p) for g in GROUPS for i, p in enumerate(getattr(self.prompts, g))]


def prompt_token_warnings(items: list[PromptItem], subject_token: str, style_token: str) -> list[str]:
    """Prompts that do not mention the token their group needs (e.g. after renaming the subject)."""
    needs = {"subject": (subject_token,), "style": (style_token,), "merge": (subject_token, style_token),
             "recontext": (subject_token, style_token)}
    return [f"generation prompt {it.key} {it.prompt!r} does not contain the token {tok!r} its group needs"
            for it in items for tok in needs[it.group] if tok not in it.prompt.split()]


def image_name(method: str, item: PromptItem, seed: int) -> str:
    """File stem of one image: ``<method>__<group><i>__seed<s>``."""
    return f"{method}__{item.key}__seed{seed}"


@torch.no_grad()
def generate(pipe, items: list[PromptItem], cfg: GenerationConfig) -> list[tuple[PromptItem, int, Image.Image]]:
    """Every prompt × seed with whatever is applied to ``pipe`` now; batches are the same for every method."""
    jobs = [(item, seed) for item in items for seed in cfg.seeds]
    out = []
    for s in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[s:s + cfg.batch_size]
        generators = [torch.Generator("cpu").manual_seed(seed) for _, seed in chunk]  # per-image noise
        images = pipe(prompt=[item.prompt for item, _ in chunk], generator=generators,
                      num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                      height=cfg.resolution, width=cfg.resolution, output_type="pil").images
        out.extend((item, seed, img) for (item, seed), img in zip(chunk, images))
    return out
