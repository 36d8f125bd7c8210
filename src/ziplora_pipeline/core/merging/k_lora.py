"""K-LoRA: training-free fusion of a subject and a style LoRA by per-layer, per-step selection.

Ouyang et al., "K-LoRA: Unlocking Training-Free Fusion of Any Subject and Style LoRAs", CVPR 2025
(arXiv 2502.18461); official SDXL code: github.com/HVision-NKU/K-LoRA (``klora.py``, ``utils.py``).

Taken from the paper / official code:
- In every LoRA-adapted linear layer and at every denoising step, *one* of the two LoRAs is
  applied, never their sum.
- The choice compares the sums of the top-k absolute entries of the layers' deltas,
  S_c = Σ topk |ΔW_c| (subject, "content") and S_s = Σ topk |ΔW_s| (style), after scaling:
      use the subject LoRA  ⇔  S_c / γ  >  S_s · (α τ + β)
  τ ∈ [0, 1) is how far denoising has progressed, so early (noisy) steps favour the subject's
  structure and later steps the style's texture. γ = mean over layers of Σ|ΔW_c| / Σ|ΔW_s|
  balances LoRAs of different overall magnitude. Official values: k = 64, α = 1.5, β = 0.5.
Our assumptions (not stated by the paper):
- τ comes from the UNet's timestep input, τ = 1 − t / T_train. The official code counts layer
  calls (a global counter over 28000 = 560 layers × 50 steps), which is step/N for SDXL at 50
  steps; reading t instead works for any step count and scheduler, for single UNet calls (the
  output-fidelity evaluation), and for batches whose samples sit at different t (each sample
  selects on its own).
- ΔW = scale · B A includes the alpha/rank scale (the official code multiplies up @ down without
  it; the two agree when alpha = rank). k is clipped to the layer's number of entries.
- γ averages over the layers both LoRAs adapt; a layer only one LoRA adapts always uses it.

Why by hand: neither diffusers nor peft switches adapters per layer and per step.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..config_utils import require
from ..evaluation.cost import measure
from ..lora.factors import LoraFactors, low_rank_branch, unet_lora_factors
from .build import lora_file_mb, method_cost
from .method import BuildContext, MergeMethod, MethodAssets
from .ziplora_layer import replace_module

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KLoraConfig:
    """K-LoRA's constants; defaults are the official code's."""

    top_k: int = 64  # entries of |ΔW| summed per layer
    alpha: float = 1.5  # slope of the time-dependent style scale α τ + β
    beta: float = 0.5  # its value at the first denoising step
    gamma: float | None = None  # subject/style magnitude ratio; null = measured from the LoRAs (official)

    def __post_init__(self):
        require(self.top_k > 0, f"k_lora top_k must be > 0, got {self.top_k}.")
        require(self.gamma is None or self.gamma > 0, f"k_lora gamma must be > 0 or null, got {self.gamma}.")


def topk_score(delta: torch.Tensor, k: int) -> float:
    """Σ of the k largest |ΔW| entries of one layer (ΔW (out, in))."""
    flat = delta.abs().flatten()
    return torch.topk(flat, min(k, flat.numel())).values.sum().item()


def magnitude_ratio(subject: dict[str, LoraFactors], style: dict[str, LoraFactors]) -> float:
    """γ: mean over shared layers of Σ|ΔW_c| / Σ|ΔW_s| (official ``get_ratio_between_content_and_style``)."""
    ratios = []
    for path in sorted(set(subject) & set(style)):
        s = style[path].delta().abs().sum().item()
        ratios.append(subject[path].delta().abs().sum().item() / s if s > 0 else float("inf"))
    return sum(ratios) / len(ratios) if ratios else 1.0


def use_subject(subject_score: float, style_score: float, progress: torch.Tensor, cfg: KLoraConfig,
                gamma: float) -> torch.Tensor:
    """The K-LoRA rule per sample: S_c / γ > S_s · (α τ + β). ``progress`` τ (B,) -> bool (B,)."""
    return subject_score / gamma > style_score * (cfg.alpha * progress + cfg.beta)


def choose(delta_subject: torch.Tensor, delta_style: torch.Tensor, progress: float, cfg: KLoraConfig = KLoraConfig(),
           gamma: float = 1.0) -> str:
    """Which LoRA one layer uses at denoising progress τ: "subject" or "style" (for inspection/tests)."""
    pick = use_subject(topk_score(delta_subject, cfg.top_k), topk_score(delta_style, cfg.top_k),
                       torch.tensor([progress]), cfg, gamma)
    return "subject" if bool(pick[0]) else "style"


class DenoisingClock:
    """τ per sample, read from the UNet's timestep argument by a forward pre-hook."""

    def __init__(self, num_train_timesteps: int):
        self.num_train_timesteps = num_train_timesteps
        self.progress = torch.zeros(1)  # (B,) or (1,)

    def hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = torch.as_tensor(t, device=sample.device).float().flatten()  # () or (B,) -> (1,) or (B,)
        self.progress = 1.0 - t / self.num_train_timesteps

    def for_batch(self, batch: int) -> torch.Tensor:
        if self.progress.numel() in (1, batch):
            return self.progress.expand(batch)
        raise ValueError(f"K-LoRA: a layer saw batch {batch} but the UNet's timesteps have "
                         f"{self.progress.numel()} entries.")


class KLoRALinear(nn.Module):
    """A frozen linear layer (or 1×1 conv) plus a subject and a style LoRA, one of them applied per sample."""

    def __init__(self, base: nn.Linear, subject: LoraFactors, style: LoraFactors, scores: tuple[float, float],
                 cfg: KLoraConfig, gamma: float, clock: DenoisingClock):
        super().__init__()
        self.base, self.scores, self.cfg, self.gamma, self.clock = base, scores, cfg, gamma, clock
        dtype, device = base.weight.dtype, base.weight.device
        for name, f in (("subject", subject), ("style", style)):
            self.register_buffer(f"A_{name}", f.A.to(device, dtype), persistent=False)  # (r, in)
            self.register_buffer(f"B_{name}", (f.B.float() * f.scale).to(device, dtype), persistent=False)  # (out, r)

    def _lora(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return low_rank_branch(self.base, x, getattr(self, f"A_{name}"), getattr(self, f"B_{name}"))  # (..., out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, ..., in) -> (B, ..., out)
        pick = use_subject(*self.scores, self.clock.for_batch(x.shape[0]).to(x.device), self.cfg, self.gamma)
        pick = pick.view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
        return self.base(x) + torch.where(pick, self._lora("subject", x), self._lora("style", x))


class SingleLoRALinear(nn.Module):
    """A layer only one of the LoRAs adapts: that LoRA, always."""

    def __init__(self, base: nn.Linear, f: LoraFactors):
        super().__init__()
        self.base = base
        self.register_buffer("A", f.A.to(base.weight.device, base.weight.dtype), persistent=False)
        self.register_buffer("B", (f.B.float() * f.scale).to(base.weight.device, base.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + low_rank_branch(self.base, x, self.A, self.B)


class KLoRA:
    """K-LoRA for two LoRAs: ``attach`` to a UNet, use it, ``detach`` restores the original layers.

    Construction does all of K-LoRA's "merging": γ and each shared layer's top-k scores (they do
    not depend on the input), so timing it is timing the method's preparation.
    """

    def __init__(self, subject: dict[str, LoraFactors], style: dict[str, LoraFactors], cfg: KLoraConfig = KLoraConfig()):
        self.subject, self.style, self.cfg = subject, style, cfg
        self.gamma = cfg.gamma if cfg.gamma is not None else magnitude_ratio(subject, style)
        self.scores = {p: (topk_score(subject[p].delta(), cfg.top_k), topk_score(style[p].delta(), cfg.top_k))
                       for p in sorted(set(subject) & set(style))}
        self._originals: dict[str, nn.Module] = {}
        self._hook = None

    def choices(self, progress: float) -> dict[str, str]:
        """{layer: "subject" | "style"} at denoising progress τ (0 = first step, 1 = last)."""
        tau = torch.tensor([progress])
        return {p: "subject" if bool(use_subject(*sc, tau, self.cfg, self.gamma)[0]) else "style"
                for p, sc in self.scores.items()}

    def attach(self, unet: nn.Module, num_train_timesteps: int = 1000) -> KLoRA:
        clock = DenoisingClock(num_train_timesteps)
        for path in sorted(set(self.subject) | set(self.style)):
            base = unet.get_submodule(path)
            c, s = self.subject.get(path), self.style.get(path)
            wrapper = (KLoRALinear(base, c, s, self.scores[path], self.cfg, self.gamma, clock) if c and s
                       else SingleLoRALinear(base, c or s))
            self._originals[path] = base
            replace_module(unet, path, wrapper)
        self._hook = unet.register_forward_pre_hook(clock.hook, with_kwargs=True)
        self._unet = unet
        return self

    def detach(self) -> None:
        for path, base in self._originals.items():
            replace_module(self._unet, path, base)
        self._originals.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()



class KLoraMethod(MergeMethod):
    """K-LoRA as a compared method: no file; both LoRAs are fused on the UNet at run time."""

    kind = "k_lora"
    Options = KLoraConfig
    needs_text_encoder_parts = False

    def build(self, ctx: BuildContext):
        with measure(ctx.device) as c:
            klora = KLoRA(ctx.factors["subject"], ctx.factors["style"], self.options)
        first, last = klora.choices(0.0), klora.choices(1.0)

        def share(ch: dict) -> float:
            return sum(v == "subject" for v in ch.values()) / max(len(ch), 1)

        logger.info("K-LoRA (γ = %.3f): subject LoRA in %.0f%% of shared layers at the first step, %.0f%% at the last",
                    klora.gamma, 100 * share(first), 100 * share(last))
        size = lora_file_mb(ctx.sources["subject"]) + lora_file_mb(ctx.sources["style"])  # both ship
        return None, method_cost(c, file_mb=size)

    @contextmanager
    def applied(self, pipe, assets: MethodAssets) -> Iterator[None]:
        klora = KLoRA(unet_lora_factors(assets.subject, "subject LoRA", pipe.unet.config),
                      unet_lora_factors(assets.style, "style LoRA", pipe.unet.config), self.options)
        with klora.attach(pipe.unet, pipe.scheduler.config.num_train_timesteps):
            yield
