"""What several test modules share besides fixtures: paths, sizes, the parameters file's methods, and ``kedro``
run in a scratch copy of the project (``kedro_glue.scratch_project``, which the benchmarks use too)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 64  # pixels; the miniature model's native size
SUBJECT_PARAMS = {"folder": "robot", "token": "sks", "noun": "robot", "template": "a photo of {token} {noun}"}
STYLE_PARAMS = {"folder": "sketch", "token": "zwx", "noun": "house", "template": "a {noun} in {token} style"}
KEDRO_TIMEOUT_S = 600  # per kedro subprocess


@lru_cache(maxsize=1)
def default_methods() -> dict[str, dict]:
    """``merge.methods`` of conf/base/parameters_merge.yml: the only list of the compared methods."""
    import yaml

    return yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_merge.yml").read_text())["merge"]["methods"]


def grid_methods() -> list[str]:
    """``grid.methods`` of conf/base/parameters_grid.yml: what every pair generates besides its references."""
    import yaml

    return yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_grid.yml").read_text())["grid"]["methods"]


def enabled_methods() -> list[str]:
    """The default run's methods, in parameter order."""
    return [n for n, e in default_methods().items() if (e or {}).get("enabled", True)]


def copy_project(root: Path, mini_model_path: Path | None = None, sample_size: int = 128,
                 models: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Path:
    """A runnable copy of the project (``scratch_project.copy_project``): sample data at ``sample_size`` px, the
    session's random miniature at the default base-model path when given, the checkout's ``models``."""
    from ziplora_pipeline.kedro_glue.scratch_project import copy_project as copy

    return copy(root, sample_size, models, mini_model_path, extra)


def kedro(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``kedro <args>`` in ``project``; stdout and stderr in one stream (``proc.stdout``; ``proc.stderr`` is "")."""
    from ziplora_pipeline.kedro_glue.scratch_project import run_kedro

    proc, _ = run_kedro(project, *args, timeout=KEDRO_TIMEOUT_S)
    proc.stderr = ""
    if check and proc.returncode != 0:
        pytest.fail(f"kedro {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-12000:]}")
    return proc


def to_sgm(kohya, layers_per_block: int):
    """Rename diffusers-style kohya keys to SGM block names, as kohya's SDXL scripts write them
    (input_blocks_{1 + i(L+1) + j}_1, middle_block_1, output_blocks_{i(L+1) + j}_1 for attentions, _0_skip_connection
    for resnet shortcuts)."""
    import re

    from ziplora_pipeline.core.lora.io import LoraFile

    step = layers_per_block + 1

    def sgm(key: str) -> str:
        if key.startswith("lora_te"):  # text-encoder keys are the same in both schemes
            return key
        if m := re.match(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.*)", key):
            return f"lora_unet_input_blocks_{1 + int(m[1]) * step + int(m[2])}_1_{m[3]}"
        if m := re.match(r"lora_unet_down_blocks_(\d+)_resnets_(\d+)_conv_shortcut(.*)", key):
            return f"lora_unet_input_blocks_{1 + int(m[1]) * step + int(m[2])}_0_skip_connection{m[3]}"
        if m := re.match(r"lora_unet_mid_block_attentions_0_(.*)", key):
            return f"lora_unet_middle_block_1_{m[1]}"
        if m := re.match(r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.*)", key):
            return f"lora_unet_output_blocks_{int(m[1]) * step + int(m[2])}_1_{m[3]}"
        if m := re.match(r"lora_unet_up_blocks_(\d+)_resnets_(\d+)_conv_shortcut(.*)", key):
            return f"lora_unet_output_blocks_{int(m[1]) * step + int(m[2])}_0_skip_connection{m[3]}"
        raise AssertionError(key)

    return LoraFile({sgm(k): v for k, v in kohya.state_dict.items()}, kohya.metadata)
