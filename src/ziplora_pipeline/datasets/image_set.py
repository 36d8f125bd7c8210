"""``ImageSetDataset``: a named set of images stored as a folder of PNGs (one version = one folder)."""

from __future__ import annotations

from pathlib import Path

from kedro.io.core import DatasetError
from PIL import Image

from ._atomic import atomic_path
from ._base import LocalVersionedDataset


class ImageSetDataset(LocalVersionedDataset):
    """``{name: PIL.Image}`` <-> ``<filepath>/<name>.png``; versioned folders, written atomically.

    People can open the folder and look; a later load returns the images sorted by name.
    """

    is_folder = True

    def load(self) -> dict[str, Image.Image]:
        folder = Path(self._load_path())
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
        folder = self._save_path()
        with atomic_path(folder, directory=True) as tmp:
            for name, img in data.items():
                img.save(Path(tmp) / f"{name}.png")
