"""Project hooks, one module per concern (settings.py registers them): preflight checks, MLflow tracking,
the grid's nested runs, per-node memory, and the one-line summary of a failed command."""

from .errors import ErrorSummaryHooks
from .grid import GridHooks, GridRunHooks
from .memory import MemoryHooks
from .preflight import PreflightHooks
from .tracking import MlflowArtifactHooks, RunTrackingHooks

__all__ = ["ErrorSummaryHooks", "GridHooks", "GridRunHooks", "MemoryHooks", "MlflowArtifactHooks", "PreflightHooks",
           "RunTrackingHooks"]
