"""Peak memory per node (resident set, GPU), released between nodes."""

from __future__ import annotations

import logging
import os
import sys

from kedro.framework.hooks import hook_impl

from ..tracking import metric_name

logger = logging.getLogger(__name__)


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
        from ...core.evaluation.cost import proc_status_mb, reset_rss_peak  # imported here: torch, at the first node

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
        from ...core.evaluation.cost import proc_status_mb

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
            mlflow.log_metrics({metric_name(f"memory.peak_{k}", node.name): v for k, v in peaks.items()})

    @hook_impl
    def after_pipeline_run(self) -> None:
        for key in ("rss_gb", "gpu_gb"):
            figures = {n: p[key] for n, p in self.peaks.items() if key in p}
            if figures:
                top = max(figures, key=figures.get)
                logger.info("Run peak memory (%s): %.2f GB, in node %s", key, figures[top], top)
