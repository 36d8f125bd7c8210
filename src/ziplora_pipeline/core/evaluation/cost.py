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


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Linux >= 4.0: writing 5 resets VmHWM to the current RSS. False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def measure(device: torch.device | str = "cpu"):
    """``with measure(device) as cost: ...`` fills ``cost.seconds`` and ``cost.peak_mb`` on exit."""
    device = torch.device(device)
    cost = Cost()
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _status_mb("VmRSS") if _reset_rss_peak() else None
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            cost.peak_mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
            cost.memory_kind = "cuda_allocated"
        elif before is not None and (peak := _status_mb("VmHWM")) is not None:
            cost.peak_mb = max(peak - before, 0.0)
            cost.memory_kind = "cpu_rss_growth"
        cost.seconds = time.perf_counter() - t0
