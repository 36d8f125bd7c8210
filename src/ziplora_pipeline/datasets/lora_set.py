"""``LoraSetDataset``: named LoRA files as one versioned folder of ``<name>.safetensors``."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path
from safetensors.torch import save_file

from ..core.lora_io import LoraFile
from ._atomic import atomic_path
from .lora_safetensors import read_lora_file


class LoraSetDataset(AbstractVersionedDataset[dict, dict]):
    """``{name: LoraFile}`` <-> ``<filepath>/<version>/<basename>/<name>.safetensors``, written atomically.

    Each file loads with ``StableDiffusionXLPipeline.load_lora_weights(path)`` on its own.
    """

    def __init__(self, *, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"LoraSetDataset writes local folders only, got {filepath!r}.")
        self._protocol = protocol
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=os.path.exists)

    def load(self) -> dict[str, LoraFile]:
        folder = Path(get_filepath_str(self._get_load_path(), self._protocol))
        if not folder.is_dir():
            raise DatasetError(f"No LoRA set at {folder}.")
        return {p.stem: read_lora_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}

    def save(self, data: dict[str, LoraFile]) -> None:
        if not isinstance(data, dict) or not all(isinstance(v, LoraFile) for v in data.values()):
            raise DatasetError("LoraSetDataset saves a dict {name: LoraFile}.")
        folder = get_filepath_str(self._get_save_path(), self._protocol)
        with atomic_path(folder, directory=True) as tmp:
            for name, lora in data.items():
                save_file(lora.state_dict, str(Path(tmp) / f"{name}.safetensors"), metadata=lora.metadata)

    def _exists(self) -> bool:
        try:
            return os.path.isdir(get_filepath_str(self._get_load_path(), self._protocol))
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}
