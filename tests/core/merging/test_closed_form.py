"""ZipLoRA in closed form (core/merging/closed_form.py, ours): the per-layer solve against a gradient solution of
the same objective, its errors, and a whole merge on the miniature model exported as a plain-diffusers LoRA."""

from __future__ import annotations

import functools

import pytest
import torch

from ziplora_pipeline.core.diffusion.base_model import load_base_pipeline
from ziplora_pipeline.core.diffusion.sdxl import encode_concept, training_scheduler
from ziplora_pipeline.core.lora.factors import LoraFactors
from ziplora_pipeline.core.merging.closed_form import (ConceptStats, _Recorder, descend_layers, layer_objective,
                                                       layer_quadratic, solve_all, solve_layer)
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
    counts = {}
    solved = solve_layer(f, {k: x.T @ x for k, x in X.items()}, lam, "dot", ridge=0.0, counts=counts)
    assert counts["kink"] == 0  # one Cholesky solve, no eigendecomposition
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
    counts = {}
    solved = solve_layer(f, {k: x.T @ x for k, x in X.items()}, lam, "dot", ridge=0.0, counts=counts)
    assert counts["kink"] == 1  # the eigenbasis path
    grad = _gradient_solution(f, X, lam, "dot")
    assert layer_objective(solved, f, X, lam).item() <= layer_objective(grad, f, X, lam).item() + 1e-6


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.1, 0.5, 2.0])
def test_the_kink_by_newton_is_the_kink_of_the_eigenbasis(seed, lam):
    """On the kink, Newton on the multiplier (a Cholesky factorisation per step) and the eigenbasis's secular
    equation give the same mergers, with m_cᵀ m_s = 0."""
    f, X = _layer(seed)
    moments = {k: x.T @ x for k, x in X.items()}
    newton, eigen = (layer_quadratic(f, moments, ridge=0.01) for _ in range(2))
    a, b = newton.dot_minimum(lam), eigen.dot_minimum(lam, kink="eigen")
    if not newton.on_kink:
        pytest.skip("a convex piece holds this minimum")
    assert not newton.eigendecomposed and eigen.eigendecomposed
    torch.testing.assert_close(a, b, atol=1e-8, rtol=0)
    assert abs(float(a[newton.bc] @ a[newton.bs])) < 1e-10


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_schur_complement_solves_the_whole_system(seed, dtype):
    """Every member of the family (P + ν/2 J) m = r solved through the style block's Schur complement (ours) is the
    2n × 2n system's solution, and it reports "not positive definite" exactly where the whole matrix is not."""
    f, X = _layer(seed)
    q = layer_quadratic(f, {k: x.T @ x for k, x in X.items()}, ridge=0.01, dtype=dtype)
    n = q.P.shape[0] // 2
    J = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    J[:n, n:] = J[n:, :n] = torch.eye(n, dtype=torch.float64)
    P = q.P.double()
    lowest = float(torch.linalg.eigvalsh(torch.linalg.solve(torch.linalg.cholesky(P), J) @
                                         torch.linalg.inv(torch.linalg.cholesky(P)).T).min())
    edge = -2 / lowest  # P + ν/2 J stops being positive definite at ν = −2/μ_min (> 0)
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for nu in (0.0, 0.5 * edge, -0.3 * edge, 0.99 * edge):
        m = q.solve(nu)
        want = torch.linalg.solve(P + nu / 2 * J, q.r.double())
        torch.testing.assert_close(m.double(), want, atol=tol * float(want.abs().max()), rtol=0)
    assert q.solve(1.01 * edge) is None and q.factor(1.5 * edge) is None


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.01, 0.5])
def test_non_quadratic_overlap_is_refined_on_the_recorded_statistics(seed, lam):
    """The cosine form (not quadratic): L-BFGS on the recorded statistics from the dot form's exact point and the
    reconstruction minimiser is no worse than L-BFGS on the explicit residuals from the all-ones start, nor than
    the dot form's minimiser scored on the cosine objective."""
    f, X = _layer(seed)
    moments = {k: x.T @ x for k, x in X.items()}
    cosine = solve_layer(f, moments, lam, "cosine", ridge=0.0)
    at = lambda m: layer_objective(m, f, X, lam, "cosine").item()  # noqa: E731
    reference = min(at(_gradient_solution(f, X, lam, "cosine")), at(solve_layer(f, moments, lam, "dot", ridge=0.0)))
    assert at(cosine) <= reference + 1e-5  # the mergers are returned in fp32


def test_cosine_leaves_the_kink_where_that_is_lower():
    """Where the dot form's minimum is on the kink but the weaker cosine penalty is not (seed 3, λ = 0.01: 0.8827
    vs 0.8839 measured), the cosine solve does not stop at the dot form's point."""
    f, X = _layer(3)
    moments = {k: x.T @ x for k, x in X.items()}
    at = lambda m: layer_objective(m, f, X, 0.01, "cosine").item()  # noqa: E731
    assert at(solve_layer(f, moments, 0.01, "cosine", ridge=0.0)) < at(solve_layer(f, moments, 0.01, "dot",
                                                                                    ridge=0.0)) - 1e-4


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


class _Block(torch.nn.Module):
    """An attention block's reads: q, k, v on the hidden states, k2/v2 on a context tensor, out on q's output."""

    def __init__(self, n=5):
        super().__init__()
        self.q, self.k, self.v, self.out = (torch.nn.Linear(n, n) for _ in range(4))
        self.k2, self.v2 = torch.nn.Linear(3, n), torch.nn.Linear(3, n)

    def forward(self, h, ctx):
        return self.out(self.q(h) + self.k(h) + self.v(h)), self.k2(ctx) + self.v2(ctx)


def test_layers_reading_the_same_tensor_share_one_second_moment_matrix():
    torch.manual_seed(0)
    block = _Block()
    stats = ConceptStats()
    recorder = _Recorder(stats)
    recorder.attach({name: getattr(block, name) for name in ("q", "k", "v", "out", "k2", "v2")})
    recorder.recording = True
    hs, ctxs = [], []
    for _ in range(3):  # three forwards: the groups stay the same, the sums grow
        h, ctx = torch.randn(2, 7, 5), torch.randn(2, 4, 3)
        block(h, ctx)
        hs.append(h.reshape(-1, 5))
        ctxs.append(ctx.reshape(-1, 3))
    recorder.detach()
    assert stats.group_of == {"q": "q", "k": "q", "v": "q", "out": "out", "k2": "k2", "v2": "k2"}
    assert sorted(stats.moments) == ["k2", "out", "q"] and stats.rows == {"q": 42, "out": 42, "k2": 24}
    H, C = torch.cat(hs).double(), torch.cat(ctxs).double()
    torch.testing.assert_close(stats.of("v"), H.T @ H)
    torch.testing.assert_close(stats.of("v2"), C.T @ C)
    block(torch.randn(1, 2, 5), torch.randn(1, 2, 3))  # detached: nothing more is recorded
    assert stats.rows["q"] == 42
    back = ConceptStats.from_tensors(stats.to_tensors())
    assert back.group_of["k"] == back.group_of["q"] != back.group_of["out"] and len(back.moments) == 3
    assert all(torch.equal(back.of(p), stats.of(p)) for p in stats.group_of)
    with pytest.raises(ValueError, match="in.safetensors: layers point at statistics"):
        ConceptStats.from_tensors({"group.q": torch.tensor(3)}, "in.safetensors")


def test_the_method_solved_from_each_concepts_own_statistics_equals_the_pair_solver(trained, base_cfg):
    """The statistics a concept records alone (the input_statistics node; the grid's per-concept cache) are the
    ones the merge's closed-form solver records with both LoRAs attached: the same mergers to fp32 rounding."""
    pipe = load_base_pipeline(base_cfg)
    cfg = MergeConfig(solver="closed_form", closed_form_draws=4, closed_form_batch_size=4, heldout_draws=2,
                      overlap="dot")
    pair = ziplora_merge(pipe.unet, trained["factors"], trained["inputs"], cfg, training_scheduler(pipe),
                         progress=False)
    stats = {n: ConceptStats(dict(s.moments), dict(s.rows), dict(s.group_of)) for n, s in trained["statistics"].items()}
    alone = solve_all(trained["factors"], stats, cfg.lambda_overlap, "dot", True, cfg.closed_form_ridge)
    assert set(alone) == set(pair.mergers)
    assert not any(s.moments for s in stats.values())  # released layer by layer
    worst = max((alone[k] - pair.mergers[k]).abs().max().item() for k in alone)
    assert worst < 1e-3
    assert trained["costs"]["ziplora_closed_form"]["merge_seconds"] > 0


def test_refine_steps_start_the_optimiser_from_the_closed_form(trained, base_cfg, subject_images, style_images):
    """The hybrid (ours): ``refine_steps`` UNet-level optimiser steps from the closed-form mergers; 0 steps of
    refinement leave them as solved, a few steps move them."""
    import dataclasses

    from ziplora_pipeline.core.merging.ziplora_closed_form import ZipLoraClosedForm, ZipLoraClosedFormOptions

    ctx = dataclasses.replace(trained["ctx"], load_pipeline=lambda: load_base_pipeline(base_cfg),
                              concepts={"subject": (subject_images, SUBJECT_PROMPT), "style": (style_images, STYLE_PROMPT)},
                              merge_config=MergeConfig(heldout_draws=2))
    plain = ZipLoraClosedForm("cf", ZipLoraClosedFormOptions())
    hybrid = ZipLoraClosedForm("cf3", ZipLoraClosedFormOptions(refine_steps=3))
    (lora0, cost0), (lora3, cost3) = plain.build(ctx), hybrid.build(ctx)
    assert "refine_seconds" in cost3 and cost3["merge_seconds"] > cost0["merge_seconds"]
    diff = max((lora3.state_dict[k].float() - lora0.state_dict[k].float()).abs().max().item()
               for k in lora0.state_dict if "lora_A" in k)
    assert diff > 1e-6  # the optimiser moved the mergers (folded into A)
    with pytest.raises(ValueError, match="refine_steps 3.*needs the base pipeline"):
        hybrid.build(trained["ctx"])


@pytest.mark.parametrize("form", ["dot", "cosine"])
def test_local_steps_are_adam_on_the_explicit_layer_objective_one_per_layer(form):
    """``local_steps`` (ours): Adam from all ones on each layer's recorded objective, layers of one size stepped as
    one batch, equals Adam on the explicit residuals (layer_objective) of each layer alone."""
    layers = [_layer(seed) for seed in range(3)] + [_layer(7, n=4)]
    moments = [{k: x.T @ x for k, x in X.items()} for _, X in layers]
    quads = [layer_quadratic(f, C, ridge=0.0) for (f, _), C in zip(layers, moments)]
    batched = descend_layers(quads, 0.01, form, 30, 0.01)
    for (f, X), q, got in zip(layers, quads, batched):
        n = X["subject"].shape[1]
        m = {k: torch.ones(n, dtype=torch.float64, requires_grad=True) for k in f}
        opt = torch.optim.Adam(list(m.values()), lr=0.01)
        for _ in range(30):
            opt.zero_grad()
            layer_objective(m, f, X, 0.01, form).backward()
            opt.step()
        torch.testing.assert_close(got[q.bc], m["subject"].detach(), atol=1e-9, rtol=0)
        torch.testing.assert_close(got[q.bs], m["style"].detach(), atol=1e-9, rtol=0)
    # solve_all gives the same through the method's path
    via_all = solve_all({k: {f"l{i}": f[k] for i, (f, _) in enumerate(layers)} for k in ("subject", "style")},
                        {k: ConceptStats(moments={f"l{i}": C[k] for i, C in enumerate(moments)},
                                         group_of={f"l{i}": f"l{i}" for i in range(len(layers))})
                         for k in ("subject", "style")}, 0.01, form, ridge=0.0, local_steps=30)
    torch.testing.assert_close(via_all["l3.style"], batched[3][quads[3].bs].float())


def test_prompt_ridge_applies_to_the_layers_reading_the_prompt_only():
    """``prompt_ridge`` (ours): the cross-attention to_k / to_v layers take it, every other layer ``ridge``."""
    (f1, X1), (f2, X2) = _layer(0), _layer(1)
    paths = {"up.attn2.to_k": f1, "up.attn1.to_q": f2}
    moments = {"up.attn2.to_k": {k: x.T @ x for k, x in X1.items()},
               "up.attn1.to_q": {k: x.T @ x for k, x in X2.items()}}
    stats = {k: ConceptStats(moments={p: C[k] for p, C in moments.items()}, group_of={p: p for p in paths})
             for k in ("subject", "style")}
    got = solve_all({k: {p: f[k] for p, f in paths.items()} for k in ("subject", "style")}, stats, 0.001,
                    ridge=0.0, prompt_ridge=1e8)
    for k in ("subject", "style"):  # an overwhelming ridge holds the prompt layer at the direct merge
        torch.testing.assert_close(got[f"up.attn2.to_k.{k}"], torch.ones(6), atol=1e-5, rtol=0)
    plain = solve_layer(f2, moments["up.attn1.to_q"], 0.001, ridge=0.0)
    torch.testing.assert_close(got["up.attn1.to_q.subject"], plain["subject"])


@pytest.mark.parametrize("seed", range(3))
def test_mean_ridge_is_a_penalty_on_each_adapters_mean_merger(seed):
    """``mean_ridge`` (ours): Q gains ρ̄ · scale · n · (mean(m_i) − 1)² per adapter (scale: the ridge's unit, the
    system's mean diagonal), exactly; a stiff one holds each adapter's mean merger at 1 while the mergers still move
    apart column by column, where the plain minimiser shrinks them."""
    f, X = _layer(seed)
    C = {k: x.T @ x for k, x in X.items()}
    plain, penal = layer_quadratic(f, C, ridge=0.1), layer_quadratic(f, C, ridge=0.1, mean_ridge=7.0)
    scale = plain.rho / 0.1
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        m = torch.rand(12, generator=g, dtype=torch.float64) * 2
        extra = sum(7.0 * scale * 6 * (float(m[b].mean()) - 1) ** 2 for b in (plain.bc, plain.bs))
        got = float(penal.objective(m, 0.0, "dot") - plain.objective(m, 0.0, "dot"))
        assert abs(got - extra) < 1e-9 * max(1.0, extra)
    free = solve_layer(f, C, 0.001, ridge=0.01)
    held = solve_layer(f, C, 0.001, ridge=0.01, mean_ridge=1e7)
    for k in f:
        assert abs(float(held[k].mean()) - 1) < 1e-4 < abs(float(free[k].mean()) - 1)
        assert float((held[k] - 1).abs().max()) > 0.05  # not held at the direct merge: only its mean is


def _weights(seed: int, out: int = 5):
    g = torch.Generator().manual_seed(100 + seed)
    Z = {k: torch.randn(out, out + 2, generator=g, dtype=torch.float64) for k in ("subject", "style")}
    return {k: z @ z.T for k, z in Z.items()}  # (out, out) positive definite, one per concept


def test_output_weighting_is_the_weighted_layer_objective():
    """``outputs`` (ours): each concept's term becomes Σ_x R_k(x)ᵀ W_k R_k(x) (its error weighted by its own model's
    output weight), normalised by the weighted own effect; W = c I is the unweighted objective."""
    f, X = _layer(3)
    C = {k: x.T @ x for k, x in X.items()}
    W = _weights(3)
    quad = layer_quadratic(f, C, ridge=0.0, outputs=W)
    delta = {k: v.scale * (v.B @ v.A) for k, v in f.items()}
    g = torch.Generator().manual_seed(5)
    m = {k: torch.rand(6, generator=g, dtype=torch.float64) * 2 for k in f}
    expected = 0.0
    for k, x in X.items():
        merged = sum((x * m[i]) @ delta[i].T for i in f)
        R = merged - x @ delta[k].T  # (N, out)
        own = x @ delta[k].T
        expected += float(((R @ W[k]) * R).sum() / ((own @ W[k]) * own).sum())
    got = float(quad.objective(torch.cat([m["subject"], m["style"]]), 0.0, "dot"))
    assert abs(got - expected) < 1e-9 * max(1.0, abs(expected))
    eye = {k: 7.0 * torch.eye(5, dtype=torch.float64) for k in f}
    torch.testing.assert_close(solve_layer(f, C, 0.01, ridge=0.1, outputs=eye)["style"],
                               solve_layer(f, C, 0.01, ridge=0.1)["style"])


def test_model_wide_output_weighting_holds_a_layer_the_output_hardly_sees_at_the_direct_merge():
    """``output_weighting: model`` (ours): normalised once for the UNet, a layer whose output weight is 1e-8 of the
    other's is held at m = 1 by the ridge while the other is solved; ``layer`` normalises the scale away. (λ = 0:
    the overlap term is not scaled, so in the model-wide form it weighs on each layer as in the UNet-level Eq. 3.)"""
    (f1, X1), (f2, X2) = _layer(0), _layer(1)
    paths = {"a": f1, "b": f2}
    moments = {"a": {k: x.T @ x for k, x in X1.items()}, "b": {k: x.T @ x for k, x in X2.items()}}
    W = {"a": {k: 1e-8 * w for k, w in _weights(0).items()}, "b": _weights(1)}

    def stats():
        return {k: ConceptStats(moments={p: C[k] for p, C in moments.items()}, group_of={p: p for p in paths},
                                rows={p: 40 for p in paths}, outputs={p: W[p][k] for p in paths})
                for k in ("subject", "style")}

    loras = {k: {p: f[k] for p, f in paths.items()} for k in ("subject", "style")}
    model = solve_all(loras, stats(), 0.0, ridge=0.1, output_weighting="model")
    layer = solve_all(loras, stats(), 0.0, ridge=0.1, output_weighting="layer")
    for k in ("subject", "style"):
        torch.testing.assert_close(model[f"a.{k}"], torch.ones(6), atol=1e-4, rtol=0)
        assert (model[f"b.{k}"] - 1).abs().max() > 0.05
        assert (layer[f"a.{k}"] - 1).abs().max() > 0.05  # scale-free per layer: solved like any layer
    unscaled = solve_layer(f1, moments["a"], 0.0, ridge=0.1, outputs=_weights(0))
    torch.testing.assert_close(layer["a.style"], unscaled["style"])
    with pytest.raises(ValueError, match="closed_form_output_draws"):
        solve_all(loras, {k: ConceptStats(moments={p: C[k] for p, C in moments.items()},
                                          group_of={p: p for p in paths}) for k in ("subject", "style")},
                  0.001, output_weighting="layer")


def test_output_weights_are_recorded_per_adapted_layer_and_saved(trained, base_cfg):
    """``record_output_moments`` (ours): a forward and a backward per draw give every adapted layer a symmetric
    positive semi-definite Σ g gᵀ (out, out), saved with the statistics; the method solves from them."""
    import dataclasses

    from ziplora_pipeline.core.merging.closed_form import record_alone
    from ziplora_pipeline.core.merging.optimise import default_scheduler
    from ziplora_pipeline.core.merging.ziplora_closed_form import ZipLoraClosedForm, ZipLoraClosedFormOptions

    pipe = load_base_pipeline(base_cfg)
    stats = {n: record_alone(pipe.unet, trained["factors"][n], n, trained["inputs"][n], default_scheduler(), 2,
                             (0, 1000), 2, 0, output_draws=2) for n in trained["factors"]}
    for n, s in stats.items():
        assert set(s.outputs) == set(trained["factors"][n])
        for path, G in s.outputs.items():
            assert G.shape[0] == G.shape[1] == trained["factors"][n][path].B.shape[0]
            torch.testing.assert_close(G, G.T)
            assert float(torch.linalg.eigvalsh(G).min()) > -1e-9 * float(G.diagonal().max())
            assert float(G.diagonal().sum()) > 0
        back = ConceptStats.from_tensors(s.to_tensors())
        assert all(torch.equal(back.outputs[p], s.outputs[p]) for p in s.outputs)
    ctx = dataclasses.replace(trained["ctx"], statistics=stats)
    lora, cost = ZipLoraClosedForm("cf_w", ZipLoraClosedFormOptions(output_weighting="model")).build(ctx)
    assert cost["merge_seconds"] > 0 and lora.state_dict
    assert all(s.outputs for s in stats.values())  # the method solved from copies
    with pytest.raises(ValueError, match="closed_form_output_draws"):
        ZipLoraClosedForm("cf_w", ZipLoraClosedFormOptions(output_weighting="layer")).build(trained["ctx"])


def test_output_weights_are_the_same_under_gradient_checkpointing(trained, base_cfg):
    """A UNet a training left with gradient checkpointing on (conf/sdxl's merges use it): the output weights recorded
    through its recomputation equal those of the UNet without it (each layer's output gradient counted once)."""
    from ziplora_pipeline.core.merging.closed_form import record_alone
    from ziplora_pipeline.core.merging.optimise import default_scheduler

    pipe = load_base_pipeline(base_cfg)
    block = next(iter(trained["factors"]["subject"])).rsplit(".", 1)[0]  # an attention module holding adapted layers
    calls = {False: 0, True: 0}
    got = {}
    for checkpointing in (False, True):
        pipe.unet.enable_gradient_checkpointing() if checkpointing else pipe.unet.disable_gradient_checkpointing()
        hook = pipe.unet.get_submodule(block).register_forward_hook(
            lambda *_, c=checkpointing: calls.__setitem__(c, calls[c] + 1))
        got[checkpointing] = record_alone(pipe.unet, trained["factors"]["subject"], "subject",
                                          trained["inputs"]["subject"], default_scheduler(), 2, (0, 1000), 2, 0,
                                          output_draws=2)
        hook.remove()
    assert calls[True] > calls[False]  # the backward passes recomputed the block: checkpointing was in effect
    assert set(got[True].outputs) == set(got[False].outputs)
    # float32 recomputation: equal to rounding (measured ≤ 3e-5 of the matrix's norm, 4e-3 on a to_q whose output
    # the UNet hardly sees: entries ~1e-12); a gradient counted twice or missed would be off by 100 %
    for path, W in got[False].outputs.items():
        assert float((got[True].outputs[path] - W).norm() / W.norm()) < 1e-2, path


@pytest.mark.parametrize("lam, kinks", [(0.01, 0), (5.0, 2), (20.0, 4)])
def test_float32_systems_give_the_float64_mergers_where_the_ridge_conditions_them(lam, kinks):
    """``precision: float32`` (ours): at the entry's ridge (3) the float32 solve, on the kink or off it, is the
    float64 one to 1e-4; the precision is checked by name."""
    layers = {f"l{i}": _layer(i) for i in range(4)}
    loras = {k: {p: f[k] for p, (f, _) in layers.items()} for k in ("subject", "style")}

    def stats():
        return {k: ConceptStats(moments={p: X[k].T @ X[k] for p, (_, X) in layers.items()},
                                group_of={p: p for p in layers}) for k in ("subject", "style")}

    c64, c32 = {}, {}
    f64 = solve_all(loras, stats(), lam, ridge=3.0, counts=c64)
    f32 = solve_all(loras, stats(), lam, ridge=3.0, counts=c32, precision="float32")
    assert c64["kink"] == c32["kink"] == kinks
    for k in f64:
        torch.testing.assert_close(f32[k], f64[k], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="precision must be float64 or float32"):
        solve_all(loras, stats(), lam, precision="half")


def test_a_float32_kink_newton_cannot_resolve_is_solved_in_float64_without_a_float32_eigenbasis(monkeypatch):
    """Where Newton on the kink's multiplier does not converge in float32, the layer goes to float64 at once (its
    eigenbasis fallback there), not through a float32 eigendecomposition that would be thrown away."""
    from ziplora_pipeline.core.merging import closed_form

    f, X = _layer(2)
    C = {k: x.T @ x for k, x in X.items()}
    expected = solve_layer(f, C, 20.0, ridge=3.0)  # on the kink (float64, Newton)
    newton = closed_form._Quadratic._kink_by_newton
    eigen_dtypes = []
    eigen = closed_form._Quadratic._eigen.func

    def float32_fails(self, lo, hi, iterations):
        return None if self.P.dtype == torch.float32 else newton(self, lo, hi, iterations)

    def recorded_eigen(self):
        eigen_dtypes.append(self.P.dtype)
        return eigen(self)

    monkeypatch.setattr(closed_form._Quadratic, "_kink_by_newton", float32_fails)
    monkeypatch.setattr(closed_form._Quadratic, "_eigen", functools.cached_property(recorded_eigen))
    closed_form._Quadratic._eigen.__set_name__(closed_form._Quadratic, "_eigen")
    got = solve_layer(f, C, 20.0, ridge=3.0, dtype=torch.float32)
    assert eigen_dtypes == []  # float64's Newton converged; float32's eigenbasis was never formed
    for k in f:
        torch.testing.assert_close(got[k], expected[k])


def test_float32_statistics_are_the_float64_ones_rounded_and_solve_alike(trained, base_cfg, caplog):
    """``merge.closed_form_statistics_precision: float32`` (ours): the matrices are summed in float64 and stored in
    float32 (half the memory and file), equal to the float64 ones to float32 rounding; the entry's default solve
    (ρ 3, float32) from them gives the same mergers to 1e-4, and a float64 solve from them says what bounds it."""
    import dataclasses
    import logging

    from ziplora_pipeline.core.merging.closed_form import record_alone
    from ziplora_pipeline.core.merging.optimise import default_scheduler
    from ziplora_pipeline.core.merging.ziplora_closed_form import ZipLoraClosedForm, ZipLoraClosedFormOptions

    pipe = load_base_pipeline(base_cfg)
    stats = {p: {n: record_alone(pipe.unet, trained["factors"][n], n, trained["inputs"][n], default_scheduler(), 2,
                                 (0, 1000), 2, 0, output_draws=1, precision=p) for n in trained["factors"]}
             for p in ("float32", "float64")}
    for n in trained["factors"]:
        for g, C in stats["float32"][n].moments.items():
            assert C.dtype == torch.float32
            torch.testing.assert_close(C.double(), stats["float64"][n].moments[g], rtol=1e-6,
                                       atol=1e-6 * float(C.abs().max()))
        assert stats["float32"][n].outputs and all(W.dtype == torch.float32 for W in stats["float32"][n].outputs.values())
        back = ConceptStats.from_tensors(stats["float32"][n].to_tensors())
        assert all(C.dtype == torch.float32 for C in back.moments.values())
    solved = {p: solve_all(trained["factors"], {n: s.copy() for n, s in stats[p].items()}, 0.01, "dot", True, 3.0,
                           precision="float32") for p in stats}
    assert max((solved["float32"][k] - solved["float64"][k]).abs().max().item() for k in solved["float64"]) < 1e-4
    ctx = dataclasses.replace(trained["ctx"], statistics=stats["float32"])
    with caplog.at_level(logging.WARNING):
        ZipLoraClosedForm("cf64", ZipLoraClosedFormOptions(precision="float64")).build(ctx)
    assert "float32 statistics" in caplog.text and "closed_form_statistics_precision" in caplog.text
    with pytest.raises(ValueError, match="precision must be float64 or float32"):
        record_alone(pipe.unet, trained["factors"]["subject"], "subject", trained["inputs"]["subject"],
                     default_scheduler(), 1, (0, 1000), 1, 0, precision="bf16")
