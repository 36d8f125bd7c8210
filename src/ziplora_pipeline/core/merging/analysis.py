"""Figures behind ZipLoRA's observations (paper §3, Fig. 3), computed on the actual LoRAs.

- column alignment: per layer, mean |cos| between the j-th columns of ΔW_c and ΔW_s
  (Observation 3: aligned columns are what a direct merge sums destructively);
- merger overlap: per layer |cos(m_c, m_s)| before (all ones) and after the merge (Fig. 3b);
- sparsity: fraction of |ΔW| entries below fractions of the layer's max (the output change when the
  smallest 50/80/90 % entries are zeroed, per layer group, is in ``premises.py``; Observation 2).
Dense ΔW are formed here, one layer at a time and outside any training loop.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..lora.factors import LoraFactors


@torch.no_grad()
def column_alignment(a: dict[str, LoraFactors], b: dict[str, LoraFactors]) -> dict[str, float]:
    """{layer: mean_j |cos(ΔW_a[:, j], ΔW_b[:, j])|} over layers both LoRAs adapt."""
    out = {}
    for path in sorted(set(a) & set(b)):
        da, db = a[path].delta(), b[path].delta()  # (out, in)
        out[path] = F.cosine_similarity(da, db, dim=0, eps=1e-12).abs().mean().item()
    return out


@torch.no_grad()
def merger_cosines(mergers: dict[str, torch.Tensor], names: tuple[str, str]) -> dict[str, float]:
    """{layer: |cos(m_a, m_b)|} from a merger state dict ``{"<path>.<adapter>": m}``."""
    a, b = names
    paths = sorted(k[: -len(a) - 1] for k in mergers if k.endswith(f".{a}"))
    return {p: F.cosine_similarity(mergers[f"{p}.{a}"], mergers[f"{p}.{b}"], dim=0).abs().item()
            for p in paths if f"{p}.{b}" in mergers}


@torch.no_grad()
def sparsity(factors: dict[str, LoraFactors], thresholds=(0.01, 0.05, 0.1)) -> dict[str, float]:
    """Fraction of ΔW entries with |ΔW| < t · max|ΔW| (per layer, averaged over layers)."""
    fractions = {t: [] for t in thresholds}
    for f in factors.values():
        d = f.delta().abs()
        for t in thresholds:
            fractions[t].append((d < t * d.max()).float().mean().item())
    return {f"below_{t:g}_of_max": sum(v) / len(v) for t, v in fractions.items()}


def prune_smallest(delta: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the ``fraction`` smallest-magnitude entries of ``delta``."""
    if fraction <= 0:
        return delta
    if fraction >= 1:
        return torch.zeros_like(delta)
    k = int(fraction * delta.numel())
    if k == 0:
        return delta
    threshold = delta.abs().flatten().kthvalue(k).values
    return torch.where(delta.abs() > threshold, delta, torch.zeros_like(delta))


@contextmanager
def dense_delta_applied(unet, factors: dict[str, LoraFactors], fraction: float | dict[str, float] = 0.0):
    """Temporarily add (pruned) ΔW to the UNet's weights; restore them exactly afterwards.

    ``fraction``: the share of each layer's smallest |ΔW| entries zeroed, one for all layers or per layer path
    (missing paths 0; 1.0 removes that layer's ΔW)."""
    modules = dict(unet.named_modules())
    saved = {}
    with torch.no_grad():
        for path, f in factors.items():
            w = modules[path].weight
            saved[path] = w.detach().clone()
            fr = fraction.get(path, 0.0) if isinstance(fraction, dict) else fraction
            # W + ΔW summed in fp32 and rounded once to the UNet's dtype (adding a bf16-cast ΔW rounded twice and
            # dropped small entries); entries below half an ulp of W still vanish in a bf16 UNet.
            delta = prune_smallest(f.delta().float(), fr).to(w.device)
            w.copy_((w.float() + delta.reshape(w.shape)).to(w.dtype))  # a 1×1 conv's (out, in, 1, 1) kernel
    try:
        yield unet
    finally:
        with torch.no_grad():
            for path, w0 in saved.items():
                modules[path].weight.copy_(w0)


def summarise(values: dict[str, float]) -> dict[str, float]:
    v = torch.tensor(list(values.values())) if values else torch.zeros(1)
    return {"mean": v.mean().item(), "min": v.min().item(), "max": v.max().item(), "layers": len(values)}


__all__ = ["column_alignment", "merger_cosines", "sparsity", "summarise", "prune_smallest",
           "dense_delta_applied"]
