"""``CheckpointStoreDataset``: hands a training node its checkpoint folder, declared in the catalog.

Checkpoints are written *during* a node (every N steps), which Kedro outputs cannot express;
loading this dataset returns a ``CheckpointStore`` handle so the folder is still configured in
``catalog.yml`` rather than hard-coded in the node.
"""

from __future__ import annotations

from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from ..core.lora.checkpoints import CheckpointStore


class CheckpointStoreDataset(AbstractDataset[None, CheckpointStore]):
    def __init__(self, *, path: str, keep: int = 2, metadata: dict[str, Any] | None = None):
        self._path = path
        self._keep = keep
        self.metadata = metadata

    def load(self) -> CheckpointStore:
        return CheckpointStore(self._path, keep=self._keep)

    def save(self, data: Any) -> None:
        raise DatasetError("CheckpointStoreDataset is read-only: training nodes write through the store it loads.")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "keep": self._keep}
