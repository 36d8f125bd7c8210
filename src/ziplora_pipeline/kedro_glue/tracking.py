"""MLflow helpers for nodes: live per-step metrics when a run is active (kedro-mlflow opens it)."""

from __future__ import annotations

import logging
from typing import Callable

logger = logging.getLogger(__name__)
LAST_STEP: dict = {}  # {"prefix", "step"} of the newest ``step_logger`` call in this process


def metric_name(prefix: str, name: str) -> str:
    """``merge.step`` + ``recon_subject`` -> ``merge/step.recon_subject``: the MLflow UI puts the metrics that share
    the part before the ``/`` in one section (merge, eval, memory, subject, style, joint, pretrain)."""
    return f"{prefix}.{name}".replace(".", "/", 1)


def step_logger(prefix: str) -> Callable[..., None]:
    """Return ``log(step, **metrics)`` that writes ``metric_name(prefix, name)`` to the active MLflow run.

    Metrics are logged as they happen (not at node end) so a long SDXL training can be
    watched in the MLflow UI; without an active run (e.g. a notebook) this is a no-op.
    """
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency, but keep core usable without it
        return lambda step, **metrics: None

    def log(step: int, **metrics: float) -> None:
        LAST_STEP["prefix"], LAST_STEP["step"] = prefix, step  # what an interrupt message says it stopped at
        if mlflow.active_run() is not None:
            mlflow.log_metrics({metric_name(prefix, k): float(v) for k, v in metrics.items()}, step=step)

    return log


def active_run_id() -> str | None:
    """The MLflow run this node runs in (kedro-mlflow opens it), or None (a notebook, tracking off)."""
    try:
        import mlflow
    except ImportError:  # pragma: no cover
        return None
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None
