"""The LoRA merges PEFT offers (``LoraModel.add_weighted_adapter``), as baselines beside ZipLoRA.

PEFT's merges live on ``peft.tuners.lora.LoraModel``; a diffusers UNet with LoRAs loaded through
``load_lora_weights`` has the peft layers but not that wrapper. So both LoRAs are loaded into a
``LoraModel`` built around the UNet, ``add_weighted_adapter`` merges them, and the merged adapter
is exported as a diffusers-format LoRA file that plain ``load_lora_weights`` reads.

What each combination does (peft 0.21): ``cat`` concatenates the factors (rank r_c + r_s; exact
sum of the deltas: the direct merge); ``svd`` takes the rank-``svd_rank`` SVD of the summed dense
deltas; ``ties`` / ``dare_ties`` / ``magnitude_prune`` / ``linear`` merge the A and the B factors
*separately* (weights √(w·scale) on each) and need equal ranks; ``*_svd`` variants apply them to
the dense deltas and re-factorise. ``dare_*`` prune at random (seeded here).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..config_utils import require
from ..evaluation.cost import measure
from ..lora.factors import LoraFactors, unet_lora_factors
from ..lora.io import LoraFile, lora_file_from_unet
from .build import lora_file_mb, method_cost
from .export import factors_to_lora_file
from .method import BuildContext, MergeMethod

logger = logging.getLogger(__name__)

COMBINATIONS = ("svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")  # add_weighted_adapter's
_NEEDS_DENSITY = ("ties", "dare", "magnitude_prune")


@dataclasses.dataclass(frozen=True)
class PeftMergeConfig:
    """One ``add_weighted_adapter`` call; the names are peft's arguments."""

    combination_type: str = "cat"
    weights: tuple[float, float] = (1.0, 1.0)  # (subject, style)
    density: float | None = None  # fraction of entries kept by ties/dare/magnitude_prune
    majority_sign_method: str = "total"  # total | frequency (ties, dare_ties)
    svd_rank: int | None = None  # *svd: rank of the result; null = max of the two ranks
    seed: int = 0  # dare_* drop entries at random (torch's global RNG)

    def __post_init__(self):
        require(self.combination_type in COMBINATIONS,
                f"peft combination_type {self.combination_type!r} is not one of {list(COMBINATIONS)}.")
        require(len(self.weights) == 2, "peft weights are [subject_weight, style_weight].")
        require(not self.combination_type.startswith(_NEEDS_DENSITY) or self.density is not None,
                f"peft combination_type {self.combination_type!r} needs density (fraction kept, e.g. 0.5).")
        require(self.density is None or 0 < self.density <= 1, f"peft density must be in (0, 1], got {self.density}.")
        require(self.majority_sign_method in ("total", "frequency"), "peft majority_sign_method: total or frequency.")
        require(self.svd_rank is None or self.svd_rank > 0, "peft svd_rank must be > 0 or null.")


def _scale_one(lora: LoraFile, name: str, unet_config=None) -> LoraFile:
    """Any LoRA format -> diffusers format with alpha = rank (scale folded into B), so its config is
    expressible as a plain ``LoraConfig`` (exact module paths as target_modules)."""
    factors = unet_lora_factors(lora, name, unet_config)
    return factors_to_lora_file({p: LoraFactors(f.A, f.B.float() * f.scale, 1.0, f.conv) for p, f in factors.items()})


def _lora_config(lora: LoraFile):
    from peft import LoraConfig

    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    return LoraConfig(**{k: v for k, v in (lora.adapter_config() or {}).items() if k in fields})


class PeftMerger:
    """Holds the subject and style LoRAs as peft adapters on ``unet``; ``merge`` exports one combination.

    The UNet is modified in place (peft layers injected): use a pipeline loaded for this purpose.
    """

    def __init__(self, unet, subject: LoraFile, style: LoraFile):
        from peft.tuners.lora import LoraModel
        from peft.utils import set_peft_model_state_dict

        files = {"subject": _scale_one(subject, "subject LoRA", unet.config),
                 "style": _scale_one(style, "style LoRA", unet.config)}
        self.model = LoraModel(unet, _lora_config(files["subject"]), "subject")
        self.model.peft_config["style"] = _lora_config(files["style"])
        self.model.inject_adapter(unet, "style")
        for name, lora in files.items():
            result = set_peft_model_state_dict(unet, lora.unet_state_dict(), adapter_name=name)
            require(not result.unexpected_keys, f"{name} LoRA: {len(result.unexpected_keys)} tensors did not load.")
        self.unet = unet

    def merge(self, cfg: PeftMergeConfig, name: str = "merged") -> LoraFile:
        """Run ``add_weighted_adapter`` and return the merged adapter as a LoRA file."""
        torch.manual_seed(cfg.seed)
        try:
            self.model.add_weighted_adapter(
                ["subject", "style"], list(cfg.weights), name, combination_type=cfg.combination_type,
                svd_rank=cfg.svd_rank, density=cfg.density, majority_sign_method=cfg.majority_sign_method)
        except ValueError as err:  # e.g. ties with different ranks: say which merge and why
            raise ValueError(f"PEFT merge {cfg.combination_type!r} failed: {err}") from err
        lora = lora_file_from_unet(self.unet, name)
        self.model.delete_adapter(name)
        lora.metadata["ziplora_pipeline.description"] = f"peft add_weighted_adapter {cfg}"
        return lora


class PeftMerge(MergeMethod):
    """A PEFT ``add_weighted_adapter`` merge (cat, ties_svd, dare_ties_svd, svd, ...), loaded like any LoRA."""

    kind = "peft"
    Options = PeftMergeConfig
    needs_text_encoder_parts = False

    def build(self, ctx: BuildContext):
        if "peft_merger" not in ctx.cache:  # both LoRAs as peft adapters, loaded once for every PEFT method
            ctx.cache["peft_merger"] = PeftMerger(ctx.load_unet(), ctx.sources["subject"], ctx.sources["style"])
        with measure(ctx.device) as c:
            lora = ctx.cache["peft_merger"].merge(self.options, self.name)
        return lora, method_cost(c, file_mb=lora_file_mb(lora))
