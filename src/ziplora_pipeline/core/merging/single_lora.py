"""One LoRA file as the pipeline trained it: the subject LoRA, the style LoRA or the joint LoRA (the
paper's references and its second baseline, joint training on both concepts' images).

Nothing is built or copied: generation and evaluation load the trained file itself (``MethodAssets.sources``),
and its cost is read from where it was made, the training stage (the joint LoRA's log: training it is the
joint method's cost; the subject and style LoRAs merge nothing, so only their file size counts)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config_utils import require
from .build import lora_file_mb, method_cost
from .method import BuildContext, MergeMethod, MethodAssets, lora_applied

SOURCES = ("subject", "style", "joint")


@dataclass(frozen=True)
class SingleLoraOptions:
    source: str = "subject"  # subject | style | joint
    scale: float = 1.0  # set_adapters weight

    def __post_init__(self):
        require(self.source in SOURCES, f"lora source {self.source!r} is not one of {list(SOURCES)}.")


class SingleLora(MergeMethod):
    kind = "lora"
    Options = SingleLoraOptions
    built = False

    def build(self, ctx: BuildContext):
        """(None, its cost): ``ctx.logs`` holds the training logs that count (the joint LoRA's)."""
        lora = ctx.source(self.options.source, self.name)
        return None, method_cost(log=ctx.logs.get(self.options.source), file_mb=lora_file_mb(lora))

    def applied(self, pipe, assets: MethodAssets):
        return lora_applied(pipe, self.name, assets.source(self.options.source, self.name), self.options.scale)
