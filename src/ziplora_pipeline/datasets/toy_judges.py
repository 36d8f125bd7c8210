"""``ToyJudgesDataset``: the toy world's two judges, one folder each (``attributes/``, ``identity/``).

Saving takes ``{kind: (model, meta)}`` and writes each with ``core.toy_world.judges.save_judge``
(safetensors + ``toy_judge.json``, atomically). Loading returns the folder's path: the evaluation
opens judges by path, exactly as it opens real CLIP/DINO encoders by hub id or folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from ..core.toy_world.judges import save_judge

KINDS = ("attributes", "identity")


class ToyJudgesDataset(AbstractDataset[dict, str]):
    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None):
        self._path, self.metadata = Path(path), metadata

    def load(self) -> str:
        missing = [k for k in KINDS if not (self._path / k / "toy_judge.json").is_file()]
        if missing:
            raise DatasetError(f"No toy judge(s) {missing} under {self._path}. Restore the committed copy "
                               f"(`git checkout -- {self._path}`) or run `kedro run --pipelines pretrain`.")
        return str(self._path)

    def save(self, data: dict) -> None:
        if set(data) != set(KINDS):
            raise DatasetError(f"ToyJudgesDataset saves {{kind: (model, meta)}} for kinds {KINDS}, got {sorted(data)}.")
        for kind, (model, meta) in data.items():
            save_judge(model, self._path / kind, meta)

    def _exists(self) -> bool:
        return all((self._path / k / "toy_judge.json").is_file() for k in KINDS)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
