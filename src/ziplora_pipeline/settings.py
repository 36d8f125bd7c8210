"""Kedro project settings."""

from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.utils import find_kedro_project

from .kedro_glue.hooks import (
    ErrorSummaryHooks,
    GridHooks,
    GridRunHooks,
    InterruptHooks,
    MemoryHooks,
    MlflowArtifactHooks,
    ModelRegistryHooks,
    PreflightHooks,
    RunTrackingHooks,
    StageRollbackHooks,
)
from .kedro_glue.quiet import silence_known_warnings

silence_known_warnings()


def project_root() -> str:
    """The root of the Kedro project being run: the nearest folder at or above the working
    directory whose pyproject.toml has ``[tool.kedro]`` (how ``kedro run`` finds its project).

    Not derived from this file's location: the package may be installed (site-packages) or
    shared by several project copies, and the MLflow database belongs to the project run.
    """
    return (find_kedro_project(Path.cwd()) or Path.cwd()).resolve().as_posix()


HOOKS = (GridHooks(), GridRunHooks(), PreflightHooks(), MlflowArtifactHooks(), RunTrackingHooks(), ErrorSummaryHooks(),
         MemoryHooks(), InterruptHooks(), StageRollbackHooks(), ModelRegistryHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/sdxl overrides single keys (e.g. subject.lora.rank) instead of replacing whole sections.
    # conf/local/dagster.yml likewise: `jobs: {grid: {executor: dask}}` and the scheduler's address (docs/grid.md).
    "merge_strategy": {"parameters": "soft", "dagster": "soft"},
    # ${project_root:} in mlflow.yml: sqlite URIs are otherwise relative to the working directory.
    "custom_resolvers": {"project_root": project_root},
}
