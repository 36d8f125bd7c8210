"""The evaluation protocol's settings and its one table (one row per method and strength setting)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ..config_utils import require
from ..merging.method import MergeMethod
from .generation import GROUPS
from .image_metrics import EncoderConfig
from .second_judge import SecondJudgeConfig

METRICS = ("subject_fidelity", "style_fidelity", "clip_style", "dino_subject", "clip_text", "harmonic")
COST = ("merge_seconds", "peak_mb", "file_mb")
COLUMNS = ("method", "kind", "style_scale", *METRICS, *COST, "memory_kind")


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation stage. Defaults run offline on the miniature model; conf/sdxl names real encoders."""

    fidelity_samples: int = 8  # (image, noise, t) draws per concept for output fidelity
    fidelity_seed: int = 0
    fidelity_timestep_range: tuple[int, int] = (0, 1000)
    batch_size: int = 8  # UNet samples / encoder images per forward
    clip: EncoderConfig = field(default_factory=lambda: EncoderConfig("data/06_models/tiny_clip", 0))
    dino: EncoderConfig = field(default_factory=lambda: EncoderConfig("data/06_models/tiny_dino", 0))
    second_judge: SecondJudgeConfig = field(default_factory=SecondJudgeConfig)  # EfficientNet-Lite0 (ImageNet)
    image_groups: tuple[str, ...] = ("merge", "recontext")  # prompt groups the image metrics average over
    compare: tuple[str, str] = ("ziplora", "direct_merge")  # the report's headline: does the first beat the second?

    def __post_init__(self):
        require(self.fidelity_samples > 0 and self.batch_size > 0, "evaluation.fidelity_samples and batch_size > 0.")
        lo, hi = self.fidelity_timestep_range
        require(0 <= lo < hi <= 1000, f"evaluation.fidelity_timestep_range must satisfy 0 <= lo < hi <= 1000, "
                                      f"got {self.fidelity_timestep_range}.")
        bad = [g for g in self.image_groups if g not in GROUPS]
        require(self.image_groups and not bad, f"evaluation.image_groups must name prompt groups among {list(GROUPS)}, "
                                               f"got {list(self.image_groups)}.")
        require(len(self.compare) == 2, "evaluation.compare is [method, baseline], e.g. [ziplora, direct_merge].")


def load_judges(cfg: EvaluationConfig, device):
    """The evaluation's judges (``image_metrics.ImageEncoders``): CLIP and DINO (or the toy world's) and, when
    ``cfg.second_judge.enabled``, the EfficientNet-Lite0 second judge: one loader for the evaluation stage, the
    grid and the merge sweep."""
    from .image_metrics import load_encoders
    from .second_judge import EfficientNetJudge

    encoders = load_encoders({"clip": cfg.clip, "dino": cfg.dino}, device)
    if cfg.second_judge.enabled:
        encoders.second = EfficientNetJudge(cfg.second_judge.weights, device, cfg.batch_size * 4,
                                            cfg.second_judge.image_size)
    return encoders


def _clean(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def metrics_frame(specs: dict[str, MergeMethod], fidelity: dict, images: dict, costs: dict) -> pd.DataFrame:
    """One row per method; empty (NaN) where a figure does not apply or could not be measured."""
    rows = []
    for name, spec in specs.items():
        row = {"method": name, "kind": spec.kind, "style_scale": spec.style_scale}
        row.update({k: _clean(v) for k, v in (fidelity.get(name) or {}).items()})
        row.update({k: _clean(v) for k, v in (images.get(name) or {}).items() if k in METRICS})
        row.update({k: _clean(v) for k, v in (costs.get(name) or {}).items() if k in (*COST, "memory_kind")})
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    numeric = ["style_scale", *METRICS, *COST]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    return frame[list(COLUMNS)]


def headline(frame: pd.DataFrame, method: str, baseline: str) -> str:
    """"ZipLoRA beats direct merge on both" (or on which), from the output-fidelity columns."""
    rows = frame.set_index("method")
    if method not in rows.index or baseline not in rows.index:
        return f"{method} vs {baseline}: not compared (one of them is switched off)."
    a, b = rows.loc[method], rows.loc[baseline]
    wins = [c for c in ("subject_fidelity", "style_fidelity") if a[c] > b[c]]
    figures = ", ".join(f"{c.split('_')[0]} {a[c]:.3f} vs {b[c]:.3f}" for c in ("subject_fidelity", "style_fidelity"))
    verdict = ("beats it on both" if len(wins) == 2 else f"beats it on {wins[0].split('_')[0]} only" if wins
               else "beats it on neither")
    return f"Output fidelity, {method} vs {baseline}: {figures}. {method} {verdict}."
