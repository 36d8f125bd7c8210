"""Fail fast: every parameter validated, every input on disk and every LoRA file it reads usable, before the first
node runs."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from ..params import validate_parameters
from ..preflight import check_inputs, check_lora_files
from .tracking import run_label

logger = logging.getLogger(__name__)


class PreflightHooks:
    """Before the first node (and before kedro-mlflow opens a run: ``tryfirst``): validate every parameter
    against ``params.SCHEMA`` and check that the run's inputs are on disk (``preflight.check_inputs``).

    A typo or a missing input therefore leaves no MLflow run and no half-run of saved versions.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from ...pipeline_registry import stage_pipelines

        params = catalog["parameters"].load() if "parameters" in catalog else {}
        validate_parameters(params)
        check_inputs(pipeline, catalog, stage_pipelines(), params, run_label(run_params))
        check_lora_files(pipeline, catalog, params)
