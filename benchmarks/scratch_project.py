"""A scratch copy of the project for benchmarks that run ``kedro`` itself (run_memory.py, job_time.py): the repo's
catalog, MLflow store and conf/local are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_project(root: Path, sample_size: int = 64, models: tuple[str, ...] = ("toy_judges",)) -> Path:
    """conf/ (an empty conf/local), pyproject.toml, the sample data at ``sample_size`` px and the committed
    ``data/06_models/<models>``: a project that has never run."""
    from ziplora_pipeline.sample_data import write_sample_data

    shutil.copytree(ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, root / name)
    (root / "src").mkdir()  # bootstrap_project requires the source dir to exist
    write_sample_data(root / "data" / "01_raw", size=sample_size)
    for folder in models:
        shutil.copytree(ROOT / "data" / "06_models" / folder, root / "data" / "06_models" / folder)
    return root


def kedro(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """``kedro <args>`` in ``project`` (offline, no telemetry, wide log lines); (stdout and stderr, wall seconds).
    Exits with the log's tail if kedro fails."""
    kedro_bin = Path(sys.executable).with_name("kedro")
    cmd = [str(kedro_bin)] if kedro_bin.exists() else [sys.executable, "-m", "kedro"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full_env.update(HF_HUB_OFFLINE="1", KEDRO_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", COLUMNS="250")
    full_env.update(env or {})
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *args], cwd=project, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"kedro {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}")
    return proc.stdout, seconds
