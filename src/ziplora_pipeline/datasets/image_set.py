"""``ImageSetDataset``: a named set of images stored as a folder of PNGs (one version = one folder)."""

from __future__ import annotations

from pathlib import Path

from kedro.io.core import DatasetError
from kedro_datasets._typing import ImagePreview
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

    def preview(self, count: int = 8) -> ImagePreview:
        """The first ``count`` images side by side (one PNG, base64) for Kedro-Viz's dataset panel."""
        import base64
        import io

        folder = Path(self._load_path())
        paths = sorted(folder.glob("*.png"))[:count]
        if not paths:
            raise DatasetError(f"No image set at {folder}.")
        images = [Image.open(p).convert("RGB") for p in paths]
        height = max(im.height for im in images)
        strip = Image.new("RGB", (sum(im.width for im in images), height), "white")
        x = 0
        for im in images:
            strip.paste(im, (x, 0))
            x += im.width
        buffer = io.BytesIO()
        strip.save(buffer, format="PNG")
        return ImagePreview(base64.b64encode(buffer.getvalue()).decode("ascii"))

    def save(self, data: dict[str, Image.Image]) -> None:
        if not isinstance(data, dict) or not data:
            raise DatasetError("ImageSetDataset saves a non-empty dict {name: PIL.Image}.")
        folder = self._save_path()
        with atomic_path(folder, directory=True) as tmp:
            for name, img in data.items():
                img.save(Path(tmp) / f"{name}.png")
