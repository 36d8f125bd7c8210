"""NP-LoRA: the subject LoRA projected off the style LoRA's input subspace, then added to the style LoRA.

"NP-LoRA: Null Space Projection Unifies Subject and Style in LoRA Fusion" (arXiv 2511.11051; read through
secondary descriptions, no official code was available to us). Per layer shared by both LoRAs, with
ΔW_s = s_s B_s A_s and V (in, k) its top right-singular vectors (the input directions the style uses):

    ΔW_c' = ΔW_c (I − c V Vᵀ),   c = μ / (1 + μ)   (soft projection; μ → ∞ is the hard null-space projection)
    ΔW    = w_c ΔW_c' + w_s ΔW_s

so the subject keeps only what does not write into the directions the style reads. Low-rank form (ours,
exact): V comes from the QR factors of A_sᵀ (in, r_s) and B_s (out, r_s) and the SVD of their r_s × r_s core,
and A_c' = A_c − c (A_c V) Vᵀ, so the result is a rank-(r_c + r_s) LoRA like the direct merge. Which
directions count (``energy``: the top-k holding that share of ‖ΔW_s‖²) and μ = 0.5 follow the descriptions
we read; the text-encoder parts are combined directly, as in the direct merge (ours).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config_utils import require
from ..evaluation.cost import measure
from ..lora.factors import LoraFactors
from .build import lora_file_mb, method_cost
from .export import merged_file
from .method import BuildContext, MergeMethod


@dataclass(frozen=True)
class NpLoraOptions:
    mu: float | None = 0.5  # soft projection I − μ/(1+μ) V Vᵀ; null = hard projection (I − V Vᵀ)
    energy: float = 1.0  # V = the fewest top singular directions holding this share of ‖ΔW_s‖² (1: all of them)
    weights: tuple[float, float] = (1.0, 1.0)  # (subject, style)

    def __post_init__(self):
        require(self.mu is None or self.mu >= 0, f"np_lora mu must be >= 0 or null (hard projection), got {self.mu}.")
        require(0 < self.energy <= 1, f"np_lora energy must be in (0, 1], got {self.energy}.")
        require(len(self.weights) == 2, f"np_lora weights are [subject, style], got {list(self.weights)}.")

    @property
    def coefficient(self) -> float:
        """c in I − c V Vᵀ."""
        return 1.0 if self.mu is None else self.mu / (1.0 + self.mu)


def style_input_basis(f: LoraFactors, energy: float = 1.0, rtol: float = 1e-6) -> torch.Tensor:
    """V (in, k), orthonormal columns: the top right-singular vectors of ΔW = scale · B A, without forming ΔW.

    A (r, in) and B (out, r): A ᵀ = Q_A R_A, B = Q_B R_B, so ΔW = scale · Q_B (R_B R_Aᵀ) Q_Aᵀ and the SVD of the
    r × r core U Σ Wᵀ gives V = Q_A W. Directions with σ ≤ rtol · σ_max are dropped (a rank-deficient LoRA).
    """
    dtype = torch.promote_types(f.A.dtype, torch.float32)
    q_a, r_a = torch.linalg.qr(f.A.to(dtype).T)  # (in, r), (r, r)
    _, r_b = torch.linalg.qr(f.B.to(dtype))  # (r, r)
    _, sigma, wh = torch.linalg.svd(r_b @ r_a.T)  # σ (r,), Wᵀ (r, r)
    if sigma.numel() == 0 or sigma[0] == 0:
        return q_a[:, :0]
    keep = int((sigma > rtol * sigma[0]).sum())
    if energy < 1:
        share = torch.cumsum(sigma[:keep] ** 2, 0) / (sigma[:keep] ** 2).sum()
        keep = min(keep, int((share < energy).sum()) + 1)
    return q_a @ wh[:keep].T  # (in, k)


def project_subject(subject: dict[str, LoraFactors], style: dict[str, LoraFactors],
                    options: NpLoraOptions = NpLoraOptions()) -> dict[str, LoraFactors]:
    """The subject's factors with A_c' = A_c − c (A_c V) Vᵀ on every layer the style adapts; B, scale kept."""
    c = options.coefficient
    out = {}
    for path, f in subject.items():
        if path not in style:
            out[path] = f
            continue
        V = style_input_basis(style[path], options.energy)  # (in, k)
        A = f.A.to(V.dtype)
        out[path] = LoraFactors((A - c * (A @ V) @ V.T).to(f.A.dtype), f.B, f.scale, f.conv)
    return out


class NpLora(MergeMethod):
    kind = "np_lora"
    Options = NpLoraOptions

    def build(self, ctx: BuildContext):
        weights = dict(zip(("subject", "style"), self.options.weights))
        with measure(ctx.device) as cost:
            projected = project_subject(ctx.factors["subject"], ctx.factors["style"], self.options)
            lora = merged_file({"subject": projected, "style": ctx.factors["style"]}, ctx.text_encoders, weights,
                               self.name, f"NP-LoRA (mu {self.options.mu}, energy {self.options.energy}) of "
                               f"{ctx.description}")
        return lora, method_cost(cost, file_mb=lora_file_mb(lora))
