"""``TensorDictDataset``: ``{name: torch.Tensor}`` as safetensors (e.g. ZipLoRA merger vectors)."""

from __future__ import annotations

from safetensors.torch import load_file, save_file

from ._atomic import atomic_path
from ._base import LocalVersionedDataset


class TensorDictDataset(LocalVersionedDataset):
    def load(self) -> dict:
        return load_file(self._load_path())

    def save(self, data: dict) -> None:
        path = self._save_path()
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in data.items()}, str(tmp))
