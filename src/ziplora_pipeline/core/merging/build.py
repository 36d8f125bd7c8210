"""Prepare every method before generation: its LoRA file (copied or built) and its cost.

Cost per method (ZipLoRA §5 compares merge time and memory):
- ``merge_seconds`` / ``peak_mb``: what it took to obtain the method from the two LoRAs —
  ZipLoRA: learning the mergers (the merge stage's log); joint training: training the joint LoRA
  (its training log); PEFT: ``add_weighted_adapter``; direct merge: concatenating the factors;
  K-LoRA: computing γ and every layer's top-k scores (measured here with ``core.cost.measure``).
  Empty for the base model and the single LoRAs (nothing is merged).
- ``file_mb``: the LoRA file a user ships (K-LoRA needs both LoRAs at run time: their sum).
"""

from __future__ import annotations

import logging
from typing import Callable

from ..evaluation.cost import Cost, measure
from .k_lora import KLoRA
from ..lora.factors import unet_lora_factors
from ..lora.io import LoraFile
from .export import factors_to_lora_file, merged_factors, text_encoder_parts, ziplora_file
from .method import MethodSpec
from .peft_merges import PeftMerger

logger = logging.getLogger(__name__)


def lora_file_mb(lora: LoraFile) -> float:
    """Size of ``lora`` as a safetensors file in MiB (serialised in memory exactly as it is saved)."""
    from safetensors.torch import save

    return len(save({k: v.contiguous() for k, v in lora.state_dict.items()}, metadata=lora.metadata)) / 2**20


def _cost(c: Cost | None = None, log: dict | None = None, file_mb: float | None = None) -> dict:
    if log is not None:
        return {"merge_seconds": log.get("seconds"), "peak_mb": log.get("peak_mb"),
                "memory_kind": log.get("memory_kind", "unmeasured"), "file_mb": file_mb}
    if c is not None:
        return {"merge_seconds": c.seconds, "peak_mb": c.peak_mb, "memory_kind": c.memory_kind, "file_mb": file_mb}
    return {"file_mb": file_mb}


class MethodBuilder:
    """Builds the file-backed methods from the pipeline's LoRA files, mergers and logs.

    Args:
        sources: {"subject", "style", "joint", "direct_merge", "ziplora": LoraFile}.
        mergers: ZipLoRA merger vectors (merge stage).
        logs: {"ziplora": merge log, "joint": joint training log} (seconds, peak_mb, memory_kind).
        load_unet: returns a fresh UNet on the target device (PEFT merges modify it in place).
        unet_config: that UNet's config, to parse kohya files with SGM block names (see unet_lora_factors).
    """

    def __init__(self, sources: dict[str, LoraFile], mergers: dict, logs: dict[str, dict],
                 load_unet: Callable[[], object], device="cpu", unet_config=None):
        self.sources, self.mergers, self.logs, self.device = sources, mergers, logs, device
        self.factors = {n: unet_lora_factors(sources[n], f"{n} LoRA", unet_config) for n in ("subject", "style")}
        self.text_encoders = text_encoder_parts({n: sources[n] for n in ("subject", "style")})
        self._load_unet, self._merger = load_unet, None

    def build(self, spec: MethodSpec) -> tuple[LoraFile | None, dict]:
        """(file or None, cost) for one method."""
        return getattr(self, f"_{spec.kind}")(spec)

    def _base(self, spec):
        return None, {}

    def _lora(self, spec):
        source = spec.options.source
        lora = self.sources[source]
        if source in self.logs:
            return lora, _cost(log=self.logs[source], file_mb=lora_file_mb(lora))
        if source == "direct_merge":
            with measure(self.device) as c:  # ΔW_c + ΔW_s as a rank-(r_c + r_s) LoRA: factor concatenation
                factors_to_lora_file(merged_factors(self.factors))
            return lora, _cost(c, file_mb=lora_file_mb(lora))
        return lora, _cost(file_mb=lora_file_mb(lora))

    def _ziplora(self, spec):
        strengths = {"subject": spec.options.subject_scale, "style": spec.options.style_scale}
        lora = ziplora_file(self.factors, self.text_encoders, self.mergers, strengths, spec.name)
        return lora, _cost(log=self.logs["ziplora"], file_mb=lora_file_mb(lora))

    def _unet_only(self, spec) -> None:
        if any(self.text_encoders.values()):
            logger.warning("%s: the LoRAs' text-encoder parts are left out (this method is built on the UNet "
                           "parts only); ZipLoRA and the direct merge combine them directly.", spec.name)

    def _peft(self, spec):
        self._unet_only(spec)
        if self._merger is None:  # both LoRAs as peft adapters, loaded once for every PEFT method
            self._merger = PeftMerger(self._load_unet(), self.sources["subject"], self.sources["style"])
        with measure(self.device) as c:
            lora = self._merger.merge(spec.options, spec.name)
        return lora, _cost(c, file_mb=lora_file_mb(lora))

    def _k_lora(self, spec):
        self._unet_only(spec)
        with measure(self.device) as c:
            klora = KLoRA(self.factors["subject"], self.factors["style"], spec.options)
        first, last = klora.choices(0.0), klora.choices(1.0)
        share = lambda ch: sum(v == "subject" for v in ch.values()) / max(len(ch), 1)  # noqa: E731
        logger.info("K-LoRA (γ = %.3f): subject LoRA in %.0f%% of shared layers at the first step, %.0f%% at the last",
                    klora.gamma, 100 * share(first), 100 * share(last))
        size = lora_file_mb(self.sources["subject"]) + lora_file_mb(self.sources["style"])
        return None, _cost(c, file_mb=size)
