"""Build every method from the two LoRAs (merge stage), timing each where it is built.

Cost per method (ZipLoRA §5 compares merge time and memory):
- ``merge_seconds`` / ``peak_mb``: what it took to obtain the method from the two LoRAs —
  ZipLoRA: learning the mergers (the merge stage's log); joint training: training the joint LoRA
  (its training log, read by the evaluation's table: ``single_lora.py``); PEFT: ``add_weighted_adapter``; direct merge: concatenating the factors;
  K-LoRA: computing γ and every layer's top-k scores; NP-LoRA: the projection
  (measured with ``core.evaluation.cost.measure``). Empty for the base model.
- ``file_mb``: the LoRA file a user ships (K-LoRA needs both LoRAs at run time: their sum).
"""

from __future__ import annotations

import logging

from ..evaluation.cost import Cost
from ..lora.io import LoraFile
from .method import BuildContext, MergeMethod

logger = logging.getLogger(__name__)


def lora_file_mb(lora: LoraFile) -> float:
    """Size of ``lora`` as a safetensors file in MiB (serialised in memory exactly as it is saved)."""
    from safetensors.torch import save

    return len(save({k: v.contiguous() for k, v in lora.state_dict.items()}, metadata=lora.metadata)) / 2**20


def method_cost(c: Cost | None = None, log: dict | None = None, file_mb: float | None = None) -> dict:
    """One method's cost entry, from a measurement ``c`` or a stage's log (seconds, peak_mb, memory_kind)."""
    if log is not None:
        return {"merge_seconds": log.get("seconds"), "peak_mb": log.get("peak_mb"),
                "memory_kind": log.get("memory_kind", "unmeasured"), "file_mb": file_mb}
    if c is not None:
        return {"merge_seconds": c.seconds, "peak_mb": c.peak_mb, "memory_kind": c.memory_kind, "file_mb": file_mb}
    return {"file_mb": file_mb}


def build_methods(methods: dict[str, MergeMethod], ctx: BuildContext) -> tuple[dict[str, LoraFile], dict[str, dict]]:
    """({method: LoraFile} for the file-backed methods, {method: cost}) for every method that is built
    (``MergeMethod.built``; a LoRA as trained is not), in order."""
    files, costs = {}, {}
    for name, method in methods.items():
        if not method.built:
            continue
        if not method.needs_text_encoder_parts and any(ctx.text_encoders.values()):
            logger.warning("%s: the LoRAs' text-encoder parts are left out (this method is built on the UNet "
                           "parts only); ZipLoRA and the direct merge combine them directly.", name)
        lora, costs[name] = method.build(ctx)
        if lora is not None:
            files[name] = lora
        logger.info("Method %-18s (%s): %s", name, method.kind,
                    ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in costs[name].items()))
    return files, costs


def trained_costs(methods: dict[str, MergeMethod], ctx: BuildContext) -> dict[str, dict]:
    """{method: cost} of the methods that are not built (``SingleLora``: a LoRA as trained), from ``ctx``'s
    sources and training logs."""
    return {name: method.build(ctx)[1] for name, method in methods.items() if not method.built}
