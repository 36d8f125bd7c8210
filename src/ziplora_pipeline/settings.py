"""Kedro project settings."""

from pathlib import Path

from kedro.config import OmegaConfigLoader

from .hooks import MlflowArtifactHooks, ParameterValidationHooks

PROJECT_ROOT = Path(__file__).resolve().parents[2]

HOOKS = (ParameterValidationHooks(), MlflowArtifactHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/sdxl overrides single keys (e.g. subject.lora.rank) instead of replacing whole sections.
    "merge_strategy": {"parameters": "soft"},
    # ${project_root:} in mlflow.yml: sqlite URIs are otherwise relative to the working directory.
    "custom_resolvers": {"project_root": lambda: PROJECT_ROOT.as_posix()},
}
