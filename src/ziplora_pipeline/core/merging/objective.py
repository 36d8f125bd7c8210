"""ZipLoRA's objective, paper Eq. 3, in one place (the optimiser and benchmarks/merge_step.py both use it):

    L = Σ_i ‖(D ⊕ L_m)(x_i, p_i) − (D ⊕ L_i)(x_i, p_i)‖ / e_i  +  λ Σ_layers Σ_{i<j} overlap(m_i, m_j)

with e_i = ‖D(x_i) − (D ⊕ L_i)(x_i)‖, each LoRA's own effect on its pool, when ``normalize_recon`` (ours;
e_i = 1 is Eq. 3 as printed), ‖·‖ as a mean squared error (``squared_norm``, ours: the paper does not say)
or its square root, and ``overlap`` the merger penalty form (``ziplora_layer.overlap_penalty``: ``dot`` is
Eq. 3 literally, ``cosine`` ours, chosen on held-out verdicts: docs/method.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config_utils import require
from .ziplora_layer import ZipLoRALinear, overlap_penalty

OVERLAP_FORMS = ("cosine", "mean_product", "dot")


@dataclass(frozen=True)
class Objective:
    """The terms and weights of Eq. 3."""

    lambda_overlap: float = 0.01  # paper: λ = 0.01
    overlap: str = "cosine"  # cosine | mean_product | dot
    squared_norm: bool = True
    normalize_recon: bool = True

    def __post_init__(self):
        require(self.lambda_overlap >= 0, f"merge.lambda_overlap must be >= 0, got {self.lambda_overlap}.")
        require(self.overlap in OVERLAP_FORMS,
                f"merge.overlap must be one of {list(OVERLAP_FORMS)}, got {self.overlap!r}.")

    def reconstruction(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """‖pred − target‖ of one concept's batch (B, C, h, w), as a mean over elements (squared) or its root."""
        mse = F.mse_loss(pred.float(), target.float())
        return mse if self.squared_norm else mse.clamp_min(1e-20).sqrt()

    def recon_term(self, pred: torch.Tensor, target: torch.Tensor, lora_effect: float) -> torch.Tensor:
        """One concept's reconstruction term: relative to its LoRA's effect e_i when ``normalize_recon``.

        Why relative: a LoRA trained on one style image moves the output far less (or more) than one trained
        on several subject photos; dividing by each LoRA's own effect makes both terms "fraction of that
        LoRA's effect lost", so neither concept's term swamps the other's."""
        return self.reconstruction(pred, target) / self.normaliser(lora_effect)

    def normaliser(self, lora_effect: float) -> float:
        """e_i, or 1 for Eq. 3 as printed."""
        return lora_effect if self.normalize_recon else 1.0

    def loss(self, preds: list[torch.Tensor], targets: list[torch.Tensor], lora_effects: list[float],
             wrappers: Iterable[ZipLoRALinear]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(L, [recon term per concept], overlap) for the concepts' predictions and targets, in the same order."""
        recon = [self.recon_term(p, t, e) for p, t, e in zip(preds, targets, lora_effects)]
        overlap = overlap_penalty(wrappers, self.overlap)
        return torch.stack(recon).sum() + self.lambda_overlap * overlap, recon, overlap
