"""Project hooks: fail fast on bad parameters and missing inputs; track artifacts, input versions and a
readable name in the MLflow run; end a failed command with a one-line summary."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

from kedro.framework.hooks import hook_impl

from .params import validate_parameters
from .preflight import check_inputs

logger = logging.getLogger(__name__)


class PreflightHooks:
    """Before the first node (and before kedro-mlflow opens a run: ``tryfirst``): validate every parameter
    against ``params.SCHEMA`` and check that the run's inputs are on disk (``preflight.check_inputs``).

    A typo or a missing input therefore leaves no MLflow run and no half-run of saved versions.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from ..pipeline_registry import stage_pipelines

        params = catalog["parameters"].load() if "parameters" in catalog else {}
        validate_parameters(params)
        check_inputs(pipeline, catalog, stage_pipelines(), params, run_label(run_params))


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


class RunTrackingHooks:
    """What kedro-mlflow leaves out of a run: a readable name, a clean ``runner`` tag and the catalog
    version of every versioned dataset the run loaded (tag ``input_version.<dataset>`` plus an MLflow
    dataset input), so a ``merge`` run names the LoRA versions it merged.
    """

    def __init__(self):
        self._catalog = None
        self._logged: set[str] = set()

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    @hook_impl(trylast=True)  # after kedro-mlflow's before_pipeline_run has started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        import mlflow

        self._logged = set()
        run = mlflow.active_run()
        if run is None:
            return
        mlflow.MlflowClient().update_run(run.info.run_id, name=run_name(run_params))
        runner = str(run_params.get("runner", ""))  # kedro records the runner instance's repr
        match = re.search(r"(\w+Runner)", runner)
        if match:
            mlflow.set_tag("runner", match.group(1))

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
        mlflow.set_tag(f"input_version.{dataset_name}", version)
        path = saved_path(dataset)
        source = _local_source_class()
        if path and source is not None:
            from mlflow.data.meta_dataset import MetaDataset

            mlflow.log_input(MetaDataset(source(os.path.abspath(path)), name=dataset_name, digest=version),
                             context="input")


def _local_source_class():
    """mlflow's ``LocalArtifactDatasetSource`` (a local file or folder): it is registered at run time, not
    importable by name, and ``resolve_dataset_source`` warns that two registrations match a local path."""
    from mlflow.data import dataset_source_registry

    return next((c for c in dataset_source_registry.get_registered_sources()
                 if c.__name__ == "LocalArtifactDatasetSource"), None)


class GridHooks:
    """Keep the run's config loader (``--env``, ``--params``) for building the grid pipeline (``grid_config``)."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        from .grid_config import remember

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
            run = mlflow.start_run(run_name=namespace, nested=True, tags={"grid.namespace": namespace, "grid.kind": kind})
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


class ErrorSummaryHooks:
    """After a failed ``kedro`` command's traceback, one line that says what failed and why.

    Kedro re-raises the error and Python prints the (long) traceback at exit through ``sys.excepthook``;
    this wraps that hook once per process, so the summary is the last thing on the screen.
    """

    _installed = False

    @hook_impl
    def after_context_created(self, context) -> None:
        if ErrorSummaryHooks._installed:
            return
        ErrorSummaryHooks._installed = True
        previous = sys.excepthook
        command = "kedro " + " ".join(sys.argv[1:]) if sys.argv and "kedro" in sys.argv[0] else "the run"

        def excepthook(exc_type, exc, tb):
            previous(exc_type, exc, tb)
            sys.stderr.write("\n" + error_summary(command, exc_type, exc) + "\n")

        sys.excepthook = excepthook


def error_summary(command: str, exc_type, exc) -> str:
    """``<command> failed: <Type>: <message>``; our own errors keep their whole (short, actionable) message."""
    if issubclass(exc_type, KeyboardInterrupt):
        return f"{command} was interrupted. Run the same command again: LoRA training resumes from its last checkpoint."
    cause = exc.__cause__ or exc.__context__
    # kedro wraps load/save errors (DatasetError); when the cause is ours, it is the one that says what to do
    if cause is not None and _ours(cause) and not _ours(exc):
        return error_summary(command, type(cause), cause)
    text = str(exc).strip()
    if not _ours(exc):
        text = text.splitlines()[0] if text else ""
    return f"{command} failed: {exc_type.__name__}: {text}"


def _ours(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "ziplora_pipeline"


def _gb(mb: float | None) -> float | None:
    return None if mb is None else mb / 1024


def _trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``): the CPU analogue of
    ``torch.cuda.empty_cache``. Freed tensors below glibc's mmap threshold stay in the heap otherwise,
    and the next node's pipeline lands on top of them, fragmented."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


class MemoryHooks:
    """Release what a node loaded before the next node loads its own pipeline, and log each node's peak
    memory (issue 9): peak GPU memory on CUDA, and everywhere (Linux) the process's peak resident set
    during the node (VmHWM, reset before each node). Every node loads its own pipeline; under mixed
    precision accelerate's wrapped ``forward`` holds a reference cycle that keeps the previous node's
    UNet alive until ``gc.collect()``, so without the release a whole ``kedro run``'s peak is a sum of
    stages, not the largest one (``benchmarks/run_memory.py`` measures both).

    ``ZIPLORA_NO_RELEASE=1`` switches the release off (the benchmark's baseline); the figures are still logged.
    """

    def __init__(self):
        self.peaks: dict[str, dict[str, float]] = {}  # {node: {"rss_gb": .., "gpu_gb": ..}} of this run
        self._rss_start: float | None = None

    @staticmethod
    def _cuda_torch():
        """torch, if a node has already put something on a GPU; None otherwise (never imports torch itself)."""
        torch = sys.modules.get("torch")
        return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None

    @hook_impl
    def before_pipeline_run(self) -> None:
        self.peaks = {}

    @hook_impl
    def before_node_run(self, node) -> None:
        from ..core.evaluation.cost import proc_status_mb, reset_rss_peak  # imported here: torch, at the first node

        reset_rss_peak()
        self._rss_start = _gb(proc_status_mb("VmRSS"))  # what the process holds before the node: imports, caches, leftovers
        if torch := self._cuda_torch():
            torch.cuda.reset_peak_memory_stats()

    @hook_impl
    def after_node_run(self, node) -> None:
        import gc

        release = os.environ.get("ZIPLORA_NO_RELEASE") != "1"
        if release:
            gc.collect()
            _trim_heap()
        peaks = {}
        from ..core.evaluation.cost import proc_status_mb

        if (rss := _gb(proc_status_mb("VmHWM"))) is not None:
            peaks["rss_gb"] = rss
            if self._rss_start is not None:
                peaks["rss_start_gb"] = self._rss_start
        torch = self._cuda_torch()
        if torch is not None:
            peaks["gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
            if release:
                torch.cuda.empty_cache()
        if not peaks:
            return
        self.peaks[node.name] = peaks
        logger.info("%s: peak memory %s", node.name, ", ".join(
            f"{'GPU' if k == 'gpu_gb' else 'resident (CPU)'} {v:.2f} GB" for k, v in peaks.items() if k != "rss_start_gb")
            + (f" ({peaks['rss_start_gb']:.2f} GB resident at its start)" if "rss_start_gb" in peaks else ""))
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_metrics({f"memory.peak_{k}.{node.name}": v for k, v in peaks.items()})

    @hook_impl
    def after_pipeline_run(self) -> None:
        for key in ("rss_gb", "gpu_gb"):
            figures = {n: p[key] for n, p in self.peaks.items() if key in p}
            if figures:
                top = max(figures, key=figures.get)
                logger.info("Run peak memory (%s): %.2f GB, in node %s", key, figures[top], top)


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
        from ..datasets import LoraSafetensorsDataset

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
