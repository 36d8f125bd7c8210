"""The merging methods compared by generation and evaluation, each a named entry of parameters.

A method is ``{name: {kind: ..., <options>}}``; ``kind`` defaults to the name, so the built-in
names need no kind. Each kind is a strategy object (its options dataclass) that knows how to
put the method on a pipeline's UNet and take it off again:

- ``base``: the base model alone;
- ``lora``: one LoRA file as it is (subject, style, joint training, the direct merge, or the
  exported ZipLoRA), loaded with plain diffusers ``load_lora_weights`` + ``set_adapters``;
- ``ziplora``: ZipLoRA's learned mergers exported at chosen subject/style strengths (paper §5:
  style 1.0 / 0.7 / 0.4), then loaded like any LoRA;
- ``peft``: a PEFT ``add_weighted_adapter`` merge (cat, ties, dare_ties, svd, ...), loaded like any LoRA;
- ``k_lora``: K-LoRA's per-layer, per-step selection (training-free, no file).
"""

from __future__ import annotations

import difflib
import io
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from .config_utils import ConfigError, from_dict, require
from .k_lora import KLoRA, KLoraConfig
from .lora_factors import unet_lora_factors
from .lora_io import LoraFile, load_lora_file
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
    "peft_ties": {"kind": "peft", "combination_type": "ties", "density": 0.5},
    "peft_dare_ties": {"kind": "peft", "combination_type": "dare_ties", "density": 0.5},
    "peft_svd": {"kind": "peft", "combination_type": "svd"},
}


def _adapter_on(pipe, name: str, lora: LoraFile, scale: float = 1.0):
    """Load ``lora`` as the only active adapter; ``unload_lora_weights`` restores the plain UNet."""
    load_lora_file(pipe, lora, name)
    pipe.set_adapters([name], [scale])


@dataclass(frozen=True)
class BaseOptions:
    """The base model alone."""

    @contextmanager
    def applied(self, pipe, name: str, loras: dict[str, LoraFile]) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class LoraOptions:
    """One LoRA file as the pipeline made it."""

    source: str = "subject"  # subject | style | joint | direct_merge | ziplora
    scale: float = 1.0  # set_adapters weight

    def __post_init__(self):
        require(self.source in LORA_SOURCES, f"lora source {self.source!r} is not one of {list(LORA_SOURCES)}.")

    @contextmanager
    def applied(self, pipe, name: str, loras: dict[str, LoraFile]) -> Iterator[None]:
        _adapter_on(pipe, name, loras[self.source], self.scale)
        try:
            yield
        finally:
            pipe.unload_lora_weights()


class _BuiltLora:
    """Kinds whose LoRA file ``build_method_lora`` makes; ``loras[<method name>]`` holds it."""

    @contextmanager
    def applied(self, pipe, name: str, loras: dict[str, LoraFile]) -> Iterator[None]:
        _adapter_on(pipe, name, loras[name])
        try:
            yield
        finally:
            pipe.unload_lora_weights()


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
    def applied(self, pipe, name: str, loras: dict[str, LoraFile]) -> Iterator[None]:
        klora = KLoRA(unet_lora_factors(loras["subject"], "subject LoRA"),
                      unet_lora_factors(loras["style"], "style LoRA"), self)
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

    def applied(self, pipe, loras: dict[str, LoraFile]):
        """Context manager: the method on ``pipe.unet`` inside, the plain UNet again after."""
        return self.options.applied(pipe, self.name, loras)


def parse_method(name: str, raw: dict | None, where: str = "generation.methods") -> MethodSpec:
    """``{kind, enabled, **options}`` -> ``MethodSpec``; an unknown name/kind lists the valid ones."""
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


def build_method_lora(spec: MethodSpec, loras: dict[str, LoraFile], mergers: dict | None = None,
                      peft_merger=None) -> LoraFile:
    """The LoRA file of a ``ziplora`` or ``peft`` method (other kinds have none to build)."""
    from .merge_export import factors_to_lora_file, merged_factors

    if spec.kind == "ziplora":
        require(mergers is not None, f"method {spec.name} needs the ZipLoRA mergers (run the merge pipeline).")
        factors = {n: unet_lora_factors(loras[n], f"{n} LoRA") for n in ("subject", "style")}
        strengths = {"subject": spec.options.subject_scale, "style": spec.options.style_scale}
        return factors_to_lora_file(merged_factors(factors, mergers, strengths),
                                    description=f"ZipLoRA, strengths {strengths}")
    if spec.kind == "peft":
        return peft_merger.merge(spec.options, spec.name)
    raise ValueError(f"method {spec.name} (kind {spec.kind}) has no LoRA file to build.")


def lora_file_mb(lora: LoraFile) -> float:
    """Size of ``lora`` as a safetensors file, in MiB (serialised in memory, exactly as saved)."""
    from safetensors.torch import save

    buf = io.BytesIO(save({k: v.contiguous() for k, v in lora.state_dict.items()}, metadata=lora.metadata))
    return buf.getbuffer().nbytes / 2**20
