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
all-ones start). The paper's term is |m_cᵀ m_s|, and at the paper's λ the system above is indefinite in nearly
every layer (its smallest eigenvalue is below λ/2), so the minimum lies on the kink m_cᵀ m_s = 0. Both are solved
exactly (``_Quadratic.dot_minimum``): where a convex piece holds the minimum, one solve; on the kink, safeguarded
Newton on the multiplier ν of (P + ν/2 J) m = r, whose root makes m_cᵀ m_s = 0 (7-11 solves per layer). Every solve
of that family shares one precomputed Schur complement, so each costs one n × n factorisation, not a 2n × 2n one
(``_Quadratic._schur``, ours); the 2n × 2n eigenbasis is only the fallback. With a larger ridge (the mergers held
nearer the direct merge) fewer layers reach the kink, and the solve is cheaper. For the overlap forms that are not quadratic
(``cosine``, ``mean_product``): a few L-BFGS iterations on the same recorded statistics from two starts (the dot
form's exact minimiser at the weight that matches the form's penalty, and the reconstruction terms' minimiser),
still without a UNet pass. The closest
published relative is RegMean (Jin et al., ICLR 2023), which merges linear layers in closed form from their
input Gram matrices.

Statistics come from ``draws`` forward passes of each concept's own model (mergers one-hot) on its own
noisy latents, summed in fp64 per distinct layer input by forward pre-hooks and stored in fp64 or fp32
(``ConceptStats``); each layer is solved in fp64 or fp32 (``precision``).
"""

from __future__ import annotations

import functools
import logging
import math
import time
import weakref
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..lora.factors import LoraFactors
from .ziplora_layer import overlap_terms

logger = logging.getLogger(__name__)


PRECISIONS = {"float64": torch.float64, "float32": torch.float32}  # ``precision``: the systems' and solves' dtype
OUTPUT_WEIGHTINGS = ("none", "layer", "model")


def precision_dtype(precision: str, what: str = "precision") -> torch.dtype:
    """``PRECISIONS[precision]``, or a ValueError naming ``what`` and the two choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be float64 or float32, got {precision!r}.")
    return PRECISIONS[precision]


def _accumulate(sums: dict[str, torch.Tensor], key: str, rows: torch.Tensor,
                dtype: torch.dtype = torch.float64) -> None:
    """sums[key] += rowsᵀ rows (rows (N, n) fp64 -> (n, n)): the input statistics' Σ x xᵀ and the output weights'
    Σ g gᵀ. Stored in ``dtype``: float64 in place (no temporary); float32 (ours: half the memory) as each call's
    float64 product rounded once, so the rounding is one float32 ulp per call, not per row."""
    if key in sums and sums[key].dtype == rows.dtype:
        sums[key].addmm_(rows.T, rows)
        return
    gram = rows.T @ rows
    sums[key] = sums[key].add_(gram) if key in sums else gram.to(dtype)


def layer_inputs(x: torch.Tensor, conv: bool) -> torch.Tensor:
    """A layer's input as rows of vectors (N, n): a Linear's (..., n), a 1×1 convolution's (N, n, H, W) per pixel."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if conv else x.reshape(-1, x.shape[-1])


@dataclass
class ConceptStats:
    """One concept's recorded layer inputs: Σ x xᵀ (n, n) per *distinct* input, under its own model (summed in fp64,
    stored in fp64 or, ``merge.closed_form_statistics_precision: float32``, in fp32).

    Layers that read the same tensor share one matrix (``group_of``): an attention block's to_q, to_k and to_v on
    its hidden states, and every cross-attention to_k / to_v on the one prompt embedding (so SDXL stores one
    2048 × 2048 matrix for all of them). A concept's statistics depend only on its LoRA and its draws, not on the
    LoRA it is merged with: the grid records them once per concept.
    """

    moments: dict[str, torch.Tensor] = field(default_factory=dict)  # group -> Σ x xᵀ (n, n)
    rows: dict[str, int] = field(default_factory=dict)  # group -> N, the rows summed
    group_of: dict[str, str] = field(default_factory=dict)  # layer path -> the group it reads
    seconds: float = 0.0  # the forward passes' wall time (the closed-form merge's cost)
    # ours, optional (``record_output_moments``): layer path -> Σ g gᵀ (out, out) (the moments' dtype), g the gradient
    # of a random projection vᵀ ε̂ of the UNet's output (v ~ N(0, I)) at the layer's output: E[g gᵀ] = Jᵀ J, the
    # Gauss-Newton weight of that layer's output in Eq. 3's squared error (one per layer: outputs are never shared)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def copy(self) -> ConceptStats:
        """A copy whose dicts ``solve_all`` may empty (it releases each matrix once used) while the original keeps
        them: the matrices themselves are shared, not copied."""
        return replace(self, moments=dict(self.moments), outputs=dict(self.outputs))

    def of(self, path: str) -> torch.Tensor | None:
        group = self.group_of.get(path)
        return None if group is None else self.moments.get(group)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """A flat ``{name: tensor}`` (TensorDictDataset): ``moments.<i>``, ``rows.<i>``, ``group.<path>`` = i."""
        index = {g: i for i, g in enumerate(self.moments)}
        out = {f"moments.{i}": self.moments[g].contiguous() for g, i in index.items()}
        out.update({f"rows.{i}": torch.tensor(self.rows[g]) for g, i in index.items()})
        out.update({f"group.{p}": torch.tensor(index[g]) for p, g in self.group_of.items()})
        out.update({f"output.{p}": G.contiguous() for p, G in self.outputs.items()})
        out["seconds"] = torch.tensor(self.seconds, dtype=torch.float64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], where: str = "statistics") -> ConceptStats:
        try:
            groups = {int(k.split(".", 1)[1]) for k in tensors if k.startswith("moments.")}
            moments = {str(i): tensors[f"moments.{i}"] for i in sorted(groups)}
            rows = {str(i): int(tensors[f"rows.{i}"]) for i in sorted(groups)}
            group_of = {k.split(".", 1)[1]: str(int(v)) for k, v in tensors.items() if k.startswith("group.")}
            outputs = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("output.")}
        except (KeyError, ValueError) as e:
            raise ValueError(f"{where}: not a closed-form statistics file (missing or malformed entry {e}); "
                             "delete it and rerun the node that records it.") from e
        unknown = sorted(set(group_of.values()) - set(moments))
        if unknown:
            raise ValueError(f"{where}: layers point at statistics {unknown} the file does not hold; rerun its node.")
        return cls(moments, rows, group_of, float(tensors.get("seconds", torch.tensor(0.0))), outputs)


class _Recorder:
    """Forward pre-hooks that add each adapted layer's input rows to its group's Σ x xᵀ (on the device; summed in fp64,
    stored in ``dtype``).

    A layer whose input *is* (the same tensor object as) an input already recorded joins that input's group
    instead of adding it again. Inputs are remembered by weak reference, so nothing is kept alive and a reused
    ``id`` of a freed tensor cannot be mistaken for it."""

    def __init__(self, stats: ConceptStats, dtype: torch.dtype = torch.float64):
        self.stats, self.recording, self.dtype = stats, False, dtype
        self._seen: dict[int, tuple[weakref.ref, str]] = {}
        self._handles: list = []

    def attach(self, modules: dict[str, torch.nn.Module]) -> None:
        for path, module in modules.items():
            conv = isinstance(getattr(module, "base", module), torch.nn.Conv2d)
            self._handles.append(module.register_forward_pre_hook(functools.partial(self._hook, path, conv)))

    def _hook(self, path: str, conv: bool, module, args) -> None:
        if not self.recording:
            return
        x = args[0]
        seen = self._seen.get(id(x))
        if seen is not None and seen[0]() is x:
            self.stats.group_of.setdefault(path, seen[1])
            return
        group = self.stats.group_of.setdefault(path, path)
        # summed in fp64: a float32 matrix's rounding (~1e-7 of its largest eigenvalue) exceeds a ridge near 0 and
        # left systems of the miniature merge indefinite (measured at ρ = 1e-6; e.g. up_blocks.0...attn2.to_out.0), so
        # float32 storage is for a ridge that dwarfs it (the ziplora_closed_form entry's 3)
        rows = layer_inputs(x.detach(), conv).double()
        _accumulate(self.stats.moments, group, rows, self.dtype)
        self.stats.rows[group] = self.stats.rows.get(group, 0) + rows.shape[0]
        if len(self._seen) > 1024:  # drop the entries of freed tensors
            self._seen = {k: v for k, v in self._seen.items() if v[0]() is not None}
        self._seen[id(x)] = (weakref.ref(x), group)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()


def _delta_gram(fa: LoraFactors, fb: LoraFactors, device=None, weight: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """G_ab = ΔW_aᵀ ΔW_b (n, n) from the factors: A_aᵀ (s_a s_b B_aᵀ B_b) A_b, never forming ΔW; with an output
    ``weight`` W (out, out), ΔW_aᵀ W ΔW_b = A_aᵀ (s_a s_b B_aᵀ W B_b) A_b."""
    Aa, Ba, Ab, Bb = (t.to(device, dtype) for t in (fa.A, fa.B, fb.A, fb.B))
    inner = Ba.T @ Bb if weight is None else Ba.T @ (weight.to(device, dtype) @ Bb)  # (r_a, r_b)
    return Aa.T @ ((fa.scale * fb.scale) * inner) @ Ab


def _overlap(mc: torch.Tensor, ms: torch.Tensor, form: str) -> torch.Tensor:
    """The overlap penalty of one layer: ``ziplora_layer``'s per-pair terms, for one pair."""
    return overlap_terms(mc[None], ms[None], form)[0]


def layer_quadratic(factors: dict[str, LoraFactors], moments: dict[str, torch.Tensor], normalize: bool = True,
                    ridge: float = 1e-6, where: str = "layer", outputs: dict[str, torch.Tensor] | None = None,
                    effects: dict[str, float] | None = None, ridge_scale: float | None = None,
                    dtype: torch.dtype = torch.float64, mean_ridge: float = 0.0) -> _Quadratic:
    """The layer's reconstruction terms and ridge as a quadratic in m = [m_c; m_s] (2n,) (module docstring), for
    two adapters ({"subject": f_c, "style": f_s}) and their concepts' input moments {"subject": C_c, ...} (n, n).

    ``outputs`` (ours), if given, {"subject": W_c, "style": W_s} (out, out): each concept's term weighted by its
    model's Gauss-Newton weight of the layer's output (``record_output_moments``), tr(Rᵀ W R C) instead of
    tr(Rᵀ R C) (the K-FAC approximation: output gradients and inputs treated as independent). ``effects``, if given,
    replaces each concept's own effect e_i as its normaliser, and ``ridge_scale`` the layer's mean diagonal as the
    ridge's unit (``solve_all``'s model-wide normalisation). ``dtype``: of the system and its solves (float32, ours:
    half a float64 factorisation's time on a CPU, for systems the ridge keeps well conditioned).

    ``mean_ridge`` (ours) ρ̄: a penalty ρ̄ · scale · n · (mean(m_i) − 1)² on each adapter's mean merger (scale: the
    ridge's unit), so ρ̄ is the ridge's stiffness along the one direction "shrink (or grow) the whole LoRA", and the
    mergers may still move apart column by column. Why: the layer-local minimiser shrinks both LoRAs together where
    the concepts' inputs look alike (mean merger 0.83 on a toy pair against the 100-step optimiser's 0.97), the
    paper's "scaled-down direct merge, not a zipper". In the quadratic it is w 1 1ᵀ on each diagonal block (w =
    ρ̄ · scale / n), w n 1 in the right-hand side: dense rank-one terms, so every solve below is unchanged. Judged on
    the 3 × 3 grid it does not help (docs/results/closed_form.md, 2026-12-06)."""
    names = list(factors)
    if len(names) != 2:
        raise ValueError(f"{where}: the closed-form merge takes two LoRAs, got {names}.")
    c, s = names
    missing = [n for n in names if n not in moments]
    if missing:
        raise ValueError(f"{where}: no recorded inputs under {missing}: the layer was never reached by the "
                         "concepts' forward passes, so its mergers have no statistics to be solved from.")
    device = moments[c].device  # solved where the statistics are (a GPU's fp64 is fast enough for 2n × 2n)
    if outputs is None:
        shared = {(a, b): _delta_gram(factors[a], factors[b], device, dtype=dtype) for a in names for b in names}
        G = {k: shared for k in names}
    else:
        G = {k: {(a, b): _delta_gram(factors[a], factors[b], device, outputs[k], dtype) for a in names for b in names}
             for k in names}
    n = G[c][(c, c)].shape[0]
    system = torch.zeros(2 * n, 2 * n, dtype=dtype, device=device)
    rhs = torch.zeros(2 * n, dtype=dtype, device=device)
    blocks = {c: slice(0, n), s: slice(n, 2 * n)}
    constant = 0.0
    for concept in names:
        C = moments[concept].to(device, dtype)
        # each block G_ab ∘ C formed once (n, n): the system's block, and for b = the concept its row sums (rhs)
        own = G[concept][(concept, concept)] * C
        own_effect = float(own.sum())  # e_i = Σ_x ‖ΔW_i x‖² = t_iᵀ K_i t_i
        if not math.isfinite(own_effect) or own_effect <= 0:
            raise ValueError(f"{where}: the {concept} LoRA has no effect on its recorded inputs (Σ‖ΔW x‖² = "
                             f"{own_effect}); the statistics or the LoRA are degenerate.")
        effect = (effects[concept] if effects is not None else own_effect) if normalize else 1.0
        for a in names:
            for b in names:
                H = own if (a, b) == (concept, concept) else G[concept][(a, b)] * C
                system[blocks[a], blocks[b]].add_(H, alpha=1 / effect)
                if b == concept:
                    # K_i t_i, t_i the concept's own one-hot target (its merger 1, the other's 0): row sums over b
                    rhs[blocks[a]] += H.sum(dim=1) / effect
            del H
        constant += own_effect / effect
    scale = ridge_scale if ridge_scale is not None else (float(system.diagonal().mean()) or 1.0)
    if not math.isfinite(float(system.sum())):  # NaN or ±inf anywhere makes the sum non-finite; no (2n)² mask
        raise ValueError(f"{where}: the closed-form system has non-finite entries (statistics with NaN/inf?).")
    # the ridge ρ ‖m − 1‖² pulls directions the statistics do not see back to the all-ones start (the direct merge)
    rho = ridge * scale
    if mean_ridge:
        w = mean_ridge * scale / n  # w (1ᵀ m_i − n)² = ρ̄ · scale · n · (mean(m_i) − 1)² per adapter
        for b in blocks.values():
            system[b, b] += w
            rhs[b] += w * n
        constant += 2 * w * n * n
    quad = _Quadratic(system, rhs, constant, rho, blocks[c], blocks[s], where)
    if any(_singular(moments[n]) for n in names):
        logger.warning("%s: singular input statistics; the ridge (%.1e × mean diagonal) keeps the mergers of the "
                       "directions without data at 1", where, ridge)
    return quad


def descend_layers(quads: list[_Quadratic], lam: float, form: str, steps: int, lr: float) -> list[torch.Tensor]:
    """``steps`` of Adam (lr ``lr``, the merge stage's optimiser) from all ones on each layer's recorded objective
    Q + λ overlap (ours): a matrix-vector product per layer and step, no UNet pass. Layers of one size are stepped
    as one batch: the objectives are separate and Adam's update is per coordinate, so this is exactly one Adam per
    layer."""
    out: list[torch.Tensor | None] = [None] * len(quads)
    by_size: dict[int, list[int]] = {}
    for i, q in enumerate(quads):
        by_size.setdefault(q.P.shape[0], []).append(i)
    for n2, idx in by_size.items():
        P = torch.stack([quads[i].P for i in idx])  # (L, 2n, 2n)
        r = torch.stack([quads[i].r for i in idx])  # (L, 2n)
        bc, bs = quads[idx[0]].bc, quads[idx[0]].bs
        m = torch.ones(len(idx), n2, dtype=P.dtype, device=P.device, requires_grad=True)
        opt = torch.optim.Adam([m], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                quad_terms = (torch.bmm(P, m[:, :, None])[:, :, 0] * m).sum() - 2 * (r * m).sum()
                (quad_terms + lam * overlap_terms(m[:, bc], m[:, bs], form).sum()).backward()
                opt.step()
        for j, i in enumerate(idx):
            out[i] = m[j].detach()
    return out


def solve_layer(factors: dict[str, LoraFactors], moments: dict[str, torch.Tensor], lambda_overlap: float,
                overlap: str = "dot", normalize: bool = True, ridge: float = 1e-6, refine_steps: int = 20,
                where: str = "layer", counts: dict | None = None, local_steps: int = 0,
                local_lr: float = 0.01, outputs: dict[str, torch.Tensor] | None = None,
                effects: dict[str, float] | None = None, ridge_scale: float | None = None,
                dtype: torch.dtype = torch.float64, mean_ridge: float = 0.0) -> dict[str, torch.Tensor]:
    """{"subject" | "style": m (n,)} minimising the layer's Eq. 3 (module docstring) for two adapters.

    Args:
        factors: {"subject": f_c, "style": f_s} of this layer; a layer one LoRA alone adapts keeps m = 1.
        moments: {"subject": C_c, "style": C_s} (n, n), its inputs' Σ x xᵀ under each concept's model.
        ridge: ρ relative to the mean diagonal of the system (a singular C is named in a warning).
        refine_steps: L-BFGS iterations on the recorded statistics for the overlap forms that are not quadratic.
        counts: if given, ``counts["kink"]`` is incremented when the layer needed the kink's eigendecomposition.
        local_steps: > 0: instead of the minimiser, ``local_steps`` Adam steps (lr ``local_lr``) from all ones on the
            same recorded objective (ours: the 100-step optimiser's early stop, asked of each layer).
        outputs, effects, ridge_scale: the output weighting and model-wide normalisation (``layer_quadratic``).
        dtype: of the system and its solves (``layer_quadratic``).
        mean_ridge: the penalty on each adapter's mean merger shift (``layer_quadratic``; ours).
    """
    names = list(factors)
    if len(names) == 1:
        return {names[0]: torch.ones(factors[names[0]].A.shape[1])}
    quad = layer_quadratic(factors, moments, normalize, ridge, where, outputs, effects, ridge_scale, dtype,
                           mean_ridge)
    if local_steps:
        m = descend_layers([quad], lambda_overlap, overlap, local_steps, local_lr)[0]
    elif lambda_overlap <= 0:
        m = quad.reconstruction_minimum
    elif overlap == "dot":
        m = quad.dot_minimum(lambda_overlap, eigen_fallback=dtype == torch.float64)
    else:  # not quadratic: L-BFGS on the statistics from the dot form's exact minimiser at the equivalent weight
        # (often on the kink, where the |·| stops a line search) and from the reconstruction minimiser; the lower kept
        starts = [quad.dot_minimum(quad.equivalent_dot_weight(lambda_overlap, overlap)), quad.reconstruction_minimum]
        m = min((quad.refine(x, lambda_overlap, overlap, refine_steps) for x in starts),
                key=lambda x: float(quad.objective(x, lambda_overlap, overlap)))
    if dtype != torch.float64 and (m is None or quad.eigendecomposed or not torch.isfinite(m).all()):
        # float32 ran out of precision (the kink's multiplier pinned near the end of its interval, where Newton stops
        # short and the eigenbasis loses digits; measured on a layer the UNet's output hardly sees): this layer in
        # float64
        logger.debug("%s: the kink in float32 did not converge; solved in float64", where)
        return solve_layer(factors, moments, lambda_overlap, overlap, normalize, ridge, refine_steps, where, counts,
                           local_steps, local_lr, outputs, effects, ridge_scale, torch.float64, mean_ridge)
    if counts is not None:
        counts["kink"] = counts.get("kink", 0) + int(quad.on_kink)
    return _named_mergers(m, quad, names, where)


def _named_mergers(m: torch.Tensor, quad: _Quadratic, names: list[str], where: str) -> dict[str, torch.Tensor]:
    """m = [m_c; m_s] (2n,) split into {name: m_i (n,)} in fp32 on the CPU; NaN or inf stops the merge."""
    if not torch.isfinite(m).all():
        raise ValueError(f"{where}: the closed-form solve gave non-finite mergers (statistics with NaN/inf?).")
    return {names[0]: m[quad.bc].float().cpu(), names[1]: m[quad.bs].float().cpu()}


# id(C) -> (weakref to C, singular?): layers sharing an input share C (by identity; a WeakKeyDictionary would compare
# tensors with ==, elementwise)
_SINGULAR: dict[int, tuple[weakref.ref, bool]] = {}
LOCAL_BATCH_BYTES = 1 << 30  # local_steps: the fp64 systems held at once to be stepped as one batch


def _singular(C: torch.Tensor) -> bool:
    """Whether a second-moment matrix (n, n) is numerically singular: one n × n Cholesky factorisation (an eighth of
    the layer's 2n × 2n one). This is what the warning names; the ridge also covers a system that is near-singular
    for other reasons (two LoRAs with nearly parallel columns). Computed once per matrix: all of a concept's
    cross-attention to_k / to_v layers read the same prompt embeddings, so share one C."""
    cached = _SINGULAR.get(id(C))
    if cached is not None and cached[0]() is C:
        return cached[1]
    bare = torch.linalg.cholesky_ex(C.to(torch.float64))
    pivots = bare.L.diagonal().abs()
    singular = bool(bare.info != 0 or pivots.min() ** 2 < pivots.max() ** 2 * C.shape[0] * torch.finfo(
        torch.float64).eps)
    key = id(C)
    _SINGULAR[key] = (weakref.ref(C, lambda _, key=key: _SINGULAR.pop(key, None)), singular)
    return singular


class _Quadratic:
    """One layer's reconstruction terms plus the ridge, Q(m) = mᵀ P m − 2 rᵀ m + const (P = S + ρ I, r = rhs + ρ 1),
    and the family of dot-form solves m(ν) = (P + ν/2 J)⁻¹ r: one n × n factorisation of a Schur complement each after
    one precomputation per layer (``_schur``, ``solve``) or, the kink's fallback, all of them in one eigenbasis
    (``_eigen``).

    With P = L Lᵀ (Cholesky) and L⁻¹ J L⁻ᵀ = V diag(μ) Vᵀ (one 2n × 2n eigendecomposition), P + ν/2 J =
    L V diag(1 + ν μ / 2) Vᵀ Lᵀ: every m(ν) is L⁻ᵀ V z(ν) with z_i = w_i / (1 + ν μ_i / 2), w = Vᵀ L⁻¹ r, and
    d = m_cᵀ m_s = ½ mᵀ J m = ½ Σ_i μ_i z_i², Q = ‖z‖² − 2 wᵀ z + const: a scalar (secular) equation in ν per
    layer after one O(n³) factorisation. J is congruent to L⁻¹ J L⁻ᵀ (Sylvester), so μ has n positive and n
    negative entries and P + ν/2 J is positive definite exactly on ν ∈ (−2/μ_max, −2/μ_min).
    """

    def __init__(self, system, rhs, constant, rho, bc, bs, where):
        n2 = system.shape[0]
        self.bc, self.bs, self.where, self.rho = bc, bs, where, rho
        self.P = system  # P = S + ρ I in place: the system's (2n, 2n) memory is used once
        self.P.diagonal().add_(rho)
        self.r = rhs + rho
        self.constant = constant + rho * n2  # Σ_i t_iᵀ K_i t_i / e_i + ρ ‖1‖²
        self.on_kink = False  # whether the minimum lay on the kink m_cᵀ m_s = 0 (several factorisations)
        self.eigendecomposed = False  # whether the kink's eigenbasis was needed (the costliest path; see ``_eigen``)

    def _cholesky(self, A: torch.Tensor) -> torch.Tensor:
        """A = L Lᵀ for P or its block P_cc, both positive definite with the ridge, or the error that says so."""
        L, info = torch.linalg.cholesky_ex(A)
        if info != 0:
            raise ValueError(f"{self.where}: the closed-form system is not positive definite even with the ridge "
                             f"(ρ = {self.rho:.3g}); raise merge.closed_form_ridge.")
        return L

    @functools.cached_property
    def L(self) -> torch.Tensor:
        """P = L Lᵀ (2n × 2n): needed only by the kink's fallback, the eigenbasis (``_eigen``)."""
        return self._cholesky(self.P)

    @functools.cached_property
    def _schur(self):
        """The pieces of P + ν/2 J's Schur complement on the style's block, computed once per layer (ours):

            S(ν) = P_ss − (P_sc + ν/2 I) P_cc⁻¹ (P_cs + ν/2 I) = A₀ − ν/2 A₁ − ν²/4 A₂                 (n, n)

        with A₀ = P_ss − P_sc P_cc⁻¹ P_cs, A₁ = P_cc⁻¹ P_cs + P_sc P_cc⁻¹, A₂ = P_cc⁻¹. P_cc is positive definite
        (P is), so P + ν/2 J is positive definite exactly where S(ν) is, and every member of the family costs one
        n × n factorisation (an eighth of a 2n × 2n one) after this precomputation (one n × n factorisation, two
        triangular solves, one product and one inverse: about two 2n × 2n factorisations' time). The kink takes
        7-11 members per layer, so this is what makes it cheap; a convex piece's layer takes two either way.
        Returns (L_c, A₀, A₁, A₂) (n, n) each."""
        bc, bs = self.bc, self.bs
        Lc = self._cholesky(self.P[bc, bc])
        Y = torch.linalg.solve_triangular(Lc, self.P[bc, bs], upper=False)  # L_c⁻¹ P_cs
        A0 = self.P[bs, bs] - Y.T @ Y
        F = torch.linalg.solve_triangular(Lc.T, Y, upper=True)  # L_c⁻ᵀ L_c⁻¹ P_cs = P_cc⁻¹ P_cs
        del Y
        # row-major copies: LAPACK returns column-major matrices, and adding them to the row-major A₀ on every ν ran
        # 25× slower than contiguous ones (measured: 50 vs 2 ms for n = 2048)
        return Lc, A0, (F + F.T).contiguous(), torch.cholesky_inverse(Lc).contiguous()

    def factor(self, nu: float) -> torch.Tensor | None:
        """The Cholesky factor of the Schur complement S(ν) (n × n, ``_schur``), or None where P + ν/2 J is not
        positive definite. One work buffer serves every ν."""
        _, A0, A1, A2 = self._schur
        work = self.__dict__.get("_work")
        if work is None:
            work = self._work = torch.empty_like(A0)
        torch.add(A0, A1, alpha=-nu / 2, out=work)
        if nu:
            work.add_(A2, alpha=-nu * nu / 4)
        L, info = torch.linalg.cholesky_ex(work)
        return None if info != 0 else L

    @functools.cached_property
    def _y_r(self) -> torch.Tensor:
        """P_cc⁻¹ r_c (n,): the same for every ν, so computed once per layer, not once per Newton step."""
        return torch.cholesky_solve(self.r[self.bc, None], self._schur[0])[:, 0]

    def _solve_with(self, Ls: torch.Tensor, nu: float, rhs: torch.Tensor | None = None) -> torch.Tensor:
        """(P + ν/2 J)⁻¹ rhs (2n,; default r) by block elimination with S(ν) = Ls Lsᵀ: m_s = S⁻¹ (rhs_s − B(ν)ᵀ
        P_cc⁻¹ rhs_c), m_c = P_cc⁻¹ (rhs_c − B(ν) m_s), B(ν) = P_cs + ν/2 I; the P_cc⁻¹ by its factor (two
        triangular solves)."""
        Lc = self._schur[0]
        bc, bs = self.bc, self.bs
        Pcs = self.P[bc, bs]
        if rhs is None:
            rhs, y = self.r, self._y_r
        else:
            y = torch.cholesky_solve(rhs[bc, None], Lc)[:, 0]
        ms = torch.cholesky_solve((rhs[bs] - Pcs.T @ y - (nu / 2) * y)[:, None], Ls)[:, 0]
        mc = torch.cholesky_solve((rhs[bc] - Pcs @ ms - (nu / 2) * ms)[:, None], Lc)[:, 0]
        m = torch.empty_like(rhs)
        m[bc], m[bs] = mc, ms
        return m

    def solve(self, nu: float) -> torch.Tensor | None:
        """m(ν) = (P + ν/2 J)⁻¹ r by one n × n factorisation, or None where P + ν/2 J is not positive definite."""
        Ls = self.factor(nu)
        return None if Ls is None else self._solve_with(Ls, nu)

    def _kink_by_newton(self, lo: float, hi: float, iterations: int) -> torch.Tensor | None:
        """The kink's m(ν*), d(ν*) = m_cᵀ m_s = 0, for a multiplier ν* in (lo, hi) = (−λ, λ) (it is a subgradient of
        λ |d| at d = 0): safeguarded Newton on d, d'(ν) = −½ (J m)ᵀ (P + ν/2 J)⁻¹ (J m) < 0, one n × n Schur
        complement factorisation per step (7-11 per layer measured on random layers, the two pieces' solves
        included), against the eigenbasis's O((2n)³) eigendecomposition (10-20 2n × 2n factorisations' worth on a
        CPU). Where P + ν/2 J is not
        positive definite, ν lies beyond the end of the interval around 0 on which it is, and d tends to −∞ (ν > 0)
        or +∞ (ν < 0) at that end: the bracket shrinks to ν. None if it does not converge (the "hard case": then
        the eigenbasis)."""
        eps = torch.finfo(self.P.dtype).eps
        nu = 0.0
        for _ in range(iterations):
            Ls = self.factor(nu)
            if Ls is None:
                lo, hi = (lo, nu) if nu > 0 else (nu, hi)
                nu = 0.5 * (lo + hi)
                continue
            m = self._solve_with(Ls, nu)
            mc, ms = m[self.bc], m[self.bs]
            d = float(mc @ ms)
            cos = abs(d) / max(float(mc.norm() * ms.norm()), 1e-300)
            if cos <= max(1e-12, 50 * eps):  # float64: |cos(m_c, m_s)| ≤ 1e-12; float32: ≤ 6e-6
                return m
            lo, hi = (nu, hi) if d > 0 else (lo, nu)
            if hi - lo <= 10 * eps * max(abs(lo), abs(hi)):  # the root pinned to the precision, or the hard case
                return m if cos <= 1e-3 else None
            # d' = mᵀ J m' with m' = dm/dν = −½ (P + ν/2 J)⁻¹ J m: one more solve with the same factorisation (Halley's
            # step, with d'' = 3 m'ᵀ J m', overshot the root on random layers and took as many steps: not used)
            Jm = torch.cat([ms, mc])
            slope = -0.5 * float(Jm @ self._solve_with(Ls, nu, Jm))
            step = nu - d / slope if slope < 0 else None
            nu = step if step is not None and lo < step < hi else 0.5 * (lo + hi)
        return None

    @functools.cached_property
    def _eigen(self):
        """L⁻¹ J L⁻ᵀ = V diag(μ) Vᵀ and w = Vᵀ L⁻¹ r: only the kink needs them (one O((2n)³) eigendecomposition,
        10-20× a Cholesky factorisation on a CPU, so it is computed only when no convex piece holds the minimum)."""
        self.eigendecomposed = True
        n2 = self.P.shape[0]
        n = n2 // 2
        J = torch.zeros(n2, n2, dtype=self.P.dtype, device=self.P.device)
        J[self.bc, self.bs] = torch.eye(n, dtype=self.P.dtype, device=self.P.device)
        J[self.bs, self.bc] = torch.eye(n, dtype=self.P.dtype, device=self.P.device)
        Linv_J = torch.linalg.solve_triangular(self.L, J, upper=False)  # L⁻¹ J
        M = torch.linalg.solve_triangular(self.L, Linv_J.T, upper=False)  # L⁻¹ (L⁻¹ J)ᵀ = L⁻¹ J L⁻ᵀ
        mu, V = torch.linalg.eigh((M + M.T) / 2)
        w = V.T @ torch.linalg.solve_triangular(self.L, self.r[:, None], upper=False)[:, 0]
        interval = (-2 / float(mu[-1]), -2 / float(mu[0]))  # where P + ν/2 J is positive definite
        return mu, V, w, mu.cpu().numpy(), w.cpu().numpy(), interval

    @property
    def interval(self) -> tuple[float, float]:
        return self._eigen[5]

    def z(self, nu: float) -> torch.Tensor:
        mu, _, w = self._eigen[:3]
        return w / (1 + nu * mu / 2)

    def d(self, nu: float) -> float:
        # the scalar secular function, evaluated ~50 times per layer by the bisection: numpy on the CPU copies
        # (a few µs per call for 2n = 4096; torch's per-op overhead dominated the toy model's solve)
        mu, w = self._eigen[3:5]
        z = w / (1 + nu * mu / 2)
        return float(0.5 * np.dot(mu, z * z))

    def m_of_z(self, z: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.L.T, (self._eigen[1] @ z)[:, None], upper=True)[:, 0]  # L⁻ᵀ V z

    def at(self, nu: float) -> torch.Tensor:
        return self.m_of_z(self.z(nu))

    @functools.cached_property
    def reconstruction_minimum(self) -> torch.Tensor:
        """m(0): the reconstruction terms' (and the ridge's) minimiser, asked for by several starts."""
        return self.solve(0.0)

    def objective(self, m: torch.Tensor, lam: float, form: str) -> torch.Tensor:
        """Σ_i (m − t_i)ᵀ K_i (m − t_i) / e_i + ρ ‖m − 1‖² + λ overlap(m_c, m_s)."""
        return m @ self.P @ m - 2 * self.r @ m + self.constant + lam * _overlap(m[self.bc], m[self.bs], form)

    def dot_minimum(self, lam: float, iterations: int = 100, kink: str = "newton",
                    eigen_fallback: bool = True) -> torch.Tensor | None:
        """The global minimiser of Q + λ |m_cᵀ m_s|, exactly.

        The objective is Q + λ d on d ≥ 0 and Q − λ d on d ≤ 0, and Q ± λ d ≤ Q + λ |d| everywhere. So where
        P ± λ/2 J is positive definite and its minimiser m(±λ) has d of the matching sign, m(±λ) is the global
        minimum (one Cholesky factorisation). Otherwise neither piece has its minimum inside (a convex piece's
        unconstrained minimiser lies on the other side; an indefinite quadratic has no local minimum in an open set),
        so the minimum lies on the kink d = 0: a quadratic problem with one quadratic equality constraint, for which
        the S-lemma gives strong duality: m(ν*) with ν* the root of d(ν) on the positive-definite interval (d is
        strictly decreasing there, from +∞ to −∞ unless the data miss an end's eigenvector), found in the
        eigenbasis (``_eigen``), or by Newton on d with a factorisation per step (``kink="newton"``, the default: the
        same point, several times cheaper; the eigenbasis stays its fallback). ``eigen_fallback=False``: None where
        Newton does not converge, instead of the eigenbasis (a float32 layer is solved again in float64 then, and an
        eigendecomposition in float32 would be thrown away).
        """
        for nu in (lam, -lam):
            m = self.solve(nu)
            if m is not None and nu * float(m[self.bc] @ m[self.bs]) >= 0:
                return m
        self.on_kink = True
        # neither piece holds its minimiser: the kink's multiplier is in (−λ, λ), found without the eigenbasis
        if kink == "newton":
            m = self._kink_by_newton(-lam, lam, iterations)
            if m is not None or not eigen_fallback:
                return m
        lo, hi = self.interval
        # the kink: bisection for d(ν) = 0 inside (lo, hi), in the bracket's relative width
        a, b = lo + (hi - lo) * 1e-12, hi - (hi - lo) * 1e-12
        if self.d(a) > 0 > self.d(b):
            for _ in range(iterations):
                mid = (a + b) / 2
                a, b = (mid, b) if self.d(mid) > 0 else (a, mid)
                if b - a <= 1e-15 * max(abs(a), abs(b), 1e-300):
                    break
            return self.at((a + b) / 2)
        # the "hard case" of trust-region theory (d stays finite at an end): a local search instead
        logger.debug("%s: no root of the kink's secular equation; local search on the statistics", self.where)
        return self.refine(self.reconstruction_minimum, lam, "dot", 50)

    def equivalent_dot_weight(self, lam: float, form: str) -> float:
        """The dot form's weight whose penalty matches ``form``'s at the reconstruction minimiser: cosine divides
        |m_cᵀ m_s| by ‖m_c‖ ‖m_s‖, mean_product (Σ_j |m_cj m_sj| / n) by n."""
        if form == "mean_product":
            return lam / (self.P.shape[0] // 2)
        m = self.reconstruction_minimum
        return lam / max(float(m[self.bc].norm() * m[self.bs].norm()), 1e-12)

    def refine(self, m0: torch.Tensor, lam: float, form: str, steps: int) -> torch.Tensor:
        """L-BFGS on the recorded quadratic plus the penalty from ``m0``; ``m0`` kept if it is not improved. No UNet
        pass: the recorded statistics are the whole objective."""
        m = m0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([m], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            loss = self.objective(m, lam, form)
            loss.backward()
            return loss

        opt.step(closure)
        m = m.detach()
        return m if float(self.objective(m, lam, form)) < float(self.objective(m0, lam, form)) else m0


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
def record_concept_stats(unet, wrappers: dict, name: str, inputs, scheduler, draws: int,
                         timestep_range: tuple[int, int], batch_size: int, seed: int,
                         precision: str = "float64") -> ConceptStats:
    """Σ x xᵀ of every adapted layer's input under the concept's own model (its merger 1, any other LoRA's 0) on
    ``draws`` (image, noise, t) draws of the concept from its own generator (``seed``): forward passes only, so the
    result depends on the concept alone and a grid can reuse it for every pair it is in. ``precision``: the stored
    matrices' (``PRECISIONS``; summed in float64 either way)."""
    from ..diffusion.sdxl import noisy_batch, predict_in_chunks
    from .ziplora_layer import set_mergers

    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    stats = ConceptStats()
    recorder = _Recorder(stats, precision_dtype(precision, "the statistics' precision"))
    recorder.attach(wrappers)
    try:
        idx = torch.randint(0, inputs.latent_mean.shape[0], (draws,), generator=generator)
        noisy, _, t = noisy_batch(scheduler, inputs.sample_latents(idx, generator), generator, timestep_range)
        recorder.recording = True
        with set_mergers(wrappers, {name: 1.0}):
            predict_in_chunks(unet, noisy, t, inputs, batch_size)
    finally:
        recorder.detach()
    stats.seconds = time.perf_counter() - t0
    return stats


def record_output_moments(unet, wrappers: dict, name: str, inputs, scheduler, draws: int,
                          timestep_range: tuple[int, int], seed: int, stats: ConceptStats,
                          precision: str = "float64") -> ConceptStats:
    """Add to ``stats.outputs`` every adapted layer's Σ g gᵀ (out, out), g = ∂(vᵀ ε̂)/∂(layer output) per output row,
    under the concept's own model on ``draws`` draws, one forward and one backward each (ours: the Gauss-Newton
    weight of Eq. 3's squared error, E_v[g gᵀ] = Jᵀ J for v ~ N(0, I); ``layer_quadratic``'s ``outputs``).

    One draw per pass keeps the memory to one sample's activations; the backward asks only for the gradients of the
    noisy latents and the prompt embedding (the cross-attention keys and values depend on the prompt alone), so no
    parameter gradient is formed. The UNet is run as loaded; under gradient checkpointing (diffusers' is
    non-reentrant) each output's gradient hook still fires once, on the forward's own tensor, while the recomputed
    copies only refill the saved activations (tested: the same matrices to float32 rounding). ``precision``: the
    stored matrices' (summed in float64)."""
    from ..diffusion.sdxl import batch_conditioning, noisy_batch, unet_call
    from .ziplora_layer import set_mergers

    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(seed + 1)  # other draws than the input statistics'
    dtype = precision_dtype(precision, "the statistics' precision")

    def grad_hook(path: str, conv: bool, g: torch.Tensor) -> None:
        # rows (N, out): one per position
        _accumulate(stats.outputs, path, layer_inputs(g.detach(), conv).double(), dtype)

    def out_hook(path: str, conv: bool, module, args, out) -> None:
        if out.requires_grad:
            out.register_hook(functools.partial(grad_hook, path, conv))

    handles = [m.register_forward_hook(functools.partial(
        out_hook, p, isinstance(getattr(m, "base", m), torch.nn.Conv2d))) for p, m in wrappers.items()]
    try:
        idx = torch.randint(0, inputs.latent_mean.shape[0], (draws,), generator=generator)
        noisy, _, t = noisy_batch(scheduler, inputs.sample_latents(idx, generator), generator, timestep_range)
        with set_mergers(wrappers, {name: 1.0}), torch.enable_grad():
            for i in range(draws):
                x = noisy[i:i + 1].detach().requires_grad_(True)
                embeds, pooled, tids = batch_conditioning(inputs, 1)
                embeds = embeds.detach().clone().requires_grad_(True)
                out = unet_call(unet, x, t[i:i + 1], embeds, pooled, tids)
                probe = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
                torch.autograd.grad(out, [x, embeds], grad_outputs=probe)
    finally:
        for h in handles:
            h.remove()
    stats.seconds += time.perf_counter() - t0
    return stats


def record_alone(unet, factors: dict[str, LoraFactors], name: str, inputs, scheduler, draws: int,
                 timestep_range: tuple[int, int], batch_size: int, seed: int, output_draws: int = 0,
                 precision: str = "float64") -> ConceptStats:
    """``record_concept_stats`` with the concept's LoRA alone attached to ``unet`` (restored after): what the merge
    stage's and the grid's ``input_statistics`` nodes record; with ``output_draws`` > 0 also the layers' output
    weights (``record_output_moments``)."""
    from .ziplora_layer import attach_ziplora, detach_ziplora

    wrappers = attach_ziplora(unet, {name: factors})
    try:
        stats = record_concept_stats(unet, wrappers, name, inputs, scheduler, draws, timestep_range, batch_size, seed,
                                     precision)
        if output_draws:
            record_output_moments(unet, wrappers, name, inputs, scheduler, output_draws, timestep_range, seed, stats,
                                  precision)
        return stats
    finally:
        detach_ziplora(unet, wrappers)


def reads_prompt(path: str) -> bool:
    """Whether an adapted layer reads the prompt embedding: diffusers' cross-attention key and value projections
    (``attn2.to_k`` / ``attn2.to_v`` in SDXL's and SD 1.5's transformer blocks). There the two concepts' inputs are
    their prompts' token embeddings, which differ; the other layers read image features, which the two concepts'
    draws share far more."""
    return path.endswith(("attn2.to_k", "attn2.to_v"))


@torch.no_grad()
def solve_all(loras: dict[str, dict[str, LoraFactors]], stats: dict[str, ConceptStats], lambda_overlap: float,
              overlap: str = "dot", normalize: bool = True, ridge: float = 1e-6,
              counts: dict | None = None, local_steps: int = 0, local_lr: float = 0.01,
              prompt_ridge: float | None = None, output_weighting: str = "none",
              precision: str = "float64", mean_ridge: float = 0.0) -> dict[str, torch.Tensor]:
    """Every adapted layer solved (``solve_layer``): the merger file's ``{"<path>.<name>": m (in,)}`` (the layers
    one LoRA alone adapts keep m = 1). Each concept's matrix is released once the last layer reading it is solved,
    so the peak is the statistics plus one layer's 2n × 2n system in fp64 (with ``local_steps``, the systems stepped
    as one batch: up to ``LOCAL_BATCH_BYTES``); ``stats`` is emptied. ``counts``, if
    given, receives {"kink": layers solved on the overlap's kink, "shared": layers both LoRAs adapt}.
    ``prompt_ridge`` (ours), if given, is the ridge of the layers that read the prompt embedding (``reads_prompt``),
    ``ridge`` that of the others.

    ``output_weighting`` (ours): ``none`` (each layer's output error counted as is); ``layer`` (weighted by the
    layer's Gauss-Newton output weight, ``stats[n].outputs``, still normalised layer by layer); ``model`` (weighted
    and normalised once for the whole UNet: each concept's terms divided by its summed per-token effect over all
    shared layers and the ridge in units of the layers' mean diagonal, so a layer the UNet's output hardly sees is
    held at the direct merge and one it sees is solved).

    ``precision`` (ours): ``float64`` (the statistics' own precision) or ``float32`` for the systems and their
    solves: half the factorisations' time on a CPU, accurate where the ridge keeps the systems well conditioned
    (ρ = 3: relative merger error ~1e-5 measured; not for a ridge near 0, where float32 rounding leaves systems
    indefinite).

    ``mean_ridge`` (ours): the stiffness of each adapter's mean merger in every layer (``layer_quadratic``)."""
    dtype = precision_dtype(precision)
    if output_weighting not in OUTPUT_WEIGHTINGS:
        raise ValueError(f"output_weighting must be none, layer or model, got {output_weighting!r}.")
    if output_weighting != "none":
        lacking = [n for n in loras if n in stats and not stats[n].outputs]
        if lacking:
            raise ValueError(f"output_weighting {output_weighting!r} needs the layers' output weights and the "
                             f"statistics of {lacking} have none: set merge.closed_form_output_draws > 0 and rerun "
                             "the input_statistics nodes.")
    paths = list(dict.fromkeys(p for f in loras.values() for p in f))
    names_at = {p: [n for n in loras if p in loras[n]] for p in paths}
    users: dict[tuple[str, str], int] = {}
    for path in paths:
        for n in names_at[path]:
            if n in stats and path in stats[n].group_of:
                key = (n, stats[n].group_of[path])
                users[key] = users.get(key, 0) + 1
    model_scale = _model_scale(loras, stats, names_at) if output_weighting == "model" else None
    mergers, counts = {}, counts if counts is not None else {}
    pending: list[tuple[str, list[str], _Quadratic]] = []  # local_steps: layers stepped together (descend_layers)

    def flush():
        for (where, names, quad), m in zip(pending, descend_layers([q for *_, q in pending], lambda_overlap, overlap,
                                                                   local_steps, local_lr)):
            mergers.update({f"{where}.{n}": v for n, v in _named_mergers(m, quad, names, where).items()})
        pending.clear()

    for path in paths:
        factors = {n: loras[n][path] for n in names_at[path]}
        moments = {n: stats[n].of(path) for n in factors if n in stats and stats[n].of(path) is not None}
        rho = prompt_ridge if prompt_ridge is not None and reads_prompt(path) else ridge
        weighted = {}
        if output_weighting != "none" and len(factors) == 2:
            weighted["outputs"] = {n: _output_weight(stats[n], path) for n in factors}
            if model_scale is not None:
                effects, weighted["ridge_scale"] = model_scale
                weighted["effects"] = {n: effects[n] * stats[n].rows[stats[n].group_of[path]] for n in factors}
        if local_steps and len(factors) == 2:
            pending.append((path, list(factors), layer_quadratic(factors, moments, normalize, rho, path, **weighted,
                                                                 dtype=dtype, mean_ridge=mean_ridge)))
            if sum(q.P.numel() for *_, q in pending) * 8 > LOCAL_BATCH_BYTES:
                flush()
        else:
            solved = solve_layer(factors, moments, lambda_overlap, overlap, normalize, rho, where=path,
                                 counts=counts, local_steps=local_steps, local_lr=local_lr, **weighted, dtype=dtype,
                                 mean_ridge=mean_ridge)
            mergers.update({f"{path}.{n}": m for n, m in solved.items()})
        for n in moments:
            key = (n, stats[n].group_of[path])
            users[key] -= 1
            if users[key] == 0:
                stats[n].moments.pop(key[1], None)
            stats[n].outputs.pop(path, None)
    flush()
    mergers = {f"{p}.{n}": mergers[f"{p}.{n}"] for p in paths for n in names_at[p]}  # in the layers' order
    counts["shared"] = sum(len(names_at[p]) == 2 for p in paths)
    counts.setdefault("kink", 0)
    logger.info("Closed form: %d layers solved, %d of the %d both LoRAs adapt on the overlap's kink (several "
                "factorisations each)", len(paths), counts["kink"], counts["shared"])
    return mergers


def _output_weight(stats: ConceptStats, path: str) -> torch.Tensor:
    W = stats.outputs.get(path)
    if W is None:
        raise ValueError(f"{path}: no recorded output weight (the layer's output never received a gradient in the "
                         "statistics' backward passes); rerun the input_statistics nodes.")
    return W


def _model_scale(loras: dict[str, dict[str, LoraFactors]], stats: dict[str, ConceptStats],
                 names_at: dict[str, list[str]]) -> tuple[dict[str, float], float]:
    """``output_weighting: model``: (each concept's summed per-token weighted effect E_k = Σ_l e_kl / N_kl over the
    layers both LoRAs adapt, the ridge's unit: the mean over those layers of their systems' mean diagonals under that
    normalisation). Per token: K-FAC's tr(Rᵀ W R C) over N rows in each factor estimates N times the per-sample
    error, so a layer's terms are divided by its N (rows) to compare layers of different resolutions. A pass of
    r × n and r × r products per layer (e = Σ (A C Aᵀ) ∘ (s² Bᵀ W B), diag(ΔWᵀ W ΔW) = Σ_r A ∘ (M A)), no n × n
    product."""
    shared = [p for p, ns in names_at.items() if len(ns) == 2]
    per_layer: dict[str, dict[str, tuple[float, dict[str, torch.Tensor]]]] = {}
    for path in shared:
        per_layer[path] = {}
        for k in names_at[path]:
            C, W, N = stats[k].of(path), _output_weight(stats[k], path), stats[k].rows[stats[k].group_of[path]]
            C = C.double()
            diags = {}
            for a in names_at[path]:
                f = loras[a][path]
                A, B = f.A.to(C.device, torch.float64), f.B.to(C.device, torch.float64)
                M = f.scale ** 2 * (B.T @ (W.to(C.device, torch.float64) @ B))  # (r, r)
                diags[a] = ((M @ A) * A).sum(dim=0) * C.diagonal()  # diag(G_aa^k ∘ C_k) (n,)
                if a == k:
                    effect = float(((A @ C @ A.T) * M).sum()) / N
            per_layer[path][k] = (effect, {a: d / N for a, d in diags.items()})
    names = sorted({k for p in shared for k in names_at[p]})
    effects = {k: sum(per_layer[p][k][0] for p in shared) for k in names}
    bad = [k for k, e in effects.items() if not math.isfinite(e) or e <= 0]
    if bad:
        raise ValueError(f"output_weighting model: the {bad} LoRA has no weighted effect on its recorded inputs.")
    means = [float(sum(torch.cat([per_layer[p][k][1][a] for a in names_at[p]]).mean() / effects[k]
                       for k in names_at[p])) for p in shared]
    return effects, (sum(means) / len(means)) if means else 1.0


@torch.no_grad()
def solve_mergers(wrappers: dict, loras: dict[str, dict[str, LoraFactors]], stats: dict[str, ConceptStats],
                  lambda_overlap: float, overlap: str, normalize: bool, ridge: float) -> None:
    """``solve_all`` written into the wrappers' mergers."""
    from .ziplora_layer import load_merger_state_dict

    load_merger_state_dict(wrappers, solve_all({n: {p: f for p, f in loras[n].items() if p in wrappers} for n in loras},
                                               stats, lambda_overlap, overlap, normalize, ridge))
