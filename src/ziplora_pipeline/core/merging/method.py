"""The merge-method protocol: what every compared method is, and what it may use.

A method is a named entry of ``merge.methods`` (conf/base/parameters_merge.yml, the only list of
methods): ``{name: {kind: ..., enabled: ..., <options>}}``, ``kind`` defaulting to the name. Each
kind is one ``MergeMethod`` subclass in its own file under ``core/merging/``, found through
``registry.py``. A method

- parses its options into its ``Options`` dataclass (an unknown key fails at once),
- ``build``\\ s itself from the two loaded LoRAs (``BuildContext``) in the merge stage, returning
  the LoRA file a user ships (or None: the base model, K-LoRA) and what building it cost,
- is ``applied`` to a pipeline's UNet for generation and evaluation and restored after.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterator

from ..lora.factors import LoraFactors, unet_lora_factors
from ..lora.io import LoraFile, load_lora_file
from .export import text_encoder_parts


@dataclass
class MethodAssets:
    """What methods load at generation time: ``files[<method name>]`` for the methods the merge stage built, and
    ``sources``, the LoRAs as trained ({"subject", "style"[, "joint"]}: the single-LoRA methods load them as they
    are, K-LoRA fuses the first two at run time)."""

    files: dict[str, LoraFile]
    sources: dict[str, LoraFile]

    @property
    def subject(self) -> LoraFile:
        return self.sources["subject"]

    @property
    def style(self) -> LoraFile:
        return self.sources["style"]

    def source(self, name: str, method: str) -> LoraFile:
        if name not in self.sources:
            raise ValueError(f"Method '{method}' needs the {name} LoRA, which this run does not have (it has "
                             f"{sorted(self.sources)}); switch the method off or run the pipeline that trains it.")
        return self.sources[name]

    def file(self, name: str) -> LoraFile:
        if name not in self.files:
            raise ValueError(f"Method '{name}' has no LoRA file among {sorted(self.files)}: the method files are from a "
                             "run where it was switched off. Run `kedro run --pipelines merge` to rebuild them.")
        return self.files[name]


@contextmanager
def lora_applied(pipe, name: str, lora: LoraFile, scale: float = 1.0) -> Iterator[None]:
    """``lora`` as the only active adapter inside; ``unload_lora_weights`` restores the plain UNet after."""
    load_lora_file(pipe, lora, name)
    pipe.set_adapters([name], [scale])
    try:
        yield
    finally:
        pipe.unload_lora_weights()


@dataclass
class BuildContext:
    """What building a method may use: the LoRA files the pipeline made, ZipLoRA's mergers and the logs.

    Args:
        sources: {"subject", "style"[, "joint"]: LoraFile} (the grid has no joint LoRA).
        mergers: ZipLoRA's merger vectors {"<path>.<subject|style>": m (in,)}, or None before the merge.
        logs: {"ziplora": merge log, "joint": joint training log} (seconds, peak_mb, memory_kind).
        load_unet: returns a fresh UNet on the target device (PEFT merges modify it in place).
        device: where costs are measured.
        unet_config: the UNet's config, to parse kohya files with SGM block names (``unet_lora_factors``).
        description: who is merged ("'a sks robot' and 'a house in zwx style'"), for the files' headers.
        statistics: {"subject" | "style": ConceptStats}, each concept's recorded layer inputs (closed_form.py), for
            the methods solved from them (``ziplora_closed_form``); None where the run did not record them.
        load_pipeline: returns the base pipeline (encoders included), for methods that take UNet steps.
        concepts: {"subject" | "style": (reference images, prompt)}, the merge's training data, for the same.
        merge_config: the merge stage's ``MergeConfig`` (the optimiser's settings ZipLoRA was learned with).
    """

    sources: dict[str, LoraFile]
    mergers: dict | None = None
    logs: dict[str, dict] = field(default_factory=dict)
    load_unet: Callable[[], Any] | None = None
    device: Any = "cpu"
    unet_config: Any = None
    description: str = ""
    cache: dict = field(default_factory=dict)  # shared between methods of one build (e.g. peft's adapters)
    statistics: dict | None = None
    load_pipeline: Callable[[], Any] | None = None
    concepts: dict | None = None
    merge_config: Any = None

    def source(self, name: str, method: str) -> LoraFile:
        if name not in self.sources:
            raise ValueError(f"Method '{method}' needs the {name} LoRA, which this run does not make (it has "
                             f"{sorted(self.sources)}); switch the method off or run the pipeline that trains it.")
        return self.sources[name]

    @cached_property
    def factors(self) -> dict[str, dict[str, LoraFactors]]:
        """{"subject" | "style": {module path: factors}}: the two LoRAs' UNet parts, parsed once."""
        return {n: unet_lora_factors(self.sources[n], f"{n} LoRA", self.unet_config) for n in ("subject", "style")}

    @cached_property
    def text_encoders(self) -> dict:
        """The two LoRAs' text-encoder parts (``text_encoder_parts``), parsed once."""
        return text_encoder_parts({n: self.sources[n] for n in ("subject", "style")})


class MergeMethod(ABC):
    """One compared method. Subclasses set ``kind`` (its registry name) and ``Options`` (a frozen dataclass of
    its parameters) and implement ``build``; ``applied`` defaults to loading the method's built file."""

    kind: ClassVar[str]
    Options: ClassVar[type]
    built: ClassVar[bool] = True  # False: nothing to build (a LoRA as trained); ``build`` only says what it cost
    needs_text_encoder_parts: ClassVar[bool] = True  # False: built from the UNet parts only (logged when dropped)

    def __init__(self, name: str, options: Any, enabled: bool = True):
        self.name, self.options, self.enabled = name, options, enabled

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.options!r}, enabled={self.enabled})"

    @property
    def style_scale(self) -> float | None:
        """The style strength the method is exported at, where it has one (the report's strength curve)."""
        return None

    @abstractmethod
    def build(self, ctx: BuildContext) -> tuple[LoraFile | None, dict]:
        """(the method's LoRA file or None, its cost: merge_seconds, peak_mb, memory_kind, file_mb)."""

    def applied(self, pipe, assets: MethodAssets):
        """Context manager: the method on ``pipe.unet`` inside, the plain UNet again after."""
        return lora_applied(pipe, self.name, assets.file(self.name))
