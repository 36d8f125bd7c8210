"""``LoraSafetensorsDataset``: a LoRA file (tensors + header metadata) that diffusers loads."""

from __future__ import annotations

from kedro.io.core import DatasetError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..core.lora.io import LoraFile
from ._atomic import atomic_path
from ._base import LocalVersionedDataset


class LoraSafetensorsDataset(LocalVersionedDataset):
    """Saves/loads a ``LoraFile`` as ``.safetensors`` with its metadata header, atomically.

    Example catalog entry::

        subject_lora_weights:
          type: ziplora_pipeline.datasets.LoraSafetensorsDataset
          filepath: data/06_models/subject/pytorch_lora_weights.safetensors
          versioned: true

    Local filesystem only (atomic rename); the resulting file loads with
    ``StableDiffusionXLPipeline.load_lora_weights(path)``.
    """

    def load(self) -> LoraFile:
        path = self._load_path()
        return read_lora_file(path)

    def save(self, data: LoraFile) -> None:
        if not isinstance(data, LoraFile):
            raise DatasetError(f"LoraSafetensorsDataset saves a LoraFile, got {type(data).__name__}.")
        path = self._save_path()
        with atomic_path(path) as tmp:
            save_file(data.state_dict, str(tmp), metadata=data.metadata)


def read_lora_file(path: str) -> LoraFile:
    """Read a safetensors file into a ``LoraFile``; a non-safetensors file is named in the error."""
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise DatasetError(f"{path} is not a readable safetensors file ({err}).") from err
    return LoraFile(tensors, metadata)
