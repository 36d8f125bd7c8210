"""A scratch copy of this project, and ``kedro`` run in it as a user runs it: for the end-to-end tests and the
benchmarks that run whole jobs (run_memory.py, job_time.py), so that the repository's catalog, MLflow store
and conf/local are never touched. For a source checkout (the copy takes conf/ and data/ from it).

The copy has an empty ``src/`` (``bootstrap_project`` requires the folder; the package comes from the
installed, editable source) and runs ``kedro`` as a subprocess whose working directory is the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[3]  # src/ziplora_pipeline/kedro_glue/ -> the checkout


def copy_project(root: Path, sample_size: int = 64, models: tuple[str, ...] = ("toy_judges",),
                 base_model: Path | None = None, extra: tuple[str, ...] = ()) -> Path:
    """conf/ (with an empty conf/local), pyproject.toml, the sample data at ``sample_size`` px, the checkout's
    ``data/06_models/<models>``, optionally ``base_model`` copied to the default base-model path
    (data/06_models/toy_sdxl) and ``extra`` top-level folders (e.g. notebooks): a project that has never run."""
    from ..sample_data import write_sample_data

    shutil.copytree(SOURCE_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        if (SOURCE_ROOT / name).exists():
            shutil.copy(SOURCE_ROOT / name, root / name)
    (root / "src").mkdir()
    write_sample_data(root / "data" / "01_raw", size=sample_size)
    for folder in models:
        shutil.copytree(SOURCE_ROOT / "data" / "06_models" / folder, root / "data" / "06_models" / folder)
    if base_model is not None:
        shutil.copytree(base_model, root / "data" / "06_models" / "toy_sdxl")
    for folder in extra:
        shutil.copytree(SOURCE_ROOT / folder, root / folder)
    return root


def run_kedro(project: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``kedro <args>`` in ``project`` (offline, no telemetry, no inherited MLFLOW_* settings, wide log lines):
    (the finished process, its stdout and stderr in one stream ``proc.stdout`` in the order a user sees them;
    wall seconds). The caller checks ``proc.returncode``."""
    kedro_bin = Path(sys.executable).with_name("kedro")
    cmd = [str(kedro_bin)] if kedro_bin.exists() else [sys.executable, "-m", "kedro"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full_env.update(HF_HUB_OFFLINE="1", KEDRO_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", COLUMNS="250")
    full_env.update(env or {})
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *args], cwd=project, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, check=False)
    return proc, time.perf_counter() - start
