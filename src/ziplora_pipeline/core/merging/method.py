"""The merging methods compared by generation and evaluation, each a named entry of parameters.

A method is ``{name: {kind: ..., <options>}}``; ``kind`` defaults to the name, so the built-in
names need no kind. Each kind is a strategy object (its options dataclass) that knows how to
put the method on a pipeline's UNet and take it off again:

- ``base``: the base model alone;
- ``lora``: one LoRA file as it is (subject, style, joint training, the direct merge, or the
  exported ZipLoRA), loaded by diffusers' LoRA loader (``load_lora_into_unet``, which
  ``load_lora_weights`` calls; core.lora_io) and activated with ``set_adapters``;
- ``ziplora``: ZipLoRA's learned mergers exported at chosen subject/style strengths (paper §5:
  style 1.0 / 0.7 / 0.4), then loaded like any LoRA;
- ``peft``: a PEFT ``add_weighted_adapter`` merge (cat, ties_svd, dare_ties_svd, svd, ...), loaded like any LoRA;
- ``k_lora``: K-LoRA's per-layer, per-step selection (training-free, no file).
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ..config_utils import ConfigError, from_dict, require
from .k_lora import KLoRA, KLoraConfig
from ..lora.factors import unet_lora_factors
from ..lora.io import LoraFile, load_lora_file
from .peft_merges import PeftMergeConfig

LORA_SOURCES = ("subject", "style", "joint", "direct_merge", "ziplora")  # LoRA files the pipeline makes

DEFAULT_METHODS: dict[str, dict] = {
    "base": {},
    "subject_lora": {"kind": "lora", "source": "subject"},
    "style_lora": {"kind": "lora", "source": "style"},
    "direct_merge": {"kind": "lora", "source": "direct_merge"},
    "joint": {"kind": "lora", "source": "joint"},
    "ziplora": {"style_scale": 1.0},
    "ziplora_style0p7": {"kind": "ziplora", "style_scale": 0.7},
    "ziplora_style0p4": {"kind": "ziplora", "style_scale": 0.4},
    "k_lora": {},
    "peft_cat": {"kind": "peft", "combination_type": "cat"},
    # the SVD variants sparsify the full ΔW of each LoRA; plain ties/dare_ties would merge unrelated A/B bases
    "peft_ties_svd": {"kind": "peft", "combination_type": "ties_svd", "density": 0.5},
    "peft_dare_ties_svd": {"kind": "peft", "combination_type": "dare_ties_svd", "density": 0.5},
    "peft_svd": {"kind": "peft", "combination_type": "svd"},
}


@dataclass
class MethodAssets:
    """What methods load: ``files[<method name>]`` for file-backed methods (``core.method_build``),
    and the subject and style LoRAs (K-LoRA fuses them at run time)."""

    files: dict[str, LoraFile]
    subject: LoraFile
    style: LoraFile

    def file(self, name: str) -> LoraFile:
        if name not in self.files:
            raise ValueError(f"Method '{name}' has no LoRA file among {sorted(self.files)}: the method files are from a "
                           "run where it was switched off. Run `kedro run --pipelines generation` to rebuild them.")
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


@dataclass(frozen=True)
class BaseOptions:
    """The base model alone."""

    @contextmanager
    def applied(self, pipe, name: str, assets: MethodAssets) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class LoraOptions:
    """One LoRA file as the pipeline made it."""

    source: str = "subject"  # subject | style | joint | direct_merge | ziplora
    scale: float = 1.0  # set_adapters weight

    def __post_init__(self):
        require(self.source in LORA_SOURCES, f"lora source {self.source!r} is not one of {list(LORA_SOURCES)}.")

    def applied(self, pipe, name: str, assets: MethodAssets):
        return lora_applied(pipe, name, assets.file(name), self.scale)  # a copy of the source file


class _BuiltLora:
    """Kinds whose LoRA file ``MethodBuilder`` makes; ``assets.file(<method name>)`` holds it."""

    def applied(self, pipe, name: str, assets: MethodAssets):
        return lora_applied(pipe, name, assets.file(name))


@dataclass(frozen=True)
class ZipLoraOptions(_BuiltLora):
    """The ZipLoRA merge exported with strengths c_i folded into B (merge_export.merged_factors)."""

    subject_scale: float = 1.0
    style_scale: float = 1.0  # paper §5 shows 1.0 / 0.7 / 0.4


@dataclass(frozen=True)
class PeftOptions(_BuiltLora, PeftMergeConfig):
    """A PEFT ``add_weighted_adapter`` merge (see core.peft_merges)."""


@dataclass(frozen=True)
class KLoraOptions(KLoraConfig):
    """K-LoRA on the subject and style LoRAs (see core.k_lora)."""

    @contextmanager
    def applied(self, pipe, name: str, assets: MethodAssets) -> Iterator[None]:
        klora = KLoRA(unet_lora_factors(assets.subject, "subject LoRA", pipe.unet.config),
                      unet_lora_factors(assets.style, "style LoRA", pipe.unet.config), self)
        with klora.attach(pipe.unet, pipe.scheduler.config.num_train_timesteps):
            yield


KINDS: dict[str, type] = {"base": BaseOptions, "lora": LoraOptions, "ziplora": ZipLoraOptions,
                          "peft": PeftOptions, "k_lora": KLoraOptions}
BUILT_KINDS = ("ziplora", "peft")  # kinds whose LoRA file is built before generation


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str
    options: Any  # one of KINDS' classes
    enabled: bool = True

    def applied(self, pipe, assets: MethodAssets):
        """Context manager: the method on ``pipe.unet`` inside, the plain UNet again after."""
        return self.options.applied(pipe, self.name, assets)


def parse_method(name: str, raw: dict | None, where: str = "generation.methods") -> MethodSpec:
    """``{kind, enabled, **options}`` -> ``MethodSpec``; an unknown name/kind lists the valid ones."""
    require(raw is None or isinstance(raw, dict),
            f"{where}.{name} must be a mapping such as {{kind: peft, combination_type: ties}}, got {raw!r}.")
    raw = dict(raw or {})
    kind = raw.pop("kind", name)
    enabled = raw.pop("enabled", True)
    if kind not in KINDS:
        close = difflib.get_close_matches(name, list(DEFAULT_METHODS) + list(KINDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"Unknown method '{name}' in {where} (kind '{kind}').{hint} Valid method names: "
            f"{sorted(DEFAULT_METHODS)}; any other name needs `kind:` one of {sorted(KINDS)}.")
    require(isinstance(enabled, bool), f"{where}.{name}.enabled must be true or false, got {enabled!r}.")
    return MethodSpec(name, kind, from_dict(KINDS[kind], raw, f"{where}.{name}"), enabled)


def parse_methods(raw: dict[str, dict], where: str = "generation.methods") -> dict[str, MethodSpec]:
    """All entries, in order; at least one must be enabled."""
    specs = {name: parse_method(name, entry, where) for name, entry in (raw or {}).items()}
    require(any(s.enabled for s in specs.values()),
            f"{where}: every method is switched off; enable at least one of {sorted(specs) or sorted(DEFAULT_METHODS)}.")
    return specs
