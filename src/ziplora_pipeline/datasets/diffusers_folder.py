"""``DiffusersFolderDataset``: a diffusers pipeline folder (``save_pretrained``), written atomically.

Saving takes a pipeline and writes it in ``torch_dtype`` (the committed toy-world model is fp32, 11 MB:
transformers keeps a checkpoint's dtype for the text encoders and diffusers upcasts the UNet and VAE, so an fp16
folder loads in two dtypes and plain ``pipe(prompt)`` fails); loading returns the folder's path, because stages load base models themselves
with ``from_pretrained`` (never through Kedro's memory datasets, which would deep-copy them).
An existing folder is replaced only once the new one is complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from kedro.io.core import AbstractDataset, DatasetError

from ._atomic import _publish_mode

_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


class DiffusersFolderDataset(AbstractDataset[Any, str]):
    def __init__(self, *, path: str, torch_dtype: str = "fp16", metadata: dict[str, Any] | None = None):
        if torch_dtype not in _DTYPES:
            raise DatasetError(f"DiffusersFolderDataset torch_dtype must be one of {sorted(_DTYPES)}.")
        self._path, self._dtype, self.metadata = Path(path), torch_dtype, metadata

    def load(self) -> str:
        if not (self._path / "model_index.json").is_file():
            raise DatasetError(f"No diffusers model at {self._path} (model_index.json missing). "
                               "Run `kedro run --pipelines pretrain` to build it.")
        return str(self._path)

    def save(self, pipe: Any) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self._path.parent, prefix=f".{self._path.name}.tmp"))
        old = self._path.with_name(f".{self._path.name}.old")
        try:
            pipe.to(_DTYPES[self._dtype]).save_pretrained(tmp, safe_serialization=True)
            pipe.to(torch.float32)
            _publish_mode(tmp, directory=True)
            if self._path.exists():  # swap: the old model stays until the new one is complete
                shutil.rmtree(old, ignore_errors=True)
                self._path.rename(old)
            tmp.rename(self._path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

    def _exists(self) -> bool:
        return (self._path / "model_index.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "torch_dtype": self._dtype}
