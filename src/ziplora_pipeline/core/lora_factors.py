"""Any SDXL UNet LoRA file -> per-layer low-rank factors ``{module path: (A, B, scale)}``.

ZipLoRA needs A, B and the scale of every adapted linear layer separately (it scales A's
columns by the mergers, Eq. 2), which no library exposes for a file that is not loaded
into a model; so the parsing is ours, while kohya/SGM key conversion is delegated to
diffusers' ``lora_state_dict``. Inputs: diffusers/peft format (``unet.<path>.lora_A.weight``,
alpha from the file's metadata), the older diffusers format (``...processor.to_q_lora.down``),
and kohya format (``lora_unet_..._lora_down/up/alpha``), either naming scheme.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from .lora_io import LoraFile, LoraFormatError

logger = logging.getLogger(__name__)


@dataclass
class LoraFactors:
    """One adapted linear layer: ΔW = scale · B @ A, with A (r, in_features), B (out_features, r)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """Dense ΔW (out, in) — only for analysis and tests, never in the merge loop."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)  # at least fp32; fp64 stays fp64
        return self.scale * (self.B.to(dtype) @ self.A.to(dtype))


_TEXT_ENCODER = ("text_encoder", "lora_te", "te_", "te1", "te2")
_PEFT = re.compile(r"^unet\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
_OLD = re.compile(r"^unet\.(.+?)(?:\.processor\.(to_[qkv]|to_out)_lora|\.lora)\.(down|up)\.weight$")


def _peft_scales(lora: LoraFile, ranks: dict[str, int]) -> dict[str, float]:
    """alpha / r per module from the stored peft config (alpha = rank when there is none)."""
    cfg = lora.adapter_config() or {}
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise LoraFormatError("rsLoRA/DoRA adapters are not supported by the ZipLoRA merge (plain LoRA only).")
    scales = {}
    for path, r in ranks.items():
        alpha = cfg.get("lora_alpha", r)
        for pattern, value in (cfg.get("alpha_pattern") or {}).items():
            if path == pattern or path.endswith(f".{pattern}"):
                alpha = value
        scales[path] = alpha / r
    return scales


def _from_peft(lora: LoraFile) -> dict[str, LoraFactors]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in lora.state_dict.items():
        if m := _PEFT.match(key):
            parts.setdefault(m.group(1), {})[m.group(2)] = t
    ranks = {p: d["A"].shape[0] for p, d in parts.items() if "A" in d}
    scales = _peft_scales(lora, ranks)
    return {p: LoraFactors(d["A"], d["B"], scales[p]) for p, d in parts.items() if {"A", "B"} <= d.keys()}


def _from_old_diffusers(state: dict[str, torch.Tensor], alphas: dict[str, float] | None) -> dict[str, LoraFactors]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    alpha_of: dict[str, float] = {}
    for key, t in state.items():
        m = _OLD.match(key)
        if not m:
            continue
        path = m.group(1) if m.group(2) is None else f"{m.group(1)}.{'to_out.0' if m.group(2) == 'to_out' else m.group(2)}"
        parts.setdefault(path, {})[m.group(3)] = t
        if alphas and m.group(3) == "down" and f"{key}.alpha" in alphas:
            alpha_of[path] = float(alphas[f"{key}.alpha"])
    return {p: LoraFactors(d["down"], d["up"], alpha_of.get(p, d["down"].shape[0]) / d["down"].shape[0])
            for p, d in parts.items() if {"down", "up"} <= d.keys()}


_SGM = ("input_blocks", "middle_block", "output_blocks")


def unet_lora_factors(lora: LoraFile, name: str = "LoRA", unet_config=None) -> dict[str, LoraFactors]:
    """Parse a LoRA file's UNet part; text-encoder parts are dropped with a warning.

    Args:
        unet_config: the target UNet's config (``unet.config``). Kohya files with SGM block names
            (``lora_unet_input_blocks_4_1_...``, as kohya's SDXL scripts write) map to diffusers module
            paths only through its ``layers_per_block``; without it such a file is refused.

    Raises:
        LoraFormatError: the file holds no LoRA tensors (names what it holds), non-finite values, or SGM
            names and no ``unet_config``.
    """
    keys = list(lora.state_dict)
    dropped = [k for k in keys if k.startswith(_TEXT_ENCODER)]
    if dropped:
        logger.warning("%s: ignoring %d text-encoder LoRA tensors (e.g. %s); only the UNet part is merged.",
                       name, len(dropped), dropped[0])
    if any(_PEFT.match(k) for k in keys):
        factors = _from_peft(lora)
    else:
        from diffusers import StableDiffusionXLPipeline

        sgm = [k for k in keys if any(p in k for p in _SGM) and not k.startswith(_TEXT_ENCODER)]
        if sgm and unet_config is None:
            raise LoraFormatError(f"{name} uses SGM block names (e.g. {sgm[0]}); they map to UNet layers only with "
                                  "the UNet's config: call unet_lora_factors(lora, name, unet_config=unet.config).")
        try:  # kohya / SGM / old diffusers names: let diffusers normalise them (SGM blocks need the UNet config)
            state, alphas = StableDiffusionXLPipeline.lora_state_dict(dict(lora.state_dict), unet_config=unet_config)
        except Exception as err:  # noqa: BLE001 - diffusers raises assorted errors on foreign files
            raise LoraFormatError(f"{name} is not a LoRA diffusers can read ({err}); keys look like {keys[:3]}.") from err
        factors = _from_old_diffusers(state, alphas)
        if not factors and any(_PEFT.match(k) for k in state):
            factors = _from_peft(LoraFile(state, lora.metadata))
    if not factors:
        raise LoraFormatError(
            f"{name} holds no UNet LoRA weights (lora_A/lora_B, lora.down/up or kohya lora_down/up pairs); "
            f"found {len(keys)} tensors like {keys[:3]}. Is it a full checkpoint or a text-encoder-only LoRA?"
        )
    for path, f in factors.items():
        if not (torch.isfinite(f.A).all() and torch.isfinite(f.B).all()):
            raise LoraFormatError(f"{name}: layer {path} has NaN/inf weights; the LoRA is corrupt (retrain it).")
    return factors


def check_against_unet(unet, loras: dict[str, dict[str, LoraFactors]]) -> dict[str, torch.nn.Linear]:
    """Check every adapted layer exists in ``unet`` with matching shapes; return {path: linear}.

    Raises:
        LoraFormatError: a LoRA adapts no layer of this UNet, or a layer's shape differs (a LoRA
            trained on another base model): the first mismatching layer is named.
    """
    modules = dict(unet.named_modules())
    targets = {}
    for name, factors in loras.items():
        known = [p for p in factors if p in modules]
        if not known:
            raise LoraFormatError(
                f"The {name} LoRA adapts no layer of this UNet (e.g. {next(iter(factors))}); it was trained "
                "for another model family. Use a LoRA trained on this base model."
            )
        for path, f in sorted(factors.items()):
            layer = modules.get(path)
            if layer is None:
                raise LoraFormatError(f"The {name} LoRA adapts {path}, which this UNet does not have: it was "
                                      "trained on another base model (e.g. SD 1.5 vs SDXL). Use LoRAs trained on this base.")
            if isinstance(layer, torch.nn.Conv2d):  # LoCon: never dropped silently
                k = "×".join(map(str, layer.kernel_size))
                raise LoraFormatError(
                    f"The {name} LoRA adapts {path}, a {k} convolution (a LoCon/LyCORIS layer). ZipLoRA's per-column "
                    "mergers are implemented for Linear layers only (attention, feed-forward, proj_in/out); merging "
                    "convolutions is not supported yet. Use a LoRA without convolution layers, or remove this "
                    "layer's keys from the file to merge the rest.")
            if not isinstance(layer, torch.nn.Linear):
                raise LoraFormatError(f"The {name} LoRA adapts {path}, a {type(layer).__name__}, not a Linear layer "
                                      "of this UNet (trained on another base model?).")
            want = (layer.out_features, layer.in_features)
            if (f.B.shape[0], f.A.shape[1]) != want or f.A.shape[0] != f.B.shape[1]:
                raise LoraFormatError(
                    f"The {name} LoRA does not fit this base model: layer {path} is {want[0]}x{want[1]} but "
                    f"the LoRA's B@A is {f.B.shape[0]}x{f.A.shape[1]}. Use LoRAs trained on the same base model."
                )
            targets[path] = layer
    return targets
