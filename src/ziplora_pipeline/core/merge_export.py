"""Export a merge as a standard LoRA file (diffusers format with metadata, and kohya format).

Eq. 2 in low-rank form: the merged layer's delta Σ_i m_i ⊗ (s_i B_i A_i) is exactly the LoRA
A_m = [A_1 diag(m_1); …; A_k diag(m_k)]  (Σr_i, in),   B_m = [c_1 s_1 B_1 | … | c_k s_k B_k]  (out, Σr_i)
with c_i the user's strength for LoRA i (paper §5: "controlling the extent of stylization").
Scales are folded into B, so the file says alpha = rank (scale 1) for every layer; per-layer
ranks that differ from the most common one go to peft's ``rank_pattern``/``alpha_pattern``.
"""

from __future__ import annotations

from collections import Counter

import torch

from .lora_factors import LoraFactors
from .lora_io import LoraFile, pack_lora_file


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
        out[path] = LoraFactors(torch.cat(As, 0), torch.cat(Bs, 1), 1.0)
    return out


def factors_to_lora_file(factors: dict[str, LoraFactors], description: str = "") -> LoraFile:
    """Scale-1 factors -> diffusers-format ``LoraFile`` that ``load_lora_weights`` reads."""
    ranks = {p: f.rank for p, f in factors.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {p: k for p, k in ranks.items() if k != r}
    config = {
        "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(factors), "lora_dropout": 0.0, "bias": "none", "use_dora": False,
        "use_rslora": False, "init_lora_weights": True, "peft_type": "LORA",
    }
    state = {}
    for p, f in factors.items():
        state[f"{p}.lora_A.weight"] = f.A.contiguous()
        state[f"{p}.lora_B.weight"] = f.B.contiguous()
    lora = pack_lora_file(state, config)
    if description:
        lora.metadata["ziplora_pipeline.description"] = description
    return lora


def to_kohya(lora: LoraFile) -> LoraFile:
    """Kohya-format copy (``lora_unet_<path>.lora_down/up.weight`` + ``.alpha``) for ComfyUI/A1111.

    diffusers' converter writes alpha = rank, which matches our scale-1 export exactly.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    cfg = lora.adapter_config() or {}
    if cfg.get("lora_alpha", cfg.get("r")) != cfg.get("r") or cfg.get("alpha_pattern") != cfg.get("rank_pattern"):
        raise ValueError("to_kohya expects a scale-1 LoRA (alpha = rank), as factors_to_lora_file writes.")
    state = convert_state_dict_to_kohya(dict(lora.state_dict))
    return LoraFile(state, {"format": "pt", "ss_network_module": "networks.lora"})
