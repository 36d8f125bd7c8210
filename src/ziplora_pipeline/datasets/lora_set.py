"""``LoraSetDataset``: named LoRA files as one versioned folder of ``<name>.safetensors``."""

from __future__ import annotations

from pathlib import Path

from kedro.io.core import DatasetError
from safetensors.torch import save_file

from ..core.lora.io import LoraFile
from ._atomic import atomic_path
from ._base import LocalVersionedDataset
from .lora_safetensors import read_lora_file


class LoraSetDataset(LocalVersionedDataset):
    """``{name: LoraFile}`` <-> ``<filepath>/<version>/<basename>/<name>.safetensors``, written atomically.

    Each file loads with ``StableDiffusionXLPipeline.load_lora_weights(path)`` on its own.
    """

    is_folder = True

    def load(self) -> dict[str, LoraFile]:
        folder = Path(self._load_path())
        if not folder.is_dir():
            raise DatasetError(f"No LoRA set at {folder}.")
        return {p.stem: read_lora_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}

    def save(self, data: dict[str, LoraFile]) -> None:
        if not isinstance(data, dict) or not all(isinstance(v, LoraFile) for v in data.values()):
            raise DatasetError("LoraSetDataset saves a dict {name: LoraFile}.")
        folder = self._save_path()
        with atomic_path(folder, directory=True) as tmp:
            for name, lora in data.items():
                save_file(lora.state_dict, str(Path(tmp) / f"{name}.safetensors"), metadata=lora.metadata)
