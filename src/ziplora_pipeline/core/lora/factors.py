"""Any SDXL LoRA file -> per-layer low-rank factors ``{module path: (A, B, scale)}``.

ZipLoRA needs A, B and the scale of every adapted linear layer separately (it scales A's
columns by the mergers, Eq. 2), which no library exposes for a file that is not loaded
into a model; so the parsing is ours, while kohya/SGM key conversion is delegated to
diffusers' ``lora_state_dict``. Inputs: diffusers/peft format (``unet.<path>.lora_A.weight``,
alpha from the file's metadata), the older diffusers format (``...processor.to_q_lora.down``),
and kohya format (``lora_unet_..._lora_down/up/alpha``), either naming scheme. 1×1 convolutions
(kohya's ``conv_shortcut``/``skip_connection``, SD 1.5's ``proj_in``/``proj_out``) are a linear map per
pixel, so their factors are kept as 2-D matrices (``conv=True``) and merged per input channel like
any Linear's columns; larger kernels (LoCon) are refused by name. Text-encoder parts are parsed
separately (``text_encoder_lora_factors``): the merges combine them directly (docs/operations.md).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .io import LoraFile, LoraFormatError

logger = logging.getLogger(__name__)


@dataclass
class LoraFactors:
    """One adapted linear layer: ΔW = scale · B @ A, with A (r, in_features), B (out_features, r)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    conv: bool = False  # a 1×1 Conv2d: A (r, in) / B (out, r) are its (r, in, 1, 1) / (out, r, 1, 1) kernels

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """Dense ΔW (out, in) — only for analysis and tests, never in the merge loop."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)  # at least fp32; fp64 stays fp64
        return self.scale * (self.B.to(dtype) @ self.A.to(dtype))


def in_features(layer: torch.nn.Module) -> int:
    """Input width of a Linear or 1×1 Conv2d (the length of its merger vectors)."""
    return layer.in_channels if isinstance(layer, torch.nn.Conv2d) else layer.in_features


def low_rank_branch(layer: torch.nn.Module, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """B (A x) for the adapted ``layer``: x (..., in) -> (..., out) for a Linear, (N, in, H, W) -> (N, out, H', W')
    for a 1×1 Conv2d (same stride and padding as the layer, so the shapes add up)."""
    if isinstance(layer, torch.nn.Conv2d):
        down = F.conv2d(x, A[:, :, None, None], stride=layer.stride, padding=layer.padding)  # (N, r, H', W')
        return F.conv2d(down, B[:, :, None, None])
    return F.linear(F.linear(x, A), B)


def _matrix(t: torch.Tensor, key: str, name: str) -> tuple[torch.Tensor, bool]:
    """A LoRA factor as a 2-D matrix, and whether it came from a 1×1 convolution (r, in, 1, 1)."""
    if t.dim() == 2:
        return t, False
    if t.dim() == 4 and t.shape[2:] == (1, 1):
        return t[:, :, 0, 0], True
    raise LoraFormatError(
        f"{name}: {key} is a {'×'.join(map(str, t.shape[2:]))} convolution kernel (a LoCon/LyCORIS layer). ZipLoRA's "
        "per-column mergers are implemented for Linear layers and 1×1 convolutions; larger kernels are not supported. "
        "Use a LoRA without them, or remove that layer's keys from the file to merge the rest.")


def _factors(A: torch.Tensor, B: torch.Tensor, scale: float, key: str, name: str) -> LoraFactors:
    (A, conv_a), (B, conv_b) = _matrix(A, key, name), _matrix(B, key, name)
    return LoraFactors(A, B, scale, conv_a or conv_b)


_TEXT_ENCODER = ("text_encoder", "lora_te", "te_", "te1", "te2")
_PEFT = re.compile(r"^unet\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
_OLD = re.compile(r"^unet\.(.+?)(?:\.processor\.(to_[qkv]|to_out)_lora|\.lora)\.(down|up)\.weight$")


def _peft_scales(lora: LoraFile, ranks: dict[str, int], prefix: str = "unet") -> dict[str, float]:
    """alpha / r per module from the stored peft config (alpha = rank when there is none)."""
    cfg = lora.adapter_config(prefix) or {}
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


def _from_peft(lora: LoraFile, name: str, pattern: re.Pattern | None = None, prefix: str = "unet") -> dict[str, LoraFactors]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in lora.state_dict.items():
        if m := (pattern or _PEFT).match(key):
            parts.setdefault(m.group(1), {})[m.group(2)] = t
    ranks = {p: d["A"].shape[0] for p, d in parts.items() if "A" in d}
    scales = _peft_scales(lora, ranks, prefix)
    return {p: _factors(d["A"], d["B"], scales[p], f"{prefix}.{p}", name)
            for p, d in parts.items() if {"A", "B"} <= d.keys()}


def _from_old_diffusers(state: dict[str, torch.Tensor], alphas: dict[str, float] | None,
                        name: str) -> dict[str, LoraFactors]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    alpha_of: dict[str, float] = {}
    for key, t in state.items():
        m = _OLD.match(key)
        if not m:
            continue
        path = m.group(1) if m.group(2) is None else f"{m.group(1)}.{'to_out.0' if m.group(2) == 'to_out' else m.group(2)}"
        parts.setdefault(path, {})[m.group(3)] = t
        # diffusers names the alpha "<key>.alpha" for processor keys but "unet.<path>.alpha" for ".lora." keys
        # (feed-forward, proj_in/out, convolutions: _get_alpha_name)
        for alpha_key in (f"{key}.alpha", f"unet.{m.group(1)}.alpha"):
            if alphas and m.group(3) == "down" and alpha_key in alphas:
                alpha_of[path] = float(alphas[alpha_key])
    return {p: _factors(d["down"], d["up"], alpha_of.get(p, d["down"].shape[0]) / d["down"].shape[0], p, name)
            for p, d in parts.items() if {"down", "up"} <= d.keys()}


_SGM = ("input_blocks", "middle_block", "output_blocks")


def unet_lora_factors(lora: LoraFile, name: str = "LoRA", unet_config=None) -> dict[str, LoraFactors]:
    """Parse a LoRA file's UNet part (``text_encoder_lora_factors`` parses the rest).

    Args:
        unet_config: the target UNet's config (``unet.config``). Kohya files with SGM block names
            (``lora_unet_input_blocks_4_1_...``, as kohya's SDXL scripts write) map to diffusers module
            paths only through its ``layers_per_block``; without it such a file is refused.

    Raises:
        LoraFormatError: the file holds no LoRA tensors (names what it holds), non-finite values, or SGM
            names and no ``unet_config``.
    """
    keys = list(lora.state_dict)
    if any(_PEFT.match(k) for k in keys):
        factors = _from_peft(lora, name)
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
        factors = _from_old_diffusers(state, alphas, name)
        if not factors and any(_PEFT.match(k) for k in state):
            factors = _from_peft(LoraFile(state, lora.metadata), name)
    if not factors:
        raise LoraFormatError(
            f"{name} holds no UNet LoRA weights (lora_A/lora_B, lora.down/up or kohya lora_down/up pairs); "
            f"found {len(keys)} tensors like {keys[:3]}. Is it a full checkpoint or a text-encoder-only LoRA?"
        )
    _check_finite(factors, name)
    return factors


def _check_finite(factors: dict[str, LoraFactors], name: str, where: str = "layer") -> None:
    for path, f in factors.items():
        if not (torch.isfinite(f.A).all() and torch.isfinite(f.B).all()):
            raise LoraFormatError(f"{name}: {where} {path} has NaN/inf weights; the LoRA is corrupt (retrain it).")


# ---- text-encoder parts ------------------------------------------------------------------------
# Module paths are kept in the hub's naming (transformers 4: ``text_model.encoder.layers.0.self_attn.q_proj``,
# ``text_projection``), which files and kohya names use; diffusers strips ``text_model.`` when it loads into a
# transformers-5 CLIPTextModel, which has no such wrapper.
TEXT_ENCODERS = {"text_encoder": ("lora_te_", "lora_te1_"), "text_encoder_2": ("lora_te2_",)}
_TE_OLD = re.compile(r"^(text_encoder(?:_2)?)\.(.+?)\.(?:(to_[qkv]|to_out)_lora|lora_linear_layer|lora)\.(down|up)\.weight$")
_TE_KOHYA = re.compile(r"^(lora_te[12]?)_(.+)\.(lora_down|lora_up)\.weight$")
_CLIP_LAYER = re.compile(r"^text_model_encoder_layers_(\d+)_(self_attn|mlp)_(q_proj|k_proj|v_proj|out_proj|fc1|fc2)$")
_OLD_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def _hub_path(path: str) -> str:
    return path if path.startswith("text_model.") or path == "text_projection" else f"text_model.{path}"


def text_encoder_lora_factors(lora: LoraFile, name: str = "LoRA") -> dict[str, dict[str, LoraFactors]]:
    """Parse a LoRA file's text-encoder parts: ``{"text_encoder" | "text_encoder_2": {module path: factors}}``.

    Reads peft/diffusers keys (``text_encoder.<path>.lora_A.weight``, alpha from the file's config), the older
    diffusers keys (``...self_attn.to_q_lora.down.weight``, ``...mlp.fc1.lora_linear_layer.down.weight``) and kohya
    keys (``lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight`` + ``.alpha``; ``lora_te_`` for
    SD 1.x). Written by hand because diffusers converts kohya text-encoder keys to the older names with alpha keys
    that do not match them (``_get_alpha_name``), and gives no per-layer A, B.
    Empty dict when the file has no text-encoder part. Tensors it cannot place are named in a warning.
    """
    out: dict[str, dict[str, LoraFactors]] = {}
    placed: set[str] = set()
    state = lora.state_dict
    for prefix in TEXT_ENCODERS:  # peft/diffusers
        pattern = re.compile(rf"^{prefix}\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
        if any(pattern.match(k) for k in state):
            factors = _from_peft(lora, name, pattern, prefix)
            out[prefix] = {_hub_path(p): f for p, f in factors.items()}
            placed |= {k for k in state if pattern.match(k)}
    old: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in state.items():  # older diffusers names (what lora_state_dict makes of kohya files)
        if key not in placed and (m := _TE_OLD.match(key)):
            path = m[2] if m[3] is None else f"{m[2]}.{_OLD_PROJ[m[3]]}"
            old.setdefault((m[1], _hub_path(path)), {})[m[4]] = t
            placed.add(key)
    kohya: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        if key in placed or not (m := _TE_KOHYA.match(key)):
            continue
        layer = _CLIP_LAYER.match(m[2])
        if layer is None and m[2] != "text_projection":
            continue
        te = next(p for p, heads in TEXT_ENCODERS.items() if f"{m[1]}_" in heads)
        path = "text_projection" if layer is None else "text_model.encoder.layers.{}.{}.{}".format(*layer.groups())
        parts = kohya.setdefault((te, path), {})
        parts["down" if m[3] == "lora_down" else "up"] = t
        if f"{m[1]}_{m[2]}.alpha" in state:
            parts["alpha"] = state[f"{m[1]}_{m[2]}.alpha"]
            placed.add(f"{m[1]}_{m[2]}.alpha")
        placed.add(key)
    for (te, path), d in {**old, **kohya}.items():
        if {"down", "up"} <= d.keys():
            r = d["down"].shape[0]
            alpha = float(d["alpha"]) if "alpha" in d else r
            out.setdefault(te, {})[path] = _factors(d["down"], d["up"], alpha / r, f"{te}.{path}", name)
    unplaced = [k for k in state if k.startswith(_TEXT_ENCODER) and k not in placed]
    if unplaced:
        logger.warning("%s: %d text-encoder tensors are in no format this project reads (e.g. %s); they are left "
                       "out of the merged file.", name, len(unplaced), unplaced[0])
    for te, factors in out.items():
        _check_finite(factors, name, f"{te} layer")
    return out


def check_against_unet(unet, loras: dict[str, dict[str, LoraFactors]]) -> dict[str, torch.nn.Module]:
    """Check every adapted layer exists in ``unet`` (a Linear or 1×1 Conv2d) with matching shapes; {path: layer}.

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
            if isinstance(layer, torch.nn.Conv2d) and (layer.kernel_size != (1, 1) or layer.groups != 1):
                k = "×".join(map(str, layer.kernel_size))  # LoCon: never dropped silently
                raise LoraFormatError(
                    f"The {name} LoRA adapts {path}, a {k} convolution (a LoCon/LyCORIS layer). ZipLoRA's per-column "
                    "mergers are implemented for Linear layers and 1×1 convolutions (attention, feed-forward, "
                    "proj_in/out, conv_shortcut); larger kernels are not supported. Use a LoRA without them, or "
                    "remove this layer's keys from the file to merge the rest.")
            if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                raise LoraFormatError(f"The {name} LoRA adapts {path}, a {type(layer).__name__}, not a Linear layer "
                                      "of this UNet (trained on another base model?).")
            want = (layer.weight.shape[0], in_features(layer))
            if (f.B.shape[0], f.A.shape[1]) != want or f.A.shape[0] != f.B.shape[1]:
                raise LoraFormatError(
                    f"The {name} LoRA does not fit this base model: layer {path} is {want[0]}x{want[1]} but "
                    f"the LoRA's B@A is {f.B.shape[0]}x{f.A.shape[1]}. Use LoRAs trained on the same base model."
                )
            targets[path] = layer
    return targets


def checked_unet_factors(pipe, files: dict[str, LoraFile]) -> dict[str, dict[str, LoraFactors]]:
    """{name: UNet factors} of ``files`` ({"subject": LoraFile, ...}) for ``pipe``'s base model: each checked to
    be of the pipeline's family (SDXL / SD 1.x) and to fit its UNet's layer shapes, with a message naming the file."""
    from ..diffusion.base_model import model_family
    from .io import check_family

    family = model_family(pipe)
    for name, lora in files.items():
        check_family(lora, family, f"{name} LoRA")
    loras = {name: unet_lora_factors(lora, f"{name} LoRA", pipe.unet.config) for name, lora in files.items()}
    check_against_unet(pipe.unet, loras)
    return loras
