"""The base model alone: no LoRA (the lower reference of every judged axis)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

from .method import BuildContext, MergeMethod, MethodAssets


@dataclass(frozen=True)
class BaseOnlyOptions:
    """No options."""


class BaseOnly(MergeMethod):
    kind = "base"
    Options = BaseOnlyOptions

    def build(self, ctx: BuildContext):
        return None, {}

    def applied(self, pipe, assets: MethodAssets):
        return nullcontext()
