"""ZipLoRA solved in closed form (ours, experimental; issue 21): the mergers of Eq. 3 asked layer by layer, each
layer's solved exactly from the two concepts' recorded input statistics (``closed_form.py``), then exported as
ZipLoRA is (rank r_c + r_s, strengths folded into B). No UNet backward: the statistics are forward passes of each
concept's own model, recorded once per concept (the merge stage's ``input_statistics`` nodes; in the grid once per
concept for all its pairs)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from ..config_utils import require
from ..evaluation.cost import measure
from .build import lora_file_mb, method_cost
from .closed_form import OUTPUT_WEIGHTINGS, PRECISIONS, solve_all
from .export import ziplora_file
from .method import BuildContext, MergeMethod

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZipLoraClosedFormOptions:
    overlap: str = "dot"  # dot (the paper's |m_cᵀ m_s|: solved exactly) | cosine | mean_product (L-BFGS on the stats)
    lambda_overlap: float = 0.01  # paper: λ
    # ρ ‖m − 1‖², relative to each layer's system (ours): 3 holds the mergers near the direct merge, the best verdict
    # of a sweep 1e-6 … 10 on the 3 × 3 grid (docs/results/closed_form.md), and keeps every layer off the kink
    ridge: float = 3.0
    normalize_recon: bool = True  # each layer's terms relative to its LoRA's own effect there
    subject_scale: float = 1.0
    style_scale: float = 1.0
    # ours: UNet-level optimiser steps (the merge stage's settings, Eq. 3 at the UNet's output) from the closed-form
    # mergers; 0: the closed form alone
    refine_steps: int = 0
    refine_lr: float | None = None  # ours: their learning rate (null: merge.learning_rate)
    # ours: > 0: instead of each layer's minimiser, this many Adam steps (lr local_lr) from all ones on the same
    # recorded layer objective (the optimiser's early stop, asked layer by layer; still no UNet pass)
    local_steps: int = 0
    local_lr: float = 0.01
    # ours: the ridge of the layers that read the prompt embedding (cross-attention to_k / to_v); null: ``ridge``
    prompt_ridge: float | None = None
    # ours: none | layer | model: each layer's output error weighted by its Gauss-Newton effect on the UNet's output
    # (closed_form.solve_all; needs merge.closed_form_output_draws > 0)
    output_weighting: str = "none"
    # ours: float64 | float32, the systems' and solves' precision (float32: half the factorisations' time on a CPU;
    # at ridge 3 the grid's tables were identical to float64's in two runs: docs/results/closed_form.md)
    precision: str = "float32"
    # ours: the stiffness of each adapter's mean merger per layer, ρ̄ · scale · n · (mean(m_i) − 1)² (0: off): the
    # mergers may move apart column by column but not shrink a whole LoRA (closed_form.layer_quadratic); judged on the
    # grid at 300 with ridges 3, 1, 0.3: no better (docs/results/closed_form.md)
    mean_ridge: float = 0.0

    def __post_init__(self):
        require(self.overlap in ("dot", "cosine", "mean_product"),
                f"ziplora_closed_form overlap must be dot, cosine or mean_product, got {self.overlap!r}.")
        require(self.lambda_overlap >= 0 and self.ridge >= 0 and self.refine_steps >= 0 and self.local_steps >= 0,
                "ziplora_closed_form lambda_overlap, ridge, refine_steps and local_steps must be >= 0.")
        require(self.local_lr > 0, "ziplora_closed_form local_lr must be > 0.")
        require(self.refine_lr is None or self.refine_lr > 0, "ziplora_closed_form refine_lr must be > 0.")
        require(self.prompt_ridge is None or self.prompt_ridge >= 0, "ziplora_closed_form prompt_ridge must be >= 0.")
        require(self.mean_ridge >= 0, "ziplora_closed_form mean_ridge must be >= 0.")
        require(self.precision in PRECISIONS,
                f"ziplora_closed_form precision must be float64 or float32, got {self.precision!r}.")
        require(self.output_weighting in OUTPUT_WEIGHTINGS,
                f"ziplora_closed_form output_weighting must be none, layer or model, got {self.output_weighting!r}.")


class ZipLoraClosedForm(MergeMethod):
    kind = "ziplora_closed_form"
    Options = ZipLoraClosedFormOptions

    @property
    def style_scale(self) -> float:
        return self.options.style_scale

    def build(self, ctx: BuildContext):
        stats = ctx.statistics or {}
        missing = [n for n in ("subject", "style") if n not in stats]
        if missing:
            raise ValueError(f"Method '{self.name}' is solved from the concepts' recorded layer inputs and this run "
                             f"has none for {missing}: run the merge stage's input_statistics nodes (kedro run "
                             "--pipelines merge), or switch the method off.")
        o = self.options
        # a copy: the solve releases each matrix once used, and other entries may solve from the same stats
        stats = {n: stats[n].copy() for n in ("subject", "style")}
        if o.precision == "float64" and any(C.dtype != torch.float64 for s in stats.values() for C in s.moments.values()):
            logger.warning("Method '%s' solves in float64 from float32 statistics: their rounding (~1e-7 of each "
                           "matrix's largest eigenvalue) bounds its precision; for a ridge near 0 set "
                           "merge.closed_form_statistics_precision: float64 and rerun the input_statistics nodes.",
                           self.name)
        t0 = time.perf_counter()
        with measure(ctx.device) as cost:
            mergers = self.solve(ctx.factors, stats)
        solve_s = time.perf_counter() - t0
        refine_s = 0.0
        if o.refine_steps:
            mergers, refine_s = self._refine(ctx, mergers)
        description = f"ZipLoRA (closed form, ours) merge of {ctx.description}" if ctx.description else ""
        lora = ziplora_file(ctx.factors, ctx.text_encoders, mergers,
                            {"subject": o.subject_scale, "style": o.style_scale}, self.name, description)
        out = method_cost(cost, file_mb=lora_file_mb(lora))
        # its cost is the two concepts' forward passes (recorded once per concept, timed where recorded) + the solves
        out["merge_seconds"] = solve_s + refine_s + sum(s.seconds for s in stats.values())
        out["solve_seconds"] = solve_s
        if o.refine_steps:
            out["refine_seconds"] = refine_s
        return lora, out

    def solve(self, factors: dict, stats: dict, counts: dict | None = None) -> dict[str, torch.Tensor]:
        """Every layer's mergers with this entry's options (``closed_form.solve_all``; no refinement): the merger
        file's ``{"<path>.<name>": m}``. ``stats`` ({"subject" | "style": ConceptStats}) is emptied as it is solved;
        ``counts``, if given, receives solve_all's layer counts (kink, shared)."""
        o = self.options
        return solve_all(factors, stats, o.lambda_overlap, o.overlap, o.normalize_recon, o.ridge, counts=counts,
                         local_steps=o.local_steps, local_lr=o.local_lr, prompt_ridge=o.prompt_ridge,
                         output_weighting=o.output_weighting, precision=o.precision, mean_ridge=o.mean_ridge)

    def _refine(self, ctx: BuildContext, mergers: dict) -> tuple[dict, float]:
        """``refine_steps`` of the merge stage's optimiser (Eq. 3 through the UNet) from the closed-form mergers."""
        from ..diffusion.sdxl import encode_concept, training_scheduler
        from .optimise import MergeConfig, ziplora_merge

        if ctx.load_pipeline is None or ctx.concepts is None:
            raise ValueError(f"Method '{self.name}' (refine_steps {self.options.refine_steps}) takes UNet steps and "
                             "needs the base pipeline and the concepts' images: build it in the merge stage.")
        pipe = ctx.load_pipeline()
        inputs = {n: encode_concept(pipe, images, prompt) for n, (images, prompt) in ctx.concepts.items()}
        base = ctx.merge_config or MergeConfig()
        cfg = dataclasses.replace(base, steps=self.options.refine_steps, solver="gradient",
                                  learning_rate=self.options.refine_lr or base.learning_rate)
        result = ziplora_merge(pipe.unet, {n: ctx.factors[n] for n in inputs}, inputs, cfg,
                               training_scheduler(pipe), progress=False, initial=mergers)
        return result.mergers, result.seconds
