"""ZipLoRA: the subject and style LoRAs with learned per-column mergers (Eq. 2), exported at chosen
strengths c_i folded into B (paper §5 shows style 1.0 / 0.7 / 0.4). The mergers are learned once by the
merge stage (``optimise.ziplora_merge``, Eq. 3); every ZipLoRA entry re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from .build import lora_file_mb, method_cost
from .export import ziplora_file
from .method import BuildContext, MergeMethod


@dataclass(frozen=True)
class ZipLoraOptions:
    subject_scale: float = 1.0
    style_scale: float = 1.0  # paper §5: 1.0 / 0.7 / 0.4


class ZipLora(MergeMethod):
    kind = "ziplora"
    Options = ZipLoraOptions

    @property
    def style_scale(self) -> float:
        return self.options.style_scale

    def build(self, ctx: BuildContext):
        if ctx.mergers is None:
            raise ValueError(f"Method '{self.name}' needs ZipLoRA's mergers: run the merge stage's ziplora_merge node.")
        strengths = {"subject": self.options.subject_scale, "style": self.options.style_scale}
        description = (f"ZipLoRA merge of {ctx.description}" if ctx.description else "")
        if strengths != {"subject": 1.0, "style": 1.0}:
            description += f" (subject {self.options.subject_scale:g}, style {self.options.style_scale:g})"
        lora = ziplora_file(ctx.factors, ctx.text_encoders, ctx.mergers, strengths, self.name, description)
        # its cost is learning the mergers (the merge log); re-exporting them is a concatenation
        return lora, method_cost(log=ctx.logs.get("ziplora"), file_mb=lora_file_mb(lora))
