"""``TensorDictDataset``: ``{name: torch.Tensor}`` as safetensors (e.g. ZipLoRA merger vectors)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path
from safetensors.torch import load_file, save_file

from ._atomic import atomic_path


class TensorDictDataset(AbstractVersionedDataset[dict, dict]):
    def __init__(self, *, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"TensorDictDataset writes local files only, got {filepath!r}.")
        self._protocol = protocol
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=os.path.exists)

    def load(self) -> dict:
        return load_file(get_filepath_str(self._get_load_path(), self._protocol))

    def save(self, data: dict) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in data.items()}, str(tmp))

    def _exists(self) -> bool:
        try:
            return os.path.isfile(get_filepath_str(self._get_load_path(), self._protocol))
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}
