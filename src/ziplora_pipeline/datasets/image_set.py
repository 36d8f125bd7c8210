"""``ImageSetDataset``: a named set of images stored as a folder of PNGs (one version = one folder)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path
from PIL import Image

from ._atomic import atomic_path


class ImageSetDataset(AbstractVersionedDataset[dict, dict]):
    """``{name: PIL.Image}`` <-> ``<filepath>/<name>.png``; versioned folders, written atomically.

    People can open the folder and look; a later load returns the images sorted by name.
    """

    def __init__(self, *, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"ImageSetDataset writes local folders only, got {filepath!r}.")
        self._protocol = protocol
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=os.path.exists)

    def load(self) -> dict[str, Image.Image]:
        folder = Path(get_filepath_str(self._get_load_path(), self._protocol))
        if not folder.is_dir():  # e.g. a pinned --load-versions that was never saved
            raise DatasetError(f"No image set at {folder}.")
        images = {}
        for p in sorted(folder.glob("*.png")):
            with Image.open(p) as im:
                images[p.stem] = im.convert("RGB")
        return images

    def save(self, data: dict[str, Image.Image]) -> None:
        if not isinstance(data, dict) or not data:
            raise DatasetError("ImageSetDataset saves a non-empty dict {name: PIL.Image}.")
        folder = get_filepath_str(self._get_save_path(), self._protocol)
        with atomic_path(folder, directory=True) as tmp:
            for name, img in data.items():
                img.save(Path(tmp) / f"{name}.png")

    def _exists(self) -> bool:
        try:
            return os.path.isdir(get_filepath_str(self._get_load_path(), self._protocol))
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}
