"""``LoraSafetensorsDataset``: a LoRA file (tensors + header metadata) that diffusers loads."""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..core.lora_io import LoraFile
from ._atomic import atomic_path


class LoraSafetensorsDataset(AbstractVersionedDataset[LoraFile, LoraFile]):
    """Saves/loads a ``LoraFile`` as ``.safetensors`` with its metadata header, atomically.

    Example catalog entry::

        subject_lora_weights:
          type: ziplora_pipeline.datasets.LoraSafetensorsDataset
          filepath: data/06_models/subject/pytorch_lora_weights.safetensors
          versioned: true

    Local filesystem only (atomic rename); the resulting file loads with
    ``StableDiffusionXLPipeline.load_lora_weights(path)``.
    """

    def __init__(self, *, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"LoraSafetensorsDataset writes local files only, got {filepath!r}.")
        self._protocol = protocol
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=os.path.exists)

    def load(self) -> LoraFile:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        return read_lora_file(path)

    def save(self, data: LoraFile) -> None:
        if not isinstance(data, LoraFile):
            raise DatasetError(f"LoraSafetensorsDataset saves a LoraFile, got {type(data).__name__}.")
        path = get_filepath_str(self._get_save_path(), self._protocol)
        with atomic_path(path) as tmp:
            save_file(data.state_dict, str(tmp), metadata=data.metadata)

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return os.path.isfile(path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}


def read_lora_file(path: str) -> LoraFile:
    """Read a safetensors file into a ``LoraFile``; a non-safetensors file is named in the error."""
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise DatasetError(f"{path} is not a readable safetensors file ({err}).") from err
    return LoraFile(tensors, metadata)
