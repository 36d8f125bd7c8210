"""NP-LoRA's projection (core/merging/np_lora.py) on small tensors: exact identities against dense SVD."""

from __future__ import annotations

import pytest
import torch

from ziplora_pipeline.core.config_utils import ConfigError, from_dict
from ziplora_pipeline.core.lora.factors import LoraFactors
from ziplora_pipeline.core.merging.export import merged_factors
from ziplora_pipeline.core.merging.np_lora import NpLoraOptions, project_subject, style_input_basis


def _lora(r: int, n_in: int = 24, n_out: int = 12, scale: float = 0.5, seed: int = 0) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(r, n_in, generator=g, dtype=torch.float64),
                       torch.randn(n_out, r, generator=g, dtype=torch.float64), scale)


def test_basis_spans_the_top_right_singular_vectors_of_the_dense_delta():
    style = _lora(4)
    V = style_input_basis(style)
    _, _, vh = torch.linalg.svd(style.delta())
    assert V.shape == (24, 4)
    torch.testing.assert_close(V.T @ V, torch.eye(4, dtype=V.dtype), atol=1e-10, rtol=0)  # orthonormal
    torch.testing.assert_close(V @ V.T, vh[:4].T @ vh[:4], atol=1e-10, rtol=0)  # the same projector


def test_rank_deficient_style_drops_its_zero_directions():
    style = _lora(4)
    style.A[3] = 2 * style.A[0]  # rank 3
    assert style_input_basis(style).shape[1] == 3


def test_energy_keeps_the_fewest_directions_holding_that_share():
    style = _lora(4)
    s = torch.linalg.svdvals(style.delta())[:4] ** 2
    share = (torch.cumsum(s, 0) / s.sum()).tolist()
    k = next(i for i, v in enumerate(share) if v >= 0.8) + 1
    assert style_input_basis(style, energy=0.8).shape[1] == k < 4


def test_hard_projection_removes_every_style_input_direction_and_soft_is_the_paper_formula():
    subject, style = _lora(3, seed=1), _lora(4, seed=2)
    V = style_input_basis(style)
    hard = project_subject({"x": subject}, {"x": style}, NpLoraOptions(mu=None))["x"]
    assert (hard.delta() @ V).abs().max() < 1e-10  # ΔW_c' V = 0: nothing written through the style's directions
    soft = project_subject({"x": subject}, {"x": style}, NpLoraOptions(mu=0.5))["x"]
    P = torch.eye(24, dtype=torch.float64) - (0.5 / 1.5) * V @ V.T  # I − μ/(1+μ) V Vᵀ
    torch.testing.assert_close(soft.delta(), subject.delta() @ P, atol=1e-10, rtol=0)
    assert soft.B is subject.B and soft.scale == subject.scale  # only A changes: same rank, same file layout
    none = project_subject({"x": subject}, {"x": style}, NpLoraOptions(mu=0.0))["x"]
    torch.testing.assert_close(none.delta(), subject.delta(), atol=1e-12, rtol=0)  # μ = 0: the direct merge


def test_layers_the_style_does_not_adapt_are_kept_and_the_merge_is_rank_rc_plus_rs():
    subject, style, only = _lora(3, seed=1), _lora(4, seed=2), _lora(2, seed=3)
    projected = project_subject({"x": subject, "y": only}, {"x": style}, NpLoraOptions(mu=None))
    assert projected["y"] is only
    merged = merged_factors({"subject": projected, "style": {"x": style}})
    assert merged["x"].rank == 7 and merged["y"].rank == 2
    V = style_input_basis(style)
    want = subject.delta() @ (torch.eye(24, dtype=torch.float64) - V @ V.T) + style.delta()
    torch.testing.assert_close(merged["x"].delta(), want, atol=1e-10, rtol=0)


def test_options_are_checked_by_name():
    assert NpLoraOptions(mu=None).coefficient == 1.0 and NpLoraOptions(mu=0.0).coefficient == 0.0
    for bad in ({"mu": -1.0}, {"energy": 0.0}, {"weights": [1.0]}):
        with pytest.raises(ConfigError):
            from_dict(NpLoraOptions, bad, "merge.methods.np_lora")
