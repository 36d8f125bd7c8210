"""Typed configuration of the ``pretrain`` stage (``params:pretrain``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config_utils import require
from ..diffusion.miniature import MiniatureSpec
from .data import WORDS, PoolConfig
from .judge_training import JudgeTrainingConfig
from .pretrain import UnetTrainingConfig, VaeTrainingConfig


@dataclass(frozen=True)
class ToyModelSpec:
    """Sizes of the toy-world SDXL (the committed default base model): SDXL's architecture, miniature."""

    seed: int = 0
    text_hidden: int = 32
    text_layers: int = 3  # SDXL conditions on the penultimate layer, so 3 leaves 2 in use
    projection_dim: int = 32
    # SDXL's layout in miniature: three levels, cross-attention in the lower two (SDXL: 320, 640, 1280).
    unet_channels: tuple[int, ...] = (16, 32, 64)
    time_embed_dim: int = 8
    # 3 levels: 4x downsampling, 64 px -> 16x16x4 latents (ours; SDXL's VAE is 8x). At 8x (8x8x4 latents)
    # a VAE trained for 750 steps returned every object in brown-grey (PSNR 17 dB): a 64 px object spans
    # only ~5 latent cells, too few for its colour and shape, and colour is what identity and style are.
    vae_channels: tuple[int, ...] = (16, 32, 64)
    sample_size: int = 64

    def miniature_spec(self) -> MiniatureSpec:
        return MiniatureSpec(seed=self.seed, family="sdxl", text_hidden=self.text_hidden, text_layers=self.text_layers,
                             projection_dim=self.projection_dim, unet_channels=tuple(self.unet_channels),
                             time_embed_dim=self.time_embed_dim, vae_channels=tuple(self.vae_channels),
                             sample_size=self.sample_size, words=WORDS)


@dataclass(frozen=True)
class CheckConfig:
    """The base model's judged check on held-out class × colour × style prompts."""

    seeds_per_prompt: int = 9  # 12 held-out prompts × 9 = 108 samples
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    reconstruction_samples: int = 600  # judge accuracy on VAE reconstructions: the ceiling of every later score


@dataclass(frozen=True)
class PretrainConfig:
    model: ToyModelSpec = field(default_factory=ToyModelSpec)
    pool: PoolConfig = field(default_factory=PoolConfig)
    vae: VaeTrainingConfig = field(default_factory=VaeTrainingConfig)
    unet: UnetTrainingConfig = field(default_factory=UnetTrainingConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    judges: JudgeTrainingConfig = field(default_factory=JudgeTrainingConfig)
    device: str = "auto"  # where the pool is encoded and the UNet trains: auto = cuda when present, else cpu

    def __post_init__(self):
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                f"pretrain.device must be auto, cpu or cuda[:N], got {self.device!r}.")
        require(self.pool.image_size == self.model.sample_size,
                f"pretrain.pool.image_size ({self.pool.image_size}) must equal pretrain.model.sample_size "
                f"({self.model.sample_size}).")
