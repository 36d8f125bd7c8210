"""Export a merge as a standard LoRA file (diffusers format with metadata, and kohya format).

Eq. 2 in low-rank form: the merged layer's delta Σ_i m_i ⊗ (s_i B_i A_i) is exactly the LoRA
A_m = [A_1 diag(m_1); …; A_k diag(m_k)]  (Σr_i, in),   B_m = [c_1 s_1 B_1 | … | c_k s_k B_k]  (out, Σr_i)
with c_i the user's strength for LoRA i (paper §5: "controlling the extent of stylization").
Scales are folded into B, so the file says alpha = rank (scale 1) for every layer; per-layer
ranks that differ from the most common one go to peft's ``rank_pattern``/``alpha_pattern``.

Text-encoder parts (community LoRAs often have them; ours never do) are not merged with learned
mergers: ZipLoRA's objective (Eq. 3) is on the UNet's output, and the text encoders' LoRAs only
reach it through the prompt embedding. They are combined directly (Σ_i c_i s_i B_i A_i, the same
factor concatenation with m = 1), with a logged warning. Ours, not the paper's (it trains none).
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import torch

from ..lora.factors import LoraFactors, text_encoder_lora_factors
from ..lora.io import LORA_ADAPTER_METADATA_KEY, LoraFile, pack_lora_file

logger = logging.getLogger(__name__)


def merged_factors(loras: dict[str, dict[str, LoraFactors]], mergers: dict[str, torch.Tensor] | None = None,
                   strengths: dict[str, float] | None = None) -> dict[str, LoraFactors]:
    """{path: factors of the merged LoRA (scale 1)}.

    Args:
        loras: {adapter: {module path: factors}}.
        mergers: {"<path>.<adapter>": m (in,)}; missing entries mean m = 1 (direct merge).
        strengths: {adapter: multiplier c_i}; default 1.
    """
    mergers, strengths = mergers or {}, strengths or {}
    out = {}
    for path in sorted({p for f in loras.values() for p in f}):
        As, Bs = [], []
        for name, factors in loras.items():
            if path not in factors:
                continue
            f = factors[path]
            m = mergers.get(f"{path}.{name}")
            dtype = torch.promote_types(f.A.dtype, torch.float32)  # fp16 LoRAs are merged in fp32
            A = f.A.to(dtype) if m is None else f.A.to(dtype) * m.to(f.A.device, dtype)  # A diag(m): scales columns
            As.append(A)
            Bs.append(f.B.to(dtype) * (f.scale * strengths.get(name, 1.0)))
        conv = any(factors[path].conv for factors in loras.values() if path in factors)
        out[path] = LoraFactors(torch.cat(As, 0), torch.cat(Bs, 1), 1.0, conv)
    return out


def text_encoder_parts(files: dict[str, LoraFile]) -> dict[str, dict[str, dict[str, LoraFactors]]]:
    """{name: that file's text-encoder parts} (``text_encoder_lora_factors``), parsed once for every use."""
    return {n: text_encoder_lora_factors(f, f"{n} LoRA") for n, f in files.items()}


def combined_text_encoders(parts: dict[str, dict[str, dict[str, LoraFactors]]],
                           strengths: dict[str, float] | None = None,
                           what: str = "merge") -> dict[str, dict[str, LoraFactors]]:
    """The text-encoder ``parts`` (``text_encoder_parts``) combined directly: {"text_encoder" | "text_encoder_2":
    scale-1 factors}.

    Logs a warning when there is anything to combine (the UNet part is what the merge learns mergers for).
    """
    out = {}
    for te in sorted({te for p in parts.values() for te in p}):
        out[te] = merged_factors({n: p[te] for n, p in parts.items() if te in p}, None, strengths)
        logger.warning("%s: %d %s LoRA layers (from %s) are combined directly (ΔW = Σ strength·ΔW_i), not merged "
                       "with mergers: ZipLoRA's mergers are learned for the UNet only.", what, len(out[te]), te,
                       " and ".join(n for n, p in parts.items() if te in p))
    return out


def _scale_one_config(ranks: dict[str, int]) -> dict:
    """peft ``LoraConfig`` dict for scale-1 factors of these per-layer ranks (alpha = rank everywhere)."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {p: k for p, k in ranks.items() if k != r}
    return {"r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none", "use_dora": False,
            "use_rslora": False, "init_lora_weights": True, "peft_type": "LORA"}


def factors_to_lora_file(factors: dict[str, LoraFactors], description: str = "",
                         text_encoders: dict[str, dict[str, LoraFactors]] | None = None) -> LoraFile:
    """Scale-1 factors -> diffusers-format ``LoraFile`` that ``load_lora_weights`` reads.

    Args:
        text_encoders: optional scale-1 text-encoder parts ({"text_encoder": {path: factors}}, hub paths), written
            as ``text_encoder.<path>.lora_A.weight`` with their own config. Its ``target_modules`` drop the
            ``text_model.`` head: peft matches them as suffixes, so they fit transformers 4's CLIP module names
            (``text_model.encoder...``) and transformers 5's CLIPTextModel (``encoder...``) alike.
    """
    state = {}
    for p, f in factors.items():
        A, B = (f.A[:, :, None, None], f.B[:, :, None, None]) if f.conv else (f.A, f.B)  # peft's Conv2d LoRA kernels
        state[f"{p}.lora_A.weight"] = A.contiguous()
        state[f"{p}.lora_B.weight"] = B.contiguous()
    lora = pack_lora_file(state, _scale_one_config({p: f.rank for p, f in factors.items()}))
    packed = json.loads(lora.metadata[LORA_ADAPTER_METADATA_KEY])
    for te, te_factors in (text_encoders or {}).items():
        for p, f in te_factors.items():
            lora.state_dict[f"{te}.{p}.lora_A.weight"] = f.A.detach().contiguous().cpu()
            lora.state_dict[f"{te}.{p}.lora_B.weight"] = f.B.detach().contiguous().cpu()
        config = _scale_one_config({p.removeprefix("text_model."): f.rank for p, f in te_factors.items()})
        packed |= {f"{te}.{k}": v for k, v in config.items()}
    lora.metadata[LORA_ADAPTER_METADATA_KEY] = json.dumps(packed, indent=2, sort_keys=True)
    if description:
        lora.metadata["ziplora_pipeline.description"] = description
    return lora


# base architecture -> (kohya's ss_base_model_version, the SAI model spec's modelspec.architecture)
KOHYA_ARCHITECTURES = {"sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
                       "sd15": ("sd_v1", "stable-diffusion-v1/lora")}


def kohya_metadata(base_model: str, architecture: str, trigger_words: list[str] | tuple[str, ...] = (),
                   title: str = "") -> dict[str, str]:
    """The header keys A1111, ComfyUI and Civitai read from a kohya LoRA: the base model and its version
    (``ss_sd_model_name``, ``ss_base_model_version``), the trigger words (``ss_tag_frequency``, which A1111's
    LoRA tab lists, and the SAI model spec's ``modelspec.trigger_phrase``) and a title. All values are strings
    (safetensors headers hold only strings)."""
    if architecture not in KOHYA_ARCHITECTURES:
        raise ValueError(f"kohya_metadata: architecture {architecture!r} is not one of {sorted(KOHYA_ARCHITECTURES)}.")
    version, spec = KOHYA_ARCHITECTURES[architecture]
    words = [w for w in trigger_words if w]
    return {"ss_sd_model_name": str(base_model), "ss_base_model_version": version,
            "ss_tag_frequency": json.dumps({"trigger words": {w: 1 for w in words}}),
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": spec,
            "modelspec.trigger_phrase": ", ".join(words), "modelspec.title": title or "LoRA"}


def to_kohya(lora: LoraFile, metadata: dict[str, str] | None = None) -> LoraFile:
    """Kohya-format copy (``lora_unet_<path>.lora_down/up.weight`` + ``.alpha``) for ComfyUI/A1111, with the
    header keys of ``metadata`` (``kohya_metadata``) beside ``ss_network_module``.

    diffusers' converter writes alpha = rank, which matches our scale-1 export exactly.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    cfg = lora.adapter_config() or {}
    if cfg.get("lora_alpha", cfg.get("r")) != cfg.get("r") or cfg.get("alpha_pattern") != cfg.get("rank_pattern"):
        raise ValueError("to_kohya expects a scale-1 LoRA (alpha = rank), as factors_to_lora_file writes.")
    state = convert_state_dict_to_kohya(dict(lora.state_dict))
    return LoraFile(state, {"format": "pt", "ss_network_module": "networks.lora", **(metadata or {})})


def merged_file(factors: dict[str, dict[str, LoraFactors]], text_encoders: dict, strengths: dict[str, float],
                what: str, description: str, mergers: dict[str, torch.Tensor] | None = None) -> LoraFile:
    """One LoRA file of the UNet ``factors`` {adapter: {path: factors}} merged (``merged_factors``: with ``mergers``,
    Eq. 2; without, ΔW = Σ c_i ΔW_i) and the ``text_encoders`` parts (``text_encoder_parts``) combined directly, both
    at ``strengths``; ``what`` names the merge in the text-encoder warning."""
    return factors_to_lora_file(merged_factors(factors, mergers, strengths), description=description,
                                text_encoders=combined_text_encoders(text_encoders, strengths, what))


def ziplora_file(factors: dict[str, dict[str, LoraFactors]], text_encoders: dict, mergers: dict[str, torch.Tensor],
                 strengths: dict[str, float], name: str = "ziplora", description: str | None = None) -> LoraFile:
    """The ZipLoRA at user strengths ``{"subject": c_c, "style": c_s}`` (paper §5: 1.0 / 0.7 / 0.4 for the style)
    as one LoRA file: Eq. 2 in low-rank form from the parsed UNet ``factors`` and the ``text_encoders`` parts
    (``text_encoder_parts``) of the two source LoRAs."""
    return merged_file(factors, text_encoders, strengths, name, description or f"ZipLoRA, strengths {strengths}",
                       mergers)
