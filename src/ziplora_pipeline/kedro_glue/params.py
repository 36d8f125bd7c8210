"""Typed parameters: the schema of ``conf/*/parameters*.yml``, checked before any node runs.

Each top-level key maps to a frozen dataclass; ``validate_parameters`` builds them all, so a
typo anywhere (``subject.lora.rnak``) fails at the start of ``kedro run`` with the key's
location and a suggestion, not hours later when the stage that reads it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.config_utils import ConfigError, from_dict, require
from ..core.diffusion.base_model import BaseModelConfig
from ..core.evaluation.generation import GenerationConfig
from ..core.evaluation.grid import GridConfig
from ..core.evaluation.judges import EvaluationConfig
from ..core.lora.training import LoraTrainingConfig
from ..core.merging.method import MergeMethod
from ..core.merging.optimise import MergeConfig
from ..core.merging.registry import parse_methods
from ..core.toy_world.config import PretrainConfig


@dataclass(frozen=True)
class ConceptDataConfig:
    """One concept's reference folder and its DreamBooth prompt."""

    folder: str  # a folder name under data/01_raw/subjects/ or data/01_raw/styles/
    token: str  # rare identifier, e.g. "sks" (subject) or "zwx" (style)
    noun: str  # class noun (subject) or what the style image shows (style)
    template: str  # e.g. "a photo of {token} {noun}" or "a {noun} in {token} style"

    def __post_init__(self):
        require(bool(self.folder), "data_prep.<concept>.folder must name a folder.")
        try:
            self.template.format(token=self.token, noun=self.noun)
        except (KeyError, IndexError) as err:
            raise ConfigError(f"Prompt template {self.template!r} may only use {{token}} and {{noun}} ({err}).") from err

    @property
    def prompt(self) -> str:
        return self.template.format(token=self.token, noun=self.noun)


@dataclass(frozen=True)
class DataPrepConfig:
    resolution: int = 64  # training resolution in pixels (SDXL: 1024)
    subject: ConceptDataConfig = field(default_factory=lambda: ConceptDataConfig(
        "robot", "sks", "robot", "a {token} {noun}"))
    style: ConceptDataConfig = field(default_factory=lambda: ConceptDataConfig(
        "sketch", "zwx", "house", "a {noun} in {token} style"))

    def __post_init__(self):
        require(self.resolution >= 8 and self.resolution % 8 == 0,
                f"data_prep.resolution must be a positive multiple of 8, got {self.resolution}.")


@dataclass(frozen=True)
class LoraStageConfig:
    lora: LoraTrainingConfig = field(default_factory=LoraTrainingConfig)


@dataclass(frozen=True)
class MergeStage:
    """``merge:``: the ZipLoRA optimisation (``MergeConfig``'s keys, flat) and ``methods``, every compared method
    (the registry's classes, in parameter order, switched-off ones included)."""

    config: MergeConfig
    methods: dict[str, MergeMethod]

    @property
    def enabled(self) -> dict[str, MergeMethod]:
        return {n: m for n, m in self.methods.items() if m.enabled}


def merge_stage(raw: dict | None, where: str = "merge") -> MergeStage:
    """``params:merge`` -> ``MergeStage``; an unknown key, method kind or method option fails with its location."""
    raw = dict(raw or {})
    methods = raw.pop("methods", None)
    # no methods key at all (a partial parameters dict): nothing to check; the merge stage's nodes require them
    parsed = {} if methods is None else parse_methods(methods, f"{where}.methods", enabled_only=False)
    return MergeStage(from_dict(MergeConfig, raw, where), parsed)


SCHEMA: dict[str, Any] = {
    "base_model": BaseModelConfig,
    "data_prep": DataPrepConfig,
    "subject": LoraStageConfig,
    "style": LoraStageConfig,
    "merge": merge_stage,  # a function: its methods go through the registry
    "joint": LoraStageConfig,
    "generation": GenerationConfig,
    "evaluation": EvaluationConfig,
    "pretrain": PretrainConfig,
    "grid": GridConfig,
}


# keys moved by a refactor (docs/extending.md), named with where they went when an old conf/local still has them
MOVED = {
    "generation.methods": "merge.methods (conf/base/parameters_merge.yml)",
    "merge.subject_scale": "merge.methods.<ziplora entry>.subject_scale",
    "merge.style_scale": "merge.methods.<ziplora entry>.style_scale",
    "merge.direct_weights": "merge.methods.direct_merge.weights",
}


def validate_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Build every stage's config from ``params``; raise ``ConfigError`` on the first problem."""
    import difflib

    for key, moved in MOVED.items():
        section, _, name = key.partition(".")
        if isinstance(params.get(section), dict) and name in params[section]:
            raise ConfigError(f"{key} is now {moved}. Move the entries there in conf/local (or in --params).")
    for key in params:
        if key not in SCHEMA:
            close = difflib.get_close_matches(key, SCHEMA, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown top-level parameter '{key}'.{hint} Valid: {sorted(SCHEMA)}.")
    return {key: (from_dict(cls, params.get(key), key) if isinstance(cls, type) else cls(params.get(key), key))
            for key, cls in SCHEMA.items()}
