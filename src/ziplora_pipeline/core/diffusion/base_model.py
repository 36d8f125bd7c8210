"""Load the base diffusion model: one code path for the miniature model and real SDXL.

Two families share every stage: ``sdxl`` (StableDiffusionXLPipeline, two text encoders, a
``text_time`` UNet) and ``sd`` (StableDiffusionPipeline: SD 1.x / 2.x). The family is read from
the model's ``model_index.json``; LoRA targets (the attention projections) are the same.

``BaseModelConfig.pretrained_model_name_or_path`` is a hub id or a local diffusers folder. When
``miniature_seed`` is set and the folder does not exist yet, the miniature SDXL is written there
first (once); it is then loaded with ``StableDiffusionXLPipeline.from_pretrained`` like any SDXL.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config_utils import ConfigError, require

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


FAMILIES = {"sdxl": "StableDiffusionXLPipeline", "sd": "StableDiffusionPipeline"}


class BaseModelError(ValueError):
    """The base model cannot be used: missing, not SDXL-shaped, or the device cannot run it."""


@dataclass(frozen=True)
class BaseModelConfig:
    """Where the base model comes from and how it runs."""

    pretrained_model_name_or_path: str = "data/02_intermediate/miniature_sdxl"
    miniature_seed: int | None = 0  # build a miniature model at the path if it is missing; null for real weights
    miniature_family: str = "sdxl"  # family of that miniature model: sdxl | sd (SD-1.5-shaped)
    revision: str | None = None
    variant: str | None = None  # "fp16" picks SDXL's half-precision weight files
    dtype: str = "auto"  # auto = fp32 on CPU, bf16 on GPUs that support it, else fp16
    device: str = "auto"  # auto = cuda > mps > cpu
    vae: str | None = None  # optional replacement VAE (e.g. madebyollin/sdxl-vae-fp16-fix)
    local_files_only: bool = False  # true keeps the hub offline (HF_HUB_OFFLINE=1 does the same)
    cpu_offload: bool = False  # generation on small GPUs: enable_model_cpu_offload (whole modules move per call)

    def __post_init__(self):
        require(self.dtype == "auto" or self.dtype in _DTYPES,
                f"base_model.dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}.")
        require(self.miniature_family in FAMILIES,
                f"base_model.miniature_family must be one of {sorted(FAMILIES)}, got {self.miniature_family!r}.")
        require(self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
                f"base_model.device must be auto, cpu, cuda[:N] or mps, got {self.device!r}.")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():  # one GPU per process under `accelerate launch`/torchrun
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BaseModelError(
            f"base_model.device is {name!r} but CUDA is not available here (torch {torch.__version__}). "
            "Set base_model.device: auto (or cpu), or install a CUDA build of torch."
        )
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Half precision only on accelerators; bf16 falls back to fp16 where unsupported."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    dtype = _DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        logger.warning("bf16 is not supported on this GPU; using fp16 instead (set base_model.dtype: fp16).")
        return torch.float16
    if dtype != torch.float32 and device.type == "cpu":
        logger.warning("Half precision on CPU is slow and lossy; using fp32 (set base_model.dtype: fp32).")
        return torch.float32
    return dtype


def family_of(index: dict, unet_config: dict | None) -> str:
    """'sdxl' or 'sd' from a model_index.json and UNet config; ``BaseModelError`` naming what was found."""
    cls = index.get("_class_name", "?")
    embed = (unet_config or {}).get("addition_embed_type")
    if cls == FAMILIES["sdxl"] and embed == "text_time":
        return "sdxl"
    if cls == FAMILIES["sd"] and embed is None:
        return "sd"
    raise BaseModelError(
        f"Unsupported base model: a {cls} (UNet addition_embed_type={embed!r}). Supported families: SDXL "
        "(StableDiffusionXLPipeline with a text_time UNet) and SD 1.x/2.x (StableDiffusionPipeline)."
    )


def check_sdxl_folder(folder: Path) -> str:
    """Return the family of the diffusers folder ``folder``; raise ``BaseModelError`` if unsupported."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise BaseModelError(
            f"{folder} is not a diffusers model folder (no model_index.json). Point "
            "base_model.pretrained_model_name_or_path at a folder saved with save_pretrained or a hub id."
        )
    unet_cfg = folder / "unet" / "config.json"
    unet = json.loads(unet_cfg.read_text()) if unet_cfg.is_file() else None
    try:
        return family_of(json.loads(index.read_text()), unet)
    except BaseModelError as err:
        raise BaseModelError(f"{folder}: {err}") from err


def ensure_base_model(cfg: BaseModelConfig) -> str:
    """Return the path/id to load, writing the miniature SDXL first when configured and missing."""
    source = cfg.pretrained_model_name_or_path
    path = Path(source)
    if cfg.miniature_seed is not None and not path.exists():
        from .miniature import MiniatureSpec, write_miniature_sdxl

        write_miniature_sdxl(path, MiniatureSpec(seed=cfg.miniature_seed, family=cfg.miniature_family))
    if path.exists():
        try:
            check_sdxl_folder(path)
        except BaseModelError as err:
            raise BaseModelError(f"{err} {_restore_hint(source)}") from err
    elif source.startswith((".", "/")) or source.count("/") != 1:
        raise BaseModelError(
            f"Base model {source!r} is neither an existing folder nor a hub id (owner/name). Fix "
            f"base_model.pretrained_model_name_or_path. {_restore_hint(source)}"
        )
    return source


def _restore_hint(source: str) -> str:
    """What to do when a local model folder is missing or broken (the toy-world default is committed)."""
    if Path(source).is_absolute() or source.count("/") == 1 and not Path(source).exists():
        return ""
    return (f"If it is the project's toy-world model, restore the committed copy (`git checkout -- {source}`) or "
            "rebuild it with `kedro run --pipelines pretrain`.")


def detect_family(source: str, cfg: BaseModelConfig) -> str:
    """Family of a local folder or hub id (for a hub id, only its config files are fetched)."""
    if Path(source).exists():
        return check_sdxl_folder(Path(source))
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    index = DiffusionPipeline.load_config(source, revision=cfg.revision, local_files_only=cfg.local_files_only)
    unet = UNet2DConditionModel.load_config(source, subfolder="unet", revision=cfg.revision,
                                            local_files_only=cfg.local_files_only)
    return family_of(index, unet)


def base_unet_config(cfg: BaseModelConfig):
    """The base model's UNet config (attribute access, like ``unet.config``) without loading any weights."""
    from diffusers import UNet2DConditionModel
    from diffusers.configuration_utils import FrozenDict

    return FrozenDict(UNet2DConditionModel.load_config(ensure_base_model(cfg), subfolder="unet", revision=cfg.revision,
                                                       local_files_only=cfg.local_files_only))


def model_family(pipe) -> str:
    """'sdxl' for pipelines with a second text encoder, else 'sd'."""
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"


def load_base_pipeline(cfg: BaseModelConfig, for_inference: bool = False):
    """Load the base pipeline (SDXL or SD 1.x/2.x) on the configured device and dtype; all weights frozen.

    Returns:
        A ``StableDiffusionXLPipeline`` or ``StableDiffusionPipeline`` with ``requires_grad=False``.
        With ``for_inference`` and ``cfg.cpu_offload`` on CUDA, modules stay on the CPU and move to
        the GPU one at a time (``enable_model_cpu_offload``): peak memory ~ the UNet alone.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading bars per component drown the per-stage log lines; training loops keep theirs.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    source = ensure_base_model(cfg)
    family = detect_family(source, cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    extra = {}
    if cfg.vae:
        extra["vae"] = AutoencoderKL.from_pretrained(cfg.vae, dtype=dtype, local_files_only=cfg.local_files_only)
    if family == "sd":  # no safety checker: we generate for evaluation, and it needs another model
        extra.update(safety_checker=None, requires_safety_checker=False)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    try:
        pipe = cls.from_pretrained(
            source, dtype=dtype, revision=cfg.revision, variant=cfg.variant,
            local_files_only=cfg.local_files_only, **extra,
        )
    except Exception as err:  # noqa: BLE001 - OS, format, safetensors header errors alike: name the folder
        hint = _restore_hint(source) if Path(source).exists() else ""
        raise BaseModelError(f"Could not load {family} base model {source!r}: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''} {hint}".rstrip()) from err
    if for_inference and cfg.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    logger.info("Loaded %s base model %s on %s (%s), UNet %.1fM parameters", family, source, device, dtype,
                sum(p.numel() for p in pipe.unet.parameters()) / 1e6)
    return pipe


__all__ = ["BaseModelConfig", "BaseModelError", "ConfigError", "FAMILIES", "detect_family", "ensure_base_model",
           "load_base_pipeline", "model_family", "resolve_device", "resolve_dtype"]
