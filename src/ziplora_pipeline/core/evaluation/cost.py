"""Wall time and peak memory of one operation (a merge, a training), as the evaluation reports them.

What "peak memory" means depends on the device, and the report says which was measured:

- CUDA: ``torch.cuda.max_memory_allocated`` during the operation, minus what was allocated before
  (tensors only; the paper's "21 GB" for ZipLoRA on an A100 is a figure of this kind).
- CPU (Linux): growth of the process' resident set: its high-water mark ``VmHWM`` after the
  operation, reset just before it through ``/proc/self/clear_refs`` (as benchmarks/train_step.py
  does), minus the RSS before. It includes allocator caching and anything else the process did
  meanwhile, so it is an upper bound on what the operation itself needed. ``tracemalloc`` would
  miss torch's allocations, which is why it is not used.
- Elsewhere: ``None`` (reported empty, never 0).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class Cost:
    seconds: float = 0.0
    peak_mb: float | None = None
    memory_kind: str = "unmeasured"  # cuda_allocated | cpu_rss_growth | unmeasured


def proc_status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` figure in MiB (``VmRSS``: resident now, ``VmHWM``: its peak since the last
    ``reset_peak``); None where /proc is not there (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        return None
    return None


def reset_rss_peak() -> bool:
    """Linux >= 4.0: writing 5 to ``/proc/self/clear_refs`` resets VmHWM to the current RSS. False where that is
    not possible (not Linux, or not permitted)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reset_peak(device: torch.device | str = "cpu") -> str:
    """Start a fresh peak-memory window on ``device``; returns what ``peak_mb`` will then measure:
    ``cuda_allocated``, ``cpu_rss_peak`` (VmHWM since now) or ``cpu_rss_peak_since_start`` (ru_maxrss: the
    process' peak since it started, where VmHWM cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_allocated"
    return "cpu_rss_peak" if reset_rss_peak() else "cpu_rss_peak_since_start"


def current_mb(device: torch.device | str = "cpu") -> float | None:
    """Memory held now: CUDA tensors allocated, or the process' resident set."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.memory_allocated(device) / 2**20
    return proc_status_mb("VmRSS")


def peak_mb(device: torch.device | str = "cpu") -> float | None:
    """Peak memory since ``reset_peak`` (see its return value for what that is)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    if (hwm := proc_status_mb("VmHWM")) is not None:
        return hwm
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@contextmanager
def measure(device: torch.device | str = "cpu"):
    """``with measure(device) as cost: ...`` fills ``cost.seconds`` and ``cost.peak_mb`` on exit."""
    before = current_mb(device)
    kind = reset_peak(device)
    t0 = time.perf_counter()
    cost = Cost()
    try:
        yield cost
    finally:
        peak = peak_mb(device)
        if kind == "cuda_allocated" or (kind == "cpu_rss_peak" and before is not None and peak is not None):
            cost.peak_mb = max(peak - before, 0.0)
            cost.memory_kind = "cuda_allocated" if kind == "cuda_allocated" else "cpu_rss_growth"
        cost.seconds = time.perf_counter() - t0
