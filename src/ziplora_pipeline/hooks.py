"""Project hooks: fail fast on bad parameters; log saved artifacts to the MLflow run."""

from __future__ import annotations

import logging
import os
from typing import Any

from kedro.framework.hooks import hook_impl

from .params import validate_parameters

logger = logging.getLogger(__name__)


class ParameterValidationHooks:
    """Validate every parameter against ``params.SCHEMA`` before the first node runs."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        params = catalog["parameters"].load() if "parameters" in catalog else {}
        validate_parameters(params)


class MlflowArtifactHooks:
    """Log each saved dataset whose catalog ``metadata`` has ``mlflow_artifact_path`` as an artifact.

    kedro-mlflow's ``MlflowArtifactDataset`` cannot wrap a ``versioned: true`` dataset (both
    want to own the save version), so versioned artifacts are logged here after they are saved.
    """

    def __init__(self):
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is None:
            return
        dataset = self._catalog.get(dataset_name)
        artifact_path = (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")
        if not artifact_path:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        path = saved_path(dataset)
        # One folder per dataset: subject and style LoRAs share a file name.
        target = f"{artifact_path}/{dataset_name}"
        if path and os.path.isdir(path):
            mlflow.log_artifacts(path, artifact_path=target)
        elif path and os.path.exists(path):
            mlflow.log_artifact(path, artifact_path=target)
        else:
            logger.warning("Could not find the saved file of %s to log to MLflow", dataset_name)


def saved_path(dataset) -> str | None:
    """Local path a (possibly versioned) file dataset was last saved to."""
    from kedro.io.core import get_filepath_str

    try:
        path = dataset._get_load_path() if getattr(dataset, "_version", None) else dataset._filepath
    except Exception:  # noqa: BLE001 - any dataset without a filepath simply is not logged
        return None
    return get_filepath_str(path, "file")
