"""ZipLoRA's mergers in closed form, layer by layer, from recorded input statistics (ours; issue 21).

Eq. 3 asks the merged model to reproduce each LoRA's output on its own concept. Asked per adapted layer
instead of at the UNet's output it is a least-squares problem in the mergers. For one layer with
ΔW_c, ΔW_s (out, n), mergers m_c, m_s (n,) and the subject's layer inputs x, the residual of the merged
layer against (D ⊕ L_c) is

    r_c(x) = ΔW_c ((m_c − 1) ⊙ x) + ΔW_s (m_s ⊙ x)

and Σ_x ‖r_c(x)‖² = uᵀ K_c u with u = [m_c − 1; m_s] and K_c = [[G_cc ∘ C_c, G_cs ∘ C_c], [G_sc ∘ C_c,
G_ss ∘ C_c]], G_ab = ΔW_aᵀ ΔW_b (n, n) (= A_aᵀ (s_a s_b B_aᵀ B_b) A_b in low rank) and C_c = Σ_x x xᵀ the
layer's input second moments under the subject's model D ⊕ L_c (the same for the style, with C_s). Each
term is divided by the LoRA's own effect on those inputs, e_i = Σ_x ‖ΔW_i x‖² = 1ᵀ (G_ii ∘ C_i) 1, as
``normalize_recon`` divides the UNet-level terms (so the layer's objective is "fraction of each LoRA's effect
lost", whatever the layer's scale). With the ``dot`` overlap λ m_cᵀ m_s the objective is quadratic and its
minimiser is one symmetric 2n × 2n solve:

    (K_c / e_c + K_s / e_s + λ/2 J + ρ I) m = K_c e_1 / e_c + K_s e_2 / e_s + ρ 1,   J = [[0, I], [I, 0]]

(e_1 = [1; 0], e_2 = [0; 1]; ρ ‖m − 1‖² a ridge that keeps the mergers of directions no input reaches at the
all-ones start), exact where that system is positive definite and the solution keeps m_cᵀ m_s ≥ 0. The paper's
term is |m_cᵀ m_s|: the mirror solve (−λ) and, between them, the kink m_cᵀ m_s = 0 found by bisection on the
multiplier are the other candidates (``_dot_minimum``). For the overlap forms that are not quadratic
(``cosine``, ``mean_product``), and where no piece is convex: L-BFGS on the same recorded quadratic plus the
penalty from several starts (the reconstruction terms' own minimiser, the all-ones start, the dot form's
minimiser), the lowest kept, still without a UNet pass. The closest published relative is RegMean (Jin et al., ICLR 2023),
which merges linear layers in closed form from their input Gram matrices.

Statistics come from ``draws`` forward passes of each concept's own model (mergers one-hot) on its own
noisy latents, accumulated in fp64 per adapted layer by forward pre-hooks.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from ..lora.factors import LoraFactors
from .ziplora_layer import overlap_terms

logger = logging.getLogger(__name__)


def layer_inputs(x: torch.Tensor, conv: bool) -> torch.Tensor:
    """A layer's input as rows of vectors (N, n): a Linear's (..., n), a 1×1 convolution's (N, n, H, W) per pixel."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if conv else x.reshape(-1, x.shape[-1])


class InputStats:
    """Σ x xᵀ (n, n) in fp64 and the row count, per adapted layer and concept, from forward pre-hooks."""

    def __init__(self):
        self.second_moments: dict[str, dict[str, torch.Tensor]] = {}
        self.rows: dict[str, dict[str, int]] = {}
        self._handles: list = []
        self.concept: str | None = None

    def attach(self, modules: dict[str, torch.nn.Module]) -> None:
        """Hook every ``{path: layer}``; inputs are recorded under ``self.concept`` while it is set."""
        for path, module in modules.items():
            conv = isinstance(getattr(module, "base", module), torch.nn.Conv2d)

            def hook(mod, args, path=path, conv=conv):
                if self.concept is None:
                    return
                rows = layer_inputs(args[0].detach(), conv).double()
                moments = self.second_moments.setdefault(path, {})
                moments[self.concept] = moments.get(self.concept, 0) + rows.T @ rows
                counts = self.rows.setdefault(path, {})
                counts[self.concept] = counts.get(self.concept, 0) + rows.shape[0]

            self._handles.append(module.register_forward_pre_hook(hook))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _delta_gram(fa: LoraFactors, fb: LoraFactors) -> torch.Tensor:
    """G_ab = ΔW_aᵀ ΔW_b (n, n) from the factors: A_aᵀ (s_a s_b B_aᵀ B_b) A_b, never forming ΔW."""
    Aa, Ba, Ab, Bb = (t.double() for t in (fa.A, fa.B, fb.A, fb.B))
    return Aa.T @ ((fa.scale * fb.scale) * (Ba.T @ Bb)) @ Ab


def _overlap(mc: torch.Tensor, ms: torch.Tensor, form: str) -> torch.Tensor:
    """The overlap penalty of one layer: ``ziplora_layer``'s per-pair terms, for one pair."""
    return overlap_terms(mc[None], ms[None], form)[0]


def solve_layer(factors: dict[str, LoraFactors], moments: dict[str, torch.Tensor], lambda_overlap: float,
                overlap: str = "dot", normalize: bool = True, ridge: float = 1e-6, refine_steps: int = 50,
                where: str = "layer") -> dict[str, torch.Tensor]:
    """{"subject" | "style": m (n,)} minimising the layer's Eq. 3 (module docstring) for two adapters.

    Args:
        factors: {"subject": f_c, "style": f_s} of this layer; a layer one LoRA alone adapts keeps m = 1.
        moments: {"subject": C_c, "style": C_s} (n, n), its inputs' Σ x xᵀ under each concept's model.
        ridge: ρ relative to the mean diagonal of the system (a singular C is named in a warning).
    """
    names = list(factors)
    if len(names) == 1:
        return {names[0]: torch.ones(factors[names[0]].A.shape[1])}
    if len(names) != 2:
        raise ValueError(f"{where}: the closed-form merge takes two LoRAs, got {names}.")
    c, s = names
    missing = [n for n in names if n not in moments]
    if missing:
        raise ValueError(f"{where}: no recorded inputs under {missing}: the layer was never reached by the "
                         "concepts' forward passes, so its mergers have no statistics to be solved from.")
    G = {(a, b): _delta_gram(factors[a], factors[b]) for a in names for b in names}
    n = G[(c, c)].shape[0]
    system = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    rhs = torch.zeros(2 * n, dtype=torch.float64)
    blocks = {c: slice(0, n), s: slice(n, 2 * n)}
    quadratics = []
    for concept in names:
        C = moments[concept].double()
        K = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
        for a in names:
            for b in names:
                K[blocks[a], blocks[b]] = G[(a, b)] * C
        effect = float(G[(concept, concept)].mul(C).sum()) if normalize else 1.0  # Σ_x ‖ΔW_i x‖²
        if not math.isfinite(effect) or effect <= 0:
            raise ValueError(f"{where}: the {concept} LoRA has no effect on its recorded inputs (Σ‖ΔW x‖² = "
                             f"{effect}); the statistics or the LoRA are degenerate.")
        target = torch.zeros(2 * n, dtype=torch.float64)
        target[blocks[concept]] = 1.0  # (D ⊕ L_i): its own merger 1, the other's 0
        system += K / effect
        rhs += K @ target / effect
        quadratics.append((K / effect, target))
    scale = float(system.diagonal().mean()) or 1.0
    eigenvalues = torch.linalg.eigvalsh(system)  # ascending; the system is symmetric positive semi-definite
    tolerance = float(eigenvalues.abs().max()) * 2 * n * torch.finfo(torch.float64).eps  # matrix_rank's default
    rank = int((eigenvalues.abs() > tolerance).sum())
    if rank < 2 * n:
        logger.warning("%s: singular input statistics (rank %d of %d); the ridge (%.1e × mean diagonal) keeps the "
                       "mergers of the directions without data at 1", where, rank, 2 * n, ridge)
    # the ridge ρ ‖m − 1‖² pulls directions the statistics do not see back to the all-ones start (the direct merge)
    eye, ones = torch.eye(2 * n, dtype=torch.float64), torch.ones(2 * n, dtype=torch.float64)
    rho = ridge * scale
    m0 = torch.linalg.solve(system + rho * eye, rhs + rho * ones)  # the reconstruction terms alone: convex
    if not torch.isfinite(m0).all():
        raise ValueError(f"{where}: the closed-form solve gave non-finite mergers (statistics with NaN/inf?).")
    m = m0
    if lambda_overlap > 0 and overlap == "dot":
        m = _dot_minimum(system, rhs + rho * ones, rho, float(eigenvalues[0]), quadratics, lambda_overlap,
                         blocks[c], blocks[s])
        if m is None:  # no positive-definite piece: not convex here; L-BFGS on the statistics
            m = _refine(m0, quadratics, lambda_overlap, overlap, rho, blocks[c], blocks[s], refine_steps)
    elif lambda_overlap > 0:  # not quadratic (and not convex): local searches from three starts, the best kept
        dot = _dot_minimum(system, rhs + rho * ones, rho, float(eigenvalues[0]), quadratics, lambda_overlap,
                           blocks[c], blocks[s])
        starts = [ones] + ([dot] if dot is not None else [m0])
        m = min((_refine(x, quadratics, lambda_overlap, overlap, rho, blocks[c], blocks[s], refine_steps)
                 for x in starts),
                key=lambda x: float(_objective(x, quadratics, lambda_overlap, overlap, rho, blocks[c], blocks[s])))
    return {c: m[blocks[c]].float(), s: m[blocks[s]].float()}


def _objective(m, quadratics, lam, form, rho, bc, bs) -> torch.Tensor:
    return (sum((m - t) @ K @ (m - t) for K, t in quadratics) + lam * _overlap(m[bc], m[bs], form)
            + rho * (m - 1).pow(2).sum())


def _dot_minimum(system, rhs, rho, lowest, quadratics, lam, bc, bs, bisections: int = 30) -> torch.Tensor | None:
    """The minimiser of the quadratic + λ |m_cᵀ m_s| (+ ρ ‖m − 1‖²), exactly, where each piece is convex.

    KKT: ∇Q + ν J m = 0 with ν = λ sign(d) off the kink d = m_cᵀ m_s = 0, ν ∈ [−λ, λ] on it. So the candidates
    are the solutions m(ν) = (S + ν/2 J + ρ I)⁻¹ r at ν = +λ (valid if d ≥ 0) and ν = −λ (valid if d ≤ 0), and
    on the kink the ν where d(m(ν)) = 0 (bisection over the ν that keep the system positive definite, where
    m(ν) minimises Q + ν d); the lowest objective among them. None if there is no candidate (the multiplier the
    kink needs makes the system indefinite: the problem is not convex there). ``lowest``: λ_min(S).
    """
    n2 = system.shape[0]
    n = n2 // 2
    eye = torch.eye(n2, dtype=torch.float64)
    J = torch.zeros(n2, n2, dtype=torch.float64)
    J[bc, bs] = eye[:n, :n]
    J[bs, bc] = eye[:n, :n]

    @functools.lru_cache(maxsize=None)  # ±λ are asked for by the pieces and by the kink's bracket
    def at(nu):
        lhs = system + (nu / 2) * J + rho * eye
        if torch.linalg.cholesky_ex(lhs).info != 0:
            return None, None
        m = torch.linalg.solve(lhs, rhs)
        return m, float(m[bc] @ m[bs])

    # S + ν/2 J + ρ I is positive definite iff |ν| / 2 < λ_min(S + ρ I) (J's eigenvalues are ±1)
    limit = 2 * (lowest + rho) * (1 - 1e-9)
    candidates = []
    if lam < limit:
        (mp, dp), (mn, dn) = at(lam), at(-lam)
        if dp >= 0:
            candidates.append(mp)
        if dn <= 0:
            candidates.append(mn)
    edge = min(lam, limit)
    if edge > 0:  # the kink d = 0: d(ν) decreases in ν over the positive-definite range; bisect for its root
        (_, d_lo), (_, d_hi) = at(-edge), at(edge)
        if d_lo is not None and d_hi is not None and d_hi <= 0 <= d_lo:
            lo, hi = -edge, edge
            for _ in range(bisections):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if at(mid)[1] > 0 else (lo, mid)
            candidates.append(at((lo + hi) / 2)[0])
    if lam >= limit:  # a piece is not convex: local searches from the candidates, the reconstruction minimiser, ones
        best = min(candidates, key=lambda m: float(_objective(m, quadratics, lam, "dot", rho, bc, bs)), default=None)
        starts = ([best] if best is not None else []) + [torch.ones(n2, dtype=torch.float64)]
        candidates += [_refine(m, quadratics, lam, "dot", rho, bc, bs) for m in starts]
    if not candidates:
        return None
    return min(candidates, key=lambda m: float(_objective(m, quadratics, lam, "dot", rho, bc, bs)))


def _refine(m0: torch.Tensor, quadratics: list, lam: float, form: str, ridge: float, bc: slice, bs: slice,
            steps: int = 50) -> torch.Tensor:
    """L-BFGS on Σ_i (m − t_i)ᵀ K_i (m − t_i) + λ overlap(m_c, m_s) + ρ ‖m − 1‖², from ``m0`` (the reconstruction
    terms' minimiser): the overlap forms that are not quadratic, and the dot form where its one solve is not a
    minimum. No UNet pass: the recorded statistics are the whole objective."""
    m = m0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([m], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = _objective(m, quadratics, lam, form, ridge, bc, bs)
        loss.backward()
        return loss

    for _ in range(2):  # one L-BFGS restart: its history goes stale near the overlap term's kinks
        opt.step(closure)
    return m.detach()


def layer_objective(m: dict[str, torch.Tensor], factors: dict[str, LoraFactors], inputs: dict[str, torch.Tensor],
                    lambda_overlap: float, overlap: str = "dot", normalize: bool = True) -> torch.Tensor:
    """The same layer objective evaluated on explicit inputs {"subject": X_c (N, n), ...} (for tests and checks):
    Σ_i Σ_x ‖ΔW_m x − ΔW_i x‖² / Σ_x ‖ΔW_i x‖² + λ overlap."""
    delta = {n: (f.scale * (f.B.double() @ f.A.double())) for n, f in factors.items()}
    total = torch.zeros((), dtype=torch.float64)
    for concept, X in inputs.items():
        X = X.double()
        merged = sum(X * m[n].double() @ delta[n].T for n in factors)
        own = X @ delta[concept].T
        effect = own.pow(2).sum() if normalize else 1.0
        total = total + (merged - own).pow(2).sum() / effect
    a, b = (m[n].double() for n in factors)
    return total + lambda_overlap * _overlap(a, b, overlap)


@torch.no_grad()
def record_input_stats(unet, wrappers: dict, names: list[str], inputs: dict, scheduler, draws: int,
                       timestep_range: tuple[int, int], batch_size: int, generator: torch.Generator) -> InputStats:
    """Σ x xᵀ of every adapted layer's input under each concept's own model (its merger 1, the others' 0), on
    ``draws`` (image, noise, t) draws of that concept: forward passes only."""
    from ..diffusion.sdxl import noisy_batch, predict_in_chunks
    from .ziplora_layer import set_mergers

    stats = InputStats()
    stats.attach(wrappers)
    try:
        for name in names:
            x = inputs[name]
            idx = torch.randint(0, x.latent_mean.shape[0], (draws,), generator=generator)
            noisy, _, t = noisy_batch(scheduler, x.sample_latents(idx, generator), generator, timestep_range)
            stats.concept = name
            with set_mergers(wrappers, {name: 1.0}):
                predict_in_chunks(unet, noisy, t, x, batch_size)
            stats.concept = None
    finally:
        stats.detach()
    return stats


@torch.no_grad()
def solve_mergers(wrappers: dict, loras: dict[str, dict[str, LoraFactors]], stats: InputStats, lambda_overlap: float,
                  overlap: str, normalize: bool, ridge: float) -> None:
    """Solve every layer (``solve_layer``) and write its mergers into the wrappers, layer by layer (each layer's
    statistics are released once solved: the peak is one layer's 2n × 2n system beside the statistics)."""
    for path, w in wrappers.items():
        factors = {n: loras[n][path] for n in w.names}
        solved = solve_layer(factors, stats.second_moments.get(path, {}), lambda_overlap, overlap, normalize, ridge,
                             where=path)
        for n, m in solved.items():
            w.mergers[n].copy_(m.to(w.mergers[n].device, w.mergers[n].dtype))
        stats.second_moments.pop(path, None)
