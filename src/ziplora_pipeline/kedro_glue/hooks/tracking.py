"""MLflow extras: a readable run name, the versions of the datasets a run loaded, its saved artifacts."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI: genai_development opens the GenAI view, this the Model training one
UI = "http://127.0.0.1:5000"  # `kedro mlflow ui` (conf/base/mlflow.yml ui.port)


def runs_table_url(experiment_id: str) -> str:
    """The experiment's runs table in the UI's "Model training" view (``workflowType=machine_learning``)."""
    return f"{UI}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def stage_names(run_params: dict[str, Any]) -> list[str]:
    names = run_params.get("pipeline_names") or run_params.get("pipeline_name") or ["__default__"]
    return [names] if isinstance(names, str) else list(names)


def run_label(run_params: dict[str, Any]) -> str:
    """For messages: 'the whole job', "the 'merge' stage" or "the 'a+b' stages"."""
    names = stage_names(run_params)
    if names == ["__default__"]:
        return "the whole job"
    return f"the '{'+'.join(names)}' stage" + ("s" if len(names) > 1 else "")


def run_name(run_params: dict[str, Any]) -> str:
    """MLflow run name: ``merge · 2026-11-26T12.55`` (stages, then the session's save version to the minute)."""
    names = stage_names(run_params)
    stages = "job" if names == ["__default__"] else "+".join(names)
    return f"{stages} · {str(run_params.get('run_id', ''))[:16]}".rstrip(" ·")


class CatalogHooks:
    """Hooks that look datasets up in the run's catalog (kept from ``after_catalog_created``)."""

    def __init__(self):
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog


class RunTrackingHooks(CatalogHooks):
    """What kedro-mlflow leaves out of a run: a readable name, a clean ``runner`` tag, ``subject`` / ``style`` tags
    (runs are found by pair: ``search_runs(filter_string="tags.subject = 'robot'")``) and the catalog
    version of every versioned dataset the run loaded (tag ``input_version.<dataset>`` plus an MLflow
    dataset input), so a ``merge`` run names the LoRA versions it merged.
    """

    def __init__(self):
        super().__init__()
        self._logged: set[str] = set()

    @hook_impl(trylast=True)  # after kedro-mlflow's before_pipeline_run has started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        import mlflow

        self._logged = set()
        run = mlflow.active_run()
        if run is None:
            return
        client = mlflow.MlflowClient()
        client.update_run(run.info.run_id, name=run_name(run_params))
        experiment = client.get_experiment(run.info.experiment_id)
        if KIND_TAG not in experiment.tags:  # the UI opens a "custom model development" experiment in Model training
            client.set_experiment_tag(experiment.experiment_id, KIND_TAG, "custom_model_development")
        logger.info("MLflow run %s: `kedro mlflow ui`, then %s", run.info.run_id,
                    runs_table_url(run.info.experiment_id))
        runner = str(run_params.get("runner", ""))  # kedro records the runner instance's repr
        match = re.search(r"(\w+Runner)", runner)
        if match:
            mlflow.set_tag("runner", match.group(1))
        if {"subject_prompt", "style_prompt"} & set(pipeline.datasets()):  # a one-pair stage (grid pairs: GridRunHooks)
            prep = catalog.load("params:data_prep")
            mlflow.set_tags({"subject": prep["subject"]["folder"], "style": prep["style"]["folder"]})

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is None or dataset_name in self._logged:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        dataset = self._catalog.get(dataset_name)
        if not hasattr(dataset, "resolve_load_version"):
            return
        version = dataset.resolve_load_version()
        if not version:
            return
        self._logged.add(dataset_name)
        try:
            mlflow.set_tag(f"input_version.{dataset_name}", version)
            path = saved_path(dataset)
            source = _local_source_class()
            if path and source is not None:
                from mlflow.data.meta_dataset import MetaDataset

                mlflow.log_input(MetaDataset(source(os.path.abspath(path)), name=dataset_name, digest=version),
                                 context="input")
        except Exception as err:  # noqa: BLE001 - bookkeeping must never fail the node that loaded the data
            # e.g. two Dagster workers logging the same dataset at once: sqlite's UNIQUE(experiment, name, digest)
            logger.warning("Could not record the version of %s in MLflow: %s: %s", dataset_name,
                           type(err).__name__, str(err).splitlines()[0] if str(err) else "")


def _local_source_class():
    """mlflow's ``LocalArtifactDatasetSource`` (a local file or folder): it is registered at run time, not
    importable by name, and ``resolve_dataset_source`` warns that two registrations match a local path."""
    from mlflow.data import dataset_source_registry

    return next((c for c in dataset_source_registry.get_registered_sources()
                 if c.__name__ == "LocalArtifactDatasetSource"), None)


class MlflowArtifactHooks(CatalogHooks):
    """Log each saved dataset whose catalog ``metadata`` has ``mlflow_artifact_path`` as an artifact.

    kedro-mlflow's ``MlflowArtifactDataset`` cannot wrap a ``versioned: true`` dataset (both
    want to own the save version), so versioned artifacts are logged here after they are saved.
    """

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is None:
            return
        dataset = self._catalog.get(dataset_name)
        from ...datasets import LoraSafetensorsDataset

        is_lora = isinstance(dataset, LoraSafetensorsDataset)
        artifact_path = (getattr(dataset, "metadata", None) or {}).get("mlflow_artifact_path")
        path = saved_path(dataset) if is_lora or artifact_path else None
        if is_lora:  # one line per exported LoRA: where, and which version
            version = os.path.basename(os.path.dirname(path)) if path and getattr(dataset, "_version", None) else "-"
            logger.info("Saved LoRA %s: %s (version %s)", dataset_name, path, version)
        if not artifact_path:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
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
