"""The direct merge, the paper's first baseline: ΔW = w_c ΔW_c + w_s ΔW_s, as a rank-(r_c + r_s) LoRA
(factor concatenation, exact), text-encoder parts combined the same way."""

from __future__ import annotations

from dataclasses import dataclass

from ..config_utils import require
from ..evaluation.cost import measure
from .build import lora_file_mb, method_cost
from .export import merged_file
from .method import BuildContext, MergeMethod


@dataclass(frozen=True)
class DirectMergeOptions:
    weights: tuple[float, float] = (1.0, 1.0)  # (subject, style)

    def __post_init__(self):
        require(len(self.weights) == 2, f"direct_merge weights are [subject, style], got {list(self.weights)}.")


class DirectMerge(MergeMethod):
    kind = "direct_merge"
    Options = DirectMergeOptions

    def build(self, ctx: BuildContext):
        w_c, w_s = self.options.weights
        weights = {"subject": w_c, "style": w_s}
        with measure(ctx.device) as c:
            lora = merged_file(ctx.factors, ctx.text_encoders, weights, "direct merge",
                               f"direct merge, weights subject={w_c}, style={w_s}")
        return lora, method_cost(c, file_mb=lora_file_mb(lora))
