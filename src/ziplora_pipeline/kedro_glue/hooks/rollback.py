"""A stage is all or nothing: when a node fails (or the run is interrupted), the versions this run saved of its
stage's outputs are removed, so the newest version of every dataset a later stage loads is again a consistent set.

Kedro saves each node's outputs as the node finishes; a merge stage whose ``build_methods`` failed after
``ziplora_merge`` had saved left new mergers beside the previous run's method files, and a later stage would have
paired them. A *stage* is the registered pipeline the failed node belongs to (``data_prep``, ``merge``, ...), or in
the grid its namespace (one concept or one pair: the other concepts' LoRAs and the finished pairs are kept).
Checkpoint stores are not versioned and stay (an interrupted training resumes from them).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from kedro.framework.hooks import hook_impl
from kedro.io.core import AbstractVersionedDataset

logger = logging.getLogger(__name__)


def stage_of(node) -> tuple[str, set[str] | None]:
    """(the failed node's stage, its outputs): a registered stage's (its nodes are ``<stage>.<node>``), or a grid
    namespace's, whose datasets are ``<namespace>.<name>`` (None: matched by prefix)."""
    from ...pipeline_registry import stage_pipelines

    for name, pipeline in stage_pipelines().items():
        if name != "grid" and node.name in {n.name for n in pipeline.nodes}:
            return name, set(pipeline.all_outputs())
    if node.namespace:
        return node.namespace.split(".")[0], None
    return node.name, set(node.outputs)


def version_folder(dataset) -> Path | None:
    """``<filepath>/<version>`` of the version this run saved (None: not versioned or nothing there)."""
    if not isinstance(dataset, AbstractVersionedDataset):
        return None
    version = dataset.resolve_save_version()
    if version is None:
        return None
    folder = Path(str(dataset._get_versioned_path(version))).parent  # <filepath>/<version>/<basename>
    return folder if folder.exists() and folder.name == version else None


class StageRollbackHooks:
    def __init__(self):
        self._saved: list[str] = []
        self._failed = None
        self._catalog = None

    @hook_impl
    def before_pipeline_run(self, catalog) -> None:
        self._saved, self._failed, self._catalog = [], None, catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        self._saved.append(dataset_name)

    @hook_impl
    def on_node_error(self, node) -> None:
        self._failed = node

    @hook_impl(tryfirst=True)  # before the interrupt hook ends the process
    def on_pipeline_error(self, error) -> None:
        if self._failed is None or self._catalog is None:
            return
        stage, outputs = stage_of(self._failed)
        ours = [n for n in dict.fromkeys(self._saved)
                if (n.startswith(f"{stage}.") if outputs is None else n in outputs)]
        removed = []
        for name in ours:
            try:
                folder = version_folder(self._catalog.get(name))
            except Exception:  # noqa: BLE001 - a dataset that cannot say where it saved is left as it is
                continue
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(name)
        if removed:
            logger.warning("The '%s' stage failed in node %s: removed the versions this run saved of %s, so its "
                           "outputs stay the previous run's (a consistent set).", stage, self._failed.name,
                           ", ".join(removed))
