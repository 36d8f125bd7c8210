"""ZipLoRA's two premises (paper §3), measured per layer group on the actual LoRAs.

- Observation 2, sparsity: zeroing the p % smallest |ΔW| entries of a LoRA barely changes the UNet's
  output. Figure: ‖ε(pruned) − ε(full)‖ / ‖ε(full) − ε(without)‖ on held-out draws of the LoRA's own
  concept, where "pruned" zeroes the p % smallest entries of every layer in the group (each layer on its
  own threshold) and "without" removes the group's ΔW altogether: 0 = pruning changed nothing the group
  did, 1 = as large as removing it.
- Observation 3, column alignment: matching columns of ΔW_c and ΔW_s (out × in; column j is what input
  feature j writes) point the same way. Figure: mean_j |cos(ΔW_c[:, j], ΔW_s[:, j])|, beside the same figure
  with ΔW_s's columns shuffled, which is the chance level of two unrelated LoRAs of these shapes: only the
  excess over it is alignment.

Groups are UNet level × attention kind (``down/self``, ``mid/cross``, ...; ``attn1`` is self-attention,
``attn2`` cross-attention); other adapted layers (feed-forward, proj_in/out) fall in ``<level>/other``.
``all`` is every adapted layer at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from statistics import NormalDist

import torch
import torch.nn.functional as F

from ..lora.factors import LoraFactors
from .analysis import dense_delta_applied, prune_smallest

FRACTIONS = (0.5, 0.8, 0.9)  # the paper's Fig. 3a goes to 90 %
PREMISE_DRAWS = 16  # held-out (image, noise, t) draws per concept for the sparsity figure
PREMISE_SEED = 2_000_003  # none of the merge's seeds (merge.seed, its held-out seed + 1,000,003) nor the evaluation's


def layer_group(path: str) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k`` -> ``down/cross``; ``mid_block...attn1...``
    -> ``mid/self``; a layer outside attention (``...ff.net.2``, ``conv_shortcut``) -> ``<level>/other``."""
    head = path.split(".")[0]
    level = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(head, head)
    kind = "self" if ".attn1." in path else "cross" if ".attn2." in path else "other"
    return f"{level}/{kind}"


def group_layers(paths: Iterable[str]) -> dict[str, list[str]]:
    """{group: [layer paths]} in UNet order of first appearance, then ``all``."""
    out: dict[str, list[str]] = {}
    paths = list(paths)
    for p in paths:
        out.setdefault(layer_group(p), []).append(p)
    return {**out, "all": paths}


def matching_column_cos(da: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """|cos| of column j of ``da`` with column j of ``db``, both (out, in) -> (in,)."""
    return F.cosine_similarity(da.float(), db.float(), dim=0, eps=1e-12).abs()


@torch.no_grad()
def column_alignment_by_group(a: dict[str, LoraFactors], b: dict[str, LoraFactors], shuffles: int = 8,
                              seed: int = 0) -> dict[str, dict[str, float]]:
    """{group: {aligned, shuffled, excess, layers}}: mean over the group's layers of the mean matching-column
    |cos|, and the same with ``b``'s columns permuted (mean over ``shuffles`` permutations; the chance level)."""
    g = torch.Generator().manual_seed(seed)
    aligned, shuffled = {}, {}
    for path in sorted(set(a) & set(b)):
        da, db = a[path].delta(), b[path].delta()  # (out, in)
        aligned[path] = matching_column_cos(da, db).mean().item()
        perms = [torch.randperm(db.shape[1], generator=g) for _ in range(shuffles)]
        shuffled[path] = sum(matching_column_cos(da, db[:, p]).mean().item() for p in perms) / shuffles
    out = {}
    for group, paths in group_layers(aligned).items():
        al = sum(aligned[p] for p in paths) / len(paths)
        sh = sum(shuffled[p] for p in paths) / len(paths)
        out[group] = {"aligned": al, "shuffled": sh, "excess": al - sh, "layers": len(paths)}
    return out


@torch.no_grad()
def sparsity_by_group(unet, factors: dict[str, LoraFactors], predict: Callable[[torch.nn.Module], torch.Tensor],
                      fractions: tuple[float, ...] = FRACTIONS) -> dict[str, dict[str, float]]:
    """{group: {prune_50pct, prune_80pct, prune_90pct, layers}}: the output change when the group's layers keep
    only their largest (1 − p) |ΔW| entries, relative to the group's own effect (see the module docstring).

    ``predict(unet) -> tensor`` runs the UNet on fixed held-out inputs of the LoRA's own concept.
    """
    with dense_delta_applied(unet, factors):
        full = predict(unet).float()
    out = {}
    for group, paths in group_layers(factors).items():
        with dense_delta_applied(unet, factors, {p: 1.0 for p in paths}):  # the group's ΔW removed
            effect = (full - predict(unet).float()).norm().clamp_min(1e-12)
        row = {}
        for fr in fractions:
            with dense_delta_applied(unet, factors, {p: fr for p in paths}):
                row[f"prune_{round(fr * 100)}pct"] = ((predict(unet).float() - full).norm() / effect).item()
            row[f"weight_{round(fr * 100)}pct"] = weight_pruned(factors, paths, fr)
        out[group] = {**row, "layers": len(paths)}
    return out


@torch.no_grad()
def weight_pruned(factors: dict[str, LoraFactors], paths: list[str], fraction: float) -> float:
    """‖ΔW − pruned ΔW‖ / ‖ΔW‖ over the group's layers (each pruned on its own threshold): the share of ΔW's
    norm in its ``fraction`` smallest entries. Compare ``gaussian_pruned(fraction)``."""
    removed = total = 0.0
    for p in paths:
        d = factors[p].delta().float()
        removed += (d - prune_smallest(d, fraction)).pow(2).sum().item()
        total += d.pow(2).sum().item()
    return math.sqrt(removed / total) if total > 0 else 0.0


def gaussian_pruned(fraction: float) -> float:
    """``weight_pruned`` of a ΔW with i.i.d. Gaussian entries (the dense reference; ours): with z the two-sided
    ``fraction`` quantile of |x|, the largest entries hold E[x²; |x| > z] = 2 (z φ(z) + 1 − Φ(z)) of the energy,
    so the smallest hold the rest. 0.267 / 0.592 / 0.749 at 50 / 80 / 90 %; a sparse (heavy-tailed) ΔW is lower."""
    n = NormalDist()
    z = n.inv_cdf((1 + fraction) / 2)
    kept = 2 * (z * n.pdf(z) + 1 - n.cdf(z))
    return math.sqrt(max(0.0, 1 - kept))


def premises_table(alignment: dict[str, dict], sparsity: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per layer group: layers, column |cos| aligned vs shuffled, and each LoRA's output change at
    p = 50/80/90 % (``sparsity`` is {lora name: sparsity_by_group(...)}), for the report and MLflow."""
    rows = []
    for group in dict.fromkeys([*alignment, *(g for s in sparsity.values() for g in s)]):
        sources = [alignment.get(group), *(s.get(group) for s in sparsity.values())]  # a group one LoRA lacks
        row = {"group": group, "layers": max(src["layers"] for src in sources if src)}
        if group in alignment:
            row.update(col_cos=alignment[group]["aligned"], col_cos_shuffled=alignment[group]["shuffled"])
        for name, by_group in sparsity.items():
            for key, value in (by_group.get(group) or {}).items():
                if key.startswith("prune_") or key == "weight_90pct":
                    row[f"{name}_{key}"] = value
        rows.append(row)
    return rows


__all__ = ["layer_group", "group_layers", "matching_column_cos", "column_alignment_by_group", "sparsity_by_group",
           "premises_table", "weight_pruned", "gaussian_pruned", "FRACTIONS", "PREMISE_DRAWS", "PREMISE_SEED"]
