"""The ZipLoRA optimisation (paper Eq. 3), batched and with cached targets.

    L = Σ_i ‖(D ⊕ L_m)(x_i, p_i) − (D ⊕ L_i)(x_i, p_i)‖ + λ Σ_layers Σ_{i<j} overlap(m_i, m_j)

(its terms: objective.py).
Base UNet D and every LoRA L_i are frozen; only the merger vectors train (Adam, lr 0.01, ≤100
steps in the paper). The targets (D ⊕ L_i)(x_i, p_i) do not depend on the mergers, so each
concept draws ``teacher_pool`` (image, noise, timestep) samples once, computes their targets
once, and every step reuses them (ours); ``teacher_pool: null`` draws anew every step as the
unofficial implementation does (the paper does not say). All concepts share one batched forward of
the merged UNet. Before/after figures are reported on the pool and on ``heldout_draws`` draws from
another seed that no step used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..config_utils import require
from ..diffusion.sdxl import ConceptInputs, batch_conditioning, noisy_batch, predict_in_chunks, unet_call
from ..lora.factors import LoraFactors
from .closed_form import PRECISIONS
from .objective import Objective
from .ziplora_layer import (ZipLoRALinear, attach_ziplora, load_merger_state_dict, mean_abs_cosine, merger_parameters,
                            merger_state_dict, overlap_penalty, set_mergers)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeConfig:
    """ZipLoRA merge optimisation settings (``merge:``); defaults are the paper's where it gives them. The
    strengths a merge is exported at are the methods' (``merge.methods``, core/merging/ziplora.py)."""

    steps: int = 100  # paper: at most 100
    learning_rate: float = 0.01  # paper: 0.01
    lambda_overlap: float = 0.01  # paper: λ = 0.01
    overlap: str = "cosine"  # cosine | mean_product | dot (see ziplora_layer.overlap_terms); chosen by measurement
    squared_norm: bool = True  # ‖·‖² (mean squared error) or ‖·‖ (root mean square)
    normalize_recon: bool = True  # divide each concept's term by ‖D − (D ⊕ L_i)‖ on its pool (objective.py)
    timestep_range: tuple[int, int] = (0, 1000)  # sampled uniformly in [lo, hi)
    batch_size: int = 1  # samples per concept per step
    # (image, noise, t) draws per concept whose targets are computed once and reused every step (ours), or
    # None: a new draw per concept every step, its target computed once (the unofficial implementation's
    # sampling; the paper does not say); chosen by held-out reconstruction (docs/method.md).
    teacher_pool: int | None = None
    heldout_draws: int = 16  # draws per concept from another seed: the held-out figures (and fresh draws' normaliser)
    stop_cosine: float = 0.0  # stop early once mean |cos(m_i, m_j)| falls below this (0 = never)
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 (autocast, any device) | fp16 (CUDA only, with loss scaling)
    gradient_checkpointing: bool = False  # recompute UNet activations in the backward pass (less memory, ~1/3 slower)
    # gradient: Eq. 3 by Adam through the UNet (the paper); closed_form (ours): each layer's mergers solved from
    # its inputs' second moments over closed_form_draws forward passes per concept (closed_form.py)
    solver: str = "gradient"
    closed_form_draws: int = 16  # the statistics' draws per concept (also the ziplora_closed_form method's)
    closed_form_batch_size: int = 16  # draws per statistics forward (no backward: batches cost little memory)
    closed_form_ridge: float = 1e-6  # ρ, relative to the mean diagonal of each layer's system
    # ours: > 0 also records each layer's output weight (Gauss-Newton, one forward + backward per draw) for the
    # ziplora_closed_form method's output_weighting
    closed_form_output_draws: int = 0
    # ours: float32 | float64, the stored precision of the statistics the ziplora_closed_form method is solved from
    # (summed in float64 either way; float32 halves their memory and file, enough at its ridge 3; merge.solver:
    # closed_form, at closed_form_ridge 1e-6, records its own in float64)
    closed_form_statistics_precision: str = "float32"

    def __post_init__(self):
        require(self.steps >= 0, f"merge.steps must be >= 0, got {self.steps}.")
        require(self.learning_rate > 0, f"merge.learning_rate must be > 0, got {self.learning_rate}.")
        self.objective
        lo, hi = self.timestep_range
        require(0 <= lo < hi <= 1000, f"merge.timestep_range must satisfy 0 <= lo < hi <= 1000, got {self.timestep_range}.")
        require(self.teacher_pool is None or (isinstance(self.teacher_pool, int) and self.teacher_pool > 0),
                f"merge.teacher_pool must be a number of draws > 0 or null (fresh draws every step), got "
                f"{self.teacher_pool!r}.")
        require(self.batch_size > 0 and self.heldout_draws > 0, "merge.batch_size and merge.heldout_draws must be > 0.")
        require(self.mixed_precision in ("no", "fp16", "bf16"), "merge.mixed_precision must be no, fp16 or bf16.")
        require(self.solver in ("gradient", "closed_form"), f"merge.solver must be gradient or closed_form, got "
                                                            f"{self.solver!r}.")
        require(self.closed_form_draws > 0 and self.closed_form_batch_size > 0 and self.closed_form_ridge >= 0,
                "merge.closed_form_draws and merge.closed_form_batch_size must be > 0, merge.closed_form_ridge >= 0.")
        require(self.closed_form_output_draws >= 0, "merge.closed_form_output_draws must be >= 0.")
        require(self.closed_form_statistics_precision in PRECISIONS,
                f"merge.closed_form_statistics_precision must be float32 or float64, got "
                f"{self.closed_form_statistics_precision!r}.")

    @property
    def objective(self) -> Objective:
        """Eq. 3's terms and weights."""
        return Objective(self.lambda_overlap, self.overlap, self.squared_norm, self.normalize_recon)

    @property
    def fresh(self) -> bool:
        """New draws every step (no fixed teacher pool)."""
        return self.teacher_pool is None


@dataclass
class TeacherPool:
    """Cached inputs and targets of one concept: noisy (P, C, h, w), t (P,), target (P, C, h, w)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    inputs: ConceptInputs
    lora_effect: float = 1.0  # ‖D(x) − (D ⊕ L_i)(x)‖ over the pool, same norm as the loss


@dataclass
class MergeResult:
    mergers: dict[str, torch.Tensor]  # {"<path>.<adapter>": m (in,)}
    history: dict[str, list[float]] = field(default_factory=dict)  # per-step loss terms
    seconds: float = 0.0
    stopped_early: bool = False
    initial: dict[str, float] = field(default_factory=dict)  # whole-pool terms before step 1 (the direct merge)
    final: dict[str, float] = field(default_factory=dict)  # whole-pool terms after the last step
    heldout_initial: dict[str, float] = field(default_factory=dict)  # the same on draws the merge never used
    heldout_final: dict[str, float] = field(default_factory=dict)


def concept_batch(pools: list[TeacherPool], idx: list[torch.Tensor]) -> tuple:
    """Concatenate the sampled batch of every concept: (ΣB, C, h, w), (ΣB,), embeds, pooled, time ids."""
    noisy = torch.cat([p.noisy[i] for p, i in zip(pools, idx)])
    t = torch.cat([p.timesteps[i] for p, i in zip(pools, idx)])
    conds = [batch_conditioning(p.inputs, len(i)) for p, i in zip(pools, idx)]
    emb, pooled, tids = (None if c[0] is None else torch.cat(c) for c in zip(*conds))
    return noisy, t, emb, pooled, tids


@torch.no_grad()
def build_teacher_pool(unet, wrappers: dict[str, ZipLoRALinear], scheduler, name: str, inputs: ConceptInputs,
                       cfg: MergeConfig, generator: torch.Generator, size: int | None = None,
                       lora_effect: float | None = None) -> TeacherPool:
    """Draw ``size`` (default ``cfg.teacher_pool``) noisy latents of concept ``name`` and their (D ⊕ L_name)
    predictions; the LoRA's effect ‖D − (D ⊕ L_name)‖ is measured on them unless ``lora_effect`` is given."""
    size = size or (cfg.heldout_draws if cfg.fresh else cfg.teacher_pool)
    n = inputs.latent_mean.shape[0]
    idx = torch.randint(0, n, (size,), generator=generator)
    latents = inputs.sample_latents(idx, generator)
    noisy, _, t = noisy_batch(scheduler, latents, generator, cfg.timestep_range)
    with set_mergers(wrappers, {name: 1.0}):  # other adapters' mergers 0: exactly D ⊕ L_name
        target = predict_in_chunks(unet, noisy, t, inputs, cfg.batch_size)
    if lora_effect is None:
        with set_mergers(wrappers, {}):  # all mergers 0: the base model D alone
            base = predict_in_chunks(unet, noisy, t, inputs, cfg.batch_size)
        lora_effect = cfg.objective.reconstruction(base, target).item()
    return TeacherPool(noisy, t, target, inputs, max(lora_effect, 1e-12))


@torch.no_grad()
def pool_terms(unet, wrappers, pools: list[TeacherPool], names: list[str], cfg: MergeConfig) -> dict[str, float]:
    """Reconstruction of every concept over its whole teacher pool, plus overlap and mean |cos|.

    Per-step terms are single noisy samples; these are the figures to compare before/after.
    """
    terms, objective = {}, cfg.objective
    for name, pool in zip(names, pools):
        pred = predict_in_chunks(unet, pool.noisy, pool.timesteps, pool.inputs, cfg.batch_size)
        total, size = 0.0, pool.noisy.shape[0]
        for s in range(0, size, cfg.batch_size):  # per-batch terms, as in training, weighted by size
            i = slice(s, s + cfg.batch_size)
            total += (objective.reconstruction(pred[i], pool.target[i]).item() / objective.normaliser(pool.lora_effect)
                      * len(pred[i]))
        terms[f"recon_{name}"] = total / size
    terms["overlap"] = overlap_penalty(wrappers.values(), objective.overlap).item()
    terms["mean_abs_cos"] = mean_abs_cosine(wrappers.values())
    return terms


def ziplora_merge(unet, loras: dict[str, dict[str, LoraFactors]], inputs: dict[str, ConceptInputs],
                  cfg: MergeConfig, scheduler=None, on_step=None, progress: bool = True,
                  initial: dict[str, torch.Tensor] | None = None) -> MergeResult:
    """Learn merger vectors for ``loras`` (≥ 2) on ``unet`` (left unchanged on return).

    Args:
        loras: {adapter name: {module path: factors}}; names must match ``inputs``' keys.
        inputs: each concept's encoded reference images and prompt.
        scheduler: a DDPM-style noise scheduler (``add_noise``); defaults to SDXL's training schedule.
        on_step: called as ``on_step(step, **terms)`` after every optimiser step.
        initial: mergers to start from (the merger file's layout), e.g. the closed form's; default all ones.
    """
    require(len(loras) >= 2 and set(loras) == set(inputs), "ziplora_merge needs >= 2 LoRAs, one input per LoRA.")
    from .ziplora_layer import detach_ziplora

    scheduler = scheduler or default_scheduler()
    wrappers = attach_ziplora(unet, loras)
    if initial is not None:
        load_merger_state_dict(wrappers, initial)
    # Checkpointing is switched on for the merge only and restored after: a pipeline a LoRA training
    # left it on for would otherwise make gpu_check's merge figure optimistic (issue 9).
    was_checkpointing = bool(getattr(unet, "is_gradient_checkpointing", False))
    _set_checkpointing(unet, cfg.gradient_checkpointing)
    try:
        if cfg.solver == "closed_form":
            return _closed_form(unet, wrappers, list(loras), loras, inputs, cfg, scheduler)
        return _optimise(unet, wrappers, list(loras), inputs, cfg, scheduler, on_step, progress)
    finally:
        detach_ziplora(unet, wrappers)
        _set_checkpointing(unet, was_checkpointing)


def _set_checkpointing(unet, on: bool) -> None:
    if on != bool(getattr(unet, "is_gradient_checkpointing", False)):
        unet.enable_gradient_checkpointing() if on else unet.disable_gradient_checkpointing()


def merge_step(unet, wrappers, pools: list[TeacherPool], names: list[str], cfg: MergeConfig, optimizer,
               generator: torch.Generator, amp=None, scaler=None, whole_pools: bool = False) -> dict[str, float]:
    """One optimiser step of Eq. 3 on a batch drawn from the teacher pools (``whole_pools``: each pool is the
    batch, as with fresh draws); returns the loss terms."""
    idx = ([torch.arange(p.noisy.shape[0]) for p in pools] if whole_pools else
           [torch.randint(0, p.noisy.shape[0], (cfg.batch_size,), generator=generator) for p in pools])
    with amp or torch.autocast("cpu", enabled=False):
        pred = unet_call(unet, *concept_batch(pools, idx)).split(cfg.batch_size)  # one forward for all concepts
    loss, recon, overlap = cfg.objective.loss(list(pred), [p.target[i] for p, i in zip(pools, idx)],
                                              [p.lora_effect for p in pools], wrappers.values())
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # fp16: scaled backward; the step is skipped (and the scale lowered) on inf/nan gradients
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return {"loss": loss.item(), "overlap": overlap.item(), "mean_abs_cos": mean_abs_cosine(wrappers.values()),
            "recon": sum(r.item() for r in recon),
            **{f"recon_{n}": r.item() for n, r in zip(names, recon)}}


def default_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _optimise(unet, wrappers, names, inputs, cfg, scheduler, on_step, progress) -> MergeResult:
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    fresh = cfg.fresh
    # Held-out draws from another seed, never trained on: the figures that tell whether the mergers generalise
    # beyond their pool. With fresh draws they also give each LoRA's effect (the normaliser of its term).
    pools = [] if fresh else [build_teacher_pool(unet, wrappers, scheduler, n, inputs[n], cfg, generator)
                              for n in names]
    heldout_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    heldout = [build_teacher_pool(unet, wrappers, scheduler, n, inputs[n], cfg, heldout_gen, cfg.heldout_draws)
               for n in names]
    if fresh:  # no pool of its own: its before/after figures are the held-out ones
        pools = heldout
    params = merger_parameters(wrappers)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    history: dict[str, list[float]] = {k: [] for k in ["loss", "recon", "overlap", "mean_abs_cos",
                                                        *[f"recon_{n}" for n in names]]}
    device = next(iter(wrappers.values())).base.weight.device
    # bf16 autocast on any device (CPU too: what benchmarks/merge_step.py measures); fp16 only on CUDA, where it
    # gets loss scaling below; an fp16 request elsewhere is refused rather than silently run in fp32.
    require(cfg.mixed_precision != "fp16" or device.type == "cuda",
            f"merge.mixed_precision fp16 needs a CUDA device (got {device.type}); use bf16 or no.")
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.mixed_precision == "bf16" else
           torch.autocast("cuda", dtype=torch.float16) if cfg.mixed_precision == "fp16" else
           torch.autocast(device.type, enabled=False))
    # fp16 gradients of a loss ~1e-3 underflow (fp16's smallest normal is 6e-5): scale the loss, as
    # accelerate does for LoRA training. bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None  # fp16 is CUDA-only (above)
    initial = pool_terms(unet, wrappers, pools, names, cfg)
    heldout_initial = initial if fresh else pool_terms(unet, wrappers, heldout, names, cfg)
    t0, stopped = time.perf_counter(), False
    bar = tqdm(range(cfg.steps), desc="ZipLoRA merge", leave=False, disable=None if progress else True)  # None: TTY only
    for step in bar:
        if fresh:  # a new (image, noise, t) per concept, its target computed once (no_grad, one-hot mergers)
            batch = [build_teacher_pool(unet, wrappers, scheduler, n, inputs[n], cfg, generator, cfg.batch_size,
                                        lora_effect=h.lora_effect) for n, h in zip(names, heldout)]
            terms = merge_step(unet, wrappers, batch, names, cfg, optimizer, generator, amp, scaler, whole_pools=True)
        else:
            terms = merge_step(unet, wrappers, pools, names, cfg, optimizer, generator, amp, scaler)
        for k, v in terms.items():
            history[k].append(v)
        cos = terms["mean_abs_cos"]
        bar.set_postfix(loss=f"{terms['loss']:.4g}", cos=f"{cos:.3f}")
        if on_step:
            on_step(step + 1, **terms)
        if cfg.stop_cosine and cos < cfg.stop_cosine:
            logger.info("ZipLoRA mergers near-orthogonal (mean |cos| %.3f < %.3f) after %d steps: stopping.",
                        cos, cfg.stop_cosine, step + 1)
            stopped = True
            break
    seconds = time.perf_counter() - t0
    final = pool_terms(unet, wrappers, pools, names, cfg)
    heldout_final = final if fresh else pool_terms(unet, wrappers, heldout, names, cfg)
    return MergeResult(merger_state_dict(wrappers), history, seconds, stopped, initial, final, heldout_initial,
                       heldout_final)


def _closed_form(unet, wrappers, names, loras, inputs, cfg, scheduler) -> MergeResult:
    """``merge.solver: closed_form`` (ours, closed_form.py): statistics from forward passes, one solve per layer; the
    same held-out figures as the optimiser's (draws from another seed), before (mergers all ones) and after."""
    from .closed_form import record_concept_stats, solve_mergers

    torch.manual_seed(cfg.seed)
    heldout_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    heldout = [build_teacher_pool(unet, wrappers, scheduler, n, inputs[n], cfg, heldout_gen, cfg.heldout_draws)
               for n in names]
    initial = pool_terms(unet, wrappers, heldout, names, cfg)
    t0 = time.perf_counter()
    stats = {n: record_concept_stats(unet, wrappers, n, inputs[n], scheduler, cfg.closed_form_draws,
                                     cfg.timestep_range, cfg.closed_form_batch_size, cfg.seed) for n in names}
    solve_mergers(wrappers, loras, stats, cfg.lambda_overlap, cfg.overlap, cfg.normalize_recon, cfg.closed_form_ridge)
    seconds = time.perf_counter() - t0
    final = pool_terms(unet, wrappers, heldout, names, cfg)
    history = {k: [] for k in ["loss", "recon", "overlap", "mean_abs_cos", *[f"recon_{n}" for n in names]]}
    logger.info("ZipLoRA closed form: %d draws per concept, %d layers solved in %.1f s", cfg.closed_form_draws,
                len(wrappers), seconds)
    return MergeResult(merger_state_dict(wrappers), history, seconds, False, initial, final, initial, final)

