"""Project hooks, one module per concern (settings.py registers them): preflight checks, MLflow tracking,
the grid's nested runs, per-node memory, the Model Registry, the one-line summary of a failed command, honest
interrupts, and a failed stage's saves rolled back."""

from .errors import ErrorSummaryHooks
from .grid import GridHooks, GridRunHooks
from .interrupt import InterruptHooks
from .memory import MemoryHooks
from .preflight import PreflightHooks
from .registry import ModelRegistryHooks
from .rollback import StageRollbackHooks
from .tracking import MlflowArtifactHooks, RunTrackingHooks

__all__ = ["ErrorSummaryHooks", "GridHooks", "GridRunHooks", "InterruptHooks", "MemoryHooks", "MlflowArtifactHooks",
           "ModelRegistryHooks", "PreflightHooks", "RunTrackingHooks", "StageRollbackHooks"]
