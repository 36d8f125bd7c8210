"""ZipLoRA in closed form (core/merging/closed_form.py, ours): the per-layer solve against a gradient solution of
the same objective, its errors, and a whole merge on the miniature model exported as a plain-diffusers LoRA."""

from __future__ import annotations

import pytest
import torch

from ziplora_pipeline.core.diffusion.base_model import load_base_pipeline
from ziplora_pipeline.core.diffusion.sdxl import encode_concept, training_scheduler
from ziplora_pipeline.core.lora.factors import LoraFactors
from ziplora_pipeline.core.merging.closed_form import layer_objective, solve_layer
from ziplora_pipeline.core.merging.export import factors_to_lora_file, merged_factors
from ziplora_pipeline.core.merging.optimise import MergeConfig, ziplora_merge
from ziplora_pipeline.datasets.lora_safetensors import LoraSafetensorsDataset

from tests.core.merging.conftest import STYLE_PROMPT, SUBJECT_PROMPT


def _layer(seed: int = 0, n: int = 6, out: int = 5):
    g = torch.Generator().manual_seed(seed)
    f = {name: LoraFactors(torch.randn(r, n, generator=g, dtype=torch.float64),
                           torch.randn(out, r, generator=g, dtype=torch.float64), scale)
         for name, r, scale in (("subject", 2, 0.5), ("style", 3, 1.0))}
    X = {"subject": torch.randn(40, n, generator=g, dtype=torch.float64),
         "style": torch.randn(30, n, generator=g, dtype=torch.float64) + 0.5}
    return f, X


def _gradient_solution(f, X, lam, form, start=None):
    m = {k: (torch.ones(6, dtype=torch.float64) if start is None else start[k].double()).clone().requires_grad_(True)
         for k in f}
    opt = torch.optim.LBFGS(list(m.values()), max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-14,
                            tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = layer_objective(m, f, X, lam, form)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return {k: v.detach() for k, v in m.items()}


@pytest.mark.parametrize("seed, lam", [(0, 0.0), (0, 0.001), (1, 0.01), (2, 0.001)])
def test_closed_form_equals_the_converged_gradient_solution_of_the_same_objective(seed, lam):
    """One adapted layer, where the layer-local objective is the whole objective, and λ where the minimum keeps
    m_cᵀ m_s > 0 (the smooth piece): the 2n × 2n solve from the inputs' second moments equals L-BFGS on the
    explicit residuals (dot overlap), to 1e-4."""
    f, X = _layer(seed)
    solved = solve_layer(f, {k: x.T @ x for k, x in X.items()}, lam, "dot", ridge=0.0)
    grad = _gradient_solution(f, X, lam, "dot")
    for k in f:
        torch.testing.assert_close(solved[k].double(), grad[k], atol=1e-4, rtol=0)
    assert layer_objective(solved, f, X, lam) <= layer_objective({k: torch.ones(6) for k in f}, f, X, lam)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.1, 0.5, 2.0])
def test_a_large_overlap_weight_is_minimised_not_sent_to_a_saddle(seed, lam):
    """λ where the dot form's one solve is not a minimum (its system indefinite, or |m_cᵀ m_s| at its kink): the
    kink's exact point and local searches on the recorded statistics reach an objective no worse than L-BFGS on
    the explicit residuals from the all-ones start."""
    f, X = _layer(seed)
    solved = solve_layer(f, {k: x.T @ x for k, x in X.items()}, lam, "dot", ridge=0.0)
    grad = _gradient_solution(f, X, lam, "dot")
    assert layer_objective(solved, f, X, lam).item() <= layer_objective(grad, f, X, lam).item() + 1e-6


def test_non_quadratic_overlap_is_refined_on_the_recorded_statistics():
    f, X = _layer(1)
    moments = {k: x.T @ x for k, x in X.items()}
    dot = solve_layer(f, moments, 0.5, "dot", ridge=0.0)
    cosine = solve_layer(f, moments, 0.5, "cosine", ridge=0.0)
    at = lambda m: layer_objective(m, f, X, 0.5, "cosine").item()  # noqa: E731
    assert at(cosine) < at(dot) - 1e-6 and at(cosine) < at({k: torch.ones(6) for k in f})


def test_a_layer_without_statistics_or_with_nan_is_named():
    f, X = _layer()
    with pytest.raises(ValueError, match=r"down_blocks.0.attn.to_q: no recorded inputs under \['style'\]"):
        solve_layer(f, {"subject": X["subject"].T @ X["subject"]}, 0.01, where="down_blocks.0.attn.to_q")
    bad = {k: x.T @ x for k, x in X.items()}
    bad["style"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="to_v:.*(non-finite|no effect)"):
        solve_layer(f, bad, 0.01, where="to_v")
    one = solve_layer({"subject": f["subject"]}, {}, 0.01)  # adapted by one LoRA: nothing to merge
    assert torch.equal(one["subject"], torch.ones(6))


def test_closed_form_merge_on_the_miniature_beats_the_direct_merge_held_out_and_exports(
        tmp_path, base_cfg, trained, subject_images, style_images, unet_probe):
    pipe = load_base_pipeline(base_cfg)
    inputs = {"subject": encode_concept(pipe, subject_images, SUBJECT_PROMPT),
              "style": encode_concept(pipe, style_images, STYLE_PROMPT)}
    cfg = MergeConfig(solver="closed_form", closed_form_draws=4, heldout_draws=8, overlap="dot")
    result = ziplora_merge(pipe.unet, trained["factors"], inputs, cfg, training_scheduler(pipe), progress=False)
    assert set(result.mergers) == {f"{p}.{n}" for n, f in trained["factors"].items() for p in f}
    assert all(torch.isfinite(m).all() for m in result.mergers.values())
    h0, h1 = result.heldout_initial, result.heldout_final  # draws from another seed: a diagnostic, not a verdict
    assert h1["recon_subject"] + h1["recon_style"] < h0["recon_subject"] + h0["recon_style"]
    assert not any(type(m).__name__ == "ZipLoRALinear" for m in pipe.unet.modules())  # the UNet is restored
    merged = merged_factors(trained["factors"], result.mergers)
    path = tmp_path / "closed_form.safetensors"
    LoraSafetensorsDataset(filepath=str(path)).save(factors_to_lora_file(merged))
    plain = load_base_pipeline(base_cfg)
    before = unet_probe(plain.unet)
    plain.load_lora_weights(str(path), adapter_name="closed_form")
    assert (unet_probe(plain.unet) - before).abs().max() > 1e-5
    layer = next(iter(merged))  # the exported layer's ΔW = Σ_i ΔW_i diag(m_i)
    want = sum(f[layer].delta() * result.mergers[f"{layer}.{n}"] for n, f in trained["factors"].items()
               if layer in f)
    torch.testing.assert_close(merged[layer].delta(), want, atol=1e-5, rtol=1e-5)
