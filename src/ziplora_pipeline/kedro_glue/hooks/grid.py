"""The grid: the run's config loader for building its pipeline, one nested MLflow run per namespace."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from .interrupt import process_tags

logger = logging.getLogger(__name__)


def _concept_tags(namespace: str, kind: str) -> dict[str, str]:
    """A pair's run is tagged with its subject and style, a concept's with its name (runs are found by pair)."""
    from ...core.evaluation.grid import pair_concepts

    if kind == "pair":
        subject, style = pair_concepts(namespace)
        return {"subject": subject, "style": style}
    return {"concept": namespace}


class GridHooks:
    """Keep the run's config loader (``--env``, ``--params``) for building the grid pipeline (``grid_config``)."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        from ..grid_config import remember

        remember(context.config_loader)


class GridRunHooks:
    """One nested MLflow run per grid namespace (a concept's LoRA, a pair's merge, images and scores) under the
    ``kedro run``'s run, so each pair's merge curves, memory and scores sit on their own run page.

    The nested run is open while a node of that namespace runs, and reopened for its next node. kedro-mlflow
    reopens the parent run in its own ``before_node_run`` (for threaded runners), so ours opens after it
    (``trylast``) and closes in ``after_node_run`` before the node's outputs are saved: parameters and the
    catalog's artifacts go to the parent run, the metrics a node logs while it runs go to the nested one.
    """

    def __init__(self):
        self._open = False
        self._runs: dict[str, str] = {}

    @hook_impl(trylast=True)
    def before_node_run(self, node) -> None:
        import mlflow

        if "grid" not in node.tags or node.namespace in (None, "grid") or mlflow.active_run() is None:
            return
        namespace = node.namespace
        if namespace in self._runs:
            mlflow.start_run(run_id=self._runs[namespace], nested=True)
        else:
            kind = "pair" if "pair" in node.tags else "concept"
            # the pid/host tags let the next run mark this one KILLED if a hard kill leaves it RUNNING (interrupt.py)
            tags = {"grid.namespace": namespace, "grid.kind": kind, **_concept_tags(namespace, kind), **process_tags()}
            run = mlflow.start_run(run_name=namespace, nested=True, tags=tags)
            self._runs[namespace] = run.info.run_id
        self._open = True

    @hook_impl(trylast=True)  # after the other hooks' per-node metrics (MemoryHooks)
    def after_node_run(self) -> None:
        if self._open:
            import mlflow

            mlflow.end_run()
            self._open = False

    @hook_impl(tryfirst=True)
    def on_node_error(self) -> None:
        self.after_node_run()

    @hook_impl(tryfirst=True)  # before kedro-mlflow ends the parent run
    def after_pipeline_run(self) -> None:
        self.after_node_run()
        self._runs = {}
